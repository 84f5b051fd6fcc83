//! Persistent links to banks.
//!
//! - [`stan`]: STAN allocation that never hands out a number still in flight.
//! - [`link`]: the sans-IO link state machine: sign-on, echo, matching, timeouts. It takes
//!   `now` and inputs and returns frames to send and events; no sockets, no sleeps.
//! - [`shell`] (also as `tcp`): the tokio shell that runs one [`link::Link`] over TCP,
//!   TLS or QUIC, dialling with backoff or accepting the bank's connections.
//! - [`transport`]: connectors, the listen-mode listener, QUIC parameters.
//! - [`tls`]: certificates per bank (mutual authentication, pinned CA).
//! - [`breaker`]: the per-bank circuit breaker.
//! - [`bank`]: a bank's set of links, spreading traffic by least in-flight.

pub mod backoff;
pub mod bank;
pub mod breaker;
pub mod link;
pub mod shell;
pub mod stan;
pub mod tls;
pub mod transport;

/// The shell's former name, kept for callers.
pub use shell as tcp;

pub use backoff::Backoff;
pub use bank::{Bank, BankConfig};
pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use link::{Event, Link, LinkConfig, LinkState, MatchKey, Outcome, TransmitKind};
pub use shell::{LinkError, LinkHandle, Reply, Responder, spawn_link};
pub use stan::StanAllocator;
pub use tls::{TlsError, TlsMaterial};
pub use transport::{BankListener, Connector, LinkEndpoint, TransportError, TransportKind};
