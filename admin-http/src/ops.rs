//! Back-office operations beyond refunds (issue 12): captures and voids with the refunds'
//! maker-checker, the store-and-forward queue, API keys and account switches. They are a
//! trait of their own ([`Operations`], which [`crate::Admin`] requires) so that these
//! routes stay together.
//!
//! | route | who |
//! |---|---|
//! | `POST /v1/transactions/{rrn}/captures`, `POST /v1/transactions/{rrn}/voids` | `merchant` (own merchant), `operator` and up |
//! | `GET /v1/saf` | `viewer` |
//! | `POST /v1/saf/{id}/retry` | `operator` |
//! | `POST /v1/saf/{id}/discard` | `approver` |
//! | `GET /v1/api-keys`, `DELETE /v1/api-keys/{id}` | `admin` |
//! | `POST /v1/accounts/{username}/disable`, `.../enable` | `admin` |
//!
//! Captures and voids are listed and decided with the refunds (`GET /v1/refund-requests`,
//! `POST /v1/refund-requests/{id}/approve`), told apart by `kind`.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use crate::refunds::{RefundAsk, RefundRequestView, may_request};
use crate::v1::{AccountView, Principal, Problem, guarded, guarded_if};
use crate::{AdminError, AppState, Role};

/// `POST /v1/transactions/{rrn}/voids`: reverse the transaction for its full amount.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct VoidAsk {
    /// Why (kept with the request and in the audit log; 1 to 255 characters).
    pub reason: String,
    /// The caller's key: the same key again returns the same request (1 to 64 characters).
    pub idempotency_key: String,
}

/// Who may make a queued message due now (`POST /v1/saf/{id}/retry`, and the console's
/// "Retry now").
pub const SAF_RETRY_ROLE: Role = Role::Operator;
/// Who may discard a queued message (`POST /v1/saf/{id}/discard`, and the console's
/// "Discard"): the four-eyes rule for dropping a reversal the bank never heard.
pub const SAF_DISCARD_ROLE: Role = Role::Approver;

/// `GET /v1/saf` filters; newest first, `before_id` is the cursor.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SafQuery {
    /// pending, acknowledged, expired or discarded.
    pub state: Option<String>,
    pub bank_id: Option<String>,
    pub before_id: Option<i64>,
    /// 1 to 500; 100 when absent.
    pub limit: Option<u32>,
}

/// A message in the store-and-forward queue: a reversal or a completion advice the switch
/// repeats to a bank until the bank answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SafItem {
    pub id: i64,
    /// `reversal` or `advice`.
    pub kind: String,
    /// Why it was queued (`timeout`, `recovery`, `completion`...).
    pub reason: String,
    pub bank_id: String,
    /// pending, acknowledged, expired or discarded.
    pub state: String,
    pub attempts: i32,
    /// The transaction it is about.
    pub rrn: String,
    pub merchant_id: String,
    pub amount_minor: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC: the next repeat while pending.
    pub next_attempt_at: String,
    pub last_response_code: Option<String>,
    pub discarded_by: Option<String>,
    pub discard_reason: Option<String>,
}

/// A page of the queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SafPage {
    pub items: Vec<SafItem>,
    /// Pass as `before_id` for the next page; absent on the last.
    pub next_before_id: Option<i64>,
}

/// `POST /v1/saf/{id}/discard`: why the switch may stop repeating the message.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Discard {
    /// 1 to 255 characters.
    pub reason: String,
}

/// An API key as admins see it (never the key).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    /// The username of the account that created it.
    pub created_by: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

