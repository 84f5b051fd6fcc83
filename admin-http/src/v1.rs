//! The back office's JSON API under `/v1` (issue 12): login with a second factor,
//! sessions, accounts, API keys and the audit log. Errors are `application/problem+json`
//! (RFC 9457); a 401 carries `WWW-Authenticate: Bearer`.
//!
//! | route | who |
//! |---|---|
//! | `POST /v1/login` | anyone (username, password, TOTP code or recovery code) |
//! | `POST /v1/logout`, `GET /v1/me`, `POST /v1/me/password`, `POST /v1/me/totp`, `POST /v1/me/totp/confirm` | any signed-in account, also before it is set up (its second factor enrolled, a password an administrator chose changed) |
//! | `POST /v1/password-reset` | anyone with a reset token |
//! | `POST /v1/accounts/{username}/reset`, `GET /v1/accounts`, `POST /v1/accounts`, `POST /v1/accounts/{username}/unlock`, `POST /v1/api-keys`, `GET /v1/audit` | `admin` |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::{Admin, AdminError, AppState, AuthRefusal, Role};

/// Who is asking, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// `username` of an account, `apikey:NAME/CREATOR` of an API key, `token:ROLE` of a
    /// configured static token.
    pub actor: String,
    pub role: Role,
    /// Set for merchant users and merchant API keys: the one merchant they see.
    pub merchant_id: Option<String>,
    /// False while an account that needs a second factor has not enrolled one: it may
    /// only enrol, look at itself and log out.
    pub mfa_done: bool,
    /// The client's address, for the audit log.
    pub source: String,
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// The current RFC 6238 code, once TOTP is enrolled.
    pub totp: Option<String>,
    /// Instead of `totp`: one of the account's unused recovery codes.
    pub recovery_code: Option<String>,
}

/// A granted login: the session token (send as `Authorization: Bearer`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoginGranted {
    pub token: String,
    pub role: Role,
    /// The session ends after this many seconds without a request.
    pub idle_timeout_s: u64,
    /// True: the account must enrol TOTP (`POST /v1/me/totp`) before anything else.
    pub totp_enrolment_required: bool,
    /// True: the password was set by an administrator and must be changed
    /// (`POST /v1/me/password`) before anything else (PCI DSS 8.3.5).
    pub password_change_required: bool,
    /// Addresses this account logged in from for the first time since it was last told.
    pub new_login_addresses: Vec<String>,
}

/// `POST /v1/accounts`: the account's first password is set by whoever creates it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewAccount {
    pub username: String,
    pub role: Role,
    /// Required for role `merchant`, refused for the others.
    pub merchant_id: Option<String>,
    pub password: String,
}

/// An account as admins see it (never its password hash or TOTP secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub username: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    pub totp_enabled: bool,
    pub disabled: bool,
    /// RFC 3339, UTC, while locked.
    pub locked_until: Option<String>,
}

/// `POST /v1/me/totp`: a fresh secret to load into an authenticator app.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotpEnrolment {
    /// RFC 4648 base32, no padding.
    pub secret_base32: String,
    /// `otpauth://totp/...`, what a QR code would carry.
    pub otpauth_url: String,
}

/// `POST /v1/me/totp/confirm`: a code from the enrolled secret.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct TotpConfirm {
    pub code: String,
}

/// The recovery codes, shown once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// `POST /v1/me/password`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// `POST /v1/accounts/{username}/reset`: a one-time token to hand to the account's owner.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResetIssued {
    pub reset_token: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// `POST /v1/password-reset`: a new password with the token an admin issued.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ResetPassword {
    pub reset_token: String,
    pub new_password: String,
}

/// `POST /v1/api-keys`: a key for automation, at most the creator's role.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub merchant_id: Option<String>,
    /// 1 to 365.
    pub expires_in_days: u32,
}

