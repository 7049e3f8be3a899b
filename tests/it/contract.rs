//! What Schemathesis found where the server and openapi.yaml disagreed
//! (scripts/schemathesis.sh runs it in CI), each held here as the answer the
//! file now describes: the status, the JSON error, and that nothing was
//! stored or deleted.

use base64::Engine;
use blobcache::key::BlobKey;
use serde_json::{Value, json};

use crate::common::{TestApp, assert_error, data};

/// `/blobs/{md5}/status` of a blob that was deleted (or never stored) is a
/// 404 like a GET of it, not a 200 that reads as if the blob were there; the
/// 404 keeps the flags, all false, beside the error.
#[tokio::test]
async fn the_status_of_a_deleted_blob_is_404() {
    let app = TestApp::spawn().await;
    let body = data(5000, 120);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    app.replicated().await;
    let status = app.status(&key).await;
    assert_eq!((&status["in_store"], status.get("error")), (&json!(true), None));

    let resp = app.client.delete(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let resp = app
        .client
        .get(app.url(&format!("/blobs/{key}/status")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["md5"], key.to_string());
    for flag in ["cached", "pending", "in_store", "damaged"] {
        assert_eq!(v[flag], false, "{flag} in {v}");
    }
    assert!(v["size"].is_null(), "{v}");
    // Gone everywhere: nothing left stored.
    assert_error(app.get(&key).await, 404, "not_found").await;
    assert!(app.store_files().is_empty(), "store: {:?}", app.store_files());
    assert!(app.spool_files().is_empty(), "spool: {:?}", app.spool_files());

    // A key never stored: the same 404.
    let never = BlobKey::of(b"never stored");
    assert_eq!(app.status(&never).await["error"], "not_found");
}

/// A query parameter given twice was refused by axum in plain text; it is
/// the JSON 400 `invalid_query` now.
#[tokio::test]
async fn a_query_parameter_given_twice_is_a_json_400() {
    let app = TestApp::spawn().await;
    let key = BlobKey::of(b"q");
    for path in [
        format!("/cluster?md5={key}&md5={key}"),
        "/cluster/tombstones?since_us=1&since_us=2".to_string(),
        "/cluster/tombstones?since_us=-1".to_string(),
    ] {
        let resp = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        assert_error(resp, 400, "invalid_query").await;
    }
    let resp = app
        .client
        .get(app.url(&format!("/cluster?md5={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// An empty `Content-MD5` was allowed by the schema (a bare string) and
/// refused by the server; the schema now says what the server takes (the
/// base64 of 16 bytes), and the server's answer stays the JSON 400.
#[tokio::test]
async fn an_empty_content_md5_is_a_json_400_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let body = data(3000, 121);
    let key = BlobKey::of(&body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
    assert_eq!(b64.len(), 24, "the schema's pattern: 22 characters and ==");
    for (method, path) in [
        (reqwest::Method::PUT, format!("/blobs/{key}")),
        (reqwest::Method::POST, format!("/blobs/{key}")),
        (reqwest::Method::POST, "/blobs".to_string()),
    ] {
        let resp = app
            .client
            .request(method.clone(), app.url(&path))
            .header("content-md5", "")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_error(resp, 400, "invalid_content_md5").await;
    }
    app.replicated().await;
    assert_error(app.get(&key).await, 404, "not_found").await;
    assert!(app.store_files().is_empty(), "store: {:?}", app.store_files());
    assert!(app.spool_files().is_empty(), "spool: {:?}", app.spool_files());
}

/// S3 event deliveries that name no blob of this store are ignored (200,
/// counted), not refused: an SNS notification whose Message is not an S3
/// event (a topic may carry others), and an object key that is not
/// URL-encoded UTF-8 (no blob's key is such). Nothing is invalidated.
#[tokio::test]
async fn s3_events_that_name_no_blob_of_ours_are_ignored() {
    let app = TestApp::spawn().await;
    let body = data(4000, 122);
    let key = BlobKey::of(&body);
    assert_eq!(app.put(&body).await.status(), 201);
    let post = |doc: Value| app.client.post(app.url("/events/s3")).json(&doc).send();
    let removed = |object: &str| {
        json!({"Records": [{"eventName": "ObjectRemoved:Delete",
            "s3": {"bucket": {"name": "b"}, "object": {"key": object}}}]})
    };
    for doc in [
        json!({"Type": "Notification", "Message": ""}),
        json!({"Type": "Notification", "Message": "{}"}),
        json!({"Type": "Notification", "Message": removed("%ff%fe").to_string()}),
        removed(&format!("%ff/{key}%ff")),
    ] {
        let resp = post(doc.clone()).await.unwrap();
        assert_eq!(resp.status(), 200, "{doc}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer, json!({"invalidated": [], "ignored": 1}), "{doc}");
    }
    // Still refused: what is not one of the envelopes at all.
    assert_error(post(json!({})).await.unwrap(), 400, "invalid_event").await;
    assert_error(
        post(json!({"Type": "Notification", "Message": 5})).await.unwrap(),
        400,
        "invalid_event",
    )
    .await;
    // The blob was not touched.
    let resp = app.get(&key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);
}
