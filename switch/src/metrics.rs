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
pub const ADMIN_LOGIN_OUTCOMES: [&str; 4] = ["success", "failure", "locked", "throttled"];
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
    pub journal_wait: HistogramVec,
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

/// Makes metrics from their [`Def`]s and registers each as it is made.
struct Maker<'r>(&'r Registry);

impl Maker<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    fn opts(d: &Def) -> Opts {
        Opts::new(d.name, d.help)
    }

    fn counter(&self, d: &Def) -> IntCounter {
        self.register(IntCounter::with_opts(Self::opts(d)).expect("metric"))
    }

    fn counter_vec(&self, d: &Def) -> IntCounterVec {
        self.register(IntCounterVec::new(Self::opts(d), d.labels).expect("metric"))
    }

    fn gauge(&self, d: &Def) -> IntGauge {
        self.register(IntGauge::with_opts(Self::opts(d)).expect("metric"))
    }

    fn gauge_vec(&self, d: &Def) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Self::opts(d), d.labels).expect("metric"))
    }

    fn histogram(&self, d: &Def, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(d.name, d.help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("metric"))
    }

    fn histogram_vec(&self, d: &Def, buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(d.name, d.help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, d.labels).expect("metric"))
    }
}

/// A metric's name (before the `switchyard_` prefix), help text and labels.
#[derive(Debug)]
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

// The request path.

const REQUESTS: Def = Def {
    name: "requests_total",
    help: "Merchant requests answered, by request MTI and response code",
    labels: &["mti", "rc"],
};
const SWITCH_LATENCY: Def = Def {
    name: "switch_latency_seconds",
    help: "Time the switch adds to a request: from its last byte to its answer, less the bank's round trip",
    labels: &["mti"],
};
const IN_FLIGHT: Def = Def {
    name: "in_flight_requests",
    help: "Merchant requests being processed",
    labels: &[],
};
const MERCHANT_CONNECTIONS: Def = Def {
    name: "merchant_connections",
    help: "Open merchant connections",
    labels: &[],
};
const IDEMPOTENCY_REPLAYS: Def = Def {
    name: "idempotency_replays_total",
    help: "Retransmissions answered from the record",
    labels: &[],
};
const RATE_LIMIT_REFUSALS: Def = Def {
    name: "rate_limit_refusals_total",
    help: "Requests refused with 65, by rule",
    labels: &["rule"],
};
const MERCHANT_MAC_FAILURES: Def = Def {
    name: "merchant_mac_failures_total",
    help: "Merchant requests refused for their MAC (a security signal), by reason",
    labels: &["reason"],
};
const REDIS_OUTAGE_REQUESTS: Def = Def {
    name: "redis_outage_requests_total",
    help: "Requests handled while Redis was unreachable, by what became of the limits",
    labels: &["limits"],
};

// Banks and their links.

const BANK_ROUND_TRIP: Def = Def {
    name: "bank_round_trip_seconds",
    help: "Bank round trip of a request",
    labels: &["bank"],
};
const LINK_STATE: Def = Def {
    name: "bank_link_state",
    help: "1 for the state each bank link is in",
    labels: &["link", "state"],
};
const LINK_IN_FLIGHT: Def = Def {
    name: "bank_link_in_flight",
    help: "Requests in flight on a bank link",
    labels: &["link"],
};
const LINK_QUEUE_DEPTH: Def = Def {
    name: "bank_link_queue_depth",
    help: "Requests and answers queued for a bank link's task",
    labels: &["link"],
};
const BANK_TIMEOUTS: Def = Def {
    name: "bank_timeouts_total",
    help: "Bank requests without an answer",
    labels: &["bank"],
};
const LATE_ANSWERS: Def = Def {
    name: "bank_late_answers_total",
    help: "Bank answers that came after their request was resolved",
    labels: &["link"],
};
const BANK_MAC_FAILURES: Def = Def {
    name: "bank_mac_failures_total",
    help: "Bank messages dropped because their MAC was missing or wrong",
    labels: &["bank"],
};

// Store and forward, notifications, leases.

const REVERSALS_EXPIRED: Def = Def {
    name: "reversals_expired_total",
    help: "Reversals and advices given up unacknowledged after reversal_max_age_ms",
    labels: &["bank"],
};
const REVERSALS_PENDING: Def = Def {
    name: "reversals_pending",
    help: "Reversals stored and not yet acknowledged",
    labels: &["bank"],
};
const REVERSALS_OLDEST_AGE: Def = Def {
    name: "reversals_oldest_age_seconds",
    help: "Age of the oldest unacknowledged reversal",
    labels: &["bank"],
};
const NOTIFICATIONS_PENDING: Def = Def {
    name: "notifications_pending",
    help: "Merchant notifications (0620) stored and not yet acknowledged (0630)",
    labels: &[],
};
const NOTIFICATIONS_OLDEST_AGE: Def = Def {
    name: "notifications_oldest_age_seconds",
    help: "Age of the oldest unacknowledged merchant notification (0 when none)",
    labels: &[],
};
const LEASE_TAKEOVERS: Def = Def {
    name: "lease_takeovers_total",
    help: "Instances taken over by this one after their lease expired",
    labels: &[],
};

// The journal, PostgreSQL and Redis.