/// The new key, shown once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyCreated {
    pub id: i64,
    pub key: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// `GET /v1/audit` filters; newest first, `before_id` is the cursor.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub before_id: Option<i64>,
    /// 1 to 500; 100 when absent.
    pub limit: Option<u32>,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub actor: String,
    pub actor_role: Option<String>,
    pub source_addr: String,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before_id` for the next page; absent on the last.
    pub next_before_id: Option<i64>,
}

/// An error as `application/problem+json` (RFC 9457).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<slug>`: unauthenticated, forbidden, not-found, invalid-request,
    /// conflict, account-locked, unavailable, bad-request, method-not-allowed,
    /// unsupported-media-type, payload-too-large, error; `title` is the status's reason.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

/// An RFC 9457 problem document's slug, title and status for an error.
fn problem_parts(e: &AdminError) -> (&'static str, StatusCode) {
    match e {
        AdminError::NotFound(_) => ("not-found", StatusCode::NOT_FOUND),
        AdminError::Unavailable(_) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
        AdminError::Invalid(_) => ("invalid-request", StatusCode::UNPROCESSABLE_ENTITY),
        AdminError::Unauthenticated(_) => ("unauthenticated", StatusCode::UNAUTHORIZED),
        AdminError::Forbidden(_) => ("forbidden", StatusCode::FORBIDDEN),
        AdminError::Conflict(_) => ("conflict", StatusCode::CONFLICT),
        AdminError::TooManyAttempts { .. } => ("too-many-attempts", StatusCode::TOO_MANY_REQUESTS),
    }
}

/// An error as `application/problem+json` (RFC 9457); a 401 with `WWW-Authenticate`, a
/// 429 with `Retry-After` (in seconds).
pub fn problem(e: AdminError) -> Response {
    let (slug, status) = problem_parts(&e);
    let retry_after_s = e.retry_after_s();
    let mut r = problem_response(status, slug, e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"switchyard\""),
        );
    }
    if let Some(s) = retry_after_s {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    r
}

/// Longest `detail` of a problem, in characters: details echo what the caller sent (an
/// RRN, a route), which can be as long as a request body.
pub const DETAIL_MAX_CHARS: usize = 256;

/// The slug of an error answer axum made (a body, query or path it could not read, a
/// method not allowed), agreeing with its status and so with the problem's title.
pub fn slug_of_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        s if s.is_client_error() => "bad-request",
        _ => "error",
    }
}

/// `detail` cut to [`DETAIL_MAX_CHARS`], with `…` where it was cut.
pub fn bounded_detail(detail: String) -> String {
    match detail.char_indices().nth(DETAIL_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &detail[..cut]),
        None => detail,
    }
}

/// A problem document with `status`, `/problems/{slug}` and `detail` (bounded by
/// [`DETAIL_MAX_CHARS`]).
pub fn problem_response(status: StatusCode, slug: &str, detail: String) -> Response {
    let body = Problem {
        kind: format!("/problems/{slug}"),
        title: status.canonical_reason().unwrap_or("error").to_string(),
        status: status.as_u16(),
        detail: bounded_detail(detail),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

type S<A> = State<Arc<AppState<A>>>;
type Peer = ConnectInfo<SocketAddr>;

/// The principal for a request whose role is `allowed` (and that passed its second factor
/// unless `enrolling`), or the problem response; refusals are reported to the switch.
pub(crate) async fn authorize<A: Admin>(
    s: &AppState<A>,
    headers: &HeaderMap,
    peer: SocketAddr,
    allowed: impl Fn(Role) -> bool,
    enrolling: bool,
) -> Result<Principal, Response> {
    let refused = |why: AuthRefusal, e: AdminError| {
        s.admin.auth_refused(why);
        problem(e)
    };
    let Some(p) = crate::principal_of(s, headers, peer)
        .await
        .map_err(problem)?
    else {
        return Err(refused(
            AuthRefusal::Unauthenticated,
            AdminError::Unauthenticated("a valid bearer token is required".into()),
        ));
    };
    if !p.mfa_done && !enrolling {
        return Err(refused(
            AuthRefusal::Forbidden,
            AdminError::Forbidden(
                "set the account up first: change the password an administrator chose \
                 (POST /v1/me/password) and enrol a second factor (POST /v1/me/totp)"
                    .into(),
            ),
        ));
    }
    if !allowed(p.role) {
        return Err(refused(
            AuthRefusal::Forbidden,
            AdminError::Forbidden(format!("role {} may not do this", p.role.as_str())),
        ));
    }
    Ok(p)
}

fn peer_of(ConnectInfo(peer): Peer) -> SocketAddr {
    peer
}

#[utoipa::path(post, path = "/v1/login", request_body = LoginRequest, responses((status = 200, body = LoginGranted), (status = "default", body = Problem, content_type = "application/problem+json")))]
async fn login<A: Admin>(State(s): S<A>, peer: Peer, Json(req): Json<LoginRequest>) -> Response {
    let from = peer_of(peer).ip().to_string();
    match s.admin.login(req, &from).await {
        Ok(g) => Json(g).into_response(),
        Err(e) => problem(e),
    }
}

#[utoipa::path(get, path = "/v1/me", responses((status = 200, body = Principal), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn me<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    match authorize(&s, &h, peer_of(peer), |_| true, true).await {
        Ok(p) => Json(p).into_response(),
        Err(r) => r,
    }
}

