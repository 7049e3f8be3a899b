//! Every request's way in, in one place ahead of the router: its request id,
//! the scope it needs, panics turned into 500s, and, once its headers are
//! ready, its count and latency and its line in the request log.
//!
//! This was a stack of tower layers (request id set and propagated, trace,
//! catch-panic, two `from_fn` middlewares) wrapped around every route. Each
//! request then cloned and dropped every layer's state, the whole
//! `AppState` twice among it: on 4 KiB hits that stack took more of the
//! node's CPU than hyper did. Here it is one future, and blob reads (the
//! requests that come by the thousand) go straight to their handler
//! without the router's matching, cloning and header-map copy.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use tower::ServiceExt;
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use super::{access_log, auth, blobs};

pub const REQUEST_ID: &str = "x-request-id";

/// The HTTP API: `AppState`'s routes behind the request's way in.
#[derive(Clone, Debug)]
pub struct Front {
    state: AppState,
    router: Router,
}

impl Front {
    pub fn new(state: AppState, router: Router) -> Self {
        Front { state, router }
    }

    /// Answer one request.
    pub async fn call(&self, mut req: Request) -> Response {
        let started = Instant::now();
        let id = match usable_id(req.headers()) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let route = route_of(req.uri().path());
        let method = method_label(req.method());
        let (req_method, uri) = (req.method().clone(), req.uri().clone());
        // Lines logged while a request is handled carry its id and route in
        // this span. Blob reads, the requests that come by the thousand, get
        // it at DEBUG only: at INFO it would cost a hit an eighth of its
        // CPU. Their request line has the same fields.
        let read = route == BLOB && matches!(*req.method(), Method::GET | Method::HEAD);
        macro_rules! request_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "request",
                    method = %req.method(),
                    uri = %req.uri(),
                    route,
                    request_id = id.to_str().unwrap_or(""),
                )
            };
        }
        let span = if read {
            request_span!(tracing::Level::DEBUG)
        } else {
            request_span!(tracing::Level::INFO)
        };
        let answer = AssertUnwindSafe(self.answer(req, route).instrument(span.clone())).catch_unwind();
        let mut resp = match answer.await {
            Ok(resp) => resp,
            Err(_) => {
                span.in_scope(|| tracing::error!("handler panicked"));
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
            }
        };
        resp.headers_mut().insert(REQUEST_ID, id);
        let latency = started.elapsed();
        self.state.http_metrics.record(route, method, resp.status(), latency);
        if self.state.http.access_log {
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
            let entry = access_log::Entry {
                method: req_method.as_str(),
                uri: &uri,
                route,
                request_id: resp
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                status: resp.status().as_u16(),
                latency,
                bytes: header("content-length"),
                cache: header("x-cache"),
            };
            access_log::log(&entry, &span);
        }
        resp
    }

    /// The answer of the route, once the request may have it.
    async fn answer(&self, req: Request, route: &'static str) -> Response {
        if let Some(refused) = auth::check(&self.state, &req) {
            return refused;
        }
        if route == BLOB
            && let Some(raw) = req.uri().path().strip_prefix("/blobs/")
            // Percent-escapes are the router's to decode.
            && !raw.contains('%')
        {
            match *req.method() {
                Method::GET => return blobs::get(&self.state, raw, req.headers()).await.into_response(),
                Method::HEAD => return blobs::head(&self.state, raw, req.headers()).await.into_response(),
                _ => {}
            }
        }
        let Ok(resp) = self.router.clone().oneshot(req).await;
        resp
    }
}

/// The client's `X-Request-Id` when it sent a usable one: not empty, at most 128 bytes.
fn usable_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(REQUEST_ID).filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The client's `X-Request-Id` when it sent a usable one, else a new one
/// (for answers made before a request reaches [`Front`]).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    usable_id(headers).cloned().unwrap_or_else(new_request_id)
}

/// A new request id: a random UUID (version 4) from the thread's generator
/// (`getrandom(2)` for each would be a system call per request).
fn new_request_id() -> HeaderValue {
    uuid_v4(rand::random())
}

/// `bits` as a version 4 UUID in its text form.
fn uuid_v4(bits: u128) -> HeaderValue {
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
    HeaderValue::from_bytes(&text).expect("hex digits and dashes")
}

const BLOB: &str = "/blobs/{key}";

/// The route pattern a path matches, as the router has it (the label of
/// metrics and logs: never the path itself, which holds a key), or
/// `unmatched`. `routes_are_the_routers` below holds the two together.
fn route_of(path: &str) -> &'static str {
    let mut parts = path.strip_prefix('/').unwrap_or("\0").split('/');
    let route = match (parts.next(), parts.next(), parts.next()) {
        (Some("blobs"), None, _) => "/blobs",
        (Some("blobs"), Some(k), None) if !k.is_empty() => BLOB,
        // (The router takes an empty key here, and refuses it as a key.)
        (Some("blobs"), Some(_), Some("status")) => "/blobs/{key}/status",
        (Some("healthz"), None, _) => "/healthz",
        (Some("readyz"), None, _) => "/readyz",
        (Some("stats"), None, _) => "/stats",
        (Some("metrics"), None, _) => "/metrics",
        (Some("cluster"), None, _) => "/cluster",
        (Some("cluster"), Some("tombstones"), None) => "/cluster/tombstones",
        (Some("events"), Some("s3"), None) => "/events/s3",
        (Some("warm"), None, _) => "/warm",
        (Some("warm"), Some(id), None) if !id.is_empty() => "/warm/{id}",
        _ => return "unmatched",
    };
    if parts.next().is_some() { "unmatched" } else { route }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::MatchedPath;
    use axum::routing::any;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = uuid_v4(u128::MAX);
        assert_eq!(id.to_str().unwrap(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4(0);
        assert_eq!(id.to_str().unwrap(), "00000000-0000-4000-8000-000000000000");
        let id = uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.to_str().unwrap(), "01234567-89ab-4def-8123-456789abcdef");
    }

    /// The labels `route_of` gives are the patterns the router matches, for
    /// every route and for paths near them.
    #[tokio::test]
    async fn routes_are_the_routers() {
        let mut router = Router::new();
        for route in super::super::ROUTES {
            router = router.route(route, any(|p: MatchedPath| async move { p.as_str().to_owned() }));
        }
        let router = router.fallback(|| async { "unmatched" });
        let paths = [
            "/blobs",
            "/blobs/",
            "/blobs/abc",
            "/blobs/abc/",
            "/blobs/abc/status",
            "/blobs/abc/status/",
            "/blobs/abc/other",
            "/blobs//status",
            "/healthz",
            "/healthz/",
            "/healthz/x",
            "/readyz",
            "/stats",
            "/metrics",
            "/cluster",
            "/cluster/tombstones",
            "/cluster/x",
            "/events/s3",
            "/events",
            "/warm",
            "/warm/",
            "/warm/j1",
            "/warm/j1/x",
            "/",
            "",
            "/nowhere",
            "//blobs",
        ];
        for path in paths {
            let uri = if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            };
            let req = Request::builder().uri(&uri).body(Body::empty()).unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
            let want = if path.is_empty() { route_of("/") } else { route_of(path) };
            assert_eq!(std::str::from_utf8(&body).unwrap(), want, "{path:?}");
        }
    }
}
