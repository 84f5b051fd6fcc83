//! The configuration: a TOML file, then environment variables over it, layered by
//! `figment` so every value remembers where it came from, and checked as a whole before
//! any port is bound.
//!
//! `SWITCHYARD__SECTION__KEY=value` overrides `[section] key`;
//! `SWITCHYARD__BANK__<i>__KEY=value` overrides `key` of the `i`-th `[[bank]]` (from 0),
//! or adds a bank when there is no `i`-th (it then needs every required key); the same
//! goes for `SWITCHYARD__ADMIN__TOKENS__<i>__TOKEN`/`ROLE`. A value is taken as TOML-like
//! text: a bare word or number is a string where the key wants text and a number where
//! it wants one, `[a, b]` is a list. Errors name the key, the value and its source (the
//! file's path or the variable's name). docs/operations.md has the whole scheme.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer};

/// Environment variables with this prefix override file values.
pub const ENV_PREFIX: &str = "SWITCHYARD__";
/// Separates the levels of a key in an environment variable's name.
pub const ENV_SEPARATOR: &str = "__";
/// How errors name the environment as a source.
const ENV_METADATA_NAME: &str = "environment";

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
    #[serde(default, rename = "bank", deserialize_with = "indexed")]
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
    #[serde(default, deserialize_with = "indexed")]
    pub tokens: Vec<admin_http::Token>,
    /// Back-office refunds above this amount (minor units) need a second person with role
    /// `approver` (maker-checker); at or below it they are executed at once.
    #[serde(default = "default_refund_approval_above_minor")]
    pub refund_approval_above_minor: i64,
    /// A refund request nobody decides within this expires (ms).
    #[serde(default = "default_refund_request_ttl_ms")]
    pub refund_request_ttl_ms: u64,
    /// HTTPS for the admin listener (certificate chain and key, PEM); plain HTTP when
    /// absent, with a warning at start.
    pub tls: Option<AdminTls>,
}

/// The admin listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
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
    /// Threads of the async runtime: 0 (the default) one per CPU core; 1 a single-threaded
    /// runtime (no wake-ups between threads: the least CPU per request when the switch
    /// shares a small machine with its database); N a work-stealing runtime of N threads.
    /// At most [`RUNTIME_THREADS_MAX`].
    #[serde(default)]
    pub runtime_threads: usize,
}

/// The most runtime threads allowed: beyond the machine's cores they only add switches.
pub const RUNTIME_THREADS_MAX: usize = 256;

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
    /// Least time between the start of a journal commit of four records or more and the
    /// next, in µs (0: none): bounds commits per second under load, so batches grow with
    /// it; after a smaller batch (light load) the next is taken at once.
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
    /// Where the bank listens, `host:port` (the host a name or an IP address); the switch
    /// connects (one connection per link), resolving the name on every connect. Required
    /// in connect mode.
    #[serde(default)]
    pub addr: Option<String>,
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
    /// The message MAC on this bank's links (`none`, `x9.19`, `hmac-sha256`): every
    /// message sent is signed and every message received checked (docs/bank-protocol.md).
    #[serde(default)]
    pub mac: BankMac,
    /// The MAC key in hex: 16 bytes (K then K') for `x9.19`, 32 bytes for `hmac-sha256`.
    #[serde(default)]
    pub mac_key_hex: Option<String>,
}

/// The message MAC of a bank's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum BankMac {
    #[default]
    #[serde(rename = "none")]
    None,
    /// ANSI X9.19 retail MAC (single-DES CBC-MAC, last block 3DES), a 16-byte key.
    #[serde(rename = "x9.19")]
    X919,
    /// HMAC-SHA256 truncated to 8 bytes, a 32-byte key.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

