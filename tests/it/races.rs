//! A PUT and a DELETE of one blob sent at once end as one of the two serial
//! orders: the blob is durable (pending or stored) and served, or it is gone
//! everywhere (not served, not pending, not in the store), and stays so across
//! a restart. Neither request fails.

use blobcache::key::BlobKey;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestApp, data, partial_put, test_settings};

/// Read an HTTP answer (status and the text after it) from a raw socket.
async fn read_answer(sock: &mut tokio::net::TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer is small and the server closes nothing: read until the body is in.
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), sock.read(&mut buf))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if n == 0 || (text.contains("\r\n\r\n") && text.trim_end().ends_with('}')) {
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            return (status, text);
        }
    }
}

const ROUNDS: u64 = 100;

/// What the node says of a blob: (GET status, body matches, pending, in store, cached).
async fn state(app: &TestApp, key: &BlobKey, blob: &[u8]) -> (u16, bool, bool, bool, bool) {
    let resp = app.get(key).await;
    let status = resp.status().as_u16();
    let same = resp.bytes().await.unwrap() == blob;
    let st = app.status(key).await;
    (
        status,
        same,
        st["pending"] == true,
        st["in_store"] == true,
        st["cached"] == true,
    )
}

/// Served exactly when durable; gone means gone from everywhere.
fn consistent(round: u64, (status, same, pending, stored, cached): (u16, bool, bool, bool, bool)) {
    match status {
        200 => assert!(same && (pending || stored), "round {round}: served but not durable"),
        404 => assert!(
            !pending && !stored && !cached,
            "round {round}: gone, yet pending {pending}, stored {stored}, cached {cached}"
        ),
        other => panic!("round {round}: GET answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_and_a_delete_sent_at_once_end_as_one_of_the_two_orders() {
    let app = TestApp::spawn_with(test_settings()).await;
    let blobs: Vec<Vec<u8>> = (0..ROUNDS).map(|i| data(2000 + i as usize, 4000 + i)).collect();
    for (round, blob) in blobs.iter().enumerate() {
        let key = BlobKey::of(blob);
        // The PUT's body goes up all but its last byte; then the last byte
        // and the DELETE go, the DELETE up to 2 ms later as the round says
        // (not a wait for anything: a spread of interleavings, so that the
        // DELETE lands before, during and after the PUT is made durable).
        let mut sock = partial_put(&app.base, blob, blob.len() - 1).await;
        let delete = {
            let (client, url) = (app.client.clone(), app.blob_url(&key));
            let lag = std::time::Duration::from_micros(round as u64 % 20 * 100);
            tokio::spawn(async move {
                tokio::time::sleep(lag).await;
                client.delete(url).send().await.unwrap()
            })
        };
        sock.write_all(&blob[blob.len() - 1..]).await.unwrap();
        let (put_status, put_answer) = read_answer(&mut sock).await;
        let delete = delete.await.unwrap();
        assert!(
            put_status == 201 || put_status == 200,
            "round {round}: PUT {put_status}: {put_answer}"
        );
        assert_eq!(delete.status(), 204, "round {round}: DELETE");
        consistent(round as u64, state(&app, &key, blob).await);
    }
    app.replicated().await;
    let mut served = Vec::new();
    for (round, blob) in blobs.iter().enumerate() {
        let s = state(&app, &BlobKey::of(blob), blob).await;
        consistent(round as u64, s);
        assert!(!s.2, "round {round}: nothing stays pending once the queue drained");
        served.push(s.0 == 200);
    }
    // Both orders happen.
    let kept = served.iter().filter(|s| **s).count();
    eprintln!("served after the race: {kept} of {ROUNDS}");
    // And a restart changes nothing.
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, test_settings()).await;
    for (round, blob) in blobs.iter().enumerate() {
        let s = state(&app, &BlobKey::of(blob), blob).await;
        consistent(round as u64, s);
        assert_eq!(
            s.0 == 200,
            served[round],
            "round {round}: the restart changed whether it is served"
        );
    }
}
