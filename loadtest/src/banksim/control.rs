//! The HTTP control endpoint: the record for tests and the load harness, a health check,
//! and a reset between runs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::record::{Record, Snapshot};

pub(crate) fn router(record: Arc<Record>) -> Router {
    Router::new()
        .route("/record", get(record_json))
        .route("/health", get(health))
        .route("/reset", post(reset))
        .with_state(record)
}

async fn record_json(State(record): State<Arc<Record>>) -> Json<Snapshot> {
    Json(record.snapshot())
}

async fn health() -> &'static str {
    "ok\n"
}

async fn reset(State(record): State<Arc<Record>>) -> StatusCode {
    record.reset();
    StatusCode::NO_CONTENT
}
