//! `blobcache put`: upload files under their MD5, skipping blobs the server already has.

use std::path::{Path, PathBuf};

use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use reqwest::{Method, StatusCode, header};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::api::{self, Api, Remote, SHORT_TIMEOUT};
use super::error::{ClientError, EXIT_CODES_HELP, exit};
use super::progress;
use crate::key::BlobKey;

/// Arguments of `blobcache put`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct PutArgs {
    /// Files to upload; directories too, with -r
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Upload every file under the directories given, recursively
    #[arg(short, long)]
    pub recursive: bool,
    /// How many files to upload at once
    #[arg(short, long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// `stored`: the server answers only once its store has the blob; `pending`: once it holds it durably
    #[arg(long, value_enum, value_name = "WHEN")]
    pub durability: Option<Durability>,
    #[command(flatten)]
    pub remote: Remote,
}

/// The `X-Blob-Durability` an upload asks for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Durability {
    Stored,
    Pending,
}

impl Durability {
    fn header(self) -> &'static str {
        match self {
            Durability::Stored => "stored",
            Durability::Pending => "pending",
        }
    }
}

/// What became of one file: its line on stdout, and its error on stderr.
struct Done {
    path: PathBuf,
    key: Option<BlobKey>,
    size: Option<u64>,
    result: Result<&'static str, ClientError>,
}

/// Upload every file; prints `md5  size  status  path` per file as it
/// finishes. The exit code is that of the first failed file, in argument order.
pub async fn run(args: PutArgs) -> u8 {
    let api = match Api::connect(&args.remote) {
        Ok(api) => api,
        Err(e) => {
            super::error::report(&e);
            return e.exit_code();
        }
    };
    let items = collect(&args.files, args.recursive);
    let durability = args.durability;
    let mut uploads = futures::stream::iter(items.into_iter().enumerate())
        .map(|(i, item)| {
            let api = api.clone();
            async move {
                let done = match item {
                    Ok(path) => put_one(&api, path, durability).await,
                    Err((path, e)) => Done {
                        path,
                        key: None,
                        size: None,
                        result: Err(e),
                    },
                };
                (i, done)
            }
        })
        .buffer_unordered(usize::from(args.jobs));
    let mut first_failure: Option<(usize, u8)> = None;
    while let Some((i, done)) = uploads.next().await {
        let key = done.key.map_or_else(|| "-".to_string(), |k| k.to_string());
        let size = done.size.map_or_else(|| "-".to_string(), |s| s.to_string());
        let status = *done.result.as_ref().unwrap_or(&"failed");
        progress::out(&format!("{key}  {size}  {status}  {}", done.path.display()));
        if let Err(e) = &done.result {
            match e {
                // It names the file already.
                ClientError::Io { path, .. } if *path == done.path => super::error::report(e),
                _ => super::error::report_about(&done.path.display().to_string(), e),
            }
            if first_failure.is_none_or(|(j, _)| i < j) {
                first_failure = Some((i, e.exit_code()));
            }
        }
    }
    first_failure.map_or(exit::OK, |(_, code)| code)
}

type Item = Result<PathBuf, (PathBuf, ClientError)>;

/// The files to upload, in argument order, directories expanded (sorted) with `-r`.
fn collect(args: &[PathBuf], recursive: bool) -> Vec<Item> {
    let mut out = Vec::new();
    for path in args {
        match std::fs::metadata(path) {
            Err(e) => out.push(Err((path.clone(), ClientError::io(path, e)))),
            Ok(m) if m.is_dir() && recursive => walk(path, &mut out),
            Ok(m) if m.is_dir() => out.push(Err((
                path.clone(),
                ClientError::Usage("is a directory (add -r to upload the files under it)".into()),
            ))),
            Ok(m) if m.is_file() => out.push(Ok(path.clone())),
            Ok(_) => out.push(Err((path.clone(), ClientError::Usage("not a regular file".into())))),
        }
    }
    out
}

/// Regular files under `dir`; symbolic links to files are followed, to directories not (no loops).
fn walk(dir: &Path, out: &mut Vec<Item>) {
    let entries = match std::fs::read_dir(dir).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()) {
        Ok(mut entries) => {
            entries.sort_by_key(|e| e.file_name());
            entries
        }
        Err(e) => return out.push(Err((dir.to_path_buf(), ClientError::io(dir, e)))),
    };
    for entry in entries {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(t) if t.is_file() => out.push(Ok(path)),
            Ok(t) if t.is_symlink() && path.is_file() => out.push(Ok(path)),
            Ok(_) => {}
            Err(e) => out.push(Err((path.clone(), ClientError::io(&path, e)))),
        }
    }
}

async fn put_one(api: &Api, path: PathBuf, durability: Option<Durability>) -> Done {
    let mut done = Done {
        path,
        key: None,
        size: None,
        result: Ok("uploaded"),
    };
    let bar = progress::bytes(&done.path.display().to_string(), None);
    done.result = upload(api, &mut done, durability, &bar).await;
    bar.finish_and_clear();
    done
}

async fn upload(
    api: &Api,
    done: &mut Done,
    durability: Option<Durability>,
    bar: &ProgressBar,
) -> Result<&'static str, ClientError> {
    let path = done.path.clone();
    let size = std::fs::metadata(&path).map_err(|e| ClientError::io(&path, e))?.len();
    progress::set_total(bar, size);
    bar.set_message("hashing");
    let (hasher, size) = super::hash_file(path.clone(), bar.clone()).await?;
    let key = BlobKey::from_digest(hasher);
    (done.key, done.size) = (Some(key), Some(size));

    let blob = format!("/blobs/{key}");
    bar.set_message("checking");
    let head = api.request(Method::HEAD, &blob).timeout(SHORT_TIMEOUT);
    let resp = api.send(head, &api.url("")).await?;
    match resp.status() {
        StatusCode::OK => return Ok("exists"),
        // 503: the node cannot ask its store; it can still take the blob into its spool.
        StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE => {}
        _ => return Err(api::error_from(resp, &format!("HEAD {blob}")).await),
    }

    bar.set_message("uploading");
    let content_md5 = base64::engine::general_purpose::STANDARD.encode(key.as_bytes());
    let resp = api
        .send_retrying(&api.url(""), || {
            bar.set_position(0);
            let file = std::fs::File::open(&path).map_err(|e| ClientError::io(&path, e))?;
            let progress = bar.clone();
            // Exactly the bytes that were hashed: a file that grew since is caught by the server's check.
            let body = ReaderStream::with_capacity(tokio::fs::File::from_std(file).take(size), 256 * 1024)
                .inspect_ok(move |chunk| progress.inc(chunk.len() as u64));
            let mut req = api
                .request(Method::PUT, &blob)
                .header(header::CONTENT_LENGTH, size)
                .header("content-md5", &content_md5)
                .body(reqwest::Body::wrap_stream(body));
            if let Some(d) = durability {
                req = req.header("x-blob-durability", d.header());
            }
            Ok(req)
        })
        .await?;
    match resp.status() {
        StatusCode::CREATED => Ok("uploaded"),
        StatusCode::OK => Ok("exists"),
        _ => {
            let e = api::error_from(resp, &format!("PUT {blob}")).await;
            match e.exit_code() {
                exit::INTEGRITY => Err(ClientError::Integrity(format!(
                    "the server received other bytes than were hashed: did the file change during the upload? ({e})"
                ))),
                _ => Err(e),
            }
        }
    }
}
