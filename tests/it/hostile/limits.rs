//! Header floods, and the connection cap: room made from idle connections,
//! probes answered and the rest shed when every connection is busy.

use std::time::{Duration, Instant};

use blobcache::key::BlobKey;

use super::{PATIENCE, Raw, metric, nothing_stored, put_head, refused, serves_others};
use crate::common::{self, TestApp, data};

/// Too many header fields, a header too large, a request line too long: 431
/// or 414 in JSON, the body never read, nothing stored.
#[tokio::test]
async fn header_floods_are_refused() {
    let mut settings = common::test_settings();
    settings.http.max_headers = Some(50);
    settings.http.max_header_size = Some(bytesize::ByteSize::kib(8));
    let app = TestApp::spawn_with(settings).await;
    let body = data(50_000, 1);
    let key = BlobKey::of(&body);

    // Up to the limits is fine: 50 fields (Host and Content-Length among them).
    let fields: String = (0..48).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let mut raw = Raw::connect(&app).await;
    raw.send(format!("GET /healthz HTTP/1.1\r\nHost: blobcache\r\nContent-Length: 0\r\n{fields}\r\n").as_bytes())
        .await;
    assert_eq!(raw.answer(false).await.status, 200);

    let one_more = format!("{fields}X-Field-48: 48\r\n");
    // Short lines, so the count trips before the size.
    let thousand = "X:1\r\n".repeat(1000);
    let big = format!("X-Big: {}\r\n", "a".repeat(9000));
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1 << 20));
    for (extra, status, code) in [
        (one_more.as_str(), 431, "too_many_headers"),
        (thousand.as_str(), 431, "too_many_headers"),
        (big.as_str(), 431, "headers_too_large"),
        (huge.as_str(), 431, "headers_too_large"),
    ] {
        let mut request = put_head(&body, extra);
        request.extend_from_slice(&body);
        refused(&app, &request).await.assert_error(status, code);
    }
    let long = format!("GET /blobs/{} HTTP/1.1\r\nHost: blobcache\r\n\r\n", "a".repeat(10_000));
    refused(&app, long.as_bytes()).await.assert_error(414, "uri_too_long");
    // Empty lines before a head are skipped, but a flood of them is no head.
    let empty_lines = "\r\n".repeat(10_000);
    refused(&app, empty_lines.as_bytes())
        .await
        .assert_error(431, "headers_too_large");
    assert!(metric(&app, "blobcache_http_refused_total{error=\"too_many_headers\"}").await >= 2.0);
    nothing_stored(&app, &key).await;
    serves_others(&app).await;
}

/// At `--max-connections`, a new client is served at once: the connection
/// that never sent a request, oldest first, makes room; one kept alive
/// between requests is left alone.
#[tokio::test]
async fn at_the_cap_silent_connections_make_room() {
    let mut settings = common::test_settings();
    settings.http.max_connections = Some(8);
    settings.http.header_read_timeout = Some(Duration::from_secs(30));
    let app = TestApp::spawn_with(settings).await;

    let mut kept = Raw::connect(&app).await;
    kept.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
    assert_eq!(kept.answer(false).await.status, 200);
    // Accepted in order: all of these before any client that comes after them.
    let mut silent = Vec::new();
    for _ in 0..7 {
        silent.push(Raw::connect(&app).await);
    }

    // Each new client closes the oldest silent connection, long before the 30 s header timeout.
    let mut clients = Vec::new();
    for oldest in silent.iter_mut().take(3) {
        let started = Instant::now();
        let mut raw = Raw::connect(&app).await;
        raw.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
        assert_eq!(raw.answer(false).await.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        oldest.closed().await;
        clients.push(raw);
    }
    assert!(metric(&app, "blobcache_http_connections_closed_total{reason=\"evicted\"}").await >= 3.0);
    // The kept-alive connection still works.
    kept.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
    assert_eq!(kept.answer(false).await.status, 200);
}

/// At `--max-connections` with a request in flight on every connection, new
/// connections still get `/healthz` and `/readyz` answered at once (a busy
/// node must not fail its probes); anything else is shed with a JSON 503 and
/// Retry-After. The uploads in flight complete.
#[tokio::test]
async fn at_the_cap_with_every_connection_busy_probes_are_answered_and_the_rest_shed() {
    let mut settings = common::test_settings();
    settings.http.max_connections = Some(4);
    let app = TestApp::spawn_with(settings).await;
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| data(200_000, 10 + i)).collect();
    let mut uploads = Vec::new();
    for b in &blobs {
        let sock = common::partial_put(&app.base, b, 100_000).await;
        uploads.push(Raw {
            sock,
            pending: Vec::new(),
        });
    }
    // (Through the spool, not /stats: a request now would be shed.)
    common::eventually("four uploads under way", || app.spool_files().len() >= 4).await;

    for probe in ["/healthz", "/readyz"] {
        let started = Instant::now();
        let mut raw = Raw::connect(&app).await;
        raw.send(format!("GET {probe} HTTP/1.1\r\nHost: blobcache\r\n\r\n").as_bytes())
            .await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, 200, "{probe}: {answer:?}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        raw.closed().await;
    }
    // Over HTTP/2 as well: the probe is answered, then the connection ends.
    {
        use http_body_util::Empty;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let tcp = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
        let conn = tokio::spawn(conn);
        let req = http::Request::get(app.url("/healthz"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
        let _ = tokio::time::timeout(PATIENCE, conn)
            .await
            .expect("an overflow HTTP/2 connection ends after its request");
    }
    let key = BlobKey::of(b"shed");
    let mut raw = Raw::connect(&app).await;
    raw.send(format!("PUT /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\nContent-Length: 4\r\n\r\nshed").as_bytes())
        .await;
    let answer = raw.answer(false).await;
    answer.assert_error(503, "overloaded");
    assert_eq!(answer.header("retry-after"), Some("1"));
    raw.closed().await;

    // The uploads finish, each with its 201.
    for (raw, b) in uploads.iter_mut().zip(&blobs) {
        raw.send(&b[100_000..]).await;
        assert_eq!(raw.answer(false).await.status, 201);
    }
    for b in &blobs {
        let got = app.get(&BlobKey::of(b)).await;
        assert!(got.bytes().await.unwrap() == *b);
    }
    common::assert_error(app.get(&key).await, 404, "not_found").await;
    assert!(metric(&app, "blobcache_http_connections_shed_total").await >= 3.0);
    drop(uploads);
    tokio::time::timeout(PATIENCE, serves_others(&app))
        .await
        .expect("served");
}
