//! Following the campaign until it ends: what each vehicle agent says it did (its steps, the
//! bytes it fetched and from whom) and what the director says (the campaign's state, whose
//! install reports are in). The run prints each change as it sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;
use node::director_client::DirectorClient;
use origin::campaign::Progress;
use proto::Vin;
use proto::director_api::{CampaignStatus, InstallOutcome, VehicleRecord};
use serde_json::Value;

use super::campaign::Campaign;
use super::options::{HEARTBEAT, Log};
use super::release::V2;
use super::summary::Download;
use super::vehicle::VehicleEvent;

/// How often the run asks the director how the campaign and each vehicle's report stand: the
/// resolution of the times the summary takes from the director.
const DIRECTOR_POLL: Duration = Duration::from_millis(200);

/// One vehicle, as the run has seen it so far.
#[derive(Debug, Default)]
pub(super) struct Watched {
    /// Its last step, as its agent said it.
    last_step: Option<String>,
    /// Its downloads when last counted: a status repeats them until they change.
    last_downloads: Value,
    /// Verified bytes from the depot.
    pub(super) from_depot: u64,
    /// Verified bytes from neighbouring vehicles.
    pub(super) from_peers: u64,
    /// The blobs it fetched, by id.
    pub(super) fetched_blobs: BTreeSet<String>,
    /// What each of them was, as its agent said (`delta`, `compressed`, `image`).
    pub(super) payloads: BTreeSet<String>,
    /// Seconds its fetches took, all together (as its agent timed them); `None` before one
    /// completed.
    pub(super) fetch_secs: Option<f64>,
    /// Each fetch its agent finished, with who sent what.
    pub(super) downloads: Vec<Download>,
    /// Seconds from approval to the start of the check that fetched (the first, if several
    /// did): its metadata refresh, then the fetch.
    pub(super) fetch_check_at: Option<f64>,
    /// Seconds from approval until the check that installed ended: the new image written to
    /// the inactive bank, the ECU switched to its trial and (simulated) rebooted.
    pub(super) trial_at: Option<f64>,
    /// Seconds from approval to the end of its install, as its agent saw it.
    pub(super) finished_at: Option<f64>,
    /// Seconds from approval until the director had its install report.
    pub(super) reported_at: Option<f64>,
    /// How the director has its report, to say once the vehicle's own end is said (the
    /// report goes out within the check that ends the install, before the check returns).
    report_unsaid: Option<&'static str>,
    /// Its agent's last status.
    pub(super) status: Value,
}

/// The campaign as followed so far.
#[derive(Debug)]
pub(super) struct Follow<'a> {
    pub(super) campaign: &'a Campaign,
    pub(super) vins: &'a [Vin],
    /// The depot's id, as the vehicles' download counters name it.
    depot_peer: &'a str,
    /// The corrupt peer's id.
    rogue_peer: Option<String>,
    /// What the report calls each peer id the vehicles' download counters name: `depot`, a
    /// vehicle's VIN, `corrupt peer`.
    names: BTreeMap<String, String>,
    log: Log,
    /// When the run last printed a line of its own.
    last_said: Instant,
    /// Each vehicle, by index.
    pub(super) vehicles: Vec<Watched>,
    /// Verified bytes vehicles kept from the corrupt peer.
    pub(super) from_rogue: u64,
    /// The campaign's progress, as the director last gave it.
    pub(super) progress: Option<Progress>,
    /// Seconds from approval until the director was first seen saying the campaign completed.
    pub(super) completed_after: Option<f64>,
    /// Seconds from approval until the director was first seen with each wave open.
    pub(super) waves_opened_at: Vec<f64>,
    /// Seconds from approval until the director was first seen saying the campaign ended
    /// (completed, halted or aborted), and which.
    pub(super) ended_at: Option<(f64, String)>,
    /// The campaign's state and open wave, as last printed.
    last_state: String,
}

