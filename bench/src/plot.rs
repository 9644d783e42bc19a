//! Small SVG plots: cumulative distributions on a log time axis, and costs against the
//! number of functions.

use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 460.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
];

/// Renders `series` (name, samples in ns) as an SVG document.
pub fn cdf_svg(title: &str, series: &[(&str, &[u64])]) -> String {
    let all = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .filter(|v| *v > 0);
    let (lo, hi) = all.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi {
        (1_000, 1_000_000)
    } else {
        (lo, hi)
    };
    let (l0, l1) = (
        (lo as f64).log10().floor(),
        (hi as f64)
            .log10()
            .ceil()
            .max((lo as f64).log10().floor() + 1.0),
    );
    let x = |v: f64| LEFT + (v.max(1.0).log10() - l0) / (l1 - l0) * (W - LEFT - RIGHT);
    let y = |q: f64| H - BOTTOM - q * (H - TOP - BOTTOM);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{title}</text>"#
    );
    for d in (l0 as i32)..=(l1 as i32) {
        let px = x(10f64.powi(d));
        let label = match d {
            ..=2 => format!("{} ns", 10u64.pow(d.max(0) as u32)),
            3..=5 => format!("{} µs", 10u64.pow((d - 3) as u32)),
            6..=8 => format!("{} ms", 10u64.pow((d - 6) as u32)),
            _ => format!("{} s", 10u64.pow((d - 9) as u32)),
        };
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="{}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            y(0.0),
            y(1.0),
            y(0.0) + 18.0
        );
    }
    for q in [0.0, 0.5, 0.9, 0.99] {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{q}</text>"##,
            y(q),
            W - RIGHT,
            y(q),
            LEFT - 6.0,
            y(q) + 4.0
        );
    }
    for (i, (name, samples)) in series.iter().enumerate() {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let color = COLORS[i % COLORS.len()];
        let step = (s.len() / 400).max(1);
        let points: Vec<String> = s
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 1 == s.len())
            .map(|(k, v)| {
                format!(
                    "{:.1},{:.1}",
                    x(*v as f64),
                    y((k + 1) as f64 / s.len() as f64)
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 20.0 + i as f64 * 20.0;
        let _ = write!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            W - RIGHT + 38.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Renders one series against `x_label` (linear axes from zero) as an SVG document: a cost
/// against the number of functions (a straight, flat line is what "cost per function
/// stays flat" looks like), or instances over time.
pub fn line_svg(title: &str, x_label: &str, unit: &str, points: &[(f64, f64)]) -> String {
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let plot_w = W - LEFT - 40.0;
    let x = |v: f64| LEFT + v / max_x * plot_w;
    let y = |v: f64| H - BOTTOM - v / max_y * (H - TOP - BOTTOM);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="22" font-size="15">{title}</text>"#
    );
    // Three decimals for costs below one, none for counts and rates.
    let decimals = match max_y {
        y if y >= 100.0 => 0,
        y if y >= 1.0 => 2,
        _ => 3,
    };
    for k in 0..=4 {
        let (vx, vy) = (max_x * f64::from(k) / 4.0, max_y * f64::from(k) / 4.0);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{vy:.decimals$} {unit}</text><text x="{:.1}" y="{}" text-anchor="middle">{vx:.0}</text>"##,
            y(vy),
            LEFT + plot_w,
            y(vy),
            LEFT - 6.0,
            y(vy) + 4.0,
            x(vx),
            H - BOTTOM + 18.0,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{x_label}</text>"#,
        LEFT + plot_w / 2.0,
        H - 12.0
    );
    let line: Vec<String> = points
        .iter()
        .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
        .collect();
    let _ = write!(
        svg,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        COLORS[0],
        line.join(" ")
    );
    for (px, py) in points {
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"/>"#,
            x(*px),
            y(*py),
            COLORS[0]
        );
    }
    svg.push_str("</svg>\n");
    svg
}
