//! The socket as hyper sees it. Reads: each HTTP/1 request head is held back
//! until it is complete and checked (`head.rs`), within the header-read
//! timeout; a connection with nothing in flight is closed at its idle
//! deadline. Writes: a client that stops reading is cut after the send
//! timeout. A refused head is answered with a JSON error once hyper is done
//! with the requests before it, then the connection closes.
//!
//! How a refusal reaches the client: the gate stops giving hyper bytes and,
//! once no request is in flight, reports end of file; hyper, idle, closes the
//! connection gracefully: it flushes what it had to send, then calls
//! `poll_shutdown`, where the gate writes its answer, shuts the socket down,
//! and drains what the client still sends for a moment (closing a socket with
//! unread input resets it, and the client could lose the answer).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::ServerMetrics;
use super::head::{self, BodyLength, H2_PREFACE, HeadLimits, Refusal, http1_answer};
use super::registry::ConnState;
use super::timer::Timer;
use crate::http::error::ApiError;
use crate::http::settings::Limits;

/// How long, and how much, a closing connection reads and discards what the client still sends.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Overflow connections get at most this long for their one request's head.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read at a time while a head is being collected.
const HEAD_READ: usize = 8 * 1024;

/// The protocol a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (the client opened with the preface).
    Http2,
    /// The client closed, or said nothing before the header-read timeout.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first bytes decide HTTP/1 or HTTP/2.
    Sniff,
    /// Every head is checked.
    Http1,
    /// Bytes go straight through: HTTP/2, or an HTTP/1 connection after a
    /// chunked request (its answer closes the connection: the end of a chunked
    /// body is known to hyper alone).
    Through,
    /// A head was refused: hyper gets no more bytes.
    Refused,
}

/// Why a read deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Nothing was ever sent.
    Silent,
    /// A head was begun and not finished.
    Head,
    /// Nothing in flight and no new request.
    Idle,
}

#[derive(Debug)]
enum Closing {
    Answer,
    Shutdown,
    Linger { until: Instant, left: usize },
    Done,
}

/// The checks a `Gate` applies.
#[derive(Debug, Clone)]
pub struct GateLimits {
    pub head: HeadLimits,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

impl GateLimits {
    pub fn new(l: &Limits) -> Self {
        GateLimits {
            head: HeadLimits {
                max_size: l.max_header_size.as_u64() as usize,
                max_headers: l.max_headers,
            },
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            send_timeout: l.send_timeout,
        }
    }
}

/// A client connection's socket, checked and timed; see the module comment.
#[derive(Debug)]
pub struct Gate<S> {
    io: S,
    conn: Arc<ConnState>,
    limits: Arc<GateLimits>,
    metrics: Arc<ServerMetrics>,
    mode: Mode,
    /// Bytes read and not yet given to hyper: the first `ready` are checked.
    buf: BytesMut,
    ready: usize,
    /// How far past `ready` the search for the end of the head got.
    scanned: usize,
    /// Bytes of the current body not yet read (HTTP/1, known length).
    body_left: u64,
    /// When the first byte of the head being collected arrived.
    head_started: Option<Instant>,
    /// The answer to a refused head, written at shutdown.
    answer: Option<Bytes>,
    /// An idle HTTP/2 connection was asked to close (a GOAWAY): it gets
    /// `LINGER` more to do so before its reads end.
    goaway: bool,
    read_timer: Timer,
    write_timer: Timer,
    /// Since when writes have been blocked (the client is not reading).
    write_blocked: Option<Instant>,
    closing: Closing,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Gate<S> {
    pub fn new(io: S, conn: Arc<ConnState>, limits: Arc<GateLimits>, metrics: Arc<ServerMetrics>) -> Self {
        Gate {
            io,
            conn,
            limits,
            metrics,
            mode: Mode::Sniff,
            buf: BytesMut::new(),
            ready: 0,
            scanned: 0,
            body_left: 0,
            head_started: None,
            goaway: false,
            answer: None,
            read_timer: Timer::default(),
            write_timer: Timer::default(),
            write_blocked: None,
            closing: Closing::Answer,
        }
    }

    /// Read the first bytes: the HTTP/2 preface, or anything else (HTTP/1).
    pub async fn sniff(&mut self) -> Protocol {
        std::future::poll_fn(|cx| self.poll_sniff(cx)).await
    }

    fn poll_sniff(&mut self, cx: &mut Context<'_>) -> Poll<Protocol> {
        loop {
            if !self.buf.is_empty() && !H2_PREFACE.starts_with(&self.buf[..self.buf.len().min(H2_PREFACE.len())]) {
                self.mode = Mode::Http1;
                self.process();
                return Poll::Ready(Protocol::Http1);
            }
            if self.buf.len() >= H2_PREFACE.len() {
                self.mode = Mode::Through;
                self.ready = self.buf.len();
                self.conn.set_h2();
                return Poll::Ready(Protocol::Http2);
            }
            // Checked (and its timer armed) before reading: from here on the
            // connection always has a wake-up armed, at or before its deadline.
            let deadline = self.conn.accepted() + self.header_read_timeout();
            if self.read_timer.expired(cx, deadline) {
                if self.buf.is_empty() {
                    self.metrics.closed.with_label_values(&["header_timeout"]).inc();
                    return Poll::Ready(Protocol::Closed);
                }
                // A partial preface: HTTP/1's own deadline refuses it.
                self.mode = Mode::Http1;
                return Poll::Ready(Protocol::Http1);
            }
            match ready!(self.read_more(cx, HEAD_READ)) {
                Ok(0) | Err(_) => return Poll::Ready(Protocol::Closed),
                Ok(_) => continue,
            }
        }
    }

    fn header_read_timeout(&self) -> Duration {
        let t = self.limits.header_read_timeout;
        if self.conn.overflow {
            t.min(OVERFLOW_HEADER_TIMEOUT)
        } else {
            t
        }
    }

    /// Read up to `max` more bytes into `buf`.
    fn read_more(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(max);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut (&mut self.buf).limit(max))
    }

