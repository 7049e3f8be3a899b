//! Ingest: stream an upload to the spool while hashing it (its MD5, and the
//! digest of each chunk), make it durable, hand it to replication (queued, or
//! uploaded before the answer for write-through), and copy it into the cache
//! in the background.

use std::hash::Hasher;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::{Semaphore, mpsc};

use super::completions::Token;
use super::error::BoxError;
use super::lookup::{Lookup, Reach};
use super::{BlobConfig, BlobError, Parts, WriteMode};
use crate::cache::BlobMeta;
use crate::chunks;
use crate::key::BlobKey;
use crate::replication::{SpoolBlob, UploadError};

/// Body frames queued between the network and the hashing and writing threads.
const WRITE_QUEUE: usize = 16;

/// What a PUT asks for.
#[derive(Debug, Default, Clone, Copy)]
pub struct PutRequest {
    /// The key in the URL; `None` for `POST /blobs`, where the server names the blob.
    pub expected: Option<BlobKey>,
    /// A `Content-MD5` header, already decoded.
    pub content_md5: Option<BlobKey>,
    /// A declared `Content-Length`.
    pub declared_len: Option<u64>,
    /// Answer only once the store has the blob, whatever the node's write mode.
    pub write_through: bool,
}

/// What a PUT did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PutOutcome {
    pub md5: BlobKey,
    pub size: u64,
    /// False when the blob was already here and nothing was written.
    #[serde(skip)]
    pub created: bool,
}

/// The write side of the service.
#[derive(Debug)]
pub(super) struct Writer {
    parts: Arc<Parts>,
    lookup: Lookup,
    config: BlobConfig,
    /// Background copies of new blobs into the cache, at most two at a time.
    warmers: Arc<Semaphore>,
}

/// MD5 of the whole body and the digest of each chunk, computed together on one thread.
struct Hashes {
    md5: Md5,
    chunk: twox_hash::XxHash3_64,
    in_chunk: u64,
    chunk_size: u64,
    digests: Vec<u64>,
}

