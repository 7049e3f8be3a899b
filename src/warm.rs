//! Warm-up jobs: lists of blobs prefetched from the store into this node's cache, in the background.
//!
//! A job takes its keys in list order through the lookup a GET runs
//! ([`BlobService::open`]). A blob this node already holds (cache or pending
//! spool) is done at no cost. A blob found only in the store is read whole
//! through [`BlobService::read`], which joins or starts the same shared,
//! verified fill a GET runs, and the bytes are dropped as they arrive: the
//! fill is what puts them in the cache, so nothing is held beyond its few
//! chunks. A DELETE revokes a fill under way, so warming cannot bring a
//! deleted blob back.
//!
//! At most [`CONCURRENCY`] blobs are warmed at once on a node, all jobs
//! together, so warming takes a small, fixed share of the store and of the
//! node from client traffic, never more. Jobs live in memory only: the last
//! [`KEEP_JOBS`] are kept for their callers to follow, and none survives a
//! restart. Lookups and reads of warming count in the blob service's own
//! counters (hits, misses, bytes out) like any read.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use prometheus::{IntCounter, IntCounterVec, Registry};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::blobs::{BlobError, BlobService, Location, Reach};
use crate::key::BlobKey;
use crate::metrics;

/// The most distinct keys one job takes.
pub const MAX_KEYS: usize = 10_000;
/// The most blobs warmed at once on a node, all jobs together.
pub const CONCURRENCY: usize = 2;
/// The most jobs kept (finished ones are forgotten oldest first).
pub const KEEP_JOBS: usize = 100;

/// Why a job was not started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WarmError {
    #[error("a warm-up job takes at most {limit} distinct keys, this list has {got}")]
    TooManyKeys { limit: usize, got: usize },
    #[error("{limit} warm-up jobs are still running; retry once one has finished")]
    Busy { limit: usize },
}

/// Whether a job is still working through its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Finished,
}

/// How far a job got: the answer of `GET /warm/{id}`.
/// `done + failed + not_found + remaining == total`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    pub total: u64,
    /// Blobs this node now holds: found in its cache or spool, or read into its cache.
    pub done: u64,
    pub failed: u64,
    pub not_found: u64,
    pub remaining: u64,
    pub failed_keys: Vec<BlobKey>,
    pub not_found_keys: Vec<BlobKey>,
}

/// What warming one blob came to.
#[derive(Debug)]
enum Outcome {
    /// This node had it already (cache or spool): nothing read.
    Held,
    /// Read whole from the store, through the fill that caches it.
    Fetched {
        bytes: u64,
    },
    NotFound,
    Failed(BlobError),
}

/// One job's progress; the keys themselves live in its task.
#[derive(Debug)]
struct Job {
    id: String,
    total: u64,
    progress: Mutex<Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    done: u64,
    failed: Vec<BlobKey>,
    not_found: Vec<BlobKey>,
    finished: bool,
}

impl Job {
    fn record(&self, key: BlobKey, outcome: &Outcome) {
        let mut p = self.progress.lock().expect("job lock");
        match outcome {
            Outcome::Held | Outcome::Fetched { .. } => p.done += 1,
            Outcome::NotFound => p.not_found.push(key),
            Outcome::Failed(_) => p.failed.push(key),
        }
    }

    fn finish(&self) {
        self.progress.lock().expect("job lock").finished = true;
    }

    fn is_finished(&self) -> bool {
        self.progress.lock().expect("job lock").finished
    }

    fn status(&self) -> JobStatus {
        let p = self.progress.lock().expect("job lock");
        let (failed, not_found) = (p.failed.len() as u64, p.not_found.len() as u64);
        JobStatus {
            id: self.id.clone(),
            state: if p.finished {
                JobState::Finished
            } else {
                JobState::Running
            },
            total: self.total,
            done: p.done,
            failed,
            not_found,
            remaining: self.total - p.done - failed - not_found,
            failed_keys: p.failed.clone(),
            not_found_keys: p.not_found.clone(),
        }
    }
}

/// The jobs kept, oldest first.
#[derive(Debug, Default)]
struct Jobs {
    list: VecDeque<Arc<Job>>,
}

impl Jobs {
    /// Make room for a job (forgetting the oldest finished one if the list is
    /// full) and add it under a new random id.
    fn add(&mut self, total: u64) -> Result<Arc<Job>, WarmError> {
        if self.list.len() >= KEEP_JOBS {
            let oldest_finished = self
                .list
                .iter()
                .position(|j| j.is_finished())
                .ok_or(WarmError::Busy { limit: KEEP_JOBS })?;
            self.list.remove(oldest_finished);
        }
        let id = loop {
            let id = format!("{:016x}", rand::random::<u64>());
            if self.get(&id).is_none() {
                break id;
            }
        };
        let job = Arc::new(Job {
            id,
            total,
            progress: Mutex::default(),
        });
        self.list.push_back(job.clone());
        Ok(job)
    }

    fn get(&self, id: &str) -> Option<&Arc<Job>> {
        self.list.iter().find(|j| j.id == id)
    }

