//! blobcache: a read-through HTTP blob cache, addressed by MD5, in front of object storage.
//!
//! - [`key`]: `BlobKey`, parsed at the boundary.
//! - [`http`]: routes, handlers, error mapping.
//! - [`blobs`]: `BlobService`, the read-through / write-back logic.
//! - [`cache`]: the foyer hybrid cache of chunks (the only user of foyer).
//! - [`store`]: the persistent store trait and its backends.
//! - [`replication`]: the durable spool and the upload workers.
//! - [`metrics`]: Prometheus metrics.
//! - [`config`], [`app`]: configuration, start-up and shutdown.
//! - [`client`]: the `put`/`get`/`stat`/`rm`/`warm` subcommands, a client of the HTTP API.

pub mod app;
pub mod blobs;
pub mod cache;
pub mod client;
pub mod config;
mod fsutil;
pub mod http;
pub mod key;
pub mod metrics;
pub mod replication;
pub mod store;

/// An error and its causes on one line: `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
