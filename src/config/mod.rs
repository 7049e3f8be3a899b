//! Configuration: flags, `BLOBCACHE_*` environment variables and an optional
//! TOML file, merged with precedence flag > env > file > default. Each module
//! owns its section (its flags, defaults and checks); this module puts the
//! sections together, reads the file, and checks what spans sections.
//!
//! The file's values become clap defaults of the flags they name, so a value
//! from the file is parsed and checked exactly as the same flag would be, and
//! clap's own precedence (command line, then environment, then default) holds.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};

use crate::auth::{AuthConfig, AuthSettings};
use crate::blobs::{BlobConfig, BlobSettings};
use crate::cache::{CacheLimits, CacheSettings};
use crate::cluster::{ClusterConfig, ClusterSettings};
use crate::http::{HttpConfig, HttpSettings};
use crate::replication::{ReplicationConfig, ReplicationSettings};
use crate::store::{StoreConfig, StoreSettings};
use crate::tls::{TlsConfig, TlsSettings};

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "blobcache",
    version,
    about = "A read-through HTTP blob cache addressed by MD5"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ConfigArgs),
    /// Validate the configuration and print the effective values.
    CheckConfig(ConfigArgs),
    /// Make tokens for a --tokens file.
    #[command(subcommand)]
    Token(crate::auth::TokenCommand),
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// An optional TOML file with any of the settings below (the flags' names as keys).
    #[arg(long, env = "BLOBCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting, each optional so the sources can be merged; grouped by the module that owns it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "BLOBCACHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the disk cache, the spool and the default store [default: ./blobcache-data]
    #[arg(long, env = "BLOBCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long shutdown waits for requests and uploads to finish [default: 30s]
    #[arg(long, env = "BLOBCACHE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "BLOBCACHE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// How long a deletion is remembered, so no stale copy of the blob comes back [default: 7days]
    #[arg(long, env = "BLOBCACHE_TOMBSTONE_RETENTION", value_parser = humantime::parse_duration)]
    pub tombstone_retention: Option<Duration>,
    #[command(flatten)]
    pub cache: CacheSettings,
    #[command(flatten)]
    pub blobs: BlobSettings,
    #[command(flatten)]
    pub replication: ReplicationSettings,
    #[command(flatten)]
    pub store: StoreSettings,
    #[command(flatten)]
    pub http: HttpSettings,
    #[command(flatten)]
    pub cluster: ClusterSettings,
    #[command(flatten)]
    pub auth: AuthSettings,
    #[command(flatten)]
    pub tls: TlsSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration. Printed (check-config, the start-up log) as
/// flat `flag-name = value` pairs, which read back as a config file.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    #[serde(with = "humantime_serde")]
    pub tombstone_retention: Duration,
    #[serde(flatten)]
    pub cache: CacheLimits,
    #[serde(flatten)]
    pub blobs: BlobConfig,
    #[serde(flatten)]
    pub replication: ReplicationConfig,
    #[serde(flatten)]
    pub store: StoreConfig,
    #[serde(flatten)]
    pub http: HttpConfig,
    #[serde(flatten)]
    pub cluster: ClusterConfig,
    #[serde(flatten)]
    pub auth: AuthConfig,
    #[serde(flatten)]
    pub tls: TlsConfig,
}

impl Cli {
    /// Parse the command line. With `--config FILE` (or `BLOBCACHE_CONFIG`), the
    /// file's values become the defaults beneath the flags and the environment.
    /// A usage error comes back as a `clap::Error`, to be printed with its help.
    pub fn parse_with_file<I, T>(args: I) -> anyhow::Result<Cli>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cli = Cli::try_parse_from_args(&args)?;
        let (name, file) = match &cli.command {
            Command::Serve(a) => ("serve", &a.config),
            Command::CheckConfig(a) => ("check-config", &a.config),
            Command::Client(_) | Command::Token(_) => return Ok(cli),
        };
        let Some(path) = file.clone() else {
            return Ok(cli);
        };
        let table = read_file(&path)?;
        let mut sub = Cli::command()
            .find_subcommand(name)
            .expect("a subcommand just parsed")
            .clone();
        sub = file_defaults(sub, &table).with_context(|| format!("--config {}", path.display()))?;
        let cmd = Cli::command().mut_subcommand(name, |_| sub);
        let matches = cmd
            .try_get_matches_from(&args)
            .map_err(|e| anyhow::anyhow!("--config {}: {}", path.display(), first_line(&e.to_string())))?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    fn try_parse_from_args(args: &[OsString]) -> Result<Cli, clap::Error> {
        <Cli as clap::Parser>::try_parse_from(args)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ")
}

fn read_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--config: cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("--config: {} is not a valid TOML file", path.display()))
}

/// Make each key of the file the default of the flag of the same name.
fn file_defaults(mut sub: clap::Command, table: &toml::Table) -> anyhow::Result<clap::Command> {
    for (key, value) in table {
        let id = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .map(|a| a.get_id().clone())
            .ok_or_else(|| {
                anyhow::anyhow!("unknown setting {key:?} (settings are the flags' names, e.g. memory-cache)")
            })?;
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => value.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!("{key}: a {} is not a value for this setting", other.type_str()),
        };
        sub = sub.mut_arg(id, |a| a.default_value(text));
    }
    Ok(sub)
}

impl ConfigArgs {
    /// The effective configuration of what the command line (and file) said.
    pub fn resolve(self) -> anyhow::Result<Config> {
        Config::from_settings(self.settings)
    }
}

impl Config {
    pub fn from_settings(s: Settings) -> anyhow::Result<Config> {
        let data_dir = s.data_dir.unwrap_or_else(|| PathBuf::from("./blobcache-data"));
        let listen = s.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let config = Config {
            listen,
            auth: s.auth.resolve(listen.ip().is_loopback())?,
            shutdown_grace: s.shutdown_grace.unwrap_or(Duration::from_secs(30)),
            log_format: s.log_format.unwrap_or(LogFormat::Text),
            tombstone_retention: s.tombstone_retention.unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            cache: s.cache.resolve()?,
            blobs: s.blobs.resolve()?,
            replication: s.replication.resolve()?,
            store: s.store.resolve(&data_dir)?,
            http: s.http.resolve()?,
            cluster: s.cluster.resolve()?,
            tls: s.tls.resolve()?,
            data_dir,
        };
        // What spans sections.
        let max = config.blobs.max_blob_size;
        anyhow::ensure!(
            config.replication.spool_size >= max,
            "--spool-size ({}) must be at least --max-blob-size ({}): a larger blob could never be accepted",
            config.replication.spool_size,
            max
        );
        anyhow::ensure!(
            config.store.max_parts_ok(max.as_u64()),
            "--s3-part-size {} would cut a blob of --max-blob-size {} into more than 10000 parts (S3's limit)",
            config.store.s3_part_size,
            max
        );
        anyhow::ensure!(
            config.auth.tokens.is_none()
                || config.cluster.peers == crate::cluster::Peers::None
                || config.cluster.peer_token.is_some(),
            "--peers with --tokens needs --peer-token: the token this node sends its peers (one with the peer scope in their tokens file)"
        );
        if let Some(me) = &config.cluster.advertise_url {
            anyhow::ensure!(
                me.starts_with("https://") == config.tls.tls_cert.is_some(),
                "--advertise-url {me} and --tls-cert disagree: a node that speaks TLS advertises https://, one that does not, http://"
            );
        }
        anyhow::ensure!(
            config.tombstone_retention >= Duration::from_secs(60),
            "--tombstone-retention must be at least 1m, got {:?}",
            config.tombstone_retention
        );
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
