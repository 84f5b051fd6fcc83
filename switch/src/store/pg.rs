//! [`PgStore`]: the [`Store`] in PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio::sync::Semaphore;

use super::{
    Backlog, BankAdvice, DueForward, Inquiry, Journal, NewTxn, Notification, NotificationBacklog,
    OriginalRef, OutcomeRecord, PaymentLock, Recorded, RequestRef, Store, StoreError, TxnRecord,
};
use super::{Total, Violation};
use super::{advices, leases, notifications, payments, postings, reads, reversals};
use crate::lifecycle::AdviceEffect;
use crate::lifecycle::Verdict;

/// Payment locks take at most the pool's size divided by this: each holds a connection
/// until recorded or dropped, and the journal's lookups, the workers and the admin surface
/// need the rest.
pub(super) const PAYMENT_LOCKS_POOL_DIVISOR: usize = 2;

/// The store in PostgreSQL: the pool for everything, and the group-committed
/// [`Journal`] for the hot path's records when it has one.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool,
    /// Payment locks held at once: each holds a pooled connection until it is recorded or
    /// dropped, so at most half the pool, leaving the rest to everything else.
    payment_locks: Arc<Semaphore>,
    journal: Option<Journal>,
    /// The business day starts at this hour, UTC (0..24).
    cutover_hours: i32,
}

impl PgStore {
    /// A store over `pool` without a journal: [`Store::insert`] and
    /// [`Store::record_outcome`] fail with [`StoreError::NoJournal`]. For tools and the
    /// background workers, so that they do not keep the journal running at shutdown.
    pub fn new(pool: Pool, business_day_cutover_hour: u8) -> PgStore {
        assert!(business_day_cutover_hour < 24);
        let locks_max = (pool.status().max_size / PAYMENT_LOCKS_POOL_DIVISOR).max(1);
        PgStore {
            pool,
            payment_locks: Arc::new(Semaphore::new(locks_max)),
            journal: None,
            cutover_hours: i32::from(business_day_cutover_hour),
        }
    }

    /// Removes settled payments of business days before `before` (`YYYY-MM-DD`) with
    /// everything that names them: the retention command (`switchyard prune`). Not part
    /// of [`Store`]: no request path prunes.
    pub async fn prune_before(&self, before: &str) -> Result<super::Pruned, StoreError> {
        super::retention::prune(&self.pool, self.cutover_hours, before).await
    }

    /// The same store recording through `journal` (which ends, writing what is queued,
    /// once every handle to it is dropped).
    pub fn with_journal(self, journal: Journal) -> PgStore {
        PgStore {
            journal: Some(journal),
            ..self
        }
    }