impl<'a> Follow<'a> {
    /// Nothing seen yet of `campaign` and the vehicles `vins` (whose peer ids are
    /// `vehicle_peers`, in the same order).
    pub(super) fn new(
        campaign: &'a Campaign,
        vins: &'a [Vin],
        (depot_peer, vehicle_peers): (&'a str, &[String]),
        rogue_peer: Option<String>,
        log: Log,
    ) -> Self {
        let mut names: BTreeMap<String, String> = vehicle_peers
            .iter()
            .zip(vins)
            .map(|(peer, vin)| (peer.clone(), vin.to_string()))
            .collect();
        names.insert(depot_peer.to_string(), "depot".into());
        if let Some(rogue) = &rogue_peer {
            names.insert(rogue.clone(), "corrupt peer".into());
        }
        Self {
            campaign,
            vins,
            depot_peer,
            rogue_peer,
            names,
            log,
            last_said: Instant::now(),
            vehicles: (0..vins.len()).map(|_| Watched::default()).collect(),
            from_rogue: 0,
            progress: None,
            completed_after: None,
            waves_opened_at: Vec::new(),
            ended_at: None,
            last_state: String::new(),
        }
    }

    /// Prints `line` and notes when.
    fn say(&mut self, line: &str) {
        self.log.say(line);
        self.last_said = Instant::now();
    }

    /// Seconds from approval to `at` (0 before it).
    fn after_approval(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.campaign.approved)
            .as_secs_f64()
    }

    /// A vehicle agent did a step: counts its downloads, notes when its fetch, trial and
    /// install happened, prints the step when it differs from the last, keeps its status.
    pub(super) fn vehicle_event(&mut self, event: VehicleEvent) {
        let i = event.index;
        let (started, at) = (
            self.after_approval(event.started),
            self.after_approval(event.at),
        );
        let downloads = event.status["downloads"].clone();
        if downloads != self.vehicles[i].last_downloads && downloads.is_array() {
            self.count_downloads(i, &downloads);
            self.vehicles[i].last_downloads = downloads;
            self.vehicles[i].fetch_check_at.get_or_insert(started);
        }
        let step = match &event.step {
            Ok(step) => step.clone(),
            Err(error) => format!("error: {error}"),
        };
        let ended = step.starts_with("committed") || step.starts_with("rolled back");
        let vehicle = &mut self.vehicles[i];
        if ended {
            vehicle.finished_at = Some(at);
        }
        if step == TRIAL_BOOT {
            vehicle.trial_at.get_or_insert(at);
        }
        let changed = vehicle.last_step.as_deref() != Some(step.as_str());
        vehicle.last_step = Some(step.clone());
        vehicle.status = event.status;
        if changed && let Some(line) = step_line(&step, &self.vehicles[i]) {
            self.say(&format!("{}: {line}", self.vins[i]));
        }
        if ended && let Some(outcome) = self.vehicles[i].report_unsaid.take() {
            self.say_reported(i, outcome);
        }
    }

    /// Says that the director has vehicle `i`'s report.
    fn say_reported(&mut self, i: usize, outcome: &str) {
        self.say(&format!(
            "{}: the director has its report ({outcome})",
            self.vins[i]
        ));
    }

    /// Adds up vehicle `i`'s downloads (its status lists each with the bytes each peer gave)
    /// by source: the depot, the corrupt peer, or a neighbour; keeps each with its sources
    /// named.
    fn count_downloads(&mut self, i: usize, downloads: &Value) {
        for download in downloads.as_array().into_iter().flatten() {
            let blob = download["blob"].as_str().unwrap_or("?").to_string();
            let payload = download["payload"].as_str().unwrap_or("?").to_string();
            self.vehicles[i].fetched_blobs.insert(blob.clone());
            self.vehicles[i].payloads.insert(payload.clone());
            let seconds = download["seconds"].as_f64();
            if let Some(seconds) = seconds {
                *self.vehicles[i].fetch_secs.get_or_insert(0.0) += seconds;
            }
            let mut from = BTreeMap::new();
            for (peer, bytes) in download["bytes_by_peer"].as_object().into_iter().flatten() {
                let bytes = bytes.as_u64().unwrap_or(0);
                if peer == self.depot_peer {
                    self.vehicles[i].from_depot += bytes;
                } else if self.rogue_peer.as_deref() == Some(peer.as_str()) {
                    self.from_rogue += bytes;
                } else {
                    self.vehicles[i].from_peers += bytes;
                }
                let name = self
                    .names
                    .get(peer)
                    .cloned()
                    .unwrap_or_else(|| peer.clone());
                *from.entry(name).or_insert(0) += bytes;
            }
            let received = download["bytes"]
                .as_u64()
                .unwrap_or_else(|| from.values().sum());
            self.vehicles[i].downloads.push(Download {
                payload,
                blob,
                length: download["length"].as_u64().unwrap_or(0),
                received,
                seconds: seconds.unwrap_or(0.0),
                from,
            });
        }
    }

