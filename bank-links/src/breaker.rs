//! A circuit breaker per bank: when too many requests to a bank time out, stop sending
//! to it for a cool-down (the merchant gets an immediate 91 instead of a slow one, and
//! the bank gets room to recover), then let a single probe through to test it.
//!
//! Plain data with `now` as an input, so it is tested on a virtual clock.
#![deny(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

/// Buckets the sliding window is divided into: the window slides one bucket at a time,
/// so memory is fixed however high the rate.
pub const BREAKER_BUCKETS: usize = 10;

/// When the breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Outcomes older than this are forgotten.
    pub window_ms: u64,
    /// Fewer outcomes than this in the window never open the breaker (one timeout out of
    /// two requests says little).
    pub min_requests: u32,
    /// The breaker opens when timeouts reach this share of the window's outcomes, in
    /// per mille (500 = half). 0 disables the breaker.
    pub timeout_rate_permille: u32,
    /// How long the breaker stays open before a probe is let through. Also how long a
    /// probe may stay unresolved before another is allowed.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window_ms: 10_000,
            min_requests: 20,
            timeout_rate_permille: 500,
            open_ms: 5_000,
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// Nothing is sent until the cool-down ends.
    Open,
    /// One probe is allowed (or out); its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Index of the bucket-width slot this bucket counts; a stale slot reads as empty.
    slot: u64,
    answered: u32,
    timed_out: u32,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

