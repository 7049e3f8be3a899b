//! Counts and times every operation at the store boundary, in the store's own metrics.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use prometheus::{HistogramVec, IntCounter, Registry};

use super::{ByteStream, Store, StoreError, Tombstone};
use crate::key::BlobKey;
use crate::metrics;

/// The store's counters, shared by /metrics and /stats.
#[derive(Debug, Clone)]
struct Counters {
    heads: IntCounter,
    gets: IntCounter,
    bytes_read: IntCounter,
    puts: IntCounter,
    bytes_written: IntCounter,
    deletes: IntCounter,
    errors: IntCounter,
    latency: HistogramVec,
}

/// Wraps a store and counts every operation and byte, and times each
/// operation to its answer (a GET's body streams after).
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Store>,
    c: Counters,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, registry: &Registry) -> Self {
        let c = |name, help| metrics::counter(registry, name, help);
        Metered {
            inner,
            c: Counters {
                heads: c("blobcache_store_heads_total", "size lookups in the store"),
                gets: c("blobcache_store_gets_total", "ranged reads from the store"),
                bytes_read: c("blobcache_store_read_bytes_total", "bytes read from the store"),
                puts: c("blobcache_store_puts_total", "blobs written to the store"),
                bytes_written: c("blobcache_store_written_bytes_total", "bytes written to the store"),
                deletes: c("blobcache_store_deletes_total", "deletes sent to the store"),
                errors: c("blobcache_store_errors_total", "failed store operations"),
                latency: metrics::histogram_vec(
                    registry,
                    "blobcache_store_op_duration_seconds",
                    "Store operation latency, to its answer",
                    &["op"],
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                ),
            },
        }
    }

    /// The counters as JSON, for /stats.
    pub fn snapshot(&self) -> serde_json::Value {
        let c = &self.c;
        serde_json::json!({
            "heads": c.heads.get(),
            "gets": c.gets.get(),
            "bytes_read": c.bytes_read.get(),
            "puts": c.puts.get(),
            "bytes_written": c.bytes_written.get(),
            "deletes": c.deletes.get(),
            "errors": c.errors.get(),
        })
    }

    fn finish<T>(&self, op: &str, started: Instant, r: Result<T, StoreError>) -> Result<T, StoreError> {
        self.c
            .latency
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &r
            && !e.is_not_found()
        {
            self.c.errors.inc();
        }
        r
    }

    /// A body stream whose bytes and errors are counted.
    fn counted(&self, stream: ByteStream) -> ByteStream {
        let (bytes_read, errors) = (self.c.bytes_read.clone(), self.c.errors.clone());
        stream
            .inspect(move |item| match item {
                Ok(b) => bytes_read.inc_by(b.len() as u64),
                Err(_) => errors.inc(),
            })
            .boxed()
    }
}

#[async_trait]
impl Store for Metered {
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError> {
        self.c.heads.inc();
        let started = Instant::now();
        let r = self.inner.head(key).await;
        self.finish("head", started, r)
    }

    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError> {
        self.c.gets.inc();
        let started = Instant::now();
        let r = self.inner.get(key, range).await;
        let stream = self.finish("get", started, r)?;
        Ok(self.counted(stream))
    }

    async fn get_prefix(&self, key: &BlobKey, len: u64) -> Option<Result<ByteStream, StoreError>> {
        let started = Instant::now();
        let r = self.inner.get_prefix(key, len).await?;
        self.c.gets.inc();
        Some(self.finish("get", started, r).map(|stream| self.counted(stream)))
    }

    fn part_size(&self, size: u64) -> Option<u64> {
        self.inner.part_size(size)
    }

    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64, part_md5s: &[[u8; 16]]) -> Result<(), StoreError> {
        self.c.puts.inc();
        let started = Instant::now();
        let r = self.inner.put_file(key, path, size, part_md5s).await;
        self.finish("put", started, r)?;
        self.c.bytes_written.inc_by(size);
        Ok(())
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.c.deletes.inc();
        let started = Instant::now();
        let r = self.inner.delete(key).await;
        self.finish("delete", started, r)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.probe().await;
        self.finish("probe", started, r)
    }

    async fn recover(&self) -> Result<(), StoreError> {
        self.inner.recover().await
    }

    async fn put_tombstone(&self, key: &BlobKey, at: SystemTime) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.put_tombstone(key, at).await;
        self.finish("put_tombstone", started, r)
    }

    async fn tombstones(&self, since: SystemTime) -> Result<Vec<Tombstone>, StoreError> {
        let started = Instant::now();
        let r = self.inner.tombstones(since).await;
        self.finish("list_tombstones", started, r)
    }

    async fn expire_tombstones(&self, before: SystemTime) -> Result<u64, StoreError> {
        let started = Instant::now();
        let r = self.inner.expire_tombstones(before).await;
        self.finish("expire_tombstones", started, r)
    }

    fn blob_of_object(&self, bucket: &str, object: &str) -> Option<BlobKey> {
        self.inner.blob_of_object(bucket, object)
    }
}
