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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One wave: the share of the population it brings the campaign to, and how long it must run
/// before the next may open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// Cumulative percentage of the population (0 < p ≤ 100, increasing).
    pub percent: f64,
    /// Seconds the wave must run before the next opens.
    pub min_soak_secs: u64,
}

/// The gates, applied to every wave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    /// Smallest share of the wave's vehicles that must have committed the release to advance.
    pub min_success: f64,
    /// Largest share of reports that may be rollbacks before the campaign halts.
    pub max_rollback: f64,
    /// Most failed health checks (across the campaign) before it halts.
    pub max_failed_health: u64,
    /// Seconds after its wave opened by which a vehicle must have reported, else it counts as
    /// failed.
    pub report_timeout_secs: u64,
    /// Reports a segment needs before its own rates are judged.
    pub min_reports: u64,
}

/// A campaign's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The campaign's id (part of the wave hash).
    pub id: String,
    /// The waves, in order.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
}

impl Plan {
    /// Checks the plan; the error names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty() {
            return Err("the campaign id is empty".into());
        }
        if self.waves.is_empty() {
            return Err("a campaign needs at least one wave".into());
        }
        let mut last = 0.0;
        for (i, wave) in self.waves.iter().enumerate() {
            if !(wave.percent > last && wave.percent <= 100.0) {
                return Err(format!(
                    "wave {} is {} %: waves must grow, each above the one before and at most 100",
                    i + 1,
                    wave.percent
                ));
            }
            last = wave.percent;
        }
        if (last - 100.0).abs() > f64::EPSILON {
            return Err(format!("the last wave reaches {last} %, not 100"));
        }
        let g = &self.gates;
        for (name, value) in [
            ("min_success", g.min_success),
            ("max_rollback", g.max_rollback),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(format!("gate {name} = {value}: must be within 0..=1"));
            }
        }
        Ok(())
    }

    /// Where `vehicle` falls in this campaign, in [0, 1): stable, and independent between
    /// campaigns.
    pub fn position(&self, vehicle: &str) -> f64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"depotmesh wave v1\0");
        hasher.update(self.id.as_bytes());
        hasher.update(b"\0");
        hasher.update(vehicle.as_bytes());
        let hash = hasher.finalize();
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&hash.as_bytes()[..8]);
        // 53 bits: exactly representable.
        #[allow(clippy::cast_precision_loss)]
        let position = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
        position
    }

    /// The first wave (0-based) `vehicle` belongs to.
    pub fn wave_of(&self, vehicle: &str) -> usize {
        let position = self.position(vehicle) * 100.0;
        self.waves
            .iter()
            .position(|w| position < w.percent)
            .unwrap_or(self.waves.len().saturating_sub(1))
    }
}

/// What an operator asks for: a release per hardware id, to which vehicles, how urgently, in
/// which waves, behind which gates. Read from TOML (`origin campaign create --file`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// The campaign's id: 1 to 64 of `A-Z a-z 0-9 - _ .`.
    pub id: String,
    /// Hardware id → image repository target to install on ECUs of that hardware.
    pub release: BTreeMap<String, String>,
    /// Hardware id → the earlier target an abort sends vehicles back to (it must still be
    /// signed in the image repository, with a release counter the ECUs accept).
    #[serde(default)]
    pub fallback: BTreeMap<String, String>,
    /// `security`, `fix` or `feature` (the vehicles' link policy reads it).
    #[serde(default = "default_priority")]
    pub priority: String,
    /// Which vehicles (every list empty: all with an ECU of a released hardware id).
    #[serde(default)]
    pub filters: Filters,
    /// The waves.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
}

fn default_priority() -> String {
    "feature".into()
}

/// Which vehicles a campaign is for: each non-empty list must contain the vehicle's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Regions.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Vehicle types.
    #[serde(default)]
    pub vehicle_types: Vec<String>,
    /// Home depots.
    #[serde(default)]
    pub depots: Vec<String>,
    /// Targets one of its ECUs must run now (e.g. only vehicles on 1.x).
    #[serde(default)]
    pub installed: Vec<String>,
}

