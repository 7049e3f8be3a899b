//! The one place that maps errors to HTTP statuses and JSON error bodies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

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

impl From<BlobError> for ApiError {
    fn from(err: BlobError) -> Self {
        use StatusCode as S;
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
            e @ BlobError::UploadAborted(_) => {
                tracing::info!(error = %crate::error_chain(e), "upload aborted by the client");
                ApiError::new(
                    S::BAD_REQUEST,
                    "upload_aborted",
                    "the request body ended early; nothing was stored",
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
