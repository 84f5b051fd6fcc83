//! STANs are six digits and wrap in minutes at our rates, so uniqueness is only required
//! among messages in flight: the allocator skips numbers still held.

use std::collections::HashSet;
use std::sync::Mutex;

/// STANs run 1..=999_999 (000000 is avoided: some banks treat it as absent).
pub const STAN_MAX: u32 = 999_999;

/// Hands out STANs for one bank (shared by its links), skipping those in flight.
#[derive(Debug)]
pub struct StanAllocator {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    next: u32,
    in_flight: HashSet<u32>,
}

/// Every STAN is in flight: the caller must refuse (the in-flight caps are far lower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {STAN_MAX} STANs are in flight")]
pub struct StanExhausted;

impl Default for StanAllocator {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl StanAllocator {
    /// Starting at a given number (a restarted switch starts where the clock puts it, so
    /// a bank does not see the same STAN twice in quick succession across restarts).
    pub fn starting_at(first: u32) -> Self {
        let next = if (1..=STAN_MAX).contains(&first) {
            first
        } else {
            1
        };
        StanAllocator {
            inner: Mutex::new(Inner {
                next,
                in_flight: HashSet::new(),
            }),
        }
    }

    /// The next STAN not in flight; it stays held until [`release`](Self::release).
    pub fn allocate(&self) -> Result<u32, StanExhausted> {
        let mut g = self.inner.lock().expect("stan lock");
        if g.in_flight.len() >= STAN_MAX as usize {
            return Err(StanExhausted);
        }
        loop {
            let s = g.next;
            g.next = if s >= STAN_MAX { 1 } else { s + 1 };
            if g.in_flight.insert(s) {
                return Ok(s);
            }
        }
    }

    pub fn release(&self, stan: u32) {
        self.inner
            .lock()
            .expect("stan lock")
            .in_flight
            .remove(&stan);
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().expect("stan lock").in_flight.len()
    }
}

/// Six ASCII digits.
pub fn format_stan(stan: u32) -> [u8; 6] {
    let mut out = [b'0'; 6];
    let mut v = stan;
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a wrapped allocator skips a STAN that is still in flight.
    #[test]
    fn wraps_and_skips_in_flight() {
        let a = StanAllocator::starting_at(STAN_MAX);
        let held = a.allocate().unwrap();
        assert_eq!(held, STAN_MAX);
        let one = a.allocate().unwrap();
        assert_eq!(one, 1);
        a.release(one);
        // Walk all the way round: STAN_MAX is still held, so it must be skipped.
        let mut seen_max = false;
        for _ in 0..STAN_MAX + 2 {
            let s = a.allocate().unwrap();
            seen_max |= s == STAN_MAX;
            a.release(s);
        }
        assert!(!seen_max);
        assert_eq!(format_stan(42), *b"000042");
    }
}
