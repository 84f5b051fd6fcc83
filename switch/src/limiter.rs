//! Redis: one script call per request that looks up the idempotency key, applies the
//! merchant's rate limit and the card velocity rule, and claims the key, atomically.
//!
//! Redis is the fast path only. If it is lost (flushed, restarted, unreachable) the
//! PostgreSQL unique constraints still stop a second charge; while it is unreachable the
//! limits follow `[redis] limits_on_outage` (`fail_open`: not enforced; `fail_closed`: new
//! requests refused), logged and counted ([`crate::engine`]).

use std::time::Duration;

use redis::RedisFuture;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, Script, ServerErrorKind};

use crate::config::RateAlgorithm;

/// The script. KEYS: idempotency key, merchant rate key, card velocity key.
/// ARGV: mode ("full" or "lookup"), now in microseconds, claim TTL in ms, claim value,
/// algorithm ("gcra" or "bucket"), merchant interval and tolerance in microseconds, card
/// interval and tolerance in microseconds (interval 0 disables), answer TTL in ms, the
/// request's content digest (hex, kept with a refusal).
/// Returns {0} claimed, {1, value} known, {2, "merchant"|"card"} limited (the refusal is
/// stored as the known answer, so a retransmission gets it again).
const SCRIPT: &str = r#"
local known = redis.call('GET', KEYS[1])
if known then return {1, known} end
if ARGV[1] == 'lookup' then return {3} end
local now = tonumber(ARGV[2])
-- Each check returns whether the request fits and a function that records it, so
-- nothing is recorded unless every check passes.
local function check(key, interval, tolerance)
  if interval <= 0 then return true, function() end end
  local ttl = math.ceil((tolerance + interval) / 1000) + 1000
  if ARGV[5] == 'gcra' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    if tat - now > tolerance then return false, nil end
    return true, function() redis.call('SET', key, tat + interval, 'PX', ttl) end
  else
    -- token bucket: capacity = burst tokens, refilled one per interval
    local cap = tolerance / interval + 1
    local b = redis.call('HMGET', key, 't', 'ts')
    local tokens = tonumber(b[1]) or cap
    local ts = tonumber(b[2]) or now
    tokens = math.min(cap, tokens + (now - ts) / interval)
    if tokens < 1 then return false, nil end
    return true, function()
      redis.call('HSET', key, 't', tokens - 1, 'ts', now)
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
local m_ok, m_commit = check(KEYS[2], tonumber(ARGV[6]), tonumber(ARGV[7]))
if not m_ok then
  redis.call('SET', KEYS[1], 'A|65|||' .. ARGV[11], 'PX', ARGV[10])
  return {2, 'merchant'}
end
local c_ok, c_commit = check(KEYS[3], tonumber(ARGV[8]), tonumber(ARGV[9]))
if not c_ok then
  redis.call('SET', KEYS[1], 'A|65|||' .. ARGV[11], 'PX', ARGV[10])
  return {2, 'card'}
end
m_commit()
c_commit()
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
return {0}
"#;

/// Arguments of the claim's call: `EVALSHA`, the script's hash, the key count, the three
/// keys and the eleven values of [`SCRIPT`].
const CLAIM_CMD_ARGS: usize = 17;

/// Bytes reserved for the claim's call: the hash (40), the keys (prefix, merchant, request
/// key, card hash: about 150), the claim value and the content digest (about 120) and the
/// numbers, with room to spare; a longer call grows its buffer once.
const CLAIM_CMD_BYTES: usize = 512;

/// Compare-and-set of a claim. KEYS: idempotency key. ARGV: the value expected, the new
/// value, its TTL in ms. Returns 1 if replaced, 0 if the key held something else.
const TAKE_OVER_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// A rate: `per_s` on average with bursts of `burst`, as interval and tolerance in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval_us: u64,
    pub tolerance_us: u64,
}

impl Rate {
    /// `count` requests per `period_us`, bursting to `burst`. A zero count disables.
    pub fn new(count: u32, period_us: u64, burst: u32) -> Rate {
        if count == 0 {
            return Rate {
                interval_us: 0,
                tolerance_us: 0,
            };
        }
        let interval_us = (period_us / u64::from(count)).max(1);
        Rate {
            interval_us,
            tolerance_us: interval_us * u64::from(burst.saturating_sub(1)),
        }
    }
}

