//! The cache's configuration section: the sizes of its two tiers and of a chunk.

use bytesize::ByteSize;

use super::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_DISK_BYTES};
use crate::units::exact_size;

/// The cache's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CacheSettings {
    /// Memory tier of the cache, e.g. 256MiB [default: 256MiB]
    #[arg(long, env = "BLOBCACHE_MEMORY_CACHE")]
    pub memory_cache: Option<ByteSize>,
    /// Disk tier of the cache: 0 for none, else at least 256MiB, allocated in full at start [default: 4GiB]
    #[arg(long, env = "BLOBCACHE_DISK_CACHE")]
    pub disk_cache: Option<ByteSize>,
    /// Size of a cache chunk; changing it invalidates the disk cache [default: 4MiB − 8KiB]
    #[arg(long, env = "BLOBCACHE_CHUNK_SIZE", hide = true)]
    pub chunk_size: Option<ByteSize>,
}

/// The cache's effective sizes.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CacheLimits {
    #[serde(serialize_with = "exact_size")]
    pub memory_cache: ByteSize,
    #[serde(serialize_with = "exact_size")]
    pub disk_cache: ByteSize,
    #[serde(serialize_with = "exact_size")]
    pub chunk_size: ByteSize,
}

impl CacheSettings {
    /// Apply defaults and check that foyer can work with the sizes.
    pub fn resolve(self) -> anyhow::Result<CacheLimits> {
        let limits = CacheLimits {
            memory_cache: self.memory_cache.unwrap_or(ByteSize::mib(256)),
            disk_cache: self.disk_cache.unwrap_or(ByteSize::gib(4)),
            chunk_size: self.chunk_size.unwrap_or(ByteSize::b(DEFAULT_CHUNK_SIZE)),
        };
        let chunk = limits.chunk_size.as_u64();
        anyhow::ensure!(
            (4096..=MAX_CHUNK_SIZE).contains(&chunk),
            "--chunk-size must lie between 4KiB and {}, got {}",
            crate::units::exact(MAX_CHUNK_SIZE),
            limits.chunk_size
        );
        anyhow::ensure!(
            limits.memory_cache.as_u64() >= 4 * chunk,
            "--memory-cache must hold at least 4 chunks ({}), got {}",
            ByteSize::b(4 * chunk),
            limits.memory_cache
        );
        let disk = limits.disk_cache.as_u64();
        anyhow::ensure!(
            disk == 0 || disk >= MIN_DISK_BYTES,
            "--disk-cache must be 0 (no disk tier) or at least {} (4 blocks of 64MiB), got {}",
            crate::units::exact(MIN_DISK_BYTES),
            limits.disk_cache
        );
        Ok(limits)
    }
}
