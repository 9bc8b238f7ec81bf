//! What a yard run did: each vehicle's result, the campaign's outcome, the depot's, the
//! corrupt peer's and the attackers' counters; written as `summary.json` and `report.html`, printed as a table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use std::sync::atomic::Ordering::Relaxed;

use super::follow::{Follow, Watched};
use super::options::{Expected, YardOptions, rate_text};
use super::parts::Attackers;
use super::release::Release;
use crate::attackers::report_flood::ReportFlood;
use crate::attackers::slow_reader::SlowReader;
use crate::rogue::Rogue;

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
    /// Seconds its fetches took (the delta's, as its agent timed them), from its first request
    /// to the last verified byte; `None` when it fetched nothing.
    pub fetch_secs: Option<f64>,
    /// Seconds from approval until the director had accepted its install report (committed or
    /// rolled back): netsim asks the director every 0.2 s, so this is up to 0.2 s late.
    pub reported_after_secs: Option<f64>,
    /// Size of the delta it fetched, bytes (the blob; what moved is `bytes_from_depot` +
    /// `bytes_from_peers`); `None` when it fetched no delta.
    pub delta_bytes: Option<u64>,
    /// What it fetched, as its agent said: `delta`, `compressed` (the image compressed), `image`.
    pub payloads: Vec<String>,
    /// Size of the compressed image it fetched, bytes (a replaced part: no delta applied to
    /// what it ran); `None` when it fetched none.
    pub compressed_bytes: Option<u64>,
    /// How its report reached the director (`director`, `depot`).
    pub report_via: Option<String>,
    /// Each fetch its agent finished: what, how large, what arrived and from whom.
    pub downloads: Vec<Download>,
    /// Seconds from approval to the start of the check that fetched (its metadata refresh,
    /// then the fetch, then the install); `None` when it fetched nothing.
    pub fetch_started_after_secs: Option<f64>,
    /// Seconds from approval until its agent had written the new image to the inactive bank,
    /// switched the ECU to it and rebooted into the trial; `None` when it did not install.
    pub trial_boot_after_secs: Option<f64>,
}

/// One fetch a vehicle's agent finished.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Download {
    /// What it was: `delta`, `compressed` (the image compressed) or `image`.
    pub payload: String,
    /// Its blob id.
    pub blob: String,
    /// Its size, bytes.
    pub length: u64,
    /// Verified bytes that arrived, chunk groups that came twice counted twice.
    pub received: u64,
    /// Seconds the fetch took, as its agent timed it.
    pub seconds: f64,
    /// Verified bytes by sender: `depot`, a neighbour's VIN, `corrupt peer`.
    pub from: BTreeMap<String, u64>,
}

impl Download {
    /// Bytes that arrived beyond the payload's size: chunk groups that came from two peers
    /// (the fetch engine asks a second peer for groups still in flight at the end of a fetch,
    /// its endgame, or after a request timed out; both copies are verified and counted, the
    /// store keeps one). Metadata and proofs are not in these counts.
    pub fn twice(&self) -> u64 {
        self.received.saturating_sub(self.length)
    }

