//! A bank: its links, its STAN space, its dialect and its circuit breaker; traffic goes
//! to the ready link with the fewest requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::Dialect;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::link::{LinkState, MatchKey, Outcome};
use crate::shell::LinkHandle;
use crate::stan::StanAllocator;

/// What the switch knows of a bank.
#[derive(Debug, Clone)]
pub struct BankConfig {
    pub id: String,
    pub dialect: &'static Dialect,
    pub request_timeout_ms: u64,
}

/// What an exchange with a bank waits on: its [`Outcome`].
pub type Exchange<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Something other than the bank's links that carries its requests: the seeded
/// simulation's banks (`switch::sim`). Production banks have none and use their links.
pub trait Wire: Send + Sync + std::fmt::Debug {
    /// Whether a request could be handed over now (a link is ready).
    fn ready(&self) -> bool;
    /// Sends `message` keyed by `key` and waits up to `timeout` for its answer.
    fn exchange(&self, key: MatchKey, message: Bytes, timeout: Duration) -> Exchange<'_>;
}

/// A bank and its running links. Clones share the links and the breaker.
#[derive(Debug, Clone)]
pub struct Bank {
    pub config: BankConfig,
    pub stans: Arc<StanAllocator>,
    pub links: Vec<LinkHandle>,
    pub breaker: Arc<Mutex<Breaker>>,
    /// Carries the requests instead of `links` when set (simulation only).
    pub wire: Option<Arc<dyn Wire>>,
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
            wire: None,
        }
    }

    /// A bank whose requests travel over `wire` instead of links, its breaker started at
    /// `now` (the simulation's clock).
    pub fn over_wire(
        config: BankConfig,
        stans: Arc<StanAllocator>,
        wire: Arc<dyn Wire>,
        breaker: BreakerConfig,
        now: Instant,
    ) -> Self {
        Bank {
            config,
            stans,
            links: Vec::new(),
            breaker: Arc::new(Mutex::new(Breaker::new(breaker, now))),
            wire: Some(wire),
        }
    }

    /// Sends `message` keyed by `key` on the ready link with the fewest requests in
    /// flight (or the wire) and waits up to `timeout`: [`Outcome::NotSent`] when no link
    /// is ready or the link refused it.
    pub async fn exchange(&self, key: MatchKey, message: Bytes, timeout: Duration) -> Outcome {
        if let Some(wire) = &self.wire {
            return wire.exchange(key, message, timeout).await;
        }
        let Some(link) = self.pick() else {
            return Outcome::NotSent;
        };
        link.send(key, message, timeout)
            .await
            .unwrap_or(Outcome::NotSent)
    }

    /// The ready link with the fewest requests in flight.
    pub fn pick(&self) -> Option<&LinkHandle> {
        self.links
            .iter()
            .filter(|l| l.state() == LinkState::Ready)
            .min_by_key(|l| l.in_flight())
    }

    pub fn is_reachable(&self) -> bool {
        if let Some(wire) = &self.wire {
            return wire.ready();
        }
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
