//! The configuration file (TOML) with environment overrides, checked as a whole before
//! any port is bound. `SWITCHYARD__SECTION__KEY=value` overrides `[section] key`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variables with this prefix override file values (`__` separates levels).
pub const ENV_PREFIX: &str = "SWITCHYARD__";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub switch: SwitchSection,
    pub merchant_listener: ListenerSection,
    pub database: DatabaseSection,
    pub redis: RedisSection,
    pub security: SecuritySection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default, rename = "bank")]
    pub banks: Vec<BankSection>,
    /// The operators' HTTP surface (metrics, links, transactions); off when absent.
    pub admin: Option<AdminSection>,
}

/// Shortest admin token accepted: long enough that guessing is hopeless.
pub const ADMIN_TOKEN_MIN_LEN: usize = 24;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub addr: SocketAddr,
    /// Bearer tokens and their roles (viewer, operator, approver, admin, superadmin; not
    /// merchant).
    #[serde(default)]
    pub tokens: Vec<admin_http::Token>,
    /// Back-office refunds above this amount (minor units) need a second person with role
    /// `approver` (maker-checker); at or below it they are executed at once.
    #[serde(default = "default_refund_approval_above_minor")]
    pub refund_approval_above_minor: i64,
    /// A refund request nobody decides within this expires (ms).
    #[serde(default = "default_refund_request_ttl_ms")]
    pub refund_request_ttl_ms: u64,
}

fn default_refund_approval_above_minor() -> i64 {
    10_000
}

