//! Hostile clients, over raw sockets: slow and silent connections, stalled
//! bodies, header floods, request smuggling, bad chunked framing, malformed
//! heads, path traversal, and running out of file descriptors. Each case
//! checks the answer (status and JSON error), that nothing was stored, and
//! that the node goes on serving others.

mod fds;
mod framing;
mod limits;
mod timeouts;

use std::time::{Duration, Instant};

use blobcache::config::Settings;
use blobcache::key::BlobKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, TestApp, data};

/// Test settings with the connection timeouts short, so the suite stays fast
/// (the idle timeout less so: a client's pooled connection must outlive the
/// gaps between its requests; tests of it shorten it themselves).
fn short_limits() -> Settings {
    let mut s = common::test_settings();
    s.http.header_read_timeout = Some(Duration::from_millis(300));
    s.http.idle_timeout = Some(Duration::from_secs(2));
    s.http.body_timeout = Some(Duration::from_millis(300));
    s.http.send_timeout = Some(Duration::from_millis(300));
    s
}

/// The longest any test waits for an answer or a close.
const PATIENCE: Duration = Duration::from_secs(5);

/// One HTTP/1.1 response, as read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A JSON error with this status and code, as every error must be.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "content type of {self:?}"
        );
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("a JSON body, not {:?}: {e}", String::from_utf8_lossy(&self.body)));
        assert_eq!(body["error"], code, "error code in {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a message in {body}"
        );
        assert!(self.header("x-request-id").is_some(), "a request id on {self:?}");
    }
}

/// A raw client connection.
struct Raw {
    sock: TcpStream,
    /// Bytes read past the last answer.
    pending: Vec<u8>,
}

impl Raw {
    async fn connect(app: &TestApp) -> Raw {
        Raw::connect_to(&app.base).await
    }

    async fn connect_to(base: &str) -> Raw {
        let addr = base.trim_start_matches("http://");
        Raw {
            sock: TcpStream::connect(addr).await.expect("connect"),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.expect("send");
    }

    /// Read one answer, its body sized by Content-Length (none after HEAD).
    async fn answer(&mut self, head_request: bool) -> Answer {
        tokio::time::timeout(PATIENCE, self.read_answer(head_request))
            .await
            .expect("an answer in time")
    }

    async fn read_answer(&mut self, head_request: bool) -> Answer {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = resp.parse(&self.pending).expect("an HTTP/1.1 response") {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let length = if head_request { 0 } else { length };
                while self.pending.len() < len + length {
                    self.fill().await.expect("the rest of the body");
                }
                let body = self.pending[len..len + length].to_vec();
                self.pending.drain(..len + length);
                return Answer { status, headers, body };
            }
            self.fill().await.unwrap_or_else(|| {
                panic!(
                    "closed before an answer; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                )
            });
        }
    }

    /// Read more; `None` at end of file (or a reset).
    async fn fill(&mut self) -> Option<usize> {
        let mut buf = [0u8; 16 * 1024];
        match self.sock.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                Some(n)
            }
        }
    }

    /// Wait for the server to close, with nothing more sent; how long it took.
    async fn closed(&mut self) -> Duration {
        let started = Instant::now();
        tokio::time::timeout(PATIENCE, async { while self.fill().await.is_some() {} })
            .await
            .expect("the server closes the connection");
        assert!(
            self.pending.is_empty(),
            "nothing more after the answer: {:?}",
            String::from_utf8_lossy(&self.pending)
        );
        started.elapsed()
    }
}

/// Send one raw request on a new connection and read its answer; the server
/// then closes the connection.
async fn refused(app: &TestApp, request: &[u8]) -> Answer {
    let mut raw = Raw::connect(app).await;
    raw.send(request).await;
    let answer = raw.answer(request.starts_with(b"HEAD ")).await;
    raw.closed().await;
    answer
}

/// The node still serves another client: probes, and a blob put and read back.
async fn serves_others(app: &TestApp) {
    let health = app.client.get(app.url("/healthz")).send().await.expect("GET /healthz");
    assert_eq!(health.status(), 200);
    let body = data(100_000, rand::random());
    assert_eq!(app.put(&body).await.status(), 201);
    let got = app.get(&BlobKey::of(&body)).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == body, "the blob reads back");
    let status = app
        .client
        .delete(app.blob_url(&BlobKey::of(&body)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}

/// Nothing of `key` anywhere: not servable, no file in the store or the spool.
async fn nothing_stored(app: &TestApp, key: &BlobKey) {
    common::eventually("no spool file left", || app.spool_files().is_empty()).await;
    common::assert_error(app.get(key).await, 404, "not_found").await;
    assert!(app.store_files().is_empty(), "store: {:?}", app.store_files());
}

/// A counter of /metrics (0 when it has no sample yet).
async fn metric(app: &TestApp, name_and_labels: &str) -> f64 {
    app.metric(name_and_labels).await
}

/// A PUT head for `body` under its own key (Content-Length set), with extra header lines.
fn put_head(body: &[u8], extra: &str) -> Vec<u8> {
    format!(
        "PUT /blobs/{} HTTP/1.1\r\nHost: blobcache\r\nContent-Length: {}\r\n{extra}\r\n",
        BlobKey::of(body),
        body.len()
    )
    .into_bytes()
}
