//! A bank: its links, its STAN space, its dialect and its circuit breaker; traffic goes
//! to the ready link with the fewest requests in flight.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use codec::Dialect;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::link::{LinkState, Outcome};
use crate::shell::LinkHandle;
use crate::stan::StanAllocator;

/// What the switch knows of a bank.
#[derive(Debug, Clone)]
pub struct BankConfig {
    pub id: String,
    pub dialect: &'static Dialect,
    pub request_timeout_ms: u64,
}

/// A bank and its running links. Clones share the links and the breaker.
#[derive(Debug, Clone)]
pub struct Bank {
    pub config: BankConfig,
    pub stans: Arc<StanAllocator>,
    pub links: Vec<LinkHandle>,
    pub breaker: Arc<Mutex<Breaker>>,
}

impl Bank {
    pub fn new(
        config: BankConfig,
        stans: Arc<StanAllocator>,
        links: Vec<LinkHandle>,
        breaker: BreakerConfig,
    ) -> Self {
        Bank {
            config,
            stans,
            links,
            breaker: Arc::new(Mutex::new(Breaker::new(breaker, Instant::now()))),
        }
    }

    /// The ready link with the fewest requests in flight.
    pub fn pick(&self) -> Option<&LinkHandle> {
        self.links
            .iter()
            .filter(|l| l.state() == LinkState::Ready)
            .min_by_key(|l| l.in_flight())
    }

    pub fn is_reachable(&self) -> bool {
        self.links.iter().any(|l| l.state() == LinkState::Ready)
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The breaker holds counters only; a panic elsewhere cannot leave it inconsistent.
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request be sent to this bank now? `false` while the breaker is open. In
    /// half-open a `true` is the single probe: its outcome must be recorded (or the
    /// request abandoned) for the breaker to move on.
    pub fn allow(&self, now: Instant) -> bool {
        self.breaker().allow(now)
    }

    /// The bank answered (`answered`) or a request to it timed out.
    pub fn record(&self, now: Instant, answered: bool) {
        self.breaker().record(now, answered);
    }

    /// Records a request's outcome: answered or timed out feed the breaker; a lost link
    /// says nothing about the bank and only frees a probe.
    pub fn record_outcome(&self, now: Instant, outcome: &Outcome) {
        match outcome {
            Outcome::Answered(_) => self.record(now, true),
            Outcome::TimedOut => self.record(now, false),
            Outcome::LinkLost | Outcome::NotSent => self.abandon(now),
        }
    }

    /// A request [`allow`](Self::allow)ed was not sent after all.
    pub fn abandon(&self, now: Instant) {
        self.breaker().abandon(now);
    }

    pub fn breaker_state(&self, now: Instant) -> BreakerState {
        self.breaker().state(now)
    }
}
