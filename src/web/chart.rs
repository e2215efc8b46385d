//! The overview chart, rendered on the server as SVG (no script, nothing from the internet):
//! replication throughput (published and applied changes per second) above, consumer lag
//! below, over the sampler's window. Pure: samples in, markup out; only numbers and fixed
//! labels are written, so nothing needs escaping.

use std::fmt::Write;

use super::sampler::{KEEP_SAMPLES, SAMPLE_EVERY, Sample};

const WIDTH: f64 = 960.0;
const PANEL: f64 = 110.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 22.0;
const GAP: f64 = 38.0;
const PUBLISHED: &str = "#2f80ed";
const APPLIED: &str = "#27ae60";
const LAG: &str = "#e67e22";
const GRID: &str = "#d7dde5";
const TEXT: &str = "#5b6675";

/// The whole chart for `samples`, with `now_ms` at the right edge.
pub fn render(samples: &[Sample], now_ms: u64) -> String {
    let window_ms = KEEP_SAMPLES as u64 * SAMPLE_EVERY.as_millis() as u64;
    let height = TOP + PANEL + GAP + PANEL + 26.0;
    let mut svg = String::with_capacity(4096);
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="replication throughput and lag" font-family="system-ui, sans-serif" font-size="11">"#
    );
    let start = now_ms.saturating_sub(window_ms);
    let x = |at: u64| LEFT + (at.saturating_sub(start) as f64 / window_ms as f64) * plot_width();

    let rate_max = nice_ceiling(
        samples
            .iter()
            .map(|s| s.published_per_s.max(s.applied_per_s))
            .fold(0.0, f64::max),
    );
    panel(&mut svg, TOP, rate_max, "changes/s");
    legend(
        &mut svg,
        TOP - 8.0,
        &[(PUBLISHED, "published"), (APPLIED, "applied")],
    );
    line(&mut svg, samples, TOP, rate_max, PUBLISHED, &x, |s| {
        s.published_per_s
    });
    line(&mut svg, samples, TOP, rate_max, APPLIED, &x, |s| {
        s.applied_per_s
    });

    let lag_top = TOP + PANEL + GAP;
    let lag_max = nice_ceiling(
        samples
            .iter()
            .map(|s| s.lag_messages as f64)
            .fold(0.0, f64::max),
    );
    panel(&mut svg, lag_top, lag_max, "messages");
    let worst = samples.last().map(|s| s.lag_seconds).unwrap_or(0.0);
    legend(
        &mut svg,
        lag_top - 8.0,
        &[(
            LAG,
            &format!("consumer lag (oldest unapplied: {worst:.1} s)"),
        )],
    );
    line(&mut svg, samples, lag_top, lag_max, LAG, &x, |s| {
        s.lag_messages as f64
    });

    let axis_y = lag_top + PANEL + 16.0;
    let minutes = window_ms / 60_000;
    for i in 0..=minutes {
        let at = start + i * 60_000;
        let label = match minutes - i {
            0 => "now".to_owned(),
            m => format!("-{m}m"),
        };
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{axis_y}" fill="{TEXT}" text-anchor="middle">{label}</text>"#,
            x(at)
        );
    }
    if samples.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{TEXT}" text-anchor="middle">collecting samples…</text>"#,
            LEFT + plot_width() / 2.0,
            TOP + PANEL / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

/// Frame, grid lines and y labels of one panel.
fn panel(svg: &mut String, top: f64, max: f64, unit: &str) {
    for i in 0..=2 {
        let y = top + PANEL * f64::from(i) / 2.0;
        let value = max * f64::from(2 - i) / 2.0;
        let _ = write!(
            svg,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{GRID}"/><text x="{:.1}" y="{:.1}" fill="{TEXT}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(value)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" fill="{TEXT}" text-anchor="end">{unit}</text>"#,
        WIDTH - RIGHT,
        top - 8.0
    );
}

fn legend(svg: &mut String, y: f64, items: &[(&str, &str)]) {
    let mut x = LEFT;
    for (color, label) in items {
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="10" height="10" rx="2" fill="{color}"/><text x="{:.1}" y="{y:.1}" fill="{TEXT}">{label}</text>"#,
            y - 9.0,
            x + 14.0
        );
        x += 24.0 + 6.5 * label.chars().count() as f64;
    }
}

fn line(
    svg: &mut String,
    samples: &[Sample],
    top: f64,
    max: f64,
    color: &str,
    x: &impl Fn(u64) -> f64,
    value: impl Fn(&Sample) -> f64,
) {
    if samples.is_empty() {
        return;
    }
    let _ = write!(
        svg,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round" points=""#
    );
    for s in samples {
        let v = value(s).clamp(0.0, max);
        let y = top + PANEL - PANEL * v / max;
        let _ = write!(svg, "{:.1},{:.1} ", x(s.at_ms), y);
    }
    svg.push_str(r#""/>"#);
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (at least 1).
pub fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 1.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if v <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// `950`, `1.5k`, `2M`.
fn short(v: f64) -> String {
    let trim = |s: String| s.trim_end_matches(".0").to_owned();
    if v >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if v >= 1e3 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else {
        trim(format!("{v:.1}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, rate: f64, lag: u64) -> Sample {
        Sample {
            at_ms,
            published_per_s: rate,
            applied_per_s: rate / 2.0,
            lag_messages: lag,
            lag_seconds: 0.5,
        }
    }

    #[test]
    fn scales_and_labels() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(5000.0), 5000.0);
        assert_eq!(nice_ceiling(5001.0), 10000.0);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(50.0), "50");
    }

    #[test]
    fn renders_lines_inside_the_frame() {
        let now = 1_000_000_000;
        let samples: Vec<Sample> = (0..10)
            .map(|i| sample(now - 20_000 + i * 2_000, i as f64 * 10.0, i))
            .collect();
        let svg = render(&samples, now);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">now</text>") && svg.contains(">-10m</text>"));
        assert!(svg.contains("oldest unapplied: 0.5 s"));
        for point in svg.split("points=\"").skip(1) {
            for xy in point.split('"').next().unwrap().split_whitespace() {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!((TOP..=TOP + 2.0 * PANEL + GAP).contains(&y), "{y}");
            }
        }
        assert!(render(&[], now).contains("collecting samples"));
    }
}
