//! The yard run's page: HTML with inline SVG, one file to open in a browser or attach to a ticket.

use super::YardSummary;
use crate::chart::escape;

/// Vehicles whose report the director had, per wave, against seconds since approval (a step
/// per report).
fn timeline(summary: &YardSummary) -> String {
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
    let end = summary.seconds.max(x.last().copied().unwrap_or(0.0));
    x.push(end);
    for (w, ys) in series.iter_mut().enumerate() {
        ys.push(counts[w]);
    }
    let named: Vec<(String, Vec<f64>)> = series
        .into_iter()
        .enumerate()
        .map(|(w, ys)| (format!("wave {}", w + 1), ys))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let most = summary.results.len().max(1) as f64;
    crate::chart::line_chart(
        "Reports at the director (committed or rolled back), per wave",
        "seconds since approval",
        "vehicles",
        &x,
        &named,
        Some(most),
    )
}

/// The yard run's page: the outcome, a bar per vehicle (bytes from the depot and from
/// neighbours) and the table.
pub(super) fn yard_html(summary: &YardSummary) -> String {
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    let most = summary
        .results
        .iter()
        .map(|r| r.bytes_from_depot + r.bytes_from_peers)
        .max()
        .unwrap_or(0)
        .max(1);
    let (row, width) = (28.0, 520.0);
    let mut bars = String::new();
    for (i, r) in summary.results.iter().enumerate() {
        let y = 10.0 + i as f64 * row;
        let depot = width * r.bytes_from_depot as f64 / most as f64;
        let peers = width * r.bytes_from_peers as f64 / most as f64;
        bars.push_str(&format!(
            "<text x=\"0\" y=\"{ty:.0}\" class=\"label\">{vin}</text>\
             <rect x=\"90\" y=\"{y:.0}\" width=\"{depot:.1}\" height=\"18\" fill=\"#3b6fb6\"/>\
             <rect x=\"{px:.1}\" y=\"{y:.0}\" width=\"{peers:.1}\" height=\"18\" fill=\"#4caf6e\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.0}\" class=\"label\">{total:.2} MiB</text>",
            ty = y + 14.0,
            vin = escape(&r.vin),
            px = 90.0 + depot,
            tx = 96.0 + depot + peers,
            total = mib(r.bytes_from_depot + r.bytes_from_peers),
        ));
    }
    let height = 20.0 + summary.results.len() as f64 * row;
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
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&r.vin),
            r.wave,
            escape(&outcome),
            mib(r.bytes_from_depot),
            mib(r.bytes_from_peers),
            r.finished_after_secs.map_or("-".into(), |s| format!("{s:.1}")),
            escape(r.report_via.as_deref().unwrap_or("-")),
            escape(&ecus.join("; ")),
        ));
    }
    let state_class = if summary.state == "completed" {
        "ok"
    } else {
        "bad"
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>netsim yard: {campaign}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.ok {{ color: #1b7a3a; font-weight: 600; }} .bad {{ color: #b3261e; font-weight: 600; }}
.label {{ font-size: 12px; font-family: monospace; }}
</style></head><body>
<h1>netsim yard</h1>
<p>Campaign <b>{campaign}</b>: <span class="{state_class}" id="state">{state}</span>{reason} after {seconds:.1} s.
{vehicles} vehicles; image {image:.1} MiB, delta {delta:.1} KiB{compressed}{failing}. The depot served {served:.2} MiB to the yard and took {backhaul:.2} MiB over its backhaul.
Director time to update (p50, p90, p99 s): {ttu}.</p>
<h2>Bytes per vehicle</h2>
<p><span style="color:#3b6fb6">■</span> from the depot <span style="color:#4caf6e">■</span> from neighbouring vehicles</p>
<svg width="760" height="{height:.0}" xmlns="http://www.w3.org/2000/svg">{bars}</svg>
<h2>Over time</h2>
{timeline}
<h2>Vehicles</h2>
<table><tr><th>vehicle</th><th>wave</th><th>outcome</th><th>from depot (MiB)</th><th>from peers (MiB)</th><th>done after (s)</th><th>report via</th><th>ECUs</th></tr>
{rows}</table>
</body></html>
"#,
        timeline = timeline(summary),
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
        ttu = escape(&summary.time_to_update_secs.to_string()),
    )
}
