//! The upload side of replication: workers that take the oldest due blob,
//! check its spool file and send it, and the bookkeeping after each attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use std::sync::atomic::Ordering;

use super::{Pending, Replicator, SpoolError, UploadError};
use crate::key::BlobKey;

impl Replicator {
    /// One upload worker: runs until `cancel` fires. An upload cut short stays
    /// pending on disk and is replayed at the next start. While the store is
    /// known to be failing, the worker waits for it instead of spending attempts.
    pub async fn run_worker(self: Arc<Self>, cancel: CancellationToken) {
        let mut health = self.store_health.clone();
        loop {
            let healthy = tokio::select! {
                _ = cancel.cancelled() => return,
                h = health.wait_for(|healthy| *healthy) => h.is_ok(),
            };
            if !healthy {
                return;
            }
            let work = self.work.notified();
            match self.pick() {
                Ok((key, size)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.attempt_and_settle(key, size, true) => {}
                    }
                }
                Err(wake_at) => {
                    let wake_at = wake_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = work => {}
                        _ = tokio::time::sleep_until(wake_at.into()) => {}
                        _ = health.changed() => {}
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
        for (k, p) in state.iter().filter(|(_, p)| !p.uploading && p.live()) {
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

    /// Copy a pending blob to the store, checking its bytes on the way out.
    /// A queued blob the store already has is not sent again.
    async fn attempt(&self, key: BlobKey, size: u64, skip_if_stored: bool) -> Result<(), UploadError> {
        self.c.attempts.inc();
        if skip_if_stored && self.store.head(&key).await.is_ok_and(|s| s == size) {
            self.c.skipped.inc();
            return Ok(());
        }
        let part_size = self.store.part_size(size);
        let spool = self.spool.clone();
        let parts = tokio::task::spawn_blocking(move || match spool.open_blob(&key)? {
            Some(blob) => blob.part_md5s(part_size).map(Some),
            None => Ok(None),
        })
        .await
        .expect("upload check task")?
        .ok_or(UploadError::Gone)?;
        let path = self.spool.pending_path(&key);
        Ok(self.store.put_file(&key, &path, size, &parts).await?)
    }

    pub(super) async fn attempt_and_settle(
        &self,
        key: BlobKey,
        size: u64,
        skip_if_stored: bool,
    ) -> Result<(), UploadError> {
        let result = self.attempt(key, size, skip_if_stored).await;
        if let Err(UploadError::Spool(SpoolError::Damaged { what, .. })) = &result {
            let what = what.clone();
            self.finish_attempt(&key);
            self.damaged(&key, &what).await;
            return result;
        }
        #[derive(Clone, Copy)]
        enum Next {
            Retry,
            Drop,
            Uploaded,
            RemoveFromStore,
            Forget,
        }
        let next = {
            let mut state = self.state.lock().expect("queue lock");
            let Some(p) = state.get_mut(&key) else {
                self.idle.notify_waiters();
                return result;
            };
            let next = if p.deleted {
                Next::RemoveFromStore
            } else if matches!(result, Err(UploadError::Gone)) {
                // A DELETE removed the file between the commit and the queue: nothing to send.
                Next::Forget
            } else if p.damaged {
                // Moved aside while this upload ran; what it sent was checked, so it stands.
                Next::Forget
            } else {
                match (&result, p.through) {
                    (Ok(()), _) => Next::Uploaded,
                    (Err(_), true) => Next::Drop,
                    (Err(_), false) => Next::Retry,
                }
            };
            match next {
                Next::Retry => {
                    p.uploading = false;
                    p.failures += 1;
                    p.next_attempt = Instant::now() + self.backoff.delay(p.failures);
                }
                _ => {
                    let p = state.remove(&key).expect("entry");
                    if !p.deleted && !p.damaged {
                        self.pending_bytes.fetch_sub(p.size, Ordering::SeqCst);
                    }
                }
            }
            next
        };
        match (&result, next) {
            (Err(e), Next::Retry | Next::Drop) => {
                self.c.failures.inc();
                tracing::warn!(%key, error = %crate::error_chain(e), "upload to the store failed; will retry");
                if matches!(next, Next::Drop) {
                    self.remove_file(key).await;
                }
            }
            (_, Next::Uploaded) => {
                self.c.uploaded.inc();
                self.remove_file(key).await;
                tracing::debug!(%key, size, "replicated to the store");
            }
            (_, Next::RemoveFromStore) => {
                // DELETE arrived while the upload ran: make sure it does not stay in the store.
                if let Err(e) = self.store.delete(&key).await {
                    tracing::error!(%key, error = %crate::error_chain(&e), "a blob deleted during its upload could not be removed from the store");
                }
            }
            _ => {}
        }
        self.idle.notify_waiters();
        result
    }

    /// Mark an attempt over without settling it (the blob is being moved aside).
    fn finish_attempt(&self, key: &BlobKey) {
        if let Some(p) = self.state.lock().expect("queue lock").get_mut(key) {
            p.uploading = false;
        }
    }

    async fn remove_file(&self, key: BlobKey) {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || spool.remove_pending(&key)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(%key, error = %e, "the spool file of an uploaded blob could not be removed"),
            Err(e) => tracing::warn!(%key, error = %e, "spool task failed"),
        }
    }
}
