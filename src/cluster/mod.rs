//! The cluster: identical nodes that share nothing but the store, and find
//! each other through `--peers`.
//!
//! - [`members`]: who the nodes are and which are live (probes, failures).
//! - [`ring`]: each blob's owner, by rendezvous hashing over the live nodes.
//! - This module: the peer client. A node that misses a blob asks its owner
//!   (one hop: a forwarded request carries `X-Blobcache-Hop` and is never
//!   forwarded again), routes PUTs to the owner, and sends deletions
//!   (tombstones) to every live peer.
//!
//! Who calls what: `blobs` asks [`Cluster`] for owners and peer reads; the
//! HTTP layer forwards PUTs and answers the peer endpoints.

mod members;
pub mod ring;
mod settings;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use prometheus::{IntCounter, IntCounterVec, Registry};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

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
/// How long a peer may take to answer a GET or PUT (it may read the store first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer's response body may go without a byte.
const BODY_IDLE: Duration = Duration::from_secs(30);

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

/// The headers of an owner's answer that go on to the client.
const RELAYED: [&str; 10] = [
    "content-length",
    "content-range",
    "content-type",
    "etag",
    "accept-ranges",
    "cache-control",
    "x-blob-durability",
    "x-cache",
    "retry-after",
    "www-authenticate",
];

/// An owner's answer to a forwarded GET, to pass on as it streams.
pub struct Forwarded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

/// What became of a PUT sent on to the owner.
pub enum ForwardedPut<S> {
    /// The owner answered (its status and body go to the client as they are).
    Answer(reqwest::Response),
    /// The owner could not be reached before any byte of the body was sent:
    /// the body comes back untouched, for this node to take.
    NotSent(S, PeerError),
    /// The owner failed once part of the body had gone to it.
    Failed(PeerError),
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
    http: reqwest::Client,
    m: PeerMetrics,
}

