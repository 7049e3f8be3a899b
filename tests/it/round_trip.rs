//! Round trips of every size that matters, through both the write path and the read-through path.

use crate::common;
use crate::common::{CHUNK, TestApp, data};
use blobcache::key::BlobKey;

const SIZES: &[(&str, usize)] = &[
    ("0 B", 0),
    ("1 B", 1),
    ("chunk-1", CHUNK - 1),
    ("chunk", CHUNK),
    ("chunk+1", CHUNK + 1),
    ("3.5 chunks", CHUNK * 7 / 2),
    ("64 MiB", 64 << 20),
];

#[tokio::test]
async fn put_then_get_every_size() {
    let app = TestApp::spawn().await;
    for (i, &(name, len)) in SIZES.iter().enumerate() {
        let body = data(len, i as u64);
        let key = BlobKey::of(&body);
        let resp = app.put(&body).await;
        assert_eq!(resp.status(), 201, "{name}: PUT");
        assert_eq!(resp.headers()["location"], format!("/blobs/{key}"));
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["md5"], key.to_string());
        assert_eq!(json["size"], len as u64);

        // A blob written here is copied into the cache in the background.
        app.cached(&key).await;
        let resp = app.get(&key).await;
        assert_eq!(resp.status(), 200, "{name}: GET");
        assert_eq!(resp.headers()["content-length"], len.to_string().as_str());
        assert_eq!(resp.headers()["etag"], format!("\"{key}\"").as_str());
        assert_eq!(resp.headers()["accept-ranges"], "bytes");
        assert_eq!(resp.headers()["cache-control"], "public, max-age=31536000, immutable");
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            resp.headers()["x-cache"],
            "hit",
            "{name}: a blob written here is served locally"
        );
        let got = resp.bytes().await.unwrap();
        assert!(got.as_ref() == body.as_slice(), "{name}: bytes differ");

        let head = app.client.head(app.blob_url(&key)).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["content-length"],
            len.to_string().as_str(),
            "{name}: HEAD length"
        );
        assert!(head.bytes().await.unwrap().is_empty());
    }
    app.replicated().await;
    assert_eq!(app.store_files().len(), SIZES.len(), "every blob reached the store");
    assert!(app.spool_files().is_empty(), "the spool is empty once replicated");
    assert_eq!(app.store_gets().await, 0, "nothing was read back from the store");
}

#[tokio::test]
async fn read_through_every_size_from_the_store() {
    let app = TestApp::spawn().await;
    for (i, &(name, len)) in SIZES.iter().enumerate() {
        let body = data(len, 100 + i as u64);
        let key = app.seed_store(&body);

        let resp = app.get(&key).await;
        assert_eq!(resp.status(), 200, "{name}: cold GET");
        assert_eq!(resp.headers()["x-cache"], "miss", "{name}");
        assert_eq!(resp.headers()["content-length"], len.to_string().as_str());
        let got = resp.bytes().await.unwrap();
        assert!(got.as_ref() == body.as_slice(), "{name}: cold bytes differ");

        let reads_before = app.store_gets().await;
        let resp = app.get(&key).await;
        assert_eq!(resp.headers()["x-cache"], "hit", "{name}: second GET is a hit");
        let got = resp.bytes().await.unwrap();
        assert!(got.as_ref() == body.as_slice(), "{name}: warm bytes differ");
        assert_eq!(
            app.store_gets().await,
            reads_before,
            "{name}: a hit reads nothing from the store"
        );
    }
}

