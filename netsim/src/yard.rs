//! `netsim yard`: the whole system on one machine, on loopback. An origin (image repository and
//! director, with its HTTP service), the origin's cache (a mesh node serving the origin's
//! repositories), a depot cache (the real daemon: prefetch, super-seeding tracker, report
//! relay) and N vehicle agents (the real daemon: Uptane verification, delta from the depot and
//! neighbours over libp2p QUIC, flasher with file-backed A/B banks and simulated boots). The
//! origin publishes firmware v1 → v2 with a delta; a campaign rolls v2 out (a canary wave, then
//! everyone), its gates deciding; the run ends when the campaign completes, or, with a failing
//! release, when it has halted and its canary vehicles have rolled back.
//!
//! Nothing here decides anything the real nodes do not: netsim only starts the parts, presses
//! the operator's buttons (create, approve) and watches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use proto::Vin;
use serde_json::{Value, json};

use follow::Follow;
use options::{Log, rate_text};
use parts::{Yard, depot_config};
use vehicle::{VehicleSetup, vin};

pub use campaign::campaign_plan;
pub use options::YardOptions;

mod campaign;
mod follow;
mod options;
mod parts;
mod release;
mod vehicle;

/// One vehicle at the end of the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VehicleResult {
    /// Its VIN.
    pub vin: String,
    /// Its wave (1-based).
    pub wave: usize,
    /// The last install's outcome (`committed`, `rolled back: …`), if it installed.
    pub outcome: Option<String>,
    /// Per ECU: the image it runs and from which slot.
    pub ecus: BTreeMap<String, (String, String)>,
    /// Its ECU's banks: `A/B`, or `single` (remapped in place).
    pub banks: String,
    /// A single-bank ECU: flash bytes its agent wrote (spare blocks, maps, merge home), the
    /// blocks its last merge copied home, and whether both maps are empty again (merged).
    pub single_bank: Option<Value>,
    /// Verified bytes from the depot.
    pub bytes_from_depot: u64,
    /// Verified bytes from neighbouring vehicles.
    pub bytes_from_peers: u64,
    /// Seconds from approval to the end of its install, as its agent saw it (the check that
    /// ended the install also sent the report, to the director or to the depot).
    pub finished_after_secs: Option<f64>,
    /// Seconds from approval until the director had accepted its install report (committed or
    /// rolled back): netsim asks the director every 0.2 s, so this is up to 0.2 s late.
    pub reported_after_secs: Option<f64>,
    /// Size of the delta it fetched, bytes (the blob; what moved is `bytes_from_depot` +
    /// `bytes_from_peers`); `None` when it fetched no delta.
    pub delta_bytes: Option<u64>,
    /// How its report reached the director (`director`, `depot`).
    pub report_via: Option<String>,
}

/// What a run did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct YardSummary {
    /// Vehicles.
    pub vehicles: usize,
    /// Image size.
    pub image_bytes: u64,
    /// Delta size.
    pub delta_bytes: u64,
    /// Whether the release was made to fail.
    pub failing_canary: bool,
    /// Every vehicle's download limit, bytes per second (`None`: unlimited).
    pub vehicle_down_bytes_per_sec: Option<u64>,
    /// The depot's upload limit to the yard, bytes per second (`None`: unlimited).
    pub depot_up_bytes_per_sec: Option<u64>,
    /// The campaign's id.
    pub campaign: proto::CampaignId,
    /// Its final state (`completed`, `halted`, …) and, when halted, why.
    pub state: String,
    /// Why it halted.
    pub reason: Option<String>,
    /// The director's time to update (p50, p90, p99 seconds).
    pub time_to_update_secs: Value,
    /// Bytes the depot served the yard.
    pub depot_served_bytes: u64,
    /// Bytes the depot took from the origin's cache.
    pub depot_backhaul_bytes: u64,
    /// Seconds from approval to the end.
    pub seconds: f64,
    /// Seconds from approval until the director said the campaign completed (asked every
    /// 0.2 s); `None` when it did not complete.
    pub completed_after_secs: Option<f64>,
    /// The corrupt peer, when there was one.
    pub corrupt_peer: Option<CorruptPeer>,
    /// Each vehicle.
    pub results: Vec<VehicleResult>,
    /// Where the HTML report is.
    pub report: PathBuf,
}

/// What the corrupt peer did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CorruptPeer {
    /// Its peer id.
    pub peer: String,
    /// Range requests it answered with a corrupt body.
    pub lies: u64,
    /// Verified bytes vehicles kept from it (must be 0).
    pub bytes_kept: u64,
    /// Vehicles that reported it to the depot (`Distrust`), as the depot counts them at the end.
    pub reported_by: u64,
    /// Requests the depot served only because the asker's deferral ran out (the depot waited
    /// on claims nobody could serve); 0 when reports reach it.
    pub depot_deferrals_expired: u64,
}

