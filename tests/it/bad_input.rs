//! Bad input gets a clear error and changes nothing.

use crate::common;
use crate::common::{TestApp, assert_error, data, eventually};
use base64::Engine;
use blobcache::key::BlobKey;
use bytesize::ByteSize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Nothing under this key anywhere: not servable, not in the store, no spool file.
async fn assert_nothing_stored(app: &TestApp, key: &BlobKey) {
    app.replicated().await;
    assert_error(app.get(key).await, 404, "not_found").await;
    assert!(app.store_files().is_empty(), "store: {:?}", app.store_files());
    assert!(app.spool_files().is_empty(), "spool: {:?}", app.spool_files());
    assert!(!app.is_cached(key).await, "no cache entry");
}

#[tokio::test]
async fn wrong_checksum_is_rejected_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let body = data(3 << 20, 1);
    let claimed = BlobKey::of(b"something else");
    let resp = app.put_as(&claimed, &body).await;
    assert_error(resp, 400, "digest_mismatch").await;
    assert_nothing_stored(&app, &claimed).await;
    assert_error(app.get(&BlobKey::of(&body)).await, 404, "not_found").await;
}

#[tokio::test]
async fn content_md5_is_checked() {
    let app = TestApp::spawn().await;
    let body = data(10_000, 2);
    let key = BlobKey::of(&body);
    let b64 = |k: &BlobKey| base64::engine::general_purpose::STANDARD.encode(k.as_bytes());

    let path = format!("/blobs/{key}");
    let send = |method: reqwest::Method, path: &str, content_md5: String| {
        app.client
            .request(method, app.url(path))
            .header("content-md5", content_md5)
            .body(body.clone())
            .send()
    };

    // A Content-MD5 that disagrees with the key.
    let other = BlobKey::of(b"other");
    let resp = send(reqwest::Method::PUT, &path, b64(&other)).await.unwrap();
    assert_error(resp, 400, "digest_mismatch").await;
    // A Content-MD5 that is not a digest at all.
    let resp = send(reqwest::Method::PUT, &path, "not base64!".into()).await.unwrap();
    assert_error(resp, 400, "invalid_content_md5").await;
    // POST /blobs with a wrong Content-MD5: the body is checked against it.
    let resp = send(reqwest::Method::POST, "/blobs", b64(&other)).await.unwrap();
    assert_error(resp, 400, "digest_mismatch").await;
    assert_nothing_stored(&app, &key).await;

    // The right one is accepted.
    let resp = send(reqwest::Method::PUT, &path, b64(&key)).await.unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn malformed_keys_routes_and_methods() {
    let app = TestApp::spawn().await;
    for bad in [
        "xyz",
        "d41d8cd98f00b204e9800998ecf8427",
        "d41d8cd98f00b204e9800998ecf8427e0",
        "g41d8cd98f00b204e9800998ecf8427e",
    ] {
        let url = app.url(&format!("/blobs/{bad}"));
        assert_error(app.client.get(&url).send().await.unwrap(), 400, "invalid_key").await;
        assert_error(app.client.put(&url).body("x").send().await.unwrap(), 400, "invalid_key").await;
        assert_error(app.client.delete(&url).send().await.unwrap(), 400, "invalid_key").await;
    }
    assert_error(app.client.get(app.url("/nope")).send().await.unwrap(), 404, "not_found").await;
    assert_error(
        app.client.get(app.url("/blobs/a/b")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let key = BlobKey::of(b"k");
    assert_error(
        app.client.patch(app.blob_url(&key)).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(
        app.client.delete(app.url("/blobs")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    assert_error(app.get(&key).await, 404, "not_found").await;
    assert!(app.store_files().is_empty());
}

#[tokio::test]
async fn oversized_uploads_are_refused_declared_or_streamed() {
    let mut settings = common::test_settings();
    settings.blobs.max_blob_size = Some(ByteSize::mib(1));
    let app = TestApp::spawn_with(settings).await;
    let body = data(2 << 20, 3);
    let key = BlobKey::of(&body);

    // Declared by Content-Length: refused before the body is read.
    let resp = app.put_as(&key, &body).await;
    assert_error(resp, 413, "too_large").await;

    // Streamed without a length (chunked): refused once the limit is passed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = futures::stream::iter(chunks);
    let resp = app
        .client
        .put(app.blob_url(&key))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match resp {
        Ok(resp) => assert_error(resp, 413, "too_large").await,
        // The server may close before the client finished sending; what matters is below.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    eventually("abandoned spool files to go", || app.spool_files().is_empty()).await;
    assert_nothing_stored(&app, &key).await;

    // A blob at the limit is fine.
    let ok = data(1 << 20, 4);
    assert_eq!(app.put(&ok).await.status(), 201);
}

#[tokio::test]
async fn client_disconnect_mid_upload_leaves_nothing() {
    let app = TestApp::spawn().await;
    let body = data(8 << 20, 5);
    let key = BlobKey::of(&body);

    let sock = common::partial_put(&app.base, &body, 3 << 20).await;
    // The server is now spooling the upload; vanish halfway.
    eventually("the upload to reach the spool", || !app.spool_files().is_empty()).await;
    drop(sock);

    eventually("the half upload to be removed", || app.spool_files().is_empty()).await;
    assert_nothing_stored(&app, &key).await;

    // A truncated body on a connection the client half-closes: an error, nothing stored.
    let mut sock = common::partial_put(&app.base, &body, 1000).await;
    sock.shutdown().await.unwrap();
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    eventually("the truncated upload to be removed", || app.spool_files().is_empty()).await;
    assert_nothing_stored(&app, &key).await;

    // The same blob uploads fine afterwards.
    assert_eq!(app.put(&body).await.status(), 201);
}
