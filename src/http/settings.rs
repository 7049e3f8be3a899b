//! The HTTP layer's configuration section: what blob responses tell the caches
//! in front of the node, and the limits every connection lives within.

use std::time::Duration;

use axum::http::HeaderValue;
use bytesize::ByteSize;

use crate::units::exact_size;

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
    /// Longest a client may take to send a request's headers: from its connection, or from the first byte of a later request [default: 10s]
    #[arg(long, env = "BLOBCACHE_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Longest a kept-alive connection may wait for its next request; keep it above the idle timeout of a load balancer in front [default: 75s]
    #[arg(long, env = "BLOBCACHE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Longest wait for the next bytes of a request body; a stalled upload is cut and nothing is stored [default: 60s]
    #[arg(long, env = "BLOBCACHE_BODY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Slowest upload accepted: a request body must bring at least this many bytes a second over each --body-timeout, or it is cut (a trickle of a byte now and then holds a connection as long as a stall); 0 turns it off [default: 1KiB]
    #[arg(long, env = "BLOBCACHE_MIN_BODY_RATE")]
    pub min_body_rate: Option<ByteSize>,
    /// Longest a response may wait for a client that does not read it [default: 60s]
    #[arg(long, env = "BLOBCACHE_SEND_TIMEOUT", value_parser = humantime::parse_duration)]
    pub send_timeout: Option<Duration>,
    /// Most client connections at once; also held to (open-file limit - 64) / 2 [default: 4096]
    #[arg(long, env = "BLOBCACHE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers) [default: 16KiB]
    #[arg(long, env = "BLOBCACHE_MAX_HEADER_SIZE")]
    pub max_header_size: Option<ByteSize>,
    /// Most header fields in a request [default: 100]
    #[arg(long, env = "BLOBCACHE_MAX_HEADERS")]
    pub max_headers: Option<usize>,
}

/// The HTTP layer's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HttpConfig {
    #[serde(serialize_with = "header_text")]
    pub cache_control: HeaderValue,
    pub access_log: bool,
    #[serde(flatten)]
    pub limits: Limits,
}

/// What every connection lives within (`http::server` enforces them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Limits {
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    #[serde(serialize_with = "exact_size")]
    pub min_body_rate: ByteSize,
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    pub max_connections: usize,
    #[serde(serialize_with = "exact_size")]
    pub max_header_size: ByteSize,
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            min_body_rate: ByteSize::kib(1),
            send_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_header_size: ByteSize::kib(16),
            max_headers: 100,
        }
    }
}

/// Header sizes outside these bounds would break ordinary clients or hyper's own limits.
const MIN_HEADER_SIZE: u64 = 1024;
const MAX_HEADER_SIZE: u64 = 64 * 1024;

impl HttpSettings {
    /// Apply the defaults and check the values: the Cache-Control must be a
    /// header value that prints and reads back as itself; limits must leave a
    /// client room to make a request.
    pub fn resolve(self) -> anyhow::Result<HttpConfig> {
        let text = self.cache_control.as_deref().unwrap_or(DEFAULT_CACHE_CONTROL).trim();
        anyhow::ensure!(
            !text.is_empty() && text.bytes().all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()),
            "--cache-control {text:?} is not a valid header value: printable ASCII, not empty, e.g. \"public, max-age=3600\""
        );
        let cache_control =
            HeaderValue::from_str(text).map_err(|e| anyhow::anyhow!("--cache-control {text:?}: {e}"))?;
        let d = Limits::default();
        let limits = Limits {
            header_read_timeout: self.header_read_timeout.unwrap_or(d.header_read_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(d.idle_timeout),
            body_timeout: self.body_timeout.unwrap_or(d.body_timeout),
            min_body_rate: self.min_body_rate.unwrap_or(d.min_body_rate),
            send_timeout: self.send_timeout.unwrap_or(d.send_timeout),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_header_size: self.max_header_size.unwrap_or(d.max_header_size),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
        };
        for (flag, value) in [
            ("--header-read-timeout", limits.header_read_timeout),
            ("--idle-timeout", limits.idle_timeout),
            ("--body-timeout", limits.body_timeout),
            ("--send-timeout", limits.send_timeout),
        ] {
            anyhow::ensure!(
                value >= Duration::from_millis(10),
                "{flag} must be at least 10ms, got {value:?}"
            );
        }
        anyhow::ensure!(limits.max_connections >= 1, "--max-connections must be at least 1");
        let size = limits.max_header_size.as_u64();
        anyhow::ensure!(
            (MIN_HEADER_SIZE..=MAX_HEADER_SIZE).contains(&size),
            "--max-header-size must be between 1KiB and 64KiB, got {}",
            limits.max_header_size
        );
        anyhow::ensure!(
            (8..=1000).contains(&limits.max_headers),
            "--max-headers must be between 8 and 1000, got {}",
            limits.max_headers
        );
        Ok(HttpConfig {
            cache_control,
            access_log: self.access_log.unwrap_or(true),
            limits,
        })
    }
}

fn header_text<S: serde::Serializer>(value: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.to_str().map_err(serde::ser::Error::custom)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command, Config};

    fn resolve(args: &[&str]) -> anyhow::Result<Config> {
        let mut full = vec!["blobcache", "serve"];
        full.extend_from_slice(args);
        match Cli::parse_with_file(full)?.command {
            Command::Serve(a) => a.resolve(),
            _ => unreachable!("parsed `serve`"),
        }
    }

    #[test]
    fn limits_have_defaults_flags_checks_and_read_back_from_a_file() {
        assert_eq!(resolve(&[]).unwrap().http.limits, Limits::default());
        let c = resolve(&[
            "--header-read-timeout",
            "3s",
            "--idle-timeout",
            "2m",
            "--body-timeout",
            "500ms",
            "--send-timeout",
            "1m",
            "--max-connections",
            "100",
            "--max-header-size",
            "8KiB",
            "--max-headers",
            "20",
            "--min-body-rate",
            "0",
        ])
        .unwrap();
        let want = Limits {
            header_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_millis(500),
            min_body_rate: ByteSize::b(0),
            send_timeout: Duration::from_secs(60),
            max_connections: 100,
            max_header_size: ByteSize::kib(8),
            max_headers: 20,
        };
        assert_eq!(c.http.limits, want);

        // Printed as a config file, and read back as the same values.
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("header-read-timeout = \"3s\""), "{printed}");
        assert!(printed.contains("max-header-size = \"8KiB\""), "{printed}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, printed).unwrap();
        let back = resolve(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(back.http.limits, want);

        for (flag, bad) in [
            ("--max-header-size", "100B"),
            ("--max-header-size", "1MiB"),
            ("--max-headers", "2"),
            ("--max-connections", "0"),
            ("--idle-timeout", "0s"),
        ] {
            let e = resolve(&[flag, bad]).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {bad}: {e}");
        }
    }
}
