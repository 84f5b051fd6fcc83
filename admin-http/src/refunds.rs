//! Refunds from the back office with maker-checker (issue 12). A request at or below the
//! configured amount is executed at once; above it, it waits for a different person with
//! role `approver` (or higher), and expires if nobody decides in time. Execution goes
//! through the merchant request path: the same checks, journal and bank messages as a
//! merchant's 0200 refund, and the merchant is told the outcome with a 0620.
//!
//! | route | who |
//! |---|---|
//! | `POST /v1/transactions/{rrn}/refunds` | `merchant` (own merchant), `operator` and up |
//! | `GET /v1/refund-requests` | `merchant` (own merchant), `viewer` and up |
//! | `POST /v1/refund-requests/{id}/approve`, `.../reject` | `approver` and up, not the requester |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::v1::{guarded, guarded_if};
use crate::{Admin, AppState, Role};

/// `POST /v1/transactions/{rrn}/refunds`: refund part or all of a purchase or completion.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct RefundAsk {
    pub amount_minor: i64,
    /// Why (sent to the bank as DE48 `RR`, at most 255 characters).
    pub reason: String,
    /// The caller's key: the same key again returns the same request (1 to 64 characters).
    pub idempotency_key: String,
}

/// A refund request and where it stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefundRequestView {
    pub id: i64,
    /// refund (0200), capture (0220) or void (0400).
    pub kind: String,
    /// pending, approved, rejected, expired, executed, failed (a pending request past
    /// `expires_at` shows as expired).
    pub state: String,
    pub original_rrn: String,
    pub merchant_id: String,
    pub amount_minor: i64,
    pub reason: String,
    pub requested_by: String,
    pub needs_approval: bool,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    /// The refund transaction, once executed.
    pub refund_rrn: Option<String>,
    /// Its DE39, once executed (`00`: approved by the bank).
    pub response_code: Option<String>,
    /// Why it could never be sent, once `failed` (its original or merchant unknown to the
    /// switch, a message that cannot be built).
    pub failure: Option<String>,
}

/// A back-office request's states (the list's `state` filter's values).
pub const REQUEST_STATES: [&str; 6] = [
    "pending", "approved", "rejected", "expired", "executed", "failed",
];

/// `GET /v1/refund-requests` filters.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RefundListQuery {
    pub state: Option<String>,
}

/// Whether `role` may ask for refunds: merchant users (their own merchant's) and
/// operators and up; viewers only look.
pub fn may_request(role: Role) -> bool {
    role == Role::Merchant || role >= Role::Operator
}

#[utoipa::path(post, path = "/v1/transactions/{rrn}/refunds", params(("rrn" = String, Path, description = "the purchase or completion")), request_body = RefundAsk, responses((status = 200, body = RefundRequestView), (status = "default", body = crate::v1::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn ask<A: Admin>(
    State(s): State<Arc<AppState<A>>>,
    peer: axum::extract::ConnectInfo<std::net::SocketAddr>,
    h: HeaderMap,
    Path(rrn): Path<String>,
    axum::Json(body): axum::Json<RefundAsk>,
) -> Response {
    guarded_if(s, h, peer, may_request, false, |s, p| async move {
        s.admin.request_refund(&p, &rrn, body).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/refund-requests", params(RefundListQuery), responses((status = 200, body = Vec<RefundRequestView>), (status = "default", body = crate::v1::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list<A: Admin>(
    State(s): State<Arc<AppState<A>>>,
    peer: axum::extract::ConnectInfo<std::net::SocketAddr>,
    h: HeaderMap,
    Query(q): Query<RefundListQuery>,
) -> Response {
    guarded(s, h, peer, Role::Merchant, false, |s, p| async move {
        s.admin.refund_requests(&p, q).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/refund-requests/{id}/{verb}", params(("id" = i64, Path, description = "the request"), ("verb" = String, Path, description = "approve or reject")), responses((status = 200, body = RefundRequestView), (status = "default", body = crate::v1::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn decide<A: Admin>(
    State(s): State<Arc<AppState<A>>>,
    peer: axum::extract::ConnectInfo<std::net::SocketAddr>,
    h: HeaderMap,
    Path((id, verb)): Path<(i64, String)>,
) -> Response {
    guarded(s, h, peer, Role::Approver, false, |s, p| async move {
        let approve = match verb.as_str() {
            "approve" => true,
            "reject" => false,
            _ => return Err(crate::AdminError::NotFound(format!("action {verb}"))),
        };
        s.admin.decide_refund(&p, id, approve).await
    })
    .await
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/transactions/{rrn}/refunds", post(ask::<A>))
        .route("/v1/refund-requests", get(list::<A>))
        .route("/v1/refund-requests/{id}/{verb}", post(decide::<A>))
}
