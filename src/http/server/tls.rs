//! The TLS handshake of a connection on a TLS port, bounded by the
//! header-read timeout (a client that opens a connection and says nothing
//! holds it no longer over TLS than without). A client that speaks plain HTTP
//! to the port gets a JSON 400 in plain HTTP, as nginx does, instead of a TLS
//! alert it cannot read.

use std::time::Duration;

use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::server::TlsStream;

use super::head::http1_answer;
use crate::http::error::ApiError;
use crate::tls::ServerTls;

/// The first byte of a TLS record that opens a handshake.
const HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS stream of a client, or `None` when the handshake failed, timed
/// out, or the client spoke plain HTTP (answered here).
pub async fn handshake(tcp: TcpStream, tls: &ServerTls, deadline: Instant) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        // Closed, failed, or silent until the deadline.
        Ok(_) => return None,
        Err(_) => {
            tls.handshake_failures.inc();
            return None;
        }
    }
    if first[0] != HANDSHAKE_RECORD {
        if first[0].is_ascii_alphabetic() {
            tls.plain_http.inc();
            answer_plain_http(tcp).await;
        } else {
            tls.handshake_failures.inc();
        }
        return None;
    }
    match timeout_at(deadline, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tls.handshake_failures.inc();
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tls.handshake_failures.inc();
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Answer a plain HTTP request with 400 and close. What the client sent is
/// read first (briefly), and what it still sends after the answer drained for
/// a moment: closing a socket with unread input resets it, and the client
/// could lose the answer.
async fn answer_plain_http(mut tcp: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    let _ = timeout(Duration::from_millis(200), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let error = ApiError::new(
        StatusCode::BAD_REQUEST,
        "tls_required",
        "this port speaks HTTPS: send the request with https://",
    );
    let answer = http1_answer(error, head.starts_with(b"HEAD "));
    if timeout(Duration::from_secs(1), tcp.write_all(&answer)).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    let _ = timeout(Duration::from_secs(1), async {
        let mut left = 1usize << 20;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
