//! The fleet model against the real nodes: a shaped `netsim yard` run (real origin, director,
//! depot daemon and vehicle agents over QUIC on loopback, each vehicle's downloads and the
//! depot's uploads rate-limited) and `netsim fleet` on the same scenario — same vehicles (so
//! the same canary), delta, limits, waves and gates. The campaign's completion time must agree
//! within 25 %, so the fast model is trusted for fleets of yards.
//!
//! The limits make the transfers take most of the time (a 0.3 MiB delta at 24–32 KiB/s), so
//! the comparison is about how the model shares links and sequences waves, not about the
//! fixed costs of a loopback run. A slow machine can only make the yard slower than the
//! limits allow; the margin to 25 % is several seconds.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use netsim::yard::{YardOptions, run, table};

#[test]
fn the_fleet_model_predicts_a_shaped_yard_within_a_quarter() {
    let work = tempfile::tempdir().unwrap();
    let yard = run(&YardOptions {
        vehicles: 4,
        image_bytes: 2 << 20,
        failing_canary: false,
        out: work.path().join("yard"),
        timeout: Duration::from_secs(240),
        seed: 3,
        vehicle_down_bytes_per_sec: Some(32 << 10),
        depot_up_bytes_per_sec: Some(24 << 10),
        corrupt_peer: false,
        slow_reader: false,
        report_flood: false,
        single_bank: 0,
        replaced_parts: 0,
        expect: None,
        verbose: true,
    })
    .unwrap();
    println!("{}", table(&yard));
    assert_eq!(yard.state, "completed", "{yard:?}");
    let comparison = netsim::compare::compare(&yard).unwrap();
    println!("{comparison:#?}");
    let (yard_secs, model_secs) = (
        comparison.yard_secs.unwrap(),
        comparison.model_secs.unwrap(),
    );
    // The limits alone: the canary at the depot's 24 KiB/s, the rest at their own 32 KiB/s.
    #[allow(clippy::cast_precision_loss)]
    let floor = yard.delta_bytes as f64 / f64::from(24 << 10)
        + yard.delta_bytes as f64 / f64::from(32 << 10);
    assert!(
        model_secs >= floor,
        "model {model_secs} s, limits alone {floor} s"
    );
    let ratio = model_secs / yard_secs;
    println!("yard {yard_secs:.1} s, model {model_secs:.1} s, ratio {ratio:.2}");
    assert!(
        (0.75..=1.25).contains(&ratio),
        "yard {yard_secs:.1} s, model {model_secs:.1} s"
    );
    // Every vehicle in the model reports, in the same wave order: canary first.
    for (vin, in_yard, in_model) in &comparison.vehicles {
        assert!(in_yard.is_some() && in_model.is_some(), "{vin}");
    }
    let wave_of = |vin: &str| yard.results.iter().find(|r| r.vin == vin).unwrap().wave;
    let last_canary = comparison
        .vehicles
        .iter()
        .filter(|(vin, _, _)| wave_of(vin) == 1)
        .map(|(_, _, m)| m.unwrap())
        .fold(0.0, f64::max);
    let first_rest = comparison
        .vehicles
        .iter()
        .filter(|(vin, _, _)| wave_of(vin) == 2)
        .map(|(_, _, m)| m.unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(last_canary < first_rest, "{comparison:?}");
}
