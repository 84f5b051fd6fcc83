//! The operators' HTTP surface, over the [`Admin`] trait the switch implements.
//!
//! - `GET /metrics`: Prometheus text format (open, for scrapers on the admin network).
//! - `GET /healthz`: 200 while the instance serves.
//! - `GET /readyz`: 200 when PostgreSQL and Redis answer and every bank has a ready link,
//!   503 otherwise; each check reported in JSON (open, for load balancers).
//! - `GET /links`: every bank link's state and load (role `viewer`).
//! - `POST /links/{name}/sign-off`, `POST /links/{name}/sign-on` (role `operator`).
//! - `GET /transactions/{rrn}`: one transaction, card number masked (role `viewer`).
//!
//! - `/v1/...`: the back office's JSON API (see [`v1`], [`transactions`], [`refunds`],
//!   [`merchants`], [`ops`], [`reference`]).
//! - `GET /openapi.json`: its OpenAPI 3.1 document (open), see [`openapi`].
//! - `/console/...`: the web console (see [`console`]).
//!
//! [`serve`] speaks HTTPS when given a rustls configuration ([`tls`]), plain HTTP otherwise.
//!
//! Every route but the first three, `/openapi.json` and `POST /v1/login` needs `Authorization: Bearer
//! TOKEN`: a static token from configuration (compared in constant time), a session token
//! from `POST /v1/login`, or an API key; roles are ordered `merchant` < `viewer` <
//! `operator` < `approver` < `admin` < `superadmin` (merchant users only reach `/v1`
//! routes open to them).

pub mod console;
pub mod console_ops;
pub mod console_pages;
pub mod merchants;
pub mod openapi;
pub mod ops;
pub mod reference;
pub mod refunds;
pub mod tls;
pub mod transactions;
pub mod v1;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What an account, API key or token may do; each role may do what those before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A merchant's staff: its own merchant's transactions only.
    Merchant,
    /// Read state.
    Viewer,
    /// Read state and act on links.
    Operator,
    /// Approve what another person requested (maker-checker).
    Approver,
    /// Manage accounts and API keys, read the audit log.
    Admin,
    /// Everything, including creating admins.
    Superadmin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 6] = [
        Role::Merchant,
        Role::Viewer,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::Superadmin,
    ];

    /// The lower-case name, as in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Merchant => "merchant",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Superadmin => "superadmin",
        }
    }

    /// The role of a lower-case name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// A bearer token and its role.
#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    pub token: String,
    pub role: Role,
}

/// A bank link as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LinkView {
    pub name: String,
    pub bank: String,
    pub state: String,
    pub in_flight: usize,
    /// Moving average of answered round trips, once there has been one.
    pub round_trip_us: Option<u64>,
    /// Requests and answers queued for the link's task.
    pub queue_depth: usize,
}

/// A transaction as operators see it (never the card number in clear).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransactionView {
    pub rrn: String,
    pub merchant_id: String,
    pub terminal_id: String,
    pub kind: String,
    pub state: String,
    pub amount_minor: i64,
    pub currency: i16,
    pub response_code: Option<String>,
    pub card_last4: Option<String>,
    pub order_ref: Option<String>,
    pub bank_id: Option<String>,
}

/// One dependency's readiness, for `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// `postgres`, `redis`, or `bank:<id>`.
    pub name: String,
    pub ok: bool,
    /// Why not, or what was seen (e.g. `1 of 2 links ready`).
    pub detail: String,
}

/// What `/readyz` answers: ready when every check is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// A failed admin action.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request is well-formed but refused (a weak password, an unknown role...).
    #[error("{0}")]
    Invalid(String),
    /// Wrong credentials, or none.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Clashes with what exists (a username taken).
    #[error("{0}")]
    Conflict(String),
    /// Too many failed attempts from this client: refused for `retry_after_s` seconds
    /// more (HTTP 429 with `Retry-After`, RFC 6585 section 4).
    #[error("{detail}")]
    TooManyAttempts { detail: String, retry_after_s: u64 },
}

impl AdminError {
    /// The `Retry-After` an answer to this error carries, in seconds: only
    /// [`AdminError::TooManyAttempts`] has one.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            AdminError::TooManyAttempts { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }
}

