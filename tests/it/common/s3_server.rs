//! A real S3-protocol server for tests: s3s-fs over a temporary directory,
//! served over HTTP on 127.0.0.1:0 in this process. It records every request
//! it answers, can be stopped and started again on the same port, can be
//! told to fail chosen requests the way a real S3 fails, and can answer at
//! S3's pace (a first-byte latency and a bandwidth per connection).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use blobcache::config::Settings;
use blobcache::key::BlobKey;
use blobcache::store::StoreSettings;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tempfile::TempDir;
use tokio::task::{JoinHandle, JoinSet};

pub const BUCKET: &str = "blobs";
pub const PREFIX: &str = "cache";
pub const ACCESS_KEY: &str = "blobcache-test";
pub const SECRET_KEY: &str = "blobcache-test-secret";

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub range: Option<String>,
    pub content_md5: Option<String>,
    pub status: u16,
    /// The response's Content-Length (body bytes sent).
    pub bytes: u64,
}

/// How to answer a request that matches a fault.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// An S3 error answer with this status and code.
    Error(u16, &'static str),
    /// Accept the request and never answer.
    Hang,
    /// Answer normally, but send only this many body bytes until `release`.
    Stall(usize),
    /// Take the request, and only act on it and answer after `release`.
    Hold,
    /// What S3 answers a request signed for another region: 301 naming the bucket's region.
    WrongRegion(&'static str),
}

/// How fast the server answers, as a real S3 does over a network: each answer
/// waits `latency` before its first byte, and each response body goes out at
/// no more than `bandwidth` bytes per second (an HTTP/1 connection carries one
/// answer at a time, so this is the bandwidth of one connection).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    pub latency: Duration,
    /// Bytes per second; 0 is unlimited.
    pub bandwidth: u64,
}

type Matcher = Box<dyn Fn(&http::Method, &http::Uri) -> bool + Send + Sync>;

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, s3s::StdError>;

struct Shared {
    log: Mutex<Vec<Seen>>,
    /// Requests waiting on a `Fault::Hold` (or that waited on one).
    held: std::sync::atomic::AtomicUsize,
    fault: Mutex<Option<(Matcher, Fault)>>,
    released: tokio::sync::watch::Sender<bool>,
    pace: Mutex<Pace>,
    /// GETs being answered now (until their head goes out), and the most at once.
    gets: std::sync::atomic::AtomicUsize,
    most_gets: std::sync::atomic::AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            log: Mutex::default(),
            held: Default::default(),
            fault: Mutex::default(),
            released: tokio::sync::watch::Sender::new(false),
            pace: Mutex::default(),
            gets: Default::default(),
            most_gets: Default::default(),
        }
    }
}

