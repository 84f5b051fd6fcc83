//! Notifications to merchants (0620): a later change of a transaction, stored durably in
//! the same commit as the change, then delivered at least once to a signed-on connection
//! of the merchant and repeated until the merchant answers 0630. A merchant that was away
//! gets them when it next signs on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codec::{EncodeError, MacKey, Message, MessageBuilder, Mti, tlv};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::merchants::Merchants;
use crate::store::{Notification, Store, StoreError};

// What a notification says and when it is repeated are the store's (it schedules the
// repeats); their old paths stay for callers.
pub use crate::store::{Event, NOTIFY_RETRY_MAX_MS, NOTIFY_RETRY_MS, retry_ms};

/// Notifications sent per merchant per round at most.
pub const NOTIFY_BATCH_MAX: i64 = 100;
/// The notifier looks for due notifications at least this often.
pub const NOTIFY_POLL_MS: u64 = 500;
/// A signed-on connection's way to send.
#[derive(Debug, Clone)]
struct Outlet {
    session: u64,
    tx: mpsc::Sender<Bytes>,
    signed_on: Arc<AtomicBool>,
}

/// Connections by merchant, for delivering notifications.
#[derive(Debug, Default)]
pub struct Outlets {
    by_merchant: Mutex<HashMap<String, Vec<Outlet>>>,
    /// Wakes the notifier (a merchant signed on, a notification was stored).
    pub wake: Notify,
}

impl Outlets {
    pub fn register(
        &self,
        merchant: &str,
        session: u64,
        tx: mpsc::Sender<Bytes>,
        signed_on: Arc<AtomicBool>,
    ) {
        let mut m = self.by_merchant.lock().expect("outlets lock");
        m.entry(merchant.to_string()).or_default().push(Outlet {
            session,
            tx,
            signed_on,
        });
    }

    pub fn unregister(&self, merchant: &str, session: u64) {
        let mut m = self.by_merchant.lock().expect("outlets lock");
        if let Some(v) = m.get_mut(merchant) {
            v.retain(|o| o.session != session);
            if v.is_empty() {
                m.remove(merchant);
            }
        }
    }

    /// Merchants with at least one signed-on connection here.
    fn signed_on(&self) -> Vec<String> {
        let m = self.by_merchant.lock().expect("outlets lock");
        m.iter()
            .filter(|(_, v)| v.iter().any(|o| o.signed_on.load(Ordering::Relaxed)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Hands a message to one signed-on connection of the merchant; false if none took it.
    fn deliver(&self, merchant: &str, msg: Bytes) -> bool {
        let m = self.by_merchant.lock().expect("outlets lock");
        let Some(v) = m.get(merchant) else {
            return false;
        };
        v.iter()
            .filter(|o| o.signed_on.load(Ordering::Relaxed))
            .any(|o| o.tx.try_send(msg.clone()).is_ok())
    }
}

/// Delivers due notifications to signed-on merchants until shutdown.
pub async fn run(
    store: Arc<dyn Store>,
    outlets: Arc<Outlets>,
    merchants: Arc<Merchants>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = outlets.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(NOTIFY_POLL_MS)) => {}
        }
        let online = outlets.signed_on();
        if online.is_empty() {
            continue;
        }
        if let Err(e) = round(&*store, &outlets, &merchants, &online).await {
            tracing::warn!(error = %e, "notification round failed");
        }
    }
}

async fn round(
    store: &dyn Store,
    outlets: &Outlets,
    merchants: &Merchants,
    online: &[String],
) -> Result<(), StoreError> {
    let de7 =
        String::from_utf8_lossy(&codec::clock::transmission(codec::clock::unix_now())).into_owned();
    for n in store
        .claim_notifications(online, NOTIFY_BATCH_MAX, &de7)
        .await?
    {
        let Some(merchant) = merchants.get(n.merchant_id.as_bytes()) else {
            continue;
        };
        match advice(&n, &merchant.mac_key) {
            Ok(bytes) => {
                let sent = outlets.deliver(&n.merchant_id, bytes);
                tracing::info!(merchant = %n.merchant_id, event = %n.event, rrn = %n.rrn, sent, attempts = n.attempts,
                    "notification sent");
            }
            Err(e) => tracing::error!(error = %e, "notification could not be encoded"),
        }
    }
    Ok(())
}

/// The 0620 for a notification, MAC'd with the merchant's key.
fn advice(n: &Notification, key: &MacKey) -> Result<Bytes, EncodeError> {
    let mut de48 = Vec::new();
    let _ = tlv::push(&mut de48, b"EV", n.event.as_bytes());
    if let Some(or) = &n.order_ref {
        let _ = tlv::push(&mut de48, b"OR", or.as_bytes());
    }
    let _ = tlv::push(&mut de48, b"ST", n.status.as_bytes());
    let mut b = MessageBuilder::new(codec::builtin::merchant(), Mti::NOTIFICATION_ADVICE);
    b.set(7, n.transmitted_at.as_bytes())
        .set(11, n.stan.as_bytes())
        .set(37, n.rrn.as_bytes())
        .set(41, n.terminal_id.as_bytes())
        .set(42, n.merchant_id.as_bytes())
        .set(48, &de48);
    b.encode_with_mac(key)
}

/// A merchant's 0630: the notification it answers is delivered.
pub async fn acknowledged(
    store: &dyn Store,
    merchant_id: &str,
    msg: &Message,
) -> Result<bool, StoreError> {
    if msg.raw(39) != Some(b"00") {
        return Ok(false);
    }
    let (Some(stan), Some(de7)) = (msg.get_str(11), msg.get_str(7)) else {
        return Ok(false);
    };
    store.notification_answered(merchant_id, &stan, &de7).await
}
