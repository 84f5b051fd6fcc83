//! The open-loop schedule and the rate search, as plain functions.
//!
//! Slot `i` of a run at `rate` per second is due `i / rate` seconds after the start,
//! whatever happened to earlier slots: latency is measured from that instant, so a slow
//! answer delays the measurement of nothing else (no coordinated omission).

use std::time::Duration;

const NANOS_PER_S: u128 = 1_000_000_000;

/// When slot `i` is due, from the start of the run.
pub fn due_offset(i: u64, rate_per_s: u64) -> Duration {
    let rate = u128::from(rate_per_s.max(1));
    let nanos = u128::from(i) * NANOS_PER_S / rate;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Slots in `seconds` at `rate`.
pub fn slots(rate_per_s: u64, seconds: u64) -> u64 {
    rate_per_s.saturating_mul(seconds)
}

/// Runs a search makes at most (growth and bisection together).
pub const SEARCH_STEPS_MAX: u32 = 12;
/// Bisection stops when the bracket is narrower than 1/this of the passing rate.
const SEARCH_RESOLUTION_DIV: u64 = 20;

/// Raising the rate until a run fails, then bisecting between the last pass and the
/// first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    max_rate: u64,
    /// Highest rate that passed.
    pub best: Option<u64>,
    /// Lowest rate that failed.
    pub failed: Option<u64>,
    pub steps: u32,
}

impl Search {
    pub fn new(max_rate: u64) -> Search {
        Search {
            max_rate,
            best: None,
            failed: None,
            steps: 0,
        }
    }

    /// Records the outcome of a run at `rate` and returns the next rate to try, or None
    /// when the search is done.
    pub fn record(&mut self, rate: u64, passed: bool) -> Option<u64> {
        self.steps += 1;
        if passed {
            self.best = Some(self.best.map_or(rate, |b| b.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        if self.steps >= SEARCH_STEPS_MAX {
            return None;
        }
        match (self.best, self.failed) {
            // Growth: half as much again each time, up to the maximum.
            (Some(b), None) => {
                if b >= self.max_rate {
                    return None;
                }
                Some((b + b / 2).max(b + 1).min(self.max_rate))
            }
            // Even the first rate failed: halve until something passes.
            (None, Some(f)) => (f > 1).then_some(f / 2),
            (Some(b), Some(f)) => {
                let width = f.saturating_sub(b);
                if width <= (b / SEARCH_RESOLUTION_DIV).max(1) {
                    None
                } else {
                    Some(b + width / 2)
                }
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves slots are spaced evenly and the schedule does not drift over long runs.
    #[test]
    fn due_offsets() {
        assert_eq!(due_offset(0, 2000), Duration::ZERO);
        assert_eq!(due_offset(1, 2000), Duration::from_micros(500));
        assert_eq!(due_offset(2000 * 3600, 2000), Duration::from_secs(3600));
        assert_eq!(due_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(slots(2000, 20), 40_000);
    }

    // Proves the search grows, then bisects to within 5 % of the true limit.
    #[test]
    fn search_converges() {
        let limit = 7_300;
        let mut s = Search::new(100_000);
        let mut rate = 1_000;
        let mut tried = vec![];
        while let Some(next) = s.record(rate, rate <= limit) {
            tried.push(next);
            rate = next;
        }
        let best = s.best.unwrap();
        assert!(best <= limit && best * 20 >= limit * 19, "best {best}");
        assert!(s.steps <= SEARCH_STEPS_MAX);
        assert_eq!(tried[..3], [1_500, 2_250, 3_375]);
    }

    // Proves the search halves when the first rate fails and stops at the maximum.
    #[test]
    fn search_edges() {
        let mut s = Search::new(5_000);
        assert_eq!(s.record(4_000, false), Some(2_000));
        let mut s = Search::new(5_000);
        assert_eq!(s.record(4_000, true), Some(5_000));
        assert_eq!(s.record(5_000, true), None);
        assert_eq!(s.best, Some(5_000));
    }
}
