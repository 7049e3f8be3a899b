//! When a failed upload or delete is tried again.

use std::time::Duration;

/// Retry timing for failed uploads.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before attempt `failures + 1`: doubling, capped, with ±25% jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << failures.min(20).saturating_sub(1))
            .min(self.max);
        let jitter = rand::random_range(0.75..1.25);
        base.mul_f64(jitter).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        };
        for (failures, base) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (9, 256.0)] {
            let d = b.delay(failures).as_secs_f64();
            assert!(d >= base * 0.75 && d <= base * 1.25, "failures {failures}: {d}");
        }
        assert!(b.delay(30) <= Duration::from_secs(300));
        assert!(b.delay(30) >= Duration::from_secs(225));
    }
}
