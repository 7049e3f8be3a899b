//! Membership: nodes that disagree, `/cluster`, and members from a DNS name.

use blobcache::key::BlobKey;

use super::get_everywhere;
use crate::common::cluster::{self, listeners, node_settings};
use crate::common::s3_server::S3Server;
use crate::common::{TestApp, assert_error, data};

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
