//! The web console (issue 12): server-rendered pages (minijinja templates in
//! `admin-http/console/templates`) with htmx (vendored in `admin-http/console/vendor`, served
//! by the switch itself: the console needs no other network) over the same [`Admin`] calls as
//! the `/v1` API. Sign-in with password and TOTP; the session token travels in an
//! `HttpOnly; Secure; SameSite=Strict` cookie, and every form that changes something carries
//! a CSRF token derived from the session (SHA-256 of a fixed label and the token), checked
//! in constant time.
//!
//! Pages: `/console/login`, `/console/overview` (live charts, bank links, readiness),
//! `/console/transactions` (search; refund, capture and void requests), `/console/refunds`
//! (the approval queue of all three); TOTP enrolment, routes, links and merchants are in [`crate::console_pages`], the
//! store-and-forward queue in [`crate::console_ops`]. An
//! account that must enrol TOTP signs in with its password and lands on the enrolment page.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use minijinja::{Environment, Value, context};
use serde::Deserialize;

use crate::ops::VoidAsk;
use crate::refunds::{RefundAsk, RefundListQuery, may_request};
use crate::transactions::TxnQuery;
use crate::v1::{LoginRequest, Principal};
use crate::{Admin, AdminError, AppState, Role, constant_time_eq};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sy_session";
const HTMX: &str = include_str!("../console/vendor/htmx.min.js");
/// Every page of the console, including those of [`crate::console_pages`] and
/// [`crate::console_ops`] (kept here so that they depend on this module, not it on them).
const TEMPLATES: [(&str, &str); 12] = [
    ("base.html", include_str!("../console/templates/base.html")),
    (
        "login.html",
        include_str!("../console/templates/login.html"),
    ),
    (
        "overview.html",
        include_str!("../console/templates/overview.html"),
    ),
    (
        "transactions.html",
        include_str!("../console/templates/transactions.html"),
    ),
    ("rows.html", include_str!("../console/templates/rows.html")),
    (
        "refunds.html",
        include_str!("../console/templates/refunds.html"),
    ),
    ("totp.html", include_str!("../console/templates/totp.html")),
    (
        "password.html",
        include_str!("../console/templates/password.html"),
    ),
    (
        "routes.html",
        include_str!("../console/templates/routes.html"),
    ),
    (
        "links.html",
        include_str!("../console/templates/links.html"),
    ),
    (
        "merchants.html",
        include_str!("../console/templates/merchants.html"),
    ),
    ("saf.html", include_str!("../console/templates/saf.html")),
];

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in TEMPLATES {
            env.add_template(name, text)
                .expect("console template parses");
        }
        env
    })
}

/// A value for a template context.
pub(crate) fn ser<T: serde::Serialize>(v: &T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

pub(crate) fn render(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match templates().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template {name}: {e}\n"),
        )
            .into_response(),
    }
}

/// The CSRF token of a session: hex SHA-256 of a label and the session token.
pub fn csrf_of(session: &str) -> String {
    let mut input = b"switchyard-console-csrf:".to_vec();
    input.extend_from_slice(session.as_bytes());
    hex::encode(ring::digest::digest(&ring::digest::SHA256, &input))
}

/// The session token in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("sy_session=").map(str::to_string))
}

