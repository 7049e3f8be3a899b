//! The persistent store: one trait, chosen by URL (`file://` or `s3://`).

mod fs;
mod s3;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

pub use crate::config::StoreOptions;
pub use fs::FsStore;
pub use s3::S3Store;

use crate::key::BlobKey;

/// A stream of a blob's bytes from the store.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, at the granularity callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store has no such blob.
    NotFound,
    /// The store could not be reached or failed for a while: retrying can help.
    Unavailable,
    /// The store refused us (credentials, permissions): retrying will not help.
    Denied,
    /// Anything else that retrying will not fix (bad configuration, a short object).
    Permanent,
}

/// An error from a store. It says whether a retry could help; only the HTTP
/// layer turns it into a status code.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct StoreError {
    kind: StoreErrorKind,
    context: String,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, context: impl Into<String>) -> Self {
        StoreError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn not_found(key: &BlobKey) -> Self {
        Self::new(StoreErrorKind::NotFound, format!("blob {key} is not in the store"))
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }

    /// A copy for a second caller: the same kind, with the causes folded into the message.
    pub fn flattened(&self) -> StoreError {
        StoreError::new(self.kind, crate::error_chain(self))
    }

    /// Whether trying the same operation again later could succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

/// A persistent home for blobs. Blobs are immutable: a key always names the same bytes.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The size of a stored blob, or a `NotFound` error.
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError>;

    /// Stream `range` of a blob. The range lies within the blob (callers know its size).
    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError>;

    /// Store the verified blob held in the local file `path` (`size` bytes) under `key`.
    /// Returns only once the blob is durable in the store.
    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64) -> Result<(), StoreError>;

    /// Remove a blob; removing an absent blob succeeds.
    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError>;

    /// A cheap request that shows the store is reachable and usable.
    async fn probe(&self) -> Result<(), StoreError>;
}

/// Open the store a URL names: `s3://bucket[/prefix]`, `file:///path` or a plain path.
/// Nothing is sent to a remote store yet: `probe` is the first request.
pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("file://") {
        anyhow::ensure!(!path.is_empty(), "store URL {url:?} has no path");
        return Ok(Arc::new(FsStore::open(Path::new(path)).await?));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3Store::open(url, options).await?));
    }
    if url.contains("://") {
        anyhow::bail!("store {url:?}: unsupported scheme (use s3://bucket[/prefix] or file:///path)");
    }
    Ok(Arc::new(FsStore::open(Path::new(url)).await?))
}

/// Counters of the work done against the store, shared by /stats and tests.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub heads: AtomicU64,
    pub gets: AtomicU64,
    pub bytes_read: AtomicU64,
    pub puts: AtomicU64,
    pub bytes_written: AtomicU64,
    pub deletes: AtomicU64,
    pub errors: AtomicU64,
}

impl StoreStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "heads": g(&self.heads),
            "gets": g(&self.gets),
            "bytes_read": g(&self.bytes_read),
            "puts": g(&self.puts),
            "bytes_written": g(&self.bytes_written),
            "deletes": g(&self.deletes),
            "errors": g(&self.errors),
        })
    }
}

/// Wraps a store and counts every operation and byte at the store boundary,
/// and times each operation (to its answer; a GET's body streams after).
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    stats: Arc<StoreStats>,
    latency: Option<prometheus::HistogramVec>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, latency: Option<prometheus::HistogramVec>) -> Self {
        MeteredStore {
            inner,
            stats: Arc::default(),
            latency,
        }
    }

    fn observe(&self, op: &str, started: std::time::Instant) {
        if let Some(h) = &self.latency {
            h.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        }
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    fn count<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r
            && !e.is_not_found()
        {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError> {
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = self.inner.head(key).await;
        self.observe("head", started);
        self.count(r)
    }

    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = self.inner.get(key, range).await;
        self.observe("get", started);
        let stream = self.count(r)?;
        let stats = self.stats.clone();
        Ok(stream
            .inspect(move |item| match item {
                Ok(b) => {
                    stats.bytes_read.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            })
            .boxed())
    }

    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64) -> Result<(), StoreError> {
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = self.inner.put_file(key, path, size).await;
        self.observe("put", started);
        self.count(r)?;
        self.stats.bytes_written.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = self.inner.delete(key).await;
        self.observe("delete", started);
        self.count(r)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.count(self.inner.probe().await)
    }
}
