//! The console's operations pages (issue 12), over the same [`Admin`] calls and role rules
//! as the `/v1` API: TOTP enrolment with a QR code, BIN routes (add, change, remove), bank links with sign-on and
//! sign-off, merchants (the MAC key shown once), and the live overview's figures with
//! its charts (uPlot, vendored in `admin-http/console/vendor` and served by the switch).
//!
//! Every form that changes something carries the session's CSRF token (see
//! [`crate::console`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use minijinja::context;
use serde::Deserialize;

use crate::console::{
    changing, csrf_checked, csrf_of, render, ser, signed_in, signed_in_enrolling, to_login,
};
use crate::merchants::{NewMerchantBody, Rotation};
use crate::reference::{ROUTES_ROLE, RouteBody, link_verb};
use crate::v1::Principal;
use crate::{Admin, AdminError, AppState, Role};

const UPLOT_JS: &str = include_str!("../console/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../console/vendor/uPlot.min.css");

/// This module's templates, registered with the console's.
type S<A> = State<Arc<AppState<A>>>;
type Peer = ConnectInfo<SocketAddr>;

/// Refuses a principal below `needed` (the same floor as the route's `/v1` twin).
pub(crate) fn permit(p: &Principal, needed: Role) -> Result<(), AdminError> {
    if p.role >= needed {
        Ok(())
    } else {
        Err(AdminError::Forbidden(format!(
            "role {} may not do this",
            p.role.as_str()
        )))
    }
}

/// What a page shows after an action: an error, a notice, or a secret shown once.
#[derive(Debug, Default)]
pub(crate) struct Flash {
    pub(crate) error: Option<String>,
    pub(crate) notice: Option<String>,
    pub(crate) secret: Option<String>,
}

impl Flash {
    pub(crate) fn of<T>(
        r: Result<T, AdminError>,
        notice: impl FnOnce(T) -> (String, Option<String>),
    ) -> Self {
        match r {
            Ok(v) => {
                let (notice, secret) = notice(v);
                Flash {
                    notice: Some(notice),
                    secret,
                    ..Flash::default()
                }
            }
            Err(e) => Flash {
                error: Some(e.to_string()),
                ..Flash::default()
            },
        }
    }
}

/// The QR code of an `otpauth://` URL as an SVG element.
pub fn qr_svg(url: &str) -> Result<String, AdminError> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| AdminError::Unavailable(format!("QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

/// A form with only its CSRF token, or a code to confirm TOTP with.
#[derive(Debug, Deserialize)]
pub struct CodeForm {
    pub csrf: String,
    #[serde(default)]
    pub code: String,
}

/// The TOTP page in the state `step` gives (`enrolment` and `qr`, `recovery_codes`, or
/// neither: the start).
fn totp_view(p: &Principal, token: &str, mfa_done: bool, step: minijinja::Value) -> Response {
    render(
        StatusCode::OK,
        "totp.html",
        context! { title => "second factor", who => ser(p), csrf => csrf_of(token), mfa_done => mfa_done, ..step },
    )
}

async fn totp_page<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    let Some((p, token)) = signed_in_enrolling(&s, &h, peer).await else {
        return to_login();
    };
    totp_view(&p, &token, p.mfa_done, context! {})
}

/// The signed-in principal of an enrolment form (second factor not yet needed), its
/// CSRF token checked.
async fn enrolling<A: Admin>(
    s: &AppState<A>,
    h: &HeaderMap,
    peer: SocketAddr,
    csrf: &str,
) -> Result<(Principal, String), Response> {
    csrf_checked(signed_in_enrolling(s, h, peer).await, csrf)
}

/// Starts enrolment (`confirm` false: a fresh secret and its QR code) or confirms it with
/// the form's code (the recovery codes, shown once).
async fn totp_step<A: Admin>(
    s: &AppState<A>,
    h: &HeaderMap,
    peer: SocketAddr,
    f: CodeForm,
    confirm: bool,
) -> Response {
    let (p, token) = match enrolling(s, h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let step = if confirm {
        s.admin
            .totp_confirm(&p, &token, f.code.trim())
            .await
            .map(|c| context! { recovery_codes => c.recovery_codes })
    } else {
        match s.admin.totp_enrol(&p).await {
            Ok(e) => qr_svg(&e.otpauth_url).map(|qr| context! { enrolment => ser(&e), qr => qr }),
            Err(e) => Err(e),
        }
    };
    match step {
        Ok(step) => totp_view(&p, &token, p.mfa_done || confirm, step),
        Err(e) => totp_view(&p, &token, p.mfa_done, context! { error => e.to_string() }),
    }
}

async fn totp_start<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    totp_step(&s, &h, peer, f, false).await
}

async fn totp_confirm<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(f): Form<CodeForm>,
) -> Response {
    totp_step(&s, &h, peer, f, true).await
}

