//! /metrics: Prometheus text that moves with the traffic.

use crate::common::{TestApp, data};
use blobcache::key::BlobKey;

async fn scrape(app: &TestApp) -> String {
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text().await.unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    crate::common::sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn counters_move_after_a_hit_and_a_miss() {
    let app = TestApp::spawn().await;
    let hot = data(10_000, 1);
    let hot_key = BlobKey::of(&hot);
    assert_eq!(app.put(&hot).await.status(), 201);
    app.replicated().await;
    app.cached(&hot_key).await;
    let cold = data(20_000, 2);
    let cold_key = app.seed_store(&cold);

    let before = scrape(&app).await;
    for (key, want, len) in [(hot_key, "hit", hot.len()), (cold_key, "miss", cold.len())] {
        let resp = app.get(&key).await;
        assert_eq!(resp.headers()["x-cache"], want);
        // Read the whole body: the store's bytes are counted as the fill streams them.
        assert_eq!(resp.bytes().await.unwrap().len(), len);
    }
    let after = scrape(&app).await;

    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta("blobcache_cache_hits_total"), 1.0);
    assert_eq!(delta("blobcache_cache_misses_total"), 1.0);
    assert_eq!(delta("blobcache_store_gets_total"), 1.0);
    assert_eq!(delta("blobcache_store_read_bytes_total"), 20_000.0);
    assert_eq!(
        value(
            &after,
            r#"blobcache_http_requests_total{method="GET",route="/blobs/{key}",status="200"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &after,
            r#"blobcache_http_requests_total{method="PUT",route="/blobs/{key}",status="201"}"#
        ),
        1.0
    );
    assert!(
        value(
            &after,
            r#"blobcache_http_request_duration_seconds_count{method="GET",route="/blobs/{key}"}"#
        ) >= 2.0
    );
    assert_eq!(value(&after, "blobcache_pending_blobs"), 0.0);
    assert_eq!(value(&after, "blobcache_upload_attempts_total"), 1.0);
    assert_eq!(delta("blobcache_bytes_out_total"), (hot.len() + cold.len()) as f64);
    assert_eq!(value(&after, "blobcache_bytes_in_total"), hot.len() as f64);
    // Unknown routes are counted, under a bounded label.
    assert_eq!(
        app.client.get(app.url("/no/such/route")).send().await.unwrap().status(),
        404
    );
    let last = scrape(&app).await;
    assert_eq!(
        value(
            &last,
            r#"blobcache_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        1.0
    );
    assert!(value(&after, r#"blobcache_store_op_duration_seconds_count{op="get"}"#) >= 1.0);
    // foyer's own metrics are exported through the same registry.
    for series in [
        "foyer_memory_usage",
        "foyer_storage_disk_io_total",
        "foyer_hybrid_op_total",
    ] {
        assert!(after.lines().any(|l| l.starts_with(series)), "{series} missing");
    }
    // No blob key ever appears as a label value.
    assert!(!after.contains(&hot_key.to_string()) && !after.contains(&cold_key.to_string()));
}

#[tokio::test]
async fn the_grafana_dashboard_only_uses_metrics_that_exist() {
    let app = TestApp::spawn().await;
    assert_eq!(app.put(&data(100, 3)).await.status(), 201);
    let text = scrape(&app).await;
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/blobcache.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut names: Vec<&str> = dashboard
        .match_indices("blobcache_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}
