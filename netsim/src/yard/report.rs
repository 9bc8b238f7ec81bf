//! The yard run's page: HTML with inline SVG, one file to open in a browser or attach to a ticket.

use std::fmt::Write as _;

use super::YardSummary;
use super::summary::{VehicleResult, time_to_update_text};
use crate::chart::{Axis, LineChart, MARK_TEXT, MONO_TEXT, Marker, SMALL_TEXT, Series, escape};

/// Colours of the timeline's phases.
const WAITING: &str = "#c9c9c9";
const DOWNLOAD: &str = "#3b6fb6";
const INSTALL: &str = "#d9822b";
const TRIAL: &str = "#7b52ab";
const COMMITTED: &str = "#1b7a3a";
const ROLLED_BACK: &str = "#b3261e";

/// Vehicles whose report the director had, per wave, against seconds since approval (a step
/// per report).
fn reports_chart(summary: &YardSummary) -> String {
    let waves = summary.results.iter().map(|r| r.wave).max().unwrap_or(0);
    let mut reports: Vec<(f64, usize)> = summary
        .results
        .iter()
        .filter_map(|r| Some((r.reported_after_secs?, r.wave)))
        .collect();
    reports.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut x = vec![0.0];
    let mut counts = vec![0.0; waves];
    let mut series: Vec<Vec<f64>> = vec![vec![0.0]; waves];
    for (at, wave) in reports {
        // Before and after the step, at the same time.
        x.push(at);
        for (w, ys) in series.iter_mut().enumerate() {
            ys.push(counts[w]);
        }
        if let Some(count) = counts.get_mut(wave.saturating_sub(1)) {
            *count += 1.0;
        }
        x.push(at);
        for (w, ys) in series.iter_mut().enumerate() {
            ys.push(counts[w]);
        }
    }
    let end = timeline_end(summary);
    x.push(end);
    for (w, ys) in series.iter_mut().enumerate() {
        ys.push(counts[w]);
    }
    let mut chart = LineChart::new(
        "Reports at the director (committed or rolled back), per wave",
        "seconds since approval",
        "vehicles",
        x,
    );
    chart.series = series
        .into_iter()
        .enumerate()
        .map(|(w, ys)| Series::new(format!("wave {}", w + 1), ys))
        .collect();
    chart.x_range = Some((0.0, x_axis(summary).hi));
    #[allow(clippy::cast_precision_loss)]
    let most = summary
        .results
        .iter()
        .filter(|r| r.wave > 0)
        .fold(vec![0usize; waves], |mut n, r| {
            n[r.wave - 1] += 1;
            n
        })
        .into_iter()
        .max()
        .unwrap_or(1) as f64;
    chart.y_max = Some(most.max(1.0));
    chart.y_integer = true;
    chart.size = (760.0, 260.0);
    chart.markers = phase_markers(summary);
    chart.svg()
}

/// The last instant anything happened, seconds since approval.
fn timeline_end(summary: &YardSummary) -> f64 {
    summary
        .results
        .iter()
        .flat_map(|r| [r.finished_after_secs, r.reported_after_secs])
        .flatten()
        .chain([summary.seconds])
        .fold(0.0, f64::max)
}

/// The time axis of the yard's charts: from approval to a round second past the end.
fn x_axis(summary: &YardSummary) -> Axis {
    Axis::nice(0.0, timeline_end(summary).max(1.0), 10, false, true)
}

/// The campaign's moments: each wave after the first opening, and its end.
fn phase_markers(summary: &YardSummary) -> Vec<Marker> {
    let mut markers: Vec<Marker> = summary
        .waves_opened_after_secs
        .iter()
        .enumerate()
        .skip(1)
        .map(|(w, &at)| Marker {
            at,
            label: format!("wave {} opens", w + 1),
        })
        .collect();
    if let Some(at) = summary.ended_after_secs {
        markers.push(Marker {
            at,
            label: summary.state.clone(),
        });
    }
    markers
}

