//! Catching up on deletions. A DELETE reaches the live peers at once; a node
//! that was away (stopped, partitioned, restarting) learns of it from the
//! tombstones in the store (and, while the store is down, from its peers'
//! logs): all of them before it serves, then the new ones every
//! `--tombstone-sync`. Tombstones older than `--tombstone-retention` are
//! removed from the store by whichever node gets there first.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::BlobService;
use crate::cluster::Cluster;
use crate::store::Store;

/// Each listing reaches this far back before the previous one, for tombstones
/// written by nodes whose clocks run behind, or seen late in a listing.
const OVERLAP: Duration = Duration::from_secs(120);
/// How often expired tombstones are removed from the store.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// Read every retained tombstone (store and live peers) and apply those of
/// blobs this node holds. Returns the time the next listing may start from,
/// or `None` if the store could not be read.
pub async fn catch_up(
    blobs: &BlobService,
    store: &dyn Store,
    cluster: &Cluster,
    retention: Duration,
) -> Option<SystemTime> {
    let started = SystemTime::now();
    let since = started - retention;
    let mut applied = 0;
    let from_store = match from_store(blobs, store, since).await {
        Ok(n) => {
            applied += n;
            Some(started - OVERLAP)
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "could not read the store's tombstones at start; asking the peers");
            None
        }
    };
    for peer in cluster.live_peers() {
        match cluster.tombstones_of(&peer, since).await {
            Ok(list) => {
                let records: Vec<_> = list.iter().map(|t| (t.md5, t.at())).collect();
                applied += blobs.learn_deletions(&records, true).await;
            }
            Err(e) => tracing::debug!(error = %e, "a peer's tombstones could not be read"),
        }
    }
    tracing::info!(applied, "caught up on deletions");
    from_store
}

/// Apply the store's tombstones written at or after `since` to the blobs this node holds.
async fn from_store(
    blobs: &BlobService,
    store: &dyn Store,
    since: SystemTime,
) -> Result<usize, crate::store::StoreError> {
    let records: Vec<_> = store.tombstones(since).await?.iter().map(|t| (t.key, t.at)).collect();
    Ok(blobs.learn_deletions(&records, true).await)
}

/// Read the store's new tombstones every `interval` until `stop`; expire old ones hourly.
pub async fn run(
    blobs: Arc<BlobService>,
    store: Arc<dyn Store>,
    mut since: Option<SystemTime>,
    interval: Duration,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut last_expiry: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let started = SystemTime::now();
        let from = since.unwrap_or(started - retention);
        match from_store(&blobs, &*store, from).await {
            Ok(applied) => {
                if applied > 0 {
                    tracing::info!(applied, "deletions learned from the store's tombstones");
                }
                since = Some(started - OVERLAP);
            }
            Err(e) => tracing::debug!(error = %crate::error_chain(&e), "could not read the store's tombstones"),
        }
        if last_expiry.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
            last_expiry = Some(tokio::time::Instant::now());
            match store.expire_tombstones(started - retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired tombstones removed from the store"),
                Err(e) => tracing::debug!(error = %crate::error_chain(&e), "could not expire tombstones"),
            }
        }
    }
}