    /// What arrived beyond the payload, and why, in a few words. A fetch shorter than the
    /// engine's request timeout cannot have re-asked a timed-out request: what came twice
    /// there is the endgame's.
    pub fn beyond_payload(&self) -> String {
        const GROUP: u64 = 16 * 1024;
        let twice = self.twice();
        if twice == 0 {
            return match self.length - self.received.min(self.length) {
                0 => "exactly the payload".into(),
                held => format!("{} KiB held already (a resumed fetch)", held / 1024),
            };
        }
        let timeout = node::engine::TransferConfig::default().request_timeout;
        let why = if self.seconds < timeout.as_secs_f64() {
            format!(
                "endgame duplicates (in {:.2} s no request can have timed out)",
                self.seconds
            )
        } else {
            "endgame duplicates, or requests asked again after a timeout".into()
        };
        format!(
            "+{} KiB came twice: {} of its {} chunk groups again from a second peer, {why}",
            twice / 1024,
            twice.div_ceil(GROUP),
            self.length.div_ceil(GROUP),
        )
    }
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
    /// v2 compressed: its size, when the origin listed it (the yard had replaced parts).
    pub compressed_bytes: Option<u64>,
    /// Vehicles whose gateway was replaced (the last ones; on v1's factory build).
    pub replaced_parts: usize,
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
    /// How the campaign was expected to end.
    pub expected: Expected,
    /// Whether it did.
    pub as_expected: bool,
    /// Seconds from approval until each wave was seen open (netsim asks the director every
    /// 0.2 s).
    pub waves_opened_after_secs: Vec<f64>,
    /// Seconds from approval until the campaign was seen ended (completed, halted or
    /// aborted); `None` when it did not end.
    pub ended_after_secs: Option<f64>,
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
    /// The slow reader, when there was one.
    pub slow_reader: Option<SlowReaderSummary>,
    /// The report flooder, when there was one.
    pub report_flood: Option<ReportFloodSummary>,
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

/// What the slow reader did, and what the depot says it refused and cut (the depot counts
/// for every peer; honest vehicles, which read, are neither cut nor over their share).
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlowReaderSummary {
    /// Its peer id.
    pub peer: String,
    /// Connections it made to the depot (each with fresh windows).
    pub connections: u64,
    /// Range requests it sent.
    pub requests: u64,
    /// Of those, the ones the depot let go of (refused, answered into its send buffer, or cut).
    pub let_go: u64,
    /// Requests and subscriptions the depot refused `Busy` because their peer held its share.
    pub depot_over_share: u64,
    /// Answers the depot cut because their peer read nothing for the write deadline.
    pub depot_write_timeouts: u64,
}

/// What the report flooder did, and what the depot's relay made of it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReportFloodSummary {
    /// Its peer id.
    pub peer: String,
    /// Reports it handed over.
    pub sent: u64,
    /// Of those, the ones the depot took to relay.
    pub taken: u64,
    /// Of those, the ones the depot refused (its relay quotas).
    pub refused: u64,
    /// Of those, the ones whose exchange failed.
    pub failed: u64,
    /// Reports the depot relayed that the director refused (the flood's; a vehicle's own
    /// report is signed).
    pub depot_relay_refused: u64,
    /// Reports the depot relayed that the director accepted (the honest vehicles').
    pub depot_relay_accepted: u64,
}

/// A run whose campaign has ended and whose parts have stopped, as the summary reads it.
#[derive(Debug)]
pub(super) struct Finished<'a> {
    pub(super) options: &'a YardOptions,
    pub(super) release: &'a Release,
    pub(super) follow: &'a Follow<'a>,
    /// The depot's `/status` at the end.
    pub(super) depot_status: &'a Value,
    pub(super) rogue: Option<&'a Rogue>,
    pub(super) attackers: &'a Attackers,
    /// Seconds from approval to the end.
    pub(super) seconds: f64,
}

/// Sums up the run and writes `summary.json` and `report.html` in `out`.
pub(super) fn write(out: &Path, run: &Finished<'_>) -> anyhow::Result<YardSummary> {
    let summary = summarise(run, out.join("report.html"));
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    std::fs::write(&summary.report, super::report::yard_html(&summary))?;
    Ok(summary)
}

