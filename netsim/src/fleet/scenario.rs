//! A fleet scenario: the fleet, its depots and routes, the links, the release, the campaign and
//! what goes wrong, read from TOML (`config/scenarios/*.toml`). Every field is checked before a
//! run starts; an error names the field.

use std::path::Path;

use anyhow::Context as _;
use node::policy::{PolicyConfig, Priority, Window};
use origin::campaign::{Gates, Plan, Wave};
use serde::{Deserialize, Serialize};

/// 2026-03-02 00:00 UTC, the default start of simulated time (a Monday).
pub const DEFAULT_START_UNIX: u64 = 1_772_409_600;

const MBIT: f64 = 1_000_000.0 / 8.0;
const MIB: f64 = 1_048_576.0;

/// A scenario as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name, for reports.
    pub name: String,
    /// Seed of every random draw (routes, phases, signal, failures).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated days.
    pub days: f64,
    /// Start of simulated time, Unix seconds (UTC).
    #[serde(default = "default_start")]
    pub start_unix: u64,
    /// Sample the time series every this many seconds.
    #[serde(default = "default_sample")]
    pub sample_secs: u64,
    /// End the run once the campaign has ended and no vehicle is still busy with it, rather
    /// than at the end of `days`.
    #[serde(default)]
    pub stop_when_done: bool,
    /// The fleet.
    pub fleet: Fleet,
    /// The release.
    pub release: Release,
    /// Every depot.
    pub depot: Depot,
    /// Every vehicle.
    pub vehicle: VehicleSpec,
    /// Daily routes.
    pub routes: Routes,
    /// The campaign.
    pub campaign: CampaignSpec,
    /// What goes wrong.
    #[serde(default)]
    pub failures: Failures,
}

fn default_seed() -> u64 {
    1
}
fn default_start() -> u64 {
    DEFAULT_START_UNIX
}
fn default_sample() -> u64 {
    3600
}

/// How many of what, where.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// Vehicles (1 to 1,000,000).
    pub vehicles: u32,
    /// Depots (1 to vehicles); vehicles are spread evenly over them as home depots.
    pub depots: u32,
    /// Regions (1 to depots); depots are spread evenly over them.
    pub regions: u32,
    /// Each region's local time as minutes east of UTC, used in turn (region i takes entry
    /// i mod len). Empty: UTC everywhere.
    #[serde(default)]
    pub utc_offsets_minutes: Vec<i32>,
    /// Each region's name, for reports, in order (as many as `regions`); empty: reports call
    /// region i `region i` with its time zone.
    #[serde(default)]
    pub region_names: Vec<String>,
    /// The vehicles' ids, in order (their home depots follow from the order); empty:
    /// `SIM00000000`, `SIM00000001`, … The campaign's wave hash reads the id, so naming a real
    /// yard's vehicles puts the same ones in the canary.
    #[serde(default)]
    pub vins: Vec<String>,
}

/// The release the campaign rolls out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// What a vehicle downloads (the delta), MiB.
    pub delta_mib: f64,
    /// What each depot prefetches over its backhaul (delta, full image, metadata), MiB.
    pub prefetch_mib: f64,
    /// `security`, `fix` or `feature` (the vehicles' link policy reads it).
    pub priority: String,
    /// Hours before the campaign starts that the release is published (depots start
    /// prefetching).
    #[serde(default)]
    pub published_hours_before: f64,
}

/// Every depot's links.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Depot {
    /// Backhaul from the origin, Mbit/s.
    pub backhaul_mbit: f64,
    /// What the depot cache may send onto the yard, Mbit/s (`u_depot`).
    pub upload_mbit: f64,
    /// The yard WiFi's aggregate throughput, Mbit/s (every yard byte crosses it).
    pub wifi_mbit: f64,
    /// Seconds until director metadata signed for a new wave reaches the depot (its prefetch
    /// interval).
    pub metadata_delay_secs: f64,
}

/// Every vehicle's links and timings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleSpec {
    /// Yard WiFi download, Mbit/s (`d`).
    pub wifi_down_mbit: f64,
    /// Yard WiFi upload, Mbit/s (`u_vehicle`).
    pub wifi_up_mbit: f64,
    /// Cellular download, Mbit/s.
    pub cellular_mbit: f64,
    /// Seconds between director checks while at a depot.
    pub check_secs: f64,
    /// Seconds between director checks over cellular while away.
    pub cellular_check_secs: f64,
    /// Seconds from a whole delta to a booted, health-checked image (apply, write the inactive
    /// bank, trial boot, health check).
    pub install_secs: f64,
    /// Seconds from the outcome to the director recording the report.
    pub report_delay_secs: f64,
    /// Cellular signal quality is drawn uniformly from this range (0–100).
    pub signal: [u8; 2],
    /// Seconds between re-asking the link policy while a cellular download runs (a window may
    /// close).
    #[serde(default = "default_recheck")]
    pub policy_recheck_secs: f64,
    /// The link policy every vehicle runs.
    pub policy: PolicySpec,
}

