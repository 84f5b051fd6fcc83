//! The live overview's figures (issue 12's console): every sample interval the sampler
//! reads the switch's own registry (answers by response code, the switch-added latency
//! histogram) into a bounded ring; answers per second and latency percentiles are the
//! differences between consecutive samples, computed by plain functions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use admin_http::reference::{LatencySeries, RcSeries};
use prometheus::core::Collector;

use crate::metrics::{LATENCY_BUCKETS_S, Metrics};

/// Samples kept: five minutes at the sampler's one-second interval.
pub(crate) const OVERVIEW_SAMPLES_MAX: usize = 300;

/// The counters of one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Merchant answers so far by response code, over every MTI.
    pub by_rc: BTreeMap<String, u64>,
    /// Switch-added latency observations so far at or below each of
    /// [`LATENCY_BUCKETS_S`] (cumulative), over every MTI.
    pub latency_le: Vec<u64>,
    /// Every latency observation so far (the `+Inf` bucket).
    pub latency_count: u64,
}

/// Reads the counters behind the overview from the registry.
pub(crate) fn take(m: &Metrics, at_ms: u64) -> Sample {
    let mut s = Sample {
        at_ms,
        latency_le: vec![0; LATENCY_BUCKETS_S.len()],
        ..Sample::default()
    };
    for family in m.requests.collect() {
        for metric in family.get_metric() {
            let rc = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "rc")
                .map(|l| l.value().to_string());
            if let Some(rc) = rc {
                *s.by_rc.entry(rc).or_default() += metric.get_counter().get_value() as u64;
            }
        }
    }
    for family in m.switch_latency.collect() {
        for metric in family.get_metric() {
            let h = metric.get_histogram();
            s.latency_count += h.get_sample_count();
            for (i, b) in h.get_bucket().iter().enumerate().take(s.latency_le.len()) {
                s.latency_le[i] += b.cumulative_count();
            }
        }
    }
    s
}

/// The value at quantile `q` (0 to 1) of a histogram with cumulative counts `le` at the
/// upper bounds `bounds_s` and `total` observations, in milliseconds, interpolated within
/// its bucket as Prometheus' `histogram_quantile` does; `None` without observations.
/// Past the last bound, the last bound.
// Latency and rates are measurements for a chart, never money: floats are right here.
#[allow(clippy::float_arithmetic)]
pub(crate) fn quantile_ms(q: f64, bounds_s: &[f64], le: &[u64], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let Some(i) = le.iter().position(|c| *c as f64 >= rank) else {
        return bounds_s.last().map(|b| b * 1000.0);
    };
    let (lower, below) = match i {
        0 => (0.0, 0),
        _ => (bounds_s[i - 1], le[i - 1]),
    };
    let inside = le[i].saturating_sub(below);
    let share = if inside == 0 {
        1.0
    } else {
        (rank - below as f64) / inside as f64
    };
    Some((lower + (bounds_s[i] - lower) * share) * 1000.0)
}

/// The figures between consecutive samples: each interval's end, answers per second by
/// response code (codes with any answer in the window; `00` when there were none), and
/// latency percentiles.
#[allow(clippy::float_arithmetic)]
pub(crate) fn series(
    samples: &[Sample],
    bounds_s: &[f64],
) -> (Vec<u64>, Vec<RcSeries>, LatencySeries) {
    let pairs: Vec<(&Sample, &Sample)> = samples.windows(2).map(|w| (&w[0], &w[1])).collect();
    let mut codes: Vec<String> = match (samples.first(), samples.last()) {
        (Some(a), Some(b)) => b
            .by_rc
            .iter()
            .filter(|(rc, n)| **n > a.by_rc.get(*rc).copied().unwrap_or(0))
            .map(|(rc, _)| rc.clone())
            .collect(),
        _ => Vec::new(),
    };
    if codes.is_empty() {
        codes.push("00".into());
    }
    let per_s = |rc: &str| -> Vec<f64> {
        pairs
            .iter()
            .map(|(a, b)| {
                let dt_s = (b.at_ms.saturating_sub(a.at_ms)).max(1) as f64 / 1000.0;
                let n = |s: &Sample| s.by_rc.get(rc).copied().unwrap_or(0);
                n(b).saturating_sub(n(a)) as f64 / dt_s
            })
            .collect()
    };
    let requests = codes
        .iter()
        .map(|rc| RcSeries {
            rc: rc.clone(),
            per_s: per_s(rc),
        })
        .collect();
    let mut latency = LatencySeries::default();
    for (a, b) in &pairs {
        let le: Vec<u64> = b
            .latency_le
            .iter()
            .zip(&a.latency_le)
            .map(|(x, y)| x.saturating_sub(*y))
            .collect();
        let total = b.latency_count.saturating_sub(a.latency_count);
        latency.p50_ms.push(quantile_ms(0.5, bounds_s, &le, total));
        latency.p90_ms.push(quantile_ms(0.9, bounds_s, &le, total));
        latency.p99_ms.push(quantile_ms(0.99, bounds_s, &le, total));
    }
    let at_ms = pairs.iter().map(|(_, b)| b.at_ms).collect();
    (at_ms, requests, latency)
}

