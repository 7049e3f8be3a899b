//! Tokens with scopes, as a client meets them: 401 without a token, 403 for a
//! missing scope (both JSON), Bearer or Basic, revocation by editing the file,
//! open probes, and peers that must prove they are peers.

use blobcache::auth::{line, new_token, parse_scopes};
use blobcache::key::BlobKey;

use crate::common::cluster;
use crate::common::s3_server::S3Server;
use crate::common::{TestApp, assert_error, data, eventually_async, process, test_settings};

fn token_line(name: &str, scopes: &str) -> (String, String) {
    let token = new_token();
    let line = line(name, &token, &parse_scopes(scopes).unwrap(), None);
    (token, line)
}

#[tokio::test]
async fn each_request_needs_a_token_with_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, reader_line) = token_line("dashboard", "read");
    let (writer, writer_line) = token_line("ci", "read,write");
    let (deleter, deleter_line) = token_line("janitor", "delete");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{reader_line}\n{writer_line}\n{deleter_line}\n")).unwrap();
    let mut settings = test_settings();
    settings.auth.tokens = Some(tokens.clone());
    let app = TestApp::spawn_with(settings).await;
    let blob = data(3000, 1);
    let key = BlobKey::of(&blob);

    // No token: 401, JSON, with a challenge; nothing stored.
    let resp = app.put(&blob).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"blobcache\", Basic realm=\"blobcache\""
    );
    assert_error(resp, 401, "unauthorized").await;
    assert_error(app.get(&key).await, 401, "unauthorized").await;
    // A wrong token, or a header that is not a credential: 401.
    let wrong = app
        .client
        .get(app.blob_url(&key))
        .bearer_auth("bc_nope")
        .send()
        .await
        .unwrap();
    assert_error(wrong, 401, "unauthorized").await;
    let garbled = app
        .client
        .get(app.blob_url(&key))
        .header("authorization", "Token x")
        .send()
        .await
        .unwrap();
    assert_error(garbled, 401, "unauthorized").await;
    // A token without the scope: 403; nothing stored.
    let put = app
        .client
        .put(app.blob_url(&key))
        .bearer_auth(&reader)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_error(put, 403, "forbidden").await;
    assert!(app.spool_files().is_empty() && app.store_files().is_empty());
    // The right scope, as Bearer and as the Basic password (curl -u :TOKEN).
    let put = app
        .client
        .put(app.blob_url(&key))
        .bearer_auth(&writer)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let get = app
        .client
        .get(app.blob_url(&key))
        .basic_auth("", Some(&reader))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.bytes().await.unwrap(), &blob[..]);
    let delete = app
        .client
        .delete(app.blob_url(&key))
        .bearer_auth(&writer)
        .send()
        .await
        .unwrap();
    assert_error(delete, 403, "forbidden").await;
    // Probes and metrics are open; a client cannot pose as a peer.
    for path in ["/healthz", "/readyz", "/metrics", "/stats"] {
        let status = app.client.get(app.url(path)).send().await.unwrap().status();
        assert!(status == 200 || status == 503, "{path}: {status}");
    }
    let posing = app
        .client
        .get(app.blob_url(&key))
        .bearer_auth(&reader)
        .header("x-blobcache-hop", "local")
        .send()
        .await
        .unwrap();
    assert_error(posing, 403, "forbidden").await;
    let tombstones = app
        .client
        .post(app.url("/cluster/tombstones"))
        .bearer_auth(&writer)
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_error(tombstones, 403, "forbidden").await;
    // Revoking is deleting the line: the node notices the file changed.
    std::fs::write(&tokens, format!("{writer_line}\n{deleter_line}\n")).unwrap();
    eventually_async("the revoked token to be refused", || async {
        let resp = app
            .client
            .get(app.blob_url(&key))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        resp.status() == 401
    })
    .await;
    let delete = app
        .client
        .delete(app.blob_url(&key))
        .bearer_auth(&deleter)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    // The tokens file holds digests, never a token.
    let log = std::fs::read_to_string(&tokens).unwrap();
    assert!(!log.contains(&writer), "the file holds digests only");
}

