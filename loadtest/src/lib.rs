//! Load generation and the bank simulator for Switchyard.
//!
//! - [`banksim`]: the simulated bank behind `bank-sim`: bank links in any dialect,
//!   test-card rules, and a record of what it approved and reversed, served over HTTP.
//!   - [`banksim::rules`]: the decisions as plain functions.
//!   - [`banksim::record`]: the record and its JSON shape.

pub mod banksim;
