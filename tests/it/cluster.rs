//! Three real nodes on 127.0.0.1:0, peers of each other, over one real S3
//! server: read-your-write behind round-robin, one store read per chunk for a
//! blob read through every node at once, DELETE everywhere, nodes that stop,
//! come back, die, or disagree about who is a member, and S3 events.

use blobcache::key::BlobKey;

use crate::common::cluster::{self, listeners, node_settings};
use crate::common::s3_server::{self, S3Server};
use crate::common::{CHUNK, TestApp, assert_error, data, eventually_async, process};

/// Every node's answer to a GET of `key`: (status, body, X-Cache).
async fn get_everywhere(nodes: &[TestApp], key: &BlobKey) -> Vec<(u16, Vec<u8>, String)> {
    let mut out = Vec::new();
    for node in nodes {
        let resp = node.get(key).await;
        let status = resp.status().as_u16();
        let cache = resp
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        out.push((status, resp.bytes().await.unwrap().to_vec(), cache));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_reads_see_every_write_while_the_store_is_down() {
    let s3 = S3Server::start().await;
    let nodes = cluster::start(&s3, 3, |_, _| {}).await;
    s3.stop().await;
    let blobs: Vec<Vec<u8>> = (0..200).map(|i| data(1000 + i * 37, i as u64)).collect();
    for (i, blob) in blobs.iter().enumerate() {
        let resp = nodes[i % 3].put(blob).await;
        assert_eq!(resp.status(), 201, "PUT {i}: {}", resp.text().await.unwrap());
    }
    // The next request of a round-robin client goes to the next node.
    for (i, blob) in blobs.iter().enumerate() {
        let key = BlobKey::of(blob);
        let node = &nodes[(i + 1) % 3];
        let resp = node.get(&key).await;
        assert_eq!(resp.status(), 200, "GET {i} on node {}", (i + 1) % 3);
        assert_eq!(resp.headers()["x-blob-durability"], "pending");
        assert_eq!(resp.bytes().await.unwrap(), &blob[..], "GET {i}");
        let head = node
            .client
            .head(nodes[(i + 2) % 3].blob_url(&key))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {i}");
        assert_eq!(head.headers()["content-length"], blob.len().to_string());
    }
    // Each blob went to its owner: the cluster holds one pending copy of each.
    let mut pending = 0;
    for node in &nodes {
        pending += node.pending_blobs().await;
    }
    assert_eq!(pending, 200);
    // The store comes back: everything reaches it.
    s3.restart().await;
    for node in &nodes {
        node.replicated().await;
    }
    for blob in &blobs {
        assert_eq!(s3.object(&BlobKey::of(blob)).await.expect("in the store").0, *blob);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_blob_read_through_every_node_at_once_is_read_from_the_store_once() {
    let s3 = S3Server::start().await;
    let nodes = cluster::start(&s3, 3, |_, _| {}).await;
    let blob = data(3 * CHUNK + 1000, 7);
    let key = s3.put_object(&blob).await;
    s3.clear_log();
    let reads = nodes.iter().map(|n| {
        let (client, url) = (n.client.clone(), n.blob_url(&key));
        tokio::spawn(async move {
            let resp = client.get(url).send().await.unwrap();
            let cache = resp.headers()["x-cache"].to_str().unwrap().to_string();
            (resp.status(), cache, resp.bytes().await.unwrap())
        })
    });
    let mut sources = Vec::new();
    for read in futures::future::join_all(reads).await {
        let (status, cache, body) = read.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, &blob[..]);
        sources.push(cache);
    }
    let gets = s3.requests_for("GET", &key).len();
    assert_eq!(
        gets, 4,
        "one store read per chunk for the whole cluster; served as {sources:?}"
    );
    // The owner read the store; the others streamed from it and kept no copy.
    assert_eq!(sources.iter().filter(|s| *s == "miss").count(), 1, "{sources:?}");
    assert_eq!(sources.iter().filter(|s| *s == "peer").count(), 2, "{sources:?}");
    let mut cached = 0;
    for node in &nodes {
        cached += node.is_cached(&key).await as u32;
    }
    assert_eq!(cached, 1, "the blob is cached once in the cluster");
    // A range through a node that is not the owner is a range at the owner.
    for node in &nodes {
        let resp = node.get_range(&key, "bytes=5-9").await;
        assert_eq!(resp.status(), 206);
        assert_eq!(resp.headers()["content-range"], format!("bytes 5-9/{}", blob.len()));
        assert_eq!(resp.bytes().await.unwrap(), &blob[5..10]);
    }
    assert_eq!(s3.requests_for("GET", &key).len(), 4, "hits from then on");
    // A forwarded GET is one request to the owner (no lookup first), validators kept.
    let owner = nodes[0].get_json(&format!("/cluster?md5={key}")).await["owner"].clone();
    let other = nodes.iter().find(|n| owner != n.base.as_str()).unwrap();
    let (lookups, gets) = (
        other.peer_stat("requests.lookup").await,
        other.peer_stat("requests.get").await,
    );
    let resp = other.get_with(&key, &[("if-none-match", &format!("\"{key}\""))]).await;
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["x-cache"], "peer");
    assert_eq!(other.get(&key).await.bytes().await.unwrap(), &blob[..]);
    assert_eq!(other.peer_stat("requests.lookup").await, lookups);
    assert_eq!(other.peer_stat("requests.get").await, gets + 2);
}

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
async fn when_a_node_is_killed_the_others_go_on() {
    let s3 = S3Server::start().await;
    let (listeners, urls) = listeners(3).await;
    // Two nodes in this process, the third the real binary on a known port.
    let killed_addr = urls[2].trim_start_matches("http://").to_string();
    let mut listeners = listeners.into_iter();
    let mut nodes = Vec::new();
    for url in &urls[..2] {
        let settings = node_settings(&s3, &urls, url);
        nodes.push(TestApp::spawn_on(listeners.next().unwrap(), tempfile::tempdir().unwrap(), settings).await);
    }
    drop(listeners); // the binary binds the third address itself
    let dir = tempfile::tempdir().unwrap();
    let peers = urls.join(",");
    let endpoint = s3.endpoint();
    let store = format!("s3://{}/{}", s3_server::BUCKET, s3_server::PREFIX);
    let child = process::start_with(
        dir.path(),
        &[
            "--listen",
            &killed_addr,
            "--store",
            &store,
            "--s3-endpoint",
            &endpoint,
            "--s3-force-path-style",
            "--peers",
            &peers,
            "--advertise-url",
            &urls[2],
            "--peer-probe-interval",
            "100ms",
            "--peer-timeout",
            "1s",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    for node in &nodes {
        node.sees_live_peers(2).await;
    }
    let before: Vec<Vec<u8>> = (0..30).map(|i| data(2000, 500 + i)).collect();
    for (i, blob) in before.iter().enumerate() {
        assert_eq!(nodes[i % 2].put(blob).await.status(), 201);
    }
    eventually_async("the third node to upload what it owns", || async {
        let stats = child.stats().await;
        stats["replication"]["pending_blobs"] == 0
    })
    .await;
    assert!(child.kill().code().is_none(), "killed by a signal");
    // Before and after the survivors notice: every PUT and GET succeeds.
    let after: Vec<Vec<u8>> = (0..30).map(|i| data(2000, 900 + i)).collect();
    for (i, blob) in after.iter().enumerate() {
        let resp = nodes[i % 2].put(blob).await;
        assert_eq!(resp.status(), 201, "PUT {i}: {}", resp.text().await.unwrap());
    }
    for (i, blob) in before.iter().chain(&after).enumerate() {
        let resp = nodes[(i + 1) % 2].get(&BlobKey::of(blob)).await;
        assert_eq!(resp.status(), 200, "GET {i}");
        assert_eq!(resp.bytes().await.unwrap(), &blob[..]);
    }
    for node in &nodes {
        node.sees_live_peers(1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_that_disagree_about_the_members_never_loop() {
    let s3 = S3Server::start().await;
    let (listeners, urls) = listeners(3).await;
    // A knows B, B knows C, C knows A: three different views of the cluster.
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let view = [urls[i].clone(), urls[(i + 1) % 3].clone()];
        let settings = node_settings(&s3, &view, &urls[i]);
        nodes.push(TestApp::spawn_on(listener, tempfile::tempdir().unwrap(), settings).await);
    }
    for node in &nodes {
        node.sees_live_peers(1).await;
    }
    let blobs: Vec<Vec<u8>> = (0..30).map(|i| data(3000, 700 + i)).collect();
    for (i, blob) in blobs.iter().enumerate() {
        assert_eq!(nodes[i % 3].put(blob).await.status(), 201);
    }
    let mut gets = 0;
    for blob in &blobs {
        for (status, body, _) in get_everywhere(&nodes, &BlobKey::of(blob)).await {
            assert_eq!((status, body == *blob), (200, true));
            gets += 1;
        }
    }
    let missing = BlobKey::of(b"nowhere");
    for node in &nodes {
        assert_eq!(node.get(&missing).await.status(), 404);
    }
    // One hop: a found blob costs at most one owner lookup per request, a
    // missing one that plus the owner's one question to its only peer.
    let mut lookups = 0;
    for node in &nodes {
        lookups += node.peer_stat("requests.lookup").await;
    }
    assert!(
        lookups <= gets + 3 * 2,
        "{lookups} lookups for {gets} GETs and 3 misses"
    );
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
async fn cluster_shows_the_members_and_each_blobs_owner() {
    let s3 = S3Server::start().await;
    let nodes = cluster::start(&s3, 3, |_, _| {}).await;
    let key = BlobKey::of(b"owned");
    let mut owners = Vec::new();
    for node in &nodes {
        let view = node.get_json(&format!("/cluster?md5={key}")).await;
        assert_eq!(view["node"], node.base);
        assert_eq!(view["members"].as_array().unwrap().len(), 2);
        assert!(view["members"].as_array().unwrap().iter().all(|m| m["live"] == true));
        assert_eq!(view["order"].as_array().unwrap().len(), 3);
        owners.push(view["owner"].clone());
    }
    assert!(owners.iter().all(|o| *o == owners[0]), "every node agrees: {owners:?}");
    assert_error(
        nodes[0]
            .client
            .get(nodes[0].url("/cluster?md5=nope"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_key",
    )
    .await;
    // The peer endpoints refuse what is not theirs, and change nothing.
    let blob = data(3000, 99);
    assert_eq!(nodes[0].put(&blob).await.status(), 201);
    let post = nodes[0]
        .client
        .post(nodes[0].url("/cluster/tombstones"))
        .body(r#"[{"md5": "nope", "at_us": 1}]"#)
        .send()
        .await
        .unwrap();
    assert_error(post, 400, "invalid_body").await;
    let since = nodes[0]
        .client
        .get(nodes[0].url("/cluster/tombstones?since_us=soon"))
        .send()
        .await
        .unwrap();
    assert_error(since, 400, "invalid_query").await;
    for node in &nodes {
        assert_eq!(node.get(&BlobKey::of(&blob)).await.status(), 200);
    }
    let metrics = nodes[0].metrics_text().await;
    for name in [
        "blobcache_peers_live 2",
        "blobcache_peer_requests_total",
        "blobcache_peer_hits_total",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_stay_readable_when_a_node_joins_during_the_write_back_window() {
    let s3 = S3Server::start().await;
    let (mut listeners, urls) = listeners(3).await;
    // The third node is listed but not started: its blobs go to the others.
    let late = listeners.pop().unwrap();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let settings = node_settings(&s3, &urls, &urls[i]);
        nodes.push(TestApp::spawn_on(listener, tempfile::tempdir().unwrap(), settings).await);
    }
    for node in &nodes {
        node.sees_live_peers(1).await;
    }
    s3.stop().await;
    let blobs: Vec<Vec<u8>> = (0..60).map(|i| data(1500, 300 + i)).collect();
    for (i, blob) in blobs.iter().enumerate() {
        assert_eq!(nodes[i % 2].put(blob).await.status(), 201);
    }
    // It joins: about a third of the blobs now have it as their owner, and it has none of them.
    let settings = node_settings(&s3, &urls, &urls[2]);
    nodes.push(TestApp::spawn_on(late, tempfile::tempdir().unwrap(), settings).await);
    for node in &nodes {
        node.sees_live_peers(2).await;
    }
    let mut owned_by_newcomer = 0;
    for (i, blob) in blobs.iter().enumerate() {
        let key = BlobKey::of(blob);
        let view = nodes[0].get_json(&format!("/cluster?md5={key}")).await;
        owned_by_newcomer += (view["owner"] == urls[2]) as u32;
        for (n, node) in nodes.iter().enumerate() {
            let resp = node.get(&key).await;
            assert_eq!(resp.status(), 200, "blob {i} on node {n}");
            assert_eq!(resp.bytes().await.unwrap(), &blob[..]);
        }
    }
    assert!(owned_by_newcomer > 5, "the newcomer owns some: {owned_by_newcomer}");
    s3.restart().await;
    for node in &nodes {
        node.replicated().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_from_a_dns_name_find_each_other() {
    // `localhost` names both loopback addresses: one node on each, on one port.
    let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await else {
        eprintln!("SKIPPED: no IPv6 loopback, or port {port} taken on it");
        return;
    };
    let resolved: Vec<_> = tokio::net::lookup_host(("localhost", port)).await.unwrap().collect();
    if resolved.len() < 2 {
        eprintln!("SKIPPED: localhost resolves to {resolved:?} only");
        return;
    }
    let s3 = S3Server::start().await;
    let dns = format!("dns://localhost:{port}");
    let mut nodes = Vec::new();
    for (listener, me) in [(v4, "http://node-a:1"), (v6, "http://node-b:1")] {
        let mut settings = node_settings(&s3, &[], me);
        settings.cluster.peers = Some(dns.clone());
        nodes.push(TestApp::spawn_on(listener, tempfile::tempdir().unwrap(), settings).await);
    }
    for node in &nodes {
        node.sees_live_peers(1).await;
    }
    let view = nodes[0].get_json("/cluster").await;
    let members = view["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{view}");
    assert!(
        members
            .iter()
            .any(|m| m["self"] == true && m["id"] == "http://node-a:1"),
        "{view}"
    );
    assert!(
        members
            .iter()
            .any(|m| m["live"] == true && m["id"] == "http://node-b:1"),
        "{view}"
    );
    // And they work as one: a write on one is read on the other.
    let blob = data(2000, 77);
    assert_eq!(nodes[0].put(&blob).await.status(), 201);
    assert_eq!(
        nodes[1].get(&BlobKey::of(&blob)).await.bytes().await.unwrap(),
        &blob[..]
    );
}

/// Post a warm-up job of `keys` to `node` and wait for it to finish; its last status.
async fn warm(node: &TestApp, keys: &[BlobKey]) -> serde_json::Value {
    let resp = node.client.post(node.url("/warm")).json(keys).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let started = resp.json::<serde_json::Value>().await.unwrap();
    let job_url = node.url(&format!("/warm/{}", started["id"].as_str().unwrap()));
    eventually_async("the warm-up job to finish", || async {
        node.get_json(&job_url).await["state"] == "finished"
    })
    .await;
    node.get_json(&job_url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_up_job_posted_to_any_node_warms_each_blob_at_its_owner() {
    let s3 = S3Server::start().await;
    let nodes = cluster::start(&s3, 3, |_, _| {}).await;
    let mut keys = Vec::new();
    for i in 0..12 {
        keys.push(s3.put_object(&data(CHUNK + 100, 40 + i)).await);
    }
    let job = warm(&nodes[0], &keys).await;
    assert_eq!(job["done"], 12, "{job}");
    for key in &keys {
        let view = nodes[0].get_json(&format!("/cluster?md5={key}")).await;
        for node in &nodes {
            let owner = view["owner"] == node.base.as_str();
            assert_eq!(node.is_cached(key).await, owner, "{key}: cached at its owner only");
        }
        assert_eq!(s3.requests_for("GET", key).len(), 2, "one store read per chunk");
    }
    // Warming again, from another node, costs nothing: every owner holds its blobs.
    s3.clear_log();
    let job = warm(&nodes[1], &keys).await;
    assert_eq!(job["done"], 12, "{job}");
    for key in &keys {
        assert!(s3.requests_for("GET", key).is_empty());
    }
}