    /// Asks the director how the campaign stands and, while some report is missing, which
    /// reports it has. Returns whether the campaign has ended.
    fn poll_director(&mut self, api: &DirectorClient) -> anyhow::Result<bool> {
        let campaigns = super::parts::patiently(|| api.campaigns())?;
        self.campaign_polled(campaigns.campaign(&self.campaign.id));
        // Asked after the campaign: a campaign seen completed has every report in.
        if self.vehicles.iter().any(|v| v.reported_at.is_none()) {
            let at = self.campaign.approved.elapsed().as_secs_f64();
            self.reports_polled(&super::parts::patiently(|| api.vehicles())?, at);
        }
        Ok(self.ended())
    }

    /// The director gave the campaign's standing (`None`: it does not list the campaign):
    /// keeps its progress, prints a change of state or wave, notes when a wave opened and when
    /// the campaign ended.
    fn campaign_polled(&mut self, found: Option<&CampaignStatus>) {
        if let Some(found) = found {
            self.progress = found.progress.clone();
        }
        let at = self.campaign.approved.elapsed().as_secs_f64();
        let progress = self.progress.as_ref();
        let (name, open) = (
            progress.map_or("?", |p| p.state.name()).to_string(),
            progress.map_or(0, |p| p.open_wave + 1),
        );
        let reason = progress
            .and_then(|p| p.state.reason())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let known = progress.is_some();
        let now_state = format!("{name} wave {open}");
        if now_state != self.last_state {
            self.say(&format!(
                "campaign {}: {now_state}{reason}",
                self.campaign.id
            ));
            self.last_state = now_state;
        }
        if known {
            while self.waves_opened_at.len() < open {
                self.waves_opened_at.push(at);
            }
        }
        if matches!(name.as_str(), "completed" | "halted" | "aborted") {
            self.ended_at.get_or_insert((at, name.clone()));
        }
        if name == "completed" {
            self.completed_after.get_or_insert(at);
        }
    }

    /// The director gave its vehicle records, `at` seconds after approval: notes who has
    /// reported the end of this campaign's install for the first time, and says so.
    fn reports_polled(&mut self, records: &[VehicleRecord], at: f64) {
        for record in records {
            let outcome = record
                .last_report
                .as_ref()
                .filter(|r| r.at >= self.campaign.approved_unix)
                .and_then(|r| r.outcome);
            let index = self.vins.iter().position(|vin| &record.vin == vin);
            if let (Some(outcome), Some(index)) = (outcome, index)
                && self.vehicles[index].reported_at.is_none()
            {
                self.vehicles[index].reported_at = Some(at);
                let outcome = match outcome {
                    InstallOutcome::Committed => "committed",
                    InstallOutcome::RolledBack => "rolled back",
                    InstallOutcome::HealthFailed => "rolled back, health check failed",
                };
                if self.vehicles[index].finished_at.is_some() {
                    self.say_reported(index, outcome);
                } else {
                    self.vehicles[index].report_unsaid = Some(outcome);
                }
            }
        }
    }

    /// Says how the campaign stands when nothing was said for a while: a step that takes
    /// longer than a few seconds (a shaped fetch) still shows progress.
    fn heartbeat(&mut self) {
        let waiting: Vec<&str> = self
            .vins
            .iter()
            .zip(&self.vehicles)
            .filter(|(_, v)| v.reported_at.is_none())
            .map(|(vin, _)| vin.as_str())
            .collect();
        let reported = self.vins.len() - waiting.len();
        let shown = waiting
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if waiting.len() > 6 { ", …" } else { "" };
        self.say(&format!(
            "campaign {}: {} after {:.0} s; {reported} of {} reports at the director{}",
            self.campaign.id,
            self.last_state,
            self.campaign.approved.elapsed().as_secs_f64(),
            self.vins.len(),
            if waiting.is_empty() {
                String::new()
            } else {
                format!(", waiting for {shown}{more}")
            }
        ));
    }

    fn state_name(&self) -> &str {
        self.progress.as_ref().map_or("", |p| p.state.name())
    }

    /// Whether the campaign is over: completed, aborted, or halted with every canary vehicle
    /// back on its old release (rolled back, or done without installing).
    fn ended(&self) -> bool {
        let canary_back = self.campaign.canary.iter().all(|&i| {
            self.vehicles[i]
                .last_step
                .as_deref()
                .is_some_and(|s| s.starts_with("rolled back") || s == "done")
        });
        let name = self.state_name();
        name == "completed" || (name == "halted" && canary_back) || name == "aborted"
    }

