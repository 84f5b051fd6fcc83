//! The bank side through real switch processes: advices the bank starts (0420/0421,
//! applied exactly once, the merchant told with a 0620), status inquiries (0600) settling
//! unknown outcomes, bank links over TLS and QUIC with certificates generated at test
//! time, and a bank that refuses sign-on. docs/bank-protocol.md is the specification; the
//! bank simulator's record and the switch's database are the judges.

use std::path::{Path, PathBuf};
use std::time::Duration;

use codec::{Message, OwnedMessage};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use system_tests::switchyard::{
    Client, SwitchProc, WAIT, World, WorldOptions, count_mti, de7_now, de48_tag, inquiries_for,
    next_stan, order_ref, rc, run_status,
};
use system_tests::{pg_connect, unique_name};

const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5500000000000004";

/// A purchase (0200 DE3 00) with a fresh STAN and order reference.
fn purchase(c: &Client, amount: u64, pan: &str, tag: &str) -> OwnedMessage {
    let stan = next_stan();
    c.purchase(&stan, amount, pan, &order_ref(tag, &stan))
}

/// Sends a fresh purchase and returns its answer.
async fn buy(c: &mut Client, amount: u64, pan: &str, tag: &str) -> Message {
    let m = purchase(c, amount, pan, tag);
    ask(c, &m).await
}

/// Sends `m` and returns the answer with its STAN (others that come first are skipped).
async fn ask(c: &mut Client, m: &OwnedMessage) -> Message {
    let stan = String::from_utf8(m.fields[&11].clone()).expect("ASCII STAN");
    c.send(m).await;
    let (a, _) = c.recv_stan(&stan).await;
    a
}

/// DE37 of an answer, trimmed.
fn rrn(a: &Message) -> String {
    a.get_str(37)
        .expect("the answer has DE37")
        .trim_end()
        .to_string()
}

/// Signs `c` on (0800 DE70 001), so notifications reach it.
async fn sign_on(c: &mut Client) {
    let a = ask(c, &c.network(&next_stan(), "001")).await;
    assert_eq!(a.mti().as_str(), "0810");
    assert_eq!(rc(&a), "00", "merchant sign-on");
}

/// `switchyard ledger check` on the world's configuration succeeds.
fn ledger_check_ok(world: &World) {
    let cfg = world.config.to_str().expect("utf-8 path");
    let (status, out, err) = run_status(&["ledger", "check", "--config", cfg]);
    assert!(
        status.success(),
        "ledger check failed ({status}): {out}\n{err}"
    );
}

