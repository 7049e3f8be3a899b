//! blobcache in front of a real S3-protocol server when S3 fails: errors a user
//! can act on, outages, timeouts, races with uploads, and start-up checks.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::s3_nodes::*;
use crate::common::s3_server;
use crate::common::s3_server::{Fault, S3Server};
use crate::common::{CHUNK, TestApp, assert_error, data, eventually, eventually_async};
use blobcache::key::BlobKey;

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
    assert!(!a.is_cached(&key).await, "not cached");
    s3.heal();
    s3.restart().await;
    let resp = a.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == bytes);
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
        // Each case starts with a store the node believes in (failures open its circuit).
        s3.heal();
        a.store_answers().await;
        // A GET looks up the size (HeadObject), then reads (GetObject): each can fail.
        s3.fail(|m, _| m == http::Method::GET, fault);
        assert_error(a.get(&key).await, status, code).await;
        s3.fail(|m, _| m == http::Method::HEAD, fault);
        let head = a.client.head(a.blob_url(&key)).send().await.unwrap();
        assert_eq!(head.status().as_u16(), status, "HEAD with {fault:?}");
        assert_error(a.get_range(&key, "bytes=0-9").await, status, code).await;
    }
    // The size is known but the ranged read fails: still an error status, not a broken 206.
    s3.heal();
    a.store_answers().await;
    s3.fail(|m, _| m == http::Method::GET, Fault::Error(500, "InternalError"));
    assert_error(a.get_range(&key, "bytes=0-9").await, 503, "store_unavailable").await;
    s3.heal();
    a.store_answers().await;
    assert_eq!(a.get(&key).await.status(), 200);
}

#[tokio::test]
async fn a_silent_server_is_a_503_not_a_hang() {
    let s3 = S3Server::start().await;
    let mut settings = node_settings(&s3);
    settings.store.s3_timeout = Some(Duration::from_millis(300));
    let a = TestApp::spawn_with(settings).await;
    let key = s3.put_object(&data(500, 12)).await;
    s3.fail(|_, _| true, Fault::Hang);
    let started = Instant::now();
    assert_error(a.get(&key).await, 503, "store_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "bounded by --s3-timeout, retries included, took {:?}",
        started.elapsed()
    );
    // The store is now known to be failing: the next requests do not wait for it.
    let other = BlobKey::of(b"never stored");
    let started = Instant::now();
    assert_error(a.get(&other).await, 503, "store_unavailable").await;
    let head = a.client.head(a.blob_url(&key)).send().await.unwrap();
    assert_eq!(head.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "failed fast, took {:?}",
        started.elapsed()
    );
    assert_eq!(a.stats().await["store"]["circuit"], "open");
    // Once a probe gets an answer, requests reach the store again.
    s3.heal();
    a.store_answers().await;
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
    assert_eq!(a.pending_blobs().await, 5);
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
    eventually("the upload to start", || {
        s3.requests().iter().any(|s| s.method == "PUT") || s3.held() > 0
    })
    .await;

    let client = a.client.clone();
    let url = a.blob_url(&key);
    let delete = tokio::spawn(async move { client.delete(url).send().await.unwrap().status() });
    eventually_async("the DELETE to reach the node", || async {
        a.stat("metrics.invalidations").await >= 1
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
    assert_eq!(a.pending_blobs().await, 0);
}

#[tokio::test]
async fn start_up_names_what_is_wrong_with_the_store() {
    let s3 = S3Server::start().await;

    let mut settings = node_settings(&s3);
    settings.store.store = Some("s3://no-such-bucket".into());
    let e = start_error(settings).await;
    assert!(e.contains("does not exist"), "{e}");

    let mut settings = node_settings(&s3);
    settings.store.s3_secret_access_key = Some("wrong".into());
    let e = start_error(settings).await;
    assert!(e.contains("refused access"), "{e}");

    let mut settings = node_settings(&s3);
    settings.store.s3_endpoint = Some("http://127.0.0.1:9".into());
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_credentials_and_endpoint_from_the_aws_environment() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3.endpoint();
    // The S3 server runs on the runtime's workers while this thread waits for the child.
    let server = common::process::start_with(
        dir.path(),
        &["--store", "s3://blobs/cache", "--s3-force-path-style"],
        &[
            ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let bytes = data(100_000, 20);
    let key = BlobKey::of(&bytes);
    let resp = reqwest::Client::new()
        .put(format!("{}/blobs/{key}", server.base))
        .header("x-blob-durability", "stored")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (stored, _) = s3.object(&key).await.expect("the object is in the bucket");
    assert!(stored == bytes);
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
