//! Who is connected: admission at the connection cap, eviction of idle
//! connections to make room, and the state each connection shares between its
//! socket wrapper (`Gate`) and its requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ServerMetrics;

/// What one connection's parts share.
#[derive(Debug)]
pub struct ConnState {
    accepted: Instant,
    /// Requests whose head was complete (HTTP/1: counted by the `Gate`; HTTP/2: by the service).
    begun: AtomicU64,
    /// Requests whose response is done with (sent, or dropped with the connection).
    ended: AtomicU64,
    /// When the last request in flight ended, in nanoseconds since `accepted`.
    idle_since: AtomicU64,
    h2: AtomicBool,
    /// Admitted past the cap: one request, probes only.
    pub overflow: bool,
    /// The `Gate`'s reader, when it waits for the requests in flight to end
    /// (to answer a refused head): woken when the connection turns idle.
    reader: AtomicWaker,
    reader_waits: AtomicBool,
    /// Fired to close the connection gracefully: eviction, or the node shutting down.
    pub close: CancellationToken,
    changed: Arc<Changed>,
}

/// Connections closed or turned idle, for an admission waiting for room.
#[derive(Debug, Default)]
struct Changed {
    notify: Notify,
    /// Whether an admission waits: otherwise a request that ends touches nothing shared.
    waiting: AtomicBool,
}

impl ConnState {
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::AcqRel);
    }

    /// A response is done with: when it was the last in flight, the connection is idle from now.
    pub fn end(&self) {
        let ended = self.ended.fetch_add(1, Ordering::AcqRel) + 1;
        if ended >= self.begun.load(Ordering::Acquire) {
            let nanos = self.accepted.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.idle_since.store(nanos, Ordering::Release);
            if self.reader_waits.swap(false, Ordering::AcqRel) {
                self.reader.wake();
            }
            if self.changed.waiting.load(Ordering::Acquire) {
                self.changed.notify.notify_one();
            }
        }
    }

    /// Wake the task of `cx` once no request is in flight.
    pub fn wake_when_idle(&self, cx: &std::task::Context<'_>) {
        self.reader.register(cx.waker());
        self.reader_waits.store(true, Ordering::Release);
        // A request that ended in between would have found no waiter.
        if self.in_flight() == 0 && self.reader_waits.swap(false, Ordering::AcqRel) {
            cx.waker().wake_by_ref();
        }
    }

    pub fn in_flight(&self) -> u64 {
        let ended = self.ended.load(Ordering::Acquire);
        self.begun.load(Ordering::Acquire).saturating_sub(ended)
    }

    /// Whether any request head was complete on this connection.
    pub fn has_begun(&self) -> bool {
        self.begun.load(Ordering::Acquire) > 0
    }

    pub fn idle_since(&self) -> Instant {
        self.accepted + Duration::from_nanos(self.idle_since.load(Ordering::Acquire))
    }

    pub fn set_h2(&self) {
        self.h2.store(true, Ordering::Release);
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }
}

/// Every open connection, and the counts admission works from.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    changed: Arc<Changed>,
    /// Connections served normally.
    pub cap: usize,
    /// Connections admitted past the cap, each for one probe or one 503.
    pub overflow_cap: usize,
    metrics: Arc<ServerMetrics>,
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<u64, Entry>,
    next_id: u64,
    normal: usize,
    overflow: usize,
    /// Normal connections told to close that have not closed yet.
    evicting: usize,
}

#[derive(Debug)]
struct Entry {
    state: Arc<ConnState>,
    evicted: bool,
}

