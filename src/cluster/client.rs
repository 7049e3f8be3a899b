//! The peer client: the requests one node sends another. Each is bounded in
//! time to its answer; a peer that cannot be reached or does not answer in
//! time is marked down (it is tried again at the next probe). Bodies stream
//! both ways; nothing is held whole.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use super::{Cluster, FROM, HOP, Hop, Peer, PeerBlob, PeerError, TombstoneRecord, micros};
use crate::key::BlobKey;

/// How long a peer may take to answer a GET or PUT (it may read the store first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer's response body may go without a byte.
const BODY_IDLE: Duration = Duration::from_secs(30);

/// The headers of an owner's answer that go on to the client.
const RELAYED: [&str; 11] = [
    "content-length",
    "content-range",
    "content-type",
    "x-content-type-options",
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

/// The headers of a peer's answer that go on to the client.
pub fn relayed_headers(headers: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if RELAYED.contains(&name.as_str()) {
            out.insert(name.clone(), value.clone());
        }
    }
    out
}

/// `req` with those of the client's `headers` named in `names`.
fn passing_on(mut req: reqwest::RequestBuilder, headers: &HeaderMap, names: &[&str]) -> reqwest::RequestBuilder {
    for name in names {
        if let Some(v) = headers.get(*name) {
            req = req.header(*name, v.clone());
        }
    }
    req
}

impl Cluster {
    pub(super) fn request(
        &self,
        method: reqwest::Method,
        peer_url: &str,
        path: &str,
        hop: Hop,
    ) -> reqwest::RequestBuilder {
        let req = self
            .http
            .read()
            .expect("peer client")
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
        let req = self.request(reqwest::Method::GET, &owner.url, &format!("/blobs/{key}"), Hop::Owner);
        let req = passing_on(req, headers, &["range", "if-range", "if-none-match", "x-request-id"]);
        // A hung owner (stopped, swapping) fails its next probe: the wait for
        // its answer ends then, not at ANSWER_TIMEOUT.
        let resp = tokio::select! {
            resp = self.send("get", &owner.url, req, ANSWER_TIMEOUT) => resp?,
            _ = self.members.failed_since_now(&owner.url) => {
                return Err(self.error("get", &owner.url, "the owner failed a probe while it was asked", false));
            }
        };
        let status = resp.status();
        let out = relayed_headers(resp.headers());
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
        let req = self.request(reqwest::Method::PUT, &peer.url, &format!("/blobs/{key}"), Hop::Owner);
        let req = passing_on(
            req,
            headers,
            &["content-length", "content-md5", "x-blob-durability", "x-request-id"],
        );
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
        let path = format!("/cluster/tombstones?since_us={}", micros(since));
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
}
