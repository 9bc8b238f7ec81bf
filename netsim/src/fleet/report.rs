//! The fleet run's page: the outcome, SVG charts (fleet updated over time per wave and per
//! region; cellular, yard WiFi and backhaul bytes; yards against the fluid bound) and tables.

use std::fmt::Write as _;

use super::sim::FleetSummary;
use crate::report::escape;

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

/// `12.3 h`, or `not reached`.
pub(crate) fn hours(h: Option<f64>) -> String {
    h.map_or_else(|| "not reached".into(), |h| format!("{h:.1} h"))
}

/// `1.23`, or `-`.
pub(crate) fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

/// The charts of a run, each an SVG document: (file stem, svg).
pub fn charts(summary: &FleetSummary) -> Vec<(&'static str, String)> {
    let x: Vec<f64> = summary.samples.iter().map(|s| s.hours).collect();
    let waves = summary.samples.first().map_or(0, |s| s.wave_updated.len());
    let mut by_wave: Vec<(String, Vec<f64>)> = (0..waves)
        .map(|w| {
            (
                format!("wave {}", w + 1),
                summary
                    .samples
                    .iter()
                    .map(|s| s.wave_updated[w] * 100.0)
                    .collect(),
            )
        })
        .collect();
    by_wave.push((
        "whole fleet".into(),
        summary
            .samples
            .iter()
            .map(|s| s.fleet_updated * 100.0)
            .collect(),
    ));
    let regions = summary
        .samples
        .first()
        .map_or(0, |s| s.region_updated.len());
    // At most eight regions drawn: the first eight (the legend says so).
    let by_region: Vec<(String, Vec<f64>)> = (0..regions.min(8))
        .map(|r| {
            (
                format!("region {r}"),
                summary
                    .samples
                    .iter()
                    .map(|s| s.region_updated[r] * 100.0)
                    .collect(),
            )
        })
        .collect();
    let gib = |f: fn(&super::sim::Sample) -> f64| -> Vec<f64> {
        summary
            .samples
            .iter()
            .map(|s| f(s) / 1_073_741_824.0)
            .collect()
    };
    let bytes = vec![
        ("cellular".to_string(), gib(|s| s.cellular_bytes)),
        ("yard WiFi".to_string(), gib(|s| s.wifi_bytes)),
        ("depot backhaul".to_string(), gib(|s| s.backhaul_bytes)),
    ];
    let region_title = if regions > 8 {
        format!("Fleet updated per region (first 8 of {regions}), %")
    } else {
        "Fleet updated per region, %".to_string()
    };
    vec![
        (
            "updated-by-wave",
            line_chart(
                "Vehicles committed, per wave (share of the wave) and whole fleet, %",
                "hours since approval",
                "%",
                &x,
                &by_wave,
                Some(100.0),
            ),
        ),
        (
            "updated-by-region",
            line_chart(
                &region_title,
                "hours since approval",
                "%",
                &x,
                &by_region,
                Some(100.0),
            ),
        ),
        (
            "bytes",
            line_chart(
                "Bytes moved (cumulative), GiB",
                "hours since approval",
                "GiB",
                &x,
                &bytes,
                None,
            ),
        ),
    ]
}