/// A place among the open connections, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Registry {
    pub fn new(cap: usize, metrics: Arc<ServerMetrics>) -> Arc<Registry> {
        Arc::new(Registry {
            inner: Mutex::new(Inner::default()),
            changed: Arc::new(Changed::default()),
            cap,
            overflow_cap: (cap / 16).clamp(4, 64),
            metrics,
        })
    }

    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Open connections, normal and overflow.
    pub fn open(&self) -> usize {
        let inner = self.inner.lock().expect("registry lock");
        inner.normal + inner.overflow
    }

    /// A place for a new connection: under the cap; else the place of an idle
    /// connection, which is told to close; else, while every connection has a
    /// request in flight, an overflow place; else wait until one of those frees
    /// up. `None` once `shutdown` fires.
    pub async fn admit(self: &Arc<Self>, shutdown: &CancellationToken, close: CancellationToken) -> Option<Slot> {
        let mut close = Some(close);
        if let Some(slot) = self.try_admit(&mut close) {
            return Some(slot);
        }
        self.changed.waiting.store(true, Ordering::Release);
        let slot = loop {
            let notified = self.changed.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a change in between is not missed.
            notified.as_mut().enable();
            if let Some(slot) = self.try_admit(&mut close) {
                break Some(slot);
            }
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => break None,
            }
        };
        self.changed.waiting.store(false, Ordering::Release);
        slot
    }

    fn try_admit(self: &Arc<Self>, close: &mut Option<CancellationToken>) -> Option<Slot> {
        let mut inner = self.inner.lock().expect("registry lock");
        let room =
            inner.normal - inner.evicting < self.cap || (inner.evicting < self.overflow_cap && self.evict(&mut inner));
        let overflow = if room {
            false
        } else if inner.overflow < self.overflow_cap {
            true
        } else {
            return None;
        };
        let id = inner.next_id;
        inner.next_id += 1;
        let state = Arc::new(ConnState {
            accepted: Instant::now(),
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            overflow,
            reader: AtomicWaker::new(),
            reader_waits: AtomicBool::new(false),
            close: close.take().expect("one admission per token"),
            changed: self.changed.clone(),
        });
        if overflow {
            inner.overflow += 1;
            self.metrics.shed.inc();
        } else {
            inner.normal += 1;
        }
        inner.conns.insert(
            id,
            Entry {
                state: state.clone(),
                evicted: false,
            },
        );
        Some(Slot {
            registry: self.clone(),
            id,
            state,
        })
    }

    /// Close one idle connection to free its place (or its file descriptor);
    /// whether there was one.
    pub fn evict_one(&self) -> bool {
        let mut inner = self.inner.lock().expect("registry lock");
        self.evict(&mut inner)
    }

    /// Tell the idle connection least likely to be missed to close: one that
    /// never sent a whole request (silent, or sending its head slowly), the
    /// oldest first; else the one kept alive the longest without a request.
    /// Connections with a request in flight are never chosen.
    fn evict(&self, inner: &mut Inner) -> bool {
        let victim = inner
            .conns
            .iter()
            .filter(|(_, e)| !e.evicted && !e.state.overflow && e.state.in_flight() == 0)
            .min_by_key(|(_, e)| {
                let s = &e.state;
                if s.has_begun() {
                    (1, s.idle_since())
                } else {
                    (0, s.accepted())
                }
            })
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        let entry = inner.conns.get_mut(&id).expect("chosen from the map");
        entry.evicted = true;
        entry.state.close.cancel();
        inner.evicting += 1;
        self.metrics.closed.with_label_values(&["evicted"]).inc();
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let r = &self.registry;
        let mut inner = r.inner.lock().expect("registry lock");
        if let Some(entry) = inner.conns.remove(&self.id) {
            if entry.evicted {
                inner.evicting -= 1;
            }
            if entry.state.overflow {
                inner.overflow -= 1;
            } else {
                inner.normal -= 1;
            }
        }
        drop(inner);
        r.changed.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(cap: usize) -> Arc<Registry> {
        Registry::new(cap, Arc::new(ServerMetrics::new(&prometheus::Registry::new())))
    }

    fn admit_now(r: &Arc<Registry>) -> Option<Slot> {
        r.try_admit(&mut Some(CancellationToken::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connections_make_room_before_kept_alive_ones() {
        let r = registry(3);
        let kept_alive = admit_now(&r).unwrap();
        kept_alive.state.begin();
        kept_alive.state.end();
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent_old = admit_now(&r).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let silent_new = admit_now(&r).unwrap();

        tokio::time::advance(Duration::from_secs(1)).await;
        let fourth = admit_now(&r).expect("room made");
        assert!(!fourth.state.overflow);
        assert!(
            silent_old.state.close.is_cancelled(),
            "the oldest silent connection goes first"
        );
        assert!(!silent_new.state.close.is_cancelled() && !kept_alive.state.close.is_cancelled());
        drop(silent_old);

        tokio::time::advance(Duration::from_secs(1)).await;
        let fifth = admit_now(&r).unwrap();
        assert!(silent_new.state.close.is_cancelled());
        drop(silent_new);
        // The fourth and fifth have not sent a request either: they go before the kept-alive one.
        let _sixth = admit_now(&r).unwrap();
        assert!(fourth.state.close.is_cancelled());
        assert!(!kept_alive.state.close.is_cancelled());
        drop((fourth, fifth));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_are_kept_and_overflow_is_bounded() {
        let r = registry(2);
        let busy: Vec<Slot> = (0..2).map(|_| admit_now(&r).unwrap()).collect();
        for s in &busy {
            s.state.begin();
        }
        let overflow: Vec<Slot> = (0..r.overflow_cap).map(|_| admit_now(&r).unwrap()).collect();
        assert!(overflow.iter().all(|s| s.state.overflow));
        assert!(busy.iter().all(|s| !s.state.close.is_cancelled()));
        assert!(admit_now(&r).is_none(), "full: the caller waits");
        assert_eq!(r.open(), 2 + r.overflow_cap);

        // A request that ends makes its connection evictable, and wakes a waiting admission.
        let shutdown = CancellationToken::new();
        let waiting = tokio::spawn({
            let r = r.clone();
            async move {
                r.admit(&shutdown, CancellationToken::new())
                    .await
                    .map(|s| s.state.overflow)
            }
        });
        tokio::task::yield_now().await;
        busy[0].state.end();
        assert_eq!(waiting.await.unwrap(), Some(false));
        assert!(busy[0].state.close.is_cancelled());
        drop(overflow);
        assert!(!r.evict_one(), "no other idle connection");
    }
}
