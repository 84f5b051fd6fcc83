//! The load harness behind `loadgen`: open-loop runs against the switch and against a
//! bare relay, with reports and reconciliation.
//!
//! Decisions are plain functions, unit-tested: [`mix`] (what each slot sends),
//! [`schedule`] (when it is due; the rate search), [`stats`] (percentiles, the table),
//! [`reconcile`] (the harness against the bank's record), [`sysstat`] (steal and CPU
//! from /proc), [`proctree`] (CPU by role over a window, by PID tree), [`switchstats`]
//! (journal and Redis figures from two snapshots), [`pg`] (statement and WAL figures), [`svg`]
//! (the chart). [`run`] does the I/O, [`due`] wakes it at each request's due time,
//! [`window`] samples the measured window; [`http`] reads the record and the switch's
//! metrics.

pub mod due;
pub mod http;
pub mod mix;
pub mod pg;
pub mod proctree;
pub mod reconcile;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod svg;
pub mod switchstats;
pub mod sysstat;
pub mod window;
