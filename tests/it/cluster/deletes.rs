//! DELETE across the cluster: every node, a node that was away, S3 events,
//! and a delete queued while the store is down.

use blobcache::key::BlobKey;

use super::get_everywhere;
use crate::common::cluster::{self};
use crate::common::s3_server::{self, S3Server};
use crate::common::{CHUNK, assert_error, data, eventually_async, process};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_on_any_node_removes_the_blob_from_every_node() {
    let s3 = S3Server::start().await;
    // Every node keeps a copy of what it reads, so each has one to lose.
    let nodes = cluster::start(&s3, 3, |_, s| s.cluster.peer_copies = Some(true)).await;
    for (i, deleter) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let blob = data(2 * CHUNK + 10, 100 + i as u64);
        let key = BlobKey::of(&blob);
        assert_eq!(nodes[i].put_stored(&key, &blob).await.status(), 201);
        for (status, body, _) in get_everywhere(&nodes, &key).await {
            assert_eq!((status, body == blob), (200, true));
        }
        for node in &nodes {
            node.cached(&key).await;
        }
        let resp = nodes[deleter]
            .client
            .delete(nodes[deleter].blob_url(&key))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        for (n, (status, _, _)) in get_everywhere(&nodes, &key).await.into_iter().enumerate() {
            assert_eq!(status, 404, "node {n} after a DELETE on node {deleter}");
        }
        for node in &nodes {
            assert!(!node.is_cached(&key).await);
        }
        assert!(s3.object(&key).await.is_none(), "gone from the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_during_a_delete_catches_up_before_it_serves() {
    let s3 = S3Server::start().await;
    let mut nodes = cluster::start(&s3, 3, |_, s| s.cluster.peer_copies = Some(true)).await;
    let urls: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let (gone, kept) = (data(1000, 1), data(1000, 2));
    let (gone_key, kept_key) = (BlobKey::of(&gone), BlobKey::of(&kept));
    for blob in [&gone, &kept] {
        assert_eq!(nodes[0].put_stored(&BlobKey::of(blob), blob).await.status(), 201);
        assert_eq!(nodes[2].get(&BlobKey::of(blob)).await.status(), 200);
        nodes[2].cached(&BlobKey::of(blob)).await;
    }
    let away = nodes.pop().unwrap();
    let dir = away.stop().await;
    let resp = nodes[0]
        .client
        .delete(nodes[0].blob_url(&gone_key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    // It comes back with both blobs in its disk cache; it must not serve the deleted one.
    let back = cluster::restart(&s3, &urls[2], &urls, dir).await;
    let resp = back.get(&kept_key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "hit", "the disk cache survived the restart");
    assert_eq!(back.get(&gone_key).await.status(), 404);
    assert!(!back.is_cached(&gone_key).await);
    nodes.push(back);
    for (status, _, _) in get_everywhere(&nodes, &gone_key).await {
        assert_eq!(status, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_removal_event_invalidates_the_blob_on_every_node() {
    let s3 = S3Server::start().await;
    let nodes = cluster::start(&s3, 3, |_, s| s.cluster.peer_copies = Some(true)).await;
    let (gone, kept) = (data(5000, 11), data(5000, 12));
    let (gone_key, kept_key) = (s3.put_object(&gone).await, s3.put_object(&kept).await);
    for key in [&gone_key, &kept_key] {
        get_everywhere(&nodes, key).await;
        for node in &nodes {
            node.cached(key).await;
        }
    }
    // Deleted behind blobcache's back (a lifecycle rule, another tool).
    s3.client()
        .delete_object()
        .bucket(s3_server::BUCKET)
        .key(format!("{}/{gone_key}", s3_server::PREFIX))
        .send()
        .await
        .unwrap();
    let event = |name: &str, key: &str| {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
            "eventTime": "2030-01-01T00:00:00.000Z",
            "s3": {"bucket": {"name": s3_server::BUCKET}, "object": {"key": key}}
        }]})
    };
    let post = |body: String| nodes[1].client.post(nodes[1].url("/events/s3")).body(body).send();
    // Malformed or unrelated: a clear error or ignored, and nothing changes.
    assert_error(post("{not json".into()).await.unwrap(), 400, "invalid_event").await;
    assert_error(
        post(r#"{"Records": [{"eventName": "ObjectRemoved:Delete"}]}"#.into())
            .await
            .unwrap(),
        400,
        "invalid_event",
    )
    .await;
    let other = post(event("ObjectCreated:Put", &format!("{}/{gone_key}", s3_server::PREFIX)).to_string())
        .await
        .unwrap();
    assert_eq!(other.json::<serde_json::Value>().await.unwrap()["ignored"], 1);
    let foreign = post(event("ObjectRemoved:Delete", &format!("elsewhere/{gone_key}")).to_string())
        .await
        .unwrap();
    assert_eq!(foreign.json::<serde_json::Value>().await.unwrap()["ignored"], 1);
    for node in &nodes {
        assert!(node.is_cached(&gone_key).await, "nothing changed yet");
    }
    // The removal, as MinIO's webhook sends it.
    let resp = post(event("s3:ObjectRemoved:Delete", &format!("{}/{gone_key}", s3_server::PREFIX)).to_string())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["invalidated"], serde_json::json!([gone_key]));
    for (n, (status, _, _)) in get_everywhere(&nodes, &gone_key).await.into_iter().enumerate() {
        assert_eq!(status, 404, "node {n}");
    }
    for (status, body, _) in get_everywhere(&nodes, &kept_key).await {
        assert_eq!((status, body == kept), (200, true));
    }
    // Delivered again: harmless.
    let again = post(event("ObjectRemoved:Delete", &format!("{}/{gone_key}", s3_server::PREFIX)).to_string())
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_while_the_store_is_down_is_queued_and_reaches_it_after_a_kill() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3.endpoint();
    let store = format!("s3://{}/{}", s3_server::BUCKET, s3_server::PREFIX);
    let args = [
        "--store",
        store.as_str(),
        "--s3-endpoint",
        endpoint.as_str(),
        "--s3-force-path-style",
        "--s3-timeout",
        "1s",
    ];
    let envs = [
        ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
    ];
    let node = process::start_with(dir.path(), &args, &envs);
    let client = reqwest::Client::new();
    let (deleted, rewritten) = (data(4000, 31), data(4000, 32));
    for blob in [&deleted, &rewritten] {
        let resp = client
            .put(format!("{}/blobs/{}", node.base, BlobKey::of(blob)))
            .header("x-blob-durability", "stored")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    s3.stop().await;
    for blob in [&deleted, &rewritten] {
        let resp = client
            .delete(format!("{}/blobs/{}", node.base, BlobKey::of(blob)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "the store is down: queued, not refused");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["queued"], true);
        let get = client
            .get(format!("{}/blobs/{}", node.base, BlobKey::of(blob)))
            .send()
            .await
            .unwrap();
        assert_ne!(get.status(), 200, "no longer served");
    }
    // A PUT after the DELETE wins: its queued delete must not remove it.
    let resp = client
        .put(format!("{}/blobs/{}", node.base, BlobKey::of(&rewritten)))
        .body(rewritten.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(node.kill().code().is_none());
    s3.restart().await;
    let node = process::start_with(dir.path(), &args, &envs);
    let deleted_key = BlobKey::of(&deleted);
    eventually_async("the queued delete to reach the store", || async {
        s3.object(&deleted_key).await.is_none()
    })
    .await;
    let rewritten_key = BlobKey::of(&rewritten);
    eventually_async("the rewritten blob to be uploaded", || async {
        let stats = node.stats().await;
        stats["replication"]["pending_blobs"] == 0 && stats["replication"]["queued_deletes"] == 0
    })
    .await;
    assert_eq!(
        s3.object(&rewritten_key).await.expect("the later PUT stands").0,
        rewritten
    );
    assert_eq!(
        client
            .get(format!("{}/blobs/{deleted_key}", node.base))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}