    fn journal(&self) -> Result<&Journal, StoreError> {
        self.journal.as_ref().ok_or(StoreError::NoJournal)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn insert(&self, t: Arc<NewTxn>) -> Result<bool, StoreError> {
        Ok(self.journal()?.insert(t).await?)
    }

    async fn record_outcome(&self, o: OutcomeRecord) -> Result<bool, StoreError> {
        Ok(self.journal()?.record_outcome(o).await?)
    }

    async fn id_block(&self) -> Result<i64, StoreError> {
        payments::id_block(&self.pool).await
    }

    async fn recover(&self, instance_id: i16) -> Result<u64, StoreError> {
        reversals::recover(&self.pool, instance_id).await
    }

    async fn recover_stale(&self, instance_id: i16, older_than_ms: i64) -> Result<u64, StoreError> {
        reversals::recover_stale(&self.pool, instance_id, older_than_ms).await
    }

    async fn take_lease(
        &self,
        instance_id: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        leases::take(&self.pool, instance_id, incarnation, lease_ms).await
    }

    async fn renew_lease(
        &self,
        instance_id: i16,
        incarnation: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        leases::renew(&self.pool, instance_id, incarnation, lease_ms).await
    }

    async fn lease_held(&self, instance_id: i16, incarnation: i64) -> Result<bool, StoreError> {
        leases::held(&self.pool, instance_id, incarnation).await
    }

    async fn take_over_expired(&self, own_instance: i16) -> Result<Vec<(i16, u64)>, StoreError> {
        leases::take_over_expired(&self.pool, own_instance).await
    }

    async fn recorded(&self, key: &RequestRef<'_>) -> Result<Option<Recorded>, StoreError> {
        reads::recorded(&self.pool, key).await
    }

    async fn order_ref_live(&self, merchant_id: &str, order_ref: &str) -> Result<bool, StoreError> {
        reads::order_ref_live(&self.pool, merchant_id, order_ref).await
    }

    async fn payment_of(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<TxnRecord>, StoreError> {
        reads::payment_of(&self.pool, merchant_id, terminal_id, original).await
    }

    async fn payment_by_order_ref(
        &self,
        merchant_id: &str,
        order_ref: &str,
    ) -> Result<Option<TxnRecord>, StoreError> {
        reads::payment_by_order_ref(&self.pool, merchant_id, order_ref).await
    }

    async fn transaction_by_rrn(&self, rrn: &str) -> Result<Option<TxnRecord>, StoreError> {
        reads::by_rrn(&self.pool, rrn).await
    }

    async fn lock_payment(
        &self,
        merchant_id: &str,
        terminal_id: &str,
        original: &OriginalRef,
    ) -> Result<Option<Box<dyn PaymentLock>>, StoreError> {
        let cutover = self.cutover_hours;
        let permit = self
            .payment_locks
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::LockLost)?;
        payments::lock(
            &self.pool,
            cutover,
            permit,
            merchant_id,
            terminal_id,
            original,
        )
        .await
    }

    async fn settle_refund(
        &self,
        id: i64,
        verdict: Verdict,
        auth_code: Option<String>,
    ) -> Result<(), StoreError> {
        payments::settle_refund(&self.pool, self.cutover_hours, id, verdict, auth_code).await
    }

    async fn claim_forwards(
        &self,
        bank_id: &str,
        max: i64,
        lease_ms: i64,
    ) -> Result<Vec<DueForward>, StoreError> {
        reversals::claim(&self.pool, bank_id, max, lease_ms).await
    }

    async fn expire_forward(&self, id: i64) -> Result<(), StoreError> {
        reversals::expire(&self.pool, id).await
    }

    async fn advice_answered(&self, id: i64, rc: &str) -> Result<(), StoreError> {
        reversals::advice_answered(&self.pool, id, rc).await
    }

    async fn reversal_answered(&self, id: i64, rc: &str) -> Result<(), StoreError> {
        reversals::reversal_answered(&self.pool, id, rc).await
    }

    async fn forward_unanswered(&self, id: i64, pause_ms: i64) -> Result<(), StoreError> {
        reversals::unanswered(&self.pool, id, pause_ms).await
    }

    async fn forward_backlog(&self) -> Result<Vec<Backlog>, StoreError> {
        reversals::backlog(&self.pool).await
    }

    async fn claim_inquiries(
        &self,
        bank_id: &str,
        max: i64,
        repeat_ms: i64,
    ) -> Result<Vec<Inquiry>, StoreError> {
        reversals::claim_inquiries(&self.pool, bank_id, max, repeat_ms).await
    }

    async fn apply_bank_advice(&self, advice: &BankAdvice) -> Result<AdviceEffect, StoreError> {
        advices::apply(&self.pool, self.cutover_hours, advice).await
    }

    async fn claim_notifications(
        &self,
        merchants: &[String],
        max: i64,
        transmitted_at: &str,
    ) -> Result<Vec<Notification>, StoreError> {
        notifications::claim(&self.pool, merchants, max, transmitted_at).await
    }

    async fn notification_backlog(&self) -> Result<NotificationBacklog, StoreError> {
        notifications::backlog(&self.pool).await
    }

    async fn notification_answered(
        &self,
        merchant_id: &str,
        stan: &str,
        transmitted_at: &str,
    ) -> Result<bool, StoreError> {
        notifications::answered(&self.pool, merchant_id, stan, transmitted_at).await
    }

    async fn ledger_violations(&self) -> Result<Vec<Violation>, StoreError> {
        postings::violations(&self.pool).await
    }

    async fn ledger_totals(&self, day: Option<&str>) -> Result<Vec<Total>, StoreError> {
        postings::totals(&self.pool, day).await
    }
}
