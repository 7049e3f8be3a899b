//! A circuit breaker in front of the store: a store that is failing is noticed
//! once, and every request after that fails at once (503) instead of waiting
//! out its own timeout, until a background probe sees the store answer again.
//!
//! Only "unavailable" failures count (unreachable, 5xx, too slow); a missing
//! blob or a refusal is an answer, so it proves the store is up. The circuit
//! opens after a few such failures in a row, or after one that took most of
//! the time limit (a store that drops packets costs every request the whole
//! limit, so one is enough to know).

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use async_trait::async_trait;
use prometheus::{IntCounter, Registry};
use tokio::sync::watch;

use super::{ByteStream, Store, StoreError, StoreErrorKind, Tombstone};
use crate::key::BlobKey;
use crate::metrics;

/// Unavailable answers in a row that open the circuit.
const TRIP_AFTER: u32 = 3;
/// First and longest pause between probes while the circuit is open.
const PROBE_FIRST: Duration = Duration::from_millis(200);
const PROBE_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    failures_in_a_row: u32,
    open_since: Option<Instant>,
}

/// The store behind a circuit breaker. Shared as `Arc<Breaker>`.
#[derive(Debug)]
pub struct Breaker {
    inner: Arc<dyn Store>,
    /// Itself, for the probe task it starts when the circuit opens.
    me: Weak<Breaker>,
    /// A failure that took at least this long opens the circuit by itself.
    slow: Duration,
    state: Mutex<State>,
    healthy: watch::Sender<bool>,
    trips: IntCounter,
    fast_failures: IntCounter,
}

impl Breaker {
    /// `limit` is the longest a store request may take (a failure that took
    /// more than half of it counts as a store that does not answer).
    pub fn new(inner: Arc<dyn Store>, limit: Duration, registry: &Registry) -> Arc<Breaker> {
        let breaker = Arc::new_cyclic(|me| Breaker {
            inner,
            me: me.clone(),
            slow: limit / 2,
            state: Mutex::default(),
            healthy: watch::Sender::new(true),
            trips: metrics::counter(
                registry,
                "blobcache_store_circuit_trips_total",
                "times the store was found failing and requests to it were stopped",
            ),
            fast_failures: metrics::counter(
                registry,
                "blobcache_store_fast_failures_total",
                "store requests failed at once because the store is known to be failing",
            ),
        });
        let rx = breaker.healthy.subscribe();
        metrics::computed_gauge(
            registry,
            "blobcache_store_circuit_open",
            "1 while the store is known to be failing and requests to it fail at once",
            move || if *rx.borrow() { 0.0 } else { 1.0 },
        );
        breaker
    }

    /// Whether the store is believed to answer; changes when the circuit opens or closes.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// State for /stats.
    pub fn snapshot(&self) -> serde_json::Value {
        let state = self.state.lock().expect("breaker lock");
        serde_json::json!({
            "circuit": if state.open_since.is_some() { "open" } else { "closed" },
            "open_for_seconds": state.open_since.map(|t| t.elapsed().as_secs_f64()),
            "trips": self.trips.get(),
            "fast_failures": self.fast_failures.get(),
        })
    }

    fn admit(&self) -> Result<(), StoreError> {
        let state = self.state.lock().expect("breaker lock");
        match state.open_since {
            None => Ok(()),
            Some(since) => {
                self.fast_failures.inc();
                Err(StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!(
                        "the store has been failing for {:.1} s; not asked until it answers a probe",
                        since.elapsed().as_secs_f64()
                    ),
                ))
            }
        }
    }

    /// Open the circuit now: the store failed a check made outside the
    /// breaker (the probe at start-up). A probe closes it once the store answers.
    pub fn trip(&self, e: &StoreError) {
        let mut state = self.state.lock().expect("breaker lock");
        if state.open_since.is_none() {
            self.open(&mut state, e);
        }
    }

    fn open(&self, state: &mut State, e: &StoreError) {
        state.open_since = Some(Instant::now());
        self.trips.inc();
        self.healthy.send_replace(false);
        tracing::warn!(error = %crate::error_chain(e), "the store is failing: its requests fail at once until it answers again");
        if let Some(me) = self.me.upgrade() {
            tokio::spawn(me.probe_until_healthy());
        }
    }

    fn record<T>(&self, started: Instant, r: &Result<T, StoreError>) {
        let unavailable = matches!(r, Err(e) if e.kind() == StoreErrorKind::Unavailable);
        let mut state = self.state.lock().expect("breaker lock");
        if !unavailable {
            state.failures_in_a_row = 0;
            return;
        }
        state.failures_in_a_row += 1;
        let trip = state.failures_in_a_row >= TRIP_AFTER || started.elapsed() >= self.slow;
        if trip
            && state.open_since.is_none()
            && let Err(e) = r
        {
            self.open(&mut state, e);
        }
    }

    /// While the circuit is open: probe the store, at growing intervals, until it answers.
    async fn probe_until_healthy(self: Arc<Self>) {
        let mut pause = PROBE_FIRST;
        loop {
            tokio::time::sleep(pause).await;
            match self.inner.probe().await {
                Ok(()) => break,
                // Any answer but "unavailable" shows the store is reachable again.
                Err(e) if e.kind() != StoreErrorKind::Unavailable => break,
                Err(e) => tracing::debug!(error = %crate::error_chain(&e), "store probe failed"),
            }
            pause = (pause * 2).min(PROBE_MAX);
        }
        let mut state = self.state.lock().expect("breaker lock");
        let down_for = state.open_since.take().map(|t| t.elapsed());
        state.failures_in_a_row = 0;
        self.healthy.send_replace(true);
        tracing::info!(?down_for, "the store answers again");
    }

    async fn call<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.admit()?;
        let started = Instant::now();
        let r = op.await;
        self.record(started, &r);
        r
    }
}

