//! The back office's accounts and access (issue 12) against a running switch, real
//! PostgreSQL and the bank simulators: the first superadmin from the command line, TOTP
//! enrolment and login with recovery codes, the role matrix over every admin route,
//! merchant users and API keys, lockout and unlock, new-address logins, session expiry and
//! revocation, and the append-only audit log.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use system_tests::office::{
    INITIAL_PASSWORD, PASSWORD, ROOT_PASSWORD, STATIC_TOKEN, admin_addr, cli_add, totp_code,
};
use system_tests::switchyard::{
    Client, HttpAnswer, MERCHANT_ID, MerchantCreds, SwitchProc, WAIT, World, WorldOptions,
    count_mti, de48_tag, http_call, next_stan, rc,
};

/// Back-office refunds above this need an approver in these tests.
const APPROVAL_ABOVE_MINOR: i64 = 1000;

fn office_world(name: &str) -> World {
    let extra = format!(
        "\n[admin]\naddr = \"127.0.0.1:0\"\nrefund_approval_above_minor = {APPROVAL_ABOVE_MINOR}\ntokens = [{{ token = \"{STATIC_TOKEN}\", role = \"operator\" }}]\n"
    );
    World::new(
        name,
        WorldOptions {
            extra_config: extra,
            ..Default::default()
        },
    )
}

/// A signed-in account: its session token and, once enrolled, TOTP secret.
#[derive(Debug, Clone)]
struct Session {
    token: String,
    secret: Option<String>,
    recovery: Vec<String>,
}

struct Office {
    addr: SocketAddr,
}

impl Office {
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> HttpAnswer {
        http_call(self.addr, None, method, path, bearer, body.as_ref()).await
    }

    /// `GET path` with a bearer token.
    async fn get(&self, path: &str, bearer: &str) -> HttpAnswer {
        self.call("GET", path, Some(bearer), None).await
    }

    async fn login_from(&self, from: Option<IpAddr>, body: Value) -> HttpAnswer {
        http_call(self.addr, from, "POST", "/v1/login", None, Some(&body)).await
    }

    async fn login(&self, username: &str, password: &str) -> HttpAnswer {
        self.login_from(None, json!({"username": username, "password": password}))
            .await
    }

    /// Logs in with a password only and enrols TOTP: a session with the second factor.
    async fn enrolled(&self, username: &str, password: &str) -> Session {
        let a = self.login(username, password).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let token = a.json()["token"].as_str().unwrap().to_string();
        let e = self.call("POST", "/v1/me/totp", Some(&token), None).await;
        assert_eq!(e.status, 200, "{}", e.body);
        let secret = e.json()["secret_base32"].as_str().unwrap().to_string();
        let code = totp_code(&secret, 0);
        let c = self
            .call(
                "POST",
                "/v1/me/totp/confirm",
                Some(&token),
                Some(json!({"code": code})),
            )
            .await;
        assert_eq!(c.status, 200, "{}", c.body);
        let recovery = c.json()["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        Session {
            token,
            secret: Some(secret),
            recovery,
        }
    }

    /// Creates an account and changes its password at first use, as its owner would
    /// (the shared helper, [`system_tests::office::Office::create`]).
    async fn create(&self, by: &Session, username: &str, role: &str, merchant: Option<&str>) {
        let by = system_tests::office::Session {
            token: by.token.clone(),
        };
        system_tests::office::Office::plain(self.addr)
            .create(&by, username, role, merchant)
            .await;
    }

    async fn audit(&self, by: &Session, query: &str) -> Vec<Value> {
        let a = self
            .call("GET", &format!("/v1/audit?{query}"), Some(&by.token), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["entries"].as_array().unwrap().clone()
    }
}

/// The first superadmin from the command line (a weak password refused), enrolled.
async fn bootstrap(world: &World, sw: &mut SwitchProc) -> (Office, Session) {
    let (ok, _, err) = cli_add(world, "root", "superadmin", "password123");
    assert!(!ok, "a weak password is refused");
    assert!(err.contains("password refused"), "{err}");
    let (ok, out, err) = cli_add(world, "root", "superadmin", ROOT_PASSWORD);
    assert!(ok, "{err}");
    assert!(out.contains("\"superadmin\""), "{out}");
    assert!(!out.contains(ROOT_PASSWORD));
    let office = Office {
        addr: admin_addr(sw),
    };
    let root = office.enrolled("root", ROOT_PASSWORD).await;
    (office, root)
}

// Proves the first superadmin comes from the command line, must enrol TOTP before doing
// anything, then logs in with a TOTP code or a recovery code (each accepted once), that a
// refusal is problem+json with WWW-Authenticate, and that logout and idle expiry end a
// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_superadmin_enrols_totp_and_logs_in() {
    let world = office_world("bo_totp");
    let mut sw = world.start_switch(1);
    let office = Office {
        addr: admin_addr(&mut sw),
    };
    let (ok, _, err) = cli_add(&world, "root", "superadmin", ROOT_PASSWORD);
    assert!(ok, "{err}");

    let first = office.login("root", ROOT_PASSWORD).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.json()["totp_enrolment_required"], true);
    let pending = first.json()["token"].as_str().unwrap().to_string();
    let refused = office.get("/v1/accounts", &pending).await;
    assert_eq!(
        refused.status, 403,
        "nothing before enrolment: {}",
        refused.body
    );
    let me = office.get("/v1/me", &pending).await;
    assert_eq!(me.json()["mfa_done"], false);
    let root = office.enrolled("root", ROOT_PASSWORD).await;
    let ok = office.get("/v1/accounts", &root.token).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()[0]["totp_enabled"], true);

    // Enrolled: the password alone no longer signs in.
    let bare = office.login("root", ROOT_PASSWORD).await;
    assert_eq!(bare.status, 401);
    assert_eq!(
        bare.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        bare.header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(bare.json()["status"], 401);
    let secret = root.secret.clone().unwrap();
    let with_code =
        json!({"username": "root", "password": ROOT_PASSWORD, "totp": totp_code(&secret, 1)});
    let a = office.login_from(None, with_code.clone()).await;
    assert_eq!(a.status, 200, "TOTP login: {}", a.body);
    assert_eq!(a.json()["totp_enrolment_required"], false);
    let replay = office.login_from(None, with_code).await;
    assert_eq!(replay.status, 401, "a TOTP code is accepted once");
    let rc = json!({"username": "root", "password": ROOT_PASSWORD, "recovery_code": root.recovery[0].to_uppercase()});
    let r = office.login_from(None, rc.clone()).await;
    assert_eq!(r.status, 200, "recovery code login: {}", r.body);
    assert_eq!(
        office.login_from(None, rc).await.status,
        401,
        "recovery codes are single-use"
    );

    // Logout revokes; a session idle for over 15 minutes has expired.
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        office
            .call("POST", "/v1/logout", Some(&token), None)
            .await
            .status,
        200
    );
    assert_eq!(office.get("/v1/me", &token).await.status, 401);
    let db = system_tests::pg_connect(&world.db_url).await;
    db.execute(
        "UPDATE account_sessions SET last_seen_at = now() - interval '16 minutes'",
        &[],
    )
    .await
    .unwrap();
    let idle = office.get("/v1/me", &root.token).await;
    assert_eq!(idle.status, 401, "idle session expired");
    drop(sw);
}

/// Method, path, body, lowest role allowed (`None`: any signed-in account), answer.
type Route = (
    &'static str,
    &'static str,
    Option<Value>,
    Option<&'static str>,
    u16,
);

/// Every admin route with a request that its allowed roles get a known answer to, and
/// the lowest role allowed (`None`: any signed-in account).
fn routes() -> Vec<Route> {
    let weak = json!({"username": "nobody-new", "role": "viewer", "password": "weak"});
    let bad_key = json!({"name": "k", "role": "viewer", "expires_in_days": 0});
    let refund = json!({"amount_minor": 100, "reason": "matrix", "idempotency_key": "m"});
    let no_bank = json!({"low": "4", "high": "4", "bank_id": "no-such-bank"});
    let route = json!({"low": "4", "high": "4", "bank_id": "bank-a"});
    vec![
        ("GET", "/links", None, Some("viewer"), 200),
        (
            "POST",
            "/links/no-such.0/sign-off",
            None,
            Some("operator"),
            404,
        ),
        (
            "GET",
            "/transactions/000000000000",
            None,
            Some("viewer"),
            404,
        ),
        ("GET", "/v1/me", None, None, 200),
        ("GET", "/v1/accounts", None, Some("admin"), 200),
        ("POST", "/v1/accounts", Some(weak), Some("admin"), 422),
        (
            "POST",
            "/v1/accounts/nobody/unlock",
            None,
            Some("admin"),
            404,
        ),
        (
            "POST",
            "/v1/accounts/nobody/reset",
            None,
            Some("admin"),
            404,
        ),
        ("POST", "/v1/api-keys", Some(bad_key), Some("admin"), 422),
        ("GET", "/v1/audit", None, Some("admin"), 200),
        ("GET", "/v1/transactions", None, Some("merchant"), 200),
        (
            "GET",
            "/v1/transactions/000000000000",
            None,
            Some("merchant"),
            404,
        ),
        (
            "POST",
            "/v1/transactions/000000000000/refunds",
            Some(refund),
            Some(REQUESTERS),
            404,
        ),
        ("GET", "/v1/refund-requests", None, Some("merchant"), 200),
        ("GET", "/v1/merchants", None, Some("viewer"), 200),
        (
            "POST",
            "/v1/merchants/NO-SUCH/disable",
            None,
            Some("admin"),
            404,
        ),
        (
            "POST",
            "/v1/refund-requests/999999/approve",
            None,
            Some("approver"),
            404,
        ),
        (
            "POST",
            "/v1/refund-requests/999999/reject",
            None,
            Some("approver"),
            404,
        ),
        // Back-office operations (tests/tests/backoffice_api.rs has their behaviour).
        (
            "POST",
            "/v1/transactions/000000000000/captures",
            Some(json!({"amount_minor": 100, "reason": "matrix", "idempotency_key": "c"})),
            Some(REQUESTERS),
            404,
        ),
        (
            "POST",
            "/v1/transactions/000000000000/voids",
            Some(json!({"reason": "matrix", "idempotency_key": "v"})),
            Some(REQUESTERS),
            404,
        ),
        ("GET", "/v1/saf", None, Some("viewer"), 200),
        ("POST", "/v1/saf/999999/retry", None, Some("operator"), 404),
        (
            "POST",
            "/v1/saf/999999/discard",
            Some(json!({"reason": "matrix"})),
            Some("approver"),
            404,
        ),
        ("GET", "/v1/api-keys", None, Some("admin"), 200),
        ("DELETE", "/v1/api-keys/999999", None, Some("admin"), 404),
        (
            "POST",
            "/v1/accounts/nobody/disable",
            None,
            Some("admin"),
            404,
        ),
        (
            "POST",
            "/v1/accounts/nobody/enable",
            None,
            Some("admin"),
            404,
        ),
        ("GET", "/v1/routes", None, Some("viewer"), 200),
        ("POST", "/v1/routes", Some(no_bank), Some("admin"), 422),
        ("PUT", "/v1/routes/999999", Some(route), Some("admin"), 404),
        ("DELETE", "/v1/routes/999999", None, Some("admin"), 404),
        ("GET", "/v1/links", None, Some("viewer"), 200),
        (
            "POST",
            "/v1/links/no-such.0/sign-off",
            None,
            Some("operator"),
            404,
        ),
        (
            "GET",
            "/v1/settlement?business_day=2026-12-01",
            None,
            Some("merchant"),
            200,
        ),
        ("GET", "/v1/ledger/balances", None, Some("merchant"), 200),
        ("GET", "/v1/overview", None, Some("viewer"), 200),
    ]
}

