//! The cluster's endpoints: `GET /cluster` (this node's view), the peer
//! endpoints for deletions (`/cluster/tombstones`), and `POST /events/s3`,
//! S3 event notifications that invalidate blobs deleted behind our back.

use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::cluster::TombstoneRecord;
use crate::key::BlobKey;
use crate::store::Store;

/// The largest event notification body taken (S3 sends one record per event).
const EVENT_BODY_LIMIT: usize = 1 << 20;

#[derive(Debug, Deserialize)]
pub struct ClusterQuery {
    md5: Option<String>,
}

/// A query string as `T`, or 400 `invalid_query` in the JSON error shape
/// (axum's own rejection is plain text): a parameter given twice, or not of its type.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

/// `GET /cluster[?md5=]`: this node, its peers and their health, and a blob's owner.
pub async fn view(
    State(state): State<AppState>,
    q: Result<Query<ClusterQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let key = match q.md5.as_deref() {
        Some(raw) => Some(raw.parse::<BlobKey>().map_err(|_| ApiError::invalid_key(raw))?),
        None => None,
    };
    Ok(Json(match state.blobs.cluster() {
        Some(cluster) => cluster.view(key.as_ref()),
        None => {
            let mut v = json!({ "node": null, "peers": "", "members": [] });
            if let Some(key) = key {
                v["md5"] = json!(key);
                v["owner"] = Value::Null;
                v["order"] = json!([]);
            }
            v
        }
    }))
}

#[derive(Debug, Deserialize)]
pub struct SinceQuery {
    since_us: Option<String>,
}

/// `GET /cluster/tombstones?since_us=`: the deletions this node recorded since then.
pub async fn tombstones(
    State(state): State<AppState>,
    q: Result<Query<SinceQuery>, QueryRejection>,
) -> Result<Json<Vec<TombstoneRecord>>, ApiError> {
    let q = query(q)?;
    let since_us = match q.since_us.as_deref() {
        None => 0,
        Some(raw) => raw.parse::<u64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("since_us={raw:?} is not a time in µs since the Unix epoch"),
            )
        })?,
    };
    let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(since_us);
    Ok(Json(state.blobs.deletions_since(since)))
}

/// `POST /cluster/tombstones`: deletions a peer made; applied here.
pub async fn take_tombstones(State(state): State<AppState>, body: Body) -> Result<StatusCode, ApiError> {
    let body = axum::body::to_bytes(body, EVENT_BODY_LIMIT)
        .await
        .map_err(|_| bad_body("the body is not readable or larger than 1 MiB"))?;
    let records: Vec<TombstoneRecord> =
        serde_json::from_slice(&body).map_err(|e| bad_body(format!("expected a JSON list of {{md5, at_us}}: {e}")))?;
    let records: Vec<_> = records.iter().map(|r| (r.md5, r.at())).collect();
    state.blobs.learn_deletions(&records, false).await;
    Ok(StatusCode::NO_CONTENT)
}

fn bad_body(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
}

fn bad_event(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", message)
}

/// One object event, whichever envelope it came in.
#[derive(Debug)]
struct ObjectEvent {
    removed: bool,
    bucket: String,
    key: String,
    at: Option<SystemTime>,
}

impl ObjectEvent {
    /// A message that names no object of ours; it is counted as ignored.
    fn other() -> Self {
        ObjectEvent {
            removed: false,
            bucket: String::new(),
            key: String::new(),
            at: None,
        }
    }
}

/// `POST /events/s3`: S3 event notifications, as S3 sends them (directly,
/// through SNS, or through EventBridge) and as MinIO's webhook target does.
/// `ObjectRemoved:*` of one of our blobs invalidates it on every node; other
/// events are ignored. Delivery is at least once and unordered: invalidating
/// twice, or after a newer PUT, is harmless (the tombstone carries the
/// event's time, and a copy verified after it stays).
pub async fn s3_events(State(state): State<AppState>, body: Body) -> Result<Json<Value>, ApiError> {
    let body = axum::body::to_bytes(body, EVENT_BODY_LIMIT)
        .await
        .map_err(|_| bad_event("the body is not readable or larger than 1 MiB"))?;
    let doc: Value = serde_json::from_slice(&body).map_err(|e| bad_event(format!("the body is not JSON: {e}")))?;
    let events = parse_events(&doc)?;
    let (mut invalidated, mut ignored) = (Vec::new(), 0);
    for event in events {
        let key = match (event.removed, state.store.blob_of_object(&event.bucket, &event.key)) {
            (true, Some(key)) => key,
            _ => {
                ignored += 1;
                continue;
            }
        };
        let at = event.at.unwrap_or_else(SystemTime::now);
        state.blobs.invalidate(&key, at).await?;
        tracing::info!(%key, bucket = %event.bucket, "invalidated by an S3 event");
        invalidated.push(key);
    }
    Ok(Json(json!({ "invalidated": invalidated, "ignored": ignored })))
}