    /// Takes the events sent after the run stopped following, the vehicles' last word, as any
    /// other: a vehicle whose report completed the campaign before its check returned still
    /// has its install's end noted and said.
    pub(super) fn last_word(&mut self, events: impl Iterator<Item = VehicleEvent>) {
        for event in events {
            self.vehicle_event(event);
        }
    }
}

/// The step a vehicle thread reports after a reboot into the trial.
const TRIAL_BOOT: &str = "trial boot";

/// What the run prints of a vehicle's new step (`None`: nothing). "up to date" names what it
/// runs, so a vehicle still on v1 before its wave does not read as updated; "done" (the
/// install ended and was reported in an earlier check) is not news: the director's receipt
/// of the report is printed instead.
fn step_line(step: &str, vehicle: &Watched) -> Option<String> {
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    if step == "done" {
        return None;
    }
    if step == "up to date" {
        let images: BTreeSet<&str> = vehicle.status["ecus"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, ecu)| ecu["image"].as_str())
            .collect();
        let runs = images.iter().copied().collect::<Vec<_>>().join(", ");
        return Some(if !images.is_empty() && images.iter().all(|&i| i == V2) {
            format!("up to date (runs {runs})")
        } else {
            format!("no update assigned to it yet (runs {runs})")
        });
    }
    if step.starts_with("committed") || step.starts_with("rolled back") {
        return Some(format!(
            "{step} ({:.1} MiB from the depot, {:.1} MiB from neighbours)",
            mib(vehicle.from_depot),
            mib(vehicle.from_peers)
        ));
    }
    if step == TRIAL_BOOT {
        return Some("installed; trial boot".into());
    }
    Some(step.to_string())
}