/// The page.
pub fn html(summary: &FleetSummary) -> String {
    let gib = |b: f64| b / 1_073_741_824.0;
    let mib = |b: f64| b / 1_048_576.0;
    let mut decisions = String::new();
    for d in &summary.decisions {
        let _ = writeln!(
            decisions,
            "<tr><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            d.hours,
            escape(&d.decision),
            escape(&d.reason)
        );
    }
    let mut yards: Vec<_> = summary.yards.iter().collect();
    yards.sort_by(|a, b| {
        b.ratio_to_fluid
            .unwrap_or(0.0)
            .total_cmp(&a.ratio_to_fluid.unwrap_or(0.0))
    });
    let mut yard_rows = String::new();
    for y in yards.iter().take(20) {
        let _ = writeln!(
            yard_rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            y.depot,
            y.region,
            y.vehicles,
            gib(y.bytes_from_depot),
            gib(y.bytes_from_peers),
            y.busy_secs / 3600.0,
            y.fluid_bound_secs / 3600.0,
            y.client_server_secs / 3600.0,
            y.ratio_to_fluid.map_or("-".into(), |r| format!("{r:.2}")),
        );
    }
    let charts: String = charts(summary)
        .into_iter()
        .map(|(_, svg)| format!("<div>{svg}</div>\n"))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let rss_mib = summary.peak_rss_bytes as f64 / 1_048_576.0;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netsim fleet: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1000px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.title {{ font-size: 14px; font-weight: 600; }} .tick {{ font-size: 11px; fill: #444; }}
</style></head><body>
<h1>netsim fleet: {name}</h1>
<p>{vehicles} vehicles, {depots} depots, {regions} regions; delta {delta:.1} MiB; seed {seed}.
Campaign: <b id="state">{state}</b> after {hours:.1} simulated hours
({events} events in {wall:.1} s, peak memory {rss:.0} MiB).</p>
<table>
<tr><th>fleet committed</th><td>50 %: {p50}</td><td>90 %: {p90}</td><td>99 %: {p99}</td></tr>
<tr><th>outcomes</th><td>committed {committed}</td><td>rolled back {rolled_back}, health check failed {health_failed}</td><td>not installed {not_installed}</td></tr>
<tr><th>cellular</th><td>{cell:.2} GiB in all, {on_cell} vehicles</td><td>per vehicle: mean {cmean:.2} MiB, median {cmed:.2} MiB</td><td>p99 {c99:.2} MiB, max {cmax:.2} MiB</td></tr>
<tr><th>yard WiFi</th><td>from depots {wd:.1} GiB</td><td>between vehicles {wp:.1} GiB</td><td>backhaul {bh:.1} GiB</td></tr>
<tr><th>without depots</th><td colspan="3">every vehicle over cellular: {cs:.1} GiB</td></tr>
<tr><th>yards / fluid bound</th><td>median {r50}</td><td>90th percentile {r90}</td><td>worst {r100}</td></tr>
</table>
{charts}
<h2>Campaign decisions</h2>
<table><tr><th>hours</th><th>decision</th><th>reason</th></tr>
{decisions}</table>
<h2>Yards furthest from the fluid bound (20 of {yard_count})</h2>
<p>Busy time is the time with at least one vehicle downloading; the bounds are summed over the
yard's busy periods with N the vehicles that joined each. Vehicles that park over hours stretch
the busy time past the bound.</p>
<table><tr><th>depot</th><th>region</th><th>vehicles</th><th>from depot (GiB)</th><th>from peers (GiB)</th><th>busy (h)</th><th>fluid bound (h)</th><th>client-server (h)</th><th>ratio</th></tr>
{yard_rows}</table>
</body></html>
"#,
        name = escape(&summary.scenario),
        vehicles = summary.vehicles,
        depots = summary.depots,
        regions = summary.regions,
        delta = mib(summary.delta_bytes),
        seed = summary.seed,
        state = escape(&summary.campaign_state),
        hours = summary.simulated_hours,
        events = summary.events,
        wall = summary.wall_secs,
        rss = rss_mib,
        p50 = hours(summary.hours_to_fleet[0]),
        p90 = hours(summary.hours_to_fleet[1]),
        p99 = hours(summary.hours_to_fleet[2]),
        committed = summary.committed,
        rolled_back = summary.rolled_back,
        health_failed = summary.health_failed,
        not_installed = summary.not_installed,
        cell = gib(summary.cellular_bytes),
        on_cell = summary.vehicles_on_cellular,
        cmean = mib(summary.cellular_per_vehicle[0]),
        cmed = mib(summary.cellular_per_vehicle[1]),
        c99 = mib(summary.cellular_per_vehicle[2]),
        cmax = mib(summary.cellular_per_vehicle[3]),
        wd = gib(summary.wifi_depot_bytes),
        wp = gib(summary.wifi_peer_bytes),
        bh = gib(summary.backhaul_bytes),
        cs = gib(summary.client_server_bytes),
        r50 = ratio(summary.yard_ratio[0]),
        r90 = ratio(summary.yard_ratio[1]),
        r100 = ratio(summary.yard_ratio[2]),
        yard_count = summary.yards.len(),
    )
}