fn default_recheck() -> f64 {
    900.0
}

/// The vehicles' cellular rules (`node::policy::PolicyConfig`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Times of day (local) when fixes may use cellular, `HH:MM-HH:MM`.
    #[serde(default)]
    pub cellular_windows: Vec<String>,
    /// Cellular MiB per vehicle per calendar month.
    pub monthly_budget_mib: f64,
    /// Lowest signal quality cellular is used at.
    pub min_signal: u8,
    /// Hours after release when a fix may use cellular at any time.
    pub fix_deadline_hours: f64,
}

/// Daily routes: out in the morning, back in the evening (local times), with jitter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    /// Every vehicle stays parked at its home depot for the whole run (a yard, no routes).
    #[serde(default)]
    pub always_present: bool,
    /// Local departure time, `HH:MM`.
    #[serde(default = "default_depart")]
    pub depart: String,
    /// Local return time, `HH:MM`.
    #[serde(default = "default_return")]
    pub r#return: String,
    /// Each departure and return moves by up to this many minutes either way.
    #[serde(default)]
    pub jitter_minutes: f64,
    /// Chance a vehicle stays out for a night.
    #[serde(default)]
    pub overnight_away: f64,
    /// Chance a vehicle spends a night at another depot of its region.
    #[serde(default)]
    pub visit_other_depot: f64,
}

fn default_depart() -> String {
    "06:00".into()
}
fn default_return() -> String {
    "18:00".into()
}

/// The campaign (`origin::campaign`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    /// Its id (part of the wave hash).
    pub id: proto::CampaignId,
    /// Hours after the start of simulated time when it is approved (wave 1 opens).
    pub start_hours: f64,
    /// Seconds between the director's gate evaluations.
    pub tick_secs: u64,
    /// The waves.
    pub waves: Vec<Wave>,
    /// The gates.
    pub gates: Gates,
}

/// Failures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failures {
    /// Share of vehicles whose health check fails on the new release (a bad release).
    #[serde(default)]
    pub health_fail: f64,
    /// Share of vehicles whose trial boot fails (the flasher rolls back).
    #[serde(default)]
    pub rollback: f64,
    /// Share of vehicles that serve corrupt pieces (banned by their neighbours after the first
    /// bad group; they upload nothing useful).
    #[serde(default)]
    pub corrupt_peers: f64,
    /// Depot outages: the depot cache serves nothing and relays no metadata.
    #[serde(default)]
    pub depot_outages: Vec<Outage>,
}

/// One depot outage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Depot index (0-based).
    pub depot: u32,
    /// Hours after the start of simulated time.
    pub start_hours: f64,
    /// How long, hours.
    pub hours: f64,
}

/// A scenario checked and converted to the units the model uses (bytes, bytes/s, seconds).
#[derive(Clone, Debug)]
pub struct Checked {
    /// As written.
    pub scenario: Scenario,
    /// Delta size, bytes (`F`).
    pub delta_bytes: f64,
    /// Prefetch size, bytes.
    pub prefetch_bytes: f64,
    /// Bytes per second.
    pub backhaul: f64,
    /// Bytes per second.
    pub depot_up: f64,
    /// Bytes per second.
    pub wifi: f64,
    /// Bytes per second.
    pub vehicle_down: f64,
    /// Bytes per second.
    pub vehicle_up: f64,
    /// Bytes per second.
    pub cellular: f64,
    /// The release's priority.
    pub priority: Priority,
    /// Policy of a vehicle in region `r`: `policy_for(r)`.
    pub policy: PolicyConfig,
    /// Minutes after local midnight.
    pub depart_minute: f64,
    /// Minutes after local midnight.
    pub return_minute: f64,
    /// The campaign plan.
    pub plan: Plan,
}

impl Checked {
    /// The link policy of a vehicle in `region`.
    pub fn policy_for(&self, region: u32) -> PolicyConfig {
        PolicyConfig {
            utc_offset_minutes: self.utc_offset(region),
            ..self.policy.clone()
        }
    }

    /// Region `region` as reports name it: its name in the scenario, else `region <i>` and its
    /// time zone when the scenario gives time zones (`region 3 · UTC+5:30`).
    pub fn region_label(&self, region: u32) -> String {
        let fleet = &self.scenario.fleet;
        if let Some(name) = fleet.region_names.get(region as usize) {
            return name.clone();
        }
        if fleet.utc_offsets_minutes.is_empty() {
            return format!("region {region}");
        }
        let offset = self.utc_offset(region);
        let sign = if offset < 0 { '-' } else { '+' };
        let (hours, minutes) = (offset.abs() / 60, offset.abs() % 60);
        match minutes {
            0 => format!("region {region} · UTC{sign}{hours}"),
            _ => format!("region {region} · UTC{sign}{hours}:{minutes:02}"),
        }
    }