/// A change to a request key once its answer is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyWrite {
    /// Keep this answer (its Redis form) under the key, for retransmissions.
    Store(String, String),
    /// Free the key: the answer said nothing was recorded, so a retry is processed afresh.
    Release(String),
}

/// What the script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now claimed by this request.
    Claimed,
    /// Someone holds the key: its value (an answer `A|..` or an in-flight claim `P|..`).
    Known(String),
    /// Over the merchant's rate (`merchant`) or the card velocity (`card`).
    Limited(&'static str),
    /// Lookup only, nothing known.
    Unknown,
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis answered something unexpected")]
    Unexpected,
    /// The in-memory claims are set unreachable (simulation).
    #[error("claims unreachable")]
    Unreachable,
}

/// One Redis server (reconnecting) or a Redis Cluster (routing each call by its keys'
/// hash slot; every script call's keys share one slot, see [`Limiter::k_into`]).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis side of a request.
#[derive(Clone)]
pub struct Limiter {
    conn: Conn,
    script: Script,
    take_over_script: Script,
    prefix: String,
    algorithm: RateAlgorithm,
    claim_ttl_ms: u64,
    answer_ttl_ms: u64,
    timeout_ms: u64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// One request's inputs to the script.
#[derive(Debug)]
pub struct ClaimRequest<'a> {
    pub key: &'a str,
    pub merchant_id: &'a str,
    pub card_hash_hex: &'a str,
    pub merchant_rate: Rate,
    pub card_rate: Rate,
    pub claim_value: &'a str,
    /// The request's content digest in hex, kept with a rate-limit refusal.
    pub content_hex: &'a str,
    pub now_us: u64,
    /// Only look the key up (the request will be refused locally anyway).
    pub lookup_only: bool,
}

