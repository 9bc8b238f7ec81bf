//! The flasher on a simulated ECU (file banks and a redundant U-Boot environment on the
//! crash-simulating disk, install journal in its index): the power cut after every write and
//! sync of the whole install — delta apply, journal, boot environment, the bootloader's own
//! saves — and at every power-on the ECU boots a verified image; the install then finishes
//! without rewriting finished segments. Plus health-check failure, boot tries exhausted, a
//! corrupted bank, and approvals for other ECUs.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod sim_ecu;

use std::time::Duration;

use delta::ReadAt;
use node::storage::sim::{CrashStorage, Torn};
use node::storage::{Storage, StorageFile};
use proto::BlobId;
use proto::uptane::ApprovedImage;
use sim_ecu::{SimBank, SimEnv, approve, make_delta, noise};
use vehicle_peer::bank::{BankPair, holds};
use vehicle_peer::boot::{EnvLayout, EnvStore, Slot, UbootBoot};
use vehicle_peer::flasher::{
    CommandCheck, Ecu, FlashError, HealthCheck, HealthError, Install, Outcome, Recovered, Stage,
    journaled, recover,
};

const CAPACITY: u64 = 256 << 10;
const ENV: usize = 0x400;
const SEGMENT: u64 = 1 << 14;
/// Pieces of a full-image install in these tests (small, so that it has many).
const FULL_PIECE: usize = 16 << 10;

fn slot(name: &str) -> Slot {
    Slot::new(name).unwrap()
}

fn ecu(storage: &CrashStorage) -> Ecu<BankPair<SimBank>, SimEnv> {
    let banks = BankPair::new(
        (slot("A"), SimBank::open(storage, "banks/A", CAPACITY)),
        (slot("B"), SimBank::open(storage, "banks/B", CAPACITY)),
    )
    .unwrap();
    let env = SimEnv::open(storage, "boot/env", 2 * ENV as u64);
    let layout = EnvLayout {
        size: ENV,
        first: 0,
        second: Some(ENV as u64),
    };
    let boot = UbootBoot::new(
        EnvStore::new(env, layout).unwrap(),
        vec![slot("A"), slot("B")],
    );
    Ecu {
        serial: "BRK-1".into(),
        hardware_id: "brake-v2".into(),
        key: proto::tuf::signer::KeyPair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
        installed: None,
        banks,
        boot,
    }
}

/// A new ECU: bank A holds `old`, boots A.
fn provisioned(old: &[u8]) -> CrashStorage {
    let storage = CrashStorage::new();
    let mut ecu = ecu(&storage);
    let (running, _, _) = ecu.banks.split(&slot("A")).unwrap();
    running.file.write_all_at(0, old).unwrap();
    running.file.sync().unwrap();
    ecu.boot.provision().unwrap();
    storage.sync_dir("banks").unwrap();
    storage.sync_dir("boot").unwrap();
    storage
}

struct Case {
    /// Install the full image instead of the delta.
    full: bool,
    old: Vec<u8>,
    new: Vec<u8>,
    delta: Vec<u8>,
    approval: ApprovedImage,
    segments: usize,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(150_000, 7);
    let mut new = old.clone();
    for i in (500..new.len()).step_by(3001) {
        new[i] ^= 0x5a;
    }
    new.splice(40_000..40_000, noise(3000, 8));
    new.extend_from_slice(&noise(12_000, 9));
    let delta = make_delta(dir.path(), &old, &new);
    let approval = approve(&new, "BRK-1", "brake-v2", true);
    let segments = new.len().div_ceil(SEGMENT as usize);
    Case {
        full: false,
        old,
        new,
        delta,
        approval,
        segments,
    }
}

/// Power-on: the bootloader picks a slot (saving its environment, as U-Boot's script does).
/// Every boot must land on a bank holding a verified image, old or new.
fn power_on(storage: &CrashStorage, case: &Case) -> Result<Slot, FlashError> {
    let mut ecu = ecu(storage);
    let booted = ecu.boot.boot()?;
    let bank = ecu.banks.get(&booted).unwrap();
    let old = holds(bank, case.old.len() as u64, BlobId::of(&case.old)).unwrap();
    let new = holds(bank, case.new.len() as u64, BlobId::of(&case.new)).unwrap();
    assert!(
        old || new,
        "the ECU booted slot {booted}, which holds neither image"
    );
    Ok(booted)
}

