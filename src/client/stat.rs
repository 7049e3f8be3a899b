//! `blobcache stat`: where blobs are (cache, pending upload, store), as a table or JSON.

use reqwest::Method;
use serde_json::Value;

use super::api::{self, Api, Remote, SHORT_TIMEOUT};
use super::error::{ClientError, EXIT_CODES_HELP, exit};
use crate::key::BlobKey;

/// Arguments of `blobcache stat`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct StatArgs {
    /// The blobs' MD5s
    #[arg(required = true, value_name = "MD5")]
    pub md5s: Vec<BlobKey>,
    /// Print one JSON array of the server's answers instead of a table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: Remote,
}

/// Ask for each blob's status and print them all; the exit code is that of the first failure.
pub async fn run(args: StatArgs) -> u8 {
    let api = match Api::connect(&args.remote) {
        Ok(api) => api,
        Err(e) => {
            super::error::report(&e);
            return e.exit_code();
        }
    };
    let answers = super::in_order(args.md5s, 8, |key| status(&api, key)).await;
    let mut code = exit::OK;
    let mut found = Vec::new();
    for answer in answers {
        match answer {
            Ok(v) => found.push(v),
            Err(e) => {
                super::error::report(&e);
                if code == exit::OK {
                    code = e.exit_code();
                }
            }
        }
    }
    if args.json {
        super::progress::out(&Value::Array(found).to_string());
    } else if !found.is_empty() {
        super::progress::out(table(&found).trim_end());
    }
    code
}

async fn status(api: &Api, key: BlobKey) -> Result<Value, ClientError> {
    let path = format!("/blobs/{key}/status");
    let context = format!("GET {path}");
    let req = api.request(Method::GET, &path).timeout(SHORT_TIMEOUT);
    let resp = api.send(req, &api.url("")).await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return nowhere(resp, &context).await;
    }
    let resp = api::success(resp, &context).await?;
    resp.json::<Value>()
        .await
        .map_err(|e| ClientError::Other(format!("{context}: not the expected JSON: {e}")))
}

/// A blob that is nowhere is a 404 that still carries the flags (all false):
/// a row like the others. Any other 404 (a wrong URL) stays an error.
async fn nowhere(resp: reqwest::Response, context: &str) -> Result<Value, ClientError> {
    let bytes = resp.bytes().await.unwrap_or_default();
    let mut body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
    match body.as_object_mut().filter(|o| o.contains_key("cached")) {
        Some(fields) => {
            fields.remove("error");
            fields.remove("message");
            Ok(body)
        }
        None => Err(ClientError::Status {
            context: context.to_string(),
            status: 404,
            code: body["error"].as_str().map(str::to_string),
            message: body["message"].as_str().map(str::to_string),
        }),
    }
}

/// The answers as aligned columns; sizes right-aligned, an unknown store state as `unknown`.
fn table(rows: &[Value]) -> String {
    let flag = |v: &Value| match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r["md5"].as_str().unwrap_or("-").to_string(),
                r["size"].as_u64().map_or_else(|| "-".to_string(), |s| s.to_string()),
                flag(&r["cached"]).to_string(),
                flag(&r["pending"]).to_string(),
                flag(&r["in_store"]).to_string(),
            ]
        })
        .collect();
    let header = ["MD5", "SIZE", "CACHED", "PENDING", "IN_STORE"].map(String::from);
    let mut width = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned() {
        let rows = vec![
            serde_json::json!({"md5": "d41d8cd98f00b204e9800998ecf8427e", "cached": true, "pending": false, "in_store": true, "size": 0}),
            serde_json::json!({"md5": "5d41402abc4b2a76b9719d911017c592", "cached": false, "pending": true, "in_store": null, "size": 123456}),
        ];
        assert_eq!(
            table(&rows),
            "\
MD5                                 SIZE  CACHED  PENDING  IN_STORE
d41d8cd98f00b204e9800998ecf8427e       0  yes     no       yes
5d41402abc4b2a76b9719d911017c592  123456  no      yes      unknown
"
        );
    }
}
