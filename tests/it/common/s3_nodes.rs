//! blobcache nodes in front of the test S3 server, and what the S3 tests share.

use std::time::Duration;

use blobcache::app::App;
use blobcache::config::{Config, Settings};
use blobcache::key::BlobKey;

use crate::common::TestApp;
use crate::common::s3_server::{self, S3Server};

pub fn node_settings(s3: &S3Server) -> Settings {
    s3.settings_over(crate::common::test_settings())
}

pub async fn node(s3: &S3Server) -> TestApp {
    TestApp::spawn_with(node_settings(s3)).await
}

/// A node that waits long for a stalled S3 body, so a test decides when a stall ends.
pub async fn patient_node(s3: &S3Server) -> TestApp {
    let mut settings = node_settings(s3);
    settings.store.s3_timeout = Some(Duration::from_secs(60));
    TestApp::spawn_with(settings).await
}

/// Build a node and return its start-up error.
pub async fn start_error(settings: Settings) -> String {
    let dir = tempfile::tempdir().unwrap();
    start_error_in(dir.path(), settings).await
}

pub async fn start_error_in(dir: &std::path::Path, mut settings: Settings) -> String {
    settings.data_dir = Some(dir.to_path_buf());
    let config = Config::from_settings(settings).expect("config");
    match App::build(config).await {
        Ok(_) => panic!("the node started"),
        Err(e) => format!("{e:#}"),
    }
}

pub fn is_object_get(s: &s3_server::Seen) -> bool {
    s.method == "GET" && s.path.starts_with(&format!("/{}/", s3_server::BUCKET))
}

/// Start `n` GETs of `key` and wait (bounded) until each has received its first
/// bytes, at most `limit` of them. Each task ends with the whole body, or with
/// what it got before the response broke off.
pub async fn readers_with_first_bytes(
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
