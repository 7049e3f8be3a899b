//! Replication: the durable pending queue and the workers that copy it to the
//! store, retrying with capped, jittered exponential backoff until the store
//! confirms a blob or the blob is deleted. Write-through uploads take the same
//! path, so DELETE's coordination with uploads covers both.
//!
//! Every upload is checked on its way out: the pending file is read against
//! the chunk digests recorded at ingest, and the MD5 of each part is taken from
//! those checked bytes, so a store that verifies (S3's `Content-MD5`) refuses
//! bytes damaged after the check. A damaged blob is moved aside, never sent.

mod backoff;
mod deletes;
mod reservation;
mod settings;
pub mod spool;
mod upload;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use prometheus::{IntCounter, Registry};
use tokio::sync::{Notify, watch};

pub use backoff::Backoff;
pub use deletes::StoreDelete;
pub use reservation::Reservation;
pub use settings::{ReplicationConfig, ReplicationSettings};
pub use spool::{Spool, SpoolBlob, SpoolError};

use crate::key::BlobKey;
use crate::metrics;
use crate::store::{Store, StoreError};

/// Why an upload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the pending file is gone (the blob was deleted meanwhile)")]
    Gone,
}

/// The spool has no room for an upload.
#[derive(Debug, thiserror::Error)]
#[error("the spool is full ({limit} bytes wait for the store); retry later")]
pub struct SpoolFull {
    pub limit: u64,
}

#[derive(Debug)]
struct Pending {
    size: u64,
    since: SystemTime,
    failures: u32,
    next_attempt: Instant,
    uploading: bool,
    /// Deleted while an upload was under way: remove it from the store once that ends.
    deleted: bool,
    /// A write-through PUT owns it and has not acknowledged it yet: if its
    /// upload fails, the blob is dropped rather than queued.
    through: bool,
    /// Found damaged while an upload was under way: already moved aside.
    damaged: bool,
}

impl Pending {
    fn new(size: u64, since: SystemTime, uploading: bool, through: bool) -> Self {
        Pending {
            size,
            since,
            failures: 0,
            next_attempt: Instant::now(),
            uploading,
            deleted: false,
            through,
            damaged: false,
        }
    }

    /// Acknowledged, and still to reach the store.
    fn live(&self) -> bool {
        !self.deleted && !self.through && !self.damaged
    }
}

/// Reads one figure of a queue snapshot, for a gauge.
type ReadQueue = fn(&QueueSnapshot) -> f64;

/// A snapshot of the queue.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct QueueSnapshot {
    pub pending_blobs: u64,
    pub pending_bytes: u64,
    pub oldest_pending_age_seconds: f64,
    pub uploaded: u64,
    pub upload_attempts: u64,
    pub upload_failures: u64,
    /// Pending blobs found damaged and moved aside (`spool/damaged/`).
    pub damaged: u64,
    /// DELETEs acknowledged (202) that wait for the store.
    pub queued_deletes: u64,
}

#[derive(Debug)]
struct Counters {
    uploaded: IntCounter,
    attempts: IntCounter,
    failures: IntCounter,
    skipped: IntCounter,
    damaged: IntCounter,
}

/// The write-back queue and its workers.
#[derive(Debug)]
pub struct Replicator {
    spool: Arc<Spool>,
    store: Arc<dyn Store>,
    backoff: Backoff,
    /// Bytes the spool may hold: blobs pending upload plus uploads under way.
    spool_limit: u64,
    /// Whether the store answers (from its circuit breaker): no attempts while it does not.
    store_health: watch::Receiver<bool>,
    state: std::sync::Mutex<HashMap<BlobKey, Pending>>,
    work: Notify,
    idle: Notify,
    /// Bytes of live (not deleted) pending blobs, kept beside the map for cheap reads.
    pending_bytes: AtomicU64,
    /// Spool bytes promised to uploads still streaming in.
    reserved: AtomicU64,
    /// Deletes acknowledged while the store could not take them (also on disk).
    deletes: std::sync::Mutex<HashMap<BlobKey, deletes::QueuedDelete>>,
    delete_work: Notify,
    /// Whether each store delete also records a tombstone there (in a cluster).
    tombstones_in_store: AtomicBool,
    c: Counters,
}