#[tokio::test]
async fn existing_blob_put_is_200_and_post_computes_the_key() {
    let app = TestApp::spawn().await;
    let body = data(1000, 7);
    let key = BlobKey::of(&body);

    let resp = app.post_to("/blobs", &body).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], format!("/blobs/{key}"));
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json, serde_json::json!({"md5": key.to_string(), "size": 1000}));

    // Same key again, by PUT and by POST /blobs/{md5}: 200, nothing rewritten.
    assert_eq!(app.put(&body).await.status(), 200);
    let resp = app.post_to(&format!("/blobs/{key}"), &body).await;
    assert_eq!(resp.status(), 200);
    let resp = app.post_to("/blobs", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(app.stat("metrics.puts_created").await, 1);

    // Upper-case keys are the same blob.
    let upper = app
        .client
        .get(app.url(&format!("/blobs/{}", key.to_string().to_uppercase())))
        .send()
        .await
        .unwrap();
    assert_eq!(upper.status(), 200);
    assert_eq!(upper.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn write_through_answers_after_the_store_has_it() {
    let mut settings = common::test_settings();
    settings.blobs.write_mode = Some(blobcache::blobs::WriteMode::Through);
    let app = TestApp::spawn_with(settings).await;
    let body = data(CHUNK + 5, 9);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    // No waiting: the store holds the blob the moment the PUT is answered.
    assert_eq!(std::fs::read(app.store_path(&key)).unwrap(), body);
    assert!(app.spool_files().is_empty());
    assert_eq!(app.get(&key).await.bytes().await.unwrap().as_ref(), body.as_slice());
}

#[tokio::test]
async fn delete_removes_everywhere_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let body = data(2 * CHUNK + 3, 11);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    assert_eq!(app.get(&key).await.status(), 200);

    let resp = app.client.delete(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!app.store_path(&key).exists());
    common::assert_error(app.get(&key).await, 404, "not_found").await;
    let head = app.client.head(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(head.status(), 404);
    assert_eq!(
        app.client.delete(app.blob_url(&key)).send().await.unwrap().status(),
        204
    );
}

#[tokio::test]
async fn delete_right_after_put_is_not_undone_by_the_cache_warmer() {
    let app = TestApp::spawn().await;
    for seed in 0..3 {
        let body = data(32 << 20, 40 + seed);
        let key = BlobKey::of(&body);
        assert_eq!(app.put(&body).await.status(), 201);
        // While the new blob is still being copied into the cache:
        assert_eq!(
            app.client.delete(app.blob_url(&key)).send().await.unwrap().status(),
            204
        );
        app.replicated().await;
        assert_eq!(app.get(&key).await.status(), 404, "deleted means gone");
        // So the next PUT must write it again, and the store must end up with it.
        assert_eq!(app.put(&body).await.status(), 201, "a deleted blob is stored anew");
        app.replicated().await;
        assert_eq!(std::fs::read(app.store_path(&key)).unwrap().len(), body.len());
    }
}

#[tokio::test]
async fn cache_control_is_configurable() {
    let mut settings = common::test_settings();
    settings.http.cache_control = Some("public, max-age=60".into());
    let app = TestApp::spawn_with(settings).await;
    let body = data(1000, 50);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    let hot = app.seed_store(&data(2000, 51));

    for key in [key, hot] {
        let get = app.get(&key).await;
        assert_eq!(get.status(), 200);
        assert_eq!(get.headers()["cache-control"], "public, max-age=60");
        let head = app.client.head(app.blob_url(&key)).send().await.unwrap();
        assert_eq!(head.headers()["cache-control"], "public, max-age=60");
        let etag = format!("\"{key}\"");
        let not_modified = app.get_with(&key, &[("if-none-match", &etag)]).await;
        assert_eq!(not_modified.status(), 304);
        assert_eq!(not_modified.headers()["cache-control"], "public, max-age=60");
    }
}

/// Blob GETs and HEADs whose path has no escapes skip the router; the same
/// request with an escaped key goes through it. Both answer alike, with
/// request ids, counted under the route.
#[tokio::test]
async fn escaped_and_plain_keys_answer_alike() {
    let app = TestApp::spawn().await;
    let body = data(10_000, 7);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.cached(&key).await;
    let hex = key.to_string();
    // The first hex digit as a percent-escape: "0" is %30, "a" is %61.
    let escaped = format!("%{:02X}{}", hex.as_bytes()[0], &hex[1..]);
    for path in [hex.clone(), escaped.clone()] {
        let url = app.url(&format!("/blobs/{path}"));
        let resp = app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["etag"], format!("\"{hex}\""), "{path}");
        assert_eq!(resp.headers()["x-cache"], "hit", "{path}");
        assert_eq!(resp.headers()["content-length"], "10000", "{path}");
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice(), "{path}");
        let resp = app.client.head(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-length"], "10000", "{path}");
        let resp = app
            .client
            .get(&url)
            .header("range", "bytes=100-199")
            .header("x-request-id", "mine")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206, "{path}");
        assert_eq!(resp.headers()["x-request-id"], "mine", "{path}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[100..200], "{path}");
    }
    // Keys that are not keys, plain or escaped: the same JSON 400, nothing read.
    for path in ["xyz", "%7Axyz", "%zz"] {
        let resp = app.client.get(app.url(&format!("/blobs/{path}"))).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"], "invalid_key", "{path}: {json}");
    }
    let metrics = app.metrics_text().await;
    for (method, status, count) in [
        ("GET", 200, 2.0),
        ("GET", 206, 2.0),
        ("HEAD", 200, 2.0),
        ("GET", 400, 3.0),
    ] {
        let series =
            format!(r#"blobcache_http_requests_total{{method="{method}",route="/blobs/{{key}}",status="{status}"}}"#);
        assert_eq!(common::sample(&metrics, &series), Some(count), "{series}");
    }
}