fn default_refund_request_ttl_ms() -> u64 {
    24 * 3600 * 1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchSection {
    /// Distinguishes instances sharing one database; recovery only touches its own rows.
    pub instance_id: i16,
    #[serde(default = "d_shutdown_deadline_ms")]
    pub shutdown_deadline_ms: u64,
    /// Merchants and routes are reloaded from PostgreSQL this often (and on SIGHUP).
    #[serde(default = "d_reload_interval_ms")]
    pub reload_interval_ms: u64,
    /// Extra dialect files (TOML or JSON) to load beside the built-in ones.
    #[serde(default)]
    pub dialect_files: Vec<PathBuf>,
    /// Log as JSON lines instead of text.
    #[serde(default)]
    pub log_json: bool,
    /// The business day (ledger, settlement) starts at this hour, UTC.
    #[serde(default)]
    pub business_day_cutover_hour: u8,
    /// This instance's lease in PostgreSQL lasts this long and is renewed three times per
    /// lease; once another instance's lease has expired, this one takes over its in-doubt
    /// transactions. At least [`LEASE_MS_MIN`].
    #[serde(default = "d_lease_ms")]
    pub lease_ms: u64,
    /// How long a request's outcome write (the bank's answer) is retried while the
    /// database is unreachable before the answer is withheld; the in-doubt sweep then
    /// reverses the request once the database is back. At least [`OUTCOME_WAIT_MS_MIN`].
    #[serde(default = "d_outcome_wait_ms")]
    pub outcome_wait_ms: u64,
}

/// The shortest outcome wait allowed: a commit under load takes milliseconds.
pub const OUTCOME_WAIT_MS_MIN: u64 = 1_000;

/// The shortest lease allowed: renewals are a few database round trips per lease.
pub const LEASE_MS_MIN: u64 = 1_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Plain TCP (loopback and tests).
    pub tcp: Option<SocketAddr>,
    pub tls: Option<TlsListener>,
    /// QUIC (the same framing, on streams).
    pub quic: Option<TlsListener>,
    #[serde(default = "d_max_connections_total")]
    pub max_connections_total: usize,
    #[serde(default = "d_max_connections_per_merchant")]
    pub max_connections_per_merchant: usize,
    #[serde(default = "d_max_in_flight_per_connection")]
    pub max_in_flight_per_connection: usize,
    #[serde(default = "d_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// A response that cannot be written within this long closes the connection.
    #[serde(default = "d_write_timeout_ms")]
    pub write_timeout_ms: u64,
    #[serde(default = "d_max_message_len")]
    pub max_message_len: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListener {
    pub addr: SocketAddr,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub url: String,
    #[serde(default = "d_pool_size")]
    pub pool_size: usize,
    /// Journal operations written in one database commit at most.
    #[serde(default = "d_journal_batch_max")]
    pub journal_batch_max: usize,
    /// Journal batches being committed at once at most: one connection each, besides the
    /// pool.
    #[serde(default = "d_journal_writers")]
    pub journal_writers: usize,
    /// Journal operations waiting at most; requests wait for room beyond it.
    #[serde(default = "d_journal_queue_max")]
    pub journal_queue_max: usize,
    /// Least time between the starts of two journal commits, in µs (0: none): bounds
    /// commits per second, so batches grow with load.
    #[serde(default = "d_journal_commit_interval_us")]
    pub journal_commit_interval_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    /// Nodes of a Redis Cluster (`redis://host:port`, some or all): when given, the switch
    /// uses the cluster and `url` is not used.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key (lets instances of different deployments share a server).
    #[serde(default = "d_key_prefix")]
    pub key_prefix: String,
    /// How long a known answer is kept in Redis (PostgreSQL keeps it for good).
    #[serde(default = "d_answer_ttl_ms")]
    pub answer_ttl_ms: u64,
    /// How long an in-flight claim lives if its owner dies before answering.
    #[serde(default = "d_claim_ttl_ms")]
    pub claim_ttl_ms: u64,
    #[serde(default = "d_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// What rate limits and card velocity do while Redis is unreachable (idempotency
    /// falls back to PostgreSQL either way): `fail_open` (the default) lets requests
    /// through unchecked, `fail_closed` refuses new requests with `91`.
    #[serde(default)]
    pub limits_on_outage: LimitsOnOutage,
}

/// The rate-limit policy while Redis is unreachable (`[redis] limits_on_outage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitsOnOutage {
    /// Requests go on without rate limits or card velocity (counted as
    /// `switchyard_redis_outage_requests_total{limits="skipped"}`).
    #[default]
    FailOpen,
    /// New requests are refused `91` (the switch cannot apply its limits); a
    /// retransmission of a recorded request is still answered from PostgreSQL.
    FailClosed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// 32 bytes in hex: encrypts MAC keys at rest and card data in the journal.
    pub master_key_hex: String,
    /// 32 bytes in hex: keys the card-number hash used for velocity and lookup.
    pub pan_hash_key_hex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    #[default]
    Gcra,
    TokenBucket,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    #[serde(default)]
    pub algorithm: RateAlgorithm,
    /// Requests per card per minute (0 disables the velocity rule).
    #[serde(default = "d_card_per_minute")]
    pub card_velocity_per_minute: u32,
    #[serde(default = "d_card_burst")]
    pub card_velocity_burst: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            algorithm: RateAlgorithm::Gcra,
            card_velocity_per_minute: d_card_per_minute(),
            card_velocity_burst: d_card_burst(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankSection {
    pub id: String,
    /// A built-in dialect name or one from `switch.dialect_files`.
    pub dialect: String,
    /// Where the bank listens; the switch connects (one connection per link). Required
    /// in connect mode.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// `tcp`, `tls` (TLS over TCP) or `quic`; TLS and QUIC authenticate both ends.
    #[serde(default)]
    pub transport: BankTransport,
    /// `connect` (the switch dials `addr`) or `listen` (the bank dials `listen_addr`).
    #[serde(default)]
    pub mode: BankMode,
    /// Where the switch listens for this bank's links in listen mode.
    #[serde(default)]
    pub listen_addr: Option<SocketAddr>,
    /// TLS/QUIC: the switch's certificate chain for this bank (PEM): its client
    /// certificate in connect mode, its server certificate in listen mode.
    #[serde(default)]
    pub cert_pem: Option<PathBuf>,
    /// TLS/QUIC: the key of `cert_pem` (PEM).
    #[serde(default)]
    pub key_pem: Option<PathBuf>,
    /// TLS/QUIC: the bank's CA (PEM), the only one trusted on this bank's links.
    #[serde(default)]
    pub ca_pem: Option<PathBuf>,
    /// TLS/QUIC, connect mode: the name the bank's certificate must carry.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Circuit breaker: outcomes counted over this window.
    #[serde(default = "d_breaker_window_ms")]
    pub breaker_window_ms: u64,
    /// Circuit breaker: fewer outcomes than this in the window never open it.
    #[serde(default = "d_breaker_min_requests")]
    pub breaker_min_requests: u32,
    /// Circuit breaker: opens when this percentage of the window's requests timed out
    /// (0 disables the breaker).
    #[serde(default = "d_breaker_timeout_rate_percent")]
    pub breaker_timeout_rate_percent: u32,
    /// Circuit breaker: stays open this long, then lets one probe through.
    #[serde(default = "d_breaker_open_ms")]
    pub breaker_open_ms: u64,
    #[serde(default = "d_links")]
    pub links: usize,
    /// DE32, the switch's id at this bank.
    pub acquirer_id: String,
    #[serde(default = "d_bank_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "d_in_flight_per_link")]
    pub in_flight_per_link: usize,
    #[serde(default = "d_echo_idle_ms")]
    pub echo_idle_ms: u64,
    #[serde(default = "d_echo_timeout_ms")]
    pub echo_timeout_ms: u64,
    #[serde(default = "d_echo_missed_max")]
    pub echo_missed_max: u32,
    #[serde(default = "d_sign_on_timeout_ms")]
    pub sign_on_timeout_ms: u64,
    #[serde(default = "d_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "d_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Reversals are repeated until answered, but no longer than this; then they are
    /// marked expired for an operator.
    #[serde(default = "d_reversal_max_age_ms")]
    pub reversal_max_age_ms: u64,
    /// Status inquiries (0600) per second at most about transactions whose reversal goes
    /// unanswered (0 turns inquiries off).
    #[serde(default = "d_inquiries_per_second")]
    pub inquiries_per_second: u32,
    /// Hex of the fixed frame header (TPDU) sent on this bank's links.
    #[serde(default)]
    pub header_hex: Option<String>,
}

/// How a bank's links are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BankTransport {
    #[default]
    Tcp,
    Tls,
    Quic,
}

/// Who dials whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BankMode {
    #[default]
    Connect,
    Listen,
}

