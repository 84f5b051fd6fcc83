//! The Switchyard switch: merchant sessions to bank links, durable and idempotent.
//!
//! - [`advices`]: bank-initiated advices: what each does, acknowledged once recorded.
//! - [`admin`]: the switch behind the admin HTTP surface; the gauge sampler.
//! - [`backoffice`], [`backoffice_ops`], [`refund_desk`]: the back office's accounts,
//!   refunds, captures, voids, store-and-forward queue and API keys.
//! - [`reference`], [`overview`]: the back office's routes, links, settlement totals and
//!   balances; the console overview's figures from the metrics registry.
//! - [`bank_io`]: sending the switch's own requests to a bank.
//! - [`config`]: the TOML file with environment overrides, checked before any port is bound.
//! - [`app`]: start-up (migrations, reference data, recovery, links, listeners) and shutdown.
//! - [`server`], [`session`], [`quic`]: merchant listeners (TCP, TLS, QUIC) and connections.
//! - [`engine`]: the request path, ordering the contract's checks; [`engine::payments`]:
//!   completion, refund, reversal and status.
//! - [`checks`]: the checks as plain functions; response codes.
//! - [`answer`]: answers, their Redis form, and response messages.
//! - [`limiter`]: Redis: idempotency claim, rate limit and card velocity in one script.
//! - [`replays`]: recorded answers copied to Redis in batches, off the request path.
//! - [`inquiry`]: status inquiries to banks about unknown outcomes, at a bounded rate.
//! - [`inflight`]: requests in flight on this instance, for retransmissions.
//! - [`content`]: the content digest that tells a retransmission from a reused identity.
//! - [`store`]: the one owner of durable state (transactions, postings, the
//!   store-and-forward queue, bank advices, in-doubt rows, notifications) behind the
//!   [`store::Store`] trait; [`store::PgStore`] in PostgreSQL, with the group-committed
//!   [`store::journal`] for the hot path. Nothing else writes SQL about them.
//! - [`ledger`]: the double-entry ledger: checks, balances, settlement totals.
//! - [`lifecycle`]: the transaction state machine: what may follow what, and each step's
//!   effect as a plain [`lifecycle::Transition`] the store applies.
//! - [`notify`]: notifications (0620) to merchants: stored, delivered, repeated until 0630.
//! - [`reversals`]: the store-and-forward workers (reversals and completion advices).
//! - [`clock`]: the clock the request path reads (system, or virtual in the simulation).
//! - [`mem`]: the store and the claims in memory, for the seeded simulation (`sim/`).
//! - [`routing`]: BIN ranges to banks.
//! - [`merchants`]: merchant records and their in-memory table.
//! - [`metrics`]: Prometheus metrics.
//! - [`crypto`]: sealing MAC keys and card data; the card-number hash.
//! - [`lease`]: this instance's lease in PostgreSQL; takeover of instances that never return.
//! - [`ids`]: transaction ids (from blocks the store reserves) and RRNs.
//! - [`db`], [`dialects`]: the PostgreSQL pool and migrations; dialect loading.

pub mod accounts;
pub mod admin;
pub mod advices;
pub mod answer;
pub mod app;
pub mod backoffice;
pub mod backoffice_ops;
pub mod bank_io;
pub mod checks;
pub mod clock;
pub mod config;
pub mod content;
pub mod crypto;
pub mod db;
pub mod dialects;
pub mod engine;
pub mod ids;
pub mod inflight;
pub mod inquiry;
pub mod lease;
pub mod ledger;
pub mod lifecycle;
pub mod limiter;
pub mod mem;
pub mod merchants;
pub mod metrics;
pub mod notify;
pub mod overview;
pub mod quic;
pub mod reference;
pub mod refund_desk;
pub mod replays;
pub mod reversals;
pub mod routing;
pub mod server;
pub mod session;
pub mod store;

// The old path of the request path's lifecycle messages (the back office's refund desk
// reads a limit there).
pub use engine::payments;
