//! blobcache: a read-through HTTP blob cache, addressed by MD5, in front of object storage.
//!
//! - [`key`]: `BlobKey`, parsed at the boundary.
//! - [`auth`]: tokens (stored as SHA-256 digests) and their scopes.
//! - [`http`]: routes, handlers, error mapping, HTTP metrics; the connection layer ([`http::server`]:
//!   limits, timeouts, heads checked before hyper parses them).
//! - [`blobs`]: `BlobService`: the lookup chain, reads and fills, ingest, DELETE.
//! - [`cluster`]: membership, owners (rendezvous hashing), the peer client.
//! - [`cache`]: the foyer hybrid cache of chunks (the only user of foyer).
//! - [`chunks`]: chunk arithmetic and the per-chunk digest.
//! - [`store`]: the persistent store trait, its backends, its metrics and circuit breaker.
//! - [`replication`]: the durable spool and the upload workers.
//! - [`tombstones`]: the durable record of deletions.
//! - [`warm`]: warm-up jobs: lists of blobs prefetched from the store into the cache.
//! - [`metrics`]: the registry every module registers its own metrics in.
//! - [`config`], [`app`]: configuration, start-up and shutdown; [`logwriter`]: the log's batched output.
//! - `alloc`: the global allocator (glibc's, reusing large freed blocks).
//! - [`client`]: the `put`/`get`/`stat`/`rm`/`warm` subcommands, a client of the HTTP API.
//!
//! Dependencies point one way: `app` and `config` at everything; `http` at
//! `blobs`, `cluster` and `warm`; `warm` at `blobs`; `blobs` at `cache`, `cluster`, `replication`,
//! `store`, `tombstones`; `cluster` at nothing but `key` and `metrics`;
//! `replication` at `store`; every module at `key`, `chunks`, `metrics`;
//! `client` only at `key` (it speaks HTTP to a node).

mod alloc;
pub mod app;
pub mod auth;
pub mod blobs;
pub mod cache;
pub mod chunks;
pub mod client;
pub mod cluster;
pub mod config;
mod fsutil;
pub mod http;
pub mod key;
pub mod logwriter;
pub mod metrics;
mod reload;
pub mod replication;
pub mod store;
pub mod tls;
pub mod tombstones;
mod units;
pub mod warm;

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
