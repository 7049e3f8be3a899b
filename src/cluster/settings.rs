//! The cluster's configuration section: who the peers are, how this node is
//! known to them, and how peers are watched.

use std::time::Duration;

/// The cluster's flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterSettings {
    /// The nodes of the cluster: a comma-separated list of URLs (this node's own may be among them), or dns://NAME:PORT, re-resolved every few seconds (a headless service) [default: none, a single node]
    #[arg(long, env = "BLOBCACHE_PEERS")]
    pub peers: Option<String>,
    /// This node's own URL as its peers reach it; its id in the cluster, so keep it stable (a StatefulSet pod's DNS name) [required with --peers]
    #[arg(long, env = "BLOBCACHE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long a peer may take to connect and answer before it counts as failed [default: 2s]
    #[arg(long, env = "BLOBCACHE_PEER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub peer_timeout: Option<Duration>,
    /// How often each peer's /readyz is probed [default: 2s]
    #[arg(long, env = "BLOBCACHE_PEER_PROBE_INTERVAL", value_parser = humantime::parse_duration)]
    pub peer_probe_interval: Option<Duration>,
    /// Keep a copy of blobs read from their owner (hot blobs then live on several nodes; off: each blob is cached once in the cluster) [default: false]
    #[arg(long, env = "BLOBCACHE_PEER_COPIES", num_args = 0..=1, default_missing_value = "true")]
    pub peer_copies: Option<bool>,
    /// The token this node sends its peers (one with the peer scope in their --tokens file) [required with --peers and --tokens]
    #[arg(long, env = "BLOBCACHE_PEER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub peer_token: Option<String>,
    /// How often the store's tombstones are read, so a deletion this node missed reaches it [default: 10s]
    #[arg(long, env = "BLOBCACHE_TOMBSTONE_SYNC", value_parser = humantime::parse_duration)]
    pub tombstone_sync: Option<Duration>,
}

/// Where the members come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// A single node.
    None,
    /// A fixed list of base URLs (no trailing slash).
    Static(Vec<String>),
    /// A DNS name whose addresses are the nodes, all on `port`.
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peers::None => Ok(()),
            Peers::Static(urls) => f.write_str(&urls.join(",")),
            Peers::Dns { host, port } => write!(f, "dns://{host}:{port}"),
        }
    }
}

/// The cluster's effective configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterConfig {
    #[serde(serialize_with = "as_text")]
    pub peers: Peers,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub peer_probe_interval: Duration,
    pub peer_copies: bool,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "masked")]
    pub peer_token: Option<String>,
    #[serde(with = "humantime_serde")]
    pub tombstone_sync: Duration,
}

fn masked<S: serde::Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

fn as_text<S: serde::Serializer>(peers: &Peers, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&peers.to_string())
}

/// A base URL: http(s)://host[:port], no path, no trailing slash.
fn base_url(flag: &str, raw: &str) -> anyhow::Result<String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| anyhow::anyhow!("{flag} {raw:?}: a node's URL starts with http:// or https://"))?;
    anyhow::ensure!(
        !rest.is_empty() && !rest.contains('/') && !rest.contains(['?', '#', '@', ' ']),
        "{flag} {raw:?}: a node's URL is scheme, host and port only, e.g. http://blobcache-0:8080"
    );
    Ok(url.to_string())
}

impl ClusterSettings {
    pub fn resolve(self) -> anyhow::Result<ClusterConfig> {
        let peers = match self.peers.as_deref().map(str::trim) {
            None | Some("") => Peers::None,
            Some(dns) if dns.starts_with("dns://") => {
                let rest = dns.trim_start_matches("dns://").trim_end_matches('/');
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                    anyhow::anyhow!("--peers {dns:?}: give the port, e.g. dns://blobcache-headless:8080")
                })?;
                let port = port
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--peers {dns:?}: {port:?} is not a port"))?;
                anyhow::ensure!(!host.is_empty(), "--peers {dns:?}: no host name");
                Peers::Dns {
                    host: host.to_string(),
                    port,
                }
            }
            Some(list) => {
                let mut urls = Vec::new();
                for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let url = base_url("--peers", item)?;
                    if !urls.contains(&url) {
                        urls.push(url);
                    }
                }
                Peers::Static(urls)
            }
        };
        let advertise_url = self
            .advertise_url
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|u| base_url("--advertise-url", u))
            .transpose()?;
        anyhow::ensure!(
            peers == Peers::None || advertise_url.is_some(),
            "--peers needs --advertise-url: this node's own URL as its peers reach it (its id in the cluster)"
        );
        let config = ClusterConfig {
            peers,
            advertise_url,
            peer_timeout: self.peer_timeout.unwrap_or(Duration::from_secs(2)),
            peer_probe_interval: self.peer_probe_interval.unwrap_or(Duration::from_secs(2)),
            peer_copies: self.peer_copies.unwrap_or(false),
            // A token read from a file or a Secret often ends in a newline.
            peer_token: self.peer_token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
            tombstone_sync: self.tombstone_sync.unwrap_or(Duration::from_secs(10)),
        };
        for (flag, d) in [
            ("--peer-timeout", config.peer_timeout),
            ("--peer-probe-interval", config.peer_probe_interval),
            ("--tombstone-sync", config.tombstone_sync),
        ] {
            anyhow::ensure!(
                d >= Duration::from_millis(10),
                "{flag} must be at least 10ms, got {d:?}"
            );
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(peers: &str, me: Option<&str>) -> anyhow::Result<ClusterConfig> {
        ClusterSettings {
            peers: Some(peers.to_string()),
            advertise_url: me.map(str::to_string),
            ..Default::default()
        }
        .resolve()
    }

    #[test]
    fn a_peer_token_from_a_file_loses_its_newline() {
        let c = ClusterSettings {
            peer_token: Some("bc_abc\n".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.peer_token.as_deref(), Some("bc_abc"));
    }

    #[test]
    fn peers_are_a_list_or_a_dns_name() {
        let c = resolve("http://a:8080/, http://b:8080,http://a:8080", Some("http://a:8080")).unwrap();
        assert_eq!(
            c.peers,
            Peers::Static(vec!["http://a:8080".into(), "http://b:8080".into()])
        );
        let c = resolve("dns://blobcache-headless:8080", Some("http://a:8080")).unwrap();
        assert_eq!(
            c.peers,
            Peers::Dns {
                host: "blobcache-headless".into(),
                port: 8080
            }
        );
        assert_eq!(c.peers.to_string(), "dns://blobcache-headless:8080");
        assert_eq!(resolve("", None).unwrap().peers, Peers::None);
    }

    #[test]
    fn bad_peers_are_named() {
        let e = |p, me| format!("{:#}", resolve(p, me).unwrap_err());
        assert!(e("http://a:8080", None).contains("--advertise-url"));
        assert!(e("a:8080", Some("http://a:8080")).contains("http://"));
        assert!(e("http://a:8080/path", Some("http://a:8080")).contains("scheme, host and port"));
        assert!(e("dns://name", Some("http://a:8080")).contains("port"));
        assert!(e("dns://name:http", Some("http://a:8080")).contains("not a port"));
        assert!(e("http://a:8080", Some("a")).contains("--advertise-url"));
    }
}
