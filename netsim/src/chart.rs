//! SVG and HTML primitives both reports draw with (`netsim yard`'s and `netsim fleet`'s
//! pages): text escaped for HTML, and a line chart.

use std::fmt::Write as _;

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const PALETTE: [&str; 8] = [
    "#3b6fb6", "#4caf6e", "#d9822b", "#b3261e", "#7b52ab", "#2a9d8f", "#8d6e63", "#e76f51",
];

/// A line chart: `x` shared by every series; y from 0 to the largest value (or `y_max`).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x: &[f64],
    series: &[(String, Vec<f64>)],
    y_max: Option<f64>,
) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 300.0, 70.0, 40.0, 30.0, 160.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let x_min = x.first().copied().unwrap_or(0.0);
    let x_max = x.last().copied().unwrap_or(1.0).max(x_min + 1e-9);
    // An axis of our own choosing ends at a round number; a given one where it was given.
    let y_top = y_max
        .unwrap_or_else(|| {
            nice(
                series
                    .iter()
                    .flat_map(|(_, ys)| ys.iter().copied())
                    .fold(0.0, f64::max)
                    .max(1e-9),
            )
        })
        .max(1e-9);
    let px = |v: f64| left + pw * (v - x_min) / (x_max - x_min);
    let py = |v: f64| top + ph * (1.0 - v / y_top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         class=\"chart\"><text x=\"{left}\" y=\"18\" class=\"title\">{}</text>",
        escape(title)
    );
    // Axes and ticks.
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#444\"/>",
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for i in 0..=4 {
        let fx = f64::from(i) / 4.0;
        let xv = x_min + (x_max - x_min) * fx;
        let yv = y_top * fx;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>\
             <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            px(xv),
            top + ph + 16.0,
            short(xv),
            left - 6.0,
            py(yv) + 4.0,
            short(yv),
            py(yv),
            left + pw,
            py(yv),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{:.1}\" class=\"tick\" transform=\"rotate(-90 12 {:.1})\" \
         text-anchor=\"middle\">{}</text>",
        left + pw / 2.0,
        h - 6.0,
        escape(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, (name, ys)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut points = String::new();
        for (xv, yv) in x.iter().zip(ys) {
            let _ = write!(points, "{:.1},{:.1} ", px(*xv), py(*yv));
        }
        let legend_y = top + 14.0 * f64::from(u32::try_from(i).unwrap_or(0));
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{points}\"/>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\">{}</text>",
            left + pw + 12.0,
            legend_y,
            left + pw + 26.0,
            legend_y + 9.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v`: axis ticks at quarters of it read
/// well.
fn nice(v: f64) -> f64 {
    let scale = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * scale)
        .find(|&top| top >= v * (1.0 - 1e-12))
        .unwrap_or(v)
}

fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e12 {
        format!("{:.1}T", v / 1e12)
    } else if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