/// The update agent after a boot into `booted`: finishes whatever the journal says.
fn agent(
    storage: &CrashStorage,
    case: &Case,
    booted: &Slot,
    health: &mut dyn HealthCheck,
) -> Result<Outcome, FlashError> {
    let index = storage.index();
    let mut ecu = ecu(storage);
    match recover(&mut ecu, &index)? {
        Recovered::Idle(Some(record)) if record.blake3 == case.approval.blake3().unwrap() => {
            return Ok(match record.stage {
                Stage::Committed => Outcome::Committed,
                Stage::RolledBack { reason } => Outcome::RolledBack { reason },
                other => panic!("idle at {other:?}"),
            });
        }
        Recovered::Idle(_) | Recovered::Writing(_) => {}
        Recovered::Written(written) => {
            written.start_trial()?;
            return Ok(Outcome::Reboot);
        }
        Recovered::Trial(trial) => return trial.conclude(booted, health),
    }
    let mut ecu = ecu_fresh(storage);
    let install = Install::begin(&mut ecu, &index, &case.approval, booted)?;
    let done = match &install.record().stage {
        Stage::Writing { done, .. } => *done,
        other => panic!("begin at {other:?}"),
    };
    let written = if case.full {
        install.write_image(&case.new[..], case.new.len() as u64, FULL_PIECE, |_, _| {})?
    } else {
        install.write(&case.delta, case.delta.len() as u64, |_, _| {})?
    };
    written.start_trial()?;
    // Finished segments were not written again.
    let first = ecu.banks.get(&slot("B")).unwrap().first_write.get();
    let (unit, units) = if case.full {
        (FULL_PIECE as u64, case.new.len().div_ceil(FULL_PIECE))
    } else {
        (SEGMENT, case.segments)
    };
    if done < units {
        assert_eq!(first, Some(done as u64 * unit), "resumed at piece {done}");
    } else {
        assert_eq!(first, None);
    }
    Ok(Outcome::Reboot)
}

fn ecu_fresh(storage: &CrashStorage) -> Ecu<BankPair<SimBank>, SimEnv> {
    ecu(storage)
}

fn healthy(_: &Slot) -> Result<(), HealthError> {
    Ok(())
}

/// Boots and runs the agent until the install ends (or the power is cut).
fn lifecycle(
    storage: &CrashStorage,
    case: &Case,
    health: &mut dyn HealthCheck,
) -> Result<Outcome, FlashError> {
    for _ in 0..6 {
        let booted = power_on(storage, case)?;
        match agent(storage, case, &booted, health)? {
            Outcome::Reboot => continue,
            done => return Ok(done),
        }
    }
    panic!("the install did not end in six boots");
}

fn assert_committed(storage: &CrashStorage, case: &Case) {
    let mut ecu = ecu(storage);
    let state = ecu.boot.state().unwrap();
    assert_eq!(state.next_boot(), Some(&slot("B")));
    let bank = ecu.banks.get(&slot("B")).unwrap();
    assert!(holds(bank, case.new.len() as u64, BlobId::of(&case.new)).unwrap());
    let record = journaled(&storage.index(), "BRK-1").unwrap().unwrap();
    assert_eq!(record.stage, Stage::Committed);
}

fn assert_rolled_back(storage: &CrashStorage, case: &Case) {
    let mut ecu = ecu(storage);
    let state = ecu.boot.state().unwrap();
    assert_eq!(state.next_boot(), Some(&slot("A")));
    assert_eq!(state.left[&slot("B")], 0);
    let record = journaled(&storage.index(), "BRK-1").unwrap().unwrap();
    assert!(
        matches!(record.stage, Stage::RolledBack { .. }),
        "{record:?}"
    );
    let a = ecu.banks.get(&slot("A")).unwrap();
    assert!(holds(a, case.old.len() as u64, BlobId::of(&case.old)).unwrap());
}

