//! Write-back replication: the durable pending queue and the workers that copy
//! it to the store, retrying with capped, jittered exponential backoff until
//! the store confirms a blob or the blob is deleted.

pub mod spool;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use spool::{Spool, TempGuard};
pub use writer::SpoolWriter;

use crate::key::BlobKey;
use crate::store::Store;

/// Retry timing for failed uploads.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failures + 1`: doubling, capped, with ±25% jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(20).saturating_sub(1))
            .min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter).min(self.max)
    }
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
}

/// Counters for /stats and metrics.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    pub uploaded: AtomicU64,
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
}

/// A snapshot of the queue.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct QueueSnapshot {
    pub pending_blobs: u64,
    pub pending_bytes: u64,
    pub oldest_pending_age_seconds: f64,
    pub uploaded: u64,
    pub upload_attempts: u64,
    pub upload_failures: u64,
}

/// The write-back queue and its workers.
#[derive(Debug)]
pub struct Replicator {
    spool: Arc<Spool>,
    store: Arc<dyn Store>,
    backoff: Backoff,
    state: std::sync::Mutex<HashMap<BlobKey, Pending>>,
    work: Notify,
    idle: Notify,
    stats: ReplicationStats,
    /// Bytes of live (not deleted) pending blobs, kept beside the map for cheap reads.
    pending_bytes: AtomicU64,
}

