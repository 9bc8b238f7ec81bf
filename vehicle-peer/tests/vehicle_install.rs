//! A vehicle install across two ECUs behind the gateway (brake controller and gateway, each
//! with its own banks, boot environment and image): all commit or all roll back, also when the
//! power is cut after any write or sync of the whole install.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod sim_ecu;

use node::storage::Storage;
use node::storage::StorageFile;
use node::storage::sim::{CrashStorage, Torn};
use proto::BlobId;
use proto::uptane::ApprovedImage;
use sim_ecu::{SimBank, SimEnv, approve, make_delta, noise};
use std::collections::BTreeMap;
use vehicle_peer::bank::{BankPair, holds};
use vehicle_peer::boot::{EnvLayout, EnvStore, Slot, UbootBoot};

use ed25519_dalek::SigningKey;
use proto::tuf::build::TargetDigests;
use proto::uptane::{sign_vehicle_manifest, verify_vehicle_manifest};
use vehicle_peer::flasher::{
    Ecu, EcuJob, FlashError, GroupDecision, HealthError, InstalledImage, Outcome, Stage,
    group_decision, journaled, vehicle_step, version_report,
};

const CAPACITY: u64 = 192 << 10;
const ENV: usize = 0x400;
const GROUP: &str = "campaign-7/vehicle-1";

fn slot(name: &str) -> Slot {
    Slot::new(name).unwrap()
}

/// One ECU of the vehicle: its name prefix on the disk, serial, hardware id and images.
struct Part {
    prefix: &'static str,
    serial: &'static str,
    hardware: &'static str,
    old: Vec<u8>,
    new: Vec<u8>,
    delta: Vec<u8>,
    approval: ApprovedImage,
    key: SigningKey,
}

fn parts() -> Vec<Part> {
    let dir = tempfile::tempdir().unwrap();
    [
        ("brk", "BRK-1", "brake-v2", 1u64),
        ("gw", "GW-1", "gateway-v1", 2),
    ]
    .into_iter()
    .map(|(prefix, serial, hardware, seed)| {
        let old = noise(100_000 + seed as usize * 7_000, seed);
        let mut new = old.clone();
        for i in (100..new.len()).step_by(2_500) {
            new[i] = new[i].wrapping_add(seed as u8);
        }
        new.extend_from_slice(&noise(9_000, seed + 10));
        let sub = dir.path().join(prefix);
        std::fs::create_dir_all(&sub).unwrap();
        let delta = make_delta(&sub, &old, &new);
        let approval = approve(&new, serial, hardware, true);
        Part {
            prefix,
            serial,
            hardware,
            old,
            new,
            delta,
            approval,
            key: SigningKey::from_bytes(&[seed as u8 * 16; 32]),
        }
    })
    .collect()
}

fn ecu(storage: &CrashStorage, part: &Part) -> Ecu<BankPair<SimBank>, SimEnv> {
    let bank = |s: &str| SimBank::open(storage, &format!("{}/banks/{s}", part.prefix), CAPACITY);
    let banks = BankPair::new((slot("A"), bank("A")), (slot("B"), bank("B"))).unwrap();
    let env = SimEnv::open(
        storage,
        &format!("{}/boot/env", part.prefix),
        2 * ENV as u64,
    );
    let layout = EnvLayout {
        size: ENV,
        first: 0,
        second: Some(ENV as u64),
    };
    Ecu {
        serial: part.serial.into(),
        hardware_id: part.hardware.into(),
        key: proto::tuf::signer::KeyPair::Ed25519(part.key.clone()),
        installed: Some(InstalledImage {
            target: format!("ecu/{}-1.bin", part.prefix),
            sha256: TargetDigests::of(&part.old).sha256,
            release_counter: 1,
        }),
        banks,
        boot: UbootBoot::new(
            EnvStore::new(env, layout).unwrap(),
            vec![slot("A"), slot("B")],
        ),
    }
}

