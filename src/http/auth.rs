//! The auth layer: which scope each request needs, and the 401/403 answers.
//! `/healthz` and `/readyz` are always open (probes carry no token); so are
//! `/metrics` and `/stats` unless `--metrics-access admin`. A request marked
//! as coming from a peer (`X-Blobcache-Hop`) needs the `peer` scope, so a
//! client cannot pass itself off as a node of the cluster. With
//! `--tls-client-ca`, a connection that showed no client certificate reaches
//! the probes only.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::auth::{Caller, MetricsAccess, Scope};
use crate::cluster::HOP;
use crate::tls::ClientCertificate;

/// The scope a request needs, or `None` for an open one.
fn needed(method: &Method, path: &str, from_peer: bool, metrics: MetricsAccess) -> Option<Scope> {
    if path == "/healthz" || path == "/readyz" {
        return None;
    }
    if from_peer {
        return Some(Scope::Peer);
    }
    let read_or_write = || match *method {
        Method::GET | Method::HEAD => Some(Scope::Read),
        _ => Some(Scope::Write),
    };
    match path {
        "/metrics" | "/stats" => (metrics == MetricsAccess::Admin).then_some(Scope::Admin),
        "/cluster" => Some(Scope::Admin),
        "/cluster/tombstones" => Some(Scope::Peer),
        "/events/s3" => Some(Scope::Delete),
        "/warm" => Some(Scope::Write),
        p if p.starts_with("/warm/") => read_or_write(),
        p if p == "/blobs" || p.starts_with("/blobs/") => match *method {
            Method::DELETE => Some(Scope::Delete),
            _ => read_or_write(),
        },
        // Unknown routes answer 404 whoever asks.
        _ => None,
    }
}

/// The answer refusing `req`, or `None` when it may go on.
pub fn check(state: &AppState, req: &Request) -> Option<Response> {
    let auth = &state.auth;
    let path = req.uri().path();
    if let Some(ClientCertificate { verified: false }) = req.extensions().get::<ClientCertificate>()
        && path != "/healthz"
        && path != "/readyz"
    {
        return Some(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "client_certificate_required",
                "this node asks for a client certificate (--tls-client-ca) and the connection showed none",
            )
            .into_response(),
        );
    }
    let from_peer = req.headers().contains_key(HOP);
    let scope = needed(req.method(), path, from_peer, auth.config().metrics_access)?;
    let caller = match auth.identify(req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        Ok(caller) => caller,
        Err(refused) => {
            tracing::info!(reason = %refused, "credential refused");
            return Some(unauthorized(&refused.to_string()));
        }
    };
    if auth.allows(&caller, scope) {
        return None;
    }
    Some(match caller {
        Caller::Anonymous => unauthorized(&format!("this request needs a token with the {} scope", scope.name())),
        Caller::Token { name, .. } => {
            tracing::info!(token = %name, scope = scope.name(), "token lacks the scope");
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the token {name:?} lacks the {} scope this request needs", scope.name()),
            )
            .into_response()
        }
    })
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"blobcache\", Basic realm=\"blobcache\""),
        )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_scope() {
        let open = MetricsAccess::Open;
        let n = |m: Method, p: &str| needed(&m, p, false, open);
        assert_eq!(n(Method::GET, "/blobs/x"), Some(Scope::Read));
        assert_eq!(n(Method::HEAD, "/blobs/x"), Some(Scope::Read));
        assert_eq!(n(Method::GET, "/blobs/x/status"), Some(Scope::Read));
        assert_eq!(n(Method::PUT, "/blobs/x"), Some(Scope::Write));
        assert_eq!(n(Method::POST, "/blobs"), Some(Scope::Write));
        assert_eq!(n(Method::DELETE, "/blobs/x"), Some(Scope::Delete));
        assert_eq!(n(Method::POST, "/warm"), Some(Scope::Write));
        assert_eq!(n(Method::GET, "/warm/abc"), Some(Scope::Read));
        assert_eq!(n(Method::POST, "/events/s3"), Some(Scope::Delete));
        assert_eq!(n(Method::GET, "/cluster"), Some(Scope::Admin));
        assert_eq!(n(Method::GET, "/healthz"), None);
        assert_eq!(n(Method::GET, "/readyz"), None);
        assert_eq!(n(Method::GET, "/metrics"), None);
        assert_eq!(
            needed(&Method::GET, "/stats", false, MetricsAccess::Admin),
            Some(Scope::Admin)
        );
        assert_eq!(needed(&Method::GET, "/blobs/x", true, open), Some(Scope::Peer));
        assert_eq!(needed(&Method::GET, "/readyz", true, open), None);
        assert_eq!(n(Method::GET, "/nowhere"), None);
    }
}
