//! The operators' HTTP surface, over the [`Admin`] trait the switch implements.
//!
//! - `GET /metrics`: Prometheus text format (open, for scrapers on the admin network).
//! - `GET /healthz`: 200 while the instance serves.
//! - `GET /links`: every bank link's state and load (role `viewer`).
//! - `POST /links/{name}/sign-off`, `POST /links/{name}/sign-on` (role `operator`).
//! - `GET /transactions/{rrn}`: one transaction, card number masked (role `viewer`).
//!
//! Every route but the first two needs `Authorization: Bearer TOKEN`; tokens and their
//! roles come from configuration and are compared in constant time.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read state.
    Viewer,
    /// Read state and act on links.
    Operator,
}

/// A bearer token and its role.
#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    pub token: String,
    pub role: Role,
}

/// A bank link as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

/// A failed admin action.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
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
pub trait Admin: Send + Sync + 'static {
    fn metrics(&self) -> String;
    /// A request was refused for its token (counted and logged by the switch).
    fn auth_refused(&self, why: AuthRefusal);
    fn links(&self) -> Vec<LinkView>;
    fn set_link(
        &self,
        name: &str,
        signed_on: bool,
    ) -> impl Future<Output = Result<(), AdminError>> + Send;
    fn transaction(
        &self,
        rrn: &str,
    ) -> impl Future<Output = Result<Option<TransactionView>, AdminError>> + Send;
}

struct AppState<A> {
    admin: Arc<A>,
    tokens: Vec<Token>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role a request's bearer token grants, if any.
fn role_of(headers: &HeaderMap, tokens: &[Token]) -> Option<Role> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let presented = auth.strip_prefix("Bearer ")?.trim();
    tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()))
        .map(|t| t.role)
}

// axum handlers return `Result<_, Response>`; boxing the error would only add noise.
#[allow(clippy::result_large_err)]
fn require<A: Admin>(
    state: &AppState<A>,
    headers: &HeaderMap,
    needed: Role,
) -> Result<(), Response> {
    let (why, answer) = match role_of(headers, &state.tokens) {
        Some(r) if r >= needed => return Ok(()),
        Some(_) => (
            AuthRefusal::Forbidden,
            (StatusCode::FORBIDDEN, "role not allowed\n"),
        ),
        None => (
            AuthRefusal::Unauthenticated,
            (StatusCode::UNAUTHORIZED, "bearer token required\n"),
        ),
    };
    state.admin.auth_refused(why);
    Err(answer.into_response())
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
    }
}

/// The routes, for serving or testing.
pub fn router<A: Admin>(admin: Arc<A>, tokens: Vec<Token>) -> Router {
    let state = Arc::new(AppState { admin, tokens });
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState<A>>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.admin.metrics())
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/links",
            get(|State(s): State<Arc<AppState<A>>>, h: HeaderMap| async move {
                require(&s, &h, Role::Viewer)?;
                Ok::<_, Response>(axum::Json(s.admin.links()))
            }),
        )
        .route(
            "/links/{name}/{action}",
            post(|State(s): State<Arc<AppState<A>>>, h: HeaderMap, Path((name, action)): Path<(String, String)>| async move {
                require(&s, &h, Role::Operator)?;
                let on = match action.as_str() {
                    "sign-on" => true,
                    "sign-off" => false,
                    _ => return Err((StatusCode::NOT_FOUND, "unknown action\n").into_response()),
                };
                tracing::info!(link = %name, action = %action, "operator action on bank link");
                s.admin.set_link(&name, on).await.map_err(error_response)?;
                Ok("done\n".into_response())
            }),
        )
        .route(
            "/transactions/{rrn}",
            get(|State(s): State<Arc<AppState<A>>>, h: HeaderMap, Path(rrn): Path<String>| async move {
                require(&s, &h, Role::Viewer)?;
                match s.admin.transaction(&rrn).await.map_err(error_response)? {
                    Some(t) => Ok(axum::Json(t).into_response()),
                    None => Err(error_response(AdminError::NotFound(rrn))),
                }
            }),
        )
        .with_state(state)
}

/// Serves until `shutdown`; returns the bound address through `on_bound`.
pub async fn serve<A: Admin>(
    addr: SocketAddr,
    admin: Arc<A>,
    tokens: Vec<Token>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(admin, tokens);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
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