/// Who may ask for refunds: merchant users and operators and up, not viewers.
const REQUESTERS: &str = "merchant or operator and up";

const ROLES: [&str; 6] = [
    "merchant",
    "viewer",
    "operator",
    "approver",
    "admin",
    "superadmin",
];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

// Proves the role matrix: every role (accounts with TOTP, a static token, an API key, no
// token) against every admin route gets the route's answer when its role suffices, 403
// when not, 401 without credentials; and that each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix() {
    let world = office_world("bo_matrix");
    let mut sw = world.start_switch(1);
    let (office, root) = bootstrap(&world, &mut sw).await;
    let mut sessions = Vec::new();
    for role in ROLES {
        let name = format!("{role}-user");
        let merchant = (role == "merchant").then_some(MERCHANT_ID);
        office.create(&root, &name, role, merchant).await;
        let s = if role == "viewer" {
            let a = office.login(&name, PASSWORD).await;
            assert_eq!(
                a.json()["totp_enrolment_required"],
                false,
                "viewers need no TOTP"
            );
            a.json()["token"].as_str().unwrap().to_string()
        } else {
            office.enrolled(&name, PASSWORD).await.token
        };
        sessions.push((role, s));
    }
    let admin = Session {
        token: sessions[rank("admin")].1.clone(),
        secret: None,
        recovery: Vec::new(),
    };
    let key = office
        .call(
            "POST",
            "/v1/api-keys",
            Some(&admin.token),
            Some(json!({"name": "ci", "role": "viewer", "expires_in_days": 1})),
        )
        .await;
    assert_eq!(key.status, 200, "{}", key.body);
    let key = key.json()["key"].as_str().unwrap().to_string();
    let above = json!({"name": "x", "role": "superadmin", "expires_in_days": 1});
    let a = office
        .call("POST", "/v1/api-keys", Some(&admin.token), Some(above))
        .await;
    assert_eq!(a.status, 403, "a key above its creator's role is refused");
    let mut callers: Vec<(String, Option<String>, Option<usize>)> = sessions
        .iter()
        .map(|(r, t)| (r.to_string(), Some(t.clone()), Some(rank(r))))
        .collect();
    callers.push((
        "static operator token".into(),
        Some(STATIC_TOKEN.into()),
        Some(rank("operator")),
    ));
    callers.push(("viewer API key".into(), Some(key), Some(rank("viewer"))));
    callers.push(("no token".into(), None, None));
    let mut forbidden_expected = 0.0;
    for (method, path, body, needed, allowed) in routes() {
        for (who, token, role) in &callers {
            let a = office
                .call(method, path, token.as_deref(), body.clone())
                .await;
            let expect = match (role, needed) {
                (None, _) => 401,
                (Some(_), None) if who.contains("token") || who.contains("key") => a.status,
                (Some(_), None) => allowed,
                (Some(r), Some(REQUESTERS)) if *r == 0 || *r >= rank("operator") => allowed,
                (Some(_), Some(REQUESTERS)) => 403,
                (Some(r), Some(n)) if *r >= rank(n) => allowed,
                _ => 403,
            };
            assert_eq!(a.status, expect, "{who} {method} {path}: {}", a.body);
            if expect == 403 {
                forbidden_expected += 1.0;
            }
        }
    }
    let metrics = office.call("GET", "/metrics", None, None).await.body;
    let forbidden = sample(
        &metrics,
        "switchyard_admin_auth_failures_total{reason=\"forbidden\"}",
    );
    assert_eq!(forbidden, Some(forbidden_expected), "each refusal counted");
    drop(sw);
}

/// The value of the series `series` in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

// Proves an account whose password an administrator chose must change it at first use
// (PCI DSS 8.3.5): its session is refused everything but setting the account up until
// then, over the API and in the console (which sends it to the password page), and the
// new password must differ from the one chosen for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_chosen_by_an_admin_is_changed_at_first_use() {
    let world = office_world("bo_first_use");
    let mut sw = world.start_switch(1);
    let (office, root) = bootstrap(&world, &mut sw).await;
    let body = json!({"username": "newbie", "role": "viewer", "password": INITIAL_PASSWORD});
    let made = office
        .call("POST", "/v1/accounts", Some(&root.token), Some(body))
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let a = office.login("newbie", INITIAL_PASSWORD).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["password_change_required"], true, "{}", a.body);
    let token = a.json()["token"].as_str().unwrap().to_string();
    let refused = office.get("/v1/transactions", &token).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("/v1/me/password"), "{}", refused.body);
    let same = json!({"current_password": INITIAL_PASSWORD, "new_password": INITIAL_PASSWORD});
    let again = office
        .call("POST", "/v1/me/password", Some(&token), Some(same))
        .await;
    assert_eq!(again.status, 422, "the same password again: {}", again.body);
    let form = [
        ("current_password", INITIAL_PASSWORD),
        ("new_password", PASSWORD),
    ];
    let (status, page) = console_post(
        &office,
        &token,
        "/console/password",
        "/console/password",
        &form,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Overview"),
        "a viewer goes on to the overview: {page}"
    );
    assert_eq!(office.get("/v1/transactions", &token).await.status, 200);
    let later = office.login("newbie", PASSWORD).await;
    assert_eq!(
        later.json()["password_change_required"],
        false,
        "{}",
        later.body
    );
    drop(sw);
}

// Proves 30 failed logins from one address, across accounts, refuse that address (429
// with Retry-After, even with a right password, no account locked) while another
// address still logs in, and that each refusal is counted and the address audited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_throttle_their_address() {
    let world = office_world("bo_throttle");
    let mut sw = world.start_switch(1);
    let (office, root) = bootstrap(&world, &mut sw).await;
    office.create(&root, "wes", "viewer", None).await;
    let sprayer: IpAddr = "127.0.0.3".parse().unwrap();
    let guess = |who: &str, pw: &str| json!({"username": who, "password": pw});
    for i in 0..30 {
        let who = if i % 5 == 0 {
            "wes".to_string()
        } else {
            format!("user{i}")
        };
        let a = office
            .login_from(Some(sprayer), guess(&who, "Spring-2026-Guess"))
            .await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.body);
    }
    let refused = office
        .login_from(Some(sprayer), guess("wes", PASSWORD))
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    let again = office
        .login_from(Some(sprayer), guess("user1", "Spring-2026-Guess"))
        .await;
    assert_eq!(again.status, 429, "{}", again.body);
    assert_eq!(
        office.login("wes", PASSWORD).await.status,
        200,
        "another address"
    );
    let metrics = office.call("GET", "/metrics", None, None).await.body;
    let throttled = "switchyard_admin_logins_total{outcome=\"throttled\"}";
    assert_eq!(sample(&metrics, throttled), Some(2.0));
    let audit = office.audit(&root, "actor=anonymous&action=login").await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "throttled");
    assert_eq!(audit[0]["source_addr"], "127.0.0.3");
    drop(sw);
}