#[tokio::test]
async fn anonymous_read_and_closed_metrics_are_options() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, admin_line) = token_line("ops", "admin");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{admin_line}\n")).unwrap();
    let mut settings = test_settings();
    settings.auth.tokens = Some(tokens);
    settings.auth.anonymous = Some(blobcache::auth::Anonymous::Read);
    settings.auth.metrics_access = Some(blobcache::auth::MetricsAccess::Admin);
    let app = TestApp::spawn_with(settings).await;
    let blob = data(1000, 2);
    let key = BlobKey::of(&blob);
    assert_error(app.put(&blob).await, 401, "unauthorized").await;
    let put = app
        .client
        .put(app.blob_url(&key))
        .bearer_auth(&admin)
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "admin implies write");
    assert_eq!(app.get(&key).await.status(), 200, "anonymous read");
    assert_error(
        app.client.get(app.url("/metrics")).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_send_their_own_credential() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (peer, peer_line) = token_line("peers", "peer");
    let (client, client_line) = token_line("ci", "read,write,delete");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{peer_line}\n{client_line}\n")).unwrap();
    let nodes = cluster::start(&s3, 3, |_, s| {
        s.auth.tokens = Some(tokens.clone());
        s.cluster.peer_token = Some(peer.clone());
    })
    .await;
    let blobs: Vec<Vec<u8>> = (0..12).map(|i| data(2000, 60 + i)).collect();
    for (i, blob) in blobs.iter().enumerate() {
        let node = &nodes[i % 3];
        let resp = node
            .client
            .put(node.blob_url(&BlobKey::of(blob)))
            .bearer_auth(&client)
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    for (i, blob) in blobs.iter().enumerate() {
        let node = &nodes[(i + 1) % 3];
        let resp = node
            .client
            .get(node.blob_url(&BlobKey::of(blob)))
            .bearer_auth(&client)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.bytes().await.unwrap(), &blob[..]);
    }
    let key = BlobKey::of(&blobs[0]);
    let resp = nodes[2]
        .client
        .delete(nodes[2].blob_url(&key))
        .bearer_auth(&client)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for node in &nodes {
        let resp = node
            .client
            .get(node.blob_url(&key))
            .bearer_auth(&client)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    // No peer request was refused.
    for node in &nodes {
        let stats = node
            .client
            .get(node.url("/stats"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        assert_eq!(stats["cluster"]["errors"]["lookup"], 0, "{}", stats["cluster"]);
    }
}

#[tokio::test]
async fn an_open_node_on_the_network_must_be_asked_for() {
    let mut settings = test_settings();
    settings.listen = Some("0.0.0.0:0".parse().unwrap());
    let e = blobcache::config::Config::from_settings(settings.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--tokens") && e.contains("--anonymous all"), "{e}");
    settings.auth.anonymous = Some(blobcache::auth::Anonymous::All);
    assert!(blobcache::config::Config::from_settings(settings).is_ok());
}

#[tokio::test]
async fn token_create_prints_the_token_once_and_appends_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let out = process::client(
        dir.path(),
        "http://127.0.0.1:1",
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--scopes",
            "read,write",
            "--file",
            "tokens",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("bc_"));
    let file = std::fs::read_to_string(dir.path().join("tokens")).unwrap();
    assert!(!file.contains(&token));
    assert!(file.starts_with("ci ") && file.contains(" read,write"), "{file}");
    let again = process::client(
        dir.path(),
        "http://127.0.0.1:1",
        &["token", "create", "--name", "ci", "--file", "tokens"],
    )
    .await;
    assert_eq!(again.status.code(), Some(2), "a name used twice");
    let bad = process::client(
        dir.path(),
        "http://127.0.0.1:1",
        &["token", "create", "--name", "x", "--scopes", "fly"],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}
