//! The hybrid memory + disk cache of blob chunks (the only module that imports foyer).
//!
//! A blob is cached as fixed-size chunks, one foyer entry each, keyed by
//! `(md5, index)`, plus a small metadata entry. The metadata entry exists only
//! for blobs whose bytes were verified against their key in full: it is what
//! makes a blob a cache *hit*. Chunks on their own (from ranged reads) are
//! reusable bytes, not a complete blob.

pub mod chunks;

use std::hash::Hash;
use std::path::PathBuf;

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy,
    RecoverMode, Throttle,
};

use crate::key::BlobKey;

/// The default chunk payload: 4 MiB − 8 KiB, so that sixteen chunks plus
/// foyer's per-entry headers pack one 64 MiB disk block.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024 - 8 * 1024;

/// foyer's disk block; an entry must stay below it (less 4 KiB).
const BLOCK_SIZE: usize = 64 * 1024 * 1024;

/// foyer's flusher drops entries that arrive while both of its buffers are
/// busy. On close it flushes the whole memory tier at once, paced only by the
/// device's write throttle; this pace lets a 256 MiB memory tier reach the
/// disk in about a second without overrunning the buffers.
const CLOSE_FLUSH_BYTES_PER_SEC: usize = 256 * 1024 * 1024;

/// The flusher's buffer pool (two buffers), and the most evicted bytes that may wait for
/// it: memory spent outside the memory tier, so kept small.
const BUFFER_POOL: usize = 16 * 1024 * 1024;

/// Sizes of the two tiers.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub chunk_size: u64,
    /// Where foyer registers its own metrics, if anywhere.
    pub metrics: Option<prometheus::Registry>,
}

/// Errors opening or reading the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid cache configuration: {0}")]
    Config(String),
    #[error("cannot open the disk cache in {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: foyer::Error,
    },
    #[error("cache read failed")]
    Read(#[source] foyer::Error),
}

/// What a foyer entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKey {
    Meta(BlobKey),
    Chunk(BlobKey, u32),
}

impl Code for EntryKey {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        let (tag, key, index) = match self {
            EntryKey::Meta(k) => (0u8, k, 0u32),
            EntryKey::Chunk(k, i) => (1u8, k, *i),
        };
        w.write_all(&[tag]).map_err(foyer::Error::io_error)?;
        w.write_all(key.as_bytes()).map_err(foyer::Error::io_error)?;
        w.write_all(&index.to_le_bytes()).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut buf = [0u8; 21];
        r.read_exact(&mut buf).map_err(foyer::Error::io_error)?;
        let key = BlobKey::from_bytes(buf[1..17].try_into().expect("16 bytes"));
        let index = u32::from_le_bytes(buf[17..21].try_into().expect("4 bytes"));
        Ok(if buf[0] == 0 {
            EntryKey::Meta(key)
        } else {
            EntryKey::Chunk(key, index)
        })
    }

    fn estimated_size(&self) -> usize {
        21
    }
}

/// What the cache knows of a complete, verified blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
}

const META_VERSION: u8 = 1;

impl BlobMeta {
    fn encode(&self, chunk_size: u64) -> Bytes {
        let mut v = Vec::with_capacity(17);
        v.push(META_VERSION);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&chunk_size.to_le_bytes());
        Bytes::from(v)
    }

    /// Decode; metadata written with another chunk size is treated as absent.
    fn decode(b: &[u8], chunk_size: u64) -> Option<Self> {
        if b.len() != 17 || b[0] != META_VERSION {
            return None;
        }
        let size = u64::from_le_bytes(b[1..9].try_into().ok()?);
        let cs = u64::from_le_bytes(b[9..17].try_into().ok()?);
        (cs == chunk_size).then_some(BlobMeta { size })
    }
}

