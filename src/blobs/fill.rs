//! Cold full reads: one shared, verified fill per blob. The fill reads the
//! store chunk by chunk (a few ahead), hashes and caches each chunk, and hands
//! its bytes to every waiting reader as they arrive; the last chunk is released
//! only once the whole blob matched its key, and the digest of every chunk is
//! recorded with the blob's metadata then.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use md5::{Digest, Md5};
use tokio::sync::watch;

use super::read::{Origin, Publish, READAHEAD, Reader};
use super::{BlobError, BodyStream};
use crate::cache::BlobMeta;
use crate::chunks;
use crate::cluster::PeerBlob;
use crate::key::BlobKey;

/// The fill hands readers a chunk's bytes in batches of about this many, as
/// they arrive from the store, so the first byte goes out long before the
/// first whole chunk is in.
pub(super) const PUBLISH_BYTES: usize = 128 * 1024;

#[derive(Debug, Default)]
pub(super) struct FillState {
    /// Chunks read, hashed and cached so far (in order).
    done: u32,
    /// Bytes received so far of chunks still being read (`done` and the ones
    /// read ahead of it), in order.
    arriving: HashMap<u32, Vec<Bytes>>,
    /// Set once the whole blob was checked, or the fill failed.
    outcome: Option<Result<(), Arc<BlobError>>>,
}

impl FillState {
    fn arrived(&self, chunk: u32) -> usize {
        self.arriving
            .get(&chunk)
            .map_or(0, |parts| parts.iter().map(Bytes::len).sum())
    }

    /// The arrived bytes of `chunk` from `offset` on.
    fn arrived_from(&self, chunk: u32, mut offset: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        for part in self.arriving.get(&chunk).into_iter().flatten() {
            if offset >= part.len() {
                offset -= part.len();
            } else {
                out.push(part.slice(offset..));
                offset = 0;
            }
        }
        out
    }
}

/// What a reader of a fill does next.
enum Step {
    Fail(BlobError),
    /// The chunk is complete (and, for the last one, the blob checked): take it from the cache.
    Cached,
    /// Bytes of the chunk that arrived past the reader's offset.
    Arrived(Vec<Bytes>),
}

/// Removes a fill from the map of fills under way when dropped.
struct FillEntry {
    reader: Arc<Reader>,
    key: BlobKey,
}

impl Drop for FillEntry {
    fn drop(&mut self) {
        if let Ok(mut fills) = self.reader.fills.lock() {
            fills.remove(&self.key);
        }
    }
}

impl Reader {
    /// A full read of a blob that is only in the store: join (or start) its fill.
    /// `peer`: a peer to read it from first (`--peer-copies`).
    pub(super) async fn read_through_full(
        self: &Arc<Self>,
        key: BlobKey,
        size: u64,
        peer: Option<PeerBlob>,
    ) -> Result<BodyStream, BlobError> {
        if size == 0 {
            // Nothing to stream, so the check must come before the answer.
            if key != BlobKey::EMPTY {
                self.mismatch(key, BlobKey::EMPTY, 0);
                return Err(BlobError::Integrity {
                    key,
                    actual: BlobKey::EMPTY,
                });
            }
            let meta = BlobMeta {
                size: 0,
                verified_at: SystemTime::now(),
                digests: Vec::new().into(),
            };
            self.parts.cache.insert_meta(&key, &meta);
            return Ok(stream::empty().boxed());
        }
        let rx = self.join_fill(key, size, peer);
        let n = chunks::count(size, self.parts.chunk_size());
        let svc = self.clone();
        let origin = Origin::new(key, size, None, None);
        // Each reader keeps its own place: (chunk, offset in it). It streams a
        // chunk's bytes as they arrive, or from the cache once the chunk is
        // complete (a reader that fell behind). The last chunk waits for the
        // check of the whole blob, so a damaged blob never completes.
        let batches = stream::unfold((rx, 0u32, 0usize), move |(mut rx, i, offset)| {
            let (svc, origin) = (svc.clone(), origin.clone());
            async move {
                if i >= n {
                    return None;
                }
                let last = i + 1 == n;
                let step = match rx
                    .wait_for(|s| s.outcome.is_some() || (!last && (s.done > i || s.arrived(i) > offset)))
                    .await
                {
                    Err(_) => Step::Fail(BlobError::FillAborted),
                    Ok(s) => match &s.outcome {
                        Some(Err(e)) => Step::Fail(BlobError::Shared(e.clone())),
                        Some(Ok(())) => Step::Cached,
                        None if s.done > i => Step::Cached,
                        None => Step::Arrived(s.arrived_from(i, offset)),
                    },
                };
                Some(match step {
                    Step::Fail(e) => (vec![Err(e)], (rx, n, 0)),
                    Step::Cached => match svc.chunk(&origin, i, None).await {
                        Ok(chunk) => (vec![Ok(chunk.slice(offset..))], (rx, i + 1, 0)),
                        Err(e) => (vec![Err(e)], (rx, n, 0)),
                    },
                    Step::Arrived(parts) => {
                        let offset = offset + parts.iter().map(Bytes::len).sum::<usize>();
                        (parts.into_iter().map(Ok).collect(), (rx, i, offset))
                    }
                })
            }
        });
        Ok(batches
            .flat_map(stream::iter)
            .filter(|part| std::future::ready(part.as_ref().map_or(true, |b| !b.is_empty())))
            .boxed())
    }

