//! The connection layer: accepts clients, holds each connection to the limits
//! of `--header-read-timeout`, `--idle-timeout`, `--body-timeout`,
//! `--send-timeout`, `--max-connections`, `--max-header-size` and
//! `--max-headers`, and serves HTTP/1.1 (and HTTP/2 with prior knowledge) with
//! hyper, each request going to its handler (the API's `Front`).
//!
//! - `gate.rs`: the socket as hyper sees it: heads checked, deadlines, and
//!   JSON answers to heads refused before hyper parses them.
//! - `head.rs`: the checks of one HTTP/1 request head (no I/O).
//! - `registry.rs`: who is connected; room made at the cap.
//! - `tls.rs`: the TLS handshake, timed, and the answer to plain HTTP sent
//!   to a TLS port.
//! - `service.rs`: each request's way to the router: a body that fails when
//!   it stalls, a response tracked until it was sent.
//!
//! At the cap, idle connections are closed to make room: first those that
//! never sent a whole request, oldest first, then kept-alive ones. When every
//! connection has a request in flight, a few more are admitted to answer
//! `/healthz` and `/readyz` as usual (a busy node must not fail its probes and
//! be restarted) and everything else with 503 `overloaded`; beyond those, new
//! connections wait in the listen backlog.

mod gate;
mod head;
mod registry;
mod service;
mod timer;
mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settings::Limits;
use crate::metrics;
use crate::tls::{ClientCertificate, ServerTls};
use gate::{Gate, GateLimits, Protocol};
pub use head::Refusal;
use registry::{ConnState, Registry, Slot};
pub use service::{BodyTimeout, Handler};
use service::{ConnService, Shared};

/// The connection layer's metrics.
#[derive(Debug)]
pub struct ServerMetrics {
    /// Connections closed by a limit: `header_timeout`, `idle_timeout`,
    /// `send_timeout`, `body_timeout`, `evicted`.
    closed: IntCounterVec,
    /// Request heads refused before the router, by error code.
    refused: IntCounterVec,
    /// Connections admitted past the cap (probes answered, the rest 503).
    shed: IntCounter,
    accept_errors: IntCounter,
}

impl ServerMetrics {
    fn new(registry: &prometheus::Registry) -> Self {
        ServerMetrics {
            closed: metrics::counter_vec(
                registry,
                "blobcache_http_connections_closed_total",
                "Connections closed by a limit, by reason (header_timeout, idle_timeout, body_timeout, send_timeout, evicted)",
                &["reason"],
            ),
            refused: metrics::counter_vec(
                registry,
                "blobcache_http_refused_total",
                "Request heads refused before reaching a handler, by error code",
                &["error"],
            ),
            shed: metrics::counter(
                registry,
                "blobcache_http_connections_shed_total",
                "Connections admitted past --max-connections: probes answered, other requests 503",
            ),
            accept_errors: metrics::counter(
                registry,
                "blobcache_http_accept_errors_total",
                "Failed accepts of a connection (out of file descriptors, above all)",
            ),
        }
    }
}

/// Where connections come from; a trait so tests can make accepting fail.
pub trait Accept: Send + 'static {
    fn accept(&mut self) -> impl Future<Output = io::Result<TcpStream>> + Send;
}

