//! The S3 store: AWS S3 or any S3-protocol server (MinIO, Ceph RGW, R2).
//! The only module that imports the AWS SDK.
//!
//! A blob lives at `<prefix>/<md5>` in one bucket. Uploads carry `Content-MD5`
//! so the server checks the bytes it received; blobs above the multipart
//! threshold go up in parts, each with its own `Content-MD5`, and the blob's
//! MD5 is kept in the object's metadata (a multipart ETag is not the MD5).
//! Every request is bounded in time: a slow or silent server becomes a
//! retryable error, never a hang.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use base64::Engine;
use futures::{StreamExt, TryStreamExt, stream};

use super::{ByteStream, Store, StoreError, StoreErrorKind, StoreOptions};
use crate::key::BlobKey;

/// Parts of one multipart upload sent at once.
const PART_CONCURRENCY: usize = 4;

/// Object metadata that records the blob's MD5 (`x-amz-meta-md5`).
const MD5_METADATA: &str = "md5";

/// How long an upload of `bytes` may take before it counts as stalled:
/// the usual answer time plus 1 s per MiB (a floor of 1 MiB/s).
fn upload_timeout(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_secs(bytes.div_ceil(1024 * 1024))
}

/// A store in an S3 bucket.
#[derive(Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
    /// What to name in messages: the endpoint (or "AWS S3") and the bucket.
    place: String,
    timeout: Duration,
    multipart_threshold: u64,
    part_size: u64,
}