/// `POST /console/password`: the current and the new password.
#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    pub csrf: String,
    #[serde(default)]
    pub current_password: String,
    #[serde(default)]
    pub new_password: String,
}

fn password_view(p: &Principal, token: &str, error: Option<String>) -> Response {
    let status = match error {
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::OK,
    };
    render(
        status,
        "password.html",
        context! { title => "password", who => ser(p), csrf => csrf_of(token), error => error },
    )
}

/// The password change an account whose password an administrator chose must make first
/// (PCI DSS 8.3.5); open to any signed-in account.
async fn password_page<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
) -> Response {
    let Some((p, token)) = signed_in_enrolling(&s, &h, peer).await else {
        return to_login();
    };
    password_view(&p, &token, None)
}

/// Changes the password, then goes on to the second factor if the role needs one not yet
/// enrolled, else to the overview.
async fn password_change<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Response {
    let (p, token) = match enrolling(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let change = crate::v1::PasswordChange {
        current_password: f.current_password,
        new_password: f.new_password,
    };
    if let Err(e) = s.admin.change_password(&p, &token, change).await {
        return password_view(&p, &token, Some(e.to_string()));
    }
    let next = match signed_in(&s, &h, peer).await {
        Some(_) => "/console/overview",
        None => "/console/totp",
    };
    axum::response::Redirect::to(next).into_response()
}

async fn routes_page<A: Admin>(
    s: &AppState<A>,
    (p, token): (Principal, String),
    editing: Option<i64>,
    f: Flash,
) -> Response {
    let (routes, error) = match s.admin.routes().await {
        Ok(r) => (r, f.error),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let banks: Vec<String> = {
        let mut b: Vec<String> = s.admin.links().into_iter().map(|l| l.bank).collect();
        b.dedup();
        b
    };
    let may_change = p.role >= ROUTES_ROLE;
    let editing = editing
        .filter(|_| may_change)
        .and_then(|id| routes.iter().find(|r| r.id == id).cloned());
    render(
        StatusCode::OK,
        "routes.html",
        context! {
            title => "routes", who => ser(&p), csrf => csrf_of(&token), may_change => may_change,
            routes => ser(&routes), banks => banks, editing => ser(&editing), error => error,
            notice => f.notice,
        },
    )
}

/// A page for principals of at least `needed`: the page, or the login page, or 403.
pub(crate) async fn viewing<A: Admin>(
    s: &AppState<A>,
    h: &HeaderMap,
    peer: SocketAddr,
    needed: Role,
) -> Result<(Principal, String), Response> {
    let Some((p, token)) = signed_in(s, h, peer).await else {
        return Err(to_login());
    };
    permit(&p, needed).map_err(crate::v1::problem)?;
    Ok((p, token))
}

/// The routes page's query: `edit` names the route whose form to show.
#[derive(Debug, Default, Deserialize)]
pub struct RoutesQuery {
    #[serde(default)]
    pub edit: Option<i64>,
}

async fn routes_get<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Query(q): Query<RoutesQuery>,
) -> Response {
    match viewing(&s, &h, peer, Role::Viewer).await {
        Ok(who) => routes_page(&s, who, q.edit, Flash::default()).await,
        Err(r) => r,
    }
}

/// The route form (to add or change one): numbers arrive as text.
#[derive(Debug, Deserialize)]
pub struct RouteForm {
    pub csrf: String,
    pub low: String,
    pub high: String,
    pub bank_id: String,
    #[serde(default)]
    pub priority: String,
}

impl RouteForm {
    /// The API's body of this form; a priority left empty is 0.
    pub fn body(self) -> Result<RouteBody, AdminError> {
        let priority = match self.priority.trim() {
            "" => 0,
            v => v
                .parse::<i32>()
                .map_err(|_| AdminError::Invalid("priority: a whole number".into()))?,
        };
        Ok(RouteBody {
            low: self.low.trim().to_string(),
            high: self.high.trim().to_string(),
            bank_id: self.bank_id,
            priority,
        })
    }
}

/// Adds a route (`id` none) or changes route `id`, through the same calls as `POST` and
/// `PUT /v1/routes`; the routes page after.
async fn save_route<A: Admin>(
    s: &AppState<A>,
    h: &HeaderMap,
    peer: SocketAddr,
    id: Option<i64>,
    f: RouteForm,
) -> Response {
    let who = match changing(s, h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let p = &who.0;
    let body = permit(p, ROUTES_ROLE).and_then(|()| f.body());
    let (saved, verb) = match (body, id) {
        (Err(e), _) => (Err(e), ""),
        (Ok(body), None) => (s.admin.add_route(p, body).await, "added"),
        (Ok(body), Some(id)) => (s.admin.change_route(p, id, body).await, "changed"),
    };
    // A refused change keeps its form open, to be corrected.
    let editing = id.filter(|_| saved.is_err());
    let flash = Flash::of(saved, |r| (format!("route {} {verb}", r.id), None));
    routes_page(s, who, editing, flash).await
}

async fn add_route<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(f): Form<RouteForm>,
) -> Response {
    save_route(&s, &h, peer, None, f).await
}

async fn change_route<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<RouteForm>,
) -> Response {
    save_route(&s, &h, peer, Some(id), f).await
}