fn parse_events(doc: &Value) -> Result<Vec<ObjectEvent>, ApiError> {
    // SNS: the S3 notification is a JSON text in "Message".
    if let Some(kind) = doc.get("Type").and_then(Value::as_str) {
        return match kind {
            "Notification" => {
                let message = doc
                    .get("Message")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_event("an SNS notification without a Message"))?;
                // A topic may carry other messages than S3's: those are not
                // ours to act on, and refusing them would not stop them.
                let inner = serde_json::from_str::<Value>(message)
                    .map_err(|e| bad_event(format!("the SNS Message is not JSON: {e}")))
                    .and_then(|inner| parse_events(&inner));
                match inner {
                    Ok(events) => Ok(events),
                    Err(e) => {
                        tracing::warn!(reason = %e.message, "ignored an SNS notification that is not an S3 event notification");
                        Ok(vec![ObjectEvent::other()])
                    }
                }
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                // Confirming means fetching a URL from the body; that stays an operator's step.
                let url = doc.get("SubscribeURL").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(
                    url,
                    "an SNS subscription asks to be confirmed: open its SubscribeURL to confirm"
                );
                Ok(Vec::new())
            }
            other => Err(bad_event(format!("unknown SNS message type {other:?}"))),
        };
    }
    // EventBridge: one event, with the object in "detail".
    if let Some(detail_type) = doc.get("detail-type").and_then(Value::as_str) {
        let detail = doc
            .get("detail")
            .ok_or_else(|| bad_event("an EventBridge event without detail"))?;
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(detail, |v, p| v.get(*p))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad_event(format!("an EventBridge event without detail.{}", path.join("."))))
        };
        return Ok(vec![ObjectEvent {
            removed: detail_type == "Object Deleted",
            bucket: field(&["bucket", "name"])?,
            // EventBridge object keys are not URL-encoded.
            key: field(&["object", "key"])?,
            at: doc.get("time").and_then(Value::as_str).and_then(parse_time),
        }]);
    }
    if doc.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let records = doc.get("Records").and_then(Value::as_array).ok_or_else(|| {
        bad_event("not an S3 event notification: no Records list (nor an SNS or EventBridge envelope)")
    })?;
    records.iter().enumerate().map(|(i, r)| parse_record(i, r)).collect()
}

fn parse_record(i: usize, r: &Value) -> Result<ObjectEvent, ApiError> {
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(r, |v, p| v.get(*p))
            .and_then(Value::as_str)
            .ok_or_else(|| bad_event(format!("Records[{i}] has no {}", path.join("."))))
    };
    let name = text(&["eventName"])?;
    // S3 writes "ObjectRemoved:Delete", MinIO "s3:ObjectRemoved:Delete".
    let removed = name.trim_start_matches("s3:").starts_with("ObjectRemoved:");
    let raw_key = text(&["s3", "object", "key"])?;
    // Object keys in S3 notifications are URL-encoded, spaces as '+'. One that
    // does not decode to UTF-8 names no blob of ours (those keys are ASCII), so
    // the lossy decoding only makes sure it is ignored.
    let key = percent_encoding::percent_decode_str(&raw_key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned();
    Ok(ObjectEvent {
        removed,
        bucket: text(&["s3", "bucket", "name"])?.to_string(),
        key,
        at: r.get("eventTime").and_then(Value::as_str).and_then(parse_time),
    })
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_sns_and_eventbridge_are_read() {
        let record = json!({"Records": [{
            "eventName": "ObjectRemoved:Delete",
            "eventTime": "2026-11-23T10:00:00.000Z",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "my+prefix/0123456789abcdef0123456789abcdef"}}
        }]});
        let events = parse_events(&record).unwrap();
        assert_eq!(events.len(), 1);
        assert!(events[0].removed);
        assert_eq!(events[0].key, "my prefix/0123456789abcdef0123456789abcdef");
        assert!(events[0].at.is_some());

        let sns = json!({"Type": "Notification", "Message": record.to_string()});
        assert_eq!(parse_events(&sns).unwrap().len(), 1);

        let eb = json!({"detail-type": "Object Deleted", "source": "aws.s3", "time": "2026-11-23T10:00:00Z",
            "detail": {"bucket": {"name": "b"}, "object": {"key": "k"}}});
        let events = parse_events(&eb).unwrap();
        assert!(events[0].removed);

        let created = json!({"Records": [{"eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]});
        assert!(!parse_events(&created).unwrap()[0].removed);
        assert!(parse_events(&json!({"Event": "s3:TestEvent"})).unwrap().is_empty());
    }

    #[test]
    fn messages_that_name_no_object_of_ours_are_ignored() {
        // An SNS topic may carry other messages than S3's.
        for message in ["not json", "{}", r#"{"Records": "x"}"#] {
            let events = parse_events(&json!({"Type": "Notification", "Message": message})).unwrap();
            assert_eq!(events.len(), 1, "{message}");
            assert!(!events[0].removed, "{message}");
        }
        // A key that is not URL-encoded UTF-8 decodes to a name no blob has.
        let bad_key = json!({"Records": [{"eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "%ff%fe"}}}]});
        let events = parse_events(&bad_key).unwrap();
        assert_eq!(events[0].key, "\u{fffd}\u{fffd}");
    }

    #[test]
    fn malformed_events_are_refused() {
        for bad in [
            json!({}),
            json!({"Records": "x"}),
            json!({"Records": [{"eventName": "ObjectRemoved:Delete"}]}),
            json!({"Type": "Notification"}),
            json!({"Type": "Notification", "Message": 5}),
            json!({"Type": "Other"}),
            json!({"detail-type": "Object Deleted", "detail": {}}),
        ] {
            assert!(parse_events(&bad).is_err(), "{bad}");
        }
    }
}
