//! TLS as clients meet it: HTTPS with TLS 1.2 and 1.3, HTTP/2 by ALPN, a
//! certificate rotated in place without a restart (and a broken rotation that
//! changes nothing), client certificates, plain HTTP and silence on the TLS
//! port, and a cluster whose nodes talk to each other over mutual TLS.
//! Certificates are made here, with rcgen, for each test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blobcache::config::Settings;
use blobcache::key::BlobKey;
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::s3_server::S3Server;
use crate::common::{TestApp, assert_error, cluster, data, eventually_async, process, test_settings};

/// A certificate authority of a test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or addresses): (certificate PEM, key PEM).
    fn issue(&self, names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Write `text` to `path` as a rotation does: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The files of one node's TLS set-up.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        replace(&path, text);
        path
    }
}

/// A reqwest client that trusts `ca` (and shows `identity`, a PEM of certificate and key).
fn client(ca: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .tls_info(true)
        // Each request its own connection: a rotated certificate shows at once.
        .pool_max_idle_per_host(0);
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// Start a node that speaks HTTPS with a certificate of `ca` for 127.0.0.1 and localhost.
async fn tls_node(ca: &Ca, files: &Files, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let mut settings = test_settings();
    settings.tls.tls_cert = Some(files.write("cert.pem", &cert));
    settings.tls.tls_key = Some(files.write("key.pem", &key));
    adjust(&mut settings);
    let mut app = TestApp::spawn_with(settings).await;
    app.base = app.base.replace("http://", "https://");
    app.client = client(ca, None);
    app
}

/// The leaf certificate a connection to `app` is shown.
async fn shown_certificate(app: &TestApp) -> Vec<u8> {
    let resp = app.client.get(app.url("/healthz")).send().await.expect("HTTPS GET");
    assert_eq!(resp.status(), 200);
    let info = resp.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a server certificate").to_vec()
}

/// Failed reloads of the TLS files, from the node's metrics.
async fn reload_errors(app: &TestApp) -> u64 {
    let metrics = app.metrics_text().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("blobcache_tls_reloads_total{result=\"error\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("https://").to_string()
}

/// A rustls client connection to `app`, with these protocol versions and ALPN protocols.
async fn rustls_connect(
    app: &TestApp,
    ca: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(blobcache::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr(app)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn blobs_go_up_and_down_over_https_with_tls_1_2_1_3_and_http2() {
    let ca = Ca::new("test CA");
    let files = Files::new();
    let app = tls_node(&ca, &files, |_| {}).await;
    let blob = data(300_000, 1);
    let key = BlobKey::of(&blob);
    assert_eq!(app.put(&blob).await.status(), 201);
    let got = app.get(&key).await;
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), blob);

    // Both protocol versions are spoken, and each serves a request.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut tls = rustls_connect(&app, &ca, &[version], &[b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(format!("HEAD /blobs/{key} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("content-length: 300000"), "{answer}");
    }

    // HTTP/2 by ALPN.
    let tls = rustls_connect(&app, &ca, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP/2 over TLS");
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost/blobs/{key}"))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), blob);

    // A client that does not trust the CA gets nowhere, and nothing is stored.
    let other = Ca::new("another CA");
    let stranger = client(&other, None);
    let blob2 = data(1000, 2);
    let refused = stranger
        .put(app.blob_url(&BlobKey::of(&blob2)))
        .body(blob2.clone())
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a client that does not trust the certificate connected"
    );
    assert_eq!(app.get(&BlobKey::of(&blob2)).await.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_json_400_and_silence_is_cut() {
    let ca = Ca::new("test CA");
    let files = Files::new();
    let app = tls_node(&ca, &files, |s| {
        s.http.header_read_timeout = Some(Duration::from_millis(500));
    })
    .await;

    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    tcp.write_all(b"PUT /blobs/00000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(answer.contains("content-type: application/json"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "tls_required");
    assert!(body["message"].as_str().unwrap().contains("https://"));

    // Silent, or stopped in the middle of a handshake: closed at the header timeout.
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    let mut half = TcpStream::connect(addr(&app)).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    for conn in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the node closed the connection in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("blobcache_tls_plain_http_total 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("blobcache_tls_handshake_failures_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The node serves HTTPS all along.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart_and_a_broken_one_changes_nothing() {
    let ca = Ca::new("test CA");
    let files = Files::new();
    let app = tls_node(&ca, &files, |_| {}).await;
    let first = shown_certificate(&app).await;
    let blob = data(50_000, 3);
    assert_eq!(app.put(&blob).await.status(), 201);

    // cert-manager writes a new certificate and key in place.
    let (cert2, key2) = ca.issue(&["localhost", "127.0.0.1"]);
    files.write("key.pem", &key2);
    files.write("cert.pem", &cert2);
    let want = der_of(&cert2);
    assert_ne!(want, first);
    eventually_async("the new certificate to be served", || async {
        shown_certificate(&app).await == want
    })
    .await;
    assert_eq!(app.get(&BlobKey::of(&blob)).await.bytes().await.unwrap(), blob);

    // A certificate whose key is not the one in the key file: refused, the
    // certificate before stays in force, and the node says so in its metrics.
    let (cert3, _key3) = ca.issue(&["localhost", "127.0.0.1"]);
    for (file, text) in [("cert.pem", cert3.as_str()), ("key.pem", "not a key")] {
        let before = reload_errors(&app).await;
        files.write(file, text);
        eventually_async("the failed reload to be counted", || async {
            reload_errors(&app).await > before
        })
        .await;
        assert_eq!(shown_certificate(&app).await, want);
    }
    assert_eq!(app.get(&BlobKey::of(&blob)).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn with_a_client_ca_only_the_probes_are_open_to_clients_without_a_certificate() {
    let ca = Ca::new("test CA");
    let clients_ca = Ca::new("clients CA");
    let files = Files::new();
    let ca_file = files.write("clients.pem", &clients_ca.pem);
    let app = tls_node(&ca, &files, |s| s.tls.tls_client_ca = Some(ca_file)).await;
    let blob = data(20_000, 4);
    let key = BlobKey::of(&blob);

    // No certificate: the probes answer (the kubelet shows none), nothing else does; nothing stored.
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            app.client.get(app.url(probe)).send().await.unwrap().status(),
            200,
            "{probe}"
        );
    }
    assert_error(app.put(&blob).await, 401, "client_certificate_required").await;
    assert_error(app.get(&key).await, 401, "client_certificate_required").await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_error(metrics, 401, "client_certificate_required").await;

    // A certificate of the clients' CA: served.
    let (cert, key_pem) = clients_ca.issue(&["deployer"]);
    let with_cert = client(&ca, Some((&cert, &key_pem)));
    let put = with_cert
        .put(app.blob_url(&key))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let got = with_cert.get(app.blob_url(&key)).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), blob);

    // A certificate of another CA: the handshake fails; nothing stored.
    let (bad_cert, bad_key) = Ca::new("rogue").issue(&["deployer"]);
    let rogue = client(&ca, Some((&bad_cert, &bad_key)));
    let blob2 = data(20_000, 5);
    let refused = rogue
        .put(app.blob_url(&BlobKey::of(&blob2)))
        .body(blob2.clone())
        .send()
        .await;
    assert!(refused.is_err(), "a certificate of another CA was accepted");
    let status = with_cert
        .get(app.blob_url(&BlobKey::of(&blob2)))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);

    // The command-line client, as a deploy pipeline runs it: --cacert, --cert and --key.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("blob"), &blob2).unwrap();
    std::fs::write(work.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(work.path().join("me.pem"), &cert).unwrap();
    std::fs::write(work.path().join("me.key"), &key_pem).unwrap();
    let without = process::client(work.path(), &app.base, &["put", "blob", "--cacert", "ca.pem"]).await;
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let put = process::client(
        work.path(),
        &app.base,
        &[
            "put", "blob", "--cacert", "ca.pem", "--cert", "me.pem", "--key", "me.key",
        ],
    )
    .await;
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = with_cert.get(app.blob_url(&BlobKey::of(&blob2))).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), blob2);
    app.stop().await;
}

#[tokio::test]
async fn nodes_of_a_cluster_talk_to_each_other_over_mutual_tls() {
    let s3 = S3Server::start().await;
    let ca = Ca::new("cluster CA");
    let files = Files::new();
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let cert_file = files.write("cert.pem", &cert);
    let key_file = files.write("key.pem", &key);
    let ca_file = files.write("ca.pem", &ca.pem);
    let (listeners, urls) = cluster::listeners(2).await;
    let urls: Vec<String> = urls.iter().map(|u| u.replace("http://", "https://")).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut s = cluster::node_settings(&s3, &urls, &urls[i]);
        s.tls.tls_cert = Some(cert_file.clone());
        s.tls.tls_key = Some(key_file.clone());
        // Clients (and so peers) must show a certificate of the cluster's CA.
        s.tls.tls_client_ca = Some(ca_file.clone());
        s.tls.peer_ca = Some(ca_file.clone());
        s.tls.peer_cert = Some(cert_file.clone());
        s.tls.peer_key = Some(key_file.clone());
        let mut node = TestApp::spawn_on(listener, tempfile::tempdir().unwrap(), s).await;
        node.base = urls[i].clone();
        node.client = client(&ca, Some((&cert, &key)));
        nodes.push(node);
    }
    for node in &nodes {
        node.sees_live_peers(1).await;
    }
    // Blobs written on one node are read on the other: those the other node
    // does not own travel between the nodes over TLS.
    let blobs: Vec<Vec<u8>> = (0..8).map(|i| data(30_000, 100 + i)).collect();
    for blob in &blobs {
        assert_eq!(nodes[0].put(blob).await.status(), 201);
    }
    let mut from_peer = 0;
    for blob in &blobs {
        let got = nodes[1].get(&BlobKey::of(blob)).await;
        assert_eq!(got.status(), 200);
        if got.headers()["x-cache"] == "peer" {
            from_peer += 1;
        }
        assert_eq!(&got.bytes().await.unwrap()[..], &blob[..]);
    }
    assert!(from_peer > 0, "no blob came from the peer");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_peer_found_through_dns_is_checked_against_the_dns_name() {
    // The node's certificate names only the cluster's DNS name, as a
    // headless service's certificate does; peers reach it by address.
    let ca = Ca::new("cluster CA");
    let files = Files::new();
    let (cert, key) = ca.issue(&["blobcache-headless"]);
    let mut settings = test_settings();
    settings.tls.tls_cert = Some(files.write("cert.pem", &cert));
    settings.tls.tls_key = Some(files.write("key.pem", &key));
    let app = TestApp::spawn_with(settings).await;
    let url = app.base.replace("http://", "https://") + "/healthz";
    let ca_file = files.write("ca.pem", &ca.pem);
    let config = blobcache::tls::TlsConfig {
        peer_ca: Some(ca_file),
        ..Default::default()
    };
    let peer_client = |dns: Option<&str>| {
        let tls = blobcache::tls::PeerTls::new(&config, dns.map(str::to_string));
        reqwest::Client::builder()
            .use_preconfigured_tls(tls.client_config().unwrap())
            .build()
            .unwrap()
    };
    let named = peer_client(Some("blobcache-headless")).get(&url).send().await;
    assert_eq!(named.expect("verified against the DNS name").status(), 200);
    let other_name = peer_client(Some("someone-else")).get(&url).send().await;
    assert!(other_name.is_err(), "a certificate for another name was accepted");
    let by_address = peer_client(None).get(&url).send().await;
    assert!(by_address.is_err(), "the address is not in the certificate");
    app.stop().await;
}
