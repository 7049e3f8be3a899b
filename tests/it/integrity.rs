//! Integrity end to end: bytes read again after their blob was verified (a
//! chunk the cache lost, a pending spool file) are checked against the digests
//! recorded then, and bytes that fail are never served as good nor uploaded.

use crate::common;
use crate::common::{TestApp, break_store, data, mend_store};
use blobcache::key::BlobKey;
use bytesize::ByteSize;

const SMALL_CHUNK: usize = 64 * 1024;

/// A node with a small, memory-only cache of small chunks (eight of them),
/// so a test decides which chunks it holds.
fn small_cache() -> blobcache::config::Settings {
    let mut s = common::test_settings();
    s.cache.chunk_size = Some(ByteSize::b(SMALL_CHUNK as u64));
    s.cache.memory_cache = Some(ByteSize::b(8 * SMALL_CHUNK as u64));
    s.cache.disk_cache = Some(ByteSize::b(0));
    s
}

/// Read a whole response; `Err` with what arrived if it was cut short.
async fn body_of(resp: reqwest::Response) -> Result<Vec<u8>, Vec<u8>> {
    let mut resp = resp;
    let mut got = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(part)) => got.extend_from_slice(&part),
            Ok(None) => return Ok(got),
            Err(_) => return Err(got),
        }
    }
}

/// Push a blob's chunks out of the small cache (its metadata, touched since
/// it was cached, stays: S3-FIFO keeps what was used and drops what was not)
/// by writing another blob of the same size, cached on write.
async fn crowd_out(app: &TestApp, key: &BlobKey, seed: u64) {
    assert!(app.is_cached(key).await, "touch the metadata first");
    for i in 0..4 {
        let other = data(3 * SMALL_CHUNK + 1000, seed * 10 + i);
        assert_eq!(app.put(&other).await.status(), 201);
        app.cached(&BlobKey::of(&other)).await;
        assert!(app.is_cached(key).await, "the metadata stays");
    }
}

#[tokio::test]
async fn a_hit_whose_chunks_were_evicted_is_checked_when_read_again() {
    let app = TestApp::spawn_with(small_cache()).await;
    let body = data(3 * SMALL_CHUNK + 1000, 1);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    app.cached(&key).await;
    crowd_out(&app, &key, 10).await;
    // A good hit re-reads its lost chunks from the store, and they pass.
    let gets = app.store_gets().await;
    let resp = app.get(&key).await;
    assert_eq!(resp.headers()["x-cache"], "hit");
    assert!(body_of(resp).await.unwrap() == body);
    assert!(app.store_gets().await > gets, "chunks were read again from the store");

    // The store's copy rots (same length, one byte of every chunk changed).
    let mut rotten = body.clone();
    for i in 0..4 {
        rotten[i * SMALL_CHUNK + 5] ^= 0x20;
    }
    app.seed_store_as(&key, &rotten);
    crowd_out(&app, &key, 11).await;
    let failures = app.stat("metrics.integrity_failures").await;
    let resp = app.get(&key).await;
    if resp.status() == 200 {
        assert_eq!(resp.headers()["x-cache"], "hit");
        let got = body_of(resp)
            .await
            .expect_err("the response is cut short, never completed");
        assert!(got.len() < body.len());
        assert!(got == body[..got.len()], "no byte of a rotten chunk was sent");
    } else {
        // The first chunk was one of those read again: refused before any byte.
        common::assert_error(resp, 502, "integrity_error").await;
    }
    assert!(app.stat("metrics.integrity_failures").await > failures, "counted");
    assert!(!app.is_cached(&key).await, "the blob's cache entries were dropped");
    // And it stays so: the next read is a miss whose whole-blob check fails too.
    let resp = app.get(&key).await;
    assert_eq!(resp.headers()["x-cache"], "miss");
    assert!(body_of(resp).await.is_err());
}

