//! The cluster: identical nodes that share nothing but the store, and find
//! each other through `--peers`.
//!
//! - [`members`]: who the nodes are and which are live (probes, failures).
//! - [`ring`]: each blob's owner, by rendezvous hashing over the live nodes.
//! - `client.rs`: the peer client. A node that misses a blob asks its owner
//!   (one hop: a forwarded request carries `X-Blobcache-Hop` and is never
//!   forwarded again), routes PUTs to the owner, and sends deletions
//!   (tombstones) to every live peer.
//! - This module: the types nodes exchange, [`Cluster`] itself (owners, the
//!   probe loop, `/cluster` and `/stats`).
//!
//! Who calls what: `blobs` asks [`Cluster`] for owners and peer reads; the
//! HTTP layer forwards PUTs and answers the peer endpoints.

mod client;
mod members;
pub mod ring;
mod settings;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;
use prometheus::{IntCounter, IntCounterVec, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::tls::{PeerTls, TlsConfig};

pub use client::{Forwarded, ForwardedPut, relayed_headers};
pub use members::{MemberView, Peer};
pub use settings::{ClusterConfig, ClusterSettings, Peers};

use crate::key::BlobKey;
use crate::metrics;
use members::Members;

/// Marks a request one node sends another: `owner` (answer as the blob's
/// owner: never forward it again) or `local` (answer from this node's cache
/// and spool only).
pub const HOP: &str = "x-blobcache-hop";
/// The id of the node that sent a peer request (for logs).
pub const FROM: &str = "x-blobcache-from";
/// What a peer is asked to do with a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hop {
    Owner,
    Local,
}

impl Hop {
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::Owner => "owner",
            Hop::Local => "local",
        }
    }

    /// The hop a request carries, if it came from a peer.
    pub fn of(headers: &HeaderMap) -> Option<Hop> {
        match headers.get(HOP)?.to_str().ok()? {
            "owner" => Some(Hop::Owner),
            "local" => Some(Hop::Local),
            _ => None,
        }
    }
}

/// A blob a peer has.
#[derive(Debug, Clone)]
pub struct PeerBlob {
    pub peer: Peer,
    pub hop: Hop,
    pub size: u64,
    /// The peer holds it pending, not yet in the store.
    pub pending: bool,
    /// The peer holds it (cache or spool), rather than reading it from the store.
    pub held: bool,
}

/// A peer request that failed.
#[derive(Debug, thiserror::Error)]
#[error("peer {url}: {what}")]
pub struct PeerError {
    pub url: String,
    pub what: String,
}

/// µs since the Unix epoch, as nodes exchange times.
fn micros(t: SystemTime) -> u64 {
    let us = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    us.try_into().unwrap_or(u64::MAX)
}

/// A deletion, as nodes exchange them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TombstoneRecord {
    pub md5: BlobKey,
    /// When it was deleted, µs since the Unix epoch.
    pub at_us: u64,
}

impl TombstoneRecord {
    pub fn new(md5: BlobKey, at: SystemTime) -> Self {
        let at_us = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        TombstoneRecord {
            md5,
            at_us: at_us.try_into().unwrap_or(u64::MAX),
        }
    }

    pub fn at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(self.at_us)
    }
}

#[derive(Debug)]
struct PeerMetrics {
    requests: IntCounterVec,
    errors: IntCounterVec,
    bytes_received: IntCounter,
    bytes_sent: IntCounter,
}

/// This node's view of the cluster and its client to the peers.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    members: Members,
    /// Made again when the peer TLS files change.
    http: std::sync::RwLock<reqwest::Client>,
    tls: PeerTls,
    m: PeerMetrics,
}