/// Split `s3://bucket[/prefix]`.
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| anyhow::anyhow!("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    anyhow::ensure!(!bucket.is_empty(), "the URL names no bucket (use s3://BUCKET[/PREFIX])");
    anyhow::ensure!(
        bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
        "{bucket:?} is not a valid bucket name"
    );
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

impl S3Store {
    /// Set up a client for `s3://bucket[/prefix]`. Credentials and (unless
    /// given) region and endpoint come from the standard AWS chain; nothing is
    /// sent yet: `probe` is the first request.
    pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &options.s3_region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.s3_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(id), Some(secret)) = (&options.s3_access_key_id, &options.s3_secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "blobcache-configuration"));
        }
        let sdk = loader.load().await;
        let timeout = options.s3_timeout;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(options.s3_force_path_style)
            // The SDK's default CRC checksums are not understood by every
            // S3-compatible server; integrity comes from Content-MD5 instead.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // Per-call limits are set on each request: an upload's body counts
            // against its time, so one global limit cannot fit both HEADs and PUTs.
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .build(),
            )
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(Duration::from_millis(100)),
            );
        if sdk.region().is_none() {
            // S3-compatible servers rarely care; AWS itself redirects a wrong guess.
            config = config.region(Region::new("us-east-1"));
        }
        let endpoint = sdk.endpoint_url().map(str::to_string);
        let place = match &endpoint {
            Some(e) => format!("bucket {bucket:?} at {}", crate::config::mask_userinfo(e)),
            None => format!("bucket {bucket:?} on AWS S3"),
        };
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket,
            prefix,
            place,
            timeout,
            multipart_threshold: options.s3_multipart_threshold.as_u64(),
            part_size: options.s3_part_size.as_u64(),
        })
    }

    fn object_key(&self, key: &BlobKey) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Limits for a request answered without a large body going up.
    fn answer_limits(&self) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(self.timeout)
                .operation_timeout(self.timeout * 3)
                .build(),
        )
    }

    /// Limits for a request that sends `bytes` of body.
    fn upload_limits(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        let attempt = upload_timeout(self.timeout, bytes);
        aws_sdk_s3::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(attempt)
                .operation_timeout(attempt * 3)
                .build(),
        )
    }

    fn error<E>(&self, op: &str, key: Option<&BlobKey>, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let kind = classify(&e);
        let what = match key {
            Some(k) => format!("S3 {op} of {}{k} in {}", self.prefix, self.place),
            None => format!("S3 {op} of {}", self.place),
        };
        // S3 answers a request signed for the wrong region with a redirect that names the right one.
        let region = match &e {
            SdkError::ServiceError(se) if (300..400).contains(&se.raw().status().as_u16()) => {
                se.raw().headers().get("x-amz-bucket-region").map(str::to_string)
            }
            _ => None,
        };
        let detail = match (region, kind, &e) {
            (Some(region), _, _) => {
                format!("the bucket is in region {region}: set --s3-region {region} (or AWS_REGION)")
            }
            (None, StoreErrorKind::Permanent, SdkError::ServiceError(se))
                if se.err().code() == Some("NoSuchBucket") =>
            {
                "the bucket does not exist".to_string()
            }
            (None, StoreErrorKind::NotFound, _) if key.is_none() => "the bucket does not exist".to_string(),
            _ => crate::error_chain(&e),
        };
        // A missing bucket is a configuration error, not a missing blob.
        let kind = if key.is_none() && kind == StoreErrorKind::NotFound {
            StoreErrorKind::Permanent
        } else {
            kind
        };
        StoreError::new(kind, format!("{what} failed: {detail}"))
    }

    async fn put_single(&self, key: &BlobKey, path: &Path, size: u64) -> Result<(), StoreError> {
        let body = file_body(key, path, 0, size).await?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .content_length(size as i64)
            .content_md5(base64_md5(key.as_bytes()))
            .metadata(MD5_METADATA, key.to_string())
            .body(body)
            .customize()
            .config_override(self.upload_limits(size))
            .send()
            .await
            .map_err(|e| self.error("PutObject", Some(key), e))?;
        Ok(())
    }

    async fn put_multipart(&self, key: &BlobKey, path: &Path, size: u64) -> Result<(), StoreError> {
        let object = self.object_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&object)
            .metadata(MD5_METADATA, key.to_string())
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", Some(key), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Permanent,
                format!(
                    "S3 CreateMultipartUpload of {object} in {} returned no upload id",
                    self.place
                ),
            ));
        }
        // Whatever ends this upload early (an error, or the task being dropped),
        // the parts already sent are discarded at the server.
        let mut abort = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            object: object.clone(),
            upload_id: Some(upload_id.clone()),
        };
        let part_size = self.part_size;
        let count = size.div_ceil(part_size);
        let path: Arc<PathBuf> = Arc::new(path.to_path_buf());
        let parts: Result<Vec<CompletedPart>, StoreError> = stream::iter(0..count)
            .map(|i| {
                let offset = i * part_size;
                let len = part_size.min(size - offset);
                self.put_part(key, &path, &object, &upload_id, i as i32 + 1, offset, len)
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await;
        let done = match parts {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&object)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                // Completing a large upload can take the server a while.
                .customize()
                .config_override(self.upload_limits(size / 16))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.error("CompleteMultipartUpload", Some(key), e)),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                abort.upload_id = None;
                Ok(())
            }
            Err(e) => {
                abort.now().await;
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn put_part(
        &self,
        key: &BlobKey,
        path: &Arc<PathBuf>,
        object: &str,
        upload_id: &str,
        number: i32,
        offset: u64,
        len: u64,
    ) -> Result<CompletedPart, StoreError> {
        let md5 = part_md5(key, path.clone(), offset, len).await?;
        let body = file_body(key, path, offset, len).await?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .content_md5(base64_md5(&md5))
            .body(body)
            .customize()
            .config_override(self.upload_limits(len))
            .send()
            .await
            .map_err(|e| self.error("UploadPart", Some(key), e))?;
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .build())
    }
}

/// Sends AbortMultipartUpload for an upload that did not complete.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    object: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn request(&self, upload_id: String) -> impl Future<Output = ()> + Send + 'static {
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.object)
            .upload_id(&upload_id);
        let object = self.object.clone();
        async move {
            match req.send().await {
                Ok(_) => tracing::info!(%object, %upload_id, "aborted an unfinished multipart upload"),
                Err(e) => tracing::warn!(
                    %object, %upload_id, error = %crate::error_chain(&e),
                    "could not abort an unfinished multipart upload; a bucket lifecycle rule will have to"
                ),
            }
        }
    }

    async fn now(&mut self) {
        if let Some(id) = self.upload_id.take() {
            self.request(id).await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.upload_id.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(self.request(id));
        }
    }
}

fn base64_md5(digest: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// A retryable request body: a byte range of a local file.
async fn file_body(key: &BlobKey, path: &Path, offset: u64, len: u64) -> Result<SdkByteStream, StoreError> {
    SdkByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .build()
        .await
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Permanent,
                format!("cannot read the spool file of {key} for upload"),
            )
            .with_source(e)
        })
}

