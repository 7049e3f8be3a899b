//! Reads and writes across the nodes: read-your-write with the store down,
//! one store read per chunk, a killed node, a node that joins, warm-ups.

use blobcache::key::BlobKey;

use crate::common::cluster::{self, listeners, node_settings};
use crate::common::s3_server::{self, S3Server};
use crate::common::{CHUNK, TestApp, data, eventually_async, process};

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

/// Two nodes in this process, the third the real binary (so it can be killed
/// or stopped) on the third of `urls`; all three see each other.
async fn two_nodes_and_a_binary(s3: &S3Server) -> (Vec<TestApp>, process::Server, Vec<String>, tempfile::TempDir) {
    let (listeners, urls) = listeners(3).await;
    let third = urls[2].trim_start_matches("http://").to_string();
    let mut listeners = listeners.into_iter();
    let mut nodes = Vec::new();
    for url in &urls[..2] {
        let settings = node_settings(s3, &urls, url);
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
            &third,
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
    (nodes, child, urls, dir)
}

/// A hung owner (SIGSTOP: its sockets accept, nothing answers) holds a read
/// sent on to it only until it fails its next probe; the node then reads the
/// store itself. Without that, the read would wait out the 30 s a peer has to
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_owner_holds_a_read_only_until_it_fails_a_probe() {
    let s3 = S3Server::start().await;
    let (nodes, child, urls, _dir) = two_nodes_and_a_binary(&s3).await;
    // Blobs the binary owns, in the store, cached on neither other node.
    let mut owned = Vec::new();
    for i in 0..60u64 {
        let blob = data(5000, 7000 + i);
        let key = BlobKey::of(&blob);
        let view = nodes[0].get_json(&format!("/cluster?md5={key}")).await;
        if view["owner"] == urls[2].as_str() {
            s3.put_object(&blob).await;
            owned.push(blob);
        }
        if owned.len() == 2 {
            break;
        }
    }
    assert_eq!(owned.len(), 2, "the binary owns about a third of the keys");
    child.pause();
    for (i, blob) in owned.iter().enumerate() {
        let started = std::time::Instant::now();
        let resp = nodes[i].get(&BlobKey::of(blob)).await;
        assert_eq!(resp.status(), 200);
        // From the store, here or through the blob's next owner.
        let via = resp.headers()["x-cache"].to_str().unwrap().to_string();
        assert!(via == "miss" || via == "peer", "{via}");
        assert_eq!(resp.bytes().await.unwrap(), &blob[..]);
        // Bounded by the probes (1 s timeout, 100 ms apart), far below the 30 s of the answer's own timeout.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the read waited {:?} on a hung owner",
            started.elapsed()
        );
    }
    child.resume();
    for node in &nodes {
        node.sees_live_peers(2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_a_node_is_killed_the_others_go_on() {
    let s3 = S3Server::start().await;
    let (nodes, child, _, _dir) = two_nodes_and_a_binary(&s3).await;
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