    fn running(&self) -> usize {
        self.list.iter().filter(|j| !j.is_finished()).count()
    }
}

/// The warm-up module's counters.
#[derive(Debug, Clone)]
struct WarmMetrics {
    blobs: IntCounterVec,
    bytes: IntCounter,
    jobs: IntCounter,
}

impl WarmMetrics {
    fn new(registry: &Registry, jobs: Arc<Mutex<Jobs>>) -> Self {
        metrics::computed_gauge(
            registry,
            "blobcache_warm_jobs_running",
            "warm-up jobs still working through their lists",
            move || jobs.lock().expect("jobs lock").running() as f64,
        );
        WarmMetrics {
            blobs: metrics::counter_vec(
                registry,
                "blobcache_warm_blobs_total",
                "blobs taken by warm-up jobs, by result: cached (held here already), fetched (read from the store into the cache), not_found, failed",
                &["result"],
            ),
            bytes: metrics::counter(
                registry,
                "blobcache_warm_read_bytes_total",
                "bytes warm-up jobs read from the store into the cache",
            ),
            jobs: metrics::counter(registry, "blobcache_warm_jobs_total", "warm-up jobs started"),
        }
    }

    fn count(&self, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Held => "cached",
            Outcome::Fetched { bytes } => {
                self.bytes.inc_by(*bytes);
                "fetched"
            }
            Outcome::NotFound => "not_found",
            Outcome::Failed(_) => "failed",
        };
        self.blobs.with_label_values(&[result]).inc();
    }
}