/// The MD5 of a byte range of a file, hashed on a blocking thread.
async fn part_md5(key: &BlobKey, path: Arc<PathBuf>, offset: u64, len: u64) -> Result<[u8; 16], StoreError> {
    use md5::{Digest, Md5};
    use std::io::{Read, Seek, SeekFrom};
    let key = *key;
    tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 16]> {
        let mut file = std::fs::File::open(path.as_path())?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = file.take(len);
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(|e| StoreError::new(StoreErrorKind::Permanent, "part hash task failed").with_source(e))?
    .map_err(|e| {
        StoreError::new(
            StoreErrorKind::Permanent,
            format!("cannot read the spool file of {key} for upload"),
        )
        .with_source(e)
    })
}

/// What an SDK error means for us.
fn classify<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> StoreErrorKind {
    use StoreErrorKind::*;
    match e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match (status, se.err().code()) {
                (_, Some("NoSuchBucket")) => Permanent,
                (_, Some("NoSuchKey" | "NotFound")) | (404, _) => NotFound,
                (401 | 403, _) | (_, Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")) => Denied,
                // Throttling and timeouts pass; so does a body damaged on the way (BadDigest).
                (500.., _) | (408 | 429, _) | (_, Some("SlowDown" | "RequestTimeout" | "BadDigest")) => Unavailable,
                _ => Permanent,
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Unavailable,
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Unavailable,
        // Before anything was sent: most often no usable credentials.
        SdkError::DispatchFailure(_) => Denied,
        SdkError::ConstructionFailure(_) => Permanent,
        _ => Unavailable,
    }
}

#[async_trait]
impl Store for S3Store {
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("HeadObject", Some(key), e))?;
        let size = out.content_length().unwrap_or(-1);
        u64::try_from(size).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Permanent,
                format!("S3 HeadObject of {key} in {} gave no size", self.place),
            )
        })
    }

    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError> {
        let want = range.end - range.start;
        if want == 0 {
            return Ok(stream::empty().boxed());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("GetObject", Some(key), e))?;
        let got = out.content_length().unwrap_or(-1);
        if got != want as i64 {
            return Err(StoreError::new(
                StoreErrorKind::Permanent,
                format!(
                    "S3 GetObject of {key} bytes {}..{} in {} returned {got} bytes, not {want}",
                    range.start, range.end, self.place
                ),
            ));
        }
        // The answer came in time; now bound each wait for more of the body.
        let idle = self.timeout;
        let key = *key;
        let place = self.place.clone();
        let body = out.body;
        Ok(stream::unfold(Some(body), move |body| {
            let place = place.clone();
            async move {
                let mut body = body?;
                match tokio::time::timeout(idle, body.next()).await {
                    Ok(None) => None,
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(body))),
                    Ok(Some(Err(e))) => Some((
                        Err(StoreError::new(
                            StoreErrorKind::Unavailable,
                            format!("S3 GetObject of {key} in {place}: the body broke off"),
                        )
                        .with_source(e)),
                        None,
                    )),
                    Err(_) => Some((
                        Err(StoreError::new(
                            StoreErrorKind::Unavailable,
                            format!("S3 GetObject of {key} in {place}: no data for {idle:?}"),
                        )),
                        None,
                    )),
                }
            }
        })
        .boxed())
    }

    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64) -> Result<(), StoreError> {
        if size > self.multipart_threshold {
            self.put_multipart(key, path, size).await
        } else {
            self.put_single(key, path, size).await
        }
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.error("DeleteObject", Some(key), e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("HeadBucket", None, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_an_optional_prefix() {
        assert_eq!(parse_url("s3://droplets").unwrap(), ("droplets".into(), "".into()));
        assert_eq!(parse_url("s3://droplets/").unwrap(), ("droplets".into(), "".into()));
        assert_eq!(
            parse_url("s3://droplets/cache").unwrap(),
            ("droplets".into(), "cache/".into())
        );
        assert_eq!(
            parse_url("s3://droplets/a/b/").unwrap(),
            ("droplets".into(), "a/b/".into())
        );
        assert!(parse_url("s3://").is_err());
        assert!(parse_url("s3:///cache").is_err());
        assert!(parse_url("s3://Bad_Bucket").is_err());
    }

    #[test]
    fn uploads_get_more_time_the_larger_they_are() {
        let base = Duration::from_secs(10);
        assert_eq!(upload_timeout(base, 0), base);
        assert_eq!(upload_timeout(base, 64 << 20), Duration::from_secs(74));
    }
}
