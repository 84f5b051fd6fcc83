//! The switch's side of the admin surface, and the sampler that keeps gauges current.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use admin_http::merchants::{Limits, MacKeyIssued, MerchantView, NewMerchantBody, Rotation};
use admin_http::reference::{Balance, Overview, RouteBody, RouteView, SettlementReport};
use admin_http::refunds::{RefundAsk, RefundListQuery, RefundRequestView};
use admin_http::transactions::{TxnDetail, TxnPage, TxnQuery};
use admin_http::v1::{
    AccountView, ApiKeyCreated, AuditPage, AuditQuery, LoginGranted, LoginRequest, NewAccount,
    NewApiKey, PasswordChange, Principal, RecoveryCodes, ResetIssued, ResetPassword, TotpEnrolment,
};
use admin_http::{Admin, AdminError, AuthRefusal, Check, LinkView, Readiness, TransactionView};
use bank_links::Bank;
use bank_links::LinkState;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::backoffice::BackOffice;
use crate::metrics::{LINK_STATES, Metrics};
use crate::session::MerchantConnections;
use crate::store::Store;

/// How often gauges are sampled.
pub(crate) const SAMPLE_INTERVAL_MS: u64 = 1_000;
/// How often (in samples) the backlogs are measured and PostgreSQL probed (they cost
/// queries).
pub(crate) const REVERSAL_SAMPLE_EVERY: u32 = 5;

/// A probe query slower than this counts as failed (and does not hold the sampler up).
pub(crate) const PROBE_TIMEOUT_MS: u64 = 2_000;

/// What the admin surface reads and acts on.
#[derive(Debug)]
pub(crate) struct SwitchAdmin {
    pub metrics: Arc<Metrics>,
    pub banks: HashMap<String, Bank>,
    pub store: Arc<dyn Store>,
    /// The request path's pool: sampled for its gauges and probed.
    pub pool: Pool,
    /// Accounts, sessions and the audit log (`/v1`).
    pub backoffice: BackOffice,
    /// Redis, pinged by `/readyz`.
    pub limiter: crate::limiter::Limiter,
    /// BIN route changes, applied to this instance's table at once.
    pub routes: crate::routing::RouteBook,
    /// The live overview's samples, taken by [`sample`].
    pub overview: crate::overview::Recorder,
}

impl Admin for SwitchAdmin {
    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn auth_refused(&self, why: AuthRefusal) {
        self.metrics
            .admin_auth_failures
            .with_label_values(&[why.as_str()])
            .inc();
        tracing::warn!(reason = why.as_str(), "admin request refused");
    }