impl Limiter {
    /// Connects to one server at `url`, or to the Redis Cluster that `cluster_nodes`
    /// (`redis://host:port` URLs of some of its nodes) belong to when it is not empty.
    pub async fn connect(
        url: &str,
        cluster_nodes: &[String],
        prefix: String,
        algorithm: RateAlgorithm,
        claim_ttl_ms: u64,
        answer_ttl_ms: u64,
        timeout_ms: u64,
    ) -> Result<Limiter, LimiterError> {
        let connect_timeout = Duration::from_millis(timeout_ms.max(100) * 4);
        let conn = if cluster_nodes.is_empty() {
            let client = redis::Client::open(url)?;
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(Duration::from_millis(timeout_ms)))
                .set_number_of_retries(1);
            Conn::Single(ConnectionManager::new_with_config(client, cfg).await?)
        } else {
            let client = ClusterClient::builder(cluster_nodes.iter().map(String::as_str))
                .connection_timeout(connect_timeout)
                .response_timeout(Duration::from_millis(timeout_ms))
                .retries(1)
                .build()?;
            Conn::Cluster(client.get_async_connection().await?)
        };
        Ok(Limiter {
            conn,
            script: Script::new(SCRIPT),
            take_over_script: Script::new(TAKE_OVER_SCRIPT),
            prefix,
            algorithm,
            claim_ttl_ms,
            answer_ttl_ms,
            timeout_ms,
        })
    }

    /// The idempotency key's Redis key. A request key starts with its merchant
    /// (`engine::request_key`: `merchant|terminal|stan|de7|mti`), which becomes the tag.
    fn idem_key(&self, request_key: &str) -> String {
        let mut k = String::new();
        self.idem_key_into(&mut k, request_key);
        k
    }

    /// [`Limiter::idem_key`] written over `out`.
    fn idem_key_into(&self, out: &mut String, request_key: &str) {
        let (merchant_id, rest) = request_key.split_once('|').unwrap_or((request_key, ""));
        self.k_into(out, "idem", merchant_id, rest);
    }

    /// A key of one merchant's, `{prefix}{kind}:{{merchant}}:{rest}`, written over `out`
    /// (which keeps its room for the next key). Every key one script call touches carries
    /// the merchant as its hash tag, so they share a Redis Cluster slot and the script runs
    /// unchanged on a cluster (Redis Cluster specification, "Hash tags"). The card
    /// velocity rule therefore counts a card's requests per merchant.
    fn k_into(&self, out: &mut String, kind: &str, merchant_id: &str, rest: &str) {
        out.clear();
        out.reserve(self.prefix.len() + kind.len() + merchant_id.len() + rest.len() + 4);
        out.push_str(&self.prefix);
        out.push_str(kind);
        out.push_str(":{");
        out.push_str(merchant_id);
        out.push_str("}:");
        out.push_str(rest);
    }

    /// The claim's `EVALSHA` of [`SCRIPT`], written straight into one command buffer: the
    /// script's invocation builder keeps each key and argument in an allocation of its own
    /// and copies them again into the command (about 20 allocations per purchase,
    /// callgrind 2026-12-03, docs/loadtest.md).
    fn claim_cmd(&self, r: &ClaimRequest<'_>) -> redis::Cmd {
        let mut cmd = redis::Cmd::with_capacity(CLAIM_CMD_ARGS, CLAIM_CMD_BYTES);
        cmd.arg("EVALSHA").arg(self.script.get_hash()).arg(3);
        let mut key = String::new();
        self.idem_key_into(&mut key, r.key);
        cmd.arg(key.as_str());
        self.k_into(&mut key, "rl:m", r.merchant_id, "");
        cmd.arg(key.as_str());
        self.k_into(&mut key, "rl:c", r.merchant_id, r.card_hash_hex);
        cmd.arg(key.as_str())
            .arg(if r.lookup_only { "lookup" } else { "full" })
            .arg(r.now_us)
            .arg(self.claim_ttl_ms)
            .arg(r.claim_value)
            .arg(match self.algorithm {
                RateAlgorithm::Gcra => "gcra",
                RateAlgorithm::TokenBucket => "bucket",
            })
            .arg(r.merchant_rate.interval_us)
            .arg(r.merchant_rate.tolerance_us)
            .arg(r.card_rate.interval_us)
            .arg(r.card_rate.tolerance_us)
            .arg(self.answer_ttl_ms)
            .arg(r.content_hex);
        debug_assert_eq!(cmd.args_iter().count(), CLAIM_CMD_ARGS);
        cmd
    }

    /// Looks the key up, applies the limits and claims the key, in one script call. If
    /// Redis has lost its scripts (a restart, `SCRIPT FLUSH`: `NOSCRIPT`), loads the
    /// script and calls again, all within the one `timeout_ms`. Errors: Redis's, past
    /// `timeout_ms` ([`LimiterError::Timeout`]), a reply that is not the script's.
    pub async fn claim(&self, r: &ClaimRequest<'_>) -> Result<Claim, LimiterError> {
        let mut conn = self.conn.clone();
        let cmd = self.claim_cmd(r);
        let call = async {
            match cmd.query_async::<redis::Value>(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    self.script.load_async(&mut conn).await?;
                    cmd.query_async::<redis::Value>(&mut conn).await
                }
                v => v,
            }
        };
        parse_reply(self.timed(call).await?)
    }

    /// `PING`, within the call timeout: whether Redis answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), LimiterError> {
        let mut conn = self.conn.clone();
        self.timed(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }

    /// Stores the final answer for a key (replacing the in-flight claim).
    pub async fn store_answer(&self, key: &str, value: &str) -> Result<(), LimiterError> {
        self.store_answers(&[(key.to_owned(), value.to_owned())])
            .await
    }

    /// Runs one Redis call within `timeout_ms`; past it Redis counts as unavailable.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, LimiterError> {
        let limit = Duration::from_millis(self.timeout_ms);
        Ok(tokio::time::timeout(limit, call)
            .await
            .map_err(|_| LimiterError::Timeout(self.timeout_ms))??)
    }

    /// Stores answers under their keys, as [`Limiter::store_answer`] does one, in one
    /// pipelined round trip (each key in its own merchant's slot on a cluster).
    pub async fn store_answers(&self, answers: &[(String, String)]) -> Result<(), LimiterError> {
        let writes: Vec<KeyWrite> = answers
            .iter()
            .map(|(k, v)| KeyWrite::Store(k.clone(), v.clone()))
            .collect();
        self.write_keys(&writes).await
    }

    /// Applies `writes` to their keys in one pipelined round trip: answers stored (with
    /// `answer_ttl_ms`), claims released.
    pub async fn write_keys(&self, writes: &[KeyWrite]) -> Result<(), LimiterError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for w in writes {
            match w {
                KeyWrite::Store(key, value) => pipe
                    .cmd("SET")
                    .arg(self.idem_key(key))
                    .arg(value)
                    .arg("PX")
                    .arg(self.answer_ttl_ms)
                    .ignore(),
                KeyWrite::Release(key) => pipe.cmd("DEL").arg(self.idem_key(key)).ignore(),
            };
        }
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Replaces the claim `dead` (left by a process that is gone) with `value`, if the
    /// key still holds exactly `dead`: true when it did. One compare-and-set script call.
    pub async fn take_over(
        &self,
        key: &str,
        dead: &str,
        value: &str,
    ) -> Result<bool, LimiterError> {
        let mut conn = self.conn.clone();
        let mut inv = self.take_over_script.prepare_invoke();
        inv.key(self.idem_key(key))
            .arg(dead)
            .arg(value)
            .arg(self.claim_ttl_ms);
        let swapped = self.timed(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(swapped == 1)
    }

    /// Drops a claim (the request could not be recorded; a retry must be processed afresh).
    pub async fn release(&self, key: &str) -> Result<(), LimiterError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("DEL").arg(self.idem_key(key)).to_owned();
        self.timed(cmd.query_async::<()>(&mut conn)).await
    }
}

