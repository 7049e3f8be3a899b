//! The connection to a blobcache server: URL, token, TLS, retries, and how
//! error answers become [`ClientError`]s.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};

use super::error::ClientError;
use super::progress;

/// Longest wait for a small answer (HEAD, status, DELETE, warm); blob bodies are not bounded.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a 503 is retried before the command gives up.
const MAX_RETRIES: u32 = 3;
/// The longest pause between two tries, whatever `Retry-After` asks.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Where the server is and how to talk to it; shared by every client subcommand.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Server")]
pub struct Remote {
    /// The blobcache server (http or https)
    #[arg(
        long,
        env = "BLOBCACHE_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// Sent as `Authorization: Bearer <TOKEN>`
    #[arg(long, env = "BLOBCACHE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Trust the CA certificates in this PEM file instead of the system's
    #[arg(long, env = "BLOBCACHE_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Show this client certificate (PEM) to a server that asks for one (--tls-client-ca)
    #[arg(long, env = "BLOBCACHE_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert
    #[arg(long, env = "BLOBCACHE_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// A configured HTTP client bound to one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// Check the URL, load `--cacert` and `--cert`, and build the HTTP client.
    pub fn connect(remote: &Remote) -> Result<Api, ClientError> {
        let url =
            reqwest::Url::parse(&remote.url).map_err(|e| ClientError::Usage(format!("--url {}: {e}", remote.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ClientError::Usage(format!(
                "--url {}: expected http://HOST[:PORT] or https://HOST[:PORT]",
                remote.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("blobcache/", env!("CARGO_PKG_VERSION")))
            // Loading the system roots costs time; plain HTTP does not need them.
            .tls_built_in_root_certs(url.scheme() == "https" && remote.cacert.is_none());
        if let Some(path) = &remote.cacert {
            let pem = std::fs::read(path).map_err(|e| ClientError::io(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Usage(format!("--cacert {}: not a PEM bundle: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(ClientError::Usage(format!(
                    "--cacert {}: no certificate in the file",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&remote.cert, &remote.key) {
            let mut pem = std::fs::read(cert).map_err(|e| ClientError::io(cert, e))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| ClientError::io(key, e))?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Usage(format!(
                    "--cert {} with --key {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Other(format!("setting up HTTP: {}", crate::error_chain(&e))))?;
        Ok(Api {
            http,
            base: remote.url.trim_end_matches('/').to_string(),
            token: remote.token.clone().filter(|t| !t.is_empty()),
        })
    }

    /// The full URL of a path on the server (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the credentials attached.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Send a request; only a failure to get any answer is an error here.
    pub async fn send(&self, req: RequestBuilder, context: &str) -> Result<Response, ClientError> {
        req.send().await.map_err(|e| ClientError::transport(context, &e))
    }

    /// Send a request built by `make`, trying again (a bounded number of
    /// times) while the server answers 503, after the pause its `Retry-After`
    /// asks for (capped) or a growing one. Any other answer is returned as is.
    pub async fn send_retrying<F>(&self, context: &str, mut make: F) -> Result<Response, ClientError>
    where
        F: FnMut() -> Result<RequestBuilder, ClientError>,
    {
        let mut attempt = 0;
        loop {
            let resp = self.send(make()?, context).await?;
            if resp.status() != StatusCode::SERVICE_UNAVAILABLE || attempt == MAX_RETRIES {
                return Ok(resp);
            }
            let delay = retry_after(&resp).unwrap_or(Duration::from_secs(1 << attempt));
            let delay = delay.min(MAX_RETRY_DELAY);
            let err = error_from(resp, context).await;
            progress::note(&format!("{err}; retrying in {}s", delay.as_secs_f32()));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Turn an error answer into a [`ClientError`], naming the server's JSON `message`.
pub async fn error_from(resp: Response, context: &str) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Option<String>,
        message: Option<String>,
    }
    let status = resp.status().as_u16();
    // Error bodies are small; a body that is not our JSON is just not quoted.
    let body = tokio::time::timeout(SHORT_TIMEOUT, resp.bytes())
        .await
        .ok()
        .and_then(Result::ok);
    let parsed = body.and_then(|b| serde_json::from_slice::<Body>(&b).ok());
    let (code, message) = parsed.map_or((None, None), |b| (b.error, b.message));
    ClientError::Status {
        context: context.to_string(),
        status,
        code,
        message,
    }
}

/// The answer if its status is a success, else the error it stands for.
pub async fn success(resp: Response, context: &str) -> Result<Response, ClientError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(error_from(resp, context).await)
    }
}
