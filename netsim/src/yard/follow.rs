//! Following the campaign until it ends: what each vehicle agent says it did (its steps, the
//! bytes it fetched and from whom) and what the director says (the campaign's state, whose
//! install reports are in). The run prints each change as it sees it.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;
use node::director_client::DirectorClient;
use origin::campaign::Progress;
use proto::Vin;
use proto::director_api::{CampaignStatus, VehicleRecord};
use serde_json::Value;

use super::campaign::Campaign;
use super::options::Log;
use super::vehicle::VehicleEvent;

/// How often the run asks the director how the campaign and each vehicle's report stand: the
/// resolution of the times the summary takes from the director.
const DIRECTOR_POLL: Duration = Duration::from_millis(200);

/// One vehicle, as the run has seen it so far.
#[derive(Debug, Default)]
pub(super) struct Watched {
    /// Its last step, as printed.
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
    /// Seconds from approval to the end of its install, as its agent saw it.
    pub(super) finished_at: Option<f64>,
    /// Seconds from approval until the director had its install report.
    pub(super) reported_at: Option<f64>,
    /// Its agent's last status.
    pub(super) status: Value,
}

/// The campaign as followed so far.
#[derive(Debug)]
pub(super) struct Follow<'a> {
    pub(super) campaign: &'a Campaign,
    pub(super) vins: &'a [Vin],
    /// The depot's and the corrupt peer's ids, as the vehicles' download counters name them.
    depot_peer: &'a str,
    rogue_peer: Option<String>,
    log: Log,
    /// Each vehicle, by index.
    pub(super) vehicles: Vec<Watched>,
    /// Verified bytes vehicles kept from the corrupt peer.
    pub(super) from_rogue: u64,
    /// The campaign's progress, as the director last gave it.
    pub(super) progress: Option<Progress>,
    /// Seconds from approval until the director was first seen saying the campaign completed.
    pub(super) completed_after: Option<f64>,
    /// The campaign's state and open wave, as last printed.
    last_state: String,
}

impl<'a> Follow<'a> {
    /// Nothing seen yet of `campaign` and the vehicles `vins`.
    pub(super) fn new(
        campaign: &'a Campaign,
        vins: &'a [Vin],
        depot_peer: &'a str,
        rogue_peer: Option<String>,
        log: Log,
    ) -> Self {
        Self {
            campaign,
            vins,
            depot_peer,
            rogue_peer,
            log,
            vehicles: (0..vins.len()).map(|_| Watched::default()).collect(),
            from_rogue: 0,
            progress: None,
            completed_after: None,
            last_state: String::new(),
        }
    }

    /// A vehicle agent did a step: counts its downloads, notes when its install ended, prints
    /// the step when it differs from the last, keeps its status.
    pub(super) fn vehicle_event(&mut self, event: VehicleEvent) {
        let i = event.index;
        let downloads = event.status["downloads"].clone();
        if downloads != self.vehicles[i].last_downloads && downloads.is_array() {
            self.count_downloads(i, &downloads);
            self.vehicles[i].last_downloads = downloads;
        }
        let step = match &event.step {
            Ok(step) => step.clone(),
            Err(error) => format!("error: {error}"),
        };
        let ended = step.starts_with("committed") || step.starts_with("rolled back");
        let vehicle = &mut self.vehicles[i];
        if ended {
            let after = event.at.duration_since(self.campaign.approved);
            vehicle.finished_at = Some(after.as_secs_f64());
        }
        if vehicle.last_step.as_deref() != Some(step.as_str()) {
            let extra = if ended {
                format!(
                    " ({:.1} MiB from the depot, {:.1} MiB from neighbours)",
                    vehicle.from_depot as f64 / 1_048_576.0,
                    vehicle.from_peers as f64 / 1_048_576.0
                )
            } else {
                String::new()
            };
            self.log.say(&format!("{}: {step}{extra}", self.vins[i]));
            vehicle.last_step = Some(step);
        }
        vehicle.status = event.status;
    }

