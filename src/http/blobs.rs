//! Handlers of `/blobs`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;

use super::AppState;
use super::error::{ApiError, PathParam};
use super::range::{self, RangeRequest};
use crate::blobs::{BlobStatus, Deleted, Found, Location, PutRequest, Reach, Read, Source};
use crate::cluster::{ForwardedPut, Hop};
use crate::key::BlobKey;

const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const DURABILITY: HeaderName = HeaderName::from_static("x-blob-durability");

fn parse_key(raw: &str) -> Result<BlobKey, ApiError> {
    raw.parse().map_err(|_| ApiError::invalid_key(raw))
}

fn etag(key: &BlobKey) -> String {
    format!("\"{key}\"")
}

/// The ETag as a header value, without `format!`'s machinery (it is on every hit).
fn etag_value(key: &BlobKey) -> HeaderValue {
    let mut quoted = [b'"'; 34];
    hex::encode_to_slice(key.as_bytes(), &mut quoted[1..33]).expect("32 hex digits");
    HeaderValue::from_bytes(&quoted).expect("quoted hex")
}

/// Whether an `If-None-Match` list names this blob (weak comparison, `*` included).
fn none_match(headers: &HeaderMap, key: &BlobKey) -> bool {
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return false;
    }
    let ours = key.to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag.trim_matches('"').eq_ignore_ascii_case(&ours)
        })
}

/// Whether `If-Range` (if any) still allows a partial answer: only our strong ETag does.
fn if_range_holds(headers: &HeaderMap, key: &BlobKey) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == etag(key),
    }
}

fn durability(pending: bool) -> HeaderValue {
    HeaderValue::from_static(if pending { "pending" } else { "stored" })
}

fn blob_headers(state: &AppState, headers: &mut HeaderMap, opened: &Found) {
    headers.reserve(10);
    headers.insert(header::ETAG, etag_value(&opened.key));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CACHE_CONTROL, state.http.cache_control.clone());
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // Blobs are anyone's bytes: a browser must not run one as a page.
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let cache = match opened.source() {
        Source::Cache | Source::Spool => "hit",
        Source::Peer => "peer",
        Source::Store => "miss",
    };
    headers.insert(X_CACHE, HeaderValue::from_static(cache));
    headers.insert(DURABILITY, durability(pending(state, opened)));
}

/// A blob served from a spool (this node's or a peer's), or still queued, has not reached the store yet.
fn pending(state: &AppState, opened: &Found) -> bool {
    match &opened.location {
        Location::Spool(_) => true,
        Location::Peer(blob) => blob.pending,
        _ => state.blobs.is_pending(&opened.key),
    }
}

/// Whether a GET wants the whole body whatever the blob (no range, no validator).
fn whole_body(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::RANGE) && !headers.contains_key(header::IF_NONE_MATCH)
}

/// How far a read looks: a request a peer forwarded never goes to a peer again.
fn reach(headers: &HeaderMap) -> Reach {
    match Hop::of(headers) {
        None => Reach::Everywhere,
        Some(Hop::Owner) => Reach::AsOwner,
        Some(Hop::Local) => Reach::Local,
    }
}

pub async fn get_blob(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
    req_headers: HeaderMap,
) -> Result<Response, ApiError> {
    get(&state, &raw, &req_headers).await
}

