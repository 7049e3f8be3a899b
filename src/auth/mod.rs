//! Tokens and scopes. A token is an opaque random string, shown once when it
//! is made (`blobcache token create`); the node keeps only its SHA-256 digest,
//! in a tokens file of one line per token:
//!
//! ```text
//! # name          sha256 of the token                                              scopes        expires (optional)
//! ci-deployer     9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 read,write    2027-01-01T00:00:00Z
//! ```
//!
//! Revoking is deleting the line: the file is read again on SIGHUP and when it
//! changes. High-entropy tokens need no slow password hash: a digest cannot be
//! turned back into a token. Digests are compared in constant time.
//!
//! No axum here: `http/auth.rs` is the layer that asks [`Auth`].

mod command;
mod settings;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine;
use subtle::ConstantTimeEq;

pub use command::{TokenCommand, main as token_main};
pub use settings::{Anonymous, AuthConfig, AuthSettings, MetricsAccess};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GET, HEAD and status of blobs; warm-up job status.
    Read,
    /// PUT and POST of blobs; warm-up jobs.
    Write,
    /// DELETE of blobs; S3 event notifications (they invalidate).
    Delete,
    /// /metrics and /stats when they are not open, /cluster; implies every scope but `peer`.
    Admin,
    /// Requests one node of a cluster sends another.
    Peer,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Read, Scope::Write, Scope::Delete, Scope::Admin, Scope::Peer];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
            Scope::Peer => "peer",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == s)
    }
}

/// Parse `read,write` (each known, at least one).
pub fn parse_scopes(text: &str) -> Result<BTreeSet<Scope>, String> {
    let mut scopes = BTreeSet::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        scopes.insert(
            Scope::parse(name)
                .ok_or_else(|| format!("unknown scope {name:?} (scopes: read, write, delete, admin, peer)"))?,
        );
    }
    if scopes.is_empty() {
        return Err("no scope given (scopes: read, write, delete, admin, peer)".into());
    }
    Ok(scopes)
}

/// One line of the tokens file.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    digest: [u8; 32],
    scopes: BTreeSet<Scope>,
    expires: Option<SystemTime>,
}

/// Who a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credential.
    Anonymous,
    /// A token of the file, by its name.
    Token { name: String, scopes: BTreeSet<Scope> },
}

/// Why a credential was refused (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the Authorization header is not `Bearer <token>` or Basic with the token as password")]
    Malformed,
    #[error("unknown or revoked token")]
    Unknown,
    #[error("the token {name:?} expired")]
    Expired { name: String },
}

/// The tokens this node accepts, and what anonymous requests may do.
#[derive(Debug)]
pub struct Auth {
    file: Option<PathBuf>,
    entries: RwLock<Arc<Vec<Entry>>>,
    /// When the file was last read (its modification time), to notice changes.
    config: AuthConfig,
}

/// The SHA-256 of a token, as the tokens file holds it.
pub fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("32 bytes")
}

/// A new token: 32 random bytes, URL-safe base64, with a prefix that says what it is.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("bc_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The tokens-file line of a token.
pub fn line(name: &str, token: &str, scopes: &BTreeSet<Scope>, expires: Option<SystemTime>) -> String {
    let scopes: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    let mut line = format!("{name} {} {}", hex::encode(digest(token)), scopes.join(","));
    if let Some(at) = expires {
        line.push(' ');
        line.push_str(&humantime::format_rfc3339_seconds(at).to_string());
    }
    line
}

fn parse_file(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--tokens {}: {e}", path.display()))?;
    let mut entries = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: String| anyhow::anyhow!("--tokens {} line {}: {what}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !(3..=4).contains(&fields.len()) {
            return Err(bad("expected `name sha256 scopes [expires]`".into()));
        }
        let digest: [u8; 32] = hex::decode(fields[1])
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| bad("the second field is not a SHA-256 digest (64 hex digits)".into()))?;
        let scopes = parse_scopes(fields[2]).map_err(bad)?;
        let expires = match fields.get(3) {
            Some(t) => Some(
                humantime::parse_rfc3339_weak(t)
                    .map_err(|_| bad(format!("{t:?} is not a time like 2027-01-01T00:00:00Z")))?,
            ),
            None => None,
        };
        if entries.iter().any(|e: &Entry| e.name == fields[0]) {
            return Err(bad(format!("the name {:?} is used twice", fields[0])));
        }
        entries.push(Entry {
            name: fields[0].to_string(),
            digest,
            scopes,
            expires,
        });
    }
    Ok(entries)
}

impl Auth {
    /// Read the tokens file (if any). A file that cannot be read or parsed stops the start.
    pub fn open(config: &AuthConfig) -> anyhow::Result<Auth> {
        let entries = match &config.tokens {
            Some(path) => parse_file(path)?,
            None => Vec::new(),
        };
        Ok(Auth {
            file: config.tokens.clone(),
            entries: RwLock::new(Arc::new(entries)),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// How many tokens are loaded.
    pub fn len(&self) -> usize {
        self.entries.read().expect("tokens").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Who sent a request with this `Authorization` header (if any).
    pub fn identify(&self, authorization: Option<&[u8]>) -> Result<Caller, Refused> {
        let Some(header) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let token = token_of(header).ok_or(Refused::Malformed)?;
        let wanted = digest(&token);
        let entries = self.entries.read().expect("tokens").clone();
        // Every entry is compared, in constant time, so timing tells nothing.
        let mut found: Option<&Entry> = None;
        for e in entries.iter() {
            if bool::from(e.digest.ct_eq(&wanted)) {
                found = Some(e);
            }
        }
        let e = found.ok_or(Refused::Unknown)?;
        if e.expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(Refused::Expired { name: e.name.clone() });
        }
        Ok(Caller::Token {
            name: e.name.clone(),
            scopes: e.scopes.clone(),
        })
    }

    /// Whether `caller` may do what needs `scope`.
    pub fn allows(&self, caller: &Caller, scope: Scope) -> bool {
        match caller {
            Caller::Anonymous => match self.config.anonymous {
                Anonymous::All => scope != Scope::Peer || self.file.is_none(),
                Anonymous::Read => scope == Scope::Read,
                Anonymous::None => false,
            },
            Caller::Token { scopes, .. } => {
                scopes.contains(&scope) || (scope != Scope::Peer && scopes.contains(&Scope::Admin))
            }
        }
    }
}

impl crate::reload::Reload for Auth {
    fn what(&self) -> &'static str {
        "tokens"
    }

    fn files(&self) -> Vec<PathBuf> {
        self.file.iter().cloned().collect()
    }

    /// Read the file again. A file that no longer parses leaves the tokens as
    /// they were (and says why): a typo must not lock everyone out, nor let
    /// everyone in.
    fn reload(&self) {
        let Some(path) = &self.file else { return };
        match parse_file(path) {
            Ok(entries) => {
                let n = entries.len();
                *self.entries.write().expect("tokens") = Arc::new(entries);
                tracing::info!(tokens = n, file = %path.display(), "tokens reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "the tokens file has an error; keeping the tokens loaded before");
            }
        }
    }
}

/// The token of `Authorization: Bearer <t>` or of Basic (the password; the user is ignored).
fn token_of(header: &[u8]) -> Option<String> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = header.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| password.to_string());
    }
    None
}

#[cfg(test)]
mod tests;
