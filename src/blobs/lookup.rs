//! The one lookup: where a blob lives, asked the same way by GET, HEAD, PUT's
//! "is it here already?", DELETE and status. The chain of origins is this
//! node's cache, its pending spool, the blob's owner (in a cluster), the
//! store, and last the other peers (a blob acknowledged on a node that could
//! not reach its owner is pending there, not yet in the store). Store lookups
//! of one key are coalesced into one request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

use super::{BlobError, Parts};
use crate::cache::BlobMeta;
use crate::cluster::{Hop, PeerBlob};
use crate::key::BlobKey;
use crate::replication::SpoolBlob;
use crate::store::StoreError;

type SharedHead = Shared<BoxFuture<'static, Result<u64, Arc<StoreError>>>>;

/// How far a lookup goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// This node only (cache and spool): no request leaves the node.
    Local,
    /// This node, then the store; never a peer.
    LocalAndStore,
    /// As the blob's owner (a request a peer forwarded): this node, the store,
    /// then the other peers' caches and spools; never forwarded again.
    AsOwner,
    /// Everything: this node, the owner, the store, the other peers.
    Everywhere,
}

/// Where a read is served from (`X-Cache`: `hit` for the first two, `peer`, `miss` for the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Spool,
    Peer,
    Store,
}

/// Where the lookup found a blob, with what reading it needs.
#[derive(Debug)]
pub enum Location {
    /// Complete and verified in this node's cache.
    Cache(BlobMeta),
    /// Acknowledged here and not yet in the store: its file, opened, with its digests.
    Spool(Arc<SpoolBlob>),
    /// On a peer: its owner, or a node that holds it pending.
    Peer(PeerBlob),
    /// Only in the store.
    Store,
}

/// A blob found for reading.
#[derive(Debug)]
pub struct Found {
    pub key: BlobKey,
    pub size: u64,
    pub location: Location,
}

impl Found {
    pub fn source(&self) -> Source {
        match self.location {
            Location::Cache(_) => Source::Cache,
            Location::Spool(_) => Source::Spool,
            Location::Peer(_) => Source::Peer,
            Location::Store => Source::Store,
        }
    }
}

/// The lookup chain. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Lookup {
    parts: Arc<Parts>,
    /// Store lookups under way, shared by concurrent requests for one key.
    heads: Arc<Mutex<HashMap<BlobKey, SharedHead>>>,
}

impl Lookup {
    pub(super) fn new(parts: Arc<Parts>) -> Self {
        Lookup {
            parts,
            heads: Arc::default(),
        }
    }

    /// Find a blob along the chain, as far as `reach` allows.
    pub(super) async fn find(&self, key: &BlobKey, reach: Reach) -> Result<Found, BlobError> {
        self.find_then(key, reach, None).await
    }

    /// `find`, calling `at_store` just before the store is asked.
    pub(super) async fn find_then(
        &self,
        key: &BlobKey,
        reach: Reach,
        at_store: Option<&(dyn Fn(&BlobKey) + Send + Sync)>,
    ) -> Result<Found, BlobError> {
        let found = |size, location| {
            Ok(Found {
                key: *key,
                size,
                location,
            })
        };
        if let Some(meta) = self.cached(key).await {
            return found(meta.size, Location::Cache(meta));
        }
        match self.parts.replicator.open_pending(key).await {
            Ok(Some(blob)) => return found(blob.size, Location::Spool(Arc::new(blob))),
            Ok(None) => {}
            Err(e) => return Err(BlobError::Spool(e)),
        }
        if reach == Reach::Local {
            return Err(BlobError::NotFound);
        }
        let cluster = self.parts.cluster.as_ref().filter(|_| reach != Reach::LocalAndStore);
        let owner = cluster.and_then(|c| c.owner(key));
        if reach == Reach::Everywhere
            && let (Some(cluster), Some(owner)) = (cluster, &owner)
        {
            // The owner looks everywhere else itself (store, then its peers).
            match cluster.lookup(owner, key, Hop::Owner).await {
                Ok(Some(blob)) => return found(blob.size, Location::Peer(blob)),
                Ok(None) => return Err(BlobError::NotFound),
                Err(e) => tracing::debug!(%key, error = %e, "the owner could not be asked; reading on without it"),
            }
        }
        if let Some(at_store) = at_store {
            at_store(key);
        }
        let stored = self.store_size(key).await;
        if let (Err(e), Some(cluster)) = (&stored, cluster)
            && (e.is_not_found() || e.is_retryable())
        {
            // Not in the store (or the store is down): a peer may hold it pending.
            let skip = if reach == Reach::Everywhere {
                owner.as_ref()
            } else {
                None
            };
            if let Some(blob) = cluster.find_holder(key, skip).await {
                return found(blob.size, Location::Peer(blob));
            }
        }
        match stored {
            Ok(size) => found(size, Location::Store),
            Err(e) if e.is_not_found() => Err(BlobError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The cache's metadata of a complete blob, unless a DELETE since made it
    /// stale (a deletion the cache's disk tier did not keep across a restart).
    pub(super) async fn cached(&self, key: &BlobKey) -> Option<BlobMeta> {
        let meta = self.parts.cache.meta(key).await?;
        match self.parts.tombstones.deleted_at(key) {
            Some(deleted) if deleted >= meta.verified_at => {
                self.parts.cache.remove_blob(key, meta.size);
                None
            }
            _ => Some(meta),
        }
    }

    /// The store's size of a blob; concurrent lookups of one key share one request.
    /// The request runs on a task of its own, which also retires it: a lookup
    /// whose callers all left still finishes, so no later caller can pick up a
    /// stale or half-done one.
    pub(super) async fn store_size(&self, key: &BlobKey) -> Result<u64, StoreError> {
        let lookup = {
            let mut heads = self.heads.lock().expect("heads lock");
            heads
                .entry(*key)
                .or_insert_with(|| {
                    let store = self.parts.store.clone();
                    let key = *key;
                    let lookup = async move { store.head(&key).await.map_err(Arc::new) }.boxed().shared();
                    let (runner, heads) = (lookup.clone(), self.heads.clone());
                    tokio::spawn(async move {
                        let _ = runner.clone().await;
                        let mut heads = heads.lock().expect("heads lock");
                        if heads.get(&key).is_some_and(|l| l.ptr_eq(&runner)) {
                            heads.remove(&key);
                        }
                    });
                    lookup
                })
                .clone()
        };
        lookup.await.map_err(|e| e.flattened())
    }
}
