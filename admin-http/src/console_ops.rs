//! The console's pages for the back-office operations of [`crate::ops`] (issue 12): the
//! store-and-forward queue (filter by state and bank, page by page, "Retry now" for
//! [`SAF_RETRY_ROLE`] and up, "Discard" with a reason for [`SAF_DISCARD_ROLE`] and up).
//!
//! Each action goes through the same [`crate::ops::Operations`] call as its `/v1` twin and
//! the same role floor (the constants the API's routes use); the switch checks the rest
//! (a discard's reason, the message's state) once, for both. Every form carries the
//! session's CSRF token (see [`crate::console`]).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::context;
use serde::Deserialize;

use crate::console::{Peer, S, changing, csrf_of, render, ser};
use crate::console_pages::{Flash, permit, viewing};
use crate::ops::{Discard, SAF_DISCARD_ROLE, SAF_RETRY_ROLE, SafQuery};
use crate::v1::Principal;
use crate::{Admin, AdminError, AppState, Role};

/// Messages on one page of the console's queue.
pub const SAF_CONSOLE_PAGE: u32 = 50;

/// This module's templates, registered with the console's.
/// The queue page's filters as the browser sends them: empty fields are no filter.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SafFilter {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub bank_id: String,
    /// The cursor of the page before (`next_before_id`).
    #[serde(default)]
    pub before_id: String,
}

impl SafFilter {
    /// The API's query for these filters, [`SAF_CONSOLE_PAGE`] messages at a time.
    pub fn query(&self) -> Result<SafQuery, AdminError> {
        let given = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
        let before_id = match given(&self.before_id) {
            None => None,
            Some(v) => Some(v.parse::<i64>().map_err(|_| {
                AdminError::Invalid("before_id: a message id (a whole number)".into())
            })?),
        };
        Ok(SafQuery {
            state: given(&self.state),
            bank_id: given(&self.bank_id),
            before_id,
            limit: Some(SAF_CONSOLE_PAGE),
        })
    }
}

/// 403 for an action the principal's role does not allow, else 200 (the page shows what
/// happened either way).
fn status_of<T>(done: &Result<T, AdminError>) -> StatusCode {
    match done {
        Err(AdminError::Forbidden(_)) => StatusCode::FORBIDDEN,
        _ => StatusCode::OK,
    }
}

async fn saf_page<A: Admin>(
    s: &AppState<A>,
    (p, token): (Principal, String),
    filter: SafFilter,
    status: StatusCode,
    f: Flash,
) -> Response {
    let page = match filter.query() {
        Ok(q) => s.admin.saf(q).await,
        Err(e) => Err(e),
    };
    let (items, next, error) = match page {
        Ok(page) => (page.items, page.next_before_id, f.error),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    render(
        status,
        "saf.html",
        context! {
            title => "store-and-forward", who => ser(&p), csrf => csrf_of(&token),
            may_retry => p.role >= SAF_RETRY_ROLE, may_discard => p.role >= SAF_DISCARD_ROLE,
            items => ser(&items), next_before_id => next, state => filter.state.trim(),
            bank_id => filter.bank_id.trim(), error => error, notice => f.notice,
        },
    )
}

async fn saf<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Query(filter): Query<SafFilter>,
) -> Response {
    match viewing(&s, &h, peer, Role::Viewer).await {
        Ok(who) => saf_page(&s, who, filter, StatusCode::OK, Flash::default()).await,
        Err(r) => r,
    }
}

/// The retry and discard forms: a discard's reason (a retry has none).
#[derive(Debug, Deserialize)]
pub struct SafActionForm {
    pub csrf: String,
    #[serde(default)]
    pub reason: String,
}

/// "Retry now" (`verb` `retry`) or "Discard" (`discard`, with the form's reason) of
/// queued message `id`; the queue page after.
async fn saf_action<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((id, verb)): Path<(i64, String)>,
    Form(f): Form<SafActionForm>,
) -> Response {
    let who = match changing(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let p = &who.0;
    let (done, what) = match verb.as_str() {
        "retry" => match permit(p, SAF_RETRY_ROLE) {
            Ok(()) => (s.admin.saf_retry(p, id).await, "retried: due now"),
            Err(e) => (Err(e), ""),
        },
        "discard" => match permit(p, SAF_DISCARD_ROLE) {
            Ok(()) => {
                let d = Discard { reason: f.reason };
                (s.admin.saf_discard(p, id, d).await, "discarded")
            }
            Err(e) => (Err(e), ""),
        },
        _ => (Err(AdminError::NotFound(format!("action {verb}"))), ""),
    };
    let status = status_of(&done);
    let flash = Flash::of(done, |m| (format!("message {} {what}", m.id), None));
    saf_page(&s, who, SafFilter::default(), status, flash).await
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/console/saf", get(saf::<A>))
        .route("/console/saf/{id}/{verb}", post(saf_action::<A>))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the queue page's filters: blanks are no filter, the page size is the
    // console's, and a cursor that is not a number is refused.
    #[test]
    fn filters() {
        let q = SafFilter {
            state: " pending ".into(),
            bank_id: String::new(),
            before_id: "42".into(),
        }
        .query()
        .unwrap();
        assert_eq!(q.state.as_deref(), Some("pending"));
        assert_eq!(q.bank_id, None);
        assert_eq!(q.before_id, Some(42));
        assert_eq!(q.limit, Some(SAF_CONSOLE_PAGE));
        let bad = SafFilter {
            before_id: "x".into(),
            ..SafFilter::default()
        };
        assert!(matches!(bad.query(), Err(AdminError::Invalid(_))));
    }
}
