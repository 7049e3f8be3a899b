//! The HTTP surface: the request's way in (`front`), the routes, and the
//! state handlers share.

pub mod access_log;
pub mod admin;
mod auth;
mod blobs;
mod cluster;
pub mod error;
pub mod front;
mod metrics;
pub mod range;
pub mod server;
mod settings;
mod warm;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::blobs::BlobService;
use crate::cache::BlobCache;
use crate::replication::Replicator;
use crate::store::{Breaker, Metered};
use error::ApiError;
pub use front::Front;
pub use metrics::HttpMetrics;
pub use settings::{DEFAULT_CACHE_CONTROL, HttpConfig, HttpSettings, Limits};

/// What every handler can reach, behind one reference count: a request
/// clones it once or twice, and a dozen counts of its own would be a dozen
/// atomic operations on lines both cores write.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Modules>);

impl AppState {
    pub fn new(modules: Modules) -> Self {
        AppState(Arc::new(modules))
    }
}

impl std::ops::Deref for AppState {
    type Target = Modules;

    fn deref(&self) -> &Modules {
        &self.0
    }
}

/// The modules of [`AppState`].
#[derive(Debug)]
pub struct Modules {
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

/// Every route pattern of [`router`] (`front` labels requests with them; its test checks them here).
#[cfg(test)]
const ROUTES: [&str; 12] = [
    "/blobs/{key}",
    "/blobs/{key}/status",
    "/blobs",
    "/healthz",
    "/readyz",
    "/stats",
    "/metrics",
    "/cluster",
    "/cluster/tombstones",
    "/events/s3",
    "/warm",
    "/warm/{id}",
];

/// The whole HTTP API: the routes behind the request's way in ([`Front`]).
pub fn service(state: AppState) -> Front {
    Front::new(state.clone(), router(state))
}

/// The routes.
fn router(state: AppState) -> Router {
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
        .with_state(state)
}
