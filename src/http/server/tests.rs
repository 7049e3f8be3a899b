//! The accept loop when accepting fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

/// A listener that hands out its first connection, then fails `failures`
/// times as a process out of file descriptors does, then works again.
struct Failing {
    real: TcpListener,
    failures: usize,
    calls: Arc<AtomicUsize>,
}

impl Accept for Failing {
    async fn accept(&mut self) -> io::Result<TcpStream> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call >= 1 && call <= self.failures {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        self.real.accept().await.map(|(s, _)| s)
    }
}

#[tokio::test]
async fn out_of_descriptors_backs_off_frees_an_idle_connection_and_goes_on() {
    let real = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = real.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = 6;
    let listener = Failing {
        real,
        failures,
        calls: calls.clone(),
    };
    let router = Router::new().route("/healthz", get(|| async { "ok" }));
    let shutdown = CancellationToken::new();
    let limits = Limits::default();
    let server = tokio::spawn(serve(
        listener,
        router,
        &limits,
        None,
        &prometheus::Registry::new(),
        shutdown.clone(),
    ));

    // A silent connection, accepted before the failures: the one whose descriptor is freed.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer))
        .await
        .expect("served after the failures")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // 5 + 10 + 20 + 40 + 80 + 160 ms of waiting, not a spin through the failures.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        failures + 3,
        "one call per failure, no retry storm"
    );

    // The silent connection was closed to free its descriptor, long before its header timeout.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stops")
        .unwrap();
}

#[test]
fn backoff_doubles_to_a_second() {
    let mut b = Backoff::default();
    let waits: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    b.reset();
    assert_eq!(b.next(), Backoff::FIRST);
}
