//! A bank: its links, its STAN space and its dialect; traffic goes to the ready link
//! with the fewest requests in flight.

use std::sync::Arc;

use codec::Dialect;

use crate::link::LinkState;
use crate::stan::StanAllocator;
use crate::tcp::LinkHandle;

/// What the switch knows of a bank.
#[derive(Debug, Clone)]
pub struct BankConfig {
    pub id: String,
    pub dialect: &'static Dialect,
    pub request_timeout_ms: u64,
}

/// A bank and its running links.
#[derive(Debug, Clone)]
pub struct Bank {
    pub config: BankConfig,
    pub stans: Arc<StanAllocator>,
    pub links: Vec<LinkHandle>,
}

impl Bank {
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
}
