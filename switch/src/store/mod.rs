//! The one owner of durable state: every statement that reads or changes transactions,
//! ledger postings, the store-and-forward queue (`reversals`), bank advices, `in_doubt`
//! and notifications is in this module, behind [`Store`].
//!
//! The request path and the workers ask [`Store`] in domain terms: ids, [`NewTxn`],
//! [`OutcomeRecord`], [`State`], amounts, [`Transition`]s computed by [`crate::lifecycle`], and
//! answer-shaped values back; never rows or SQL. [`PgStore`] is the PostgreSQL
//! implementation:
//!
//! - [`journal`]: the group-committed writer of the hot path (purchase and
//!   pre-authorisation records and their outcomes, with their postings and reversals);
//! - `payments`: lifecycle steps under the payment's row lock, and transaction ids;
//! - `postings`: ledger postings, the one business-day rule, the ledger's checks and
//!   totals;
//! - `reversals`: the store-and-forward queue, crash recovery, status inquiries;
//! - `advices`: advices banks start;
//! - `notifications`: 0620s to merchants;
//! - `reads`: lookups (recorded answers, live order references, payments, admin);
//! - [`accounts`]: the back office's accounts, sessions, API keys and audit log (its own
//!   [`accounts::AccountStore`], not part of [`Store`]).

pub mod accounts;
pub mod journal;

mod advices;
pub mod leases;
pub mod ledger_reads;
mod notifications;
pub mod operations;
mod payments;
mod pg;
mod postings;
mod reads;
pub mod refund_requests;
mod retention;
mod reversals;
mod rrn;
pub mod search;

use std::sync::Arc;

use async_trait::async_trait;
use codec::Mti;

use crate::answer::{Answer, switch_auth_code};
use crate::checks::{Kind, Rc};
use crate::db::DbError;
use crate::lifecycle::{AdviceEffect, Named, Payment, Transition, Verdict};

pub use crate::lifecycle::State;
pub use journal::{Journal, JournalError, JournalSettings, NewTxn, OutcomeRecord, explain_batch};
pub use notifications::{Event, NOTIFY_RETRY_MAX_MS, NOTIFY_RETRY_MS, retry_ms};
pub use pg::PgStore;
pub use postings::{Total, Violation};
pub use retention::{PRUNE_BATCH_MAX, Pruned};
pub use rrn::{RRN_MODULUS, id_of_rrn, rrn_of};

/// A store operation that failed: the caller answers `96`, retries, or logs, as before
/// the store existed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// This handle records nothing through the journal (tools, workers).
    #[error("this store has no journal")]
    NoJournal,
    /// The task holding a payment's lock ended before answering.
    #[error("payment lock lost")]
    LockLost,
}

impl StoreError {
    /// Whether the write certainly did not happen (as opposed to: it may have committed
    /// while its acknowledgement was lost).
    pub fn certainly_not_written(&self) -> bool {
        matches!(
            self,
            StoreError::Journal(JournalError::NotWritten(_)) | StoreError::NoJournal
        )
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::Db(e.into())
    }
}

/// A merchant request's idempotency key in parts: DE42, DE41 (trimmed), DE11, DE7 and
/// the MTI with a repeat counted as its original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestRef<'a> {
    pub merchant_id: &'a str,
    pub terminal_id: &'a str,
    pub stan: &'a str,
    pub transmitted_at: &'a str,
    pub mti: &'a str,
}

/// What the record says about a request: enough to answer it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub kind: Kind,
    pub state: State,
    /// DE39 as recorded; `None` before an outcome.
    pub response_code: Option<String>,
    pub rrn: String,
    pub auth_code: Option<String>,
    /// The recorded request's content digest (None on rows written before it was kept).
    pub content: Option<crate::content::ContentDigest>,
}

impl Recorded {
    /// The answer the request was given; `None` while its outcome is not recorded (or
    /// its code is unreadable). Approvals of completions, refunds and reversals carry the
    /// switch's own DE38 when the bank gave none (docs/merchant-protocol.md).
    pub fn answer(&self) -> Option<Answer> {
        if self.state == State::Authorising {
            return None;
        }
        let rc = Rc::parse(self.response_code.as_deref()?)?;
        let auth = self.auth_code.clone().or_else(|| {
            (rc == Rc::APPROVED && !self.kind.is_root()).then(|| switch_auth_code(&self.rrn))
        });
        Some(Answer {
            rc,
            rrn: Some(self.rrn.clone()),
            auth,
        })
    }
}

/// The original a request names in DE90: MTI, STAN and DE7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRef {
    pub mti: String,
    pub stan: String,
    pub transmitted_at: String,
}

