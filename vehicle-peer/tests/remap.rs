//! The flasher on a simulated single-bank ECU ([`vehicle_peer::remap`]): one bank file with a
//! spare area and two map copies, and a redundant U-Boot environment, on the crash-simulating
//! disk. The power is cut after every write and sync of a whole install — plan, retire, spare
//! writes, journal, the map switch, boot environment, the bootloader's saves, the trial, the
//! commit and the merge — in three torn-write modes. At every cut, every map copy that checks
//! shows a whole image (old or new: never a torn block); every power-on boots a verified
//! image; and after the restart the install ends and the merge completes, home holding the new
//! image and the spare area free. Plus: rollback drops the new map with home untouched, an
//! update that does not fit the spare area is refused before anything is written, and
//! corrupted maps are never used.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod sim_ecu;

use delta::{ReadAt, WriteAt};
use node::storage::Storage;
use node::storage::sim::{CrashStorage, Torn};
use proto::BlobId;
use proto::uptane::ApprovedImage;
use sim_ecu::{SimBank, SimEnv, approve, make_delta, noise};
use vehicle_peer::bank::BankError;
use vehicle_peer::boot::{EnvLayout, EnvStore, Slot, UbootBoot};
use vehicle_peer::flasher::{
    Ecu, EcuJob, FlashError, HealthCheck, HealthError, Install, Outcome, Recovered, Stage,
    journaled, merge, recover, spare_plan,
};
use vehicle_peer::remap::{MapCopy, RemapBank, RemapLayout};
use vehicle_peer::slots::{Banks, SparePlan};

const BLOCK: u32 = 4096;
const ENV: usize = 0x400;
/// Home blocks (256 KiB of image) and spare blocks.
const HOME: u32 = 64;
const SPARE: u32 = 24;
/// Pieces of a full-image install in these tests.
const FULL_PIECE: usize = 16 << 10;

fn slot(name: &str) -> Slot {
    Slot::new(name).unwrap()
}

fn layout(spare: u32) -> RemapLayout {
    RemapLayout {
        block_size: BLOCK,
        logical_blocks: HOME,
        spare_blocks: spare,
    }
}

fn device(storage: &CrashStorage, spare: u32) -> SimBank {
    SimBank::open(storage, "banks/flash", layout(spare).physical_len())
}

