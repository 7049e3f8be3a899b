//! The client subcommands (`put`, `get`, `stat`, `rm`, `warm`): blobcache
//! driven from the command line, against a server given by `--url`.
//!
//! Results go to stdout, one line per item; errors to stderr as one line
//! each (`blobcache: error: ...`); progress bars and notes only when stderr
//! is a terminal. The exit codes are in [`error::exit`].

pub mod api;
mod download;
pub mod error;
pub mod get;
mod progress;
pub mod put;
pub mod rm;
pub mod stat;
pub mod warm;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::ProgressBar;
use md5::{Digest, Md5};

use error::ClientError;

/// The client subcommands, flattened into the binary's own.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Upload files under their MD5, skipping blobs the server already has
    Put(put::PutArgs),
    /// Download a blob, verify its MD5, resume an interrupted download
    Get(get::GetArgs),
    /// Show where blobs are: cache, pending upload, store
    Stat(stat::StatArgs),
    /// Delete blobs from the server's cache, pending queue and store
    Rm(rm::RmArgs),
    /// Have the server load a list of blobs into its cache
    Warm(warm::WarmArgs),
}

/// Run a client command on a runtime of its own, and give its exit code.
pub fn main(cmd: ClientCommand) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(cmd)),
        Err(e) => {
            error::report(&ClientError::Other(format!("starting the runtime: {e}")));
            ExitCode::from(error::exit::GENERAL)
        }
    }
}

/// Run a client command; errors are printed on stderr, and the exit code says what kind.
pub async fn run(cmd: ClientCommand) -> ExitCode {
    let code = match cmd {
        ClientCommand::Put(args) => put::run(args).await,
        ClientCommand::Get(args) => get::run(args).await,
        ClientCommand::Stat(args) => stat::run(args).await,
        ClientCommand::Rm(args) => rm::run(args).await,
        ClientCommand::Warm(args) => warm::run(args).await,
    };
    ExitCode::from(code)
}

/// The MD5 state and length of a file's bytes, read in the blocking pool
/// (hashing is CPU-bound and must not hold up the async workers).
async fn hash_file(path: PathBuf, bar: ProgressBar) -> Result<(Md5, u64), ClientError> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| ClientError::io(&path, e))?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok((hasher, len)),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::io(&path, e)),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
            bar.inc(n as u64);
        }
    })
    .await
    .map_err(|e| ClientError::Other(format!("hashing: {e}")))?
}

/// Run `f` on each item with at most `jobs` at once, results in input order.
async fn in_order<T, R, F, Fut>(items: Vec<T>, jobs: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    use futures::StreamExt;
    futures::stream::iter(items).map(f).buffered(jobs).collect().await
}
