//! The one place that maps errors to HTTP statuses and JSON error bodies.

use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath, Path};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::server::{BodyTimeout, Refusal};
use crate::blobs::BlobError;
use crate::replication::SpoolError;
use crate::store::StoreErrorKind;

/// An error answer: `{"error": "<code>", "message": "<human text>"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra headers some errors carry (`Content-Range` on 416, `Allow`, `Retry-After`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn invalid_key(raw: &str) -> Self {
        let shown: String = raw.chars().take(80).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("{shown:?} is not a blob key: a key is exactly 32 hexadecimal digits (the MD5 of the content)"),
        )
    }

    pub fn route_not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; blobs live at /blobs/{md5}",
        )
    }

    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    /// The answer of a node at its connection limit, to all but its probes.
    pub fn overloaded() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node is at its connection limit; retry shortly, or on another node",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// A route's one path parameter, percent-decoded; when the decoded bytes are
/// not UTF-8 (no key or job id is), the parameter as sent, still
/// percent-encoded, so the handler's own check refuses it with its JSON error
/// instead of axum answering in plain text.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(Path(value)) = Path::<String>::from_request_parts(parts, state).await {
            return Ok(PathParam(value));
        }
        // The segment of the request path where the route has its parameter.
        let route = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned());
        let raw = route
            .and_then(|route| {
                let at = route.split('/').position(|s| s.starts_with('{'))?;
                parts.uri.path().split('/').nth(at).map(str::to_owned)
            })
            .unwrap_or_default();
        Ok(PathParam(raw))
    }
}

/// Request heads refused before any handler saw them (`http::server`).
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        use StatusCode as S;
        match r {
            Refusal::HeaderTimeout(t) => ApiError::new(
                S::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request headers did not arrive within {}",
                    humantime::format_duration(t)
                ),
            ),
            Refusal::HeadTooLarge(n) => ApiError::new(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("the request line and headers take more than {n} bytes"),
            ),
            Refusal::TargetTooLong(n) => ApiError::new(
                S::URI_TOO_LONG,
                "uri_too_long",
                format!("the request line is longer than {n} bytes"),
            ),
            Refusal::TooManyHeaders(n) => ApiError::new(
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too_many_headers",
                format!("a request has at most {n} header fields"),
            ),
            Refusal::Malformed(what) => ApiError::new(
                S::BAD_REQUEST,
                "bad_request",
                format!("not a valid HTTP/1 request: {what}"),
            ),
            Refusal::UnsupportedVersion => ApiError::new(
                S::HTTP_VERSION_NOT_SUPPORTED,
                "unsupported_version",
                "this server speaks HTTP/1.0, HTTP/1.1, and HTTP/2 with prior knowledge",
            ),
            Refusal::InvalidContentLength => ApiError::new(
                S::BAD_REQUEST,
                "invalid_content_length",
                "Content-Length must be one header holding one decimal number",
            ),
            Refusal::ContentLengthTooLarge => ApiError::new(
                S::PAYLOAD_TOO_LARGE,
                "too_large",
                "the Content-Length is beyond any body this server takes; nothing was stored",
            ),
            Refusal::AmbiguousLength => ApiError::new(
                S::BAD_REQUEST,
                "ambiguous_length",
                "a request has Content-Length or Transfer-Encoding, not both",
            ),
            Refusal::UnsupportedTransferEncoding => ApiError::new(
                S::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                "the only transfer coding this server takes is chunked",
            ),
            Refusal::InvalidTransferEncoding => ApiError::new(
                S::BAD_REQUEST,
                "invalid_transfer_encoding",
                "Transfer-Encoding must be chunked, once, in an HTTP/1.1 request",
            ),
            Refusal::InvalidHost(why) => ApiError::new(S::BAD_REQUEST, "invalid_host", why),
            Refusal::Connect => ApiError::new(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "CONNECT is not served: this server is not a proxy",
            ),
        }
    }
}

/// The answer to a request body that stopped arriving (`BodyTimeout`
/// somewhere in the error's chain); `outcome` says what was not done.
pub fn stalled_body(e: &(dyn std::error::Error + 'static), outcome: &str) -> Option<ApiError> {
    let t = body_timeout(e)?;
    tracing::info!(error = %t, "request cut: its client stalled");
    Some(ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!("{t}; {outcome}"),
    ))
}

