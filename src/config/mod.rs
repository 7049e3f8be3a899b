//! Configuration: flags, `BLOBCACHE_*` environment variables and an optional
//! TOML file, merged with precedence flag > env > file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;

use crate::blobs::WriteMode;
use crate::cache::DEFAULT_CHUNK_SIZE;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "blobcache",
    version,
    about = "A read-through HTTP blob cache addressed by MD5"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ConfigArgs),
    /// Validate the configuration and print the effective values.
    CheckConfig(ConfigArgs),
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// An optional TOML file with any of the settings below (kebab-case keys).
    #[arg(long, env = "BLOBCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting, each optional so the sources can be merged.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "BLOBCACHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the disk cache, the spool and the default store [default: ./blobcache-data]
    #[arg(long, env = "BLOBCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Persistent store URL [default: file://<data-dir>/store]
    #[arg(long, env = "BLOBCACHE_STORE")]
    pub store: Option<String>,
    /// Memory tier of the cache, e.g. 256MiB [default: 256MiB]
    #[arg(long, env = "BLOBCACHE_MEMORY_CACHE")]
    pub memory_cache: Option<ByteSize>,
    /// Disk tier of the cache, at least 256MiB [default: 4GiB]
    #[arg(long, env = "BLOBCACHE_DISK_CACHE")]
    pub disk_cache: Option<ByteSize>,
    /// Largest blob accepted [default: 5GiB]
    #[arg(long, env = "BLOBCACHE_MAX_BLOB_SIZE")]
    pub max_blob_size: Option<ByteSize>,
    /// Acknowledge PUTs once durable here (back) or once in the store (through) [default: back]
    #[arg(long, env = "BLOBCACHE_WRITE_MODE", value_enum)]
    pub write_mode: Option<WriteMode>,
    /// Bytes the spool may hold for the store; past it PUTs get 503 [default: 10GiB]
    #[arg(long, env = "BLOBCACHE_SPOOL_SIZE")]
    pub spool_size: Option<ByteSize>,
    /// Parallel uploads to the store [default: 4]
    #[arg(long, env = "BLOBCACHE_UPLOAD_CONCURRENCY")]
    pub upload_concurrency: Option<usize>,
    /// How long shutdown waits for requests and uploads to finish [default: 30s]
    #[arg(long, env = "BLOBCACHE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "BLOBCACHE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Size of a cache chunk; changing it invalidates the disk cache [default: 4MiB − 8KiB]
    #[arg(long, env = "BLOBCACHE_CHUNK_SIZE", hide = true)]
    pub chunk_size: Option<ByteSize>,
    /// S3 endpoint URL, for S3-compatible servers [default: AWS_ENDPOINT_URL, else AWS S3]
    #[arg(long, env = "BLOBCACHE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: the AWS chain (AWS_REGION, profile), else us-east-1]
    #[arg(long, env = "BLOBCACHE_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address buckets as https://endpoint/bucket (MinIO, most S3-compatible servers)
    #[arg(long, env = "BLOBCACHE_S3_FORCE_PATH_STYLE", num_args = 0..=1, default_missing_value = "true")]
    pub s3_force_path_style: Option<bool>,
    /// Blobs above this size go to S3 as multipart uploads [default: 64MiB]
    #[arg(long, env = "BLOBCACHE_S3_MULTIPART_THRESHOLD")]
    pub s3_multipart_threshold: Option<ByteSize>,
    /// Size of one part of a multipart upload, 5MiB to 5GiB [default: 16MiB]
    #[arg(long, env = "BLOBCACHE_S3_PART_SIZE")]
    pub s3_part_size: Option<ByteSize>,
    /// S3 access key id; with the secret, used instead of the AWS credential chain
    #[arg(long, env = "BLOBCACHE_S3_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key (never printed)
    #[arg(long, env = "BLOBCACHE_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Longest wait for an S3 answer, or for more of a body [default: 10s]
    #[arg(long, env = "BLOBCACHE_S3_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(default, with = "humantime_serde")]
    pub s3_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: String,
    #[serde(serialize_with = "exact_size")]
    pub memory_cache: ByteSize,
    #[serde(serialize_with = "exact_size")]
    pub disk_cache: ByteSize,
    #[serde(serialize_with = "exact_size")]
    pub max_blob_size: ByteSize,
    pub write_mode: WriteMode,
    #[serde(serialize_with = "exact_size")]
    pub spool_size: ByteSize,
    pub upload_concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    #[serde(serialize_with = "exact_size")]
    pub chunk_size: ByteSize,
    #[serde(flatten)]
    pub store_options: StoreOptions,
}

