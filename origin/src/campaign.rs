//! Staged rollouts, sans-IO: a campaign's waves and the gates that advance, hold or halt it.
//!
//! A campaign rolls a release out in waves (e.g. 1 % → 5 % → 25 % → 100 % of its population).
//! Which wave a vehicle belongs to is decided by a hash of the vehicle id and the campaign id:
//! deterministic, stable across restarts and re-evaluations, independent between campaigns, and
//! nested (a vehicle in the 1 % wave is in every later one). The core takes vehicle reports and
//! the time and returns decisions, each with its reason, for the caller to act on (sign targets
//! for the new wave, write the audit log); it does no I/O and reads no clock, so it is
//! table-tested in virtual time and `netsim` runs the same code for a whole fleet.
//!
//! Gates are evaluated over the vehicles of the open waves, overall and per segment (region,
//! vehicle type: whatever the caller names), as each report arrives:
//! - **halt** at once when the rollback rate or the number of failed health checks exceeds its
//!   bound (a segment needs `min_reports` reports before its own rates count, so one early
//!   failure in a small segment does not stop the fleet — but the failed-health count is
//!   absolute);
//! - vehicles that have not reported `report_timeout` after their wave opened count as failed
//!   (missing heartbeats);
//! - **advance** when the wave has soaked `min_soak`, its success rate reaches `min_success`,
//!   and nothing above says halt;
//! - **hold** otherwise (no decision: the next report or tick decides).
//!
//! A halted campaign resumes only with an approval naming who approved it.

use std::collections::{BTreeMap, HashMap};

use proto::CampaignId;
use serde::{Deserialize, Serialize};

pub use proto::campaign::{
    CampaignSpec, Counts, Decision, Filters, Gates, Outcome, Plan, Progress, SpecError, State, Wave,
};

/// Adds a group's members to `counts`; `overdue`: the group's report timeout has passed, so
/// its members without an outcome count as overdue.
fn add_tally(counts: &mut Counts, tally: &Tally, overdue: bool) {
    counts.assigned += tally.members;
    counts.committed += tally.committed;
    counts.rolled_back += tally.rolled_back;
    counts.health_failed += tally.health_failed;
    if overdue {
        counts.overdue += tally.unreported;
    }
}

/// One vehicle in the campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Member {
    wave: usize,
    segments: Vec<String>,
    outcome: Option<Outcome>,
    /// When the outcome was reported (Unix seconds).
    #[serde(default)]
    reported_at: Option<u64>,
    /// A failure an approver has seen and resumed past: shown, no longer gated on.
    #[serde(default)]
    acknowledged: bool,
}

/// A campaign in progress: the plan, its members and their reports.
///
/// Serialized as its plan, state, wave opening times and members; the counters the gates read
/// are rebuilt from the members when it is read back.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "StoredCampaign")]
pub struct Campaign {
    plan: Plan,
    state: State,
    /// When each opened wave opened (Unix seconds).
    opened_at: Vec<u64>,
    members: BTreeMap<String, Member>,
    /// The members counted per wave and segment, kept in step with `members` on every change
    /// so that evaluating the gates costs waves × segments, not the population.
    #[serde(skip)]
    counters: Counters,
}

/// A campaign as stored: what [`Campaign`] serializes, without the counters.
#[derive(Deserialize)]
#[serde(rename = "Campaign")]
struct StoredCampaign {
    plan: Plan,
    state: State,
    opened_at: Vec<u64>,
    members: BTreeMap<String, Member>,
}

impl From<StoredCampaign> for Campaign {
    fn from(stored: StoredCampaign) -> Self {
        let counters = Counters::build(&stored.members);
        Self {
            plan: stored.plan,
            state: stored.state,
            opened_at: stored.opened_at,
            members: stored.members,
            counters,
        }
    }
}

// The counters follow from the members: equality and the debug form are those of the stored
// fields.
impl PartialEq for Campaign {
    fn eq(&self, other: &Self) -> bool {
        self.plan == other.plan
            && self.state == other.state
            && self.opened_at == other.opened_at
            && self.members == other.members
    }
}

impl std::fmt::Debug for Campaign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Campaign")
            .field("plan", &self.plan)
            .field("state", &self.state)
            .field("opened_at", &self.opened_at)
            .field("members", &self.members)
            .finish()
    }
}

/// How many members of a group (a wave, or one segment of a wave) reported what.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    members: u64,
    committed: u64,
    rolled_back: u64,
    health_failed: u64,
    /// No outcome yet (overdue once the wave's report timeout has passed).
    unreported: u64,
}

impl Tally {
    /// Counts a member with `outcome` in (`add`) or out (`!add`) of the group.
    fn change(&mut self, outcome: Option<Outcome>, add: bool) {
        // Counting out follows counting the same member in: never below zero.
        let step = |count: &mut u64| {
            if add {
                *count += 1;
            } else {
                *count -= 1;
            }
        };
        step(&mut self.members);
        match outcome {
            Some(Outcome::Committed) => step(&mut self.committed),
            Some(Outcome::RolledBack) => step(&mut self.rolled_back),
            Some(Outcome::HealthFailed) => step(&mut self.health_failed),
            None => step(&mut self.unreported),
        }
    }
}

/// A group's tallies over all its members (for [`Campaign::progress`]) and over those whose
/// failure was not acknowledged (for the gates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tallies {
    everyone: Tally,
    unacknowledged: Tally,
}

impl Tallies {
    fn change(&mut self, member: &Member, add: bool) {
        self.everyone.change(member.outcome, add);
        if !member.acknowledged {
            self.unacknowledged.change(member.outcome, add);
        }
    }

    fn get(&self, gated: bool) -> &Tally {
        if gated {
            &self.unacknowledged
        } else {
            &self.everyone
        }
    }
}

/// One wave's tallies, overall and per segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct WaveTallies {
    all: Tallies,
    /// Indexed by [`Counters`]' segment index.
    segments: Vec<Tallies>,
}