/// Prepares `out`: removes a previous run's output (marked by `.netsim-yard`), refuses to
/// touch a directory that holds anything else.
fn fresh_out(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let marker = out.join(".netsim-yard");
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !marker.exists() && !empty {
            bail!(
                "--out {}: the directory exists and was not made by netsim yard; give an empty or new one",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join(".netsim-yard"),
        b"made by netsim yard; removed by the next run\n",
    )?;
    Ok(())
}

/// Runs the yard; see the module.
#[allow(clippy::too_many_lines)]
pub fn run(options: &YardOptions) -> anyhow::Result<YardSummary> {
    options.check()?;
    let log = Log::new(options.verbose);
    let out = &options.out;
    fresh_out(out)?;
    let out = std::fs::canonicalize(out)?;
    log.say(&format!(
            "yard: {} vehicles, {} MiB image, seed {}; links: each vehicle downloads {}, the depot uploads to the yard {} (all vehicles together)",
            options.vehicles,
            options.image_bytes >> 20,
            options.seed,
            rate_text(options.vehicle_down_bytes_per_sec),
            rate_text(options.depot_up_bytes_per_sec),
        ),
    );

    let vins: Vec<Vin> = (0..options.vehicles).map(vin).collect();
    let release = release::prepare(&out, &vins, options, log)?;
    let delta_sizes = &release.delta_sizes;
    let delta_bytes = release.delta_bytes();
    let mut yard = Yard::new()?;
    let director = yard.start_director(&release.origin)?;
    let cache = yard.start_origin_cache(&out, &release.origin, &vins)?;
    let depot = yard.start_depot(depot_config(
        &out, &release, &vins, cache, &director, options,
    )?)?;
    if options.corrupt_peer {
        yard.start_rogue(&out, &release, &depot, log)?;
    }
    depot.wait_for_prefetch(log)?;
    let setup = VehicleSetup::new(&release, &director.url, &depot.addr, options)?;
    let events = yard.start_vehicles(&out, &vins, &setup, &director)?;

    let campaign = campaign::create_and_approve(&director.api, &vins, options, log)?;
    let mut follow = Follow::new(
        &campaign,
        &vins,
        &depot.peer,
        yard.rogue().map(|r| r.peer.to_string()),
        log,
    );
    follow::until_end(&mut follow, &events, &director.api, options.timeout)?;
    let seconds = campaign.approved.elapsed().as_secs_f64();
    // Let the depot relay what it holds, then stop everything.
    let depot_status = yard.stop(&depot)?;
    follow.last_word(events.try_iter());

    let results: Vec<VehicleResult> = (0..vins.len())
        .map(|i| {
            let watched = &follow.vehicles[i];
            let status = &watched.status;
            let ecus = status["ecus"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(serial, ecu)| {
                    (
                        serial.clone(),
                        (
                            ecu["image"].as_str().unwrap_or("?").to_string(),
                            ecu["slot"].as_str().unwrap_or("?").to_string(),
                        ),
                    )
                })
                .collect();
            let single = status["ecus"]
                .as_object()
                .into_iter()
                .flatten()
                .find(|(_, ecu)| ecu.get("remap").is_some())
                .map(|(serial, ecu)| {
                    let merged = ecu["remap"]["maps"].as_array().is_some_and(|maps| {
                        maps.iter()
                            .all(|m| m["remapped_blocks"].as_u64() == Some(0))
                    });
                    json!({
                        "ecu": serial,
                        "flash_writes": ecu["flash_writes"],
                        "merge": status["merges"][serial.as_str()],
                        "merged": merged,
                    })
                });
            VehicleResult {
                vin: vins[i].to_string(),
                wave: campaign.wave_of[i],
                banks: if single.is_some() { "single" } else { "A/B" }.to_string(),
                single_bank: single,
                outcome: status["last_install"]["outcome"]
                    .as_str()
                    .map(str::to_string),
                ecus,
                bytes_from_depot: watched.from_depot,
                bytes_from_peers: watched.from_peers,
                finished_after_secs: watched.finished_at,
                reported_after_secs: watched.reported_at,
                delta_bytes: watched
                    .fetched_blobs
                    .iter()
                    .filter_map(|blob| delta_sizes.get(blob))
                    .copied()
                    .reduce(|a, b| a + b),
                report_via: status["report_sent"]["via"].as_str().map(str::to_string),
            }
        })
        .collect();
    let report = out.join("report.html");
    let summary = YardSummary {
        vehicles: options.vehicles,
        image_bytes: release.v2.len() as u64,
        delta_bytes,
        failing_canary: options.failing_canary,
        vehicle_down_bytes_per_sec: options.vehicle_down_bytes_per_sec,
        depot_up_bytes_per_sec: options.depot_up_bytes_per_sec,
        corrupt_peer: yard.rogue().map(|r| {
            let peer = r.peer.to_string();
            let reported_by = depot_status["seeding"]["accused"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|accused| accused["peer"].as_str() == Some(peer.as_str()))
                .filter_map(|accused| accused["accusers"].as_u64())
                .max()
                .unwrap_or(0);
            CorruptPeer {
                peer,
                lies: r.lies(),
                bytes_kept: follow.from_rogue,
                reported_by,
                depot_deferrals_expired: depot_status["seeding"]["deferral_expired"]
                    .as_u64()
                    .unwrap_or(0),
            }
        }),
        campaign: campaign.id.clone(),
        state: follow
            .progress
            .as_ref()
            .map_or("?", |p| p.state.name())
            .to_string(),
        reason: follow
            .progress
            .as_ref()
            .and_then(|p| p.state.reason())
            .map(str::to_string),
        time_to_update_secs: follow
            .progress
            .as_ref()
            .map_or(Value::Null, |p| json!(p.time_to_update_secs)),
        depot_served_bytes: depot_status["served_bytes"].as_u64().unwrap_or(0),
        depot_backhaul_bytes: depot_status["prefetch"]["backhaul_bytes"]
            .as_u64()
            .unwrap_or(0),
        seconds,
        completed_after_secs: follow.completed_after,
        results,
        report: report.clone(),
    };
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    std::fs::write(&report, crate::report::yard_html(&summary))?;
    Ok(summary)
}

/// The summary as a text table.
pub fn table(summary: &YardSummary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "campaign {}: {}{} after {:.1} s; image {:.1} MiB, delta {:.1} KiB; depot served {:.1} MiB to the yard, took {:.1} MiB over its backhaul\n",
        summary.campaign,
        summary.state,
        summary.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        summary.seconds,
        summary.image_bytes as f64 / 1_048_576.0,
        summary.delta_bytes as f64 / 1024.0,
        summary.depot_served_bytes as f64 / 1_048_576.0,
        summary.depot_backhaul_bytes as f64 / 1_048_576.0,
    ));
    out.push_str(&format!(
        "links: each vehicle downloads {}, the depot uploads to the yard {}\n",
        rate_text(summary.vehicle_down_bytes_per_sec),
        rate_text(summary.depot_up_bytes_per_sec),
    ));
    if let Some(rogue) = &summary.corrupt_peer {
        out.push_str(&format!(
            "corrupt peer {}: answered {} requests with corrupt data; vehicles kept {} bytes of it; {} reported it to the depot (depot deferrals that ran out: {})\n",
            rogue.peer, rogue.lies, rogue.bytes_kept, rogue.reported_by, rogue.depot_deferrals_expired
        ));
    }
    out.push_str(&format!(
        "{:<8} {:>4}  {:<22} {:>10} {:>10} {:>8} {:>10}  {:<8}  {}\n",
        "vehicle",
        "wave",
        "outcome",
        "depot KiB",
        "peers KiB",
        "done s",
        "reported s",
        "report",
        "ECUs (image, slot)"
    ));
    for r in &summary.results {
        let ecus: Vec<String> = r
            .ecus
            .iter()
            .map(|(serial, (image, slot))| {
                let single = if r.banks == "single" {
                    let home = r
                        .single_bank
                        .as_ref()
                        .map_or(0, |s| s["flash_writes"]["home_bytes"].as_u64().unwrap_or(0));
                    format!(" single-bank, {} KiB merged home", home / 1024)
                } else {
                    String::new()
                };
                format!("{serial} {image} {slot}{single}")
            })
            .collect();
        let mut outcome = r.outcome.clone().unwrap_or_else(|| "not offered".into());
        outcome.truncate(22);
        out.push_str(&format!(
            "{:<8} {:>4}  {:<22} {:>10} {:>10} {:>8} {:>10}  {:<8}  {}\n",
            r.vin,
            r.wave,
            outcome,
            r.bytes_from_depot / 1024,
            r.bytes_from_peers / 1024,
            r.finished_after_secs
                .map_or("-".into(), |s| format!("{s:.1}")),
            r.reported_after_secs
                .map_or("-".into(), |s| format!("{s:.1}")),
            r.report_via.clone().unwrap_or_else(|| "-".into()),
            ecus.join("; ")
        ));
    }
    out
}