fn ecu_with(storage: &CrashStorage, spare: u32) -> Ecu<RemapBank<SimBank>, SimEnv> {
    let mut banks = RemapBank::open(
        device(storage, spare),
        layout(spare),
        [slot("A"), slot("B")],
    )
    .unwrap();
    // Small merge batches: a merge of these few blocks has several durable points to cut.
    banks.set_merge_batch(4);
    let env = SimEnv::open(storage, "boot/env", 2 * ENV as u64);
    let env_layout = EnvLayout {
        size: ENV,
        first: 0,
        second: Some(ENV as u64),
    };
    let boot = UbootBoot::new(
        EnvStore::new(env, env_layout).unwrap(),
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

fn ecu(storage: &CrashStorage) -> Ecu<RemapBank<SimBank>, SimEnv> {
    ecu_with(storage, SPARE)
}

/// A new single-bank ECU: home holds `old`, both maps empty, boots A.
fn provisioned_with(old: &[u8], spare: u32) -> CrashStorage {
    let storage = CrashStorage::new();
    let mut dev = device(&storage, spare);
    dev.write_all_at(0, old).unwrap();
    dev.sync().unwrap();
    RemapBank::format(dev, layout(spare), [slot("A"), slot("B")]).unwrap();
    let mut ecu = ecu_with(&storage, spare);
    ecu.boot.provision().unwrap();
    storage.sync_dir("banks").unwrap();
    storage.sync_dir("boot").unwrap();
    storage
}

fn provisioned(old: &[u8]) -> CrashStorage {
    provisioned_with(old, SPARE)
}

struct Case {
    full: bool,
    old: Vec<u8>,
    new: Vec<u8>,
    delta: Vec<u8>,
    approval: ApprovedImage,
}

/// 150 KB of firmware; the new one changes bytes in 9 blocks in place and grows by 12 KB.
fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(150_000, 7);
    let mut new = old.clone();
    for block in [0usize, 3, 4, 10, 11, 12, 20, 30, 36] {
        new[block * BLOCK as usize + 100] ^= 0x5a;
    }
    new.extend_from_slice(&noise(12_000, 9));
    let delta = make_delta(dir.path(), &old, &new);
    let approval = approve(&new, "BRK-1", "brake-v2", true);
    Case {
        full: false,
        old,
        new,
        delta,
        approval,
    }
}

/// Whether map copy `copy` checks and shows `image`.
fn copy_shows(bank: &RemapBank<SimBank>, copy: usize, image: &[u8]) -> Option<bool> {
    let slot = slot(["A", "B"][copy]);
    match bank.copy(copy).unwrap() {
        MapCopy::Invalid(_) => None,
        MapCopy::Valid(_) => {
            Some(Banks::holds(bank, &slot, image.len() as u64, BlobId::of(image)).unwrap())
        }
    }
}

/// No torn block: every map copy that checks shows the old image or the new one, whole.
fn assert_every_map_whole(storage: &CrashStorage, case: &Case, when: &str) {
    let ecu = ecu(storage);
    let mut valid = 0;
    for copy in 0..2 {
        let old = copy_shows(&ecu.banks, copy, &case.old);
        let new = copy_shows(&ecu.banks, copy, &case.new);
        if let (Some(old), Some(new)) = (old, new) {
            assert!(old || new, "{when}: map copy {copy} shows neither image");
            valid += 1;
        }
    }
    assert!(valid >= 1, "{when}: no map copy checks");
}

/// Power-on: the bootloader picks a slot (saving its environment); the initramfs refuses a map
/// that does not check, which is a failed boot (the next power-on tries again). Every boot
/// that comes up shows a verified image, old or new.
fn power_on(storage: &CrashStorage, case: &Case) -> Result<Slot, FlashError> {
    for _ in 0..8 {
        let mut ecu = ecu(storage);
        let booted = ecu.boot.boot()?;
        if matches!(ecu.banks.map_of(&booted).unwrap(), MapCopy::Invalid(_)) {
            continue;
        }
        let old = ecu
            .banks
            .holds(&booted, case.old.len() as u64, BlobId::of(&case.old))
            .unwrap();
        let new = ecu
            .banks
            .holds(&booted, case.new.len() as u64, BlobId::of(&case.new))
            .unwrap();
        assert!(
            old || new,
            "booted slot {booted}, which shows neither image"
        );
        return Ok(booted);
    }
    panic!("eight power-ons in a row found no map that checks");
}

/// The update agent after a boot: finishes whatever the journal says, then merges.
fn agent(
    storage: &CrashStorage,
    case: &Case,
    booted: &Slot,
    health: &mut dyn HealthCheck,
) -> Result<Outcome, FlashError> {
    let index = storage.index();
    let mut ecu = ecu(storage);
    let outcome = match recover(&mut ecu, &index)? {
        Recovered::Idle(Some(record)) if record.blake3 == case.approval.blake3().unwrap() => {
            match record.stage {
                Stage::Committed => Outcome::Committed,
                Stage::RolledBack { reason } => Outcome::RolledBack { reason },
                other => panic!("idle at {other:?}"),
            }
        }
        Recovered::Idle(_) | Recovered::Writing(_) => {
            let mut ecu = self::ecu(storage);
            let install = Install::begin(&mut ecu, &index, &case.approval, booted)?;
            let written = if case.full {
                install.write_image(&case.new[..], case.new.len() as u64, FULL_PIECE, |_, _| {})?
            } else {
                install.write(&case.delta, case.delta.len() as u64, |_, _| {})?
            };
            written.start_trial()?;
            return Ok(Outcome::Reboot);
        }
        Recovered::Written(written) => {
            written.start_trial()?;
            return Ok(Outcome::Reboot);
        }
        Recovered::Trial(trial) => trial.conclude(booted, health)?,
    };
    let mut ecu = self::ecu(storage);
    merge(&mut ecu, &index)?;
    Ok(outcome)
}

fn healthy(_: &Slot) -> Result<(), HealthError> {
    Ok(())
}

fn lifecycle(
    storage: &CrashStorage,
    case: &Case,
    health: &mut dyn HealthCheck,
) -> Result<Outcome, FlashError> {
    for _ in 0..8 {
        let booted = power_on(storage, case)?;
        match agent(storage, case, &booted, health)? {
            Outcome::Reboot => continue,
            done => return Ok(done),
        }
    }
    panic!("the install did not end in eight boots");
}

/// Committed and merged: both maps empty, home holds the new image, the next boot shows it.
fn assert_merged(storage: &CrashStorage, case: &Case) {
    let mut ecu = ecu(storage);
    for copy in 0..2 {
        match ecu.banks.copy(copy).unwrap() {
            MapCopy::Valid(map) => assert!(map.entries.is_empty(), "copy {copy}: {map:?}"),
            MapCopy::Invalid(why) => panic!("copy {copy} does not check after the merge: {why}"),
        }
    }
    let home = storage.read_all("banks/flash").unwrap();
    assert_eq!(
        &home[..case.new.len()],
        &case.new[..],
        "home is not the new image"
    );
    let next = ecu.boot.state().unwrap().next_boot().cloned().unwrap();
    assert!(
        ecu.banks
            .holds(&next, case.new.len() as u64, BlobId::of(&case.new))
            .unwrap()
    );
    let record = journaled(&storage.index(), "BRK-1").unwrap().unwrap();
    assert_eq!(record.stage, Stage::Committed);
}

fn assert_rolled_back(storage: &CrashStorage, case: &Case) {
    let mut ecu = ecu(storage);
    let state = ecu.boot.state().unwrap();
    assert_eq!(state.next_boot(), Some(&slot("A")));
    assert_eq!(state.left[&slot("B")], 0);
    // The new map is dropped: B shows what A shows, and home was never written.
    for copy in 0..2 {
        assert_eq!(
            copy_shows(&ecu.banks, copy, &case.old),
            Some(true),
            "copy {copy}"
        );
    }
    let home = storage.read_all("banks/flash").unwrap();
    assert_eq!(&home[..case.old.len()], &case.old[..]);
}

/// The spare plan of `case` (the delta of [`case`], or another payload for the same images) on
/// a bank running slot A, checked to change what [`case`] changes: 9 blocks in place (36 is
/// also where the old image ended) and 3 new ones.
fn planned_changes(ecu: &Ecu<RemapBank<SimBank>, SimEnv>, case: &Case) -> SparePlan {
    let job = EcuJob {
        approval: &case.approval,
        delta: &case.delta,
        delta_len: case.delta.len() as u64,
        full_image: false,
    };
    let plan = spare_plan(ecu, &slot("A"), &job).unwrap().unwrap();
    assert_eq!(
        plan.changed,
        vec![0, 3, 4, 10, 11, 12, 20, 30, 36, 37, 38, 39]
    );
    plan
}

#[test]
fn an_install_writes_only_changed_blocks_switches_commits_and_merges() {
    let case = case();
    let storage = provisioned(&case.old);
    let mut ecu = ecu(&storage);
    let plan = planned_changes(&ecu, &case);
    assert_eq!(plan.image_blocks, 40);
    assert!(plan.fits());
    drop(ecu);

    // Trial: A still shows the old image, home untouched; B shows the new one.
    let booted = power_on(&storage, &case).unwrap();
    assert_eq!(
        agent(&storage, &case, &booted, &mut healthy).unwrap(),
        Outcome::Reboot
    );
    ecu = self::ecu(&storage);
    assert_eq!(copy_shows(&ecu.banks, 0, &case.old), Some(true));
    assert_eq!(copy_shows(&ecu.banks, 1, &case.new), Some(true));
    let MapCopy::Valid(map) = ecu.banks.copy(1).unwrap() else {
        panic!("copy 1 does not check")
    };
    assert_eq!(map.entries.len(), plan.changed.len());
    let home = storage.read_all("banks/flash").unwrap();
    assert_eq!(&home[..case.old.len()], &case.old[..]);
    drop(ecu);

    assert_eq!(
        lifecycle(&storage, &case, &mut healthy).unwrap(),
        Outcome::Committed
    );
    assert_merged(&storage, &case);
}

#[test]
fn power_cut_after_every_write_and_sync_of_install_trial_and_merge() {
    power_cuts(case());
}

#[test]
fn a_full_image_install_on_a_single_bank_survives_the_same_power_cuts() {
    power_cuts(Case {
        full: true,
        ..case()
    });
}

/// The image compressed (a delta from nothing) rebuilds the whole image, yet only the blocks
/// that differ from what the bank holds are written to spare, as for a delta.
#[test]
fn a_compressed_image_install_writes_only_changed_blocks_and_survives_the_same_power_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let case = case();
    let case = Case {
        delta: make_delta(dir.path(), &[], &case.new),
        ..case
    };
    let storage = provisioned(&case.old);
    planned_changes(&ecu(&storage), &case);
    power_cuts(case);
}