/// What the switch provides for these routes.
pub trait Operations: Send + Sync + 'static {
    /// Records a capture (0220) of the pre-authorisation `rrn`, executed unless it needs
    /// approval; the same idempotency key again returns the same request.
    fn request_capture(
        &self,
        who: &Principal,
        rrn: &str,
        ask: RefundAsk,
    ) -> impl Future<Output = Result<RefundRequestView, AdminError>> + Send;
    /// Records a void (0400, full amount) of transaction `rrn`, as a capture.
    fn request_void(
        &self,
        who: &Principal,
        rrn: &str,
        ask: VoidAsk,
    ) -> impl Future<Output = Result<RefundRequestView, AdminError>> + Send;
    fn saf(&self, query: SafQuery) -> impl Future<Output = Result<SafPage, AdminError>> + Send;
    /// Sends a pending (or expired, which becomes pending again) message at once.
    fn saf_retry(
        &self,
        who: &Principal,
        id: i64,
    ) -> impl Future<Output = Result<SafItem, AdminError>> + Send;
    /// Stops repeating a pending or expired message, with a reason.
    fn saf_discard(
        &self,
        who: &Principal,
        id: i64,
        body: Discard,
    ) -> impl Future<Output = Result<SafItem, AdminError>> + Send;
    fn api_keys(&self) -> impl Future<Output = Result<Vec<ApiKeyView>, AdminError>> + Send;
    fn revoke_api_key(
        &self,
        who: &Principal,
        id: i64,
    ) -> impl Future<Output = Result<ApiKeyView, AdminError>> + Send;
    /// Disables (its sessions end) or enables an account.
    fn set_account_disabled(
        &self,
        who: &Principal,
        username: &str,
        disabled: bool,
    ) -> impl Future<Output = Result<AccountView, AdminError>> + Send;
}

type S<A> = State<Arc<AppState<A>>>;
type Peer = axum::extract::ConnectInfo<std::net::SocketAddr>;

#[utoipa::path(post, path = "/v1/transactions/{rrn}/captures", params(("rrn" = String, Path, description = "the pre-authorisation")), request_body = RefundAsk, responses((status = 200, body = RefundRequestView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn capture<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(rrn): Path<String>,
    axum::Json(body): axum::Json<RefundAsk>,
) -> Response {
    guarded_if(s, h, peer, may_request, false, |s, p| async move {
        s.admin.request_capture(&p, &rrn, body).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/transactions/{rrn}/voids", params(("rrn" = String, Path, description = "the transaction to reverse")), request_body = VoidAsk, responses((status = 200, body = RefundRequestView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn void<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(rrn): Path<String>,
    axum::Json(body): axum::Json<VoidAsk>,
) -> Response {
    guarded_if(s, h, peer, may_request, false, |s, p| async move {
        s.admin.request_void(&p, &rrn, body).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/saf", params(SafQuery), responses((status = 200, body = SafPage), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn saf<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Query(q): Query<SafQuery>,
) -> Response {
    guarded(s, h, peer, Role::Viewer, false, |s, _| async move {
        s.admin.saf(q).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/saf/{id}/retry", params(("id" = i64, Path, description = "the queued message")), responses((status = 200, body = SafItem), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn saf_retry<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    guarded(s, h, peer, SAF_RETRY_ROLE, false, |s, p| async move {
        s.admin.saf_retry(&p, id).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/saf/{id}/discard", params(("id" = i64, Path, description = "the queued message")), request_body = Discard, responses((status = 200, body = SafItem), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn saf_discard<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
    axum::Json(body): axum::Json<Discard>,
) -> Response {
    guarded(s, h, peer, SAF_DISCARD_ROLE, false, |s, p| async move {
        s.admin.saf_discard(&p, id, body).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/api-keys", responses((status = 200, body = Vec<ApiKeyView>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn api_keys<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, _| async move {
        s.admin.api_keys().await
    })
    .await
}

#[utoipa::path(delete, path = "/v1/api-keys/{id}", params(("id" = i64, Path, description = "the key")), responses((status = 200, body = ApiKeyView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn revoke_api_key<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.revoke_api_key(&p, id).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{username}/{switch}", params(("username" = String, Path, description = "the account"), ("switch" = String, Path, description = "disable or enable")), responses((status = 200, body = AccountView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn account_switch<A: crate::Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path((username, switch)): Path<(String, String)>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        let disabled = match switch.as_str() {
            "disable" => true,
            "enable" => false,
            _ => return Err(AdminError::NotFound(format!("action {switch}"))),
        };
        s.admin.set_account_disabled(&p, &username, disabled).await
    })
    .await
}

pub(crate) fn routes<A: crate::Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/transactions/{rrn}/captures", post(capture::<A>))
        .route("/v1/transactions/{rrn}/voids", post(void::<A>))
        .route("/v1/saf", get(saf::<A>))
        .route("/v1/saf/{id}/retry", post(saf_retry::<A>))
        .route("/v1/saf/{id}/discard", post(saf_discard::<A>))
        .route("/v1/api-keys", get(api_keys::<A>))
        .route("/v1/api-keys/{id}", delete(revoke_api_key::<A>))
        .route(
            "/v1/accounts/{username}/{switch}",
            post(account_switch::<A>),
        )
}
