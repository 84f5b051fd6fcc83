//! The one exponential back-off policy of the switch: bank-link reconnects, reversal
//! repeats and notification retries all wait `min * 2^attempt`, capped at `max`.
//!
//! The growth comes from `backon`'s exponential builder; this type only makes it a plain
//! function of the attempt number (no clock, no randomness), so decisions that schedule
//! a retry stay testable values. Jitter, where wanted, is an input too.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Doublings after which every policy here has reached its cap (2^32 times any minimum
/// of at least 1 ms is beyond any maximum that makes sense); bounds the walk to attempt n.
pub const BACKOFF_DOUBLINGS_MAX: u32 = 32;

/// Bounded exponential back-off, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause before the first repeat (attempt 0).
    pub min_ms: u64,
    /// No pause is longer.
    pub max_ms: u64,
}

impl Backoff {
    /// The pause before repeat number `attempt` (0 for the first): `min_ms * 2^attempt`,
    /// capped at `max_ms`.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        debug_assert!(self.min_ms <= self.max_ms, "{self:?}");
        let n = attempt.min(BACKOFF_DOUBLINGS_MAX) as usize;
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.min_ms))
            .with_max_delay(Duration::from_millis(self.max_ms))
            .without_max_times()
            .build()
            .nth(n)
            .map_or(self.max_ms, |d| d.as_millis() as u64)
            .min(self.max_ms)
    }

    /// [`delay_ms`](Self::delay_ms) scaled by a factor in [0.5, 1.0] picked by
    /// `jitter_permille` (0..=1000), so that many links do not reconnect in lockstep.
    pub fn jittered(&self, attempt: u32, jitter_permille: u64) -> Duration {
        let jitter = 500 + jitter_permille.min(1000) / 2;
        Duration::from_millis(self.delay_ms(attempt) * jitter / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the pause doubles from the minimum, is capped, and jitter keeps it within
    // [half, full].
    #[test]
    fn doubles_caps_and_jitters() {
        let b = Backoff {
            min_ms: 100,
            max_ms: 10_000,
        };
        assert_eq!(b.delay_ms(0), 100);
        assert_eq!(b.delay_ms(3), 800);
        assert_eq!(b.delay_ms(30), 10_000);
        assert_eq!(b.delay_ms(u32::MAX), 10_000);
        assert_eq!(b.jittered(3, 1000), Duration::from_millis(800));
        assert_eq!(b.jittered(30, 0), Duration::from_millis(5_000));
        let fixed = Backoff {
            min_ms: 3_000,
            max_ms: 3_000,
        };
        assert_eq!(fixed.delay_ms(5), 3_000);
    }
}