#[test]
fn an_install_commits_and_the_new_slot_boots() {
    let case = case();
    let storage = provisioned(&case.old);
    assert_eq!(
        lifecycle(&storage, &case, &mut healthy).unwrap(),
        Outcome::Committed
    );
    assert_committed(&storage, &case);
    assert!(case.segments >= 10, "{} segments", case.segments);
}

#[test]
fn power_cut_after_every_write_and_sync_of_the_install_never_leaves_an_unbootable_ecu() {
    power_cuts(case());
}

#[test]
fn a_full_image_install_survives_the_same_power_cuts() {
    power_cuts(Case {
        full: true,
        ..case()
    });
}

/// The image compressed (a delta from nothing, for an ECU no listed delta applies to) installs
/// as any delta does, resuming at its segments.
#[test]
fn a_compressed_image_install_survives_the_same_power_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let case = case();
    let delta = make_delta(dir.path(), &[], &case.new);
    assert!(delta.len() < case.new.len() + case.new.len() / 32);
    power_cuts(Case { delta, ..case });
}

fn power_cuts(case: Case) {
    let clean = provisioned(&case.old);
    let base = clean.steps();
    lifecycle(&clean, &case, &mut healthy).unwrap();
    let steps = clean.steps() - base;
    let mut cut_points = 0;
    let mut rolled_back = 0;
    for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
        for cut in 1..=steps {
            let storage = provisioned(&case.old);
            storage.cut_at(storage.steps() + cut);
            assert!(
                lifecycle(&storage, &case, &mut healthy).is_err(),
                "cut {cut} did not stop the install"
            );
            let after = storage.crash_image(torn);
            let outcome = lifecycle(&after, &case, &mut healthy)
                .unwrap_or_else(|e| panic!("cut {cut} ({torn:?}): {e}"));
            // A cut while the new slot had its one try counts as a failed trial: the
            // bootloader falls back to the old slot and the install rolls back. Never limbo.
            match &outcome {
                Outcome::Committed => assert_committed(&after, &case),
                Outcome::RolledBack { reason } => {
                    assert!(
                        reason.contains("boot tries exhausted"),
                        "cut {cut}: {reason}"
                    );
                    assert_rolled_back(&after, &case);
                    rolled_back += 1;
                }
                Outcome::Reboot => unreachable!(),
            }
            // The old bank was never written.
            let ecu = ecu(&after);
            let a = ecu.banks.get(&slot("A")).unwrap();
            assert!(holds(a, case.old.len() as u64, BlobId::of(&case.old)).unwrap());
            cut_points += 1;
        }
    }
    println!(
        "{cut_points} power cuts over {steps} steps (write, journal, boot environment, bootloader) of a {} install, 3 torn-write modes; {rolled_back} cut the trial and rolled back, the rest committed",
        if case.full { "full-image" } else { "delta" }
    );
    assert!(
        rolled_back < cut_points / 4,
        "{rolled_back} of {cut_points} rolled back"
    );
}

#[test]
fn a_failed_health_check_rolls_back_by_itself() {
    let case = case();
    let storage = provisioned(&case.old);
    let mut failing = |slot: &Slot| {
        Err(HealthError::Unhealthy(format!(
            "brake pressure sensor silent in slot {slot}"
        )))
    };
    let outcome = lifecycle(&storage, &case, &mut failing).unwrap();
    assert_eq!(
        outcome,
        Outcome::RolledBack {
            reason: "health check failed: brake pressure sensor silent in slot B".into()
        }
    );
    let mut ecu = ecu(&storage);
    let state = ecu.boot.state().unwrap();
    assert_eq!(state.next_boot(), Some(&slot("A")));
    assert_eq!(state.left[&slot("B")], 0);
    assert_eq!(power_on(&storage, &case).unwrap(), slot("A"));
}