impl BankSection {
    /// The bank's MAC key, once [`Config`] validated it; None when the bank uses no MAC.
    pub fn mac_key(&self) -> Option<codec::MacKey> {
        let raw = hex::decode(self.mac_key_hex.as_deref()?.trim()).ok()?;
        match self.mac {
            BankMac::None => None,
            BankMac::X919 => Some(codec::MacKey::x9_19(raw.as_slice().try_into().ok()?)),
            BankMac::HmacSha256 => Some(codec::MacKey::new(raw.as_slice().try_into().ok()?)),
        }
    }
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
    // A trade of latency for database CPU, measured at 5,000 purchases/s on a grown
    // journal (docs/loadtest.md, 2026-12-03 "last"): each commit costs PostgreSQL about
    // 200 µs of CPU whatever it holds, and each durable wait is about half an interval
    // plus a commit. In one fast spell of the host: 1 ms gave 654-733 commits/s, database
    // CPU 64-79 µs per purchase and p50 3.1-3.2 ms above the relay's; 700 µs gave 968-987
    // commits/s, 79-87 µs and +2.5 ms; none, 1,736 commits/s, 109 µs and +1.5 ms. When
    // commits take longer than the interval (a slow spell) it does not bind. Below
    // [`crate::store::journal`]'s four records a batch it never waits.
    700
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

/// A configuration that cannot be used; says which key, its value, where the value came
/// from and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Unreadable TOML, an unknown key, a value of the wrong type: figment's message, with
    /// the key and the file or variable.
    #[error("configuration: {0}")]
    Syntax(String),
    #[error("configuration: {key} = {value} (from {origin}): {why}")]
    Invalid {
        key: String,
        value: String,
        /// The file's path and key, or the variable's name; "default" when unset.
        origin: String,
        why: String,
    },
}

/// A value that breaks a rule: its key (`bank.0.links`) and why, before its source is
/// looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub why: String,
}

fn invalid(key: impl Into<String>, why: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid {
        key: key.into(),
        why: why.into(),
    })
}

impl Config {
    /// The longest `[[bank]] timeout_ms` (0 without banks): how long any request may be at
    /// a bank before the switch gives up on its answer.
    pub fn bank_timeout_max_ms(&self) -> u64 {
        self.banks.iter().map(|b| b.timeout_ms).max().unwrap_or(0)
    }

