//! Reads: stream what the lookup found. Cache hits stream chunks from the
//! cache; a chunk the cache has lost is read again from the spool or the store
//! and checked against the digest recorded when the blob was verified. Spool
//! reads are checked chunk by chunk. Full cold reads join a fill (`fill.rs`);
//! ranged cold reads fetch just the chunks they cover.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream;
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;

use super::fill::{FillState, PUBLISH_BYTES};
use super::{BlobError, BodyStream, Found, Location, Parts, Read};
use crate::chunks::{self, Digests};
use crate::cluster::PeerBlob;
use crate::key::BlobKey;
use crate::replication::{SpoolBlob, SpoolError};
use crate::store::{ByteStream, StoreError};

/// Chunks fetched ahead of the one being sent, per reader.
pub(super) const READAHEAD: usize = 4;

/// Receives a chunk's bytes as they arrive from the store.
pub(super) type Publish = Box<dyn FnMut(Vec<Bytes>) + Send>;

/// How long a first chunk requested alongside a lookup waits to be claimed
/// (the lookup was for a HEAD, a range, a 304, or a blob that is not there).
const PREFIX_CLAIM: Duration = Duration::from_secs(5);

/// The read side of the service.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) parts: Arc<Parts>,
    pub(super) fills: Mutex<HashMap<BlobKey, Arc<watch::Sender<FillState>>>>,
    /// First chunks requested from the store alongside a cold read's lookup.
    prefixes: Mutex<HashMap<BlobKey, Prefix>>,
}

/// A blob's first chunk, requested from the store before its size was known.
struct Prefix {
    asked: Instant,
    answer: JoinHandle<Option<Result<ByteStream, StoreError>>>,
}

impl std::fmt::Debug for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefix")
            .field("asked", &self.asked)
            .finish_non_exhaustive()
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        // Unclaimed: close the request rather than leave its body unread.
        self.answer.abort();
    }
}

/// What one read knows about where a lost chunk can be read again. The
/// pending file is resolved once per read, and only if a chunk needs it.
#[derive(Debug)]
pub(super) struct Origin {
    pub(super) key: BlobKey,
    pub(super) size: u64,
    /// The digests recorded when the blob was verified; `None` for a ranged
    /// read of a blob no one has verified yet.
    pub(super) digests: Option<Digests>,
    spool: OnceCell<Option<Arc<SpoolBlob>>>,
    /// A peer to read chunks from before the store (`--peer-copies`).
    peer: Option<PeerBlob>,
}

impl Origin {
    pub(super) fn new(key: BlobKey, size: u64, digests: Option<Digests>, spool: Option<Arc<SpoolBlob>>) -> Arc<Self> {
        let cell = match spool {
            Some(blob) => OnceCell::new_with(Some(Some(blob))),
            None => OnceCell::new(),
        };
        Arc::new(Origin {
            key,
            size,
            digests,
            spool: cell,
            peer: None,
        })
    }

    /// A blob read from a peer, chunk by chunk, to keep a copy here.
    pub(super) fn from_peer(key: BlobKey, size: u64, peer: Option<PeerBlob>) -> Arc<Self> {
        Arc::new(Origin {
            key,
            size,
            digests: None,
            spool: OnceCell::new(),
            peer,
        })
    }
}

