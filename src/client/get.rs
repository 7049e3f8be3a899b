//! `blobcache get`: download a blob, verify its MD5 as it streams, and resume
//! an interrupted download from the partial file it left.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};

use super::api::{Api, Remote};
use super::download::{Received, Sink, check, download};
use super::error::{ClientError, EXIT_CODES_HELP, exit};
use super::progress;
use crate::key::BlobKey;

/// Arguments of `blobcache get`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct GetArgs {
    /// The blob's MD5 (32 hex digits)
    #[arg(value_name = "MD5")]
    pub md5: BlobKey,
    /// Where to write it: a file, a directory, or `-` for stdout [default: ./MD5]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

/// Download the blob; the exit code tells how it went.
pub async fn run(args: GetArgs) -> u8 {
    match get(args).await {
        Ok(()) => exit::OK,
        Err(e) => {
            super::error::report(&e);
            e.exit_code()
        }
    }
}

async fn get(args: GetArgs) -> Result<(), ClientError> {
    let api = Api::connect(&args.remote)?;
    let key = args.md5;
    match args.output {
        Some(p) if p.as_os_str() == "-" && std::io::stdout().is_terminal() => Err(ClientError::Usage(
            "-o -: stdout is a terminal; redirect it, or write to a file with -o FILE".into(),
        )),
        Some(p) if p.as_os_str() == "-" => to_stdout(&api, key).await,
        Some(p) if p.is_dir() => to_file(&api, key, p.join(key.to_string())).await,
        Some(p) => to_file(&api, key, p).await,
        None => to_file(&api, key, PathBuf::from(key.to_string())).await,
    }
}

async fn to_stdout(api: &Api, key: BlobKey) -> Result<(), ClientError> {
    let mut sink = Sink::Stdout(BufWriter::with_capacity(1 << 20, tokio::io::stdout()));
    let mut got = Received::new();
    let bar = progress::bytes("stdout", None);
    let result = download(api, key, &mut sink, &mut got, &bar).await;
    bar.finish_and_clear();
    let flushed = match result {
        Ok(()) => sink.writer().flush().await.map_err(|e| sink.io_error(e)),
        Err(e) => Err(e),
    };
    match flushed {
        // The reader stopped reading (`| head`): it has what it wanted.
        Err(ClientError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    check(key, &got)
        .map_err(|msg| ClientError::Integrity(format!("{msg}; the bytes written to stdout are not the blob")))
}

/// The partial file beside `target`: `.NAME.blobcache-partial`.
fn partial_path(target: &Path) -> Result<PathBuf, ClientError> {
    let name = target
        .file_name()
        .ok_or_else(|| ClientError::Usage(format!("-o {}: not a file name", target.display())))?;
    let mut partial = std::ffi::OsString::from(".");
    partial.push(name);
    partial.push(".blobcache-partial");
    Ok(target.with_file_name(partial))
}

async fn to_file(api: &Api, key: BlobKey, target: PathBuf) -> Result<(), ClientError> {
    let partial = partial_path(&target)?;
    let label = target.display().to_string();
    let mut resumed = false;
    let mut got = Received::new();
    let earlier = std::fs::metadata(&partial).map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    if earlier > 0 {
        // The bytes of an earlier run: hashed again, so only what is on disk counts.
        let bar = progress::bytes(&label, Some(earlier));
        bar.set_message("checking");
        let (hasher, len) = super::hash_file(partial.clone(), bar.clone()).await?;
        bar.finish_and_clear();
        progress::note(&format!("resuming from the {len} bytes in {}", partial.display()));
        got = Received { len, hasher };
        resumed = true;
    }
    loop {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .await
            .map_err(|e| ClientError::io(&partial, e))?;
        let mut sink = Sink::File {
            path: partial.clone(),
            out: BufWriter::with_capacity(1 << 20, file),
        };
        // A partial file may hold the whole blob already (cut before the rename).
        if !(resumed && check(key, &got).is_ok()) {
            let bar = progress::bytes(&label, None);
            let result = download(api, key, &mut sink, &mut got, &bar).await;
            bar.finish_and_clear();
            if let Err(e) = result {
                // Keep what arrived for the next run; it is hashed again then anyway.
                let _ = sink.writer().flush().await;
                if e.is_not_found() || got.len == 0 {
                    // Nothing worth resuming: leave no clutter.
                    let _ = std::fs::remove_file(&partial);
                }
                return Err(e);
            }
        }
        let Sink::File { mut out, .. } = sink else {
            unreachable!("a file sink")
        };
        let synced = async {
            out.flush().await?;
            out.get_mut().sync_all().await
        };
        synced.await.map_err(|e| ClientError::io(&partial, e))?;
        drop(out);
        match check(key, &got) {
            Ok(()) => {
                tokio::fs::rename(&partial, &target)
                    .await
                    .map_err(|e| ClientError::io(&target, e))?;
                progress::note(&format!("{key}  {}  saved to {}", got.len, target.display()));
                return Ok(());
            }
            Err(msg) => {
                let _ = std::fs::remove_file(&partial);
                if resumed {
                    // The earlier bytes may belong to another blob fetched to the same name.
                    progress::note(&format!("{msg} after resuming {}; starting over", partial.display()));
                    (resumed, got) = (false, Received::new());
                    continue;
                }
                return Err(ClientError::Integrity(format!(
                    "{msg}; {} was removed, {} not written",
                    partial.display(),
                    target.display()
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partial_file_sits_beside_the_target() {
        assert_eq!(
            partial_path(Path::new("out/droplet.tgz")).unwrap(),
            Path::new("out/.droplet.tgz.blobcache-partial")
        );
        assert_eq!(
            partial_path(Path::new("abc")).unwrap(),
            Path::new(".abc.blobcache-partial")
        );
        assert!(partial_path(Path::new("/")).is_err());
    }
}
