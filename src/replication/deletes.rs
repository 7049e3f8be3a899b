//! Deletes from the store. A DELETE removes the blob from the store before it
//! is answered when the store answers; when it does not, the deletion is
//! recorded durably (`spool/deletes/`) and answered 202, and a worker sends it
//! once the store is back, across restarts. In a cluster each deletion also
//! leaves a tombstone in the store, which nodes that missed it read.
//!
//! A store delete and an upload of the same blob never overlap: the delete
//! holds the blob's queue entry while it runs, so a PUT that arrives meanwhile
//! uploads after it (the later write wins), and a queued delete that a later
//! PUT superseded is dropped instead of removing the new upload.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Pending, Replicator};
use crate::key::BlobKey;
use crate::store::StoreError;

/// A delete waiting for the store.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueuedDelete {
    at: SystemTime,
    failures: u32,
    next_attempt: Instant,
}

/// What became of a delete sent to the store.
#[derive(Debug)]
pub enum StoreDelete {
    /// The store no longer has the blob.
    Done,
    /// A PUT of the blob, acknowledged after the DELETE, stands: nothing to remove.
    Superseded,
}

impl Replicator {
    /// Record tombstones in the store with each delete (a node of a cluster).
    pub fn record_tombstones_in_store(&self) {
        self.tombstones_in_store.store(true, Ordering::SeqCst);
    }

    /// Remove a blob from the store now (and record its tombstone there, in a
    /// cluster). No upload of the blob runs meanwhile.
    pub async fn delete_from_store(&self, key: &BlobKey, at: SystemTime) -> Result<StoreDelete, StoreError> {
        if !self.hold_for_delete(key).await {
            return Ok(StoreDelete::Superseded);
        }
        let result = async {
            if self.tombstones_in_store.load(Ordering::SeqCst) {
                self.store.put_tombstone(key, at).await?;
            }
            self.store.delete(key).await
        }
        .await;
        self.release_after_delete(key);
        result.map(|()| StoreDelete::Done)
    }

    /// Durably queue a delete the store could not take now. On error nothing is queued.
    pub async fn queue_delete(&self, key: BlobKey, at: SystemTime) -> std::io::Result<()> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.record_delete(&key, at))
            .await
            .expect("spool task")?;
        self.enqueue_delete(key, at);
        Ok(())
    }

    /// A PUT of a blob whose DELETE still waits for the store, acknowledged
    /// after it: the later write wins, so the queued delete is dropped, from
    /// disk first, before the PUT is answered (a delete replayed after a crash
    /// must not remove the new upload).
    pub async fn supersede_queued_delete(&self, key: &BlobKey) -> std::io::Result<()> {
        if !self.is_delete_queued(key) {
            return Ok(());
        }
        let (spool, k) = (self.spool.clone(), *key);
        tokio::task::spawn_blocking(move || spool.remove_delete(&k))
            .await
            .expect("spool task")?;
        self.deletes.lock().expect("deletes lock").remove(key);
        tracing::info!(%key, "a PUT after a queued DELETE: the delete is dropped");
        Ok(())
    }

    /// Queue a delete already recorded on disk (at start).
    pub fn enqueue_delete(&self, key: BlobKey, at: SystemTime) {
        let mut deletes = self.deletes.lock().expect("deletes lock");
        let entry = deletes.entry(key).or_insert(QueuedDelete {
            at,
            failures: 0,
            next_attempt: Instant::now(),
        });
        entry.at = entry.at.max(at);
        drop(deletes);
        self.delete_work.notify_one();
    }

    /// Deletes waiting for the store.
    pub fn queued_deletes(&self) -> usize {
        self.deletes.lock().expect("deletes lock").len()
    }

    /// Whether a delete of `key` waits for the store.
    pub fn is_delete_queued(&self, key: &BlobKey) -> bool {
        self.deletes.lock().expect("deletes lock").contains_key(key)
    }

    /// The worker that sends queued deletes, while the store answers.
    pub async fn run_delete_worker(self: Arc<Self>, cancel: CancellationToken) {
        let mut health = self.store_health.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                h = health.wait_for(|healthy| *healthy) => if h.is_err() { return },
            }
            let work = self.delete_work.notified();
            let due = {
                let deletes = self.deletes.lock().expect("deletes lock");
                let now = Instant::now();
                let due = deletes
                    .iter()
                    .find(|(_, d)| d.next_attempt <= now)
                    .map(|(k, d)| (*k, d.at));
                let next = deletes.values().map(|d| d.next_attempt).min();
                due.ok_or(next)
            };
            match due {
                Ok((key, at)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.send_queued_delete(key, at) => {}
                    }
                }
                Err(next) => {
                    let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = work => {}
                        _ = tokio::time::sleep_until(wake.into()) => {}
                        _ = health.changed() => {}
                    }
                }
            }
        }
    }

    async fn send_queued_delete(&self, key: BlobKey, at: SystemTime) {
        match self.delete_from_store(&key, at).await {
            Ok(outcome) => {
                let spool = self.spool.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || spool.remove_delete(&key))
                    .await
                    .expect("spool task")
                {
                    tracing::warn!(%key, error = %e, "a sent delete could not be removed from the queue; it will be sent again");
                    return;
                }
                let mut deletes = self.deletes.lock().expect("deletes lock");
                // A DELETE queued again meanwhile, with a later time, stays.
                if deletes.get(&key).is_some_and(|d| d.at <= at) {
                    deletes.remove(&key);
                }
                tracing::info!(%key, ?outcome, "queued delete reached the store");
            }
            Err(e) => {
                self.c.failures.inc();
                tracing::warn!(%key, error = %crate::error_chain(&e), "queued delete failed; will retry");
                if let Some(d) = self.deletes.lock().expect("deletes lock").get_mut(&key) {
                    d.failures += 1;
                    d.next_attempt = Instant::now() + self.backoff.delay(d.failures);
                }
            }
        }
    }

    /// Hold the blob's queue entry for a store delete: wait for an upload under
    /// way to end, and leave a busy entry that uploads wait behind. Returns
    /// false, holding nothing, when a PUT acknowledged since the DELETE has the
    /// blob pending: that later write wins.
    async fn hold_for_delete(&self, key: &BlobKey) -> bool {
        self.when_settled(|state| match state.get(key) {
            None => {
                let mut busy = Pending::new(0, SystemTime::now(), true, false);
                busy.deleted = true;
                state.insert(*key, busy);
                Some(true)
            }
            // Acknowledged by a PUT since the DELETE (the DELETE cancelled any earlier one).
            Some(p) if p.live() => Some(false),
            // An upload (or another delete) under way: wait for it to settle.
            Some(_) => None,
        })
        .await
    }

    /// Give the entry back: gone, or, if a PUT arrived meanwhile, due for upload.
    fn release_after_delete(&self, key: &BlobKey) {
        let mut state = self.state.lock().expect("queue lock");
        if let Some(p) = state.get_mut(key) {
            if p.deleted {
                state.remove(key);
            } else {
                p.uploading = false;
                self.work.notify_one();
            }
        }
        drop(state);
        self.idle.notify_waiters();
    }
}