    /// The read deadline that applies now, if any: none while a request is in flight.
    fn read_deadline(&self) -> Option<(Instant, Expiry)> {
        if self.conn.in_flight() > 0 {
            return None;
        }
        let header = self.header_read_timeout();
        let collecting = self.buf.len() > self.ready;
        match self.mode {
            Mode::Sniff | Mode::Http1 if !self.conn.has_begun() => {
                let why = if collecting { Expiry::Head } else { Expiry::Silent };
                Some((self.conn.accepted() + header, why))
            }
            Mode::Sniff | Mode::Http1 if collecting => {
                let started = self.head_started.unwrap_or_else(|| self.conn.idle_since());
                Some((started.max(self.conn.idle_since()) + header, Expiry::Head))
            }
            Mode::Sniff | Mode::Http1 | Mode::Through if self.conn.has_begun() => {
                let linger = if self.goaway { LINGER } else { Duration::ZERO };
                Some((self.conn.idle_since() + self.limits.idle_timeout + linger, Expiry::Idle))
            }
            Mode::Sniff | Mode::Http1 | Mode::Through => Some((self.conn.accepted() + header, Expiry::Idle)),
            Mode::Refused => None,
        }
    }

    /// Check what was read since the last head: release checked heads and
    /// their bodies' bytes (up to `ready`), or refuse.
    fn process(&mut self) {
        loop {
            let avail = (self.buf.len() - self.ready) as u64;
            if self.body_left > 0 {
                let n = self.body_left.min(avail);
                self.ready += n as usize;
                self.body_left -= n;
                if self.body_left > 0 {
                    return;
                }
                continue;
            }
            let rest = &self.buf[self.ready..];
            if rest.is_empty() {
                self.head_started = None;
                return;
            }
            // A head has begun: its time runs from its first byte (or from
            // when the connection turned idle, for one sent ahead).
            self.head_started.get_or_insert_with(Instant::now);
            let Some(skip) = head::skip_empty_lines(rest) else {
                return;
            };
            let end = head::find_end(&rest[skip..], self.scanned).map(|e| e + skip);
            let Some(end) = end else {
                // Empty lines before a head count towards its size: a flood of them is no head at all.
                if let Some(refusal) = head::refuse_unfinished(rest, &self.limits.head) {
                    self.refuse(refusal);
                } else {
                    self.scanned = rest.len() - skip;
                }
                return;
            };
            match head::check(&rest[..end], &self.limits.head) {
                Ok(checked) => {
                    self.conn.begin();
                    self.scanned = 0;
                    self.ready += end;
                    self.head_started = None;
                    match checked.body {
                        BodyLength::Known(n) => self.body_left = n,
                        BodyLength::Chunked => {
                            self.mode = Mode::Through;
                            self.ready = self.buf.len();
                            return;
                        }
                    }
                }
                Err(refusal) => {
                    self.refuse(refusal);
                    return;
                }
            }
        }
    }

    /// Stop giving hyper bytes, and keep the JSON answer for when it closes.
    fn refuse(&mut self, refusal: Refusal) {
        let head_request = head::is_head_request(&self.buf[self.ready..]);
        let error = ApiError::from(refusal);
        tracing::info!(status = error.status.as_u16(), error = error.code, message = %error.message, "refused a request head");
        self.metrics.refused.with_label_values(&[error.code]).inc();
        self.answer = Some(http1_answer(error, head_request));
        self.buf.truncate(self.ready);
        self.mode = Mode::Refused;
    }

