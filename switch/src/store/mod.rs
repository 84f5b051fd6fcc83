//! One owner of durable state (placeholder while the store takes shape).

pub mod journal;

pub use journal::{Journal, JournalError, NewTxn, Outcome};