/// Polls `probe` every 100 ms until it returns Some, for at most `wait`; panics naming
/// `what` (with the last value seen) otherwise.
async fn eventually<T: std::fmt::Debug, F, Fut>(what: &str, wait: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Option<T>, String)>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (found, last) = probe().await;
        if let Some(v) = found {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {wait:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The state of the transaction with this RRN at this bank (None until it is stored).
async fn txn_state(db: &tokio_postgres::Client, rrn: &str) -> Option<String> {
    db.query_opt(
        "SELECT state FROM transactions WHERE rrn = $1 AND kind = 'purchase'",
        &[&rrn],
    )
    .await
    .expect("query transactions")
    .map(|r| r.get(0))
}

/// Waits until the purchase with this RRN is stored in `state`.
async fn wait_state(db: &tokio_postgres::Client, rrn: &str, state: &str, wait: Duration) {
    eventually(&format!("purchase {rrn} {state}"), wait, || async {
        let s = txn_state(db, rrn).await;
        (
            s.as_deref().filter(|s| *s == state).map(|_| ()),
            format!("{s:?}"),
        )
    })
    .await
}

/// A world whose switch (instance 1) has every bank link ready, and a client of it.
async fn world_with_switch(name: &str, opts: WorldOptions) -> (World, SwitchProc, Client) {
    let world = World::new(name, opts);
    let sw = world.start_switch(1);
    world.wait_links_ready(&sw).await;
    let c = world.client(&sw).await;
    (world, sw, c)
}

// Proves a bank's reversal advice is applied exactly once: a 0420 naming an approved
// purchase is acknowledged 00, makes it `reversed` with one `bank_advices` row and ledger
// postings that net to zero with the purchase's; the same advice repeated as 0421 (same
// DE11 and DE7) is acknowledged 00 again and changes nothing; the signed-on merchant gets a
// 0620 with EV BANK_REVERSED and ST REVERSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_advice_applied_exactly_once() {
    let (world, _sw, mut c) = world_with_switch("bk_advice", WorldOptions::default()).await;
    sign_on(&mut c).await;
    let db = pg_connect(&world.db_url).await;
    let bank = &world.banks[0];

    let a = buy(&mut c, 1234, VISA, "ADVICE").await;
    assert_eq!(rc(&a), "00", "the purchase is approved");
    let payment_rrn = rrn(&a);
    // The journal stores the outcome after the answer; the advice must find it stored.
    wait_state(&db, &payment_rrn, "approved", WAIT).await;

    let first = bank.advise_reversal(&payment_rrn, None).await;
    assert_eq!(
        first["acknowledged"], true,
        "the 0420 is acknowledged: {first}"
    );
    assert_eq!(first["rc"], "00", "{first}");
    assert_eq!(first["mti"], "0420");
    let stan = first["stan"].as_str().expect("stan").to_string();
    let de7 = first["de7"].as_str().expect("de7").to_string();
    assert_eq!(
        txn_state(&db, &payment_rrn).await.as_deref(),
        Some("reversed"),
        "acknowledged only once applied, so the purchase is reversed already"
    );

    let count_advices = async |db: &tokio_postgres::Client| -> (i64, Vec<String>) {
        let rows = db
            .query(
                "SELECT mti, stan, transmitted_at, effect FROM bank_advices WHERE rrn = $1",
                &[&payment_rrn],
            )
            .await
            .expect("query bank_advices");
        let effects = rows
            .iter()
            .map(|r| {
                let (mti, s, t, e): (String, String, String, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                format!("{mti}/{s}/{t}/{e}")
            })
            .collect();
        (rows.len() as i64, effects)
    };
    let (n, rows) = count_advices(&db).await;
    assert_eq!(n, 1, "one advice recorded: {rows:?}");
    assert_eq!(rows[0], format!("0420/{stan}/{de7}/reversed"));

    let repeat = bank
        .advise_reversal(&payment_rrn, Some((&stan, &de7)))
        .await;
    assert_eq!(
        repeat["acknowledged"], true,
        "the 0421 is acknowledged: {repeat}"
    );
    assert_eq!(repeat["rc"], "00");
    assert_eq!(repeat["mti"], "0421");
    assert_eq!(repeat["stan"], stan.as_str());
    assert_eq!(repeat["de7"], de7.as_str());
    let (n, rows) = count_advices(&db).await;
    assert_eq!(n, 1, "the repeat is not recorded again: {rows:?}");

    // The ledger: one reversal row for the purchase, whose postings undo the purchase's
    // account by account; the ledger as a whole still checks.
    let purchase_id: i64 = db
        .query_one(
            "SELECT id FROM transactions WHERE rrn = $1 AND kind = 'purchase'",
            &[&payment_rrn],
        )
        .await
        .expect("the purchase row")
        .get(0);
    let reversal_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM transactions WHERE original_id = $1 AND kind = 'reversal'",
            &[&purchase_id],
        )
        .await
        .expect("count reversal rows")
        .get(0);
    assert_eq!(reversal_rows, 1, "the advice undid the purchase once");
    let postings = db
        .query(
            "SELECT p.account, sum(p.amount_minor)::bigint, count(*) FROM ledger_postings p
             JOIN transactions t ON t.id = p.transaction_id
             WHERE t.id = $1 OR (t.original_id = $1 AND t.kind = 'reversal')
             GROUP BY p.account ORDER BY p.account",
            &[&purchase_id],
        )
        .await
        .expect("query postings");
    assert!(!postings.is_empty(), "the purchase was posted");
    for p in &postings {
        let (account, sum, n): (String, i64, i64) = (p.get(0), p.get(1), p.get(2));
        assert_eq!(
            sum, 0,
            "account {account} nets to zero over the purchase and its reversal"
        );
        assert_eq!(
            n % 2,
            0,
            "account {account}: each purchase posting undone once ({n})"
        );
    }
    ledger_check_ok(&world);

    // The merchant is told, once the bank's reversal is applied.
    let deadline = tokio::time::Instant::now() + WAIT;
    let note = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (m, _) = c.recv_mti("0620", left).await;
        let m = m.unwrap_or_else(|| panic!("no 0620 about {payment_rrn} within {WAIT:?}"));
        if m.get_str(37).as_deref().map(str::trim_end) == Some(payment_rrn.as_str()) {
            break m;
        }
    };
    assert!(c.mac_ok(&note), "the 0620 carries a valid MAC");
    assert_eq!(de48_tag(&note, b"EV").as_deref(), Some("BANK_REVERSED"));
    assert_eq!(de48_tag(&note, b"ST").as_deref(), Some("REVERSED"));

    // The simulator's record agrees: its approval is reversed, by the bank, not the switch.
    let rec = bank.record().await;
    let approval = rec["approved"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["rrn"] == payment_rrn.as_str()))
        .unwrap_or_else(|| panic!("approval of {payment_rrn} in {rec}"));
    assert_eq!(approval["reversed"], true);
    assert!(rec["reversals"].get(&payment_rrn).is_none(), "{rec}");
    assert_eq!(rec["advices"].as_array().map(Vec::len), Some(2));
}

