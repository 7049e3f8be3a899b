//! Builds the service from its configuration, runs it, and owns the shutdown order.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::blobs::{BlobService, ServiceConfig};
use crate::cache::{BlobCache, CacheConfig};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::replication::{Backoff, Replicator, Spool};
use crate::store::{self, MeteredStore};

/// A built node: every dependency opened, workers not yet started.
pub struct App {
    config: Config,
    state: AppState,
    cache: BlobCache,
    replicator: Arc<Replicator>,
}

impl App {
    /// Open the store, the cache and the spool, so a bad configuration fails
    /// here rather than at the first request; queue what the spool still holds.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let raw_store = store::open(&config.store, &config.store_options)
            .await
            .with_context(|| format!("--store {}", config.store))?;
        let metrics = crate::metrics::Metrics::new();
        let store = Arc::new(MeteredStore::new(raw_store, Some(metrics.store_latency())));
        let store_stats = store.stats().clone();
        let spool_dir = config.data_dir.join("spool");
        let (spool, pending) = Spool::open(&spool_dir)
            .await
            .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
        // Before the cache opens, so a node that will not start leaves it untouched.
        let cache_dir = config.data_dir.join("cache");
        let had_cache = std::fs::read_dir(&cache_dir).is_ok_and(|mut d| d.next().is_some());
        check_store_at_start(&*store, &config.store, had_cache || !pending.is_empty()).await?;
        let cache = BlobCache::open(&CacheConfig {
            dir: cache_dir,
            memory_bytes: config.memory_cache.as_u64(),
            disk_bytes: config.disk_cache.as_u64(),
            chunk_size: config.chunk_size.as_u64(),
            metrics: Some(metrics.registry().clone()),
        })
        .await
        .context("opening the cache")?;
        let replicator = Arc::new(Replicator::new(Arc::new(spool), store.clone(), Backoff::default()));
        if !pending.is_empty() {
            let bytes: u64 = pending.iter().map(|p| p.size).sum();
            tracing::info!(blobs = pending.len(), bytes, "replaying blobs still pending upload");
        }
        for p in pending {
            replicator.enqueue(p.key, p.size, p.modified);
        }
        let blobs = Arc::new(BlobService::new(
            cache.clone(),
            store,
            replicator.clone(),
            ServiceConfig {
                max_blob_size: config.max_blob_size.as_u64(),
                write_mode: config.write_mode,
                spool_size: config.spool_size.as_u64(),
            },
        ));
        let state = AppState {
            blobs,
            store_stats,
            started: Instant::now(),
            shutting_down: CancellationToken::new(),
            readiness: Arc::new(crate::http::admin::Readiness::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(2),
            )),
            metrics,
        };
        Ok(App {
            config,
            state,
            cache,
            replicator,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve on `listener` until `shutdown` resolves, then stop in order: stop
    /// accepting, drain requests (bounded by the grace period), let uploads
    /// drain within the same grace, stop the workers, close the cache.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            config,
            state,
            cache,
            replicator,
        } = self;
        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        for _ in 0..config.upload_concurrency {
            workers.spawn(replicator.clone().run_worker(stop_workers.clone()));
        }
        workers.close();

        let shutting_down = state.shutting_down.clone();
        let grace = config.shutdown_grace;
        tracing::info!(addr = %listener.local_addr()?, store = %config.store, write_mode = ?config.write_mode, "blobcache listening");
        let app = http::router(state);
        let signal = shutting_down.clone();
        tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        });
        // Bodies stream in many writes: no Nagle delay between them (and none on the first bytes).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        });
        let server = axum::serve(listener, app).with_graceful_shutdown(shutting_down.clone().cancelled_owned());
        let server = tokio::spawn(async move { server.await });
        shutting_down.cancelled().await;
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!("shutting down: draining requests");
        match tokio::time::timeout_at(deadline, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while draining"),
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

/// One request to the store before serving. A store that refuses us, or a
/// bucket that does not exist, is a configuration error: stop with one line
/// that names it. A store that cannot be reached stops a node that has nothing
/// to serve (on a first start that is most often a wrong endpoint); a node with
/// a cache or pending uploads from an earlier run starts anyway, serves what it
/// has and reports not ready on /readyz until the store answers.
async fn check_store_at_start(store: &dyn store::Store, url: &str, has_data: bool) -> anyhow::Result<()> {
    let Err(e) = store.probe().await else {
        return Ok(());
    };
    let reason = crate::error_chain(&e);
    if e.is_retryable() && has_data {
        tracing::warn!(
            store = url, error = %reason,
            "the store cannot be reached; serving this node's cache and spool until it can (not ready meanwhile)"
        );
        return Ok(());
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