impl Reader {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Reader {
            parts,
            fills: Mutex::default(),
            prefixes: Mutex::default(),
        }
    }

    /// Ask the store for the first chunk of `key` now, alongside the lookup
    /// that is about to ask it for the blob's size, so a cold read waits for
    /// one round trip to the store instead of two. The read of chunk 0 that
    /// follows takes it (`read_remote`); nothing is asked if a fill of the
    /// blob is under way, or its first chunk is cached or asked for already,
    /// so each chunk is still read once. A store that answers at once asks nothing.
    pub(super) fn prefetch(self: &Arc<Self>, key: &BlobKey) {
        if self.fills.lock().expect("fills lock").contains_key(key) || self.parts.cache.may_have_chunk(key, 0) {
            return;
        }
        let mut prefixes = self.prefixes.lock().expect("prefixes lock");
        if prefixes.contains_key(key) {
            return;
        }
        let (store, k, len) = (self.parts.store.clone(), *key, self.parts.chunk_size());
        let answer = tokio::spawn(async move { store.get_prefix(&k, len).await });
        let asked = Instant::now();
        prefixes.insert(*key, Prefix { asked, answer });
        // Unclaimed after a while: dropped, which closes its request.
        let reader = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PREFIX_CLAIM).await;
            if let Some(reader) = reader.upgrade() {
                let mut prefixes = reader.prefixes.lock().expect("prefixes lock");
                if prefixes.get(&k).is_some_and(|p| p.asked == asked) {
                    prefixes.remove(&k);
                }
            }
        });
    }

    /// The first chunk of `key` as `prefetch` asked for it, if it did and the store answered.
    async fn take_prefix(&self, key: &BlobKey) -> Option<Result<ByteStream, StoreError>> {
        let mut prefix = self.prefixes.lock().expect("prefixes lock").remove(key)?;
        // The task ends with its answer (or `None`); only dropping the prefix aborts it.
        (&mut prefix.answer).await.ok().flatten()
    }

    pub(super) async fn read(self: &Arc<Self>, found: Found, range: Range<u64>) -> Result<Read, BlobError> {
        let bytes_out = self.parts.stats.bytes_out.clone();
        let want = range.end - range.start;
        let mut stream = self.read_uncounted(found, range).await?;
        // Wait for the first bytes before answering: a store that fails at once
        // (or a one-chunk blob that fails its check) gets an error status, not a
        // 200 that breaks off.
        let stream = match stream.next().await {
            Some(Err(e)) => return Err(e),
            // All of it, checked: a small blob's answer needs no stream.
            Some(Ok(first)) if first.len() as u64 == want => {
                bytes_out.inc_by(want);
                return Ok(Read::Whole(first));
            }
            Some(Ok(first)) => stream::once(async move { Ok(first) }).chain(stream).boxed(),
            None => stream,
        };
        Ok(Read::Stream(
            stream
                .inspect(move |part| {
                    if let Ok(bytes) = part {
                        bytes_out.inc_by(bytes.len() as u64);
                    }
                })
                .boxed(),
        ))
    }

    async fn read_uncounted(self: &Arc<Self>, found: Found, range: Range<u64>) -> Result<BodyStream, BlobError> {
        let Found { key, size, location } = found;
        debug_assert!(range.end <= size && range.start <= range.end);
        match location {
            Location::Spool(blob) => Ok(self.spool_stream(blob, range)),
            Location::Peer(blob) => self.peer_stream(key, size, blob, range).await,
            Location::Store if range.start == 0 && range.end == size => self.read_through_full(key, size, None).await,
            Location::Store => Ok(self.chunk_stream(Origin::new(key, size, None, None), range)),
            Location::Cache(meta) => Ok(self.chunk_stream(Origin::new(key, size, Some(meta.digests), None), range)),
        }
    }

    /// A blob a peer has. By default its bytes stream through (the peer
    /// checked them) and nothing is kept here, so the cluster caches each blob
    /// once. With `--peer-copies` they go through this node's cache like a
    /// store read: a full read is a verified fill. A peer that fails before the
    /// first byte is passed over for the store.
    async fn peer_stream(
        self: &Arc<Self>,
        key: BlobKey,
        size: u64,
        blob: PeerBlob,
        range: Range<u64>,
    ) -> Result<BodyStream, BlobError> {
        let cluster = self
            .parts
            .cluster
            .clone()
            .expect("a peer location comes from a cluster");
        let full = range.start == 0 && range.end == size;
        if cluster.config().peer_copies {
            return if full {
                self.read_through_full(key, size, Some(blob)).await
            } else {
                Ok(self.chunk_stream(Origin::from_peer(key, size, Some(blob)), range))
            };
        }
        match cluster.get(&blob, &key, range.clone()).await {
            Ok(stream) => Ok(stream.map(|r| r.map_err(BlobError::Peer)).boxed()),
            Err(e) => {
                tracing::warn!(%key, error = %e, "a peer that has the blob failed; reading the store");
                if full {
                    self.read_through_full(key, size, None).await
                } else {
                    Ok(self.chunk_stream(Origin::new(key, size, None, None), range))
                }
            }
        }
    }

    /// The chunks of `range` of a pending blob, each checked as it is read.
    fn spool_stream(self: &Arc<Self>, blob: Arc<SpoolBlob>, range: Range<u64>) -> BodyStream {
        let cs = blob.chunk_size();
        let reader = self.clone();
        stream::iter(chunks::covering(&range, cs))
            .map(move |i| {
                let (blob, reader, range) = (blob.clone(), reader.clone(), range.clone());
                async move {
                    let chunk = reader.spool_chunk(&blob, i).await?;
                    Ok(chunk.slice(chunks::slice_within(i, &range, cs)))
                }
            })
            .buffered(2)
            .boxed()
    }

    /// One checked chunk of a pending blob; a damaged blob is moved aside and reported.
    async fn spool_chunk(&self, blob: &Arc<SpoolBlob>, index: u32) -> Result<Bytes, BlobError> {
        let b = blob.clone();
        match tokio::task::spawn_blocking(move || b.read_chunk(index))
            .await
            .expect("spool read task")
        {
            Ok(bytes) => Ok(bytes),
            Err(SpoolError::Damaged { key, what }) => {
                self.parts.stats.integrity_failures.inc();
                self.parts.cache.remove_blob(&key, blob.size);
                self.parts.replicator.damaged(&key, &what).await;
                Err(BlobError::Spool(SpoolError::Damaged { key, what }))
            }
            Err(e) => Err(BlobError::Spool(e)),
        }
    }

    /// Chunks of `range`, each from the cache or fetched once from its origin.
    pub(super) fn chunk_stream(self: &Arc<Self>, origin: Arc<Origin>, range: Range<u64>) -> BodyStream {
        let cs = self.parts.chunk_size();
        let reader = self.clone();
        let covering = chunks::covering(&range, cs);
        let read = move |i| {
            let (reader, origin, range) = (reader.clone(), origin.clone(), range.clone());
            async move {
                let bytes = reader.chunk(&origin, i, None).await?;
                Ok(bytes.slice(chunks::slice_within(i, &range, cs)))
            }
        };
        // Within one chunk (every small blob): nothing to read ahead.
        if covering.len() == 1 {
            return stream::once(read(covering.start)).boxed();
        }
        stream::iter(covering).map(read).buffered(READAHEAD).boxed()
    }

    /// One chunk: from the cache, or read once from the origin and cached. If
    /// this call is the one that reads the store, the bytes go to `publish` as
    /// they arrive.
    pub(super) async fn chunk(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        index: u32,
        publish: Option<Publish>,
    ) -> Result<Bytes, BlobError> {
        let (reader, o) = (self.clone(), origin.clone());
        Ok(self
            .parts
            .cache
            .chunk_or_fetch(&origin.key, index, move || async move {
                reader.read_origin(&o, index, publish).await
            })
            .await?)
    }

    /// Read chunk `index` again from where the blob lives: the pending spool
    /// (checked there), else the store; checked against the recorded digest if
    /// there is one.
    async fn read_origin(&self, origin: &Origin, index: u32, publish: Option<Publish>) -> Result<Bytes, BlobError> {
        let key = origin.key;
        let spool = origin
            .spool
            .get_or_try_init(|| async {
                let blob = self
                    .parts
                    .replicator
                    .open_pending(&key)
                    .await
                    .map_err(BlobError::Spool)?;
                Ok::<_, BlobError>(blob.map(Arc::new))
            })
            .await?;
        if let Some(blob) = spool {
            return self.spool_chunk(blob, index).await;
        }
        let range = chunks::bounds(index, origin.size, self.parts.chunk_size());
        let bytes = self.read_remote(origin, range, publish).await?;
        if let Some(digests) = &origin.digests
            && chunks::digest(&bytes) != digests[index as usize]
        {
            let what = format!(
                "chunk {index} read again from the store does not match the digest recorded when the blob was verified"
            );
            self.parts.integrity_failure(&key, origin.size, &what);
            return Err(BlobError::ChunkIntegrity { key, chunk: index });
        }
        Ok(bytes)
    }

    /// A byte range from the origin's peer (if it has one and it answers),
    /// else the store, handed to `publish` as it arrives.
    async fn read_remote(
        &self,
        origin: &Origin,
        range: Range<u64>,
        mut publish: Option<Publish>,
    ) -> Result<Bytes, BlobError> {
        let key = origin.key;
        let want = (range.end - range.start) as usize;
        let from_peer = match (&origin.peer, &self.parts.cluster) {
            (Some(blob), Some(cluster)) => match cluster.get(blob, &key, range.clone()).await {
                Ok(stream) => Some(stream.map(|r| r.map_err(BlobError::Peer)).boxed()),
                Err(e) => {
                    tracing::debug!(%key, error = %e, "a chunk could not be read from the peer; reading the store");
                    None
                }
            },
            _ => None,
        };
        let prefix = match (&from_peer, range.start) {
            // A first chunk asked for alongside the lookup; if that request failed, ask again.
            (None, 0) => self.take_prefix(&key).await.and_then(Result::ok),
            _ => None,
        };
        let mut body: BodyStream = match (from_peer, prefix) {
            (Some(stream), _) => stream,
            (None, Some(stream)) => stream.map(|r| r.map_err(BlobError::from)).boxed(),
            (None, None) => self
                .parts
                .store
                .get(&key, range)
                .await?
                .map(|r| r.map_err(BlobError::from))
                .boxed(),
        };
        let mut buf = BytesMut::with_capacity(want);
        let mut batch = Vec::new();
        let mut batched = 0;
        while let Some(part) = body.next().await {
            let part = part?;
            if buf.len() + part.len() > want {
                break;
            }
            buf.extend_from_slice(&part);
            if let Some(publish) = &mut publish {
                batched += part.len();
                batch.push(part);
                // The first bytes go out at once (time to first byte); then in batches.
                if batched >= PUBLISH_BYTES || buf.len() == want || buf.len() == batched {
                    publish(std::mem::take(&mut batch));
                    batched = 0;
                }
            }
        }
        if buf.len() != want {
            return Err(BlobError::ShortRead { key });
        }
        Ok(buf.freeze())
    }
}
