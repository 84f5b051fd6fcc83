//! Prometheus metrics. Label sets are bounded: MTIs and response codes are from the
//! contract's short lists, links and banks from configuration; never card numbers or ids.
//! Every labelled series whose label values are known in advance exists from the start
//! (at zero), so `rate()` and `increase()` see its first event. Names follow Prometheus
//! conventions: a `switchyard_` prefix, base units (seconds, bytes), `_total` on counters;
//! the process collector's standard `process_*` series come without the prefix.

use bank_links::LinkState;
use codec::Mti;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Journal batch sizes.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// The `mti` label of a request: only request MTIs of the contract become label values,
/// so the label set stays bounded.
pub fn mti_label(mti: Option<Mti>) -> &'static str {
    match mti {
        Some(Mti::NETWORK_REQUEST) => "0800",
        Some(Mti::AUTHORISATION_REQUEST) => "0100",
        Some(Mti::FINANCIAL_REQUEST) => "0200",
        Some(Mti::COMPLETION_ADVICE) => "0220",
        Some(Mti::REVERSAL_REQUEST) => "0400",
        Some(Mti::STATUS_REQUEST) => "0600",
        _ => "other",
    }
}

/// Every value [`mti_label`] returns.
pub const MTI_LABELS: [&str; 7] = ["0800", "0100", "0200", "0220", "0400", "0600", "other"];
/// Response codes of `requests_total` that exist for every request MTI from the start.
pub const INITIAL_RCS: [&str; 3] = ["00", "91", "96"];
/// The `rule` label of `rate_limit_refusals_total` (the limiter's rules).
pub const RATE_LIMIT_RULES: [&str; 2] = ["merchant", "card"];
/// The `reason` label of `merchant_mac_failures_total` (the contract's MAC checks).
pub const MAC_FAILURE_REASONS: [&str; 3] = ["missing", "invalid", "misplaced"];
/// The `reason` label of `admin_auth_failures_total`: no or an unknown bearer token
/// (HTTP 401), or a token whose role does not allow the action (HTTP 403).
pub const ADMIN_AUTH_FAILURE_REASONS: [&str; 2] = ["unauthenticated", "forbidden"];
/// The `outcome` label of `admin_logins_total` (back-office logins, issue 12).
pub const ADMIN_LOGIN_OUTCOMES: [&str; 3] = ["success", "failure", "locked"];
/// The `state` label of `postgres_pool_connections`.
pub const POOL_STATES: [&str; 2] = ["idle", "in_use"];
/// The `state` label of `bank_link_state`: every state of the link state machine.
pub const LINK_STATES: [LinkState; 5] = [
    LinkState::Connecting,
    LinkState::SigningOn,
    LinkState::Ready,
    LinkState::Draining,
    LinkState::Down,
];

