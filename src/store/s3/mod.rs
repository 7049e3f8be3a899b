//! The S3 store: AWS S3 or any S3-protocol server (MinIO, Ceph RGW, R2).
//! The only module that imports the AWS SDK.
//!
//! A blob lives at `<prefix>/<md5>` in one bucket, a tombstone (an empty
//! object) at `<prefix>/.blobcache-tombstones/<time>-<md5>`. Uploads carry `Content-MD5`
//! so the server checks the bytes it received; blobs above the multipart
//! threshold go up in parts, each with its own `Content-MD5`, and the blob's
//! MD5 is kept in the object's metadata (a multipart ETag is not the MD5).
//! Every request is bounded in time: a slow or silent server becomes a
//! retryable error, never a hang.

mod journal;
mod upload;

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use futures::{StreamExt, stream};
use std::path::Path;

use super::{ByteStream, Store, StoreConfig, StoreError, StoreErrorKind, Tombstone};
use crate::key::BlobKey;

/// Per-call limits: the whole call, retries included, may take `limit`.
fn time_limits(limit: Duration) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::new().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(limit)
            .operation_timeout(limit)
            .build(),
    )
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
    /// Multipart uploads under way, recorded so a crash cannot leave them behind.
    journal: journal::Journal,
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
    pub async fn open(options: &StoreConfig, journal_dir: &Path) -> anyhow::Result<S3Store> {
        let (bucket, prefix) = parse_url(&options.store)?;
        let journal = journal::Journal::open(&journal_dir.join("s3-multipart"))?;
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
            Some(e) => format!("bucket {bucket:?} at {}", super::mask_userinfo(e)),
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
            journal,
        })
    }

    fn object_key(&self, key: &BlobKey) -> String {
        format!("{}{key}", self.prefix)
    }

    fn tombstone_prefix(&self) -> String {
        format!("{}{}/", self.prefix, super::TOMBSTONE_DIR)
    }

    /// The tombstones whose names sort after `start_after`, oldest first, every
    /// page, each with its object key.
    async fn list_tombstones(&self, start_after: &str) -> Result<Vec<(String, Tombstone)>, StoreError> {
        let prefix = self.tombstone_prefix();
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .start_after(format!("{prefix}{start_after}"))
                .set_continuation_token(token.take())
                .customize()
                .config_override(self.answer_limits())
                .send()
                .await
                .map_err(|e| self.error("ListObjectsV2 (tombstones)", None, e))?;
            for object in page.contents() {
                let Some(name) = object.key() else { continue };
                if let Some(t) = name.strip_prefix(&prefix).and_then(super::parse_tombstone_name) {
                    found.push((name.to_string(), t));
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(found)
    }

    /// GetObject of bytes `first..=last`; the body is still to be read.
    async fn get_bytes(&self, key: &BlobKey, first: u64, last: u64) -> Result<GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .range(format!("bytes={first}-{last}"))
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("GetObject", Some(key), e))
    }

    /// A GetObject's body as a stream, each wait for more of it bounded (the
    /// answer came in time; a body that stalls must not hold a read forever).
    fn body_stream(&self, key: &BlobKey, body: aws_sdk_s3::primitives::ByteStream) -> ByteStream {
        let idle = self.timeout;
        let key = *key;
        let place = self.place.clone();
        stream::unfold(Some(body), move |body| {
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
        .boxed()
    }

    /// Limits for a request answered without a large body going up.
    fn answer_limits(&self) -> aws_sdk_s3::config::Builder {
        time_limits(self.timeout)
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
        let out = self.get_bytes(key, range.start, range.end - 1).await?;
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
        Ok(self.body_stream(key, out.body))
    }

    /// One GetObject for the first `len` bytes. S3 answers a range that runs
    /// past the end with the bytes there are.
    async fn get_prefix(&self, key: &BlobKey, len: u64) -> Option<Result<ByteStream, StoreError>> {
        if len == 0 {
            return None;
        }
        let out = match self.get_bytes(key, 0, len - 1).await {
            Ok(out) => out,
            Err(e) => return Some(Err(e)),
        };
        let got = out.content_length().unwrap_or(-1);
        if !(0..=len as i64).contains(&got) {
            return Some(Err(StoreError::new(
                StoreErrorKind::Permanent,
                format!(
                    "S3 GetObject of {key} bytes 0..{len} in {} returned {got} bytes",
                    self.place
                ),
            )));
        }
        Some(Ok(self.body_stream(key, out.body)))
    }

    fn part_size(&self, size: u64) -> Option<u64> {
        (size > self.multipart_threshold).then_some(self.part_size)
    }

    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64, part_md5s: &[[u8; 16]]) -> Result<(), StoreError> {
        self.upload(key, path, size, part_md5s).await
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

    async fn recover(&self) -> Result<(), StoreError> {
        self.abort_unfinished().await
    }

    async fn put_tombstone(&self, key: &BlobKey, at: SystemTime) -> Result<(), StoreError> {
        let name = super::tombstone_name(&Tombstone { key: *key, at }, SystemTime::now());
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!("{}{name}", self.tombstone_prefix()))
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b""))
            .customize()
            .config_override(self.answer_limits())
            .send()
            .await
            .map_err(|e| self.error("PutObject (tombstone)", Some(key), e))?;
        Ok(())
    }

    async fn tombstones(&self, since: SystemTime) -> Result<Vec<Tombstone>, StoreError> {
        let found = self.list_tombstones(&super::tombstone_start(since)).await?;
        Ok(found.into_iter().map(|(_, t)| t).collect())
    }

    async fn expire_tombstones(&self, before: SystemTime) -> Result<u64, StoreError> {
        let end = format!("{}{}", self.tombstone_prefix(), super::tombstone_start(before));
        let mut removed = 0;
        for (name, t) in self.list_tombstones("").await? {
            if name >= end {
                break;
            }
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(name)
                .customize()
                .config_override(self.answer_limits())
                .send()
                .await
                .map_err(|e| self.error("DeleteObject (tombstone)", Some(&t.key), e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Our bucket, and exactly `<prefix><md5>` (lower-case, as this store names blobs).
    fn blob_of_object(&self, bucket: &str, object: &str) -> Option<BlobKey> {
        if bucket != self.bucket {
            return None;
        }
        let name = object.strip_prefix(&self.prefix)?;
        let key: BlobKey = name.parse().ok()?;
        (key.to_string() == name).then_some(key)
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
}
