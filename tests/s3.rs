//! blobcache in front of a real S3-protocol server (s3s-fs over HTTP, in process).

mod common;
#[path = "common/s3_server.rs"]
mod s3_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blobcache::app::App;
use blobcache::config::{Config, Settings};
use blobcache::key::BlobKey;
use bytesize::ByteSize;
use common::{CHUNK, TestApp, assert_error, data, eventually};
use s3_server::{Fault, S3Server};

fn node_settings(s3: &S3Server) -> Settings {
    s3.settings_over(common::test_settings())
}

async fn node(s3: &S3Server) -> TestApp {
    TestApp::spawn_with(node_settings(s3)).await
}

/// A node that waits long for a stalled S3 body, so a test decides when a stall ends.
async fn patient_node(s3: &S3Server) -> TestApp {
    let mut settings = node_settings(s3);
    settings.s3_timeout = Some(Duration::from_secs(60));
    TestApp::spawn_with(settings).await
}

/// Build a node and return its start-up error.
async fn start_error(settings: Settings) -> String {
    let dir = tempfile::tempdir().unwrap();
    start_error_in(dir.path(), settings).await
}

async fn start_error_in(dir: &std::path::Path, mut settings: Settings) -> String {
    settings.data_dir = Some(dir.to_path_buf());
    let config = Config::from_settings(settings).expect("config");
    match App::build(config).await {
        Ok(_) => panic!("the node started"),
        Err(e) => format!("{e:#}"),
    }
}

fn is_object_get(s: &s3_server::Seen) -> bool {
    s.method == "GET" && s.path.starts_with(&format!("/{}/", s3_server::BUCKET))
}

#[tokio::test]
async fn the_whole_api_works_through_s3() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let small = data(1000, 1);
    let big = data(3 * CHUNK + CHUNK / 2, 2);
    let (ks, kb) = (BlobKey::of(&small), BlobKey::of(&big));
    assert_eq!(a.put(&small).await.status(), 201);
    assert_eq!(a.put(&big).await.status(), 201);
    let posted = a.post_to("/blobs", b"posted by the server").await;
    assert_eq!(posted.status(), 201);
    let kp = BlobKey::of(b"posted by the server");
    a.replicated().await;

    // Each blob is an object at <prefix>/<md5>; a single PUT's ETag is the MD5,
    // and the MD5 is in the metadata as well.
    for (key, bytes) in [(ks, &small[..]), (kb, &big[..]), (kp, &b"posted by the server"[..])] {
        let (stored, out) = s3.object(&key).await.expect("object in the bucket");
        assert!(stored == bytes, "object bytes of {key}");
        assert_eq!(out.e_tag().unwrap().trim_matches('"'), key.to_string());
        assert_eq!(out.metadata().unwrap()["md5"], key.to_string());
    }
    let puts = s3.requests_for("PUT", &kb);
    assert_eq!(puts.len(), 1);
    assert!(puts[0].content_md5.is_some(), "uploads carry Content-MD5");

    let st: serde_json::Value = a
        .client
        .get(a.url(&format!("/blobs/{kb}/status")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["in_store"], true);
    assert_eq!(st["pending"], false);

    // A second node, with nothing cached, reads each blob through from S3.
    let b = node(&s3).await;
    s3.clear_log();
    let head = b.client.head(b.blob_url(&kb)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], big.len().to_string());
    assert!(
        s3.requests().iter().all(|s| s.method == "HEAD"),
        "HEAD of a cold blob never downloads it: {:?}",
        s3.requests()
    );
    for (key, bytes) in [(ks, &small[..]), (kb, &big[..])] {
        let resp = b.get(&key).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-cache"], "miss");
        assert_eq!(resp.headers()["x-blob-durability"], "stored");
        assert!(resp.bytes().await.unwrap() == bytes, "body of {key}");
    }
    b.cached(&kb).await;
    let again = b.get(&kb).await;
    assert_eq!(again.headers()["x-cache"], "hit");
    assert!(again.bytes().await.unwrap() == big);

    // DELETE on one node removes the object from S3.
    assert_eq!(b.client.delete(b.blob_url(&ks)).send().await.unwrap().status(), 204);
    assert!(s3.object(&ks).await.is_none(), "the object is gone from the bucket");
    assert_error(b.get(&ks).await, 404, "not_found").await;
    let fresh = node(&s3).await;
    assert_error(fresh.get(&ks).await, 404, "not_found").await;
    assert_eq!(
        fresh.client.delete(fresh.blob_url(&ks)).send().await.unwrap().status(),
        204
    );
}