// Proves 10 failed logins within 15 minutes lock an account (the right password is then
// refused, with the same 401 as a wrong one or an unknown username, so the lock tells
// nothing about an account or a password; only the right one counts as `locked`) until
// an admin unlocks it; that a login from a new address is counted and
// shown at the next login; and that the audit log records each step with who, where and
// the values before and after, and refuses UPDATE, DELETE and TRUNCATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_unlock_new_address_and_audit() {
    let world = office_world("bo_lockout");
    let mut sw = world.start_switch(1);
    let (office, root) = bootstrap(&world, &mut sw).await;
    office.create(&root, "vic", "viewer", None).await;
    for i in 1..=10 {
        let a = office.login("vic", "Wrong-Password-0000").await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.body);
    }
    let locked = office.login("vic", PASSWORD).await;
    assert_eq!(locked.status, 401, "{}", locked.body);
    assert_eq!(
        locked.header("content-type"),
        Some("application/problem+json")
    );
    let wrong = office.login("vic", "Wrong-Password-0000").await;
    let unknown = office.login("nobody", "Wrong-Password-0000").await;
    assert_eq!((&locked.body, &wrong.body), (&unknown.body, &unknown.body));
    assert!(unknown.body.contains("locked"), "{}", unknown.body);
    let metrics = office.call("GET", "/metrics", None, None).await.body;
    assert_eq!(
        sample(
            &metrics,
            "switchyard_admin_logins_total{outcome=\"locked\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "switchyard_admin_logins_total{outcome=\"failure\"}"
        ),
        Some(12.0),
        "ten, the wrong password while locked, the unknown username"
    );
    let u = office
        .call("POST", "/v1/accounts/vic/unlock", Some(&root.token), None)
        .await;
    assert_eq!(u.status, 200, "{}", u.body);
    assert_eq!(office.login("vic", PASSWORD).await.status, 200, "unlocked");

    // A new address: counted, audited, and shown at the following login.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let body = json!({"username": "vic", "password": PASSWORD});
    let a = office.login_from(Some(other), body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let metrics = office.call("GET", "/metrics", None, None).await.body;
    assert_eq!(
        sample(&metrics, "switchyard_admin_new_address_logins_total"),
        Some(1.0)
    );
    let next = office.login_from(None, body).await;
    assert_eq!(next.json()["new_login_addresses"], json!(["127.0.0.2"]));

    let lock = office.audit(&root, "action=account.lock&target=vic").await;
    assert_eq!(lock.len(), 1, "{lock:?}");
    let unlock = office.audit(&root, "action=account.unlock").await;
    assert_eq!(unlock[0]["actor"], "root");
    assert_eq!(unlock[0]["source_addr"], "127.0.0.1");
    assert!(
        unlock[0]["before"]["locked_until"].is_string(),
        "{unlock:?}"
    );
    assert!(unlock[0]["after"]["locked_until"].is_null());
    let failed = office.audit(&root, "actor=vic&action=login&limit=5").await;
    assert_eq!(failed.len(), 5, "paged");
    let new_addr = office.audit(&root, "action=login.new_address").await;
    assert_eq!(new_addr[0]["source_addr"], "127.0.0.2");
    let created = office
        .audit(&root, "action=account.create&target=root")
        .await;
    assert_eq!(
        created[0]["actor"], "cli",
        "the first superadmin's creation is recorded"
    );

    let db = system_tests::pg_connect(&world.db_url).await;
    let before: i64 = db
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    for edit in [
        "UPDATE audit_log SET actor = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let e = db.execute(edit, &[]).await.expect_err(edit);
        assert!(format!("{e:?}").contains("append-only"), "{edit}: {e:?}");
    }
    let after: i64 = db
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    drop(sw);
}

const OTHER_MERCHANT: &str = "MERCHANT0000002";

/// Adds a second merchant (before the switch starts, so it is loaded); its credentials.
fn add_other_merchant(world: &World) -> MerchantCreds {
    let out = world.admin(&[
        "merchant",
        "add",
        "--id",
        OTHER_MERCHANT,
        "--name",
        "Other Merchant",
        "--currencies",
        "840",
        "--limit-minor",
        "1000000",
    ]);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    MerchantCreds {
        id: OTHER_MERCHANT.into(),
        key_hex: v["mac_key_hex"].as_str().unwrap().into(),
    }
}

/// The RRN of an answer.
fn rrn_of(m: &codec::Message) -> String {
    m.get_str(37).unwrap().to_string()
}

fn rrns(page: &Value) -> Vec<String> {
    page["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rrn"].as_str().unwrap().to_string())
        .collect()
}

// Proves transaction search by merchant, order reference, amount range, RRN and time with
// cursor pagination and masked card numbers, bad filters refused (422); a transaction's
// chain as a timeline (purchase then refund); and that a merchant user sees only its own
// merchant's transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_search_timeline_and_merchant_scope() {
    let world = office_world("bo_search");
    let other = add_other_merchant(&world);
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    let pan = "4111111111111111";
    let mut mine = world.client(&sw).await;
    let purchase = mine.purchase(&next_stan(), 2500, pan, "BO-ORDER-1");
    let paid = mine.call(&purchase).await;
    assert_eq!(rc(&paid), "00");
    let refund = mine.refund(&next_stan(), &purchase, 1000, Some("damaged"));
    let refunded = mine.call(&refund).await;
    assert_eq!(rc(&refunded), "00");
    let mut theirs = Client::connect(sw.merchant_addr, other).await;
    let their_paid = theirs
        .call(&theirs.purchase(&next_stan(), 4200, pan, "BO-ORDER-2"))
        .await;
    assert_eq!(rc(&their_paid), "00");
    let (my_rrn, their_rrn) = (rrn_of(&paid), rrn_of(&their_paid));

    let q = |s: &str| format!("/v1/transactions{s}");
    let all = office.get(&q(""), &root.token).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(!all.body.contains(pan), "card numbers masked");
    let everything = rrns(&all.json());
    for r in [&my_rrn, &their_rrn, &rrn_of(&refunded)] {
        assert!(everything.contains(r), "{r} in {everything:?}");
    }
    // Each filter alone: the one transaction it should find (none for a future time).
    let filters = [
        (format!("?merchant_id={OTHER_MERCHANT}"), Some(&their_rrn)),
        (
            "?amount_min=2000&amount_max=3000".to_string(),
            Some(&my_rrn),
        ),
        (
            "?order_ref=BO-ORDER-1&kind=purchase".to_string(),
            Some(&my_rrn),
        ),
        (format!("?rrn={my_rrn}"), Some(&my_rrn)),
        ("?from=2100-01-01T00:00:00Z".to_string(), None),
    ];
    for (filter, want) in filters {
        let found = office.get(&q(&filter), &root.token).await.json();
        let want: Vec<&str> = want.map(String::as_str).into_iter().collect();
        assert_eq!(rrns(&found), want, "{filter}");
        if !want.is_empty() {
            assert_eq!(found["transactions"][0]["card"], "************1111");
        }
    }
    // Times are RFC 3339 only (PostgreSQL alone reads `yesterday`); an unknown state is
    // refused naming the states there are, not answered with an empty list.
    for filter in [
        "?from=not-a-time",
        "?from=yesterday",
        "?to=now",
        "?state=bogus",
    ] {
        let bad = office.get(&q(filter), &root.token).await;
        assert_eq!(bad.status, 422, "{filter}: {}", bad.body);
    }
    let bad = office.get(&q("?state=bogus"), &root.token).await;
    assert!(bad.body.contains("authorising"), "{}", bad.body);
    let bad = office
        .get("/v1/refund-requests?state=bogus", &root.token)
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("executed"), "{}", bad.body);
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = office
            .get(&q(&format!("?limit=2{cursor}")), &root.token)
            .await
            .json();
        paged.extend(rrns(&page));
        match page["next_cursor"].as_i64() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        paged, everything,
        "pages of 2 add up to the whole, in order, without overlap"
    );

    let detail = office
        .call(
            "GET",
            &q(&format!("/{}", rrn_of(&refunded))),
            Some(&root.token),
            None,
        )
        .await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let timeline = detail.json()["timeline"].as_array().unwrap().clone();
    let kinds: Vec<&str> = timeline
        .iter()
        .filter(|e| e["source"] == "transaction")
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["purchase", "refund"], "{timeline:?}");
    assert_eq!(
        detail.json()["transaction"]["original_rrn"],
        my_rrn.as_str()
    );

    // A merchant user: its own merchant only, whatever it asks.
    office
        .create(&root, "shop-clerk", "merchant", Some(MERCHANT_ID))
        .await;
    let clerk = office.enrolled("shop-clerk", PASSWORD).await;
    let own = office.get(&q(""), &clerk.token).await.json();
    assert!(rrns(&own).contains(&my_rrn));
    assert!(!rrns(&own).contains(&their_rrn));
    let merchants: Vec<&Value> = own["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["merchant_id"])
        .collect();
    assert!(merchants.iter().all(|m| *m == MERCHANT_ID), "{merchants:?}");
    let asked = office
        .get(&q(&format!("?merchant_id={OTHER_MERCHANT}")), &clerk.token)
        .await;
    assert_eq!(asked.status, 403);
    let by_their_rrn = office
        .get(&q(&format!("?rrn={their_rrn}")), &clerk.token)
        .await;
    assert!(rrns(&by_their_rrn.json()).is_empty());
    let theirs_detail = office.get(&q(&format!("/{their_rrn}")), &clerk.token).await;
    assert_eq!(
        theirs_detail.status, 404,
        "another merchant's transaction does not exist for it"
    );
    let own_detail = office.get(&q(&format!("/{my_rrn}")), &clerk.token).await;
    assert_eq!(own_detail.status, 200);
    drop(sw);
}

/// Asks for a refund of `rrn`.
async fn ask_refund(
    office: &Office,
    by: &Session,
    rrn: &str,
    amount: i64,
    key: &str,
) -> HttpAnswer {
    let body = json!({"amount_minor": amount, "reason": "goods returned", "idempotency_key": key});
    office
        .call(
            "POST",
            &format!("/v1/transactions/{rrn}/refunds"),
            Some(&by.token),
            Some(body),
        )
        .await
}

async fn decide(office: &Office, by: &Session, id: i64, verb: &str) -> HttpAnswer {
    office
        .call(
            "POST",
            &format!("/v1/refund-requests/{id}/{verb}"),
            Some(&by.token),
            None,
        )
        .await
}

