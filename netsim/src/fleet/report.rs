//! The fleet run's page: the outcome, SVG charts (fleet updated over time per wave and per
//! region; cellular, yard WiFi and backhaul bytes; yards against the fluid bound) and tables.

use std::fmt::Write as _;

use super::sim::{FleetSummary, OutageAt};
use crate::chart::{Axis, Band, LineChart, Marker, PALETTE, Series, Style, escape, grid};

/// `12.3 h`, or `not reached`.
pub(crate) fn hours(h: Option<f64>) -> String {
    h.map_or_else(|| "not reached".into(), |h| format!("{h:.1} h"))
}

/// `1.23`, or `-`.
pub(crate) fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}"))
}

/// Where the charts' time axis ends, hours since approval: a round number a little past the
/// later of 99 % of the fleet committed (`p99`) and the campaign's end (`ended`: completed,
/// halted or aborted), within the run (`first` to `last`, the first and last samples). A run
/// that reached neither is drawn whole.
pub fn time_axis_end(p99: Option<f64>, ended: Option<f64>, first: f64, last: f64) -> f64 {
    let Some(done) = [p99, ended].into_iter().flatten().reduce(f64::max) else {
        return last;
    };
    // A tenth of the span past it, so the flat end shows.
    let past = done + 0.1 * (done - first).max(1.0);
    Axis::nice(first, past, 6, false, false).hi.min(last)
}

/// When the campaign ended (its last decision was to complete, halt or abort), hours since
/// approval; `None` while it runs.
pub fn ended_hours(summary: &FleetSummary) -> Option<(f64, &str)> {
    summary
        .decisions
        .last()
        .filter(|d| matches!(d.decision.as_str(), "complete" | "halt" | "abort"))
        .map(|d| {
            let what = match d.decision.as_str() {
                "complete" => "completed",
                "halt" => "halted",
                _ => "aborted",
            };
            (d.hours, what)
        })
}

/// When the campaign ended and how long the run went on, after its state: ` at 38.7 h; the run
/// simulated 328.0 h`.
pub(crate) fn campaign_end(summary: &FleetSummary) -> String {
    match ended_hours(summary) {
        Some((at, _)) => format!(
            " at {at:.1} h after approval; the run simulated {:.1} h",
            summary.simulated_hours
        ),
        None => format!(
            " when the run ended, {:.1} h after approval",
            summary.simulated_hours
        ),
    }
}

/// The time axis every chart shares: from the first sample to [`time_axis_end`].
fn time_range(summary: &FleetSummary) -> (f64, f64) {
    let first = summary.samples.first().map_or(0.0, |s| s.hours);
    let last = summary.samples.last().map_or(1.0, |s| s.hours);
    let end = time_axis_end(
        summary.hours_to_fleet[2],
        ended_hours(summary).map(|(h, _)| h),
        first,
        last,
    );
    (first, end.max(first + 1e-6))
}

/// A depot outage as a shaded span.
fn outage_band(o: &OutageAt) -> Band {
    Band {
        from: o.from_hours,
        to: o.to_hours,
        label: format!("depot {} down", o.depot),
    }
}

/// A byte count's unit for an axis whose largest value is `most` bytes: (name, bytes).
fn byte_unit(most: f64) -> (&'static str, f64) {
    [("TiB", 1_099_511_627_776.0), ("GiB", 1_073_741_824.0)]
        .into_iter()
        .find(|&(_, size)| most >= 2.0 * size)
        .unwrap_or(("MiB", 1_048_576.0))
}

