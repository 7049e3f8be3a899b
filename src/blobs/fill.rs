//! Cold full reads: one shared, verified fill per blob; and the revocable
//! completions that let DELETE win over a fill or a warm still under way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use md5::{Digest, Md5};
use tokio::sync::watch;

use super::{BlobError, BlobService, BodyStream, READAHEAD};
use crate::cache::{BlobCache, BlobMeta, chunks};
use crate::key::BlobKey;

/// Tasks that will mark a blob complete in the cache (a fill, a warm after a
/// PUT). A DELETE revokes them, so a task that started before the DELETE
/// cannot bring the blob back into the cache after it.
#[derive(Debug, Default)]
pub(super) struct Completions {
    tokens: Mutex<HashMap<BlobKey, Vec<Arc<AtomicBool>>>>,
}

impl Completions {
    pub(super) fn begin(&self, key: BlobKey) -> Arc<AtomicBool> {
        let token = Arc::new(AtomicBool::new(false));
        self.tokens
            .lock()
            .expect("completions lock")
            .entry(key)
            .or_default()
            .push(token.clone());
        token
    }

    /// Insert the metadata unless a DELETE revoked the token; forget the token either way.
    pub(super) fn finish(&self, cache: &BlobCache, key: BlobKey, token: &Arc<AtomicBool>, meta: Option<BlobMeta>) {
        let mut tokens = self.tokens.lock().expect("completions lock");
        if let Some(meta) = meta
            && !token.load(Ordering::Acquire)
        {
            // Under the lock: a DELETE either revokes before this, or removes the entry after it.
            cache.insert_meta(&key, meta);
        }
        if let Some(list) = tokens.get_mut(&key) {
            list.retain(|t| !Arc::ptr_eq(t, token));
            if list.is_empty() {
                tokens.remove(&key);
            }
        }
    }

    pub(super) fn revoke(&self, key: &BlobKey) {
        let tokens = self.tokens.lock().expect("completions lock");
        for t in tokens.get(key).into_iter().flatten() {
            t.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct FillState {
    /// Chunks read, hashed and cached so far (in order).
    done: u32,
    /// Set once the whole blob was checked, or the fill failed.
    outcome: Option<Result<(), Arc<BlobError>>>,
}

/// Removes a fill from the map of fills under way when dropped.
struct FillEntry {
    svc: Arc<BlobService>,
    key: BlobKey,
}

impl Drop for FillEntry {
    fn drop(&mut self) {
        if let Ok(mut fills) = self.svc.fills.lock() {
            fills.remove(&self.key);
        }
    }
}

impl BlobService {
    /// A full read of a blob that is only in the store: join (or start) its fill.
    pub(super) async fn read_through_full(self: &Arc<Self>, key: BlobKey, size: u64) -> Result<BodyStream, BlobError> {
        if size == 0 {
            // Nothing to stream, so the check must come before the answer.
            if key != BlobKey::EMPTY {
                self.integrity_failure(key, BlobKey::EMPTY, 0);
                return Err(BlobError::Integrity {
                    key,
                    actual: BlobKey::EMPTY,
                });
            }
            self.cache.insert_meta(&key, BlobMeta { size: 0 });
            return Ok(stream::empty().boxed());
        }
        let rx = self.join_fill(key, size);
        let n = chunks::count(size, self.chunk_size());
        let svc = self.clone();
        Ok(stream::unfold((rx, 0u32), move |(mut rx, i)| {
            let svc = svc.clone();
            async move {
                if i >= n {
                    return None;
                }
                let last = i + 1 == n;
                let ready = match rx.wait_for(|s| s.outcome.is_some() || (!last && s.done > i)).await {
                    Err(_) => Err(BlobError::FillAborted),
                    Ok(s) => match &s.outcome {
                        Some(Err(e)) => Err(BlobError::Shared(e.clone())),
                        _ => Ok(()),
                    },
                };
                match ready {
                    Err(e) => Some((Err(e), (rx, n))),
                    Ok(()) => Some((svc.chunk(key, i, size).await, (rx, i + 1))),
                }
            }
        })
        .boxed())
    }

    fn join_fill(self: &Arc<Self>, key: BlobKey, size: u64) -> watch::Receiver<FillState> {
        let mut fills = self.fills.lock().expect("fills lock");
        if let Some(tx) = fills.get(&key) {
            self.stats.coalesced_waiters.fetch_add(1, Ordering::Relaxed);
            return tx.subscribe();
        }
        let tx = Arc::new(watch::Sender::new(FillState::default()));
        let rx = tx.subscribe();
        fills.insert(key, tx.clone());
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        // The fill runs on its own task: a client that leaves does not stop it for the others.
        tokio::spawn(self.clone().run_fill(key, size, tx));
        rx
    }

    async fn run_fill(self: Arc<Self>, key: BlobKey, size: u64, tx: Arc<watch::Sender<FillState>>) {
        // However this task ends (a panic included), the blob leaves the map, so
        // the sender is dropped and no reader waits on a fill that is gone.
        let registered = FillEntry { svc: self.clone(), key };
        let token = self.completions.begin(key);
        let n = chunks::count(size, self.chunk_size());
        let svc = self.clone();
        let mut parts = stream::iter(0..n)
            .map(move |i| {
                let svc = svc.clone();
                async move { svc.chunk(key, i, size).await }
            })
            .buffered(READAHEAD);
        let mut hasher = Md5::new();
        let mut result = Ok(());
        let mut done = 0u32;
        while let Some(part) = parts.next().await {
            match part {
                Ok(bytes) => {
                    hasher = hash_off_thread(hasher, bytes).await;
                    done += 1;
                    tx.send_modify(|s| s.done = done);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(parts);
        let mut verified = None;
        if result.is_ok() {
            let actual = BlobKey::from_digest(hasher);
            if actual == key {
                verified = Some(BlobMeta { size });
            } else {
                self.integrity_failure(key, actual, size);
                result = Err(BlobError::Integrity { key, actual });
            }
        } else if let Err(e) = &result {
            tracing::warn!(%key, error = %crate::error_chain(e), "read-through of a blob failed");
        }
        self.completions.finish(&self.cache, key, &token, verified);
        drop(registered);
        tx.send_modify(|s| s.outcome = Some(result.map_err(Arc::new)));
    }

    fn integrity_failure(&self, key: BlobKey, actual: BlobKey, size: u64) {
        self.stats.integrity_failures.fetch_add(1, Ordering::Relaxed);
        self.cache.remove_blob(&key, size);
        tracing::error!(%key, %actual, size, "the store's copy of a blob does not match its key; not cached, response aborted");
    }
}

/// Hash on a blocking thread: MD5 runs at ~0.5 GB/s, too slow for the async workers.
async fn hash_off_thread(mut hasher: Md5, bytes: Bytes) -> Md5 {
    tokio::task::spawn_blocking(move || {
        hasher.update(&bytes);
        hasher
    })
    .await
    .expect("hash task")
}