#[tokio::test]
async fn objects_written_by_another_tool_are_served() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(CHUNK + 12_345, 3);
    let key = s3.put_object(&bytes).await;
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
    let range = a.get_range(&key, "bytes=100-199").await;
    assert_eq!(range.status(), 206);
    assert!(range.bytes().await.unwrap() == bytes[100..200]);
    // A PUT of a blob the bucket already has is answered without storing it again.
    s3.clear_log();
    assert_eq!(a.put(&bytes).await.status(), 200);
    assert!(s3.requests_for("PUT", &key).is_empty());
}

#[tokio::test]
async fn large_blobs_go_up_in_parts_each_checked() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.s3_multipart_threshold = Some(ByteSize::mib(5));
    settings.s3_part_size = Some(ByteSize::mib(5));
    let a = TestApp::spawn_with(settings).await;
    let bytes = data(12 * 1024 * 1024 + 7, 4);
    let key = BlobKey::of(&bytes);
    let resp = a
        .client
        .put(a.blob_url(&key))
        .header("x-blob-durability", "stored")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-blob-durability"], "stored");

    let parts: Vec<_> = s3
        .requests_for("PUT", &key)
        .into_iter()
        .filter(|s| s.query.contains("partNumber"))
        .collect();
    assert_eq!(parts.len(), 3, "three parts of 5 MiB, 5 MiB and 2 MiB");
    assert!(parts.iter().all(|p| p.content_md5.is_some() && p.status == 200));
    let (stored, out) = s3.object(&key).await.expect("object");
    assert!(stored == bytes);
    assert_eq!(
        out.metadata().unwrap()["md5"],
        key.to_string(),
        "the MD5 survives multipart"
    );

    // Read back through a cold node.
    let b = node(&s3).await;
    assert!(b.get(&key).await.bytes().await.unwrap() == bytes);
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_and_nothing_is_stored() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.s3_multipart_threshold = Some(ByteSize::mib(5));
    settings.s3_part_size = Some(ByteSize::mib(5));
    let a = TestApp::spawn_with(settings).await;
    let bytes = data(11 * 1024 * 1024, 5);
    let key = BlobKey::of(&bytes);
    s3.fail(
        |m, u| m == http::Method::PUT && u.query().is_some_and(|q| q.contains("partNumber=2")),
        Fault::Error(500, "InternalError"),
    );
    let resp = a
        .client
        .put(a.blob_url(&key))
        .header("x-blob-durability", "stored")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_error(resp, 503, "store_unavailable").await;
    assert!(
        s3.requests()
            .iter()
            .any(|s| s.method == "DELETE" && s.query.contains("uploadId")),
        "the upload was aborted: {:?}",
        s3.requests()
    );
    s3.heal();
    // s3s-fs keeps an unfinished upload as `.upload*` files at its root.
    let left: Vec<_> = std::fs::read_dir(&s3.root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect();
    assert!(left.is_empty(), "no unfinished upload is left: {left:?}");
    assert!(s3.object(&key).await.is_none(), "nothing was stored");
    assert!(a.spool_files().is_empty(), "nothing is left in the spool");
}

#[tokio::test]
async fn a_range_of_a_cold_blob_reads_only_its_chunks() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(3 * CHUNK + CHUNK / 2, 6);
    let key = s3.put_object(&bytes).await;
    s3.clear_log();

    let start = 2 * CHUNK + 10;
    let resp = a.get_range(&key, &format!("bytes={start}-{}", start + 99)).await;
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap() == bytes[start..start + 100]);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 1, "one ranged read: {gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={}-{}", 2 * CHUNK, 3 * CHUNK - 1).as_str()),
        "chunk-aligned"
    );
    assert_eq!(gets[0].bytes, CHUNK as u64);

    // A full read later fetches only the chunks still missing.
    s3.clear_log();
    assert!(a.get(&key).await.bytes().await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "chunks 0, 1 and 3: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), (bytes.len() - CHUNK) as u64);
}