fn body_timeout<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    std::iter::successors(Some(e), |e| e.source()).find_map(|e| e.downcast_ref::<BodyTimeout>())
}

/// Whether the process ran out of file descriptors (many connections at once):
/// a reason to retry, not an internal error.
fn out_of_descriptors(err: &BlobError) -> bool {
    match err.root() {
        BlobError::Io { source, .. } | BlobError::Spool(SpoolError::Io(source)) => {
            matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        }
        _ => false,
    }
}

impl From<BlobError> for ApiError {
    fn from(err: BlobError) -> Self {
        use StatusCode as S;
        if out_of_descriptors(&err) {
            tracing::warn!(error = %crate::error_chain(&err), "out of file descriptors");
            return ApiError::overloaded();
        }
        if err.is_no_space() {
            tracing::error!(error = %crate::error_chain(&err), "this node's disk is full");
            return ApiError::new(
                S::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                "this node's disk is full; nothing was stored or changed. Retry later or on another node",
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        match err.root() {
            BlobError::NotFound => ApiError::new(S::NOT_FOUND, "not_found", "no blob with this key"),
            e @ (BlobError::DigestMismatch { .. } | BlobError::ContentMd5Mismatch { .. }) => {
                ApiError::new(S::BAD_REQUEST, "digest_mismatch", format!("{e}; nothing was stored"))
            }
            e @ BlobError::TooLarge { .. } => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, "too_large", format!("{e}; nothing was stored"))
            }
            e @ BlobError::SpoolFull { .. } => {
                tracing::warn!(error = %e, "refused an upload: the spool is full");
                ApiError::new(S::SERVICE_UNAVAILABLE, "spool_full", format!("{e}; nothing was stored"))
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
            }
            BlobError::UploadAborted(e) if body_timeout(e.as_ref()).is_some() => {
                stalled_body(e.as_ref(), "nothing was stored").expect("matched")
            }
            e @ BlobError::UploadAborted(_) => {
                tracing::info!(error = %crate::error_chain(e), "upload aborted by the client");
                ApiError::new(
                    S::BAD_REQUEST,
                    "upload_aborted",
                    "the request body ended early, or its chunked framing was broken; nothing was stored",
                )
            }
            BlobError::Store(s) => match s.kind() {
                StoreErrorKind::NotFound => ApiError::new(S::NOT_FOUND, "not_found", "no blob with this key"),
                StoreErrorKind::Unavailable => {
                    tracing::warn!(error = %crate::error_chain(s), "store unavailable");
                    ApiError::new(
                        S::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the persistent store cannot be reached; try again",
                    )
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
                }
                StoreErrorKind::Denied => {
                    tracing::error!(error = %crate::error_chain(s), "store refused the request");
                    ApiError::new(
                        S::BAD_GATEWAY,
                        "store_denied",
                        "the persistent store refused the request",
                    )
                }
                StoreErrorKind::Permanent => {
                    tracing::error!(error = %crate::error_chain(s), "store request failed");
                    ApiError::new(S::BAD_GATEWAY, "store_error", "the persistent store failed the request")
                }
            },
            BlobError::Peer(e) => {
                tracing::warn!(error = %e, "peer failed");
                ApiError::new(
                    S::BAD_GATEWAY,
                    "peer_error",
                    format!("the node that holds this blob failed: {e}; try again"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            // Already logged where it was found.
            BlobError::Integrity { .. }
            | BlobError::ShortRead { .. }
            | BlobError::ChunkIntegrity { .. }
            | BlobError::Spool(SpoolError::Damaged { .. }) => ApiError::new(
                S::BAD_GATEWAY,
                "integrity_error",
                "a copy of this blob is damaged; it was not served",
            ),
            e @ (BlobError::Cache(_)
            | BlobError::Io { .. }
            | BlobError::Spool(SpoolError::Io(_))
            | BlobError::FillAborted
            | BlobError::Shared(_)) => {
                tracing::error!(error = %crate::error_chain(e), "request failed");
                ApiError::internal()
            }
        }
    }
}
