//! The HTTP layer's configuration section: what blob responses tell the caches in front of the node.

use axum::http::HeaderValue;

/// `Cache-Control` of blob responses unless configured: blobs never change under their key.
pub const DEFAULT_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";

/// The HTTP layer's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HttpSettings {
    /// Cache-Control of blob responses (GET, HEAD, 304); a shorter max-age lets a DELETE reach shared caches in front sooner [default: public, max-age=31536000, immutable]
    #[arg(long, env = "BLOBCACHE_CACHE_CONTROL")]
    pub cache_control: Option<String>,
    /// One log line per request (method, route, status, bytes, latency, cache result) [default: true]
    #[arg(long, env = "BLOBCACHE_ACCESS_LOG", num_args = 0..=1, default_missing_value = "true")]
    pub access_log: Option<bool>,
}

/// The HTTP layer's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HttpConfig {
    #[serde(serialize_with = "header_text")]
    pub cache_control: HeaderValue,
    pub access_log: bool,
}

impl HttpSettings {
    /// Apply the default and check the value is a header value that prints and reads back as itself.
    pub fn resolve(self) -> anyhow::Result<HttpConfig> {
        let text = self.cache_control.as_deref().unwrap_or(DEFAULT_CACHE_CONTROL).trim();
        anyhow::ensure!(
            !text.is_empty() && text.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()),
            "--cache-control {text:?} is not a valid header value: printable ASCII, not empty, e.g. \"public, max-age=3600\""
        );
        let cache_control =
            HeaderValue::from_str(text).map_err(|e| anyhow::anyhow!("--cache-control {text:?}: {e}"))?;
        Ok(HttpConfig {
            cache_control,
            access_log: self.access_log.unwrap_or(true),
        })
    }
}

fn header_text<S: serde::Serializer>(value: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.to_str().map_err(serde::ser::Error::custom)?)
}
