//! Uploads to S3: a single PutObject, or a multipart upload with a checked
//! `Content-MD5` on every part, aborted if it does not complete.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use futures::{StreamExt, TryStreamExt, stream};

use super::{S3Store, time_limits};
use crate::key::BlobKey;
use crate::store::{StoreError, StoreErrorKind};

/// Parts of one multipart upload sent at once.
const PART_CONCURRENCY: usize = 4;

/// Object metadata that records the blob's MD5 (`x-amz-meta-md5`).
const MD5_METADATA: &str = "md5";

/// How long an upload of `bytes` may take before it counts as stalled:
/// the usual answer time plus 1 s per MiB (a floor of 1 MiB/s).
fn upload_timeout(base: Duration, bytes: u64) -> Duration {
    base + Duration::from_secs(bytes.div_ceil(1024 * 1024))
}

impl S3Store {
    /// Limits for a request that sends `bytes` of body.
    fn upload_limits(&self, bytes: u64) -> aws_sdk_s3::config::Builder {
        time_limits(upload_timeout(self.timeout, bytes))
    }

    /// Store a local file as the blob's object: in parts above the multipart
    /// threshold, each sent with the MD5 the caller took from checked bytes.
    pub(super) async fn upload(
        &self,
        key: &BlobKey,
        path: &Path,
        size: u64,
        part_md5s: &[[u8; 16]],
    ) -> Result<(), StoreError> {
        if size > self.multipart_threshold {
            let parts = size.div_ceil(self.part_size) as usize;
            if part_md5s.len() != parts {
                return Err(StoreError::new(
                    StoreErrorKind::Permanent,
                    format!(
                        "an upload of {key} in {parts} parts came with {} part digests",
                        part_md5s.len()
                    ),
                ));
            }
            self.put_multipart(key, path, size, part_md5s).await
        } else {
            self.put_single(key, path, size).await
        }
    }

    /// Abort the multipart uploads an earlier run recorded and did not finish.
    pub(super) async fn abort_unfinished(&self) -> Result<(), StoreError> {
        let unfinished = self.journal.unfinished().map_err(|e| {
            StoreError::new(StoreErrorKind::Permanent, "cannot read the multipart journal").with_source(e)
        })?;
        for u in unfinished {
            let sent = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&u.object)
                .upload_id(&u.upload_id)
                .customize()
                .config_override(self.answer_limits())
                .send()
                .await;
            match sent.map_err(|e| self.error("AbortMultipartUpload", None, e)) {
                // Gone already (completed, or aborted by a lifecycle rule): nothing to do.
                Ok(_) => {
                    tracing::info!(object = %u.object, upload_id = %u.upload_id, "aborted a multipart upload an earlier run left unfinished")
                }
                Err(e) if e.kind() == StoreErrorKind::NotFound || e.kind() == StoreErrorKind::Permanent => {
                    tracing::info!(object = %u.object, error = %crate::error_chain(&e), "an unfinished multipart upload is gone already")
                }
                Err(e) => return Err(e),
            }
            self.journal.end(&u.path).await;
        }
        Ok(())
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

    async fn put_multipart(
        &self,
        key: &BlobKey,
        path: &Path,
        size: u64,
        part_md5s: &[[u8; 16]],
    ) -> Result<(), StoreError> {
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
        // the parts already sent are discarded at the server; a crash leaves
        // the journal record, and the next start aborts it.
        let mut abort = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            object: object.clone(),
            upload_id: Some(upload_id.clone()),
        };
        let record = self.journal.begin(&object, &upload_id).await.map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                "cannot record a multipart upload in the journal",
            )
            .with_source(e)
        })?;
        let part_size = self.part_size;
        let count = size.div_ceil(part_size);
        let upload = Multipart {
            key,
            path: Arc::new(path.to_path_buf()),
            object: &object,
            upload_id: &upload_id,
        };
        let parts: Result<Vec<CompletedPart>, StoreError> = stream::iter(0..count)
            .map(|i| {
                let offset = i * part_size;
                let md5 = part_md5s[i as usize];
                self.put_part(
                    &upload,
                    i as i32 + 1,
                    offset..offset + part_size.min(size - offset),
                    md5,
                )
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
                self.journal.end(&record).await;
                Ok(())
            }
            Err(e) => {
                if abort.now().await {
                    self.journal.end(&record).await;
                }
                Err(e)
            }
        }
    }

    /// Send one part: the byte range `part` of the spool file, with its own Content-MD5.
    async fn put_part(
        &self,
        upload: &Multipart<'_>,
        number: i32,
        part: Range<u64>,
        md5: [u8; 16],
    ) -> Result<CompletedPart, StoreError> {
        let (key, offset, len) = (upload.key, part.start, part.end - part.start);
        let body = file_body(key, &upload.path, offset, len).await?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(upload.object)
            .upload_id(upload.upload_id)
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

/// A multipart upload under way: what each part needs to know.
struct Multipart<'a> {
    key: &'a BlobKey,
    path: Arc<PathBuf>,
    object: &'a str,
    upload_id: &'a str,
}

/// Sends AbortMultipartUpload for an upload that did not complete.
struct AbortOnDrop {
    client: Client,
    bucket: String,
    object: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn request(&self, upload_id: String) -> impl Future<Output = bool> + Send + 'static {
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.object)
            .upload_id(&upload_id);
        let object = self.object.clone();
        async move {
            match req.send().await {
                Ok(_) => {
                    tracing::info!(%object, %upload_id, "aborted an unfinished multipart upload");
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        %object, %upload_id, error = %crate::error_chain(&e),
                        "could not abort an unfinished multipart upload; the next start tries again"
                    );
                    false
                }
            }
        }
    }

    /// Abort now; whether the store confirmed it.
    async fn now(&mut self) -> bool {
        match self.upload_id.take() {
            Some(id) => self.request(id).await,
            None => true,
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.upload_id.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The journal record stays: if this abort fails, the next start retries it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_get_more_time_the_larger_they_are() {
        let base = Duration::from_secs(10);
        assert_eq!(upload_timeout(base, 0), base);
        assert_eq!(upload_timeout(base, 64 << 20), Duration::from_secs(74));
    }
}