impl Cluster {
    /// The cluster `config` describes, or `None` for a single node.
    pub fn new(config: &ClusterConfig, tls: &TlsConfig, registry: &Registry) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(me) = config.advertise_url.clone() else {
            return Ok(None);
        };
        let (listed, dns_name) = match &config.peers {
            Peers::None => return Ok(None),
            Peers::Static(urls) => (urls.clone(), None),
            Peers::Dns { host, .. } => (Vec::new(), Some(host.clone())),
        };
        let tls = PeerTls::new(tls, dns_name.filter(|_| me.starts_with("https://")));
        let http = peer_client(config, &tls)?;
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            members: Members::new(me, &listed),
            http: std::sync::RwLock::new(http),
            tls,
            m: PeerMetrics {
                requests: metrics::counter_vec(
                    registry,
                    "blobcache_peer_requests_total",
                    "requests sent to peers, by operation",
                    &["op"],
                ),
                errors: metrics::counter_vec(
                    registry,
                    "blobcache_peer_errors_total",
                    "peer requests that failed (unreachable, too slow, a bad answer), by operation",
                    &["op"],
                ),
                bytes_received: metrics::counter(
                    registry,
                    "blobcache_peer_received_bytes_total",
                    "blob bytes read from peers",
                ),
                bytes_sent: metrics::counter(
                    registry,
                    "blobcache_peer_sent_bytes_total",
                    "upload bytes forwarded to owners",
                ),
            },
        });
        for (name, help, live) in [
            ("blobcache_peers_live", "peers that answer", true),
            ("blobcache_peers_down", "peers that do not answer (skipped)", false),
        ] {
            let weak = Arc::downgrade(&cluster);
            metrics::computed_gauge(registry, name, help, move || {
                weak.upgrade().map_or(0.0, |c| {
                    let (up, down) = c.members.counts();
                    (if live { up } else { down }) as f64
                })
            });
        }
        Ok(Some(cluster))
    }

    /// This node's id (its advertised URL).
    pub fn me(&self) -> &str {
        self.members.me()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The live nodes in `key`'s rendezvous order, this node included (`None` for it).
    pub fn order(&self, key: &BlobKey) -> Vec<Option<Peer>> {
        let me = self.me().to_string();
        let mut nodes: Vec<Option<Peer>> = self.members.live().into_iter().map(Some).collect();
        nodes.push(None);
        ring::order(key, &nodes, |n| n.as_ref().map_or(me.as_str(), |p| p.id.as_str()))
            .into_iter()
            .cloned()
            .collect()
    }

    /// The owner of `key`, when it is another node.
    pub fn owner(&self, key: &BlobKey) -> Option<Peer> {
        self.order(key).into_iter().next().flatten()
    }

    /// The live peers (not this node).
    pub fn live_peers(&self) -> Vec<Peer> {
        self.members.live()
    }

    /// Probe every member once (at once), bounded by the peer timeout.
    pub async fn probe_all(&self) {
        let urls = self.members.urls();
        futures::future::join_all(urls.iter().map(|url| self.probe(url))).await;
    }

    async fn probe(&self, url: &str) {
        #[derive(Deserialize)]
        struct Ready {
            node: Option<String>,
            serving: Option<bool>,
        }
        let req = self.request(reqwest::Method::GET, url, "/readyz", Hop::Local);
        let answer = async {
            let resp = tokio::time::timeout(self.config.peer_timeout, req.send())
                .await
                .map_err(|_| format!("no answer within {:?}", self.config.peer_timeout))?
                .map_err(|e| crate::error_chain(&e))?;
            let ready: Ready = tokio::time::timeout(self.config.peer_timeout, resp.json())
                .await
                .map_err(|_| "the answer stalled".to_string())?
                .map_err(|e| format!("not a blobcache /readyz answer: {}", crate::error_chain(&e)))?;
            let node = ready.node.ok_or("not a blobcache /readyz answer (no node id)")?;
            Ok::<_, String>((node, ready.serving.unwrap_or(false)))
        };
        match answer.await {
            Ok((id, serving)) => self.members.answered(url, id, serving),
            Err(what) => self.members.failed(url, &what),
        }
    }

    /// Keep membership current: resolve the DNS name (if any) every few
    /// seconds and probe every member each `--peer-probe-interval`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut last_resolve: Option<tokio::time::Instant> = None;
        loop {
            if let Peers::Dns { host, port } = &self.config.peers
                && last_resolve.is_none_or(|t| t.elapsed() >= members::DNS_REFRESH)
            {
                self.resolve(host, *port).await;
                last_resolve = Some(tokio::time::Instant::now());
            }
            self.probe_all().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.peer_probe_interval) => {}
            }
        }
    }

    /// Resolve the DNS name once and set the members from its answer.
    pub async fn resolve(&self, host: &str, port: u16) {
        match tokio::time::timeout(self.config.peer_timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<_> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                self.members.resolved(&addrs);
            }
            Ok(Err(e)) => tracing::warn!(host, error = %e, "could not resolve the cluster's DNS name"),
            Err(_) => tracing::warn!(host, "resolving the cluster's DNS name took too long"),
        }
    }

    /// Start-up: learn the members and probe them once, so the first requests
    /// already see the live peers.
    pub async fn join(&self) {
        if let Peers::Dns { host, port } = &self.config.peers {
            self.resolve(host, *port).await;
        }
        self.probe_all().await;
        let live = self.live_peers();
        tracing::info!(me = self.me(), live = live.len(), peers = %self.config.peers, "joined the cluster");
    }

    /// `/cluster`: this node, its members, and `key`'s owner and order.
    pub fn view(&self, key: Option<&BlobKey>) -> serde_json::Value {
        let mut view = serde_json::json!({
            "node": self.me(),
            "peers": self.config.peers.to_string(),
            "members": self.members.view(),
            "peer_copies": self.config.peer_copies,
        });
        if let Some(key) = key {
            let order: Vec<String> = self
                .order(key)
                .into_iter()
                .map(|n| n.map_or_else(|| self.me().to_string(), |p| p.id))
                .collect();
            view["md5"] = serde_json::json!(key);
            view["owner"] = serde_json::json!(order.first());
            view["order"] = serde_json::json!(order);
        }
        view
    }

    /// The peer counters, for /stats.
    pub fn snapshot(&self) -> serde_json::Value {
        let (live, down) = self.members.counts();
        let by_op = |v: &IntCounterVec| {
            let mut out = serde_json::Map::new();
            for op in ["lookup", "get", "put", "tombstones"] {
                out.insert(op.into(), v.with_label_values(&[op]).get().into());
            }
            serde_json::Value::Object(out)
        };
        serde_json::json!({
            "node": self.me(),
            "peers_live": live,
            "peers_down": down,
            "requests": by_op(&self.m.requests),
            "errors": by_op(&self.m.errors),
            "bytes_received": self.m.bytes_received.get(),
            "bytes_sent": self.m.bytes_sent.get(),
        })
    }
}

/// The client to the peers: bounded connects, no proxy, and over TLS what
/// `--peer-ca` and `--peer-cert` say.
fn peer_client(config: &ClusterConfig, tls: &PeerTls) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(config.peer_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        // Peers are reached directly, whatever proxy the environment names.
        .no_proxy()
        .user_agent(concat!("blobcache/", env!("CARGO_PKG_VERSION"), " (peer)"));
    if !tls.is_default() {
        builder = builder.use_preconfigured_tls(tls.client_config()?);
    }
    Ok(builder.build()?)
}

impl crate::reload::Reload for Cluster {
    fn what(&self) -> &'static str {
        "peer TLS files"
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        self.tls.files()
    }

    /// A new client for new connections; those open finish on the old one.
    fn reload(&self) {
        match peer_client(&self.config, &self.tls) {
            Ok(client) => {
                *self.http.write().expect("peer client") = client;
                tracing::info!("peer TLS files reloaded");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the peer TLS files do not load; keeping the client made before");
            }
        }
    }
}
