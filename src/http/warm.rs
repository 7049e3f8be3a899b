//! Handlers of `/warm`: start a warm-up job from a list of MD5s, and report how far it got.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::StreamExt;

use super::AppState;
use super::error::{ApiError, PathParam};
use crate::key::BlobKey;
use crate::warm::{KEEP_JOBS, WarmError};

/// The largest list taken, in bytes (10,000 MD5s as JSON take about 350 KB).
pub const MAX_BODY: usize = 1 << 20;

/// `POST /warm`: a JSON array of MD5s (`Content-Type: application/json`), or
/// text with one MD5 a line (any other type). Every key is checked before a
/// job starts; the job runs in the background.
pub async fn start(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let body = read_body(&headers, body).await?;
    let keys = if is_json(&headers) {
        parse_json(&body)?
    } else {
        parse_text(&body)?
    };
    let job = state.warm.start(keys).map_err(refused)?;
    let location = HeaderValue::from_str(&format!("/warm/{}", job.id)).expect("hex id");
    let body = serde_json::json!({ "id": job.id, "total": job.total });
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body)).into_response())
}

/// `GET /warm/{id}`.
pub async fn status(State(state): State<AppState>, PathParam(id): PathParam) -> Result<Response, ApiError> {
    let Some(job) = state.warm.status(&id) else {
        let shown: String = id.chars().take(40).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no warm-up job {shown:?} on this node (jobs are kept in memory, the last {KEEP_JOBS}, and not across restarts)"
            ),
        ));
    };
    // Progress changes from one poll to the next: no cache in front may keep it.
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    Ok((no_store, Json(job)).into_response())
}

fn refused(e: WarmError) -> ApiError {
    match e {
        WarmError::TooManyKeys { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
        WarmError::Busy { .. } => {
            tracing::warn!(error = %e, "refused a warm-up job");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too_many_jobs", e.to_string())
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("10"))
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("a warm-up list is at most {MAX_BODY} bytes; split it into several jobs"),
    )
}

/// The whole body, refused as soon as it is known to be over `MAX_BODY`.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<BytesMut, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let mut stream = body.into_data_stream();
    while let Some(part) = stream.next().await {
        let part = part.map_err(|e| {
            if let Some(stalled) = super::error::stalled_body(&e, "no job was started") {
                return stalled;
            }
            tracing::info!(error = %crate::error_chain(&e), "warm-up list aborted by the client");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload_aborted",
                "the request body ended early; no job was started",
            )
        })?;
        if buf.len() + part.len() > MAX_BODY {
            return Err(too_large());
        }
        buf.extend_from_slice(&part);
    }
    Ok(buf)
}

/// `application/json`, whatever its parameters and case.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn invalid_body(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// A bad key, named with where it is in the list; no job is started.
fn invalid_key(place: String, raw: &str) -> ApiError {
    let mut e = ApiError::invalid_key(raw);
    e.message = format!("{place}: {}; no job was started", e.message);
    e
}

fn parse_json(body: &[u8]) -> Result<Vec<BlobKey>, ApiError> {
    let items: Vec<String> = serde_json::from_slice(body)
        .map_err(|e| invalid_body(format!("the body is not a JSON array of MD5 strings: {e}")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| raw.parse().map_err(|_| invalid_key(format!("item {i}"), raw)))
        .collect()
}

/// One MD5 a line; `#` starts a comment to the end of its line; blank lines are skipped.
fn parse_text(body: &[u8]) -> Result<Vec<BlobKey>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| invalid_body(format!("the body is not UTF-8 text: {e}")))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
        if !line.is_empty() {
            keys.push(line.parse().map_err(|_| invalid_key(format!("line {}", n + 1), line))?);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "d41d8cd98f00b204e9800998ecf8427e";
    const B: &str = "5d41402abc4b2a76b9719d911017c592";

    fn keys(list: &[&str]) -> Vec<BlobKey> {
        list.iter().map(|k| k.parse().unwrap()).collect()
    }

    #[test]
    fn text_lists_skip_comments_and_blanks() {
        let text = format!(
            "# droplets\n{A}\n\n  \t\n{}  # upper case\r\n\t{A}\t\n",
            B.to_uppercase()
        );
        assert_eq!(parse_text(text.as_bytes()).unwrap(), keys(&[A, B, A]));
        assert!(parse_text(b"").unwrap().is_empty());
        let e = parse_text(format!("{A}\n# fine\nnot-an-md5 # comment\n").as_bytes()).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_key"));
        assert!(e.message.starts_with("line 3: \"not-an-md5\""), "{}", e.message);
        let e = parse_text(b"\xff\xfe").unwrap_err();
        assert_eq!(e.code, "invalid_body");
    }

    #[test]
    fn json_lists_are_arrays_of_strings() {
        let body = serde_json::to_vec(&[A, B]).unwrap();
        assert_eq!(parse_json(&body).unwrap(), keys(&[A, B]));
        let e = parse_json(format!("[\"{A}\", \"{A}0\"]").as_bytes()).unwrap_err();
        assert_eq!(e.code, "invalid_key");
        assert!(e.message.starts_with(&format!("item 1: \"{A}0\"")), "{}", e.message);
        for bad in [&b"{\"keys\": []}"[..], b"[1, 2]", b"not json", b""] {
            assert_eq!(parse_json(bad).unwrap_err().code, "invalid_body", "{bad:?}");
        }
    }

    #[test]
    fn json_is_told_by_its_media_type() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
