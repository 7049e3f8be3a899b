//! The Prometheus registry every module registers its own metrics in, and the
//! text exposition. Each metric is named once, in the module that updates it;
//! values that are cheaper to compute at scrape time (queue depth, memory in
//! use) are gauges whose closure the owning module hands in here.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// Register a counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Register a counter with labels.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// Register a histogram with labels and explicit buckets (seconds).
pub fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Register a gauge whose value `read` computes at each scrape.
pub fn computed_gauge(registry: &Registry, name: &str, help: &str, read: impl Fn() -> f64 + Send + Sync + 'static) {
    let gauge = Gauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(Computed {
            gauge,
            read: Box::new(read),
        }))
        .expect("unique metric");
}

struct Computed {
    gauge: Gauge,
    read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl Collector for Computed {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set((self.read)());
        self.gauge.collect()
    }
}

/// The text exposition of every registered metric.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("text exposition is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computed_gauges_read_at_scrape_time() {
        let registry = Registry::new();
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
        let v = value.clone();
        computed_gauge(&registry, "test_depth", "depth", move || {
            v.load(std::sync::atomic::Ordering::Relaxed) as f64
        });
        assert!(render(&registry).contains("test_depth 3"));
        value.store(7, std::sync::atomic::Ordering::Relaxed);
        assert!(render(&registry).contains("test_depth 7"));
    }
}
