//! Slow clients: trickled headers, silent connections, idle keep-alive,
//! stalled uploads, and clients that stop reading, over HTTP/1.1 and HTTP/2.

use std::time::{Duration, Instant};

use blobcache::key::BlobKey;
use tokio::io::AsyncWriteExt;

use super::{PATIENCE, Raw, metric, nothing_stored, serves_others, short_limits};
use crate::common::{self, TestApp, data};

/// A slowloris: a head sent a byte every 20 ms is answered 408 at the
/// header-read timeout (300 ms here), and the connection closes.
#[tokio::test]
async fn trickled_headers_get_408_and_the_connection_closes() {
    let app = TestApp::spawn_with(short_limits()).await;
    let mut raw = Raw::connect(&app).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\nX-Padding: ";
    let started = Instant::now();
    let trickle = async {
        // Bounded: 250 bytes, 5 s at most; the server should have answered long before.
        for b in head.iter().chain(std::iter::repeat_n(&b'a', 200)) {
            if raw.sock.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, trickle).await.expect("bounded trickle");
    let answer = raw.answer(false).await;
    answer.assert_error(408, "request_timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "answered after {took:?}");
    raw.closed().await;
    assert_eq!(
        metric(&app, "blobcache_http_refused_total{error=\"request_timeout\"}").await,
        1.0
    );
    serves_others(&app).await;
}

/// A head's time runs from its first byte, or from when the connection
/// turned idle for one sent ahead of time: a slowloris head pipelined after a
/// good request is cut too, and a head begun long after the last request is
/// not cut early.
#[tokio::test]
async fn heads_are_timed_from_their_first_byte() {
    let mut settings = short_limits();
    settings.http.idle_timeout = Some(Duration::from_secs(10));
    let app = TestApp::spawn_with(settings).await;

    // Half a head sent with a whole request, then nothing, or a trickle.
    for trickle in [false, true] {
        let mut raw = Raw::connect(&app).await;
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\nGET /healthz HTTP/1.1\r\nX-Padding: ")
            .await;
        let trickling = async {
            for _ in 0..250 {
                if !trickle || raw.sock.write_all(b"a").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PATIENCE, trickling)
            .await
            .expect("bounded trickle");
        assert_eq!(raw.answer(false).await.status, 200);
        raw.answer(false).await.assert_error(408, "request_timeout");
        raw.closed().await;
    }

    let body = data(10_000, 3);
    let mut raw = Raw::connect(&app).await;
    let mut put = super::put_head(&body, "");
    put.extend_from_slice(&body);
    raw.send(&put).await;
    assert_eq!(raw.answer(false).await.status, 201);
    // Twice the header-read timeout of idle: a gap in time to test, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(600)).await;
    raw.send(b"GET /healthz HTTP/1.1\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(b"Host: blobcache\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
}

/// A connection that opens and says nothing is closed at the header-read
/// timeout, without an answer (it asked nothing).
#[tokio::test]
async fn a_connection_that_says_nothing_is_closed() {
    let app = TestApp::spawn_with(short_limits()).await;
    let mut silent: Vec<Raw> = Vec::new();
    for _ in 0..20 {
        silent.push(Raw::connect(&app).await);
    }
    for raw in &mut silent {
        let took = raw.closed().await;
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
    }
    assert_eq!(
        metric(
            &app,
            "blobcache_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .await,
        20.0
    );
    serves_others(&app).await;
}

/// A kept-alive connection is closed once it waited `--idle-timeout` for a
/// next request, not at the (shorter or longer) header-read timeout.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    // Long header timeout, short idle timeout: the idle timeout closes it.
    let mut settings = short_limits();
    settings.http.header_read_timeout = Some(Duration::from_secs(10));
    settings.http.idle_timeout = Some(Duration::from_millis(300));
    let app = TestApp::spawn_with(settings).await;
    let mut raw = Raw::connect(&app).await;
    raw.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
    let took = raw.closed().await;
    assert!(took >= Duration::from_millis(250), "closed after {took:?}");
    assert_eq!(
        metric(&app, "blobcache_http_connections_closed_total{reason=\"idle_timeout\"}").await,
        1.0
    );

    // Short header timeout, long idle timeout: a connection kept alive
    // between requests is not cut by the header timeout.
    let mut settings = short_limits();
    settings.http.idle_timeout = Some(Duration::from_secs(10));
    let app = TestApp::spawn_with(settings).await;
    let mut raw = Raw::connect(&app).await;
    for _ in 0..2 {
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
        assert_eq!(raw.answer(false).await.status, 200);
        // Twice the header-read timeout between requests: a gap in time to test, not a wait for a condition.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

/// An upload that stalls mid-body is cut at `--body-timeout` with 408, and
/// nothing of it is kept; the same blob uploads fine afterwards.
#[tokio::test]
async fn a_stalled_upload_is_cut_and_nothing_is_stored() {
    let app = TestApp::spawn_with(short_limits()).await;
    let body = data(1 << 20, 1);
    let key = BlobKey::of(&body);
    let sock = common::partial_put(&app.base, &body, 300_000).await;
    let mut raw = Raw {
        sock,
        pending: Vec::new(),
    };
    let answer = raw.answer(false).await;
    answer.assert_error(408, "body_timeout");
    raw.closed().await;
    nothing_stored(&app, &key).await;
    assert_eq!(
        metric(&app, "blobcache_http_connections_closed_total{reason=\"body_timeout\"}").await,
        1.0
    );
    serves_others(&app).await;
    assert_eq!(app.put(&body).await.status(), 201);
}

/// An upload that trickles (50 bytes every 100 ms: never a stall, 500 bytes a
/// second) is cut once a whole `--body-timeout` brought less than
/// `--min-body-rate`, with 408; nothing is kept.
#[tokio::test]
async fn a_trickled_upload_is_cut_for_its_rate_and_nothing_is_stored() {
    let mut settings = short_limits();
    settings.http.body_timeout = Some(Duration::from_millis(500));
    settings.http.min_body_rate = Some(bytesize::ByteSize::kib(1));
    let app = TestApp::spawn_with(settings).await;
    let body = data(64 * 1024, 7);
    let key = BlobKey::of(&body);
    let mut raw = Raw::connect(&app).await;
    raw.send(&super::put_head(&body, "")).await;
    let started = Instant::now();
    let mut sent = 0;
    // Bounded: the rate check cuts it after 0.5 s; 3 s of trickling is the most this sends.
    while started.elapsed() < Duration::from_secs(3) && sent < body.len() {
        if raw.sock.write_all(&body[sent..sent + 50]).await.is_err() {
            break;
        }
        sent += 50;
        match tokio::time::timeout(Duration::from_millis(100), raw.fill()).await {
            Ok(Some(_)) | Ok(None) => break,
            Err(_) => {}
        }
    }
    let answer = raw.answer(false).await;
    answer.assert_error(408, "body_timeout");
    let message = String::from_utf8_lossy(&answer.body).to_string();
    assert!(
        message.contains("too slowly") && message.contains("--min-body-rate"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut for its rate, not by the loop's bound"
    );
    nothing_stored(&app, &key).await;
    serves_others(&app).await;
    assert_eq!(app.put(&body).await.status(), 201);
}

/// A client that asks for a blob and stops reading is cut at `--send-timeout`.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut() {
    let app = TestApp::spawn_with(short_limits()).await;
    let body = data(16 << 20, 2);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);

    // A small receive window, so the server's writes block soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let sock = socket.connect(addr).await.unwrap();
    let mut raw = Raw {
        sock,
        pending: Vec::new(),
    };
    raw.send(format!("GET /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\n\r\n").as_bytes())
        .await;
    common::eventually_async("the send timeout to cut the connection", || async {
        metric(&app, "blobcache_http_connections_closed_total{reason=\"send_timeout\"}").await >= 1.0
    })
    .await;
    // What the client can still read is less than the blob: the answer was cut.
    let read = tokio::time::timeout(PATIENCE, async {
        let mut total = 0;
        while let Some(n) = raw.fill().await {
            total += n;
            raw.pending.clear();
        }
        total
    })
    .await
    .expect("the connection ends");
    assert!(read < body.len(), "read {read} of {} bytes", body.len());
    serves_others(&app).await;
}

/// HTTP/2 with prior knowledge is still served, and its connections are
/// held to the same timeouts: closed once idle, or when they never ask.
#[tokio::test]
async fn http2_connections_are_served_and_timed() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let mut settings = short_limits();
    settings.http.idle_timeout = Some(Duration::from_millis(300));
    let app = TestApp::spawn_with(settings).await;
    let addr = app.base.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("{}/healthz", app.base))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("an HTTP/2 answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
    // Idle now: the server ends the connection at the idle timeout, with a
    // GOAWAY first (the client's connection then ends cleanly, not with an error).
    let started = Instant::now();
    let ended = tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the server ends an idle HTTP/2 connection")
        .unwrap();
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection was cut without a GOAWAY: {ended:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));

    // The preface and nothing more: closed at the header-read timeout.
    let mut raw = Raw::connect(&app).await;
    raw.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    tokio::time::timeout(PATIENCE, async { while raw.fill().await.is_some() {} })
        .await
        .expect("closed");
    serves_others(&app).await;
}
