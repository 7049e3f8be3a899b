//! Protocol edge cases: heads hyper would refuse with an empty answer (or
//! take), request smuggling, bad chunked framing, keys that try to leave the
//! data directory, and ranges that cover the whole blob.

use blobcache::key::BlobKey;

use super::{Raw, nothing_stored, refused, serves_others};
use crate::common::{self, TestApp, data};

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one valid Host.
#[tokio::test]
async fn requests_without_one_valid_host_are_refused() {
    let app = TestApp::spawn().await;
    let body = data(10_000, 1);
    let key = BlobKey::of(&body);
    for head in [
        format!("PUT /blobs/{key} HTTP/1.1\r\nContent-Length: 10000\r\n\r\n"),
        format!("PUT /blobs/{key} HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 10000\r\n\r\n"),
        format!("PUT /blobs/{key} HTTP/1.1\r\nHost: a b\r\nContent-Length: 10000\r\n\r\n"),
        format!("PUT /blobs/{key} HTTP/1.1\r\nHost: user@a\r\nContent-Length: 10000\r\n\r\n"),
    ] {
        let mut request = head.clone().into_bytes();
        request.extend_from_slice(&body);
        refused(&app, &request).await.assert_error(400, "invalid_host");
    }
    refused(&app, b"GET /healthz HTTP/1.1\r\n\r\n")
        .await
        .assert_error(400, "invalid_host");
    // A HEAD is refused the same way, with no body.
    let answer = refused(&app, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!(answer.status, 400);
    assert!(answer.body.is_empty());
    nothing_stored(&app, &key).await;

    // HTTP/1.0 needs no Host.
    let mut raw = Raw::connect(&app).await;
    raw.send(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
    serves_others(&app).await;
}

/// Content-Length: absurd values get 413, malformed ones 400; both JSON, nothing stored.
#[tokio::test]
async fn absurd_and_malformed_content_lengths() {
    let app = TestApp::spawn().await;
    let key = BlobKey::of(b"0123456789");
    for (value, status, code) in [
        ("18446744073709551615", 413, "too_large"),
        ("18446744073709551616", 413, "too_large"),
        ("99999999999999999999999999", 413, "too_large"),
        ("-1", 400, "invalid_content_length"),
        ("+10", 400, "invalid_content_length"),
        ("1e1", 400, "invalid_content_length"),
        ("0x0a", 400, "invalid_content_length"),
        ("10, 10", 400, "invalid_content_length"),
        ("10\r\nContent-Length: 11", 400, "invalid_content_length"),
        ("10\r\nContent-Length: 10", 400, "invalid_content_length"),
    ] {
        let request =
            format!("PUT /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\nContent-Length: {value}\r\n\r\n0123456789");
        refused(&app, request.as_bytes()).await.assert_error(status, code);
    }
    nothing_stored(&app, &key).await;
    serves_others(&app).await;
}

/// Transfer-Encoding with Content-Length is the framing of request smuggling:
/// refused, and what was hidden in the body is never run.
#[tokio::test]
async fn request_smuggling_is_refused() {
    let app = TestApp::spawn().await;
    let victim = data(5000, 2);
    let victim_key = BlobKey::of(&victim);
    assert_eq!(app.put(&victim).await.status(), 201);
    app.replicated().await;
    let smuggled = format!("DELETE /blobs/{victim_key} HTTP/1.1\r\nHost: blobcache\r\n\r\n");
    let key = BlobKey::of(b"x");

    // CL.TE and TE.CL, in both header orders, and with an obfuscated coding.
    for framing in [
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Content-Length: 60\r\nTransfer-Encoding: chunked",
        "Content-Length: 4\r\nTransfer-Encoding: \tchunked",
    ] {
        let request = format!("PUT /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}");
        refused(&app, request.as_bytes())
            .await
            .assert_error(400, "ambiguous_length");
    }
    for (framing, status, code) in [
        ("Transfer-Encoding: gzip", 501, "unsupported_transfer_encoding"),
        ("Transfer-Encoding: gzip, chunked", 501, "unsupported_transfer_encoding"),
        ("Transfer-Encoding: xchunked", 501, "unsupported_transfer_encoding"),
        ("Transfer-Encoding: chunked, chunked", 400, "invalid_transfer_encoding"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            400,
            "invalid_transfer_encoding",
        ),
        ("Transfer-Encoding : chunked", 400, "bad_request"),
    ] {
        let request = format!("PUT /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\n{framing}\r\n\r\n0\r\n\r\n{smuggled}");
        refused(&app, request.as_bytes()).await.assert_error(status, code);
    }
    let request = format!("PUT /blobs/{key} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}");
    refused(&app, request.as_bytes())
        .await
        .assert_error(400, "invalid_transfer_encoding");

    // A request after a chunked body on the same connection is not served:
    // that connection closes after its one answer.
    let mut raw = Raw::connect(&app).await;
    let body = b"hello";
    let chunked = format!(
        "PUT /blobs/{} HTTP/1.1\r\nHost: blobcache\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}",
        BlobKey::of(body)
    );
    raw.send(chunked.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.header("connection"), Some("close"));
    raw.closed().await;

    // The victim is still there: no smuggled DELETE ran.
    let got = app.get(&victim_key).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == victim);
    common::assert_error(app.get(&key).await, 404, "not_found").await;
    serves_others(&app).await;
}

/// A chunked body that breaks its framing is an aborted upload: 400, nothing
/// stored; and a connection serves no request after a chunked one.
#[tokio::test]
async fn bad_chunked_framing_stores_nothing() {
    let app = TestApp::spawn().await;
    let body = data(3000, 3);
    let key = BlobKey::of(&body);
    let head = format!("PUT /blobs/{key} HTTP/1.1\r\nHost: blobcache\r\nTransfer-Encoding: chunked\r\n\r\n");
    let first = &body[..1000];
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // A size that is not hex.
    cases.push(b"zz\r\n".to_vec());
    // A size that overflows 64 bits.
    cases.push(b"fffffffffffffffffffff\r\n".to_vec());
    // Data longer than its size says, then no CRLF.
    let mut c = b"3e8\r\n".to_vec();
    c.extend_from_slice(first);
    c.extend_from_slice(b"XX0\r\n\r\n");
    cases.push(c);
    // A size line without CRLF before the data.
    let mut c = b"3e8 garbage".to_vec();
    c.extend_from_slice(first);
    cases.push(c);
    for case in cases {
        let mut raw = Raw::connect(&app).await;
        raw.send(head.as_bytes()).await;
        raw.send(&case).await;
        raw.answer(false).await.assert_error(400, "upload_aborted");
        raw.closed().await;
        nothing_stored(&app, &key).await;
    }
    // A body cut short by the client closing its side: nothing stored either.
    let mut raw = Raw::connect(&app).await;
    raw.send(head.as_bytes()).await;
    let mut c = b"bb8\r\n".to_vec();
    c.extend_from_slice(first);
    raw.send(&c).await;
    tokio::io::AsyncWriteExt::shutdown(&mut raw.sock).await.unwrap();
    let _ = tokio::time::timeout(super::PATIENCE, async { while raw.fill().await.is_some() {} }).await;
    nothing_stored(&app, &key).await;

    // The same blob, framed right, is taken; then the connection closes, so
    // no head after a chunked body (whose end only hyper knows) goes unchecked.
    let mut raw = Raw::connect(&app).await;
    raw.send(head.as_bytes()).await;
    raw.send(format!("{:x}\r\n", body.len()).as_bytes()).await;
    raw.send(&body).await;
    raw.send(b"\r\n0\r\n\r\n").await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.header("connection"), Some("close"));
    raw.closed().await;
    serves_others(&app).await;
}