/// How to reach the store; only S3 uses them.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StoreOptions {
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "masked_url")]
    pub s3_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    pub s3_force_path_style: bool,
    #[serde(serialize_with = "exact_size")]
    pub s3_multipart_threshold: ByteSize,
    #[serde(serialize_with = "exact_size")]
    pub s3_part_size: ByteSize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "secret")]
    pub s3_secret_access_key: Option<String>,
    #[serde(with = "humantime_serde")]
    pub s3_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_multipart_threshold: ByteSize::mib(64),
            s3_part_size: ByteSize::mib(16),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_timeout: Duration::from_secs(10),
        }
    }
}

/// A URL with any password replaced by `***`, fit for logs and printed configuration.
pub fn mask_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// A secret is printed as `***`: check-config and the start-up log show it is set, never what it is.
fn secret<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

fn masked_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_str(&mask_userinfo(u)),
        None => s.serialize_none(),
    }
}

/// Print a size exactly, in the largest binary unit that divides it, so the
/// printed configuration reads back as the same values.
fn exact_size<S: serde::Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    let b = size.as_u64();
    let text = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)]
        .iter()
        .find(|(_, unit)| b > 0 && b.is_multiple_of(*unit))
        .map_or_else(|| format!("{b}B"), |(name, unit)| format!("{}{name}", b / unit));
    s.serialize_str(&text)
}

impl Settings {
    /// Fill every unset field of `self` from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            listen: self.listen.or(other.listen),
            data_dir: self.data_dir.or(other.data_dir),
            store: self.store.or(other.store),
            memory_cache: self.memory_cache.or(other.memory_cache),
            disk_cache: self.disk_cache.or(other.disk_cache),
            max_blob_size: self.max_blob_size.or(other.max_blob_size),
            write_mode: self.write_mode.or(other.write_mode),
            spool_size: self.spool_size.or(other.spool_size),
            upload_concurrency: self.upload_concurrency.or(other.upload_concurrency),
            shutdown_grace: self.shutdown_grace.or(other.shutdown_grace),
            log_format: self.log_format.or(other.log_format),
            chunk_size: self.chunk_size.or(other.chunk_size),
            s3_endpoint: self.s3_endpoint.or(other.s3_endpoint),
            s3_region: self.s3_region.or(other.s3_region),
            s3_force_path_style: self.s3_force_path_style.or(other.s3_force_path_style),
            s3_multipart_threshold: self.s3_multipart_threshold.or(other.s3_multipart_threshold),
            s3_part_size: self.s3_part_size.or(other.s3_part_size),
            s3_access_key_id: self.s3_access_key_id.or(other.s3_access_key_id),
            s3_secret_access_key: self.s3_secret_access_key.or(other.s3_secret_access_key),
            s3_timeout: self.s3_timeout.or(other.s3_timeout),
        }
    }
}

impl ConfigArgs {
    /// Merge the command line (flags and env, as clap resolved them) over the file and defaults.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Config::from_settings(self.settings.or(file))
    }
}

fn read_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--config: cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("--config: {} is not a valid configuration", path.display()))
}

