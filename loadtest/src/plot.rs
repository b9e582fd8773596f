//! Hand-drawn SVG of a report: the latency distribution (latency against
//! percentile on a log-of-tail axis, so p99 and p99.9 get room) above the
//! delivery rate over time (connections over time for `idle`).

use crate::report::Report;
use std::fmt::Write as _;

const W: f64 = 960.0;
const H: f64 = 680.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const PANEL_H: f64 = 220.0;
const TOP1: f64 = 70.0;
const TOP2: f64 = 390.0;
/// Furthest percentile drawn: 99.999% (five nines).
const MAX_NINES: f64 = 5.0;

/// XML-escapes text.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Smallest 1/2/5 × 10^k at or above `v`.
pub fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&c| c >= v * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag)
}

/// Number of nines of a quantile: 0.9 → 1, 0.99 → 2; capped at [`MAX_NINES`].
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).clamp(0.0, MAX_NINES)
    }
}

struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.x_max).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        self.top + PANEL_H - (v / self.y_max).clamp(0.0, 1.0) * PANEL_H
    }

    /// Frame, title, horizontal grid with labels, axis titles.
    fn axes(&self, o: &mut String, title: &str, y_label: &str, x_label: &str) {
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{}" width="{}" height="{PANEL_H}" fill="none" stroke="#444"/>"##,
            self.top,
            W - LEFT - RIGHT
        );
        let _ = writeln!(
            o,
            r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
            self.top - 12.0,
            esc(title)
        );
        for i in 0..=4 {
            let v = self.y_max * f64::from(i) / 4.0;
            let y = self.y(v);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(v)
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="20" y="{:.1}" font-size="12" transform="rotate(-90 20 {:.1})" text-anchor="middle">{}</text>"#,
            self.top + PANEL_H / 2.0,
            self.top + PANEL_H / 2.0,
            esc(y_label)
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            self.top + PANEL_H + 38.0,
            esc(x_label)
        );
    }

    fn x_tick(&self, o: &mut String, v: f64, label: &str) {
        let x = self.x(v);
        let y = self.top + PANEL_H;
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            y + 5.0,
            y + 18.0,
            esc(label)
        );
    }

    fn polyline(&self, o: &mut String, pts: &[(f64, f64)], color: &str, dashed: bool) {
        if pts.is_empty() {
            return;
        }
        let mut d = String::new();
        for (x, y) in pts {
            let _ = write!(d, "{:.1},{:.1} ", self.x(*x), self.y(*y));
        }
        let dash = if dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            d.trim_end()
        );
    }

    fn note(&self, o: &mut String, text: &str) {
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#888">{}</text>"##,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            self.top + PANEL_H / 2.0,
            esc(text)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Renders the report as a standalone SVG document.
pub fn svg(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="28" font-size="18">herald-load {} · {} · {}</text>"#,
        esc(&r.scenario),
        esc(&r.target),
        esc(&r.urls.join(", "))
    );
    latency_panel(&mut o, r);
    rate_panel(&mut o, r);
    o.push_str("</svg>\n");
    o
}

fn latency_panel(o: &mut String, r: &Report) {
    let curve = r
        .delivery
        .as_ref()
        .map(|d| d.latency_curve.as_slice())
        .unwrap_or_default();
    let max_ms = curve.iter().map(|p| p.1).max().unwrap_or(0) as f64 / 1000.0;
    let p = Panel {
        top: TOP1,
        x_max: MAX_NINES,
        y_max: nice_ceiling(max_ms),
    };
    p.axes(o, "Latency distribution", "latency (ms)", "percentile");
    for (n, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        p.x_tick(o, n as f64, label);
    }
    if curve.is_empty() {
        p.note(o, "no latency samples");
        return;
    }
    let pts: Vec<(f64, f64)> = curve
        .iter()
        .map(|&(q, us)| (nines(q), us as f64 / 1000.0))
        .collect();
    p.polyline(o, &pts, "#1f77b4", false);
    if let Some(d) = &r.delivery {
        let l = &d.latency;
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">p50 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms</text>"#,
            W - RIGHT - 8.0,
            TOP1 + 18.0,
            l.p50_us as f64 / 1000.0,
            l.p99_us as f64 / 1000.0,
            l.p999_us as f64 / 1000.0,
            l.max_us as f64 / 1000.0
        );
    }
}

fn rate_panel(o: &mut String, r: &Report) {
    let idle = r.delivery.is_none();
    let per_msg = r
        .delivery
        .as_ref()
        .map_or(0.0, |d| d.subscribers_per_message as f64);
    let value = |s: &crate::report::SeriesPoint| {
        if idle {
            s.connections as f64
        } else {
            s.delivered_per_second
        }
    };
    let t_max = r.series.iter().map(|s| s.t).fold(0.0, f64::max);
    let y_top = r
        .series
        .iter()
        .map(|s| value(s).max(s.published_per_second * per_msg))
        .fold(0.0, f64::max);
    let p = Panel {
        top: TOP2,
        x_max: t_max.ceil().max(1.0),
        y_max: nice_ceiling(y_top),
    };
    let (title, y_label) = if idle {
        ("Open connections over time", "connections")
    } else {
        ("Delivery rate over time", "deliveries / s")
    };
    p.axes(o, title, y_label, "seconds");
    for i in 0..=5 {
        let v = p.x_max * f64::from(i) / 5.0;
        p.x_tick(o, v, &fmt_num(v));
    }
    if r.series.is_empty() {
        p.note(o, "run too short for a time series");
        return;
    }
    let pts: Vec<(f64, f64)> = r.series.iter().map(|s| (s.t, value(s))).collect();
    p.polyline(o, &pts, "#2ca02c", false);
    if !idle {
        let expected: Vec<(f64, f64)> = r
            .series
            .iter()
            .map(|s| (s.t, s.published_per_second * per_msg))
            .collect();
        p.polyline(o, &expected, "#999", true);
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end"><tspan fill="#2ca02c">— delivered</tspan>  <tspan fill="#999">- - published × subscribers</tspan></text>"##,
            W - RIGHT - 8.0,
            TOP2 + 18.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DeliveryReport, SeriesPoint};

    #[test]
    fn nice_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(0.013), 0.02);
        assert_eq!(nines(0.99), 2.0_f64.min(nines(0.99)));
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
    }

    /// Tags balance and every element is closed: a cheap well-formedness check.
    fn balanced(svg: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else {
                return false;
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name.trim()) {
                    return false;
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or_default();
                stack.push(name.to_owned());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn svg_is_well_formed() {
        let r = Report {
            scenario: "fanout".to_owned(),
            target: "herald".to_owned(),
            urls: vec!["http://a<b>&c".to_owned()],
            delivery: Some(DeliveryReport {
                subscribers_per_message: 10,
                latency_curve: vec![(0.0, 100), (0.5, 900), (0.99, 4000), (1.0, 9000)],
                ..DeliveryReport::default()
            }),
            series: (0..5)
                .map(|i| SeriesPoint {
                    t: f64::from(i),
                    delivered_per_second: 1000.0,
                    published_per_second: 100.0,
                    connections: 10,
                })
                .collect(),
            ..Report::default()
        };
        let s = svg(&r);
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(balanced(&s), "{s}");
        assert!(s.contains("&lt;b&gt;&amp;c") && !s.contains("a<b>"));
        assert!(s.contains("<polyline"));
        // An empty report still draws both panels.
        let empty = svg(&Report::default());
        assert!(balanced(&empty) && empty.contains("no latency samples"));
    }
}
