//! The back office from a test's side: a world with an admin listener, the first
//! superadmin from the command line, accounts signed in with TOTP, and JSON calls with a
//! bearer token (over HTTPS when the world has a certificate).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::switchyard::{HttpAnswer, SwitchProc, WAIT, World, WorldOptions, run_binary, send_json};

/// The configured static token of [`world`] (role `operator`).
pub const STATIC_TOKEN: &str = "test-operator-token-0123456789";
pub const ROOT_PASSWORD: &str = "Root-Tangerine-Viaduct-42";
/// The password of every account a test creates.
pub const PASSWORD: &str = "Quiet-Harbour-Lantern-77";
/// The password an administrator gives a new account; its owner replaces it with
/// [`PASSWORD`] at first use (PCI DSS 8.3.5).
pub const INITIAL_PASSWORD: &str = "Chosen-By-Admin-Tide-42";

/// A world whose switch has an admin listener on a free port with [`STATIC_TOKEN`];
/// back-office requests above `approval_above_minor` need an approver; `admin_extra` is
/// added to the `[admin]` table, `opts.extra_config` after it.
pub fn world(
    name: &str,
    approval_above_minor: i64,
    admin_extra: &str,
    opts: WorldOptions,
) -> World {
    let extra = format!(
        "\n[admin]\naddr = \"127.0.0.1:0\"\nrefund_approval_above_minor = {approval_above_minor}\ntokens = [{{ token = \"{STATIC_TOKEN}\", role = \"operator\" }}]\n{admin_extra}\n{}",
        opts.extra_config
    );
    World::new(
        name,
        WorldOptions {
            extra_config: extra,
            ..opts
        },
    )
}

/// The admin listener's address from the switch's ready line.
pub fn admin_addr(sw: &mut SwitchProc) -> SocketAddr {
    let ready = sw
        .process
        .stdout()
        .seen()
        .last()
        .cloned()
        .expect("ready line");
    let v: Value = serde_json::from_str(&ready).expect("ready line is JSON");
    v["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin address")
}

/// `switchyard account add` with the password in the environment: success, stdout, stderr.
pub fn cli_add(
    world: &World,
    username: &str,
    role: &str,
    password: &str,
) -> (bool, String, String) {
    let cfg = world.config.to_str().expect("utf-8 path");
    let args = [
        "account",
        "add",
        "--username",
        username,
        "--role",
        role,
        "--config",
        cfg,
    ];
    let env = [
        ("SWITCHYARD_ACCOUNT_PASSWORD", password),
        ("RUST_LOG", "warn"),
    ];
    let (status, out, err) = run_binary("switchyard", &args, &env);
    (status.success(), out, err)
}

/// The RFC 6238 code of a base32 secret `steps_ahead` 30-second steps from now.
pub fn totp_code(secret_base32: &str, steps_ahead: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_base32).expect("base32 secret");
    let t = totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .expect("totp");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    t.generate(now + 30 * steps_ahead).to_string()
}

/// A signed-in account's session token.
#[derive(Debug, Clone)]
pub struct Session {
    pub token: String,
}

/// The admin listener of a running switch.
#[derive(Debug, Clone)]
pub struct Office {
    pub addr: SocketAddr,
    /// `https` with the CA to trust, or plain `http`.
    pub client: reqwest::Client,
    pub scheme: &'static str,
}

