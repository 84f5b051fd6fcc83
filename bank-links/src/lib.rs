//! Persistent links to banks.
//!
//! - [`stan`]: STAN allocation that never hands out a number still in flight.
//! - [`link`]: the sans-IO link state machine: sign-on, echo, matching, timeouts. It takes
//!   `now` and inputs and returns frames to send and events; no sockets, no sleeps.
//! - [`tcp`]: the tokio shell that runs one [`link::Link`] over TCP, reconnecting with backoff.
//! - [`bank`]: a bank's set of links, spreading traffic by least in-flight.

pub mod bank;
pub mod link;
pub mod stan;
pub mod tcp;

pub use bank::{Bank, BankConfig};
pub use link::{Event, Link, LinkConfig, LinkState, MatchKey, Outcome};
pub use stan::StanAllocator;
pub use tcp::{LinkError, LinkHandle, Reply};
