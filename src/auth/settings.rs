//! The security section of the configuration: tokens, what anonymous requests
//! may do, and who may read the metrics.

use std::path::PathBuf;

/// The auth flags (each also a `BLOBCACHE_*` variable and a key of the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthSettings {
    /// A tokens file: `name sha256 scopes [expires]` per line (see `blobcache token create`); reloaded on SIGHUP and when it changes [default: none]
    #[arg(long, env = "BLOBCACHE_TOKENS", value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// What a request without a token may do: none, read, or all [default: none with --tokens; all without, on a loopback address only]
    #[arg(long, env = "BLOBCACHE_ANONYMOUS", value_enum)]
    pub anonymous: Option<Anonymous>,
    /// Who may read /metrics and /stats: open, or admin (a token with the admin scope) [default: open]
    #[arg(long, env = "BLOBCACHE_METRICS_ACCESS", value_enum)]
    pub metrics_access: Option<MetricsAccess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    None,
    Read,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    Open,
    Admin,
}

/// The effective auth configuration.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    pub anonymous: Anonymous,
    pub metrics_access: MetricsAccess,
}

impl AuthSettings {
    /// `listen_is_loopback`: without tokens, a node that others can reach
    /// must be opened on purpose (`--anonymous all`): default-secure.
    pub fn resolve(self, listen_is_loopback: bool) -> anyhow::Result<AuthConfig> {
        let anonymous = match (self.anonymous, &self.tokens) {
            (Some(a), _) => a,
            (None, Some(_)) => Anonymous::None,
            (None, None) if listen_is_loopback => Anonymous::All,
            (None, None) => anyhow::bail!(
                "--listen reaches beyond this machine and no --tokens file is set, so anyone could write and delete: \
                 set --tokens (make one with `blobcache token create`), or --anonymous all to run open on purpose"
            ),
        };
        Ok(AuthConfig {
            tokens: self.tokens,
            anonymous,
            metrics_access: self.metrics_access.unwrap_or(MetricsAccess::Open),
        })
    }
}
