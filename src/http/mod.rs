//! The HTTP surface: routes, middleware, and the state handlers share.

pub mod admin;
mod auth;
mod blobs;
mod cluster;
pub mod error;
mod metrics;
pub mod range;
pub mod server;
mod settings;
mod warm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::blobs::BlobService;
use crate::cache::BlobCache;
use crate::replication::Replicator;
use crate::store::{Breaker, Metered};
use error::ApiError;
pub use metrics::HttpMetrics;
pub use settings::{DEFAULT_CACHE_CONTROL, HttpConfig, HttpSettings, Limits};

/// What every handler can reach. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub blobs: Arc<BlobService>,
    /// Tokens and scopes: who may do what.
    pub auth: Arc<crate::auth::Auth>,
    /// The modules /stats reports on, each through its own snapshot.
    pub cache: BlobCache,
    pub replicator: Arc<Replicator>,
    pub store: Arc<Breaker>,
    pub store_stats: Arc<Metered>,
    pub started: Instant,
    /// Fired when the node begins to shut down: /readyz turns 503.
    pub shutting_down: CancellationToken,
    pub readiness: Arc<admin::Readiness>,
    pub registry: prometheus::Registry,
    pub http_metrics: HttpMetrics,
    pub http: HttpConfig,
    pub warm: Arc<crate::warm::Warmer>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// New request ids: random UUIDs (version 4) from the thread's generator.
/// (`MakeRequestUuid` asks the kernel for every id: a `getrandom(2)` per request.)
#[derive(Clone, Copy, Debug)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        Some(RequestId::new(uuid_v4(rand::random())))
    }
}

/// `bits` as a version 4 UUID in its text form.
fn uuid_v4(bits: u128) -> axum::http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // The version (4) and variant (10) bits.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let mut text = [0u8; 36];
    let mut nibble = 32;
    for (i, c) in text.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *c = b'-';
        } else {
            nibble -= 1;
            *c = HEX[((bits >> (4 * nibble)) & 0xf) as usize];
        }
    }
    axum::http::HeaderValue::from_bytes(&text).expect("hex digits and dashes")
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let access_log = state.http.access_log;
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, RandomId))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), route, request_id = %id)
                })
                // One line per request, when its headers go out.
                .on_response(
                    move |res: &axum::http::Response<_>, latency: Duration, _: &tracing::Span| {
                        if !access_log {
                            return;
                        }
                        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
                        tracing::info!(
                            status = res.status().as_u16(),
                            latency_ms = latency.as_secs_f64() * 1000.0,
                            bytes = %header("content-length"),
                            cache = %header("x-cache"),
                            "request"
                        );
                    },
                )
                // Errors are logged once, where they are mapped to a status.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
            .into_response()
        }));

    Router::new()
        .route(
            "/blobs/{key}",
            get(blobs::get_blob)
                .head(blobs::head_blob)
                .put(blobs::put_blob)
                .post(blobs::put_blob)
                .delete(blobs::delete_blob),
        )
        .route("/blobs/{key}/status", get(blobs::blob_status))
        .route("/blobs", post(blobs::post_blob))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/stats", get(admin::stats))
        .route("/metrics", get(admin::metrics))
        .route("/cluster", get(cluster::view))
        .route(
            "/cluster/tombstones",
            get(cluster::tombstones).post(cluster::take_tombstones),
        )
        .route("/events/s3", post(cluster::s3_events))
        .route("/warm", post(warm::start))
        .route("/warm/{id}", get(warm::status))
        // Blob bodies are streamed and limited by --max-blob-size in the service.
        .layer(DefaultBodyLimit::disable())
        .fallback(|| async { ApiError::route_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // Inside the request log and ids, so refusals are logged and counted like any answer.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(middleware)
        // Outermost, so unknown routes and wrong methods are counted too (as "unmatched").
        .layer(axum::middleware::from_fn_with_state(
            state.http_metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = super::uuid_v4(u128::MAX);
        assert_eq!(id.to_str().unwrap(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = super::uuid_v4(0);
        assert_eq!(id.to_str().unwrap(), "00000000-0000-4000-8000-000000000000");
        let id = super::uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.to_str().unwrap(), "01234567-89ab-4def-8123-456789abcdef");
    }
}
