//! A whole Switchyard world for black-box tests: a fresh database, a Redis key prefix of
//! its own, bank simulators, a configuration file, a merchant and routes, switch
//! processes, and a merchant client that speaks the wire contract byte for byte.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use codec::{FrameCodec, MacKey, Message, Mti, OwnedMessage, builtin};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::{Spawned, fresh_database, redis_url, spawn_binary, unique_name, wait_for_line};

/// How long a test waits for a process to be ready or an answer to come.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running bank simulator.
#[derive(Debug)]
pub struct BankSim {
    pub process: Spawned,
    pub listen: SocketAddr,
    pub control: SocketAddr,
}

impl BankSim {
    pub fn start(extra: &[&str]) -> BankSim {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// A simulator listening for bank links on a given address (a bank coming back).
    pub fn start_on(listen: &str, extra: &[&str]) -> BankSim {
        let mut args = vec!["--listen", listen, "--control", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut process = spawn_binary("bank-sim", &args, &[("RUST_LOG", "warn")]);
        let line = wait_for_line(process.stdout(), |l| l.contains("\"ready\""), WAIT)
            .expect("bank-sim ready");
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let addr = |k: &str| {
            v[k].as_str()
                .and_then(|s| s.parse().ok())
                .expect("address in ready line")
        };
        BankSim {
            listen: addr("listen"),
            control: addr("control"),
            process,
        }
    }

    /// The simulator's own record (GET /record).
    pub async fn record(&self) -> serde_json::Value {
        let body = http(self.control, "GET", "/record").await;
        serde_json::from_str(&body).expect("record is JSON")
    }

    /// `POST /advise/reversal/{rrn}`: the simulator sends a 0420 reversal advice for `rrn`
    /// (or, with `repeat` = (DE11, DE7) of an earlier one, the same advice again as 0421)
    /// and answers once the switch's 0430 came or 5 s passed: `{"acknowledged", "rc",
    /// "mti", "rrn", "stan", "de7"}`.
    pub async fn advise_reversal(
        &self,
        rrn: &str,
        repeat: Option<(&str, &str)>,
    ) -> serde_json::Value {
        let path = match repeat {
            None => format!("/advise/reversal/{rrn}"),
            Some((stan, de7)) => format!("/advise/reversal/{rrn}?repeat_of_stan={stan}&de7={de7}"),
        };
        let body = http(self.control, "POST", &path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("advise answer {body:?}: {e}"))
    }

    /// `POST /advise/reversal/{rrn}?stan=S&de7=D`: a 0420 with this DE11 and DE7 instead
    /// of a fresh STAN and the time now; answered as [`BankSim::advise_reversal`].
    pub async fn advise_reversal_as(&self, rrn: &str, stan: &str, de7: &str) -> serde_json::Value {
        let path = format!("/advise/reversal/{rrn}?stan={stan}&de7={de7}");
        let body = http(self.control, "POST", &path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("advise answer {body:?}: {e}"))
    }

    /// Approved entries with this RRN.
    pub async fn approved(&self, rrn: &str) -> Vec<serde_json::Value> {
        let r = self.record().await;
        r["approved"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["rrn"] == rrn)
            .collect()
    }
}

/// An HTTP request with no body to a loopback endpoint; the response body, whatever
/// the status (tests assert on the content).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> String {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .timeout(WAIT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{path}: reading the body: {e}"))
}

/// An HTTP answer: status, headers (names lower case) and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP request to `addr` from the local address `from` (any when `None`; e.g.
/// 127.0.0.2 to appear as another client), with an optional bearer token and JSON body.
pub async fn http_call(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpAnswer {
    let client = reqwest::Client::builder()
        .local_address(from)
        .timeout(WAIT)
        .build()
        .expect("HTTP client");
    send_json(
        &client,
        method,
        &format!("http://{addr}{path}"),
        bearer,
        body,
    )
    .await
}

/// One request with `client` to `url`, with an optional bearer token and JSON body.
pub async fn send_json(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpAnswer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
    let mut request = client.request(method, url);
    if let Some(t) = bearer {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    answer_of(response, url).await
}

/// A response's status, headers (names lower case) and body; panics naming `path` when
/// the body cannot be read.
pub async fn answer_of(response: reqwest::Response, path: &str) -> HttpAnswer {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("{path}: reading the body: {e}"));
    HttpAnswer {
        status,
        headers,
        body,
    }
}

/// A merchant's credentials.
#[derive(Debug, Clone)]
pub struct MerchantCreds {
    pub id: String,
    pub key_hex: String,
}

impl MerchantCreds {
    pub fn key(&self) -> MacKey {
        MacKey::from_hex(&self.key_hex).expect("MAC key hex")
    }
}

/// Options for a world.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// Extra arguments for each bank simulator (bank-a serves cards starting 4, bank-b 5).
    pub bank_args: Vec<Vec<String>>,
    pub bank_timeout_ms: u64,
    /// Extra TOML appended to the configuration.
    pub extra_config: String,
    pub merchant_rate: u32,
    pub merchant_burst: u32,
    /// Keys of every `[[bank]]` table to set (replacing the harness's value when it has
    /// one), e.g. `("echo_timeout_ms", "10000")`. Empty by default.
    pub bank_overrides: Vec<(String, String)>,
    /// Keys of one `[[bank]]` table each (by position: bank-a, bank-b), applied after
    /// `bank_overrides`, e.g. `("transport", "\"tls\"")`. Values are TOML. Empty by default.
    pub per_bank_overrides: Vec<Vec<(String, String)>>,
    /// Nodes of a Redis Cluster (`redis://127.0.0.1:PORT`) to use instead of the private
    /// Redis; see [`crate::RedisCluster`]. Empty by default.
    pub redis_cluster_nodes: Vec<String>,
}

impl WorldOptions {
    /// Options whose bank-a answers everything (sign-on and echo too) after `latency_ms`,
    /// with the switch's bank timeout (10 s) and sign-on and echo timeouts (15 s)
    /// stretched to match: a request is still at the bank when a racing one arrives.
    pub fn slow_bank_a(latency_ms: u64) -> WorldOptions {
        WorldOptions {
            bank_args: vec![vec!["--latency-ms".into(), latency_ms.to_string()], vec![]],
            bank_timeout_ms: 10_000,
            bank_overrides: vec![
                ("sign_on_timeout_ms".into(), "15000".into()),
                ("echo_timeout_ms".into(), "15000".into()),
            ],
            ..WorldOptions::default()
        }
    }
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            bank_args: vec![vec![], vec![]],
            bank_timeout_ms: 800,
            extra_config: String::new(),
            merchant_rate: 1000,
            merchant_burst: 1000,
            bank_overrides: Vec::new(),
            per_bank_overrides: Vec::new(),
            redis_cluster_nodes: Vec::new(),
        }
    }
}