/// One vehicle's phases, seconds since approval: (from, to, colour, what).
fn phases(r: &VehicleResult) -> Vec<(f64, f64, &'static str, String)> {
    let mut phases = Vec::new();
    let Some(start) = r.fetch_started_after_secs else {
        return phases;
    };
    let fetch = r.fetch_secs.unwrap_or(0.0);
    let fetched = start + fetch;
    let kib: u64 = r.downloads.iter().map(|d| d.received).sum::<u64>() / 1024;
    phases.push((
        start,
        fetched,
        DOWNLOAD,
        format!(
            "{}: download, {fetch:.2} s, {kib} KiB ({:.1} s to {fetched:.1} s)",
            r.vin, start
        ),
    ));
    if let Some(trial) = r.trial_boot_after_secs {
        phases.push((
            fetched,
            trial,
            INSTALL,
            format!(
                "{}: install (the new image into the inactive bank, the ECU switched), {:.2} s",
                r.vin,
                trial - fetched
            ),
        ));
        if let Some(end) = r.finished_after_secs {
            phases.push((
                trial,
                end,
                TRIAL,
                format!(
                    "{}: trial boot and health check, {:.2} s",
                    r.vin,
                    end - trial
                ),
            ));
        }
    }
    phases
}

/// Each vehicle's update on one time axis: waiting for its wave, download, install, trial
/// boot, commit or rollback, and the director having its report.
fn vehicle_timeline(summary: &YardSummary) -> String {
    let axis = x_axis(summary);
    let (left, plot, row, top) = (150.0, 860.0, 26.0, 50.0);
    let px = |v: f64| left + plot * (v - axis.lo) / (axis.hi - axis.lo).max(1e-9);
    #[allow(clippy::cast_precision_loss)]
    let height = top + row * summary.results.len() as f64 + 34.0;
    let width = left + plot + 90.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" id=\"timeline\">"
    );
    // The legend.
    let legend = [
        (WAITING, "waiting (wave not open, update not seen)"),
        (DOWNLOAD, "download"),
        (INSTALL, "install"),
        (TRIAL, "trial boot, health check"),
    ];
    let mut x = left;
    for (colour, what) in legend {
        let _ = write!(
            svg,
            "<rect x=\"{x:.0}\" y=\"6\" width=\"14\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.0}\" y=\"15\" {SMALL_TEXT}>{what}</text>",
            x + 18.0
        );
        #[allow(clippy::cast_precision_loss)]
        let advance = 30.0 + 6.2 * what.len() as f64;
        x += advance;
    }
    let _ = write!(
        svg,
        "<circle cx=\"{:.0}\" cy=\"11\" r=\"5\" fill=\"{COMMITTED}\"/>\
         <text x=\"{:.0}\" y=\"15\" {SMALL_TEXT}>committed</text>\
         <path d=\"M{:.0},7 l8,8 M{:.0},15 l8,-8\" stroke=\"{ROLLED_BACK}\" stroke-width=\"2.5\"/>\
         <text x=\"{:.0}\" y=\"15\" {SMALL_TEXT}>rolled back</text>\
         <path d=\"M{:.0},5 l6,6 l-6,6 l-6,-6 z\" fill=\"#111\"/>\
         <text x=\"{:.0}\" y=\"15\" {SMALL_TEXT}>report at the director</text>",
        x + 5.0,
        x + 14.0,
        x + 86.0,
        x + 86.0,
        x + 100.0,
        x + 176.0,
        x + 186.0,
    );
    let bottom = top + row * f64::from(u32::try_from(summary.results.len()).unwrap_or(0));
    // Grid and ticks.
    for v in axis.ticks() {
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top:.0}\" x2=\"{x:.1}\" y2=\"{bottom:.0}\" stroke=\"#e6e6e6\"/>\
             <text x=\"{x:.1}\" y=\"{:.0}\" {SMALL_TEXT} text-anchor=\"middle\">{}</text>",
            bottom + 14.0,
            axis.label(v),
            x = px(v),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.0}\" y=\"{:.0}\" {SMALL_TEXT} text-anchor=\"middle\">seconds since approval</text>",
        left + plot / 2.0,
        bottom + 30.0
    );
    for marker in phase_markers(summary) {
        let x = px(marker.at);
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.0}\" x2=\"{x:.1}\" y2=\"{bottom:.0}\" stroke=\"#111\" \
             stroke-dasharray=\"2 3\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\" {MARK_TEXT}>{}</text>",
            top - 14.0,
            x + 3.0,
            top - 6.0,
            escape(&marker.label),
        );
    }
    for (i, r) in summary.results.iter().enumerate() {
        let y = top + row * f64::from(u32::try_from(i).unwrap_or(0));
        let mid = y + row / 2.0;
        let _ = write!(
            svg,
            "<g class=\"vehicle\" data-vin=\"{vin}\"><text x=\"0\" y=\"{:.1}\" {MONO_TEXT}>\
             {vin} · wave {}</text>",
            mid + 4.0,
            r.wave,
            vin = escape(&r.vin),
        );
        // Waiting: from approval until its update began (or the end, if it never did).
        let waited = r
            .fetch_started_after_secs
            .unwrap_or_else(|| timeline_end(summary));
        let _ = write!(
            svg,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"4\" fill=\"{WAITING}\">\
             <title>{}: waiting, {waited:.1} s</title></rect>",
            mid - 2.0,
            (px(waited) - left).max(0.0),
            escape(&r.vin),
        );
        for (from, to, colour, what) in phases(r) {
            // Bars stay visible however short (a loopback fetch takes milliseconds).
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"{colour}\">\
                 <title>{}</title></rect>",
                px(from),
                mid - 7.0,
                (px(to) - px(from)).max(3.0),
                escape(&what),
            );
        }
        match (r.finished_after_secs, r.outcome.as_deref()) {
            (Some(at), Some(outcome)) if outcome.starts_with("committed") => {
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"5\" fill=\"{COMMITTED}\">\
                     <title>{}: committed at {at:.1} s</title></circle>",
                    px(at) + 5.0,
                    escape(&r.vin)
                );
            }
            (Some(at), Some(outcome)) => {
                let _ = write!(
                    svg,
                    "<path d=\"M{:.1},{:.1} l8,8 M{:.1},{:.1} l8,-8\" stroke=\"{ROLLED_BACK}\" \
                     stroke-width=\"2.5\"><title>{}: {} at {at:.1} s</title></path>",
                    px(at) + 1.0,
                    mid - 4.0,
                    px(at) + 1.0,
                    mid + 4.0,
                    escape(&r.vin),
                    escape(outcome),
                );
            }
            _ => {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" {SMALL_TEXT}>not offered</text>",
                    px(waited) + 6.0,
                    mid + 4.0
                );
            }
        }
        if let Some(at) = r.reported_after_secs {
            let x = px(at);
            let _ = write!(
                svg,
                "<path d=\"M{x:.1},{:.1} l6,6 l-6,6 l-6,-6 z\" fill=\"#111\" fill-opacity=\"0.85\">\
                 <title>{}: report at the director at {at:.1} s (via {})</title></path>",
                mid - 6.0,
                escape(&r.vin),
                escape(r.report_via.as_deref().unwrap_or("?")),
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}

/// What each vehicle fetched, what arrived and from whom; why more arrived than the payload,
/// when it did.
fn fetched_table(summary: &YardSummary) -> String {
    let kib = |bytes: u64| format!("{:.0}", bytes as f64 / 1024.0);
    let mut rows = String::new();
    for r in &summary.results {
        for d in &r.downloads {
            // Who gave most first.
            let mut senders: Vec<(&String, &u64)> = d.from.iter().collect();
            senders.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let from: Vec<String> = senders
                .into_iter()
                .map(|(who, bytes)| format!("{} {} KiB", escape(who), kib(*bytes)))
                .collect();
            let class = if d.twice() > 0 { "warn wrap" } else { "wrap" };
            let note = format!("<td class=\"{class}\">{}</td>", escape(&d.beyond_payload()));
            let _ = writeln!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td>{note}</tr>",
                escape(&r.vin),
                escape(&d.payload),
                kib(d.length),
                kib(d.received),
                from.join(", "),
                d.seconds,
            );
        }
    }
    if rows.is_empty() {
        return "<p>No vehicle fetched anything.</p>".into();
    }
    format!(
        "<table id=\"fetched\"><tr><th>vehicle</th><th>payload</th><th>size (KiB)</th>\
         <th>arrived (KiB)</th><th>from</th><th>fetch (s)</th><th>beyond the payload</th></tr>\n\
         {rows}</table>\n<p class=\"note\">Arrived: verified bytes of the payload's 16 KiB chunk \
         groups, as the vehicle's agent counts them; metadata and proofs are not in it. More than \
         the payload arrives when the same groups come from two peers: at the end of a fetch the \
         engine asks a second peer for groups still in flight (its endgame), and a request that \
         timed out (after 10 s) is asked elsewhere; both answers are verified and counted, the \
         store keeps one copy. A delta of a few hundred KiB is one or two requests of up to 16 \
         groups, all in flight from the start: the endgame begins at once, and a vehicle with two \
         fast neighbours can receive much of it twice. A fetch that resumes counts only what it \
         still needed.</p>"
    )
}

