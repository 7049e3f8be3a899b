//! The hybrid memory + disk cache of blob chunks (the only module that imports foyer).
//!
//! A blob is cached as fixed-size chunks, one foyer entry each, keyed by
//! `(md5, index)`, plus a small metadata entry. The metadata entry exists only
//! for blobs whose bytes were verified against their key in full: it is what
//! makes a blob a cache *hit*. Chunks on their own (from ranged reads) are
//! reusable bytes, not a complete blob.

mod settings;

use std::hash::Hash;
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, Code, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy,
    RecoverMode, Throttle,
};

pub use settings::{CacheLimits, CacheSettings};

use crate::chunks::{self, Digests};
use crate::key::BlobKey;

/// The default chunk payload: 4 MiB − 8 KiB, so that sixteen chunks plus
/// foyer's per-entry headers pack one 64 MiB disk block.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024 - 8 * 1024;

/// foyer's disk block; an entry must stay below it (less 4 KiB).
pub(crate) const BLOCK_SIZE: usize = 64 * 1024 * 1024;

/// The largest chunk a block takes, with room for foyer's entry headers.
pub(crate) const MAX_CHUNK_SIZE: u64 = (BLOCK_SIZE - 64 * 1024) as u64;

/// The smallest disk tier: foyer needs a few blocks to rotate through.
pub(crate) const MIN_DISK_BYTES: u64 = 4 * BLOCK_SIZE as u64;

/// foyer's flusher drops entries that arrive while both of its buffers are
/// busy. On close it flushes the whole memory tier at once, paced only by the
/// device's write throttle; this pace lets a 256 MiB memory tier reach the
/// disk in about a second without overrunning the buffers.
const CLOSE_FLUSH_BYTES_PER_SEC: usize = 256 * 1024 * 1024;

/// The flusher's buffer pool (two buffers), and the most evicted bytes that may wait for
/// it: memory spent outside the memory tier, so kept small.
const BUFFER_POOL: usize = 16 * 1024 * 1024;

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
    #[error("cannot allocate the disk cache's {size} in {path} (lower --disk-cache, or 0 for no disk tier)")]
    Allocate {
        path: PathBuf,
        size: String,
        #[source]
        source: std::io::Error,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub size: u64,
    /// When the whole blob matched its key (a DELETE after this makes it stale).
    pub verified_at: SystemTime,
    /// Each chunk's digest, taken from the verified bytes: a chunk read again
    /// from the spool or the store must match it.
    pub digests: Digests,
}

const META_VERSION: u8 = 2;
const META_HEADER: usize = 1 + 8 + 8 + 8;

impl BlobMeta {
    fn encode(&self, chunk_size: u64) -> Bytes {
        let mut v = Vec::with_capacity(META_HEADER + 8 * self.digests.len());
        v.push(META_VERSION);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&chunk_size.to_le_bytes());
        let micros = self
            .verified_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        v.extend_from_slice(&micros.to_le_bytes());
        for d in self.digests.iter() {
            v.extend_from_slice(&d.to_le_bytes());
        }
        Bytes::from(v)
    }

    /// Decode; metadata of another version or chunk size is treated as absent.
    fn decode(b: &[u8], chunk_size: u64) -> Option<Self> {
        let word = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)) };
        if b.first() != Some(&META_VERSION) || word(9)? != chunk_size {
            return None;
        }
        let size = word(1)?;
        let count = chunks::count(size, chunk_size) as usize;
        if b.len() != META_HEADER + 8 * count {
            return None;
        }
        let digests = (0..count)
            .map(|i| word(META_HEADER + 8 * i))
            .collect::<Option<Vec<u64>>>()?;
        Some(BlobMeta {
            size,
            verified_at: UNIX_EPOCH + Duration::from_micros(word(17)?),
            digests: digests.into(),
        })
    }
}

