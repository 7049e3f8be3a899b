//! The streaming half of `get`: GET the blob (or the rest of it) into a sink,
//! hashing every byte, and resume where a lost connection left off.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use indicatif::ProgressBar;
use md5::{Digest, Md5};
use reqwest::{Method, Response, StatusCode, header};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::api::{self, Api, SHORT_TIMEOUT};
use super::error::ClientError;
use super::progress;
use crate::key::BlobKey;

/// How often a download cut short is resumed within one run.
const MAX_RESUMES: u32 = 3;
/// Longest wait for more of a body before the connection counts as lost.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The bytes received so far and their running MD5.
pub struct Received {
    pub len: u64,
    pub hasher: Md5,
}

impl Received {
    pub fn new() -> Self {
        Received {
            len: 0,
            hasher: Md5::new(),
        }
    }

    pub fn key(&self) -> BlobKey {
        BlobKey::from_digest(self.hasher.clone())
    }
}

/// Where the bytes go: a partial file that can start over, or stdout, which cannot.
pub enum Sink {
    File {
        path: PathBuf,
        out: BufWriter<tokio::fs::File>,
    },
    Stdout(BufWriter<tokio::io::Stdout>),
}

impl Sink {
    pub fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Sink::File { out, .. } => out,
            Sink::Stdout(out) => out,
        }
    }

    pub fn io_error(&self, e: std::io::Error) -> ClientError {
        match self {
            Sink::File { path, .. } => ClientError::io(path, e),
            Sink::Stdout(_) => ClientError::io("stdout", e),
        }
    }

    /// The server sent the whole blob where a range was asked: a file starts
    /// over; stdout cannot take its bytes back, so the first `len` bytes of
    /// the new body are skipped (they were written, and hashed, already).
    async fn restart(&mut self, got: &mut Received) -> Result<u64, ClientError> {
        match self {
            Sink::File { path, out } => {
                let truncated = async {
                    out.flush().await?;
                    out.get_mut().set_len(0).await
                };
                truncated.await.map_err(|e| ClientError::io(&*path, e))?;
                *got = Received::new();
                Ok(0)
            }
            Sink::Stdout(_) => Ok(got.len),
        }
    }
}

pub fn check(key: BlobKey, got: &Received) -> Result<(), String> {
    let actual = got.key();
    if actual == key {
        Ok(())
    } else {
        Err(format!(
            "integrity failure: the {} bytes received have MD5 {actual}, not {key}",
            got.len
        ))
    }
}

/// Fetch the rest of the blob into `sink`, resuming (a bounded number of
/// times) where a lost connection left off.
pub async fn download(
    api: &Api,
    key: BlobKey,
    sink: &mut Sink,
    got: &mut Received,
    bar: &ProgressBar,
) -> Result<(), ClientError> {
    let mut resumes = 0;
    loop {
        let before = got.len;
        match fetch(api, key, sink, got, bar).await {
            // Only a body cut short is resumed, not a server that cannot be reached at all.
            Err(e @ ClientError::Unreachable { .. }) if got.len > before && resumes < MAX_RESUMES => {
                resumes += 1;
                progress::note(&format!("{e}; resuming at byte {}", got.len));
                tokio::time::sleep(Duration::from_millis(250 << resumes)).await;
            }
            other => return other,
        }
    }
}

/// One GET: a range from `got.len` when there is something to resume.
async fn fetch(
    api: &Api,
    key: BlobKey,
    sink: &mut Sink,
    got: &mut Received,
    bar: &ProgressBar,
) -> Result<(), ClientError> {
    let path = format!("/blobs/{key}");
    let context = format!("GET {path}");
    let from = got.len;
    let request = || {
        let req = api.request(Method::GET, &path);
        Ok(match from {
            0 => req,
            n => req
                .header(header::RANGE, format!("bytes={n}-"))
                .header(header::IF_RANGE, format!("\"{key}\"")),
        })
    };
    let resp = tokio::time::timeout(SHORT_TIMEOUT * 4, api.send_retrying(&api.url(""), request))
        .await
        .map_err(|_| ClientError::Unreachable {
            context: context.clone(),
            reason: "no answer in time".into(),
        })??;
    let mut skip = 0;
    let total = match resp.status() {
        StatusCode::PARTIAL_CONTENT if from > 0 && range_start(&resp) == Some(from) => {
            range_total(&resp).or(resp.content_length().map(|l| l + from))
        }
        StatusCode::OK => {
            // The whole blob where a range was asked: start over.
            if from > 0 {
                skip = sink.restart(got).await?;
            }
            resp.content_length()
        }
        StatusCode::PARTIAL_CONTENT => {
            return Err(ClientError::Other(format!(
                "{context}: the server answered a range that was not asked for"
            )));
        }
        StatusCode::RANGE_NOT_SATISFIABLE if from > 0 && matches!(sink, Sink::File { .. }) => {
            // The partial file is longer than the blob: it holds other bytes.
            sink.restart(got).await?;
            return Box::pin(fetch(api, key, sink, got, bar)).await;
        }
        _ => return Err(api::error_from(resp, &context).await),
    };
    if let Some(total) = total {
        progress::set_total(bar, total);
    }
    bar.set_position(got.len);
    bar.set_message("receiving");
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, body.next()).await;
        let chunk = match next {
            Err(_) => {
                return Err(ClientError::Unreachable {
                    context: api.url(""),
                    reason: format!("no data for {}s", IDLE_TIMEOUT.as_secs()),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ClientError::transport(api.url(""), &e)),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let mut bytes = &chunk[..];
        if skip > 0 {
            let n = skip.min(bytes.len() as u64);
            (skip, bytes) = (skip - n, &bytes[n as usize..]);
        }
        got.hasher.update(bytes);
        sink.writer().write_all(bytes).await.map_err(|e| sink.io_error(e))?;
        got.len += bytes.len() as u64;
        bar.inc(bytes.len() as u64);
    }
    match total {
        Some(total) if got.len < total => Err(ClientError::Unreachable {
            context: api.url(""),
            reason: format!("connection lost after {} of {total} bytes", got.len),
        }),
        _ => Ok(()),
    }
}

/// `Content-Range: bytes a-b/total` → a.
fn range_start(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// `Content-Range: bytes a-b/total` → total.
fn range_total(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit('/').next()?.trim().parse().ok()
}
