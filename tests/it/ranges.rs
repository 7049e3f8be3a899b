//! Range requests, conditional requests, and partial fills of cold blobs.

use crate::common::{CHUNK, TestApp, assert_error, data};
use blobcache::key::BlobKey;

/// Each form of single byte range, including ranges that cross chunk boundaries.
fn cases(len: usize) -> Vec<(String, std::ops::Range<usize>)> {
    let c = CHUNK;
    vec![
        ("bytes=0-0".into(), 0..1),
        ("bytes=0-1023".into(), 0..1024),
        (format!("bytes={}-{}", c - 10, c + 9), c - 10..c + 10),
        (format!("bytes={}-{}", c, 2 * c - 1), c..2 * c),
        (format!("bytes={}-{}", c - 1, 3 * c), c - 1..3 * c + 1),
        (format!("bytes={}-", 3 * c - 5), 3 * c - 5..len),
        ("bytes=-100".into(), len - 100..len),
        (format!("bytes=-{}", c + 1), len - c - 1..len),
        (format!("bytes=5-{}", len * 2), 5..len),
        (format!("bytes=0-{}", len - 1), 0..len),
    ]
}

async fn check_ranges(app: &TestApp, key: &BlobKey, body: &[u8], label: &str) {
    for (header, want) in cases(body.len()) {
        let resp = app.get_range(key, &header).await;
        // Every single range is a 206, even one that covers the whole blob.
        assert_eq!(resp.status(), 206, "{label} {header}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {}-{}/{}", want.start, want.end - 1, body.len()).as_str(),
            "{label} {header}"
        );
        assert_eq!(
            resp.headers()["content-length"],
            (want.end - want.start).to_string().as_str()
        );
        let got = resp.bytes().await.unwrap();
        assert!(got.as_ref() == &body[want.clone()], "{label} {header}: wrong bytes");
    }
}

#[tokio::test]
async fn ranges_on_a_cached_blob() {
    let app = TestApp::spawn().await;
    let body = data(CHUNK * 7 / 2, 1);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    check_ranges(&app, &key, &body, "cached").await;
}

#[tokio::test]
async fn ranges_on_a_cold_blob_read_only_their_chunks() {
    let app = TestApp::spawn().await;
    let body = data(CHUNK * 7 / 2, 2);
    let key = app.seed_store(&body);

    // A range inside chunk 1 reads exactly chunk 1 from the store.
    let resp = app
        .get_range(&key, &format!("bytes={}-{}", CHUNK + 10, CHUNK + 19))
        .await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.headers()["x-cache"], "miss");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[CHUNK + 10..CHUNK + 20]);
    assert_eq!(app.store_gets().await, 1);
    assert_eq!(app.store_bytes_read().await, CHUNK as u64);

    // The same chunk again: no store read.
    let resp = app.get_range(&key, &format!("bytes={}-{}", CHUNK, CHUNK + 99)).await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[CHUNK..CHUNK + 100]);
    assert_eq!(app.store_gets().await, 1);

    // A full GET fills the rest: three more chunks, then it is a hit.
    let got = app.get(&key).await.bytes().await.unwrap();
    assert!(got.as_ref() == body.as_slice());
    assert_eq!(app.store_gets().await, 4);
    assert_eq!(app.store_bytes_read().await, body.len() as u64);
    assert_eq!(app.get(&key).await.headers()["x-cache"], "hit");

    check_ranges(&app, &key, &body, "after fill").await;
    assert_eq!(app.store_gets().await, 4, "ranges of a filled blob read nothing more");
}

#[tokio::test]
async fn every_range_form_on_a_cold_blob() {
    let app = TestApp::spawn().await;
    let body = data(CHUNK * 7 / 2, 3);
    let key = app.seed_store(&body);
    check_ranges(&app, &key, &body, "cold").await;
}

#[tokio::test]
async fn unsatisfiable_malformed_and_ignored_ranges() {
    let app = TestApp::spawn().await;
    let body = data(1000, 4);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);

    for header in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let resp = app.get_range(&key, header).await;
        assert_eq!(resp.headers()["content-range"], "bytes */1000", "{header}");
        assert_error(resp, 416, "range_not_satisfiable").await;
    }
    for header in ["bytes=9-3", "bytes=abc", "bytes=1-x", "bytes=-"] {
        assert_error(app.get_range(&key, header).await, 416, "invalid_range").await;
    }
    // Several ranges, or another unit: answered with the whole blob.
    for header in ["bytes=0-1,5-6", "lines=1-2"] {
        let resp = app.get_range(&key, header).await;
        assert_eq!(resp.status(), 200, "{header}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), body.as_slice());
    }
    // HEAD ignores Range.
    let head = app
        .client
        .head(app.blob_url(&key))
        .header("range", "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "1000");
}

#[tokio::test]
async fn conditional_requests() {
    let app = TestApp::spawn().await;
    let body = data(5000, 5);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    let etag = format!("\"{key}\"");

    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        "*".to_string(),
        format!("\"other\", {etag}"),
    ] {
        let resp = app.get_with(&key, &[("if-none-match", &inm)]).await;
        assert_eq!(resp.status(), 304, "If-None-Match: {inm}");
        assert_eq!(resp.headers()["etag"], etag.as_str());
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    let resp = app.get_with(&key, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(resp.status(), 200);

    // If-Range with our ETag: the range holds; with another validator: the whole blob.
    let resp = app.get_with(&key, &[("range", "bytes=0-9"), ("if-range", &etag)]).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &body[..10]);
    let resp = app
        .get_with(&key, &[("range", "bytes=0-9"), ("if-range", "\"something-else\"")])
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 5000);
}