/// A form with only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    pub csrf: String,
}

async fn remove_route<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let (p, token) = match changing(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let removed = match permit(&p, ROUTES_ROLE) {
        Ok(()) => s.admin.remove_route(&p, id).await,
        Err(e) => Err(e),
    };
    let flash = Flash::of(removed, |r| (format!("route {} removed", r.id), None));
    routes_page(&s, (p, token), None, flash).await
}

fn links_page<A: Admin>(s: &AppState<A>, p: Principal, token: &str, f: Flash) -> Response {
    render(
        StatusCode::OK,
        "links.html",
        context! {
            title => "links", who => ser(&p), csrf => csrf_of(token), may_act => p.role >= Role::Operator,
            links => ser(&s.admin.links()), error => f.error, notice => f.notice,
        },
    )
}

async fn links<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    match viewing(&s, &h, peer, Role::Viewer).await {
        Ok((p, token)) => links_page(&s, p, &token, Flash::default()),
        Err(r) => r,
    }
}

async fn sign_link<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((name, verb)): Path<(String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let (p, token) = match changing(&s, &h, peer, &f.csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let done = match (permit(&p, Role::Operator), link_verb(&verb)) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(()), Ok(on)) => s.admin.sign_link(&p, &name, on).await,
    };
    let flash = Flash::of(done, |l| (format!("{verb} sent to {}", l.name), None));
    links_page(&s, p, &token, flash)
}

async fn merchants_page<A: Admin>(
    s: &AppState<A>,
    p: Principal,
    token: &str,
    f: Flash,
) -> Response {
    let (merchants, error) = match s.admin.merchants().await {
        Ok(m) => (m, f.error),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    render(
        StatusCode::OK,
        "merchants.html",
        context! {
            title => "merchants", who => ser(&p), csrf => csrf_of(token), may_change => p.role >= Role::Admin,
            merchants => ser(&merchants), error => error, notice => f.notice, mac_key => f.secret,
        },
    )
}

async fn merchants<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    match viewing(&s, &h, peer, Role::Viewer).await {
        Ok((p, token)) => merchants_page(&s, p, &token, Flash::default()).await,
        Err(r) => r,
    }
}

/// A whole number of a form field, or the field's name in the error.
fn number<T: std::str::FromStr>(
    fields: &HashMap<String, String>,
    name: &str,
) -> Result<T, AdminError> {
    let v = fields.get(name).map(|v| v.trim()).unwrap_or_default();
    v.parse()
        .map_err(|_| AdminError::Invalid(format!("{name}: a whole number")))
}

