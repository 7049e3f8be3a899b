//! The blob service: where a blob lives, how it is read, how it is written.
//!
//! - [`lookup`]: the one chain every caller uses to find a blob: this node's
//!   cache, its pending spool, then the store (HEADs coalesced).
//! - [`read`] and [`fill`]: streaming what the lookup found; a cold full read
//!   joins one shared, verified fill per blob.
//! - [`write`]: ingest: stream to the spool while hashing, make it durable,
//!   hand it to replication, warm the cache.
//! - DELETE and the status of a blob, below, over the same shared parts. A
//!   deletion is applied here (tombstone, cache, pending copy), sent to every
//!   live peer, and then to the store, or queued for it (202) while it is down.
//!
//! - [`catch_up`]: deletions a node missed, read from the store's tombstones
//!   and its peers' logs, before it serves and then periodically.
//!
//! Integrity: a blob enters the cache as complete only once its bytes matched
//! its key, and the digest of each of its chunks is recorded then. A chunk
//! read again later (from the spool or the store) is checked against it.

pub mod catch_up;
mod completions;
mod error;
mod fill;
mod key_locks;
mod lookup;
mod read;
mod settings;
mod stats;
mod write;

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus::Registry;

pub use error::BlobError;
pub use lookup::{Found, Location, Reach, Source};
pub use settings::{BlobConfig, BlobSettings, WriteMode};
pub use write::{PutOutcome, PutRequest};

use crate::cache::BlobCache;
use crate::cluster::{Cluster, TombstoneRecord};
use crate::key::BlobKey;
use crate::replication::{Replicator, Spool, StoreDelete};
use crate::store::Store;
use crate::tombstones::Tombstones;
use completions::Completions;
use stats::BlobStats;

/// A stream of body bytes.
pub type BodyStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// The bytes of a read.
pub enum Read {
    /// All of them, checked: they were ready in one piece (a blob or range within one chunk, cached).
    Whole(Bytes),
    /// As they come.
    Stream(BodyStream),
}

/// The answer of `GET /blobs/{md5}/status`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BlobStatus {
    pub md5: BlobKey,
    /// Complete in this node's cache.
    pub cached: bool,
    /// Acknowledged here and waiting for the store.
    pub pending: bool,
    /// Whether the store has it; `null` when the store could not be asked.
    pub in_store: Option<bool>,
    pub size: Option<u64>,
    /// This node's pending copy was found damaged and moved aside (never served or uploaded).
    pub damaged: bool,
}

impl BlobStatus {
    /// Whether the blob is known to be nowhere this node looks: not in its
    /// cache or spool, no damaged copy of it here, and the store answered
    /// that it has none (a store that could not be asked proves nothing).
    pub fn is_nowhere(&self) -> bool {
        !self.cached && !self.pending && !self.damaged && self.in_store == Some(false)
    }
}

/// What the service is built on, shared by its parts.
#[derive(Debug)]
struct Parts {
    cache: BlobCache,
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    replicator: Arc<Replicator>,
    tombstones: Arc<Tombstones>,
    cluster: Option<Arc<Cluster>>,
    completions: Completions,
    /// A PUT's commit and a DELETE's removal of one blob never interleave.
    key_locks: key_locks::KeyLocks,
    stats: BlobStats,
}

/// What a DELETE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// Gone from this node, the live peers and the store.
    Done,
    /// Gone from this node and the live peers; the store could not be reached,
    /// so the delete is queued on disk and sent when it answers.
    Queued,
}

impl Parts {
    fn chunk_size(&self) -> u64 {
        self.cache.chunk_size()
    }

    /// Bytes that failed their check: never served as good, and the blob's
    /// cache entries are dropped so the next read starts afresh.
    fn integrity_failure(&self, key: &BlobKey, size: u64, what: &str) {
        self.stats.integrity_failures.inc();
        self.cache.remove_blob(key, size);
        tracing::error!(%key, size, %what, "bytes of a blob failed their check; not served, cache entries dropped");
    }
}

/// The read-through / write-back service. Shared as `Arc<BlobService>`.
#[derive(Debug)]
pub struct BlobService {
    parts: Arc<Parts>,
    lookup: lookup::Lookup,
    reader: Arc<read::Reader>,
    writer: Arc<write::Writer>,
}