impl Replicator {
    pub fn new(spool: Arc<Spool>, store: Arc<dyn Store>, backoff: Backoff) -> Self {
        Replicator {
            spool,
            store,
            backoff,
            state: Default::default(),
            work: Notify::new(),
            idle: Notify::new(),
            stats: Default::default(),
            pending_bytes: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> &ReplicationStats {
        &self.stats
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Queue an acknowledged blob (already durable in `pending/`) for upload.
    pub fn enqueue(&self, key: BlobKey, size: u64, since: SystemTime) {
        let mut state = self.state.lock().expect("queue lock");
        let entry = state.entry(key).or_insert_with(|| {
            self.pending_bytes.fetch_add(size, Ordering::Relaxed);
            Pending {
                size,
                since,
                failures: 0,
                next_attempt: Instant::now(),
                uploading: false,
                deleted: false,
            }
        });
        if entry.deleted {
            entry.deleted = false;
            self.pending_bytes.fetch_add(entry.size, Ordering::Relaxed);
        }
        drop(state);
        self.work.notify_one();
    }

    /// Bytes of blobs waiting for the store.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    pub fn is_pending(&self, key: &BlobKey) -> bool {
        self.state
            .lock()
            .expect("queue lock")
            .get(key)
            .is_some_and(|p| !p.deleted)
    }

    /// Cancel a pending upload (DELETE). Returns whether one was pending. The
    /// spool file is gone when this returns. An upload already under way is
    /// waited for (it is bounded by the store's timeouts), and the replicator
    /// removes its result from the store: so once this returns, no upload of
    /// this blob can still bring it back into the store behind the DELETE.
    pub async fn cancel(&self, key: &BlobKey) -> std::io::Result<bool> {
        let mut was_pending = false;
        loop {
            let finished = self.idle.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            {
                let mut state = self.state.lock().expect("queue lock");
                match state.get_mut(key) {
                    None => break,
                    Some(p) if p.uploading => {
                        if !p.deleted {
                            p.deleted = true;
                            self.pending_bytes.fetch_sub(p.size, Ordering::Relaxed);
                            was_pending = true;
                        }
                    }
                    Some(p) => {
                        if !p.deleted {
                            self.pending_bytes.fetch_sub(p.size, Ordering::Relaxed);
                            was_pending = true;
                        }
                        state.remove(key);
                        break;
                    }
                }
            }
            finished.await;
        }
        let spool = self.spool.clone();
        let key = *key;
        let removed = tokio::task::spawn_blocking(move || spool.remove_pending(&key))
            .await
            .expect("spool task")?;
        self.idle.notify_waiters();
        Ok(was_pending || removed)
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let state = self.state.lock().expect("queue lock");
        let now = SystemTime::now();
        let live = state.values().filter(|p| !p.deleted);
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
            uploaded: self.stats.uploaded.load(Ordering::Relaxed),
            upload_attempts: self.stats.attempts.load(Ordering::Relaxed),
            upload_failures: self.stats.failures.load(Ordering::Relaxed),
        }
    }

    /// Wait until the queue is empty or the deadline passes; returns whether it emptied.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let idle = self.idle.notified();
            if self.state.lock().expect("queue lock").is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.state.lock().expect("queue lock").is_empty();
            }
        }
    }

    /// One upload worker: runs until `cancel` fires. An upload cut short stays
    /// pending on disk and is replayed at the next start.
    pub async fn run_worker(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let work = self.work.notified();
            let next = self.pick();
            match next {
                Ok((key, size)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.upload(key, size) => {}
                    }
                }
                Err(wake_at) => {
                    let wake_at = wake_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = work => {}
                        _ = tokio::time::sleep_until(wake_at.into()) => {}
                    }
                }
            }
        }
    }

    /// The oldest blob due for an attempt, or when the next one falls due.
    fn pick(&self) -> Result<(BlobKey, u64), Option<Instant>> {
        let mut state = self.state.lock().expect("queue lock");
        let now = Instant::now();
        let mut due: Option<(&BlobKey, &Pending)> = None;
        let mut earliest: Option<Instant> = None;
        for (k, p) in state.iter().filter(|(_, p)| !p.uploading && !p.deleted) {
            if p.next_attempt <= now {
                if due.is_none_or(|(_, d)| p.since < d.since) {
                    due = Some((k, p));
                }
            } else {
                earliest = Some(earliest.map_or(p.next_attempt, |e| e.min(p.next_attempt)));
            }
        }
        let Some((&key, _)) = due else { return Err(earliest) };
        let p = state.get_mut(&key).expect("picked entry");
        p.uploading = true;
        Ok((key, p.size))
    }

    async fn upload(&self, key: BlobKey, size: u64) {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let path = self.spool.pending_path(&key);
        let result = self.store.put_file(&key, &path, size).await;
        let deleted = {
            let mut state = self.state.lock().expect("queue lock");
            match (&result, state.get_mut(&key)) {
                (Err(_), Some(p)) if !p.deleted => {
                    p.uploading = false;
                    p.failures += 1;
                    p.next_attempt = Instant::now() + self.backoff.delay(p.failures);
                    None
                }
                (_, p) => {
                    let deleted = p.is_some_and(|p| p.deleted);
                    if let Some(p) = state.remove(&key)
                        && !p.deleted
                    {
                        self.pending_bytes.fetch_sub(p.size, Ordering::Relaxed);
                    }
                    Some(deleted)
                }
            }
        };
        match (result, deleted) {
            (Err(e), None) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%key, retryable = e.is_retryable(), error = %crate::error_chain(&e), "upload to the store failed; will retry");
            }
            (Ok(()), Some(false)) => {
                self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
                let spool = self.spool.clone();
                match tokio::task::spawn_blocking(move || spool.remove_pending(&key)).await {
                    Ok(Ok(_)) => tracing::debug!(%key, size, "replicated to the store"),
                    Ok(Err(e)) => {
                        tracing::warn!(%key, error = %e, "replicated, but the spool file could not be removed")
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "spool task failed"),
                }
            }
            (_, Some(true)) => {
                // DELETE arrived while the upload ran: make sure it does not stay in the store.
                if let Err(e) = self.store.delete(&key).await {
                    tracing::error!(%key, error = %crate::error_chain(&e), "a blob deleted during its upload could not be removed from the store");
                }
            }
            (Ok(()), None) | (Err(_), Some(false)) => {}
        }
        self.idle.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        for (failures, base) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (9, 256.0)] {
            let d = b.delay(failures).as_secs_f64();
            assert!(d >= base * 0.75 && d <= base * 1.25, "failures {failures}: {d}");
        }
        assert!(b.delay(30) <= Duration::from_secs(300));
        assert!(b.delay(30) >= Duration::from_secs(225));
    }
}