/// Follows the campaign until it ends: each vehicle event as it arrives, the director every
/// [`DIRECTOR_POLL`]. Fails when every vehicle agent has stopped, or when the campaign has
/// not ended within `timeout` of its approval. Stops nothing: every part is still running
/// when it returns.
pub(super) fn until_end(
    follow: &mut Follow<'_>,
    events: &mpsc::Receiver<VehicleEvent>,
    api: &DirectorClient,
    timeout: Duration,
) -> anyhow::Result<()> {
    let end = follow.campaign.approved + timeout;
    let mut last_poll = Instant::now() - Duration::from_secs(10);
    loop {
        match events.recv_timeout(DIRECTOR_POLL / 2) {
            Ok(event) => follow.vehicle_event(event),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("every vehicle agent stopped"),
        }
        if last_poll.elapsed() >= DIRECTOR_POLL {
            last_poll = Instant::now();
            if follow.poll_director(api)? {
                return Ok(());
            }
        }
        if follow.last_said.elapsed() >= HEARTBEAT {
            follow.heartbeat();
        }
        if Instant::now() > end {
            bail!(
                "the campaign did not end within {} s: {}",
                timeout.as_secs(),
                follow
                    .progress
                    .as_ref()
                    .map(|p| serde_json::to_value(p).unwrap_or_default())
                    .unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn campaign() -> Campaign {
        Campaign {
            id: "yard-gw-2-0".parse().unwrap(),
            wave_of: vec![1, 2],
            canary: BTreeSet::from([0]),
            approved: Instant::now(),
            approved_unix: 0,
        }
    }

    fn vins() -> [Vin; 2] {
        ["YARD-01", "YARD-02"].map(|vin| Vin::parse(vin).unwrap())
    }

    fn event(index: usize, step: &str, downloads: &Value) -> VehicleEvent {
        VehicleEvent {
            index,
            started: Instant::now(),
            at: Instant::now(),
            step: Ok(step.to_string()),
            status: json!({ "downloads": downloads }),
        }
    }

    #[test]
    fn bytes_are_counted_by_source_once_for_each_change_of_downloads() {
        let campaign = campaign();
        let vins = vins();
        let peers = ["peer-1".to_string(), "peer-2".to_string()];
        let mut follow = Follow::new(
            &campaign,
            &vins,
            ("depot-id", &peers),
            Some("rogue-id".into()),
            Log::new(false),
        );
        let first = json!([{ "blob": "d1", "bytes_by_peer": { "depot-id": 100, "rogue-id": 7 } }]);
        follow.vehicle_event(event(0, "waiting: fetching", &first));
        // A status repeats its downloads until they change: counted once.
        follow.vehicle_event(event(0, "waiting: fetching", &first));
        let second = json!([{ "blob": "d1", "bytes_by_peer": { "peer-2": 50 } }]);
        follow.vehicle_event(event(0, "committed", &second));
        let vehicle = &follow.vehicles[0];
        assert_eq!((vehicle.from_depot, vehicle.from_peers), (100, 50));
        assert_eq!(follow.from_rogue, 7);
        assert_eq!(vehicle.fetched_blobs, BTreeSet::from(["d1".to_string()]));
        assert!(vehicle.finished_at.is_some());
        assert!(vehicle.fetch_check_at.is_some());
        assert_eq!(follow.vehicles[1].from_depot, 0);
        // Each fetch is kept with its sources by name: the depot, the corrupt peer, the
        // neighbour's VIN.
        let from: Vec<BTreeMap<String, u64>> =
            vehicle.downloads.iter().map(|d| d.from.clone()).collect();
        assert_eq!(
            from,
            [
                BTreeMap::from([("corrupt peer".into(), 7), ("depot".into(), 100)]),
                BTreeMap::from([("YARD-02".into(), 50)]),
            ]
        );
    }

    fn running(image: &str) -> Watched {
        Watched {
            status: json!({ "ecus": { "GW-1": { "image": image, "slot": "A" } } }),
            ..Watched::default()
        }
    }

    #[test]
    fn a_vehicle_up_to_date_on_v1_reads_as_not_yet_offered_and_done_is_not_repeated() {
        assert_eq!(
            step_line("up to date", &running("ecu/gw-1.bin")).unwrap(),
            "no update assigned to it yet (runs ecu/gw-1.bin)"
        );
        assert_eq!(
            step_line("up to date", &running(V2)).unwrap(),
            "up to date (runs ecu/gw-2.bin)"
        );
        // The install ended and was reported earlier: the director's receipt says it.
        assert_eq!(step_line("done", &running(V2)), None);
        assert_eq!(
            step_line(TRIAL_BOOT, &running(V2)).unwrap(),
            "installed; trial boot"
        );
    }

    #[test]
    fn each_report_the_director_has_is_noted_once_when_it_first_appears() {
        let campaign = campaign();
        let vins = vins();
        let mut follow = Follow::new(&campaign, &vins, ("depot-id", &[]), None, Log::new(false));
        let record = |vin: &Vin, outcome: Option<&str>| -> VehicleRecord {
            serde_json::from_value(json!({
                "vin": vin.as_str(), "region": "yard", "vehicle_type": "tractor",
                "home_depot": "depot-1", "primary_key": "00", "ecus": [],
                "last_report": outcome.map(|o| json!({
                    "at": 10, "nonce": "n", "manifest": "m", "outcome": o,
                })),
            }))
            .unwrap()
        };
        follow.reports_polled(&[record(&vins[0], None), record(&vins[1], None)], 1.0);
        assert!(follow.vehicles.iter().all(|v| v.reported_at.is_none()));
        follow.reports_polled(&[record(&vins[0], Some("committed"))], 2.0);
        follow.reports_polled(&[record(&vins[0], Some("committed"))], 3.0);
        assert_eq!(follow.vehicles[0].reported_at, Some(2.0));
        assert_eq!(follow.vehicles[1].reported_at, None);
    }

    fn halted() -> Progress {
        serde_json::from_value(json!({
            "state": { "state": "halted", "open": 0, "reason": "health checks failed" },
            "open_wave": 0,
            "opened_at": [0],
            "population": 2,
            "eligible": { "assigned": 1, "committed": 0, "rolled_back": 0, "health_failed": 1, "overdue": 0 },
            "segments": {},
            "time_to_update_secs": [null, null, null],
        }))
        .unwrap()
    }

    #[test]
    fn a_halted_campaign_has_ended_only_once_its_canary_is_back() {
        let campaign = campaign();
        let vins = vins();
        let mut follow = Follow::new(&campaign, &vins, ("depot-id", &[]), None, Log::new(false));
        assert!(!follow.ended(), "no standing from the director yet");
        follow.progress = Some(halted());
        follow.campaign_polled(None);
        assert_eq!(
            follow.ended_at.as_ref().map(|(_, s)| s.as_str()),
            Some("halted")
        );
        assert_eq!(follow.waves_opened_at.len(), 1);
        follow.vehicle_event(event(0, "trial boot", &Value::Null));
        assert!(!follow.ended(), "the canary is still on its trial boot");
        follow.vehicle_event(event(0, "rolled back: health check failed", &Value::Null));
        assert!(follow.ended());
        // Vehicle 1 is not in the canary: what it does changes nothing.
        follow.vehicle_event(event(1, "up to date", &Value::Null));
        assert!(follow.ended());
    }
}