impl Replicator {
    pub fn new(
        spool: Arc<Spool>,
        store: Arc<dyn Store>,
        store_health: watch::Receiver<bool>,
        config: &ReplicationConfig,
        backoff: Backoff,
        registry: &Registry,
    ) -> Arc<Self> {
        let c = |name, help| metrics::counter(registry, name, help);
        let r = Arc::new(Replicator {
            spool,
            store,
            backoff,
            spool_limit: config.spool_size.as_u64(),
            store_health,
            state: Default::default(),
            work: Notify::new(),
            idle: Notify::new(),
            pending_bytes: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            deletes: Default::default(),
            delete_work: Notify::new(),
            tombstones_in_store: AtomicBool::new(false),
            c: Counters {
                uploaded: c("blobcache_uploads_total", "pending blobs copied to the store"),
                attempts: c(
                    "blobcache_upload_attempts_total",
                    "attempts to copy a pending blob to the store",
                ),
                failures: c(
                    "blobcache_upload_failures_total",
                    "failed upload attempts (each is retried)",
                ),
                skipped: c(
                    "blobcache_uploads_skipped_total",
                    "pending blobs the store already had, so not sent again",
                ),
                damaged: c(
                    "blobcache_spool_damaged_total",
                    "pending blobs whose bytes no longer matched their digests, moved aside and not uploaded",
                ),
            },
        });
        let gauges: [(&str, &str, ReadQueue); 3] = [
            (
                "blobcache_pending_blobs",
                "blobs acknowledged here, waiting for the store",
                |q| q.pending_blobs as f64,
            ),
            (
                "blobcache_pending_bytes",
                "bytes acknowledged here, waiting for the store",
                |q| q.pending_bytes as f64,
            ),
            (
                "blobcache_oldest_pending_age_seconds",
                "age of the oldest blob waiting for the store",
                |q| q.oldest_pending_age_seconds,
            ),
        ];
        for (name, help, read) in gauges {
            let weak = Arc::downgrade(&r);
            metrics::computed_gauge(registry, name, help, move || {
                weak.upgrade().map_or(0.0, |r| read(&r.snapshot()))
            });
        }
        r
    }

    /// Queue an acknowledged blob (already durable in `pending/`) for upload.
    pub fn enqueue(&self, key: BlobKey, size: u64, since: SystemTime) {
        let mut state = self.state.lock().expect("queue lock");
        let entry = state.entry(key).or_insert_with(|| {
            self.pending_bytes.fetch_add(size, Ordering::SeqCst);
            Pending::new(size, since, false, false)
        });
        entry.through = false;
        if entry.deleted || entry.damaged {
            // Written again after a DELETE, or after its earlier copy was found damaged.
            entry.deleted = false;
            entry.damaged = false;
            entry.size = size;
            entry.since = since;
            self.pending_bytes.fetch_add(size, Ordering::SeqCst);
        }
        drop(state);
        self.work.notify_one();
    }

    /// The size of a blob acknowledged here and still waiting for the store.
    pub fn pending_size(&self, key: &BlobKey) -> Option<u64> {
        self.state
            .lock()
            .expect("queue lock")
            .get(key)
            .filter(|p| p.live())
            .map(|p| p.size)
    }

    /// When a blob still waiting for the store was acknowledged here.
    pub fn pending_since(&self, key: &BlobKey) -> Option<SystemTime> {
        self.state
            .lock()
            .expect("queue lock")
            .get(key)
            .filter(|p| p.live())
            .map(|p| p.since)
    }

    pub fn is_pending(&self, key: &BlobKey) -> bool {
        self.pending_size(key).is_some()
    }

    /// Open a pending blob for reading (its reads are checked). A blob found
    /// damaged is moved aside and reported, and counts as not pending.
    pub async fn open_pending(&self, key: &BlobKey) -> Result<Option<SpoolBlob>, SpoolError> {
        if !self.is_pending(key) {
            return Ok(None);
        }
        let (spool, k) = (self.spool.clone(), *key);
        match tokio::task::spawn_blocking(move || spool.open_blob(&k))
            .await
            .expect("spool task")
        {
            Err(SpoolError::Damaged { key, what }) => {
                self.damaged(&key, &what).await;
                Ok(None)
            }
            other => other,
        }
    }

    /// Whether this node moved a damaged copy of the blob aside.
    pub async fn is_damaged(&self, key: &BlobKey) -> bool {
        let (spool, k) = (self.spool.clone(), *key);
        tokio::task::spawn_blocking(move || spool.is_damaged(&k))
            .await
            .unwrap_or(false)
    }

    /// A pending blob whose bytes failed their check: log it, count it, move it
    /// to `spool/damaged/`, and drop it from the queue. If the store has no
    /// good copy, the blob is lost: nothing here can bring it back.
    pub async fn damaged(&self, key: &BlobKey, what: &str) {
        {
            let mut state = self.state.lock().expect("queue lock");
            let Some(p) = state.get_mut(key).filter(|p| !p.damaged) else {
                return; // found and handled already (by a reader or an uploader)
            };
            if !p.deleted {
                self.pending_bytes.fetch_sub(p.size, Ordering::SeqCst);
            }
            p.damaged = true;
            if !p.uploading {
                state.remove(key);
            }
        }
        self.c.damaged.inc();
        tracing::error!(%key, %what, "a pending blob is damaged on this node's disk; moved to spool/damaged, not served and not uploaded");
        let (spool, k) = (self.spool.clone(), *key);
        if let Err(e) = tokio::task::spawn_blocking(move || spool.quarantine(&k))
            .await
            .expect("spool task")
        {
            tracing::error!(%key, error = %e, "could not move a damaged pending blob aside");
        }
        self.idle.notify_waiters();
    }

