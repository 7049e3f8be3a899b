//! blobcache in front of a real S3-protocol server when things go wrong on its
//! side: a DELETE racing a write-through PUT, a store that drops packets, a
//! damaged spool file on its way to S3, and multipart uploads a `kill -9` cut.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::s3_nodes::*;
use crate::common::s3_server;
use crate::common::s3_server::{Fault, S3Server};
use crate::common::{TestApp, assert_error, data, eventually, eventually_async};
use blobcache::key::BlobKey;
use bytesize::ByteSize;

#[tokio::test]
async fn a_delete_racing_a_write_through_put_leaves_nothing_behind() {
    let s3 = S3Server::start().await;
    let a = patient_node(&s3).await;
    let bytes = data(200_000, 1);
    let key = BlobKey::of(&bytes);
    let object = S3Server::object_path(&key);
    s3.fail(move |m, u| m == http::Method::PUT && u.path() == object, Fault::Hold);
    let (client, url) = (a.client.clone(), a.blob_url(&key));
    let body = bytes.clone();
    let put = tokio::spawn(async move {
        let resp = client
            .put(url)
            .header("x-blob-durability", "stored")
            .body(body)
            .send()
            .await
            .unwrap();
        resp.status()
    });
    eventually("the upload to reach S3", || s3.held() > 0).await;
    let (client, url) = (a.client.clone(), a.blob_url(&key));
    let delete = tokio::spawn(async move { client.delete(url).send().await.unwrap().status() });
    eventually_async("the DELETE to reach the node", || async {
        a.stat("metrics.invalidations").await >= 1
    })
    .await;
    s3.release();
    // One of the two serial orders: the PUT happened, then the DELETE removed it.
    assert_eq!(put.await.unwrap(), 201);
    assert_eq!(delete.await.unwrap(), 204);
    s3.heal();
    assert!(s3.object(&key).await.is_none(), "not in the store");
    assert_eq!(a.get(&key).await.status(), 404, "not served");
    let status = a.status(&key).await;
    assert_eq!(
        (status["cached"].clone(), status["pending"].clone()),
        (false.into(), false.into())
    );
    assert_eq!(a.pending_blobs().await, 0);
    // Still so after a restart.
    let dir = a.stop().await;
    let a = TestApp::spawn_in(dir, node_settings(&s3)).await;
    assert_eq!(a.get(&key).await.status(), 404);
}

#[tokio::test]
async fn a_write_back_put_never_waits_on_a_store_that_drops_packets() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.store.s3_timeout = Some(Duration::from_secs(3));
    let a = TestApp::spawn_with(settings).await;
    // Every request is taken and never answered, as when packets are dropped.
    s3.fail(|_, _| true, Fault::Hang);
    let bytes = data(300_000, 2);
    let key = BlobKey::of(&bytes);
    let started = Instant::now();
    let resp = a.put(&bytes).await;
    assert_eq!(resp.status(), 201);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "answered without a store round trip, took {:?}",
        started.elapsed()
    );
    assert_eq!(resp.headers()["x-blob-durability"], "pending");
    // Served from the spool meanwhile.
    assert_eq!(a.get(&key).await.bytes().await.unwrap(), bytes);
    // An unknown key costs at most --s3-timeout, retries included; once the
    // store is known to be failing, the next ones fail at once.
    let started = Instant::now();
    assert_error(a.get(&BlobKey::of(b"unknown 1")).await, 503, "store_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_millis(4000),
        "took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_error(a.get(&BlobKey::of(b"unknown 2")).await, 503, "store_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
    // PUTs keep being taken at once.
    let started = Instant::now();
    assert_eq!(a.put(&data(1000, 3)).await.status(), 201);
    assert!(started.elapsed() < Duration::from_millis(500));
    // The store comes back: everything goes up.
    s3.heal();
    a.store_answers().await;
    a.replicated().await;
    let (stored, _) = s3.object(&key).await.expect("uploaded once the store answers");
    assert!(stored == bytes);
}

