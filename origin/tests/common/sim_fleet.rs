//! A simulated fleet for the director: vehicles with their own primary and ECU keys (derived
//! from their index), their registry records and signed vehicle manifests, and an origin with
//! two gateway releases. Shared by `tests/director_log.rs`, `tests/director.rs`, `tests/console.rs` and `examples/director_scale.rs`
//! (through `#[path]`).

#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_wrap)]

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use origin::Origin;
use origin::campaign::{CampaignSpec, Filters, Gates, Wave};
use origin::registry::{EcuRecord, VehicleRecord};
use serde_json::json;

/// The virtual clock's start (Unix seconds).
pub(crate) const START: u64 = 1_795_000_000;

/// Vehicle `i`'s primary key (`kind` 1) or ECU key (`kind` 2).
pub(crate) fn key(kind: u8, i: usize) -> SigningKey {
    let mut bytes = [kind; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

/// Vehicle `i`'s VIN.
pub(crate) fn vin(i: usize) -> proto::Vin {
    format!("VIN{i:07}").parse().unwrap()
}

/// Vehicle `i`'s registry record: one gateway ECU running gw/1.0.bin, in region
/// `i % regions`, home depot `i % depots`.
pub(crate) fn vehicle_record(i: usize, regions: usize, depots: usize) -> VehicleRecord {
    VehicleRecord {
        vin: vin(i),
        region: format!("region-{}", i % regions.max(1)),
        vehicle_type: "tractor".into(),
        home_depot: format!("depot-{}", i % depots.max(1)),
        primary_key: hex::encode(key(1, i).verifying_key().as_bytes()),
        ecus: vec![EcuRecord {
            serial: format!("GW-{}", vin(i)).parse().unwrap(),
            hardware_id: "gateway-v1".into(),
            public_key: hex::encode(key(2, i).verifying_key().as_bytes()),
            installed: Some("gw/1.0.bin".into()),
        }],
        peer: None,
        last_report: None,
    }
}

/// Vehicle `i`'s signed manifest after an install of director targets `version` that ended
/// `outcome` with `installed` running, having fetched `bytes` (link class → bytes).
pub(crate) fn manifest(
    i: usize,
    version: u64,
    now: u64,
    installed: &str,
    outcome: &str,
    bytes: serde_json::Value,
) -> Vec<u8> {
    let serial = format!("GW-{}", vin(i));
    let report = proto::uptane::sign_ecu_report(
        &proto::uptane::EcuVersionReport {
            ecu_serial: serial.clone(),
            installed_image: installed.into(),
            sha256: "00".repeat(32),
            release_counter: 2,
            nonce: format!("director-v{version}@{now}"),
            attacks_detected: String::new(),
        },
        &key(2, i),
    )
    .unwrap();
    let install = json!({
        "group": format!("director-v{version}"),
        "outcome": outcome,
        "reason": "",
        "bytes": bytes,
    });
    proto::uptane::sign_vehicle_manifest(
        vin(i).as_str(),
        &serial,
        &[report],
        Some(&install),
        &key(1, i),
    )
    .unwrap()
}

/// The origin under `dir` (its offline keys beside it), at [`START`].
pub(crate) fn origin_at(dir: &Path) -> Origin {
    origin_at_time(dir, START)
}

/// The origin under `dir` (its offline keys beside it), at `now` (Unix seconds); its
/// repositories where its `storage.toml` says, in the directory when there is none.
pub(crate) fn origin_at_time(dir: &Path, now: u64) -> Origin {
    Origin::open(
        dir.join("origin"),
        Some(dir.join("offline").into()),
        proto::tuf::Time::from_unix(now as i64),
    )
    .unwrap()
}

/// Initialises the origin under `dir` and releases gw/1.0.bin and gw/2.0.bin for gateway-v1.
pub(crate) fn origin_with_releases(dir: &Path) -> Origin {
    origin_with_releases_at(dir, START)
}

/// [`origin_with_releases`] at `now` (Unix seconds).
pub(crate) fn origin_with_releases_at(dir: &Path, now: u64) -> Origin {
    let origin = origin_at_time(dir, now);
    origin::init(&origin, None).unwrap();
    for (name, counter, fill) in [("gw/1.0.bin", 1, 1u8), ("gw/2.0.bin", 2, 2u8)] {
        let file = dir.join("image");
        std::fs::write(&file, vec![fill; 10_000]).unwrap();
        origin::Release::new(&file, name, ["gateway-v1"], counter)
            .sign(&origin, &origin::Actor::new("test").unwrap())
            .unwrap();
    }
    origin
}

/// A campaign `id` giving gateway-v1 gw/2.0.bin (fallback gw/1.0.bin) in waves of `percents`
/// without soak, gated at `min_success` and `max_rollback` once `min_reports` reported.
pub(crate) fn gateway_campaign(
    id: &str,
    percents: &[f64],
    min_success: f64,
    max_rollback: f64,
    min_reports: u64,
) -> CampaignSpec {
    CampaignSpec {
        id: id.parse().unwrap(),
        release: BTreeMap::from([("gateway-v1".to_string(), "gw/2.0.bin".to_string())]),
        fallback: BTreeMap::from([("gateway-v1".to_string(), "gw/1.0.bin".to_string())]),
        priority: proto::custom::Priority::Fix,
        filters: Filters::default(),
        waves: percents
            .iter()
            .map(|&percent| Wave {
                percent,
                min_soak_secs: 0,
            })
            .collect(),
        gates: Gates {
            min_success,
            max_rollback,
            max_failed_health: 0,
            report_timeout_secs: 6 * 3600,
            min_reports,
        },
    }
}

/// Approves campaign `id` as two approvers (bob and carol), each signing with their own key:
/// what two approvers' clients do.
pub(crate) fn approve_as_two(director: &mut origin::service::Director, id: &str, now: u64) {
    let (bob, carol) = (
        SigningKey::from_bytes(&[21; 32]),
        SigningKey::from_bytes(&[22; 32]),
    );
    director
        .sign_as(
            &id.parse().unwrap(),
            &[("bob", &bob), ("carol", &carol)],
            now,
        )
        .unwrap();
}
