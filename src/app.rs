//! Builds the service from its configuration, runs it, and owns the shutdown order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blobs::{BlobService, catch_up};
use crate::cache::BlobCache;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::http::{self, AppState, HttpMetrics, Modules};
use crate::replication::{Backoff, Replicator, Spool};
use crate::store::{self, Breaker, Metered, Store};
use crate::tombstones::Tombstones;
use crate::warm::Warmer;

/// A built node: every dependency opened, workers not yet started.
pub struct App {
    config: Config,
    state: AppState,
    /// Where the first listing of the store's new tombstones starts (a cluster node).
    tombstones_since: Option<std::time::SystemTime>,
    tls: Option<Arc<crate::tls::ServerTls>>,
}

impl App {
    /// Open the store, the cache and the spool, so a bad configuration fails
    /// here rather than at the first request; queue what the spool still holds.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let registry = prometheus::Registry::new();
        // Certificates first: a bad file stops the start before anything is opened.
        let tls = crate::tls::ServerTls::open(&config.tls, &registry)?;
        let data = &config.data_dir;
        std::fs::create_dir_all(data).with_context(|| format!("--data-dir {}", data.display()))?;
        let raw_store = store::open(&config.store, data)
            .await
            .with_context(|| format!("--store {}", config.store.store))?;
        let metered = Arc::new(Metered::new(raw_store, &registry));
        let breaker = Breaker::new(metered.clone(), config.store.s3_timeout, &registry);
        let chunk_size = config.cache.chunk_size.as_u64();
        let spool_dir = data.join("spool");
        let (spool, pending) = Spool::open(&spool_dir, chunk_size)
            .await
            .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
        let tombstones_path = data.join("tombstones.log");
        let retention = config.tombstone_retention;
        let tombstones = tokio::task::spawn_blocking(move || Tombstones::open(&tombstones_path, retention))
            .await
            .expect("tombstone task")
            .with_context(|| format!("opening the tombstone log in {}", data.display()))?;
        // Before the cache opens, so a node that will not start leaves it untouched.
        let cache_dir = data.join("cache");
        let had_cache = std::fs::read_dir(&cache_dir).is_ok_and(|mut d| d.next().is_some());
        // A node of a cluster always has something to serve: what its peers hold.
        let clustered = config.cluster.peers != crate::cluster::Peers::None;
        let has_data = had_cache || !pending.is_empty() || clustered;
        if let Err(e) = check_store_at_start(&*metered, &config.store.store, has_data).await? {
            // Serving what this node has, with the store known to be failing from the start.
            breaker.trip(&e);
        }
        let cache = BlobCache::open(&cache_dir, &config.cache, &registry)
            .await
            .context("opening the cache")?;
        let spool = Arc::new(spool);
        let store: Arc<dyn Store> = breaker.clone();
        let replicator = Replicator::new(
            spool.clone(),
            store.clone(),
            breaker.health(),
            &config.replication,
            Backoff::default(),
            &registry,
        );
        if !pending.is_empty() {
            let bytes: u64 = pending.iter().map(|p| p.size).sum();
            tracing::info!(blobs = pending.len(), bytes, "replaying blobs still pending upload");
        }
        for p in pending {
            replicator.enqueue(p.key, p.size, p.modified);
        }
        let queued = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.queued_deletes())
                .await
                .expect("spool task")
                .context("reading the queued deletes")?
        };
        if !queued.is_empty() {
            tracing::info!(deletes = queued.len(), "replaying deletes still queued for the store");
        }
        for (key, at) in queued {
            replicator.enqueue_delete(key, at);
        }
        let cluster = Cluster::new(&config.cluster, &config.tls, &registry).context("setting up the cluster")?;
        if cluster.is_some() {
            replicator.record_tombstones_in_store();
        }
        let blobs = Arc::new(BlobService::new(
            cache.clone(),
            store.clone(),
            spool,
            replicator.clone(),
            Arc::new(tombstones),
            cluster.clone(),
            config.blobs.clone(),
            &registry,
        ));
        // A node that was away catches up on the deletions it missed before it serves.
        let mut tombstones_since = None;
        if let Some(cluster) = &cluster {
            cluster.join().await;
            tombstones_since = catch_up::catch_up(&blobs, &*store, cluster, config.tombstone_retention).await;
        }
        let warm = Arc::new(Warmer::new(blobs.clone(), &registry));
        let auth = Arc::new(crate::auth::Auth::open(&config.auth)?);
        if config.auth.tokens.is_some() {
            tracing::info!(tokens = auth.len(), anonymous = ?config.auth.anonymous, "tokens loaded");
        }
        let state = AppState::new(Modules {
            blobs,
            auth,
            cache,
            replicator,
            store: breaker,
            store_stats: metered,
            started: Instant::now(),
            shutting_down: CancellationToken::new(),
            readiness: Arc::new(crate::http::admin::Readiness::new(
                Duration::from_secs(1),
                Duration::from_secs(2),
            )),
            http_metrics: HttpMetrics::new(&registry),
            http: config.http.clone(),
            warm,
            registry,
        });
        Ok(App {
            config,
            state,
            tombstones_since,
            tls,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve on `listener` until `shutdown` resolves, then stop in order: stop
    /// accepting, drain requests (bounded by the grace period), let uploads
    /// drain within the same grace (not at all while the store is failing:
    /// pending blobs are safe in the spool), stop the workers, close the cache.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            config,
            state,
            tombstones_since,
            tls,
        } = self;
        let (cache, replicator) = (state.cache.clone(), state.replicator.clone());
        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        for _ in 0..config.replication.upload_concurrency {
            workers.spawn(replicator.clone().run_worker(stop_workers.clone()));
        }
        workers.spawn(replicator.clone().run_delete_worker(stop_workers.clone()));
        workers.spawn(crate::reload::watch(state.auth.clone(), stop_workers.clone()));
        if let Some(tls) = &tls {
            workers.spawn(crate::reload::watch(tls.clone(), stop_workers.clone()));
        }
        if let Some(cluster) = state.blobs.cluster() {
            workers.spawn(crate::reload::watch(cluster.clone(), stop_workers.clone()));
            workers.spawn(cluster.clone().run(stop_workers.clone()));
            workers.spawn(catch_up::run(
                state.blobs.clone(),
                state.store.clone(),
                tombstones_since,
                config.cluster.tombstone_sync,
                config.tombstone_retention,
                stop_workers.clone(),
            ));
        }
        workers.spawn(recover_store(state.store.clone(), stop_workers.clone()));
        workers.close();
        let warm = state.warm.clone();

        let shutting_down = state.shutting_down.clone();
        let grace = config.shutdown_grace;
        tracing::info!(addr = %listener.local_addr()?, store = %config.store.store, write_mode = ?config.blobs.write_mode, "blobcache listening");
        let registry = state.registry.clone();
        let app = http::service(state);
        let signal = shutting_down.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        let server = http::server::serve(
            listener,
            app,
            &config.http.limits,
            tls,
            &registry,
            shutting_down.clone(),
        );
        let server = tokio::spawn(server);
        shutting_down.cancelled().await;
        // Warm-up jobs are background work: they stop at once, not after the requests.
        warm.stop().await;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!("shutting down: draining requests");
        match tokio::time::timeout_at(deadline, server).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => tracing::warn!("requests still running at the end of the grace period; closing them"),
        }
        if !replicator.drain(deadline).await {
            let left = replicator.snapshot();
            tracing::warn!(
                blobs = left.pending_blobs,
                bytes = left.pending_bytes,
                "uploads left pending for the next start"
            );
        }
        stop_workers.cancel();
        workers.wait().await;
        cache.close().await.context("closing the cache")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Clean up what an earlier run left unfinished in the store (multipart
/// uploads a crash cut short), as soon as the store answers.
async fn recover_store(store: Arc<Breaker>, stop: CancellationToken) {
    let mut health = store.health();
    loop {
        match store.recover().await {
            Ok(()) => return,
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %crate::error_chain(&e), "store clean-up postponed");
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "could not clean up what an earlier run left in the store");
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = health.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// One request to the store before serving. A store that refuses us, or a
/// bucket that does not exist, is a configuration error: stop with one line
/// that names it. A store that cannot be reached stops a node that has nothing
/// to serve (on a first start that is most often a wrong endpoint); a node with
/// a cache or pending uploads from an earlier run, or a node of a cluster
/// (its peers may hold what the store does not), starts anyway, serves what it
/// can and reports not ready on /readyz until the store answers.
/// Returns the error of a store that cannot be reached, when the node starts anyway.
async fn check_store_at_start(
    store: &dyn Store,
    url: &str,
    has_data: bool,
) -> anyhow::Result<Result<(), store::StoreError>> {
    let Err(e) = store.probe().await else {
        return Ok(Ok(()));
    };
    let reason = crate::error_chain(&e);
    if e.is_retryable() && has_data {
        tracing::warn!(
            store = url, error = %reason,
            "the store cannot be reached; serving this node's cache and spool until it can (not ready meanwhile)"
        );
        return Ok(Err(e));
    }
    match e.kind() {
        store::StoreErrorKind::Unavailable => {
            anyhow::bail!("the store {url} cannot be reached, and this node has nothing cached to serve: {reason}")
        }
        store::StoreErrorKind::Denied => {
            anyhow::bail!("the store {url} refused access (check the credentials): {reason}")
        }
        _ => anyhow::bail!("the store {url} is not usable: {reason}"),
    }
}

/// Build and serve: what `main` calls.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    App::build(config).await?.serve(listener, shutdown).await
}