/// Every metric of a switch instance.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub switch_latency: HistogramVec,
    pub bank_round_trip: HistogramVec,
    pub in_flight: IntGauge,
    pub merchant_connections: IntGauge,
    pub link_state: IntGaugeVec,
    pub link_in_flight: IntGaugeVec,
    pub link_queue_depth: IntGaugeVec,
    pub reversals_pending: IntGaugeVec,
    /// Reversals and advices that reached `reversal_max_age_ms` unacknowledged, by bank.
    pub reversals_expired: IntCounterVec,
    pub reversals_oldest_age: IntGaugeVec,
    pub journal_batch_size: Histogram,
    pub journal_commit: Histogram,
    pub journal_failures: IntCounter,
    pub redis_latency: Histogram,
    pub redis_errors: IntCounter,
    /// Instances taken over after their lease expired.
    pub lease_takeovers: IntCounter,
    /// Requests handled while Redis was unreachable, by what became of the limits
    /// (`limits="skipped"` under `fail_open`, `"refused"` under `fail_closed`).
    pub redis_outage_requests: IntCounterVec,
    pub idempotency_replays: IntCounter,
    pub rate_limit_refusals: IntCounterVec,
    pub bank_timeouts: IntCounterVec,
    pub late_answers: IntCounterVec,
    pub merchant_mac_failures: IntCounterVec,
    pub admin_auth_failures: IntCounterVec,
    pub admin_logins: IntCounterVec,
    pub admin_new_address_logins: IntCounter,
    pub notifications_pending: IntGauge,
    pub notifications_oldest_age: IntGauge,
    pub pool_connections: IntGaugeVec,
    pub pool_max: IntGauge,
    pub pool_waiting: IntGauge,
    pub postgres_probe: Histogram,
    pub postgres_probe_failures: IntCounter,
    pub build_info: IntGaugeVec,
    /// `process_*` (CPU, memory, file descriptors, threads, start time), unprefixed as
    /// Prometheus' conventions have them: a registry of its own.
    pub process: Registry,
    /// Bank messages dropped for a missing or wrong MAC, by bank: a security signal
    /// (tampering on the link, or keys that differ).
    pub bank_mac_failures: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn hist(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid histogram")
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("switchyard".into()), None).expect("registry");
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "requests_total",
                    "Merchant requests answered, by request MTI and response code",
                ),
                &["mti", "rc"],
            )
            .expect("metric"),
            switch_latency: hist(
                "switch_latency_seconds",
                "Time the switch adds to a request: from its last byte to its answer, less the bank's round trip",
                &["mti"],
                &LATENCY_BUCKETS_S,
            ),
            bank_round_trip: hist(
                "bank_round_trip_seconds",
                "Bank round trip of a request",
                &["bank"],
                &LATENCY_BUCKETS_S,
            ),
            in_flight: IntGauge::new("in_flight_requests", "Merchant requests being processed")
                .expect("metric"),
            merchant_connections: IntGauge::new(
                "merchant_connections",
                "Open merchant connections",
            )
            .expect("metric"),
            link_state: IntGaugeVec::new(
                Opts::new("bank_link_state", "1 for the state each bank link is in"),
                &["link", "state"],
            )
            .expect("metric"),
            link_in_flight: IntGaugeVec::new(
                Opts::new("bank_link_in_flight", "Requests in flight on a bank link"),
                &["link"],
            )
            .expect("metric"),
            link_queue_depth: IntGaugeVec::new(
                Opts::new(
                    "bank_link_queue_depth",
                    "Requests and answers queued for a bank link's task",
                ),
                &["link"],
            )
            .expect("metric"),
            reversals_expired: IntCounterVec::new(
                Opts::new(
                    "reversals_expired_total",
                    "Reversals and advices given up unacknowledged after reversal_max_age_ms",
                ),
                &["bank"],
            )
            .expect("metric"),
            reversals_pending: IntGaugeVec::new(
                Opts::new(
                    "reversals_pending",
                    "Reversals stored and not yet acknowledged",
                ),
                &["bank"],
            )
            .expect("metric"),
            reversals_oldest_age: IntGaugeVec::new(
                Opts::new(
                    "reversals_oldest_age_seconds",
                    "Age of the oldest unacknowledged reversal",
                ),
                &["bank"],
            )
            .expect("metric"),
            journal_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "journal_batch_size",
                    "Records written in one journal commit",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )
            .expect("metric"),
            journal_commit: Histogram::with_opts(
                HistogramOpts::new("journal_commit_seconds", "Time of one journal commit")
                    .buckets(LATENCY_BUCKETS_S.to_vec()),
            )
            .expect("metric"),
            journal_failures: IntCounter::new(
                "journal_failures_total",
                "Journal batches that could not be written",
            )
            .expect("metric"),
            redis_latency: Histogram::with_opts(
                HistogramOpts::new("redis_seconds", "Time of one Redis call")
                    .buckets(LATENCY_BUCKETS_S.to_vec()),
            )
            .expect("metric"),
            redis_errors: IntCounter::new(
                "redis_errors_total",
                "Redis calls that failed or timed out",
            )
            .expect("metric"),
            lease_takeovers: IntCounter::new(
                "lease_takeovers_total",
                "Instances taken over by this one after their lease expired",
            )
            .expect("metric"),
            redis_outage_requests: IntCounterVec::new(
                Opts::new(
                    "redis_outage_requests_total",
                    "Requests handled while Redis was unreachable, by what became of the limits",
                ),
                &["limits"],
            )
            .expect("metric"),
            idempotency_replays: IntCounter::new(
                "idempotency_replays_total",
                "Retransmissions answered from the record",
            )
            .expect("metric"),
            rate_limit_refusals: IntCounterVec::new(
                Opts::new(
                    "rate_limit_refusals_total",
                    "Requests refused with 65, by rule",
                ),
                &["rule"],
            )
            .expect("metric"),
            bank_timeouts: IntCounterVec::new(
                Opts::new("bank_timeouts_total", "Bank requests without an answer"),
                &["bank"],
            )
            .expect("metric"),
            late_answers: IntCounterVec::new(
                Opts::new(
                    "bank_late_answers_total",
                    "Bank answers that came after their request was resolved",
                ),
                &["link"],
            )
            .expect("metric"),
            merchant_mac_failures: IntCounterVec::new(
                Opts::new(
                    "merchant_mac_failures_total",
                    "Merchant requests refused for their MAC (a security signal), by reason",
                ),
                &["reason"],
            )
            .expect("metric"),
            admin_auth_failures: IntCounterVec::new(
                Opts::new(
                    "admin_auth_failures_total",
                    "Admin HTTP requests refused 401 (unauthenticated) or 403 (forbidden)",
                ),
                &["reason"],
            )
            .expect("metric"),
            admin_logins: IntCounterVec::new(
                Opts::new(
                    "admin_logins_total",
                    "Back-office login attempts: success, failure (bad password or code), locked (refused while locked)",
                ),
                &["outcome"],
            )
            .expect("metric"),
            admin_new_address_logins: IntCounter::new(
                "admin_new_address_logins_total",
                "Back-office logins from an address not seen before for that account",
            )
            .expect("metric"),
            notifications_pending: IntGauge::new(
                "notifications_pending",
                "Merchant notifications (0620) stored and not yet acknowledged (0630)",
            )
            .expect("metric"),
            notifications_oldest_age: IntGauge::new(
                "notifications_oldest_age_seconds",
                "Age of the oldest unacknowledged merchant notification (0 when none)",
            )
            .expect("metric"),
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    "postgres_pool_connections",
                    "PostgreSQL connections of the request pool, by state (idle, in_use)",
                ),
                &["state"],
            )
            .expect("metric"),
            pool_max: IntGauge::new(
                "postgres_pool_max_connections",
                "The request pool's size limit (database.pool_size)",
            )
            .expect("metric"),
            pool_waiting: IntGauge::new(
                "postgres_pool_waiting",
                "Tasks waiting for a PostgreSQL connection of the request pool",
            )
            .expect("metric"),
            postgres_probe: Histogram::with_opts(
                HistogramOpts::new(
                    "postgres_probe_seconds",
                    "Time of the periodic probe query (SELECT 1 on a pooled connection)",
                )
                .buckets(LATENCY_BUCKETS_S.to_vec()),
            )
            .expect("metric"),
            postgres_probe_failures: IntCounter::new(
                "postgres_probe_failures_total",
                "Probe queries that failed or found no connection",
            )
            .expect("metric"),
            build_info: IntGaugeVec::new(
                Opts::new(
                    "build_info",
                    "Always 1; the labels say which build this instance runs",
                ),
                &["version", "profile"],
            )
            .expect("metric"),
            process: process_registry(),
            bank_mac_failures: IntCounterVec::new(
                Opts::new(
                    "bank_mac_failures_total",
                    "Bank messages dropped because their MAC was missing or wrong",
                ),
                &["bank"],
            )
            .expect("metric"),
            registry: r,
        };
        let reg = &m.registry;
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.requests.clone()),
            Box::new(m.switch_latency.clone()),
            Box::new(m.bank_round_trip.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.merchant_connections.clone()),
            Box::new(m.link_state.clone()),
            Box::new(m.link_in_flight.clone()),
            Box::new(m.link_queue_depth.clone()),
            Box::new(m.reversals_pending.clone()),
            Box::new(m.reversals_expired.clone()),
            Box::new(m.reversals_oldest_age.clone()),
            Box::new(m.journal_batch_size.clone()),
            Box::new(m.journal_commit.clone()),
            Box::new(m.journal_failures.clone()),
            Box::new(m.redis_latency.clone()),
            Box::new(m.redis_errors.clone()),
            Box::new(m.redis_outage_requests.clone()),
            Box::new(m.lease_takeovers.clone()),
            Box::new(m.idempotency_replays.clone()),
            Box::new(m.rate_limit_refusals.clone()),
            Box::new(m.bank_timeouts.clone()),
            Box::new(m.late_answers.clone()),
            Box::new(m.merchant_mac_failures.clone()),
            Box::new(m.admin_auth_failures.clone()),
            Box::new(m.admin_logins.clone()),
            Box::new(m.admin_new_address_logins.clone()),
            Box::new(m.notifications_pending.clone()),
            Box::new(m.notifications_oldest_age.clone()),
            Box::new(m.pool_connections.clone()),
            Box::new(m.pool_max.clone()),
            Box::new(m.pool_waiting.clone()),
            Box::new(m.postgres_probe.clone()),
            Box::new(m.postgres_probe_failures.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.bank_mac_failures.clone()),
        ];
        for c in all {
            reg.register(c).expect("metric names are unique");
        }
        m.init_fixed_labels();
        m
    }

    /// Series whose label values this build knows: at zero until their first event.
    fn init_fixed_labels(&self) {
        for limits in ["skipped", "refused"] {
            self.redis_outage_requests.with_label_values(&[limits]);
        }
        for mti in MTI_LABELS {
            self.switch_latency.with_label_values(&[mti]);
        }
        // The codes the error-ratio alert divides by and counts: approved, and the
        // switch's own failures (91 bank unavailable, 96 system malfunction). Other codes
        // appear with their first answer.
        for mti in &MTI_LABELS[..MTI_LABELS.len() - 1] {
            for rc in INITIAL_RCS {
                self.requests.with_label_values(&[mti, rc]);
            }
        }
        for rule in RATE_LIMIT_RULES {
            self.rate_limit_refusals.with_label_values(&[rule]);
        }
        for reason in MAC_FAILURE_REASONS {
            self.merchant_mac_failures.with_label_values(&[reason]);
        }
        for reason in ADMIN_AUTH_FAILURE_REASONS {
            self.admin_auth_failures.with_label_values(&[reason]);
        }
        for outcome in ADMIN_LOGIN_OUTCOMES {
            self.admin_logins.with_label_values(&[outcome]);
        }
        for state in POOL_STATES {
            self.pool_connections.with_label_values(&[state]);
        }
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), profile])
            .set(1);
    }

    /// Series labelled by bank or link, from the configuration: `banks` holds each bank's
    /// id and its links' names (`<bank>.<index>`). Call once the banks are known.
    pub fn init_bank_labels(&self, banks: &[(&str, Vec<&str>)]) {
        for (bank, links) in banks {
            self.bank_round_trip.with_label_values(&[bank]);
            self.bank_timeouts.with_label_values(&[bank]);
            self.reversals_pending.with_label_values(&[bank]);
            self.reversals_oldest_age.with_label_values(&[bank]);
            for link in links {
                self.late_answers.with_label_values(&[link]);
                self.link_in_flight.with_label_values(&[link]);
                self.link_queue_depth.with_label_values(&[link]);
                for state in LINK_STATES {
                    // Every link starts connecting.
                    let v = i64::from(state == LinkState::Connecting);
                    self.link_state
                        .with_label_values(&[link, state.as_str()])
                        .set(v);
                }
            }
        }
    }

    /// The text exposition format: the switch's metrics, then the process's.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A registry holding the process collector (Linux only: it reads /proc).