    /// Region `region`'s local time offset, minutes east of UTC.
    pub fn utc_offset(&self, region: u32) -> i32 {
        let offsets = &self.scenario.fleet.utc_offsets_minutes;
        if offsets.is_empty() {
            0
        } else {
            offsets[usize::try_from(region).unwrap_or(0) % offsets.len()]
        }
    }
}

/// A scenario that does not hold: what is wrong, naming the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// Not TOML, an unknown key or a value of the wrong type (toml names it).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A field's value refused (the message starts with the field).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(why: String) -> ScenarioError {
    ScenarioError::Invalid(why)
}

fn positive(name: &str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{name} = {value} must be a positive number"
        )))
    }
}

fn non_negative(name: &str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid(format!("{name} = {value} must be zero or more")))
    }
}

fn share(name: &str, value: f64) -> Result<f64, ScenarioError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(format!("{name} = {value} must be between 0 and 1")))
    }
}

fn minute_of_day(name: &str, text: &str) -> Result<f64, ScenarioError> {
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.trim().parse::<u16>().ok()?, m.trim().parse::<u16>().ok()?);
        (h < 24 && m < 60).then_some(f64::from(h * 60 + m))
    });
    parsed.ok_or_else(|| invalid(format!("{name} = {text:?} is not HH:MM (00:00 to 23:59)")))
}