    /// Adds up vehicle `i`'s downloads (its status lists each with the bytes each peer gave)
    /// by source: the depot, the corrupt peer, or a neighbour.
    fn count_downloads(&mut self, i: usize, downloads: &Value) {
        for download in downloads.as_array().into_iter().flatten() {
            if let Some(blob) = download["blob"].as_str() {
                self.vehicles[i].fetched_blobs.insert(blob.to_string());
            }
            if let Some(payload) = download["payload"].as_str() {
                self.vehicles[i].payloads.insert(payload.to_string());
            }
            if let Some(seconds) = download["seconds"].as_f64() {
                *self.vehicles[i].fetch_secs.get_or_insert(0.0) += seconds;
            }
            for (peer, bytes) in download["bytes_by_peer"].as_object().into_iter().flatten() {
                let bytes = bytes.as_u64().unwrap_or(0);
                if peer == self.depot_peer {
                    self.vehicles[i].from_depot += bytes;
                } else if self.rogue_peer.as_deref() == Some(peer.as_str()) {
                    self.from_rogue += bytes;
                } else {
                    self.vehicles[i].from_peers += bytes;
                }
            }
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
    /// keeps its progress, prints a change of state or wave, notes when it completed.
    fn campaign_polled(&mut self, found: Option<&CampaignStatus>) {
        if let Some(found) = found {
            self.progress = found.progress.clone();
        }
        let progress = self.progress.as_ref();
        let now_state = format!(
            "{} wave {}",
            progress.map_or("?", |p| p.state.name()),
            progress.map_or(0, |p| p.open_wave + 1)
        );
        if now_state != self.last_state {
            let reason = progress
                .and_then(|p| p.state.reason())
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            self.log.say(&format!(
                "campaign {}: {now_state}{reason}",
                self.campaign.id
            ));
            self.last_state = now_state;
        }
        if self.state_name() == "completed" {
            let after = self.campaign.approved.elapsed().as_secs_f64();
            self.completed_after.get_or_insert(after);
        }
    }

    /// The director gave its vehicle records, `at` seconds after approval: notes who has
    /// reported the end of this campaign's install for the first time.
    fn reports_polled(&mut self, records: &[VehicleRecord], at: f64) {
        for record in records {
            let this_install = record
                .last_report
                .as_ref()
                .is_some_and(|r| r.outcome.is_some() && r.at >= self.campaign.approved_unix);
            let index = self.vins.iter().position(|vin| &record.vin == vin);
            if let (true, Some(index)) = (this_install, index) {
                self.vehicles[index].reported_at.get_or_insert(at);
            }
        }
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

    /// Keeps the statuses of events sent after the run stopped following: the vehicles' last
    /// word.
    pub(super) fn last_word(&mut self, events: impl Iterator<Item = VehicleEvent>) {
        for event in events {
            self.vehicles[event.index].status = event.status;
        }
    }
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
            at: Instant::now(),
            step: Ok(step.to_string()),
            status: json!({ "downloads": downloads }),
        }
    }

    #[test]
    fn bytes_are_counted_by_source_once_for_each_change_of_downloads() {
        let campaign = campaign();
        let vins = vins();
        let mut follow = Follow::new(
            &campaign,
            &vins,
            "depot-id",
            Some("rogue-id".into()),
            Log::new(false),
        );
        let first = json!([{ "blob": "d1", "bytes_by_peer": { "depot-id": 100, "rogue-id": 7 } }]);
        follow.vehicle_event(event(0, "waiting: fetching", &first));
        // A status repeats its downloads until they change: counted once.
        follow.vehicle_event(event(0, "waiting: fetching", &first));
        let second = json!([{ "blob": "d1", "bytes_by_peer": { "neighbour-id": 50 } }]);
        follow.vehicle_event(event(0, "committed", &second));
        let vehicle = &follow.vehicles[0];
        assert_eq!((vehicle.from_depot, vehicle.from_peers), (100, 50));
        assert_eq!(follow.from_rogue, 7);
        assert_eq!(vehicle.fetched_blobs, BTreeSet::from(["d1".to_string()]));
        assert!(vehicle.finished_at.is_some());
        assert_eq!(follow.vehicles[1].from_depot, 0);
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
        let mut follow = Follow::new(&campaign, &vins, "depot-id", None, Log::new(false));
        assert!(!follow.ended(), "no standing from the director yet");
        follow.progress = Some(halted());
        follow.vehicle_event(event(0, "trial boot", &Value::Null));
        assert!(!follow.ended(), "the canary is still on its trial boot");
        follow.vehicle_event(event(0, "rolled back: health check failed", &Value::Null));
        assert!(follow.ended());
        // Vehicle 1 is not in the canary: what it does changes nothing.
        follow.vehicle_event(event(1, "up to date", &Value::Null));
        assert!(follow.ended());
    }
}