/// Why a request was refused before reaching its route: a security signal the switch
/// counts (`switchyard_admin_auth_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No bearer token, or one that is not configured (HTTP 401).
    Unauthenticated,
    /// A valid token whose role does not allow the route (HTTP 403).
    Forbidden,
}

impl AuthRefusal {
    /// The metric label value: `unauthenticated` or `forbidden`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthRefusal::Unauthenticated => "unauthenticated",
            AuthRefusal::Forbidden => "forbidden",
        }
    }
}

/// What the switch provides to the admin surface.
pub trait Admin: ops::Operations + Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// A request was refused for its token (counted and logged by the switch).
    fn auth_refused(&self, why: AuthRefusal);
    fn links(&self) -> Vec<LinkView>;
    /// PostgreSQL, Redis and at least one ready link per bank, each reported.
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;
    fn set_link(
        &self,
        name: &str,
        signed_on: bool,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn transaction(
        &self,
        rrn: &str,
    ) -> impl Future<Output = Result<Option<TransactionView>, AdminError>> + Send;
    /// The principal of a session token or API key (`None`: neither, or expired or
    /// revoked); `source` is the client's address. Using a session keeps it alive.
    fn authenticate(
        &self,
        bearer: &str,
        source: &str,
    ) -> impl Future<Output = Result<Option<v1::Principal>, AdminError>> + Send;
    /// Checks credentials and opens a session (recorded in the audit log either way).
    fn login(
        &self,
        req: v1::LoginRequest,
        source: &str,
    ) -> impl Future<Output = Result<v1::LoginGranted, AdminError>> + Send;
    /// Revokes the session `token` of `who`.
    fn logout(
        &self,
        who: &v1::Principal,
        token: &str,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    /// Starts (or restarts) TOTP enrolment for the caller's account.
    fn totp_enrol(
        &self,
        who: &v1::Principal,
    ) -> impl Future<Output = Result<v1::TotpEnrolment, AdminError>> + Send;
    /// Confirms enrolment with a code; the session `token` counts as second-factored.
    fn totp_confirm(
        &self,
        who: &v1::Principal,
        token: &str,
        code: &str,
    ) -> impl Future<Output = Result<v1::RecoveryCodes, AdminError>> + Send;
    /// Changes the caller's password; every other session of the account ends.
    fn change_password(
        &self,
        who: &v1::Principal,
        token: &str,
        change: v1::PasswordChange,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn accounts(
        &self,
        who: &v1::Principal,
    ) -> impl Future<Output = Result<Vec<v1::AccountView>, AdminError>> + Send;
    fn create_account(
        &self,
        who: &v1::Principal,
        new: v1::NewAccount,
    ) -> impl Future<Output = Result<v1::AccountView, AdminError>> + Send;
    fn unlock(
        &self,
        who: &v1::Principal,
        username: &str,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn create_api_key(
        &self,
        who: &v1::Principal,
        new: v1::NewApiKey,
    ) -> impl Future<Output = Result<v1::ApiKeyCreated, AdminError>> + Send;
    /// A one-time password reset token for `username`; its sessions end.
    fn issue_reset(
        &self,
        who: &v1::Principal,
        username: &str,
    ) -> impl Future<Output = Result<v1::ResetIssued, AdminError>> + Send;
    /// Sets a new password with a reset token (once, before it expires).
    fn reset_password(
        &self,
        req: v1::ResetPassword,
        source: &str,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn audit(
        &self,
        who: &v1::Principal,
        query: v1::AuditQuery,
    ) -> impl Future<Output = Result<v1::AuditPage, AdminError>> + Send;
    /// Transactions matching `query`, confined to the merchant of a merchant user.
    fn search_transactions(
        &self,
        who: &v1::Principal,
        query: transactions::TxnQuery,
    ) -> impl Future<Output = Result<transactions::TxnPage, AdminError>> + Send;
    /// A transaction and its chain; `NotFound` also for another merchant's.
    fn transaction_chain(
        &self,
        who: &v1::Principal,
        rrn: &str,
    ) -> impl Future<Output = Result<transactions::TxnDetail, AdminError>> + Send;
    /// Records a refund request of transaction `rrn` and executes it unless it needs
    /// approval; the same idempotency key again returns the same request.
    fn request_refund(
        &self,
        who: &v1::Principal,
        rrn: &str,
        ask: refunds::RefundAsk,
    ) -> impl Future<Output = Result<refunds::RefundRequestView, AdminError>> + Send;
    fn refund_requests(
        &self,
        who: &v1::Principal,
        query: refunds::RefundListQuery,
    ) -> impl Future<Output = Result<Vec<refunds::RefundRequestView>, AdminError>> + Send;
    fn merchants(
        &self,
    ) -> impl Future<Output = Result<Vec<merchants::MerchantView>, AdminError>> + Send;
    fn create_merchant(
        &self,
        who: &v1::Principal,
        new: merchants::NewMerchantBody,
    ) -> impl Future<Output = Result<merchants::MacKeyIssued, AdminError>> + Send;
    fn set_merchant_enabled(
        &self,
        who: &v1::Principal,
        id: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn set_merchant_limits(
        &self,
        who: &v1::Principal,
        id: &str,
        limits: merchants::Limits,
    ) -> impl Future<Output = Result<merchants::MerchantView, AdminError>> + Send;
    /// A new MAC key; the previous one verifies until the overlap ends.
    fn rotate_merchant_key(
        &self,
        who: &v1::Principal,
        id: &str,
        rotation: merchants::Rotation,
    ) -> impl Future<Output = Result<merchants::MacKeyIssued, AdminError>> + Send;
    /// Approves (and executes) or rejects a pending request; never its requester's.
    fn decide_refund(
        &self,
        who: &v1::Principal,
        id: i64,
        approve: bool,
    ) -> impl Future<Output = Result<refunds::RefundRequestView, AdminError>> + Send;

    // Routes, links, settlement and the live overview (see [`ops`]).
    /// Every BIN route, in the order they were added.
    fn routes(&self) -> impl Future<Output = Result<Vec<reference::RouteView>, AdminError>> + Send;
    /// Adds a route; the running switch routes by it at once.
    fn add_route(
        &self,
        who: &v1::Principal,
        body: reference::RouteBody,
    ) -> impl Future<Output = Result<reference::RouteView, AdminError>> + Send;
    /// Replaces route `id`; the running switch routes by it at once.
    fn change_route(
        &self,
        who: &v1::Principal,
        id: i64,
        body: reference::RouteBody,
    ) -> impl Future<Output = Result<reference::RouteView, AdminError>> + Send;
    /// Removes route `id`; the route as it was.
    fn remove_route(
        &self,
        who: &v1::Principal,
        id: i64,
    ) -> impl Future<Output = Result<reference::RouteView, AdminError>> + Send;
    /// Signs a link on or off, recorded in the audit log; the link as it was.
    fn sign_link(
        &self,
        who: &v1::Principal,
        name: &str,
        signed_on: bool,
    ) -> impl Future<Output = Result<LinkView, AdminError>> + Send;
    /// Settlement totals of a business day (`YYYY-MM-DD`), a merchant user's own only.
    fn settlement(
        &self,
        who: &v1::Principal,
        business_day: &str,
    ) -> impl Future<Output = Result<reference::SettlementReport, AdminError>> + Send;
    /// Every ledger account's balance, a merchant user's own only.
    fn ledger_balances(
        &self,
        who: &v1::Principal,
    ) -> impl Future<Output = Result<Vec<reference::Balance>, AdminError>> + Send;
    /// The live overview's figures.
    fn overview(&self) -> reference::Overview;
}

struct AppState<A> {
    admin: Arc<A>,
    tokens: Vec<Token>,
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(auth.strip_prefix("Bearer ")?.trim())
}

/// Who a request's bearer token stands for: a configured static token, else a session or
/// an API key as the switch knows them.
async fn principal_of<A: Admin>(
    state: &AppState<A>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<v1::Principal>, AdminError> {
    let Some(presented) = bearer(headers) else {
        return Ok(None);
    };
    let source = peer.ip().to_string();
    let configured = state
        .tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()));
    if let Some(t) = configured {
        return Ok(Some(v1::Principal {
            actor: format!("token:{}", t.role.as_str()),
            role: t.role,
            merchant_id: None,
            mfa_done: true,
            source,
        }));
    }
    state.admin.authenticate(presented, &source).await
}

// axum handlers return `Result<_, Response>`; boxing the error would only add noise.
#[allow(clippy::result_large_err)]
async fn require<A: Admin>(
    state: &AppState<A>,
    headers: &HeaderMap,
    peer: SocketAddr,
    needed: Role,
) -> Result<(), Response> {
    let found = principal_of(state, headers, peer)
        .await
        .map_err(error_response)?;
    let (why, answer) = match found {
        Some(p) if p.role >= needed && p.mfa_done => return Ok(()),
        Some(_) => (
            AuthRefusal::Forbidden,
            (StatusCode::FORBIDDEN, "role not allowed\n").into_response(),
        ),
        None => (
            AuthRefusal::Unauthenticated,
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"switchyard\"")],
                "bearer token required\n",
            )
                .into_response(),
        ),
    };
    state.admin.auth_refused(why);
    Err(answer)
}

fn error_response(e: AdminError) -> Response {
    match e {
        AdminError::NotFound(w) => {
            (StatusCode::NOT_FOUND, format!("not found: {w}\n")).into_response()
        }
        AdminError::Unavailable(w) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unavailable: {w}\n"),
        )
            .into_response(),
        other => v1::problem(other),
    }
}

