//! `blobcache warm`: hand the server a list of MD5s to load into its cache,
//! then follow the job until it is finished.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use tokio::io::AsyncReadExt;

use super::api::{self, Api, Remote, SHORT_TIMEOUT};
use super::error::{ClientError, EXIT_CODES_HELP, exit};
use super::progress;
use crate::key::BlobKey;

/// How often the job is asked how far it got.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Arguments of `blobcache warm`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct WarmArgs {
    /// A file of MD5s, one a line (`#` comments and blank lines ignored), or `-` for stdin
    #[arg(value_name = "FILE")]
    pub list: PathBuf,
    #[command(flatten)]
    pub remote: Remote,
}

/// `POST /warm` answers with the job it started.
#[derive(Debug, serde::Deserialize)]
struct Started {
    id: String,
    total: u64,
}

/// `GET /warm/{id}`: how far the job got.
#[derive(Debug, serde::Deserialize)]
struct Job {
    state: String,
    total: u64,
    done: u64,
    failed: u64,
    not_found: u64,
    remaining: u64,
    #[serde(default)]
    failed_keys: Vec<String>,
    #[serde(default)]
    not_found_keys: Vec<String>,
}

/// Warm the listed blobs. Prints `md5  failed` / `md5  not_found` for each
/// key that was not warmed, then one summary line. Exit code: 1 if any key
/// failed, 3 if some were not found and none failed.
pub async fn run(args: WarmArgs) -> u8 {
    match warm(args).await {
        Ok(code) => code,
        Err(e) => {
            super::error::report(&e);
            e.exit_code()
        }
    }
}

async fn warm(args: WarmArgs) -> Result<u8, ClientError> {
    let text = read_list(&args.list).await?;
    let keys = parse_list(&text)?;
    if keys.is_empty() {
        progress::note("no MD5 in the list: nothing to warm");
        progress::out("total 0  done 0  failed 0  not_found 0");
        return Ok(exit::OK);
    }
    let api = Api::connect(&args.remote)?;
    let resp = api
        .send_retrying(&api.url(""), || {
            Ok(api.request(Method::POST, "/warm").json(&keys).timeout(SHORT_TIMEOUT))
        })
        .await?;
    let started: Started = json(api::success(resp, "POST /warm").await?, "POST /warm").await?;
    if started.id.is_empty()
        || !started
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ClientError::Other(format!(
            "POST /warm: unexpected job id {:?}",
            started.id
        )));
    }
    let path = format!("/warm/{}", started.id);
    let bar = progress::items("warming", started.total);
    let job = loop {
        let req = || Ok(api.request(Method::GET, &path).timeout(SHORT_TIMEOUT));
        let resp = api.send_retrying(&api.url(""), req).await?;
        let job: Job = json(
            api::success(resp, &format!("GET {path}")).await?,
            &format!("GET {path}"),
        )
        .await?;
        bar.set_length(job.total);
        bar.set_position(job.total.saturating_sub(job.remaining));
        bar.set_message(format!("{} failed, {} not found", job.failed, job.not_found));
        if job.state == "finished" {
            break job;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    bar.finish_and_clear();
    for key in &job.failed_keys {
        progress::out(&format!("{key}  failed"));
    }
    for key in &job.not_found_keys {
        progress::out(&format!("{key}  not_found"));
    }
    progress::out(&format!(
        "total {}  done {}  failed {}  not_found {}",
        job.total, job.done, job.failed, job.not_found
    ));
    Ok(if job.failed > 0 {
        exit::GENERAL
    } else if job.not_found > 0 {
        exit::NOT_FOUND
    } else {
        exit::OK
    })
}

async fn read_list(path: &PathBuf) -> Result<String, ClientError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        tokio::io::stdin()
            .read_to_string(&mut text)
            .await
            .map_err(|e| ClientError::io("stdin", e))?;
        Ok(text)
    } else {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ClientError::io(path, e))
    }
}

async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response, context: &str) -> Result<T, ClientError> {
    resp.json()
        .await
        .map_err(|e| ClientError::Other(format!("{context}: not the expected JSON: {e}")))
}

/// The MD5s of a list: one a line, `#` to the end of a line is a comment,
/// blank lines are skipped, repeats are dropped (first one kept). A line
/// that is not an MD5 is an error naming its number.
pub fn parse_list(text: &str) -> Result<Vec<BlobKey>, ClientError> {
    let mut seen = std::collections::HashSet::new();
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
        if line.is_empty() {
            continue;
        }
        let key: BlobKey = line.parse().map_err(|_| {
            ClientError::Usage(format!(
                "line {}: {line:?} is not an MD5 (32 hexadecimal digits)",
                n + 1
            ))
        })?;
        if seen.insert(key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_case_and_repeats() {
        let text = "# droplets of app 1\n\
                    d41d8cd98f00b204e9800998ecf8427e\n\
                    \n   \t\n\
                    5D41402ABC4B2A76B9719D911017C592  # hello, upper case\n\
                    d41d8cd98f00b204e9800998ecf8427e\r\n\
                    \t5d41402abc4b2a76b9719d911017c592\t\n";
        let keys = parse_list(text).unwrap();
        assert_eq!(
            keys.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["d41d8cd98f00b204e9800998ecf8427e", "5d41402abc4b2a76b9719d911017c592"]
        );
    }

    #[test]
    fn an_empty_list_is_empty() {
        assert!(parse_list("").unwrap().is_empty());
        assert!(parse_list("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = parse_list("d41d8cd98f00b204e9800998ecf8427e\nnot-an-md5\n").unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
        assert!(err.to_string().starts_with("line 2: \"not-an-md5\""), "{err}");
        for bad in [
            "d41d8cd98f00b204e9800998ecf8427",
            "d41d8cd98f00b204e9800998ecf8427e0",
            "d41d8cd98f00b204e9800998ecf8427e droplet.tgz",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }
}