/// Flip one byte in the middle of a pending spool file, as bit rot would.
fn rot(app_dir: &std::path::Path, key: &BlobKey, at: usize) {
    let path = app_dir.join("spool/pending").join(key.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_pending_blob_is_never_served_nor_uploaded() {
    let mut settings = common::test_settings();
    settings.shutdown_grace = Some(std::time::Duration::from_millis(300));
    // No disk tier: after the restart, the spool is the only copy on this node.
    settings.cache.disk_cache = Some(ByteSize::b(0));
    let app = TestApp::spawn_with(settings.clone()).await;
    break_store(&app.store_dir());
    let body = data(3 * common::CHUNK + 77, 2);
    let key = BlobKey::of(&body);
    let fine = data(5000, 3);
    assert_eq!(app.put(&body).await.status(), 201);
    assert_eq!(app.put(&fine).await.status(), 201);
    let dir = app.stop().await;

    // Bit rot while the node is down; it starts again with the store still down.
    rot(dir.path(), &key, 2 * common::CHUNK + 1000);
    let app = TestApp::spawn_in(dir, settings).await;
    assert_eq!(app.pending_blobs().await, 2);
    // A range of a good chunk is served: each chunk is checked on its own.
    let r = format!("bytes={}-{}", common::CHUNK, common::CHUNK + 9);
    let resp = app.get_range(&key, &r).await;
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), body[common::CHUNK..common::CHUNK + 10]);
    // A full read stops before the damaged chunk.
    let resp = app.get(&key).await;
    assert_eq!(resp.status(), 200);
    let got = body_of(resp).await.expect_err("cut short, never completed");
    assert!(got == body[..got.len()], "only good bytes were sent");
    assert!(got.len() <= 2 * common::CHUNK);

    // Reported, and out of the queue: moved aside for an operator.
    let status = app.status(&key).await;
    assert_eq!(status["pending"], false, "{status}");
    assert_eq!(status["damaged"], true, "{status}");
    assert!(app.stat("metrics.integrity_failures").await >= 1);
    assert_eq!(app.stat("replication.damaged").await, 1);
    assert!(app.data_dir.join("spool/damaged").join(key.to_string()).exists());
    // Nothing else on this node has it, and the store is down.
    common::assert_error(app.get(&key).await, 503, "store_unavailable").await;

    // The store comes back: the good blob goes up, the damaged one never does.
    mend_store(&app.store_dir());
    app.store_answers().await;
    app.replicated().await;
    assert_eq!(std::fs::read(app.store_path(&BlobKey::of(&fine))).unwrap(), fine);
    assert!(!app.store_path(&key).exists(), "damaged bytes were not uploaded");

    // A DELETE removes the damaged copy kept aside too.
    let resp = app.client.delete(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(app.status(&key).await["damaged"], false);
    assert!(!app.data_dir.join("spool/damaged").join(key.to_string()).exists());

    // A client that still has the blob can PUT it again.
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    assert_eq!(std::fs::read(app.store_path(&key)).unwrap(), body);
    assert_eq!(app.status(&key).await["damaged"], false);
}

#[tokio::test]
async fn a_pending_blob_damaged_before_its_upload_is_moved_aside_not_uploaded() {
    let app = TestApp::spawn().await;
    break_store(&app.store_dir());
    let body = data(100_000, 4);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.cached(&key).await;
    rot(&app.data_dir, &key, 50_000);
    mend_store(&app.store_dir());
    common::eventually_async("the damage to be found", || async {
        app.stat("replication.damaged").await == 1
    })
    .await;
    assert!(!app.store_path(&key).exists(), "not uploaded");
    assert_eq!(app.pending_blobs().await, 0);
    // The cache's copy was verified at ingest, before the rot: still good to serve.
    let resp = app.get(&key).await;
    assert_eq!(resp.headers()["x-cache"], "hit");
    assert!(body_of(resp).await.unwrap() == body);
}