pub struct S3Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    _tmp: Option<TempDir>,
    service: S3Service,
    shared: Arc<Shared>,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl S3Server {
    /// Start a server over a temporary directory, with one empty bucket, `BUCKET`.
    pub async fn start() -> S3Server {
        let tmp = tempfile::tempdir().expect("S3 root");
        let mut server = Self::start_in(tmp.path(), "127.0.0.1:0".parse().unwrap()).await;
        server._tmp = Some(tmp);
        server
    }

    /// Start a server over `root` on `addr`; the bucket `BUCKET` is created if missing.
    pub async fn start_in(root: &Path, addr: SocketAddr) -> S3Server {
        std::fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind S3");
        let server = S3Server {
            addr: listener.local_addr().unwrap(),
            root: root.to_path_buf(),
            _tmp: None,
            service,
            shared: Arc::default(),
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let service = self.service.clone();
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            // Dropping this task drops the set, which aborts every open connection.
            let mut conns = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // As S3 and any server that streams does: no Nagle delay between body writes.
                let _ = socket.set_nodelay(true);
                let service = service.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let service = service.clone();
                        let shared = shared.clone();
                        async move { answer(&service, &shared, req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task);
    }

    /// Stop answering: the port is closed and open connections are cut.
    pub async fn stop(&self) {
        let task = self.running.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serve again on the same address.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("rebind S3");
        self.serve(listener);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer requests for which `matches` holds with `fault`, until `heal`.
    pub fn fail(&self, matches: impl Fn(&http::Method, &http::Uri) -> bool + Send + Sync + 'static, fault: Fault) {
        *self.shared.fault.lock().unwrap() = Some((Box::new(matches), fault));
    }

    pub fn heal(&self) {
        *self.shared.fault.lock().unwrap() = None;
    }

    /// Every GET of a blob's object sends its first `after` bytes, then waits for `release`.
    pub fn stall_reads_of(&self, key: &BlobKey, after: usize) {
        let path = Self::object_path(key);
        self.fail(
            move |m, u| m == http::Method::GET && u.path() == path,
            Fault::Stall(after),
        );
    }

    /// Answer at this pace from now on (`Pace::default()`: at once, unthrottled).
    pub fn pace(&self, pace: Pace) {
        *self.shared.pace.lock().unwrap() = pace;
    }

    /// The most GETs the server was answering at once (each counted from its
    /// arrival until its head goes out, which a `Pace` latency delays).
    pub fn most_concurrent_gets(&self) -> usize {
        self.shared.most_gets.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Let stalled and held answers (`Fault::Stall`, `Fault::Hold`) go on.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    /// How many requests a `Fault::Hold` has caught.
    pub fn held(&self) -> usize {
        self.shared.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// The path of a blob's object.
    pub fn object_path(key: &BlobKey) -> String {
        format!("/{BUCKET}/{PREFIX}/{key}")
    }

    /// Requests about one blob's object with this method.
    pub fn requests_for(&self, method: &str, key: &BlobKey) -> Vec<Seen> {
        let path = Self::object_path(key);
        self.requests()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }

    /// `base` with the settings of a blobcache node in front of this server.
    pub fn settings_over(&self, mut base: Settings) -> Settings {
        base.store = StoreSettings {
            store: Some(format!("s3://{BUCKET}/{PREFIX}")),
            s3_endpoint: Some(self.endpoint()),
            s3_region: Some("us-east-1".into()),
            s3_force_path_style: Some(true),
            s3_access_key_id: Some(ACCESS_KEY.into()),
            s3_secret_access_key: Some(SECRET_KEY.into()),
            s3_timeout: Some(Duration::from_secs(2)),
            ..base.store
        };
        base
    }

    /// An S3 client of its own: "another tool" writing to the bucket.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .http_client(http)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Write an object under a blob's key with another client, whatever its bytes.
    pub async fn put_object_as(&self, key: &BlobKey, data: &[u8]) {
        self.client()
            .put_object()
            .bucket(BUCKET)
            .key(format!("{PREFIX}/{key}"))
            .body(data.to_vec().into())
            .send()
            .await
            .expect("direct PutObject");
    }

    pub async fn put_object(&self, data: &[u8]) -> BlobKey {
        let key = BlobKey::of(data);
        self.put_object_as(&key, data).await;
        key
    }

    /// The object of a blob as the bucket holds it: its bytes and metadata, or None.
    pub async fn object(&self, key: &BlobKey) -> Option<(Vec<u8>, aws_sdk_s3::operation::get_object::GetObjectOutput)> {
        match self
            .client()
            .get_object()
            .bucket(BUCKET)
            .key(format!("{PREFIX}/{key}"))
            .send()
            .await
        {
            Ok(mut out) => {
                let body = std::mem::replace(&mut out.body, aws_sdk_s3::primitives::ByteStream::from_static(b""));
                let bytes = body.collect().await.expect("object body").into_bytes().to_vec();
                Some((bytes, out))
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(e) => panic!("GetObject: {e:?}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn answer(
    service: &S3Service,
    shared: &Shared,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, s3s::HttpError> {
    use http_body_util::BodyExt;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or_default().to_string(),
        range: header("range"),
        content_md5: header("content-md5"),
        status: 0,
        bytes: 0,
    };
    let started = tokio::time::Instant::now();
    let get = req.method() == http::Method::GET;
    if get {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.gets.fetch_add(1, SeqCst) + 1;
        shared.most_gets.fetch_max(now, SeqCst);
    }
    let fault = {
        let fault = shared.fault.lock().unwrap();
        fault
            .as_ref()
            .filter(|(matches, _)| matches(req.method(), req.uri()))
            .map(|(_, f)| *f)
    };
    let resp = match fault {
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Error(status, code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message></Error>"
            );
            http::Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(s3s::Body::from(body).boxed())
                .unwrap()
        }
        Some(Fault::WrongRegion(region)) => http::Response::builder()
            .status(301)
            .header("x-amz-bucket-region", region)
            .body(s3s::Body::empty().boxed())
            .unwrap(),
        Some(Fault::Hold) => {
            shared.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = shared.released.subscribe().wait_for(|r| *r).await;
            service.call(req.map(s3s::Body::from)).await?.map(|b| b.boxed())
        }
        Some(Fault::Stall(after)) => {
            let (parts, body) = service.call(req.map(s3s::Body::from)).await?.into_parts();
            let bytes = body.collect().await.map_err(s3s::HttpError::new)?.to_bytes();
            let cut = after.min(bytes.len());
            let (head, tail) = (bytes.slice(..cut), bytes.slice(cut..));
            let mut released = shared.released.subscribe();
            let frames = futures::StreamExt::chain(
                futures::stream::iter([Ok(hyper::body::Frame::data(head))]),
                futures::stream::once(async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok(hyper::body::Frame::data(tail))
                }),
            );
            http::Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed())
        }
        None => service.call(req.map(s3s::Body::from)).await?.map(|b| b.boxed()),
    };
    let pace = *shared.pace.lock().unwrap();
    let resp = paced(resp, pace, started).await;
    if get {
        shared.gets.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    seen.status = resp.status().as_u16();
    seen.bytes = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    shared.log.lock().unwrap().push(seen);
    Ok(resp)
}

/// How far ahead of its pace a body may run before it waits.
const PACE_SLACK: Duration = Duration::from_millis(2);

/// `resp` at `pace`: its head no sooner than `latency` after the request came
/// in, then its body at no more than `bandwidth`, frame by frame.
async fn paced(resp: http::Response<Body>, pace: Pace, started: tokio::time::Instant) -> http::Response<Body> {
    use http_body_util::BodyExt;
    tokio::time::sleep_until(started + pace.latency).await;
    if pace.bandwidth == 0 {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bandwidth = pace.bandwidth as f64;
    let frames = futures::stream::unfold((body, None, 0u64), move |(mut body, mut begun, sent)| async move {
        let frame = body.frame().await?;
        let begun = *begun.get_or_insert_with(tokio::time::Instant::now);
        let sent = sent
            + frame
                .as_ref()
                .ok()
                .and_then(|f| f.data_ref())
                .map_or(0, |d| d.len() as u64);
        // Each frame leaves when the bytes up to its end are due, give or take
        // a few milliseconds: a timer per 4 KiB frame would cost more CPU than
        // the server itself.
        let due = begun + Duration::from_secs_f64(sent as f64 / bandwidth);
        if due > tokio::time::Instant::now() + PACE_SLACK {
            tokio::time::sleep_until(due).await;
        }
        Some((frame, (body, Some(begun), sent)))
    });
    http::Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed())
}