// Proves a status inquiry settles an unknown outcome: with a bank that never answers
// reversals, a purchase it never answered (91) is asked about with a 0600, the bank answers
// 25 (it never took it), and the purchase ends `reversed` without the reversal ever being
// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_inquiry_settles_an_unknown_outcome() {
    let opts = WorldOptions {
        bank_args: vec![vec!["--ignore-reversals".into()], vec![]],
        ..WorldOptions::default()
    };
    let (world, _sw, mut c) = world_with_switch("bk_inquiry", opts).await;
    let db = pg_connect(&world.db_url).await;
    let bank = &world.banks[0];

    let a = buy(&mut c, 1091, VISA, "INQUIRY").await;
    assert_eq!(rc(&a), "91", "the bank never answers this purchase");
    let payment_rrn = rrn(&a);

    let rec = bank
        .wait_record("a 0600 about the 91", Duration::from_secs(30), |r| {
            inquiries_for(r, &payment_rrn) >= 1
        })
        .await;
    assert!(
        count_mti(&rec, "0400") >= 1,
        "the switch did send its reversal: {rec}"
    );
    wait_state(&db, &payment_rrn, "reversed", WAIT).await;

    let rec = bank.record().await;
    assert!(
        rec["reversals"].get(&payment_rrn).is_none(),
        "the bank never took (answered) the reversal: {rec}"
    );
    let reversal = db
        .query_one(
            "SELECT r.state FROM reversals r JOIN transactions t ON t.id = r.transaction_id
             WHERE t.rrn = $1",
            &[&payment_rrn],
        )
        .await
        .expect("the reversal row");
    let state: String = reversal.get(0);
    assert_eq!(
        state, "acknowledged",
        "settled by the inquiry, so not pending"
    );
    ledger_check_ok(&world);
}

/// A CA, the bank's server certificate (SAN localhost) and the switch's client
/// certificate, written as PEM files into a directory of their own.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(name: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-configs")
            .join(unique_name(name));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA");
        let write = |file: &str, text: &str| {
            let p = dir.join(file);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        let leaf = |stem: &str, san: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(vec![san.to_string()]).expect("leaf params");
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = p.signed_by(&key, &ca).expect("sign leaf");
            (
                write(&format!("{stem}.crt"), &cert.pem()),
                write(&format!("{stem}.key"), &key.serialize_pem()),
            )
        };
        let (server_cert, server_key) =
            leaf("bank", "localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) =
            leaf("switch", "switch.test", ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.crt", &ca.pem()),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// bank-sim arguments: this certificate, requiring the switch's.
    fn sim_args(&self, quic: bool) -> Vec<String> {
        let p = |p: &Path| p.to_str().expect("utf-8 path").to_string();
        let mut a = vec![
            "--tls-cert".into(),
            p(&self.server_cert),
            "--tls-key".into(),
            p(&self.server_key),
            "--tls-client-ca".into(),
            p(&self.ca),
        ];
        if quic {
            a.push("--quic".into());
        }
        a
    }

    /// `[[bank]]` keys for the switch's side of such a link.
    fn bank_keys(&self, transport: &str) -> Vec<(String, String)> {
        let q = |p: &Path| format!("{:?}", p.to_str().expect("utf-8 path"));
        vec![
            ("transport".into(), format!("{transport:?}")),
            ("cert_pem".into(), q(&self.client_cert)),
            ("key_pem".into(), q(&self.client_key)),
            ("ca_pem".into(), q(&self.ca)),
            ("server_name".into(), "\"localhost\"".into()),
        ]
    }
}

// Proves bank links over TLS (bank-a) and QUIC (bank-b), both mutually authenticated with
// certificates made at test time, carry purchases through the real switch: each is
// approved and recorded by its simulator; and an advice the bank starts travels the other
// way on each (over QUIC on a stream the bank opens): acknowledged 00, purchase reversed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bank_links_over_tls_and_quic() {
    let pki = Pki::generate("bk_tls");
    let opts = WorldOptions {
        bank_args: vec![pki.sim_args(false), pki.sim_args(true)],
        per_bank_overrides: vec![pki.bank_keys("tls"), pki.bank_keys("quic")],
        ..WorldOptions::default()
    };
    let (world, _sw, mut c) = world_with_switch("bk_tls", opts).await;
    let db = pg_connect(&world.db_url).await;
    for (i, (pan, transport)) in [(VISA, "TLS"), (MASTERCARD, "QUIC")].iter().enumerate() {
        let a = buy(&mut c, 2500 + i as u64, pan, transport).await;
        assert_eq!(rc(&a), "00", "a purchase over {transport} is approved");
        assert!(
            a.get_str(38).is_some(),
            "with the bank's authorisation code"
        );
        let payment_rrn = rrn(&a);
        let approved = world.banks[i].approved(&payment_rrn).await;
        assert_eq!(approved.len(), 1, "bank {i} ({transport}) approved it once");
        assert_eq!(approved[0]["amount_minor"], 2500 + i as u64);

        wait_state(&db, &payment_rrn, "approved", WAIT).await;
        // STANs of their own: both banks' advices go out within the same second, and
        // advices sharing DE11 and DE7 are a switch bug of their own (the test below).
        let stan = format!("{:06}", 100 + i);
        let advice = world.banks[i]
            .advise_reversal_as(&payment_rrn, &stan, &de7_now())
            .await;
        assert_eq!(
            advice["acknowledged"], true,
            "an advice over {transport} is acknowledged: {advice}"
        );
        assert_eq!(
            txn_state(&db, &payment_rrn).await.as_deref(),
            Some("reversed")
        );
    }
    ledger_check_ok(&world);
}