fn power_cuts(case: Case) {
    power_cuts_from(&case, &|| provisioned(&case.old));
}

/// v1 → v2 committed and merged, then v3 changes other blocks (and some of the same).
fn second_update() -> (Case, Case) {
    let first = case();
    let dir = tempfile::tempdir().unwrap();
    let mut v3 = first.new.clone();
    for block in [1usize, 3, 25, 30, 38] {
        v3[block * BLOCK as usize + 7] ^= 0x33;
    }
    let delta = make_delta(dir.path(), &first.new, &v3);
    let second = Case {
        full: false,
        old: first.new.clone(),
        approval: approve(&v3, "BRK-1", "brake-v2", true),
        new: v3,
        delta,
    };
    (first, second)
}

#[test]
fn power_cuts_in_a_second_update_after_a_merge() {
    let (first, second) = second_update();
    power_cuts_from(&second, &|| {
        let storage = provisioned(&first.old);
        assert_eq!(
            lifecycle(&storage, &first, &mut healthy).unwrap(),
            Outcome::Committed
        );
        storage
    });
}

#[test]
fn after_a_rollback_the_next_update_reuses_the_spare_area() {
    let (first, second) = second_update();
    let storage = provisioned(&first.old);
    let mut failing = |_: &Slot| Err(HealthError::Unhealthy("no".to_string()));
    assert!(matches!(
        lifecycle(&storage, &first, &mut failing).unwrap(),
        Outcome::RolledBack { .. }
    ));
    assert_rolled_back(&storage, &first);
    // v1 → v3 in one delta, into the spare blocks the dropped map had used.
    let dir = tempfile::tempdir().unwrap();
    let direct = Case {
        full: false,
        delta: make_delta(dir.path(), &first.old, &second.new),
        old: first.old.clone(),
        ..second
    };
    assert_eq!(
        lifecycle(&storage, &direct, &mut healthy).unwrap(),
        Outcome::Committed
    );
    assert_merged(&storage, &direct);
}