/// The summary of `run`, whose HTML report goes to `report`.
fn summarise(run: &Finished<'_>, report: PathBuf) -> YardSummary {
    let (options, follow, depot) = (run.options, run.follow, run.depot_status);
    let progress = follow.progress.as_ref();
    let state = progress.map_or("?", |p| p.state.name()).to_string();
    let reason = progress.and_then(|p| p.state.reason()).map(str::to_string);
    let expected = options.expected();
    let results = (0..follow.vins.len())
        .map(|i| vehicle_result(run, i))
        .collect();
    YardSummary {
        vehicles: options.vehicles,
        image_bytes: run.release.v2.len() as u64,
        delta_bytes: run.release.delta_bytes(),
        compressed_bytes: run.release.compressed.as_ref().map(|(_, size)| *size),
        replaced_parts: options.replaced_parts,
        failing_canary: options.failing_canary,
        vehicle_down_bytes_per_sec: options.vehicle_down_bytes_per_sec,
        depot_up_bytes_per_sec: options.depot_up_bytes_per_sec,
        corrupt_peer: run
            .rogue
            .map(|rogue| corrupt_peer(rogue, depot, follow.from_rogue)),
        slow_reader: run
            .attackers
            .slow_reader
            .as_ref()
            .map(|reader| slow_reader(reader, depot)),
        report_flood: run
            .attackers
            .report_flood
            .as_ref()
            .map(|flood| report_flood(flood, depot)),
        campaign: follow.campaign.id.clone(),
        as_expected: expected.judge(&state, reason.as_deref()).is_ok(),
        expected,
        state,
        reason,
        time_to_update_secs: progress.map_or(Value::Null, |p| json!(p.time_to_update_secs)),
        waves_opened_after_secs: follow.waves_opened_at.clone(),
        ended_after_secs: follow.ended_at.as_ref().map(|(at, _)| *at),
        depot_served_bytes: depot["served_bytes"].as_u64().unwrap_or(0),
        depot_backhaul_bytes: depot["prefetch"]["backhaul_bytes"].as_u64().unwrap_or(0),
        seconds: run.seconds,
        completed_after_secs: follow.completed_after,
        results,
        report,
    }
}

/// Vehicle `i` at the end: what it runs (from its agent's last status), what it fetched and
/// from whom, and when its install ended and was reported.
fn vehicle_result(run: &Finished<'_>, i: usize) -> VehicleResult {
    let watched: &Watched = &run.follow.vehicles[i];
    let status = &watched.status;
    let single = single_bank(status);
    VehicleResult {
        vin: run.follow.vins[i].to_string(),
        wave: run.follow.campaign.wave_of[i],
        banks: if single.is_some() { "single" } else { "A/B" }.to_string(),
        single_bank: single,
        outcome: status["last_install"]["outcome"]
            .as_str()
            .map(str::to_string),
        ecus: ecus(status),
        bytes_from_depot: watched.from_depot,
        bytes_from_peers: watched.from_peers,
        finished_after_secs: watched.finished_at,
        fetch_secs: watched.fetch_secs,
        reported_after_secs: watched.reported_at,
        delta_bytes: watched
            .fetched_blobs
            .iter()
            .filter_map(|blob| run.release.delta_sizes.get(blob))
            .copied()
            .reduce(|a, b| a + b),
        payloads: watched.payloads.iter().cloned().collect(),
        compressed_bytes: run.release.compressed.as_ref().and_then(|(blob, size)| {
            watched
                .fetched_blobs
                .iter()
                .any(|b| b == blob)
                .then_some(*size)
        }),
        report_via: status["report_sent"]["via"].as_str().map(str::to_string),
        downloads: watched.downloads.clone(),
        fetch_started_after_secs: watched.fetch_check_at,
        trial_boot_after_secs: watched.trial_at,
    }
}

/// An install's outcome in a table's column: `committed`, `rolled back` with the kind of
/// failure, `not offered`.
fn short_outcome(outcome: Option<&str>) -> String {
    match outcome {
        None => "not offered".into(),
        Some(o) if o.starts_with("rolled back") && o.contains("health check failed") => {
            "rolled back: health".into()
        }
        Some(o) if o.starts_with("rolled back") => "rolled back".into(),
        Some(o) => o.chars().take(22).collect(),
    }
}

