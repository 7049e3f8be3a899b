//! `BlobService`: read-through and write-back over the cache, the spool and the store.
//!
//! Reads look in the cache, then the pending spool (written here, not yet
//! replicated), then the store. A cold full read joins one shared *fill* per
//! blob that reads the store chunk by chunk, hashes, caches and publishes its
//! progress; every waiting client streams chunks as they land, and the last
//! chunk is released only once the whole blob matched its key. Ranged reads
//! fetch just the chunks they cover (one store read per chunk, however many
//! clients ask). Writes stream to the spool while hashed, are fsynced, and
//! then go to the store in the background (write-back) or before the answer
//! (write-through).

mod error;
mod fill;
mod write;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, BoxStream};
use tokio::sync::{Semaphore, watch};

pub use error::BlobError;
use fill::{Completions, FillState};
pub use write::{PutOutcome, PutRequest};

use crate::cache::{BlobCache, chunks};
use crate::key::BlobKey;
use crate::replication::Replicator;
use crate::store::{Store, StoreError};

/// Chunks fetched ahead of the one being sent, per reader.
const READAHEAD: usize = 4;

/// When a PUT is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// After the blob is durable in this node's spool; the store gets it in the background.
    Back,
    /// After the store has the blob.
    Through,
}

/// Where a read is served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Spool,
    Store,
}

/// A blob located for reading.
#[derive(Debug)]
pub struct Opened {
    pub key: BlobKey,
    pub size: u64,
    pub source: Source,
    spool_file: Option<std::fs::File>,
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
}

/// Receives a chunk's bytes as they arrive from the store.
type Publish = Box<dyn FnMut(Vec<Bytes>) + Send>;

type SharedHead = Shared<BoxFuture<'static, Result<u64, Arc<StoreError>>>>;

/// A stream of body bytes.
pub type BodyStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// Limits and modes of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub max_blob_size: u64,
    pub write_mode: WriteMode,
    /// Bytes the spool may hold: blobs pending upload plus uploads under way.
    pub spool_size: u64,
}

/// Counters for /stats and tests.
#[derive(Debug, Default)]
pub struct ServiceStats {
    pub hits: AtomicU64,
    pub spool_hits: AtomicU64,
    pub misses: AtomicU64,
    pub not_found: AtomicU64,
    pub fills: AtomicU64,
    pub coalesced_waiters: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub invalidations: AtomicU64,
    pub puts_created: AtomicU64,
    pub puts_existing: AtomicU64,
    pub puts_rejected: AtomicU64,
    /// Upload body bytes received.
    pub bytes_in: AtomicU64,
    /// Blob body bytes sent to clients.
    pub bytes_out: AtomicU64,
}

/// The read-through / write-back service. Shared as `Arc<BlobService>`.
#[derive(Debug)]
pub struct BlobService {
    cache: BlobCache,
    store: Arc<dyn Store>,
    replicator: Arc<Replicator>,
    config: ServiceConfig,
    fills: Mutex<HashMap<BlobKey, Arc<watch::Sender<FillState>>>>,
    /// Store lookups under way, shared by concurrent requests for one key.
    heads: Arc<Mutex<HashMap<BlobKey, SharedHead>>>,
    completions: Completions,
    warmers: Semaphore,
    /// Spool bytes promised to uploads under way (see `write::Reservation`).
    spool_reserved: AtomicU64,
    stats: ServiceStats,
}

