//! The director service: campaigns from the operator, signed per-vehicle targets for the
//! vehicles of open waves, signed vehicle manifests in, gate decisions out — each step written
//! to the audit log.
//!
//! [`Director`] is the service without its transport: `http` serves it over HTTP, tests and
//! `netsim` call it directly with their own clock. Every method takes `now` (Unix seconds) and
//! leaves the registry, the signed metadata and the audit log consistent when it returns. A
//! decision that opens a wave or halts one only says which vehicles' targets are due; they are
//! signed or withdrawn by [`Director::work`], a bounded batch per call ([`crate::jobs`]).
//!
//! A vehicle manifest is accepted only when it is signed by the vehicle's registered primary key,
//! each ECU report by that ECU's registered key, and all of them answer one nonce naming a
//! director targets version signed for the vehicle (`director-v<N>@<time>`, the agent's install
//! group), newer than the last one it answered: a manifest answering an older or already
//! answered version is a replay and is refused; the same manifest sent twice (a lost HTTP
//! answer) is acknowledged without counting twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::custom::Priority;
use proto::tuf::Time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use ed25519_dalek::VerifyingKey;
use proto::director_api::{
    ApprovalStatement, ApprovedAnswer, CampaignAction, CampaignStatus, CampaignsAnswer,
    CellularMonth, DecisionAt, InstallOutcome, InstallReport, ManifestAccepted, RenewMembership,
    RenewalStatement, RotateKeys, Standing, TargetsJob, TargetsWork, spec_digest,
};
use proto::membership::{MemberRole, MembershipCert, SignedRevocations};
use proto::{CampaignId, EcuSerial, Vin};

use crate::approvals::{NEEDED, Signed, Waiting};
use crate::campaign::{Campaign, CampaignSpec, Decision, Outcome, State};
use crate::director::{self, Assignment};
use crate::jobs::{Batch, BatchEntry, Planned, Queue, Worked};
use crate::registry::{LastReport, Registry, VehicleRecord, parse_key};
use crate::{Origin, audit};

/// Why a vehicle is not enrolled as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The VIN is enrolled with other keys: they are never replaced by a registration.
    #[error(
        "vehicle {vin} is enrolled with another {what}: keys are not replaced by registering again; rotate them (POST /v1/vehicles/{vin}/keys, provisioner role)"
    )]
    KeysDiffer {
        /// The vehicle.
        vin: Vin,
        /// Which key differs.
        what: String,
    },
    /// No vehicle has this VIN.
    #[error("there is no vehicle {0}")]
    Unknown(Vin),
    /// The director could not sign the vehicle's director repository (empty targets: nothing
    /// assigned yet); the vehicle is not enrolled, and registering it again may be tried.
    #[error("vehicle {vin} is not enrolled: signing its director repository failed: {detail}")]
    Unsigned {
        /// The vehicle.
        vin: Vin,
        /// Why, naming the file.
        detail: String,
    },
}

/// Which of `old`'s keys `new` would change, if any: the primary's, an ECU's, the set of
/// ECUs (each ECU is a key), or the mesh peer id (a registration that names none keeps the
/// registered one; one may be named where none was, a vehicle enrolled before the mesh).
fn keys_differ(old: &VehicleRecord, new: &VehicleRecord) -> Option<String> {
    if old.primary_key != new.primary_key {
        return Some("primary_key".into());
    }
    if let (Some(old), Some(new)) = (&old.peer, &new.peer) {
        if old != new {
            return Some("mesh peer id (peer)".into());
        }
    }
    let keys = |v: &VehicleRecord| -> BTreeMap<EcuSerial, String> {
        v.ecus
            .iter()
            .map(|e| (e.serial.clone(), e.public_key.clone()))
            .collect()
    };
    let (old, new) = (keys(old), keys(new));
    old.iter()
        .chain(&new)
        .find(|(serial, key)| old.get(*serial) != Some(key) || new.get(*serial) != Some(key))
        .map(|(serial, _)| format!("key or set of ECUs (ECU {serial})"))
}

/// The actor the director's own decisions (gates) are recorded under.
pub const GATES: &str = "director-gates";

/// The actor the director's own work is recorded under when no operator or gate asked for it:
/// the empty repositories of vehicles registered before it signed one at registration
/// ([`Director::work`]), its TLS certificate renewed (`origin serve`).
pub const DIRECTOR: &str = "director";

/// A campaign as the director keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CampaignRecord {
    /// What the operator asked for.
    pub spec: CampaignSpec,
    /// Who created it, and when.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: u64,
    /// Who approved it (none: waiting for approval).
    pub approved_by: Option<String>,
    /// The running core (none until approved).
    pub campaign: Option<Campaign>,
    /// Vehicle → the director targets version that gave it the release.
    pub assigned: BTreeMap<Vin, u64>,
    /// Vehicles whose assignment was withdrawn (the campaign halted before they installed).
    pub withdrawn: BTreeSet<Vin>,
    /// Vehicle → ECU serial → the target it ran when first assigned.
    pub before: BTreeMap<Vin, BTreeMap<EcuSerial, String>>,
    /// Region → link class → bytes the vehicles fetched for this campaign.
    pub bytes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every decision, with when it was made.
    pub decisions: Vec<(u64, Decision)>,
    /// The last logged report ([`Counted`]) this record includes.
    #[serde(default)]
    pub logged: u64,
    /// Every approver's signature: the approval's, and each resume's.
    #[serde(default)]
    pub signatures: Vec<Signed>,
    /// Share of the month's cellular budget (a label of [`CELLULAR_BUDGET_SHARES`]) → the
    /// reporting vehicles that had used at least that much when their install ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cellular_budget_used: BTreeMap<String, u64>,
    /// Reports counted since the record was last stored whole.
    #[serde(skip)]
    unsaved: u64,
}

/// A report counted for a campaign. Stored in the campaign's log as it is counted; the whole
/// record is stored only every [`SNAPSHOT_MIN_EVENTS`] reports or an eighth of the campaign's
/// assigned vehicles, whichever is more (and at every decision), so a report costs a small
/// write instead of the whole record — at 200K vehicles, tens of MB.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Counted {
    vin: Vin,
    outcome: Outcome,
    at: u64,
    region: String,
    /// Link class → bytes the vehicle fetched, as it reported them.
    bytes: BTreeMap<String, u64>,
    /// Its cellular month when the install ended, as it reported it (none: no budget, or a
    /// vehicle that does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cellular: Option<CellularMonth>,
}

/// The shares of their month's cellular budget at or above which a campaign's reporting
/// vehicles are counted (`depotmesh_campaign_vehicles_cellular_budget_used`): label, numerator,
/// denominator. Alerts pick the share they warn at; a vehicle at 100 % waits for next month
/// for anything it may not fetch over WiFi.
pub const CELLULAR_BUDGET_SHARES: [(&str, u64, u64); 4] =
    [("0.5", 1, 2), ("0.8", 4, 5), ("0.9", 9, 10), ("1", 1, 1)];

/// An entry of a campaign's log: a counted report, or a batch of background work on its
/// vehicles' targets begun or done ([`crate::jobs`]). A report has no `batch` field, so a log
/// written before batches were logged reads as it did.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Logged {
    Batch(BatchEntry),
    Counted(Counted),
}

/// Reports logged at least, between two snapshots of a campaign record.
pub const SNAPSHOT_MIN_EVENTS: u64 = 256;

impl CampaignRecord {
    /// What this campaign is due, from its stored state: the release signed for members of
    /// the open waves that have neither got it (or had it withdrawn) nor reported, while it runs;
    /// the release withdrawn from members that got it and have not reported, once halted or
    /// aborted (whether each still holds it is checked when its turn comes). None before approval.
    pub(crate) fn targets_due(&self) -> Option<(TargetsWork, BTreeSet<Vin>)> {
        let record = self;
        let campaign = record.campaign.as_ref()?;
        match campaign.state() {
            State::Running { .. } | State::Completed => {
                let due = campaign
                    .eligible()
                    .filter(|vin| campaign.outcome_of(vin).is_none())
                    .filter_map(|vin| Vin::parse(vin).ok())
                    .filter(|vin| {
                        !record.assigned.contains_key(vin) || record.withdrawn.contains(vin)
                    })
                    .collect();
                Some((TargetsWork::Sign, due))
            }
            State::Halted { .. } | State::Aborted { .. } => {
                let due = record
                    .assigned
                    .keys()
                    .filter(|vin| {
                        campaign.outcome_of(vin.as_str()).is_none()
                            && !record.withdrawn.contains(*vin)
                    })
                    .cloned()
                    .collect();
                Some((TargetsWork::Withdraw, due))
            }
        }
    }

