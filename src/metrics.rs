//! Prometheus metrics: request counts and latency by route, and mirrors of the
//! counters the modules keep for themselves (read at scrape time, so the hot
//! paths pay one relaxed atomic add and nothing else). Label values are
//! bounded: routes are the matched patterns, never a blob key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::http::AppState;

/// Where a mirrored counter reads its value.
type Field = fn(&AppState) -> &AtomicU64;

/// The registry and the handles the HTTP layer updates directly.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    mirrors: Vec<(IntCounter, Field)>,
    pending_blobs: IntGauge,
    pending_bytes: IntGauge,
    oldest_pending: Gauge,
    memory_used: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "blobcache_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "blobcache_http_request_duration_seconds",
                "Time to the response headers, by route and method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("unique metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");

        let mirrored: [(&str, &str, Field); 19] = [
            ("blobcache_bytes_in_total", "upload body bytes received", |s| {
                &s.blobs.stats().bytes_in
            }),
            ("blobcache_bytes_out_total", "blob body bytes sent", |s| {
                &s.blobs.stats().bytes_out
            }),
            ("blobcache_cache_hits_total", "GETs/HEADs served from the cache", |s| {
                &s.blobs.stats().hits
            }),
            (
                "blobcache_spool_hits_total",
                "GETs/HEADs served from the pending spool",
                |s| &s.blobs.stats().spool_hits,
            ),
            (
                "blobcache_cache_misses_total",
                "GETs/HEADs read through from the store",
                |s| &s.blobs.stats().misses,
            ),
            ("blobcache_not_found_total", "lookups of blobs found nowhere", |s| {
                &s.blobs.stats().not_found
            }),
            ("blobcache_fills_total", "shared read-through fills started", |s| {
                &s.blobs.stats().fills
            }),
            (
                "blobcache_coalesced_waiters_total",
                "cold reads that joined a fill already under way",
                |s| &s.blobs.stats().coalesced_waiters,
            ),
            (
                "blobcache_integrity_failures_total",
                "stored blobs whose bytes did not match their key",
                |s| &s.blobs.stats().integrity_failures,
            ),
            ("blobcache_invalidations_total", "DELETEs", |s| {
                &s.blobs.stats().invalidations
            }),
            ("blobcache_puts_created_total", "blobs stored by PUT", |s| {
                &s.blobs.stats().puts_created
            }),
            (
                "blobcache_puts_rejected_total",
                "PUTs refused (bad digest, too large, spool full, ...)",
                |s| &s.blobs.stats().puts_rejected,
            ),
            ("blobcache_store_gets_total", "ranged reads from the store", |s| {
                &s.store_stats.gets
            }),
            ("blobcache_store_heads_total", "size lookups in the store", |s| {
                &s.store_stats.heads
            }),
            ("blobcache_store_read_bytes_total", "bytes read from the store", |s| {
                &s.store_stats.bytes_read
            }),
            ("blobcache_store_puts_total", "blobs written to the store", |s| {
                &s.store_stats.puts
            }),
            ("blobcache_store_errors_total", "failed store operations", |s| {
                &s.store_stats.errors
            }),
            (
                "blobcache_upload_attempts_total",
                "attempts to copy a pending blob to the store",
                |s| &s.blobs.replicator().stats().attempts,
            ),
            (
                "blobcache_upload_failures_total",
                "failed upload attempts (each is retried)",
                |s| &s.blobs.replicator().stats().failures,
            ),
        ];
        let mirrors = mirrored
            .into_iter()
            .map(|(name, help, field)| (counter(&registry, name, help), field))
            .collect();
        let pending_blobs = gauge(
            &registry,
            "blobcache_pending_blobs",
            "blobs acknowledged here, waiting for the store",
        );
        let pending_bytes = gauge(
            &registry,
            "blobcache_pending_bytes",
            "bytes acknowledged here, waiting for the store",
        );
        let oldest_pending = Gauge::new(
            "blobcache_oldest_pending_age_seconds",
            "age of the oldest blob waiting for the store",
        )
        .expect("valid metric");
        registry
            .register(Box::new(oldest_pending.clone()))
            .expect("unique metric");
        let memory_used = gauge(
            &registry,
            "blobcache_cache_memory_used_bytes",
            "bytes held by the memory tier",
        );
        Arc::new(Metrics {
            registry,
            requests,
            latency,
            mirrors,
            pending_blobs,
            pending_bytes,
            oldest_pending,
            memory_used,
        })
    }

    /// A histogram of store operation latency by operation, registered here.
    pub fn store_latency(&self) -> HistogramVec {
        let h = HistogramVec::new(
            HistogramOpts::new(
                "blobcache_store_op_duration_seconds",
                "Store operation latency, to its answer",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        self.registry.register(Box::new(h.clone())).expect("unique metric");
        h
    }

    /// Bytes the disk tier holds: its blocks that are not clean, times the block
    /// size (from foyer's own gauges; `None` before foyer reported them).
    pub fn disk_used_bytes(&self) -> Option<u64> {
        let families = self.registry.gather();
        let find = |name: &str| families.iter().find(|f| f.name() == name);
        let block_size = find("foyer_storage_block_engine_block_size_bytes")?
            .get_metric()
            .first()?
            .get_gauge()
            .get_value();
        let used: f64 = find("foyer_storage_block_engine_block")?
            .get_metric()
            .iter()
            .filter(|m| m.get_label().iter().any(|l| l.name() == "type" && l.value() != "clean"))
            .map(|m| m.get_gauge().get_value())
            .sum();
        Some((used * block_size) as u64)
    }

    /// The registry, for components that register their own metrics (foyer).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition of every metric, brought up to date first.
    pub fn render(&self, state: &AppState) -> String {
        for (counter, field) in &self.mirrors {
            let now = field(state).load(Ordering::Relaxed);
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        }
        let queue = state.blobs.replicator().snapshot();
        self.pending_blobs.set(queue.pending_blobs as i64);
        self.pending_bytes.set(queue.pending_bytes as i64);
        self.oldest_pending.set(queue.oldest_pending_age_seconds);
        self.memory_used
            .set(state.blobs.cache().usage().memory_used_bytes as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

/// Middleware: count each request and time it to its response headers.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.requests
        .with_label_values(&[&route, method, resp.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    resp
}
