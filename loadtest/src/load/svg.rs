//! An SVG chart of throughput and p99 latency over time, written by hand: two panels
//! sharing the time axis, one line per run.

use std::fmt::Write;

use super::stats::RunReport;

const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 260;
const MARGIN_LEFT: u32 = 70;
const MARGIN_RIGHT: u32 = 150;
const MARGIN_TOP: u32 = 40;
const PANEL_GAP: u32 = 50;
/// Grid lines per axis.
const TICKS: u32 = 5;
/// Line colours, one per run in order (repeating).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
#[allow(clippy::float_arithmetic)]
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel: frame, grid, labels and a polyline per run of `value(point)`.
#[allow(clippy::float_arithmetic)]
fn panel(
    out: &mut String,
    runs: &[&RunReport],
    top: u32,
    title: &str,
    unit: &str,
    t_max: f64,
    value: impl Fn(&super::stats::SeriesPoint) -> f64,
) {
    let plot_w = f64::from(WIDTH - MARGIN_LEFT - MARGIN_RIGHT);
    let plot_h = f64::from(PANEL_HEIGHT);
    let (left, topf) = (f64::from(MARGIN_LEFT), f64::from(top));
    let y_max = nice_ceiling(
        runs.iter()
            .flat_map(|r| r.series.iter().map(&value))
            .fold(0.0, f64::max),
    );
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        topf - 10.0,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{topf}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    for i in 0..=TICKS {
        let frac = f64::from(i) / f64::from(TICKS);
        let y = topf + plot_h - frac * plot_h;
        let x = left + frac * plot_w;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{:.1} {unit}</text>"##,
            left + plot_w,
            left - 5.0,
            y + 4.0,
            y_max * frac
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.0} s</text>"#,
            topf + plot_h + 15.0,
            t_max * frac
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = r
            .series
            .iter()
            .map(|p| {
                let x = left + p.t_s as f64 / t_max * plot_w;
                let y = topf + plot_h - (value(p) / y_max).min(1.0) * plot_h;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = topf + 15.0 + 18.0 * i as f64;
        let lx = left + plot_w + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            lx + 20.0,
            lx + 25.0,
            ly + 4.0,
            escape(&format!("{} @{}/s", r.name, r.offered_rate))
        );
    }
}

/// The chart of `runs` (throughput on top, p99 below), with `title`.
#[allow(clippy::float_arithmetic)]
pub fn chart(runs: &[&RunReport], title: &str) -> String {
    let height = MARGIN_TOP * 2 + PANEL_HEIGHT * 2 + PANEL_GAP + 20;
    let t_max = runs
        .iter()
        .map(|r| r.series.len() as f64)
        .fold(1.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="15">{}</text>"#,
        MARGIN_LEFT,
        escape(title)
    );
    panel(
        &mut out,
        runs,
        MARGIN_TOP + 20,
        "Throughput (answers per second)",
        "/s",
        t_max,
        |p| p.answered_per_s as f64,
    );
    panel(
        &mut out,
        runs,
        MARGIN_TOP + 20 + PANEL_HEIGHT + PANEL_GAP,
        "p99 latency per second (from when each request was due)",
        "ms",
        t_max,
        |p| p.p99_ms,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{Collector, ReportSpec};
    use std::time::Duration;

    // Proves axis bounds round up to 1, 2 or 5 times a power of ten.
    #[test]
    fn nice_bounds() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(2000.0), 2000.0);
        assert_eq!(nice_ceiling(2001.0), 5000.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
    }

    // Proves the chart is one SVG document with two lines per run and escaped labels.
    #[test]
    fn chart_shape() {
        let c = Collector::new(tokio::time::Instant::now(), Duration::ZERO, Duration::ZERO);
        let mut r = c.report(ReportSpec {
            name: "relay<1>".into(),
            target: String::new(),
            rate: 10,
            connections: 1,
            warmup_s: 0,
            duration_s: 1,
            mix: String::new(),
        });
        r.series = (0..5)
            .map(|i| crate::load::stats::SeriesPoint {
                t_s: i,
                answered_per_s: 10 * i,
                p99_ms: 1.5,
            })
            .collect();
        let svg = chart(&[&r, &r], "t & t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("relay&lt;1&gt;") && svg.contains("t &amp; t"));
    }
}
