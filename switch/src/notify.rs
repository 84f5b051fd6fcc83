//! Notifications to merchants (0620): a later change of a transaction, stored durably in
//! the same commit as the change, then delivered at least once to a signed-on connection
//! of the merchant and repeated until the merchant answers 0630. A merchant that was away
//! gets them when it next signs on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codec::{Message, MessageBuilder, Mti, tlv};
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::db::DbError;
use crate::merchants::Merchants;
use crate::payments::{TXN_COLUMNS, TxnRow};

/// Notifications sent per merchant per round at most.
pub const NOTIFY_BATCH_MAX: i64 = 100;
/// The notifier looks for due notifications at least this often.
pub const NOTIFY_POLL_MS: u64 = 500;
/// The first repeat of an unanswered notification comes after this; repeats double up to
/// [`NOTIFY_RETRY_MAX_MS`].
pub const NOTIFY_RETRY_MS: u64 = 2_000;
pub const NOTIFY_RETRY_MAX_MS: u64 = 60_000;

/// Stores a notification of `event` about the payment `root_id`, caused by transaction
/// `source_id`, with the payment's status as it is inside `tx` (so call it after the
/// change). A duplicate (same source and event) is ignored.
pub async fn enqueue<C: GenericClient>(
    tx: &C,
    root_id: i64,
    source_id: i64,
    event: &str,
) -> Result<(), DbError> {
    let q = format!("SELECT {TXN_COLUMNS}, merchant_id FROM transactions WHERE id = $1");
    let row = tx.query_one(&q, &[&root_id]).await?;
    let root = TxnRow::from_row(&row);
    let merchant_id: String = row.get(21);
    let status = root.payment().status();
    tx.execute(
        "INSERT INTO notifications (merchant_id, terminal_id, transaction_id, event, status, rrn, order_ref) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (transaction_id, event) DO NOTHING",
        &[&merchant_id, &root.terminal_id, &source_id, &event, &status.as_str(), &root.rrn, &root.order_ref],
    )
    .await?;
    Ok(())
}

/// A signed-on connection's way to send.
#[derive(Debug, Clone)]
struct Outlet {
    session: u64,
    tx: mpsc::Sender<Bytes>,
    signed_on: Arc<AtomicBool>,
}

/// Connections by merchant, for delivering notifications.
#[derive(Debug, Default)]
pub struct Sessions {
    by_merchant: Mutex<HashMap<String, Vec<Outlet>>>,
    /// Wakes the notifier (a merchant signed on, a notification was stored).
    pub wake: Notify,
}

impl Sessions {
    pub fn register(
        &self,
        merchant: &str,
        session: u64,
        tx: mpsc::Sender<Bytes>,
        signed_on: Arc<AtomicBool>,
    ) {
        let mut m = self.by_merchant.lock().expect("sessions lock");
        m.entry(merchant.to_string()).or_default().push(Outlet {
            session,
            tx,
            signed_on,
        });
    }

    pub fn unregister(&self, merchant: &str, session: u64) {
        let mut m = self.by_merchant.lock().expect("sessions lock");
        if let Some(v) = m.get_mut(merchant) {
            v.retain(|o| o.session != session);
            if v.is_empty() {
                m.remove(merchant);
            }
        }
    }

    /// Merchants with at least one signed-on connection here.
    fn signed_on(&self) -> Vec<String> {
        let m = self.by_merchant.lock().expect("sessions lock");
        m.iter()
            .filter(|(_, v)| v.iter().any(|o| o.signed_on.load(Ordering::Relaxed)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Hands a message to one signed-on connection of the merchant; false if none took it.
    fn deliver(&self, merchant: &str, msg: Bytes) -> bool {
        let m = self.by_merchant.lock().expect("sessions lock");
        let Some(v) = m.get(merchant) else {
            return false;
        };
        v.iter()
            .filter(|o| o.signed_on.load(Ordering::Relaxed))
            .any(|o| o.tx.try_send(msg.clone()).is_ok())
    }
}

/// The pause before repeat number `attempts` of a notification.
pub fn retry_ms(attempts: u32) -> u64 {
    NOTIFY_RETRY_MS
        .saturating_mul(1u64 << attempts.min(16))
        .min(NOTIFY_RETRY_MAX_MS)
}

/// Delivers due notifications to signed-on merchants until shutdown.
pub async fn run(
    pool: Pool,
    sessions: Arc<Sessions>,
    merchants: Arc<Merchants>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sessions.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(NOTIFY_POLL_MS)) => {}
        }
        let online = sessions.signed_on();
        if online.is_empty() {
            continue;
        }
        if let Err(e) = round(&pool, &sessions, &merchants, &online).await {
            tracing::warn!(error = %e, "notification round failed");
        }
    }
}

