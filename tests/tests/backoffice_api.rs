//! The back office's operations beyond accounts and refunds (issue 12) against a running
//! switch, real PostgreSQL, Redis and the bank simulators: HTTPS on the admin listener,
//! captures and voids with maker-checker.

use std::time::Duration;

use serde_json::{Value, json};
use system_tests::office::{self, Office, PASSWORD};
use system_tests::switchyard::{
    Client, HttpAnswer, WAIT, WorldOptions, count_mti, de48_tag, next_stan, rc, run_binary,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Proves the admin listener speaks HTTPS with the configured certificate: a client
// trusting it gets /healthz and logs in, the console's session cookie is Secure; a
// plain-HTTP request to the port gets no HTTP answer and the listener keeps serving; a
// configured certificate file that does not exist stops the switch before it binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_over_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let tag = system_tests::unique_name("admin_tls");
    let (cert, key) = (
        dir.join(format!("{tag}.crt")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls = {{ cert_pem = {:?}, key_pem = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let world = office::world("bo_tls", 1000, &tls, WorldOptions::default());
    let mut sw = world.start_switch(1);
    let addr = office::admin_addr(&mut sw);
    let https = Office::tls(addr, certified.cert.pem().as_bytes());

    let health = https.call("GET", "/healthz", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let (ok, _, err) = office::cli_add(&world, "watcher", "viewer", PASSWORD);
    assert!(ok, "{err}");
    assert_eq!(https.login("watcher", PASSWORD).await.status, 200);

    // Plain HTTP to the TLS port: the handshake fails, no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the switch closes a plain-HTTP connection");
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "no HTTP answer over plain TCP: {buf:?}"
    );
    let form = [
        ("username", "watcher"),
        ("password", PASSWORD),
        ("totp", ""),
    ];
    let signed_in = https
        .client
        .post(format!("https://{addr}/console/login"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        signed_in.status().as_u16(),
        303,
        "console sign-in redirects"
    );
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    drop(sw);

    // A missing certificate is a configuration error, named, before anything is bound.
    std::fs::remove_file(&cert).unwrap();
    let cfg = world.config.to_str().unwrap();
    let (status, out, err) = run_binary(
        "switchyard",
        &["check-config", "--config", cfg],
        &[("RUST_LOG", "warn")],
    );
    assert!(!status.success(), "{out}");
    assert!(err.contains("admin.tls.cert_pem"), "{err}");
}

/// Asks for a capture or void (`what`: `captures` or `voids`) of `rrn`.
async fn ask(office: &Office, by: &str, rrn: &str, what: &str, body: Value) -> HttpAnswer {
    let path = format!("/v1/transactions/{rrn}/{what}");
    office.call("POST", &path, Some(by), Some(body)).await
}

/// The next 0620 whose DE48 `EV` is `event`.
async fn notification(c: &mut Client, event: &str) -> codec::Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, _) = c.recv_mti("0620", left).await;
        let m = m.unwrap_or_else(|| panic!("a 0620 {event}"));
        if de48_tag(&m, b"EV").as_deref() == Some(event) {
            return m;
        }
    }
}

// Proves captures and voids from the back office go through the merchant request path:
// a capture above the approval amount waits for a different approver, then completes the
// pre-authorisation at the bank once (the same key returns the same request); a void of
// an approved purchase below it is executed at once and reverses it at the bank once,
// the same key twice sending one reversal; the merchant gets a 0620 for each; both show
// in the original's timeline; a viewer may not ask; each is audited; the ledger balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_and_voids_from_the_back_office() {
    let world = office::world("bo_capture_void", 1000, "", WorldOptions::default());
    let (sw, o, root) = office::open(&world, true).await;
    let maker = o.person(&root, "maker", "operator").await;
    let checker = o.person(&root, "checker", "approver").await;
    let viewer = o.person(&root, "watcher", "viewer").await;
    let mut c = world.client(&sw).await;
    assert_eq!(rc(&c.call(&c.network(&next_stan(), "001")).await), "00");

    let held = c
        .call(&c.preauth(&next_stan(), 5000, "4111111111111111", "BO-CAPTURE-1"))
        .await;
    assert_eq!(rc(&held), "00");
    let held_rrn = held.get_str(37).unwrap().to_string();
    let body = json!({"amount_minor": 4000, "reason": "goods shipped", "idempotency_key": "cap-1"});
    let refused = ask(&o, &viewer.token, &held_rrn, "captures", body.clone()).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let asked = ask(&o, &maker.token, &held_rrn, "captures", body.clone()).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    let req = asked.json();
    assert_eq!(
        (req["kind"].as_str(), req["state"].as_str()),
        (Some("capture"), Some("pending"))
    );
    let id = req["id"].as_i64().unwrap();
    let again = ask(&o, &maker.token, &held_rrn, "captures", body)
        .await
        .json();
    assert_eq!(again["id"], id, "same key, same request");
    let path = format!("/v1/refund-requests/{id}/approve");
    let own = o.call("POST", &path, Some(&maker.token), None).await;
    assert_eq!(own.status, 403, "maker is not checker");
    let done = o.call("POST", &path, Some(&checker.token), None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    let done = done.json();
    assert_eq!(done["state"], "executed");
    assert_eq!(done["response_code"], "00", "{done}");
    assert!(done["refund_rrn"].is_string(), "{done}");
    // The bank hears of a completion by a store-and-forward advice (0220).
    let advised = world.banks[0]
        .wait_record("the completion advice", WAIT, |r| count_mti(r, "0220") >= 1)
        .await;
    assert_eq!(count_mti(&advised, "0220"), 1, "{advised}");
    let note = notification(&mut c, "BACK_OFFICE_CAPTURE").await;
    assert_eq!(note.get_str(37).as_deref(), Some(held_rrn.as_str()));
    assert_eq!(de48_tag(&note, b"ST").as_deref(), Some("CAPTURED"));

    let paid = c
        .call(&c.purchase(&next_stan(), 800, "4111111111111111", "BO-VOID-1"))
        .await;
    assert_eq!(rc(&paid), "00");
    let paid_rrn = paid.get_str(37).unwrap().to_string();
    let body = json!({"reason": "customer cancelled", "idempotency_key": "void-1"});
    let voided = ask(&o, office::STATIC_TOKEN, &paid_rrn, "voids", body.clone()).await;
    assert_eq!(voided.status, 200, "{}", voided.body);
    let v = voided.json();
    assert_eq!(
        (v["kind"].as_str(), v["state"].as_str()),
        (Some("void"), Some("executed"))
    );
    assert_eq!(v["needs_approval"], false);
    assert_eq!(v["amount_minor"], 800, "a void is for the whole amount");
    assert_eq!(v["response_code"], "00", "{v}");
    let twice = ask(&o, office::STATIC_TOKEN, &paid_rrn, "voids", body)
        .await
        .json();
    assert_eq!(twice["id"], v["id"]);
    // The bank hears of a reversal from the store-and-forward queue.
    let record = world.banks[0]
        .wait_record("the void's reversal", WAIT, |r| {
            r["reversals"][&paid_rrn].is_u64()
        })
        .await;
    assert_eq!(
        record["reversals"][&paid_rrn], 1,
        "one reversal at the bank: {record}"
    );
    let note = notification(&mut c, "BACK_OFFICE_VOID").await;
    assert_eq!(note.get_str(37).as_deref(), Some(paid_rrn.as_str()));
    assert_eq!(de48_tag(&note, b"ST").as_deref(), Some("REVERSED"));

    for (rrn, kind) in [(&held_rrn, "completion"), (&paid_rrn, "reversal")] {
        let chain = o
            .get(&format!("/v1/transactions/{rrn}"), &maker.token)
            .await;
        assert_eq!(chain.status, 200, "{}", chain.body);
        let timeline = chain.json()["timeline"].to_string();
        assert!(
            timeline.contains(kind),
            "{kind} in the timeline: {timeline}"
        );
    }
    let audited = o.audit(&root, "action=capture.request").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(o.audit(&root, "action=void.request").await.len(), 1);
    world.admin(&["ledger", "check"]);
    drop(sw);
}

/// The one bigint `sql` answers (a count).
async fn count(
    db: &system_tests::tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn system_tests::tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    db.query_one(sql, params).await.unwrap().get(0)
}

/// Polls `sql` (one row, one bigint) until it is at least `want`.
async fn wait_count(db: &system_tests::tokio_postgres::Client, what: &str, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if count(db, sql, &[]).await >= want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Proves an approved back-office refund whose execution is cut short (the switch killed
// with SIGKILL while the refund waits at the bank) is completed by the next process
// exactly once: one outcome recorded, one refund at the bank, one 0620 about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_request_resumed_after_a_crash() {
    // bank-a answers amounts ending in 77 after 5 s (the test's window to see the refund at
    // the bank and kill the switch); the switch waits up to 8 s.
    let opts = WorldOptions {
        bank_args: vec![vec!["--late-ms".into(), "5000".into()], vec![]],
        bank_timeout_ms: 8000,
        ..WorldOptions::default()
    };
    let world = office::world("bo_resume", 1000, "", opts);
    let env = [("SWITCHYARD__SWITCH__OUTCOME_WAIT_MS", "1000")];
    let mut sw = world.start_switch_env(1, &env);
    world.wait_links_ready(&sw).await;
    let o = Office::plain(office::admin_addr(&mut sw));
    let root = office::bootstrap(&world, &o).await;
    let maker = o.person(&root, "maker", "operator").await;
    let checker = o.person(&root, "checker", "approver").await;
    let mut c = world.client(&sw).await;
    let paid = c
        .call(&c.purchase(&next_stan(), 5000, "4111111111111111", "BO-RESUME-1"))
        .await;
    assert_eq!(rc(&paid), "00");
    let rrn = paid.get_str(37).unwrap().to_string();
    let body = json!({"amount_minor": 1077, "reason": "damaged", "idempotency_key": "r-1"});
    let asked = o
        .call(
            "POST",
            &format!("/v1/transactions/{rrn}/refunds"),
            Some(&maker.token),
            Some(body),
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    let id = asked.json()["id"].as_i64().unwrap();
    let approving = {
        let (o, token) = (o.clone(), checker.token.clone());
        tokio::spawn(async move {
            let path = format!("/v1/refund-requests/{id}/approve");
            o.client
                .post(format!("http://{}{path}", o.addr))
                .bearer_auth(token)
                .send()
                .await
        })
    };
    let db = system_tests::pg_connect(&world.db_url).await;
    let at_bank = format!(
        "SELECT count(*) FROM transactions WHERE kind = 'refund' AND stan = '9{id:05}' \
         AND state = 'authorising' AND bank_id IS NOT NULL"
    );
    wait_count(&db, "the refund at the bank", &at_bank, 1).await;
    sw.process.signal("KILL");
    assert!(
        approving.await.unwrap().is_err(),
        "the approval never answered"
    );
    let state: String = db
        .query_one("SELECT state FROM refund_requests WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "approved", "approved, outcome not recorded");

    let _sw = world.start_switch_env(1, &env);
    let executed =
        format!("SELECT count(*) FROM refund_requests WHERE id = {id} AND state = 'executed'");
    wait_count(&db, "the request executed", &executed, 1).await;
    let row = db
        .query_one(
            "SELECT refund_rrn, response_code FROM refund_requests WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let refund_rrn: String = row.get(0);
    let code: String = row.get(1);
    assert!(
        !["94", "96"].contains(&code.as_str()),
        "a final outcome: {code}"
    );
    let record = world.banks[0].record().await;
    let refunds_at_bank = ["approved", "declined", "unanswered"]
        .iter()
        .flat_map(|k| record[*k].as_array().cloned().unwrap_or_default())
        .filter(|e| e["amount_minor"] == 1077 && e["mti"] == "0200")
        .count();
    assert_eq!(refunds_at_bank, 1, "one refund at the bank: {record}");
    assert_eq!(record["requests_by_rrn_dupes"], 0, "{record}");
    let told = count(
        &db,
        "SELECT count(*) FROM notifications WHERE event = 'BACK_OFFICE_REFUND'",
        &[],
    )
    .await;
    assert_eq!(told, 1, "one 0620 about refund {refund_rrn} ({code})");
    world.admin(&["ledger", "check"]);
}

// Proves the store-and-forward queue from the back office: reversals a bank does not
// answer are listed page by page (viewer); an operator makes one due now; discarding
// needs role approver and a reason, and a discarded message can be neither retried nor
// discarded again; each action is audited with the message before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_forward_queue() {
    let opts = WorldOptions {
        bank_args: vec![vec!["--ignore-reversals".into()], vec![]],
        ..WorldOptions::default()
    };
    let world = office::world("bo_saf", 1000, "", opts);
    let (sw, o, root) = office::open(&world, true).await;
    let viewer = o.person(&root, "watcher", "viewer").await;
    let checker = o.person(&root, "checker", "approver").await;
    let mut c = world.client(&sw).await;
    let mut voided = Vec::new();
    for i in 0..2 {
        let order = format!("BO-SAF-{i}");
        let paid = c
            .call(&c.purchase(&next_stan(), 300, "4111111111111111", &order))
            .await;
        assert_eq!(rc(&paid), "00");
        let rrn = paid.get_str(37).unwrap().to_string();
        let body = json!({"reason": "test", "idempotency_key": order});
        let v = ask(&o, office::STATIC_TOKEN, &rrn, "voids", body).await;
        assert_eq!(v.json()["response_code"], "00", "{}", v.body);
        voided.push(rrn);
    }
    let first = o.get("/v1/saf?state=pending&limit=1", &viewer.token).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    assert_eq!(first["items"][0]["rrn"], voided[1].as_str(), "newest first");
    assert_eq!(first["items"][0]["kind"], "reversal");
    let cursor = first["next_before_id"].as_i64().expect("a next page");
    let second = o
        .get(
            &format!("/v1/saf?state=pending&limit=1&before_id={cursor}"),
            &viewer.token,
        )
        .await
        .json();
    assert_eq!(second["items"][0]["rrn"], voided[0].as_str());
    let id = second["items"][0]["id"].as_i64().unwrap();

    let retry = format!("/v1/saf/{id}/retry");
    assert_eq!(
        o.call("POST", &retry, Some(&viewer.token), None)
            .await
            .status,
        403
    );
    let retried = o
        .call("POST", &retry, Some(office::STATIC_TOKEN), None)
        .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(retried.json()["state"], "pending");

    let discard = format!("/v1/saf/{id}/discard");
    let why = json!({"reason": "reversed by phone with bank-a, ticket 4711"});
    let by_operator = o
        .call(
            "POST",
            &discard,
            Some(office::STATIC_TOKEN),
            Some(why.clone()),
        )
        .await;
    assert_eq!(by_operator.status, 403, "discarding needs an approver");
    let blank = o
        .call(
            "POST",
            &discard,
            Some(&checker.token),
            Some(json!({"reason": " "})),
        )
        .await;
    assert_eq!(blank.status, 422, "{}", blank.body);
    assert_eq!(
        blank.header("content-type"),
        Some("application/problem+json")
    );
    let gone = o
        .call("POST", &discard, Some(&checker.token), Some(why.clone()))
        .await;
    assert_eq!(gone.status, 200, "{}", gone.body);
    let gone = gone.json();
    assert_eq!(gone["state"], "discarded");
    assert_eq!(gone["discarded_by"], "checker");
    let again = o
        .call("POST", &discard, Some(&checker.token), Some(why))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let late = o
        .call("POST", &retry, Some(office::STATIC_TOKEN), None)
        .await;
    assert_eq!(late.status, 409, "{}", late.body);

    let audited = o.audit(&root, "action=saf.discard").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["before"]["state"], "pending");
    assert_eq!(audited[0]["after"]["state"], "discarded");
    assert_eq!(
        audited[0]["after"]["discard_reason"],
        gone["discard_reason"]
    );
    let retries = o.audit(&root, "action=saf.retry").await;
    assert_eq!(retries[0]["actor"], "token:operator");
    drop(sw);
}

/// `POST /v1/accounts/{who}/{verb}` (`disable` or `enable`) by the bearer `by`.
async fn switch_account(o: &Office, by: &str, who: &str, verb: &str) -> HttpAnswer {
    let path = format!("/v1/accounts/{who}/{verb}");
    o.call("POST", &path, Some(by), None).await
}

// Proves API keys are listed (never the key itself) and revoked by an admin, a revoked
// key then refused; and that disabling an account ends its sessions, refuses its logins
// and stops its API keys until it is enabled again; nobody switches their own account
// and an admin not a superadmin's; each change audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_account_switches() {
    let world = office::world("bo_keys", 1000, "", WorldOptions::default());
    let (sw, o, root) = office::open(&world, false).await;
    let admin = o.person(&root, "keeper", "admin").await;
    let new_key = |name: &str| json!({"name": name, "role": "viewer", "expires_in_days": 1});
    let made = o
        .call(
            "POST",
            "/v1/api-keys",
            Some(&admin.token),
            Some(new_key("ci")),
        )
        .await
        .json();
    let (key_id, key) = (
        made["id"].as_i64().unwrap(),
        made["key"].as_str().unwrap().to_string(),
    );
    assert_eq!(o.get("/v1/transactions", &key).await.status, 200);
    let listed = o.get("/v1/api-keys", &admin.token).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(!listed.body.contains(&key), "the key is never shown again");
    let entry = listed.json()[0].clone();
    assert_eq!(
        (entry["id"].as_i64(), entry["created_by"].as_str()),
        (Some(key_id), Some("keeper"))
    );
    assert!(entry["revoked_at"].is_null());
    let path = format!("/v1/api-keys/{key_id}");
    let revoked = o.call("DELETE", &path, Some(&admin.token), None).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert!(revoked.json()["revoked_at"].is_string());
    assert_eq!(o.get("/v1/transactions", &key).await.status, 401, "revoked");
    assert_eq!(
        o.call("DELETE", &path, Some(&admin.token), None)
            .await
            .status,
        409
    );

    // A viewer needs no second factor: its password alone signs it in.
    o.create(&root, "reader", "viewer", None).await;
    let login = |who: &'static str| {
        let o = o.clone();
        async move { o.login(who, PASSWORD).await }
    };
    let reader = login("reader").await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = new_key("ci-2");
    let second = o
        .call("POST", "/v1/api-keys", Some(&admin.token), Some(body))
        .await;
    let second = second.json()["key"].as_str().unwrap().to_string();
    let (by_admin, by_root) = (admin.token.as_str(), root.token.as_str());
    let own = switch_account(&o, by_admin, "keeper", "disable").await;
    assert_eq!(own.status, 403, "not one's own account");
    let higher = switch_account(&o, by_admin, "root", "disable").await;
    assert_eq!(higher.status, 403, "an admin may not disable a superadmin");
    let off = switch_account(&o, by_admin, "reader", "disable").await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.json()["disabled"], true);
    assert_eq!(o.get("/v1/me", &reader).await.status, 401, "session ended");
    assert_eq!(login("reader").await.status, 401, "no login");
    let on = switch_account(&o, by_admin, "reader", "enable").await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(login("reader").await.status, 200, "enabled again");
    let keeper_off = switch_account(&o, by_root, "keeper", "disable").await;
    assert_eq!(keeper_off.status, 200, "{}", keeper_off.body);
    assert_eq!(
        o.get("/v1/transactions", &second).await.status,
        401,
        "its keys stop"
    );
    let keeper_on = switch_account(&o, by_root, "keeper", "enable").await;
    assert_eq!(keeper_on.json()["disabled"], false);
    assert_eq!(o.get("/v1/transactions", &second).await.status, 200);

    let changes = o.audit(&root, "action=account.disable").await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[1]["before"]["disabled"], false);
    assert_eq!(changes[1]["after"]["disabled"], true);
    assert_eq!(o.audit(&root, "action=apikey.revoke").await.len(), 1);
    drop(sw);
}

