//! One lock per blob key, taken by the steps of a PUT and of a DELETE that
//! must not interleave: a PUT's commit into the spool and its hand-over to
//! replication, and a DELETE's removal from this node. So a PUT and a DELETE
//! of one blob sent at once end as one of the two serial orders. Locks exist
//! only while someone holds or waits for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::key::BlobKey;

#[derive(Debug, Default)]
pub(super) struct KeyLocks {
    locks: Arc<Mutex<HashMap<BlobKey, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds a key's lock; the lock is forgotten when no one else wants it.
#[derive(Debug)]
pub(super) struct KeyGuard {
    key: BlobKey,
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<Mutex<HashMap<BlobKey, Arc<tokio::sync::Mutex<()>>>>>,
}

impl KeyLocks {
    pub(super) async fn lock(&self, key: BlobKey) -> KeyGuard {
        let lock = self.locks.lock().expect("key locks").entry(key).or_default().clone();
        KeyGuard {
            key,
            guard: Some(lock.lock_owned().await),
            locks: self.locks.clone(),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().expect("key locks");
        self.guard.take();
        // The map's reference is the last: no one holds or waits for it.
        if locks.get(&self.key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_nothing_left_behind() {
        let locks = KeyLocks::default();
        let (a, b) = (BlobKey::of(b"a"), BlobKey::of(b"b"));
        let held = locks.lock(a).await;
        let _other = locks.lock(b).await; // another key is free
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock(a)).await;
        assert!(waiting.is_err(), "the same key waits");
        drop(held);
        drop(locks.lock(a).await);
        drop(_other);
        assert!(locks.locks.lock().unwrap().is_empty());
    }
}
