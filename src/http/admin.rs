//! Health, readiness and statistics endpoints.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::blobs::BlobService;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The store probe behind /readyz: bounded in time, and its answer reused for a
/// moment so probes from many load balancers cost the store one request.
#[derive(Debug)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    reuse_for: Duration,
    timeout: Duration,
}

impl Readiness {
    pub fn new(reuse_for: Duration, timeout: Duration) -> Self {
        Readiness {
            last: tokio::sync::Mutex::new(None),
            reuse_for,
            timeout,
        }
    }

    async fn check(&self, blobs: &BlobService) -> Result<(), String> {
        // Callers that arrive during a probe wait for its answer (at most `timeout`).
        let mut last = self.last.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < self.reuse_for
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(self.timeout, blobs.probe_store()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {}", crate::error_chain(&e))),
            Err(_) => Err(format!("store: no answer within {:?}", self.timeout)),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// Ready when the node is not shutting down and the store answered a cheap probe recently.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.shutting_down.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": "shutting down" })),
        );
    }
    match state.readiness.check(&state.blobs).await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": reason })),
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
            "bytes_in": g(&s.bytes_in),
            "bytes_out": g(&s.bytes_out),
        },
        "cache": state.blobs.cache().usage(),
        "disk_cache_used_bytes": state.metrics.disk_used_bytes(),
        "store": state.store_stats.snapshot(),
        "replication": state.blobs.replicator().snapshot(),
    }))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let body = state.metrics.render(&state);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