impl Hashes {
    fn new(chunk_size: u64) -> Self {
        Hashes {
            md5: Md5::new(),
            chunk: twox_hash::XxHash3_64::default(),
            in_chunk: 0,
            chunk_size,
            digests: Vec::new(),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.md5.update(bytes);
        while !bytes.is_empty() {
            let take = bytes.len().min((self.chunk_size - self.in_chunk) as usize);
            self.chunk.write(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == self.chunk_size {
                self.digests.push(std::mem::take(&mut self.chunk).finish());
                self.in_chunk = 0;
            }
        }
    }

    fn finish(mut self) -> (BlobKey, Vec<u64>) {
        if self.in_chunk > 0 {
            self.digests.push(self.chunk.finish());
        }
        (BlobKey::from_digest(self.md5), self.digests)
    }
}

impl Writer {
    pub(super) fn new(parts: Arc<Parts>, lookup: Lookup, config: BlobConfig) -> Self {
        Writer {
            parts,
            lookup,
            config,
            warmers: Arc::new(Semaphore::new(2)),
        }
    }

    /// Store a blob from a body stream, hashing it as it arrives.
    pub(super) async fn put<S, E>(&self, req: PutRequest, body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let result = self.put_inner(req, body).await;
        let stats = &self.parts.stats;
        match &result {
            Ok(o) if o.created => stats.puts_created.inc(),
            Ok(_) => stats.puts_existing.inc(),
            Err(_) => stats.puts_rejected.inc(),
        }
        result
    }

    /// Whether the blob is here already (immutable: same key, same bytes). A
    /// write-back PUT asks only this node: it must never wait on the store,
    /// and the uploader skips blobs the store already has.
    async fn existing(&self, key: &BlobKey, write_through: bool) -> Result<Option<u64>, BlobError> {
        let reach = if write_through {
            Reach::LocalAndStore
        } else {
            Reach::Local
        };
        match self.lookup.find(key, reach).await {
            Ok(found) => Ok(Some(found.size)),
            Err(BlobError::NotFound) => Ok(None),
            // A store that cannot be asked does not know better than the upload.
            Err(BlobError::Store(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_inner<S, E>(&self, req: PutRequest, mut body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let limit = self.config.max_blob_size.as_u64();
        let through = req.write_through || self.config.write_mode == WriteMode::Through;
        if req.declared_len.is_some_and(|n| n > limit) {
            return Err(BlobError::TooLarge { limit });
        }
        if let Some(expected) = req.expected {
            if let Some(header) = req.content_md5.filter(|h| *h != expected) {
                return Err(BlobError::ContentMd5Mismatch { key: expected, header });
            }
            if let Some(size) = self.existing(&expected, through).await? {
                return Ok(PutOutcome {
                    md5: expected,
                    size,
                    created: false,
                });
            }
        }

        // Never drop a write: refuse it up front when the spool cannot take it.
        let replicator = &self.parts.replicator;
        let mut reservation = replicator.reservation();
        if let Some(n) = req.declared_len {
            reservation.grow(n)?;
        }
        let spool = self.parts.spool.clone();
        let (writer, guard) = spool.temp_file().map_err(BlobError::io("create a spool file"))?;
        // Hashing and writing each run on a blocking thread of their own, in
        // parallel, while the body keeps flowing in.
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let chunk_size = self.parts.chunk_size();
        let hashing = tokio::task::spawn_blocking(move || {
            let mut hashes = Hashes::new(chunk_size);
            while let Some(bytes) = hash_rx.blocking_recv() {
                hashes.update(&bytes);
            }
            hashes.finish()
        });
        let writing = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, std::fs::File)> {
            let mut writer = writer;
            let mut size = 0u64;
            while let Some(bytes) = write_rx.blocking_recv() {
                writer.write(&bytes)?;
                size += bytes.len() as u64;
            }
            Ok((size, writer.finish()?))
        });
        let started = std::time::Instant::now();
        let (mut received, mut frames) = (0u64, 0u64);
        while let Some(frame) = body.next().await {
            frames += 1;
            let bytes = frame.map_err(|e| BlobError::UploadAborted(e.into()))?;
            received += bytes.len() as u64;
            self.parts.stats.bytes_in.inc_by(bytes.len() as u64);
            if received > limit {
                return Err(BlobError::TooLarge { limit });
            }
            if received > reservation.bytes() {
                reservation.grow(received - reservation.bytes())?;
            }
            if hash_tx.send(bytes.clone()).await.is_err() || write_tx.send(bytes).await.is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        drop((hash_tx, write_tx));
        let body_received = started.elapsed();
        let (size, file) = writing
            .await
            .expect("spool writer task")
            .map_err(BlobError::io("write the spool"))?;
        let (key, digests) = hashing.await.expect("hash task");
        tracing::debug!(size, frames, ?body_received, hashed = ?started.elapsed(), "upload received");
        if let Some(expected) = req.expected
            && expected != key
        {
            return Err(BlobError::DigestMismatch { expected, actual: key });
        }
        if let Some(header) = req.content_md5
            && header != key
        {
            return Err(BlobError::DigestMismatch {
                expected: header,
                actual: key,
            });
        }
        if req.expected.is_none()
            && let Some(size) = self.existing(&key, through).await?
        {
            return Ok(PutOutcome {
                md5: key,
                size,
                created: false,
            });
        }

        // From the commit to the hand-over to replication, no DELETE of this
        // blob runs: it comes wholly before (this PUT then stands) or after.
        let key_lock = self.parts.key_locks.lock(key).await;
        let since = SystemTime::now();
        // From here on, a DELETE of this blob revokes the cache warm below.
        let token = self.parts.completions.begin(key);
        let abandon = |e: BlobError| {
            self.parts.completions.finish(&self.parts.cache, key, &token, None);
            e
        };
        // The committed blob, opened: the cache warm reads it even once an
        // upload (write-through) has removed it from the spool.
        let committed = tokio::task::spawn_blocking(move || spool.commit(guard, &file, &key, digests.into()))
            .await
            .expect("spool commit task")
            .map_err(BlobError::io("make the upload durable"))
            .map_err(abandon)?;
        drop(reservation);
        replicator
            .supersede_queued_delete(&key)
            .await
            .map_err(BlobError::io("drop a queued delete of the blob"))
            .map_err(abandon)?;
        if through {
            replicator.claim_upload(key, size, since).await;
            // The blob is handed over: a DELETE from here on comes after this PUT.
            drop(key_lock);
            match replicator.upload_claimed(key, size).await {
                // A DELETE came after the commit: this PUT happened, then the DELETE.
                Ok(()) | Err(UploadError::Gone) => {}
                Err(e) => return Err(abandon(e.into())),
            }
        } else {
            replicator.enqueue(key, size, since);
        }
        tracing::debug!(%key, size, total = ?started.elapsed(), "upload stored");
        self.warm(committed, token);
        Ok(PutOutcome {
            md5: key,
            size,
            created: true,
        })
    }

    /// Copy a just-written blob into the cache, a chunk at a time (each checked
    /// against its digest), in the background.
    fn warm(&self, blob: SpoolBlob, token: Token) {
        let parts = self.parts.clone();
        let (key, size) = (blob.key, blob.size);
        // A blob that would flush half the cache is not worth caching on write.
        let usage = parts.cache.usage();
        if size > usage.disk_capacity_bytes.max(usage.memory_capacity_bytes) / 2 {
            parts.completions.finish(&parts.cache, key, &token, None);
            return;
        }
        let warmers = self.warmers.clone();
        let blob = Arc::new(blob);
        tokio::spawn(async move {
            let Ok(_permit) = warmers.acquire().await else {
                parts.completions.finish(&parts.cache, key, &token, None);
                return;
            };
            for i in 0..chunks::count(size, parts.chunk_size()) {
                if token.revoked() {
                    break; // deleted meanwhile: stop copying
                }
                let b = blob.clone();
                match tokio::task::spawn_blocking(move || b.read_chunk(i))
                    .await
                    .expect("warm task")
                {
                    Ok(bytes) => parts.cache.insert_chunk(&key, i, bytes),
                    Err(e) => {
                        tracing::warn!(%key, error = %crate::error_chain(&e), "could not cache a new blob");
                        parts.completions.finish(&parts.cache, key, &token, None);
                        return;
                    }
                }
            }
            let meta = BlobMeta {
                size,
                verified_at: SystemTime::now(),
                digests: blob.digests().clone(),
            };
            parts.completions.finish(&parts.cache, key, &token, Some(meta));
        });
    }
}