impl BlobService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: BlobCache,
        store: Arc<dyn Store>,
        spool: Arc<Spool>,
        replicator: Arc<Replicator>,
        tombstones: Arc<Tombstones>,
        cluster: Option<Arc<Cluster>>,
        config: BlobConfig,
        registry: &Registry,
    ) -> Self {
        let parts = Arc::new(Parts {
            cache,
            store,
            spool,
            replicator,
            tombstones,
            cluster,
            completions: Completions::default(),
            key_locks: Default::default(),
            stats: BlobStats::new(registry),
        });
        let lookup = lookup::Lookup::new(parts.clone());
        BlobService {
            reader: Arc::new(read::Reader::new(parts.clone())),
            writer: Arc::new(write::Writer::new(parts.clone(), lookup.clone(), config)),
            lookup,
            parts,
        }
    }

    /// Find a blob for a GET or HEAD, as far as `reach` allows: cache, pending
    /// spool, owner, store, other peers. Counted as a hit, a miss or not found.
    pub async fn open(&self, key: &BlobKey, reach: Reach) -> Result<Found, BlobError> {
        let found = self.lookup.find(key, reach).await;
        self.counted(found)
    }

    /// `open` for a GET of the whole blob: if the lookup goes as far as the
    /// store, the blob's first chunk is asked for alongside its size, so that
    /// a cold read waits for one round trip to the store, not two.
    pub async fn open_whole(&self, key: &BlobKey, reach: Reach) -> Result<Found, BlobError> {
        let reader = self.reader.clone();
        let prefetch = move |k: &BlobKey| reader.prefetch(k);
        let found = self.lookup.find_then(key, reach, Some(&prefetch)).await;
        self.counted(found)
    }

    fn counted(&self, found: Result<Found, BlobError>) -> Result<Found, BlobError> {
        match &found {
            Ok(f) => self.count(f.source()),
            Err(BlobError::NotFound) => self.parts.stats.not_found.inc(),
            Err(_) => {}
        }
        found
    }

    fn count(&self, source: Source) {
        let stats = &self.parts.stats;
        match source {
            Source::Cache => stats.hits.inc(),
            Source::Spool => stats.spool_hits.inc(),
            Source::Peer => stats.peer_hits.inc(),
            Source::Store => stats.misses.inc(),
        }
    }

    /// This node's copy (cache or spool), not counted: a miss here is not yet a miss.
    pub async fn find_here(&self, key: &BlobKey) -> Result<Option<Found>, BlobError> {
        match self.lookup.find(key, Reach::Local).await {
            Ok(found) => {
                self.count(found.source());
                Ok(Some(found))
            }
            Err(BlobError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A GET the owner answered for this node: `Some(true)` found (a peer
    /// hit), `Some(false)` not found, `None` an error. Returns the counter of
    /// body bytes sent, for its body.
    pub fn count_forwarded(&self, found: Option<bool>) -> prometheus::IntCounter {
        let stats = &self.parts.stats;
        match found {
            Some(true) => stats.peer_hits.inc(),
            Some(false) => stats.not_found.inc(),
            None => {}
        }
        stats.bytes_out.clone()
    }

    /// Stream `range` of a found blob. An error before the first byte comes
    /// back here; one after it ends the stream with an error, so the response
    /// is cut short, never finished as if it were good.
    pub async fn read(&self, found: Found, range: std::ops::Range<u64>) -> Result<BodyStream, BlobError> {
        Ok(match self.reader.read(found, range).await? {
            Read::Whole(bytes) => futures::stream::once(async move { Ok(bytes) }).boxed(),
            Read::Stream(stream) => stream,
        })
    }

    /// `read`, with the bytes at once when they are ready at once.
    pub async fn read_body(&self, found: Found, range: std::ops::Range<u64>) -> Result<Read, BlobError> {
        self.reader.read(found, range).await
    }

    /// Store a blob from a body stream, hashing it as it arrives.
    pub async fn put<S, E>(&self, req: PutRequest, body: S) -> Result<PutOutcome, BlobError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<error::BoxError>,
    {
        self.writer.put(req, body).await
    }

    /// Remove a blob everywhere: this node (cache, pending queue), every live
    /// peer, and the store. The deletion is recorded durably first, so the
    /// cache's copies are stale from then on, whatever its disk tier does (a
    /// full disk, a restart). A store that cannot take the delete now gets it
    /// later: the delete is queued on disk ([`Deleted::Queued`]).
    pub async fn delete(&self, key: &BlobKey) -> Result<Deleted, BlobError> {
        let p = &self.parts;
        let at = SystemTime::now();
        self.forget(key, at, true).await?;
        let broadcast = async {
            if let Some(cluster) = &p.cluster {
                let missed = cluster.broadcast(&[TombstoneRecord::new(*key, at)]).await;
                if !missed.is_empty() {
                    let missed: Vec<&str> = missed.iter().map(|p| p.id.as_str()).collect();
                    tracing::warn!(%key, ?missed, "peers missed a deletion; they catch up from the store's tombstones");
                }
            }
        };
        let (_, stored) = tokio::join!(broadcast, p.replicator.delete_from_store(key, at));
        match stored {
            Ok(StoreDelete::Done) => Ok(Deleted::Done),
            // A PUT acknowledged since: it came after this DELETE and stands.
            Ok(StoreDelete::Superseded) => Ok(Deleted::Done),
            Err(e) => {
                tracing::warn!(%key, error = %crate::error_chain(&e), "the store could not take a delete now; queued");
                p.replicator
                    .queue_delete(*key, at)
                    .await
                    .map_err(BlobError::io("queue the delete for the store"))?;
                Ok(Deleted::Queued)
            }
        }
    }

    /// Deletions this node learned of from elsewhere (a peer's DELETE, the
    /// store's tombstones, a peer's log). With `only_held`, only blobs this
    /// node holds are recorded (catching up on many). Returns how many applied.
    pub async fn learn_deletions(&self, records: &[(BlobKey, SystemTime)], only_held: bool) -> usize {
        let p = &self.parts;
        let mut applied = 0;
        for (key, at) in records {
            if p.tombstones.deleted_at(key).is_some_and(|known| known >= *at) {
                continue;
            }
            if only_held && p.cache.meta(key).await.is_none() && p.replicator.pending_since(key).is_none() {
                continue;
            }
            match self.forget(key, *at, false).await {
                Ok(()) => applied += 1,
                Err(e) => tracing::error!(%key, error = %crate::error_chain(&e), "could not apply a deletion"),
            }
        }
        applied
    }

    /// An S3 event said the store's object is gone (deleted behind our back):
    /// drop the blob from this node and every live peer, and leave a
    /// tombstone in the store for nodes that are away. Pending copies
    /// acknowledged after `at` stay (they will put it back).
    pub async fn invalidate(&self, key: &BlobKey, at: SystemTime) -> Result<(), BlobError> {
        let p = &self.parts;
        let at = at.min(SystemTime::now());
        self.forget(key, at, false).await?;
        if let Some(cluster) = &p.cluster {
            cluster.broadcast(&[TombstoneRecord::new(*key, at)]).await;
            if let Err(e) = p.store.put_tombstone(key, at).await {
                tracing::warn!(%key, error = %crate::error_chain(&e), "could not record an invalidation in the store");
            }
        }
        Ok(())
    }

    /// Remove a blob deleted at `at` from this node: record the tombstone, stop
    /// fills, drop the cache's copy and a pending copy acknowledged before `at`
    /// (`always_pending`: any pending copy, for a DELETE made here now).
    async fn forget(&self, key: &BlobKey, at: SystemTime, always_pending: bool) -> Result<(), BlobError> {
        let p = &self.parts;
        // A PUT of the blob commits wholly before or wholly after this.
        let _key = p.key_locks.lock(*key).await;
        // First stop any fill or warm of this blob, under way or begun before
        // this returns, from marking it complete again.
        let _deleting = p.completions.deleting(*key);
        let (tombstones, k) = (p.tombstones.clone(), *key);
        tokio::task::spawn_blocking(move || tombstones.record(&k, at))
            .await
            .expect("tombstone task")
            .map_err(BlobError::io("record the deletion"))?;
        let size = match p.cache.meta(key).await {
            Some(meta) => Some(meta.size),
            None => p.replicator.pending_size(key),
        };
        p.cache.remove_blob(key, size.unwrap_or(0));
        p.stats.invalidations.inc();
        let cancel = always_pending || p.replicator.pending_since(key).is_some_and(|since| since <= at);
        if cancel {
            p.replicator
                .cancel(key)
                .await
                .map_err(BlobError::io("remove a pending blob"))?;
        }
        Ok(())
    }

    /// The deletions this node recorded at or after `since` (for a peer catching up).
    pub fn deletions_since(&self, since: SystemTime) -> Vec<TombstoneRecord> {
        self.parts
            .tombstones
            .since(since)
            .into_iter()
            .map(|(key, at)| TombstoneRecord::new(key, at))
            .collect()
    }

    /// The cluster this node is part of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.parts.cluster.as_ref()
    }

    /// Where a blob is, as far as this node can tell.
    pub async fn status(&self, key: &BlobKey) -> BlobStatus {
        let p = &self.parts;
        let meta = self.lookup.cached(key).await;
        let pending = p.replicator.pending_size(key);
        let stored = self.lookup.store_size(key).await;
        let in_store = match &stored {
            Ok(_) => Some(true),
            Err(e) if e.is_not_found() => Some(false),
            Err(_) => None,
        };
        BlobStatus {
            md5: *key,
            cached: meta.is_some(),
            pending: pending.is_some(),
            in_store,
            size: meta.map(|m| m.size).or(pending).or(stored.ok()),
            damaged: p.replicator.is_damaged(key).await,
        }
    }

    /// Whether a blob this node holds is still waiting for the store.
    pub fn is_pending(&self, key: &BlobKey) -> bool {
        self.parts.replicator.is_pending(key)
    }

    /// The service's counters, for /stats.
    pub fn snapshot(&self) -> serde_json::Value {
        self.parts.stats.snapshot()
    }
}
