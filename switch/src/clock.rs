//! The clock the request path reads, as a seam: the system clock in production, a
//! virtual one (tokio's paused clock) in the seeded simulation (`sim/`).
//!
//! Decisions take `now` as an input; the async shells read it here, so that a simulated
//! run sees the same times, in the same order, for the same seed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the request path reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The monotonic clock (breaker, elapsed times).
    fn mono(&self) -> Instant;
    /// Wall-clock time in microseconds since the Unix epoch (rate limits, DE7).
    fn unix_us(&self) -> u64;

    /// Wall-clock time in whole seconds since the Unix epoch.
    fn unix_s(&self) -> u64 {
        self.unix_us() / 1_000_000
    }

    /// Wall-clock time as a [`SystemTime`] (MAC key overlap windows).
    fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.unix_us())
    }
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono(&self) -> Instant {
        Instant::now()
    }

    fn unix_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// Tokio's clock (virtual when the runtime's time is paused), with the wall clock
/// starting at a fixed Unix time: a run reads the same times for the same seed.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
    start_unix_us: u64,
}

impl TokioClock {
    /// A clock whose wall time reads `start_unix_s` now.
    pub fn starting_at(start_unix_s: u64) -> TokioClock {
        TokioClock {
            start: tokio::time::Instant::now(),
            start_unix_us: start_unix_s * 1_000_000,
        }
    }
}

impl Clock for TokioClock {
    fn mono(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn unix_us(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.start_unix_us + elapsed.as_micros() as u64
    }
}