/// The members counted per wave and per (wave, segment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Segment names, interned: the index is the segment's place in [`WaveTallies::segments`].
    segment_names: Vec<String>,
    segment_index: HashMap<String, usize>,
    /// Wave → its tallies (only waves with members).
    waves: BTreeMap<usize, WaveTallies>,
}

impl Counters {
    fn build(members: &BTreeMap<String, Member>) -> Self {
        let mut counters = Self::default();
        for member in members.values() {
            counters.change(member, true);
        }
        counters
    }

    /// Counts `member` in (`add`) or out (`!add`): count it out before changing it and in again
    /// after.
    fn change(&mut self, member: &Member, add: bool) {
        let wave = self.waves.entry(member.wave).or_default();
        wave.all.change(member, add);
        for name in &member.segments {
            // Only the first sighting of a segment allocates (when the counters are built).
            let index = match self.segment_index.get(name.as_str()) {
                Some(index) => *index,
                None => {
                    self.segment_names.push(name.clone());
                    self.segment_index
                        .insert(name.clone(), self.segment_names.len() - 1);
                    self.segment_names.len() - 1
                }
            };
            if wave.segments.len() <= index {
                wave.segments.resize(index + 1, Tallies::default());
            }
            wave.segments[index].change(member, add);
        }
    }
}

/// What the gates say of the open wave.
#[derive(Debug)]
enum Verdict {
    /// Neither halt nor advance yet.
    Hold,
    /// Halt, for this reason.
    Halt(String),
    /// The wave passed: advance or complete, for this reason.
    Pass(String),
}

/// Why the core refused an input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The plan does not hold together.
    #[error("campaign plan: {0}")]
    Plan(#[from] SpecError),
    /// A report from a vehicle outside the campaign, or for a wave not open.
    #[error("vehicle {vehicle}: {why}")]
    Report {
        /// The vehicle.
        vehicle: String,
        /// Why.
        why: String,
    },
    /// Resume of a campaign that is not halted.
    #[error("campaign {0} is not halted")]
    NotHalted(CampaignId),
    /// Abort of a campaign that has ended.
    #[error("campaign {0} has already ended (completed or aborted)")]
    Ended(CampaignId),
}