#[tokio::test]
async fn a_cold_herd_costs_one_read_per_chunk() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(3 * CHUNK + CHUNK / 2, 7);
    let key = s3.put_object(&bytes).await;
    s3.clear_log();

    let clients = (0..32).map(|_| {
        let client = a.client.clone();
        let url = a.blob_url(&key);
        async move {
            let resp = client.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        }
    });
    for body in futures::future::join_all(clients).await {
        assert!(body == bytes);
    }
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 4, "one read per chunk: {gets:?}");
    assert_eq!(gets.iter().map(|g| g.bytes).sum::<u64>(), bytes.len() as u64);
    let heads = s3.requests_for("HEAD", &key).len();
    assert!(heads <= 2, "concurrent lookups share a HeadObject, got {heads}");
}

/// Start `n` GETs of `key` and wait (bounded) until each has received its first
/// bytes, at most `limit` of them. Each task ends with the whole body, or with
/// what it got before the response broke off.
async fn readers_with_first_bytes(
    app: &TestApp,
    key: &BlobKey,
    n: usize,
    limit: usize,
) -> Vec<tokio::task::JoinHandle<Result<Vec<u8>, Vec<u8>>>> {
    let (tx, mut first_bytes) = tokio::sync::mpsc::channel(n);
    let clients = (0..n)
        .map(|_| {
            let client = app.client.clone();
            let url = app.blob_url(key);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut resp = client.get(url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                let mut body = Vec::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(part)) => {
                            if body.is_empty() {
                                tx.send(part.len()).await.unwrap();
                            }
                            body.extend_from_slice(&part);
                        }
                        Ok(None) => return Ok(body),
                        Err(_) => return Err(body),
                    }
                }
            })
        })
        .collect();
    for _ in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(20), first_bytes.recv())
            .await
            .expect("every client gets its first bytes while the store is stalled")
            .unwrap();
        assert!(got > 0 && got <= limit, "{got} bytes");
    }
    clients
}

#[tokio::test]
async fn a_cold_read_streams_to_every_client_as_the_bytes_arrive() {
    let s3 = S3Server::start().await;
    let a = patient_node(&s3).await;
    let bytes = data(3 * CHUNK, 14);
    let key = s3.put_object(&bytes).await;
    // Every read of the object sends its first 512 KiB, then waits.
    s3.stall_reads_of(&key, 512 * 1024);
    // No chunk can be complete, yet every client already has bytes.
    let clients = readers_with_first_bytes(&a, &key, 8, 512 * 1024).await;
    assert_eq!(
        a.state.blobs.stats().fills.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    s3.release();
    for c in clients {
        assert!(c.await.unwrap().expect("a whole body") == bytes);
    }
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "one read per chunk: {gets:?}");
}

#[tokio::test]
async fn s3_dying_mid_read_cuts_the_responses_and_caches_nothing() {
    let s3 = S3Server::start().await;
    let a = patient_node(&s3).await;
    let bytes = data(3 * CHUNK, 15);
    let key = s3.put_object(&bytes).await;
    s3.stall_reads_of(&key, 256 * 1024);
    let clients = readers_with_first_bytes(&a, &key, 4, 256 * 1024).await;
    s3.stop().await;
    for c in clients {
        let got = c.await.unwrap().expect_err("the response breaks off");
        assert!(got.len() < bytes.len());
    }
    assert!(a.state.blobs.cache().meta(&key).await.is_none(), "not cached");
    s3.heal();
    s3.restart().await;
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
}

