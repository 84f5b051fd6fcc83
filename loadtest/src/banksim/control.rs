//! The HTTP control endpoint: the record for tests and the load harness, a health check,
//! a reset between runs, and advices the bank starts on command.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::advise::{AdviceRequest, AdviseError};
use super::link::Shared;
use super::record::Snapshot;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/record", get(record_json))
        .route("/health", get(health))
        .route("/reset", post(reset))
        .route("/advise/reversal/{rrn}", post(advise_reversal))
        .route("/links/cut", post(cut_links))
        .with_state(shared)
}

async fn record_json(State(shared): State<Arc<Shared>>) -> Json<Snapshot> {
    Json(shared.record.snapshot())
}

async fn health() -> &'static str {
    "ok\n"
}

async fn reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.record.reset();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct CutQuery {
    #[serde(default)]
    down_ms: u64,
}

/// `POST /links/cut?down_ms=N`: closes every bank link now and refuses connections for N
/// milliseconds (0 by default, at most [`super::gate::LINK_DOWN_MAX`]); answers
/// `{"cuts": n}`.
async fn cut_links(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<CutQuery>,
) -> Json<serde_json::Value> {
    let down = std::time::Duration::from_millis(q.down_ms);
    let n = shared.gate.cut(down, tokio::time::Instant::now());
    Json(serde_json::json!({ "cuts": n }))
}

/// `?repeat_of_stan=S&de7=D`: send the advice again as 0421 with these DE11 and DE7.
/// `?stan=S` and/or `?de7=D` alone: a 0420 with this DE11 and/or DE7 instead of a fresh
/// STAN and the time now (to set up collisions in tests).
#[derive(Debug, Deserialize)]
struct AdviseQuery {
    repeat_of_stan: Option<String>,
    stan: Option<String>,
    de7: Option<String>,
}

/// `POST /advise/reversal/{rrn}`: sends a 0420 (or a 0421, see [`AdviseQuery`]) on a
/// connected bank link and answers, once the 0430 came or 5 s passed,
/// `{"acknowledged", "rc", "mti", "rrn", "stan", "de7"}`; 400 for a malformed request,
/// 503 when no link is connected.
async fn advise_reversal(
    State(shared): State<Arc<Shared>>,
    Path(rrn): Path<String>,
    Query(q): Query<AdviseQuery>,
) -> (StatusCode, Json<serde_json::Value>) {
    if q.repeat_of_stan.is_some() && q.stan.is_some() {
        let e = "repeat_of_stan and stan exclude each other";
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "acknowledged": false, "error": e })),
        );
    }
    let req = AdviceRequest {
        rrn: &rrn,
        repeat: q.repeat_of_stan.is_some(),
        stan: q.repeat_of_stan.as_deref().or(q.stan.as_deref()),
        de7: q.de7.as_deref(),
    };
    match shared.advisor.reversal(req).await {
        Ok(outcome) => (
            StatusCode::OK,
            Json(serde_json::to_value(outcome).unwrap_or_default()),
        ),
        Err(e) => {
            let status = match e {
                AdviseError::NoLink => StatusCode::SERVICE_UNAVAILABLE,
                AdviseError::Invalid(_) => StatusCode::BAD_REQUEST,
                AdviseError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = serde_json::json!({ "acknowledged": false, "error": e.to_string() });
            (status, Json(body))
        }
    }
}