impl Accept for TcpListener {
    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serve `router` on `listener` until `shutdown` fires, then stop accepting
/// and close every connection gracefully: requests in flight finish, idle
/// connections close at once. The future resolves when the last connection closed.
pub fn serve<H: Handler>(
    listener: impl Accept,
    handler: H,
    limits: &Limits,
    tls: Option<Arc<ServerTls>>,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let metrics = Arc::new(ServerMetrics::new(registry));
    let cap = connection_cap(limits.max_connections);
    tracing::info!(max_connections = cap, "connection limit");
    let conns = Registry::new(cap, metrics.clone());
    let counted = conns.clone();
    metrics::computed_gauge(
        registry,
        "blobcache_http_connections",
        "Open client connections",
        move || counted.open() as f64,
    );
    metrics::computed_gauge(
        registry,
        "blobcache_http_connections_max",
        "Client connections served at once (--max-connections, held to half the open-file limit)",
        move || cap as f64,
    );
    let shared = Arc::new(Shared {
        handler,
        body_timeout: limits.body_timeout,
        min_body_rate: limits.min_body_rate.as_u64(),
        shutting_down: shutdown.clone(),
        metrics,
    });
    let gate_limits = Arc::new(GateLimits::new(limits));
    async move {
        let tasks = TaskTracker::new();
        accept_loop(listener, &conns, &tasks, &shutdown, |tcp, slot| {
            connection(tcp, slot, shared.clone(), gate_limits.clone(), tls.clone())
        })
        .await;
        tasks.close();
        tasks.wait().await;
    }
}

/// Accept until `shutdown`; each connection runs in its own task. A failed
/// accept never ends the loop: out of file descriptors, it closes an idle
/// connection and waits a little (5 ms, doubling to 1 s) before the next try.
async fn accept_loop<A, F, Fut>(
    mut listener: A,
    conns: &Arc<Registry>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    serve: F,
) where
    A: Accept,
    F: Fn(TcpStream, Slot) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(tcp) => {
                backoff.reset();
                // At the cap with nothing idle to close, wait here: new clients stay in the backlog.
                let Some(slot) = conns.admit(shutdown, shutdown.child_token()).await else {
                    return;
                };
                // Bodies stream in many writes: no Nagle delay between them (and none on the first bytes).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
                tasks.spawn(serve(tcp, slot));
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                conns.metrics().accept_errors.inc();
                let delay = backoff.next();
                if delay == Backoff::FIRST {
                    tracing::warn!(error = %e, connections = conns.open(), "cannot accept connections; closing idle ones and retrying");
                }
                // Out of file descriptors: an idle connection's is the one to free.
                conns.evict_one();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Errors of one connection that came and went, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The wait before the next accept after a failure.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    fn next(&mut self) -> Duration {
        let delay = Self::FIRST.saturating_mul(1 << self.failures.min(10)).min(Self::MAX);
        self.failures += 1;
        delay
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `--max-connections`, held to (open-file limit - 64) / 2: the other
/// descriptors are for the cache's files, the spool's, the store's
/// connections, and a file or two for each request in flight. The soft limit
/// is first raised to the hard one.
fn connection_cap(configured: usize) -> usize {
    let Some(files) = raise_open_file_limit() else {
        return configured;
    };
    let budget = (files.saturating_sub(64) / 2).max(1);
    if configured > budget {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = files,
            using = budget,
            "--max-connections is above what the open-file limit allows: (limit - 64) / 2"
        );
    }
    configured.min(budget)
}

/// Raise the soft limit on open files to the hard one; the limit now in
/// force, or `None` when unlimited or unknown.
fn raise_open_file_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then(|| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// Serve one connection (after its TLS handshake, on a TLS port).
async fn connection<H: Handler>(
    tcp: TcpStream,
    slot: Slot,
    shared: Arc<Shared<H>>,
    limits: Arc<GateLimits>,
    tls: Option<Arc<ServerTls>>,
) {
    let conn = slot.state.clone();
    match tls {
        None => serve_connection(tcp, conn, shared, limits, None).await,
        Some(tls) => {
            let handshake = tls::handshake(tcp, &tls, conn.accepted() + limits.header_read_timeout);
            let stream = tokio::select! {
                s = handshake => s,
                _ = conn.close.cancelled() => None,
            };
            if let Some(stream) = stream {
                let cert = tls.asks_client_certificates().then(|| ClientCertificate {
                    verified: stream.get_ref().1.peer_certificates().is_some(),
                });
                serve_connection(stream, conn, shared, limits, cert).await;
            }
        }
    }
    drop(slot);
}

/// Sniff the connection's protocol, then serve it with hyper until it ends,
/// closing it gracefully when evicted or when the node shuts down.
async fn serve_connection<S, H: Handler>(
    io: S,
    conn: Arc<ConnState>,
    shared: Arc<Shared<H>>,
    limits: Arc<GateLimits>,
    client_certificate: Option<ClientCertificate>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let close = conn.close.clone();
    let mut gate = Gate::new(io, conn.clone(), limits.clone(), shared.metrics.clone());
    let protocol = tokio::select! {
        p = gate.sniff() => p,
        _ = close.cancelled() => Protocol::Closed,
    };
    let service = ConnService {
        shared,
        conn,
        client_certificate,
    };
    let io = TokioIo::new(gate);
    let result = match protocol {
        Protocol::Closed => Ok(()),
        Protocol::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .keep_alive(true)
                .max_headers(limits.head.max_headers)
                // The gate times the heads (hyper's timer would start with every idle wait).
                .header_read_timeout(None);
            let conn = builder.serve_connection(io, service);
            run(conn, &close, |c| c.graceful_shutdown()).await
        }
        Protocol::Http2 => {
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.max_header_list_size(limits.head.max_size as u32);
            let conn = builder.serve_connection(io, service);
            run(conn, &close, |c| c.graceful_shutdown()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %crate::error_chain(&e), "connection ended with an error");
    }
}

/// Drive a hyper connection to its end; when `close` fires, ask it to finish
/// gracefully (requests in flight complete) and keep driving it.
async fn run<C>(conn: C, close: &CancellationToken, graceful: impl FnOnce(std::pin::Pin<&mut C>)) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = close.cancelled() => graceful(conn.as_mut()),
    }
    conn.await
}

#[cfg(test)]
mod tests;
