//! The HTTP layer's metrics: requests by route, method and status, and their
//! latency to the response headers. Label values are bounded: routes are the
//! matched patterns, never a blob key.

use std::time::Duration;

use axum::http::StatusCode;
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

impl HttpMetrics {
    /// Count one request and its time to the response headers.
    pub fn record(&self, route: &str, method: &str, status: StatusCode, latency: Duration) {
        self.requests.with_label_values(&[route, method, status.as_str()]).inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(latency.as_secs_f64());
    }
}
