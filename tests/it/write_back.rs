//! Write-back: acknowledged blobs survive a store outage and a restart.

use std::time::Duration;

use crate::common;
use crate::common::{TestApp, break_store, data, mend_store};
use blobcache::key::BlobKey;

#[tokio::test]
async fn acknowledged_blobs_survive_a_store_outage_and_a_clean_restart() {
    let mut settings = common::test_settings();
    settings.shutdown_grace = Some(Duration::from_millis(300));
    let app = TestApp::spawn_with(settings.clone()).await;
    break_store(&app.store_dir());

    let blobs: Vec<Vec<u8>> = (0..100).map(|i| data(20_000 + i * 7, 500 + i as u64)).collect();
    for b in &blobs {
        assert_eq!(app.put(b).await.status(), 201, "acknowledged while the store is down");
    }
    // Every blob's first upload fails, or the failures open the store's
    // circuit first and the uploaders wait for it.
    common::eventually_async("the uploads to fail", || async {
        let stats = app.stats().await;
        stats["replication"]["upload_failures"].as_u64() >= Some(100) || stats["store"]["circuit"] == "open"
    })
    .await;
    assert_eq!(app.pending_blobs().await, 100);
    // Readable meanwhile, from this node.
    for b in &blobs {
        let resp = app.get(&BlobKey::of(b)).await;
        assert_eq!(resp.headers()["x-cache"], "hit");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), b.as_slice());
    }

    // A clean stop with the store still down: the blobs stay pending on disk.
    let dir = app.stop().await;
    let pending = common::files_under(&dir.path().join("spool/pending"));
    assert_eq!(pending.iter().filter(|p| p.extension().is_none()).count(), 100);

    // The store comes back; the next start replays the queue.
    mend_store(&dir.path().join("store"));
    let app = TestApp::spawn_in(dir, settings).await;
    app.replicated().await;
    for b in &blobs {
        assert_eq!(
            std::fs::read(app.store_path(&BlobKey::of(b))).unwrap(),
            *b,
            "in the store with the right bytes"
        );
    }
    assert!(app.spool_files().is_empty(), "the queue is empty");
}

#[tokio::test]
async fn uploads_are_retried_until_the_store_takes_them() {
    let app = TestApp::spawn().await;
    break_store(&app.store_dir());
    let body = data(300_000, 60);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.upload_failed().await;
    mend_store(&app.store_dir());
    // The first retry comes after about a second (backoff with jitter).
    app.replicated().await;
    assert_eq!(std::fs::read(app.store_path(&key)).unwrap(), body);
}

#[tokio::test]
async fn a_full_spool_refuses_new_blobs_and_keeps_the_old_ones() {
    let mut settings = common::test_settings();
    settings.replication.spool_size = Some(bytesize::ByteSize::kib(1000));
    settings.blobs.max_blob_size = Some(bytesize::ByteSize::kib(1000));
    let app = TestApp::spawn_with(settings).await;
    break_store(&app.store_dir());

    let first = data(600_000, 80);
    assert_eq!(app.put(&first).await.status(), 201);
    let second = data(600_000, 81);
    let second_key = BlobKey::of(&second);

    // Declared length: refused before reading.
    let resp = app.put(&second).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    common::assert_error(resp, 503, "spool_full").await;
    // Streamed without a length: refused once it no longer fits.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = second.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    match app.client.put(app.blob_url(&second_key)).body(body).send().await {
        Ok(resp) => common::assert_error(resp, 503, "spool_full").await,
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    common::eventually("abandoned uploads to go", || app.spool_files().len() == 1).await;
    assert_eq!(app.get(&second_key).await.status(), 404);
    // The earlier blob is unaffected.
    assert_eq!(
        app.get(&BlobKey::of(&first)).await.bytes().await.unwrap().as_ref(),
        first.as_slice()
    );

    // Once the store drains the spool, the same PUT is accepted.
    mend_store(&app.store_dir());
    app.replicated().await;
    assert_eq!(app.put(&second).await.status(), 201);
}

