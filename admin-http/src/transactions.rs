//! The back office's transaction routes (issue 12): search with cursor pagination and a
//! transaction's chain as a timeline. Merchant users see only their own merchant's
//! transactions: their searches are scoped to it and other merchants' transactions are
//! answered 404, as if they did not exist.
//!
//! | route | who |
//! |---|---|
//! | `GET /v1/transactions` | `merchant` (own merchant only) and every operator role |
//! | `GET /v1/transactions/{rrn}` | the same |

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::v1::{Principal, guarded};
use crate::{Admin, AppState, Role};

/// `GET /v1/transactions` filters (all optional, combined with AND); newest first.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TxnQuery {
    pub merchant_id: Option<String>,
    pub order_ref: Option<String>,
    pub rrn: Option<String>,
    pub stan: Option<String>,
    pub terminal_id: Option<String>,
    /// authorising, approved, declined, refused, reversing, reversed, captured.
    pub state: Option<String>,
    /// purchase, preauth, completion, refund, reversal.
    pub kind: Option<String>,
    /// Inclusive bounds, minor units.
    pub amount_min: Option<i64>,
    pub amount_max: Option<i64>,
    /// Inclusive RFC 3339 bounds on when the switch received the request.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The cursor: `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    /// 1 to 200; 50 when absent.
    pub limit: Option<u32>,
}

/// A transaction in a list (the card number masked to its last four digits).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TxnSummary {
    pub rrn: String,
    pub kind: String,
    pub state: String,
    pub merchant_id: String,
    pub terminal_id: String,
    pub stan: String,
    pub amount_minor: i64,
    pub currency: i16,
    pub response_code: Option<String>,
    /// `************1234`, or absent for requests without a card.
    pub card: Option<String>,
    pub order_ref: Option<String>,
    /// The RRN of the transaction this one acts on (refunds, completions, reversals).
    pub original_rrn: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
}

/// A page of transactions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TxnPage {
    pub transactions: Vec<TxnSummary>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<i64>,
}

/// One event of a payment's life.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TimelineEvent {
    /// RFC 3339, UTC.
    pub at: String,
    /// `transaction`, `notification` (0620 to the merchant), `store-and-forward` (a
    /// reversal or advice queued for the bank).
    pub source: String,
    /// What happened: the transaction's kind, the notification's event, the queue row's
    /// kind.
    pub what: String,
    /// The transaction the event belongs to.
    pub rrn: String,
    /// The transaction's state, the notification's status, or the queue row's state.
    pub state: String,
    pub amount_minor: Option<i64>,
    pub response_code: Option<String>,
}

/// A transaction with its whole chain: the original, completions, refunds, reversals,
/// notifications and store-and-forward rows, oldest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TxnDetail {
    pub transaction: TxnSummary,
    pub timeline: Vec<TimelineEvent>,
}

/// The merchant a principal's queries are confined to, checked against what it asked:
/// `Err` when a merchant user asks for another merchant.
pub fn scope(who: &Principal, asked: Option<&str>) -> Result<Option<String>, crate::AdminError> {
    match (&who.merchant_id, asked) {
        (Some(own), Some(a)) if a != own => Err(crate::AdminError::Forbidden(
            "a merchant user sees its own merchant only".into(),
        )),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, a) => Ok(a.map(str::to_string)),
    }
}

/// Whether a principal may see a transaction of `merchant_id`: operators all, merchant
/// users their own merchant's only.
pub fn visible_to(who: &Principal, merchant_id: &str) -> bool {
    who.merchant_id
        .as_deref()
        .is_none_or(|own| own == merchant_id)
}

pub(crate) type S<A> = State<Arc<AppState<A>>>;
/// A transaction's states, the `state` filter's values (migrations V1, V2).
pub const TXN_STATES: [&str; 7] = [
    "authorising",
    "approved",
    "declined",
    "refused",
    "reversing",
    "reversed",
    "captured",
];
/// A transaction's kinds, the `kind` filter's values.
pub const TXN_KINDS: [&str; 5] = ["purchase", "preauth", "completion", "refund", "reversal"];

/// Refuses (`Invalid`, 422) a filter `name` whose `value` is not one of `allowed`, naming
/// them: an unknown value would otherwise match nothing and look like an empty result.
pub fn one_of(name: &str, value: Option<&str>, allowed: &[&str]) -> Result<(), crate::AdminError> {
    match value {
        Some(v) if !allowed.contains(&v) => Err(crate::AdminError::Invalid(format!(
            "{name} must be one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Checks a search's filters before the database sees them: `from` and `to` are RFC 3339
/// date-times (PostgreSQL alone would also read `yesterday` or `now`), `state` and `kind`
/// among [`TXN_STATES`] and [`TXN_KINDS`]. `Invalid` (422) naming the filter otherwise.
pub fn check_query(q: &TxnQuery) -> Result<(), crate::AdminError> {
    use time::format_description::well_known::Rfc3339;
    for (name, value) in [("from", &q.from), ("to", &q.to)] {
        if let Some(v) = value {
            time::OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                crate::AdminError::Invalid(format!(
                    "{name} must be an RFC 3339 date-time such as 2026-12-01T04:00:00Z"
                ))
            })?;
        }
    }
    one_of("state", q.state.as_deref(), &TXN_STATES)?;
    one_of("kind", q.kind.as_deref(), &TXN_KINDS)
}

pub(crate) type Peer = axum::extract::ConnectInfo<std::net::SocketAddr>;

#[utoipa::path(get, path = "/v1/transactions", params(TxnQuery), responses((status = 200, body = TxnPage), (status = "default", body = crate::v1::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn search<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Query(q): Query<TxnQuery>,
) -> Response {
    guarded(s, h, peer, Role::Merchant, false, |s, p| async move {
        s.admin.search_transactions(&p, q).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/transactions/{rrn}", params(("rrn" = String, Path, description = "12 digits")), responses((status = 200, body = TxnDetail), (status = "default", body = crate::v1::Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn detail<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(rrn): Path<String>,
) -> Response {
    guarded(s, h, peer, Role::Merchant, false, |s, p| async move {
        s.admin.transaction_chain(&p, &rrn).await
    })
    .await
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/transactions", get(search::<A>))
        .route("/v1/transactions/{rrn}", get(detail::<A>))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves search times must be RFC 3339 (not whatever PostgreSQL reads as a time) and
    // states and kinds among those there are.
    #[test]
    fn search_filters_are_checked() {
        let q = |from: &str, state: Option<&str>| TxnQuery {
            from: Some(from.into()),
            state: state.map(String::from),
            ..TxnQuery::default()
        };
        assert!(check_query(&q("2026-12-01T04:00:00Z", Some("approved"))).is_ok());
        assert!(check_query(&q("2026-12-01T04:00:00.5+01:00", None)).is_ok());
        for bad in ["yesterday", "now", "2026-12-01", ""] {
            assert!(check_query(&q(bad, None)).is_err(), "{bad}");
        }
        let e = check_query(&q("2026-12-01T04:00:00Z", Some("bogus"))).unwrap_err();
        assert!(e.to_string().contains("captured"), "{e}");
        let kind = TxnQuery {
            kind: Some("gift".into()),
            ..TxnQuery::default()
        };
        assert!(check_query(&kind).is_err());
    }
}