/// The routes, for serving or testing.
pub fn router<A: Admin>(admin: Arc<A>, tokens: Vec<Token>) -> Router {
    let state = Arc::new(AppState { admin, tokens });
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState<A>>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    s.admin.metrics(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AppState<A>>>| async move {
                let r = s.admin.readiness().await;
                let status = if r.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, axum::Json(r))
            }),
        )
        .route(
            "/links",
            get(
                |State(s): State<Arc<AppState<A>>>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 h: HeaderMap| async move {
                    require(&s, &h, peer, Role::Viewer).await?;
                    Ok::<_, Response>(axum::Json(s.admin.links()))
                },
            ),
        )
        .route(
            "/links/{name}/{action}",
            post(
                |State(s): State<Arc<AppState<A>>>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 h: HeaderMap,
                 Path((name, action)): Path<(String, String)>| async move {
                    require(&s, &h, peer, Role::Operator).await?;
                    let on = match action.as_str() {
                        "sign-on" => true,
                        "sign-off" => false,
                        _ => {
                            return Err((StatusCode::NOT_FOUND, "unknown action\n").into_response());
                        }
                    };
                    tracing::info!(link = %name, action = %action, "operator action on bank link");
                    s.admin.set_link(&name, on).await.map_err(error_response)?;
                    Ok("done\n".into_response())
                },
            ),
        )
        .route(
            "/transactions/{rrn}",
            get(
                |State(s): State<Arc<AppState<A>>>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 h: HeaderMap,
                 Path(rrn): Path<String>| async move {
                    require(&s, &h, peer, Role::Viewer).await?;
                    match s.admin.transaction(&rrn).await.map_err(error_response)? {
                        Some(t) => Ok(axum::Json(t).into_response()),
                        None => Err(error_response(AdminError::NotFound(rrn))),
                    }
                },
            ),
        )
        .merge(
            v1::routes::<A>()
                .merge(transactions::routes::<A>())
                .merge(refunds::routes::<A>())
                .merge(merchants::routes::<A>())
                .merge(ops::routes::<A>())
                .merge(reference::routes::<A>())
                .layer(axum::middleware::map_response(openapi::as_problem)),
        )
        .merge(console::routes::<A>())
        .merge(console_pages::routes::<A>())
        .merge(console_ops::routes::<A>())
        .route(
            "/openapi.json",
            get(|| async { axum::Json(<openapi::ApiDoc as utoipa::OpenApi>::openapi()) }),
        )
        .with_state(state)
}