impl Config {
    pub fn from_settings(s: Settings) -> anyhow::Result<Config> {
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("./blobcache-data"));
        let store = s
            .store
            .unwrap_or_else(|| format!("file://{}", absolute(&data_dir.join("store")).display()));
        let config = Config {
            listen: s.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            store,
            data_dir,
            memory_cache: s.memory_cache.unwrap_or(ByteSize::mib(256)),
            disk_cache: s.disk_cache.unwrap_or(ByteSize::gib(4)),
            max_blob_size: s.max_blob_size.unwrap_or(ByteSize::gib(5)),
            write_mode: s.write_mode.unwrap_or(WriteMode::Back),
            spool_size: s.spool_size.unwrap_or(ByteSize::gib(10)),
            upload_concurrency: s.upload_concurrency.unwrap_or(4),
            shutdown_grace: s.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            chunk_size: s.chunk_size.unwrap_or(ByteSize::b(DEFAULT_CHUNK_SIZE)),
            store_options: {
                let d = StoreOptions::default();
                StoreOptions {
                    s3_endpoint: s.s3_endpoint.filter(|e| !e.is_empty()),
                    s3_region: s.s3_region.filter(|r| !r.is_empty()),
                    s3_force_path_style: s.s3_force_path_style.unwrap_or(d.s3_force_path_style),
                    s3_multipart_threshold: s.s3_multipart_threshold.unwrap_or(d.s3_multipart_threshold),
                    s3_part_size: s.s3_part_size.unwrap_or(d.s3_part_size),
                    s3_access_key_id: s.s3_access_key_id.filter(|k| !k.is_empty()),
                    s3_secret_access_key: s.s3_secret_access_key.filter(|k| !k.is_empty()),
                    s3_timeout: s.s3_timeout.unwrap_or(d.s3_timeout),
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let chunk = self.chunk_size.as_u64();
        anyhow::ensure!(
            (4096..=60 * 1024 * 1024).contains(&chunk),
            "--chunk-size must lie between 4KiB and 60MiB, got {}",
            self.chunk_size
        );
        anyhow::ensure!(
            self.memory_cache.as_u64() >= 4 * chunk,
            "--memory-cache must hold at least 4 chunks ({}), got {}",
            ByteSize::b(4 * chunk),
            self.memory_cache
        );
        anyhow::ensure!(
            self.disk_cache.as_u64() >= 256 * 1024 * 1024,
            "--disk-cache must be at least 256MiB, got {}",
            self.disk_cache
        );
        anyhow::ensure!(self.max_blob_size.as_u64() > 0, "--max-blob-size must be above 0");
        anyhow::ensure!(
            self.spool_size >= self.max_blob_size,
            "--spool-size ({}) must be at least --max-blob-size ({}): a larger blob could never be accepted",
            self.spool_size,
            self.max_blob_size
        );
        anyhow::ensure!(
            (1..=256).contains(&self.upload_concurrency),
            "--upload-concurrency must lie between 1 and 256, got {}",
            self.upload_concurrency
        );
        let s3 = &self.store_options;
        let (part, threshold) = (s3.s3_part_size.as_u64(), s3.s3_multipart_threshold.as_u64());
        anyhow::ensure!(
            (5 << 20..=5 << 30).contains(&part),
            "--s3-part-size must lie between 5MiB and 5GiB (S3's limits), got {}",
            s3.s3_part_size
        );
        anyhow::ensure!(
            (5 << 20..=5 << 30).contains(&threshold),
            "--s3-multipart-threshold must lie between 5MiB and 5GiB (S3's limits), got {}",
            s3.s3_multipart_threshold
        );
        anyhow::ensure!(
            self.max_blob_size.as_u64().div_ceil(part) <= 10_000,
            "--s3-part-size {} would cut a blob of --max-blob-size {} into more than 10000 parts (S3's limit)",
            s3.s3_part_size,
            self.max_blob_size
        );
        anyhow::ensure!(
            s3.s3_access_key_id.is_some() == s3.s3_secret_access_key.is_some(),
            "--s3-access-key-id and --s3-secret-access-key go together: give both, or neither to use the AWS credential chain"
        );
        anyhow::ensure!(
            s3.s3_timeout >= Duration::from_millis(100),
            "--s3-timeout must be at least 100ms, got {:?}",
            s3.s3_timeout
        );
        Ok(())
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests;
