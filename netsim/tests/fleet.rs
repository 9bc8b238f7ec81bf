//! `netsim fleet`: the flow-level model on small scenarios — reproducible from its seed, driven
//! by the vehicles' link policy and the director's gates, and close to the fluid bound where
//! the bound is the whole story.

#![allow(clippy::unwrap_used)]

use netsim::fleet::{self, Scenario};

fn quick() -> Scenario {
    let text = std::fs::read_to_string("../config/scenarios/quick-1k.toml").unwrap();
    toml::from_str(&text).unwrap()
}

fn run(scenario: Scenario) -> fleet::FleetSummary {
    fleet::run(&scenario.check().unwrap(), None).unwrap()
}

/// The summary without what depends on the machine (wall time, memory).
fn portable(summary: &fleet::FleetSummary) -> serde_json::Value {
    let mut json = serde_json::to_value(summary).unwrap();
    let map = json.as_object_mut().unwrap();
    map.remove("wall_secs");
    map.remove("peak_rss_bytes");
    json
}

#[test]
fn the_shipped_scenarios_parse() {
    for name in ["quick-1k", "fleet-10k", "fleet-200k"] {
        Scenario::load(std::path::Path::new(&format!(
            "../config/scenarios/{name}.toml"
        )))
        .unwrap();
    }
}

#[test]
fn the_same_seed_gives_the_same_run_and_another_seed_another() {
    let a = run(quick());
    let b = run(quick());
    assert_eq!(portable(&a), portable(&b));
    let mut other = quick();
    other.seed = 2;
    let c = run(other);
    assert_ne!(portable(&a), portable(&c));
    // The quick scenario completes, nearly everyone committed (0.2 % roll back).
    assert_eq!(a.campaign_state, "completed", "{:?}", a.decisions);
    assert!(a.committed >= 990, "{}", a.committed);
    assert!(a.hours_to_fleet.iter().all(Option::is_some));
    // Every byte a vehicle needed came from somewhere.
    let moved = a.cellular_bytes + a.wifi_depot_bytes + a.wifi_peer_bytes;
    let needed = f64::from(a.committed + a.rolled_back + a.health_failed) * a.delta_bytes;
    assert!(
        (moved - needed).abs() < 1e-6 * needed,
        "{moved} vs {needed}"
    );
}

#[test]
fn a_release_that_fails_its_health_check_halts_in_the_canary_wave() {
    let mut s = quick();
    s.failures.health_fail = 1.0;
    let summary = run(s);
    assert!(
        summary.campaign_state.starts_with("halted"),
        "{}",
        summary.campaign_state
    );
    assert_eq!(summary.committed, 0);
    // The gate allows 5 failed health checks; the sixth halts. Nobody outside the canary wave
    // (1 %) ever got the release.
    assert!(
        summary.health_failed >= 6 && summary.health_failed <= 20,
        "{}",
        summary.health_failed
    );
    let halts: Vec<_> = summary
        .decisions
        .iter()
        .filter(|d| d.decision == "halt")
        .collect();
    assert_eq!(halts.len(), 1);
    assert!(
        halts[0].reason.contains("failed health checks"),
        "{}",
        halts[0].reason
    );
    assert!(!summary.decisions.iter().any(|d| d.decision == "advance"));
}

#[test]
fn the_link_policy_decides_who_uses_cellular() {
    // Features never use cellular: the fleet waits for the yards.
    let mut feature = quick();
    feature.release.priority = "feature".into();
    let feature = run(feature);
    assert_eq!(feature.cellular_bytes, 0.0);
    assert_eq!(feature.vehicles_on_cellular, 0);
    // Fixes use it inside the night window (vehicles out overnight); security whenever away,
    // so more of it.
    let fix = run(quick());
    let mut security = quick();
    security.release.priority = "security".into();
    let security = run(security);
    assert!(fix.cellular_bytes > 0.0);
    assert!(
        security.cellular_bytes > 2.0 * fix.cellular_bytes,
        "security {} vs fix {}",
        security.cellular_bytes,
        fix.cellular_bytes
    );
    assert!(security.hours_to_fleet[0].unwrap() <= fix.hours_to_fleet[0].unwrap());
    // The monthly budget is never exceeded, however urgent.
    let mut tight = quick();
    tight.release.priority = "security".into();
    tight.vehicle.policy.monthly_budget_mib = 40.0;
    let tight = run(tight);
    assert!(tight.cellular_bytes > 0.0);
    assert!(
        tight.cellular_per_vehicle[3] <= 40.0 * 1_048_576.0 + 1.0,
        "{}",
        tight.cellular_per_vehicle[3]
    );
    // No signal good enough: no cellular at all.
    let mut weak = quick();
    weak.release.priority = "security".into();
    weak.vehicle.signal = [0, 20];
    assert_eq!(run(weak).cellular_bytes, 0.0);
}