    /// A read deadline passed: refuse the head begun, or just end the connection.
    fn on_expiry(&mut self, why: Expiry) {
        match why {
            Expiry::Head => self.refuse(Refusal::HeaderTimeout(self.header_read_timeout())),
            Expiry::Silent => {
                self.metrics.closed.with_label_values(&["header_timeout"]).inc();
                self.mode = Mode::Refused;
            }
            // HTTP/2 says goodbye with a GOAWAY: hyper sends it when asked to
            // close gracefully, and the client's connection ends cleanly.
            Expiry::Idle if self.mode == Mode::Through && self.conn.is_h2() && !self.goaway => {
                self.metrics.closed.with_label_values(&["idle_timeout"]).inc();
                self.goaway = true;
                self.conn.close.cancel();
            }
            Expiry::Idle => {
                if !self.goaway {
                    self.metrics.closed.with_label_values(&["idle_timeout"]).inc();
                }
                self.mode = Mode::Refused;
            }
        }
    }

    /// Note a write's outcome: progress clears the send deadline; a blocked
    /// write past it fails the connection.
    fn after_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let since = *self.write_blocked.get_or_insert_with(Instant::now);
                let limit = self.limits.send_timeout;
                if self.write_timer.expired(cx, since + limit) {
                    self.metrics.closed.with_label_values(&["send_timeout"]).inc();
                    tracing::info!(timeout = ?limit, "closing a connection whose client stopped reading");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit:?}"),
                    )));
                }
                Poll::Pending
            }
            done => {
                self.write_blocked = None;
                done
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gate<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            match this.read_deadline() {
                Some((at, why)) if this.read_timer.expired(cx, at) => this.on_expiry(why),
                Some(_) => {}
                // While requests are in flight, a wake-up now and then looks
                // again: once they are done, the idle deadline must be armed.
                // A head already begun has a nearer deadline: be woken as soon
                // as the connection is idle.
                None if this.mode != Mode::Refused => {
                    let now = Instant::now();
                    this.read_timer.wake_by(cx, now + this.limits.idle_timeout, now);
                    if this.buf.len() > this.ready {
                        this.conn.wake_when_idle(cx);
                    }
                }
                None => {}
            }
            match this.mode {
                Mode::Refused => {
                    // End of file, but an answer waits until hyper is done with
                    // the requests before it: idle, hyper closes, and the answer goes out.
                    return if this.answer.is_some() && this.conn.in_flight() > 0 {
                        this.conn.wake_when_idle(cx);
                        Poll::Pending
                    } else {
                        Poll::Ready(Ok(()))
                    };
                }
                Mode::Through => return Pin::new(&mut this.io).poll_read(cx, out),
                Mode::Http1 if this.body_left > 0 && this.buf.is_empty() => {
                    // Straight into hyper's buffer, never past the end of the body.
                    let mut body = (&mut this.io).take(this.body_left);
                    let before = out.filled().len();
                    ready!(Pin::new(&mut body).poll_read(cx, out))?;
                    this.body_left -= (out.filled().len() - before) as u64;
                    return Poll::Ready(Ok(()));
                }
                Mode::Http1 | Mode::Sniff => {
                    let room = (this.limits.head.max_size + 1).saturating_sub(this.buf.len());
                    match ready!(this.read_more(cx, room.clamp(1, HEAD_READ))) {
                        Ok(0) | Err(_) => {
                            // The client went away, perhaps in the middle of a head: nothing to answer.
                            this.buf.truncate(this.ready);
                            this.mode = Mode::Refused;
                        }
                        Ok(_) => this.process(),
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not progress: only bytes written are (hyper flushes only once its buffer is written).
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// hyper is done, having flushed what it had to send: write the answer to
    /// a refused head (if any), shut the socket down, and linger.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Answer => {
                    while let Some(answer) = this.answer.as_mut().filter(|a| !a.is_empty()) {
                        let r = Pin::new(&mut this.io).poll_write(cx, answer);
                        let n = ready!(this.after_write(cx, r))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        this.answer.as_mut().expect("checked above").advance(n);
                    }
                    this.closing = Closing::Shutdown;
                }
                Closing::Shutdown => {
                    // A client that already reset the connection is no reason to fail the close.
                    let _ = ready!(Pin::new(&mut this.io).poll_shutdown(cx));
                    this.closing = Closing::Linger {
                        until: Instant::now() + LINGER,
                        left: LINGER_BYTES,
                    };
                }
                Closing::Linger { until, left } => {
                    let (until, left) = (*until, *left);
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() && rb.filled().len() < left => {
                            this.closing = Closing::Linger {
                                until,
                                left: left - rb.filled().len(),
                            };
                        }
                        Poll::Ready(_) => this.closing = Closing::Done,
                        Poll::Pending if this.read_timer.expired(cx, until) => this.closing = Closing::Done,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
