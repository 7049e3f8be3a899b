//! Several real nodes on 127.0.0.1:0 that know each other as peers, in front
//! of one S3 server. Tests see them only through their HTTP interfaces.

use std::time::Duration;

use blobcache::config::Settings;
use tokio::net::TcpListener;

use crate::common::s3_server::S3Server;
use crate::common::{TestApp, eventually_async, test_settings};

/// Cluster settings for node `me` of `urls`, with fast probes and syncs.
pub fn node_settings(s3: &S3Server, peers: &[String], me: &str) -> Settings {
    let mut s = s3.settings_over(test_settings());
    s.cluster.peers = Some(peers.join(","));
    s.cluster.advertise_url = Some(me.to_string());
    s.cluster.peer_probe_interval = Some(Duration::from_millis(100));
    s.cluster.peer_timeout = Some(Duration::from_secs(1));
    s.cluster.tombstone_sync = Some(Duration::from_millis(200));
    s
}

/// Bind `n` listeners, so every node's URL is known before any starts.
pub async fn listeners(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let urls = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    (listeners, urls)
}

/// Start `n` nodes that all list each other; `adjust` may change each node's settings.
pub async fn start(s3: &S3Server, n: usize, adjust: impl Fn(usize, &mut Settings)) -> Vec<TestApp> {
    let (listeners, urls) = listeners(n).await;
    let starts = listeners.into_iter().enumerate().map(|(i, listener)| {
        let mut settings = node_settings(s3, &urls, &urls[i]);
        adjust(i, &mut settings);
        TestApp::spawn_on(listener, tempfile::tempdir().unwrap(), settings)
    });
    let nodes = futures::future::join_all(starts).await;
    for node in &nodes {
        node.sees_live_peers(n - 1).await;
    }
    nodes
}

/// Start a node again on the address (and data) it had.
pub async fn restart(s3: &S3Server, url: &str, peers: &[String], dir: tempfile::TempDir) -> TestApp {
    let addr = url.trim_start_matches("http://");
    let listener = TcpListener::bind(addr).await.expect("bind the node's address again");
    TestApp::spawn_on(listener, dir, node_settings(s3, peers, url)).await
}

impl TestApp {
    /// Wait until this node counts `n` live peers.
    pub async fn sees_live_peers(&self, n: usize) {
        eventually_async(&format!("{} to see {n} live peers", self.base), || async {
            self.stats().await["cluster"]["peers_live"].as_u64() == Some(n as u64)
        })
        .await;
    }

    /// A peer-request counter of /stats: `requests.lookup`, `errors.get`, ...
    pub async fn peer_stat(&self, path: &str) -> u64 {
        self.stat(&format!("cluster.{path}")).await
    }
}
