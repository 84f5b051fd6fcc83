//! The fault run behind `scripts/chaos.sh` and `chaos-merchant`: a careful merchant that
//! retransmits as the merchant contract says while the switch, Redis, PostgreSQL and the
//! bank links are broken on a schedule, and a three-way reconciliation afterwards
//! (the merchant's answers, the bank simulators' records, the switch's journal and
//! ledger).
//!
//! Decisions are plain functions, unit-tested: [`plan`] (what each order sends and when a
//! request is retransmitted or given up), [`verdict`] (lost, doubled, phantom and
//! unresolved orders from the three records). [`client`] is the async shell that sends,
//! [`journal`] reads the switch's database.

pub mod client;
pub mod journal;
pub mod plan;
pub mod verdict;