impl Filters {
    /// Whether a vehicle with these attributes passes.
    pub fn admits(
        &self,
        region: &str,
        vehicle_type: &str,
        depot: &str,
        installed: &[&str],
    ) -> bool {
        let ok = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        ok(&self.regions, region)
            && ok(&self.vehicle_types, vehicle_type)
            && ok(&self.depots, depot)
            && (self.installed.is_empty()
                || installed
                    .iter()
                    .any(|i| self.installed.iter().any(|f| f == i)))
    }
}

impl CampaignSpec {
    /// The plan the core runs.
    pub fn plan(&self) -> Plan {
        Plan {
            id: self.id.clone(),
            waves: self.waves.clone(),
            gates: self.gates.clone(),
        }
    }

    /// Checks what can be checked without the repositories; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "id {:?} must be 1 to 64 of A-Z a-z 0-9 - _ .",
                self.id
            ));
        }
        if self.release.is_empty() {
            return Err("release must name at least one hardware id and its target".into());
        }
        if let Some(hw) = self
            .fallback
            .keys()
            .find(|hw| !self.release.contains_key(*hw))
        {
            return Err(format!(
                "fallback names hardware {hw}, which release does not"
            ));
        }
        if self.priority.parse::<node::policy::Priority>().is_err() {
            return Err(format!(
                "priority {:?} must be security, fix or feature",
                self.priority
            ));
        }
        self.plan().check()
    }
}

/// What a vehicle reported for the campaign's release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Installed, healthy, committed.
    Committed,
    /// Rolled back (by the flasher: boot failure, trial exhausted).
    RolledBack,
    /// Rolled back because the health check failed.
    HealthFailed,
}

/// Where the campaign stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waves `0..=open` are open.
    Running {
        /// The last open wave.
        open: usize,
    },
    /// Stopped by a gate (or an operator); resumes only on approval.
    Halted {
        /// The last open wave.
        open: usize,
        /// Why.
        reason: String,
    },
    /// Every wave done.
    Completed,
    /// Called off for good: vehicles that took the release are to be sent back to the earlier
    /// release (the caller does that, where the earlier release is still signed).
    Aborted {
        /// The last open wave.
        open: usize,
        /// Why, and who decided.
        reason: String,
    },
}

/// A decision, for the caller to carry out and write to the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Open wave `wave` (0-based).
    Advance {
        /// The wave opened.
        wave: usize,
        /// Why.
        reason: String,
    },
    /// Stop handing out the release.
    Halt {
        /// Why.
        reason: String,
    },
    /// The last wave passed its gates.
    Complete {
        /// Why.
        reason: String,
    },
    /// Resumed on approval.
    Resume {
        /// Who approved.
        by: String,
    },
    /// Called off; vehicles that took the release go back to the earlier one.
    Abort {
        /// Why, and who decided.
        reason: String,
    },
}

impl Decision {
    /// The decision's name: `advance`, `halt`, `complete`, `resume`, `abort`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Advance { .. } => "advance",
            Self::Halt { .. } => "halt",
            Self::Complete { .. } => "complete",
            Self::Resume { .. } => "resume",
            Self::Abort { .. } => "abort",
        }
    }
}

impl Counts {
    fn reports(&self) -> u64 {
        self.committed + self.rolled_back + self.health_failed
    }

    fn failures(&self) -> u64 {
        self.rolled_back + self.health_failed
    }

    fn add(&mut self, outcome: Option<Outcome>, overdue: bool) {
        self.assigned += 1;
        match outcome {
            Some(Outcome::Committed) => self.committed += 1,
            Some(Outcome::RolledBack) => self.rolled_back += 1,
            Some(Outcome::HealthFailed) => self.health_failed += 1,
            None if overdue => self.overdue += 1,
            None => {}
        }
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    plan: Plan,
    state: State,
    /// When each opened wave opened (Unix seconds).
    opened_at: Vec<u64>,
    members: BTreeMap<String, Member>,
}

/// Why the core refused an input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    /// The plan does not hold together.
    #[error("campaign plan: {0}")]
    Plan(String),
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
    NotHalted(String),
    /// Abort of a campaign that has ended.
    #[error("campaign {0} has already ended (completed or aborted)")]
    Ended(String),
}

/// Counts over a group of vehicles (the open waves, or one segment of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Vehicles offered the release.
    pub assigned: u64,
    /// Committed it.
    pub committed: u64,
    /// Rolled back (boot or trial failure).
    pub rolled_back: u64,
    /// Rolled back on a failed health check.
    pub health_failed: u64,
    /// Silent past the report timeout.
    pub overdue: u64,
}