async fn round(
    pool: &Pool,
    sessions: &Sessions,
    merchants: &Merchants,
    online: &[String],
) -> Result<(), DbError> {
    let de7 =
        String::from_utf8_lossy(&codec::clock::transmission(codec::clock::unix_now())).into_owned();
    let client = pool.get().await?;
    // Claim with a lease (next_attempt_at) so two instances do not send the same one at once.
    let rows = client
        .query(
            "WITH due AS (
               SELECT id FROM notifications
               WHERE merchant_id = ANY($1) AND delivered_at IS NULL AND next_attempt_at <= now()
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE notifications n SET attempts = n.attempts + 1,
               next_attempt_at = now() + (least($4::bigint * power(2, least(n.attempts, 16))::bigint, $5::bigint)
                 * interval '1 millisecond'),
               stan = coalesce(n.stan, lpad((n.id % 1000000)::text, 6, '0')),
               transmitted_at = coalesce(n.transmitted_at, $3)
             FROM due WHERE n.id = due.id
             RETURNING n.id, n.merchant_id, n.terminal_id, n.event, n.status, n.rrn, n.order_ref, n.stan,
               n.transmitted_at, n.attempts",
            &[&online, &NOTIFY_BATCH_MAX, &de7, &(NOTIFY_RETRY_MS as i64), &(NOTIFY_RETRY_MAX_MS as i64)],
        )
        .await?;
    for r in rows {
        let merchant_id: String = r.get(1);
        let Some(merchant) = merchants.get(merchant_id.as_bytes()) else {
            continue;
        };
        let terminal: String = r.get(2);
        let event: String = r.get(3);
        let status: String = r.get(4);
        let rrn: String = r.get(5);
        let order_ref: Option<String> = r.get(6);
        let stan: String = r.get(7);
        let transmitted: String = r.get(8);
        let mut de48 = Vec::new();
        let _ = tlv::push(&mut de48, b"EV", event.as_bytes());
        if let Some(or) = &order_ref {
            let _ = tlv::push(&mut de48, b"OR", or.as_bytes());
        }
        let _ = tlv::push(&mut de48, b"ST", status.as_bytes());
        let mut b = MessageBuilder::new(codec::builtin::merchant(), Mti::NOTIFICATION_ADVICE);
        b.set(7, transmitted.as_bytes())
            .set(11, stan.as_bytes())
            .set(37, rrn.as_bytes())
            .set(41, terminal.as_bytes())
            .set(42, merchant_id.as_bytes())
            .set(48, &de48);
        match b.encode_with_mac(&merchant.mac_key) {
            Ok(bytes) => {
                let sent = sessions.deliver(&merchant_id, bytes);
                tracing::info!(merchant = %merchant_id, event = %event, rrn = %rrn, sent, attempts = r.get::<_, i32>(9),
                    "notification sent");
            }
            Err(e) => tracing::error!(error = %e, "notification could not be encoded"),
        }
    }
    Ok(())
}

/// A merchant's 0630: the notification it answers is delivered.
pub async fn acknowledged(pool: &Pool, merchant_id: &str, msg: &Message) -> Result<bool, DbError> {
    if msg.raw(39) != Some(b"00") {
        return Ok(false);
    }
    let (Some(stan), Some(de7)) = (msg.get_str(11), msg.get_str(7)) else {
        return Ok(false);
    };
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE notifications SET delivered_at = now() \
             WHERE merchant_id = $1 AND stan = $2 AND transmitted_at = $3 AND delivered_at IS NULL",
            &[&merchant_id, &stan.as_ref(), &de7.as_ref()],
        )
        .await?;
    Ok(n > 0)
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
}