/// Serves until `shutdown`; the bound address and the server's task. With `tls` every
/// connection must complete a TLS handshake first (see [`tls`]); without it the listener
/// speaks plain HTTP.
pub async fn serve<A: Admin>(
    addr: SocketAddr,
    admin: Arc<A>,
    tokens: Vec<Token>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(admin, tokens).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let stopped = async move { stop.cancelled().await };
    let task = match tls {
        // `tap_io` only so that axum hands the peer address to `ConnectInfo`.
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config, shutdown)?.tap_io(|_| {});
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            })
        }
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        }),
    };
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts refusals, so the test can see each one reported.
    #[derive(Default)]
    struct Fake {
        refused: std::sync::Mutex<Vec<AuthRefusal>>,
    }

    impl Admin for Fake {
        fn metrics(&self) -> String {
            "switchyard_up 1\n".into()
        }
        fn auth_refused(&self, why: AuthRefusal) {
            self.refused.lock().unwrap().push(why);
        }
        async fn readiness(&self) -> Readiness {
            Readiness {
                ready: true,
                checks: Vec::new(),
            }
        }
        fn links(&self) -> Vec<LinkView> {
            vec![LinkView {
                name: "a.0".into(),
                bank: "a".into(),
                state: "ready".into(),
                in_flight: 0,
                round_trip_us: Some(420),
                queue_depth: 0,
            }]
        }
        async fn set_link(&self, name: &str, _on: bool) -> Result<(), AdminError> {
            if name == "a.0" {
                Ok(())
            } else {
                Err(AdminError::NotFound(name.into()))
            }
        }
        async fn transaction(&self, _rrn: &str) -> Result<Option<TransactionView>, AdminError> {
            Ok(None)
        }
        // The account routes are tested against the switch (tests/tests/backoffice.rs);
        // this fake knows no sessions or keys.
        async fn authenticate(
            &self,
            _bearer: &str,
            _source: &str,
        ) -> Result<Option<v1::Principal>, AdminError> {
            Ok(None)
        }
        async fn login(
            &self,
            _req: v1::LoginRequest,
            _source: &str,
        ) -> Result<v1::LoginGranted, AdminError> {
            Err(AdminError::Unauthenticated("no accounts here".into()))
        }
        async fn logout(&self, _who: &v1::Principal, _token: &str) -> Result<(), AdminError> {
            Ok(())
        }
        async fn totp_enrol(&self, _who: &v1::Principal) -> Result<v1::TotpEnrolment, AdminError> {
            Err(AdminError::Forbidden("no accounts here".into()))
        }
        async fn totp_confirm(
            &self,
            _who: &v1::Principal,
            _token: &str,
            _code: &str,
        ) -> Result<v1::RecoveryCodes, AdminError> {
            Err(AdminError::Forbidden("no accounts here".into()))
        }
        async fn change_password(
            &self,
            _who: &v1::Principal,
            _token: &str,
            _change: v1::PasswordChange,
        ) -> Result<(), AdminError> {
            Err(AdminError::Forbidden("no accounts here".into()))
        }
        async fn accounts(&self, _who: &v1::Principal) -> Result<Vec<v1::AccountView>, AdminError> {
            Ok(Vec::new())
        }
        async fn create_account(
            &self,
            _who: &v1::Principal,
            _new: v1::NewAccount,
        ) -> Result<v1::AccountView, AdminError> {
            Err(AdminError::Forbidden("no accounts here".into()))
        }
        async fn unlock(&self, _who: &v1::Principal, u: &str) -> Result<(), AdminError> {
            Err(AdminError::NotFound(u.into()))
        }
        async fn create_api_key(
            &self,
            _who: &v1::Principal,
            _new: v1::NewApiKey,
        ) -> Result<v1::ApiKeyCreated, AdminError> {
            Err(AdminError::Forbidden("no accounts here".into()))
        }
        async fn issue_reset(
            &self,
            _who: &v1::Principal,
            u: &str,
        ) -> Result<v1::ResetIssued, AdminError> {
            Err(AdminError::NotFound(u.into()))
        }
        async fn reset_password(
            &self,
            _req: v1::ResetPassword,
            _source: &str,
        ) -> Result<(), AdminError> {
            Err(AdminError::Unauthenticated("no accounts here".into()))
        }
        async fn audit(
            &self,
            _who: &v1::Principal,
            _q: v1::AuditQuery,
        ) -> Result<v1::AuditPage, AdminError> {
            Ok(v1::AuditPage {
                entries: Vec::new(),
                next_before_id: None,
            })
        }
        async fn search_transactions(
            &self,
            _who: &v1::Principal,
            _q: transactions::TxnQuery,
        ) -> Result<transactions::TxnPage, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        async fn transaction_chain(
            &self,
            _who: &v1::Principal,
            rrn: &str,
        ) -> Result<transactions::TxnDetail, AdminError> {
            Err(AdminError::NotFound(rrn.into()))
        }
        async fn request_refund(
            &self,
            _who: &v1::Principal,
            rrn: &str,
            _ask: refunds::RefundAsk,
        ) -> Result<refunds::RefundRequestView, AdminError> {
            Err(AdminError::NotFound(rrn.into()))
        }
        async fn refund_requests(
            &self,
            _who: &v1::Principal,
            _q: refunds::RefundListQuery,
        ) -> Result<Vec<refunds::RefundRequestView>, AdminError> {
            Ok(Vec::new())
        }
        async fn merchants(&self) -> Result<Vec<merchants::MerchantView>, AdminError> {
            Ok(Vec::new())
        }
        async fn create_merchant(
            &self,
            _who: &v1::Principal,
            _new: merchants::NewMerchantBody,
        ) -> Result<merchants::MacKeyIssued, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        async fn set_merchant_enabled(
            &self,
            _who: &v1::Principal,
            id: &str,
            _enabled: bool,
        ) -> Result<(), AdminError> {
            Err(AdminError::NotFound(id.into()))
        }
        async fn set_merchant_limits(
            &self,
            _who: &v1::Principal,
            id: &str,
            _limits: merchants::Limits,
        ) -> Result<merchants::MerchantView, AdminError> {
            Err(AdminError::NotFound(id.into()))
        }
        async fn rotate_merchant_key(
            &self,
            _who: &v1::Principal,
            id: &str,
            _rotation: merchants::Rotation,
        ) -> Result<merchants::MacKeyIssued, AdminError> {
            Err(AdminError::NotFound(id.into()))
        }
        async fn decide_refund(
            &self,
            _who: &v1::Principal,
            id: i64,
            _approve: bool,
        ) -> Result<refunds::RefundRequestView, AdminError> {
            Err(AdminError::NotFound(format!("request {id}")))
        }
        async fn routes(&self) -> Result<Vec<reference::RouteView>, AdminError> {
            Ok(Vec::new())
        }
        async fn add_route(
            &self,
            _who: &v1::Principal,
            _body: reference::RouteBody,
        ) -> Result<reference::RouteView, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        async fn change_route(
            &self,
            _who: &v1::Principal,
            id: i64,
            _body: reference::RouteBody,
        ) -> Result<reference::RouteView, AdminError> {
            Err(AdminError::NotFound(format!("route {id}")))
        }
        async fn remove_route(
            &self,
            _who: &v1::Principal,
            id: i64,
        ) -> Result<reference::RouteView, AdminError> {
            Err(AdminError::NotFound(format!("route {id}")))
        }
        async fn sign_link(
            &self,
            _who: &v1::Principal,
            name: &str,
            on: bool,
        ) -> Result<LinkView, AdminError> {
            self.set_link(name, on).await?;
            Ok(self.links().remove(0))
        }
        async fn settlement(
            &self,
            _who: &v1::Principal,
            _day: &str,
        ) -> Result<reference::SettlementReport, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        async fn ledger_balances(
            &self,
            _who: &v1::Principal,
        ) -> Result<Vec<reference::Balance>, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        fn overview(&self) -> reference::Overview {
            reference::Overview {
                interval_ms: 1000,
                at_ms: Vec::new(),
                requests_per_s: Vec::new(),
                latency: reference::LatencySeries::default(),
                links: self.links(),
            }
        }
    }

    // The operations are tested against the switch (tests/tests/backoffice_api.rs).
    impl ops::Operations for Fake {
        async fn request_capture(
            &self,
            _who: &v1::Principal,
            rrn: &str,
            _ask: refunds::RefundAsk,
        ) -> Result<refunds::RefundRequestView, AdminError> {
            Err(AdminError::NotFound(rrn.into()))
        }
        async fn request_void(
            &self,
            _who: &v1::Principal,
            rrn: &str,
            _ask: ops::VoidAsk,
        ) -> Result<refunds::RefundRequestView, AdminError> {
            Err(AdminError::NotFound(rrn.into()))
        }
        async fn saf(&self, _q: ops::SafQuery) -> Result<ops::SafPage, AdminError> {
            Err(AdminError::Unavailable("no store here".into()))
        }
        async fn saf_retry(
            &self,
            _who: &v1::Principal,
            id: i64,
        ) -> Result<ops::SafItem, AdminError> {
            Err(AdminError::NotFound(format!("message {id}")))
        }
        async fn saf_discard(
            &self,
            _who: &v1::Principal,
            id: i64,
            _body: ops::Discard,
        ) -> Result<ops::SafItem, AdminError> {
            Err(AdminError::NotFound(format!("message {id}")))
        }
        async fn api_keys(&self) -> Result<Vec<ops::ApiKeyView>, AdminError> {
            Ok(Vec::new())
        }
        async fn revoke_api_key(
            &self,
            _who: &v1::Principal,
            id: i64,
        ) -> Result<ops::ApiKeyView, AdminError> {
            Err(AdminError::NotFound(format!("key {id}")))
        }
        async fn set_account_disabled(
            &self,
            _who: &v1::Principal,
            u: &str,
            _disabled: bool,
        ) -> Result<v1::AccountView, AdminError> {
            Err(AdminError::NotFound(u.into()))
        }
    }

    async fn call(method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        call_on(Arc::new(Fake::default()), method, path, token).await
    }

    async fn call_on(
        fake: Arc<Fake>,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let tokens = vec![
            Token {
                token: "view".into(),
                role: Role::Viewer,
            },
            Token {
                token: "op".into(),
                role: Role::Operator,
            },
        ];
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            fake,
            tokens,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = reqwest::Client::new().request(method, format!("http://{addr}{path}"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        (code, response.text().await.unwrap())
    }

    // Proves metrics are open, reads need a viewer token, actions need an operator token.
    #[tokio::test]
    async fn roles_are_enforced() {
        assert_eq!(call("GET", "/metrics", None).await.0, 200);
        assert_eq!(call("GET", "/links", None).await.0, 401);
        assert_eq!(call("GET", "/links", Some("wrong")).await.0, 401);
        let (code, body) = call("GET", "/links", Some("view")).await;
        assert_eq!(code, 200);
        assert!(body.contains("\"ready\""));
        assert!(body.contains("\"round_trip_us\":420"), "{body}");
        assert_eq!(
            call("POST", "/links/a.0/nope", Some("op")).await.0,
            404,
            "unknown action"
        );
        assert_eq!(
            call("POST", "/links/a.0/sign-off", Some("view")).await.0,
            403
        );
        assert_eq!(call("POST", "/links/a.0/sign-off", Some("op")).await.0, 200);
        assert_eq!(call("POST", "/links/zz/sign-off", Some("op")).await.0, 404);
        assert_eq!(call("GET", "/transactions/1", Some("view")).await.0, 404);
    }

    // Proves every refusal is reported to the switch with its reason, and nothing else is.
    #[tokio::test]
    async fn refusals_are_reported() {
        let fake = Arc::new(Fake::default());
        for (path, token, method) in [
            ("/links", None, "GET"),
            ("/links", Some("wrong"), "GET"),
            ("/links/a.0/sign-off", Some("view"), "POST"),
            ("/links", Some("view"), "GET"),
            ("/metrics", None, "GET"),
        ] {
            call_on(fake.clone(), method, path, token).await;
        }
        assert_eq!(
            *fake.refused.lock().unwrap(),
            [
                AuthRefusal::Unauthenticated,
                AuthRefusal::Unauthenticated,
                AuthRefusal::Forbidden
            ]
        );
    }
}