/// Runs `act` for a principal allowed `needed`; its value as JSON, or the problem.
pub(crate) async fn guarded<A, T, F, Fut>(
    s: Arc<AppState<A>>,
    h: HeaderMap,
    peer: Peer,
    needed: Role,
    enrolling: bool,
    act: F,
) -> Response
where
    A: Admin,
    T: Serialize,
    F: FnOnce(Arc<AppState<A>>, Principal) -> Fut,
    Fut: Future<Output = Result<T, AdminError>>,
{
    guarded_if(s, h, peer, move |r| r >= needed, enrolling, act).await
}

/// [`guarded`] for routes whose roles are not "this one and up".
pub(crate) async fn guarded_if<A, T, F, Fut>(
    s: Arc<AppState<A>>,
    h: HeaderMap,
    peer: Peer,
    allowed: impl Fn(Role) -> bool,
    enrolling: bool,
    act: F,
) -> Response
where
    A: Admin,
    T: Serialize,
    F: FnOnce(Arc<AppState<A>>, Principal) -> Fut,
    Fut: Future<Output = Result<T, AdminError>>,
{
    let p = match authorize(&s, &h, peer_of(peer), allowed, enrolling).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match act(s.clone(), p).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => problem(e),
    }
}

/// `{}`: the answer of actions with nothing to return.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Done {
    pub done: bool,
}

#[utoipa::path(post, path = "/v1/logout", responses((status = 200, body = Done), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn logout<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(
        s,
        h.clone(),
        peer,
        Role::Merchant,
        true,
        |s, p| async move {
            let token = crate::bearer(&h).unwrap_or_default().to_string();
            s.admin
                .logout(&p, &token)
                .await
                .map(|()| Done { done: true })
        },
    )
    .await
}

#[utoipa::path(post, path = "/v1/me/totp", responses((status = 200, body = TotpEnrolment), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn totp_enrol<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Merchant, true, |s, p| async move {
        s.admin.totp_enrol(&p).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/me/totp/confirm", request_body = TotpConfirm, responses((status = 200, body = RecoveryCodes), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn totp_confirm<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Json(req): Json<TotpConfirm>,
) -> Response {
    let token = crate::bearer(&h).unwrap_or_default().to_string();
    guarded(s, h, peer, Role::Merchant, true, |s, p| async move {
        s.admin.totp_confirm(&p, &token, &req.code).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/me/password", request_body = PasswordChange, responses((status = 200, body = Done), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn change_password<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Json(req): Json<PasswordChange>,
) -> Response {
    let token = crate::bearer(&h).unwrap_or_default().to_string();
    // Part of setting an account up: allowed before the second factor is enrolled.
    guarded(s, h, peer, Role::Merchant, true, |s, p| async move {
        s.admin
            .change_password(&p, &token, req)
            .await
            .map(|()| Done { done: true })
    })
    .await
}

#[utoipa::path(get, path = "/v1/accounts", responses((status = 200, body = Vec<AccountView>), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn list_accounts<A: Admin>(State(s): S<A>, peer: Peer, h: HeaderMap) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.accounts(&p).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/accounts", request_body = NewAccount, responses((status = 200, body = AccountView), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn create_account<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Json(req): Json<NewAccount>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.create_account(&p, req).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{username}/unlock", params(("username" = String, Path, description = "the account")), responses((status = 200, body = Done), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn unlock<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin
            .unlock(&p, &username)
            .await
            .map(|()| Done { done: true })
    })
    .await
}