    /// Claim a blob just committed to the spool for an upload now, for a
    /// write-through PUT (waiting for an upload of it already under way).
    /// Then [`Replicator::upload_claimed`] sends it.
    pub async fn claim_upload(&self, key: BlobKey, size: u64, since: SystemTime) {
        self.when_settled(|state| match state.get_mut(&key) {
            None => {
                self.pending_bytes.fetch_add(size, Ordering::SeqCst);
                state.insert(key, Pending::new(size, since, true, true));
                Some(())
            }
            Some(p) if !p.uploading => {
                p.uploading = true;
                Some(())
            }
            // A worker is uploading the same blob: wait for it, then look again.
            Some(_) => None,
        })
        .await
    }

    /// Run `step` on the queue until it gives an answer, waiting for the next
    /// upload or delete to settle between tries. `step` runs under the queue lock.
    async fn when_settled<T>(&self, mut step: impl FnMut(&mut HashMap<BlobKey, Pending>) -> Option<T>) -> T {
        loop {
            let finished = self.idle.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if let Some(answer) = step(&mut self.state.lock().expect("queue lock")) {
                return answer;
            }
            finished.await;
        }
    }

    /// Upload a claimed blob now; the write-through PUT's answer waits for
    /// this. If it fails the blob is dropped (the PUT was not acknowledged),
    /// unless a write-back PUT of the same blob meanwhile acknowledged it:
    /// then it stays queued.
    pub async fn upload_claimed(&self, key: BlobKey, size: u64) -> Result<(), UploadError> {
        self.attempt_and_settle(key, size, false).await
    }

    /// Cancel a pending upload (DELETE). Returns whether one was pending. The
    /// spool file is gone when this returns. An upload already under way is
    /// waited for (it is bounded by the store's timeouts), and the replicator
    /// removes its result from the store: so once this returns, no upload of
    /// this blob can still bring it back into the store behind the DELETE.
    pub async fn cancel(&self, key: &BlobKey) -> std::io::Result<bool> {
        let mut was_pending = false;
        self.when_settled(|state| match state.get_mut(key) {
            None => Some(()),
            Some(p) if p.uploading => {
                if !p.deleted {
                    if !p.damaged {
                        self.pending_bytes.fetch_sub(p.size, Ordering::SeqCst);
                    }
                    p.deleted = true;
                    was_pending = true;
                }
                None
            }
            Some(p) => {
                if !p.deleted && !p.damaged {
                    self.pending_bytes.fetch_sub(p.size, Ordering::SeqCst);
                    was_pending = true;
                }
                state.remove(key);
                Some(())
            }
        })
        .await;
        let spool = self.spool.clone();
        let key = *key;
        // A DELETE removes the blob from this node entirely, a damaged copy kept aside included.
        let removed = tokio::task::spawn_blocking(move || {
            spool.forget_damaged(&key)?;
            spool.remove_pending(&key)
        })
        .await
        .expect("spool task")?;
        self.idle.notify_waiters();
        Ok(was_pending || removed)
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let state = self.state.lock().expect("queue lock");
        let now = SystemTime::now();
        let live = state.values().filter(|p| p.live());
        let (mut blobs, mut bytes, mut oldest) = (0u64, 0u64, 0f64);
        for p in live {
            blobs += 1;
            bytes += p.size;
            oldest = oldest.max(now.duration_since(p.since).unwrap_or_default().as_secs_f64());
        }
        QueueSnapshot {
            pending_blobs: blobs,
            pending_bytes: bytes,
            oldest_pending_age_seconds: oldest,
            uploaded: self.c.uploaded.get(),
            upload_attempts: self.c.attempts.get(),
            upload_failures: self.c.failures.get(),
            damaged: self.c.damaged.get(),
            queued_deletes: self.queued_deletes() as u64,
        }
    }

    /// Wait until the queue is empty, the deadline passes, or the store is
    /// known to be failing (pending blobs are safe in the spool: waiting for a
    /// store that does not answer would only hold the shutdown up). Returns
    /// whether the queue emptied.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        let mut health = self.store_health.clone();
        loop {
            let idle = self.idle.notified();
            {
                let state = self.state.lock().expect("queue lock");
                if state.is_empty() {
                    return true;
                }
                // Everything left has failed and waits for a retry: the store is
                // not taking uploads now, and the spool keeps them safe.
                if state.values().all(|p| !p.uploading && p.failures > 0) {
                    tracing::info!("the uploads left have failed and wait for a retry: not waiting for them");
                    return false;
                }
            }
            if !*health.borrow_and_update() {
                tracing::info!("the store is failing: not waiting for uploads");
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.state.lock().expect("queue lock").is_empty(),
                _ = idle => {}
                _ = health.changed() => {}
            }
        }
    }
}