fn power_cuts_from(case: &Case, start: &dyn Fn() -> CrashStorage) {
    let clean = start();
    let base = clean.steps();
    assert_eq!(
        lifecycle(&clean, case, &mut healthy).unwrap(),
        Outcome::Committed
    );
    assert_merged(&clean, case);
    let steps = clean.steps() - base;
    let mut cut_points = 0;
    let mut rolled_back = 0;
    for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
        for cut in 1..=steps {
            let storage = start();
            storage.cut_at(storage.steps() + cut);
            assert!(
                lifecycle(&storage, case, &mut healthy).is_err(),
                "cut {cut} did not stop the install"
            );
            let after = storage.crash_image(torn);
            let when = format!("cut {cut} ({torn:?})");
            assert_every_map_whole(&after, case, &when);
            let outcome =
                lifecycle(&after, case, &mut healthy).unwrap_or_else(|e| panic!("{when}: {e}"));
            match &outcome {
                Outcome::Committed => assert_merged(&after, case),
                Outcome::RolledBack { reason } => {
                    assert!(reason.contains("boot tries exhausted"), "{when}: {reason}");
                    assert_rolled_back(&after, case);
                    rolled_back += 1;
                }
                Outcome::Reboot => unreachable!(),
            }
            assert_every_map_whole(&after, case, &format!("{when}, after"));
            cut_points += 1;
        }
    }
    println!(
        "{cut_points} power cuts over {steps} steps (plan, retire, spare writes, journal, map switch, boot environment, bootloader, trial, commit, merge) of a {} single-bank install, 3 torn-write modes; {rolled_back} cut the trial and rolled back, the rest committed and merged",
        if case.full { "full-image" } else { "delta" }
    );
    assert!(
        rolled_back < cut_points / 4,
        "{rolled_back} of {cut_points} rolled back"
    );
}

#[test]
fn a_failed_health_check_drops_the_new_map_and_home_is_untouched() {
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
    assert_rolled_back(&storage, &case);
    assert_eq!(power_on(&storage, &case).unwrap(), slot("A"));
}

