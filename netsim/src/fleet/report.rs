//! The fleet run's page: the outcome, SVG charts (fleet updated over time per wave and per
//! region; cellular, yard WiFi and backhaul bytes; yards against the fluid bound) and tables.

use std::fmt::Write as _;

use super::sim::FleetSummary;
use crate::chart::{escape, line_chart};

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