    /// Records that `planned` got director targets `version` by `work`.
    pub(crate) fn record_done(&mut self, work: TargetsWork, planned: &Planned, version: u64) {
        let record = self;
        match work {
            TargetsWork::Sign => {
                record.withdrawn.remove(&planned.vin);
                record
                    .before
                    .entry(planned.vin.clone())
                    .or_insert_with(|| planned.before.clone());
                record.assigned.insert(planned.vin.clone(), version);
            }
            TargetsWork::Withdraw => {
                record.withdrawn.insert(planned.vin.clone());
            }
        }
    }

    /// Settles a batch whose [`BatchEntry::Done`] was never written (the director stopped during
    /// it): a vehicle whose targets reached its planned version (`version_of`) was signed, the
    /// others were not and stay due. Returns how many were signed.
    pub(crate) fn settle(
        &mut self,
        work: TargetsWork,
        vehicles: &[Planned],
        version_of: impl Fn(&Vin) -> u64,
    ) -> usize {
        let mut signed = 0;
        for planned in vehicles {
            if version_of(&planned.vin) >= planned.version {
                self.record_done(work, planned, planned.version);
                signed += 1;
            }
        }
        signed
    }

    /// Counts `event` (once per vehicle); returns the decision it caused.
    fn count(
        &mut self,
        event: &Counted,
    ) -> Result<Option<Decision>, crate::campaign::CampaignError> {
        let decision = match self.campaign.as_mut() {
            Some(campaign) if campaign.outcome_of(event.vin.as_str()).is_none() => {
                campaign.report(event.vin.as_str(), event.outcome, event.at)?
            }
            _ => return Ok(None),
        };
        let region = self.bytes.entry(event.region.clone()).or_default();
        for (link, count) in &event.bytes {
            *region.entry(link.clone()).or_default() += count;
        }
        if let Some(month) = event.cellular {
            for (share, numerator, denominator) in CELLULAR_BUDGET_SHARES {
                if month.used_at_least(numerator, denominator) {
                    *self.cellular_budget_used.entry(share.into()).or_default() += 1;
                }
            }
        }
        // It installed before a halt withdrew the release: its result counts all the same.
        self.withdrawn.remove(&event.vin);
        Ok(decision)
    }

    fn snapshot_due(&self, min_events: u64) -> bool {
        self.unsaved >= min_events.max(self.assigned.len() as u64 / 8)
    }
}

/// Why a vehicle manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The vehicle is not registered.
    #[error("vehicle {0} is not registered")]
    UnknownVehicle(Vin),
    /// Not signed as registered, malformed, or for another vehicle.
    #[error("manifest of {vin} refused: {why}")]
    Rejected {
        /// The vehicle.
        vin: Vin,
        /// Why.
        why: String,
    },
    /// It answers an old nonce, or a nonce already answered by another manifest.
    #[error("manifest of {vin} refused as a replay: {why}")]
    Replayed {
        /// The vehicle.
        vin: Vin,
        /// Why.
        why: String,
    },
    /// The director could not store it.
    #[error("the director failed: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// Why a vehicle's membership renewal was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The vehicle is not registered.
    #[error("vehicle {0} is not registered")]
    UnknownVehicle(Vin),
    /// The vehicle was enrolled with another peer id, or none (moving a vehicle to another peer
    /// is a key rotation by a provisioner).
    #[error("vehicle {vin} is not enrolled with peer {peer}")]
    OtherPeer {
        /// The vehicle.
        vin: Vin,
        /// The peer asked for.
        peer: String,
    },
    /// Not signed by the vehicle's primary key, not fresh, or for a revoked peer.
    #[error("membership renewal of {vin} refused: {why}")]
    Refused {
        /// The vehicle.
        vin: Vin,
        /// Why.
        why: String,
    },
    /// The director could not answer.
    #[error("the director failed: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// How far a renewal's `at` may be from the director's clock, either way.
pub const RENEWAL_FRESHNESS_SECS: u64 = 300;

/// What an accepted manifest did.
pub type Accepted = ManifestAccepted;

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone)]
struct Counters {
    accepted: u64,
    duplicate: u64,
    rejected: u64,
    replayed: u64,
    unknown: u64,
}

/// The director service.
pub struct Director {
    origin: Origin,
    registry: Box<dyn Registry>,
    campaigns: BTreeMap<CampaignId, CampaignRecord>,
    counters: Counters,
    snapshot_min_events: u64,
    /// The revocation list as last served, with the file's stamp it was read at.
    revocations: Option<ServedRevocations>,
    /// Each campaign's background work on its vehicles' targets ([`crate::jobs`]).
    jobs: BTreeMap<CampaignId, Queue>,
    /// What signing or withdrawing one vehicle took in the last batch, on the wall clock with
    /// its signers side by side (sizes the next batch).
    per_vehicle: Option<Duration>,
    /// The image repository as the last batch of signings read it, one copy per signer (a
    /// signing needs its own), and when (wall clock, and the director's clock): verified once
    /// for the batches of a few seconds, not per batch.
    image: Option<(Vec<director::ImageRepo>, Instant, u64)>,
    /// How many vehicles of a batch are signed at the same time ([`Self::set_signers`]).
    signers: usize,
    /// Registered vehicles with no director repository, found at start (registered before the
    /// director signed one at registration): each is given empty targets by the background
    /// work, after the campaigns' ([`Self::work`]).
    unsigned: BTreeSet<Vin>,
}

/// How long batches of signings share one verified image repository: it is verified again
/// after this long on the wall clock, or a minute on the director's.
const IMAGE_REUSED: Duration = Duration::from_secs(10);

