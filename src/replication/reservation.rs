//! Spool space promised to uploads still streaming in, so a PUT the spool
//! cannot take is refused up front and never dropped after the fact.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Replicator, SpoolFull};

/// Spool bytes promised to one upload; given back when it drops (a committed
/// blob is then counted by the pending queue).
#[derive(Debug)]
pub struct Reservation {
    replicator: Arc<Replicator>,
    bytes: u64,
}

impl Reservation {
    /// Promise `more` bytes to this upload, if the spool has room.
    pub fn grow(&mut self, more: u64) -> Result<(), SpoolFull> {
        let r = &self.replicator;
        let before = r.reserved.fetch_add(more, Ordering::SeqCst);
        if r.pending_bytes.load(Ordering::SeqCst) + before + more > r.spool_limit {
            r.reserved.fetch_sub(more, Ordering::SeqCst);
            return Err(SpoolFull { limit: r.spool_limit });
        }
        self.bytes += more;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.replicator.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Replicator {
    /// Start reserving spool space for an upload (nothing reserved yet).
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            replicator: self.clone(),
            bytes: 0,
        }
    }
}