#[tokio::test]
async fn an_object_that_does_not_match_its_key_is_never_served_whole_nor_cached() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let good = data(2 * CHUNK + 99, 8);
    let key = BlobKey::of(&good);
    let mut bad = good.clone();
    bad[CHUNK + 5] ^= 1;
    s3.put_object_as(&key, &bad).await;

    for _ in 0..2 {
        match a.get(&key).await {
            resp if resp.status() == 200 => {
                let body = resp.bytes().await;
                assert!(
                    body.is_err() || body.unwrap().len() < bad.len(),
                    "the response was cut short"
                );
            }
            resp => assert_eq!(resp.status(), 502),
        }
    }
    assert!(a.state.blobs.cache().meta(&key).await.is_none(), "not cached");
    assert!(
        a.state
            .blobs
            .stats()
            .integrity_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    let metrics = a
        .client
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("blobcache_integrity_failures_total") && !l.ends_with(" 0")),
        "the failure is counted"
    );
}

#[tokio::test]
async fn with_s3_down_cached_blobs_are_served_and_the_rest_get_503() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let cached = data(CHUNK + 1, 9);
    let kc = BlobKey::of(&cached);
    assert_eq!(a.put(&cached).await.status(), 201);
    a.replicated().await;
    a.cached(&kc).await;
    let cold = s3.put_object(&data(1000, 10)).await;

    s3.stop().await;
    let resp = a.get(&kc).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == cached);
    let started = Instant::now();
    assert_error(a.get(&cold).await, 503, "store_unavailable").await;
    let head = a.client.head(a.blob_url(&cold)).send().await.unwrap();
    assert_eq!(head.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(10), "answered promptly");
    let ready = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    s3.restart().await;
    common::eventually_async("the cold blob to be served again", || async {
        a.get(&cold).await.status() == 200
    })
    .await;
}

#[tokio::test]
async fn s3_failures_map_to_statuses_a_user_can_act_on() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let key = s3.put_object(&data(500, 11)).await;

    let cases = [
        (Fault::Error(500, "InternalError"), 503, "store_unavailable"),
        (Fault::Error(503, "SlowDown"), 503, "store_unavailable"),
        (Fault::Error(403, "AccessDenied"), 502, "store_denied"),
    ];
    for (fault, status, code) in cases {
        // A GET looks up the size (HeadObject), then reads (GetObject): each can fail.
        s3.fail(|m, _| m == http::Method::GET, fault);
        assert_error(a.get(&key).await, status, code).await;
        s3.fail(|m, _| m == http::Method::HEAD, fault);
        let head = a.client.head(a.blob_url(&key)).send().await.unwrap();
        assert_eq!(head.status().as_u16(), status, "HEAD with {fault:?}");
        assert_error(a.get_range(&key, "bytes=0-9").await, status, code).await;
    }
    // The size is known but the ranged read fails: still an error status, not a broken 206.
    s3.fail(|m, _| m == http::Method::GET, Fault::Error(500, "InternalError"));
    assert_error(a.get_range(&key, "bytes=0-9").await, 503, "store_unavailable").await;
    s3.heal();
    assert_eq!(a.get(&key).await.status(), 200);
}

#[tokio::test]
async fn a_silent_server_is_a_503_not_a_hang() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.s3_timeout = Some(Duration::from_millis(300));
    let a = TestApp::spawn_with(settings).await;
    let key = s3.put_object(&data(500, 12)).await;
    s3.fail(|_, _| true, Fault::Hang);
    let started = Instant::now();
    assert_error(a.get(&key).await, 503, "store_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout and retries, took {:?}",
        started.elapsed()
    );
    s3.heal();
    assert_eq!(a.get(&key).await.status(), 200);
}

#[tokio::test]
async fn uploads_wait_out_an_s3_outage() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    s3.fail(|m, _| m == http::Method::PUT, Fault::Error(503, "ServiceUnavailable"));
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| data(10_000 + i, 100 + i as u64)).collect();
    for b in &blobs {
        let resp = a.put(b).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-blob-durability"], "pending");
    }
    eventually("an upload attempt to fail", || {
        s3.requests().iter().any(|s| s.method == "PUT" && s.status == 503)
    })
    .await;
    assert_eq!(a.pending_blobs(), 5);
    s3.heal();
    a.replicated().await;
    for b in &blobs {
        let (stored, _) = s3.object(&BlobKey::of(b)).await.expect("stored after the outage");
        assert!(&stored == b);
    }
}