/// Signers of a batch by default: one per CPU.
fn default_signers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Signs the director targets of each of `vehicles` (or withdraws them, for
/// [`TargetsWork::Withdraw`]) on up to `signers` threads (the calling one among them), each
/// taking the next vehicle not yet taken; a signing thread reads the image repository through
/// a copy of its own in `images` (a withdrawal reads none). Returns each vehicle's targets
/// version or error, in `vehicles`' order.
///
/// Every vehicle has a repository of its own, so no two threads write the same files; what
/// they share (the director's keys, the root files they copy, the publish journal, appended
/// under a file lock) is only read or appended to.
fn sign_vehicles(
    origin: &Origin,
    work: TargetsWork,
    priority: Priority,
    images: &mut [director::ImageRepo],
    signers: usize,
    vehicles: &[(Planned, Vec<Assignment>)],
) -> Vec<anyhow::Result<u64>> {
    let next = AtomicUsize::new(0);
    let sign = |mut image: Option<&mut director::ImageRepo>| {
        let mut results = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some((planned, assignments)) = vehicles.get(index) else {
                return results;
            };
            let result = match (work, image.as_deref_mut()) {
                (TargetsWork::Sign, Some(image)) => {
                    director::sign_assignment(origin, image, &planned.vin, assignments, priority)
                }
                (TargetsWork::Sign, None) => Err(anyhow::anyhow!(
                    "no verified image repository to sign {} from",
                    planned.vin
                )),
                (TargetsWork::Withdraw, _) => director::withdraw(origin, &planned.vin),
            };
            results.push((index, result));
        }
    };
    let mut images: Vec<Option<&mut director::ImageRepo>> = match work {
        TargetsWork::Sign => images.iter_mut().map(Some).collect(),
        TargetsWork::Withdraw => (0..signers.max(1)).map(|_| None).collect(),
    };
    images.truncate(signers.min(vehicles.len()).max(1));
    let mut results: Vec<(usize, anyhow::Result<u64>)> = std::thread::scope(|scope| {
        let mut images = images.into_iter();
        let here = images.next().flatten();
        let threads: Vec<_> = images.map(|image| scope.spawn(|| sign(image))).collect();
        let mut results = sign(here);
        for thread in threads {
            match thread.join() {
                Ok(theirs) => results.extend(theirs),
                // A signing that panicked broke an invariant: panic here as it would have
                // without threads (the batch's begun entry settles it at the next start).
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        results
    });
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// The fleet's revocation list, verified once and kept as served: every node asks for it at
/// each refresh, and reading and verifying up to ~28 MB (200,000 peers) under the director's lock for each would let anyone stall the director.
#[derive(Clone, Debug)]
pub struct ServedRevocations {
    /// Its version.
    pub version: u64,
    /// The signed list as JSON (shared, not copied, by every answer).
    pub body: bytes::Bytes,
    /// The file's modification time and length when it was read (another process, `origin
    /// member revoke`, may replace it).
    stamp: (std::time::SystemTime, u64),
}

impl std::fmt::Debug for Director {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Director")
            .field("origin", &self.origin.dir)
            .field("campaigns", &self.campaigns.len())
            .finish_non_exhaustive()
    }
}

/// The assignments giving each ECU of `vehicle` the target `targets` names for its hardware.
fn assignments(vehicle: &VehicleRecord, targets: &BTreeMap<String, String>) -> Vec<Assignment> {
    vehicle
        .ecus
        .iter()
        .filter_map(|ecu| {
            targets.get(&ecu.hardware_id).map(|target| Assignment {
                serial: ecu.serial.clone(),
                hardware_id: ecu.hardware_id.clone(),
                target: target.clone(),
            })
        })
        .collect()
}

/// What one vehicle of a batch of background work is to get.
enum Plan {
    /// New targets: the planned version, and the assignments (none for a withdrawal).
    Do(Planned, Vec<Assignment>),
    /// Nothing any more (a withdrawal from a vehicle that no longer holds the release).
    Nothing,
    /// It cannot be done, for this reason.
    Fail(Vin, String),
}

/// The registered vehicles that have no director repository at all: registered before the
/// director signed one at registration. Two listings, not a read per vehicle: a repository
/// that exists without a timestamp (a signing cut short) is left to the vehicle's next
/// registration, which signs it ([`director::sign_unassigned`]).
fn unsigned_vehicles(origin: &Origin, registry: &dyn Registry) -> anyhow::Result<BTreeSet<Vin>> {
    let held: BTreeSet<Vin> = director::vehicles(origin)?.into_iter().collect();
    Ok(registry
        .vehicles()?
        .into_iter()
        .map(|vehicle| vehicle.vin)
        .filter(|vin| !held.contains(vin))
        .collect())
}

/// Parses the agent's nonce `director-v<N>@<time>` into N.
fn nonce_version(nonce: &str) -> Option<u64> {
    let (group, time) = nonce.split_once('@')?;
    time.parse::<u64>().ok()?;
    group.strip_prefix("director-v")?.parse().ok()
}

impl Director {
    /// Opens the director of `origin` with its embedded registry (`<origin>/registry`).
    pub fn open(origin: Origin) -> anyhow::Result<Self> {
        Self::open_at(origin, &crate::registry::Location::Embedded)
    }

    /// Opens the director of `origin` with the registry at `location` (blocking: not on an
    /// async task).
    pub fn open_at(origin: Origin, location: &crate::registry::Location) -> anyhow::Result<Self> {
        let registry = location.open(&origin.dir)?;
        Self::with_registry(origin, registry)
    }

    /// Opens the director of `origin` as a standby of the one that holds the registry at
    /// `location` (blocking until that one ends, then taking over where its registry stands:
    /// what a restart does).
    pub fn open_standby(
        origin: Origin,
        location: &crate::registry::Location,
    ) -> anyhow::Result<Self> {
        let registry = location.open_standby()?;
        Self::with_registry(origin, registry)
    }

    /// Opens the director of `origin` on `registry`.
    ///
    /// Each campaign is its stored record and the entries logged after it, taken again in
    /// order: reports are counted again, and a decision one of them caused that was not carried
    /// out before the service stopped (it stopped between logging the report and storing the
    /// decision) is carried out now; batches of background work are recorded, and one begun
    /// and never done is settled from the vehicles' repositories ([`CampaignRecord::settle`]). Then each
    /// campaign's background work is derived from its record: what was due is due again.
    pub fn with_registry(origin: Origin, registry: Box<dyn Registry>) -> anyhow::Result<Self> {
        let mut campaigns = BTreeMap::new();
        let mut undone = Vec::new();
        let mut settled = Vec::new();
        for (id, bytes) in registry.campaigns()? {
            let mut record: CampaignRecord = serde_json::from_slice(&bytes)
                .with_context(|| format!("the registry's record of campaign {id} is damaged"))?;
            let mut begun: Option<(TargetsWork, Vec<Planned>)> = None;
            let mut settle = |record: &mut CampaignRecord, work, vehicles: &[Planned]| {
                // What the vehicle sees: targets signed but not yet published by a snapshot
                // and timestamp (a stop between them) are signed again.
                let signed = record.settle(work, vehicles, |vin| {
                    director::published_targets_version(&origin, vin)
                });
                tracing::info!(campaign = %id, signed, of = vehicles.len(), "settled a batch the director stopped in");
                settled.push(id.clone());
            };
            for (seq, bytes) in registry.campaign_events(&id)? {
                if seq <= record.logged {
                    continue;
                }
                let entry: Logged = serde_json::from_slice(&bytes).with_context(|| {
                    format!("entry {seq} in the log of campaign {id} is damaged")
                })?;
                match entry {
                    Logged::Counted(event) => {
                        let decision = record.count(&event).with_context(|| {
                            format!(
                                "counting report {seq} of campaign {id} ({}) again",
                                event.vin
                            )
                        })?;
                        if let Some(decision) = decision {
                            undone.push((id.clone(), decision, event.at));
                        }
                    }
                    Logged::Batch(BatchEntry::Begun { work, vehicles }) => {
                        if let Some((work, vehicles)) = begun.take() {
                            settle(&mut record, work, &vehicles);
                        }
                        begun = Some((work, vehicles));
                    }
                    Logged::Batch(BatchEntry::Done { signed }) => {
                        let (work, vehicles) = begun.take().with_context(|| {
                            format!("entry {seq} in the log of campaign {id} ends a batch that never began")
                        })?;
                        let planned: BTreeMap<&Vin, &Planned> =
                            vehicles.iter().map(|p| (&p.vin, p)).collect();
                        for (vin, version) in &signed {
                            let planned = planned.get(vin).with_context(|| {
                                format!("entry {seq} in the log of campaign {id} names {vin}, which its batch did not plan")
                            })?;
                            record.record_done(work, planned, *version);
                        }
                    }
                }
                record.logged = seq;
                record.unsaved += 1;
            }
            if let Some((work, vehicles)) = begun.take() {
                settle(&mut record, work, &vehicles);
            }
            campaigns.insert(id, record);
        }
        let unsigned = unsigned_vehicles(&origin, registry.as_ref())?;
        if !unsigned.is_empty() {
            tracing::info!(
                vehicles = unsigned.len(),
                "registered vehicles without a director repository: signing empty targets for each in the background"
            );
        }
        let mut director = Self {
            origin,
            registry,
            campaigns,
            counters: Counters::default(),
            snapshot_min_events: SNAPSHOT_MIN_EVENTS,
            revocations: None,
            jobs: BTreeMap::new(),
            per_vehicle: None,
            image: None,
            signers: default_signers(),
            unsigned,
        };
        // A settled batch is stored now: what the files said is then the record's.
        for id in settled {
            director.save(&id)?;
        }
        for (id, decision, at) in undone {
            director.at(at);
            director.apply(&id, GATES, decision, at)?;
        }
        let ids: Vec<CampaignId> = director.campaigns.keys().cloned().collect();
        for id in ids {
            director.derive_work(&id);
        }
        Ok(director)
    }

    /// Stores a campaign's record whole after at least `events` logged reports (default
    /// [`SNAPSHOT_MIN_EVENTS`]; at least one), or an eighth of its assigned vehicles if more.
    /// Fewer means more bytes written per report and less to count again at a restart.
    pub fn set_snapshot_min_events(&mut self, events: u64) {
        self.snapshot_min_events = events.max(1);
    }

    /// Signs the vehicles of a batch of background work `signers` at a time, each on a thread
    /// of its own (default: one per CPU; at least one). A vehicle's signing is three
    /// signatures and as many durable writes in its own repository, so vehicles do not wait
    /// for each other; the batch's log entries still come before and after all of them.
    pub fn set_signers(&mut self, signers: usize) {
        self.signers = signers.max(1);
    }

    /// The origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The registry.
    pub fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }

    /// The campaigns.
    pub fn campaigns(&self) -> &BTreeMap<CampaignId, CampaignRecord> {
        &self.campaigns
    }

    fn at(&mut self, now: u64) {
        self.origin.now = Time::from_unix(i64::try_from(now).unwrap_or(i64::MAX));
    }

    fn audit(&self, actor: &str, action: &str, detail: Value) -> anyhow::Result<()> {
        audit::append(&self.origin, actor, action, detail).map(|_| ())
    }

    /// Stores campaign `id`'s record whole; the logged reports it includes are dropped.
    fn save(&mut self, id: &CampaignId) -> anyhow::Result<()> {
        if let Some(record) = self.campaigns.get_mut(id) {
            self.registry
                .put_campaign(id, &serde_json::to_vec(record)?)?;
            record.unsaved = 0;
            if record.logged > 0 {
                self.registry.drop_campaign_events(id, record.logged)?;
            }
        }
        Ok(())
    }

    /// Registers (or re-registers) a vehicle. When the record names the vehicle's mesh peer
    /// id, a vehicle membership certificate is issued for it ([`crate::fleet`], valid
    /// [`crate::fleet::DEFAULT_VALIDITY_DAYS`]) and returned.
    ///
    /// A vehicle new to the director gets its director repository first: targets that list
    /// nothing, snapshot and timestamp (`director::sign_unassigned`), so that its agent and
    /// its depot read "nothing assigned" rather than find no repository. Its version is in the
    /// registration's audit entry (`director_targets_version`). A vehicle registered again
    /// keeps its repository, assignment included. When the signing fails, nothing is
    /// registered ([`EnrollError::Unsigned`]).
    pub fn register(
        &mut self,
        vehicle: &VehicleRecord,
        actor: &str,
        now: u64,
    ) -> anyhow::Result<Option<MembershipCert>> {
        vehicle.check()?;
        self.at(now);
        let mut vehicle = vehicle.clone();
        let asked = vehicle
            .peer
            .as_deref()
            .map(crate::fleet::parse_peer)
            .transpose()?;
        vehicle.peer.clone_from(&asked);
        if let Some(old) = self.registry.vehicle(&vehicle.vin)? {
            if let Some(what) = keys_differ(&old, &vehicle) {
                return Err(EnrollError::KeysDiffer {
                    vin: vehicle.vin.clone(),
                    what,
                }
                .into());
            }
            vehicle.last_report = old.last_report;
            if vehicle.peer.is_none() {
                vehicle.peer = old.peer;
            }
        }
        let actor = audit::Actor::new(actor)?;
        let signed = director::sign_unassigned(&self.origin, &vehicle.vin).map_err(|error| {
            EnrollError::Unsigned {
                vin: vehicle.vin.clone(),
                detail: format!("{error:#}"),
            }
        })?;
        self.unsigned.remove(&vehicle.vin);
        self.registry.put_vehicle(&vehicle)?;
        let mut detail = json!({
            "vin": vehicle.vin,
            "region": vehicle.region,
            "vehicle_type": vehicle.vehicle_type,
            "home_depot": vehicle.home_depot,
            "peer": vehicle.peer,
            "ecus": vehicle.ecus.iter().map(|e| json!({
                "serial": e.serial, "hardware_id": e.hardware_id, "installed": e.installed,
            })).collect::<Vec<_>>(),
        });
        if let Some(version) = signed {
            detail["director_targets_version"] = json!(version);
        }
        self.audit(actor.as_str(), "vehicle register", detail)?;
        asked
            .map(|peer| self.issue_vehicle_membership(&actor, &peer))
            .transpose()
    }

    fn issue_vehicle_membership(
        &self,
        actor: &audit::Actor,
        peer: &str,
    ) -> anyhow::Result<MembershipCert> {
        crate::fleet::issue(
            &self.origin,
            actor,
            peer,
            MemberRole::Vehicle,
            crate::fleet::DEFAULT_VALIDITY_DAYS,
        )
    }

    /// A fresh membership certificate for enrolled vehicle `vin`'s mesh peer, on its own request
    /// signed by its primary key within [`RENEWAL_FRESHNESS_SECS`] of `now`; never for another
    /// peer than the one enrolled, nor a revoked one. Audited as done by the vehicle.
    pub fn renew_membership(
        &mut self,
        vin: &Vin,
        request: &RenewMembership,
        now: u64,
    ) -> Result<MembershipCert, RenewError> {
        self.at(now);
        let refused = |why: String| RenewError::Refused {
            vin: vin.clone(),
            why,
        };
        let vehicle = self
            .registry
            .vehicle(vin)?
            .ok_or_else(|| RenewError::UnknownVehicle(vin.clone()))?;
        if vehicle.peer.as_deref() != Some(request.peer.as_str()) {
            return Err(RenewError::OtherPeer {
                vin: vin.clone(),
                peer: request.peer.clone(),
            });
        }
        let key = parse_key(&vehicle.primary_key).map_err(|e| anyhow::anyhow!("{e}"))?;
        let statement = RenewalStatement {
            vin,
            peer: &request.peer,
            at: request.at,
        };
        if !statement.verify(&key, &request.signature) {
            return Err(refused(
                "not signed by the vehicle's enrolled primary key".into(),
            ));
        }
        if request.at.abs_diff(now) > RENEWAL_FRESHNESS_SECS {
            return Err(refused(format!(
                "signed at {} but the director's clock says {now} (more than {RENEWAL_FRESHNESS_SECS} s apart)",
                request.at
            )));
        }
        let list = crate::fleet::revocations(&self.origin)?;
        if list.revocations.revokes(&request.peer) {
            return Err(refused(format!(
                "peer {} is revoked (list version {})",
                request.peer, list.revocations.version
            )));
        }
        let actor = audit::Actor::new(format!("vehicle {vin}")).map_err(anyhow::Error::from)?;
        Ok(self.issue_vehicle_membership(&actor, &request.peer)?)
    }

    /// Gives enrolled vehicle `vin` new keys (a replaced gateway or ECU): the primary's, each
    /// named ECU's, and its mesh peer id. Recorded with the old and new keys, as done by
    /// `actor`. A new peer id gets a vehicle membership certificate, which is returned, and the
    /// old peer id, if another, is revoked: the replaced gateway is no member any more.
    pub fn rotate_keys(
        &mut self,
        vin: &Vin,
        keys: &RotateKeys,
        actor: &str,
        now: u64,
    ) -> anyhow::Result<Option<MembershipCert>> {
        self.at(now);
        let actor = audit::Actor::new(actor)?;
        let mut vehicle = self
            .registry
            .vehicle(vin)?
            .ok_or_else(|| EnrollError::Unknown(vin.clone()))?;
        if keys.primary_key.is_none() && keys.ecus.is_empty() && keys.peer.is_none() {
            bail!("name a new primary_key, peer or at least one ECU's key");
        }
        let mut changes = Vec::new();
        let new_peer = keys
            .peer
            .as_deref()
            .map(crate::fleet::parse_peer)
            .transpose()?;
        let old_peer = vehicle.peer.clone();
        if let Some(new) = &new_peer {
            changes.push(json!({"key": "peer", "old": old_peer, "new": new}));
            vehicle.peer = Some(new.clone());
        }
        if let Some(new) = &keys.primary_key {
            parse_key(new).context("primary_key")?;
            changes.push(json!({"key": "primary", "old": vehicle.primary_key, "new": new}));
            vehicle.primary_key.clone_from(new);
        }
        for (serial, new) in &keys.ecus {
            parse_key(new).with_context(|| format!("ecus.{serial}"))?;
            let ecu = vehicle
                .ecus
                .iter_mut()
                .find(|e| &e.serial == serial)
                .with_context(|| format!("ecus.{serial}: vehicle {vin} has no such ECU"))?;
            changes.push(json!({"key": serial, "old": ecu.public_key, "new": new}));
            ecu.public_key.clone_from(new);
        }
        vehicle.check()?;
        self.registry.put_vehicle(&vehicle)?;
        self.audit(
            actor.as_str(),
            "vehicle rotate keys",
            json!({"vin": vin, "changes": changes}),
        )?;
        let Some(new) = new_peer else {
            return Ok(None);
        };
        if let Some(old) = old_peer.filter(|old| *old != new) {
            crate::fleet::revoke(&self.origin, &actor, &old)?;
        }
        self.issue_vehicle_membership(&actor, &new).map(Some)
    }

    /// The fleet's revocation list in force ([`crate::fleet::revocations`]).
    pub fn revocations(&mut self, now: u64) -> anyhow::Result<SignedRevocations> {
        self.at(now);
        crate::fleet::revocations(&self.origin)
    }

    /// The revocation list in force as served: read and verified again only when its file
    /// changed (checked by its modification time and length).
    pub fn served_revocations(&mut self, now: u64) -> anyhow::Result<ServedRevocations> {
        let path = crate::fleet::revocations_path(&self.origin);
        let stamp = || -> Option<(std::time::SystemTime, u64)> {
            let meta = std::fs::metadata(&path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        // Stamped before it is read: a file replaced meanwhile is read again next time.
        let before = stamp();
        if let (Some(served), Some(before)) = (&self.revocations, before)
            && served.stamp == before
        {
            return Ok(served.clone());
        }
        let signed = self.revocations(now)?;
        let stamp = match before {
            Some(before) => before,
            // The first list, just written.
            None => stamp().context("the revocation list's file is gone")?,
        };
        let served = ServedRevocations {
            version: signed.revocations.version,
            body: serde_json::to_vec(&signed)?.into(),
            stamp,
        };
        self.revocations = Some(served.clone());
        Ok(served)
    }

    /// Throws mesh peer `peer` out of the fleet, as `actor` ([`crate::fleet::revoke`]); returns
    /// the list now in force (unchanged when the peer was revoked already).
    pub fn revoke_member(
        &mut self,
        peer: &str,
        actor: &str,
        now: u64,
    ) -> anyhow::Result<SignedRevocations> {
        self.at(now);
        let actor = audit::Actor::new(actor)?;
        Ok(crate::fleet::revoke(&self.origin, &actor, peer)?.list)
    }

    /// Creates a campaign, waiting for approval. The release must be signed in the image
    /// repository for each hardware id it names.
    pub fn create(&mut self, spec: CampaignSpec, actor: &str, now: u64) -> anyhow::Result<()> {
        spec.check()?;
        if self.campaigns.contains_key(&spec.id) {
            bail!("campaign {} exists", spec.id);
        }
        self.at(now);
        let mut image = director::image_updater(&self.origin)?;
        for (which, map) in [("release", &spec.release), ("fallback", &spec.fallback)] {
            for (hardware, target) in map {
                let info = image
                    .target_info(target)
                    .with_context(|| format!("looking up {target} in the image repository"))?
                    .with_context(|| {
                        format!("{which}: the image repository does not list {target}")
                    })?;
                if !proto::custom::ImageCustom::of(target, &info)?.fits(hardware) {
                    bail!("{which}: the image repository does not release {target} for {hardware}");
                }
            }
        }
        self.audit(
            actor,
            "campaign create",
            json!({"campaign": spec.id, "spec": spec, "spec_sha256": spec_digest(&spec)}),
        )?;
        let id = spec.id.clone();
        self.campaigns.insert(
            id.clone(),
            CampaignRecord {
                spec,
                created_by: actor.to_string(),
                created_at: now,
                approved_by: None,
                campaign: None,
                assigned: BTreeMap::new(),
                withdrawn: BTreeSet::new(),
                before: BTreeMap::new(),
                bytes: BTreeMap::new(),
                decisions: Vec::new(),
                logged: 0,
                signatures: Vec::new(),
                cellular_budget_used: BTreeMap::new(),
                unsaved: 0,
            },
        );
        self.save(&id)
    }

    fn record_mut(&mut self, id: &CampaignId) -> anyhow::Result<&mut CampaignRecord> {
        self.campaigns
            .get_mut(id)
            .with_context(|| format!("there is no campaign {id}"))
    }

    /// What campaign `id` waits for approvers to sign, if anything: its approval until it
    /// starts, a resume while it is halted.
    pub fn waiting(&self, id: &CampaignId) -> Option<Waiting<'_>> {
        let record = self.campaigns.get(id)?;
        let (action, round) = match &record.campaign {
            None => ("approve", 0),
            Some(campaign) if matches!(campaign.state(), State::Halted { .. }) => {
                let halts = record
                    .decisions
                    .iter()
                    .filter(|(_, d)| matches!(d, Decision::Halt { .. }))
                    .count();
                ("resume", halts as u64)
            }
            Some(_) => return None,
        };
        Some(Waiting {
            statement: ApprovalStatement {
                campaign: id.clone(),
                action: action.to_string(),
                round,
                spec_sha256: spec_digest(&record.spec),
            },
            creator: &record.created_by,
            signed: &record.signatures,
        })
    }

    /// Takes approver `by`'s signature (hex, under their approval `key`) to `action` (approve
    /// or resume) campaign `id`. When it is the last one needed, the campaign starts or
    /// resumes, and the audit entry of that decision carries every signature.
    pub fn sign(
        &mut self,
        id: &CampaignId,
        action: CampaignAction,
        by: &str,
        key: &VerifyingKey,
        signature: &str,
        now: u64,
    ) -> anyhow::Result<ApprovedAnswer> {
        self.at(now);
        let waiting = self
            .waiting(id)
            .with_context(|| match self.campaigns.get(id) {
                None => format!("there is no campaign {id}"),
                Some(_) => format!("campaign {id} awaits no approval: it is running or over"),
            })?;
        let signed = waiting.check(action.name(), by, key, signature, now)?;
        let statement = signed.statement.clone();
        self.audit(
            by,
            "campaign sign",
            json!({"campaign": id, "signed": signed}),
        )?;
        let record = self.record_mut(id)?;
        record.signatures.push(signed);
        let approvals: Vec<Signed> = record
            .signatures
            .iter()
            .filter(|s| s.statement == statement)
            .cloned()
            .collect();
        let still_needed = NEEDED.saturating_sub(approvals.len());
        let mut decision = None;
        if still_needed == 0 {
            let names: Vec<&str> = approvals.iter().map(|s| s.by.as_str()).collect();
            let by = names.join(" and ");
            match action {
                CampaignAction::Resume => {
                    let resumed = self.running(id)?.resume(&by, now)?;
                    self.apply_signed(id, &by, resumed.clone(), now, &approvals)?;
                    decision = Some(resumed);
                }
                _ => self.start(id, &by, &approvals, now)?,
            }
        } else {
            self.save(id)?;
        }
        Ok(ApprovedAnswer {
            approved: id.clone(),
            by: by.to_string(),
            still_needed,
            decision,
        })
    }

    /// Signs campaign `id`'s pending approval (or resume) as each of `approvers` with their
    /// key, in turn: what approvers' clients do, for drivers that hold the keys themselves
    /// (netsim, benchmarks).
    pub fn sign_as(
        &mut self,
        id: &CampaignId,
        approvers: &[(&str, &ed25519_dalek::SigningKey)],
        now: u64,
    ) -> anyhow::Result<ApprovedAnswer> {
        let mut last = None;
        for (by, key) in approvers {
            let waiting = self
                .waiting(id)
                .with_context(|| format!("campaign {id} awaits no approval"))?;
            let action = match waiting.statement.action.as_str() {
                "resume" => CampaignAction::Resume,
                _ => CampaignAction::Approve,
            };
            let signature = waiting.statement.sign(key);
            last = Some(self.sign(id, action, by, &key.verifying_key(), &signature, now)?);
        }
        last.context("no approver given")
    }

    /// Starts an approved campaign: its population is fixed from the registry now, and the
    /// first wave's vehicles get signed targets.
    fn start(
        &mut self,
        id: &CampaignId,
        by: &str,
        approvals: &[Signed],
        now: u64,
    ) -> anyhow::Result<()> {
        let vehicles = self.registry.vehicles()?;
        let record = self.record_mut(id)?;
        if record.approved_by.is_some() {
            bail!("campaign {id} is already approved");
        }
        let spec = record.spec.clone();
        let population: Vec<(String, Vec<String>)> = vehicles
            .iter()
            .filter(|v| {
                let installed: Vec<&str> = v
                    .ecus
                    .iter()
                    .filter_map(|e| e.installed.as_deref())
                    .collect();
                v.ecus
                    .iter()
                    .any(|e| spec.release.contains_key(&e.hardware_id))
                    && spec
                        .filters
                        .admits(&v.region, &v.vehicle_type, &v.home_depot, &installed)
            })
            .map(|v| {
                (
                    v.vin.to_string(),
                    vec![
                        format!("region:{}", v.region),
                        format!("type:{}", v.vehicle_type),
                    ],
                )
            })
            .collect();
        if population.is_empty() {
            bail!("campaign {id}: no registered vehicle matches its release and filters");
        }
        let size = population.len();
        let campaign = Campaign::start(spec.plan(), population, now)?;
        record.campaign = Some(campaign);
        record.approved_by = Some(by.to_string());
        self.audit(
            by,
            "campaign approve",
            json!({"campaign": id, "release": spec.release, "population": size,
                   "approvals": approvals}),
        )?;
        self.derive_work(id);
        self.save(id)
    }

    /// Carries out `decision` for campaign `id` and records it.
    fn apply(
        &mut self,
        id: &CampaignId,
        actor: &str,
        decision: Decision,
        now: u64,
    ) -> anyhow::Result<()> {
        self.apply_signed(id, actor, decision, now, &[])
    }

    /// [`Self::apply`], the audit entry carrying the approvers' signatures that decided it.
    fn apply_signed(
        &mut self,
        id: &CampaignId,
        actor: &str,
        decision: Decision,
        now: u64,
        approvals: &[Signed],
    ) -> anyhow::Result<()> {
        let mut detail = json!({"campaign": id, "decision": decision});
        if !approvals.is_empty() {
            detail["approvals"] = json!(approvals);
        }
        self.audit(actor, &format!("campaign {}", decision.name()), detail)?;
        self.record_mut(id)?.decisions.push((now, decision.clone()));
        if let Decision::Abort { .. } = decision {
            self.fall_back(id, actor)?;
        }
        // What the decision made due (a wave's members to sign, a halt's withdrawals) is done
        // in the background ([`Self::work`]).
        self.derive_work(id);
        self.save(id)
    }

    /// Sets campaign `id`'s background work to what its record says is due
    /// ([`CampaignRecord::targets_due`]); failed vehicles are tried again.
    fn derive_work(&mut self, id: &CampaignId) {
        let Some((work, due)) = self.campaigns.get(id).and_then(CampaignRecord::targets_due) else {
            self.jobs.remove(id);
            return;
        };
        let queue = Queue::follow(work, due, self.jobs.get(id));
        self.jobs.insert(id.clone(), queue);
    }

    /// Vehicles whose director targets are due to be signed or withdrawn, over every campaign,
    /// and registered vehicles due their first, empty, director targets.
    pub fn work_due(&self) -> u64 {
        self.jobs.values().map(|q| q.due.len() as u64).sum::<u64>() + self.unsigned.len() as u64
    }

    /// Campaign `id`'s background work on its vehicles' targets, if any is due, done or failed.
    pub fn targets_job(&self, id: &CampaignId) -> Option<TargetsJob> {
        self.jobs.get(id).and_then(Queue::progress)
    }

    /// Does one batch of the background work ([`crate::jobs`]): signs (or withdraws) the
    /// director targets of up to `batch` vehicles of the first campaign that has any due, and
    /// records them; when no campaign has any, gives up to `batch` registered vehicles that
    /// have no director repository their empty one (`Self::sign_unsigned`). Call it until
    /// nothing is due, letting other calls in between: `origin serve` runs it on a task of its
    /// own, releasing the director between batches.
    ///
    /// # Errors
    /// When the image repository does not verify (nothing is signed: every vehicle stays due)
    /// or the batch cannot be logged. A vehicle whose signing fails is set aside, with its
    /// error in [`Self::targets_job`], until the next decision or restart.
    pub fn work(&mut self, now: u64, batch: &Batch) -> anyhow::Result<Worked> {
        let Some(id) = self
            .jobs
            .iter()
            .find(|(_, q)| !q.due.is_empty())
            .map(|(id, _)| id.clone())
        else {
            return self.sign_unsigned(now, batch);
        };
        let result = self.work_on(&id, now, batch);
        if let (Err(error), Some(queue)) = (&result, self.jobs.get_mut(&id)) {
            queue.last_error = Some(format!("{error:#}"));
        }
        result
    }

    /// Runs [`Self::work`] at `now`, default batches, until nothing is due (drivers without a
    /// worker of their own: tests, benchmarks). Returns the vehicles done.
    pub fn work_until_idle(&mut self, now: u64) -> anyhow::Result<usize> {
        let mut vehicles = 0;
        loop {
            let worked = self.work(now, &Batch::default())?;
            vehicles += worked.vehicles;
            if worked.due == 0 {
                return Ok(vehicles);
            }
        }
    }

    /// Signs the empty director targets of up to `batch` registered vehicles that have no
    /// director repository (found at start: registered before the director signed one at
    /// registration), one audit entry for the batch (`vehicle repositories`, by the director,
    /// naming each vehicle and its targets version). A vehicle given a repository meanwhile (an
    /// assignment) is left as it is; one whose signing fails is logged and left out until the
    /// next start.
    fn sign_unsigned(&mut self, now: u64, batch: &Batch) -> anyhow::Result<Worked> {
        if self.unsigned.is_empty() {
            return Ok(Worked::default());
        }
        self.at(now);
        let size = batch.size(self.per_vehicle);
        let started = Instant::now();
        let mut signed = Vec::new();
        let (mut skipped, mut failed) = (0, 0);
        while signed.len() + skipped + failed < size {
            let Some(vin) = self.unsigned.pop_first() else {
                break;
            };
            match director::sign_unassigned(&self.origin, &vin) {
                Ok(Some(version)) => signed.push((vin, version)),
                Ok(None) => skipped += 1,
                Err(error) => {
                    tracing::warn!(%vin, "signing the vehicle's empty director repository failed: {error:#}");
                    failed += 1;
                }
            }
        }
        if !signed.is_empty() {
            let each = started.elapsed() / u32::try_from(signed.len()).unwrap_or(u32::MAX);
            self.per_vehicle = Some(each);
            let vehicles: Vec<Value> = signed
                .iter()
                .map(|(vin, version)| json!({"vin": vin, "director_targets_version": version}))
                .collect();
            self.audit(
                DIRECTOR,
                "vehicle repositories",
                json!({
                    "why": "registered before the director signed a repository at registration: empty targets, nothing assigned",
                    "vehicles": vehicles,
                }),
            )?;
        }
        if self.unsigned.is_empty() {
            tracing::info!("every registered vehicle has a director repository");
        }
        Ok(Worked {
            vehicles: signed.len() + skipped,
            failed,
            due: self.work_due(),
        })
    }

    fn work_on(&mut self, id: &CampaignId, now: u64, batch: &Batch) -> anyhow::Result<Worked> {
        self.at(now);
        let size = batch.size(self.per_vehicle);
        let work = self.jobs.get(id).context("no such work")?.work;
        // Verified again every few seconds, so that a repository changed meanwhile is seen;
        // one copy per signer.
        let mut image = match (work, self.image.take()) {
            (TargetsWork::Withdraw, cached) => {
                self.image = cached;
                None
            }
            (TargetsWork::Sign, Some((images, opened, at)))
                if opened.elapsed() < IMAGE_REUSED && now.abs_diff(at) < 60 =>
            {
                Some((images, opened, at))
            }
            (TargetsWork::Sign, _) => Some((Vec::new(), Instant::now(), now)),
        };
        if let Some((images, _, _)) = image.as_mut() {
            let signers = self.signers.min(size).max(1);
            while images.len() < signers {
                images.push(director::ImageRepo::open(&self.origin)?);
            }
        }
        let queue = self.jobs.get_mut(id).context("no such work")?;
        let mut taken = Vec::with_capacity(size);
        while taken.len() < size {
            let Some(vin) = queue.due.pop_first() else {
                break;
            };
            taken.push(vin);
        }
        let planned = match self.plan(id, work, &taken) {
            Ok(planned) => planned,
            Err(error) => {
                if let Some(queue) = self.jobs.get_mut(id) {
                    queue.due.extend(taken);
                }
                return Err(error);
            }
        };
        let record = self.campaigns.get(id).context("no such campaign")?;
        let priority = record.spec.priority;
        let mut failed = Vec::new();
        let mut vehicles = Vec::new();
        let mut skipped = 0;
        for plan in planned {
            match plan {
                Plan::Do(planned, assignments) => vehicles.push((planned, assignments)),
                Plan::Nothing => skipped += 1,
                Plan::Fail(vin, why) => failed.push((vin, why)),
            }
        }
        if !vehicles.is_empty() {
            let begun = Logged::Batch(BatchEntry::Begun {
                work,
                vehicles: vehicles.iter().map(|(p, _)| p.clone()).collect(),
            });
            if let Err(error) = self.log(id, &begun) {
                if let Some(queue) = self.jobs.get_mut(id) {
                    queue.due.extend(vehicles.into_iter().map(|(p, _)| p.vin));
                    queue.due.extend(failed.into_iter().map(|(vin, _)| vin));
                }
                return Err(error.context(format!("logging a batch of campaign {id}")));
            }
        }
        // Only the signings are timed: a batch's fixed cost (its two log entries) sized into
        // each vehicle would shrink the next batch, raising that cost's share again.
        let started = Instant::now();
        let results = sign_vehicles(
            &self.origin,
            work,
            priority,
            image
                .as_mut()
                .map_or(&mut [], |(images, _, _)| images.as_mut_slice()),
            self.signers,
            &vehicles,
        );
        let mut signed = Vec::with_capacity(vehicles.len());
        for ((planned, _), result) in vehicles.iter().zip(results) {
            match result {
                Ok(version) => signed.push((planned.vin.clone(), version)),
                Err(error) => failed.push((planned.vin.clone(), format!("{error:#}"))),
            }
        }
        let signing = started.elapsed();
        // Kept for the next batch, unless a signing failed (verified again then).
        if failed.is_empty() {
            self.image = image;
        }
        let logged = if vehicles.is_empty() {
            Ok(())
        } else {
            self.log(
                id,
                &Logged::Batch(BatchEntry::Done {
                    signed: signed.clone(),
                }),
            )
        };
        // Recorded even when the log refused the end of the batch: the files are signed, and
        // a restart settles the batch from them.
        let record = self.record_mut(id)?;
        let by_vin: BTreeMap<&Vin, &Planned> = vehicles.iter().map(|(p, _)| (&p.vin, p)).collect();
        for (vin, version) in &signed {
            if let Some(planned) = by_vin.get(vin) {
                record.record_done(work, planned, *version);
            }
        }
        if !vehicles.is_empty() {
            let each = signing / u32::try_from(vehicles.len()).unwrap_or(u32::MAX);
            self.per_vehicle = Some(each);
        }
        let done = signed.len() + skipped;
        let failures = failed.len();
        if let Some(queue) = self.jobs.get_mut(id) {
            queue.done += done as u64;
            for (vin, why) in failed {
                tracing::warn!(campaign = %id, %vin, "background work on the vehicle's targets failed: {why}");
                queue.last_error = Some(format!("{vin}: {why}"));
                queue.failed.insert(vin, why);
            }
        }
        logged.with_context(|| format!("logging the end of a batch of campaign {id}"))?;
        if self
            .campaigns
            .get(id)
            .is_some_and(|r| r.snapshot_due(self.snapshot_min_events))
        {
            self.save(id)?;
        }
        Ok(Worked {
            vehicles: done,
            failed: failures,
            due: self.work_due(),
        })
    }

    /// What each of `vins` is to get by `work`, read before anything of the batch is signed.
    fn plan(&self, id: &CampaignId, work: TargetsWork, vins: &[Vin]) -> anyhow::Result<Vec<Plan>> {
        let record = self.campaigns.get(id).context("no such campaign")?;
        let campaign = record
            .campaign
            .as_ref()
            .context("the campaign is not approved")?;
        let mut plans = Vec::with_capacity(vins.len());
        for vin in vins {
            let current = director::targets_version(&self.origin, vin);
            let plan = match work {
                TargetsWork::Sign => match self.registry.vehicle(vin)? {
                    None => Plan::Fail(vin.clone(), "it is no longer registered".into()),
                    Some(vehicle) => Plan::Do(
                        Planned {
                            vin: vin.clone(),
                            version: current + 1,
                            before: vehicle
                                .ecus
                                .iter()
                                .filter_map(|e| Some((e.serial.clone(), e.installed.clone()?)))
                                .collect(),
                        },
                        assignments(&vehicle, &record.spec.release),
                    ),
                },
                // Only while it still holds this campaign's release (another campaign may
                // have signed it other targets since).
                TargetsWork::Withdraw
                    if campaign.outcome_of(vin.as_str()).is_none()
                        && !record.withdrawn.contains(vin)
                        && record.assigned.get(vin) == Some(&current) =>
                {
                    Plan::Do(
                        Planned {
                            vin: vin.clone(),
                            version: current + 1,
                            before: BTreeMap::new(),
                        },
                        Vec::new(),
                    )
                }
                TargetsWork::Withdraw => Plan::Nothing,
            };
            plans.push(plan);
        }
        Ok(plans)
    }

    /// Appends `entry` to campaign `id`'s log.
    fn log(&mut self, id: &CampaignId, entry: &Logged) -> anyhow::Result<()> {
        let seq = self.campaigns.get(id).map_or(0, |r| r.logged) + 1;
        let bytes = serde_json::to_vec(entry)?;
        self.registry.log_campaign_event(id, seq, &bytes)?;
        let record = self.record_mut(id)?;
        record.logged = seq;
        record.unsaved += 1;
        Ok(())
    }

    /// After an abort: vehicles that installed the release are given the fallback release
    /// (where the spec names one for their hardware); the rest have the release withdrawn in
    /// the background, as after a halt.
    fn fall_back(&mut self, id: &CampaignId, actor: &str) -> anyhow::Result<()> {
        let record = self.campaigns.get(id).context("no such campaign")?;
        let Some(campaign) = &record.campaign else {
            return Ok(());
        };
        let fallback = record.spec.fallback.clone();
        let priority = record.spec.priority;
        let installed: Vec<Vin> = record
            .assigned
            .keys()
            .filter(|vin| campaign.outcome_of(vin.as_str()) == Some(Outcome::Committed))
            .cloned()
            .collect();
        for vin in installed {
            let Some(vehicle) = self.registry.vehicle(&vin)? else {
                continue;
            };
            let assignments = assignments(&vehicle, &fallback);
            let result = if assignments.is_empty() {
                Err(anyhow::anyhow!(
                    "the campaign names no fallback for its hardware"
                ))
            } else {
                director::ImageRepo::open(&self.origin).and_then(|mut image| {
                    director::sign_assignment(
                        &self.origin,
                        &mut image,
                        &vin,
                        &assignments,
                        priority,
                    )
                })
            };
            let detail = match &result {
                Ok(version) => json!({"campaign": id, "vin": vin, "director_version": version,
                    "targets": assignments.iter().map(|a| json!({"ecu": a.serial, "target": a.target})).collect::<Vec<_>>()}),
                Err(error) => json!({"campaign": id, "vin": vin, "kept": format!("{error:#}")}),
            };
            self.audit(actor, "campaign fall back", detail)?;
        }
        Ok(())
    }

    /// Checks and counts a vehicle manifest.
    pub fn accept_manifest(
        &mut self,
        vin: &Vin,
        bytes: &[u8],
        now: u64,
    ) -> Result<Accepted, ManifestError> {
        let result = self.accept_inner(vin, bytes, now);
        match &result {
            Ok(a) if a.duplicate => self.counters.duplicate += 1,
            Ok(_) => self.counters.accepted += 1,
            Err(ManifestError::UnknownVehicle(_)) => self.counters.unknown += 1,
            Err(ManifestError::Rejected { .. }) => self.counters.rejected += 1,
            Err(ManifestError::Replayed { .. }) => self.counters.replayed += 1,
            Err(ManifestError::Internal(_)) => {}
        }
        result
    }

    fn accept_inner(
        &mut self,
        vin: &Vin,
        bytes: &[u8],
        now: u64,
    ) -> Result<Accepted, ManifestError> {
        let rejected = |why: String| ManifestError::Rejected {
            vin: vin.clone(),
            why,
        };
        let mut vehicle = self
            .registry
            .vehicle(vin)?
            .ok_or_else(|| ManifestError::UnknownVehicle(vin.clone()))?;
        self.at(now);
        // The nonce, read before the signatures are checked (they are checked against it).
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| rejected(format!("not JSON: {e}")))?;
        let nonce = value["signed"]["ecu_version_reports"]
            .as_object()
            .and_then(|reports| reports.values().next())
            .and_then(|report| report["signed"]["nonce"].as_str())
            .ok_or_else(|| rejected("it holds no ECU version report".into()))?
            .to_string();
        let answered = nonce_version(&nonce)
            .ok_or_else(|| rejected(format!("nonce {nonce:?} is not director-v<N>@<time>")))?;
        let current = director::targets_version(&self.origin, vin);
        let digest = blake3::hash(bytes).to_hex().to_string();
        if answered > current {
            return Err(rejected(format!(
                "it answers director targets version {answered}, which was never signed (current: {current})"
            )));
        }
        // A vehicle answers each director version once, in order; an older version than the
        // one it last answered is a replay. (An older version than the current one is not: the
        // director may have signed a newer one, e.g. withdrawn a halted release, while the
        // vehicle installed.)
        if let Some(last) = &vehicle.last_report {
            let last_version = nonce_version(&last.nonce).unwrap_or(0);
            if last.nonce == nonce && last.manifest == digest {
                return Ok(Accepted {
                    vin: vin.clone(),
                    duplicate: true,
                    outcomes: BTreeMap::new(),
                    decisions: Vec::new(),
                });
            }
            if answered < last_version {
                return Err(ManifestError::Replayed {
                    vin: vin.clone(),
                    why: format!(
                        "it answers director targets version {answered}; version {last_version} was answered already"
                    ),
                });
            }
            if answered == last_version {
                return Err(ManifestError::Replayed {
                    vin: vin.clone(),
                    why: format!(
                        "director targets version {answered} was already answered by another manifest"
                    ),
                });
            }
        }
        let primary = parse_key(&vehicle.primary_key).map_err(|e| {
            ManifestError::Internal(e.context(format!("the registered primary key of {vin}")))
        })?;
        let mut ecu_keys = BTreeMap::new();
        for ecu in &vehicle.ecus {
            ecu_keys.insert(
                ecu.serial.to_string(),
                parse_key(&ecu.public_key).map_err(|e| {
                    ManifestError::Internal(
                        e.context(format!("the registered key of ECU {}", ecu.serial)),
                    )
                })?,
            );
        }
        let verified = proto::uptane::verify_vehicle_manifest(
            bytes,
            vin.as_str(),
            &primary,
            &ecu_keys,
            &nonce,
        )
        .map_err(|e| rejected(e.to_string()))?;
        let install: Option<InstallReport> = verified
            .install
            .clone()
            .map(|value| {
                serde_path_to_error::deserialize(value)
                    .map_err(|e| rejected(format!("install.{}: {}", e.path(), e.inner())))
            })
            .transpose()?;

        // What each ECU runs now.
        for ecu in &mut vehicle.ecus {
            if let Some(report) = verified.reports.get(ecu.serial.as_str()) {
                ecu.installed = Some(report.installed_image.clone());
            }
        }
        let reported_outcome = install.as_ref().map(|i| i.outcome);

        // Which campaigns this answers: those that signed version `answered` for the vehicle.
        let mut outcomes = BTreeMap::new();
        let mut decisions = Vec::new();
        let ids: Vec<CampaignId> = self
            .campaigns
            .iter()
            .filter(|(_, r)| r.assigned.get(vin) == Some(&answered))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let record = self.record_mut(&id)?;
            let on_release = vehicle
                .ecus
                .iter()
                .filter_map(|e| Some((e, record.spec.release.get(&e.hardware_id)?)))
                .all(|(e, target)| e.installed.as_deref() == Some(target.as_str()));
            let outcome = match (on_release, reported_outcome) {
                (true, _) => Outcome::Committed,
                (false, Some(InstallOutcome::HealthFailed)) => Outcome::HealthFailed,
                (false, Some(_)) => Outcome::RolledBack,
                // A status manifest before the install ended: nothing to count yet.
                (false, None) => continue,
            };
            // Each vehicle counts once per campaign (a replay cannot get this far).
            let counts = record
                .campaign
                .as_ref()
                .is_some_and(|campaign| campaign.outcome_of(vin.as_str()).is_none());
            if !counts {
                continue;
            }
            let event = Counted {
                vin: vin.clone(),
                outcome,
                at: now,
                region: vehicle.region.clone(),
                bytes: install
                    .as_ref()
                    .map(|i| i.bytes.clone())
                    .unwrap_or_default(),
                cellular: install.as_ref().and_then(|i| i.cellular),
            };
            // Checked first, so that what is logged is what counts.
            if let Some(campaign) = record.campaign.as_ref() {
                campaign
                    .check_report(vin.as_str())
                    .map_err(|e| rejected(e.to_string()))?;
            }
            self.audit(
                vin.as_str(),
                "vehicle install",
                json!({
                    "campaign": id,
                    "vin": vin,
                    "outcome": outcome,
                    "reason": install.as_ref().map(|i| i.reason.as_str()),
                    "ecus": verified.reports.values().map(|r| json!({
                        "serial": r.ecu_serial, "installed": r.installed_image, "sha256": r.sha256,
                    })).collect::<Vec<_>>(),
                    "nonce": nonce,
                }),
            )?;
            // Logged (durably) before it counts: a restart counts it again from the log.
            self.log(&id, &Logged::Counted(event.clone()))?;
            let record = self.record_mut(&id)?;
            let decision = record.count(&event).map_err(|e| rejected(e.to_string()))?;
            // Reported: nothing more to sign or withdraw for it (a vehicle whose release was
            // withdrawn, due it again after a resume, may report the install it made before).
            if let Some(queue) = self.jobs.get_mut(&id) {
                queue.due.remove(vin);
            }
            outcomes.insert(id.clone(), outcome);
            if let Some(decision) = decision {
                self.apply(&id, GATES, decision.clone(), now)?;
                decisions.push((id.clone(), decision));
            } else if self
                .campaigns
                .get(&id)
                .is_some_and(|r| r.snapshot_due(self.snapshot_min_events))
            {
                self.save(&id)?;
            }
        }
        // The vehicle's record last: until it is stored, a resend of this manifest is counted
        // again (each campaign counts a vehicle once), so a stop in between loses nothing.
        vehicle.last_report = Some(LastReport {
            at: now,
            nonce: nonce.clone(),
            manifest: digest,
            outcome: reported_outcome,
            reason: install.map(|i| i.reason).unwrap_or_default(),
        });
        self.registry.put_vehicle(&vehicle)?;
        Ok(Accepted {
            vin: vin.clone(),
            duplicate: false,
            outcomes,
            decisions,
        })
    }

    /// Lets time pass: soak times and report timeouts. Returns the decisions made.
    pub fn tick(&mut self, now: u64) -> anyhow::Result<Vec<(CampaignId, Decision)>> {
        self.at(now);
        let mut made = Vec::new();
        let ids: Vec<CampaignId> = self.campaigns.keys().cloned().collect();
        for id in ids {
            let decision = self
                .record_mut(&id)?
                .campaign
                .as_mut()
                .and_then(|c| c.tick(now));
            if let Some(decision) = decision {
                self.apply(&id, GATES, decision.clone(), now)?;
                made.push((id, decision));
            }
        }
        Ok(made)
    }

    fn running(&mut self, id: &CampaignId) -> anyhow::Result<&mut Campaign> {
        self.record_mut(id)?
            .campaign
            .as_mut()
            .with_context(|| format!("campaign {id} is not approved yet"))
    }

    /// Halts a campaign by hand.
    pub fn halt(
        &mut self,
        id: &CampaignId,
        by: &str,
        reason: &str,
        now: u64,
    ) -> anyhow::Result<Decision> {
        self.at(now);
        let decision = self
            .running(id)?
            .halt(&format!("{reason} (by {by})"))
            .with_context(|| format!("campaign {id} is not running"))?;
        self.apply(id, by, decision.clone(), now)?;
        Ok(decision)
    }

    /// Calls a campaign off: vehicles that installed it get the fallback release.
    pub fn abort(
        &mut self,
        id: &CampaignId,
        by: &str,
        reason: &str,
        now: u64,
    ) -> anyhow::Result<Decision> {
        self.at(now);
        let decision = self.running(id)?.abort(by, reason)?;
        self.apply(id, by, decision.clone(), now)?;
        Ok(decision)
    }

    /// Every campaign's standing at `now`, for the dashboard and `origin campaign status`.
    pub fn status(&self, now: u64) -> CampaignsAnswer {
        let campaigns = self
            .campaigns
            .iter()
            .map(|(id, record)| {
                let progress = record.campaign.as_ref().map(|c| c.progress(now));
                CampaignStatus {
                    id: id.clone(),
                    release: record.spec.release.clone(),
                    priority: record.spec.priority,
                    created_by: record.created_by.clone(),
                    created_at: record.created_at,
                    approved_by: record.approved_by.clone(),
                    spec: record.spec.clone(),
                    pending_approval: self.waiting(id).map(|w| w.pending()),
                    state: progress.as_ref().map_or(Standing::AwaitingApproval, |p| {
                        Standing::Started(p.state.clone())
                    }),
                    waves: record.spec.waves.clone(),
                    progress,
                    bytes: record.bytes.clone(),
                    decisions: record
                        .decisions
                        .iter()
                        .rev()
                        .take(20)
                        .map(|(at, decision)| DecisionAt {
                            at: *at,
                            decision: decision.clone(),
                        })
                        .collect(),
                    targets_job: self.targets_job(id),
                }
            })
            .collect();
        CampaignsAnswer { now, campaigns }
    }

    /// Prometheus text of the campaigns and the manifest counters.
    /// `refusals`: requests the service refused, by route and status (0: before HTTP).
    pub fn metrics(
        &self,
        now: u64,
        refusals: &BTreeMap<(String, u16), u64>,
    ) -> Result<String, std::fmt::Error> {
        let c = &self.counters;
        crate::metrics::Figures {
            refusals: refusals
                .iter()
                .map(|((route, status), count)| {
                    // Status 0: refused before HTTP (a TLS handshake).
                    let status = match status {
                        0 => "refused".to_string(),
                        status => status.to_string(),
                    };
                    (route.clone(), status, *count)
                })
                .collect(),
            manifests: [
                ("accepted", c.accepted),
                ("duplicate", c.duplicate),
                ("rejected", c.rejected),
                ("replayed", c.replayed),
                ("unknown_vehicle", c.unknown),
            ],
            campaigns: self
                .campaigns
                .iter()
                .map(|(id, record)| crate::metrics::CampaignFigures {
                    id: id.clone(),
                    progress: record.campaign.as_ref().map(|c| c.progress(now)),
                    bytes: record.bytes.clone(),
                    cellular_budget_used: CELLULAR_BUDGET_SHARES.map(|(share, ..)| {
                        let count = record.cellular_budget_used.get(share);
                        (share, count.copied().unwrap_or(0))
                    }),
                    targets_job: self.targets_job(id),
                })
                .collect(),
        }
        .render()
    }
}