// Proves a bank that refuses sign-on (0810 DE39 91) never gets a purchase: purchases routed
// to it are answered 91 by the switch while the other bank keeps approving, and the
// refusing bank sees sign-on attempts but no financial request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sign_on_isolates_that_bank() {
    let opts = WorldOptions {
        bank_args: vec![vec![], vec!["--refuse-sign-on".into()]],
        ..WorldOptions::default()
    };
    let world = World::new("bk_refuse", opts);
    let sw = world.start_switch(1);
    let mut c = world.client(&sw).await;
    // bank-a comes up (its first approval); bank-b keeps being refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = buy(&mut c, 100, VISA, "READY").await;
        if rc(&a) == "00" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bank-a never approved within {WAIT:?} (last {})",
            rc(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.banks[1]
        .wait_record("a refused sign-on", WAIT, |r| count_mti(r, "0800") >= 1)
        .await;

    for round in 0..3 {
        let b = buy(&mut c, 1000, MASTERCARD, "REFUSED").await;
        assert_eq!(
            rc(&b),
            "91",
            "round {round}: the refusing bank's purchase gets 91"
        );
        let a = buy(&mut c, 1000, VISA, "OTHER").await;
        assert_eq!(rc(&a), "00", "round {round}: the other bank still approves");
    }
    let rec = world.banks[1].record().await;
    for mti in ["0200", "0201", "0400", "0401"] {
        assert_eq!(
            count_mti(&rec, mti),
            0,
            "the refusing bank never got a {mti}: {rec}"
        );
    }
    assert!(
        rec["approved"].as_array().is_some_and(Vec::is_empty),
        "nothing approved at the refusing bank: {rec}"
    );
}

// Proves advices are told apart by bank: bank-a and bank-b each reverse a purchase of the
// same merchant terminal with advices that happen to share DE11 and DE7 (each bank numbers
// its own STANs); the switch records, applies and acknowledges both (docs/bank-protocol.md:
// an advice is identified by (bank, MTI, DE11, DE7)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advices_from_two_banks_sharing_stan_and_de7() {
    let (world, _sw, mut c) = world_with_switch("bk_advice2", WorldOptions::default()).await;
    let db = pg_connect(&world.db_url).await;
    let mut rrns = Vec::new();
    for pan in [VISA, MASTERCARD] {
        let a = buy(&mut c, 3000, pan, "TWOBANKS").await;
        assert_eq!(rc(&a), "00");
        let r = rrn(&a);
        wait_state(&db, &r, "approved", WAIT).await;
        rrns.push(r);
    }
    let de7 = de7_now();
    for (i, r) in rrns.iter().enumerate() {
        let advice = world.banks[i].advise_reversal_as(r, "000042", &de7).await;
        assert_eq!(
            advice["acknowledged"], true,
            "bank {i}'s advice (DE11 000042, DE7 {de7}) is acknowledged: {advice}"
        );
        assert_eq!(txn_state(&db, r).await.as_deref(), Some("reversed"));
    }
    let n: i64 = db
        .query_one("SELECT count(*) FROM bank_advices", &[])
        .await
        .expect("count bank_advices")
        .get(0);
    assert_eq!(n, 2, "one advice recorded per bank");
    ledger_check_ok(&world);
}