fn d_breaker_window_ms() -> u64 {
    10_000
}
fn d_breaker_min_requests() -> u32 {
    20
}
fn d_breaker_timeout_rate_percent() -> u32 {
    50
}
fn d_breaker_open_ms() -> u64 {
    5_000
}
fn d_outcome_wait_ms() -> u64 {
    60_000
}
fn d_lease_ms() -> u64 {
    15_000
}
fn d_shutdown_deadline_ms() -> u64 {
    10_000
}
fn d_reload_interval_ms() -> u64 {
    5_000
}
fn d_max_connections_total() -> usize {
    10_000
}
fn d_max_connections_per_merchant() -> usize {
    64
}
fn d_max_in_flight_per_connection() -> usize {
    1024
}
fn d_idle_timeout_ms() -> u64 {
    300_000
}
fn d_write_timeout_ms() -> u64 {
    10_000
}
fn d_max_message_len() -> usize {
    codec::MESSAGE_LEN_DEFAULT_MAX_BYTES
}
fn d_pool_size() -> usize {
    16
}
fn d_journal_batch_max() -> usize {
    1024
}
fn d_journal_writers() -> usize {
    // One writer commits the fullest batches: measured at 5,000 purchases/s, two writers
    // made 1.5 times the commits and 18 % more database CPU per purchase for no better
    // latency (docs/loadtest.md).
    1
}
fn d_journal_commit_interval_us() -> u64 {
    // Measured at 5,000 purchases/s: 1,829 commits/s and 135 µs of database CPU per
    // purchase without pacing; 828 commits/s and 95 µs with 1 ms, for 0.5 ms more p50
    // (docs/loadtest.md). Below about 1,000 journal records/s it never waits.
    1_000
}
fn d_journal_queue_max() -> usize {
    65_536
}
fn d_key_prefix() -> String {
    "sy:".into()
}
fn d_answer_ttl_ms() -> u64 {
    86_400_000
}
fn d_claim_ttl_ms() -> u64 {
    120_000
}
fn d_redis_timeout_ms() -> u64 {
    500
}
fn d_card_per_minute() -> u32 {
    600
}
fn d_card_burst() -> u32 {
    60
}
fn d_links() -> usize {
    1
}
fn d_bank_timeout_ms() -> u64 {
    3_000
}
fn d_in_flight_per_link() -> usize {
    4096
}
fn d_echo_idle_ms() -> u64 {
    30_000
}
fn d_echo_timeout_ms() -> u64 {
    5_000
}
fn d_echo_missed_max() -> u32 {
    3
}
fn d_sign_on_timeout_ms() -> u64 {
    5_000
}
fn d_reconnect_min_ms() -> u64 {
    100
}
fn d_reconnect_max_ms() -> u64 {
    10_000
}
fn d_inquiries_per_second() -> u32 {
    5
}
fn d_reversal_max_age_ms() -> u64 {
    86_400_000
}