/// The signed-in principal (second factor passed) and its session token.
pub(crate) async fn signed_in<A: Admin>(
    s: &AppState<A>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Option<(Principal, String)> {
    signed_in_enrolling(s, headers, peer)
        .await
        .filter(|(p, _)| p.mfa_done)
}

/// The signed-in principal and its session token, also before its second factor is
/// enrolled (what the TOTP enrolment pages accept).
pub(crate) async fn signed_in_enrolling<A: Admin>(
    s: &AppState<A>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Option<(Principal, String)> {
    let token = session_cookie(headers)?;
    let p = s
        .admin
        .authenticate(&token, &peer.ip().to_string())
        .await
        .ok()??;
    Some((p, token))
}

pub(crate) fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

pub(crate) type S<A> = State<Arc<AppState<A>>>;
pub(crate) type Peer = ConnectInfo<SocketAddr>;

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub totp: String,
}

async fn login_page() -> Response {
    render(
        StatusCode::OK,
        "login.html",
        context! { title => "sign in" },
    )
}

async fn login<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    Form(f): Form<LoginForm>,
) -> Response {
    let req = LoginRequest {
        username: f.username,
        password: f.password,
        totp: (!f.totp.trim().is_empty()).then(|| f.totp.trim().to_string()),
        recovery_code: None,
    };
    let refused = |e: String| {
        render(
            StatusCode::UNAUTHORIZED,
            "login.html",
            context! { error => e },
        )
    };
    match s.admin.login(req, &peer.ip().to_string()).await {
        Ok(g) => {
            let cookie = format!(
                "{SESSION_COOKIE}={}; HttpOnly; Secure; SameSite=Strict; Path=/console",
                g.token
            );
            // An account that must change the password an administrator chose, or enrol
            // its second factor, does that first: its session is good for nothing else.
            let next = if g.password_change_required {
                "/console/password"
            } else if g.totp_enrolment_required {
                "/console/totp"
            } else {
                "/console/overview"
            };
            let mut r = Redirect::to(next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => match e.retry_after_s() {
            Some(wait_s) => {
                let error = format!("{e} (in {wait_s} s)");
                let mut r = render(
                    StatusCode::TOO_MANY_REQUESTS,
                    "login.html",
                    context! { error => error },
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
                r
            }
            None => refused(e.to_string()),
        },
    }
}

/// A form that changes something: its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

fn csrf_ok(token: &str, presented: &str) -> bool {
    constant_time_eq(csrf_of(token).as_bytes(), presented.as_bytes())
}

/// The signed-in principal of a form that changes something, its CSRF token checked; else
/// the answer (to the login page, or 403).
pub(crate) async fn changing<A: Admin>(
    s: &AppState<A>,
    h: &HeaderMap,
    peer: SocketAddr,
    csrf: &str,
) -> Result<(Principal, String), Response> {
    csrf_checked(signed_in(s, h, peer).await, csrf)
}

/// A session found for a form (or the login page), its CSRF token checked (or 403).
// axum handlers answer `Response`; boxing the error would only add noise.
#[allow(clippy::result_large_err)]
pub(crate) fn csrf_checked(
    found: Option<(Principal, String)>,
    csrf: &str,
) -> Result<(Principal, String), Response> {
    let Some((p, token)) = found else {
        return Err(to_login());
    };
    if !csrf_ok(&token, csrf) {
        return Err((StatusCode::FORBIDDEN, "CSRF token missing or wrong\n").into_response());
    }
    Ok((p, token))
}

async fn logout<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some((p, token)) = signed_in(&s, &h, peer).await
        && csrf_ok(&token, &f.csrf)
    {
        let _ = s.admin.logout(&p, &token).await;
    }
    let mut r = to_login();
    let clear =
        format!("{SESSION_COOKIE}=; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn overview<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let Some((p, token)) = signed_in(&s, &h, peer).await else {
        return to_login();
    };
    let links = if p.role >= Role::Viewer {
        s.admin.links()
    } else {
        Vec::new()
    };
    let readiness = s.admin.readiness().await;
    render(
        StatusCode::OK,
        "overview.html",
        context! {
            title => "overview", who => ser(&p), csrf => csrf_of(&token), links => ser(&links), readiness => ser(&readiness),
        },
    )
}

/// Empty form fields are no filter.
fn filters(mut q: TxnQuery) -> TxnQuery {
    for f in [
        &mut q.merchant_id,
        &mut q.order_ref,
        &mut q.rrn,
        &mut q.stan,
        &mut q.terminal_id,
        &mut q.state,
        &mut q.kind,
        &mut q.from,
        &mut q.to,
    ] {
        if f.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *f = None;
        }
    }
    q
}

/// A fresh random key for the refund forms of one page (a resubmitted form is the same
/// request).
fn form_key() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

async fn transactions_page<A: Admin>(
    s: &AppState<A>,
    p: Principal,
    token: &str,
    q: TxnQuery,
    template: &str,
) -> Response {
    let (transactions, error) = match s.admin.search_transactions(&p, filters(q)).await {
        Ok(page) => (page.transactions, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    render(
        StatusCode::OK,
        template,
        context! {
            title => "transactions", may_refund => may_request(p.role), who => ser(&p), csrf => csrf_of(token),
            transactions => ser(&transactions), error => error, form_key => form_key(),
        },
    )
}

/// The transactions page, or only its rows for htmx's requests (`HX-Request`).
async fn transactions<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Query(q): Query<TxnQuery>,
) -> Response {
    let Some((p, token)) = signed_in(&s, &h, peer).await else {
        return to_login();
    };
    let template = if h.contains_key("hx-request") {
        "rows.html"
    } else {
        "transactions.html"
    };
    transactions_page(&s, p, &token, q, template).await
}

/// The refund, capture or void form of a transaction row (a void has no amount).
#[derive(Debug, Deserialize)]
pub struct RefundForm {
    pub csrf: String,
    pub idempotency_key: String,
    #[serde(default)]
    pub amount_minor: String,
    pub reason: String,
}

/// Asks for operation `op` (`refund`, `capture` or `void`) of transaction `rrn`, through
/// the same [`Admin`] call as its `/v1` twin (so the same checks and maker-checker).
async fn ask_operation<A: Admin>(
    s: &AppState<A>,
    p: &Principal,
    rrn: &str,
    op: &str,
    f: RefundForm,
) -> Result<(), AdminError> {
    let amount_minor = || {
        f.amount_minor
            .trim()
            .parse::<i64>()
            .map_err(|_| AdminError::Invalid("amount: whole minor units".into()))
    };
    let asked = match op {
        "refund" | "capture" => {
            let ask = RefundAsk {
                amount_minor: amount_minor()?,
                reason: f.reason,
                idempotency_key: f.idempotency_key,
            };
            if op == "refund" {
                s.admin.request_refund(p, rrn, ask).await
            } else {
                s.admin.request_capture(p, rrn, ask).await
            }
        }
        "void" => {
            let ask = VoidAsk {
                reason: f.reason,
                idempotency_key: f.idempotency_key,
            };
            s.admin.request_void(p, rrn, ask).await
        }
        _ => Err(AdminError::NotFound(format!("operation {op}"))),
    };
    asked.map(|_| ())
}

/// A refund, capture or void asked for from a transaction row; the requests page after.
async fn operation<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((rrn, op)): Path<(String, String)>,
    Form(f): Form<RefundForm>,
) -> Response {
    let (p, token) = match changing(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    match ask_operation(&s, &p, &rrn, &op, f).await {
        Ok(()) => Redirect::to("/console/refunds").into_response(),
        Err(e) => refunds_page(&s, p, &token, Some(e.to_string())).await,
    }
}

async fn refunds_page<A: Admin>(
    s: &AppState<A>,
    p: Principal,
    token: &str,
    error: Option<String>,
) -> Response {
    let requests = s
        .admin
        .refund_requests(&p, RefundListQuery::default())
        .await
        .unwrap_or_default();
    render(
        StatusCode::OK,
        "refunds.html",
        context! {
            title => "refunds", may_decide => p.role >= Role::Approver, who => ser(&p), csrf => csrf_of(token),
            requests => ser(&requests), error => error,
        },
    )
}

async fn refunds<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let Some((p, token)) = signed_in(&s, &h, peer).await else {
        return to_login();
    };
    refunds_page(&s, p, &token, None).await
}

async fn decide<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((id, verb)): Path<(i64, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let (p, token) = match changing(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let decided = if p.role < Role::Approver {
        Err(AdminError::Forbidden("approvers decide".into()))
    } else {
        s.admin
            .decide_refund(&p, id, verb == "approve")
            .await
            .map(|_| ())
    };
    match decided {
        Ok(()) => Redirect::to("/console/refunds").into_response(),
        Err(e) => refunds_page(&s, p, &token, Some(e.to_string())).await,
    }
}

/// The console's routes.
pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/overview") }),
        )
        .route(
            "/console/htmx.min.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], HTMX) }),
        )
        .route("/console/login", get(login_page).post(login::<A>))
        .route("/console/logout", post(logout::<A>))
        .route("/console/overview", get(overview::<A>))
        .route("/console/transactions", get(transactions::<A>))
        .route("/console/transactions/{rrn}/{op}", post(operation::<A>))
        .route("/console/refunds", get(refunds::<A>))
        .route("/console/refunds/{id}/{verb}", post(decide::<A>))
}