/// The director's time to update (`[p50, p90, p99]` seconds, each `null` until enough
/// vehicles committed) as a sentence's end.
pub(super) fn time_to_update_text(secs: &Value) -> String {
    let values: Vec<Option<f64>> = secs
        .as_array()
        .map(|a| a.iter().map(Value::as_f64).collect())
        .unwrap_or_default();
    if values.iter().all(Option::is_none) {
        return "none (no vehicle committed)".into();
    }
    ["p50", "p90", "p99"]
        .iter()
        .zip(values.iter().chain(std::iter::repeat(&None)))
        .map(|(name, v)| match v {
            Some(v) => format!("{name} {v:.0} s"),
            None => format!("{name} -"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per ECU in an agent's status: the image it runs and from which slot.
fn ecus(status: &Value) -> BTreeMap<String, (String, String)> {
    status["ecus"]
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
        .collect()
}

/// The single-bank ECU in an agent's status, if it has one: its flash writes, its last merge
/// and whether its maps are empty again.
fn single_bank(status: &Value) -> Option<Value> {
    status["ecus"]
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
        })
}

/// What the corrupt peer did: its own count of lies, the bytes vehicles kept from it, and
/// what the depot's status says about reports against it.
fn corrupt_peer(rogue: &Rogue, depot_status: &Value, bytes_kept: u64) -> CorruptPeer {
    let peer = rogue.peer.to_string();
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
        lies: rogue.lies(),
        bytes_kept,
        reported_by,
        depot_deferrals_expired: depot_status["seeding"]["deferral_expired"]
            .as_u64()
            .unwrap_or(0),
    }
}

/// The slow reader's own counts and the depot's refusals and cuts.
fn slow_reader(reader: &SlowReader, depot_status: &Value) -> SlowReaderSummary {
    let counts = &reader.counts;
    let requests = &depot_status["requests"];
    SlowReaderSummary {
        peer: reader.peer.to_string(),
        connections: counts.connections.load(Relaxed),
        requests: counts.requests.load(Relaxed),
        let_go: counts.let_go.load(Relaxed),
        depot_over_share: requests["over_share"].as_u64().unwrap_or(0),
        depot_write_timeouts: requests["write_timeout"].as_u64().unwrap_or(0),
    }
}

/// The report flooder's own counts and the depot's relay's.
fn report_flood(flood: &ReportFlood, depot_status: &Value) -> ReportFloodSummary {
    let counts = &flood.counts;
    let relay = &depot_status["relay"];
    ReportFloodSummary {
        peer: flood.peer.to_string(),
        sent: counts.sent.load(Relaxed),
        taken: counts.taken.load(Relaxed),
        refused: counts.refused.load(Relaxed),
        failed: counts.failed.load(Relaxed),
        depot_relay_refused: relay["refused"].as_u64().unwrap_or(0),
        depot_relay_accepted: relay["accepted"].as_u64().unwrap_or(0),
    }
}

/// The summary as a text table.
pub fn table(summary: &YardSummary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "campaign {}: {}{} after {:.1} s, {}; image {:.1} MiB, delta {:.1} KiB{}; depot served {:.1} MiB to the yard, took {:.1} MiB over its backhaul\n",
        summary.campaign,
        summary.state,
        summary.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default(),
        summary.seconds,
        match summary.as_expected {
            true => "as expected".to_string(),
            false => format!("NOT as expected ({})", summary.expected.state()),
        },
        summary.image_bytes as f64 / 1_048_576.0,
        summary.delta_bytes as f64 / 1024.0,
        summary.compressed_bytes.map_or(String::new(), |c| format!(
            ", compressed image {:.1} MiB (for {} replaced gateway{})",
            c as f64 / 1_048_576.0,
            summary.replaced_parts,
            if summary.replaced_parts == 1 { "" } else { "s" }
        )),
        summary.depot_served_bytes as f64 / 1_048_576.0,
        summary.depot_backhaul_bytes as f64 / 1_048_576.0,
    ));
    out.push_str(&format!(
        "links: each vehicle downloads {}, the depot uploads to the yard {}\n",
        rate_text(summary.vehicle_down_bytes_per_sec),
        rate_text(summary.depot_up_bytes_per_sec),
    ));
    out.push_str(&format!(
        "time to update (the director's, from a vehicle's wave opening to its commit): {}\n",
        time_to_update_text(&summary.time_to_update_secs)
    ));
    if let Some(rogue) = &summary.corrupt_peer {
        out.push_str(&format!(
            "corrupt peer {}: answered {} requests with corrupt data; vehicles kept {} bytes of it; {} reported it to the depot (depot deferrals that ran out: {})\n",
            rogue.peer, rogue.lies, rogue.bytes_kept, rogue.reported_by, rogue.depot_deferrals_expired
        ));
    }
    if let Some(reader) = &summary.slow_reader {
        out.push_str(&format!(
            "slow reader {}: {} range requests on {} connections, {} let go of by the depot; the depot refused {} requests over a peer's share and cut {} answers nobody read\n",
            reader.peer,
            reader.requests,
            reader.connections,
            reader.let_go,
            reader.depot_over_share,
            reader.depot_write_timeouts,
        ));
    }
    if let Some(flood) = &summary.report_flood {
        out.push_str(&format!(
            "report flooder {}: handed over {} reports: {} taken, {} refused, {} failed; the director refused {} relayed reports and accepted {}\n",
            flood.peer,
            flood.sent,
            flood.taken,
            flood.refused,
            flood.failed,
            flood.depot_relay_refused,
            flood.depot_relay_accepted,
        ));
    }
    out.push_str(&format!(
        "{:<8} {:>4}  {:<22} {:>10} {:>10} {:>7} {:>8} {:>10}  {:<8}  {}\n",
        "vehicle",
        "wave",
        "outcome",
        "depot KiB",
        "peers KiB",
        "fetch s",
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
                let from = match r.compressed_bytes {
                    Some(_) => " from the compressed image",
                    None => "",
                };
                format!("{serial} {image} {slot}{single}{from}")
            })
            .collect();
        let outcome = short_outcome(r.outcome.as_deref());
        out.push_str(&format!(
            "{:<8} {:>4}  {:<22} {:>10} {:>10} {:>7} {:>8} {:>10}  {:<8}  {}\n",
            r.vin,
            r.wave,
            outcome,
            r.bytes_from_depot / 1024,
            r.bytes_from_peers / 1024,
            r.fetch_secs.map_or("-".into(), |s| format!("{s:.1}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_update_reads_as_words_not_json() {
        assert_eq!(
            time_to_update_text(&json!([3, 3, 3])),
            "p50 3 s, p90 3 s, p99 3 s"
        );
        assert_eq!(
            time_to_update_text(&json!([null, null, null])),
            "none (no vehicle committed)"
        );
        assert_eq!(
            time_to_update_text(&json!([2.4, 5.6, null])),
            "p50 2 s, p90 6 s, p99 -"
        );
        assert_eq!(
            time_to_update_text(&Value::Null),
            "none (no vehicle committed)"
        );
    }

    #[test]
    fn outcomes_fit_the_table() {
        let failed =
            "rolled back: ECU GW-YARD-02: health check failed: sh exited with exit status: 1";
        assert_eq!(short_outcome(Some(failed)), "rolled back: health");
        assert_eq!(
            short_outcome(Some("rolled back: trial timed out")),
            "rolled back"
        );
        assert_eq!(short_outcome(Some("committed")), "committed");
        assert_eq!(short_outcome(None), "not offered");
    }

    #[test]
    fn bytes_past_the_payload_are_what_came_twice() {
        // Seen in a 10-vehicle yard: the whole delta from one neighbour and ten of its 16 KiB
        // groups again from another.
        let download = Download {
            payload: "delta".into(),
            blob: "ce15".into(),
            length: 334_740,
            received: 498_580,
            seconds: 0.21,
            from: BTreeMap::from([("YARD-03".into(), 334_740), ("YARD-05".into(), 163_840)]),
        };
        assert_eq!(download.twice(), 163_840);
        assert_eq!(
            download.beyond_payload(),
            "+160 KiB came twice: 10 of its 21 chunk groups again from a second peer, endgame \
             duplicates (in 0.21 s no request can have timed out)"
        );
        let slow = Download {
            seconds: 12.0,
            ..download.clone()
        };
        assert!(
            slow.beyond_payload()
                .ends_with("or requests asked again after a timeout"),
            "{}",
            slow.beyond_payload()
        );
        let resumed = Download {
            received: 100_000,
            ..download.clone()
        };
        assert_eq!(resumed.twice(), 0);
        assert_eq!(
            resumed.beyond_payload(),
            "229 KiB held already (a resumed fetch)"
        );
        let exact = Download {
            received: 334_740,
            ..download
        };
        assert_eq!(exact.beyond_payload(), "exactly the payload");
    }
}