/// The idempotency claims and limits as the request path uses them: [`Limiter`] in
/// Redis, [`crate::mem::MemClaims`] in memory (the simulation's). Both pass the same
/// contract tests (`tests/tests/claims_contract.rs`).
#[async_trait::async_trait]
pub trait Claims: Send + Sync + std::fmt::Debug {
    /// Looks the key up, applies the limits and claims the key, atomically.
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<Claim, LimiterError>;
    /// Replaces the claim `dead` with `value` if the key holds exactly `dead`.
    async fn take_over(&self, key: &str, dead: &str, value: &str) -> Result<bool, LimiterError>;
    /// Applies `writes` (answers kept for the answer TTL, claims released).
    async fn write_keys(&self, writes: &[KeyWrite]) -> Result<(), LimiterError>;
}

#[async_trait::async_trait]
impl Claims for Limiter {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<Claim, LimiterError> {
        Limiter::claim(self, r).await
    }

    async fn take_over(&self, key: &str, dead: &str, value: &str) -> Result<bool, LimiterError> {
        Limiter::take_over(self, key, dead, value).await
    }

    async fn write_keys(&self, writes: &[KeyWrite]) -> Result<(), LimiterError> {
        Limiter::write_keys(self, writes).await
    }
}

fn parse_reply(v: redis::Value) -> Result<Claim, LimiterError> {
    use redis::Value as V;
    let V::Array(items) = v else {
        return Err(LimiterError::Unexpected);
    };
    let code = match items.first() {
        Some(V::Int(c)) => *c,
        _ => return Err(LimiterError::Unexpected),
    };
    let text = |i: usize| match items.get(i) {
        Some(V::BulkString(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
        Some(V::SimpleString(s)) => Ok(s.clone()),
        _ => Err(LimiterError::Unexpected),
    };
    match code {
        0 => Ok(Claim::Claimed),
        1 => Ok(Claim::Known(text(1)?)),
        2 => Ok(Claim::Limited(if text(1)? == "card" {
            "card"
        } else {
            "merchant"
        })),
        3 => Ok(Claim::Unknown),
        _ => Err(LimiterError::Unexpected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves rate parameters: 100/s with burst 10 is a 10 ms interval and 90 ms tolerance.
    #[test]
    fn rate_params() {
        assert_eq!(
            Rate::new(100, 1_000_000, 10),
            Rate {
                interval_us: 10_000,
                tolerance_us: 90_000
            }
        );
        assert_eq!(Rate::new(0, 1_000_000, 10).interval_us, 0);
        assert_eq!(Rate::new(600, 60_000_000, 1).tolerance_us, 0);
    }
}
