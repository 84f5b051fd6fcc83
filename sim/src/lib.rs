//! The seeded simulation of the whole switch (issue 10).
//!
//! One process, one thread, tokio's paused clock: merchants ([`merchant`]) send their
//! traffic to the real request path ([`switch::engine::Engine`]) and workers (store and
//! forward, inquiries, notifications, the lease's sweep) over the in-memory store and
//! claims ([`switch::mem`]) and simulated banks ([`bank`]) behind the bank seam
//! ([`bank_links::Wire`]). Faults ([`run`]): banks drop, delay, duplicate, answer late,
//! lose the link and reverse charges on their own; the store fails commits and loses
//! acknowledgements of commits that succeeded; Redis is flushed or unreachable; the
//! switch crashes and restarts. At quiescence the invariants ([`check`]) are checked.
//! The seed decides every choice, so a seed names a run.

pub mod bank;
pub mod check;
pub mod dice;
pub mod merchant;
pub mod run;
pub mod world;

pub use run::{Options, Report, run_seed};
