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

use std::collections::HashMap;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::cache::{BlobCache, BlobMeta, CacheError, FetchError, chunks};
use crate::key::BlobKey;
use crate::replication::Replicator;
use crate::store::{Store, StoreError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Chunks fetched ahead of the one being sent, per reader.
const READAHEAD: usize = 4;
/// Body frames queued between the network and the hashing writer thread.
const WRITE_QUEUE: usize = 16;

/// When a PUT is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// After the blob is durable in this node's spool; the store gets it in the background.
    Back,
    /// After the store has the blob.
    Through,
}

/// Errors of blob operations. Only `http::error` maps them to statuses.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no blob with this key")]
    NotFound,
    #[error("the content's MD5 is {actual}, not the {expected} it was sent as")]
    DigestMismatch { expected: BlobKey, actual: BlobKey },
    #[error("the Content-MD5 header names {header}, not the key {key}")]
    ContentMd5Mismatch { key: BlobKey, header: BlobKey },
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload ended before its body was complete")]
    UploadAborted(#[source] BoxError),
    #[error("the store's copy of {key} has MD5 {actual}: refusing to serve it")]
    Integrity { key: BlobKey, actual: BlobKey },
    #[error("the store's copy of {key} is shorter than expected")]
    ShortRead { key: BlobKey },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the shared read of this blob stopped")]
    FillAborted,
    #[error(transparent)]
    Shared(Arc<BlobError>),
}

impl BlobError {
    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> BlobError {
        move |source| BlobError::Io { context, source }
    }