/// The charts of a run, each an SVG document: (file stem, svg).
pub fn charts(summary: &FleetSummary) -> Vec<(&'static str, String)> {
    let x: Vec<f64> = summary.samples.iter().map(|s| s.hours).collect();
    let range = time_range(summary);
    let bands: Vec<Band> = summary.depot_outages.iter().map(outage_band).collect();
    let fleet: Vec<f64> = summary
        .samples
        .iter()
        .map(|s| s.fleet_updated * 100.0)
        .collect();

    let waves = summary.samples.first().map_or(0, |s| s.wave_updated.len());
    let mut by_wave = LineChart::new(
        "Vehicles committed, per wave (share of the wave) and whole fleet, %",
        "hours since approval",
        "%",
        x.clone(),
    );
    by_wave.size = (960.0, 340.0);
    by_wave.x_range = Some(range);
    by_wave.y_max = Some(100.0);
    by_wave.series = (0..waves)
        .map(|w| {
            Series::new(
                format!("wave {}", w + 1),
                summary
                    .samples
                    .iter()
                    .map(|s| s.wave_updated[w] * 100.0)
                    .collect(),
            )
        })
        .collect();
    by_wave
        .series
        .push(Series::new("whole fleet", fleet.clone()).styled(Style::Emphasis));
    by_wave.bands.clone_from(&bands);
    // An outage takes one depot out of hundreds: a strip, not the whole fleet shaded.
    by_wave.band_strips = true;
    if let Some((at, what)) = ended_hours(summary) {
        by_wave.markers.push(Marker {
            at,
            label: format!("{what} {at:.1} h"),
        });
    }
    if let Some(at) = summary.hours_to_fleet[2] {
        by_wave.markers.push(Marker {
            at,
            label: format!("99 % {at:.1} h"),
        });
    }

    let regions = summary
        .samples
        .first()
        .map_or(0, |s| s.region_updated.len());
    let region_charts: Vec<LineChart> = (0..regions)
        .map(|r| {
            let values: Vec<f64> = summary
                .samples
                .iter()
                .map(|s| s.region_updated[r] * 100.0)
                .collect();
            let p99 = summary
                .samples
                .iter()
                .find(|s| s.region_updated[r] >= 0.99)
                .map_or_else(
                    || "99 % not reached".into(),
                    |s| format!("99 %: {:.0} h", s.hours),
                );
            let label = region_label(summary, u32::try_from(r).unwrap_or(u32::MAX));
            let mut chart = LineChart::new(
                format!("{label} — {p99}"),
                "hours since approval",
                "%",
                x.clone(),
            );
            chart.size = (240.0, 150.0);
            chart.legend = false;
            chart.x_range = Some(range);
            chart.y_max = Some(100.0);
            chart.series = vec![
                Series::new("whole fleet", fleet.clone()).styled(Style::Reference),
                Series::new(label, values).coloured(PALETTE[0]),
            ];
            chart.bands = summary
                .depot_outages
                .iter()
                .filter(|o| o.region as usize == r)
                .map(outage_band)
                .collect();
            chart
        })
        .collect();

    let bytes_of =
        |f: fn(&super::sim::Sample) -> f64| -> Vec<f64> { summary.samples.iter().map(f).collect() };
    let byte_charts: Vec<LineChart> = [
        ("cellular", bytes_of(|s| s.cellular_bytes)),
        ("yard WiFi", bytes_of(|s| s.wifi_bytes)),
        ("depot backhaul", bytes_of(|s| s.backhaul_bytes)),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, bytes))| {
        let (unit, size) = byte_unit(bytes.iter().copied().fold(0.0, f64::max));
        let mut chart = LineChart::new(
            format!("{name}, {unit}"),
            "hours since approval",
            unit,
            x.clone(),
        );
        chart.size = (320.0, 220.0);
        chart.legend = false;
        chart.x_range = Some(range);
        chart.series = vec![
            Series::new(name, bytes.iter().map(|b| b / size).collect())
                .coloured(PALETTE[[2, 1, 0][i]]),
        ];
        chart.bands.clone_from(&bands);
        chart.band_strips = true;
        chart
    })
    .collect();

    let outages_note = if summary.depot_outages.is_empty() {
        String::new()
    } else {
        "shaded: depot outages of the region".to_string()
    };
    vec![
        ("updated-by-wave", by_wave.svg()),
        (
            "updated-by-region",
            grid(
                "Vehicles committed per region (share of the region), %",
                &format!(
                    "grey: the whole fleet{}",
                    if outages_note.is_empty() {
                        String::new()
                    } else {
                        format!("; {outages_note}")
                    }
                ),
                &region_charts,
                4,
            ),
        ),
        (
            "bytes",
            grid(
                "Bytes moved (cumulative), each on its own scale",
                if bands.is_empty() {
                    "yard WiFi: from depots and between vehicles"
                } else {
                    "yard WiFi: from depots and between vehicles; shaded: depot outages"
                },
                &byte_charts,
                3,
            ),
        ),
    ]
}

