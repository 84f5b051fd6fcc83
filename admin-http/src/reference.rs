//! Reference data and operations from the back office (issue 12): BIN routes changed
//! without a restart, bank links signed on and off, settlement totals per business day,
//! ledger balances, and the live overview's figures.
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/routes` | `viewer` and up |
//! | `POST /v1/routes`, `PUT /v1/routes/{id}`, `DELETE /v1/routes/{id}` | `admin` and up |
//! | `GET /v1/links` | `viewer` and up |
//! | `POST /v1/links/{name}/sign-on`, `.../sign-off` | `operator` and up |
//! | `GET /v1/settlement?business_day=`, `GET /v1/ledger/balances` | `merchant` (own merchant only) and every operator role |
//! | `GET /v1/overview` | `viewer` and up |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use crate::v1::{Problem, guarded};
use crate::{Admin, AdminError, AppState, LinkView, Role};

/// Who may add, change and remove BIN routes (here and in the console).
pub const ROUTES_ROLE: Role = Role::Admin;

/// A BIN route: card numbers whose first `len(low)` digits lie in `[low, high]` go to
/// `bank_id`. Where ranges overlap the narrowest wins, then the higher priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RouteView {
    pub id: i64,
    pub low: String,
    pub high: String,
    pub bank_id: String,
    pub priority: i32,
}

/// `POST /v1/routes`, `PUT /v1/routes/{id}`: bounds are digit strings of equal length
/// (1 to 19), `low <= high`; the bank must be configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct RouteBody {
    pub low: String,
    pub high: String,
    pub bank_id: String,
    /// Breaks ties between ranges of the same width (higher wins); 0 when absent.
    #[serde(default)]
    pub priority: i32,
}

/// `GET /v1/settlement` parameters.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SettlementQuery {
    /// The business day, `YYYY-MM-DD` (UTC less the configured cut-over hour).
    pub business_day: String,
}

/// One party's postings in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SettlementLine {
    /// `merchant` or `bank`.
    pub party: String,
    pub party_id: String,
    /// ISO 4217 numeric.
    pub currency: i16,
    /// Ledger postings (one per purchase, completion, refund or reversal).
    pub postings: i64,
    /// Their sum in minor units: a bank's positive is owed by the bank, a merchant's
    /// negative is owed to the merchant.
    pub amount_minor: i64,
}

/// The settlement totals of one business day.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SettlementReport {
    pub business_day: String,
    pub lines: Vec<SettlementLine>,
}

/// Whether `day` reads `YYYY-MM-DD` with a month 01-12 and a day 01-31 (the database
/// refuses the impossible dates that remain, such as 2026-02-30).
pub fn is_business_day(day: &str) -> bool {
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        digits(r.clone())
            .then(|| day[r].parse::<u8>().ok())
            .flatten()
    };
    matches!(num(5..7), Some(1..=12)) && matches!(num(8..10), Some(1..=31))
}

/// `POST /v1/links/{name}/sign-on` or `sign-off`: the link as it was when asked (the
/// change happens on the link's own task, within moments).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LinkAction {
    pub before: LinkView,
    /// `sign-on` or `sign-off`.
    pub action: String,
}

/// One response code's answers per second over the overview's samples.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RcSeries {
    /// DE39, e.g. `00`.
    pub rc: String,
    pub per_s: Vec<f64>,
}

/// Percentiles of the time the switch adds to a request, per sample interval, in
/// milliseconds (`null` where no request was answered in that interval).
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
pub struct LatencySeries {
    pub p50_ms: Vec<Option<f64>>,
    pub p90_ms: Vec<Option<f64>>,
    pub p99_ms: Vec<Option<f64>>,
}

/// The live overview: the switch's own figures over its last few minutes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// Milliseconds between samples.
    pub interval_ms: u64,
    /// The end of each sample interval, milliseconds since the Unix epoch.
    pub at_ms: Vec<u64>,
    /// Merchant requests answered per second, by response code.
    pub requests_per_s: Vec<RcSeries>,
    pub latency: LatencySeries,
    pub links: Vec<LinkView>,
}

/// A ledger account's balance over every posting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Balance {
    /// `merchant` or `bank`.
    pub party: String,
    pub party_id: String,
    pub currency: i16,
    pub postings: i64,
    /// Same sign rule as [`SettlementLine::amount_minor`].
    pub balance_minor: i64,
}

type S<A> = State<Arc<AppState<A>>>;
type Peer = axum::extract::ConnectInfo<std::net::SocketAddr>;

#[utoipa::path(get, path = "/v1/routes", responses((status = 200, body = Vec<RouteView>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn list_routes<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Viewer, false, |s, _p| async move {
        s.admin.routes().await
    })
    .await
}

#[utoipa::path(post, path = "/v1/routes", request_body = RouteBody, responses((status = 200, body = RouteView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn add_route<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    axum::Json(body): axum::Json<RouteBody>,
) -> Response {
    guarded(s, h, peer, ROUTES_ROLE, false, |s, p| async move {
        s.admin.add_route(&p, body).await
    })
    .await
}

#[utoipa::path(put, path = "/v1/routes/{id}", params(("id" = i64, Path, description = "the route")), request_body = RouteBody, responses((status = 200, body = RouteView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn change_route<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
    axum::Json(body): axum::Json<RouteBody>,
) -> Response {
    guarded(s, h, peer, ROUTES_ROLE, false, |s, p| async move {
        s.admin.change_route(&p, id, body).await
    })
    .await
}

#[utoipa::path(delete, path = "/v1/routes/{id}", params(("id" = i64, Path, description = "the route")), responses((status = 200, body = RouteView, description = "the route removed"), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn remove_route<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    guarded(s, h, peer, ROUTES_ROLE, false, |s, p| async move {
        s.admin.remove_route(&p, id).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/links", responses((status = 200, body = Vec<LinkView>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn links<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Viewer, false, |s, _p| async move {
        Ok::<_, AdminError>(s.admin.links())
    })
    .await
}

/// `sign-on` or `sign-off` as the wanted state; `NotFound` for other words.
pub fn link_verb(verb: &str) -> Result<bool, AdminError> {
    match verb {
        "sign-on" => Ok(true),
        "sign-off" => Ok(false),
        _ => Err(AdminError::NotFound(format!("action {verb}"))),
    }
}

#[utoipa::path(post, path = "/v1/links/{name}/{verb}", params(("name" = String, Path, description = "the link, `<bank>.<index>`"), ("verb" = String, Path, description = "sign-on or sign-off")), responses((status = 200, body = LinkAction), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn sign_link<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path((name, verb)): Path<(String, String)>,
) -> Response {
    guarded(s, h, peer, Role::Operator, false, |s, p| async move {
        let on = link_verb(&verb)?;
        let before = s.admin.sign_link(&p, &name, on).await?;
        Ok(LinkAction {
            before,
            action: verb,
        })
    })
    .await
}

#[utoipa::path(get, path = "/v1/settlement", params(SettlementQuery), responses((status = 200, body = SettlementReport), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn settlement<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Query(q): Query<SettlementQuery>,
) -> Response {
    guarded(s, h, peer, Role::Merchant, false, |s, p| async move {
        if !is_business_day(&q.business_day) {
            return Err(AdminError::Invalid("business_day: YYYY-MM-DD".into()));
        }
        s.admin.settlement(&p, &q.business_day).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/ledger/balances", responses((status = 200, body = Vec<Balance>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn balances<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Merchant, false, |s, p| async move {
        s.admin.ledger_balances(&p).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/overview", responses((status = 200, body = Overview), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn overview<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Viewer, false, |s, _p| async move {
        Ok::<_, AdminError>(s.admin.overview())
    })
    .await
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/routes", get(list_routes::<A>).post(add_route::<A>))
        .route(
            "/v1/routes/{id}",
            put(change_route::<A>).delete(remove_route::<A>),
        )
        .route("/v1/links", get(links::<A>))
        .route("/v1/links/{name}/{verb}", post(sign_link::<A>))
        .route("/v1/settlement", get(settlement::<A>))
        .route("/v1/ledger/balances", get(balances::<A>))
        .route("/v1/overview", get(overview::<A>))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the business-day shape check: well-formed dates pass, others do not.
    #[test]
    fn business_days() {
        assert!(is_business_day("2026-12-01"));
        assert!(is_business_day("2026-02-31"), "left to the database");
        for bad in [
            "2026-13-01",
            "2026-00-10",
            "2026-1-01",
            "20261201",
            "2026-12-32",
            "abcd-12-01",
            "2026-12-0٣",
            "",
        ] {
            assert!(!is_business_day(bad), "{bad}");
        }
    }
}
