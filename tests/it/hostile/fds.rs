//! Running out of file descriptors: the real binary under a low open-file
//! limit, flooded with silent sockets.

use std::time::Duration;

use blobcache::key::BlobKey;
use tokio::net::TcpStream;

use super::{PATIENCE, Raw, put_head};
use crate::common::{data, eventually_async, process};

/// `ulimit -n 256` and 300 silent sockets: the connection cap (half the
/// limit) keeps descriptors for files, silent sockets make room for new
/// clients, and a PUT on a connection opened before the flood is stored.
#[tokio::test]
async fn silent_sockets_under_a_low_file_limit_do_not_stop_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let server = process::start_with_file_limit(dir.path(), &[], 256);
    let addr = server.base.trim_start_matches("http://").to_owned();

    let mut existing = Raw::connect_to(&server.base).await;
    existing.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
    assert_eq!(existing.answer(false).await.status, 200);

    let flood = async {
        let mut silent = Vec::new();
        for _ in 0..300 {
            silent.push(TcpStream::connect(&addr).await.expect("connect"));
        }
        silent
    };
    let silent = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("300 connections within 20 s");

    // A new client is served at once.
    let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap();
    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .expect("served");
    assert_eq!(health.status(), 200);

    // A PUT on the connection opened before the flood.
    let body = data(300_000, 1);
    let mut request = put_head(&body, "");
    request.extend_from_slice(&body);
    existing.send(&request).await;
    assert_eq!(existing.answer(false).await.status, 201);

    // And a new client's round trip.
    let other = data(300_000, 2);
    let key = BlobKey::of(&other);
    let put = client
        .put(format!("{}/blobs/{key}", server.base))
        .body(other.clone())
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);
    let got = client
        .get(format!("{}/blobs/{}", server.base, BlobKey::of(&body)))
        .send()
        .await
        .expect("GET");
    assert!(got.bytes().await.unwrap() == body);
    drop(silent);
    assert!(server.terminate().success());
}

/// The open-file limit lowered under a running node (its connection cap
/// was set for a higher one), so accepting does fail with EMFILE: the node
/// backs off and closes idle connections instead of failing, a PUT on an
/// existing connection gets no 500, and the node serves again once the
/// flood is gone.
#[tokio::test]
async fn accepts_failing_with_emfile_back_off_and_the_node_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = process::start_with(dir.path(), &["--header-read-timeout", "300ms"], &[]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::builder().timeout(PATIENCE).build().unwrap();

    let mut existing = Raw::connect_to(&server.base).await;
    existing.send(b"GET /healthz HTTP/1.1\r\nHost: blobcache\r\n\r\n").await;
    assert_eq!(existing.answer(false).await.status, 200);

    let lim = libc::rlimit {
        rlim_cur: 128,
        rlim_max: 128,
    };
    // SAFETY: prlimit on our own child, with a valid struct and no old-limit pointer.
    let rc = unsafe {
        libc::prlimit(
            server.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    let flood = async {
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(TcpStream::connect(&addr).await.expect("connect"));
        }
        silent
    };
    let silent = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("200 connections within 20 s");

    let body = data(300_000, 3);
    let mut request = put_head(&body, "");
    request.extend_from_slice(&body);
    existing.send(&request).await;
    let answer = existing.answer(false).await;
    match answer.status {
        201 => {}
        503 => answer.assert_error(503, "overloaded"),
        other => panic!("a PUT while out of descriptors: {other} {answer:?}"),
    }
    drop(silent);

    eventually_async("the node to serve new clients again", || async {
        let r = client.get(format!("{}/healthz", server.base)).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors =
        crate::common::sample(&metrics, "blobcache_http_accept_errors_total").expect("the accept error counter");
    assert!(errors >= 1.0, "accepting failed at least once");
    assert!(server.running(), "the node did not exit");
    assert!(server.terminate().success());
}