    async fn readiness(&self) -> Readiness {
        let limit = Duration::from_millis(PROBE_TIMEOUT_MS);
        let pg = async {
            let c = self.pool.get().await.map_err(|e| e.to_string())?;
            c.query_one("SELECT 1", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        let pg = match tokio::time::timeout(limit, pg).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT_MS} ms")),
        };
        let redis = self.limiter.ping().await.map_err(|e| e.to_string());
        let mut checks = vec![check("postgres", pg), check("redis", redis)];
        let mut banks: Vec<&Bank> = self.banks.values().collect();
        banks.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        for b in banks {
            let ready = b
                .links
                .iter()
                .filter(|l| l.state() == LinkState::Ready)
                .count();
            let detail = format!("{ready} of {} links ready", b.links.len());
            checks.push(Check {
                name: format!("bank:{}", b.config.id),
                ok: ready > 0,
                detail,
            });
        }
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
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

    async fn authenticate(
        &self,
        bearer: &str,
        source: &str,
    ) -> Result<Option<Principal>, AdminError> {
        self.backoffice.authenticate(bearer, source).await
    }

    async fn login(&self, req: LoginRequest, source: &str) -> Result<LoginGranted, AdminError> {
        self.backoffice.login(req, source).await
    }

    async fn logout(&self, who: &Principal, token: &str) -> Result<(), AdminError> {
        self.backoffice.logout(who, token).await
    }

    async fn totp_enrol(&self, who: &Principal) -> Result<TotpEnrolment, AdminError> {
        self.backoffice.totp_enrol(who).await
    }

    async fn totp_confirm(
        &self,
        who: &Principal,
        token: &str,
        code: &str,
    ) -> Result<RecoveryCodes, AdminError> {
        self.backoffice.totp_confirm(who, token, code).await
    }

    async fn change_password(
        &self,
        who: &Principal,
        token: &str,
        change: PasswordChange,
    ) -> Result<(), AdminError> {
        self.backoffice.change_password(who, change, token).await
    }

    async fn accounts(&self, _who: &Principal) -> Result<Vec<AccountView>, AdminError> {
        self.backoffice.accounts().await
    }

    async fn create_account(
        &self,
        who: &Principal,
        new: NewAccount,
    ) -> Result<AccountView, AdminError> {
        self.backoffice.create_account(who, new).await
    }

    async fn unlock(&self, who: &Principal, username: &str) -> Result<(), AdminError> {
        self.backoffice.unlock(who, username).await
    }

    async fn create_api_key(
        &self,
        who: &Principal,
        new: NewApiKey,
    ) -> Result<ApiKeyCreated, AdminError> {
        self.backoffice.create_api_key(who, new).await
    }

    async fn issue_reset(
        &self,
        who: &Principal,
        username: &str,
    ) -> Result<ResetIssued, AdminError> {
        self.backoffice.issue_reset(who, username).await
    }

    async fn reset_password(&self, req: ResetPassword, source: &str) -> Result<(), AdminError> {
        self.backoffice.reset_password(req, source).await
    }

    async fn audit(&self, _who: &Principal, query: AuditQuery) -> Result<AuditPage, AdminError> {
        self.backoffice.search_audit(query).await
    }

    async fn search_transactions(
        &self,
        who: &Principal,
        query: TxnQuery,
    ) -> Result<TxnPage, AdminError> {
        self.backoffice.search_transactions(who, query).await
    }

    async fn transaction_chain(&self, who: &Principal, rrn: &str) -> Result<TxnDetail, AdminError> {
        self.backoffice.transaction_chain(who, rrn).await
    }

    async fn request_refund(
        &self,
        who: &Principal,
        rrn: &str,
        ask: RefundAsk,
    ) -> Result<RefundRequestView, AdminError> {
        self.backoffice.request_refund(who, rrn, ask).await
    }

    async fn refund_requests(
        &self,
        who: &Principal,
        query: RefundListQuery,
    ) -> Result<Vec<RefundRequestView>, AdminError> {
        self.backoffice.refund_requests(who, query).await
    }

    async fn merchants(&self) -> Result<Vec<MerchantView>, AdminError> {
        self.backoffice.merchant_views().await
    }

    async fn create_merchant(
        &self,
        who: &Principal,
        new: NewMerchantBody,
    ) -> Result<MacKeyIssued, AdminError> {
        self.backoffice.create_merchant(who, new).await
    }

    async fn set_merchant_enabled(
        &self,
        who: &Principal,
        id: &str,
        enabled: bool,
    ) -> Result<(), AdminError> {
        self.backoffice.set_merchant_enabled(who, id, enabled).await
    }

    async fn set_merchant_limits(
        &self,
        who: &Principal,
        id: &str,
        limits: Limits,
    ) -> Result<MerchantView, AdminError> {
        self.backoffice.set_merchant_limits(who, id, limits).await
    }

    async fn rotate_merchant_key(
        &self,
        who: &Principal,
        id: &str,
        rotation: Rotation,
    ) -> Result<MacKeyIssued, AdminError> {
        self.backoffice.rotate_merchant_key(who, id, rotation).await
    }

    async fn decide_refund(
        &self,
        who: &Principal,
        id: i64,
        approve: bool,
    ) -> Result<RefundRequestView, AdminError> {
        self.backoffice.decide_refund(who, id, approve).await
    }

    async fn routes(&self) -> Result<Vec<RouteView>, AdminError> {
        self.backoffice.route_views(&self.routes).await
    }

    async fn add_route(&self, who: &Principal, body: RouteBody) -> Result<RouteView, AdminError> {
        self.backoffice.add_route(who, &self.routes, body).await
    }

    async fn change_route(
        &self,
        who: &Principal,
        id: i64,
        body: RouteBody,
    ) -> Result<RouteView, AdminError> {
        self.backoffice
            .change_route(who, &self.routes, id, body)
            .await
    }

    async fn remove_route(&self, who: &Principal, id: i64) -> Result<RouteView, AdminError> {
        self.backoffice.remove_route(who, &self.routes, id).await
    }

    async fn sign_link(
        &self,
        who: &Principal,
        name: &str,
        signed_on: bool,
    ) -> Result<LinkView, AdminError> {
        let before = self
            .links()
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("link {name}")))?;
        self.set_link(name, signed_on).await?;
        tracing::info!(link = %name, signed_on, actor = %who.actor, "operator action on bank link");
        self.backoffice.audit_link(who, &before, signed_on).await?;
        Ok(before)
    }

    async fn settlement(
        &self,
        who: &Principal,
        business_day: &str,
    ) -> Result<SettlementReport, AdminError> {
        self.backoffice.settlement(who, business_day).await
    }

    async fn ledger_balances(&self, who: &Principal) -> Result<Vec<Balance>, AdminError> {
        self.backoffice.ledger_balances(who).await
    }

    fn overview(&self) -> Overview {
        let samples = self.overview.snapshot();
        let (at_ms, requests_per_s, latency) =
            crate::overview::series(&samples, &crate::metrics::LATENCY_BUCKETS_S);
        Overview {
            interval_ms: SAMPLE_INTERVAL_MS,
            at_ms,
            requests_per_s,
            latency,
            links: self.links(),
        }
    }
}

