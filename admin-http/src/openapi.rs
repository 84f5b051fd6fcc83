//! The OpenAPI 3.1 document of the `/v1` API, generated from the handlers' annotations
//! (`utoipa`) and served at `GET /openapi.json`; and the layer that makes every error of
//! `/v1` a problem document, including axum's own refusals of bodies and parameters it
//! cannot read.

use axum::http::header;
use axum::response::Response;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{merchants, ops, reference, refunds, transactions, v1};

/// The `/v1` API.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Switchyard back office",
        version = "1",
        description = "Accounts, sessions, transactions and refunds with maker-checker. Errors are application/problem+json (RFC 9457)."
    ),
    paths(
        v1::login,
        v1::logout,
        v1::me,
        v1::totp_enrol,
        v1::totp_confirm,
        v1::change_password,
        v1::list_accounts,
        v1::create_account,
        v1::unlock,
        v1::create_api_key,
        v1::reset,
        v1::password_reset,
        v1::audit,
        transactions::search,
        transactions::detail,
        refunds::ask,
        refunds::list,
        refunds::decide,
        merchants::list,
        merchants::create,
        merchants::switch_on_off,
        merchants::limits,
        merchants::rotate,
        ops::capture,
        ops::void,
        ops::saf,
        ops::saf_retry,
        ops::saf_discard,
        ops::api_keys,
        ops::revoke_api_key,
        ops::account_switch,
        reference::list_routes,
        reference::add_route,
        reference::change_route,
        reference::remove_route,
        reference::links,
        reference::sign_link,
        reference::settlement,
        reference::balances,
        reference::overview,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the paths name: a session token, an API key or a
/// configured token in `Authorization: Bearer`.
#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Longest error body turned into a problem's `detail`.
const DETAIL_MAX_BYTES: usize = 4096;

/// Turns an error answer that is not yet a problem document (axum's refusal of a body,
/// query or path it cannot read; a method not allowed) into one, keeping its status.
pub(crate) async fn as_problem(r: Response) -> Response {
    let status = r.status();
    let is_problem = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return r;
    }
    let body = axum::body::to_bytes(r.into_body(), DETAIL_MAX_BYTES)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_string();
    v1::problem_response(status, v1::slug_of_status(status), detail)
}
