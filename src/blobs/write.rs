//! The write path: stream to the spool while hashing, make it durable, hand it
//! to the store, and copy it into the cache in the background.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::sync::mpsc;

use super::error::BoxError;
use super::{BlobError, BlobService, WriteMode, read_at};
use crate::cache::{BlobMeta, chunks};
use crate::key::BlobKey;

/// Body frames queued between the network and the hashing writer thread.
const WRITE_QUEUE: usize = 16;

/// Spool bytes promised to one upload; given back when it ends (committed blobs
/// are then counted by the pending queue).
struct Reservation {
    svc: Arc<BlobService>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.svc.spool_reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

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

impl BlobService {
    /// Store a blob from a body stream, hashing it as it arrives.
    pub async fn put<S, E>(self: &Arc<Self>, req: PutRequest, body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let result = self.put_inner(req, body).await;
        let counter = match &result {
            Ok(o) if o.created => &self.stats.puts_created,
            Ok(_) => &self.stats.puts_existing,
            Err(_) => &self.stats.puts_rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn put_inner<S, E>(self: &Arc<Self>, req: PutRequest, mut body: S) -> Result<PutOutcome, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<BoxError>,
    {
        let limit = self.config.max_blob_size;
        if req.declared_len.is_some_and(|n| n > limit) {
            return Err(BlobError::TooLarge { limit });
        }
        if let Some(expected) = req.expected {
            if let Some(header) = req.content_md5.filter(|h| *h != expected) {
                return Err(BlobError::ContentMd5Mismatch { key: expected, header });
            }
            if let Some(size) = self.existing_size(&expected).await {
                // Immutable: same key, same bytes. Nothing to write, nothing to read.
                return Ok(PutOutcome {
                    md5: expected,
                    size,
                    created: false,
                });
            }
        }

        // Never drop a write: refuse it up front when the spool cannot take it.
        let mut reservation = Reservation {
            svc: self.clone(),
            bytes: 0,
        };
        if let Some(n) = req.declared_len {
            self.reserve(&mut reservation, n)?;
        }
        let spool = self.replicator.spool().clone();
        let (writer, guard) = spool.temp_file().map_err(BlobError::io("create a spool file"))?;
        // Hashing and writing each run on a blocking thread of their own, in
        // parallel, while the body keeps flowing in.
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let (write_tx, mut write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let hashing = tokio::task::spawn_blocking(move || {
            let mut hasher = Md5::new();
            while let Some(bytes) = hash_rx.blocking_recv() {
                hasher.update(&bytes);
            }
            hasher
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
            self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if received > limit {
                return Err(BlobError::TooLarge { limit });
            }
            if received > reservation.bytes {
                let more = received - reservation.bytes;
                self.reserve(&mut reservation, more)?;
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
        let hasher = hashing.await.expect("hash task");
        tracing::debug!(size, frames, ?body_received, hashed = ?started.elapsed(), "upload received");
        let key = BlobKey::from_digest(hasher);
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
            && let Some(size) = self.existing_size(&key).await
        {
            return Ok(PutOutcome {
                md5: key,
                size,
                created: false,
            });
        }

        let since = SystemTime::now();
        // The spool file was written with O_DIRECT; the cache warmer reads it through a plain handle.
        let (path, file) = tokio::task::spawn_blocking(move || {
            let path = spool.commit(guard, &file, &key)?;
            let reader = std::fs::File::open(&path)?;
            Ok::<_, std::io::Error>((path, reader))
        })
        .await
        .expect("spool commit task")
        .map_err(BlobError::io("make the upload durable"))?;
        let mode = if req.write_through {
            WriteMode::Through
        } else {
            self.config.write_mode
        };
        match mode {
            WriteMode::Back => self.replicator.enqueue(key, size, since),
            WriteMode::Through => {
                let stored = self.store.put_file(&key, &path, size).await;
                let spool = self.replicator.spool().clone();
                tokio::task::spawn_blocking(move || spool.remove_pending(&key))
                    .await
                    .expect("spool task")
                    .map_err(BlobError::io("remove a replicated spool file"))?;
                stored?;
            }
        }
        tracing::debug!(%key, size, total = ?started.elapsed(), "upload stored");
        self.warm(key, size, file);
        Ok(PutOutcome {
            md5: key,
            size,
            created: true,
        })
    }

    /// Promise `more` spool bytes to an upload, if the spool has room.
    fn reserve(self: &Arc<Self>, r: &mut Reservation, more: u64) -> Result<(), BlobError> {
        let limit = self.config.spool_size;
        let before = self.spool_reserved.fetch_add(more, Ordering::SeqCst);
        if self.replicator.pending_bytes() + before + more > limit {
            self.spool_reserved.fetch_sub(more, Ordering::SeqCst);
            return Err(BlobError::SpoolFull { limit });
        }
        r.bytes += more;
        Ok(())
    }

    /// Copy a just-written blob into the cache, a chunk at a time, in the
    /// background; its bytes were verified on the way in.
    fn warm(self: &Arc<Self>, key: BlobKey, size: u64, file: std::fs::File) {
        // A blob that would flush half the disk tier is not worth caching on write.
        if size > self.cache.usage().disk_capacity_bytes / 2 {
            return;
        }
        let svc = self.clone();
        let token = self.completions.begin(key);
        tokio::spawn(async move {
            let Ok(_permit) = svc.warmers.acquire().await else {
                svc.completions.finish(&svc.cache, key, &token, None);
                return;
            };
            let cs = svc.chunk_size();
            let file = Arc::new(file);
            for i in 0..chunks::count(size, cs) {
                if token.load(Ordering::Acquire) {
                    break; // deleted meanwhile: stop copying
                }
                let f = file.clone();
                let range = chunks::bounds(i, size, cs);
                match tokio::task::spawn_blocking(move || read_at(&f, range))
                    .await
                    .expect("warm task")
                {
                    Ok(bytes) => svc.cache.insert_chunk(&key, i, bytes),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "could not cache a new blob");
                        svc.completions.finish(&svc.cache, key, &token, None);
                        return;
                    }
                }
            }
            svc.completions.finish(&svc.cache, key, &token, Some(BlobMeta { size }));
        });
    }
}
