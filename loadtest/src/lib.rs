//! Load generation and the bank simulator for Switchyard.
//!
//! - [`banksim`]: the simulated bank behind `bank-sim`: bank links in any dialect,
//!   test-card rules, and a record of what it approved and reversed, served over HTTP.
//!   - [`banksim::rules`]: the decisions as plain functions.
//!   - [`banksim::record`]: the record and its JSON shape.
//! - [`merchant`]: a pipelined merchant client (one connection, writer and reader tasks,
//!   answers matched by DE11, DE7, DE41) and the contract's request builders.
//! - [`load`]: the open-loop load harness behind `loadgen`.
//! - [`relay`]: the bare frame relay behind `relay` (the ceiling run).
//! - [`cli`]: what the binaries share at their edges: plain logs, one-line errors.

pub mod banksim;
pub mod chaos;
pub mod cli;
pub mod load;
pub mod merchant;
pub mod relay;
