//! Notifications (0620) to merchants: stored in the same commit as the change they
//! tell of, claimed with a lease for delivery, and marked delivered by the merchant's
//! 0630.

use deadpool_postgres::{GenericClient, Pool};

use super::{Notification, NotificationBacklog, StoreError, TxnRecord};
use crate::checks::Kind;
use crate::lifecycle::Status;

/// The first repeat of an unanswered notification comes after this; repeats double up to
/// [`NOTIFY_RETRY_MAX_MS`].
pub const NOTIFY_RETRY_MS: u64 = 2_000;
pub const NOTIFY_RETRY_MAX_MS: u64 = 60_000;

/// What a notification tells the merchant of (DE48 `EV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A purchase or pre-authorisation answered `91` is confirmed reversed at the bank.
    TransactionReversed,
    /// A refund answered `91` is confirmed reversed.
    RefundReversed,
    /// A completion whose outcome was unknown is confirmed reversed.
    CompletionReversed,
    /// The bank reversed a payment on its own (an 0420 advice).
    BankReversed,
    /// A refund requested in the back office was executed (DE48 `ST` says the payment's
    /// status after it; a declined refund leaves it unchanged).
    BackOfficeRefund,
    /// A capture (completion) requested in the back office was executed.
    BackOfficeCapture,
    /// A void (reversal) requested in the back office was executed.
    BackOfficeVoid,
}

impl Event {
    /// The event as DE48 `EV` carries it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Event::TransactionReversed => "TRANSACTION_REVERSED",
            Event::RefundReversed => "REFUND_REVERSED",
            Event::CompletionReversed => "COMPLETION_REVERSED",
            Event::BankReversed => "BANK_REVERSED",
            Event::BackOfficeRefund => "BACK_OFFICE_REFUND",
            Event::BackOfficeCapture => "BACK_OFFICE_CAPTURE",
            Event::BackOfficeVoid => "BACK_OFFICE_VOID",
        }
    }

    /// The event a merchant is told of when a transaction of `kind`, whose outcome was
    /// unknown, is confirmed reversed at the bank.
    pub fn reversed(kind: Kind) -> Event {
        match kind {
            Kind::Refund => Event::RefundReversed,
            Kind::Completion => Event::CompletionReversed,
            _ => Event::TransactionReversed,
        }
    }
}

/// The pause before repeat number `attempts` of a notification.
pub fn retry_ms(attempts: u32) -> u64 {
    bank_links::Backoff {
        min_ms: NOTIFY_RETRY_MS,
        max_ms: NOTIFY_RETRY_MAX_MS,
    }
    .delay_ms(attempts)
}

/// Stores a notification of `event` about the payment `root`, caused by transaction
/// `source_id`, with the payment's `status` after the change. A duplicate (same source
/// and event) is ignored.
pub(super) async fn enqueue<C: GenericClient>(
    c: &C,
    root: &TxnRecord,
    status: Status,
    source_id: i64,
    event: Event,
) -> Result<(), StoreError> {
    // Prepared once per connection: a reversal's acknowledgement enqueues one per
    // timed-out request, and an unprepared statement cost a parse round trip and a fresh
    // plan each time (0.18 ms mean in pg_stat_statements at 5,000/s, docs/loadtest.md).
    let insert = c
        .prepare_cached(
            "INSERT INTO notifications (merchant_id, terminal_id, transaction_id, event, status, rrn, order_ref) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (transaction_id, event) DO NOTHING",
        )
        .await?;
    c.execute(
        &insert,
        &[
            &root.merchant_id,
            &root.terminal_id,
            &source_id,
            &event.as_str(),
            &status.as_str(),
            &root.rrn,
            &root.order_ref,
        ],
    )
    .await?;
    Ok(())
}

/// Attempts after which the pause stops growing ([`retry_ms`] is at its
/// maximum well before): the last index of [`retry_table`].
const RETRY_TABLE_LAST: u32 = 16;

/// The pause before repeat `k` for k in `0..=RETRY_TABLE_LAST`, in ms: the tested
/// [`retry_ms`] handed to SQL, which picks each row's by its attempts.
fn retry_table() -> Vec<i64> {
    (0..=RETRY_TABLE_LAST)
        .map(|k| i64::try_from(retry_ms(k)).unwrap_or(i64::MAX))
        .collect()
}

/// Claims due notifications of the `online` merchants with a lease (`next_attempt_at`,
/// backing off as [`retry_ms`] says) so two instances do not send the same
/// one at once. A first send takes `de7` and a DE11 from the notification's id.
pub(super) async fn claim(
    pool: &Pool,
    online: &[String],
    max: i64,
    de7: &str,
) -> Result<Vec<Notification>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "WITH due AS (
               SELECT id FROM notifications
               WHERE merchant_id = ANY($1) AND delivered_at IS NULL AND next_attempt_at <= now()
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE notifications n SET attempts = n.attempts + 1,
               next_attempt_at = now() + ($4::bigint[])[least(n.attempts, $5::int) + 1]
                 * interval '1 millisecond',
               stan = coalesce(n.stan, lpad((n.id % 1000000)::text, 6, '0')),
               transmitted_at = coalesce(n.transmitted_at, $3)
             FROM due WHERE n.id = due.id
             RETURNING n.id, n.merchant_id, n.terminal_id, n.event, n.status, n.rrn, n.order_ref, n.stan,
               n.transmitted_at, n.attempts",
            &[&online, &max, &de7, &retry_table(), &(RETRY_TABLE_LAST as i32)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Notification {
            merchant_id: r.get(1),
            terminal_id: r.get(2),
            event: r.get(3),
            status: r.get(4),
            rrn: r.get(5),
            order_ref: r.get(6),
            stan: r.get(7),
            transmitted_at: r.get(8),
            attempts: r.get(9),
        })
        .collect())
}

/// The merchant answered the notification sent with this DE11 and DE7.
pub(super) async fn answered(
    pool: &Pool,
    merchant_id: &str,
    stan: &str,
    de7: &str,
) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE notifications SET delivered_at = now() \
             WHERE merchant_id = $1 AND stan = $2 AND transmitted_at = $3 AND delivered_at IS NULL",
            &[&merchant_id, &stan, &de7],
        )
        .await?;
    Ok(n > 0)
}

/// Undelivered notifications of every merchant (the partial index
/// `notifications_undelivered` holds exactly these).
pub(super) async fn backlog(pool: &Pool) -> Result<NotificationBacklog, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch from now() - min(created_at)), 0)::bigint \
             FROM notifications WHERE delivered_at IS NULL",
            &[],
        )
        .await?;
    Ok(NotificationBacklog {
        pending: row.get(0),
        oldest_age_s: row.get(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves repeats back off by doubling and stay bounded.
    #[test]
    fn retry_bounded() {
        assert_eq!(retry_ms(0), 2_000);
        assert_eq!(retry_ms(3), 16_000);
        assert_eq!(retry_ms(30), NOTIFY_RETRY_MAX_MS);
    }

    // Proves each reversed kind names its event, and the events read as the contract
    // spells them.
    #[test]
    fn events() {
        assert_eq!(Event::reversed(Kind::Refund), Event::RefundReversed);
        assert_eq!(Event::reversed(Kind::Completion), Event::CompletionReversed);
        assert_eq!(
            Event::reversed(Kind::Purchase).as_str(),
            "TRANSACTION_REVERSED"
        );
        assert_eq!(Event::BankReversed.as_str(), "BANK_REVERSED");
    }
}