#[async_trait]
impl Store for Breaker {
    async fn head(&self, key: &BlobKey) -> Result<u64, StoreError> {
        self.call(self.inner.head(key)).await
    }

    async fn get(&self, key: &BlobKey, range: Range<u64>) -> Result<ByteStream, StoreError> {
        self.call(self.inner.get(key, range)).await
    }

    /// Not asked while the circuit is open; its outcome is not recorded (the
    /// `head` it goes alongside is).
    async fn get_prefix(&self, key: &BlobKey, len: u64) -> Option<Result<ByteStream, StoreError>> {
        self.admit().ok()?;
        self.inner.get_prefix(key, len).await
    }

    fn part_size(&self, size: u64) -> Option<u64> {
        self.inner.part_size(size)
    }

    async fn put_file(&self, key: &BlobKey, path: &Path, size: u64, part_md5s: &[[u8; 16]]) -> Result<(), StoreError> {
        self.call(self.inner.put_file(key, path, size, part_md5s)).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.call(self.inner.delete(key)).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.call(self.inner.probe()).await
    }

    async fn recover(&self) -> Result<(), StoreError> {
        self.call(self.inner.recover()).await
    }

    async fn put_tombstone(&self, key: &BlobKey, at: SystemTime) -> Result<(), StoreError> {
        self.call(self.inner.put_tombstone(key, at)).await
    }

    async fn tombstones(&self, since: SystemTime) -> Result<Vec<Tombstone>, StoreError> {
        self.call(self.inner.tombstones(since)).await
    }

    async fn expire_tombstones(&self, before: SystemTime) -> Result<u64, StoreError> {
        self.call(self.inner.expire_tombstones(before)).await
    }

    fn blob_of_object(&self, bucket: &str, object: &str) -> Option<BlobKey> {
        self.inner.blob_of_object(bucket, object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A store whose answers the test switches: up (every blob missing) or down.
    #[derive(Debug, Default)]
    struct Switch {
        down: AtomicBool,
        slow: AtomicBool,
        calls: AtomicU32,
    }

    impl Switch {
        async fn answer<T>(&self) -> Result<T, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::new(StoreErrorKind::Unavailable, "down"))
            } else {
                Err(StoreError::new(StoreErrorKind::NotFound, "missing"))
            }
        }
    }

    #[async_trait]
    impl Store for Switch {
        async fn head(&self, _: &BlobKey) -> Result<u64, StoreError> {
            self.answer().await
        }
        async fn get(&self, _: &BlobKey, _: Range<u64>) -> Result<ByteStream, StoreError> {
            self.answer().await
        }
        async fn put_file(&self, _: &BlobKey, _: &Path, _: u64, _: &[[u8; 16]]) -> Result<(), StoreError> {
            self.answer().await
        }
        async fn delete(&self, _: &BlobKey) -> Result<(), StoreError> {
            self.answer().await
        }
        async fn probe(&self) -> Result<(), StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::new(StoreErrorKind::Unavailable, "down"))
            } else {
                Ok(())
            }
        }
        async fn put_tombstone(&self, _: &BlobKey, _: SystemTime) -> Result<(), StoreError> {
            self.answer().await
        }
        async fn tombstones(&self, _: SystemTime) -> Result<Vec<Tombstone>, StoreError> {
            self.answer().await
        }
        async fn expire_tombstones(&self, _: SystemTime) -> Result<u64, StoreError> {
            self.answer().await
        }
    }

    async fn wait_healthy(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|h| *h == want))
            .await
            .expect("health changes")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_open_the_circuit_and_a_probe_closes_it() {
        let inner = Arc::new(Switch::default());
        let b = Breaker::new(inner.clone(), Duration::from_secs(10), &Registry::new());
        let key = BlobKey::of(b"x");
        // Answers (even "not found") keep it closed.
        for _ in 0..5 {
            assert!(b.head(&key).await.unwrap_err().is_not_found());
        }
        inner.down.store(true, Ordering::SeqCst);
        for _ in 0..TRIP_AFTER {
            assert!(b.head(&key).await.is_err());
        }
        let mut health = b.health();
        assert!(!*health.borrow());
        let calls = inner.calls.load(Ordering::SeqCst);
        let e = b.head(&key).await.unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls, "not asked while open");
        inner.down.store(false, Ordering::SeqCst);
        wait_healthy(&mut health, true).await;
        assert!(b.head(&key).await.unwrap_err().is_not_found());
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_failure_is_enough() {
        let inner = Arc::new(Switch::default());
        let b = Breaker::new(inner.clone(), Duration::from_secs(10), &Registry::new());
        inner.down.store(true, Ordering::SeqCst);
        inner.slow.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        assert!(b.delete(&BlobKey::of(b"x")).await.is_err());
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(
            !*b.health().borrow(),
            "one request that took the whole limit opens the circuit"
        );
        let started = tokio::time::Instant::now();
        assert!(b.delete(&BlobKey::of(b"x")).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO, "the next one fails at once");
    }
}
