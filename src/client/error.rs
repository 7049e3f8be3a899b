//! What can go wrong in a client command, and the exit code each failure maps to.

use std::path::PathBuf;

/// Exit codes of the client subcommands; `--help` lists them ([`EXIT_CODES_HELP`]).
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// Any other failure: a local file, a refused upload, an unexpected answer.
    pub const GENERAL: u8 = 1;
    /// Bad arguments (clap's own code) or bad input, such as an invalid MD5.
    pub const USAGE: u8 = 2;
    /// No such blob (404); for `warm`, some keys were not found and none failed.
    pub const NOT_FOUND: u8 = 3;
    /// Bytes did not match their MD5.
    pub const INTEGRITY: u8 = 4;
    /// The server refused the credentials (401 or 403).
    pub const UNAUTHORIZED: u8 = 5;
    /// The server could not be reached, broke the connection, or answered 5xx.
    pub const UNAVAILABLE: u8 = 6;
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure (local file, refused upload, unexpected answer)
  2  usage: bad arguments or input (e.g. an invalid MD5)
  3  not found (404); warm: some keys not found, none failed
  4  integrity: bytes did not match their MD5
  5  unauthorized or forbidden (401, 403)
  6  server unavailable: unreachable, connection lost, or 5xx";

/// One failure of a client command. `Display` gives the context; the cause, if
/// any, is the `source()`, so `crate::error_chain` prints the whole line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Input the argument parser could not check (a line of an MD5 list).
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error status.
    #[error("{context}: {}", describe(*.status, .code.as_deref(), .message.as_deref()))]
    Status {
        context: String,
        status: u16,
        /// The `error` field of the server's JSON body.
        code: Option<String>,
        /// The `message` field of the server's JSON body.
        message: Option<String>,
    },
    /// The server could not be reached, or the connection broke mid-way.
    #[error("{context}: {reason}")]
    Unreachable { context: String, reason: String },
    /// Bytes that do not match their MD5.
    #[error("{0}")]
    Integrity(String),
    /// A local file or directory.
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Anything else: a bad option value, an answer the client cannot use.
    #[error("{0}")]
    Other(String),
}

fn describe(status: u16, code: Option<&str>, message: Option<&str>) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    match (code, message) {
        (_, Some(m)) if !m.is_empty() => format!("{m} ({status} {reason})"),
        (Some(c), _) => format!("{c} ({status} {reason})"),
        _ => format!("{status} {reason}"),
    }
}

impl ClientError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Status { status, code, .. } => match (*status, code.as_deref()) {
                (_, Some("integrity_error" | "digest_mismatch")) => exit::INTEGRITY,
                (401 | 403, _) => exit::UNAUTHORIZED,
                (404, _) => exit::NOT_FOUND,
                (500.., _) => exit::UNAVAILABLE,
                _ => exit::GENERAL,
            },
            ClientError::Unreachable { .. } => exit::UNAVAILABLE,
            ClientError::Integrity(_) => exit::INTEGRITY,
            ClientError::Io { .. } | ClientError::Other(_) => exit::GENERAL,
        }
    }

    /// A failure of the HTTP exchange itself (no status): connect, TLS, a cut body, a timeout.
    pub fn transport(context: impl Into<String>, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            context: context.into(),
            reason: transport_reason(e),
        }
    }

    /// A local I/O failure on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: path.into(),
            source,
        }
    }

    /// The server said 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }
}

/// The most telling words of a reqwest error: its root cause (`Connection
/// refused (os error 111)`, a TLS complaint), not reqwest's wrapping of it.
fn transport_reason(e: &reqwest::Error) -> String {
    let mut root: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "connection lost"
    } else {
        "request failed"
    };
    let root = root.to_string();
    if root == e.to_string() || root.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {root}")
    }
}

/// Print a failure as the one line a user sees: `blobcache: error: ...`.
pub fn report(e: &ClientError) {
    let line = crate::error_chain(e);
    super::progress::suspend(|| eprintln!("blobcache: error: {line}"));
}

/// [`report`], naming what failed (a file of a `put`).
pub fn report_about(what: &str, e: &ClientError) {
    let line = crate::error_chain(e);
    super::progress::suspend(|| eprintln!("blobcache: error: {what}: {line}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, code: Option<&str>) -> ClientError {
        ClientError::Status {
            context: "GET /blobs/x".into(),
            status,
            code: code.map(Into::into),
            message: Some("words".into()),
        }
    }

    #[test]
    fn statuses_map_to_documented_codes() {
        assert_eq!(status(401, None).exit_code(), exit::UNAUTHORIZED);
        assert_eq!(status(403, None).exit_code(), exit::UNAUTHORIZED);
        assert_eq!(status(404, Some("not_found")).exit_code(), exit::NOT_FOUND);
        assert_eq!(status(502, Some("integrity_error")).exit_code(), exit::INTEGRITY);
        assert_eq!(status(400, Some("digest_mismatch")).exit_code(), exit::INTEGRITY);
        assert_eq!(status(503, Some("spool_full")).exit_code(), exit::UNAVAILABLE);
        assert_eq!(status(500, None).exit_code(), exit::UNAVAILABLE);
        assert_eq!(status(413, Some("too_large")).exit_code(), exit::GENERAL);
    }

    #[test]
    fn the_servers_message_is_named() {
        assert_eq!(
            status(413, Some("too_large")).to_string(),
            "GET /blobs/x: words (413 Payload Too Large)"
        );
    }
}
