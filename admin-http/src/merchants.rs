//! Merchants from the back office (issue 12): list, create (the MAC key shown once),
//! enable and disable, limits and currencies, and MAC key rotation with an overlap
//! window in which the previous key still verifies (responses use the new key).
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/merchants` | `viewer` and up |
//! | `POST /v1/merchants`, `POST /v1/merchants/{id}/enable`, `.../disable`, `PUT /v1/merchants/{id}/limits`, `POST /v1/merchants/{id}/rotate-key` | `admin` and up |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use crate::v1::{Done, Problem, guarded};
use crate::{Admin, AppState, Role};

/// A merchant as operators see it (never its MAC key).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MerchantView {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    /// ISO 4217 numeric codes.
    pub currencies: Vec<u16>,
    pub limit_minor: u64,
    pub rate_per_s: u32,
    pub burst: u32,
    /// RFC 3339, UTC: until when the previous MAC key still verifies, during a rotation.
    pub previous_key_valid_until: Option<String>,
}

/// `POST /v1/merchants`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewMerchantBody {
    /// DE42: 1 to 15 printable characters without spaces.
    pub id: String,
    pub name: String,
    pub currencies: Vec<u16>,
    pub limit_minor: u64,
    pub rate_per_s: u32,
    pub burst: u32,
}

/// `PUT /v1/merchants/{id}/limits`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Limits {
    pub currencies: Vec<u16>,
    pub limit_minor: u64,
    pub rate_per_s: u32,
    pub burst: u32,
}

/// `POST /v1/merchants/{id}/rotate-key`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Rotation {
    /// How long the previous key keeps verifying, in seconds (0 to 604800).
    pub overlap_s: u64,
}

/// A new MAC key, shown once (hex, 32 bytes).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MacKeyIssued {
    pub id: String,
    pub mac_key_hex: String,
    /// RFC 3339, UTC, after a rotation: the previous key's last moment.
    pub previous_key_valid_until: Option<String>,
}

type S<A> = State<Arc<AppState<A>>>;
type Peer = axum::extract::ConnectInfo<std::net::SocketAddr>;

#[utoipa::path(get, path = "/v1/merchants", responses((status = 200, body = Vec<MerchantView>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Viewer, false, |s, _p| async move {
        s.admin.merchants().await
    })
    .await
}

#[utoipa::path(post, path = "/v1/merchants", request_body = NewMerchantBody, responses((status = 200, body = MacKeyIssued), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn create<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    axum::Json(body): axum::Json<NewMerchantBody>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.create_merchant(&p, body).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/merchants/{id}/{verb}", params(("id" = String, Path, description = "DE42"), ("verb" = String, Path, description = "enable or disable")), responses((status = 200, body = Done), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn switch_on_off<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        let on = match verb.as_str() {
            "enable" => true,
            "disable" => false,
            _ => return Err(crate::AdminError::NotFound(format!("action {verb}"))),
        };
        s.admin
            .set_merchant_enabled(&p, &id, on)
            .await
            .map(|()| Done { done: true })
    })
    .await
}

#[utoipa::path(put, path = "/v1/merchants/{id}/limits", params(("id" = String, Path, description = "DE42")), request_body = Limits, responses((status = 200, body = MerchantView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn limits<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Limits>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.set_merchant_limits(&p, &id, body).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/merchants/{id}/rotate-key", params(("id" = String, Path, description = "DE42")), request_body = Rotation, responses((status = 200, body = MacKeyIssued), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn rotate<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<String>,
    axum::Json(body): axum::Json<Rotation>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.rotate_merchant_key(&p, &id, body).await
    })
    .await
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/merchants", get(list::<A>).post(create::<A>))
        .route("/v1/merchants/{id}/limits", put(limits::<A>))
        .route("/v1/merchants/{id}/rotate-key", post(rotate::<A>))
        .route("/v1/merchants/{id}/{verb}", post(switch_on_off::<A>))
}