#[tokio::test]
async fn a_delete_during_an_upload_waits_for_it_so_the_blob_cannot_come_back() {
    let s3 = S3Server::start().await;
    let a = patient_node(&s3).await;
    let bytes = data(100_000, 16);
    let key = BlobKey::of(&bytes);
    let object = S3Server::object_path(&key);
    s3.fail(move |m, u| m == http::Method::PUT && u.path() == object, Fault::Hold);
    assert_eq!(a.put(&bytes).await.status(), 201);
    let replicator = a.state.blobs.replicator().clone();
    eventually("the upload to start", || {
        replicator.stats().attempts.load(Ordering::Relaxed) >= 1
    })
    .await;

    let client = a.client.clone();
    let url = a.blob_url(&key);
    let delete = tokio::spawn(async move { client.delete(url).send().await.unwrap().status() });
    eventually("the DELETE to reach the node", || {
        a.state.blobs.stats().invalidations.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The upload that was under way now lands in the bucket...
    s3.release();
    assert_eq!(delete.await.unwrap(), 204);
    // ...but the DELETE answered only after it, and after removing it again.
    let log = s3.requests();
    let path = S3Server::object_path(&key);
    let put = log
        .iter()
        .position(|s| s.method == "PUT" && s.path == path)
        .expect("the upload was answered");
    let first_delete = log
        .iter()
        .position(|s| s.method == "DELETE" && s.path == path)
        .expect("a delete");
    assert!(put < first_delete, "no delete ran before the upload ended: {log:?}");
    assert!(s3.object(&key).await.is_none(), "the blob is not in the bucket");
    assert_error(a.get(&key).await, 404, "not_found").await;
    assert_eq!(a.pending_blobs(), 0);
}

#[tokio::test]
async fn start_up_names_what_is_wrong_with_the_store() {
    let s3 = S3Server::start().await;

    let mut settings = node_settings(&s3);
    settings.store = Some("s3://no-such-bucket".into());
    let e = start_error(settings).await;
    assert!(e.contains("does not exist"), "{e}");

    let mut settings = node_settings(&s3);
    settings.s3_secret_access_key = Some("wrong".into());
    let e = start_error(settings).await;
    assert!(e.contains("refused access"), "{e}");

    let mut settings = node_settings(&s3);
    settings.s3_endpoint = Some("http://127.0.0.1:9".into());
    let e = start_error(settings).await;
    assert!(e.contains("cannot be reached") && e.contains("127.0.0.1:9"), "{e}");

    s3.fail(|m, _| m == http::Method::HEAD, Fault::WrongRegion("eu-central-1"));
    let e = start_error(node_settings(&s3)).await;
    assert!(e.contains("set --s3-region eu-central-1"), "{e}");
    s3.heal();
}

#[tokio::test]
async fn a_node_with_a_cache_starts_while_s3_is_down_and_serves_it() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(CHUNK / 2, 13);
    let key = BlobKey::of(&bytes);
    assert_eq!(a.put(&bytes).await.status(), 201);
    a.replicated().await;
    a.cached(&key).await;
    let dir = a.stop().await;

    s3.stop().await;
    let b = TestApp::spawn_in(dir, node_settings(&s3)).await;
    let resp = b.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
    assert_eq!(b.client.get(b.url("/readyz")).send().await.unwrap().status(), 503);
    s3.restart().await;
    common::eventually_async("ready once S3 is back", || async {
        b.client.get(b.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
}

/// The real binary, configured the way an operator would: credentials and the
/// endpoint from the standard AWS environment variables, no S3 flags for them.
#[tokio::test]
async fn the_binary_reads_credentials_and_endpoint_from_the_aws_environment() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_blobcache"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--disk-cache",
            "256MiB",
        ])
        .args(["--store", "s3://blobs/cache", "--s3-force-path-style"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the server exited before listening");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if v["message"] == "blobcache listening" {
                break v["addr"].as_str().unwrap().to_string();
            }
        }
    })
    .await
    .expect("listening within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let bytes = data(100_000, 20);
    let key = BlobKey::of(&bytes);
    let resp = reqwest::Client::new()
        .put(format!("http://{addr}/blobs/{key}"))
        .header("x-blob-durability", "stored")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (stored, _) = s3.object(&key).await.expect("the object is in the bucket");
    assert!(stored == bytes);
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// A store that cannot work stops the binary with exit code 1 and one line on stderr.
#[tokio::test]
async fn the_binary_names_a_store_problem_in_one_line() {
    let s3 = S3Server::start().await;
    let endpoint = s3.endpoint();
    let cases = [
        ("http://127.0.0.1:9", s3_server::SECRET_KEY, "cannot be reached"),
        (endpoint.as_str(), "wrong-secret", "refused access"),
    ];
    for (endpoint, secret, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_blobcache"))
            .args(["serve", "--listen", "127.0.0.1:0", "--disk-cache", "256MiB"])
            .args([
                "--store",
                "s3://blobs/cache",
                "--s3-force-path-style",
                "--s3-region",
                "us-east-1",
            ])
            .args(["--s3-endpoint", endpoint])
            .args([
                "--s3-access-key-id",
                s3_server::ACCESS_KEY,
                "--s3-secret-access-key",
                secret,
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("exits promptly")
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{endpoint}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with("blobcache: error: ") && lines[0].contains(expected),
            "{stderr}"
        );
        assert!(
            !stderr.contains(secret) || secret == s3_server::SECRET_KEY,
            "no secret in the message"
        );
    }
}

/// Sizes at the edges (empty, one byte, a chunk either side) go up and come back through S3.
#[tokio::test]
async fn edge_sizes_round_trip_through_s3() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let blobs: Vec<Vec<u8>> = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| data(n, 200 + i as u64))
        .collect();
    for b in &blobs {
        assert_eq!(a.put(b).await.status(), 201, "{} bytes", b.len());
    }
    a.replicated().await;
    let cold = node(&s3).await;
    for b in &blobs {
        let key = BlobKey::of(b);
        let (stored, _) = s3.object(&key).await.expect("in the bucket");
        assert!(&stored == b, "{} bytes stored", b.len());
        let resp = cold.get(&key).await;
        assert_eq!(resp.status(), 200, "{} bytes", b.len());
        assert_eq!(resp.headers()["content-length"], b.len().to_string());
        assert!(
            resp.bytes().await.unwrap() == b.as_slice(),
            "{} bytes read back",
            b.len()
        );
    }
}

