//! Files the node reads at start and again while it runs: the tokens file,
//! the TLS certificate, key and CAs. Each is read again on SIGHUP and when one
//! of its files changes (looked at every 2 s): rotating a certificate or
//! revoking a token needs no restart. A file counts as changed when its
//! modification time, size or inode moves, which also catches the symlink
//! swap Kubernetes makes when a mounted Secret is updated.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(2);

/// Something made from files, able to read them again.
pub trait Reload: Send + Sync + 'static {
    /// What it is, for the log.
    fn what(&self) -> &'static str;
    /// The files it is made from.
    fn files(&self) -> Vec<PathBuf>;
    /// Read the files again. A set that no longer reads or fits together
    /// must leave what was loaded before in force (and say why).
    fn reload(&self);
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}

/// Reload `what` on SIGHUP and whenever one of its files changes, until `stop`.
pub async fn watch(what: Arc<dyn Reload>, stop: CancellationToken) {
    let files = what.files();
    if files.is_empty() {
        return;
    }
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, what = what.what(), "no SIGHUP handler; the files are still checked for changes");
            None
        }
    };
    let mut seen = stamps(&files);
    loop {
        let hung_up = async {
            match &mut hup {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hung_up => {
                seen = stamps(&files);
                what.reload();
            }
            _ = tokio::time::sleep(POLL) => {
                let now = stamps(&files);
                if now != seen {
                    seen = now;
                    what.reload();
                }
            }
        }
    }
}