// Proves maker-checker end to end: a refund above the approval amount waits; the same
// idempotency key returns the same request; its requester and a merchant user cannot
// approve it; a different approver's approval sends it through the merchant path (the
// bank simulator records it once, the merchant gets a 0620, the ledger balances); a
// decided request cannot be decided again; a small refund is executed at once; an expired
// request cannot be approved; a rejected one is never sent; and each decision is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_with_maker_checker() {
    let world = office_world("bo_refunds");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    for (name, role, merchant) in [
        // An approver too: only being the requester stops it approving.
        ("maker", "approver", None),
        ("checker", "approver", None),
        ("clerk", "merchant", Some(MERCHANT_ID)),
    ] {
        office.create(&root, name, role, merchant).await;
    }
    let maker = office.enrolled("maker", PASSWORD).await;
    let checker = office.enrolled("checker", PASSWORD).await;
    let clerk = office.enrolled("clerk", PASSWORD).await;
    let mut c = world.client(&sw).await;
    assert_eq!(
        rc(&c.call(&c.network(&next_stan(), "001")).await),
        "00",
        "signed on for 0620s"
    );
    let paid = c
        .call(&c.purchase(&next_stan(), 5000, "4111111111111111", "BO-REFUND-1"))
        .await;
    assert_eq!(rc(&paid), "00");
    let rrn = paid.get_str(37).unwrap().to_string();

    let asked = ask_refund(&office, &maker, &rrn, 3000, "k1").await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    let req = asked.json();
    assert_eq!(req["state"], "pending");
    assert_eq!(req["needs_approval"], true);
    let id = req["id"].as_i64().unwrap();
    let again = ask_refund(&office, &maker, &rrn, 3000, "k1").await.json();
    assert_eq!(again["id"], id, "same key, same request");
    assert_eq!(
        decide(&office, &maker, id, "approve").await.status,
        403,
        "maker is not checker"
    );
    assert_eq!(
        decide(&office, &clerk, id, "approve").await.status,
        403,
        "merchant users do not approve"
    );
    let approved = decide(&office, &checker, id, "approve").await;
    assert_eq!(approved.status, 200, "{}", approved.body);
    let done = approved.json();
    assert_eq!(done["state"], "executed");
    assert_eq!(done["response_code"], "00");
    assert_eq!(done["decided_by"], "checker");
    let refund_rrn = done["refund_rrn"].as_str().unwrap().to_string();
    assert_eq!(
        decide(&office, &checker, id, "approve").await.status,
        409,
        "decided once"
    );
    assert_eq!(
        world.banks[0].requests_for(&refund_rrn).await,
        1,
        "the bank got the refund once"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let note = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, _) = c.recv_mti("0620", left).await;
        let m = m.expect("a 0620 about the refund");
        if de48_tag(&m, b"EV").as_deref() == Some("BACK_OFFICE_REFUND") {
            break m;
        }
    };
    assert!(c.mac_ok(&note));
    assert_eq!(note.get_str(37).as_deref(), Some(rrn.as_str()));
    assert_eq!(
        de48_tag(&note, b"ST").as_deref(),
        Some("PARTIALLY_REFUNDED")
    );
    world.admin(&["ledger", "check"]);

    // At or below the approval amount: executed at once, for a merchant user too.
    let small = ask_refund(&office, &clerk, &rrn, 500, "k-small")
        .await
        .json();
    assert_eq!(small["needs_approval"], false);
    assert_eq!(small["state"], "executed");
    assert_eq!(small["response_code"], "00");
    // More than what is left to refund (1500): approved here, refused by the switch's own
    // checks as a merchant's refund would be.
    let more = ask_refund(&office, &maker, &rrn, 2000, "k-more")
        .await
        .json()["id"]
        .as_i64()
        .unwrap();
    let too_much = decide(&office, &checker, more, "approve").await.json();
    assert_eq!(too_much["state"], "executed");
    assert_ne!(too_much["response_code"], "00", "{too_much}");

    // Expired and rejected requests are never sent.
    let late = ask_refund(&office, &maker, &rrn, 1200, "k2").await.json()["id"]
        .as_i64()
        .unwrap();
    let db = system_tests::pg_connect(&world.db_url).await;
    db.execute(
        "UPDATE refund_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        &[&late],
    )
    .await
    .unwrap();
    let expired = decide(&office, &checker, late, "approve").await;
    assert_eq!(expired.status, 409, "{}", expired.body);
    let listed = office
        .get("/v1/refund-requests?state=expired", &checker.token)
        .await
        .json();
    assert_eq!(listed[0]["id"], late);
    let no = ask_refund(&office, &maker, &rrn, 1100, "k3").await.json()["id"]
        .as_i64()
        .unwrap();
    let rejected = decide(&office, &checker, no, "reject").await.json();
    assert_eq!(rejected["state"], "rejected");
    assert!(rejected["refund_rrn"].is_null());
    let own = office.get("/v1/refund-requests", &clerk.token).await.json();
    assert_eq!(own.as_array().unwrap().len(), 5, "{own}");
    world.admin(&["ledger", "check"]);

    let approvals = office.audit(&root, "action=refund.approve").await;
    let target = id.to_string();
    let ok: Vec<&Value> = approvals
        .iter()
        .filter(|e| e["outcome"] == "ok" && e["target"] == target.as_str())
        .collect();
    assert_eq!(ok.len(), 1, "{approvals:?}");
    assert_eq!(ok[0]["actor"], "checker");
    assert_eq!(ok[0]["before"]["state"], "pending");
    assert_eq!(ok[0]["after"]["state"], "executed");
    assert!(
        approvals
            .iter()
            .any(|e| e["actor"] == "maker" && e["outcome"] == "refused")
    );
    drop(sw);
}

/// `/readyz`: its status and its checks by name.
async fn readyz(office: &Office) -> (u16, Value) {
    let a = office.call("GET", "/readyz", None, None).await;
    (a.status, a.json())
}

fn check_ok(checks: &Value, name: &str) -> bool {
    checks["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks}"))["ok"]
        == true
}

// Proves /readyz reports PostgreSQL, Redis and each bank: ready with every link up, 503
// naming the bank whose links are all signed off, ready again once one is signed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_each_dependency() {
    let world = office_world("bo_readyz");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let office = Office {
        addr: admin_addr(&mut sw),
    };
    let (status, r) = readyz(&office).await;
    assert_eq!(status, 200, "{r}");
    for name in ["postgres", "redis", "bank:bank-a", "bank:bank-b"] {
        assert!(check_ok(&r, name), "{name}: {r}");
    }
    let links = office.get("/links", STATIC_TOKEN).await.json();
    let bank_a: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["bank"] == "bank-a")
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect();
    for l in &bank_a {
        let path = format!("/links/{l}/sign-off");
        assert_eq!(
            office
                .call("POST", &path, Some(STATIC_TOKEN), None)
                .await
                .status,
            200
        );
    }
    let (status, r) = readyz(&office).await;
    assert_eq!(status, 503, "{r}");
    assert!(!check_ok(&r, "bank:bank-a"));
    assert!(check_ok(&r, "bank:bank-b") && check_ok(&r, "postgres") && check_ok(&r, "redis"));
    let path = format!("/links/{}/sign-on", bank_a[0]);
    assert_eq!(
        office
            .call("POST", &path, Some(STATIC_TOKEN), None)
            .await
            .status,
        200
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while readyz(&office).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again after sign-on"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(sw);
}

/// A purchase of `amount` by `c` with a fresh STAN and order reference; its answer.
async fn pay(c: &mut Client, amount: u64) -> codec::Message {
    let stan = next_stan();
    let order = format!("BO-M-{stan}");
    let m = c.purchase(&stan, amount, "4111111111111111", &order);
    c.call(&m).await
}

// Proves merchants from the back office: one created there pays with the key it was
// given; lowering its limit refuses larger amounts (61); disabling refuses (58) until it is
// enabled; and a MAC key rotation lets the old key verify until the overlap ends (answers
// MAC'd with the new key), then refuses it (63) while the new key keeps working; each
// change audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchants_limits_and_key_rotation() {
    let world = office_world("bo_merchants");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    let new = json!({"id": "MERCHANT0000003", "name": "Third", "currencies": [840],
        "limit_minor": 100000, "rate_per_s": 100, "burst": 100});
    let made = office
        .call("POST", "/v1/merchants", Some(&root.token), Some(new))
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let creds = MerchantCreds {
        id: "MERCHANT0000003".into(),
        key_hex: made.json()["mac_key_hex"].as_str().unwrap().into(),
    };
    let mut third = Client::connect(sw.merchant_addr, creds).await;
    assert_eq!(rc(&pay(&mut third, 1500).await), "00");
    let limits = json!({"currencies": [840], "limit_minor": 1000, "rate_per_s": 100, "burst": 100});
    let path = "/v1/merchants/MERCHANT0000003/limits";
    assert_eq!(
        office
            .call("PUT", path, Some(&root.token), Some(limits))
            .await
            .status,
        200
    );
    assert_eq!(rc(&pay(&mut third, 1500).await), "61");
    let off = office
        .call(
            "POST",
            "/v1/merchants/MERCHANT0000003/disable",
            Some(&root.token),
            None,
        )
        .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(rc(&pay(&mut third, 500).await), "58");
    office
        .call(
            "POST",
            "/v1/merchants/MERCHANT0000003/enable",
            Some(&root.token),
            None,
        )
        .await;
    assert_eq!(rc(&pay(&mut third, 500).await), "00");

    // Rotation: both keys verify during the overlap; answers carry the new key's MAC.
    let mut old = world.client(&sw).await;
    let rotated_at = std::time::Instant::now();
    let path = format!("/v1/merchants/{MERCHANT_ID}/rotate-key");
    let r = office
        .call(
            "POST",
            &path,
            Some(&root.token),
            Some(json!({"overlap_s": 3})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["previous_key_valid_until"].is_string());
    let new_creds = MerchantCreds {
        id: MERCHANT_ID.into(),
        key_hex: r.json()["mac_key_hex"].as_str().unwrap().into(),
    };
    let mut new = Client::connect(sw.merchant_addr, new_creds).await;
    let by_old = pay(&mut old, 700).await;
    assert_eq!(rc(&by_old), "00", "the old key verifies during the overlap");
    assert!(
        new.mac_ok(&by_old) && !old.mac_ok(&by_old),
        "answers use the new key"
    );
    assert_eq!(rc(&pay(&mut new, 700).await), "00");
    let listed = office.get("/v1/merchants", &root.token).await.json();
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MERCHANT_ID)
        .unwrap()
        .clone();
    assert!(mine["previous_key_valid_until"].is_string(), "{mine}");
    let refused = loop {
        let a = pay(&mut old, 700).await;
        if rc(&a) != "00" {
            break a;
        }
        assert!(
            rotated_at.elapsed() < WAIT,
            "the old key never stopped verifying"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        rc(&refused),
        "63",
        "after the overlap the old key is refused"
    );
    assert!(
        rotated_at.elapsed() >= std::time::Duration::from_secs(2),
        "not before the window ends"
    );
    assert_eq!(rc(&pay(&mut new, 700).await), "00");

    for action in [
        "merchant.create",
        "merchant.limits",
        "merchant.disable",
        "merchant.rotate_key",
    ] {
        let found = office.audit(&root, &format!("action={action}")).await;
        assert_eq!(found.len(), 1, "{action}: {found:?}");
        assert_eq!(found[0]["actor"], "root");
    }
    drop(sw);
}