    /// The error behind any sharing wrapper.
    pub fn root(&self) -> &BlobError {
        match self {
            BlobError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

impl From<FetchError<BlobError>> for BlobError {
    fn from(e: FetchError<BlobError>) -> Self {
        match e {
            FetchError::Fetch(inner) => BlobError::Shared(inner),
            FetchError::Cache(c) => BlobError::Cache(c),
        }
    }
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

/// A stream of body bytes.
pub type BodyStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// What a PUT asks for.
#[derive(Debug, Default, Clone, Copy)]
pub struct PutRequest {
    /// The key in the URL; `None` for `POST /blobs`, where the server names the blob.
    pub expected: Option<BlobKey>,
    /// A `Content-MD5` header, already decoded.
    pub content_md5: Option<BlobKey>,
    /// A declared `Content-Length`.
    pub declared_len: Option<u64>,
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PutOutcome {
    pub md5: BlobKey,
    pub size: u64,
    /// False when the blob was already here and nothing was written.
    #[serde(skip)]
    pub created: bool,
}

/// Limits and modes of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub max_blob_size: u64,
    pub write_mode: WriteMode,
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
}

/// Tasks that will mark a blob complete in the cache (a fill, a warm after a
/// PUT). A DELETE revokes them, so a task that started before the DELETE
/// cannot bring the blob back into the cache after it.
#[derive(Debug, Default)]
struct Completions {
    tokens: Mutex<HashMap<BlobKey, Vec<Arc<AtomicBool>>>>,
}

impl Completions {
    fn begin(&self, key: BlobKey) -> Arc<AtomicBool> {
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
    fn finish(&self, cache: &BlobCache, key: BlobKey, token: &Arc<AtomicBool>, meta: Option<BlobMeta>) {
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

    fn revoke(&self, key: &BlobKey) {
        let tokens = self.tokens.lock().expect("completions lock");
        for t in tokens.get(key).into_iter().flatten() {
            t.store(true, Ordering::Release);
        }
    }
}

#[derive(Debug, Default)]
struct FillState {
    /// Chunks read, hashed and cached so far (in order).
    done: u32,
    /// Set once the whole blob was checked, or the fill failed.
    outcome: Option<Result<(), Arc<BlobError>>>,
}

/// The read-through / write-back service. Shared as `Arc<BlobService>`.
#[derive(Debug)]
pub struct BlobService {
    cache: BlobCache,
    store: Arc<dyn Store>,
    replicator: Arc<Replicator>,
    config: ServiceConfig,
    fills: Mutex<HashMap<BlobKey, Arc<watch::Sender<FillState>>>>,
    completions: Completions,
    warmers: Semaphore,
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
            completions: Completions::default(),
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

    pub fn config(&self) -> &ServiceConfig {
        &self.config
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
        match self.store.head(key).await {
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
        let svc = self.clone();
        let bounds = chunks::bounds(index, size, self.chunk_size());
        Ok(self
            .cache
            .chunk_or_fetch(&key, index, move || async move { svc.read_origin(key, bounds).await })
            .await?)
    }

    /// Read a byte range from where the blob lives: the pending spool, else the store.
    async fn read_origin(&self, key: BlobKey, range: Range<u64>) -> Result<Bytes, BlobError> {
        let want = (range.end - range.start) as usize;
        if let Some((file, _)) = self
            .replicator
            .spool()
            .open_pending(&key)
            .map_err(BlobError::io("open a pending blob"))?
        {
            return tokio::task::spawn_blocking(move || read_file_range(file, range))
                .await
                .expect("spool read task")
                .map_err(BlobError::io("read a pending blob"));
        }
        let mut body = self.store.get(&key, range).await?;
        let mut buf = BytesMut::with_capacity(want);
        while let Some(part) = body.next().await {
            let part = part?;
            if buf.len() + part.len() > want {
                break;
            }
            buf.extend_from_slice(&part);
        }
        if buf.len() != want {
            return Err(BlobError::ShortRead { key });
        }
        Ok(buf.freeze())
    }

    /// A full read of a blob that is only in the store: join (or start) its fill.
    async fn read_through_full(self: &Arc<Self>, key: BlobKey, size: u64) -> Result<BodyStream, BlobError> {
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
        self.fills.lock().expect("fills lock").remove(&key);
        tx.send_modify(|s| s.outcome = Some(result.map_err(Arc::new)));
    }

    fn integrity_failure(&self, key: BlobKey, actual: BlobKey, size: u64) {
        self.stats.integrity_failures.fetch_add(1, Ordering::Relaxed);
        self.cache.remove_blob(&key, size);
        tracing::error!(%key, %actual, size, "the store's copy of a blob does not match its key; not cached, response aborted");
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

    /// Store a blob from a body stream, hashing it as it arrives.
    pub async fn put<S, E>(self: &Arc<Self>, req: PutRequest, body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let result = self.put_inner(req, body).await;
        let counter = match &result {
            Ok(o) if o.created => &self.stats.puts_created,
            Ok(_) => &self.stats.puts_existing,
            Err(_) => &self.stats.puts_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn put_inner<S, E>(self: &Arc<Self>, req: PutRequest, mut body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let limit = self.config.max_blob_size;
        if req.declared_len.is_some_and(|n| n > limit) {
            return Err(BlobError::TooLarge { limit });
        }
        if let Some(expected) = req.expected {
            if let Some(header) = req.content_md5.filter(|h| *h != expected) {
                return Err(BlobError::ContentMd5Mismatch { key: expected, header });
            }
            if let Some(size) = self.existing_size(&expected).await {
                // Immutable: same key, same bytes. Nothing to write, nothing to read.
                return Ok(PutOutcome {
                    md5: expected,
                    size,
                    created: false,
                });
            }
        }

        let spool = self.replicator.spool().clone();
        let (writer, guard) = spool.temp_file().map_err(BlobError::io("create a spool file"))?;
        // Hashing and writing each run on a blocking thread of their own, in
        // parallel, while the body keeps flowing in.
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let hashing = tokio::task::spawn_blocking(move || {
            let mut hasher = Md5::new();
            while let Some(bytes) = hash_rx.blocking_recv() {
                hasher.update(&bytes);
            }
            hasher
        });
        let writing = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, std::fs::File)> {
            let mut writer = writer;
            let mut size = 0u64;
            while let Some(bytes) = write_rx.blocking_recv() {
                writer.write(&bytes)?;
                size += bytes.len() as u64;
            }
            Ok((size, writer.finish()?))
        });
        let started = std::time::Instant::now();
        let (mut received, mut frames) = (0u64, 0u64);
        while let Some(frame) = body.next().await {
            frames += 1;
            let bytes = frame.map_err(|e| BlobError::UploadAborted(e.into()))?;
            received += bytes.len() as u64;
            if received > limit {
                return Err(BlobError::TooLarge { limit });
            }
            if hash_tx.send(bytes.clone()).await.is_err() || write_tx.send(bytes).await.is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        drop((hash_tx, write_tx));
        let body_received = started.elapsed();
        let (size, file) = writing
            .await
            .expect("spool writer task")
            .map_err(BlobError::io("write the spool"))?;
        let hasher = hashing.await.expect("hash task");
        tracing::debug!(size, frames, ?body_received, hashed = ?started.elapsed(), "upload received");
        let key = BlobKey::from_digest(hasher);
        if let Some(expected) = req.expected
            && expected != key
        {
            return Err(BlobError::DigestMismatch { expected, actual: key });
        }
        if let Some(header) = req.content_md5
            && header != key
        {
            return Err(BlobError::DigestMismatch {
                expected: header,
                actual: key,
            });
        }
        if req.expected.is_none()
            && let Some(size) = self.existing_size(&key).await
        {
            return Ok(PutOutcome {
                md5: key,
                size,
                created: false,
            });
        }

        let since = SystemTime::now();
        // The spool file was written with O_DIRECT; the cache warmer reads it through a plain handle.
        let (path, file) = tokio::task::spawn_blocking(move || {
            let path = spool.commit(guard, &file, &key)?;
            let reader = std::fs::File::open(&path)?;
            Ok::<_, std::io::Error>((path, reader))
        })
        .await
        .expect("spool commit task")
        .map_err(BlobError::io("make the upload durable"))?;
        match self.config.write_mode {
            crate::blobs::WriteMode::Back => self.replicator.enqueue(key, size, since),
            crate::blobs::WriteMode::Through => {
                let stored = self.store.put_file(&key, &path, size).await;
                let spool = self.replicator.spool().clone();
                tokio::task::spawn_blocking(move || spool.remove_pending(&key))
                    .await
                    .expect("spool task")
                    .map_err(BlobError::io("remove a replicated spool file"))?;
                stored?;
            }
        }
        tracing::debug!(%key, size, total = ?started.elapsed(), "upload stored");
        self.warm(key, size, file);
        Ok(PutOutcome {
            md5: key,
            size,
            created: true,
        })
    }

    /// Copy a just-written blob into the cache, a chunk at a time, in the
    /// background; its bytes were verified on the way in.
    fn warm(self: &Arc<Self>, key: BlobKey, size: u64, file: std::fs::File) {
        // A blob that would flush half the disk tier is not worth caching on write.
        if size > self.cache.usage().disk_capacity_bytes / 2 {
            return;
        }
        let svc = self.clone();
        let token = self.completions.begin(key);
        tokio::spawn(async move {
            let Ok(_permit) = svc.warmers.acquire().await else {
                svc.completions.finish(&svc.cache, key, &token, None);
                return;
            };
            let cs = svc.chunk_size();
            let file = Arc::new(file);
            for i in 0..chunks::count(size, cs) {
                if token.load(Ordering::Acquire) {
                    break; // deleted meanwhile: stop copying
                }
                let f = file.clone();
                let range = chunks::bounds(i, size, cs);
                match tokio::task::spawn_blocking(move || read_at(&f, range))
                    .await
                    .expect("warm task")
                {
                    Ok(bytes) => svc.cache.insert_chunk(&key, i, bytes),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "could not cache a new blob");
                        svc.completions.finish(&svc.cache, key, &token, None);
                        return;
                    }
                }
            }
            svc.completions.finish(&svc.cache, key, &token, Some(BlobMeta { size }));
        });
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

    /// A cheap check that the store answers.
    pub async fn probe_store(&self) -> Result<(), StoreError> {
        self.store.probe().await
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

fn read_at(file: &std::fs::File, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)?;
    Ok(Bytes::from(buf))
}

fn read_file_range(file: std::fs::File, range: Range<u64>) -> std::io::Result<Bytes> {
    read_at(&file, range)
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