// Proves maker-checker counts an API key as the admin who created it: a refund asked with
// an admin's own operator key is not approved by that admin (403) but is by another
// approver, and paid once; and a refund of more than the purchase (up to i64::MAX, which
// DE4 cannot carry) is refused when asked instead of waiting for an approval that can only
// leave it `approved` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_own_key_is_not_a_second_person() {
    let world = office::world("bo_key_maker", 1000, "", WorldOptions::default());
    let (sw, o, root) = office::open(&world, true).await;
    let admin = o.person(&root, "keeper", "admin").await;
    let checker = o.person(&root, "checker", "approver").await;
    let mut c = world.client(&sw).await;
    assert_eq!(rc(&c.call(&c.network(&next_stan(), "001")).await), "00");
    let paid = c
        .call(&c.purchase(&next_stan(), 5000, "4111111111111111", "BO-KEY-1"))
        .await;
    assert_eq!(rc(&paid), "00");
    let rrn = paid.get_str(37).unwrap().to_string();
    let body = json!({"name": "robot", "role": "operator", "expires_in_days": 1});
    let made = o.call("POST", "/v1/api-keys", Some(&admin.token), Some(body));
    let key = made.await.json()["key"].as_str().unwrap().to_string();

    for amount in [5001, i64::MAX] {
        let body = json!({"amount_minor": amount, "reason": "too much", "idempotency_key": format!("big-{amount}")});
        let big = ask(&o, &key, &rrn, "refunds", body).await;
        assert_eq!(big.status, 422, "{amount}: {}", big.body);
    }
    let body = json!({"amount_minor": 3000, "reason": "returned", "idempotency_key": "key-1"});
    let asked = ask(&o, &key, &rrn, "refunds", body).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    let req = asked.json();
    assert_eq!(req["state"], "pending", "{req}");
    let path = format!("/v1/refund-requests/{}/approve", req["id"]);
    let own = o.call("POST", &path, Some(&admin.token), None).await;
    assert_eq!(own.status, 403, "the key's creator approved: {}", own.body);
    let done = o.call("POST", &path, Some(&checker.token), None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["response_code"], "00", "{}", done.body);
    let refunds = |r: &Value| {
        let approved = r["approved"].as_array().cloned().unwrap_or_default();
        approved
            .iter()
            .filter(|t| t["processing_code"] == "200000")
            .count()
    };
    let record = world.banks[0]
        .wait_record("the refund", WAIT, |r| refunds(r) >= 1)
        .await;
    assert_eq!(refunds(&record), 1, "one refund at the bank: {record}");
    world.admin(&["ledger", "check"]);
    drop(sw);
}