const JOURNAL_BATCH_SIZE: Def = Def {
    name: "journal_batch_size",
    help: "Records written in one journal commit",
    labels: &[],
};
const JOURNAL_COMMIT: Def = Def {
    name: "journal_commit_seconds",
    help: "Time of one journal commit",
    labels: &[],
};
const JOURNAL_WAIT: Def = Def {
    name: "journal_wait_seconds",
    help: "Time from a record's queueing (room in a full queue included) to its commit's acknowledgement or failure: what a request waits for durability, by record (request, outcome)",
    labels: &["record"],
};
const JOURNAL_FAILURES: Def = Def {
    name: "journal_failures_total",
    help: "Journal batches that could not be written",
    labels: &[],
};
const POSTGRES_PROBE: Def = Def {
    name: "postgres_probe_seconds",
    help: "Time of the periodic probe query (SELECT 1 on a pooled connection)",
    labels: &[],
};
const POSTGRES_PROBE_FAILURES: Def = Def {
    name: "postgres_probe_failures_total",
    help: "Probe queries that failed or found no connection",
    labels: &[],
};
const POOL_CONNECTIONS: Def = Def {
    name: "postgres_pool_connections",
    help: "PostgreSQL connections of the request pool, by state (idle, in_use)",
    labels: &["state"],
};
const POOL_MAX: Def = Def {
    name: "postgres_pool_max_connections",
    help: "The request pool's size limit (database.pool_size)",
    labels: &[],
};
const POOL_WAITING: Def = Def {
    name: "postgres_pool_waiting",
    help: "Tasks waiting for a PostgreSQL connection of the request pool",
    labels: &[],
};
const REDIS_LATENCY: Def = Def {
    name: "redis_seconds",
    help: "Time of one Redis call",
    labels: &[],
};
const REDIS_ERRORS: Def = Def {
    name: "redis_errors_total",
    help: "Redis calls that failed or timed out",
    labels: &[],
};

// The admin surface and the build.

const ADMIN_AUTH_FAILURES: Def = Def {
    name: "admin_auth_failures_total",
    help: "Admin HTTP requests refused 401 (unauthenticated) or 403 (forbidden)",
    labels: &["reason"],
};
const ADMIN_LOGINS: Def = Def {
    name: "admin_logins_total",
    help: "Back-office login attempts: success, failure (bad password or code), locked (the right password refused while locked), throttled (refused: too many failures from the address)",
    labels: &["outcome"],
};
const ADMIN_NEW_ADDRESS_LOGINS: Def = Def {
    name: "admin_new_address_logins_total",
    help: "Back-office logins from an address not seen before for that account",
    labels: &[],
};
const BUILD_INFO: Def = Def {
    name: "build_info",
    help: "Always 1; the labels say which build this instance runs",
    labels: &["version", "profile"],
};

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("switchyard".into()), None).expect("registry");
        let mk = Maker(&registry);
        let m = Metrics {
            // The request path.
            requests: mk.counter_vec(&REQUESTS),
            switch_latency: mk.histogram_vec(&SWITCH_LATENCY, &LATENCY_BUCKETS_S),
            in_flight: mk.gauge(&IN_FLIGHT),
            merchant_connections: mk.gauge(&MERCHANT_CONNECTIONS),
            idempotency_replays: mk.counter(&IDEMPOTENCY_REPLAYS),
            rate_limit_refusals: mk.counter_vec(&RATE_LIMIT_REFUSALS),
            merchant_mac_failures: mk.counter_vec(&MERCHANT_MAC_FAILURES),
            redis_outage_requests: mk.counter_vec(&REDIS_OUTAGE_REQUESTS),
            // Banks and their links.
            bank_round_trip: mk.histogram_vec(&BANK_ROUND_TRIP, &LATENCY_BUCKETS_S),
            link_state: mk.gauge_vec(&LINK_STATE),
            link_in_flight: mk.gauge_vec(&LINK_IN_FLIGHT),
            link_queue_depth: mk.gauge_vec(&LINK_QUEUE_DEPTH),
            bank_timeouts: mk.counter_vec(&BANK_TIMEOUTS),
            late_answers: mk.counter_vec(&LATE_ANSWERS),
            bank_mac_failures: mk.counter_vec(&BANK_MAC_FAILURES),
            // Store and forward, notifications, leases.
            reversals_expired: mk.counter_vec(&REVERSALS_EXPIRED),
            reversals_pending: mk.gauge_vec(&REVERSALS_PENDING),
            reversals_oldest_age: mk.gauge_vec(&REVERSALS_OLDEST_AGE),
            notifications_pending: mk.gauge(&NOTIFICATIONS_PENDING),
            notifications_oldest_age: mk.gauge(&NOTIFICATIONS_OLDEST_AGE),
            lease_takeovers: mk.counter(&LEASE_TAKEOVERS),
            // The journal, PostgreSQL and Redis.
            journal_batch_size: mk.histogram(&JOURNAL_BATCH_SIZE, &BATCH_BUCKETS),
            journal_commit: mk.histogram(&JOURNAL_COMMIT, &LATENCY_BUCKETS_S),
            journal_wait: mk.histogram_vec(&JOURNAL_WAIT, &LATENCY_BUCKETS_S),
            journal_failures: mk.counter(&JOURNAL_FAILURES),
            postgres_probe: mk.histogram(&POSTGRES_PROBE, &LATENCY_BUCKETS_S),
            postgres_probe_failures: mk.counter(&POSTGRES_PROBE_FAILURES),
            pool_connections: mk.gauge_vec(&POOL_CONNECTIONS),
            pool_max: mk.gauge(&POOL_MAX),
            pool_waiting: mk.gauge(&POOL_WAITING),
            redis_latency: mk.histogram(&REDIS_LATENCY, &LATENCY_BUCKETS_S),
            redis_errors: mk.counter(&REDIS_ERRORS),
            // The admin surface and the build.
            admin_auth_failures: mk.counter_vec(&ADMIN_AUTH_FAILURES),
            admin_logins: mk.counter_vec(&ADMIN_LOGINS),
            admin_new_address_logins: mk.counter(&ADMIN_NEW_ADDRESS_LOGINS),
            build_info: mk.gauge_vec(&BUILD_INFO),
            process: process_registry(),
            registry,
        };
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
