//! `netsim fleet`: a campaign across a whole fleet, in simulated time, at the level of flows
//! ([`sim`]), from a scenario ([`scenario`]); writes `summary.json`, SVG charts and
//! `report.html` ([`report`]).

pub mod flow;
pub mod report;
pub mod scenario;
pub mod sim;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

pub use scenario::{Checked, Scenario};
pub use sim::{FleetSummary, RunProgress, run, run_with_progress};

/// Writes a run's `summary.json`, charts (`*.svg`) and `report.html` into `out` (created if
/// missing; files of the same names are replaced).
pub fn write(summary: &FleetSummary, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_vec_pretty(summary)?;
    let path = out.join("summary.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    for (stem, svg) in report::charts(summary) {
        let path = out.join(format!("{stem}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let path = out.join("report.html");
    std::fs::write(&path, report::html(summary))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The run in a few lines, for the terminal.
pub fn table(s: &FleetSummary) -> String {
    let mib = |b: f64| b / 1_048_576.0;
    use report::{hours, ratio};
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {}: {} vehicles, {} depots, {} regions, delta {:.1} MiB, seed {}",
        s.scenario,
        s.vehicles,
        s.depots,
        s.regions,
        mib(s.delta_bytes),
        s.seed
    );
    let _ = writeln!(
        out,
        "campaign: {}{}",
        s.campaign_state,
        report::campaign_end(s)
    );
    let _ = writeln!(
        out,
        "fleet committed: 50 % {}, 90 % {}, 99 % {}",
        hours(s.hours_to_fleet[0]),
        hours(s.hours_to_fleet[1]),
        hours(s.hours_to_fleet[2])
    );
    let _ = writeln!(
        out,
        "outcomes: {} committed, {} rolled back, {} health check failed, {} not installed",
        s.committed, s.rolled_back, s.health_failed, s.not_installed
    );
    let _ = writeln!(
        out,
        "cellular: {:.2} GiB on {} vehicles; per vehicle mean {:.2} MiB, median {:.2}, p99 {:.2}, max {:.2} (without depots: {:.1} GiB)",
        s.cellular_bytes / 1_073_741_824.0,
        s.vehicles_on_cellular,
        mib(s.cellular_per_vehicle[0]),
        mib(s.cellular_per_vehicle[1]),
        mib(s.cellular_per_vehicle[2]),
        mib(s.cellular_per_vehicle[3]),
        s.client_server_bytes / 1_073_741_824.0
    );
    let _ = writeln!(
        out,
        "yard WiFi: {:.1} GiB from depots, {:.1} GiB between vehicles; backhaul {:.1} GiB",
        s.wifi_depot_bytes / 1_073_741_824.0,
        s.wifi_peer_bytes / 1_073_741_824.0,
        s.backhaul_bytes / 1_073_741_824.0
    );
    let _ = writeln!(
        out,
        "yards' busy time / fluid bound: median {}, p90 {}, worst {} ({} yards)",
        ratio(s.yard_ratio[0]),
        ratio(s.yard_ratio[1]),
        ratio(s.yard_ratio[2]),
        s.yards.len()
    );
    #[allow(clippy::cast_precision_loss)]
    let rss = s.peak_rss_bytes as f64 / 1_048_576.0;
    let _ = write!(
        out,
        "run: {} events in {:.1} s, peak memory {:.0} MiB",
        s.events, s.wall_secs, rss
    );
    out
}
