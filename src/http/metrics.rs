//! The HTTP layer's metrics: requests by route, method and status, and their
//! latency to the response headers. Label values are bounded: routes are the
//! matched patterns, never a blob key.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, Registry};

use crate::metrics;

#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> Self {
        HttpMetrics {
            requests: metrics::counter_vec(
                registry,
                "blobcache_http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            latency: metrics::histogram_vec(
                registry,
                "blobcache_http_request_duration_seconds",
                "Time to the response headers, by route and method",
                &["route", "method"],
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
        }
    }
}

/// Middleware: count each request and time it to its response headers.
/// Its state is the metrics alone: the whole `AppState` is a dozen reference
/// counts to take and drop per request.
pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let resp = next.run(req).await;
    m.requests
        .with_label_values(&[route, method, resp.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route, method])
        .observe(started.elapsed().as_secs_f64());
    resp
}
