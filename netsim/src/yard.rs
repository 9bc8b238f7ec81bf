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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use origin::campaign::Progress;
use proto::Vin;
use serde_json::{Value, json};

use campaign::Campaign;
use options::{Log, rate_text};
use parts::{Yard, depot_config};
use vehicle::{VehicleSetup, vin};

pub use campaign::campaign_plan;
pub use options::YardOptions;

mod campaign;
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

/// How often the run asks the director how the campaign and each vehicle's report stand: the
/// resolution of the times the summary takes from the director.
const DIRECTOR_POLL: Duration = Duration::from_millis(200);

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
    let Campaign {
        id: campaign,
        wave_of,
        canary,
        approved,
        approved_unix,
    } = campaign;

    // Watch until the campaign ends.
    let mut last_step: Vec<Option<String>> = vec![None; vins.len()];
    let mut last_downloads: Vec<Value> = vec![Value::Null; vins.len()];
    let mut from_depot = vec![0u64; vins.len()];
    let mut from_peers = vec![0u64; vins.len()];
    let rogue_peer = yard.rogue().map(|r| r.peer.to_string());
    let mut from_rogue = 0u64;
    let mut finished_at: Vec<Option<f64>> = vec![None; vins.len()];
    let mut reported_at: Vec<Option<f64>> = vec![None; vins.len()];
    let mut fetched_blobs: Vec<BTreeSet<String>> = vec![BTreeSet::new(); vins.len()];
    let mut completed_after: Option<f64> = None;
    let mut statuses: Vec<Value> = vec![Value::Null; vins.len()];
    let mut last_state = String::new();
    let mut last_poll = Instant::now() - Duration::from_secs(10);
    let mut progress: Option<Progress> = None;
    let end = approved + options.timeout;
    loop {
        match events.recv_timeout(DIRECTOR_POLL / 2) {
            Ok(event) => {
                let i = event.index;
                let downloads = event.status["downloads"].clone();
                if downloads != last_downloads[i] && downloads.is_array() {
                    for download in downloads.as_array().into_iter().flatten() {
                        if let Some(blob) = download["blob"].as_str() {
                            fetched_blobs[i].insert(blob.to_string());
                        }
                        for (peer, bytes) in
                            download["bytes_by_peer"].as_object().into_iter().flatten()
                        {
                            let bytes = bytes.as_u64().unwrap_or(0);
                            if *peer == depot.peer {
                                from_depot[i] += bytes;
                            } else if rogue_peer.as_deref() == Some(peer.as_str()) {
                                from_rogue += bytes;
                            } else {
                                from_peers[i] += bytes;
                            }
                        }
                    }
                    last_downloads[i] = downloads;
                }
                let step = match &event.step {
                    Ok(step) => step.clone(),
                    Err(error) => format!("error: {error}"),
                };
                if step.starts_with("committed") || step.starts_with("rolled back") {
                    finished_at[i] = Some(event.at.duration_since(approved).as_secs_f64());
                }
                if last_step[i].as_deref() != Some(step.as_str()) {
                    let extra = if step.starts_with("committed") || step.starts_with("rolled back")
                    {
                        format!(
                            " ({:.1} MiB from the depot, {:.1} MiB from neighbours)",
                            from_depot[i] as f64 / 1_048_576.0,
                            from_peers[i] as f64 / 1_048_576.0
                        )
                    } else {
                        String::new()
                    };
                    log.say(&format!("{}: {step}{extra}", vins[i]));
                    last_step[i] = Some(step);
                }
                statuses[i] = event.status;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every vehicle agent stopped"),
        }
        if last_poll.elapsed() >= DIRECTOR_POLL {
            last_poll = Instant::now();
            if let Some(found) = director.api.campaigns()?.campaign(&campaign) {
                progress = found.progress.clone();
            }
            let now_state = format!(
                "{} wave {}",
                progress.as_ref().map_or("?", |p| p.state.name()),
                progress.as_ref().map_or(0, |p| p.open_wave + 1)
            );
            if now_state != last_state {
                let reason = progress
                    .as_ref()
                    .and_then(|p| p.state.reason())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                log.say(&format!("campaign {campaign}: {now_state}{reason}"));
                last_state = now_state;
            }
            let name = progress.as_ref().map_or("", |p| p.state.name());
            if name == "completed" {
                completed_after.get_or_insert(approved.elapsed().as_secs_f64());
            }
            // Asked after the campaign: a campaign seen completed has every report in.
            if reported_at.iter().any(Option::is_none) {
                let at = approved.elapsed().as_secs_f64();
                for record in director.api.vehicles()? {
                    let this_install = record
                        .last_report
                        .as_ref()
                        .is_some_and(|r| r.outcome.is_some() && r.at >= approved_unix);
                    let index = vins.iter().position(|vin| &record.vin == vin);
                    if let (true, Some(index)) = (this_install, index) {
                        reported_at[index].get_or_insert(at);
                    }
                }
            }
            let canary_back = canary.iter().all(|&i| {
                last_step[i]
                    .as_deref()
                    .is_some_and(|s| s.starts_with("rolled back") || s == "done")
            });
            if name == "completed" || (name == "halted" && canary_back) || name == "aborted" {
                break;
            }
        }
        if Instant::now() > end {
            bail!(
                "the campaign did not end within {} s: {}",
                options.timeout.as_secs(),
                progress
                    .as_ref()
                    .map(|p| serde_json::to_value(p).unwrap_or_default())
                    .unwrap_or_default()
            );
        }
    }
    let seconds = approved.elapsed().as_secs_f64();
    // Let the depot relay what it holds, then stop everything.
    let depot_status = yard.stop(&depot)?;
    // Events sent after the loop ended carry the vehicles' last word.
    for event in events.try_iter() {
        statuses[event.index] = event.status;
    }

    let results: Vec<VehicleResult> = (0..vins.len())
        .map(|i| {
            let status = &statuses[i];
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
                wave: wave_of[i],
                banks: if single.is_some() { "single" } else { "A/B" }.to_string(),
                single_bank: single,
                outcome: status["last_install"]["outcome"]
                    .as_str()
                    .map(str::to_string),
                ecus,
                bytes_from_depot: from_depot[i],
                bytes_from_peers: from_peers[i],
                finished_after_secs: finished_at[i],
                reported_after_secs: reported_at[i],
                delta_bytes: fetched_blobs[i]
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
                bytes_kept: from_rogue,
                reported_by,
                depot_deferrals_expired: depot_status["seeding"]["deferral_expired"]
                    .as_u64()
                    .unwrap_or(0),
            }
        }),
        campaign,
        state: progress
            .as_ref()
            .map_or("?", |p| p.state.name())
            .to_string(),
        reason: progress
            .as_ref()
            .and_then(|p| p.state.reason())
            .map(str::to_string),
        time_to_update_secs: progress
            .as_ref()
            .map_or(Value::Null, |p| json!(p.time_to_update_secs)),
        depot_served_bytes: depot_status["served_bytes"].as_u64().unwrap_or(0),
        depot_backhaul_bytes: depot_status["prefetch"]["backhaul_bytes"]
            .as_u64()
            .unwrap_or(0),
        seconds,
        completed_after_secs: completed_after,
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