/// A GET of the blob `raw` names (`front` calls it straight for paths with no escapes).
pub async fn get(state: &AppState, raw: &str, req_headers: &HeaderMap) -> Result<Response, ApiError> {
    let key = parse_key(raw)?;
    let opened = match forwards(state, req_headers) {
        // A hit here needs no owner; a miss goes to the owner in one request,
        // its answer streamed on as it comes.
        Some(cluster) => match state.blobs.find_here(&key).await? {
            Some(found) => found,
            None => match cluster.owner(&key) {
                Some(owner) => match cluster.forward_get(&owner, &key, req_headers).await {
                    Ok(answer) => return Ok(relay_get(state, answer)),
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "the owner could not be reached; reading on without it");
                        state.blobs.open(&key, Reach::Everywhere).await?
                    }
                },
                None => state.blobs.open(&key, Reach::Everywhere).await?,
            },
        },
        None if whole_body(req_headers) => state.blobs.open_whole(&key, reach(req_headers)).await?,
        None => state.blobs.open(&key, reach(req_headers)).await?,
    };
    let size = opened.size;
    let mut resp = Response::new(Body::empty());
    blob_headers(state, resp.headers_mut(), &opened);
    if none_match(req_headers, &key) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp.headers_mut().remove(header::CONTENT_TYPE);
        return Ok(resp);
    }
    let wanted = match req_headers.get(header::RANGE).map(|v| v.to_str()) {
        Some(Ok(v)) if if_range_holds(req_headers, &key) => range::parse(v, size),
        Some(Err(_)) => RangeRequest::Malformed,
        _ => RangeRequest::Full,
    };
    let range = match &wanted {
        RangeRequest::Full => 0..size,
        RangeRequest::Partial(r) => r.clone(),
        RangeRequest::Unsatisfiable | RangeRequest::Malformed => {
            let malformed = wanted == RangeRequest::Malformed;
            let (code, message) = if malformed {
                ("invalid_range", "the Range header is not a valid byte range")
            } else {
                ("range_not_satisfiable", "the requested range lies outside the blob")
            };
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                code,
                format!("{message} (size {size})"),
            )
            .with_header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
            ));
        }
    };
    // A range that covers the whole blob is still answered as a range (RFC 9110 §14.2 allows either;
    // a client that asked for `bytes=0-` gets the Content-Range it can check).
    if matches!(wanted, RangeRequest::Partial(_)) {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {}-{}/{}", range.start, range.end - 1, size);
        resp.headers_mut()
            .insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ASCII"));
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(range.end - range.start));
    *resp.body_mut() = match state.blobs.read_body(opened, range).await? {
        Read::Whole(bytes) => Body::from(bytes),
        Read::Stream(stream) => Body::from_stream(stream),
    };
    Ok(resp)
}

/// The cluster a client's GET that misses here is sent on through (to the
/// blob's owner), unless a peer sent it or this node keeps copies of what it
/// reads from owners (then it reads the blob through its own cache).
fn forwards<'a>(state: &'a AppState, headers: &HeaderMap) -> Option<&'a std::sync::Arc<crate::cluster::Cluster>> {
    let cluster = state.blobs.cluster()?;
    (Hop::of(headers).is_none() && !cluster.config().peer_copies).then_some(cluster)
}

/// The owner's answer to a forwarded GET, as the client's.
fn relay_get(state: &AppState, answer: crate::cluster::Forwarded) -> Response {
    let crate::cluster::Forwarded { status, headers, body } = answer;
    let found = status.is_success() || status == StatusCode::NOT_MODIFIED;
    let bytes_out = state
        .blobs
        .count_forwarded((found || status == StatusCode::NOT_FOUND).then_some(found));
    let body = body.inspect(move |part| {
        if let Ok(bytes) = part {
            bytes_out.inc_by(bytes.len() as u64);
        }
    });
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if found {
        resp.headers_mut().insert(X_CACHE, HeaderValue::from_static("peer"));
    }
    resp
}

pub async fn head_blob(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    head(&state, &raw, &headers).await
}

/// A HEAD of the blob `raw` names.
pub async fn head(state: &AppState, raw: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let key = parse_key(raw)?;
    let opened = state.blobs.open(&key, reach(headers)).await?;
    let mut resp = Response::new(Body::empty());
    blob_headers(state, resp.headers_mut(), &opened);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(opened.size));
    Ok(resp)
}

fn content_md5(headers: &HeaderMap) -> Result<Option<BlobKey>, ApiError> {
    let Some(v) = headers.get("content-md5") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_content_md5",
            "Content-MD5 must be the base64 of a 16-byte MD5 digest",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.as_bytes())
        .map_err(|_| bad())?;
    let bytes: [u8; 16] = raw.try_into().map_err(|_| bad())?;
    Ok(Some(BlobKey::from_bytes(bytes)))
}

