//! `blobcache rm`: delete blobs from the server's cache, pending queue and store.

use reqwest::{Method, StatusCode};

use super::api::{self, Api, Remote, SHORT_TIMEOUT};
use super::error::{ClientError, EXIT_CODES_HELP, exit};
use crate::key::BlobKey;

/// Arguments of `blobcache rm`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct RmArgs {
    /// The blobs' MD5s
    #[arg(required = true, value_name = "MD5")]
    pub md5s: Vec<BlobKey>,
    #[command(flatten)]
    pub remote: Remote,
}

/// Delete each blob; prints `md5  deleted` (or `queued`, when the server
/// accepted the delete for later). The exit code is that of the first failure.
pub async fn run(args: RmArgs) -> u8 {
    let api = match Api::connect(&args.remote) {
        Ok(api) => api,
        Err(e) => {
            super::error::report(&e);
            return e.exit_code();
        }
    };
    let keys = args.md5s.clone();
    let answers = super::in_order(args.md5s, 8, |key| delete(&api, key)).await;
    let mut code = exit::OK;
    for (key, answer) in keys.iter().zip(answers) {
        match answer {
            Ok(status) => super::progress::out(&format!("{key}  {status}")),
            Err(e) => {
                super::error::report(&e);
                if code == exit::OK {
                    code = e.exit_code();
                }
            }
        }
    }
    code
}

async fn delete(api: &Api, key: BlobKey) -> Result<&'static str, ClientError> {
    let path = format!("/blobs/{key}");
    // The server may wait for an upload of the blob under way before it answers.
    let req = api.request(Method::DELETE, &path).timeout(SHORT_TIMEOUT * 10);
    let resp = api::success(api.send(req, &api.url("")).await?, &format!("DELETE {path}")).await?;
    Ok(match resp.status() {
        StatusCode::ACCEPTED => "queued",
        _ => "deleted",
    })
}
