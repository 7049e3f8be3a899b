//! The real binary as a child process: start-up, SIGTERM, restart.

use std::time::Duration;

use crate::common;
use crate::common::data;
use crate::common::process::start;
use blobcache::key::BlobKey;

#[tokio::test]
async fn sigterm_stops_cleanly_and_the_cache_survives() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let body = data(5 << 20, 70);
    let key = BlobKey::of(&body);

    let server = start(dir.path());
    let url = format!("{}/blobs/{key}", server.base);
    assert_eq!(client.put(&url).body(body.clone()).send().await.unwrap().status(), 201);
    common::eventually_async("the blob to be cached", || async {
        let stats = stats(&client, &server.base).await;
        let head = client.head(&url).send().await.unwrap();
        stats["replication"]["pending_blobs"] == 0 && head.headers()["x-cache"] == "hit"
    })
    .await;
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        common::files_under(&dir.path().join("spool")).is_empty(),
        "nothing left pending"
    );

    let server = start(dir.path());
    let url = format!("{}/blobs/{key}", server.base);
    let resp = client
        .get(&url)
        .header("x-request-id", "test-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "test-req-1",
        "the request id is returned"
    );
    assert_eq!(resp.headers()["x-cache"], "hit", "the disk tier came back");
    assert!(resp.bytes().await.unwrap().as_ref() == body.as_slice());
    let stats = stats(&client, &server.base).await;
    assert_eq!(stats["store"]["gets"], 0, "served without reading the store");
    // One JSON line per request, with the documented fields.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = server.log.recv_timeout(left).expect("a log line for the request");
        if v["message"] == "request" && v["span"]["request_id"] == "test-req-1" {
            break v;
        }
    };
    assert_eq!(line["status"], 200);
    assert_eq!(line["cache"], "hit");
    assert_eq!(line["bytes"], body.len().to_string());
    assert!(line["latency_ms"].as_f64().is_some());
    assert_eq!(line["span"]["method"], "GET");
    assert_eq!(line["span"]["route"], "/blobs/{key}");

    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success());
}

async fn stats(client: &reqwest::Client, base: &str) -> serde_json::Value {
    client
        .get(format!("{base}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn pending_blobs(client: &reqwest::Client, base: &str) -> u64 {
    stats(client, base).await["replication"]["pending_blobs"]
        .as_u64()
        .unwrap()
}

fn store_path(dir: &std::path::Path, key: &BlobKey) -> std::path::PathBuf {
    let hex = key.to_string();
    dir.join("store").join(&hex[..2]).join(&hex[2..4]).join(hex)
}

#[tokio::test]
async fn sigkill_with_uploads_pending_loses_no_acknowledged_blob() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = start(dir.path());
    // The store refuses writes, so every acknowledged blob stays queued.
    let store_tmp = dir.path().join("store/.tmp");
    std::fs::remove_dir_all(&store_tmp).unwrap();
    std::fs::write(&store_tmp, b"not a directory").unwrap();

    let blobs: Vec<Vec<u8>> = (0..20).map(|i| data(50_000 + i * 1000, 200 + i as u64)).collect();
    for b in &blobs {
        let url = format!("{}/blobs/{}", server.base, BlobKey::of(b));
        assert_eq!(client.put(&url).body(b.clone()).send().await.unwrap().status(), 201);
    }
    assert_eq!(pending_blobs(&client, &server.base).await, 20);
    let status = tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
    assert!(!status.success(), "killed");

    std::fs::remove_file(&store_tmp).unwrap();
    std::fs::create_dir(&store_tmp).unwrap();
    let server = start(dir.path());
    common::eventually_async("the replayed queue to drain", || async {
        pending_blobs(&client, &server.base).await == 0
    })
    .await;
    for b in &blobs {
        assert_eq!(
            std::fs::read(store_path(dir.path(), &BlobKey::of(b))).unwrap(),
            *b,
            "every acknowledged blob, whole"
        );
    }
    assert!(common::files_under(&store_tmp).is_empty(), "no partial objects");
    assert!(
        common::files_under(&dir.path().join("spool")).is_empty(),
        "the spool is empty"
    );
    tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
}

#[tokio::test]
async fn a_crash_before_the_acknowledgement_leaves_no_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = start(dir.path());
    let body = data(8 << 20, 300);
    let key = BlobKey::of(&body);
    let sock = common::partial_put(&server.base, &body, 3 << 20).await;
    let tmp = dir.path().join("spool/tmp");
    common::eventually("the upload to reach the spool", || {
        !common::files_under(&tmp).is_empty()
    })
    .await;
    tokio::task::spawn_blocking(move || server.kill()).await.unwrap();
    drop(sock);

    let server = start(dir.path());
    assert!(
        common::files_under(&dir.path().join("spool")).is_empty(),
        "half-written upload removed at start"
    );
    let resp = client.get(format!("{}/blobs/{key}", server.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(!store_path(dir.path(), &key).exists());
    tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
}

/// `--access-log false`: no line per request, while the other log lines still
/// come (and, written by a thread of their own, are all flushed at exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::process::start_with(dir.path(), &["--access-log", "false"], &[]);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let resp = client.get(format!("{}/healthz", server.base)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let log = server.log_after_terminate();
    assert!(
        log.iter().any(|v| v["message"] == "stopped"),
        "the last line is flushed at exit"
    );
    assert!(
        !log.iter().any(|v| v["message"] == "request"),
        "no access log line: {log:?}"
    );
}