/// Region `region`'s name in the report.
fn region_label(summary: &FleetSummary, region: u32) -> String {
    summary
        .region_labels
        .get(region as usize)
        .cloned()
        .unwrap_or_else(|| format!("region {region}"))
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
            escape(&region_label(summary, y.region)),
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
        .map(|(_, svg)| format!("<div class=\"chart\">{svg}</div>\n"))
        .collect();
    let (_, axis_end) = time_range(summary);
    let last = summary.samples.last().map_or(0.0, |s| s.hours);
    let span = if axis_end < last - 1e-9 {
        format!(
            "<p class=\"note\">The time axes end at {axis_end:.0} h, past the campaign's end and 99 % of the fleet committed; the run went on to {last:.0} h, which the summary above counts.</p>"
        )
    } else {
        String::new()
    };
    let mut outages = String::new();
    if !summary.depot_outages.is_empty() {
        outages.push_str("<h2>Depot outages</h2>\n<p>The depot cache serves nothing, relays no metadata and pauses its prefetch. Hours since approval.</p>\n<table><tr><th>depot</th><th>region</th><th>from (h)</th><th>to (h)</th><th>on the charts</th></tr>\n");
        for o in &summary.depot_outages {
            let shown = if o.to_hours <= summary.samples.first().map_or(0.0, |s| s.hours)
                || o.from_hours >= axis_end
            {
                "outside their span"
            } else {
                "shaded"
            };
            let _ = writeln!(
                outages,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{shown}</td></tr>",
                o.depot,
                escape(&region_label(summary, o.region)),
                o.from_hours,
                o.to_hours,
            );
        }
        outages.push_str("</table>\n");
    }
    #[allow(clippy::cast_precision_loss)]
    let rss_mib = summary.peak_rss_bytes as f64 / 1_048_576.0;
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netsim fleet: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1000px; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
#yards td:nth-child(2) {{ white-space: nowrap; }}
.chart {{ margin: 1.2em 0; }} .note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>netsim fleet: {name}</h1>
<p>{vehicles} vehicles, {depots} depots, {regions} regions; delta {delta:.1} MiB; seed {seed}.
Campaign: <b id="state">{state}</b>{end}
({events} events in {wall:.1} s, peak memory {rss:.0} MiB).</p>
<table>
<tr><th>fleet committed</th><td>50 %: {p50}</td><td>90 %: {p90}</td><td>99 %: {p99}</td></tr>
<tr><th>outcomes</th><td>committed {committed}</td><td>rolled back {rolled_back}, health check failed {health_failed}</td><td>not installed {not_installed}</td></tr>
<tr><th>cellular</th><td>{cell:.2} GiB in all, {on_cell} vehicles</td><td>per vehicle: mean {cmean:.2} MiB, median {cmed:.2} MiB</td><td>p99 {c99:.2} MiB, max {cmax:.2} MiB</td></tr>
<tr><th>yard WiFi</th><td>from depots {wd:.1} GiB</td><td>between vehicles {wp:.1} GiB</td><td>backhaul {bh:.1} GiB</td></tr>
<tr><th>without depots</th><td colspan="3">every vehicle over cellular: {cs:.1} GiB</td></tr>
<tr><th>yards / fluid bound</th><td>median {r50}</td><td>90th percentile {r90}</td><td>worst {r100}</td></tr>
</table>
{span}{charts}{outages}
<h2>Campaign decisions</h2>
<table><tr><th>hours</th><th>decision</th><th>reason</th></tr>
{decisions}</table>
<h2>Yards furthest from the fluid bound ({shown_yards} of {yard_count})</h2>
<p>Busy time is the time with at least one vehicle downloading; the bounds are summed over the
yard's busy periods with N the vehicles that joined each. Vehicles that park over hours stretch
the busy time past the bound.</p>
<table id="yards"><tr><th>depot</th><th>region</th><th>vehicles</th><th>from depot (GiB)</th><th>from peers (GiB)</th><th>busy (h)</th><th>fluid bound (h)</th><th>client-server (h)</th><th>ratio</th></tr>
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
        end = escape(&campaign_end(summary)),
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
        shown_yards = summary.yards.len().min(20),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_axis_ends_a_little_past_the_campaign() {
        // fleet-200k: completed at 38.7 h, 99 % at 49.4 h, sampled from -8 h to 328 h. The axis
        // ran to 328 h; now to the round hour past 99 %.
        assert_eq!(time_axis_end(Some(49.4), Some(38.7), -8.0, 328.0), 60.0);
        // Whichever came later: a campaign that completed after 99 % of the fleet committed.
        assert_eq!(time_axis_end(Some(20.0), Some(38.7), 0.0, 328.0), 50.0);
        // A halted campaign: its halt.
        assert_eq!(time_axis_end(None, Some(9.9), -8.0, 120.0), 15.0);
        // Neither: the whole run.
        assert_eq!(time_axis_end(None, None, -8.0, 120.0), 120.0);
        // Never past the run.
        assert_eq!(time_axis_end(Some(118.0), None, -8.0, 120.0), 120.0);
    }

    #[test]
    fn a_byte_axis_reads_in_a_unit_that_keeps_its_numbers_small() {
        assert_eq!(byte_unit(27_000.0 * 1_073_741_824.0).0, "TiB");
        assert_eq!(byte_unit(1_074.0 * 1_073_741_824.0).0, "GiB");
        assert_eq!(byte_unit(300.0 * 1_048_576.0).0, "MiB");
        assert_eq!(byte_unit(0.0).0, "MiB");
    }
}
