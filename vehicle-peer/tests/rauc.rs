//! The RAUC backend (`vehicle_peer::rauc`) against Debian's real `rauc`: a RAUC service on a
//! private D-Bus, two file-backed raw slots, bundles signed by a test keyring with `rauc
//! bundle`, and a bootloader that keeps RAUC's U-Boot semantics (`BOOT_ORDER`, three tries a
//! slot) in files, driven through RAUC's `custom` bootloader backend. Each simulated boot asks
//! that bootloader which slot to start and restarts the service in it.
//!
//! Needs root (RAUC mounts the bundle through a loop device) and installs `rauc` and
//! `squashfs-tools` from Debian when missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../origin/tests/common/debian.rs"]
mod debian;
mod rauc_system;
mod sim_ecu;

use std::fs;

use node::storage::SledIndex;
use rauc_system::{SLOT_BYTES, System, keyring};
use vehicle_peer::boot::Slot;
use vehicle_peer::flasher::{
    FlashError, HealthError, InstalledImage, Outcome, Stage, journaled, running_image_of,
    version_report_of,
};
use vehicle_peer::rauc::{RaucEcu, step};

fn old_image() -> InstalledImage {
    InstalledImage {
        target: "gateway/rootfs-1.raucb".into(),
        sha256: "11".repeat(32),
        release_counter: 1,
    }
}

fn gateway(system: &System) -> RaucEcu {
    RaucEcu {
        serial: "GW-1".into(),
        hardware_id: "gateway-v1".into(),
        key: proto::tuf::signer::KeyPair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[5; 32])),
        installed: Some(old_image()),
        class: "rootfs".into(),
        rauc: system.rauc(),
    }
}

fn healthy(_: &Slot) -> Result<(), HealthError> {
    Ok(())
}

fn journal(system: &System) -> SledIndex {
    SledIndex::open(&system.path("journal")).unwrap()
}

#[test]
fn a_bundle_installs_through_rauc_and_commits_after_a_healthy_trial() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 1);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);

    // Installed into B by RAUC, and B boots next.
    let outcome = step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap();
    assert_eq!(outcome, Outcome::Reboot);
    assert!(system.slot_holds("B", &image) && !system.slot_holds("A", &image));
    assert_eq!(system.env_var("BOOT_ORDER"), "B A");
    assert_eq!(
        journaled(&journal, "GW-1").unwrap().unwrap().stage,
        Stage::Trial
    );
    // A step before the reboot only asks for it again.
    let again = step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap();
    assert_eq!(again, Outcome::Reboot);

    system.power_on();
    assert_eq!(system.booted, "B");
    let mut checked = Vec::new();
    let outcome = step(
        "g1",
        &ecu,
        &approval,
        &bundle,
        &journal,
        &mut |slot: &Slot| {
            checked.push(slot.to_string());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(checked, ["B"], "the health check ran once, in the new slot");
    // RAUC keeps B: good, three tries again (mark-good), first in the order.
    assert_eq!(system.env_var("BOOT_B_LEFT"), "3");
    let pair = ecu.pair().unwrap();
    assert_eq!(pair.primary.as_ref().map(Slot::as_str), Some("B"));
    // The ECU reports the bundle it runs now, signed.
    let running = running_image_of("GW-1", ecu.installed.as_ref(), &journal)
        .unwrap()
        .unwrap();
    assert_eq!(running.target, approval.target());
    let report =
        version_report_of("GW-1", ecu.installed.as_ref(), &ecu.key, &journal, "n").unwrap();
    assert_eq!(report["signed"]["installed_image"], approval.target());
    // Done stays done.
    assert_eq!(
        step("g1", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Committed
    );
    system.power_on();
    assert_eq!(system.booted, "B");
}

#[test]
fn a_failed_health_check_rolls_back_through_rauc() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 2);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g2", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    system.power_on();
    assert_eq!(system.booted, "B");
    let outcome = step("g2", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        Err(HealthError::Unhealthy(
            "the brake service did not start".into(),
        ))
    })
    .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.contains("GW-1") && reason.contains("brake service"),
        "{reason}"
    );
    // RAUC marked B bad and A active: the next boot is the old slot, and B is never tried.
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    assert_eq!(system.env_var("BOOT_B_LEFT"), "0");
    system.power_on();
    assert_eq!(system.booted, "A");
    // The ECU reports what it ran before.
    let running = running_image_of("GW-1", ecu.installed.as_ref(), &journal)
        .unwrap()
        .unwrap();
    assert_eq!(running, old_image());
    assert!(matches!(
        step("g2", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::RolledBack { .. }
    ));
}