    fn join_fill(self: &Arc<Self>, key: BlobKey, size: u64, peer: Option<PeerBlob>) -> watch::Receiver<FillState> {
        let mut fills = self.fills.lock().expect("fills lock");
        if let Some(tx) = fills.get(&key) {
            self.parts.stats.coalesced_waiters.inc();
            return tx.subscribe();
        }
        let tx = Arc::new(watch::Sender::new(FillState::default()));
        let rx = tx.subscribe();
        fills.insert(key, tx.clone());
        self.parts.stats.fills.inc();
        // The fill runs on its own task: a client that leaves does not stop it for the others.
        tokio::spawn(self.clone().run_fill(key, size, peer, tx));
        rx
    }

    async fn run_fill(
        self: Arc<Self>,
        key: BlobKey,
        size: u64,
        peer: Option<PeerBlob>,
        tx: Arc<watch::Sender<FillState>>,
    ) {
        // However this task ends (a panic included), the blob leaves the map, so
        // the sender is dropped and no reader waits on a fill that is gone.
        let registered = FillEntry {
            reader: self.clone(),
            key,
        };
        let token = self.parts.completions.begin(key);
        let n = chunks::count(size, self.parts.chunk_size());
        let svc = self.clone();
        let origin = Origin::from_peer(key, size, peer);
        let publisher = tx.clone();
        let mut parts = stream::iter(0..n)
            .map(move |i| {
                let (svc, origin) = (svc.clone(), origin.clone());
                let tx = publisher.clone();
                // Only the chunk readers are waiting for (the first one not done)
                // is published, and only from its start: the others are read
                // ahead in parallel and reach readers through the cache. That
                // keeps at most one chunk's bytes held twice. Readers never see
                // the last chunk before the check, so it is not published either.
                let publish = (i + 1 < n).then(|| -> Publish {
                    let mut from_start = true;
                    Box::new(move |batch| {
                        if from_start {
                            tx.send_if_modified(|s| {
                                from_start = s.done == i;
                                if from_start {
                                    s.arriving.entry(i).or_default().extend(batch);
                                }
                                from_start
                            });
                        }
                    })
                });
                async move { svc.chunk(&origin, i, publish).await }
            })
            .buffered(READAHEAD);
        // The chunks are hashed in order on a task of their own, so the loop
        // below hands each one over and at once starts the next read ahead
        // (a read started only once the chunk before it was hashed left the
        // store idle for the hash's time, about 10 ms a chunk).
        let (feed, mut fed) = tokio::sync::mpsc::channel::<Bytes>(1);
        let marks = tx.clone();
        let hashing = tokio::spawn(async move {
            let mut hasher = Md5::new();
            let mut digests = Vec::with_capacity(n as usize);
            while let Some(bytes) = fed.recv().await {
                let digest;
                (hasher, digest) = hash_off_thread(hasher, bytes).await;
                let done = digests.len() as u32;
                digests.push(digest);
                // Readers still inside this chunk go on from the cache.
                marks.send_modify(|s| {
                    s.arriving.remove(&done);
                    s.done = done + 1;
                });
            }
            (hasher, digests)
        });
        let mut result = Ok(());
        while let Some(part) = parts.next().await {
            match part {
                Ok(bytes) => {
                    if feed.send(bytes).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(feed);
        let (hasher, digests) = hashing.await.expect("hash task");
        drop(parts);
        tx.send_modify(|s| s.arriving.clear());
        let mut verified = None;
        if result.is_ok() {
            let actual = BlobKey::from_digest(hasher);
            if actual == key {
                verified = Some(BlobMeta {
                    size,
                    verified_at: SystemTime::now(),
                    digests: digests.into(),
                });
            } else {
                self.mismatch(key, actual, size);
                result = Err(BlobError::Integrity { key, actual });
            }
        } else if let Err(e) = &result {
            tracing::warn!(%key, error = %crate::error_chain(e), "read-through of a blob failed");
        }
        self.parts.completions.finish(&self.parts.cache, key, &token, verified);
        drop(registered);
        tx.send_modify(|s| s.outcome = Some(result.map_err(Arc::new)));
    }

    fn mismatch(&self, key: BlobKey, actual: BlobKey, size: u64) {
        let what = format!("the store's copy has MD5 {actual}; not cached, response aborted");
        self.parts.integrity_failure(&key, size, &what);
    }
}

/// Hash a chunk on a blocking thread (MD5 runs at ~0.5 GB/s, too slow for the
/// async workers), and take its digest.
async fn hash_off_thread(mut hasher: Md5, bytes: Bytes) -> (Md5, u64) {
    tokio::task::spawn_blocking(move || {
        hasher.update(&bytes);
        (hasher, chunks::digest(&bytes))
    })
    .await
    .expect("hash task")
}