fn provisioned(parts: &[Part]) -> CrashStorage {
    let storage = CrashStorage::new();
    for part in parts {
        let mut ecu = ecu(&storage, part);
        let (running, _, _) = ecu.banks.split(&slot("A")).unwrap();
        running.file.write_all_at(0, &part.old).unwrap();
        running.file.sync().unwrap();
        ecu.boot.provision().unwrap();
        storage.sync_dir(&format!("{}/banks", part.prefix)).unwrap();
        storage.sync_dir(&format!("{}/boot", part.prefix)).unwrap();
        storage.sync_dir(part.prefix).unwrap();
    }
    storage
}

/// Powers the vehicle on: each ECU's bootloader picks a slot, which must hold a verified image.
fn power_on(storage: &CrashStorage, parts: &[Part]) -> Result<Vec<Slot>, FlashError> {
    parts
        .iter()
        .map(|part| {
            let mut ecu = ecu(storage, part);
            let booted = ecu.boot.boot()?;
            let bank = ecu.banks.get(&booted).unwrap();
            let old = holds(bank, part.old.len() as u64, BlobId::of(&part.old)).unwrap();
            let new = holds(bank, part.new.len() as u64, BlobId::of(&part.new)).unwrap();
            assert!(
                old || new,
                "{} booted {booted}, holding neither image",
                part.serial
            );
            Ok(booted)
        })
        .collect()
}

fn lifecycle(
    storage: &CrashStorage,
    parts: &[Part],
    failing: Option<&str>,
) -> Result<Outcome, FlashError> {
    for _ in 0..6 {
        let booted = power_on(storage, parts)?;
        let mut ecus: Vec<_> = parts.iter().map(|p| ecu(storage, p)).collect();
        let jobs: Vec<_> = parts
            .iter()
            .map(|p| EcuJob {
                approval: &p.approval,
                delta: &p.delta[..],
                delta_len: p.delta.len() as u64,
                full_image: false,
            })
            .collect();
        let mut health = |serial: &str, slot: &Slot| {
            if Some(serial) == failing {
                Err(HealthError::Unhealthy(format!(
                    "no CAN traffic from slot {slot}"
                )))
            } else {
                Ok(())
            }
        };
        let index = storage.index();
        match vehicle_step(GROUP, &mut ecus, &jobs, &booted, &index, &mut health)? {
            Outcome::Reboot => continue,
            done => return Ok(done),
        }
    }
    panic!("the vehicle install did not end in six boots");
}

/// Every ECU committed (and boots its new slot), or every ECU rolled back (and boots its old
/// one, whose bank was never touched).
fn assert_all_or_nothing(storage: &CrashStorage, parts: &[Part], outcome: &Outcome) {
    let index = storage.index();
    for part in parts {
        let mut ecu = ecu(storage, part);
        let state = ecu.boot.state().unwrap();
        let record = journaled(&index, part.serial).unwrap().unwrap();
        let a = ecu.banks.get(&slot("A")).unwrap();
        assert!(holds(a, part.old.len() as u64, BlobId::of(&part.old)).unwrap());
        match outcome {
            Outcome::Committed => {
                assert_eq!(record.stage, Stage::Committed, "{}", part.serial);
                assert_eq!(state.next_boot(), Some(&slot("B")), "{}", part.serial);
                let b = ecu.banks.get(&slot("B")).unwrap();
                assert!(holds(b, part.new.len() as u64, BlobId::of(&part.new)).unwrap());
            }
            Outcome::RolledBack { .. } => {
                assert!(
                    matches!(record.stage, Stage::RolledBack { .. }),
                    "{}: {record:?}",
                    part.serial
                );
                assert_eq!(state.next_boot(), Some(&slot("A")), "{}", part.serial);
            }
            Outcome::Reboot => unreachable!(),
        }
    }
}