#[utoipa::path(post, path = "/v1/accounts/{username}/reset", params(("username" = String, Path, description = "the account")), responses((status = 200, body = ResetIssued), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub(crate) async fn reset<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.issue_reset(&p, &username).await
    })
    .await
}

#[utoipa::path(post, path = "/v1/password-reset", request_body = ResetPassword, responses((status = 200, body = Done), (status = "default", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn password_reset<A: Admin>(
    State(s): S<A>,
    ConnectInfo(peer): Peer,
    Json(req): Json<ResetPassword>,
) -> Response {
    match s.admin.reset_password(req, &peer.ip().to_string()).await {
        Ok(()) => Json(Done { done: true }).into_response(),
        Err(e) => problem(e),
    }
}

#[utoipa::path(post, path = "/v1/api-keys", request_body = NewApiKey, responses((status = 200, body = ApiKeyCreated), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn create_api_key<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Json(req): Json<NewApiKey>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.create_api_key(&p, req).await
    })
    .await
}

#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = AuditPage), (status = "default", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
async fn audit<A: Admin>(
    State(s): S<A>,
    peer: Peer,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    guarded(s, h, peer, Role::Admin, false, |s, p| async move {
        s.admin.audit(&p, q).await
    })
    .await
}

/// The `/v1` routes.
pub(crate) fn routes<A: Admin>() -> Router<Arc<AppState<A>>> {
    Router::new()
        .route("/v1/login", post(login::<A>))
        .route("/v1/logout", post(logout::<A>))
        .route("/v1/me", get(me::<A>))
        .route("/v1/me/totp", post(totp_enrol::<A>))
        .route("/v1/me/totp/confirm", post(totp_confirm::<A>))
        .route("/v1/me/password", post(change_password::<A>))
        .route(
            "/v1/accounts",
            get(list_accounts::<A>).post(create_account::<A>),
        )
        .route("/v1/accounts/{username}/unlock", post(unlock::<A>))
        .route("/v1/api-keys", post(create_api_key::<A>))
        .route("/v1/accounts/{username}/reset", post(reset::<A>))
        .route("/v1/password-reset", post(password_reset::<A>))
        .route("/v1/audit", get(audit::<A>))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a problem's type agrees with its status (and so its title), and that what a
    // detail echoes is bounded, cut on a character boundary.
    #[test]
    fn problems_agree_and_are_bounded() {
        assert_eq!(
            slug_of_status(StatusCode::UNPROCESSABLE_ENTITY),
            "invalid-request"
        );
        assert_eq!(slug_of_status(StatusCode::BAD_REQUEST), "bad-request");
        assert_eq!(slug_of_status(StatusCode::NOT_FOUND), "not-found");
        assert_eq!(slug_of_status(StatusCode::INTERNAL_SERVER_ERROR), "error");
        let short = "transaction 000000000001".to_string();
        assert_eq!(bounded_detail(short.clone()), short);
        let long = bounded_detail("é".repeat(5000));
        assert_eq!(long.chars().count(), DETAIL_MAX_CHARS + 1);
        assert!(long.ends_with('…'));
    }
}
