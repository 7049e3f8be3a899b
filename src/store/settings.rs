//! The store's configuration section: which store, and how to reach S3.

use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;

use crate::units::exact_size;

/// The store's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreSettings {
    /// Persistent store URL [default: file://<data-dir>/store]
    #[arg(long, env = "BLOBCACHE_STORE")]
    pub store: Option<String>,
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
    /// Longest any one S3 request may take, retries included; also the longest wait for more of a body [default: 10s]
    #[arg(long, env = "BLOBCACHE_S3_TIMEOUT", value_parser = humantime::parse_duration)]
    pub s3_timeout: Option<Duration>,
}

/// The store's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct StoreConfig {
    /// `file:///path` or `s3://bucket[/prefix]`.
    pub store: String,
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

impl StoreSettings {
    /// Apply defaults (the local store lives under `data_dir`) and check the values.
    pub fn resolve(self, data_dir: &Path) -> anyhow::Result<StoreConfig> {
        let store = self.store.unwrap_or_else(|| {
            let dir = data_dir.join("store");
            format!("file://{}", std::path::absolute(&dir).unwrap_or(dir).display())
        });
        let config = StoreConfig {
            store,
            s3_endpoint: self.s3_endpoint.filter(|e| !e.is_empty()),
            s3_region: self.s3_region.filter(|r| !r.is_empty()),
            s3_force_path_style: self.s3_force_path_style.unwrap_or(false),
            s3_multipart_threshold: self.s3_multipart_threshold.unwrap_or(ByteSize::mib(64)),
            s3_part_size: self.s3_part_size.unwrap_or(ByteSize::mib(16)),
            s3_access_key_id: self.s3_access_key_id.filter(|k| !k.is_empty()),
            s3_secret_access_key: self.s3_secret_access_key.filter(|k| !k.is_empty()),
            s3_timeout: self.s3_timeout.unwrap_or(Duration::from_secs(10)),
        };
        let (part, threshold) = (config.s3_part_size.as_u64(), config.s3_multipart_threshold.as_u64());
        anyhow::ensure!(
            (5 << 20..=5 << 30).contains(&part),
            "--s3-part-size must lie between 5MiB and 5GiB (S3's limits), got {}",
            config.s3_part_size
        );
        anyhow::ensure!(
            (5 << 20..=5 << 30).contains(&threshold),
            "--s3-multipart-threshold must lie between 5MiB and 5GiB (S3's limits), got {}",
            config.s3_multipart_threshold
        );
        anyhow::ensure!(
            config.s3_access_key_id.is_some() == config.s3_secret_access_key.is_some(),
            "--s3-access-key-id and --s3-secret-access-key go together: give both, or neither to use the AWS credential chain"
        );
        anyhow::ensure!(
            config.s3_timeout >= Duration::from_millis(100),
            "--s3-timeout must be at least 100ms, got {:?}",
            config.s3_timeout
        );
        Ok(config)
    }
}

impl StoreConfig {
    /// Whether a blob of `size` bytes fits S3's limit of 10,000 parts.
    pub fn max_parts_ok(&self, size: u64) -> bool {
        size.div_ceil(self.s3_part_size.as_u64()) <= 10_000
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