#[test]
fn new_software_that_never_comes_up_is_rolled_back_after_its_one_try() {
    let case = case();
    let storage = provisioned(&case.old);
    let booted = power_on(&storage, &case).unwrap();
    assert_eq!(
        agent(&storage, &case, &booted, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    // Into B, which hangs: the agent never runs. The watchdog resets the board.
    assert_eq!(power_on(&storage, &case).unwrap(), slot("B"));
    // The bootloader falls back to A by itself.
    let booted = power_on(&storage, &case).unwrap();
    assert_eq!(booted, slot("A"));
    let outcome = agent(&storage, &case, &booted, &mut healthy).unwrap();
    assert!(
        matches!(&outcome, Outcome::RolledBack { reason } if reason.contains("boot tries exhausted")),
        "{outcome:?}"
    );
    assert_eq!(power_on(&storage, &case).unwrap(), slot("A"));
}

#[test]
fn a_bank_corrupted_after_writing_is_never_switched_to() {
    let case = case();
    let storage = provisioned(&case.old);
    let index = storage.index();
    let mut ecu = ecu(&storage);
    let install = Install::begin(&mut ecu, &index, &case.approval, &slot("A")).unwrap();
    let written = install
        .write(&case.delta, case.delta.len() as u64, |_, _| {})
        .unwrap();
    // A flash cell flips between writing and switching.
    let corrupt = SimBank::open(&storage, "banks/B", CAPACITY);
    let mut byte = [0u8; 1];
    corrupt.read_exact_at(5000, &mut byte).unwrap();
    corrupt.file.write_all_at(5000, &[byte[0] ^ 1]).unwrap();
    let error = written.start_trial().unwrap_err();
    assert!(
        matches!(error, FlashError::BankNotVerified { .. }),
        "{error}"
    );
    let mut ecu = ecu_fresh(&storage);
    assert_eq!(ecu.boot.state().unwrap().next_boot(), Some(&slot("A")));
    let record = journaled(&index, "BRK-1").unwrap().unwrap();
    assert!(
        matches!(record.stage, Stage::Writing { done: 0, .. }),
        "{record:?}"
    );
    // The next attempt writes the bank again from the start and commits.
    assert_eq!(
        lifecycle(&storage, &case, &mut healthy).unwrap(),
        Outcome::Committed
    );
}

#[test]
fn approvals_for_other_ecus_or_without_a_blake3_never_start() {
    let case = case();
    let storage = provisioned(&case.old);
    let index = storage.index();
    for (approval, want) in [
        (
            approve(&case.new, "BRK-2", "brake-v2", true),
            "the approval is for ECU BRK-2",
        ),
        (
            approve(&case.new, "BRK-1", "brake-v3", true),
            "for hardware brake-v3, this ECU is brake-v2",
        ),
        (
            approve(&case.new, "BRK-1", "brake-v2", false),
            "has no BLAKE3",
        ),
    ] {
        let mut ecu = ecu(&storage);
        let error = Install::begin(&mut ecu, &index, &approval, &slot("A")).unwrap_err();
        assert!(error.to_string().contains(want), "{error}");
    }
    let mut ecu = ecu(&storage);
    let error = Install::begin(&mut ecu, &index, &case.approval, &slot("C")).unwrap_err();
    assert!(error.to_string().contains("runs slot C"), "{error}");
    // Nothing was written or journaled.
    assert!(journaled(&index, "BRK-1").unwrap().is_none());
    let b = storage.read_all("banks/B").unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn a_command_health_check_passes_fails_and_times_out() {
    let run = |script: &str, timeout_ms| {
        CommandCheck {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout: Duration::from_millis(timeout_ms),
        }
        .check(&slot("B"))
    };
    let passed = run("test \"$DEPOTMESH_SLOT\" = B", 5000);
    assert!(passed.is_ok(), "{passed:?}");
    let error = run("exit 3", 5000).unwrap_err().to_string();
    assert!(error.contains("exit status: 3"), "{error}");
    let error = run("sleep 10", 200).unwrap_err().to_string();
    assert!(error.contains("did not finish within"), "{error}");
    let error = CommandCheck {
        program: "/nonexistent/health".into(),
        args: vec![],
        timeout: Duration::from_secs(1),
    }
    .check(&slot("B"))
    .unwrap_err()
    .to_string();
    assert!(error.contains("did not start"), "{error}");
}