impl BlobService {
    pub fn new(cache: BlobCache, store: Arc<dyn Store>, replicator: Arc<Replicator>, config: ServiceConfig) -> Self {
        BlobService {
            cache,
            store,
            replicator,
            config,
            fills: Mutex::default(),
            heads: Arc::default(),
            completions: Completions::default(),
            spool_reserved: AtomicU64::new(0),
            warmers: Semaphore::new(2),
            stats: ServiceStats::default(),
        }
    }

    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.replicator
    }

    fn chunk_size(&self) -> u64 {
        self.cache.chunk_size()
    }

    /// Find a blob: cache, then pending spool, then store.
    pub async fn open(&self, key: &BlobKey) -> Result<Opened, BlobError> {
        if let Some(meta) = self.cache.meta(key).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Opened {
                key: *key,
                size: meta.size,
                source: Source::Cache,
                spool_file: None,
            });
        }
        if let Some((file, size)) = self
            .replicator
            .spool()
            .open_pending(key)
            .map_err(BlobError::io("open a pending blob"))?
        {
            self.stats.spool_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Opened {
                key: *key,
                size,
                source: Source::Spool,
                spool_file: Some(file),
            });
        }
        match self.head_shared(key).await {
            Ok(size) => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Ok(Opened {
                    key: *key,
                    size,
                    source: Source::Store,
                    spool_file: None,
                })
            }
            Err(e) if e.is_not_found() => {
                self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                Err(BlobError::NotFound)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Stream `range` of an opened blob. An error before the first byte comes
    /// back here; one after it ends the stream with an error, so the response
    /// is cut short, never finished as if it were good.
    pub async fn read(self: &Arc<Self>, opened: Opened, range: Range<u64>) -> Result<BodyStream, BlobError> {
        let svc = self.clone();
        let mut stream = self.read_uncounted(opened, range).await?;
        // Wait for the first bytes before answering: a store that fails at once
        // (or a one-chunk blob that fails its check) gets an error status, not a
        // 200 that breaks off.
        let stream = match stream.next().await {
            Some(Err(e)) => return Err(e),
            Some(Ok(first)) => stream::once(async move { Ok(first) }).chain(stream).boxed(),
            None => stream,
        };
        Ok(stream
            .inspect(move |part| {
                if let Ok(bytes) = part {
                    svc.stats.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed())
    }

    async fn read_uncounted(self: &Arc<Self>, opened: Opened, range: Range<u64>) -> Result<BodyStream, BlobError> {
        let Opened {
            key,
            size,
            source,
            spool_file,
        } = opened;
        debug_assert!(range.end <= size && range.start <= range.end);
        match source {
            Source::Spool => {
                let file = spool_file.expect("a spool read holds its file");
                Ok(file_range_stream(file, range))
            }
            Source::Store if range.start == 0 && range.end == size => self.read_through_full(key, size).await,
            Source::Cache | Source::Store => Ok(self.chunk_stream(key, size, range)),
        }
    }

    /// Chunks of `range`, each from the cache or fetched once from its origin.
    fn chunk_stream(self: &Arc<Self>, key: BlobKey, size: u64, range: Range<u64>) -> BodyStream {
        let cs = self.chunk_size();
        let svc = self.clone();
        stream::iter(chunks::covering(&range, cs))
            .map(move |i| {
                let svc = svc.clone();
                let range = range.clone();
                async move {
                    let bytes = svc.chunk(key, i, size).await?;
                    Ok(bytes.slice(chunks::slice_within(i, &range, cs)))
                }
            })
            .buffered(READAHEAD)
            .boxed()
    }

    /// One chunk: from the cache, or read once from the origin and cached.
    async fn chunk(self: &Arc<Self>, key: BlobKey, index: u32, size: u64) -> Result<Bytes, BlobError> {
        self.chunk_publishing(key, index, size, None).await
    }

    /// `chunk`, and if this call is the one that reads the origin, hand the
    /// bytes to `publish` as they arrive.
    async fn chunk_publishing(
        self: &Arc<Self>,
        key: BlobKey,
        index: u32,
        size: u64,
        publish: Option<Publish>,
    ) -> Result<Bytes, BlobError> {
        let svc = self.clone();
        let bounds = chunks::bounds(index, size, self.chunk_size());
        Ok(self
            .cache
            .chunk_or_fetch(&key, index, move || async move {
                svc.read_origin(key, bounds, publish).await
            })
            .await?)
    }

    /// Read a byte range from where the blob lives: the pending spool, else the store.
    async fn read_origin(
        &self,
        key: BlobKey,
        range: Range<u64>,
        mut publish: Option<Publish>,
    ) -> Result<Bytes, BlobError> {
        let want = (range.end - range.start) as usize;
        if let Some((file, _)) = self
            .replicator
            .spool()
            .open_pending(&key)
            .map_err(BlobError::io("open a pending blob"))?
        {
            return tokio::task::spawn_blocking(move || read_at(&file, range))
                .await
                .expect("spool read task")
                .map_err(BlobError::io("read a pending blob"));
        }
        let mut body = self.store.get(&key, range).await?;
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
                if batched >= fill::PUBLISH_BYTES || buf.len() == want || buf.len() == batched {
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

    /// The store's size of a blob; concurrent lookups of one key share one request.
    /// The request runs on a task of its own, which also retires it: a lookup
    /// whose callers all left still finishes, so no later caller can pick up a
    /// stale or half-done one.
    async fn head_shared(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let lookup = {
            let mut heads = self.heads.lock().expect("heads lock");
            heads
                .entry(*key)
                .or_insert_with(|| {
                    let store = self.store.clone();
                    let key = *key;
                    let lookup = async move { store.head(&key).await.map_err(Arc::new) }.boxed().shared();
                    let (runner, heads) = (lookup.clone(), self.heads.clone());
                    tokio::spawn(async move {
                        let _ = runner.clone().await;
                        let mut heads = heads.lock().expect("heads lock");
                        if heads.get(&key).is_some_and(|l| l.ptr_eq(&runner)) {
                            heads.remove(&key);
                        }
                    });
                    lookup
                })
                .clone()
        };
        lookup.await.map_err(|e| e.flattened())
    }

    /// Whether this node can find the blob, and its size. A store that cannot
    /// be asked counts as "not known here".
    async fn existing_size(&self, key: &BlobKey) -> Option<u64> {
        if let Some(meta) = self.cache.meta(key).await {
            return Some(meta.size);
        }
        if let Ok(Some((_, size))) = self.replicator.spool().open_pending(key) {
            return Some(size);
        }
        self.store.head(key).await.ok()
    }

    /// Remove a blob everywhere this node can reach: cache, pending queue, store.
    pub async fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        // First stop any fill or warm of this blob from marking it complete again.
        self.completions.revoke(key);
        let size = self.existing_size(key).await;
        if let Some(size) = size {
            self.cache.remove_blob(key, size);
        } else {
            self.cache.remove_blob(key, 0);
        }
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        self.replicator
            .cancel(key)
            .await
            .map_err(BlobError::io("remove a pending blob"))?;
        self.store.delete(key).await?;
        Ok(())
    }

    /// Where a blob is, as far as this node can tell.
    pub async fn status(&self, key: &BlobKey) -> BlobStatus {
        let meta = self.cache.meta(key).await;
        let pending = self
            .replicator
            .spool()
            .open_pending(key)
            .ok()
            .flatten()
            .map(|(_, size)| size);
        let stored = self.store.head(key).await;
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
        }
    }

    /// Whether a blob this node holds is still waiting for the store.
    pub fn is_pending(&self, key: &BlobKey) -> bool {
        self.replicator.is_pending(key)
    }

    /// A cheap check that the store answers.
    pub async fn probe_store(&self) -> Result<(), StoreError> {
        self.store.probe().await
    }
}

fn read_at(file: &std::fs::File, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)?;
    Ok(Bytes::from(buf))
}

/// Stream a byte range of a local file.
fn file_range_stream(mut file: std::fs::File, range: Range<u64>) -> BodyStream {
    let len = range.end - range.start;
    let file = match file.seek(SeekFrom::Start(range.start)) {
        Ok(_) => file,
        Err(e) => {
            return stream::once(async move {
                Err(BlobError::Io {
                    context: "seek a pending blob",
                    source: e,
                })
            })
            .boxed();
        }
    };
    let reader = tokio::fs::File::from_std(file);
    let take = tokio::io::AsyncReadExt::take(reader, len);
    tokio_util::io::ReaderStream::with_capacity(take, 256 * 1024)
        .map(|r| r.map_err(BlobError::io("read a pending blob")))
        .boxed()
}