fn process_registry() -> Registry {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("process collector registers once");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves metrics render with the switchyard_ prefix and unit suffixes.
    #[test]
    fn renders() {
        let m = Metrics::new();
        m.requests.with_label_values(&["0200", "00"]).inc();
        m.switch_latency
            .with_label_values(&["0200"])
            .observe(0.0004);
        let text = m.render();
        assert!(
            text.contains("switchyard_requests_total{mti=\"0200\",rc=\"00\"} 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_switch_latency_seconds_bucket"));
    }

    // Proves labelled series exist at zero before their first event: the fixed label
    // values at construction, banks and links once they are known.
    #[test]
    fn known_labels_start_at_zero() {
        let m = Metrics::new();
        m.init_bank_labels(&[("bank-a", vec!["bank-a.0", "bank-a.1"])]);
        let text = m.render();
        for series in [
            r#"switchyard_rate_limit_refusals_total{rule="card"} 0"#,
            r#"switchyard_merchant_mac_failures_total{reason="missing"} 0"#,
            r#"switchyard_admin_auth_failures_total{reason="forbidden"} 0"#,
            r#"switchyard_requests_total{mti="0400",rc="91"} 0"#,
            r#"switchyard_bank_timeouts_total{bank="bank-a"} 0"#,
            r#"switchyard_bank_late_answers_total{link="bank-a.1"} 0"#,
            r#"switchyard_bank_link_state{link="bank-a.0",state="connecting"} 1"#,
            r#"switchyard_bank_round_trip_seconds_count{bank="bank-a"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert!(text.contains("switchyard_build_info{profile="));
        assert_eq!(mti_label(Some(Mti::FINANCIAL_REPEAT)), "other");
        assert!(MTI_LABELS.contains(&mti_label(Some(Mti::STATUS_REQUEST))));
    }
}