/// `X-Blob-Durability: stored` asks for an answer only once the store has the blob.
fn wants_store(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(DURABILITY).map(|v| v.to_str().unwrap_or("")) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("stored") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("pending") => Ok(false),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_durability",
            "X-Blob-Durability on a PUT is `stored` (answer once the store has the blob) or `pending`",
        )),
    }
}

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn store(
    state: &AppState,
    expected: Option<BlobKey>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = PutRequest {
        expected,
        content_md5: content_md5(headers)?,
        declared_len: declared_len(headers),
        write_through: wants_store(headers)?,
    };
    // The connection layer ends a body that stalls (`--body-timeout`, or a second once shutting down).
    let mut body = Box::pin(body.into_data_stream().map(|r| r.map_err(axum::BoxError::from)));
    // A PUT goes to the blob's owner, where reads will look; one a peer sent is never sent on.
    if let (Some(key), Some(cluster), None) = (expected, state.blobs.cluster(), Hop::of(headers))
        && let Some(owner) = cluster.owner(&key)
    {
        match cluster.forward_put(&owner, &key, headers, body).await {
            ForwardedPut::Answer(resp) => return Ok(relay(resp).await),
            ForwardedPut::Failed(e) => return Err(crate::blobs::BlobError::Peer(e).into()),
            // The owner could not be reached: this node takes the blob; the
            // owner finds it here (it asks its peers before answering 404).
            ForwardedPut::NotSent(untouched, e) => {
                tracing::warn!(%key, error = %e, "the owner could not be reached; storing the blob here");
                body = untouched;
            }
        }
    }
    let outcome = state.blobs.put(req, body).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/blobs/{}", outcome.md5);
    let mut resp = (status, Json(outcome)).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).expect("ASCII"));
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&etag(&outcome.md5)).expect("ASCII"));
    resp.headers_mut()
        .insert(DURABILITY, durability(state.blobs.is_pending(&outcome.md5)));
    Ok(resp)
}

/// The owner's answer to a forwarded PUT, passed on as it is (a small JSON body).
async fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = crate::cluster::relayed_headers(resp.headers());
    match resp.bytes().await {
        Ok(body) => {
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer_error",
            format!(
                "the owner's answer broke off: {}; the upload may or may not be stored, retry it",
                crate::error_chain(&e)
            ),
        )
        .into_response(),
    }
}

pub async fn put_blob(
    State(state): State<AppState>,
    PathParam(raw): PathParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = parse_key(&raw)?;
    store(&state, Some(key), &headers, body).await
}

pub async fn post_blob(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    store(&state, None, &headers, body).await
}

/// 204 once the blob is gone everywhere; 202 when the store could not take
/// the delete now: it is gone from the cluster's caches and spools, and
/// queued on disk for the store.
pub async fn delete_blob(State(state): State<AppState>, PathParam(raw): PathParam) -> Result<Response, ApiError> {
    let key = parse_key(&raw)?;
    Ok(match state.blobs.delete(&key).await? {
        Deleted::Done => StatusCode::NO_CONTENT.into_response(),
        Deleted::Queued => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "md5": key,
                "queued": true,
                "message": "deleted from the cache; the store cannot be reached, so its delete is queued and sent when it answers",
            })),
        )
            .into_response(),
    })
}

/// 200 with where the blob is; 404 when it is nowhere (never stored, or
/// deleted), as for a GET, with the same fields beside the error's, so a
/// client reading the flags can still read them.
pub async fn blob_status(State(state): State<AppState>, PathParam(raw): PathParam) -> Result<Response, ApiError> {
    let key = parse_key(&raw)?;
    let status = state.blobs.status(&key).await;
    if !status.is_nowhere() {
        return Ok(Json(status).into_response());
    }
    Ok((StatusCode::NOT_FOUND, Json(nowhere(status))).into_response())
}

fn nowhere(status: BlobStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).expect("a plain struct");
    body["error"] = "not_found".into();
    body["message"] = "no blob with this key: not on this node, nor in the store".into();
    body
}