/// The yard run's page: the outcome, each vehicle's timeline, the reports per wave, the bytes
/// per vehicle and where they came from, and the table.
pub(super) fn yard_html(summary: &YardSummary) -> String {
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    let most = summary
        .results
        .iter()
        .map(|r| r.bytes_from_depot + r.bytes_from_peers)
        .max()
        .unwrap_or(0)
        .max(1);
    let (row, width) = (24.0, 560.0);
    let mut bars = String::new();
    for (i, r) in summary.results.iter().enumerate() {
        let y = 4.0 + i as f64 * row;
        let depot = width * r.bytes_from_depot as f64 / most as f64;
        let peers = width * r.bytes_from_peers as f64 / most as f64;
        let _ = write!(
            bars,
            "<text x=\"0\" y=\"{ty:.0}\" {MONO_TEXT}>{vin}</text>\
             <rect x=\"90\" y=\"{y:.0}\" width=\"{depot:.1}\" height=\"16\" fill=\"#3b6fb6\"/>\
             <rect x=\"{px:.1}\" y=\"{y:.0}\" width=\"{peers:.1}\" height=\"16\" fill=\"#4caf6e\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.0}\" {SMALL_TEXT}>{total:.0} KiB</text>",
            ty = y + 12.0,
            vin = escape(&r.vin),
            px = 90.0 + depot,
            tx = 96.0 + depot + peers,
            total = (r.bytes_from_depot + r.bytes_from_peers) as f64 / 1024.0,
        );
    }
    let height = 10.0 + summary.results.len() as f64 * row;
    let mut rows = String::new();
    for r in &summary.results {
        let ecus: Vec<String> = r
            .ecus
            .iter()
            .map(|(serial, (image, slot))| {
                let from = match r.compressed_bytes {
                    Some(_) => ", installed from the compressed image",
                    None => "",
                };
                format!("{serial}: {image} (slot {slot}{from})")
            })
            .collect();
        let outcome = r.outcome.clone().unwrap_or_else(|| "not offered".into());
        let class = if outcome.starts_with("committed") {
            "ok"
        } else if outcome.starts_with("rolled back") {
            "bad"
        } else {
            ""
        };
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.1}"));
        let _ = writeln!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"{class} wrap\">{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td></tr>",
            escape(&r.vin),
            r.wave,
            escape(&outcome),
            mib(r.bytes_from_depot),
            mib(r.bytes_from_peers),
            r.fetch_secs.map_or("-".into(), |s| format!("{s:.2}")),
            secs(r.finished_after_secs),
            secs(r.reported_after_secs),
            escape(r.report_via.as_deref().unwrap_or("-")),
            escape(&ecus.join("; ")),
        );
    }
    let state_class = if summary.state == "completed" {
        "ok"
    } else {
        "bad"
    };
    let expectation = if summary.as_expected {
        format!(
            "<span class=\"ok\" id=\"verdict\">as expected</span> (expected: {})",
            summary.expected.state()
        )
    } else {
        format!(
            "<span class=\"bad\" id=\"verdict\">not as expected</span>: expected {}, so <code>netsim yard</code> exits with {}",
            summary.expected.state(),
            super::UNEXPECTED_EXIT
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netsim yard: {campaign}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1120px; }}
table {{ border-collapse: collapse; margin-bottom: 0.6em; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }}
td.wrap {{ white-space: normal; }}
.ok {{ color: #1b7a3a; font-weight: 600; }} .bad {{ color: #b3261e; font-weight: 600; }}
.warn {{ color: #8a5a00; }} .note {{ color: #555; font-size: 0.9em; max-width: 1000px; }}
h2 {{ margin-top: 1.4em; }}
</style></head><body>
<h1>netsim yard</h1>
<p>Campaign <b>{campaign}</b>: <span class="{state_class}" id="state">{state}</span>{reason} after {seconds:.1} s; {expectation}.<br>
{vehicles} vehicles; image {image:.1} MiB, delta {delta:.1} KiB{compressed}{failing}. The depot served {served:.2} MiB to the yard and took {backhaul:.2} MiB over its backhaul.<br>
Time to update (the director's, from a vehicle's wave opening to its commit): {ttu}.</p>
<h2>Each vehicle, over time</h2>
{vehicle_timeline}
<p class="note">Times are netsim's own: it stamps the start and end of every check a vehicle's agent makes and asks the director every 0.2 s. The download starts with the check that fetched (its metadata refresh, milliseconds on loopback, is counted in it) and lasts as long as the agent timed the fetch; the install runs from there to the end of that check (the new image written into the inactive bank, the ECU switched to its trial and rebooted); the trial boot to the commit or rollback (the health check). Hover over a bar for its figures.</p>
<h2>Reports at the director</h2>
{reports}
<h2>Bytes per vehicle</h2>
<p><span style="color:#3b6fb6">■</span> from the depot <span style="color:#4caf6e">■</span> from neighbouring vehicles</p>
<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{height:.0}">{bars}</svg>
<h2>What each vehicle fetched</h2>
{fetched}
<h2>Vehicles</h2>
<table><tr><th>vehicle</th><th>wave</th><th>outcome</th><th>from depot (MiB)</th><th>from peers (MiB)</th><th>fetch (s)</th><th>done after (s)</th><th>reported after (s)</th><th>report via</th><th>ECUs</th></tr>
{rows}</table>
</body></html>
"#,
        vehicle_timeline = vehicle_timeline(summary),
        reports = reports_chart(summary),
        fetched = fetched_table(summary),
        campaign = escape(summary.campaign.as_str()),
        state = escape(&summary.state),
        reason = summary
            .reason
            .as_ref()
            .map(|r| format!(" (<span id=\"reason\">{}</span>)", escape(r)))
            .unwrap_or_default(),
        seconds = summary.seconds,
        vehicles = summary.vehicles,
        image = mib(summary.image_bytes),
        delta = summary.delta_bytes as f64 / 1024.0,
        compressed = summary.compressed_bytes.map_or(String::new(), |c| format!(
            ", compressed image {:.1} MiB (for {} replaced gateway{})",
            mib(c),
            summary.replaced_parts,
            if summary.replaced_parts == 1 { "" } else { "s" }
        )),
        failing = if summary.failing_canary {
            "; the release fails its health check"
        } else {
            ""
        },
        served = mib(summary.depot_served_bytes),
        backhaul = mib(summary.depot_backhaul_bytes),
        ttu = escape(&time_to_update_text(&summary.time_to_update_secs)),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::yard::{Download, Expected};

    fn vehicle(vin: &str, wave: usize, outcome: Option<&str>) -> VehicleResult {
        let installed = outcome.is_some();
        VehicleResult {
            vin: vin.into(),
            wave,
            outcome: outcome.map(str::to_string),
            ecus: BTreeMap::new(),
            banks: "A/B".into(),
            single_bank: None,
            bytes_from_depot: if installed { 334_740 } else { 0 },
            bytes_from_peers: if installed { 163_840 } else { 0 },
            finished_after_secs: installed.then_some(3.2),
            fetch_secs: installed.then_some(0.2),
            reported_after_secs: installed.then_some(3.4),
            delta_bytes: installed.then_some(334_740),
            payloads: Vec::new(),
            compressed_bytes: None,
            report_via: installed.then(|| "depot".into()),
            downloads: if installed {
                vec![Download {
                    payload: "delta".into(),
                    blob: "ce15".into(),
                    length: 334_740,
                    received: 498_580,
                    seconds: 0.2,
                    from: BTreeMap::from([("depot".into(), 334_740), ("YARD-02".into(), 163_840)]),
                }]
            } else {
                Vec::new()
            },
            fetch_started_after_secs: installed.then_some(2.1),
            trial_boot_after_secs: installed.then_some(2.9),
        }
    }

    fn summary() -> YardSummary {
        YardSummary {
            vehicles: 3,
            image_bytes: 2 << 20,
            delta_bytes: 334_740,
            compressed_bytes: None,
            replaced_parts: 0,
            failing_canary: true,
            vehicle_down_bytes_per_sec: None,
            depot_up_bytes_per_sec: None,
            campaign: "yard-gw-2-0".parse().unwrap_or_else(|_| unreachable!()),
            state: "halted".into(),
            reason: Some("1 failed health checks in wave 1".into()),
            time_to_update_secs: serde_json::json!([null, null, null]),
            expected: Expected::Completed,
            as_expected: false,
            waves_opened_after_secs: vec![0.0],
            ended_after_secs: Some(3.6),
            depot_served_bytes: 0,
            depot_backhaul_bytes: 0,
            seconds: 3.8,
            completed_after_secs: None,
            corrupt_peer: None,
            slow_reader: None,
            report_flood: None,
            results: vec![
                vehicle("YARD-01", 1, Some("committed")),
                vehicle("YARD-02", 1, Some("rolled back: health check failed")),
                vehicle("YARD-03", 2, None),
            ],
            report: "unused".into(),
        }
    }

    #[test]
    fn every_vehicle_has_a_timeline_row_with_its_phases() {
        let html = yard_html(&summary());
        let timeline = vehicle_timeline(&summary());
        crate::chart::tests::assert_no_attribute_twice(&timeline);
        for vin in ["YARD-01", "YARD-02", "YARD-03"] {
            let row = timeline
                .split(&format!("<g class=\"vehicle\" data-vin=\"{vin}\">"))
                .nth(1)
                .unwrap_or_else(|| panic!("no row for {vin}"));
            let row = row.split("</g>").next().unwrap_or_default();
            let installed = vin != "YARD-03";
            for phase in [
                "download, 0.20 s",
                "install (",
                "trial boot and health check",
            ] {
                assert_eq!(row.contains(phase), installed, "{vin} {phase}: {row}");
            }
            assert_eq!(row.contains(">not offered<"), !installed, "{vin}: {row}");
        }
        assert!(timeline.contains("committed at 3.2 s"), "{timeline}");
        assert!(timeline.contains("rolled back: health check failed at 3.2 s"));
        assert!(timeline.contains(">halted<"), "{timeline}");
        // The page says the run did not go as expected, and why more than the delta came.
        assert!(html.contains("id=\"verdict\">not as expected<"), "{html}");
        assert!(html.contains("none (no vehicle committed)"), "{html}");
        assert!(
            html.contains("+160 KiB came twice: 10 of its 21 chunk groups again"),
            "{html}"
        );
        assert!(html.contains("depot 327 KiB, YARD-02 160 KiB"), "{html}");
    }
}