/// The last [`OVERVIEW_SAMPLES_MAX`] samples.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    samples: Mutex<VecDeque<Sample>>,
}

impl Recorder {
    /// Keeps a sample, dropping the oldest beyond the bound.
    pub(crate) fn push(&self, s: Sample) {
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == OVERVIEW_SAMPLES_MAX {
            q.pop_front();
        }
        q.push_back(s);
    }

    pub(crate) fn snapshot(&self) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect()
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, ok: u64, declined: u64, le: [u64; 3], count: u64) -> Sample {
        let mut by_rc = BTreeMap::new();
        by_rc.insert("00".to_string(), ok);
        by_rc.insert("05".to_string(), declined);
        Sample {
            at_ms,
            by_rc,
            latency_le: le.to_vec(),
            latency_count: count,
        }
    }

    // Proves the quantile interpolation within a bucket, the empty case, and the +Inf case.
    #[test]
    fn quantiles() {
        let bounds = [0.001, 0.002, 0.004];
        // 10 observations: 4 up to 1 ms, 4 more up to 2 ms, 2 more up to 4 ms.
        let le = [4, 8, 10];
        let near = |got: Option<f64>, want: f64| {
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-9),
                "{got:?} vs {want}"
            )
        };
        near(quantile_ms(0.5, &bounds, &le, 10), 1.25);
        near(quantile_ms(0.2, &bounds, &le, 10), 0.5);
        near(quantile_ms(0.9, &bounds, &le, 10), 3.0);
        assert_eq!(quantile_ms(0.5, &bounds, &[0, 0, 0], 0), None);
        near(quantile_ms(0.99, &bounds, &[0, 0, 0], 5), 4.0);
    }

    // Proves answers per second are the counters' differences over the time between
    // samples, codes without answers in the window are left out, and an interval without
    // answers has no percentiles.
    #[test]
    fn rates_and_percentiles() {
        let bounds = [0.001, 0.002, 0.004];
        let samples = [
            sample(1_000, 10, 3, [0, 0, 0], 0),
            sample(3_000, 30, 3, [4, 8, 10], 10),
            sample(4_000, 30, 3, [4, 8, 10], 10),
        ];
        let (at, rps, lat) = series(&samples, &bounds);
        assert_eq!(at, vec![3_000, 4_000]);
        assert_eq!(rps.len(), 1, "05 had no answers in the window: {rps:?}");
        assert_eq!(rps[0].rc, "00");
        assert_eq!(rps[0].per_s, vec![10.0, 0.0]);
        assert!((lat.p50_ms[0].unwrap() - 1.25).abs() < 1e-9, "{lat:?}");
        assert_eq!(lat.p50_ms[1], None);
        let (at, rps, _) = series(&samples[..1], &bounds);
        assert!(at.is_empty());
        assert_eq!(rps[0].per_s, Vec::<f64>::new());
    }

    // Proves the ring keeps the newest samples up to its bound.
    #[test]
    fn ring_is_bounded() {
        let r = Recorder::default();
        for i in 0..(OVERVIEW_SAMPLES_MAX as u64 + 5) {
            r.push(sample(i, 0, 0, [0, 0, 0], 0));
        }
        let s = r.snapshot();
        assert_eq!(s.len(), OVERVIEW_SAMPLES_MAX);
        assert_eq!(s[0].at_ms, 5);
    }

    // Proves a sample reads the registry: answers by code summed over MTIs, latency
    // buckets summed over MTIs.
    #[test]
    fn takes_from_the_registry() {
        let m = Metrics::new();
        m.requests.with_label_values(&["0200", "00"]).inc_by(2);
        m.requests.with_label_values(&["0100", "00"]).inc();
        m.switch_latency
            .with_label_values(&["0200"])
            .observe(0.0003);
        let s = take(&m, 7);
        assert_eq!(s.by_rc.get("00"), Some(&3));
        assert_eq!(s.latency_count, 1);
        assert_eq!(s.latency_le[1], 0, "0.3 ms is above the 0.25 ms bound");
        assert_eq!(s.latency_le[2], 1, "and within the 0.5 ms one");
    }
}
