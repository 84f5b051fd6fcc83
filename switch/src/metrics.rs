//! Prometheus metrics. Label sets are bounded: MTIs and response codes are from the
//! contract's short lists, links and banks from configuration; never card numbers or ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Journal batch sizes.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
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
    pub link_round_trip_us: IntGaugeVec,
    pub link_queue_depth: IntGaugeVec,
    pub reversals_pending: IntGaugeVec,
    pub reversals_oldest_age: IntGaugeVec,
    pub journal_batch_size: Histogram,
    pub journal_commit: Histogram,
    pub journal_failures: IntCounter,
    pub redis_latency: Histogram,
    pub redis_errors: IntCounter,
    pub idempotency_replays: IntCounter,
    pub rate_limit_refusals: IntCounterVec,
    pub bank_timeouts: IntCounterVec,
    pub late_answers: IntCounterVec,
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
            link_round_trip_us: IntGaugeVec::new(
                Opts::new(
                    "bank_link_round_trip_microseconds",
                    "Moving average of a bank link's answered round trips (0 before the first)",
                ),
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
            Box::new(m.link_round_trip_us.clone()),
            Box::new(m.link_queue_depth.clone()),
            Box::new(m.reversals_pending.clone()),
            Box::new(m.reversals_oldest_age.clone()),
            Box::new(m.journal_batch_size.clone()),
            Box::new(m.journal_commit.clone()),
            Box::new(m.journal_failures.clone()),
            Box::new(m.redis_latency.clone()),
            Box::new(m.redis_errors.clone()),
            Box::new(m.idempotency_replays.clone()),
            Box::new(m.rate_limit_refusals.clone()),
            Box::new(m.bank_timeouts.clone()),
            Box::new(m.late_answers.clone()),
            Box::new(m.bank_mac_failures.clone()),
        ];
        for c in all {
            reg.register(c).expect("metric names are unique");
        }
        m
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
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
}
