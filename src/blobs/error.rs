//! Errors of blob operations.

use std::sync::Arc;

use crate::cache::{CacheError, FetchError};
use crate::key::BlobKey;
use crate::replication::{SpoolError, SpoolFull, UploadError};
use crate::store::StoreError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of blob operations. Only `http::error` maps them to statuses.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no blob with this key")]
    NotFound,
    #[error("the content's MD5 is {actual}, not the {expected} it was sent as")]
    DigestMismatch { expected: BlobKey, actual: BlobKey },
    #[error("the Content-MD5 header names {header}, not the key {key}")]
    ContentMd5Mismatch { key: BlobKey, header: BlobKey },
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the spool is full ({limit} bytes wait for the store); retry later")]
    SpoolFull { limit: u64 },
    #[error("the upload ended before its body was complete")]
    UploadAborted(#[source] BoxError),
    #[error("the store's copy of {key} has MD5 {actual}: refusing to serve it")]
    Integrity { key: BlobKey, actual: BlobKey },
    #[error("the store's copy of {key} is shorter than expected")]
    ShortRead { key: BlobKey },
    #[error("chunk {chunk} of {key}, read again, does not match the digest recorded when the blob was verified")]
    ChunkIntegrity { key: BlobKey, chunk: u32 },
    #[error(transparent)]
    Spool(SpoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{context}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Peer(#[from] crate::cluster::PeerError),
    #[error("the shared read of this blob stopped")]
    FillAborted,
    #[error(transparent)]
    Shared(Arc<BlobError>),
}

impl BlobError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> BlobError {
        move |source| BlobError::Io { context, source }
    }

    /// Whether the error says this node's disk is full.
    pub fn is_no_space(&self) -> bool {
        match self.root() {
            BlobError::Io { source, .. } | BlobError::Spool(SpoolError::Io(source)) => {
                crate::fsutil::is_no_space(source)
            }
            _ => false,
        }
    }

    /// The error behind any sharing wrapper.
    pub fn root(&self) -> &BlobError {
        match self {
            BlobError::Shared(inner) => inner.root(),
            other => other,
        }
    }
}

impl From<SpoolFull> for BlobError {
    fn from(e: SpoolFull) -> Self {
        BlobError::SpoolFull { limit: e.limit }
    }
}

impl From<UploadError> for BlobError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Store(s) => BlobError::Store(s),
            UploadError::Spool(s) => BlobError::Spool(s),
            UploadError::Gone => BlobError::NotFound,
        }
    }
}

impl From<FetchError<BlobError>> for BlobError {
    fn from(e: FetchError<BlobError>) -> Self {
        match e {
            FetchError::Fetch(inner) => BlobError::Shared(inner),
            FetchError::Cache(c) => BlobError::Cache(c),
        }
    }
}