#[test]
fn an_update_that_does_not_fit_the_spare_area_is_refused_before_a_byte_is_written() {
    let case = case();
    let storage = provisioned_with(&case.old, 8);
    let before = storage.read_all("banks/flash").unwrap();
    let index = storage.index();
    let mut ecu = ecu_with(&storage, 8);
    let job = EcuJob {
        approval: &case.approval,
        delta: &case.delta,
        delta_len: case.delta.len() as u64,
        full_image: false,
    };
    let plan = spare_plan(&ecu, &slot("A"), &job).unwrap().unwrap();
    assert_eq!((plan.changed.len(), plan.free_blocks), (12, 8));
    assert!(!plan.fits());
    let install = Install::begin(&mut ecu, &index, &case.approval, &slot("A")).unwrap();
    let error = install
        .write(&case.delta, case.delta.len() as u64, |_, _| {})
        .unwrap_err();
    assert!(
        matches!(error, FlashError::Bank(BankError::SpareTooSmall { .. })),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("changes 12 blocks of 4096 bytes (49152 bytes of spare space)")
            && text.contains("only 32768 bytes of spare space are free"),
        "{text}"
    );
    assert_eq!(storage.read_all("banks/flash").unwrap(), before);
    // The group step refuses before writing any ECU.
    let mut ecus = vec![ecu_with(&storage, 8)];
    let error = vehicle_peer::flasher::vehicle_step(
        "g",
        &mut ecus,
        &[job],
        &[slot("A")],
        &index,
        &mut |_: &str, _: &Slot| Ok(()),
    )
    .unwrap_err();
    assert!(error.to_string().contains("spare space"), "{error}");
    assert_eq!(storage.read_all("banks/flash").unwrap(), before);
}

#[test]
fn a_map_that_does_not_check_is_never_used() {
    let case = case();
    let storage = provisioned(&case.old);
    // A flipped bit in copy 1: slot B shows nothing, A is untouched.
    let mut dev = device(&storage, SPARE);
    let at = layout(SPARE).physical_len() - layout(SPARE).map_len() + 20;
    let mut byte = [0u8; 1];
    dev.read_exact_at(at, &mut byte).unwrap();
    dev.write_all_at(at, &[byte[0] ^ 1]).unwrap();
    let ecu = ecu(&storage);
    assert!(
        matches!(ecu.banks.copy(1).unwrap(), MapCopy::Invalid(why) if why.to_string().contains("checksum"))
    );
    assert!(
        !ecu.banks
            .holds(&slot("B"), case.old.len() as u64, BlobId::of(&case.old))
            .unwrap()
    );
    // The install rewrites it from the running map and goes on.
    assert_eq!(
        lifecycle(&storage, &case, &mut healthy).unwrap(),
        Outcome::Committed
    );
    assert_merged(&storage, &case);
    // Both copies broken: the bank refuses to open, naming why.
    let mut dev = device(&storage, SPARE);
    let zeros = vec![0u8; layout(SPARE).map_len() as usize * 2];
    dev.write_all_at(layout(SPARE).physical_len() - zeros.len() as u64, &zeros)
        .unwrap();
    let error = RemapBank::open(dev, layout(SPARE), [slot("A"), slot("B")]).unwrap_err();
    assert!(
        error.to_string().contains("neither map copy checks"),
        "{error}"
    );
}

#[test]
fn layouts_that_cannot_work_are_refused_by_name() {
    assert!(
        RemapLayout::fit(1 << 20, 3000, 4096)
            .unwrap_err()
            .to_string()
            .contains("power of two")
    );
    assert!(
        RemapLayout::fit(1 << 20, 4096, 0)
            .unwrap_err()
            .to_string()
            .contains("at least one block")
    );
    assert!(
        RemapLayout::fit(64 << 10, 4096, 64 << 10)
            .unwrap_err()
            .to_string()
            .contains("cannot hold")
    );
    let fit = RemapLayout::fit(1 << 20, 4096, 96 << 10).unwrap();
    assert_eq!(fit.spare_blocks, 24);
    assert!(fit.physical_len() <= 1 << 20);
    assert_eq!(fit.logical_blocks, 256 - 24 - 2);
    let storage = CrashStorage::new();
    let small = SimBank::open(&storage, "small", 64 << 10);
    let error = RemapBank::format(small, fit, [slot("A"), slot("B")]).unwrap_err();
    assert!(
        error.to_string().contains("the remap layout needs"),
        "{error}"
    );
}