/// Heads that are not HTTP/1 get a JSON error, not hyper's empty one; one
/// after a good request on the same connection leaves that answer whole.
#[tokio::test]
async fn malformed_heads_get_json_errors() {
    let app = TestApp::spawn().await;
    for (request, status, code) in [
        (&b"G(T /healthz HTTP/1.1\r\nHost: a\r\n\r\n"[..], 400, "bad_request"),
        (b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505, "unsupported_version"),
        (b"GET /healthz HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz\r\nHost: a\r\n\r\n", 400, "bad_request"),
        (b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A\x01: b\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n",
            400,
            "bad_request",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, "bad_request"),
        (
            b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
            405,
            "method_not_allowed",
        ),
    ] {
        refused(&app, request).await.assert_error(status, code);
    }

    // Pipelined: a good request, then a bad head. The first answer is whole,
    // then the error, then the connection closes.
    let key = BlobKey::of(b"pipelined");
    assert_eq!(app.put(b"pipelined").await.status(), 201);
    let mut raw = Raw::connect(&app).await;
    raw.send(
        format!(
            "GET /blobs/{key} HTTP/1.1\r\nHost: a\r\n\r\nGET /blobs/{key} HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let first = raw.answer(false).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, b"pipelined");
    raw.answer(false).await.assert_error(400, "invalid_content_length");
    raw.closed().await;
    serves_others(&app).await;
}

/// Keys are parsed into 16 bytes before anything touches a file: a key that
/// tries to leave the data directory is a JSON 400 (or a 404 for a path that
/// is no route), and nothing is created anywhere.
#[tokio::test]
async fn path_traversal_in_keys_goes_nowhere() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::TempDir::new_in(outside.path()).unwrap();
    let canary = outside.path().join("canary");
    std::fs::write(&canary, b"untouched").unwrap();
    let app = TestApp::spawn_in(dir, common::test_settings()).await;
    let body = b"traversal";
    let mut targets: Vec<String> = [
        "..",
        "%2e%2e",
        "..%2F..%2Fcanary",
        "%2e%2e%2f%2e%2e%2fcanary",
        "..%5C..%5Ccanary",
        "....//....//canary",
        "d41d8cd98f00b204e9800998ecf8427e%00",
        "d41d8cd98f00b204e9800998ecf8427e%2F..",
        "%2Fetc%2Fpasswd",
        "~",
        "%ff%fe",
    ]
    .iter()
    .map(|k| format!("/blobs/{k}"))
    .collect();
    targets.extend(
        [
            "/blobs/../canary",
            "/blobs/./../../canary",
            "/blobs//canary",
            "/blobs/../../etc/passwd",
        ]
        .map(String::from),
    );
    for target in &targets {
        for method in ["GET", "PUT", "DELETE"] {
            let mut request = format!(
                "{method} {target} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(body);
            let answer = refused_or_answered(&app, &request).await;
            match answer.status {
                400 => answer.assert_error(400, "invalid_key"),
                404 => answer.assert_error(404, "not_found"),
                other => panic!("{method} {target}: {other}"),
            }
        }
        let status = format!("GET {target}/status HTTP/1.1\r\nHost: a\r\n\r\n");
        let answer = refused_or_answered(&app, status.as_bytes()).await;
        assert!(matches!(answer.status, 400 | 404), "{target}/status: {answer:?}");
    }
    assert_eq!(std::fs::read(&canary).unwrap(), b"untouched");
    let around: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
    assert_eq!(around.len(), 2, "only the canary and the data directory");
    nothing_stored(&app, &BlobKey::of(body)).await;
    serves_others(&app).await;
}

/// One request on a fresh connection, whose answer is read (the connection may stay open).
async fn refused_or_answered(app: &TestApp, request: &[u8]) -> super::Answer {
    let mut raw = Raw::connect(app).await;
    raw.send(request).await;
    raw.answer(false).await
}

/// A key that is not UTF-8 once percent-decoded is an invalid key like any
/// other: JSON, never axum's plain-text rejection.
#[tokio::test]
async fn keys_that_are_not_utf8_get_json_errors() {
    let app = TestApp::spawn().await;
    for path in ["/blobs/%ff%fe", "/blobs/%c3%28", "/blobs/%ff/status"] {
        let url = app.url(path);
        common::assert_error(app.client.get(&url).send().await.unwrap(), 400, "invalid_key").await;
        if !path.ends_with("/status") {
            let put = app.client.put(&url).body("x").send().await.unwrap();
            common::assert_error(put, 400, "invalid_key").await;
            let delete = app.client.delete(&url).send().await.unwrap();
            common::assert_error(delete, 400, "invalid_key").await;
        }
    }
    let warm = app.client.get(app.url("/warm/%ff")).send().await.unwrap();
    common::assert_error(warm, 404, "not_found").await;
    nothing_stored(&app, &BlobKey::of(b"x")).await;
}

/// `Range: bytes=0-`, and ranges whose end lies past the blob, cover the
/// whole blob: 206 with its Content-Range, as the OpenAPI file says.
#[tokio::test]
async fn ranges_covering_the_whole_blob_are_206() {
    let app = TestApp::spawn().await;
    let body = data(10_000, 4);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    for range in [
        "bytes=0-",
        "bytes=0-9999",
        "bytes=0-99999",
        "bytes=-10000",
        "bytes=-20000",
    ] {
        let resp = app.get_range(&key, range).await;
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(resp.headers()["content-range"], "bytes 0-9999/10000", "{range}");
        assert_eq!(resp.headers()["content-length"], "10000");
        assert!(resp.bytes().await.unwrap() == body);
    }
    let resp = app.get_range(&key, "bytes=5000-20000").await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["content-range"], "bytes 5000-9999/10000");
    // Without Range, or with a range we ignore, still the whole blob with 200.
    assert_eq!(app.get(&key).await.status(), 200);
    assert_eq!(app.get_range(&key, "bytes=0-1,5-6").await.status(), 200);
}
