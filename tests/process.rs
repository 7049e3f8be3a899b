//! The real binary as a child process: start-up, SIGTERM, restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use blobcache::key::BlobKey;
use common::data;

struct Server {
    child: Child,
    base: String,
    log: std::sync::mpsc::Receiver<serde_json::Value>,
}

/// Start `blobcache serve` on 127.0.0.1:0 and learn its port from its JSON log.
fn start(data_dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blobcache"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--disk-cache",
            "256MiB",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before listening").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["message"] == "blobcache listening" {
            break v["addr"].as_str().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

impl Server {
    /// SIGTERM, then wait (bounded) for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
        let r = client.get(format!("{}/stats", server.base)).send().await.unwrap();
        let stats: serde_json::Value = r.json().await.unwrap();
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
    let stats: serde_json::Value = client
        .get(format!("{}/stats", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