/// The new merchant form: currencies as comma-separated ISO 4217 numeric codes.
fn new_merchant(fields: &HashMap<String, String>) -> Result<NewMerchantBody, AdminError> {
    let text = |n: &str| {
        fields
            .get(n)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let currencies = text("currencies")
        .split(',')
        .map(|c| c.trim().parse::<u16>())
        .collect::<Result<Vec<u16>, _>>()
        .map_err(|_| {
            AdminError::Invalid("currencies: ISO 4217 numeric codes, comma-separated".into())
        })?;
    Ok(NewMerchantBody {
        id: text("id"),
        name: text("name"),
        currencies,
        limit_minor: number(fields, "limit_minor")?,
        rate_per_s: number(fields, "rate_per_s")?,
        burst: number(fields, "burst")?,
    })
}

async fn create_merchant<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let csrf = fields.get("csrf").cloned().unwrap_or_default();
    let (p, token) = match changing(&s, &h, peer, &csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let created = match permit(&p, Role::Admin).and_then(|()| new_merchant(&fields)) {
        Ok(body) => s.admin.create_merchant(&p, body).await,
        Err(e) => Err(e),
    };
    let flash = Flash::of(created, |k| {
        (
            format!("merchant {} created: its MAC key is shown once", k.id),
            Some(k.mac_key_hex),
        )
    });
    merchants_page(&s, p, &token, flash).await
}

async fn merchant_action<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let csrf = fields.get("csrf").cloned().unwrap_or_default();
    let (p, token) = match changing(&s, &h, peer, &csrf).await {
        Ok(who) => who,
        Err(r) => return r,
    };
    let flash = match (permit(&p, Role::Admin), verb.as_str()) {
        (Err(e), _) => Flash::of(Err::<(), _>(e), |_| (String::new(), None)),
        (Ok(()), "enable" | "disable") => {
            let on = verb == "enable";
            let r = s.admin.set_merchant_enabled(&p, &id, on).await;
            Flash::of(r, |()| (format!("merchant {id} {verb}d"), None))
        }
        (Ok(()), "rotate-key") => {
            let r = match number::<u64>(&fields, "overlap_s") {
                Ok(overlap_s) => {
                    s.admin
                        .rotate_merchant_key(&p, &id, Rotation { overlap_s })
                        .await
                }
                Err(e) => Err(e),
            };
            Flash::of(r, |k| {
                (
                    format!("merchant {id}: new MAC key, shown once"),
                    Some(k.mac_key_hex),
                )
            })
        }
        (Ok(()), _) => Flash::of(
            Err::<(), _>(AdminError::NotFound(format!("action {verb}"))),
            |_| (String::new(), None),
        ),
    };
    merchants_page(&s, p, &token, flash).await
}

/// The overview's figures for its charts (the same as `GET /v1/overview`).
async fn figures<A: Admin>(State(s): S<A>, ConnectInfo(peer): Peer, h: HeaderMap) -> Response {
    match viewing(&s, &h, peer, Role::Viewer).await {
        Ok(_) => Json(s.admin.overview()).into_response(),
        Err(r) => r,
    }
}

pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route(
            "/console/uPlot.iife.min.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], UPLOT_JS) }),
        )
        .route(
            "/console/uPlot.min.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], UPLOT_CSS) }),
        )
        .route("/console/totp", get(totp_page::<A>).post(totp_start::<A>))
        .route(
            "/console/password",
            get(password_page::<A>).post(password_change::<A>),
        )
        .route("/console/totp/confirm", post(totp_confirm::<A>))
        .route("/console/routes", get(routes_get::<A>).post(add_route::<A>))
        .route("/console/routes/{id}/remove", post(remove_route::<A>))
        .route("/console/routes/{id}/change", post(change_route::<A>))
        .route("/console/links", get(links::<A>))
        .route("/console/links/{name}/{verb}", post(sign_link::<A>))
        .route(
            "/console/merchants",
            get(merchants::<A>).post(create_merchant::<A>),
        )
        .route("/console/merchants/{id}/{verb}", post(merchant_action::<A>))
        .route("/console/overview/figures", get(figures::<A>))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves an otpauth URL becomes an SVG QR code.
    #[test]
    fn qr_is_svg() {
        let svg = qr_svg("otpauth://totp/Switchyard:ann?secret=JBSWY3DPEHPK3PXP&issuer=Switchyard")
            .unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("<path"), "{svg}");
    }

    // Proves the route form becomes the API's body: bounds trimmed, an empty priority 0,
    // one that is not a number refused.
    #[test]
    fn route_form() {
        let form = |priority: &str| RouteForm {
            csrf: String::new(),
            low: " 422222 ".into(),
            high: "422229".into(),
            bank_id: "bank-b".into(),
            priority: priority.into(),
        };
        let b = form("").body().unwrap();
        assert_eq!((b.low.as_str(), b.priority), ("422222", 0));
        assert_eq!(form(" 5 ").body().unwrap().priority, 5);
        assert!(matches!(form("high").body(), Err(AdminError::Invalid(_))));
    }

    // Proves the merchant form's fields are read, and a bad currency list is refused.
    #[test]
    fn merchant_form() {
        let mut f: HashMap<String, String> = [
            ("id", "SHOP-9"),
            ("name", "Shop"),
            ("currencies", "840, 978"),
            ("limit_minor", "100000"),
            ("rate_per_s", "50"),
            ("burst", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let m = new_merchant(&f).unwrap();
        assert_eq!(m.currencies, vec![840, 978]);
        assert_eq!(m.burst, 100);
        f.insert("currencies".into(), "USD".into());
        assert!(matches!(new_merchant(&f), Err(AdminError::Invalid(_))));
    }
}