/// Lookups of a cold blob's size (HEAD, GET, range GET) share one HeadObject when concurrent.
#[tokio::test]
async fn concurrent_heads_share_one_head_object() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let key = s3.put_object(&data(10_000, 17)).await;
    s3.clear_log();
    let heads = (0..32).map(|_| a.client.head(a.blob_url(&key)).send());
    for resp in futures::future::join_all(heads).await {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "10000");
    }
    let sent = s3.requests_for("HEAD", &key).len();
    assert!((1..=8).contains(&sent), "32 HEADs sent {sent} HeadObjects");
    assert!(s3.requests().iter().all(|s| s.method == "HEAD"), "no body was read");
}

/// A whole GET after a range read of the first chunk reads only the chunks still missing.
#[tokio::test]
async fn a_whole_read_after_a_range_of_the_first_chunk() {
    let s3 = S3Server::start().await;
    let a = node(&s3).await;
    let bytes = data(2 * CHUNK + 5, 18);
    let key = s3.put_object(&bytes).await;
    let range = a.get_range(&key, "bytes=0-9").await;
    assert_eq!(range.status(), 206);
    assert!(range.bytes().await.unwrap() == bytes[..10]);
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], bytes.len().to_string());
    assert!(resp.bytes().await.unwrap() == bytes);
    let gets: Vec<_> = s3.requests().into_iter().filter(is_object_get).collect();
    assert_eq!(gets.len(), 3, "each chunk read once: {gets:?}");
}