impl Cluster {
    /// The cluster `config` describes, or `None` for a single node.
    pub fn new(config: &ClusterConfig, registry: &Registry) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(me) = config.advertise_url.clone() else {
            return Ok(None);
        };
        let listed = match &config.peers {
            Peers::None => return Ok(None),
            Peers::Static(urls) => urls.clone(),
            Peers::Dns { .. } => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.peer_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // Peers are reached directly, whatever proxy the environment names.
            .no_proxy()
            .user_agent(concat!("blobcache/", env!("CARGO_PKG_VERSION"), " (peer)"))
            .build()?;
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            members: Members::new(me, &listed),
            http,
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

    fn request(&self, method: reqwest::Method, peer_url: &str, path: &str, hop: Hop) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{peer_url}{path}"))
            .header(HOP, hop.as_str())
            .header(FROM, self.me());
        match &self.config.peer_token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    fn error(&self, op: &str, url: &str, what: impl Into<String>, unreachable: bool) -> PeerError {
        let what = what.into();
        self.m.errors.with_label_values(&[op]).inc();
        if unreachable {
            self.members.failed(url, &what);
        }
        PeerError {
            url: url.to_string(),
            what,
        }
    }

    /// Send a request, bounded in time to its answer. A peer that cannot be
    /// reached or does not answer in time is marked down.
    async fn send(
        &self,
        op: &str,
        url: &str,
        req: reqwest::RequestBuilder,
        limit: Duration,
    ) -> Result<reqwest::Response, PeerError> {
        self.m.requests.with_label_values(&[op]).inc();
        match tokio::time::timeout(limit, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(self.error(op, url, crate::error_chain(&e), true)),
            Err(_) => Err(self.error(op, url, format!("no answer within {limit:?}"), true)),
        }
    }

    /// Ask `peer` whether it has `key` (as `hop` says: as its owner, or locally).
    /// `Ok(None)`: it answered that the blob is not there.
    pub async fn lookup(&self, peer: &Peer, key: &BlobKey, hop: Hop) -> Result<Option<PeerBlob>, PeerError> {
        let req = self.request(reqwest::Method::HEAD, &peer.url, &format!("/blobs/{key}"), hop);
        let resp = self.send("lookup", &peer.url, req, self.config.peer_timeout).await?;
        match resp.status() {
            StatusCode::OK => {
                let size = resp
                    .headers()
                    .get(reqwest::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| self.error("lookup", &peer.url, "a HEAD answer without a size", false))?;
                let header = |name: &str, value: &[u8]| resp.headers().get(name).is_some_and(|v| v.as_bytes() == value);
                Ok(Some(PeerBlob {
                    peer: peer.clone(),
                    hop,
                    size,
                    pending: header("x-blob-durability", b"pending"),
                    held: header("x-cache", b"hit"),
                }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(self.error("lookup", &peer.url, format!("answered {other}"), false)),
        }
    }

    /// Ask the live peers (but `skip`) at once whether one holds `key` in its
    /// cache or spool; the first that does.
    pub async fn find_holder(&self, key: &BlobKey, skip: Option<&Peer>) -> Option<PeerBlob> {
        let peers: Vec<Peer> = self.live_peers().into_iter().filter(|p| Some(p) != skip).collect();
        let mut asks: futures::stream::FuturesUnordered<_> =
            peers.iter().map(|p| self.lookup(p, key, Hop::Local)).collect();
        while let Some(answer) = asks.next().await {
            if let Ok(Some(found)) = answer {
                return Some(found);
            }
        }
        None
    }

    /// Stream `range` of a blob a peer has. The answer must be exactly the
    /// bytes asked for; the body may not stall longer than `BODY_IDLE`.
    pub async fn get(
        &self,
        blob: &PeerBlob,
        key: &BlobKey,
        range: std::ops::Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, PeerError>>, PeerError> {
        let url = blob.peer.url.clone();
        let mut req = self.request(reqwest::Method::GET, &url, &format!("/blobs/{key}"), blob.hop);
        let full = range.start == 0 && range.end == blob.size;
        if !full {
            req = req.header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        }
        let resp = self.send("get", &url, req, ANSWER_TIMEOUT).await?;
        let want = range.end - range.start;
        let expected = if full {
            StatusCode::OK
        } else {
            StatusCode::PARTIAL_CONTENT
        };
        if resp.status() != expected || resp.content_length() != Some(want) {
            return Err(self.error(
                "get",
                &url,
                format!(
                    "answered {} with {:?} bytes, not {expected} with {want}",
                    resp.status(),
                    resp.content_length()
                ),
                false,
            ));
        }
        Ok(self.body(resp, url, want))
    }

    /// A response body that must be `want` bytes long and may not stall
    /// longer than `BODY_IDLE`; a short or stalled body ends with an error.
    fn body(&self, resp: reqwest::Response, url: String, want: u64) -> BoxStream<'static, Result<Bytes, PeerError>> {
        let received = self.m.bytes_received.clone();
        let errors = self.m.errors.with_label_values(&["get"]);
        let body = resp.bytes_stream();
        futures::stream::unfold(Some((body, 0u64)), move |state| {
            let url = url.clone();
            let errors = errors.clone();
            let received = received.clone();
            async move {
                let (mut body, got) = state?;
                let fail = |what: String| {
                    errors.inc();
                    Some((Err(PeerError { url, what }), None))
                };
                match tokio::time::timeout(BODY_IDLE, body.next()).await {
                    Ok(Some(Ok(bytes))) => {
                        received.inc_by(bytes.len() as u64);
                        let got = got + bytes.len() as u64;
                        Some((Ok(bytes), Some((body, got))))
                    }
                    Ok(None) if got == want => None,
                    Ok(None) => fail(format!("the body ended after {got} of {want} bytes")),
                    Ok(Some(Err(e))) => fail(format!("the body broke off: {}", crate::error_chain(&e))),
                    Err(_) => fail(format!("no data for {BODY_IDLE:?}")),
                }
            }
        })
        .boxed()
    }

    /// A client's GET, sent on to the blob's owner in one request (its
    /// `Range` and validators kept). Any answer of the owner is final (it
    /// looked everywhere); an error means it could not be reached.
    pub async fn forward_get(&self, owner: &Peer, key: &BlobKey, headers: &HeaderMap) -> Result<Forwarded, PeerError> {
        let mut req = self.request(reqwest::Method::GET, &owner.url, &format!("/blobs/{key}"), Hop::Owner);
        for name in ["range", "if-range", "if-none-match", "x-request-id"] {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v.clone());
            }
        }
        let resp = self.send("get", &owner.url, req, ANSWER_TIMEOUT).await?;
        let status = resp.status();
        let mut out = HeaderMap::new();
        for (name, value) in resp.headers() {
            if RELAYED.contains(&name.as_str()) {
                out.insert(name.clone(), value.clone());
            }
        }
        let want = resp.content_length().unwrap_or(0);
        let body = self.body(resp, owner.url.clone(), want);
        Ok(Forwarded {
            status,
            headers: out,
            body,
        })
    }

    /// Send a PUT on to the owner, streaming `body` through as it arrives
    /// (nothing is held here). `headers` are the client's request headers; the
    /// ones the owner needs are passed on.
    pub async fn forward_put<S>(&self, peer: &Peer, key: &BlobKey, headers: &HeaderMap, body: S) -> ForwardedPut<S>
    where
        S: Stream<Item = Result<Bytes, axum::BoxError>> + Send + Unpin + 'static,
    {
        let mut req = self.request(reqwest::Method::PUT, &peer.url, &format!("/blobs/{key}"), Hop::Owner);
        for name in ["content-length", "content-md5", "x-blob-durability", "x-request-id"] {
            if let Some(v) = headers.get(name) {
                req = req.header(name, v.clone());
            }
        }
        // The body goes through a channel, so it stays ours until the owner's
        // connection asks for its first bytes: if it never does, the body
        // comes back for this node to take.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let mut started_tx = Some(started_tx);
        let outgoing = futures::stream::poll_fn(move |cx| {
            if let Some(s) = started_tx.take() {
                let _ = s.send(());
            }
            rx.poll_recv(cx)
        });
        self.m.requests.with_label_values(&["put"]).inc();
        let send = req.body(reqwest::Body::wrap_stream(outgoing)).send();
        tokio::pin!(send);
        let early = tokio::select! {
            answer = &mut send => Some(answer),
            _ = started_rx => None,
        };
        match early {
            Some(Ok(resp)) => return ForwardedPut::Answer(resp),
            Some(Err(e)) => {
                let e = self.error("put", &peer.url, crate::error_chain(&e), true);
                return ForwardedPut::NotSent(body, e);
            }
            None => {}
        }
        let sent = self.m.bytes_sent.clone();
        let pump = tokio::spawn(async move {
            let mut body = body;
            while let Some(frame) = body.next().await {
                let frame = frame.map_err(std::io::Error::other);
                if let Ok(bytes) = &frame {
                    sent.inc_by(bytes.len() as u64);
                }
                let failed = frame.is_err();
                if tx.send(frame).await.is_err() || failed {
                    break;
                }
            }
        });
        let answer = send.await;
        pump.abort();
        match answer {
            Ok(resp) => ForwardedPut::Answer(resp),
            Err(e) => ForwardedPut::Failed(self.error("put", &peer.url, crate::error_chain(&e), true)),
        }
    }

    /// Send tombstones to every live peer at once. Returns the peers that
    /// did not take them (they catch up from the store or a peer later).
    pub async fn broadcast(&self, records: &[TombstoneRecord]) -> Vec<Peer> {
        let peers = self.live_peers();
        let sends = peers.iter().map(|p| async move {
            let req = self
                .request(reqwest::Method::POST, &p.url, "/cluster/tombstones", Hop::Local)
                .json(records);
            match self.send("tombstones", &p.url, req, self.config.peer_timeout).await {
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => {
                    let _ = self.error("tombstones", &p.url, format!("answered {}", resp.status()), false);
                    Some(p.clone())
                }
                Err(_) => Some(p.clone()),
            }
        });
        futures::future::join_all(sends).await.into_iter().flatten().collect()
    }

    /// The tombstones a peer recorded at or after `since`.
    pub async fn tombstones_of(&self, peer: &Peer, since: SystemTime) -> Result<Vec<TombstoneRecord>, PeerError> {
        let since = TombstoneRecord::new(BlobKey::EMPTY, since).at_us;
        let path = format!("/cluster/tombstones?since_us={since}");
        let req = self.request(reqwest::Method::GET, &peer.url, &path, Hop::Local);
        let resp = self
            .send("tombstones", &peer.url, req, self.config.peer_timeout)
            .await?;
        if !resp.status().is_success() {
            return Err(self.error("tombstones", &peer.url, format!("answered {}", resp.status()), false));
        }
        resp.json()
            .await
            .map_err(|e| self.error("tombstones", &peer.url, crate::error_chain(&e), false))
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

/// `X-Blobcache-Hop` as a header value.
pub fn hop_value(hop: Hop) -> HeaderValue {
    HeaderValue::from_static(hop.as_str())
}
