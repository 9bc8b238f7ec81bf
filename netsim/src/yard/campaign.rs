//! The yard's campaign: v2 for every gateway, a canary wave then everyone, created and
//! approved through the director's API as the release manager and fleet safety would.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::Context as _;
use origin::campaign::{CampaignSpec, Filters, Gates, Plan, Wave};
use proto::custom::Priority;
use proto::director_api::{CampaignAction, CreateCampaign};
use proto::{CampaignId, Vin};

use super::options::{Log, YardOptions};

/// The approved campaign, as the run follows it.
#[derive(Debug)]
pub(super) struct Campaign {
    pub(super) id: CampaignId,
    /// Each vehicle's wave (1-based), by index.
    pub(super) wave_of: Vec<usize>,
    /// The canary's vehicles (wave 1), by index.
    pub(super) canary: BTreeSet<usize>,
    /// When it was approved, on this machine's clock.
    pub(super) approved: Instant,
    /// When it was approved, Unix seconds: the clock the vehicles' reports carry.
    pub(super) approved_unix: u64,
}

/// The yard campaign's waves and gates: a canary (10 %, soaked 3 s), then everyone; every
/// vehicle must commit and no health check may fail.
pub fn campaign_plan() -> (Vec<Wave>, Gates) {
    let waves = vec![
        Wave {
            percent: 10.0,
            min_soak_secs: 3,
        },
        Wave {
            percent: 100.0,
            min_soak_secs: 0,
        },
    ];
    let gates = Gates {
        min_success: 1.0,
        max_rollback: 0.0,
        max_failed_health: 0,
        report_timeout_secs: 300,
        min_reports: 1,
    };
    (waves, gates)
}

/// Creates the campaign for `vins` and approves it: from then on the director opens its waves
/// as its gates allow. Returns who is in which wave and when it was approved.
pub(super) fn create_and_approve(
    director: &super::parts::Director,
    vins: &[Vin],
    options: &YardOptions,
    log: Log,
) -> anyhow::Result<Campaign> {
    let plan = choose_plan(vins)?;
    let wave_of: Vec<usize> = vins.iter().map(|v| plan.wave_of(v.as_str()) + 1).collect();
    let canary: BTreeSet<usize> = (0..vins.len()).filter(|&i| wave_of[i] == 1).collect();
    let spec = CampaignSpec {
        id: plan.id.clone(),
        release: BTreeMap::from([("gw-v1".to_string(), "ecu/gw-2.bin".to_string())]),
        fallback: BTreeMap::new(),
        priority: Priority::Fix,
        filters: Filters::default(),
        waves: plan.waves,
        gates: plan.gates,
    };
    let create = CreateCampaign { spec };
    super::parts::patiently(|| director.api.create_campaign(&create))?;
    // Four eyes: each approver signs the campaign's statement with their own key.
    for (approver, key) in &director.approvers {
        super::parts::patiently(|| approver.sign_approval(&plan.id, CampaignAction::Approve, key))?;
    }
    let campaign = Campaign {
        id: plan.id,
        wave_of,
        canary,
        approved: Instant::now(),
        approved_unix: node::clock::unix_now(),
    };
    log.say(&format!(
        "campaign {} approved: canary {} then the rest{}",
        campaign.id,
        campaign
            .canary
            .iter()
            .map(|&i| vins[i].as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if options.failing_canary {
            " (the release fails its health check)"
        } else {
            ""
        }
    ));
    Ok(campaign)
}

/// The campaign's plan ([`campaign_plan`]) under the first id that puts one vehicle in four
/// or fewer (at least one) in the canary: the id fixes who is in the canary, by a stable hash.
fn choose_plan(vins: &[Vin]) -> anyhow::Result<Plan> {
    let (waves, gates) = campaign_plan();
    let most = (vins.len() / 4).max(1);
    (0..10_000)
        .filter_map(|k| {
            Some(Plan {
                id: format!("yard-gw-2-{k}").parse().ok()?,
                waves: waves.clone(),
                gates: gates.clone(),
            })
        })
        .find(|plan| {
            let canary = vins
                .iter()
                .filter(|v| plan.wave_of(v.as_str()) == 0)
                .count();
            (1..=most).contains(&canary)
        })
        .context("no campaign id puts a vehicle in the canary")
}
