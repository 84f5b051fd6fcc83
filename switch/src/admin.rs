//! The switch's side of the admin surface, and the sampler that keeps gauges current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use admin_http::{Admin, AdminError, LinkView, TransactionView};
use bank_links::{Bank, LinkState};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::session::MerchantConnections;

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
    pub pool: Pool,
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
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let row = client
            .query_opt(
                "SELECT rrn, merchant_id, terminal_id, kind, state, amount_minor, currency, response_code, pan_last4, \
                 order_ref, bank_id FROM transactions WHERE rrn = $1",
                &[&rrn],
            )
            .await
            .map_err(|e| AdminError::Unavailable(e.to_string()))?;
        Ok(row.map(|r| TransactionView {
            rrn: r.get(0),
            merchant_id: r.get(1),
            terminal_id: r.get(2),
            kind: r.get(3),
            state: r.get(4),
            amount_minor: r.get(5),
            currency: r.get(6),
            response_code: r.get(7),
            card_last4: r.get(8),
            order_ref: r.get(9),
            bank_id: r.get(10),
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
        for b in admin.banks.values() {
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
        let Ok(client) = admin.pool.get().await else {
            continue;
        };
        let rows = client
            .query(
                "SELECT bank_id, count(*), coalesce(extract(epoch from now() - min(created_at)), 0)::bigint \
                 FROM reversals WHERE state = 'pending' GROUP BY bank_id",
                &[],
            )
            .await;
        if let Ok(rows) = rows {
            for b in admin.banks.keys() {
                let row = rows.iter().find(|r| r.get::<_, String>(0) == *b);
                m.reversals_pending
                    .with_label_values(&[b.as_str()])
                    .set(row.map(|r| r.get::<_, i64>(1)).unwrap_or(0));
                m.reversals_oldest_age
                    .with_label_values(&[b.as_str()])
                    .set(row.map(|r| r.get::<_, i64>(2)).unwrap_or(0));
            }
        }
    }
}