/// A security fix with one-hour soaks on the 10K scenario's fleet (3 days): once spun for ever,
/// a vehicle that left its yard within a byte of the delta's end asking for a sub-microsecond
/// cellular run again and again at the same instant.
#[test]
fn a_security_campaign_with_short_soaks_completes() {
    let text = std::fs::read_to_string("../config/scenarios/fleet-10k.toml").unwrap();
    let mut s: Scenario = toml::from_str(&text).unwrap();
    s.days = 3.0;
    s.release.priority = "security".into();
    for wave in &mut s.campaign.waves {
        wave.min_soak_secs = 3600;
    }
    s.stop_when_done = true;
    let summary = run(s);
    assert_eq!(
        summary.campaign_state, "completed",
        "{:?}",
        summary.decisions
    );
    assert!(summary.committed >= 9_900, "{}", summary.committed);
    assert!(summary.hours_to_fleet.iter().all(Option::is_some));
    assert!(summary.cellular_bytes > 0.0);
}

/// One yard, every vehicle parked for the whole run, one wave: the yard's completion against
/// the fluid bound `max(F/u_depot, F/d, N·F/(u_depot + N·u))`.
fn one_yard(vehicles: u32, depot_mbit: f64, down_mbit: f64, up_mbit: f64) -> fleet::FleetSummary {
    let mut s = quick();
    s.fleet.vehicles = vehicles;
    s.fleet.depots = 1;
    s.fleet.regions = 1;
    s.routes.always_present = true;
    s.depot.upload_mbit = depot_mbit;
    s.depot.wifi_mbit = 10_000.0;
    s.depot.metadata_delay_secs = 0.0;
    s.vehicle.wifi_down_mbit = down_mbit;
    s.vehicle.wifi_up_mbit = up_mbit;
    s.vehicle.check_secs = 0.001;
    s.campaign.waves = vec![origin::campaign::Wave {
        percent: 100.0,
        min_soak_secs: 0,
    }];
    s.failures = fleet::scenario::Failures::default();
    run(s)
}

#[test]
fn a_parked_yard_finishes_near_the_fluid_bound() {
    let f = 150.0 * 1_048_576.0;
    let mbit = 1e6 / 8.0;
    for (n, depot, down, up) in [
        (40, 100.0, 100.0, 20.0), // the uplinks bound: N·F/(u_d + N·u)
        (40, 50.0, 500.0, 100.0), // the depot bounds: F/u_depot
        (5, 1000.0, 50.0, 10.0),  // each vehicle's downlink bounds: F/d
        (40, 400.0, 100.0, 0.0),  // no vehicle uploads: client-server
    ] {
        let summary = one_yard(n, depot, down, up);
        assert_eq!(summary.yards.len(), 1);
        let yard = &summary.yards[0];
        let nf = f64::from(n) * f;
        let bound = (f / (depot * mbit))
            .max(f / (down * mbit))
            .max(nf / ((depot + f64::from(n) * up) * mbit));
        assert!(
            (yard.fluid_bound_secs - bound).abs() < 1e-6 * bound,
            "{} vs {bound}",
            yard.fluid_bound_secs
        );
        let ratio = yard.busy_secs / bound;
        eprintln!(
            "N {n} depot {depot} down {down} up {up}: busy {:.1} s, bound {bound:.1} s, ratio {ratio:.3}, from peers {:.0} MiB",
            yard.busy_secs,
            yard.bytes_from_peers / 1_048_576.0
        );
        assert!(
            (1.0 - 1e-9..1.15).contains(&ratio),
            "N {n} depot {depot} down {down} up {up}: busy {} s, bound {bound} s",
            yard.busy_secs
        );
        if up == 0.0 {
            assert_eq!(yard.bytes_from_peers, 0.0);
            assert!(yard.busy_secs >= yard.client_server_secs * (1.0 - 1e-9));
        } else {
            assert!(yard.bytes_from_peers > 0.0);
        }
        assert_eq!(summary.cellular_bytes, 0.0);
    }
}

#[test]
fn a_depot_outage_moves_its_yard_to_the_neighbours_and_cellular() {
    let base = run(quick());
    let mut s = quick();
    // Depot 0 is down from before the campaign until well after: it never prefetches in
    // time, and its vehicles learn of the release only over cellular.
    s.failures.depot_outages = vec![fleet::scenario::Outage {
        depot: 0,
        start_hours: 0.0,
        hours: 48.0,
    }];
    let out = run(s);
    let yard0 = |x: &fleet::FleetSummary| {
        x.yards
            .iter()
            .find(|y| y.depot == 0)
            .map_or(0.0, |y| y.bytes_from_depot)
    };
    assert!(yard0(&out) < yard0(&base));
    assert!(out.cellular_bytes > base.cellular_bytes);
}

