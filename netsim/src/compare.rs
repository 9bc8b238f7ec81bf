//! The fleet model against a real yard: the scenario that describes a `netsim yard` run (same
//! vehicles, delta, link limits, waves and gates) and the model's prediction of it. If the
//! model agrees with the real nodes on a yard, its answers for a fleet of yards can be trusted
//! as far as the yard's parts go.

use serde::Serialize;

use crate::fleet::scenario::{
    CampaignSpec, DEFAULT_START_UNIX, Depot, Failures, Fleet, PolicySpec, Release, Routes,
    Scenario, VehicleSpec,
};
use crate::yard::YardSummary;

/// A link loopback does not limit, Mbit/s (about what one QUIC stream moves on loopback here).
const LOOPBACK_MBIT: f64 = 2_400.0;

/// The yard's fixed costs, seconds, read off unshaped yard runs (where the transfer itself
/// takes well under a second): the director ticks every second and the depot refreshes a
/// vehicle's director metadata every 2 s (on average a second until a newly signed wave is at
/// the depot); each agent is checked every second; the install (delta applied into the
/// inactive bank, trial boot, health check, commit) takes about half a second on these images;
/// a report reaches the director within a fifth of a second.
pub const YARD_METADATA_DELAY_SECS: f64 = 1.0;
/// See [`YARD_METADATA_DELAY_SECS`].
pub const YARD_CHECK_SECS: f64 = 1.0;
/// See [`YARD_METADATA_DELAY_SECS`].
pub const YARD_INSTALL_SECS: f64 = 0.5;
/// See [`YARD_METADATA_DELAY_SECS`].
pub const YARD_REPORT_DELAY_SECS: f64 = 0.2;

/// The fleet scenario of a yard run.
pub fn yard_scenario(yard: &YardSummary) -> Scenario {
    let mbit = |bytes_per_sec: Option<u64>| {
        #[allow(clippy::cast_precision_loss)]
        bytes_per_sec.map_or(LOOPBACK_MBIT, |b| b as f64 * 8.0 / 1e6)
    };
    let (waves, gates) = crate::yard::campaign_plan();
    #[allow(clippy::cast_precision_loss)]
    let (delta_mib, image_mib) = (
        yard.delta_bytes as f64 / 1_048_576.0,
        yard.image_bytes as f64 / 1_048_576.0,
    );
    Scenario {
        name: format!("yard of {} vehicles", yard.vehicles),
        seed: 1,
        days: 1.0,
        start_unix: DEFAULT_START_UNIX,
        sample_secs: 1,
        stop_when_done: true,
        fleet: Fleet {
            vehicles: u32::try_from(yard.vehicles).unwrap_or(u32::MAX),
            depots: 1,
            regions: 1,
            utc_offsets_minutes: Vec::new(),
            region_names: Vec::new(),
            vins: yard.results.iter().map(|r| r.vin.clone()).collect(),
        },
        release: Release {
            delta_mib,
            prefetch_mib: image_mib.max(delta_mib),
            priority: "fix".into(),
            // The yard's depot holds the release before the campaign is approved.
            published_hours_before: 1.0,
        },
        depot: Depot {
            backhaul_mbit: LOOPBACK_MBIT,
            upload_mbit: mbit(yard.depot_up_bytes_per_sec),
            wifi_mbit: 1e6,
            metadata_delay_secs: YARD_METADATA_DELAY_SECS,
        },
        vehicle: VehicleSpec {
            wifi_down_mbit: mbit(yard.vehicle_down_bytes_per_sec),
            wifi_up_mbit: LOOPBACK_MBIT,
            cellular_mbit: 1.0,
            check_secs: YARD_CHECK_SECS,
            cellular_check_secs: 3600.0,
            install_secs: YARD_INSTALL_SECS,
            report_delay_secs: YARD_REPORT_DELAY_SECS,
            signal: [0, 0],
            policy_recheck_secs: 900.0,
            policy: PolicySpec {
                cellular_windows: Vec::new(),
                monthly_budget_mib: 0.0,
                min_signal: 0,
                fix_deadline_hours: 72.0,
            },
        },
        routes: Routes {
            always_present: true,
            depart: "06:00".into(),
            r#return: "18:00".into(),
            jitter_minutes: 0.0,
            overnight_away: 0.0,
            visit_other_depot: 0.0,
        },
        campaign: CampaignSpec {
            id: yard.campaign.clone(),
            start_hours: 2.0,
            tick_secs: 1,
            waves,
            gates,
        },
        failures: Failures {
            health_fail: if yard.failing_canary { 1.0 } else { 0.0 },
            ..Failures::default()
        },
    }
}

/// The yard and the model side by side.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Seconds from approval until the campaign completed, in the yard.
    pub yard_secs: Option<f64>,
    /// The same, predicted by the fleet model.
    pub model_secs: Option<f64>,
    /// How the campaign ended in the model (`completed`, `halted`, `aborted`) and when,
    /// seconds from approval; `None` when it did not end.
    pub model_end: Option<(String, f64)>,
    /// Per vehicle (yard order): seconds from approval until the director had its report,
    /// in the yard and in the model.
    pub vehicles: Vec<(String, Option<f64>, Option<f64>)>,
}

impl Comparison {
    /// `model / yard` for the campaign's completion.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.model_secs? / self.yard_secs?)
    }
}

/// Runs the fleet model on the yard's scenario.
pub fn compare(yard: &YardSummary) -> anyhow::Result<Comparison> {
    let scenario = yard_scenario(yard)
        .check()
        .map_err(|e| anyhow::anyhow!("the yard's fleet scenario: {e}"))?;
    let start = scenario.scenario.campaign.start_hours * 3600.0;
    let (summary, times) = crate::fleet::sim::run_with_times(&scenario, None)?;
    let model_secs = summary
        .decisions
        .iter()
        .find(|d| d.decision == "complete")
        .map(|d| d.hours * 3600.0);
    let model_end = crate::fleet::report::ended_hours(&summary)
        .map(|(hours, state)| (state.to_string(), hours * 3600.0));
    let vehicles = yard
        .results
        .iter()
        .zip(times)
        .map(|(r, t)| (r.vin.clone(), r.reported_after_secs, t.map(|t| t - start)))
        .collect();
    Ok(Comparison {
        yard_secs: yard.completed_after_secs,
        model_secs,
        model_end,
        vehicles,
    })
}