#[tokio::test]
async fn a_put_can_ask_to_be_answered_only_once_stored() {
    let app = TestApp::spawn().await;
    let body = data(200_000, 90);
    let key = BlobKey::of(&body);
    let put = || {
        app.client
            .put(app.blob_url(&key))
            .header("x-blob-durability", "stored")
            .body(body.clone())
    };

    break_store(&app.store_dir());
    let resp = put().send().await.unwrap();
    common::assert_error(resp, 503, "store_unavailable").await;
    assert!(app.spool_files().is_empty(), "nothing half-stored");
    assert_eq!(app.pending_blobs().await, 0);

    mend_store(&app.store_dir());
    assert_eq!(put().send().await.unwrap().status(), 201);
    assert_eq!(
        std::fs::read(app.store_path(&key)).unwrap(),
        body,
        "in the store when answered"
    );

    let resp = app
        .client
        .put(app.blob_url(&BlobKey::of(b"x")))
        .header("x-blob-durability", "soon")
        .body("x")
        .send()
        .await
        .unwrap();
    common::assert_error(resp, 400, "invalid_durability").await;
}

#[tokio::test]
async fn clients_can_see_whether_a_blob_reached_the_store() {
    let app = TestApp::spawn().await;
    let body = data(300_000, 95);
    let key = BlobKey::of(&body);
    let status = || async {
        let r = app
            .client
            .get(app.url(&format!("/blobs/{key}/status")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()
    };
    // A blob that is nowhere: 404, with the flags beside the error.
    let s = app.status(&key).await;
    assert_eq!(s["error"], "not_found");
    assert_eq!(
        (s["cached"].as_bool(), s["pending"].as_bool(), s["in_store"].as_bool()),
        (Some(false), Some(false), Some(false))
    );
    assert!(s["size"].is_null());

    break_store(&app.store_dir());
    let resp = app.put(&body).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-blob-durability"], "pending");
    assert_eq!(app.get(&key).await.headers()["x-blob-durability"], "pending");
    let head = app.client.head(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(head.headers()["x-blob-durability"], "pending");
    let s = status().await;
    assert_eq!(s["pending"], true);
    assert_eq!(s["in_store"], false);
    assert_eq!(s["size"], 300_000);

    mend_store(&app.store_dir());
    app.replicated().await;
    app.cached(&key).await;
    assert_eq!(app.get(&key).await.headers()["x-blob-durability"], "stored");
    assert_eq!(app.put(&body).await.headers()["x-blob-durability"], "stored");
    let s = status().await;
    assert_eq!(
        (s["cached"].as_bool(), s["pending"].as_bool(), s["in_store"].as_bool()),
        (Some(true), Some(false), Some(true))
    );

    let bad = app.client.get(app.url("/blobs/nothex/status")).send().await.unwrap();
    common::assert_error(bad, 400, "invalid_key").await;
}

#[tokio::test]
async fn delete_of_a_pending_blob_cancels_its_upload() {
    let app = TestApp::spawn().await;
    break_store(&app.store_dir());
    let body = data(400_000, 99);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.upload_failed().await;

    assert_eq!(
        app.client.delete(app.blob_url(&key)).send().await.unwrap().status(),
        204
    );
    assert_eq!(app.pending_blobs().await, 0, "no longer queued");
    assert!(app.spool_files().is_empty(), "the spool file is gone");
    assert_eq!(app.get(&key).await.status(), 404);

    // The store comes back and other uploads go through; the deleted blob never does.
    mend_store(&app.store_dir());
    let other = data(1000, 100);
    assert_eq!(app.put(&other).await.status(), 201);
    app.replicated().await;
    assert!(app.store_path(&BlobKey::of(&other)).exists());
    assert!(!app.store_path(&key).exists(), "a deleted blob never reaches the store");
    assert_eq!(app.stat("replication.pending_bytes").await, 0);
}