/// Everything one test runs against.
#[derive(Debug)]
pub struct World {
    pub banks: Vec<BankSim>,
    pub db_url: String,
    pub redis_prefix: String,
    pub config: PathBuf,
    pub merchant: MerchantCreds,
}

pub const BANK_IDS: [&str; 2] = ["bank-a", "bank-b"];
pub const MERCHANT_ID: &str = "MERCHANT0000001";

impl World {
    pub fn new(name: &str, opts: WorldOptions) -> World {
        let db_url = fresh_database(name);
        let redis_prefix = format!("{}:", unique_name(name));
        let banks: Vec<BankSim> = opts
            .bank_args
            .iter()
            .map(|a| BankSim::start(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-configs");
        std::fs::create_dir_all(&dir).expect("config dir");
        let config = dir.join(format!("{}.toml", unique_name(name)));
        let mut text = format!(
            r#"
[switch]
instance_id = 1
shutdown_deadline_ms = 5000
reload_interval_ms = 500

[merchant_listener]
tcp = "127.0.0.1:0"
idle_timeout_ms = 60000

[database]
url = "{db_url}"
pool_size = 8
journal_writers = 2

[redis]
url = "{redis}"
key_prefix = "{redis_prefix}"
cluster_nodes = {cluster_nodes:?}

[security]
master_key_hex = "{master}"
pan_hash_key_hex = "{pan}"
"#,
            redis = redis_url(),
            cluster_nodes = opts.redis_cluster_nodes,
            master = "11".repeat(32),
            pan = "22".repeat(32),
        );
        for (i, b) in banks.iter().enumerate() {
            let table = format!(
                r#"
[[bank]]
id = "{id}"
dialect = "bank-bcd-v1"
addr = "{addr}"
acquirer_id = "12345{i}"
timeout_ms = {timeout}
echo_idle_ms = 2000
echo_timeout_ms = 1000
reconnect_min_ms = 50
reconnect_max_ms = 500
"#,
                id = BANK_IDS[i],
                addr = b.listen,
                timeout = opts.bank_timeout_ms,
            );
            let table = apply_overrides(&table, &opts.bank_overrides);
            let own = opts
                .per_bank_overrides
                .get(i)
                .map_or(&[][..], Vec::as_slice);
            text.push_str(&apply_overrides(&table, own));
        }
        text.push_str(&opts.extra_config);
        std::fs::write(&config, text).expect("write config");
        let cfg = config.to_str().expect("utf-8 path").to_string();
        let rate = opts.merchant_rate.to_string();
        let burst = opts.merchant_burst.to_string();
        let out = run_to_end(&[
            "merchant",
            "add",
            "--config",
            &cfg,
            "--id",
            MERCHANT_ID,
            "--name",
            "Test Merchant",
            "--currencies",
            "840,978,156",
            "--limit-minor",
            "1000000",
            "--rate",
            &rate,
            "--burst",
            &burst,
        ]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
            .expect("merchant add prints JSON");
        let merchant = MerchantCreds {
            id: MERCHANT_ID.into(),
            key_hex: v["mac_key_hex"].as_str().expect("key").into(),
        };
        run_to_end(&[
            "route",
            "add",
            "--config",
            &cfg,
            "--low",
            "4",
            "--high",
            "4",
            "--bank",
            BANK_IDS[0],
        ]);
        if banks.len() > 1 {
            run_to_end(&[
                "route",
                "add",
                "--config",
                &cfg,
                "--low",
                "51",
                "--high",
                "55",
                "--bank",
                BANK_IDS[1],
            ]);
        }
        World {
            banks,
            db_url,
            redis_prefix,
            config,
            merchant,
        }
    }

    /// Starts a switch instance and waits until it listens.
    pub fn start_switch(&self, instance_id: i16) -> SwitchProc {
        self.start_switch_env(instance_id, &[])
    }

    pub fn start_switch_env(&self, instance_id: i16, env: &[(&str, &str)]) -> SwitchProc {
        let id = instance_id.to_string();
        let mut all = vec![
            ("SWITCHYARD__SWITCH__INSTANCE_ID", id.as_str()),
            ("RUST_LOG", "info"),
        ];
        all.extend_from_slice(env);
        let cfg = self.config.to_str().expect("utf-8 path");
        let mut process = spawn_binary("switchyard", &["run", "--config", cfg], &all);
        let line = wait_for_line(process.stdout(), |l| l.contains("\"ready\""), WAIT)
            .expect("switch ready");
        let v: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        let merchant_addr = v["merchant_tcp"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("merchant_tcp");
        SwitchProc {
            process,
            merchant_addr,
        }
    }

    pub async fn client(&self, sw: &SwitchProc) -> Client {
        Client::connect(sw.merchant_addr, self.merchant.clone()).await
    }

    /// Waits until every bank link of a switch is signed on (probes with echo-free traffic:
    /// a purchase to each bank is the only observable; instead poll the database-free
    /// signal of a 91 turning into an answer).
    pub async fn wait_links_ready(&self, sw: &SwitchProc) {
        let mut c = self.client(sw).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        for (i, pan) in ["4111111111111111", "5500000000000004"]
            .iter()
            .enumerate()
            .take(self.banks.len())
        {
            loop {
                let stan = next_stan();
                let order = format!("READY-{i}-{stan}");
                let r = c.call(&c.purchase(&stan, 100, pan, &order)).await;
                if r.get_str(39).as_deref() != Some("91") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "bank links never became ready"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The `[[bank]]` table `table` with `overrides` applied: a key the table has gets the new
/// value, any other key is added at the end.
fn apply_overrides(table: &str, overrides: &[(String, String)]) -> String {
    let mut lines: Vec<String> = table.lines().map(str::to_string).collect();
    for (k, v) in overrides {
        let prefix = format!("{k} =");
        match lines
            .iter_mut()
            .find(|l| l.trim_start().starts_with(&prefix))
        {
            Some(l) => *l = format!("{k} = {v}"),
            None => lines.push(format!("{k} = {v}")),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Runs `switchyard` with arguments to completion; its stdout. Panics on failure.
pub fn run_to_end(args: &[&str]) -> String {
    let mut p = spawn_binary("switchyard", args, &[("RUST_LOG", "warn")]);
    // Read stdout to its end first: the process may exit before its reader thread has
    // handed over the last line.
    let mut lines = Vec::new();
    while let Ok(line) = wait_for_line(p.stdout(), |_| true, WAIT) {
        lines.push(line);
    }
    let status = p.wait_timeout(WAIT).expect("command finished");
    let out = lines.join("\n");
    assert!(
        status.success(),
        "switchyard {args:?} failed: {out}\n{}",
        p.stderr().drain().join("\n")
    );
    out
}

/// A running switch.
#[derive(Debug)]
pub struct SwitchProc {
    pub process: Spawned,
    pub merchant_addr: SocketAddr,
}

static STAN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A STAN no other request of this test process uses.
pub fn next_stan() -> String {
    format!(
        "{:06}",
        STAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000
    )
}

/// DE7 for now.
pub fn de7_now() -> String {
    String::from_utf8(codec::clock::transmission(codec::clock::unix_now()).to_vec())
        .expect("digits")
}

/// A merchant connection speaking the contract.
#[derive(Debug)]
pub struct Client {
    framed: Framed<TcpStream, FrameCodec>,
    pub creds: MerchantCreds,
    key: MacKey,
    pub terminal: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, creds: MerchantCreds) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to switch");
        let d = builtin::merchant();
        Client {
            framed: Framed::new(stream, FrameCodec::new(d.framing, 65_535)),
            key: creds.key(),
            creds,
            terminal: "TERM0001".into(),
        }
    }

    fn base(&self, mti: Mti, stan: &str) -> OwnedMessage {
        let mut m = OwnedMessage::new(mti);
        m.fields.insert(7, de7_now().into_bytes());
        m.fields.insert(11, stan.as_bytes().to_vec());
        m.fields.insert(41, self.terminal.as_bytes().to_vec());
        m.fields.insert(42, self.creds.id.as_bytes().to_vec());
        m
    }

    /// A 0200 purchase.
    pub fn purchase(&self, stan: &str, amount_minor: u64, pan: &str, order: &str) -> OwnedMessage {
        let mut m = self.base(Mti::FINANCIAL_REQUEST, stan);
        m.fields.insert(2, pan.as_bytes().to_vec());
        m.fields.insert(3, b"000000".to_vec());
        m.fields
            .insert(4, format!("{amount_minor:012}").into_bytes());
        m.fields.insert(14, b"3012".to_vec());
        m.fields
            .insert(48, format!("OR{:03}{order}", order.len()).into_bytes());
        m.fields.insert(49, b"840".to_vec());
        m
    }

    /// A 0800 with the given DE70.
    pub fn network(&self, stan: &str, code: &str) -> OwnedMessage {
        let mut m = self.base(Mti::NETWORK_REQUEST, stan);
        m.fields.insert(70, code.as_bytes().to_vec());
        m
    }

    /// Encodes with this merchant's MAC.
    pub fn encode(&self, m: &OwnedMessage) -> Bytes {
        m.encode_with_mac(builtin::merchant(), &self.key)
            .expect("encode")
    }

    pub async fn send(&mut self, m: &OwnedMessage) {
        let bytes = self.encode(m);
        self.send_message_bytes(bytes).await;
    }

    /// Sends a message's bytes in a proper frame.
    pub async fn send_message_bytes(&mut self, bytes: Bytes) {
        self.framed.send(bytes).await.expect("send frame");
    }

    /// Writes raw bytes to the socket (frames of your own making).
    pub async fn send_raw(&mut self, raw: &[u8]) {
        self.framed
            .get_mut()
            .write_all(raw)
            .await
            .expect("write raw");
    }

    /// The next response; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Message {
        self.try_recv(WAIT)
            .await
            .expect("an answer from the switch")
    }

    /// The next response within `wait`, None if none came or the connection closed.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        let frame = tokio::time::timeout(wait, self.framed.next())
            .await
            .ok()??
            .ok()?;
        Some(
            builtin::merchant()
                .decode(frame.message)
                .expect("the switch's answer decodes"),
        )
    }

    /// Whether the switch closed the connection (within `wait`).
    pub async fn closed(&mut self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.framed.next()).await,
            Ok(None) | Ok(Some(Err(_)))
        )
    }

    pub async fn call(&mut self, m: &OwnedMessage) -> Message {
        self.send(m).await;
        self.recv().await
    }

    /// Verifies the answer's MAC with this merchant's key.
    pub fn mac_ok(&self, m: &Message) -> bool {
        m.check_mac(&self.key) == codec::MacCheck::Valid
    }
}

/// A unique order reference for one request: `tag`, the STAN and a per-process counter.
pub fn order_ref(tag: &str, stan: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{tag}-{stan}-{n}")
}

/// The same message as a repeat (0200 becomes 0201, and so on), every element unchanged.
pub fn as_repeat(m: &OwnedMessage) -> OwnedMessage {
    let mut r = m.clone();
    r.mti = m.mti.repeat();
    r
}

/// DE39 of an answer as a `String` ("" when absent), for assertions.
pub fn rc(m: &Message) -> String {
    m.get_str(39).map(|s| s.into_owned()).unwrap_or_default()
}

/// DE37, DE38 and DE39 of an answer: what makes two answers "the same answer".
pub fn answer_key(m: &Message) -> (Option<String>, Option<String>, Option<String>) {
    let s = |n| m.get_str(n).map(|s| s.into_owned());
    (s(37), s(38), s(39))
}

impl BankSim {
    /// Polls the record until `pred` holds for it; the last record, or a panic naming
    /// `what` after `timeout`.
    pub async fn wait_record(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.record().await;
            if pred(&r) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bank simulator record never showed {what} within {timeout:?}; last record: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many times the simulator has received financial requests carrying `rrn`
    /// (approved, declined or withheld; repeats included).
    pub async fn requests_for(&self, rrn: &str) -> usize {
        requests_for(&self.record().await, rrn)
    }
}

/// Entries in the approved, declined and unanswered lists of a record with this RRN.
pub fn requests_for(record: &serde_json::Value, rrn: &str) -> usize {
    ["approved", "declined", "unanswered"]
        .iter()
        .map(|k| {
            record[*k]
                .as_array()
                .map(|a| a.iter().filter(|e| e["rrn"] == rrn).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Status inquiries (0600) the simulator received about `rrn` (`inquiries`), 0 when none.
pub fn inquiries_for(record: &serde_json::Value, rrn: &str) -> u64 {
    record["inquiries"][rrn].as_u64().unwrap_or(0)
}

/// Count of a message type the simulator received (`counts_by_mti`), 0 when none.
pub fn count_mti(record: &serde_json::Value, mti: &str) -> u64 {
    record["counts_by_mti"][mti].as_u64().unwrap_or(0)
}

impl World {
    /// Runs a `switchyard` admin command against this world's configuration, e.g.
    /// `["merchant", "disable", MERCHANT_ID]`; its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        let cfg = self.config.to_str().expect("utf-8 path");
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--config", cfg]);
        run_to_end(&all)
    }

    /// Deletes every Redis key under this world's prefix (a flush that leaves other
    /// tests' keys alone); how many were deleted.
    pub async fn flush_redis(&self) -> usize {
        let client = redis::Client::open(redis_url()).expect("redis url");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        let pattern = format!("{}*", self.redis_prefix);
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("SCAN");
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut con)
                .await
                .expect("DEL");
        }
        keys.len()
    }
}

impl Client {
    /// Receives answers until one has DE11 `stan`; the others are returned too (in order),
    /// for tests that pipeline. Panics after [`WAIT`].
    pub async fn recv_stan(&mut self, stan: &str) -> (Message, Vec<Message>) {
        let mut others = Vec::new();
        loop {
            let m = self.recv().await;
            if m.get_str(11).as_deref() == Some(stan) {
                return (m, others);
            }
            others.push(m);
        }
    }
}

/// DE90 naming `original`: its MTI (a repeat named by its original), its STAN and its
/// DE7, then 22 zeros (the contract's n42).
pub fn de90_of(original: &OwnedMessage) -> String {
    let text = |n: u8| {
        String::from_utf8(original.fields.get(&n).cloned().unwrap_or_default())
            .expect("ASCII element")
    };
    format!(
        "{}{:0>6}{:0>10}{}",
        original.mti.original().as_str(),
        text(11),
        text(7),
        "0".repeat(22)
    )
}

/// The value of a DE48 sub-element (`ST`, `EV`, `OR`, ...) of an answer, if present.
pub fn de48_tag(m: &Message, tag: &[u8; 2]) -> Option<String> {
    let de48 = m.raw(48)?;
    codec::tlv::find(de48, tag)
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl Client {
    /// A 0100 pre-authorisation (the same elements as [`Client::purchase`]).
    pub fn preauth(&self, stan: &str, amount_minor: u64, pan: &str, order: &str) -> OwnedMessage {
        let mut m = self.purchase(stan, amount_minor, pan, order);
        m.mti = Mti::AUTHORISATION_REQUEST;
        m
    }

    /// A lifecycle request of `mti` naming `original` by DE90, for `amount_minor` in the
    /// original's currency (DE49; 840 when it has none).
    fn naming(
        &self,
        mti: Mti,
        stan: &str,
        original: &OwnedMessage,
        amount_minor: u64,
    ) -> OwnedMessage {
        let mut m = self.base(mti, stan);
        m.fields
            .insert(4, format!("{amount_minor:012}").into_bytes());
        let currency = original
            .fields
            .get(&49)
            .cloned()
            .unwrap_or_else(|| b"840".to_vec());
        m.fields.insert(49, currency);
        m.fields.insert(90, de90_of(original).into_bytes());
        m
    }

    /// A 0220 completion capturing `amount_minor` of the pre-authorisation `original`.
    pub fn completion(
        &self,
        stan: &str,
        original: &OwnedMessage,
        amount_minor: u64,
    ) -> OwnedMessage {
        let mut m = self.naming(Mti::COMPLETION_ADVICE, stan, original, amount_minor);
        m.fields.insert(3, b"000000".to_vec());
        m
    }

    /// A 0200 refund (DE3 `20`) of `amount_minor` of the purchase or completion
    /// `original`, with DE48 `RR` when a reason is given.
    pub fn refund(
        &self,
        stan: &str,
        original: &OwnedMessage,
        amount_minor: u64,
        reason: Option<&str>,
    ) -> OwnedMessage {
        let mut m = self.naming(Mti::FINANCIAL_REQUEST, stan, original, amount_minor);
        m.fields.insert(3, b"200000".to_vec());
        if let Some(r) = reason {
            m.fields
                .insert(48, format!("RR{:03}{r}", r.len()).into_bytes());
        }
        m
    }

    /// A 0400 reversal of `original` for its full amount (its DE4).
    pub fn reversal(&self, stan: &str, original: &OwnedMessage) -> OwnedMessage {
        let amount = original
            .fields
            .get(&4)
            .and_then(|a| std::str::from_utf8(a).ok()?.parse().ok())
            .unwrap_or(0);
        self.naming(Mti::REVERSAL_REQUEST, stan, original, amount)
    }

    /// A 0600 status inquiry naming `original` by DE90.
    pub fn status_by_ref(&self, stan: &str, original: &OwnedMessage) -> OwnedMessage {
        let mut m = self.base(Mti::STATUS_REQUEST, stan);
        m.fields.insert(90, de90_of(original).into_bytes());
        m
    }

    /// A 0600 status inquiry by DE48 `OR`.
    pub fn status_by_order(&self, stan: &str, order: &str) -> OwnedMessage {
        let mut m = self.base(Mti::STATUS_REQUEST, stan);
        m.fields
            .insert(48, format!("OR{:03}{order}", order.len()).into_bytes());
        m
    }

    /// The merchant's 0630 answering the 0620 `advice`: its DE7, DE11, DE37, DE41 and
    /// DE42 echoed, DE39 `rc`.
    pub fn notification_ack(&self, advice: &Message, rc: &str) -> OwnedMessage {
        let mut m = OwnedMessage::new(Mti::NOTIFICATION_RESPONSE);
        for n in [7u8, 11, 37, 41, 42] {
            if let Some(v) = advice.raw(n) {
                m.fields.insert(n, v.to_vec());
            }
        }
        m.fields.insert(39, rc.as_bytes().to_vec());
        m
    }

    /// The next message of type `mti` within `wait` (others that come first are
    /// returned too, in order); None if none came.
    pub async fn recv_mti(&mut self, mti: &str, wait: Duration) -> (Option<Message>, Vec<Message>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return (None, others);
            }
            match self.try_recv(left).await {
                None => return (None, others),
                Some(m) if m.mti().as_str() == mti => return (Some(m), others),
                Some(m) => others.push(m),
            }
        }
    }
}

/// Runs `switchyard` with arguments to completion, whatever its exit status: the
/// status, its stdout and its stderr.
pub fn run_status(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    run_binary("switchyard", args, &[("RUST_LOG", "warn")])
}

/// Runs the workspace binary `bin` with `args` and extra environment `env` to its end: its
/// exit status, stdout and stderr.
pub fn run_binary(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut p = spawn_binary(bin, args, env);
    let mut out = Vec::new();
    while let Ok(line) = wait_for_line(p.stdout(), |_| true, WAIT) {
        out.push(line);
    }
    let mut err = Vec::new();
    while let Ok(line) = wait_for_line(p.stderr(), |_| true, WAIT) {
        err.push(line);
    }
    let status = p.wait_timeout(WAIT).expect("command finished");
    (status, out.join("\n"), err.join("\n"))
}
