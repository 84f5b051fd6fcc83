//! The switch's side of the admin surface, and the sampler that keeps gauges current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use admin_http::{Admin, AdminError, LinkView, TransactionView};
use bank_links::{Bank, LinkState};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::session::MerchantConnections;
use crate::store::Store;

/// How often gauges are sampled.
pub const SAMPLE_INTERVAL_MS: u64 = 1_000;
/// How often the reversal queue is measured (it costs a query).
pub const REVERSAL_SAMPLE_EVERY: u32 = 5;

const STATES: [LinkState; 5] = [
    LinkState::Connecting,
    LinkState::SigningOn,
    LinkState::Ready,
    LinkState::Draining,
    LinkState::Down,
];

/// What the admin surface reads and acts on.
#[derive(Debug)]
pub struct SwitchAdmin {
    pub metrics: Arc<Metrics>,
    pub banks: HashMap<String, Bank>,
    pub store: Arc<dyn Store>,
}

impl Admin for SwitchAdmin {
    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn links(&self) -> Vec<LinkView> {
        let mut v: Vec<LinkView> = self
            .banks
            .values()
            .flat_map(|b| {
                b.links.iter().map(|l| LinkView {
                    name: l.name().to_string(),
                    bank: b.config.id.clone(),
                    state: l.state().as_str().to_string(),
                    in_flight: l.in_flight(),
                    round_trip_us: l.round_trip_us(),
                    queue_depth: l.queue_depth(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    async fn set_link(&self, name: &str, signed_on: bool) -> Result<(), AdminError> {
        let link = self
            .banks
            .values()
            .flat_map(|b| b.links.iter())
            .find(|l| l.name() == name)
            .ok_or_else(|| AdminError::NotFound(name.to_string()))?;
        if signed_on {
            link.sign_on().await;
        } else {
            link.sign_off().await;
        }
        Ok(())
    }

    async fn transaction(&self, rrn: &str) -> Result<Option<TransactionView>, AdminError> {
        let found = self
            .store
            .transaction_by_rrn(rrn)
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        Ok(found.map(|t| TransactionView {
            rrn: t.rrn,
            merchant_id: t.merchant_id,
            terminal_id: t.terminal_id,
            kind: t.kind.as_str().to_string(),
            state: t.state.as_str().to_string(),
            amount_minor: t.amount_minor as i64,
            currency: t.currency as i16,
            response_code: t.response_code,
            card_last4: t.pan_last4,
            order_ref: t.order_ref,
            bank_id: t.bank_id,
        }))
    }
}

/// Keeps the gauges that are states rather than events current.
pub async fn sample(
    admin: Arc<SwitchAdmin>,
    connections: Arc<MerchantConnections>,
    shutdown: CancellationToken,
) {
    let m = &admin.metrics;
    let mut tick = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS)) => {}
        }
        m.merchant_connections
            .set(connections.total.load(std::sync::atomic::Ordering::Relaxed) as i64);
        for (id, b) in admin.banks.iter() {
            // The links count what they drop; the counter follows their sum.
            let mac_failures: u64 = b.links.iter().map(|l| l.mac_failures()).sum();
            let counter = m.bank_mac_failures.with_label_values(&[id.as_str()]);
            counter.inc_by(mac_failures.saturating_sub(counter.get()));
            for l in &b.links {
                let now = l.state();
                for s in STATES {
                    m.link_state
                        .with_label_values(&[l.name(), s.as_str()])
                        .set(i64::from(s == now));
                }
                m.link_in_flight
                    .with_label_values(&[l.name()])
                    .set(l.in_flight() as i64);
                m.link_round_trip_us
                    .with_label_values(&[l.name()])
                    .set(l.round_trip_us().unwrap_or(0) as i64);
                m.link_queue_depth
                    .with_label_values(&[l.name()])
                    .set(l.queue_depth() as i64);
            }
        }
        tick = tick.wrapping_add(1);
        if !tick.is_multiple_of(REVERSAL_SAMPLE_EVERY) {
            continue;
        }
        let Ok(backlog) = admin.store.forward_backlog().await else {
            continue;
        };
        for b in admin.banks.keys() {
            let row = backlog.iter().find(|r| r.bank_id == *b);
            m.reversals_pending
                .with_label_values(&[b.as_str()])
                .set(row.map(|r| r.pending).unwrap_or(0));
            m.reversals_oldest_age
                .with_label_values(&[b.as_str()])
                .set(row.map(|r| r.oldest_age_s).unwrap_or(0));
        }
    }
}
