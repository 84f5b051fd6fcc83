//! Cutting the bank links on command (`POST /links/cut?down_ms=N`), for fault runs: every
//! live link closes at once, with its queued answers, and new connections are closed as
//! soon as they are accepted until the down time has passed. The record is kept, so a
//! run can still reconcile against it (restarting the simulator would lose it).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The longest down time one command may ask for.
pub const LINK_DOWN_MAX: Duration = Duration::from_secs(600);

/// Shared by the accept loop, every link and the control endpoint.
#[derive(Debug)]
pub struct LinkGate {
    /// Bumped by every cut; each link watches it and closes when it changes.
    cuts: watch::Sender<u64>,
    down_until: Mutex<Option<Instant>>,
}

impl Default for LinkGate {
    fn default() -> Self {
        LinkGate {
            cuts: watch::channel(0).0,
            down_until: Mutex::new(None),
        }
    }
}

impl LinkGate {
    /// Closes every live link and refuses connections for `down` (capped at
    /// [`LINK_DOWN_MAX`]); returns how many cuts there have been.
    pub fn cut(&self, down: Duration, now: Instant) -> u64 {
        let until = now + down.min(LINK_DOWN_MAX);
        {
            let mut d = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
            *d = Some(d.map_or(until, |old| old.max(until)));
        }
        let mut n = 0;
        self.cuts.send_modify(|c| {
            *c += 1;
            n = *c;
        });
        n
    }

    /// Whether new connections are refused at `now`.
    pub fn is_down(&self, now: Instant) -> bool {
        let d = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        d.is_some_and(|until| now < until)
    }

    /// What a link watches to learn of the next cut.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.cuts.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a cut is seen by a subscribed link and refuses connections for its down time only.
    #[tokio::test]
    async fn cut_and_down_time() {
        let gate = LinkGate::default();
        let mut link = gate.subscribe();
        let t0 = Instant::now();
        assert!(!gate.is_down(t0));
        assert_eq!(gate.cut(Duration::from_millis(500), t0), 1);
        assert!(link.has_changed().unwrap());
        link.mark_unchanged();
        assert!(gate.is_down(t0 + Duration::from_millis(499)));
        assert!(!gate.is_down(t0 + Duration::from_millis(500)));
        // A shorter second cut does not shorten the first one's down time.
        gate.cut(Duration::ZERO, t0);
        assert!(gate.is_down(t0 + Duration::from_millis(100)));
        assert!(link.has_changed().unwrap());
    }
}
