//! The campaign's vocabulary: what an operator asks for (a [`CampaignSpec`]: waves, gates,
//! filters), the plan the director runs (which wave a vehicle is in), and what it says back (its
//! [`State`], [`Decision`]s and [`Progress`]). The director's sans-IO core (`origin::campaign`)
//! runs on these; the director API carries them; `netsim` and the operator's tools read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::custom::Priority;
use crate::ids::CampaignId;

/// A campaign that does not hold together: what is wrong, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

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
    pub id: CampaignId,
    /// The waves, in order.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
}

impl Plan {
    /// Checks the plan; the error names what is wrong.
    pub fn check(&self) -> Result<(), SpecError> {
        let fail = |why: String| Err(SpecError(why));
        if self.waves.is_empty() {
            return fail("a campaign needs at least one wave".into());
        }
        let mut last = 0.0;
        for (i, wave) in self.waves.iter().enumerate() {
            if !(wave.percent > last && wave.percent <= 100.0) {
                return fail(format!(
                    "wave {} is {} %: waves must grow, each above the one before and at most 100",
                    i + 1,
                    wave.percent
                ));
            }
            last = wave.percent;
        }
        if (last - 100.0).abs() > f64::EPSILON {
            return fail(format!("the last wave reaches {last} %, not 100"));
        }
        let g = &self.gates;
        for (name, value) in [
            ("min_success", g.min_success),
            ("max_rollback", g.max_rollback),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return fail(format!("gate {name} = {value}: must be within 0..=1"));
            }
        }
        Ok(())
    }

    /// Where `vehicle` falls in this campaign, in [0, 1): stable, and independent between
    /// campaigns.
    pub fn position(&self, vehicle: &str) -> f64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"depotmesh wave v1\0");
        hasher.update(self.id.as_str().as_bytes());
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
    /// The campaign's id.
    pub id: CampaignId,
    /// Hardware id → image repository target to install on ECUs of that hardware.
    pub release: BTreeMap<String, String>,
    /// Hardware id → the earlier target an abort sends vehicles back to (it must still be
    /// signed in the image repository, with a release counter the ECUs accept).
    #[serde(default)]
    pub fallback: BTreeMap<String, String>,
    /// `security`, `fix` or `feature` (the vehicles' link policy reads it).
    #[serde(default = "default_priority")]
    pub priority: Priority,
    /// Which vehicles (every list empty: all with an ECU of a released hardware id).
    #[serde(default)]
    pub filters: Filters,
    /// The waves.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
}

fn default_priority() -> Priority {
    Priority::Feature
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
    pub fn check(&self) -> Result<(), SpecError> {
        if self.release.is_empty() {
            return Err(SpecError(
                "release must name at least one hardware id and its target".into(),
            ));
        }
        if let Some(hw) = self
            .fallback
            .keys()
            .find(|hw| !self.release.contains_key(*hw))
        {
            return Err(SpecError(format!(
                "fallback names hardware {hw}, which release does not"
            )));
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

impl State {
    /// Its name: `running`, `halted`, `completed`, `aborted`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running { .. } => "running",
            Self::Halted { .. } => "halted",
            Self::Completed => "completed",
            Self::Aborted { .. } => "aborted",
        }
    }

    /// Why it halted or was aborted.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Halted { reason, .. } | Self::Aborted { reason, .. } => Some(reason),
            Self::Running { .. } | Self::Completed => None,
        }
    }
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

impl Counts {
    /// Reports counted: committed, rolled back or failed health checks.
    pub fn reports(&self) -> u64 {
        self.committed + self.rolled_back + self.health_failed
    }

    /// Reports of failure: rolled back or failed health checks.
    pub fn failures(&self) -> u64 {
        self.rolled_back + self.health_failed
    }
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
