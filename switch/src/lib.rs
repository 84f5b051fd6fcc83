//! The Switchyard switch: merchant sessions to bank links, durable and idempotent.
//!
//! Modules in five groups. The request path, the workers and the back office use the
//! store; the store uses only plain types and decisions (`checks`, `lifecycle`,
//! `answer`, `content`, `crypto`), `db` and `metrics`, never the engine, a worker or the
//! back office: no import circles (issue 10). Only what other crates (the binary,
//! `sim/`, `tests/`) use is `pub`.
//!
//! **The request path: a merchant's message to its answer**
//!
//! - [`server`]: merchant listeners (TCP, TLS) within the connection limits.
//! - [`session`]: a merchant connection: frames in, a task per request, answers out.
//! - [`quic`]: merchant connections over QUIC.
//! - [`engine`]: the request path, ordering the contract's checks;
//!   [`engine::payments`]: completion, refund, reversal and status.
//! - [`checks`]: the contract's checks as plain functions; response codes.
//! - [`content`]: the content digest that tells a retransmission from a reused
//!   identity.
//! - [`limiter`]: Redis: idempotency claim, rate limit and card velocity in one script.
//! - [`inflight`]: requests in flight on this instance, for retransmissions.
//! - [`routing`]: BIN ranges to banks.
//! - [`merchants`]: merchant records and their in-memory table.
//! - [`bank_io`]: a request to a bank: the exchange that owns the breaker's admission
//!   and the STAN; reading replies.
//! - [`lifecycle`]: the transaction state machine: what may follow what, each step's
//!   effect as a plain [`lifecycle::Transition`], bank advices' effect.
//! - [`answer`]: answers, their Redis form, and response messages.
//! - [`crypto`]: sealing MAC keys and card data; the card-number hash.
//! - [`ids`]: transaction ids (from blocks the store reserves).
//! - [`clock`]: the clock the request path reads (system, or virtual in the
//!   simulation).
//!
//! **The store: durable state**
//!
//! - [`store`]: the one owner of durable state behind the [`store::Store`] trait;
//!   [`store::PgStore`] in PostgreSQL with the group-committed [`store::journal`].
//!   Nothing else writes SQL about it.
//! - [`ledger`]: the double-entry ledger: checks, balances, settlement totals.
//! - [`mem`]: the store and the claims in memory, for the seeded simulation (`sim/`).
//! - [`db`]: the PostgreSQL pool and migrations.
//!
//! **Workers beside the request path**
//!
//! - [`reversals`]: the store-and-forward workers (reversals and completion advices).
//! - [`inquiry`]: status inquiries to banks about unknown outcomes, at a bounded rate.
//! - [`notify`]: notifications (0620) to merchants, repeated until 0630.
//! - [`advices`]: bank-initiated advices, acknowledged once recorded.
//! - [`replays`]: recorded answers copied to Redis in batches.
//! - [`lease`]: this instance's lease; takeover of instances that never return.
//!
//! **The back office**
//!
//! - [`admin`]: the switch behind the admin HTTP surface; the gauge sampler.
//! - [`backoffice`]: the back office's accounts, refunds, captures and voids.
//! - [`backoffice_ops`]: the store-and-forward queue and API keys.
//! - [`refund_desk`]: refund requests and their approval.
//! - [`accounts`]: back-office users and passwords.
//! - [`reference`]: routes, links, settlement totals and balances.
//! - [`overview`]: the console overview's figures from the metrics registry.
//!
//! **Start-up**
//!
//! - [`app`]: start-up (migrations, reference data, recovery, links, listeners) and
//!   shutdown.
//! - [`config`]: the TOML file with environment overrides, checked before any port is
//!   bound.
//! - [`dialects`]: dialect loading.
//! - [`metrics`]: Prometheus metrics.

// The request path: a merchant's message to its answer.
pub(crate) mod answer;
pub(crate) mod bank_io;
pub mod checks;
pub mod clock;
pub(crate) mod content;
pub mod crypto;
pub mod engine;
pub mod ids;
pub mod inflight;
pub mod lifecycle;
pub mod limiter;
pub mod merchants;
pub(crate) mod quic;
pub mod routing;
pub(crate) mod server;
pub(crate) mod session;

// The store: durable state.
pub mod db;
pub mod ledger;
pub mod mem;
pub mod store;

// Workers beside the request path.
pub mod advices;
pub mod inquiry;
pub mod lease;
pub mod notify;
pub mod replays;
pub mod reversals;

// The back office.
pub(crate) mod accounts;
pub(crate) mod admin;
pub mod backoffice;
pub(crate) mod backoffice_ops;
pub(crate) mod overview;
pub mod reference;
pub(crate) mod refund_desk;

// Start-up.
pub mod app;
pub mod config;
pub(crate) mod dialects;
pub mod metrics;
// The old path of the request path's lifecycle messages (the back office's refund desk
// reads a limit there).
pub use engine::payments;