/// `path` answered 200 by `by`: its JSON.
async fn ok_json(
    office: &Office,
    method: &str,
    path: &str,
    by: &str,
    body: Option<Value>,
) -> Value {
    let a = office.call(method, path, Some(by), body).await;
    assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
    a.json()
}

/// A purchase with `pan` that reached a bank: its RRN.
async fn pay_with(c: &mut Client, pan: &str) -> String {
    let stan = next_stan();
    let m = c
        .call(&c.purchase(&stan, 700, pan, &format!("BO-R-{stan}")))
        .await;
    assert_ne!(rc(&m), "91", "a bank answered");
    rrn_of(&m)
}

/// The one audit record of `action` on `target`.
async fn audited(office: &Office, by: &Session, action: &str, target: &str) -> Value {
    let found = office
        .audit(by, &format!("action={action}&target={target}"))
        .await;
    assert_eq!(found.len(), 1, "{action} {target}: {found:?}");
    found[0].clone()
}

// Proves BIN routes from the API change the running switch's routing at once: a card
// routed to bank-a goes to bank-b once a narrower route is added, back to bank-a when the
// route is changed, and by the broad route again once it is removed; bad routes, and a
// route with another's range and priority, are refused (422); each change (from the command line too) is audited with before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_without_a_restart() {
    let world = office_world("bo_routes");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    let t = &root.token;
    let mut c = world.client(&sw).await;
    let card = "4111111111111111";
    let rrn = pay_with(&mut c, card).await;
    assert_eq!(
        world.banks[0].requests_for(&rrn).await,
        1,
        "bank-a by default"
    );

    let body = json!({"low": "411111", "high": "411111", "bank_id": "bank-b"});
    let added = ok_json(&office, "POST", "/v1/routes", t, Some(body)).await;
    let id = added["id"].as_i64().unwrap();
    let twin = json!({"low": "411111", "high": "411111", "bank_id": "bank-a"});
    let a = office.call("POST", "/v1/routes", Some(t), Some(twin)).await;
    assert_eq!(a.status, 422, "same range and priority: {}", a.body);
    let rrn = pay_with(&mut c, card).await;
    assert_eq!(
        world.banks[1].requests_for(&rrn).await,
        1,
        "the new route at once"
    );
    let listed = ok_json(&office, "GET", "/v1/routes", t, None).await;
    assert!(listed.as_array().unwrap().contains(&added), "{listed}");

    let path = format!("/v1/routes/{id}");
    let to_a = json!({"low": "411111", "high": "411112", "bank_id": "bank-a", "priority": 5});
    let changed = ok_json(&office, "PUT", &path, t, Some(to_a)).await;
    assert_eq!(changed["high"], "411112");
    let rrn = pay_with(&mut c, card).await;
    assert_eq!(
        world.banks[0].requests_for(&rrn).await,
        1,
        "the changed route"
    );
    let removed = ok_json(&office, "DELETE", &path, t, None).await;
    assert_eq!(removed, changed);
    assert_eq!(
        office.call("DELETE", &path, Some(t), None).await.status,
        404
    );

    for bad in [
        json!({"low": "5", "high": "45", "bank_id": "bank-a"}),
        json!({"low": "4a", "high": "4b", "bank_id": "bank-a"}),
        json!({"low": "4", "high": "4", "bank_id": "nowhere"}),
    ] {
        let a = office.call("POST", "/v1/routes", Some(t), Some(bad)).await;
        assert_eq!(a.status, 422, "{}", a.body);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
    }

    let target = id.to_string();
    let add = audited(&office, &root, "route.add", &target).await;
    assert_eq!(add["after"]["bank_id"], "bank-b");
    assert!(add["before"].is_null());
    let change = audited(&office, &root, "route.change", &target).await;
    assert_eq!(change["before"]["bank_id"], "bank-b");
    assert_eq!(change["after"]["bank_id"], "bank-a");
    let remove = audited(&office, &root, "route.remove", &target).await;
    assert_eq!(remove["before"]["high"], "411112");
    assert_eq!(remove["actor"], "root");

    // The command line goes through the same owner: checked and audited.
    let out = world.admin(&[
        "route", "add", "--low", "55", "--high", "55", "--bank", "bank-b",
    ]);
    let cli_id = out
        .trim()
        .trim_start_matches("route ")
        .trim_end_matches(" added");
    let cli = audited(&office, &root, "route.add", cli_id).await;
    assert_eq!(cli["actor"], "cli");
    drop(sw);
}

/// The state of link `name` as `GET /v1/links` shows it.
async fn link_state(office: &Office, by: &str, name: &str) -> String {
    let links = ok_json(office, "GET", "/v1/links", by, None).await;
    let link = links.as_array().unwrap().iter().find(|l| l["name"] == name);
    link.unwrap()["state"].as_str().unwrap().to_string()
}