impl Scenario {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> anyhow::Result<Checked> {
        let text = std::fs::read_to_string(path)
            .with_context(|| invalid(format!("reading scenario {}", path.display())))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))
    }

    /// Parses and checks a scenario's TOML.
    pub fn parse(text: &str) -> Result<Checked, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.check()
    }

    /// Checks every field; the error names the first that is wrong.
    pub fn check(self) -> Result<Checked, ScenarioError> {
        let s = &self;
        positive("days", s.days)?;
        if s.days > 366.0 {
            return Err(invalid(format!("days = {} must be at most 366", s.days)));
        }
        if s.sample_secs == 0 {
            return Err(invalid("sample_secs must be at least 1".into()));
        }
        let f = &s.fleet;
        if !(1..=1_000_000).contains(&f.vehicles) {
            return Err(invalid(format!(
                "fleet.vehicles = {} must be 1 to 1000000",
                f.vehicles
            )));
        }
        if f.depots == 0 || f.depots > f.vehicles {
            return Err(invalid(format!(
                "fleet.depots = {} must be 1 to fleet.vehicles ({})",
                f.depots, f.vehicles
            )));
        }
        if f.regions == 0 || f.regions > f.depots {
            return Err(invalid(format!(
                "fleet.regions = {} must be 1 to fleet.depots ({})",
                f.regions, f.depots
            )));
        }
        if let Some(o) = f.utc_offsets_minutes.iter().find(|o| o.abs() > 14 * 60) {
            return Err(invalid(format!(
                "fleet.utc_offsets_minutes: {o} is not a time zone (at most ±840)"
            )));
        }
        if !f.region_names.is_empty() && f.region_names.len() != f.regions as usize {
            return Err(invalid(format!(
                "fleet.region_names names {} regions, fleet.regions says {}",
                f.region_names.len(),
                f.regions
            )));
        }
        if !f.vins.is_empty() {
            if f.vins.len() != f.vehicles as usize {
                return Err(invalid(format!(
                    "fleet.vins names {} vehicles, fleet.vehicles says {}",
                    f.vins.len(),
                    f.vehicles
                )));
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = f.vins.iter().find(|v| !seen.insert(v.as_str())) {
                return Err(invalid(format!("fleet.vins names {dup:?} twice")));
            }
        }
        let delta_bytes = positive("release.delta_mib", s.release.delta_mib)? * MIB;
        let prefetch_bytes = positive("release.prefetch_mib", s.release.prefetch_mib)? * MIB;
        if prefetch_bytes < delta_bytes {
            return Err(invalid(format!(
                "release.prefetch_mib = {} must be at least release.delta_mib ({}): the depot \
                 prefetches the delta",
                s.release.prefetch_mib, s.release.delta_mib
            )));
        }
        let priority: Priority = s.release.priority.parse().map_err(|_| {
            invalid(format!(
                "release.priority = {:?} must be security, fix or feature",
                s.release.priority
            ))
        })?;
        non_negative(
            "release.published_hours_before",
            s.release.published_hours_before,
        )?;
        let d = &s.depot;
        let backhaul = positive("depot.backhaul_mbit", d.backhaul_mbit)? * MBIT;
        let depot_up = positive("depot.upload_mbit", d.upload_mbit)? * MBIT;
        let wifi = positive("depot.wifi_mbit", d.wifi_mbit)? * MBIT;
        non_negative("depot.metadata_delay_secs", d.metadata_delay_secs)?;
        let v = &s.vehicle;
        let vehicle_down = positive("vehicle.wifi_down_mbit", v.wifi_down_mbit)? * MBIT;
        let vehicle_up = non_negative("vehicle.wifi_up_mbit", v.wifi_up_mbit)? * MBIT;
        let cellular = positive("vehicle.cellular_mbit", v.cellular_mbit)? * MBIT;
        positive("vehicle.check_secs", v.check_secs)?;
        positive("vehicle.cellular_check_secs", v.cellular_check_secs)?;
        non_negative("vehicle.install_secs", v.install_secs)?;
        non_negative("vehicle.report_delay_secs", v.report_delay_secs)?;
        positive("vehicle.policy_recheck_secs", v.policy_recheck_secs)?;
        if v.signal[0] > v.signal[1] || v.signal[1] > 100 {
            return Err(invalid(format!(
                "vehicle.signal = {:?} must be [low, high] within 0..=100",
                v.signal
            )));
        }
        let p = &v.policy;
        let cellular_windows = p
            .cellular_windows
            .iter()
            .map(|w| {
                Window::parse(w)
                    .map_err(|e| invalid(format!("vehicle.policy.cellular_windows: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let budget = non_negative("vehicle.policy.monthly_budget_mib", p.monthly_budget_mib)?;
        if p.min_signal > 100 {
            return Err(invalid(format!(
                "vehicle.policy.min_signal = {} must be 0 to 100",
                p.min_signal
            )));
        }
        let deadline = non_negative("vehicle.policy.fix_deadline_hours", p.fix_deadline_hours)?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let policy = PolicyConfig {
            cellular_windows,
            monthly_budget: (budget * MIB) as u64,
            min_signal: p.min_signal,
            fix_deadline_secs: (deadline * 3600.0) as u64,
            utc_offset_minutes: 0,
        };
        let r = &s.routes;
        let depart_minute = minute_of_day("routes.depart", &r.depart)?;
        let return_minute = minute_of_day("routes.return", &r.r#return)?;
        if !r.always_present && depart_minute >= return_minute {
            return Err(invalid(format!(
                "routes.depart ({}) must be before routes.return ({}): vehicles are out by day",
                r.depart, r.r#return
            )));
        }
        let jitter = non_negative("routes.jitter_minutes", r.jitter_minutes)?;
        if !r.always_present && jitter * 2.0 >= return_minute - depart_minute {
            return Err(invalid(format!(
                "routes.jitter_minutes = {jitter} must be under half the time out \
                 ({} minutes)",
                return_minute - depart_minute
            )));
        }
        share("routes.overnight_away", r.overnight_away)?;
        share("routes.visit_other_depot", r.visit_other_depot)?;
        let c = &s.campaign;
        non_negative("campaign.start_hours", c.start_hours)?;
        if c.start_hours >= s.days * 24.0 {
            return Err(invalid(format!(
                "campaign.start_hours = {} must be within the run ({} days)",
                c.start_hours, s.days
            )));
        }
        if c.tick_secs == 0 {
            return Err(invalid("campaign.tick_secs must be at least 1".into()));
        }
        let plan = Plan {
            id: c.id.clone(),
            waves: c.waves.clone(),
            gates: c.gates.clone(),
        };
        plan.check()
            .map_err(|e| invalid(format!("campaign: {e}")))?;
        let x = &s.failures;
        share("failures.health_fail", x.health_fail)?;
        share("failures.rollback", x.rollback)?;
        share("failures.corrupt_peers", x.corrupt_peers)?;
        for (i, o) in x.depot_outages.iter().enumerate() {
            if o.depot >= f.depots {
                return Err(invalid(format!(
                    "failures.depot_outages[{i}].depot = {} must be below fleet.depots ({})",
                    o.depot, f.depots
                )));
            }
            non_negative(
                &format!("failures.depot_outages[{i}].start_hours"),
                o.start_hours,
            )?;
            positive(&format!("failures.depot_outages[{i}].hours"), o.hours)?;
        }
        Ok(Checked {
            delta_bytes,
            prefetch_bytes,
            backhaul,
            depot_up,
            wifi,
            vehicle_down,
            vehicle_up,
            cellular,
            priority,
            policy,
            depart_minute,
            return_minute,
            plan,
            scenario: self,
        })
    }
}