/// A configuration that cannot be used; says which key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration syntax: {0}")]
    Syntax(String),
    #[error("environment override {var}: {why}")]
    Env { var: String, why: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file, applies environment overrides and checks everything.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml_with_env(&text, std::env::vars())
    }

    pub fn from_toml_with_env(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        for (var, raw) in env {
            let Some(path) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
            apply_override(&mut value, &keys, &raw).map_err(|why| ConfigError::Env {
                var: var.clone(),
                why,
            })?;
        }
        let config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if self.switch.lease_ms < LEASE_MS_MIN {
            return bad(format!(
                "switch.lease_ms: {} is below the minimum of {LEASE_MS_MIN}",
                self.switch.lease_ms
            ));
        }
        if self.switch.outcome_wait_ms < OUTCOME_WAIT_MS_MIN {
            return bad(format!(
                "switch.outcome_wait_ms: {} is below the minimum of {OUTCOME_WAIT_MS_MIN}",
                self.switch.outcome_wait_ms
            ));
        }
        let l = &self.merchant_listener;
        if l.tcp.is_none() && l.tls.is_none() && l.quic.is_none() {
            return bad("merchant_listener: set tcp, tls or quic (or several)".into());
        }
        for tls in l.tls.iter().chain(l.quic.iter()) {
            for p in [&tls.cert_pem, &tls.key_pem] {
                if !p.exists() {
                    return bad(format!(
                        "merchant_listener.tls: {} does not exist",
                        p.display()
                    ));
                }
            }
        }
        for (name, v) in [
            (
                "merchant_listener.max_connections_total",
                l.max_connections_total,
            ),
            (
                "merchant_listener.max_connections_per_merchant",
                l.max_connections_per_merchant,
            ),
            (
                "merchant_listener.max_in_flight_per_connection",
                l.max_in_flight_per_connection,
            ),
            ("database.pool_size", self.database.pool_size),
            (
                "database.journal_batch_max",
                self.database.journal_batch_max,
            ),
            ("database.journal_writers", self.database.journal_writers),
            (
                "database.journal_queue_max",
                self.database.journal_queue_max,
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !(64..=codec::MESSAGE_LEN_LIMIT_BYTES).contains(&l.max_message_len) {
            return bad(format!(
                "merchant_listener.max_message_len must be 64..={}",
                codec::MESSAGE_LEN_LIMIT_BYTES
            ));
        }
        for (name, hex_key) in [
            ("security.master_key_hex", &self.security.master_key_hex),
            ("security.pan_hash_key_hex", &self.security.pan_hash_key_hex),
        ] {
            if hex::decode(hex_key.trim()).map(|k| k.len()) != Ok(32) {
                return bad(format!("{name} must be 32 bytes in hex (64 characters)"));
            }
        }
        if self.security.master_key_hex.trim() == self.security.pan_hash_key_hex.trim() {
            return bad("security: master_key_hex and pan_hash_key_hex must differ".into());
        }
        if let Some(a) = &self.admin
            && a.tokens.iter().any(|t| t.token.len() < ADMIN_TOKEN_MIN_LEN)
        {
            return bad(format!(
                "admin.tokens: every token must be at least {ADMIN_TOKEN_MIN_LEN} characters"
            ));
        }
        // A static token names no merchant: with role `merchant` it would see them all.
        if let Some(a) = &self.admin
            && a.tokens
                .iter()
                .any(|t| t.role == admin_http::Role::Merchant)
        {
            return bad("admin.tokens: role merchant is for accounts and API keys only".into());
        }
        if self.switch.business_day_cutover_hour > 23 {
            return bad("switch.business_day_cutover_hour must be 0..=23".into());
        }
        let mut ids = BTreeSet::new();
        for b in &self.banks {
            if !ids.insert(&b.id) {
                return bad(format!("bank {}: defined twice", b.id));
            }
            if b.links == 0
                || b.in_flight_per_link == 0
                || b.timeout_ms == 0
                || b.echo_missed_max == 0
            {
                return bad(format!(
                    "bank {}: links, in_flight_per_link, timeout_ms and echo_missed_max must be at least 1",
                    b.id
                ));
            }
            if b.reconnect_min_ms == 0 || b.reconnect_min_ms > b.reconnect_max_ms {
                return bad(format!(
                    "bank {}: need 0 < reconnect_min_ms <= reconnect_max_ms",
                    b.id
                ));
            }
            if let Some(h) = &b.header_hex
                && hex::decode(h).is_err()
            {
                return bad(format!("bank {}: header_hex is not hex", b.id));
            }
            b.validate_transport().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

impl BankSection {
    /// Mode, addresses and certificates fit together.
    fn validate_transport(&self) -> Result<(), String> {
        let id = &self.id;
        match self.mode {
            BankMode::Connect if self.addr.is_none() => {
                return Err(format!("bank {id}: mode = \"connect\" needs addr"));
            }
            BankMode::Listen if self.listen_addr.is_none() => {
                return Err(format!("bank {id}: mode = \"listen\" needs listen_addr"));
            }
            _ => {}
        }
        if self.transport != BankTransport::Tcp {
            for (key, p) in [
                ("cert_pem", &self.cert_pem),
                ("key_pem", &self.key_pem),
                ("ca_pem", &self.ca_pem),
            ] {
                match p {
                    None => return Err(format!("bank {id}: transport tls/quic needs {key}")),
                    Some(p) if !p.exists() => {
                        return Err(format!("bank {id}: {key} {} does not exist", p.display()));
                    }
                    Some(_) => {}
                }
            }
            if self.mode == BankMode::Connect && self.server_name.is_none() {
                return Err(format!(
                    "bank {id}: transport tls/quic in connect mode needs server_name"
                ));
            }
        }
        if self.breaker_timeout_rate_percent > 100 {
            return Err(format!(
                "bank {id}: breaker_timeout_rate_percent must be 0..=100"
            ));
        }
        if self.breaker_timeout_rate_percent > 0
            && (self.breaker_window_ms == 0 || self.breaker_open_ms == 0)
        {
            return Err(format!(
                "bank {id}: breaker_window_ms and breaker_open_ms must be at least 1"
            ));
        }
        Ok(())
    }
}

fn apply_override(table: &mut toml::Table, keys: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut t = table;
    for k in parents {
        t = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{k} is not a section"))?;
    }
    // A value written as TOML keeps its type (numbers, booleans, quoted strings, arrays and
    // inline tables such as admin tokens); anything else is taken as a bare string.
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[switch]
instance_id = 1
[merchant_listener]
tcp = "127.0.0.1:0"
[database]
url = "postgres://x"
[redis]
url = "redis://x"
[security]
master_key_hex = "0000000000000000000000000000000000000000000000000000000000000001"
pan_hash_key_hex = "0000000000000000000000000000000000000000000000000000000000000002"
[[bank]]
id = "a"
dialect = "bank-bcd-v1"
addr = "127.0.0.1:9"
acquirer_id = "1"
"#;

    // Proves defaults fill in, env overrides win, and bad values are refused by name.
    #[test]
    fn loads_overrides_and_validates() {
        let c = Config::from_toml_with_env(MIN, std::iter::empty()).unwrap();
        assert_eq!(c.merchant_listener.max_message_len, 4096);
        let env = [(
            "SWITCHYARD__DATABASE__URL".to_string(),
            "postgres://y".to_string(),
        )];
        let c = Config::from_toml_with_env(MIN, env.into_iter()).unwrap();
        assert_eq!(c.database.url, "postgres://y");
        let env = [(
            "SWITCHYARD__DATABASE__POOL_SIZE".to_string(),
            "0".to_string(),
        )];
        let e = Config::from_toml_with_env(MIN, env.into_iter()).unwrap_err();
        assert!(e.to_string().contains("database.pool_size"), "{e}");
        let e = Config::from_toml_with_env(
            &MIN.replace(
                "0000000000000000000000000000000000000000000000000000000000000002",
                "zz",
            ),
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("pan_hash_key_hex"), "{e}");
        let e = Config::from_toml_with_env(&format!("{MIN}\nbogus = 1"), std::iter::empty())
            .unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)), "{e}");
    }

    // Proves bank transport options default to connect over TCP, and listen mode, TLS
    // and the breaker rate are checked.
    #[test]
    fn bank_transport_options() {
        let c = Config::from_toml_with_env(MIN, std::iter::empty()).unwrap();
        let b = &c.banks[0];
        assert_eq!(
            (b.transport, b.mode),
            (BankTransport::Tcp, BankMode::Connect)
        );
        assert_eq!(b.breaker_timeout_rate_percent, 50);
        let listen = MIN.replace("addr = \"127.0.0.1:9\"", "mode = \"listen\"");
        let e = Config::from_toml_with_env(&listen, std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let listen = format!("{listen}listen_addr = \"127.0.0.1:0\"\n");
        let c = Config::from_toml_with_env(&listen, std::iter::empty()).unwrap();
        assert_eq!(c.banks[0].mode, BankMode::Listen);
        let tls = format!("{MIN}transport = \"tls\"\n");
        let e = Config::from_toml_with_env(&tls, std::iter::empty()).unwrap_err();
        assert!(e.to_string().contains("cert_pem"), "{e}");
        let rate = format!("{MIN}breaker_timeout_rate_percent = 101\n");
        let e = Config::from_toml_with_env(&rate, std::iter::empty()).unwrap_err();
        assert!(
            e.to_string().contains("breaker_timeout_rate_percent"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    // Proves the annotated example in config/ is a valid configuration.
    #[test]
    fn example_config_is_valid() {
        let c = super::Config::from_toml_with_env(
            include_str!("../../config/switchyard.example.toml"),
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(c.banks.len(), 2);
    }
}