/// Starts warm-up jobs, runs them in the background, and answers how far they got.
#[derive(Debug)]
pub struct Warmer {
    blobs: Arc<BlobService>,
    /// Shared by every job: at most `CONCURRENCY` blobs at once on the node.
    permits: Arc<Semaphore>,
    jobs: Arc<Mutex<Jobs>>,
    metrics: WarmMetrics,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Warmer {
    pub fn new(blobs: Arc<BlobService>, registry: &Registry) -> Self {
        let jobs = Arc::new(Mutex::new(Jobs::default()));
        Warmer {
            blobs,
            permits: Arc::new(Semaphore::new(CONCURRENCY)),
            metrics: WarmMetrics::new(registry, jobs.clone()),
            jobs,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Start a job warming `keys` (repeats dropped, first one kept) and give
    /// its first status. A job of no keys is finished at once.
    pub fn start(&self, keys: Vec<BlobKey>) -> Result<JobStatus, WarmError> {
        let keys = distinct(keys)?;
        let job = self.jobs.lock().expect("jobs lock").add(keys.len() as u64)?;
        self.metrics.jobs.inc();
        tracing::info!(job = %job.id, total = keys.len(), "warm-up job started");
        if keys.is_empty() {
            job.finish();
        } else {
            let span = tracing::info_span!("warm", job = %job.id);
            let run = run_job(
                self.blobs.clone(),
                self.permits.clone(),
                self.metrics.clone(),
                self.stop.clone(),
                job.clone(),
                keys,
            );
            self.tasks.spawn(run.instrument(span));
        }
        Ok(job.status())
    }

    /// How far a job got; `None` for an id this node does not know (never
    /// started here, forgotten, or from before a restart).
    pub fn status(&self, id: &str) -> Option<JobStatus> {
        self.jobs.lock().expect("jobs lock").get(id).map(|j| j.status())
    }

    /// Stop every job at its current blob (a fill under way goes on for its
    /// other readers, as when a client leaves) and wait for the jobs' tasks.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The keys without repeats, in list order, if there are not too many.
fn distinct(keys: Vec<BlobKey>) -> Result<Vec<BlobKey>, WarmError> {
    let mut seen = HashSet::with_capacity(keys.len().min(MAX_KEYS + 1));
    let keys: Vec<BlobKey> = keys.into_iter().filter(|k| seen.insert(*k)).collect();
    if keys.len() > MAX_KEYS {
        return Err(WarmError::TooManyKeys {
            limit: MAX_KEYS,
            got: keys.len(),
        });
    }
    Ok(keys)
}

/// Work through a job's keys in order, at most `CONCURRENCY` at once (and
/// only while a node-wide permit is free), until done or the node stops.
async fn run_job(
    blobs: Arc<BlobService>,
    permits: Arc<Semaphore>,
    metrics: WarmMetrics,
    stop: CancellationToken,
    job: Arc<Job>,
    keys: Vec<BlobKey>,
) {
    let started = Instant::now();
    let mut first_failure = None;
    let results = futures::stream::iter(keys)
        .map(|key| {
            let (blobs, permits) = (blobs.clone(), permits.clone());
            async move {
                // The semaphore is fair, and the keys ask for it in order.
                let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
                (key, warm_one(&blobs, key).await)
            }
        })
        .buffered(CONCURRENCY);
    let mut results = std::pin::pin!(results);
    loop {
        let (key, outcome) = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                tracing::info!("warm-up job stopped: the node is shutting down");
                return;
            }
            next = results.next() => match next {
                Some(result) => result,
                None => break,
            },
        };
        metrics.count(&outcome);
        job.record(key, &outcome);
        if let Outcome::Failed(e) = &outcome {
            let error = crate::error_chain(e);
            tracing::debug!(%key, %error, "could not warm a blob");
            if first_failure.is_none() {
                first_failure = Some((key, error));
            }
        }
    }
    job.finish();
    let s = job.status();
    let seconds = started.elapsed().as_secs_f64();
    match first_failure {
        None => tracing::info!(
            total = s.total,
            done = s.done,
            not_found = s.not_found,
            seconds,
            "warm-up job finished"
        ),
        Some((key, error)) => tracing::warn!(
            total = s.total, done = s.done, not_found = s.not_found, failed = s.failed, seconds,
            first_failed = %key, %error,
            "warm-up job finished; some blobs could not be warmed"
        ),
    }
}

/// Warm one blob where reads will look for it: nothing to do if this node (or,
/// in a cluster, its owner) holds it; else read it whole through the fill,
/// here or at the owner, dropping the bytes as they come.
async fn warm_one(blobs: &BlobService, key: BlobKey) -> Outcome {
    let failed = |e: BlobError| {
        if is_not_found(&e) {
            Outcome::NotFound
        } else {
            Outcome::Failed(e)
        }
    };
    let found = match blobs.open(&key, Reach::Everywhere).await {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    match &found.location {
        Location::Store => {}
        Location::Peer(peer) if !peer.held => {}
        _ => return Outcome::Held,
    }
    let size = found.size;
    let mut body = match blobs.read(found, 0..size).await {
        Ok(body) => body,
        Err(e) => return failed(e),
    };
    while let Some(part) = body.next().await {
        if let Err(e) = part {
            return failed(e);
        }
    }
    Outcome::Fetched { bytes: size }
}

/// Not found anywhere, or gone from the store between the lookup and the read.
fn is_not_found(e: &BlobError) -> bool {
    match e.root() {
        BlobError::NotFound => true,
        BlobError::Store(s) => s.is_not_found(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> BlobKey {
        BlobKey::of(&n.to_le_bytes())
    }

    #[test]
    fn repeats_are_dropped_in_order_and_the_size_is_bounded() {
        let keys = distinct(vec![key(1), key(2), key(1), key(3), key(2)]).unwrap();
        assert_eq!(keys, [key(1), key(2), key(3)]);
        let at_limit: Vec<BlobKey> = (0..MAX_KEYS as u32).map(key).collect();
        let mut with_repeats = at_limit.clone();
        with_repeats.extend_from_slice(&at_limit[..10]);
        assert_eq!(distinct(with_repeats).unwrap().len(), MAX_KEYS, "repeats do not count");
        let mut over = at_limit;
        over.push(key(MAX_KEYS as u32));
        assert_eq!(
            distinct(over),
            Err(WarmError::TooManyKeys {
                limit: MAX_KEYS,
                got: MAX_KEYS + 1
            })
        );
    }

    #[test]
    fn progress_adds_up() {
        let mut jobs = Jobs::default();
        let job = jobs.add(4).unwrap();
        assert_eq!(job.id.len(), 16);
        assert!(job.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        job.record(key(1), &Outcome::Held);
        job.record(key(2), &Outcome::NotFound);
        job.record(key(3), &Outcome::Failed(BlobError::FillAborted));
        let s = job.status();
        assert_eq!(
            (s.state, s.done, s.not_found, s.failed, s.remaining),
            (JobState::Running, 1, 1, 1, 1)
        );
        assert_eq!((s.not_found_keys, s.failed_keys), (vec![key(2)], vec![key(3)]));
        job.record(key(4), &Outcome::Fetched { bytes: 10 });
        job.finish();
        let s = job.status();
        assert_eq!((s.state, s.done, s.remaining), (JobState::Finished, 2, 0));
        assert_eq!(jobs.get(&job.id).unwrap().status(), s);
        assert!(jobs.get("0123456789abcdef").is_none());
    }

    #[test]
    fn finished_jobs_are_forgotten_oldest_first_and_running_ones_never() {
        let mut jobs = Jobs::default();
        let all: Vec<Arc<Job>> = (0..KEEP_JOBS).map(|_| jobs.add(1).unwrap()).collect();
        assert_eq!(jobs.add(1).unwrap_err(), WarmError::Busy { limit: KEEP_JOBS });
        assert_eq!(jobs.running(), KEEP_JOBS);
        all[7].finish();
        all[3].finish();
        let newer = jobs.add(1).unwrap();
        assert!(jobs.get(&all[3].id).is_none(), "the oldest finished job made room");
        assert!(jobs.get(&all[7].id).is_some());
        let newest = jobs.add(1).unwrap();
        assert!(jobs.get(&all[7].id).is_none());
        assert_eq!(jobs.list.len(), KEEP_JOBS);
        assert!(jobs.get(&newer.id).is_some() && jobs.get(&newest.id).is_some());
        assert!(jobs.get(&all[0].id).is_some(), "running jobs stay");
        assert_eq!(jobs.add(1).unwrap_err(), WarmError::Busy { limit: KEEP_JOBS });
    }
}
