//! The shared test harness: a real blobcache in-process on 127.0.0.1:0 with
//! temporary directories. Tests see the node only through its HTTP interface.

pub mod cluster;
pub mod process;
pub mod s3_nodes;
pub mod s3_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use blobcache::app::App;
use blobcache::config::{Config, Settings};
use blobcache::key::BlobKey;
use bytesize::ByteSize;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const CHUNK: usize = blobcache::cache::DEFAULT_CHUNK_SIZE as usize;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: Option<TempDir>,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Settings small enough for tests; callers adjust them.
pub fn test_settings() -> Settings {
    let mut s = Settings {
        shutdown_grace: Some(Duration::from_secs(5)),
        ..Settings::default()
    };
    s.cache.memory_cache = Some(ByteSize::mib(128));
    s.cache.disk_cache = Some(ByteSize::mib(256));
    s
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(test_settings()).await
    }

    pub async fn spawn_with(settings: Settings) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::spawn_in(dir, settings).await
    }

    /// Start a node whose data directory is `dir` (reused across restarts).
    pub async fn spawn_in(dir: TempDir, settings: Settings) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::spawn_on(listener, dir, settings).await
    }

    /// Start a node on `listener` (bound beforehand, so its peers know its address).
    pub async fn spawn_on(listener: tokio::net::TcpListener, dir: TempDir, mut settings: Settings) -> TestApp {
        let data_dir = dir.path().to_path_buf();
        settings.data_dir = Some(data_dir.clone());
        settings.listen = Some("127.0.0.1:0".parse().unwrap());
        let config = Config::from_settings(settings).expect("test config");
        let addr = listener.local_addr().unwrap();
        let app = App::build(config).await.expect("build app");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(app.serve(listener, async move { signal.cancelled().await }));
        TestApp {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            dir: Some(dir),
            data_dir,
            stop,
            task: Some(task),
        }
    }

    /// Shut down cleanly (as on SIGTERM) and hand back the data directory.
    pub async fn stop(mut self) -> TempDir {
        self.stop.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown within 30 s")
            .expect("server task")
            .expect("clean shutdown");
        self.dir.take().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn blob_url(&self, key: &BlobKey) -> String {
        self.url(&format!("/blobs/{key}"))
    }

    /// PUT `data` under its own MD5.
    pub async fn put(&self, data: &[u8]) -> reqwest::Response {
        self.put_as(&BlobKey::of(data), data).await
    }

    pub async fn get(&self, key: &BlobKey) -> reqwest::Response {
        self.client.get(self.blob_url(key)).send().await.expect("GET")
    }

    pub async fn get_range(&self, key: &BlobKey, range: &str) -> reqwest::Response {
        self.get_with(key, &[("range", range)]).await
    }

    /// PUT `body` under `key` asking for the answer only once the store has it.
    pub async fn put_stored(&self, key: &BlobKey, body: &[u8]) -> reqwest::Response {
        self.client
            .put(self.blob_url(key))
            .header("x-blob-durability", "stored")
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT")
    }

    /// Wait for a first failed upload attempt (the store refuses them).
    pub async fn upload_failed(&self) {
        eventually_async("a failed upload attempt", || async {
            self.stat("replication.upload_failures").await >= 1
        })
        .await;
    }

    /// GET with extra request headers.
    pub async fn get_with(&self, key: &BlobKey, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(self.blob_url(key));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send().await.expect("GET")
    }

    /// PUT `body` under `key`, whatever its real MD5.
    pub async fn put_as(&self, key: &BlobKey, body: &[u8]) -> reqwest::Response {
        self.client
            .put(self.blob_url(key))
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT")
    }

    /// POST `body` to `path` (`/blobs` or `/blobs/{md5}`).
    pub async fn post_to(&self, path: &str, body: &[u8]) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .body(body.to_vec())
            .send()
            .await
            .expect("POST")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }

    pub fn store_path(&self, key: &BlobKey) -> PathBuf {
        let hex = key.to_string();
        self.store_dir().join(&hex[..2]).join(&hex[2..4]).join(hex)
    }

    /// Put bytes straight into the store under `key`, as another tool would.
    pub fn seed_store_as(&self, key: &BlobKey, data: &[u8]) {
        let path = self.store_path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    pub fn seed_store(&self, data: &[u8]) -> BlobKey {
        let key = BlobKey::of(data);
        self.seed_store_as(&key, data);
        key
    }

    /// GET `path` (or an absolute URL) and read its JSON answer, whatever the status.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            self.url(path)
        };
        let resp = self.client.get(url).send().await.expect("GET");
        resp.json().await.expect("a JSON answer")
    }

    /// The node's /metrics, as text.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        resp.text().await.expect("the metrics text")
    }

    /// One series of the node's /metrics (0 when it has no sample yet).
    pub async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics_text().await, series).unwrap_or(0.0)
    }

    /// The node's /stats.
    pub async fn stats(&self) -> serde_json::Value {
        let resp = self.client.get(self.url("/stats")).send().await.expect("GET /stats");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("JSON /stats")
    }

    /// One counter of /stats, by its path: `store.gets`, `metrics.fills`, ...
    pub async fn stat(&self, path: &str) -> u64 {
        let stats = self.stats().await;
        let mut v = &stats;
        for part in path.split('.') {
            v = &v[part];
        }
        v.as_u64().unwrap_or_else(|| panic!("no counter {path} in {stats}"))
    }

    /// The node's `/blobs/{md5}/status`: a 200, or for a blob that is nowhere
    /// a 404 `not_found` that carries the same fields.
    pub async fn status(&self, key: &BlobKey) -> serde_json::Value {
        let resp = self
            .client
            .get(self.url(&format!("/blobs/{key}/status")))
            .send()
            .await
            .expect("GET status");
        let code = resp.status().as_u16();
        let v: serde_json::Value = resp.json().await.expect("JSON status");
        match code {
            200 => assert!(v.get("error").is_none(), "{v}"),
            404 => assert_eq!(v["error"], "not_found", "{v}"),
            other => panic!("GET status: {other} {v}"),
        }
        v
    }

    pub async fn store_gets(&self) -> u64 {
        self.stat("store.gets").await
    }

    pub async fn store_bytes_read(&self) -> u64 {
        self.stat("store.bytes_read").await
    }

    pub async fn pending_blobs(&self) -> u64 {
        self.stat("replication.pending_blobs").await
    }

    /// Wait until every acknowledged blob reached the store.
    pub async fn replicated(&self) {
        eventually_async("the pending queue to empty", || async {
            self.pending_blobs().await == 0
        })
        .await;
    }

    /// Wait until the node believes the store answers (its circuit is closed).
    pub async fn store_answers(&self) {
        eventually_async("the store's circuit to close", || async {
            self.stats().await["store"]["circuit"] == "closed"
        })
        .await;
    }

    /// Whether this node's cache holds `key` as a complete blob.
    pub async fn is_cached(&self, key: &BlobKey) -> bool {
        self.status(key).await["cached"] == true
    }

    /// Wait until the cache holds `key` as a complete blob.
    pub async fn cached(&self, key: &BlobKey) {
        eventually_async("the blob to be cached", || self.is_cached(key)).await;
    }

    /// Blob files left anywhere in the spool (temporary or pending; not their digests).
    pub fn spool_files(&self) -> Vec<PathBuf> {
        files_under(&self.data_dir.join("spool"))
            .into_iter()
            .filter(|p| p.extension().is_none_or(|e| e != "sums"))
            .collect()
    }

    /// Blobs in the store (not its temporary files or tombstones).
    pub fn store_files(&self) -> Vec<PathBuf> {
        files_under(&self.store_dir())
            .into_iter()
            .filter(|p| {
                !p.strip_prefix(self.store_dir())
                    .unwrap()
                    .starts_with(".blobcache-tombstones")
            })
            .collect()
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Poll a condition until it holds, failing the test after 20 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deterministic pseudo-random bytes (incompressible, distinct per seed).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Read a JSON error body and check its code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status, "status");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"], code, "error code in {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message in {body}"
    );
}

/// Like `eventually`, for a condition that has to await.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Start a PUT of `body` over a raw socket (declaring its full length) and
/// send only its first `sent` bytes; the caller decides how the client fails.
pub async fn partial_put(base: &str, body: &[u8], sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = base.trim_start_matches("http://");
    let key = BlobKey::of(body);
    let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /blobs/{key} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.expect("request head");
    sock.write_all(&body[..sent]).await.expect("part of the body");
    sock
}

/// Make the local store refuse writes: its staging directory becomes a file.
pub fn break_store(store: &Path) {
    let tmp = store.join(".tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
}

pub fn mend_store(store: &Path) {
    let tmp = store.join(".tmp");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
}

/// The value of one series (name and labels, as /metrics writes them) in a /metrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