    /// Reads the file, applies the process's environment and checks everything.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_sources(&text, Some(path), std::env::vars())
    }

    /// The same from TOML text (its source named "configuration text") and these
    /// variables.
    pub fn from_toml_with_env(
        text: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::from_sources(text, None, env)
    }

    fn from_sources(
        text: &str,
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let figment = Figment::new()
            .merge(TomlFile {
                text: text.to_owned(),
                path: path.map(Path::to_path_buf),
            })
            .merge(EnvVars::new(env));
        let syntax = |e: figment::Error| {
            let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
            ConfigError::Syntax(all.join("; "))
        };
        // Lossy: a variable's `5000` or `true` reaches a number or flag key as one.
        let config: Config = figment.extract_lossy().map_err(syntax)?;
        config.validate().map_err(|Invalid { key, why }| {
            let (value, origin) = locate(&figment, &key);
            ConfigError::Invalid {
                key,
                value,
                origin,
                why,
            }
        })?;
        Ok(config)
    }

    /// Every rule a configuration must keep, first broken one reported: sizes, keys,
    /// files, and each bank's dialect, header, transport and MAC. `run` and
    /// `check-config` both rely on it (plus [`crate::app::preflight`], which also parses
    /// the certificates).
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_listener()?;
        self.validate_sizes()?;
        self.validate_security()?;
        let dialects = crate::dialects::load(&self.switch.dialect_files).map_err(|e| Invalid {
            key: "switch.dialect_files".into(),
            why: e.to_string(),
        })?;
        let mut ids = BTreeSet::new();
        for (i, b) in self.banks.iter().enumerate() {
            if !ids.insert(&b.id) {
                return invalid(format!("bank.{i}.id"), "another bank has this id");
            }
            b.validate(i, &dialects)?;
        }
        Ok(())
    }

    fn validate_listener(&self) -> Result<(), Invalid> {
        let l = &self.merchant_listener;
        if l.tcp.is_none() && l.tls.is_none() && l.quic.is_none() {
            return invalid("merchant_listener", "set tcp, tls or quic (or several)");
        }
        for (name, t) in [("tls", &l.tls), ("quic", &l.quic)] {
            for (key, p) in t
                .iter()
                .flat_map(|t| [("cert_pem", &t.cert_pem), ("key_pem", &t.key_pem)])
            {
                if !p.exists() {
                    return invalid(format!("merchant_listener.{name}.{key}"), "no such file");
                }
            }
        }
        if let Some(t) = self.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            for (key, p) in [("cert_pem", &t.cert_pem), ("key_pem", &t.key_pem)] {
                if !p.exists() {
                    return invalid(format!("admin.tls.{key}"), "no such file");
                }
            }
        }
        if !(64..=codec::MESSAGE_LEN_LIMIT_BYTES).contains(&l.max_message_len) {
            return invalid(
                "merchant_listener.max_message_len",
                format!("must be 64..={}", codec::MESSAGE_LEN_LIMIT_BYTES),
            );
        }
        if let Some(a) = &self.admin
            && let Some(i) = a
                .tokens
                .iter()
                .position(|t| t.token.len() < ADMIN_TOKEN_MIN_LEN)
        {
            return invalid(
                format!("admin.tokens.{i}.token"),
                format!("must be at least {ADMIN_TOKEN_MIN_LEN} characters"),
            );
        }
        // A static token names no merchant: with role `merchant` it would see them all.
        if let Some(a) = &self.admin
            && let Some(i) = a
                .tokens
                .iter()
                .position(|t| t.role == admin_http::Role::Merchant)
        {
            return invalid(
                format!("admin.tokens.{i}.role"),
                "role merchant is for accounts and API keys only",
            );
        }
        if self.switch.business_day_cutover_hour > 23 {
            return invalid("switch.business_day_cutover_hour", "must be 0..=23");
        }
        Ok(())
    }

    fn validate_sizes(&self) -> Result<(), Invalid> {
        let (l, db) = (&self.merchant_listener, &self.database);
        for (key, v) in [
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
            ("database.pool_size", db.pool_size),
            ("database.journal_batch_max", db.journal_batch_max),
            ("database.journal_writers", db.journal_writers),
            ("database.journal_queue_max", db.journal_queue_max),
        ] {
            if v == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        let sw = &self.switch;
        if sw.lease_ms < LEASE_MS_MIN {
            return invalid(
                "switch.lease_ms",
                format!("must be at least {LEASE_MS_MIN}"),
            );
        }
        if sw.runtime_threads > RUNTIME_THREADS_MAX {
            return invalid(
                "switch.runtime_threads",
                format!("must be at most {RUNTIME_THREADS_MAX}"),
            );
        }
        if sw.outcome_wait_ms < OUTCOME_WAIT_MS_MIN {
            return invalid(
                "switch.outcome_wait_ms",
                format!("must be at least {OUTCOME_WAIT_MS_MIN}"),
            );
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), Invalid> {
        let sec = &self.security;
        for (key, hex_key) in [
            ("security.master_key_hex", &sec.master_key_hex),
            ("security.pan_hash_key_hex", &sec.pan_hash_key_hex),
        ] {
            if hex::decode(hex_key.trim()).map(|k| k.len()) != Ok(32) {
                return invalid(key, "must be 32 bytes in hex (64 characters)");
            }
        }
        if sec.master_key_hex.trim() == sec.pan_hash_key_hex.trim() {
            return invalid(
                "security.pan_hash_key_hex",
                "must differ from master_key_hex",
            );
        }
        Ok(())
    }
}

impl BankSection {
    /// The bank's own rules; `i` is its place among the banks (for the key's name).
    fn validate(
        &self,
        i: usize,
        dialects: &std::collections::HashMap<String, &'static codec::Dialect>,
    ) -> Result<(), Invalid> {
        let id = &self.id;
        let key = |k: &str| format!("bank.{i}.{k}");
        let Some(dialect) = dialects.get(&self.dialect) else {
            let mut known: Vec<&str> = dialects.keys().map(String::as_str).collect();
            known.sort_unstable();
            return invalid(
                key("dialect"),
                format!("bank {id}: unknown dialect; known: {}", known.join(", ")),
            );
        };
        for (k, v) in [
            ("links", self.links as u64),
            ("in_flight_per_link", self.in_flight_per_link as u64),
            ("timeout_ms", self.timeout_ms),
            ("echo_missed_max", u64::from(self.echo_missed_max)),
            ("reconnect_min_ms", self.reconnect_min_ms),
        ] {
            if v == 0 {
                return invalid(key(k), format!("bank {id}: must be at least 1"));
            }
        }
        if self.reconnect_min_ms > self.reconnect_max_ms {
            return invalid(
                key("reconnect_max_ms"),
                format!("bank {id}: must be at least reconnect_min_ms"),
            );
        }
        if let Some(h) = &self.header_hex {
            let want = usize::from(dialect.framing.header_len);
            match hex::decode(h) {
                Err(_) => return invalid(key("header_hex"), format!("bank {id}: not hex")),
                Ok(b) if b.len() != want => {
                    return invalid(
                        key("header_hex"),
                        format!("bank {id}: dialect {} needs {want} bytes", dialect.name),
                    );
                }
                Ok(_) => {}
            }
        }
        self.validate_mac(i, dialect)?;
        self.validate_transport(i)
    }

    fn validate_mac(&self, i: usize, dialect: &codec::Dialect) -> Result<(), Invalid> {
        let id = &self.id;
        let key = |k: &str| format!("bank.{i}.{k}");
        let want = match self.mac {
            BankMac::None if self.mac_key_hex.is_some() => {
                return invalid(
                    key("mac"),
                    format!("bank {id}: mac_key_hex is set: set mac too"),
                );
            }
            BankMac::None => return Ok(()),
            BankMac::X919 => codec::mac::X9_19_KEY_LEN_BYTES,
            BankMac::HmacSha256 => codec::mac::MAC_KEY_LEN_BYTES,
        };
        let Some(k) = &self.mac_key_hex else {
            return invalid(key("mac"), format!("bank {id}: needs mac_key_hex"));
        };
        if hex::decode(k.trim()).map(|k| k.len()) != Ok(want) {
            return invalid(
                key("mac_key_hex"),
                format!(
                    "bank {id}: must be {want} bytes in hex ({} characters)",
                    want * 2
                ),
            );
        }
        if dialect.mac_field(false).is_none() {
            return invalid(
                key("mac"),
                format!("bank {id}: dialect {} has no MAC element", dialect.name),
            );
        }
        Ok(())
    }

    /// Mode, addresses, certificates and breaker fit together.
    fn validate_transport(&self, i: usize) -> Result<(), Invalid> {
        let id = &self.id;
        let key = |k: &str| format!("bank.{i}.{k}");
        match (self.mode, &self.addr) {
            (BankMode::Connect, None) => {
                return invalid(
                    key("addr"),
                    format!("bank {id}: mode \"connect\" needs addr"),
                );
            }
            (BankMode::Connect, Some(a)) if !is_host_port(a) => {
                return invalid(
                    key("addr"),
                    format!("bank {id}: not host:port (a name or IP address, then a port)"),
                );
            }
            (BankMode::Listen, _) if self.listen_addr.is_none() => {
                return invalid(
                    key("listen_addr"),
                    format!("bank {id}: mode \"listen\" needs listen_addr"),
                );
            }
            _ => {}
        }
        if self.transport != BankTransport::Tcp {
            for (k, p) in [
                ("cert_pem", &self.cert_pem),
                ("key_pem", &self.key_pem),
                ("ca_pem", &self.ca_pem),
            ] {
                match p {
                    None => {
                        return invalid(key(k), format!("bank {id}: transport tls/quic needs it"));
                    }
                    Some(p) if !p.exists() => {
                        return invalid(key(k), format!("bank {id}: no such file"));
                    }
                    Some(_) => {}
                }
            }
            if self.mode == BankMode::Connect && self.server_name.is_none() {
                return invalid(
                    key("server_name"),
                    format!("bank {id}: transport tls/quic in connect mode needs it"),
                );
            }
        }
        if self.breaker_timeout_rate_percent > 100 {
            return invalid(
                key("breaker_timeout_rate_percent"),
                format!("bank {id}: must be 0..=100"),
            );
        }
        if self.breaker_timeout_rate_percent > 0 {
            for (k, v) in [
                ("breaker_window_ms", self.breaker_window_ms),
                ("breaker_open_ms", self.breaker_open_ms),
            ] {
                if v == 0 {
                    return invalid(key(k), format!("bank {id}: must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

/// `host:port` with a non-empty host (a name, an IPv4 address or a bracketed IPv6 one)
/// and a port number; whether the name resolves is only known when connecting.
pub fn is_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        }
        None => false,
    }
}

/// The value at `key` as written, and where it came from: a file's path, a variable's
/// name, or "default" when no source set it.
fn locate(figment: &Figment, key: &str) -> (String, String) {
    let Ok(value) = figment.find_value(key) else {
        return ("(not set)".into(), "default".into());
    };
    let shown = match &value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Num(_, n) => match n.to_u128() {
            Some(u) => u.to_string(),
            None => format!("{n:?}"),
        },
        Value::Bool(_, b) => b.to_string(),
        Value::Array(..) | Value::Dict(..) => "(a table or list)".into(),
        other => format!("{other:?}"),
    };
    let Some(md) = figment.get_metadata(value.tag()) else {
        return (shown, "default".into());
    };
    let parts: Vec<&str> = key.split('.').collect();
    let name = md.interpolate(&Profile::Default, &parts);
    // A variable's name says it all; a file needs its path and the key.
    let source = match &md.source {
        Some(file) => format!("{file}, key {name}"),
        None if md.name == ENV_METADATA_NAME => name,
        None => format!("{}, key {name}", md.name),
    };
    (shown, source)
}

/// The configuration file (or text) as a figment source: arrays of tables (`[[bank]]`)
/// become tables keyed by index, so a variable can reach one entry's key.
struct TomlFile {
    text: String,
    path: Option<PathBuf>,
}

impl Provider for TomlFile {
    fn metadata(&self) -> Metadata {
        let keys = |_: &Profile, keys: &[&str]| keys.join(".");
        match &self.path {
            // Custom, not a file source: figment would shorten the path relative to the
            // working directory, and the path as given is what the operator knows.
            Some(p) => Metadata::named("configuration file")
                .source(figment::Source::Custom(p.display().to_string()))
                .interpolater(keys),
            None => Metadata::named("configuration text").interpolater(keys),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut data = Toml::string(&self.text).data()?;
        for dict in data.values_mut() {
            for v in dict.values_mut() {
                index_arrays(v);
            }
        }
        Ok(data)
    }
}

/// Turns every array of tables under `v` into a table keyed "0", "1", ...
fn index_arrays(v: &mut Value) {
    match v {
        Value::Dict(_, d) => d.values_mut().for_each(index_arrays),
        Value::Array(tag, items)
            if !items.is_empty() && items.iter().all(|i| i.as_dict().is_some()) =>
        {
            let mut d = Dict::new();
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                index_arrays(&mut item);
                d.insert(i.to_string(), item);
            }
            *v = Value::Dict(*tag, d);
        }
        _ => {}
    }
}

/// `SWITCHYARD__A__B=value` variables as a figment source; each error names the variable.
struct EnvVars {
    vars: Vec<(String, String)>,
}

impl EnvVars {
    fn new(env: impl Iterator<Item = (String, String)>) -> Self {
        let vars = env
            .filter_map(|(k, v)| {
                let path = k.strip_prefix(ENV_PREFIX)?;
                let keys: Vec<String> = path
                    .split(ENV_SEPARATOR)
                    .map(str::to_ascii_lowercase)
                    .collect();
                (!keys.iter().any(String::is_empty)).then(|| (keys.join("."), v))
            })
            .collect();
        EnvVars { vars }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME).interpolater(|_: &Profile, keys: &[&str]| {
            let upper: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", upper.join(ENV_SEPARATOR))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in &self.vars {
            // Lists and tables keep their shape; numbers and flags stay text, which the
            // lossy extraction reads as a number or flag only where the key wants one (so
            // an all-digit id or hex key stays as written).
            // A quoted value is the text inside the quotes.
            let value = match raw.parse::<Value>() {
                Ok(v @ (Value::Array(..) | Value::Dict(..))) => v,
                Ok(Value::String(_, text)) if raw.trim_start().starts_with('"') => text.into(),
                _ => Value::from(raw.clone()),
            };
            insert_at(&mut dict, key, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Puts `value` at the dotted `key`, making tables on the way (a value already on the
/// way is replaced by a table: the longer key is the more specific).
fn insert_at(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((first, rest)) => {
            let slot = dict
                .entry(first.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if slot.as_dict().is_none() {
                *slot = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = slot {
                insert_at(inner, rest, value);
            }
        }
    }
}

/// A list written as an array (the file) or as a table keyed by index (after a variable
/// reached one entry), in index order.
fn indexed<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visit<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list, or a table keyed by index (0, 1, ...)")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element()? {
                out.push(v);
            }
            Ok(out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = map.next_key::<String>()? {
                let i: usize = k.parse().map_err(|_| {
                    serde::de::Error::custom(format!("`{k}` is not an index (0, 1, ...)"))
                })?;
                out.insert(i, map.next_value()?);
            }
            Ok(out.into_values().collect())
        }
    }
    de.deserialize_any(Visit(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one bank, for tests to extend.
    pub(super) const MIN: &str = r#"
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

    // Proves the runtime defaults to one thread per core and refuses absurd thread counts
    // by name.
    #[test]
    fn runtime_threads_bounded() {
        let c = Config::from_toml_with_env(MIN, std::iter::empty()).unwrap();
        assert_eq!(c.switch.runtime_threads, 0);
        let env = |v: &str| {
            [(
                "SWITCHYARD__SWITCH__RUNTIME_THREADS".to_string(),
                v.to_string(),
            )]
            .into_iter()
        };
        let c = Config::from_toml_with_env(MIN, env("1")).unwrap();
        assert_eq!(c.switch.runtime_threads, 1);
        let e = Config::from_toml_with_env(MIN, env("100000")).unwrap_err();
        assert!(e.to_string().contains("switch.runtime_threads"), "{e}");
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
mod layered_tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Two banks: `a` (bank-bcd-v1, an IP address) and `b` (bank-ebcdic-v1, a host name).
    fn two_banks() -> String {
        format!(
            "{}[[bank]]\nid = \"b\"\ndialect = \"bank-ebcdic-v1\"\naddr = \"bank-b.internal:35151\"\nacquirer_id = \"2\"\n",
            super::tests::MIN
        )
    }

    // Proves a variable reaches one key of one [[bank]] entry (the rest of the entry and
    // the other banks stay as the file has them), keeps digits and hex as text, and can
    // add a bank the file does not have.
    #[test]
    fn env_overrides_a_bank_field() {
        let env = vars(&[
            ("SWITCHYARD__BANK__1__ADDR", "localhost:35152"),
            ("SWITCHYARD__BANK__1__TIMEOUT_MS", "1500"),
            ("SWITCHYARD__BANK__0__ACQUIRER_ID", "000123"),
            ("SWITCHYARD__BANK__0__MAC", "x9.19"),
            (
                "SWITCHYARD__BANK__0__MAC_KEY_HEX",
                "0123456789ABCDEFFEDCBA9876543210",
            ),
            ("SWITCHYARD__BANK__2__ID", "c"),
            ("SWITCHYARD__BANK__2__DIALECT", "bank-bcd-v1"),
            ("SWITCHYARD__BANK__2__ADDR", "10.0.0.3:1"),
            ("SWITCHYARD__BANK__2__ACQUIRER_ID", "3"),
        ]);
        let c = Config::from_toml_with_env(&two_banks(), env).unwrap();
        assert_eq!(c.banks.len(), 3);
        assert_eq!(c.banks[0].acquirer_id, "000123");
        assert_eq!(c.banks[0].mac, BankMac::X919);
        assert!(c.banks[0].mac_key().is_some());
        assert_eq!(c.banks[1].id, "b");
        assert_eq!(c.banks[1].addr.as_deref(), Some("localhost:35152"));
        assert_eq!(c.banks[1].timeout_ms, 1500);
        assert_eq!(c.banks[1].dialect, "bank-ebcdic-v1");
        assert_eq!(c.banks[2].id, "c");
        let c = Config::from_toml_with_env(
            &two_banks(),
            vars(&[
                ("SWITCHYARD__ADMIN__ADDR", "127.0.0.1:0"),
                (
                    "SWITCHYARD__ADMIN__TOKENS__0__TOKEN",
                    "abcdefghijklmnopqrstuvwxyz",
                ),
                ("SWITCHYARD__ADMIN__TOKENS__0__ROLE", "viewer"),
            ]),
        )
        .unwrap();
        assert_eq!(c.admin.unwrap().tokens.len(), 1);
    }

    // Proves an error names the variable, the key and the value when a variable is to
    // blame, and the file's key and value when the file is.
    #[test]
    fn errors_name_source_key_and_value() {
        let e =
            Config::from_toml_with_env(&two_banks(), vars(&[("SWITCHYARD__BANK__1__LINKS", "0")]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("SWITCHYARD__BANK__1__LINKS"), "{e}");
        assert!(e.contains("bank.1.links = \"0\""), "{e}");
        let e = Config::from_toml_with_env(
            &two_banks(),
            vars(&[("SWITCHYARD__BANK__0__TIMEOUT_MS", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SWITCHYARD__BANK__0__TIMEOUT_MS") && e.contains("soon"),
            "{e}"
        );
        let e = Config::from_toml_with_env(
            &two_banks().replace("bank-ebcdic-v1", "bank-nope-v9"),
            std::iter::empty(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bank.1.dialect = \"bank-nope-v9\""), "{e}");
        assert!(e.contains("configuration text, key bank.1.dialect"), "{e}");
        assert!(e.contains("unknown dialect"), "{e}");
        let e = Config::from_toml_with_env(
            &two_banks().replace("bank-b.internal:35151", "bank-b.internal"),
            std::iter::empty(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bank.1.addr = \"bank-b.internal\""), "{e}");
        let e = Config::from_toml_with_env(
            &two_banks(),
            vars(&[
                ("SWITCHYARD__BANK__0__MAC", "x9.19"),
                ("SWITCHYARD__BANK__0__MAC_KEY_HEX", "00"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SWITCHYARD__BANK__0__MAC_KEY_HEX") && e.contains("16 bytes"),
            "{e}"
        );
    }

    // Proves addresses may be host names or IP addresses with a port, nothing else.
    #[test]
    fn host_port_syntax() {
        for ok in [
            "localhost:35151",
            "bank-a.svc.cluster.local:1",
            "127.0.0.1:9",
            "[::1]:9",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in ["localhost", ":9", "host:port", "a b:9", "host:70000"] {
            assert!(!is_host_port(bad), "{bad}");
        }
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