/// The vehicle manifest the gateway sends after the install, checked as the director checks it:
/// each ECU's signed report of what it runs, (target, release counter) by serial.
fn reported(storage: &CrashStorage, parts: &[Part]) -> BTreeMap<String, (String, u64)> {
    let index = storage.index();
    let reports: Vec<_> = parts
        .iter()
        .map(|p| version_report(&ecu(storage, p), &index, "nonce-17").unwrap())
        .collect();
    let primary = SigningKey::from_bytes(&[99; 32]);
    let manifest = sign_vehicle_manifest("VIN-1", "GW-1", &reports, None, &primary).unwrap();
    let keys = parts
        .iter()
        .map(|p| {
            (
                p.serial.to_string(),
                proto::tuf::Key::Ed25519(p.key.verifying_key()),
            )
        })
        .collect();
    let verified = verify_vehicle_manifest(
        &manifest,
        "VIN-1",
        &proto::tuf::Key::Ed25519(primary.verifying_key()),
        &keys,
        "nonce-17",
    )
    .unwrap();
    verified
        .reports
        .into_iter()
        .map(|(serial, r)| (serial, (r.installed_image, r.release_counter)))
        .collect()
}

#[test]
fn every_ecu_commits_when_every_ecu_is_healthy() {
    let parts = parts();
    let storage = provisioned(&parts);
    let outcome = lifecycle(&storage, &parts, None).unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_all_or_nothing(&storage, &parts, &outcome);
    assert_eq!(
        group_decision(&storage.index(), GROUP).unwrap(),
        Some(GroupDecision::Commit)
    );
    assert_eq!(
        power_on(&storage, &parts).unwrap(),
        vec![slot("B"), slot("B")]
    );
    // Each ECU's signed report names the new image.
    let reports = reported(&storage, &parts);
    assert_eq!(reports["BRK-1"], ("ecu/brake.bin".to_string(), 2));
    assert_eq!(reports["GW-1"], ("ecu/brake.bin".to_string(), 2));
}

#[test]
fn one_unhealthy_ecu_rolls_every_ecu_back() {
    let parts = parts();
    let storage = provisioned(&parts);
    let outcome = lifecycle(&storage, &parts, Some("GW-1")).unwrap();
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            reason: "ECU GW-1: health check failed: no CAN traffic from slot B".into()
        }
    );
    assert_all_or_nothing(&storage, &parts, &outcome);
    // The brake controller passed its own check, and still goes back with the gateway.
    assert_eq!(
        power_on(&storage, &parts).unwrap(),
        vec![slot("A"), slot("A")]
    );
    // Both report the image they ran before.
    let reports = reported(&storage, &parts);
    assert_eq!(reports["BRK-1"], ("ecu/brk-1.bin".to_string(), 1));
    assert_eq!(reports["GW-1"], ("ecu/gw-1.bin".to_string(), 1));
}

#[test]
fn a_power_cut_anywhere_in_a_vehicle_install_never_leaves_mixed_releases() {
    let parts = parts();
    let clean = provisioned(&parts);
    let base = clean.steps();
    lifecycle(&clean, &parts, None).unwrap();
    let steps = clean.steps() - base;
    let (mut cut_points, mut rolled_back) = (0, 0);
    for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
        for cut in 1..=steps {
            let storage = provisioned(&parts);
            storage.cut_at(storage.steps() + cut);
            assert!(
                lifecycle(&storage, &parts, None).is_err(),
                "cut {cut} did not stop the install"
            );
            let after = storage.crash_image(torn);
            let outcome = lifecycle(&after, &parts, None)
                .unwrap_or_else(|e| panic!("cut {cut} ({torn:?}): {e}"));
            assert_all_or_nothing(&after, &parts, &outcome);
            if let Outcome::RolledBack { reason } = &outcome {
                assert!(
                    reason.contains("boot tries exhausted"),
                    "cut {cut}: {reason}"
                );
                rolled_back += 1;
            }
            cut_points += 1;
        }
    }
    println!(
        "{cut_points} power cuts over {steps} steps of a two-ECU install, 3 torn-write modes; {rolled_back} cut a trial and rolled both ECUs back, the rest committed both"
    );
}
