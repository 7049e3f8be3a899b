//! Health, readiness and statistics endpoints.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::AppState;
use crate::cluster::Hop;
use crate::store::Store;

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

    async fn check(&self, store: &dyn Store) -> Result<(), String> {
        // Callers that arrive during a probe wait for its answer (at most `timeout`).
        let mut last = self.last.lock().await;
        if let Some((at, result)) = &*last
            && at.elapsed() < self.reuse_for
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(self.timeout, store.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("store: {}", crate::error_chain(&e))),
            Err(_) => Err(format!("store: no answer within {:?}", self.timeout)),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// Ready when the node is not shutting down and the store answered a cheap
/// probe recently. The answer also names the node (its id in a cluster) and
/// whether it serves requests: a node whose store is down is not ready for a
/// load balancer, yet still serves its peers what it holds.
///
/// A peer's probe (it carries `X-Blobcache-Hop`) is answered at once, without
/// asking the store: a store that hangs must not make the nodes think each
/// other dead, which would break read-your-write exactly when it matters.
pub async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> (StatusCode, Json<Value>) {
    let node = state.blobs.cluster().map(|c| c.me().to_string());
    if state.shutting_down.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": "shutting down", "node": node, "serving": false })),
        );
    }
    if Hop::of(&headers).is_some() {
        return (
            StatusCode::OK,
            Json(json!({ "status": "serving", "node": node, "serving": true })),
        );
    }
    match state.readiness.check(&*state.store).await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "node": node, "serving": true })),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unready", "reason": reason, "node": node, "serving": true })),
        ),
    }
}

pub async fn stats(State(state): State<AppState>) -> Json<Value> {
    let mut store = state.store_stats.snapshot();
    if let (Some(store), Value::Object(breaker)) = (store.as_object_mut(), state.store.snapshot()) {
        store.extend(breaker);
    }
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "metrics": state.blobs.snapshot(),
        "cache": state.cache.usage(),
        "disk_cache_used_bytes": state.cache.disk_used_bytes(),
        "store": store,
        "replication": state.replicator.snapshot(),
        "cluster": state.blobs.cluster().map(|c| c.snapshot()),
    }))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let body = crate::metrics::render(&state.registry);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