/// A transaction as the lifecycle reads it. Amounts in minor units; `currency` is the
/// ISO 4217 numeric code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    pub id: i64,
    pub kind: Kind,
    pub state: State,
    pub amount_minor: u64,
    pub currency: u16,
    pub captured_minor: u64,
    pub refunded_minor: u64,
    pub refund_reserved_minor: u64,
    pub completion_pending: bool,
    pub original_id: Option<i64>,
    pub rrn: String,
    pub bank_id: Option<String>,
    pub bank_stan: Option<String>,
    pub bank_transmitted_at: Option<String>,
    pub mti: String,
    pub processing_code: String,
    pub card_enc: Option<Vec<u8>>,
    pub pan_hash: Option<Vec<u8>>,
    pub pan_last4: Option<String>,
    pub order_ref: Option<String>,
    pub terminal_id: String,
    pub merchant_id: String,
    pub response_code: Option<String>,
}

impl TxnRecord {
    /// The payment's money as the rules need it (meaningful on a root row).
    pub fn payment(&self) -> Payment {
        Payment {
            kind: self.kind,
            state: self.state,
            amount_minor: self.amount_minor,
            currency: self.currency,
            captured_minor: self.captured_minor,
            refunded_minor: self.refunded_minor,
            refund_reserved_minor: self.refund_reserved_minor,
            completion_pending: self.completion_pending,
        }
    }

    /// The row as a request naming it sees it.
    pub fn named(&self) -> Named {
        Named {
            kind: self.kind,
            state: self.state,
            amount_minor: self.amount_minor,
            currency: self.currency,
        }
    }
}

/// A payment held under its row lock while a lifecycle request is decided: the named
/// row and the payment's root cannot change meanwhile, on any instance. Dropping it
/// without [`PaymentLock::record`] changes nothing and releases the lock.
#[async_trait]
pub trait PaymentLock: Send + std::fmt::Debug {
    /// The row the request names.
    fn named(&self) -> &TxnRecord;
    /// The payment's root (the named row itself when it is a purchase or
    /// pre-authorisation).
    fn root(&self) -> &TxnRecord;
    /// Records `request` (the completion, refund or reversal row) and applies `change`
    /// in one commit, then releases the lock. `Ok(false)`, with nothing changed, when a
    /// row with the request's key already exists.
    async fn record(
        self: Box<Self>,
        request: NewTxn,
        change: Transition,
    ) -> Result<bool, StoreError>;
}

/// A store-and-forward message due to be sent, claimed with a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueForward {
    /// The queue row.
    pub id: i64,
    /// An advice (a completion, 0220) rather than a reversal (0400).
    pub advice: bool,
    /// The original as the bank saw it, for DE90: a reversal names the transaction it
    /// undoes, an advice the pre-authorisation it completes.
    pub original_mti: String,
    pub original_bank_stan: Option<String>,
    pub original_bank_de7: Option<String>,
    /// Sends so far.
    pub attempts: i32,
    /// Milliseconds since the message was stored.
    pub age_ms: i64,
    pub processing_code: String,
    pub amount_minor: i64,
    pub currency: i16,
    pub rrn: String,
    pub terminal_id: String,
    pub merchant_id: String,
    pub card_enc: Option<Vec<u8>>,
    /// The DE11 and DE7 recorded for the first send (advices: so that DE90 of a later
    /// reversal names the completion as the bank first saw it).
    pub first_stan: Option<String>,
    pub first_de7: Option<String>,
}

/// Merchant notifications (0620) stored and not yet acknowledged (0630).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotificationBacklog {
    /// How many.
    pub pending: i64,
    /// Seconds since the oldest of them was stored (0 when none).
    pub oldest_age_s: i64,
}

/// The store-and-forward backlog of one bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub bank_id: String,
    /// Messages not yet answered.
    pub pending: i64,
    /// Seconds since the oldest of them was stored.
    pub oldest_age_s: i64,
}

/// An unknown-outcome transaction to ask its bank about (0600), claimed for this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// Its pending reversal, settled if the bank says nothing stands.
    pub reversal_id: i64,
    pub rrn: String,
    pub mti: String,
    pub bank_stan: Option<String>,
    pub bank_transmitted_at: Option<String>,
}

/// An advice a bank started (0420/0421 and others), as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankAdvice {
    pub bank_id: String,
    /// Its MTI with a repeat counted as its original.
    pub mti: Mti,
    pub stan: String,
    pub transmitted_at: String,
    /// DE37, naming the transaction it is about.
    pub rrn: Option<String>,
}