/// The hybrid cache of chunks. Cheap to clone.
#[derive(Clone)]
pub struct BlobCache {
    hybrid: HybridCache<EntryKey, Bytes>,
    chunk_size: u64,
    memory_bytes: u64,
    disk_bytes: u64,
    registry: prometheus::Registry,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl BlobCache {
    /// Open the cache in `dir`; the disk tier recovers what a clean shutdown
    /// left. The disk tier's files are allocated in full here, so a disk that
    /// fills up later (the spool shares it) can never fail the cache's writes.
    /// foyer registers its own metrics, and the cache its gauges, in `registry`.
    pub async fn open(dir: &Path, limits: &CacheLimits, registry: &prometheus::Registry) -> Result<Self, CacheError> {
        let chunk = limits.chunk_size.as_u64();
        std::fs::create_dir_all(dir).map_err(|e| CacheError::Open {
            path: dir.to_path_buf(),
            source: foyer::Error::io_error(e),
        })?;
        let open_err = |source| CacheError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let disk = limits.disk_cache.as_u64() / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
        // Each of the two flush buffers must take a whole chunk entry or foyer silently drops it.
        let buffer_pool = BUFFER_POOL.max(2 * (chunk as usize + 64 * 1024));
        // --memory-cache bounds all the memory the cache holds: the flush buffers
        // and the evicted entries queued for them come out of the memory tier's share.
        let memory_bytes = limits.memory_cache.as_u64() as usize;
        let memory_tier = if disk == 0 {
            memory_bytes
        } else {
            memory_bytes.saturating_sub(2 * buffer_pool).max(4 * chunk as usize)
        };
        // Memory shards each hold capacity/shards: keep room for several chunks per shard.
        let shards = (memory_tier as u64 / (chunk * 8)).clamp(1, 8) as usize;
        let storage = HybridCacheBuilder::new()
            .with_name("blobcache")
            .with_metrics_registry(Box::new(
                mixtrics::registry::prometheus::PrometheusMetricsRegistry::new(registry.clone()),
            ))
            .with_policy(HybridCachePolicy::WriteOnEviction)
            .memory(memory_tier)
            .with_shards(shards)
            // S3-FIFO resists scans: one big download does not flush the hot set
            // (and a blob larger than the memory tier does not thrash it).
            .with_eviction_config(foyer::S3FifoConfig::default())
            .with_weighter(|_k: &EntryKey, v: &Bytes| v.len() + 64)
            .storage()
            .with_recover_mode(RecoverMode::Quiet);
        let hybrid = if disk == 0 {
            // No disk tier: a memory-only cache.
            storage.build().await.map_err(open_err)?
        } else {
            let device = FsDeviceBuilder::new(dir)
                .with_capacity(disk as usize)
                .with_throttle(Throttle::new().with_write_throughput(CLOSE_FLUSH_BYTES_PER_SEC))
                .build()
                .map_err(open_err)?;
            let hybrid = storage
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(BLOCK_SIZE)
                        .with_buffer_pool_size(buffer_pool)
                        .with_submit_queue_size_threshold(buffer_pool)
                        // Deletions reach the disk tier too (best effort: the node's
                        // own tombstones are what make a DELETE hold across restarts).
                        .with_tombstone_log(true),
                )
                .build()
                .await
                .map_err(open_err)?;
            if let Err(source) = allocate_disk_tier(dir).await {
                let _ = hybrid.close().await;
                return Err(CacheError::Allocate {
                    path: dir.to_path_buf(),
                    size: crate::units::exact(disk),
                    source,
                });
            }
            hybrid
        };
        let cache = BlobCache {
            hybrid,
            chunk_size: chunk,
            memory_bytes: limits.memory_cache.as_u64(),
            disk_bytes: disk,
            registry: registry.clone(),
        };
        let memory = cache.hybrid.clone();
        crate::metrics::computed_gauge(
            registry,
            "blobcache_cache_memory_used_bytes",
            "bytes held by the memory tier",
            move || memory.memory().usage() as f64,
        );
        Ok(cache)
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
    ///
    /// The entry starts as used once, like the chunks the read that verified
    /// the blob went through: S3-FIFO evicts entries never used since their
    /// insertion first, and a blob whose chunks stay while its metadata goes
    /// is a miss that costs a store lookup (and wastes the chunks' memory).
    pub fn insert_meta(&self, key: &BlobKey, meta: &BlobMeta) {
        let entry = EntryKey::Meta(*key);
        self.hybrid.insert(entry.clone(), meta.encode(self.chunk_size));
        let _ = self.hybrid.memory().get(&entry);
    }

    /// Whether the cache may hold a chunk (memory, or by the disk tier's index).
    pub fn may_have_chunk(&self, key: &BlobKey, index: u32) -> bool {
        self.hybrid.contains(&EntryKey::Chunk(*key, index))
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

    /// Bytes the disk tier holds: its blocks that are not clean, times the block
    /// size (from foyer's own gauges; `None` before foyer reported them).
    pub fn disk_used_bytes(&self) -> Option<u64> {
        let families = self.registry.gather();
        let find = |name: &str| families.iter().find(|f| f.name() == name);
        let block_size = find("foyer_storage_block_engine_block_size_bytes")?
            .get_metric()
            .first()?
            .get_gauge()
            .get_value();
        let used: f64 = find("foyer_storage_block_engine_block")?
            .get_metric()
            .iter()
            .filter(|m| m.get_label().iter().any(|l| l.name() == "type" && l.value() != "clean"))
            .map(|m| m.get_gauge().get_value())
            .sum();
        Some((used * block_size) as u64)
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

/// Allocate every file of the disk tier in full (foyer creates them sparse), so
/// no later write to them can fail for want of space.
async fn allocate_disk_tier(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("foyer-storage-"))
            {
                continue;
            }
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            crate::fsutil::allocate(&file, file.metadata()?.len())?;
        }
        Ok(())
    })
    .await
    .expect("allocation task")
}

/// A failed `chunk_or_fetch`: the fetch's own error, or the cache's.
#[derive(Debug, thiserror::Error)]
pub enum FetchError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Fetch(std::sync::Arc<E>),
    #[error(transparent)]
    Cache(CacheError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_other_chunk_sizes_read_as_absent() {
        let meta = BlobMeta {
            size: 10 * 4096 + 5,
            verified_at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            digests: (0..11u64).collect::<Vec<_>>().into(),
        };
        let bytes = meta.encode(4096);
        assert_eq!(BlobMeta::decode(&bytes, 4096), Some(meta));
        assert_eq!(BlobMeta::decode(&bytes, 8192), None);
        assert_eq!(BlobMeta::decode(&bytes[..bytes.len() - 1], 4096), None);
        assert_eq!(BlobMeta::decode(&[1, 2, 3], 4096), None);
    }
}