/// The hybrid cache of chunks. Cheap to clone.
#[derive(Clone)]
pub struct BlobCache {
    hybrid: HybridCache<EntryKey, Bytes>,
    chunk_size: u64,
    memory_bytes: u64,
    disk_bytes: u64,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl BlobCache {
    /// Open the cache; the disk tier recovers what a clean shutdown left.
    pub async fn open(config: &CacheConfig) -> Result<Self, CacheError> {
        let chunk = config.chunk_size;
        if chunk < 4096 || chunk as usize > BLOCK_SIZE - 64 * 1024 {
            return Err(CacheError::Config(format!(
                "chunk size {chunk} must lie between 4 KiB and {} bytes",
                BLOCK_SIZE - 64 * 1024
            )));
        }
        // foyer needs a few blocks to rotate through; below that it cannot hold a chunk.
        let min_disk = 4 * BLOCK_SIZE as u64;
        if config.disk_bytes < min_disk {
            return Err(CacheError::Config(format!(
                "the disk cache must be at least {} (4 blocks of 64 MiB), got {}",
                bytesize::ByteSize(min_disk),
                bytesize::ByteSize(config.disk_bytes)
            )));
        }
        std::fs::create_dir_all(&config.dir).map_err(|e| CacheError::Open {
            path: config.dir.clone(),
            source: foyer::Error::io_error(e),
        })?;
        let open_err = |source| CacheError::Open {
            path: config.dir.clone(),
            source,
        };
        let disk = config.disk_bytes / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        let device = FsDeviceBuilder::new(&config.dir)
            .with_capacity(disk as usize)
            .with_throttle(Throttle::new().with_write_throughput(CLOSE_FLUSH_BYTES_PER_SEC))
            .build()
            .map_err(open_err)?;
        // Each of the two flush buffers must take a whole chunk entry or foyer silently drops it.
        let buffer_pool = BUFFER_POOL.max(2 * (chunk as usize + 64 * 1024));
        // --memory-cache bounds all the memory the cache holds: the flush buffers
        // and the evicted entries queued for them come out of the memory tier's share.
        let memory_tier = (config.memory_bytes as usize)
            .saturating_sub(2 * buffer_pool)
            .max(4 * chunk as usize);
        // Memory shards each hold capacity/shards: keep room for several chunks per shard.
        let shards = (memory_tier as u64 / (chunk * 8)).clamp(1, 8) as usize;
        let mut builder = HybridCacheBuilder::new().with_name("blobcache");
        if let Some(registry) = &config.metrics {
            builder = builder.with_metrics_registry(Box::new(
                mixtrics::registry::prometheus::PrometheusMetricsRegistry::new(registry.clone()),
            ));
        }
        let hybrid = builder
            .with_policy(HybridCachePolicy::WriteOnEviction)
            .memory(memory_tier)
            .with_shards(shards)
            // S3-FIFO resists scans: one big download does not flush the hot set
            // (and a blob larger than the memory tier does not thrash it).
            .with_eviction_config(foyer::S3FifoConfig::default())
            .with_weighter(|_k: &EntryKey, v: &Bytes| v.len() + 64)
            .storage()
            .with_recover_mode(RecoverMode::Quiet)
            .with_engine_config(
                BlockEngineConfig::new(device)
                    .with_block_size(BLOCK_SIZE)
                    .with_buffer_pool_size(buffer_pool)
                    .with_submit_queue_size_threshold(buffer_pool)
                    // Deleted blobs must not come back after a restart.
                    .with_tombstone_log(true),
            )
            .build()
            .await
            .map_err(open_err)?;
        Ok(BlobCache {
            hybrid,
            chunk_size: chunk,
            memory_bytes: config.memory_bytes,
            disk_bytes: disk,
        })
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The metadata of a verified blob, if the cache holds one. A failing
    /// disk read is logged and treated as a miss: the store still has the blob.
    pub async fn meta(&self, key: &BlobKey) -> Option<BlobMeta> {
        match self.hybrid.get(&EntryKey::Meta(*key)).await {
            Ok(Some(e)) => BlobMeta::decode(e.value(), self.chunk_size),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cache metadata read failed; treating as a miss");
                None
            }
        }
    }

    /// Mark a blob complete: call only after its bytes matched its key.
    pub fn insert_meta(&self, key: &BlobKey, meta: BlobMeta) {
        self.hybrid.insert(EntryKey::Meta(*key), meta.encode(self.chunk_size));
    }

    /// A cached chunk, from memory or disk.
    pub async fn chunk(&self, key: &BlobKey, index: u32) -> Result<Option<Bytes>, CacheError> {
        match self.hybrid.get(&EntryKey::Chunk(*key, index)).await {
            Ok(e) => Ok(e.map(|e| e.value().clone())),
            Err(e) => Err(CacheError::Read(e)),
        }
    }

    pub fn insert_chunk(&self, key: &BlobKey, index: u32, bytes: Bytes) {
        self.hybrid.insert(EntryKey::Chunk(*key, index), bytes);
    }

    /// A cached chunk, or the result of `fetch`, which runs once however many
    /// callers ask for the same chunk at the same time. A fetched chunk is cached.
    /// The fetch's own error comes back unchanged.
    pub async fn chunk_or_fetch<F, Fut, E>(&self, key: &BlobKey, index: u32, fetch: F) -> Result<Bytes, FetchError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        // Waiters share one fetch, so its error is shared too: carry it in an Arc.
        let wrapped = || {
            let fut = fetch();
            async move { fut.await.map_err(std::sync::Arc::new) }
        };
        match self.hybrid.get_or_fetch(&EntryKey::Chunk(*key, index), wrapped).await {
            Ok(e) => Ok(e.value().clone()),
            Err(e) => match e.downcast_ref::<std::sync::Arc<E>>() {
                Some(inner) => Err(FetchError::Fetch(inner.clone())),
                None => Err(FetchError::Cache(CacheError::Read(e))),
            },
        }
    }

    /// Forget a blob: its metadata and every chunk a blob of `size` bytes can have.
    pub fn remove_blob(&self, key: &BlobKey, size: u64) {
        self.hybrid.remove(&EntryKey::Meta(*key));
        for i in 0..chunks::count(size, self.chunk_size) {
            self.hybrid.remove(&EntryKey::Chunk(*key, i));
        }
    }

    /// Bytes used by the memory tier, and the tiers' capacities.
    pub fn usage(&self) -> CacheUsage {
        CacheUsage {
            memory_used_bytes: self.hybrid.memory().usage() as u64,
            memory_entries: self.hybrid.memory().entries() as u64,
            memory_capacity_bytes: self.memory_bytes,
            disk_capacity_bytes: self.disk_bytes,
        }
    }

    /// Flush and close, so the disk tier recovers on the next start.
    pub async fn close(&self) -> Result<(), CacheError> {
        self.hybrid.close().await.map_err(CacheError::Read)
    }
}

/// Usage figures for /stats.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CacheUsage {
    pub memory_used_bytes: u64,
    /// Chunks and metadata entries in the memory tier.
    pub memory_entries: u64,
    pub memory_capacity_bytes: u64,
    pub disk_capacity_bytes: u64,
}

/// A failed `chunk_or_fetch`: the fetch's own error, or the cache's.
#[derive(Debug, thiserror::Error)]
pub enum FetchError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Fetch(std::sync::Arc<E>),
    #[error(transparent)]
    Cache(CacheError),
}