/// A notification (0620) due to a merchant, claimed with a lease; the DE11 and DE7 it
/// was first sent with are kept for every repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub merchant_id: String,
    pub terminal_id: String,
    /// DE48 `EV`.
    pub event: String,
    /// DE48 `ST`: the payment's status when the event happened.
    pub status: String,
    pub rrn: String,
    pub order_ref: Option<String>,
    pub stan: String,
    pub transmitted_at: String,
    /// Sends so far, this one included.
    pub attempts: i32,
}

/// Durable state, as the request path and the workers use it. Every method is one
/// atomic step (one commit); `Err` means nothing of it happened, unless said otherwise.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a new purchase or pre-authorisation through the group-committed journal;
    /// `Ok(false)` if a row with the same request key (or a live row with the same order
    /// reference) exists already. Shared (`Arc`): a write retried after a lost
    /// acknowledgement sends the same record again without copying it.
    async fn insert(&self, t: Arc<NewTxn>) -> Result<bool, StoreError>;

    /// Records a purchase's or pre-authorisation's outcome through the journal, with its
    /// postings (an approved purchase) and its reversal (if any), in one commit. `Ok(false)`:
    /// the request was settled already (recovery reversed it, or this outcome was written
    /// before while its acknowledgement was lost) and this write changed nothing, so the
    /// merchant's answer is what the record says.
    async fn record_outcome(&self, o: OutcomeRecord) -> Result<bool, StoreError>;

    /// The first of [`crate::ids::ID_BLOCK`] fresh transaction ids, unique across
    /// instances and restarts.
    async fn id_block(&self) -> Result<i64, StoreError>;

    /// Moves every transaction `instance_id` left without an outcome to `reversing`
    /// (answered `91`) with a reversal to send; how many were found.
    async fn recover(&self, instance_id: i16) -> Result<u64, StoreError>;

    /// [`Store::recover`] of the transactions recorded at least `older_than_ms` ago only:
    /// the live instance's sweep of requests that no request path is resolving any more.
    async fn recover_stale(&self, instance_id: i16, older_than_ms: i64) -> Result<u64, StoreError>;

    /// Takes `instance_id`'s lease for the process `incarnation`, valid `lease_ms`.
    async fn take_lease(
        &self,
        instance_id: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError>;

    /// Renews the lease for another `lease_ms`; `Ok(false)` if this process no longer
    /// holds it (taken over after it expired).
    async fn renew_lease(
        &self,
        instance_id: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Whether the process `incarnation` of `instance_id` still holds its lease (expired
    /// or not: an expired lease not yet taken over still names a process whose
    /// transactions nobody has recovered).
    async fn lease_held(&self, instance_id: i16, incarnation: i64) -> Result<bool, StoreError>;

    /// Takes over, exactly once, every other instance whose lease has expired: its
    /// in-doubt transactions are reversed as [`Store::recover`] does. The instances taken
    /// over, each with how many transactions it left in doubt.
    async fn take_over_expired(&self, own_instance: i16) -> Result<Vec<(i16, u64)>, StoreError>;

    /// What the record says about the request with this key, if it is recorded.
    async fn recorded(&self, key: &RequestRef<'_>) -> Result<Option<Recorded>, StoreError>;

    /// Whether a live purchase or pre-authorisation of the merchant holds `order_ref`.
    async fn order_ref_live(&self, merchant_id: &str, order_ref: &str) -> Result<bool, StoreError>;

    /// The root of the payment the DE90 reference names, read without a lock.
    async fn payment_of(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<TxnRecord>, StoreError>;

    /// The merchant's latest purchase or pre-authorisation with `order_ref`.
    async fn payment_by_order_ref(
        &self,
        merchant_id: &str,
        order_ref: &str,
    ) -> Result<Option<TxnRecord>, StoreError>;

    /// The transaction with this RRN (12 digits), for operators.
    async fn transaction_by_rrn(&self, rrn: &str) -> Result<Option<TxnRecord>, StoreError>;

    /// Locks the row the DE90 reference names and its payment's root; `Ok(None)` when
    /// there is no such row (or its root is missing).
    async fn lock_payment(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<Box<dyn PaymentLock>>, StoreError>;

    /// Settles refund `id` with the bank's `verdict` (and DE38), with its effect on the
    /// payment ([`crate::lifecycle::refund_settled`]), under the payment's lock.
    async fn settle_refund(
        &self,
        id: i64,
        verdict: Verdict,
        auth_code: Option<String>,
    ) -> Result<(), StoreError>;

    /// Claims up to `max` due store-and-forward messages for `bank_id`, in order (never
    /// one of a transaction before an earlier one of it), leased for `lease_ms`.
    async fn claim_forwards(
        &self,
        bank_id: &str,
        max: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueForward>, StoreError>;

    /// Gives up on message `id`: `expired`, for an operator.
    async fn expire_forward(&self, id: i64) -> Result<(), StoreError>;

    /// The bank answered advice `id` with DE39 `rc`.
    async fn advice_answered(&self, id: i64, rc: &str) -> Result<(), StoreError>;

    /// The bank acknowledged reversal `id` with DE39 `rc` (or an inquiry settled it): a
    /// transaction whose outcome was unknown is now `reversed`, its payment changes as
    /// [`crate::lifecycle::reversal_confirmed`] says, and its merchant is notified.
    async fn reversal_answered(&self, id: i64, rc: &str) -> Result<(), StoreError>;

    /// Message `id` went unanswered: count the attempt, repeat after `pause_ms`.
    async fn forward_unanswered(&self, id: i64, pause_ms: i64) -> Result<(), StoreError>;

    /// The store-and-forward backlog per bank (banks with none are absent).
    async fn forward_backlog(&self) -> Result<Vec<Backlog>, StoreError>;

    /// Claims up to `max` unknown-outcome transactions of `bank_id` whose reversal went
    /// unanswered at least once and that were not asked about for `repeat_ms`.
    async fn claim_inquiries(
        &self,
        bank_id: &str,
        max: i64,
        repeat_ms: i64,
    ) -> Result<Vec<Inquiry>, StoreError>;

    /// Records and applies one advice a bank started, exactly once.
    async fn apply_bank_advice(&self, advice: &BankAdvice) -> Result<AdviceEffect, StoreError>;

    /// Claims up to `max` due notifications of the `merchants` signed on here, leased
    /// until their next repeat ([`retry_ms`]); one sent for the first time
    /// takes `transmitted_at` (DE7) and a DE11 of its own.
    async fn claim_notifications(
        &self,
        merchants: &[String],
        max: i64,
        transmitted_at: &str,
    ) -> Result<Vec<Notification>, StoreError>;

    /// The merchant answered the notification it was sent with this DE11 and DE7;
    /// whether one was waiting for that answer.
    async fn notification_answered(
        &self,
        merchant_id: &str,
        stan: &str,
        transmitted_at: &str,
    ) -> Result<bool, StoreError>;

    /// Notifications not yet acknowledged by their merchant (0630), all merchants.
    async fn notification_backlog(&self) -> Result<NotificationBacklog, StoreError>;

    /// The ledger's broken invariants, at most ten per rule (none when sound).
    async fn ledger_violations(&self) -> Result<Vec<Violation>, StoreError>;

    /// Totals per business day, account and currency, optionally for one day
    /// (`YYYY-MM-DD`).
    async fn ledger_totals(&self, day: Option<&str>) -> Result<Vec<Total>, StoreError>;
}

/// A store failure as the API answers it: a value PostgreSQL cannot take (SQLSTATE class
/// 22, data exception: a NUL byte, an unreadable time) is the request's fault (422);
/// anything else is the store being unavailable (503).
pub fn unavailable(e: StoreError) -> admin_http::AdminError {
    if let StoreError::Db(crate::db::DbError::Postgres(pg)) = &e
        && pg.code().is_some_and(|c| c.code().starts_with("22"))
    {
        return admin_http::AdminError::Invalid(format!("a value the database cannot take: {pg}"));
    }
    admin_http::AdminError::Unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(kind: Kind, state: State, rc: Option<&str>, auth: Option<&str>) -> Recorded {
        Recorded {
            kind,
            state,
            response_code: rc.map(str::to_string),
            rrn: "000000123456".into(),
            auth_code: auth.map(str::to_string),
            content: None,
        }
    }

    // Proves a recorded request answers again as it was answered: nothing while its
    // outcome is unknown, the switch's own DE38 only on approvals it gives one to.
    #[test]
    fn recorded_answers() {
        assert_eq!(
            recorded(Kind::Purchase, State::Authorising, None, None).answer(),
            None
        );
        let refund = recorded(Kind::Refund, State::Approved, Some("00"), None).answer();
        assert_eq!(refund.and_then(|a| a.auth), Some("123456".into()));
        let purchase = recorded(Kind::Purchase, State::Approved, Some("00"), None).answer();
        assert_eq!(purchase.map(|a| (a.rc, a.auth)), Some((Rc::APPROVED, None)));
        let declined = recorded(Kind::Refund, State::Declined, Some("51"), None).answer();
        assert_eq!(
            declined.map(|a| (a.rc, a.auth, a.rrn)),
            Some((Rc::INSUFFICIENT_FUNDS, None, Some("000000123456".into())))
        );
        let bank_auth = recorded(Kind::Completion, State::Approved, Some("00"), Some("A1"));
        assert_eq!(bank_auth.answer().and_then(|a| a.auth), Some("A1".into()));
    }
}