/// The breaker. Feed it every outcome with [`record`](Self::record) and ask it before
/// every send with [`allow`](Self::allow).
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    origin: Instant,
    buckets: [Bucket; BREAKER_BUCKETS],
    phase: Phase,
    opened: u64,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Breaker {
            config,
            origin: now,
            buckets: [Bucket::default(); BREAKER_BUCKETS],
            phase: Phase::Closed,
            opened: 0,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// How many times the breaker has opened (for metrics).
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// May a request be sent now? In half-open, `true` hands out the single probe: the
    /// caller must send it and [`record`](Self::record) its outcome (or
    /// [`abandon`](Self::abandon) it if it was never sent).
    pub fn allow(&mut self, now: Instant) -> bool {
        let lease = Duration::from_millis(self.config.open_ms);
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until } if now < until => false,
            Phase::Open { .. } => {
                self.phase = Phase::HalfOpen {
                    probe_since: Some(now),
                };
                true
            }
            Phase::HalfOpen { probe_since } => match probe_since {
                // A probe whose outcome never came (its caller gave up) must not wedge
                // the breaker half-open for good.
                Some(since) if now < since + lease => false,
                _ => {
                    self.phase = Phase::HalfOpen {
                        probe_since: Some(now),
                    };
                    true
                }
            },
        }
    }

    /// A request allowed by [`allow`](Self::allow) was not sent after all, or ended with
    /// no verdict on the bank (its link dropped): frees the probe slot without judging.
    pub fn abandon(&mut self, _now: Instant) {
        if let Phase::HalfOpen { .. } = self.phase {
            self.phase = Phase::HalfOpen { probe_since: None };
        }
    }

    /// The bank answered (`answered == true`) or a request to it timed out.
    pub fn record(&mut self, now: Instant, answered: bool) {
        if self.config.timeout_rate_permille == 0 {
            return;
        }
        match self.phase {
            Phase::Closed => {
                let b = self.bucket(now);
                if answered {
                    b.answered = b.answered.saturating_add(1);
                } else {
                    b.timed_out = b.timed_out.saturating_add(1);
                }
                let (answered, timed_out) = self.totals(now);
                let total = u64::from(answered) + u64::from(timed_out);
                if total >= u64::from(self.config.min_requests.max(1))
                    && u64::from(timed_out) * 1000
                        >= u64::from(self.config.timeout_rate_permille) * total
                {
                    self.open(now);
                }
            }
            // Outcomes of requests sent before the breaker opened say nothing new.
            Phase::Open { .. } => {}
            Phase::HalfOpen { .. } => {
                if answered {
                    self.buckets = [Bucket::default(); BREAKER_BUCKETS];
                    self.phase = Phase::Closed;
                } else {
                    self.open(now);
                }
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.opened += 1;
        self.phase = Phase::Open {
            until: now + Duration::from_millis(self.config.open_ms),
        };
    }

    fn bucket_ms(&self) -> u64 {
        (self.config.window_ms / BREAKER_BUCKETS as u64).max(1)
    }

    fn slot(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        ms / self.bucket_ms()
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let slot = self.slot(now);
        let b = &mut self.buckets[(slot % BREAKER_BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        b
    }

    fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.slot + (BREAKER_BUCKETS as u64) > current && b.slot <= current)
            .fold((0, 0), |(a, t), b| {
                (a.saturating_add(b.answered), t.saturating_add(b.timed_out))
            })
    }
}

#[cfg(test)]
// Tests make their own clock readings to feed the decisions.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window_ms: 1_000,
            min_requests: 10,
            timeout_rate_permille: 500,
            open_ms: 2_000,
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    // Proves the breaker stays closed below the minimum count and below the rate.
    #[test]
    fn stays_closed_below_minimum_and_rate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..9 {
            b.record(at(t0, i), false);
        }
        assert_eq!(
            b.state(at(t0, 10)),
            BreakerState::Closed,
            "9 < min_requests"
        );
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..100 {
            b.record(at(t0, i), i % 3 != 0); // a third time out
        }
        assert_eq!(b.state(at(t0, 100)), BreakerState::Closed);
        assert!(b.allow(at(t0, 100)));
    }

    // Proves it opens at the rate, refuses during the cool-down, lets exactly one probe
    // through after it, and an answered probe closes it.
    #[test]
    fn opens_cools_down_probes_and_closes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..10 {
            b.record(at(t0, i), i % 2 == 0);
        }
        assert_eq!(b.state(at(t0, 10)), BreakerState::Open);
        assert_eq!(b.times_opened(), 1);
        assert!(!b.allow(at(t0, 11)));
        assert!(!b.allow(at(t0, 2_008)), "cool-down runs from the opening");
        assert!(b.allow(at(t0, 2_009)), "the probe");
        assert_eq!(b.state(at(t0, 2_009)), BreakerState::HalfOpen);
        assert!(!b.allow(at(t0, 2_010)), "only one probe at a time");
        b.record(at(t0, 2_050), true);
        assert_eq!(b.state(at(t0, 2_050)), BreakerState::Closed);
        assert!(b.allow(at(t0, 2_051)));
        // The old timeouts were forgotten on closing: one more does not reopen it.
        b.record(at(t0, 2_052), false);
        assert_eq!(b.state(at(t0, 2_052)), BreakerState::Closed);
    }

    // Proves a timed-out probe reopens it for a full cool-down, and an abandoned or
    // forgotten probe frees the slot.
    #[test]
    fn failed_or_lost_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..10 {
            b.record(at(t0, i), false);
        }
        assert!(b.allow(at(t0, 2_009)));
        b.record(at(t0, 3_000), false);
        assert_eq!(b.state(at(t0, 3_000)), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);
        assert!(!b.allow(at(t0, 4_999)));
        assert!(b.allow(at(t0, 5_000)));
        b.abandon(at(t0, 5_001));
        assert!(b.allow(at(t0, 5_002)), "abandoned probe freed the slot");
        assert!(!b.allow(at(t0, 5_003)));
        assert!(
            b.allow(at(t0, 7_002)),
            "a forgotten probe expires after open_ms"
        );
    }

    // Proves old outcomes slide out of the window.
    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        for i in 0..9 {
            b.record(at(t0, i), false);
        }
        // A second later the nine timeouts are gone; nine more still do not reach ten.
        for i in 0..9 {
            b.record(at(t0, 1_100 + i), false);
        }
        assert_eq!(b.state(at(t0, 1_200)), BreakerState::Closed);
        b.record(at(t0, 1_201), false);
        assert_eq!(b.state(at(t0, 1_201)), BreakerState::Open);
    }

    // Proves a rate of 0 disables the breaker.
    #[test]
    fn zero_rate_disables() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                timeout_rate_permille: 0,
                ..cfg()
            },
            t0,
        );
        for i in 0..100 {
            b.record(at(t0, i), false);
        }
        assert!(b.allow(at(t0, 100)));
    }
}