#[test]
fn a_trial_that_never_comes_up_rolls_back_when_the_bootloader_goes_back() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 3);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g3", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    // The new software hangs before the agent runs, three times: the bootloader spends B's
    // tries and starts A.
    for _ in 0..3 {
        system.power_on();
        assert_eq!(system.booted, "B");
    }
    system.power_on();
    assert_eq!(system.booted, "A");
    let outcome = step("g3", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        panic!("no health check: the new slot is not running")
    })
    .unwrap();
    let Outcome::RolledBack { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("boot tries exhausted"), "{reason}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    system.power_on();
    assert_eq!(system.booted, "A");
}

#[test]
fn rauc_refuses_a_bundle_signed_by_another_key_and_nothing_switches() {
    let system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 4);
    let (cert, key) = keyring(system.dir.path(), "stranger");
    let bundle = system.bundle("forged", "2.0.0", &image, (&cert, &key));
    // Even approved by the director (a compromised or mistaken release), RAUC's keyring
    // refuses it.
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    let error = step("g4", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, FlashError::Rauc { .. }), "{text}");
    assert!(text.contains("GW-1") && text.contains("install"), "{text}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A B");
    assert!(!system.slot_holds("B", &image));
    let record = journaled(&journal, "GW-1").unwrap().unwrap();
    assert!(matches!(record.stage, Stage::Writing { .. }), "{record:?}");
    assert_eq!(
        running_image_of("GW-1", ecu.installed.as_ref(), &journal).unwrap(),
        Some(old_image())
    );
}

#[test]
fn a_file_that_is_not_the_approved_bundle_never_reaches_rauc() {
    let system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 5);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let other = system.bundle(
        "v3",
        "3.0.0",
        &sim_ecu::noise(SLOT_BYTES / 2, 6),
        (&system.cert, &system.key),
    );
    // Approved: v2. Handed over: v3, validly signed for RAUC, but not what the director approved.
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    let error = step("g5", &ecu, &approval, &other, &journal, &mut healthy).unwrap_err();
    assert!(matches!(error, FlashError::NotApproved { .. }), "{error}");
    assert!(
        error.to_string().contains("not the approved bundle"),
        "{error}"
    );
    // RAUC never installed anything.
    assert!(!system.slot_holds("B", &image));
    assert_eq!(system.env_var("BOOT_ORDER"), "A B");
    assert!(
        !system.path("data/central.raucs").exists() || {
            let status = fs::read_to_string(system.path("data/central.raucs")).unwrap();
            !status.contains("3.0.0")
        }
    );
    // Approvals for another ECU or hardware, or without a BLAKE3, are refused before that.
    for (approval, expect) in [
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-2", "gateway-v1", true),
            "ECU GW-2",
        ),
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v2", true),
            "hardware",
        ),
        (
            sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", false),
            "BLAKE3",
        ),
    ] {
        let error = step("g5", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap_err();
        assert!(error.to_string().contains(expect), "{error}");
    }
}

#[test]
fn a_commit_cut_before_rauc_was_told_is_finished_after_the_power_returns() {
    let mut system = System::start();
    let image = sim_ecu::noise(SLOT_BYTES / 2, 7);
    let bundle = system.bundle("v2", "2.0.0", &image, (&system.cert, &system.key));
    let approval = sim_ecu::approve(&fs::read(&bundle).unwrap(), "GW-1", "gateway-v1", true);
    let ecu = gateway(&system);
    let journal = journal(&system);
    assert_eq!(
        step("g6", &ecu, &approval, &bundle, &journal, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    system.power_on();
    // The rollback was journaled, then the power failed before RAUC heard of it: B is still
    // first with tries left.
    let mut record = journaled(&journal, "GW-1").unwrap().unwrap();
    record.stage = Stage::RolledBack {
        reason: "ECU GW-1: unhealthy".into(),
    };
    node::storage::Index::put(
        &journal,
        b"flasher/GW-1",
        &serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    assert!(system.env_var("BOOT_ORDER").starts_with('B'));
    let outcome = step("g6", &ecu, &approval, &bundle, &journal, &mut |_: &Slot| {
        panic!("decided already: no second health check")
    })
    .unwrap();
    assert!(matches!(outcome, Outcome::RolledBack { .. }), "{outcome:?}");
    assert_eq!(system.env_var("BOOT_ORDER"), "A");
    system.power_on();
    assert_eq!(system.booted, "A");
}