#[tokio::test]
async fn uploads_send_md5s_taken_from_checked_bytes_and_damage_never_reaches_s3() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.store.s3_multipart_threshold = Some(ByteSize::mib(5));
    settings.store.s3_part_size = Some(ByteSize::mib(5));
    settings.cache.disk_cache = Some(ByteSize::b(0));
    settings.shutdown_grace = Some(Duration::from_millis(300));
    let a = TestApp::spawn_with(settings.clone()).await;
    s3.stop().await;
    let small = data(100_000, 4);
    let large = data(11 * 1024 * 1024, 5);
    assert_eq!(a.put(&small).await.status(), 201);
    assert_eq!(a.put(&large).await.status(), 201);
    let dir = a.stop().await;
    // Bit rot in both pending files while the node is down.
    for (bytes, at) in [(&small, 50_000), (&large, 7 * 1024 * 1024)] {
        let path = dir.path().join("spool/pending").join(BlobKey::of(bytes).to_string());
        let mut file = std::fs::read(&path).unwrap();
        file[at] ^= 0x04;
        std::fs::write(&path, file).unwrap();
    }
    s3.restart().await;
    s3.clear_log();
    let a = TestApp::spawn_in(dir, settings).await;
    eventually_async("both damaged blobs to be found", || async {
        a.stat("replication.damaged").await == 2
    })
    .await;
    assert!(s3.object(&BlobKey::of(&small)).await.is_none());
    assert!(s3.object(&BlobKey::of(&large)).await.is_none());
    assert!(
        !s3.requests().iter().any(|s| s.method == "PUT" || s.method == "POST"),
        "no byte of a damaged blob was sent: {:?}",
        s3.requests()
    );

    // Good blobs: the single part carries the key as its Content-MD5, each part its own.
    assert_eq!(a.put(&small).await.status(), 201);
    assert_eq!(a.put(&large).await.status(), 201);
    a.replicated().await;
    let single = s3.requests_for("PUT", &BlobKey::of(&small));
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    assert_eq!(
        single.last().unwrap().content_md5.as_deref(),
        Some(b64(BlobKey::of(&small).as_bytes()).as_str())
    );
    let parts: Vec<_> = s3
        .requests_for("PUT", &BlobKey::of(&large))
        .into_iter()
        .filter(|s| s.query.contains("partNumber"))
        .collect();
    assert_eq!(parts.len(), 3);
    for (i, part) in large.chunks(5 * 1024 * 1024).enumerate() {
        let want = b64(BlobKey::of(part).as_bytes());
        assert!(
            parts.iter().any(|s| s.query.contains(&format!("partNumber={}", i + 1))
                && s.content_md5.as_deref() == Some(want.as_str())),
            "part {} carries its MD5",
            i + 1
        );
    }
}

/// `kill -9` while multipart uploads are under way leaves unfinished uploads in
/// the bucket; the next start aborts the ones this node began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_cut_by_kill_9_are_aborted_at_the_next_start() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3.endpoint();
    let args = [
        "--store",
        "s3://blobs/cache",
        "--s3-endpoint",
        &endpoint,
        "--s3-force-path-style",
        "--s3-access-key-id",
        s3_server::ACCESS_KEY,
        "--s3-secret-access-key",
        s3_server::SECRET_KEY,
        "--s3-region",
        "us-east-1",
        "--s3-multipart-threshold",
        "5MiB",
        "--s3-part-size",
        "5MiB",
        "--s3-timeout",
        "60s",
    ];
    // Parts are held at the server: the uploads stay unfinished.
    s3.fail(
        |m, u| m == http::Method::PUT && u.query().is_some_and(|q| q.contains("partNumber")),
        Fault::Hold,
    );
    let server = common::process::start_with(dir.path(), &args, &[]);
    let client = reqwest::Client::new();
    let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(6 * 1024 * 1024, 10 + i)).collect();
    for b in &blobs {
        let resp = client
            .put(format!("{}/blobs/{}", server.base, BlobKey::of(b)))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    // A part reaches S3 only once its upload is recorded in the node's journal;
    // each blob goes up in two parts.
    eventually("three multipart uploads to be under way", || s3.held() >= 6).await;
    server.kill();
    let started: Vec<String> = s3
        .requests()
        .iter()
        .filter(|s| s.method == "POST" && s.query.contains("uploads"))
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(started.len(), 3);

    // The next start aborts what the killed run began, then uploads the blobs anew.
    s3.heal();
    s3.release();
    let server = common::process::start_with(dir.path(), &args, &[]);
    eventually("the unfinished uploads to be aborted", || {
        s3.requests()
            .iter()
            .filter(|s| s.method == "DELETE" && s.query.contains("uploadId"))
            .count()
            >= 3
    })
    .await;
    for b in &blobs {
        let key = BlobKey::of(b);
        let deadline = Instant::now() + Duration::from_secs(30);
        while s3.object(&key).await.is_none() {
            assert!(Instant::now() < deadline, "{key} uploaded after the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        common::files_under(&dir.path().join("s3-multipart")).is_empty(),
        "the journal is empty once every upload finished or was aborted"
    );
    drop(server);
}
