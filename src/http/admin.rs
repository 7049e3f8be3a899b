//! Health, readiness and statistics endpoints.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the node is not shutting down and the store answers a cheap probe in time.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.shutting_down.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": "shutting down" })),
        );
    }
    match tokio::time::timeout(state.readiness_timeout, state.blobs.probe_store()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": format!("store: {}", crate::error_chain(&e)) })),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": "store probe timed out" })),
        ),
    }
}

pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    let s = state.blobs.stats();
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "metrics": {
            "hits": g(&s.hits),
            "spool_hits": g(&s.spool_hits),
            "misses": g(&s.misses),
            "not_found": g(&s.not_found),
            "invalidations": g(&s.invalidations),
            "fills": g(&s.fills),
            "coalesced_waiters": g(&s.coalesced_waiters),
            "integrity_failures": g(&s.integrity_failures),
            "puts_created": g(&s.puts_created),
            "puts_existing": g(&s.puts_existing),
            "puts_rejected": g(&s.puts_rejected),
        },
        "cache": state.blobs.cache().usage(),
        "store": state.store_stats.snapshot(),
        "replication": state.blobs.replicator().snapshot(),
    }))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let body = state.metrics.render(&state);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
