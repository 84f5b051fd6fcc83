//! Failed logins counted per source address: the account lockout (PCI DSS 8.3.4) stops
//! guessing at one account, not one client trying a few passwords at each of many
//! ("password spraying"); this refuses an address after [`ADDRESS_FAILURES_MAX`] failed
//! logins within [`ADDRESS_WINDOW_MS`], whatever accounts they named (OWASP
//! Authentication Cheat Sheet, "Protect Against Automated Attacks"). A plain type over
//! `now` passed in; counts live in one instance's memory, so each instance of a
//! deployment refuses on its own count. An IPv6 client is counted by its /64, the
//! smallest block one subscriber is usually given (RFC 6177), so that it cannot step
//! round the count address by address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed logins from one address within [`ADDRESS_WINDOW_MS`] after which the address is
/// refused for the rest of the window. Three times the lockout's 10 per account: a person
/// who mistypes locks their own account long before their address is refused.
pub(crate) const ADDRESS_FAILURES_MAX: u32 = 30;

/// The window failures are counted in, from an address's first failure, in ms.
pub(crate) const ADDRESS_WINDOW_MS: u64 = 15 * 60 * 1000;

/// Addresses counted at most: beyond it the windows that ended are forgotten, then the
/// oldest one (so the memory is bounded whatever the number of clients).
pub(crate) const ADDRESSES_MAX: usize = 10_000;

/// One address's count in its window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn ended(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= Duration::from_millis(ADDRESS_WINDOW_MS)
    }
}

/// What a source address is counted under: an IPv4 address (an IPv4-mapped IPv6 one
/// too) as itself, an IPv6 address by its /64, anything unparsable as its text.
fn counted_as(address: &str) -> String {
    match address.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => address.to_string(),
    }
}

/// Failed logins by source address (an IP address as text).
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    by_address: HashMap<String, Window>,
}

impl LoginThrottle {
    /// How long `address` is still refused at `now`, if it is.
    pub(crate) fn refused(&self, address: &str, now: Instant) -> Option<Duration> {
        let w = self.by_address.get(&counted_as(address))?;
        if w.ended(now) || w.failures < ADDRESS_FAILURES_MAX {
            return None;
        }
        let ends = w.started + Duration::from_millis(ADDRESS_WINDOW_MS);
        Some(ends.saturating_duration_since(now))
    }

    /// Counts a failed login from `address` at `now`; true when this failure is the one
    /// that makes the address refused.
    pub(crate) fn failed(&mut self, address: &str, now: Instant) -> bool {
        let key = counted_as(address);
        if !self.by_address.contains_key(&key) {
            self.make_room(now);
        }
        let w = self.by_address.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if w.ended(now) {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        let engaged = w.failures == ADDRESS_FAILURES_MAX;
        debug_assert!(self.by_address.len() <= ADDRESSES_MAX);
        engaged
    }

    /// Room for one more address: windows that ended go first, then the oldest of those
    /// not refused, and only when every address is refused the oldest of all (refused
    /// addresses going first would let a client flush its own refusal with new ones). A
    /// scan of the table, only when it is full.
    fn make_room(&mut self, now: Instant) {
        if self.by_address.len() < ADDRESSES_MAX {
            return;
        }
        self.by_address.retain(|_, w| !w.ended(now));
        if self.by_address.len() < ADDRESSES_MAX {
            return;
        }
        let oldest = self
            .by_address
            .iter()
            .min_by_key(|(_, w)| (w.failures >= ADDRESS_FAILURES_MAX, w.started))
            .map(|(a, _)| a.clone());
        if let Some(a) = oldest {
            self.by_address.remove(&a);
        }
    }

    /// Addresses counted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_address.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // Proves an address is refused from its 30th failure to the end of its window, then
    // counted afresh, and that other addresses are not affected.
    #[test]
    fn refuses_from_the_last_failure_to_the_window_end() {
        let (mut t, t0) = (LoginThrottle::default(), Instant::now());
        for i in 1..ADDRESS_FAILURES_MAX {
            assert!(!t.failed("10.0.0.1", t0 + ms(i as u64)), "failure {i}");
            assert_eq!(t.refused("10.0.0.1", t0 + ms(i as u64)), None);
        }
        assert!(t.failed("10.0.0.1", t0 + ms(100)), "the 30th engages it");
        let wait = t.refused("10.0.0.1", t0 + ms(100)).expect("refused");
        assert_eq!(
            wait,
            ms(ADDRESS_WINDOW_MS - 99),
            "the window began at the first failure"
        );
        assert!(!t.failed("10.0.0.1", t0 + ms(200)), "engaged once only");
        assert_eq!(t.refused("10.0.0.2", t0 + ms(100)), None);
        let end = t0 + ms(1 + ADDRESS_WINDOW_MS);
        assert!(t.refused("10.0.0.1", end - ms(1)).is_some());
        assert_eq!(t.refused("10.0.0.1", end), None, "the window ended");
        for i in 1..ADDRESS_FAILURES_MAX {
            assert!(
                !t.failed("10.0.0.1", end + ms(i as u64)),
                "afresh: failure {i}"
            );
        }
        assert_eq!(t.refused("10.0.0.1", end + ms(100)), None);
        assert!(
            t.failed("10.0.0.1", end + ms(100)),
            "counted afresh from one"
        );
        assert!(t.refused("10.0.0.1", end + ms(100)).is_some());
    }

    // Proves an IPv6 client is counted by its /64 and an IPv4-mapped address as its IPv4
    // one.
    #[test]
    fn ipv6_counts_by_its_64() {
        let (mut t, t0) = (LoginThrottle::default(), Instant::now());
        for i in 0..ADDRESS_FAILURES_MAX {
            t.failed(&format!("2001:db8:1:2::{:x}", i + 1), t0);
        }
        assert!(t.refused("2001:db8:1:2:ffff::9", t0).is_some());
        assert_eq!(t.refused("2001:db8:1:3::1", t0), None, "another /64");
        for _ in 0..ADDRESS_FAILURES_MAX {
            t.failed("::ffff:192.0.2.7", t0);
        }
        assert!(t.refused("192.0.2.7", t0).is_some());
    }

    // Proves the addresses counted stay within ADDRESSES_MAX: when full, the oldest of
    // the addresses not refused goes (a refused one stays however many new ones come),
    // and once windows have ended they all go before any that has not.
    #[test]
    fn memory_is_bounded() {
        let (mut t, t0) = (LoginThrottle::default(), Instant::now());
        for _ in 0..ADDRESS_FAILURES_MAX {
            t.failed("192.0.2.1", t0 + ms(1));
        }
        for i in 0..ADDRESSES_MAX as u64 + 5 {
            t.failed(&format!("10.1.{}.{}", i / 256, i % 256), t0 + ms(2 + i));
        }
        assert_eq!(t.len(), ADDRESSES_MAX);
        assert!(
            t.refused("192.0.2.1", t0 + ms(3)).is_some(),
            "the refused one stays"
        );
        assert!(
            !t.by_address.contains_key("10.1.0.0"),
            "the oldest other went"
        );
        let later = t0 + ms(ADDRESS_WINDOW_MS + 2 + ADDRESSES_MAX as u64 + 5);
        t.failed("198.51.100.1", later);
        assert_eq!(t.len(), 1, "every ended window forgotten at once");
    }
}