/// The request ids listed by `GET /v1/refund-requests?state=STATE`.
async fn listed(o: &Office, by: &str, state: &str) -> Vec<Value> {
    let got = o
        .get(&format!("/v1/refund-requests?state={state}"), by)
        .await;
    assert_eq!(got.status, 200, "{}", got.body);
    got.json().as_array().cloned().unwrap_or_default()
}

/// Whether `answer` is a `status` problem+json.
fn problem(answer: &HttpAnswer, status: u16) -> bool {
    answer.status == status
        && answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/problem+json"))
}

// Proves back-office requests end and are not repeated (issue 12 review): approved
// requests that can never be sent (their original unknown; more than a resumer round of
// them) end `failed` with the reason instead of being resumed for ever; an idempotency key reused for another amount, kind or
// transaction is refused with 409; a second void of a voided purchase (a new key) is
// refused with no second reversal or 0620; a pending request past its expiry is listed as
// expired, not pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_end_and_are_not_repeated() {
    let world = office::world("bo_desk_ends", 1000, "", WorldOptions::default());
    let (sw, o, root) = office::open(&world, true).await;
    let maker = o.person(&root, "maker", "operator").await;
    let mut c = world.client(&sw).await;
    let db = system_tests::pg_connect(&world.db_url).await;
    let mut rrns = Vec::new();
    for (amount, order) in [(5000, "BO-ENDS-1"), (800, "BO-ENDS-2"), (700, "BO-ENDS-3")] {
        let paid = c
            .call(&c.purchase(&next_stan(), amount, "4111111111111111", order))
            .await;
        assert_eq!(rc(&paid), "00");
        rrns.push(paid.get_str(37).unwrap().to_string());
    }

    db.execute(
        "INSERT INTO refund_requests (requested_by, idempotency_key, original_rrn, merchant_id,
           amount_minor, reason, state, needs_approval, created_at, expires_at, kind,
           decided_at, sent_stan, sent_de7)
         SELECT 'ghost', 'gone-' || n, '000099999999', 'MERCHANT0000001', 100, 'original purged',
           'approved', false, now() - interval '2 hours', now() + interval '1 hour', 'refund',
           now() - interval '1 hour', '999999', '1201000000'
         FROM generate_series(1, 40) AS n",
        &[],
    )
    .await
    .unwrap();
    // More than one resumer round (32) of them: all end, none is left to crowd out others.
    let failed = "SELECT count(*) FROM refund_requests WHERE requested_by = 'ghost' \
                  AND state = 'failed' AND failure IS NOT NULL";
    wait_count(&db, "the unsendable requests failed", failed, 40).await;
    let shown = listed(&o, &maker.token, "failed").await;
    assert_eq!(shown.len(), 40, "{shown:?}");
    assert!(shown[0]["failure"].is_string(), "{shown:?}");

    let refunds = format!("/v1/transactions/{}/refunds", rrns[0]);
    let body = json!({"amount_minor": 500, "reason": "returned", "idempotency_key": "k-1"});
    let first = o
        .call("POST", &refunds, Some(&maker.token), Some(body.clone()))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let same = o
        .call("POST", &refunds, Some(&maker.token), Some(body))
        .await;
    assert_eq!(same.json()["id"], first.json()["id"], "same key, same ask");
    let other = json!({"amount_minor": 600, "reason": "returned", "idempotency_key": "k-1"});
    let reused = o
        .call("POST", &refunds, Some(&maker.token), Some(other))
        .await;
    assert!(problem(&reused, 409), "{} {}", reused.status, reused.body);
    let as_void = json!({"reason": "cancelled", "idempotency_key": "k-1"});
    let reused = ask(&o, &maker.token, &rrns[0], "voids", as_void).await;
    assert!(problem(&reused, 409), "{} {}", reused.status, reused.body);
    let elsewhere = json!({"amount_minor": 500, "reason": "returned", "idempotency_key": "k-1"});
    let path = format!("/v1/transactions/{}/refunds", rrns[1]);
    let reused = o
        .call("POST", &path, Some(&maker.token), Some(elsewhere))
        .await;
    assert!(problem(&reused, 409), "{} {}", reused.status, reused.body);

    let void = |key: &str| json!({"reason": "customer cancelled", "idempotency_key": key});
    let voided = ask(&o, &maker.token, &rrns[1], "voids", void("v-1")).await;
    assert_eq!(voided.json()["response_code"], "00", "{}", voided.body);
    let again = ask(&o, &maker.token, &rrns[1], "voids", void("v-2")).await;
    assert!(problem(&again, 409), "{} {}", again.status, again.body);
    let reversals = count(
        &db,
        "SELECT count(*) FROM transactions WHERE kind = 'reversal' AND original_id =
           (SELECT id FROM transactions WHERE rrn = $1)",
        &[&rrns[1]],
    )
    .await;
    assert_eq!(reversals, 1, "one reversal of the voided purchase");
    let voids = "SELECT count(*) FROM notifications WHERE event = 'BACK_OFFICE_VOID'";
    let told = count(&db, voids, &[]).await;
    assert_eq!(told, 1, "one 0620 about the void");

    // Four voids of one purchase at the same instant, each with its own key: the database
    // (refund_requests_one_void) lets exactly one through.
    let racing = (0..4).map(|i| {
        let (o, token, rrn) = (o.clone(), maker.token.clone(), rrns[2].clone());
        tokio::spawn(
            async move { ask(&o, &token, &rrn, "voids", void(&format!("race-{i}"))).await },
        )
    });
    let mut statuses = Vec::new();
    for r in racing.collect::<Vec<_>>() {
        statuses.push(r.await.unwrap().status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409], "one void wins the race");
    let reversals = count(
        &db,
        "SELECT count(*) FROM transactions WHERE kind = 'reversal' AND original_id =
           (SELECT id FROM transactions WHERE rrn = $1)",
        &[&rrns[2]],
    )
    .await;
    assert_eq!(reversals, 1, "one reversal of the raced purchase");

    let big = json!({"amount_minor": 2000, "reason": "returned", "idempotency_key": "k-2"});
    let asked = o
        .call("POST", &refunds, Some(&maker.token), Some(big))
        .await;
    assert_eq!(asked.json()["state"], "pending", "{}", asked.body);
    let id = asked.json()["id"].as_i64().unwrap();
    db.execute(
        "UPDATE refund_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let ids = |v: &[Value]| v.iter().map(|r| r["id"].as_i64()).collect::<Vec<_>>();
    assert!(!ids(&listed(&o, &maker.token, "pending").await).contains(&Some(id)));
    let expired = listed(&o, &maker.token, "expired").await;
    assert_eq!(ids(&expired), vec![Some(id)], "{expired:?}");
    assert_eq!(expired[0]["state"], "expired");
    drop(sw);
}

