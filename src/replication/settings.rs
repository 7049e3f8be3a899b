//! The replication section of the configuration: the spool's size and the uploaders.

use bytesize::ByteSize;

use crate::units::exact_size;

/// Replication's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplicationSettings {
    /// Bytes the spool may hold for the store; past it PUTs get 503 [default: 10GiB]
    #[arg(long, env = "BLOBCACHE_SPOOL_SIZE")]
    pub spool_size: Option<ByteSize>,
    /// Parallel uploads to the store [default: 4]
    #[arg(long, env = "BLOBCACHE_UPLOAD_CONCURRENCY")]
    pub upload_concurrency: Option<usize>,
}

/// Replication's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicationConfig {
    #[serde(serialize_with = "exact_size")]
    pub spool_size: ByteSize,
    pub upload_concurrency: usize,
}

impl ReplicationSettings {
    pub fn resolve(self) -> anyhow::Result<ReplicationConfig> {
        let config = ReplicationConfig {
            spool_size: self.spool_size.unwrap_or(ByteSize::gib(10)),
            upload_concurrency: self.upload_concurrency.unwrap_or(4),
        };
        anyhow::ensure!(
            (1..=256).contains(&config.upload_concurrency),
            "--upload-concurrency must lie between 1 and 256, got {}",
            config.upload_concurrency
        );
        Ok(config)
    }
}
