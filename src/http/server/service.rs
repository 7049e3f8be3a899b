//! One connection's requests on their way to the router: the request body
//! watched for stalls, the response tracked until hyper is done with it (so
//! the connection knows when it is idle), and, past the connection cap, every
//! request but the probes shed with a 503.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Version, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::ServiceExt;

use super::ServerMetrics;
use super::registry::ConnState;
use crate::http::error::ApiError;
use crate::http::front::{REQUEST_ID, request_id};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an upload may go without a byte once the node is shutting down:
/// it was never acknowledged, so nothing is lost by cutting it, and waiting
/// for it would hold the shutdown to the end of its grace.
const STALL_AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// A request body that stopped arriving, or came too slowly.
#[derive(Debug, thiserror::Error)]
#[error("{}", match (.slow, .shutting_down) {
    (Some((bytes, rate)), _) => format!(
        "the upload came too slowly: {bytes} bytes in {}, under the {rate} bytes a second required (--min-body-rate)",
        humantime::format_duration(*.waited)
    ),
    (None, true) => format!("the upload stalled while the node shut down (no byte for {})", humantime::format_duration(*.waited)),
    (None, false) => format!("no byte of the request body arrived for {}", humantime::format_duration(*.waited)),
})]
pub struct BodyTimeout {
    pub waited: Duration,
    pub shutting_down: bool,
    /// Too slow rather than stalled: the bytes that came in `waited`, and the rate required.
    pub slow: Option<(u64, u64)>,
}

/// What answers the requests the connections read.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send;
}

impl Handler for crate::http::Front {
    fn handle(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send {
        self.call(req)
    }
}

impl Handler for Router {
    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let Ok(resp) = self.clone().oneshot(req).await;
        resp
    }
}

/// What every request of a connection shares.
#[derive(Debug)]
pub struct Shared<H> {
    pub handler: H,
    pub body_timeout: Duration,
    /// Bytes a second a request body must average over each `body_timeout` (0: no minimum).
    pub min_body_rate: u64,
    pub shutting_down: CancellationToken,
    pub metrics: Arc<ServerMetrics>,
}

/// The hyper service of one connection.
#[derive(Debug)]
pub struct ConnService<H> {
    pub shared: Arc<Shared<H>>,
    pub conn: Arc<ConnState>,
    /// On a TLS connection that was asked for a client certificate: whether it showed one.
    pub client_certificate: Option<crate::tls::ClientCertificate>,
}

/// Marks its request ended when dropped: with the response body, once hyper
/// sent it (or gave up on it).
#[derive(Debug)]
struct Ended(Arc<ConnState>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for ConnService<H> {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(cert) = self.client_certificate {
            req.extensions_mut().insert(cert);
        }
        if self.conn.is_h2() {
            // HTTP/1 heads were counted by the gate as they came in.
            self.conn.begin();
        }
        let ended = Ended(self.conn.clone());
        let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
        // The gate stops checking heads after a chunked body (their end is
        // hyper's to find), so such a connection serves no further request.
        let close = h1 && (self.conn.overflow || req.headers().contains_key(header::TRANSFER_ENCODING));
        let shed = self.conn.overflow && !matches!(req.uri().path(), "/healthz" | "/readyz");
        if self.conn.overflow {
            // One request per overflow connection, HTTP/2 included: it closes once this one is answered.
            self.conn.close.cancel();
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut resp = if shed {
                let mut resp = ApiError::overloaded().into_response();
                let id = request_id(req.headers());
                resp.headers_mut().insert(REQUEST_ID, id);
                resp
            } else {
                let req = req.map(|body| {
                    // A request without a body (most GETs) needs no watch.
                    if hyper::body::Body::is_end_stream(&body) {
                        Body::empty()
                    } else {
                        Body::new(Watched::new(body, &shared))
                    }
                });
                shared.handler.handle(req).await
            };
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp.map(|inner| Tracked { inner, _ended: ended }))
        })
    }
}

/// A response body, with the mark that its request ended.
#[derive(Debug)]
pub struct Tracked {
    inner: Body,
    _ended: Ended,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with `BodyTimeout` when no bytes come for
/// `--body-timeout` while it is waited on, or for a second once the node is
/// shutting down, or when fewer than `--min-body-rate` bytes a second came
/// over a whole `--body-timeout`. Its timers exist only once a read has to wait.
struct Watched {
    inner: Incoming,
    limit: Duration,
    min_rate: u64,
    /// Since when bytes are counted towards the rate (the first byte), and how many came.
    window: Option<(Instant, u64)>,
    shutting_down: CancellationToken,
    at_shutdown: bool,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    metrics: Arc<ServerMetrics>,
}

impl Watched {
    fn new<H>(inner: Incoming, shared: &Shared<H>) -> Self {
        Watched {
            inner,
            limit: shared.body_timeout,
            min_rate: shared.min_body_rate,
            window: None,
            shutting_down: shared.shutting_down.clone(),
            at_shutdown: false,
            cancelled: None,
            sleep: None,
            armed: false,
            metrics: shared.metrics.clone(),
        }
    }
}

impl Watched {
    /// Count `n` bytes that came; too few over a whole `limit` is an error.
    fn count(&mut self, n: u64) -> Result<(), BodyTimeout> {
        let now = Instant::now();
        let (since, bytes) = self.window.get_or_insert((now, 0));
        *bytes += n;
        let elapsed = now - *since;
        if self.min_rate == 0 || elapsed < self.limit {
            return Ok(());
        }
        if (*bytes as f64) < self.min_rate as f64 * elapsed.as_secs_f64() {
            return Err(BodyTimeout {
                waited: elapsed,
                shutting_down: false,
                slow: Some((*bytes, self.min_rate)),
            });
        }
        self.window = Some((now, 0));
        Ok(())
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            if let Some(Ok(f)) = &frame
                && let Some(data) = f.data_ref()
                && let Err(slow) = this.count(data.len() as u64)
            {
                this.metrics.closed.with_label_values(&["body_timeout"]).inc();
                return Poll::Ready(Some(Err(Box::new(slow))));
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !this.at_shutdown {
            let token = &this.shutting_down;
            let cancelled = this
                .cancelled
                .get_or_insert_with(|| Box::pin(token.clone().cancelled_owned()));
            if cancelled.as_mut().poll(cx).is_ready() {
                this.at_shutdown = true;
                this.armed = false;
            }
        }
        let waited = if this.at_shutdown {
            this.limit.min(STALL_AT_SHUTDOWN)
        } else {
            this.limit
        };
        let deadline = Instant::now() + waited;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            sleep.as_mut().reset(deadline);
            this.armed = true;
        }
        if sleep.as_mut().poll(cx).is_ready() {
            this.armed = false;
            this.metrics.closed.with_label_values(&["body_timeout"]).inc();
            let error = BodyTimeout {
                waited,
                shutting_down: this.at_shutdown,
                slow: None,
            };
            return Poll::Ready(Some(Err(Box::new(error))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