/// Waits until link `name` is (`want`) or is not (`!want`) ready.
async fn wait_link(office: &Office, by: &str, name: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while (link_state(office, by, name).await == "ready") != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never ready={want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

// Proves links signed off and on under /v1 (audited with the state before), and
// settlement totals and ledger balances from the ledger: the day's lines agree with the
// postings, every currency's balances sum to zero, and a merchant user sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_settlement_and_balances() {
    let world = office_world("bo_ledger");
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    let t = root.token.clone();
    let link = "bank-a.0";
    let off = ok_json(
        &office,
        "POST",
        &format!("/v1/links/{link}/sign-off"),
        &t,
        None,
    )
    .await;
    assert_eq!(off["before"]["state"], "ready");
    wait_link(&office, &t, link, false).await;
    ok_json(
        &office,
        "POST",
        &format!("/v1/links/{link}/sign-on"),
        &t,
        None,
    )
    .await;
    wait_link(&office, &t, link, true).await;
    let rec = audited(&office, &root, "link.sign_off", link).await;
    assert_eq!(rec["before"]["state"], "ready");
    audited(&office, &root, "link.sign_on", link).await;

    let mut c = world.client(&sw).await;
    for pan in ["4111111111111111", "5500000000000004"] {
        pay_with(&mut c, pan).await;
    }
    let db = system_tests::pg_connect(&world.db_url).await;
    let day: String = db
        .query_one("SELECT max(business_day)::text FROM ledger_postings", &[])
        .await
        .unwrap()
        .get(0);
    let report = ok_json(
        &office,
        "GET",
        &format!("/v1/settlement?business_day={day}"),
        &t,
        None,
    )
    .await;
    let lines = report["lines"].as_array().unwrap();
    for l in lines {
        let account = format!(
            "{}:{}",
            l["party"].as_str().unwrap(),
            l["party_id"].as_str().unwrap()
        );
        let row = db
            .query_one(
                "SELECT count(*)::bigint, sum(amount_minor)::bigint FROM ledger_postings
                 WHERE business_day = $1::text::date AND account = $2 AND currency = $3",
                &[&day, &account, &(l["currency"].as_i64().unwrap() as i16)],
            )
            .await
            .unwrap();
        assert_eq!(l["postings"].as_i64(), Some(row.get::<_, i64>(0)), "{l}");
        assert_eq!(
            l["amount_minor"].as_i64(),
            Some(row.get::<_, i64>(1)),
            "{l}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l["party"] == "bank" && l["party_id"] == "bank-b"),
        "{report}"
    );
    let balances = ok_json(&office, "GET", "/v1/ledger/balances", &t, None).await;
    let mut sums = std::collections::HashMap::<i64, i64>::new();
    for b in balances.as_array().unwrap() {
        *sums.entry(b["currency"].as_i64().unwrap()).or_default() +=
            b["balance_minor"].as_i64().unwrap();
    }
    assert!(
        !sums.is_empty() && sums.values().all(|v| *v == 0),
        "double entry: {balances}"
    );
    let bad = office
        .get("/v1/settlement?business_day=2026-13-01", &t)
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let missing = office.get("/v1/settlement", &t).await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );

    office
        .create(&root, "shop", "merchant", Some(MERCHANT_ID))
        .await;
    let shop = office.enrolled("shop", PASSWORD).await.token;
    let own = ok_json(
        &office,
        "GET",
        &format!("/v1/settlement?business_day={day}"),
        &shop,
        None,
    )
    .await;
    let own = own["lines"].as_array().unwrap();
    assert!(!own.is_empty());
    assert!(
        own.iter()
            .all(|l| l["party"] == "merchant" && l["party_id"] == MERCHANT_ID),
        "{own:?}"
    );
    let own = ok_json(&office, "GET", "/v1/ledger/balances", &shop, None).await;
    assert!(
        own.as_array()
            .unwrap()
            .iter()
            .all(|b| b["party_id"] == MERCHANT_ID),
        "{own}"
    );
    drop(sw);
}

/// A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`).
struct Browser {
    _driver: system_tests::Spawned,
    addr: SocketAddr,
    session: String,
}

/// W3C WebDriver's key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start(name: &str) -> Browser {
        let port = system_tests::free_port();
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-browser");
        // Before chromedriver starts: it exits at once when its log file cannot be made.
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("chromedriver-{port}.log"));
        let driver = system_tests::spawn_path(
            std::path::Path::new("/usr/bin/chromedriver"),
            [
                format!("--port={port}"),
                format!("--log-path={}", log.display()),
            ],
            std::iter::empty::<(&str, &str)>(),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let up = tokio::net::TcpStream::connect(addr).await.is_ok()
                && http_call(addr, None, "GET", "/status", None, None)
                    .await
                    .json()["value"]["ready"]
                    == true;
            if up {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let profile = dir
            .canonicalize()
            .unwrap()
            .join(system_tests::unique_name(name));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", format!("--user-data-dir={}", profile.display())]}}}});
        let s = http_call(addr, None, "POST", "/session", None, Some(&caps)).await;
        assert_eq!(s.status, 200, "new session: {}", s.body);
        let session = s.json()["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            _driver: driver,
            addr,
            session,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let a = http_call(self.addr, None, method, &path, None, body.as_ref()).await;
        assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
        a.json()["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url}))).await;
    }

    /// The element for a CSS selector, waiting for it to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let path = format!("/session/{}/element", self.session);
            let body = json!({"using": "css selector", "value": css});
            let a = http_call(self.addr, None, "POST", &path, None, Some(&body)).await;
            if a.status == 200 {
                return a.json()["value"][ELEMENT].as_str().unwrap().to_string();
            }
            assert!(tokio::time::Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Acts on the element for `css` (`value`, `click`), finding it again while the page
    /// replaces it (htmx swaps, navigation): a stale element is not a failure.
    async fn act(&self, css: &str, action: &str, body: Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = self.find(css).await;
            let path = format!("/session/{}/element/{e}/{action}", self.session);
            let a = http_call(self.addr, None, "POST", &path, None, Some(&body)).await;
            if a.status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{action} {css}: {}",
                a.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.act(css, "value", json!({"text": text})).await;
    }

    async fn click(&self, css: &str) {
        self.act(css, "click", json!({})).await;
    }

    /// Waits until the element's text contains `want`; the text.
    async fn wait_text(&self, css: &str, want: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let e = self.find(css).await;
            let path = format!("/session/{}/element/{e}/text", self.session);
            let a = http_call(self.addr, None, "GET", &path, None, None).await;
            let text = a.json()["value"].as_str().unwrap_or_default().to_string();
            if a.status == 200 && text.contains(want) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed {want:?}: {text:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Asserts that the page has no element for `css`.
    async fn absent(&self, css: &str) {
        let found = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        assert!(found.as_array().unwrap().is_empty(), "no {css} expected");
    }

    /// Signs in as `username` with the code of the step after the one `session` used.
    async fn sign_in(&self, base: &str, username: &str, session: &Session) {
        let totp = totp_code(session.secret.as_ref().unwrap(), 1);
        self.goto(&format!("{base}/console/login")).await;
        self.type_into("#username", username).await;
        self.type_into("#password", PASSWORD).await;
        self.type_into("#totp", &totp).await;
        self.click("#sign-in").await;
        self.wait_text("h1", "Overview").await;
    }

    async fn quit(mut self) {
        let path = format!("/session/{}", self.session);
        http_call(self.addr, None, "DELETE", &path, None, None).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    /// A test that fails before [`Browser::quit`] still closes Chromium (ending
    /// chromedriver alone would leave the browser running).
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if self.session.is_empty() {
            return;
        }
        let Ok(mut s) = std::net::TcpStream::connect(self.addr) else {
            return;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
        let req = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.session, self.addr
        );
        let _ = s.write_all(req.as_bytes());
        let _ = s.read(&mut [0u8; 1024]);
    }
}

// Proves the console in a real browser: an operator signs in with password and TOTP,
// searches transactions (htmx), requests a refund above the approval amount; another
// person with role approver signs in and approves it from the queue; the refund reaches the
// bank simulator. Then a new operator enrols TOTP on the QR page (the secret read from the
// page) and signs a link off and on; an admin adds, changes and removes a route and creates a
// merchant (its MAC key shown once); the store-and-forward queue shows reversals bank-a
// never answers, an operator retries one (and may not discard), an approver discards
// another with a reason, both audited; an operator captures a pre-authorisation and voids
// a purchase from their rows, both approved from the requests queue (see
// capture_and_void_in_console); and a screenshot of the overview is saved under
// target/ once its charts have data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser() {
    let opts = WorldOptions {
        bank_args: vec![vec!["--ignore-reversals".into()], vec![]],
        ..WorldOptions::default()
    };
    let world = system_tests::office::world("bo_console", APPROVAL_ABOVE_MINOR, "", opts);
    let mut sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let (office, root) = bootstrap(&world, &mut sw).await;
    office.create(&root, "maker", "operator", None).await;
    office.create(&root, "checker", "approver", None).await;
    let maker = office.enrolled("maker", PASSWORD).await;
    let checker = office.enrolled("checker", PASSWORD).await;
    let mut c = world.client(&sw).await;
    let paid = c
        .call(&c.purchase(&next_stan(), 5000, "4111111111111111", "BO-CONSOLE-1"))
        .await;
    assert_eq!(rc(&paid), "00");
    let rrn = paid.get_str(37).unwrap().to_string();
    let base = format!("http://{}", office.addr);

    let browser = Browser::start("console").await;
    browser.sign_in(&base, "maker", &maker).await;
    browser.goto(&format!("{base}/console/transactions")).await;
    browser.type_into("#order_ref", "BO-CONSOLE-1").await;
    browser.click("#search-button").await;
    let row = format!("#txn-{rrn}");
    browser.wait_text(&row, "BO-CONSOLE-1").await;
    // The search's rows replaced the page's: only the payment searched for is left.
    let deadline = tokio::time::Instant::now() + WAIT;
    while browser
        .wait_text("#rows", "BO-CONSOLE-1")
        .await
        .contains("READY-")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the search never narrowed the rows"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    browser
        .type_into(&format!("{row} .refund-amount"), "3000")
        .await;
    browser
        .type_into(&format!("{row} .refund-reason"), "damaged in transit")
        .await;
    browser.click(&format!("{row} .refund-button")).await;
    let pending = browser.wait_text("#refunds", "pending").await;
    assert!(pending.contains("maker"), "{pending}");
    // The requester gets no approve button.
    browser.absent(".approve").await;
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;

    browser.sign_in(&base, "checker", &checker).await;
    browser.goto(&format!("{base}/console/refunds")).await;
    browser.click(".approve").await;
    browser.wait_text("#refunds", "executed").await;
    let listed = office.get("/v1/refund-requests", &root.token).await.json();
    let done = &listed[0];
    assert_eq!(done["response_code"], "00", "{listed}");
    assert_eq!(done["decided_by"], "checker");
    let refund_rrn = done["refund_rrn"].as_str().unwrap();
    assert_eq!(world.banks[0].requests_for(refund_rrn).await, 1);

    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;

    office.create(&root, "fresh", "operator", None).await;
    enrol_in_console(&browser, &base, "fresh").await;
    links_in_console(&browser, &base, &office, &root).await;
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;
    saf_in_console(&browser, &base, &office, &root, &mut c).await;
    capture_and_void_in_console(&browser, &base, &world, &office, &root, &mut c).await;
    office.create(&root, "ada", "admin", None).await;
    let ada = office.enrolled("ada", PASSWORD).await;
    browser.sign_in(&base, "ada", &ada).await;
    routes_in_console(&browser, &base, &office, &root).await;
    merchants_in_console(&browser, &base).await;
    overview_screenshot(&browser, &base, &mut c).await;
    browser.quit().await;
    drop(sw);
}

/// Signs `username` (password only, no second factor yet) in and enrols TOTP on the QR
/// page, reading the secret from the page; the session is then good for everything.
async fn enrol_in_console(browser: &Browser, base: &str, username: &str) {
    browser.goto(&format!("{base}/console/login")).await;
    browser.type_into("#username", username).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#sign-in").await;
    browser.wait_text("h1", "Second factor").await;
    browser.click("#totp-start").await;
    browser.find("#totp-qr svg").await;
    let secret = browser.wait_text("#totp-secret", "").await;
    assert!(secret.len() >= 16, "a base32 secret: {secret:?}");
    browser
        .type_into("#totp-code", &totp_code(secret.trim(), 0))
        .await;
    browser.click("#totp-confirm").await;
    let codes = browser.wait_text("#recovery-codes", "").await;
    assert!(codes.lines().count() >= 8, "recovery codes shown: {codes}");
    browser.click("#to-overview").await;
    browser.wait_text("h1", "Overview").await;
}

/// Reloads the page at `url` until the text of the element for `css` satisfies `ok`.
async fn reload_until(browser: &Browser, url: &str, css: &str, ok: impl Fn(&str) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        browser.goto(url).await;
        let text = browser.wait_text(css, "").await;
        if ok(&text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} {css}: {text:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Signs bank-a's link off and on again from the links page; both audited.
async fn links_in_console(browser: &Browser, base: &str, office: &Office, root: &Session) {
    let url = format!("{base}/console/links");
    let state = r#"tr[data-link="bank-a.0"] .state"#;
    reload_until(browser, &url, state, |t| t == "ready").await;
    browser.click(r#"tr[data-link="bank-a.0"] .sign-off"#).await;
    browser.wait_text("#notice", "sign-off").await;
    reload_until(browser, &url, state, |t| t != "ready").await;
    browser.click(r#"tr[data-link="bank-a.0"] .sign-on"#).await;
    browser.wait_text("#notice", "sign-on").await;
    reload_until(browser, &url, state, |t| t == "ready").await;
    for action in ["link.sign_off", "link.sign_on"] {
        let rec = audited(office, root, action, "bank-a.0").await;
        assert_eq!(rec["actor"], "fresh");
    }
}

/// Two purchases voided from the API: reversals bank-a never answers, so they stay
/// queued. Their RRNs and queue ids.
async fn queued_reversals(office: &Office, c: &mut Client) -> Vec<(String, i64)> {
    let mut rrns = Vec::new();
    for i in 0..2 {
        let order = format!("BO-CONSOLE-SAF-{i}");
        let paid = c
            .call(&c.purchase(&next_stan(), 300, "4111111111111111", &order))
            .await;
        assert_eq!(rc(&paid), "00");
        let rrn = paid.get_str(37).unwrap().to_string();
        let body = json!({"reason": "cancelled", "idempotency_key": order});
        let path = format!("/v1/transactions/{rrn}/voids");
        let v = ok_json(office, "POST", &path, STATIC_TOKEN, Some(body)).await;
        assert_eq!(v["response_code"], "00", "{v}");
        rrns.push(rrn);
    }
    let queue = ok_json(office, "GET", "/v1/saf?state=pending", STATIC_TOKEN, None).await;
    let items = queue["items"].as_array().unwrap();
    rrns.into_iter()
        .map(|rrn| {
            let m = items
                .iter()
                .find(|m| m["rrn"] == rrn.as_str())
                .unwrap_or_else(|| panic!("{rrn} queued: {queue}"));
            (rrn, m["id"].as_i64().unwrap())
        })
        .collect()
}

/// A console form posted with the session `token` as its cookie and the CSRF token read
/// from the console page `page` (or `csrf` when given): the answer's status and body.
async fn console_post(
    office: &Office,
    token: &str,
    page: &str,
    path: &str,
    form: &[(&str, &str)],
    csrf: Option<&str>,
) -> (u16, String) {
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let cookie = format!("sy_session={token}");
    let url = |p: &str| format!("http://{}{p}", office.addr);
    let html = client
        .get(url(page))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let read = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a CSRF token on {page}: {html}"));
    let mut fields = vec![("csrf", csrf.unwrap_or(read))];
    fields.extend_from_slice(form);
    let body: String = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
        .collect::<Vec<_>>()
        .join("&");
    let a = client
        .post(url(path))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (a.status().as_u16(), a.text().await.unwrap())
}

/// The store-and-forward page: an operator sees two queued reversals, retries one, gets
/// no discard button and is refused one posted anyway (and any form without the CSRF
/// token); an approver discards the other with a reason; both actions audited.
async fn saf_in_console(
    browser: &Browser,
    base: &str,
    office: &Office,
    root: &Session,
    c: &mut Client,
) {
    let queued = queued_reversals(office, c).await;
    office.create(root, "saf-op", "operator", None).await;
    office.create(root, "saf-boss", "approver", None).await;
    let op = office.enrolled("saf-op", PASSWORD).await;
    let boss = office.enrolled("saf-boss", PASSWORD).await;
    let row = |i: usize| format!(r#"tr[data-rrn="{}"]"#, queued[i].0);

    browser.sign_in(base, "saf-op", &op).await;
    browser.click("#nav-saf").await;
    browser.find("#saf-state").await;
    browser
        .goto(&format!("{base}/console/saf?state=pending"))
        .await;
    let shown = browser.wait_text(&row(0), "reversal").await;
    assert!(shown.contains("pending"), "{shown}");
    browser.absent(".discard").await; // operators get no discard
    browser.click(&format!("{} .retry", row(0))).await;
    browser.wait_text("#notice", "retried").await;
    let page = "/console/saf?state=pending";
    let discard = format!("/console/saf/{}/discard", queued[1].1);
    let why = [("reason", "an operator tries")];
    let (status, body) = console_post(office, &op.token, page, &discard, &why, None).await;
    assert_eq!(status, 403, "an operator may not discard: {body}");
    let wrong = Some("0".repeat(64));
    let (status, _) =
        console_post(office, &boss.token, page, &discard, &why, wrong.as_deref()).await;
    assert_eq!(status, 403, "a wrong CSRF token is refused");
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;

    browser.sign_in(base, "saf-boss", &boss).await;
    browser
        .goto(&format!("{base}/console/saf?state=pending"))
        .await;
    let reason = "reversed by phone with bank-a, ticket 4711";
    browser
        .type_into(&format!("{} .discard-reason", row(1)), reason)
        .await;
    browser.click(&format!("{} .discard", row(1))).await;
    browser.wait_text("#notice", "discarded").await;
    let gone = browser.wait_text(&row(1), "discarded").await;
    assert!(
        gone.contains("saf-boss") && gone.contains("ticket 4711"),
        "{gone}"
    );
    // The state filter: the discarded message is no longer among the pending ones.
    browser.click(r#"#saf-state option[value="pending"]"#).await;
    browser.click("#saf-search").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while browser
        .wait_text("#saf", "pending")
        .await
        .contains(&queued[1].0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the state filter never left the discarded message out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    browser.wait_text(&row(0), "pending").await;
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;

    let retried = audited(office, root, "saf.retry", &queued[0].1.to_string()).await;
    assert_eq!(retried["actor"], "saf-op");
    let discarded = audited(office, root, "saf.discard", &queued[1].1.to_string()).await;
    assert_eq!(discarded["actor"], "saf-boss");
    assert_eq!(discarded["before"]["state"], "pending");
    assert_eq!(discarded["after"]["discard_reason"], reason);
}

/// A payment approved with `c` (`hold`: a pre-authorisation, else a purchase) of 5000 with
/// order reference `order`: its RRN.
async fn approved(c: &mut Client, hold: bool, order: &str) -> String {
    let stan = next_stan();
    let m = if hold {
        c.preauth(&stan, 5000, "4111111111111111", order)
    } else {
        c.purchase(&stan, 5000, "4111111111111111", order)
    };
    let answer = c.call(&m).await;
    assert_eq!(rc(&answer), "00");
    answer.get_str(37).unwrap().to_string()
}

/// The request of `kind` on `rrn` in the API's list (as root sees it).
async fn request_of(office: &Office, root: &Session, kind: &str, rrn: &str) -> Value {
    let listed = ok_json(office, "GET", "/v1/refund-requests", &root.token, None).await;
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind && r["original_rrn"] == rrn)
        .unwrap_or_else(|| panic!("a {kind} of {rrn}: {listed}"))
        .clone()
}

/// On the transactions page an operator captures a pre-authorisation (its row offers no
/// void) and voids a purchase (its row offers no capture); both above the approval amount,
/// they wait on the requests page, told apart by kind, until an approver approves them
/// there: the capture's advice reaches the bank, the void's reversal (bank-a ignores reversals)
/// waits in the store-and-forward queue; both requests audited.
async fn capture_and_void_in_console(
    browser: &Browser,
    base: &str,
    world: &World,
    office: &Office,
    root: &Session,
    c: &mut Client,
) {
    let held = approved(c, true, "BO-CONSOLE-HOLD").await;
    let paid = approved(c, false, "BO-CONSOLE-VOID").await;
    office.create(root, "cv-op", "operator", None).await;
    office.create(root, "cv-boss", "approver", None).await;
    let op = office.enrolled("cv-op", PASSWORD).await;
    let boss = office.enrolled("cv-boss", PASSWORD).await;

    browser.sign_in(base, "cv-op", &op).await;
    browser
        .goto(&format!("{base}/console/transactions?rrn={held}"))
        .await;
    let row = format!("#txn-{held}");
    browser.find(&format!("{row} .capture-button")).await;
    browser.absent(&format!("{row} .void-button")).await;
    browser
        .act(&format!("{row} .capture-amount"), "clear", json!({}))
        .await;
    browser
        .type_into(&format!("{row} .capture-amount"), "4000")
        .await;
    browser
        .type_into(&format!("{row} .capture-reason"), "goods shipped")
        .await;
    browser.click(&format!("{row} .capture-button")).await;
    browser.wait_text("#refunds", "capture").await;
    browser
        .goto(&format!("{base}/console/transactions?rrn={paid}"))
        .await;
    let row = format!("#txn-{paid}");
    browser.find(&format!("{row} .void-button")).await;
    browser.absent(&format!("{row} .capture-button")).await;
    browser
        .type_into(&format!("{row} .void-reason"), "customer cancelled")
        .await;
    browser.click(&format!("{row} .void-button")).await;
    browser.wait_text("#refunds", "void").await;
    let capture = request_of(office, root, "capture", &held).await;
    let void = request_of(office, root, "void", &paid).await;
    for (r, kind, amount) in [(&capture, "capture", 4000), (&void, "void", 5000)] {
        assert_eq!(r["state"], "pending", "{r}");
        assert_eq!(r["amount_minor"], amount, "{r}");
        let shown = browser
            .wait_text(&format!("#request-{} .kind", r["id"]), kind)
            .await;
        assert_eq!(shown, kind);
    }
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;

    browser.sign_in(base, "cv-boss", &boss).await;
    browser.goto(&format!("{base}/console/refunds")).await;
    for r in [&capture, &void] {
        let row = format!("#request-{}", r["id"]);
        browser.click(&format!("{row} .approve")).await;
        browser
            .wait_text(&format!("{row} .state"), "executed")
            .await;
    }
    let captured = request_of(office, root, "capture", &held).await;
    assert_eq!(captured["response_code"], "00", "{captured}");
    assert_eq!(captured["decided_by"], "cv-boss");
    assert!(captured["refund_rrn"].is_string(), "{captured}");
    // The bank hears of a completion by a store-and-forward advice (0220).
    let advised = world.banks[0]
        .wait_record("the capture's advice", WAIT, |r| count_mti(r, "0220") >= 1)
        .await;
    assert_eq!(count_mti(&advised, "0220"), 1, "{advised}");
    let queue = ok_json(office, "GET", "/v1/saf?state=pending", &root.token, None).await;
    let queued = queue["items"].as_array().unwrap();
    assert!(
        queued
            .iter()
            .any(|m| m["rrn"] == paid.as_str() && m["kind"] == "reversal"),
        "the void's reversal queued: {queue}"
    );
    for (action, r) in [("capture.request", &capture), ("void.request", &void)] {
        let rec = audited(office, root, action, &r["id"].to_string()).await;
        assert_eq!(rec["actor"], "cv-op");
    }
    browser.click("#logout").await;
    browser.wait_text("h1", "Sign in").await;
}

/// Edits `route` on the routes page: bad bounds are refused with the form kept open, then
/// a wider range to bank-b is saved; the API lists it so and the change is audited with
/// the route before and after.
async fn change_route_in_console(
    browser: &Browser,
    office: &Office,
    root: &Session,
    route: &Value,
) {
    let row = format!("#route-{}", route["id"]);
    browser.click(&format!("{row} .edit-route")).await;
    browser.find("#route-edit-form").await;
    browser.act("#route-edit-high", "clear", json!({})).await;
    browser.type_into("#route-edit-high", "42222x").await;
    browser.click("#save-route").await;
    browser.wait_text("#error", "").await;
    browser.act("#route-edit-high", "clear", json!({})).await;
    browser.type_into("#route-edit-high", "422229").await;
    browser
        .click(r#"#route-edit-bank option[value="bank-b"]"#)
        .await;
    browser.click("#save-route").await;
    browser.wait_text("#notice", "changed").await;
    browser.wait_text(&row, "422229").await;
    let listed = ok_json(office, "GET", "/v1/routes", &root.token, None).await;
    let changed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == route["id"])
        .unwrap_or_else(|| panic!("route listed: {listed}"))
        .clone();
    assert_eq!(
        (
            changed["low"].as_str(),
            changed["high"].as_str(),
            changed["bank_id"].as_str()
        ),
        (Some("422222"), Some("422229"), Some("bank-b")),
        "{changed}"
    );
    let rec = audited(office, root, "route.change", &route["id"].to_string()).await;
    assert_eq!(rec["actor"], "ada");
    assert_eq!(rec["before"]["high"], "422223");
    assert_eq!(rec["after"]["bank_id"], "bank-b");
}

/// Adds a route on the routes page (the API lists it), then removes it there.
async fn routes_in_console(browser: &Browser, base: &str, office: &Office, root: &Session) {
    browser.goto(&format!("{base}/console/routes")).await;
    browser.type_into("#route-low", "422222").await;
    browser.type_into("#route-high", "422223").await;
    browser.click("#add-route").await;
    browser.wait_text("#notice", "added").await;
    let listed = ok_json(office, "GET", "/v1/routes", &root.token, None).await;
    let route = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["low"] == "422222")
        .unwrap_or_else(|| panic!("route listed: {listed}"))
        .clone();
    let row = format!("#route-{}", route["id"]);
    browser.wait_text(&row, "422223").await;
    change_route_in_console(browser, office, root, &route).await;
    browser.click(&format!("{row} .remove-route")).await;
    browser.wait_text("#notice", "removed").await;
    let listed = ok_json(office, "GET", "/v1/routes", &root.token, None).await;
    assert!(!listed.as_array().unwrap().contains(&route), "{listed}");
}

/// Creates a merchant on the merchants page (its MAC key shown once), rotates its key,
/// disables and enables it.
async fn merchants_in_console(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/console/merchants")).await;
    browser.type_into("#merchant-id", "MERCHANT0000009").await;
    browser.type_into("#merchant-name", "Console Shop").await;
    browser.click("#create-merchant").await;
    let key = browser.wait_text("#mac-key", "").await;
    assert_eq!(key.trim().len(), 64, "a hex MAC key: {key:?}");
    browser
        .wait_text("#merchant-MERCHANT0000009", "Console Shop")
        .await;
    browser.goto(&format!("{base}/console/merchants")).await;
    browser.wait_text("#merchants", "MERCHANT0000009").await;
    browser.absent("#mac-key").await; // the MAC key is shown once
    let row = "#merchant-MERCHANT0000009";
    browser.click(&format!("{row} .rotate")).await;
    let rotated = browser.wait_text("#mac-key", "").await;
    assert_eq!(rotated.trim().len(), 64);
    assert_ne!(rotated, key, "a new key");
    browser.wait_text(&format!("{row} .enabled"), "yes").await;
    browser.click(&format!("{row} .disable")).await;
    browser.wait_text(&format!("{row} .enabled"), "no").await;
    browser.click(&format!("{row} .enable")).await;
    browser.wait_text(&format!("{row} .enabled"), "yes").await;
}

/// An attribute of the element for `css`.
async fn attribute(browser: &Browser, css: &str, name: &str) -> String {
    let e = browser.find(css).await;
    let v = browser
        .cmd("GET", &format!("/element/{e}/attribute/{name}"), None)
        .await;
    v.as_str().unwrap_or_default().to_string()
}

/// Pays while the overview is open until both charts have data, then saves a screenshot.
async fn overview_screenshot(browser: &Browser, base: &str, c: &mut Client) {
    browser.goto(&format!("{base}/console/overview")).await;
    browser.wait_text("#links", "ready").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        pay(c, 1200).await;
        let answered = attribute(browser, "#rps-chart", "data-answered").await == "yes";
        let points: u32 = attribute(browser, "#latency-chart", "data-points")
            .await
            .parse()
            .unwrap_or(0);
        if answered && points >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the charts never had data"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    browser.find("#rps-chart canvas").await;
    let shot = browser.cmd("GET", "/screenshot", None).await;
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot.as_str().unwrap())
        .unwrap();
    let out =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-overview.png");
    std::fs::write(&out, &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", out.display());
}

// Proves an administrator-initiated password reset: the token ends the account's sessions,
// sets a new password once (strength rules apply, at most 128 characters), cannot be reused or used once expired;
// an admin cannot reset a superadmin; both steps are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_password_reset() {
    let world = office_world("bo_reset");
    let mut sw = world.start_switch(1);
    let (office, root) = bootstrap(&world, &mut sw).await;
    office.create(&root, "vic", "viewer", None).await;
    office.create(&root, "ada", "admin", None).await;
    let vic = office.login("vic", PASSWORD).await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let issue = |by: String, who: &'static str| {
        let path = format!("/v1/accounts/{who}/reset");
        let office = &office;
        async move { office.call("POST", &path, Some(&by), None).await }
    };
    let issued = issue(root.token.clone(), "vic").await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.json()["reset_token"].as_str().unwrap().to_string();
    assert_eq!(
        office.get("/v1/me", &vic).await.status,
        401,
        "sessions ended"
    );
    let reset = |pw: &'static str, token: String| {
        let office = &office;
        async move {
            let body = json!({"reset_token": token, "new_password": pw});
            office
                .call("POST", "/v1/password-reset", None, Some(body))
                .await
        }
    };
    assert_eq!(reset("weak", token.clone()).await.status, 422);
    // Over 128 characters is refused before argon2 hashes it, and says so.
    let long: &'static str = format!("Aa1!{}", "x".repeat(125)).leak();
    let refused = reset(long, token.clone()).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("128"), "{}", refused.body);
    let new_password = "Fresh-Meadow-Compass-19";
    assert_eq!(reset(new_password, token.clone()).await.status, 200);
    assert_eq!(reset(new_password, token).await.status, 401, "used once");
    assert_eq!(office.login("vic", PASSWORD).await.status, 401);
    assert_eq!(office.login("vic", new_password).await.status, 200);

    let ada = office.enrolled("ada", PASSWORD).await;
    assert_eq!(
        issue(ada.token.clone(), "root").await.status,
        403,
        "an admin does not reset a superadmin"
    );
    let late = issue(ada.token.clone(), "vic").await.json()["reset_token"]
        .as_str()
        .unwrap()
        .to_string();
    let db = system_tests::pg_connect(&world.db_url).await;
    db.execute(
        "UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        reset("Other-Meadow-Compass-20", late).await.status,
        401,
        "expired"
    );
    let issued = office.audit(&root, "action=password.reset_issued").await;
    assert_eq!(issued.len(), 2, "{issued:?}");
    let used = office.audit(&root, "action=password.reset").await;
    assert!(
        used.iter()
            .any(|e| e["actor"] == "vic" && e["outcome"] == "ok"),
        "{used:?}"
    );
    drop(sw);
}
