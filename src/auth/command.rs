//! `blobcache token create`: make a token, print it once, and give (or append)
//! the line of the tokens file that holds its digest.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a new token: it is printed once on stdout; the tokens file keeps only its digest
    Create(TokenCreate),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreate {
    /// The token's name in the tokens file and in logs (letters, digits, `-`, `_`, `.`)
    #[arg(long)]
    pub name: String,
    /// What it may do: read, write, delete, admin, peer (comma-separated)
    #[arg(long, default_value = "read")]
    pub scopes: String,
    /// How long it is valid, e.g. 90days [default: no expiry]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,
    /// Append the line to this tokens file (created, readable by its owner only); otherwise it is printed on stderr
    #[arg(long)]
    pub file: Option<PathBuf>,
}

/// Run a token command; the exit code.
pub fn main(cmd: TokenCommand) -> std::process::ExitCode {
    match run(cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blobcache: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(c) = cmd;
    anyhow::ensure!(
        !c.name.is_empty() && c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
        "--name {:?}: use letters, digits, '-', '_' and '.'",
        c.name
    );
    let scopes = super::parse_scopes(&c.scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
    let expires = c.expires.map(|d| SystemTime::now() + d);
    let token = super::new_token();
    let line = super::line(&c.name, &token, &scopes, expires);
    if let Some(path) = &c.file {
        if let Ok(text) = std::fs::read_to_string(path) {
            let taken = text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(c.name.as_str()));
            anyhow::ensure!(
                !taken,
                "{}: a token named {:?} is there already",
                path.display(),
                c.name
            );
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        writeln!(file, "{line}").map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!(
            "added {:?} to {}; nodes reading it pick it up within seconds",
            c.name,
            path.display()
        );
    } else {
        eprintln!("add this line to the tokens file:\n{line}");
    }
    // The token itself, alone on stdout, once: it is not stored anywhere.
    println!("{token}");
    Ok(())
}
