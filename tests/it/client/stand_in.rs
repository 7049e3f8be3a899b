//! A stand-in HTTP server whose every answer a test decides; it records the requests.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

/// One answer: status, headers, body; `cut` drops the connection after the body sent so far.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub cut: bool,
}

type Handler = dyn Fn(usize, &http::request::Parts) -> Reply + Send + Sync;

pub struct Server {
    pub base: String,
    pub requests: Arc<Mutex<Vec<http::request::Parts>>>,
}

pub async fn start(handler: impl Fn(usize, &http::request::Parts) -> Reply + Send + Sync + 'static) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (handler, seen) = (handler.clone(), seen.clone());
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (parts, _) = req.into_parts();
                let reply = {
                    let mut seen = seen.lock().unwrap();
                    let reply = handler(seen.len(), &parts);
                    seen.push(parts);
                    reply
                };
                async move { Ok::<_, Infallible>(respond(reply)) }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(sock), service));
        }
    });
    Server { base, requests }
}

type Body = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn respond(reply: Reply) -> http::Response<Body> {
    let mut frames = vec![Ok(Frame::data(Bytes::from(reply.body)))];
    if reply.cut {
        frames.push(Err(std::io::Error::other("cut on purpose")));
    }
    let mut resp = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
    *resp.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        resp.headers_mut().insert(name, value.parse().unwrap());
    }
    resp
}