/// A campaign's standing, from [`Campaign::progress`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Its state.
    pub state: State,
    /// The last open wave (0-based).
    pub open_wave: usize,
    /// When each opened wave opened (Unix seconds).
    pub opened_at: Vec<u64>,
    /// Vehicles in the population.
    pub population: u64,
    /// Counts over the open waves.
    pub eligible: Counts,
    /// Counts per segment, over the open waves.
    pub segments: BTreeMap<String, Counts>,
    /// Seconds from a vehicle's wave opening to its commit report: 50th, 90th, 99th percentile.
    pub time_to_update_secs: [Option<u64>; 3],
}

impl Campaign {
    /// Starts `plan` at `now` over `population` (vehicle id → the segments it belongs to, e.g.
    /// `region:eu-north` and `type:tractor`), with the first wave open.
    pub fn start(
        plan: Plan,
        population: impl IntoIterator<Item = (String, Vec<String>)>,
        now: u64,
    ) -> Result<Self, CampaignError> {
        plan.check().map_err(CampaignError::Plan)?;
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
        Ok(Self {
            plan,
            state: State::Running { open: 0 },
            opened_at: vec![now],
            members,
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

    /// Records a vehicle's report and evaluates the gates at `now`.
    pub fn report(
        &mut self,
        vehicle: &str,
        outcome: Outcome,
        now: u64,
    ) -> Result<Option<Decision>, CampaignError> {
        let open = self.open_wave();
        let member = self
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
        if matches!(self.state, State::Aborted { .. }) {
            // Still recorded: the audit trail and the dashboard show what vehicles ran.
            member.outcome = Some(outcome);
            member.reported_at = Some(now);
            return Ok(None);
        }
        member.outcome = Some(outcome);
        member.reported_at = Some(now);
        Ok(self.tick(now))
    }

    /// Counts over the open waves; `gated`: without the failures acknowledged on a resume.
    fn tallies(&self, now: u64, gated: bool) -> (Counts, BTreeMap<&str, Counts>) {
        let open = self.open_wave();
        let mut all = Counts::default();
        let mut segments: BTreeMap<&str, Counts> = BTreeMap::new();
        for member in self
            .members
            .values()
            .filter(|m| m.wave <= open && !(gated && m.acknowledged))
        {
            let opened = self.opened_at.get(member.wave).copied().unwrap_or(now);
            let overdue = member.outcome.is_none()
                && now.saturating_sub(opened) >= self.plan.gates.report_timeout_secs;
            all.add(member.outcome, overdue);
            for segment in &member.segments {
                segments
                    .entry(segment.as_str())
                    .or_default()
                    .add(member.outcome, overdue);
            }
        }
        (all, segments)
    }

    /// Evaluates the gates at `now` (call it on every report and periodically: report
    /// timeouts and soak times pass with the clock). Returns what changed, if anything.
    pub fn tick(&mut self, now: u64) -> Option<Decision> {
        let State::Running { open } = self.state else {
            return None;
        };
        let gates = self.plan.gates.clone();
        let (all, segments) = self.tallies(now, true);
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
        let judged = (std::iter::once(("all vehicles", &all)))
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
            self.state = State::Halted {
                open,
                reason: reason.clone(),
            };
            return Some(Decision::Halt { reason });
        }
        let soaked =
            now.saturating_sub(self.opened_at[open]) >= self.plan.waves[open].min_soak_secs;
        let success = rate(all.committed, all.assigned);
        if !soaked || success < gates.min_success {
            return None;
        }
        let reason = format!(
            "{}: {} of {} committed ({:.1} %, gate: at least {:.1} %), {} rolled back, soaked {} s",
            wave_name(open),
            all.committed,
            all.assigned,
            success * 100.0,
            gates.min_success * 100.0,
            all.failures(),
            now.saturating_sub(self.opened_at[open])
        );
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
            id: "brake-2.0".into(),
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
        other.id = "gateway-3.1".into();
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
            Err(CampaignError::NotHalted("brake-2.0".into()))
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
        assert!(bad.check().unwrap_err().contains("wave 3"));
        let mut bad = plan();
        bad.waves.pop();
        assert!(bad.check().unwrap_err().contains("not 100"));
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
}