fn check(name: &str, r: Result<(), String>) -> Check {
    Check {
        name: name.to_string(),
        ok: r.is_ok(),
        detail: r.err().unwrap_or_else(|| "ok".into()),
    }
}

/// Keeps the gauges that are states rather than events current: every
/// [`SAMPLE_INTERVAL_MS`] the connections, links and the PostgreSQL pool; every
/// [`REVERSAL_SAMPLE_EVERY`]-th time the backlogs (they cost queries) and a probe query.
pub(crate) async fn sample(
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
        sample_links(&admin);
        sample_pool(m, &admin.pool);
        admin.overview.push(crate::overview::take(
            m,
            unix_ms(std::time::SystemTime::now()),
        ));
        tick = tick.wrapping_add(1);
        if tick.is_multiple_of(REVERSAL_SAMPLE_EVERY) {
            probe_postgres(m, &admin.pool).await;
            sample_backlogs(&admin).await;
        }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sample_links(admin: &SwitchAdmin) {
    let m = &admin.metrics;
    for (id, b) in admin.banks.iter() {
        // The links count what they drop; the counter follows their sum.
        let mac_failures: u64 = b.links.iter().map(|l| l.mac_failures()).sum();
        let counter = m.bank_mac_failures.with_label_values(&[id.as_str()]);
        counter.inc_by(mac_failures.saturating_sub(counter.get()));
        for l in &b.links {
            let now = l.state();
            for s in LINK_STATES {
                m.link_state
                    .with_label_values(&[l.name(), s.as_str()])
                    .set(i64::from(s == now));
            }
            m.link_in_flight
                .with_label_values(&[l.name()])
                .set(l.in_flight() as i64);
            m.link_queue_depth
                .with_label_values(&[l.name()])
                .set(l.queue_depth() as i64);
        }
    }
}

/// The pool as the request path sees it: connections in use and idle, tasks waiting.
fn sample_pool(m: &Metrics, pool: &Pool) {
    let s = pool.status();
    let in_use = s.size.saturating_sub(s.available);
    m.pool_connections
        .with_label_values(&["idle"])
        .set(s.available as i64);
    m.pool_connections
        .with_label_values(&["in_use"])
        .set(in_use as i64);
    m.pool_max.set(s.max_size as i64);
    m.pool_waiting.set(s.waiting as i64);
}

/// `SELECT 1` on a pooled connection, timed: PostgreSQL's latency and reachability as
/// this instance sees them, also when no traffic flows.
async fn probe_postgres(m: &Metrics, pool: &Pool) {
    let started = std::time::Instant::now();
    let probe = async {
        match pool.get().await {
            Ok(c) => c.query_one("SELECT 1", &[]).await.is_ok(),
            Err(_) => false,
        }
    };
    let limit = Duration::from_millis(PROBE_TIMEOUT_MS);
    if tokio::time::timeout(limit, probe).await == Ok(true) {
        m.postgres_probe.observe(started.elapsed().as_secs_f64());
    } else {
        m.postgres_probe_failures.inc();
    }
}

async fn sample_backlogs(admin: &SwitchAdmin) {
    let m = &admin.metrics;
    if let Ok(n) = admin.store.notification_backlog().await {
        m.notifications_pending.set(n.pending);
        m.notifications_oldest_age.set(n.oldest_age_s);
    }
    let Ok(backlog) = admin.store.forward_backlog().await else {
        return;
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