#[test]
fn a_bad_scenario_is_refused_by_name() {
    type Change = Box<dyn Fn(&mut Scenario)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|s| s.fleet.vehicles = 0), "fleet.vehicles"),
        (Box::new(|s| s.fleet.depots = 2000), "fleet.depots"),
        (
            Box::new(|s| s.release.delta_mib = -1.0),
            "release.delta_mib",
        ),
        (
            Box::new(|s| s.release.prefetch_mib = 1.0),
            "release.prefetch_mib",
        ),
        (
            Box::new(|s| s.release.priority = "urgent".into()),
            "release.priority",
        ),
        (
            Box::new(|s| s.depot.wifi_mbit = f64::NAN),
            "depot.wifi_mbit",
        ),
        (Box::new(|s| s.vehicle.signal = [90, 10]), "vehicle.signal"),
        (
            Box::new(|s| s.fleet.region_names = vec!["north".into()]),
            "fleet.region_names",
        ),
        (
            Box::new(|s| s.vehicle.policy.cellular_windows = vec!["25:00-01:00".into()]),
            "vehicle.policy.cellular_windows",
        ),
        (
            Box::new(|s| s.routes.depart = "19:00".into()),
            "routes.depart",
        ),
        (
            Box::new(|s| s.routes.overnight_away = 1.5),
            "routes.overnight_away",
        ),
        (Box::new(|s| s.campaign.waves.clear()), "campaign"),
        (
            Box::new(|s| s.campaign.start_hours = 1e6),
            "campaign.start_hours",
        ),
        (
            Box::new(|s| {
                s.failures.depot_outages = vec![fleet::scenario::Outage {
                    depot: 99,
                    start_hours: 1.0,
                    hours: 1.0,
                }];
            }),
            "failures.depot_outages[0].depot",
        ),
    ];
    for (change, field) in cases {
        let mut s = quick();
        change(&mut s);
        let error = s.check().unwrap_err().to_string();
        assert!(error.contains(field), "{field}: {error}");
    }
    // Unknown keys and wrong types are named by the parser.
    let text = std::fs::read_to_string("../config/scenarios/quick-1k.toml").unwrap();
    let error = Scenario::parse(&text.replace("[depot]", "[depot]\nspeed = 3"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("speed"), "{error}");
    let error = Scenario::parse(&text.replace("days = 5", "days = \"five\""))
        .unwrap_err()
        .to_string();
    assert!(error.contains("days"), "{error}");
}

#[test]
fn the_report_holds_the_charts() {
    let summary = run(quick());
    let dir = tempfile::tempdir().unwrap();
    fleet::write(&summary, dir.path()).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    assert!(html.contains("id=\"state\">completed<"));
    for chart in ["updated-by-wave", "updated-by-region", "bytes"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("{chart}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{chart}"
        );
        // Well-formed enough to open alone: no element names an attribute twice.
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap();
            let names: Vec<&str> = tag
                .split('"')
                .step_by(2)
                .filter_map(|part| part.trim().rsplit(' ').next()?.strip_suffix('='))
                .collect();
            let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{chart}: <{tag}>");
        }
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["vehicles"], 1000);

    // Every region has its chart, named with its time zone; the scenario's outage is shaded on
    // the time axis, in its region's chart too; the whole fleet is the emphasised line.
    let by_wave = std::fs::read_to_string(dir.path().join("updated-by-wave.svg")).unwrap();
    let by_region = std::fs::read_to_string(dir.path().join("updated-by-region.svg")).unwrap();
    assert_eq!(
        summary.region_labels,
        ["region 0 · UTC+1", "region 1 · UTC-5"]
    );
    for label in &summary.region_labels {
        assert!(by_region.contains(&format!("{label} — 99 %")), "{label}");
    }
    let [outage] = summary.depot_outages.as_slice() else {
        panic!("{:?}", summary.depot_outages)
    };
    let shaded = format!(">depot {} down<", outage.depot);
    assert!(by_wave.contains(&shaded), "{by_wave}");
    assert_eq!(
        by_region
            .matches(&format!("<title>depot {} down</title>", outage.depot))
            .count(),
        1,
        "{by_region}"
    );
    assert!(
        by_wave.contains("stroke-width=\"3\" stroke-dasharray"),
        "{by_wave}"
    );
    // The time axis ends a little past 99 % of the fleet committed, before the run's end.
    let p99 = summary.hours_to_fleet[2].unwrap();
    let last = summary.samples.last().unwrap().hours;
    let end = fleet::report::time_axis_end(
        Some(p99),
        fleet::report::ended_hours(&summary).map(|(h, _)| h),
        summary.samples[0].hours,
        last,
    );
    assert!(end > p99 && end < last, "{p99} {end} {last}");
    assert!(
        html.contains(&format!("The time axes end at {end:.0} h")),
        "{html}"
    );
}

#[test]
fn regions_named_in_the_scenario_are_named_in_the_report() {
    let mut s = quick();
    s.fleet.region_names = vec!["Bavaria".into(), "Ohio".into()];
    let summary = run(s);
    assert_eq!(summary.region_labels, ["Bavaria", "Ohio"]);
    let dir = tempfile::tempdir().unwrap();
    fleet::write(&summary, dir.path()).unwrap();
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains(">Bavaria — 99 %"), "{html}");
}
