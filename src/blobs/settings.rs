//! The blob service's configuration section: what uploads it takes, and when it answers them.

use bytesize::ByteSize;

use crate::units::exact_size;

/// When a PUT is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// After the blob is durable in this node's spool; the store gets it in the background.
    Back,
    /// After the store has the blob.
    Through,
}

/// The blob service's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BlobSettings {
    /// Largest blob accepted [default: 5GiB]
    #[arg(long, env = "BLOBCACHE_MAX_BLOB_SIZE")]
    pub max_blob_size: Option<ByteSize>,
    /// Acknowledge PUTs once durable here (back) or once in the store (through) [default: back]
    #[arg(long, env = "BLOBCACHE_WRITE_MODE", value_enum)]
    pub write_mode: Option<WriteMode>,
}

/// The blob service's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlobConfig {
    #[serde(serialize_with = "exact_size")]
    pub max_blob_size: ByteSize,
    pub write_mode: WriteMode,
}

impl BlobSettings {
    pub fn resolve(self) -> anyhow::Result<BlobConfig> {
        let config = BlobConfig {
            max_blob_size: self.max_blob_size.unwrap_or(ByteSize::gib(5)),
            write_mode: self.write_mode.unwrap_or(WriteMode::Back),
        };
        anyhow::ensure!(config.max_blob_size.as_u64() > 0, "--max-blob-size must be above 0");
        Ok(config)
    }
}
