//! The blob service's counters: registered once, in Prometheus, and read back for /stats.

use prometheus::{IntCounter, Registry};

use crate::metrics::counter;

/// What the blob service counts. Each is a Prometheus counter (one relaxed
/// atomic add on the hot path).
#[derive(Debug, Clone)]
pub struct BlobStats {
    pub hits: IntCounter,
    pub spool_hits: IntCounter,
    pub peer_hits: IntCounter,
    pub misses: IntCounter,
    pub not_found: IntCounter,
    pub fills: IntCounter,
    pub coalesced_waiters: IntCounter,
    pub integrity_failures: IntCounter,
    pub invalidations: IntCounter,
    pub puts_created: IntCounter,
    pub puts_existing: IntCounter,
    pub puts_rejected: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
}

impl BlobStats {
    pub fn new(registry: &Registry) -> Self {
        let c = |name, help| counter(registry, name, help);
        BlobStats {
            hits: c("blobcache_cache_hits_total", "GETs/HEADs served from the cache"),
            spool_hits: c("blobcache_spool_hits_total", "GETs/HEADs served from the pending spool"),
            peer_hits: c(
                "blobcache_peer_hits_total",
                "GETs/HEADs served from a peer (the blob's owner, or a node holding it pending)",
            ),
            misses: c("blobcache_cache_misses_total", "GETs/HEADs read through from the store"),
            not_found: c("blobcache_not_found_total", "lookups of blobs found nowhere"),
            fills: c("blobcache_fills_total", "shared read-through fills started"),
            coalesced_waiters: c(
                "blobcache_coalesced_waiters_total",
                "cold reads that joined a fill already under way",
            ),
            integrity_failures: c(
                "blobcache_integrity_failures_total",
                "reads whose bytes did not match the blob's key or recorded digests (never served as good)",
            ),
            invalidations: c(
                "blobcache_invalidations_total",
                "blobs removed from this node by a DELETE here, a peer's DELETE, a tombstone or an S3 event",
            ),
            puts_created: c("blobcache_puts_created_total", "blobs stored by PUT"),
            puts_existing: c(
                "blobcache_puts_existing_total",
                "PUTs of blobs already here (nothing written)",
            ),
            puts_rejected: c(
                "blobcache_puts_rejected_total",
                "PUTs refused (bad digest, too large, spool full, ...)",
            ),
            bytes_in: c("blobcache_bytes_in_total", "upload body bytes received"),
            bytes_out: c("blobcache_bytes_out_total", "blob body bytes sent"),
        }
    }

    /// The counters as JSON, for /stats.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "hits": self.hits.get(),
            "spool_hits": self.spool_hits.get(),
            "peer_hits": self.peer_hits.get(),
            "misses": self.misses.get(),
            "not_found": self.not_found.get(),
            "invalidations": self.invalidations.get(),
            "fills": self.fills.get(),
            "coalesced_waiters": self.coalesced_waiters.get(),
            "integrity_failures": self.integrity_failures.get(),
            "puts_created": self.puts_created.get(),
            "puts_existing": self.puts_existing.get(),
            "puts_rejected": self.puts_rejected.get(),
            "bytes_in": self.bytes_in.get(),
            "bytes_out": self.bytes_out.get(),
        })
    }
}
