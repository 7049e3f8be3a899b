//! The persistent store: one trait, chosen by URL (`file://` or `s3://`).

mod breaker;
mod fs;
mod metered;
mod s3;
mod settings;

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use breaker::Breaker;
use fs::FsStore;
pub use metered::Metered;
use s3::S3Store;
pub use settings::{StoreConfig, StoreSettings, mask_userinfo};

use crate::key::BlobKey;

/// A stream of a blob's bytes from the store.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, at the granularity callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store has no such blob.
    NotFound,
    /// The store could not be reached or failed for a while: retrying can help.
    Unavailable,
    /// The store refused us (credentials, permissions): retrying will not help.
    Denied,
    /// Anything else that retrying will not fix (bad configuration, a short object).
    Permanent,
}

/// An error from a store. It says whether a retry could help; only the HTTP
/// layer turns it into a status code.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct StoreError {
    kind: StoreErrorKind,
    context: String,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, context: impl Into<String>) -> Self {
        StoreError {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn not_found(key: &BlobKey) -> Self {
        Self::new(StoreErrorKind::NotFound, format!("blob {key} is not in the store"))
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }

    /// A copy for a second caller: the same kind, with the causes folded into the message.
    pub fn flattened(&self) -> StoreError {
        StoreError::new(self.kind, crate::error_chain(self))
    }

    /// Whether trying the same operation again later could succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

/// A persistent home for blobs. Blobs are immutable: a key always names the same bytes.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The size of a stored blob, or a `NotFound` error.
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError>;

    /// Stream `range` of a blob. The range lies within the blob (callers know its size).
    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError>;

    /// Start reading a blob's first `len` bytes (all of it, if it is
    /// shorter) before its size is known, alongside `head`: a cold read then
    /// waits for one round trip to the store, not two. `None` (the default)
    /// from a store that answers at once, where there is nothing to save.
    /// The stream yields exactly the blob's first min(`len`, size) bytes.
    async fn get_prefix(&self, _key: &BlobKey, _len: u64) -> Option<Result<ByteStream, StoreError>> {
        None
    }

    /// How an upload of `size` bytes is cut into parts: the length of each
    /// part (the last may be shorter), or `None` when it goes up in one piece.
    fn part_size(&self, _size: u64) -> Option<u64> {
        None
    }

    /// Store the blob held in the local file `path` (`size` bytes) under `key`.
    /// `part_md5s` holds the MD5 of each part as `part_size` cuts it, taken by
    /// the caller from bytes it checked; a store that verifies uploads sends
    /// them (or the key itself, for one piece) so damaged bytes are refused.
    /// Returns only once the blob is durable in the store.
    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64, part_md5s: &[[u8; 16]]) -> Result<(), StoreError>;

    /// Remove a blob; removing an absent blob succeeds.
    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError>;

    /// A cheap request that shows the store is reachable and usable.
    async fn probe(&self) -> Result<(), StoreError>;

    /// Clean up what an earlier run of this node left unfinished in the store
    /// (multipart uploads cut short by a crash). Called once the store answers.
    async fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Record, where every node of a cluster can read it, that `key` was
    /// deleted at `at`. Durable when this returns; recording twice is harmless.
    async fn put_tombstone(&self, key: &BlobKey, at: SystemTime) -> Result<(), StoreError>;

    /// The tombstones recorded at or after `since`, oldest first.
    async fn tombstones(&self, since: SystemTime) -> Result<Vec<Tombstone>, StoreError>;

    /// Remove the tombstones recorded before `before`; returns how many went.
    async fn expire_tombstones(&self, before: SystemTime) -> Result<u64, StoreError>;

    /// The blob a store object is, if it is one of this store's blobs: how S3
    /// event notifications, which name a bucket and an object key, are read.
    fn blob_of_object(&self, _bucket: &str, _object: &str) -> Option<BlobKey> {
        None
    }
}

/// A deletion recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    pub key: BlobKey,
    pub at: SystemTime,
}

/// Where tombstones live in a store, beside the blobs (whose names are bare MD5s).
pub(crate) const TOMBSTONE_DIR: &str = ".blobcache-tombstones";

/// A tombstone's object name: `<written>-<md5>-<deleted at>`, both times in
/// zero-padded µs. Names sort by the time they were written, so a listing can
/// start after the last one read; a deletion queued while the store was down
/// is written late, with its real deletion time.
pub(crate) fn tombstone_name(t: &Tombstone, written: SystemTime) -> String {
    format!("{:020}-{}-{:020}", micros(written), t.key, micros(t.at))
}

/// The name a listing of the tombstones written at or after `since` starts after.
pub(crate) fn tombstone_start(since: SystemTime) -> String {
    // Every name written in that microsecond is "<micros>-...", which sorts after "<micros>".
    format!("{:020}", micros(since))
}

pub(crate) fn parse_tombstone_name(name: &str) -> Option<Tombstone> {
    let mut fields = name.split('-');
    let (written, key, at) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || written.len() != 20 || at.len() != 20 {
        return None;
    }
    let at: u64 = at.parse().ok()?;
    Some(Tombstone {
        key: key.parse().ok()?,
        at: SystemTime::UNIX_EPOCH + Duration::from_micros(at),
    })
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Open the store a URL names: `s3://bucket[/prefix]`, `file:///path` or a plain path.
/// `journal` is a directory of this node's where a store may record work it must
/// finish or undo after a crash. Nothing is sent to a remote store yet: `probe`
/// is the first request.
pub async fn open(config: &StoreConfig, journal: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.store.as_str();
    if let Some(path) = url.strip_prefix("file://") {
        anyhow::ensure!(!path.is_empty(), "store URL {url:?} has no path");
        return Ok(Arc::new(FsStore::open(Path::new(path)).await?));
    }
    if url.starts_with("s3://") {
        return Ok(Arc::new(S3Store::open(config, journal).await?));
    }
    if url.contains("://") {
        anyhow::bail!("store {url:?}: unsupported scheme (use s3://bucket[/prefix] or file:///path)");
    }
    Ok(Arc::new(FsStore::open(Path::new(url)).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstone_names_sort_by_time_and_read_back() {
        let key: BlobKey = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let t = Tombstone { key, at };
        let written = at + Duration::from_secs(1);
        let name = tombstone_name(&t, written);
        assert_eq!(
            name,
            "00001700000001123456-0123456789abcdef0123456789abcdef-00001700000000123456"
        );
        assert_eq!(parse_tombstone_name(&name), Some(t));
        assert!(name.as_str() > tombstone_start(written).as_str());
        assert!(name.as_str() < tombstone_start(written + Duration::from_micros(1)).as_str());
        assert_eq!(parse_tombstone_name("123-0123456789abcdef0123456789abcdef-1"), None);
        assert_eq!(
            parse_tombstone_name("00001700000000123456-xyz-00001700000000123456"),
            None
        );
    }
}