impl Campaign {
    /// Starts `plan` at `now` over `population` (vehicle id → the segments it belongs to, e.g.
    /// `region:eu-north` and `type:tractor`), with the first wave open.
    pub fn start(
        plan: Plan,
        population: impl IntoIterator<Item = (String, Vec<String>)>,
        now: u64,
    ) -> Result<Self, CampaignError> {
        plan.check()?;
        let members = population
            .into_iter()
            .map(|(vehicle, segments)| {
                let wave = plan.wave_of(&vehicle);
                (
                    vehicle,
                    Member {
                        wave,
                        segments,
                        outcome: None,
                        reported_at: None,
                        acknowledged: false,
                    },
                )
            })
            .collect();
        let counters = Counters::build(&members);
        Ok(Self {
            plan,
            state: State::Running { open: 0 },
            opened_at: vec![now],
            members,
            counters,
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The last open wave (none when completed: all are).
    fn open_wave(&self) -> usize {
        match &self.state {
            State::Running { open } | State::Halted { open, .. } | State::Aborted { open, .. } => {
                *open
            }
            State::Completed => self.plan.waves.len().saturating_sub(1),
        }
    }

    /// Whether `vehicle` may be given the release now (its wave is open and the campaign is
    /// not halted).
    pub fn may_install(&self, vehicle: &str) -> bool {
        let Some(member) = self.members.get(vehicle) else {
            return false;
        };
        match &self.state {
            State::Running { open } => member.wave <= *open,
            State::Halted { .. } | State::Aborted { .. } => false,
            State::Completed => true,
        }
    }

    /// What `vehicle` reported, if anything.
    pub fn outcome_of(&self, vehicle: &str) -> Option<Outcome> {
        self.members.get(vehicle).and_then(|m| m.outcome)
    }

    /// Whether `vehicle` is in the population.
    pub fn is_member(&self, vehicle: &str) -> bool {
        self.members.contains_key(vehicle)
    }

    /// The vehicles whose wave is open.
    pub fn eligible(&self) -> impl Iterator<Item = &str> {
        let open = self.open_wave();
        self.members
            .iter()
            .filter(move |(_, m)| m.wave <= open)
            .map(|(v, _)| v.as_str())
    }

    /// Whether [`Campaign::report`] would take a report of `vehicle` (it is a member of an
    /// open wave); changes nothing.
    pub fn check_report(&self, vehicle: &str) -> Result<(), CampaignError> {
        let member = self
            .members
            .get(vehicle)
            .ok_or_else(|| CampaignError::Report {
                vehicle: vehicle.to_string(),
                why: "is not in this campaign's population".into(),
            })?;
        if member.wave > self.open_wave() {
            return Err(CampaignError::Report {
                vehicle: vehicle.to_string(),
                why: format!(
                    "is in wave {}, which is not open: it was never offered the release",
                    member.wave + 1
                ),
            });
        }
        Ok(())
    }

    /// Records a vehicle's report and evaluates the gates at `now`.
    pub fn report(
        &mut self,
        vehicle: &str,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Decision>, CampaignError> {
        self.check_report(vehicle)?;
        let Some(member) = self.members.get_mut(vehicle) else {
            return Ok(None);
        };
        self.counters.change(member, false);
        member.outcome = Some(outcome);
        member.reported_at = Some(now);
        self.counters.change(member, true);
        if matches!(self.state, State::Aborted { .. }) {
            // Still recorded: the audit trail and the dashboard show what vehicles ran.
            return Ok(None);
        }
        Ok(self.tick(now))
    }

    /// Counts over the open waves; `gated`: without the failures acknowledged on a resume.
    /// The segments are those with members in the open waves. Costs waves × segments.
    fn tallies(&self, now: u64, gated: bool) -> (Counts, BTreeMap<&str, Counts>) {
        let open = self.open_wave();
        let mut all = Counts::default();
        let mut per_segment = vec![Counts::default(); self.counters.segment_names.len()];
        for (&wave, tallies) in self.counters.waves.range(..=open) {
            let opened = self.opened_at.get(wave).copied().unwrap_or(now);
            let overdue = now.saturating_sub(opened) >= self.plan.gates.report_timeout_secs;
            add_tally(&mut all, tallies.all.get(gated), overdue);
            for (counts, segment) in per_segment.iter_mut().zip(&tallies.segments) {
                add_tally(counts, segment.get(gated), overdue);
            }
        }
        let segments = self
            .counters
            .segment_names
            .iter()
            .map(String::as_str)
            .zip(per_segment)
            .filter(|(_, counts)| counts.assigned > 0)
            .collect();
        (all, segments)
    }

    /// Evaluates the gates at `now` (call it on every report and periodically: report
    /// timeouts and soak times pass with the clock). Returns what changed, if anything.
    pub fn tick(&mut self, now: u64) -> Option<Decision> {
        let State::Running { open } = self.state else {
            return None;
        };
        let (all, segments) = self.tallies(now, true);
        let verdict = self.judge(open, now, &all, &segments);
        self.enact(open, now, verdict)
    }

    /// What the gates say of open wave `open` at `now`, given the gated tallies.
    fn judge(
        &self,
        open: usize,
        now: u64,
        all: &Counts,
        segments: &BTreeMap<&str, Counts>,
    ) -> Verdict {
        let gates = &self.plan.gates;
        #[allow(clippy::cast_precision_loss)]
        let rate = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let wave_name = |w: usize| format!("wave {} ({} %)", w + 1, self.plan.waves[w].percent);
        let mut halt = None;
        if all.health_failed > gates.max_failed_health {
            halt = Some(format!(
                "{} failed health checks in {} (gate: at most {})",
                all.health_failed,
                wave_name(open),
                gates.max_failed_health
            ));
        }
        let judged = (std::iter::once(("all vehicles", all)))
            .chain(segments.iter().map(|(s, t)| (*s, t)))
            .filter(|(_, t)| t.reports() + t.overdue >= gates.min_reports.max(1));
        for (segment, tally) in judged {
            if halt.is_some() {
                break;
            }
            let failed = tally.failures() + tally.overdue;
            let rollback = rate(failed, tally.reports() + tally.overdue);
            if rollback > gates.max_rollback {
                halt = Some(format!(
                    "{segment}: {failed} of {} reporting rolled back or never reported \
                     ({:.1} %, gate: at most {:.1} %) in {}",
                    tally.reports() + tally.overdue,
                    rollback * 100.0,
                    gates.max_rollback * 100.0,
                    wave_name(open)
                ));
            }
        }
        if let Some(reason) = halt {
            return Verdict::Halt(reason);
        }
        let soaked =
            now.saturating_sub(self.opened_at[open]) >= self.plan.waves[open].min_soak_secs;
        let success = rate(all.committed, all.assigned);
        if !soaked || success < gates.min_success {
            return Verdict::Hold;
        }
        Verdict::Pass(format!(
            "{}: {} of {} committed ({:.1} %, gate: at least {:.1} %), {} rolled back, soaked {} s",
            wave_name(open),
            all.committed,
            all.assigned,
            success * 100.0,
            gates.min_success * 100.0,
            all.failures(),
            now.saturating_sub(self.opened_at[open])
        ))
    }

    /// Carries out `verdict` on open wave `open` at `now`.
    fn enact(&mut self, open: usize, now: u64, verdict: Verdict) -> Option<Decision> {
        let reason = match verdict {
            Verdict::Hold => return None,
            Verdict::Halt(reason) => {
                self.state = State::Halted {
                    open,
                    reason: reason.clone(),
                };
                return Some(Decision::Halt { reason });
            }
            Verdict::Pass(reason) => reason,
        };
        if open + 1 == self.plan.waves.len() {
            self.state = State::Completed;
            return Some(Decision::Complete { reason });
        }
        self.state = State::Running { open: open + 1 };
        self.opened_at.push(now);
        Some(Decision::Advance {
            wave: open + 1,
            reason,
        })
    }

    /// Halts by hand.
    pub fn halt(&mut self, reason: &str) -> Option<Decision> {
        let State::Running { open } = self.state else {
            return None;
        };
        let reason = format!("halted by hand: {reason}");
        self.state = State::Halted {
            open,
            reason: reason.clone(),
        };
        Some(Decision::Halt { reason })
    }

    /// Calls the campaign off for good (from running or halted), on `by`'s decision. The caller
    /// sends the vehicles whose wave was open back to the earlier release.
    pub fn abort(&mut self, by: &str, reason: &str) -> Result<Decision, CampaignError> {
        let open = match &self.state {
            State::Running { open } | State::Halted { open, .. } => *open,
            State::Completed | State::Aborted { .. } => {
                return Err(CampaignError::Ended(self.plan.id.clone()));
            }
        };
        let reason = format!("aborted by {by}: {reason}");
        self.state = State::Aborted {
            open,
            reason: reason.clone(),
        };
        Ok(Decision::Abort { reason })
    }

    /// Where the campaign stands at `now`, for status pages and metrics.
    pub fn progress(&self, now: u64) -> Progress {
        let open = self.open_wave();
        let (all, segments) = self.tallies(now, false);
        let mut minutes: Vec<u64> = self
            .members
            .values()
            .filter(|m| m.outcome == Some(Outcome::Committed))
            .filter_map(|m| {
                let opened = self.opened_at.get(m.wave)?;
                Some(m.reported_at?.saturating_sub(*opened))
            })
            .collect();
        minutes.sort_unstable();
        let percentile = |p: usize| {
            if minutes.is_empty() {
                None
            } else {
                Some(minutes[(minutes.len() - 1) * p / 100])
            }
        };
        Progress {
            state: self.state.clone(),
            open_wave: open,
            opened_at: self.opened_at.clone(),
            population: u64::try_from(self.members.len()).unwrap_or(u64::MAX),
            eligible: all,
            segments: segments
                .into_iter()
                .map(|(name, tally)| (name.to_string(), tally))
                .collect(),
            time_to_update_secs: [50, 90, 99].map(percentile),
        }
    }

    /// Resumes a halted campaign on `by`'s approval: the failures reported so far are
    /// acknowledged (still counted in [`Campaign::progress`], no longer by the gates: the
    /// approver has seen them), and the open wave's report clock restarts at `now`.
    pub fn resume(&mut self, by: &str, now: u64) -> Result<Decision, CampaignError> {
        let State::Halted { open, .. } = self.state else {
            return Err(CampaignError::NotHalted(self.plan.id.clone()));
        };
        for member in self.members.values_mut() {
            if matches!(
                member.outcome,
                Some(Outcome::RolledBack | Outcome::HealthFailed)
            ) {
                member.acknowledged = true;
            }
        }
        self.counters = Counters::build(&self.members);
        self.state = State::Running { open };
        if let Some(opened) = self.opened_at.get_mut(open) {
            *opened = now;
        }
        Ok(Decision::Resume { by: by.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            id: "brake-2.0".parse().unwrap(),
            waves: [1.0, 5.0, 25.0, 100.0]
                .into_iter()
                .map(|percent| Wave {
                    percent,
                    min_soak_secs: 3600,
                })
                .collect(),
            gates: Gates {
                min_success: 0.95,
                max_rollback: 0.05,
                max_failed_health: 0,
                report_timeout_secs: 86_400,
                min_reports: 3,
            },
        }
    }

    fn fleet(n: usize) -> Vec<(String, Vec<String>)> {
        (0..n)
            .map(|i| {
                (
                    format!("VIN{i:06}"),
                    vec![format!("region-{}", i % 4), format!("type-{}", i % 3)],
                )
            })
            .collect()
    }

    #[test]
    fn waves_are_stable_nested_near_their_share_and_differ_between_campaigns() {
        let plan = plan();
        let vehicles = fleet(20_000);
        let mut counts = [0usize; 4];
        for (v, _) in &vehicles {
            counts[plan.wave_of(v)] += 1;
            assert_eq!(plan.wave_of(v), plan.wave_of(v));
        }
        // Cumulative shares within 0.5 percentage points of the plan.
        let mut cumulative = 0;
        for (wave, count) in plan.waves.iter().zip(counts) {
            cumulative += count;
            #[allow(clippy::cast_precision_loss)]
            let share = cumulative as f64 * 100.0 / vehicles.len() as f64;
            assert!(
                (share - wave.percent).abs() < 0.5,
                "{share} vs {}",
                wave.percent
            );
        }
        let mut other = plan.clone();
        other.id = "gateway-3.1".parse().unwrap();
        let same = vehicles
            .iter()
            .filter(|(v, _)| plan.wave_of(v) == 0 && other.wave_of(v) == 0)
            .count();
        assert!(same < 20, "{same} vehicles are canaries of both campaigns");
    }

    /// Runs a campaign over `n` vehicles where `fails(vehicle)` says whose health check fails;
    /// every eligible vehicle reports one hour after its wave opens. Returns the decisions.
    fn run(n: usize, fails: impl Fn(&str) -> bool) -> (Campaign, Vec<(u64, Decision)>) {
        let mut campaign = Campaign::start(plan(), fleet(n), 0).unwrap();
        let mut decisions = Vec::new();
        let mut reported = std::collections::BTreeSet::new();
        let mut now = 0;
        while now < 30 * 86_400 && matches!(campaign.state(), State::Running { .. }) {
            now += 600;
            let due: Vec<String> = campaign
                .eligible()
                .filter(|v| !reported.contains(*v))
                .map(str::to_string)
                .collect();
            for vehicle in due {
                let outcome = if fails(&vehicle) {
                    Outcome::HealthFailed
                } else {
                    Outcome::Committed
                };
                reported.insert(vehicle.clone());
                if let Some(d) = campaign.report(&vehicle, outcome, now).unwrap() {
                    decisions.push((now, d));
                    if !matches!(campaign.state(), State::Running { .. }) {
                        break;
                    }
                }
            }
            if let Some(d) = campaign.tick(now) {
                decisions.push((now, d));
            }
        }
        (campaign, decisions)
    }

    #[test]
    fn a_good_release_walks_through_every_wave() {
        let (campaign, decisions) = run(500, |_| false);
        assert_eq!(campaign.state(), &State::Completed);
        let advanced: Vec<usize> = decisions
            .iter()
            .filter_map(|(_, d)| match d {
                Decision::Advance { wave, .. } => Some(*wave),
                _ => None,
            })
            .collect();
        assert_eq!(advanced, [1, 2, 3]);
        assert!(matches!(
            decisions.last(),
            Some((_, Decision::Complete { .. }))
        ));
    }

    #[test]
    fn ten_percent_failing_health_halts_at_the_canary_within_one_report_cycle() {
        // Every tenth vehicle (by hash) fails its health check.
        let fails = |v: &str| blake3::hash(v.as_bytes()).as_bytes()[0] < 26;
        let vehicles = fleet(2000);
        let canary_failures = vehicles
            .iter()
            .filter(|(v, _)| plan().wave_of(v) == 0 && fails(v))
            .count();
        assert!(canary_failures > 0, "the canary holds no failing vehicle");
        let (campaign, decisions) = run(vehicles.len(), fails);
        let State::Halted { open, reason } = campaign.state() else {
            panic!("not halted: {:?}", campaign.state());
        };
        assert_eq!(*open, 0, "halted in wave {} not the canary", open + 1);
        assert!(reason.contains("failed health checks"), "{reason}");
        // The first failing report halts it: the cycle it arrived in.
        assert_eq!(decisions.len(), 1, "{decisions:?}");
        assert_eq!(decisions[0].0, 600);
        // Nobody outside the canary wave was offered the release.
        assert!(
            vehicles
                .iter()
                .all(|(v, _)| campaign.plan().wave_of(v) == 0 || !campaign.may_install(v))
        );
    }

    #[test]
    fn a_halted_campaign_resumes_only_on_approval() {
        let mut campaign = Campaign::start(plan(), fleet(600), 0).unwrap();
        let canary: Vec<String> = campaign.eligible().map(str::to_string).collect();
        assert!(!canary.is_empty());
        let halted = campaign
            .report(&canary[0], Outcome::HealthFailed, 10)
            .unwrap();
        assert!(matches!(halted, Some(Decision::Halt { .. })));
        // Time and good reports do not resume it (one canary vehicle stays silent for later).
        assert!(canary.len() >= 3, "{}", canary.len());
        let (silent, rest) = canary[1..].split_last().unwrap();
        for vehicle in rest {
            assert_eq!(
                campaign.report(vehicle, Outcome::Committed, 20).unwrap(),
                None
            );
        }
        assert_eq!(campaign.tick(100_000), None);
        assert!(!campaign.may_install(&canary[0]));
        assert_eq!(
            campaign.resume("alice@fleet-ops", 100_000).unwrap(),
            Decision::Resume {
                by: "alice@fleet-ops".into()
            }
        );
        assert_eq!(
            campaign.resume("bob", 100_001),
            Err(CampaignError::NotHalted("brake-2.0".parse().unwrap()))
        );
        assert!(campaign.may_install(&canary[0]));
        // The acknowledged failure no longer trips the gate; a new one does.
        assert_eq!(campaign.tick(100_010), None);
        assert!(matches!(
            campaign
                .report(silent, Outcome::HealthFailed, 100_020)
                .unwrap(),
            Some(Decision::Halt { .. })
        ));
    }

    #[test]
    fn silent_vehicles_count_as_failed_after_the_report_timeout() {
        let mut gates = plan().gates;
        gates.max_failed_health = 100;
        let mut campaign = Campaign::start(Plan { gates, ..plan() }, fleet(1000), 0).unwrap();
        let canary: Vec<String> = campaign.eligible().map(str::to_string).collect();
        assert!(canary.len() >= 5, "{}", canary.len());
        // Most report success; a tenth never report.
        let silent = canary.len() / 10 + 1;
        for vehicle in &canary[silent..] {
            campaign.report(vehicle, Outcome::Committed, 100).unwrap();
        }
        assert_eq!(
            campaign.tick(86_399),
            None,
            "held while waiting for reports"
        );
        let Some(Decision::Halt { reason }) = campaign.tick(86_400) else {
            panic!("not halted: {:?}", campaign.state());
        };
        assert!(reason.contains("never reported"), "{reason}");
    }

    #[test]
    fn a_bad_segment_halts_even_when_the_fleet_average_passes() {
        let mut gates = plan().gates;
        gates.max_failed_health = u64::MAX;
        gates.max_rollback = 0.2;
        // Rates are judged on 40 reports or more (fleet-wide and per region).
        gates.min_reports = 40;
        let plan = Plan {
            gates,
            waves: vec![Wave {
                percent: 100.0,
                min_soak_secs: 0,
            }],
            ..plan()
        };
        let mut campaign = Campaign::start(plan, fleet(400), 0).unwrap();
        let mut decision = None;
        // region-3 rolls back half the time; the others never.
        for (i, (vehicle, segment)) in fleet(400).into_iter().enumerate() {
            let outcome = if segment[0] == "region-3" && i % 8 == 3 {
                Outcome::RolledBack
            } else {
                Outcome::Committed
            };
            decision = campaign.report(&vehicle, outcome, 10).unwrap();
            if decision.is_some() {
                break;
            }
        }
        let Some(Decision::Halt { reason }) = decision else {
            panic!("{decision:?}");
        };
        assert!(reason.starts_with("region-3"), "{reason}");
    }

    #[test]
    fn bad_plans_and_reports_are_refused_by_name() {
        let mut bad = plan();
        bad.waves[2].percent = 3.0;
        assert!(bad.check().unwrap_err().to_string().contains("wave 3"));
        let mut bad = plan();
        bad.waves.pop();
        assert!(bad.check().unwrap_err().to_string().contains("not 100"));
        let mut campaign = Campaign::start(plan(), fleet(100), 0).unwrap();
        let outsider = campaign.report("NOPE", Outcome::Committed, 1).unwrap_err();
        assert!(outsider.to_string().contains("population"));
        let late = fleet(100)
            .into_iter()
            .find(|(v, _)| campaign.plan().wave_of(v) == 3)
            .unwrap();
        let error = campaign.report(&late.0, Outcome::Committed, 1).unwrap_err();
        assert!(error.to_string().contains("not open"), "{error}");
    }

    #[test]
    fn abort_ends_the_campaign_and_progress_counts_each_segment() {
        let mut campaign = Campaign::start(plan(), fleet(1000), 0).unwrap();
        let canary: Vec<String> = campaign.eligible().map(str::to_string).collect();
        for (i, vehicle) in canary.iter().enumerate() {
            campaign
                .report(vehicle, Outcome::Committed, 60 * (i as u64 + 1))
                .unwrap();
        }
        let progress = campaign.progress(1000);
        assert_eq!(progress.eligible.committed, canary.len() as u64);
        let regions: u64 = progress
            .segments
            .iter()
            .filter(|(name, _)| name.starts_with("region-"))
            .map(|(_, c)| c.committed)
            .sum();
        assert_eq!(regions, canary.len() as u64, "each vehicle in one region");
        let [p50, _, p99] = progress.time_to_update_secs;
        assert!(p50.unwrap() <= p99.unwrap());
        let Decision::Abort { reason } = campaign.abort("carol", "supplier recall").unwrap() else {
            panic!()
        };
        assert!(
            reason.contains("carol") && reason.contains("recall"),
            "{reason}"
        );
        assert!(!campaign.may_install(&canary[0]));
        assert_eq!(campaign.tick(10_000_000), None);
        assert!(campaign.resume("dave", 1).is_err());
        assert!(matches!(
            campaign.abort("carol", "again"),
            Err(CampaignError::Ended(_))
        ));
    }

    /// A campaign as the code before the counters serialized it (waves 40 % and 100 %; a
    /// health failure halted the canary, was resumed past, then the canary passed).
    const STORED: &str = r#"{"plan":{"id":"fixture-1","waves":[{"percent":40.0,"min_soak_secs":100},{"percent":100.0,"min_soak_secs":100}],"gates":{"min_success":0.5,"max_rollback":0.5,"max_failed_health":0,"report_timeout_secs":1000,"min_reports":2}},"state":{"state":"running","open":1},"opened_at":[1020,1200],"members":{"V0":{"wave":1,"segments":["region:r0","type:t0"],"outcome":"committed","reported_at":1300,"acknowledged":false},"V1":{"wave":1,"segments":["region:r1","type:t1"],"outcome":"committed","reported_at":1300,"acknowledged":false},"V2":{"wave":1,"segments":["region:r0","type:t2"],"outcome":null,"reported_at":null,"acknowledged":false},"V3":{"wave":1,"segments":["region:r1","type:t0"],"outcome":null,"reported_at":null,"acknowledged":false},"V4":{"wave":1,"segments":["region:r0","type:t1"],"outcome":null,"reported_at":null,"acknowledged":false},"V5":{"wave":1,"segments":["region:r1","type:t2"],"outcome":null,"reported_at":null,"acknowledged":false},"V6":{"wave":0,"segments":["region:r0","type:t0"],"outcome":"health_failed","reported_at":1010,"acknowledged":true},"V7":{"wave":1,"segments":["region:r1","type:t1"],"outcome":null,"reported_at":null,"acknowledged":false},"V8":{"wave":0,"segments":["region:r0","type:t2"],"outcome":"committed","reported_at":1030,"acknowledged":false},"V9":{"wave":0,"segments":["region:r1","type:t0"],"outcome":null,"reported_at":null,"acknowledged":false}}}"#;

    #[test]
    fn a_stored_campaign_reads_back_with_its_counters() {
        let campaign: Campaign = serde_json::from_str(STORED).unwrap();
        assert_eq!(serde_json::to_string(&campaign).unwrap(), STORED);
        assert_eq!(campaign.counters, Counters::build(&campaign.members));
        // What the code before the counters answered for this campaign: at 1300 nothing is
        // overdue, at 2100 wave 1's silent vehicle is, at 2200 wave 2's are too.
        let answers = [
            (
                1300,
                r#"{"state":{"state":"running","open":1},"open_wave":1,"opened_at":[1020,1200],"population":10,"eligible":{"assigned":10,"committed":3,"rolled_back":0,"health_failed":1,"overdue":0},"segments":{"region:r0":{"assigned":5,"committed":2,"rolled_back":0,"health_failed":1,"overdue":0},"region:r1":{"assigned":5,"committed":1,"rolled_back":0,"health_failed":0,"overdue":0},"type:t0":{"assigned":4,"committed":1,"rolled_back":0,"health_failed":1,"overdue":0},"type:t1":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":0},"type:t2":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":0}},"time_to_update_secs":[100,100,100]}"#,
                None,
            ),
            (
                2100,
                r#"{"state":{"state":"running","open":1},"open_wave":1,"opened_at":[1020,1200],"population":10,"eligible":{"assigned":10,"committed":3,"rolled_back":0,"health_failed":1,"overdue":1},"segments":{"region:r0":{"assigned":5,"committed":2,"rolled_back":0,"health_failed":1,"overdue":0},"region:r1":{"assigned":5,"committed":1,"rolled_back":0,"health_failed":0,"overdue":1},"type:t0":{"assigned":4,"committed":1,"rolled_back":0,"health_failed":1,"overdue":1},"type:t1":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":0},"type:t2":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":0}},"time_to_update_secs":[100,100,100]}"#,
                None,
            ),
            (
                2200,
                r#"{"state":{"state":"running","open":1},"open_wave":1,"opened_at":[1020,1200],"population":10,"eligible":{"assigned":10,"committed":3,"rolled_back":0,"health_failed":1,"overdue":6},"segments":{"region:r0":{"assigned":5,"committed":2,"rolled_back":0,"health_failed":1,"overdue":2},"region:r1":{"assigned":5,"committed":1,"rolled_back":0,"health_failed":0,"overdue":4},"type:t0":{"assigned":4,"committed":1,"rolled_back":0,"health_failed":1,"overdue":2},"type:t1":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":2},"type:t2":{"assigned":3,"committed":1,"rolled_back":0,"health_failed":0,"overdue":2}},"time_to_update_secs":[100,100,100]}"#,
                Some(Decision::Halt {
                    reason: "all vehicles: 6 of 9 reporting rolled back or never reported \
                             (66.7 %, gate: at most 50.0 %) in wave 2 (100 %)"
                        .into(),
                }),
            ),
        ];
        for (now, progress, decision) in answers {
            assert_eq!(
                serde_json::to_string(&campaign.progress(now)).unwrap(),
                progress
            );
            assert_eq!(campaign.clone().tick(now), decision, "at {now}");
        }
        // A report after reading back moves the counters as it moves the members.
        let mut campaign = campaign;
        assert_eq!(
            campaign.report("V9", Outcome::Committed, 1400).unwrap(),
            None
        );
        assert_eq!(campaign.counters, Counters::build(&campaign.members));
        assert_eq!(campaign.progress(2200).eligible.overdue, 5);
        let again: Campaign =
            serde_json::from_str(&serde_json::to_string(&campaign).unwrap()).unwrap();
        assert_eq!(again, campaign);
        assert_eq!(again.counters, campaign.counters);
        assert_eq!(format!("{again:?}"), format!("{campaign:?}"));
    }

    #[test]
    fn two_hundred_thousand_vehicles_report_one_by_one() {
        let vehicles = 200_000;
        let population = (0..vehicles).map(|i| {
            (
                format!("VIN{i:07}"),
                vec![format!("region:r{}", i % 20), format!("type:t{}", i % 3)],
            )
        });
        let mut campaign = Campaign::start(plan(), population, 0).unwrap();
        let mut decisions = Vec::new();
        let mut now = 0;
        let mut reported_through = None;
        // Every vehicle reports, one call each, as soon as its wave opens; the gates are
        // evaluated on each report and once more per report.
        while let State::Running { open } = *campaign.state() {
            assert!(now < 30 * 86_400, "stuck in wave {open}");
            now += 600;
            if reported_through != Some(open) {
                reported_through = Some(open);
                let due: Vec<String> = campaign
                    .eligible()
                    .filter(|v| campaign.outcome_of(v).is_none())
                    .map(str::to_string)
                    .collect();
                for vehicle in due {
                    decisions.extend(campaign.report(&vehicle, Outcome::Committed, now).unwrap());
                    decisions.extend(campaign.tick(now));
                }
            }
            decisions.extend(campaign.tick(now));
        }
        assert_eq!(campaign.state(), &State::Completed);
        let advanced: Vec<usize> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::Advance { wave, .. } => Some(*wave),
                _ => None,
            })
            .collect();
        assert_eq!(advanced, [1, 2, 3], "{decisions:?}");
        assert!(matches!(decisions.last(), Some(Decision::Complete { .. })));
        let progress = campaign.progress(now);
        assert_eq!(progress.population, vehicles);
        assert_eq!(progress.eligible.assigned, vehicles);
        assert_eq!(progress.eligible.committed, vehicles);
        assert_eq!(progress.segments.len(), 23);
        assert_eq!(progress.segments["region:r7"].committed, vehicles / 20);
        assert_eq!(progress.segments["type:t2"].committed, vehicles / 3);
    }

    /// SplitMix64: a small deterministic generator for the randomized tests.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform-enough in `0..bound` (bound > 0).
        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
        }
    }

    /// The old `Counts::add`: one member.
    fn reference_add(counts: &mut Counts, outcome: Option<Outcome>, overdue: bool) {
        counts.assigned += 1;
        match outcome {
            Some(Outcome::Committed) => counts.committed += 1,
            Some(Outcome::RolledBack) => counts.rolled_back += 1,
            Some(Outcome::HealthFailed) => counts.health_failed += 1,
            None if overdue => counts.overdue += 1,
            None => {}
        }
    }

    /// The tallies as computed before the counters: every member visited on every call.
    fn reference_tallies(
        campaign: &Campaign,
        now: u64,
        gated: bool,
    ) -> (Counts, BTreeMap<String, Counts>) {
        let open = campaign.open_wave();
        let mut all = Counts::default();
        let mut segments: BTreeMap<String, Counts> = BTreeMap::new();
        for member in campaign
            .members
            .values()
            .filter(|m| m.wave <= open && !(gated && m.acknowledged))
        {
            let opened = campaign.opened_at.get(member.wave).copied().unwrap_or(now);
            let overdue = member.outcome.is_none()
                && now.saturating_sub(opened) >= campaign.plan.gates.report_timeout_secs;
            reference_add(&mut all, member.outcome, overdue);
            for segment in &member.segments {
                reference_add(
                    segments.entry(segment.clone()).or_default(),
                    member.outcome,
                    overdue,
                );
            }
        }
        (all, segments)
    }

    /// The tallies the campaign computes, with owned names to compare.
    fn owned_tallies(
        campaign: &Campaign,
        now: u64,
        gated: bool,
    ) -> (Counts, BTreeMap<String, Counts>) {
        let (all, segments) = campaign.tallies(now, gated);
        let segments = segments
            .into_iter()
            .map(|(name, counts)| (name.to_string(), counts))
            .collect();
        (all, segments)
    }

    /// The old `tick`: the same gates over the reference tallies. The reference campaign's
    /// counters are never read.
    fn reference_tick(campaign: &mut Campaign, now: u64) -> Option<Decision> {
        let State::Running { open } = campaign.state else {
            return None;
        };
        let (all, segments) = reference_tallies(campaign, now, true);
        let segments: BTreeMap<&str, Counts> = segments
            .iter()
            .map(|(name, counts)| (name.as_str(), counts.clone()))
            .collect();
        let verdict = campaign.judge(open, now, &all, &segments);
        campaign.enact(open, now, verdict)
    }

    /// The old `report`: the member changed, no counters.
    fn reference_report(
        campaign: &mut Campaign,
        vehicle: &str,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Decision>, CampaignError> {
        let open = campaign.open_wave();
        let member = campaign
            .members
            .get_mut(vehicle)
            .ok_or_else(|| CampaignError::Report {
                vehicle: vehicle.to_string(),
                why: "is not in this campaign's population".into(),
            })?;
        if member.wave > open {
            return Err(CampaignError::Report {
                vehicle: vehicle.to_string(),
                why: format!(
                    "is in wave {}, which is not open: it was never offered the release",
                    member.wave + 1
                ),
            });
        }
        member.outcome = Some(outcome);
        member.reported_at = Some(now);
        if matches!(campaign.state, State::Aborted { .. }) {
            return Ok(None);
        }
        Ok(reference_tick(campaign, now))
    }

    /// The old `resume`: the members changed, no counters.
    fn reference_resume(
        campaign: &mut Campaign,
        by: &str,
        now: u64,
    ) -> Result<Decision, CampaignError> {
        let State::Halted { open, .. } = campaign.state else {
            return Err(CampaignError::NotHalted(campaign.plan.id.clone()));
        };
        for member in campaign.members.values_mut() {
            if matches!(
                member.outcome,
                Some(Outcome::RolledBack | Outcome::HealthFailed)
            ) {
                member.acknowledged = true;
            }
        }
        campaign.state = State::Running { open };
        if let Some(opened) = campaign.opened_at.get_mut(open) {
            *opened = now;
        }
        Ok(Decision::Resume { by: by.to_string() })
    }

    /// The old `progress`, over the reference tallies.
    fn reference_progress(campaign: &Campaign, now: u64) -> Progress {
        let (all, segments) = reference_tallies(campaign, now, false);
        let mut minutes: Vec<u64> = campaign
            .members
            .values()
            .filter(|m| m.outcome == Some(Outcome::Committed))
            .filter_map(|m| {
                let opened = campaign.opened_at.get(m.wave)?;
                Some(m.reported_at?.saturating_sub(*opened))
            })
            .collect();
        minutes.sort_unstable();
        let percentile = |p: usize| {
            if minutes.is_empty() {
                None
            } else {
                Some(minutes[(minutes.len() - 1) * p / 100])
            }
        };
        Progress {
            state: campaign.state.clone(),
            open_wave: campaign.open_wave(),
            opened_at: campaign.opened_at.clone(),
            population: u64::try_from(campaign.members.len()).unwrap(),
            eligible: all,
            segments,
            time_to_update_secs: [50, 90, 99].map(percentile),
        }
    }

    /// A random plan and population: few vehicles, segments that repeat, are missing or
    /// appear twice on one vehicle, gates loose and tight.
    fn random_campaign(rng: &mut SplitMix) -> (Plan, Vec<(String, Vec<String>)>) {
        let plans: [&[f64]; 4] = [
            &[100.0],
            &[50.0, 100.0],
            &[10.0, 40.0, 100.0],
            &[1.0, 5.0, 25.0, 100.0],
        ];
        let waves = *rng.pick(&plans);
        let plan = Plan {
            id: format!("random-{}", rng.below(1000)).parse().unwrap(),
            waves: waves
                .iter()
                .map(|&percent| Wave {
                    percent,
                    min_soak_secs: rng.below(500),
                })
                .collect(),
            gates: Gates {
                min_success: *rng.pick(&[0.0, 0.5, 0.9, 1.0]),
                max_rollback: *rng.pick(&[0.0, 0.2, 0.5, 1.0]),
                max_failed_health: rng.below(5),
                report_timeout_secs: *rng.pick(&[0, 300, 1000, 5000]),
                min_reports: rng.below(6),
            },
        };
        let names = [
            "region:r0",
            "region:r1",
            "region:r2",
            "type:t0",
            "type:t1",
            "depot:d0",
        ];
        let vehicles = rng.below(120);
        let population = (0..vehicles)
            .map(|_| {
                // Ids may repeat: the last entry wins, as a map collects them.
                let id = format!("V{}", rng.below(vehicles + 10));
                let segments = (0..rng.below(4))
                    .map(|_| rng.pick(&names).to_string())
                    .collect();
                (id, segments)
            })
            .collect();
        (plan, population)
    }

    #[test]
    fn the_counters_answer_as_a_full_recount_would() {
        for seed in 0..200 {
            let mut rng = SplitMix(seed);
            let (plan, population) = random_campaign(&mut rng);
            let ids: Vec<String> = population.iter().map(|(v, _)| v.clone()).collect();
            let timeout = plan.gates.report_timeout_secs;
            let mut now = rng.below(10_000);
            let mut campaign = Campaign::start(plan.clone(), population.clone(), now).unwrap();
            let mut reference = Campaign::start(plan, population, now).unwrap();
            for step in 0..300 {
                let context = format!("seed {seed}, step {step}, now {now}");
                match rng.below(1000) {
                    0..=499 => {
                        let vehicle = if ids.is_empty() || rng.below(20) == 0 {
                            "NOPE".to_string()
                        } else {
                            rng.pick(&ids).clone()
                        };
                        let outcome = match rng.below(10) {
                            0 => Outcome::RolledBack,
                            1 => Outcome::HealthFailed,
                            _ => Outcome::Committed,
                        };
                        assert_eq!(
                            campaign.report(&vehicle, outcome, now),
                            reference_report(&mut reference, &vehicle, outcome, now),
                            "{context}: report"
                        );
                    }
                    500..=749 => {
                        assert_eq!(
                            campaign.tick(now),
                            reference_tick(&mut reference, now),
                            "{context}: tick"
                        );
                    }
                    750..=849 => {
                        assert_eq!(
                            campaign.resume("approver", now),
                            reference_resume(&mut reference, "approver", now),
                            "{context}: resume"
                        );
                    }
                    850..=869 => {
                        assert_eq!(campaign.halt("test"), reference.halt("test"), "{context}");
                    }
                    870..=871 => {
                        assert_eq!(
                            campaign.abort("test", "test"),
                            reference.abort("test", "test"),
                            "{context}"
                        );
                    }
                    872..=919 => {
                        let json = serde_json::to_string(&campaign).unwrap();
                        campaign = serde_json::from_str(&json).unwrap();
                    }
                    _ => {}
                }
                assert_eq!(campaign, reference, "{context}");
                assert_eq!(
                    campaign.counters,
                    Counters::build(&campaign.members),
                    "{context}"
                );
                for at in [now, now + timeout / 2, now + timeout, now + 3 * timeout] {
                    assert_eq!(
                        campaign.progress(at),
                        reference_progress(&reference, at),
                        "{context}: progress at {at}"
                    );
                    for gated in [false, true] {
                        assert_eq!(
                            owned_tallies(&campaign, at, gated),
                            reference_tallies(&reference, at, gated),
                            "{context}: tallies at {at}, gated {gated}"
                        );
                    }
                }
                // Mostly forward, sometimes not at all, once in a while backwards.
                now = match rng.below(20) {
                    0 => now.saturating_sub(rng.below(500)),
                    1..=4 => now,
                    _ => now + rng.below(600),
                };
            }
        }
    }
}