impl Office {
    /// Plain HTTP to `addr`.
    pub fn plain(addr: SocketAddr) -> Office {
        let client = reqwest::Client::builder()
            .timeout(WAIT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        Office {
            addr,
            client,
            scheme: "http",
        }
    }

    /// HTTPS to `addr`, trusting only the certificate `ca_pem`.
    pub fn tls(addr: SocketAddr, ca_pem: &[u8]) -> Office {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA certificate");
        let client = reqwest::Client::builder()
            .timeout(WAIT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .use_rustls_tls()
            .build()
            .expect("HTTPS client");
        Office {
            addr,
            client,
            scheme: "https",
        }
    }

    /// One request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> HttpAnswer {
        let url = format!("{}://{}{path}", self.scheme, self.addr);
        send_json(&self.client, method, &url, bearer, body.as_ref()).await
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, path: &str, bearer: &str) -> HttpAnswer {
        self.call("GET", path, Some(bearer), None).await
    }

    pub async fn login(&self, username: &str, password: &str) -> HttpAnswer {
        let body = json!({"username": username, "password": password});
        self.call("POST", "/v1/login", None, Some(body)).await
    }

    /// Logs in with a password only and enrols TOTP: a session with the second factor.
    pub async fn enrolled(&self, username: &str, password: &str) -> Session {
        let a = self.login(username, password).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let token = a.json()["token"].as_str().expect("token").to_string();
        let e = self.call("POST", "/v1/me/totp", Some(&token), None).await;
        assert_eq!(e.status, 200, "{}", e.body);
        let secret = e.json()["secret_base32"]
            .as_str()
            .expect("secret")
            .to_string();
        let body = json!({"code": totp_code(&secret, 0)});
        let c = self
            .call("POST", "/v1/me/totp/confirm", Some(&token), Some(body))
            .await;
        assert_eq!(c.status, 200, "{}", c.body);
        Session { token }
    }

    /// Creates an account with [`INITIAL_PASSWORD`] and, as its owner would at first use,
    /// changes it to [`PASSWORD`].
    pub async fn create(&self, by: &Session, username: &str, role: &str, merchant: Option<&str>) {
        let body = json!({"username": username, "role": role, "merchant_id": merchant, "password": INITIAL_PASSWORD});
        let a = self
            .call("POST", "/v1/accounts", Some(&by.token), Some(body))
            .await;
        assert_eq!(a.status, 200, "create {username}: {}", a.body);
        self.first_use(username).await;
    }

    /// Logs in with [`INITIAL_PASSWORD`], which must be changed first, changes it to
    /// [`PASSWORD`] and logs out.
    pub async fn first_use(&self, username: &str) {
        let a = self.login(username, INITIAL_PASSWORD).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["password_change_required"], true, "{}", a.body);
        let token = a.json()["token"].as_str().expect("token").to_string();
        let body = json!({"current_password": INITIAL_PASSWORD, "new_password": PASSWORD});
        let c = self
            .call("POST", "/v1/me/password", Some(&token), Some(body))
            .await;
        assert_eq!(c.status, 200, "{}", c.body);
        self.call("POST", "/v1/logout", Some(&token), None).await;
    }

    /// Creates an account and signs it in with TOTP.
    pub async fn person(&self, by: &Session, username: &str, role: &str) -> Session {
        self.create(by, username, role, None).await;
        self.enrolled(username, PASSWORD).await
    }

    /// Audit entries matching `query` (e.g. `action=saf.discard`), newest first.
    pub async fn audit(&self, by: &Session, query: &str) -> Vec<Value> {
        let a = self.get(&format!("/v1/audit?{query}"), &by.token).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["entries"].as_array().cloned().unwrap_or_default()
    }
}

/// The first superadmin from the command line, signed in with TOTP.
pub async fn bootstrap(world: &World, office: &Office) -> Session {
    let (ok, _, err) = cli_add(world, "root", "superadmin", ROOT_PASSWORD);
    assert!(ok, "{err}");
    office.enrolled("root", ROOT_PASSWORD).await
}

/// Starts instance 1 of `world` (waiting for its bank links when `links`) and signs in
/// the first superadmin: the switch, its admin listener over plain HTTP, the session.
pub async fn open(world: &World, links: bool) -> (SwitchProc, Office, Session) {
    let mut sw = world.start_switch(1);
    if links {
        world.wait_links_ready(&sw).await;
    }
    let o = Office::plain(admin_addr(&mut sw));
    let root = bootstrap(world, &o).await;
    (sw, o, root)
}