// Proves problem documents are consistent and bounded (issue 12 review): a badly typed JSON
// body is a 422 whose type (invalid-request) agrees with its title (Unprocessable Entity),
// and a 404 for a 5,000-character RRN does not echo it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_agree_and_are_bounded() {
    let world = office::world("bo_problems", 1000, "", WorldOptions::default());
    let (sw, o, root) = office::open(&world, false).await;
    let typed = json!({"amount_minor": "lots", "reason": "r", "idempotency_key": "k"});
    let path = "/v1/transactions/000000000001/refunds";
    let bad = o.call("POST", path, Some(&root.token), Some(typed)).await;
    assert!(problem(&bad, 422), "{} {}", bad.status, bad.body);
    let doc = bad.json();
    assert_eq!(doc["type"], "/problems/invalid-request", "{doc}");
    assert_eq!(doc["title"], "Unprocessable Entity", "{doc}");
    let long_rrn = "1".repeat(5000);
    let missing = o
        .get(&format!("/v1/transactions/{long_rrn}"), &root.token)
        .await;
    assert!(problem(&missing, 404), "{}", missing.status);
    let detail = missing.json()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(detail.starts_with("not found: transaction 111"), "{detail}");
    assert!(detail.chars().count() <= 257, "{} characters", detail.len());
    drop(sw);
}
