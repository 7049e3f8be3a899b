//! Health, readiness and statistics endpoints.

use crate::common;
use crate::common::{TestApp, break_store, data, mend_store};
use blobcache::key::BlobKey;

async fn get_json(app: &TestApp, path: &str) -> (u16, serde_json::Value) {
    let resp = app.client.get(app.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn readyz_follows_the_store() {
    let app = TestApp::spawn().await;
    assert_eq!(
        get_json(&app, "/healthz").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(get_json(&app, "/readyz").await.0, 200);

    break_store(&app.store_dir());
    common::eventually_async("/readyz to turn 503", || async {
        get_json(&app, "/readyz").await.0 == 503
    })
    .await;
    let (_, body) = get_json(&app, "/readyz").await;
    assert_eq!(body["status"], "unready");
    assert!(body["reason"].as_str().unwrap().starts_with("store"), "{body}");
    assert_eq!(get_json(&app, "/healthz").await.0, 200, "alive all the same");

    mend_store(&app.store_dir());
    common::eventually_async("/readyz to turn 200", || async {
        get_json(&app, "/readyz").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn stats_has_the_documented_shape() {
    let app = TestApp::spawn().await;
    let body = data(1000, 1);
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    app.cached(&BlobKey::of(&body)).await;
    assert_eq!(app.get(&BlobKey::of(&body)).await.status(), 200);
    assert_eq!(app.get(&BlobKey::of(b"absent")).await.status(), 404);

    let (status, s) = get_json(&app, "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(s["metrics"]["hits"], 1);
    assert_eq!(s["metrics"]["misses"], 0);
    assert_eq!(s["metrics"]["not_found"], 1);
    assert_eq!(s["metrics"]["invalidations"], 0);
    assert!(s["cache"]["memory_used_bytes"].as_u64().unwrap() >= 1000);
    assert!(s["cache"]["disk_capacity_bytes"].as_u64().unwrap() > 0);
    assert!(
        s["cache"]["memory_entries"].as_u64().unwrap() >= 2,
        "a chunk and its metadata"
    );
    assert_eq!(s["metrics"]["bytes_in"], 1000);
    assert_eq!(s["metrics"]["bytes_out"], 1000);
    assert_eq!(s["replication"]["pending_blobs"], 0);
    assert_eq!(s["replication"]["uploaded"], 1);
    assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
}
