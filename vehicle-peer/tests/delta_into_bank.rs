//! The flasher's write of the inactive bank: a real delta applied from the running bank into the
//! other one, with the power cut at every write and sync of the bank and every journal update
//! (unsynced writes lost, kept, or torn); after each cut the install resumes from its journal,
//! never writes a finished segment again, and ends with the bank holding the target.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod sim_ecu;

use delta::{Applied, ApplyError, ApplyInputs, Progress};
use node::storage::sim::{CrashStorage, Torn};
use node::storage::{Index, Storage, StorageFile};
use proto::BlobId;
use sim_ecu::{SimBank, make_delta, noise};
use vehicle_peer::bank::holds;
use vehicle_peer::delta::apply_into_bank;

const JOURNAL_KEY: &[u8] = b"install/ecu-1/progress";

fn load_progress(storage: &CrashStorage) -> Option<Progress> {
    let records = storage.index().load().unwrap();
    let (_, value) = records.into_iter().find(|(k, _)| k == JOURNAL_KEY)?;
    Some(Progress {
        header_digest: value[..32].try_into().unwrap(),
        done: u64::from_le_bytes(value[32..40].try_into().unwrap()) as usize,
    })
}

/// One install attempt: the running bank "A" is the source, bank "B" the target.
fn install(
    storage: &CrashStorage,
    capacity: u64,
    source_len: u64,
    delta: &[u8],
    reported: &mut usize,
) -> (Result<Applied, ApplyError>, Option<u64>) {
    let running = SimBank::open(storage, "banks/A", capacity);
    let mut inactive = SimBank::open(storage, "banks/B", capacity);
    let inputs = ApplyInputs {
        source: &running,
        source_len,
        delta,
        delta_len: delta.len() as u64,
        expect_target: None,
    };
    let index = storage.index();
    let resume = load_progress(storage);
    let result = apply_into_bank(&mut inactive, &inputs, resume, |progress, _| {
        let mut value = progress.header_digest.to_vec();
        value.extend_from_slice(&(progress.done as u64).to_le_bytes());
        index
            .put(JOURNAL_KEY, &value)
            .map_err(|source| ApplyError::Io {
                what: "journal".into(),
                source,
            })?;
        *reported = progress.done;
        Ok(())
    });
    (result, inactive.first_write.get())
}

/// A disk with bank A holding `old` (durably) and an empty bank B.
fn provisioned(old: &[u8], capacity: u64) -> CrashStorage {
    let storage = CrashStorage::new();
    let bank = SimBank::open(&storage, "banks/A", capacity);
    bank.file.write_all_at(0, old).unwrap();
    bank.file.sync().unwrap();
    SimBank::open(&storage, "banks/B", capacity);
    storage.sync_dir("banks").unwrap();
    storage
}

#[test]
fn power_cut_at_every_bank_write_sync_and_journal_update_resumes_without_rewriting() {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(200_000, 7);
    let mut new = old.clone();
    for i in (1000..new.len()).step_by(4099) {
        new[i] = new[i].wrapping_add(3);
    }
    new.splice(60_000..60_000, noise(5000, 9));
    new.extend_from_slice(&noise(20_000, 11));
    let delta = make_delta(dir.path(), &old, &new);
    let capacity = 256 << 10;
    let target = BlobId::of(&new);
    let segment = 1u64 << 14;

    // A clean run counts the steps after provisioning.
    let clean = provisioned(&old, capacity);
    let before = clean.steps();
    let mut reported = 0;
    let (applied, _) = install(&clean, capacity, old.len() as u64, &delta, &mut reported);
    let applied = applied.unwrap();
    assert_eq!(applied.target, target);
    let segments = applied.segments;
    assert!(segments >= 14, "{segments} segments");
    let steps = clean.steps() - before;
    // Bank write, bank sync and journal put per segment, plus opening both banks.
    assert!(steps >= 3 * segments as u64, "{steps} steps");

    let mut cut_points = 0;
    for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
        for cut in 1..=steps {
            let storage = provisioned(&old, capacity);
            storage.cut_at(storage.steps() + cut);
            let mut reported = 0;
            let (result, _) = install(&storage, capacity, old.len() as u64, &delta, &mut reported);
            assert!(result.is_err(), "cut at {cut} did not stop the install");
            let after = storage.crash_image(torn);
            // The running bank is never touched.
            assert_eq!(
                &after.read_all("banks/A").unwrap()[..old.len()],
                &old[..],
                "cut at {cut} ({torn:?}) changed the running bank"
            );
            let journal = load_progress(&after).map_or(0, |p| p.done);
            assert!(
                journal >= reported,
                "cut at {cut}: a recorded segment was lost"
            );
            let mut again = 0;
            let (resumed, first_write) =
                install(&after, capacity, old.len() as u64, &delta, &mut again);
            let resumed = resumed.unwrap_or_else(|e| panic!("cut at {cut} ({torn:?}): {e}"));
            assert_eq!(resumed.resumed_at, journal, "cut at {cut} ({torn:?})");
            // Finished segments are not written again: the first write is the first unfinished
            // segment's.
            if journal < segments {
                assert_eq!(
                    first_write,
                    Some(journal as u64 * segment),
                    "cut at {cut} ({torn:?})"
                );
            } else {
                assert_eq!(first_write, None, "cut at {cut} ({torn:?})");
            }
            let bank = SimBank::open(&after, "banks/B", capacity);
            assert!(
                holds(&bank, new.len() as u64, target).unwrap(),
                "cut at {cut} ({torn:?}): bank B does not hold the target"
            );
            cut_points += 1;
        }
    }
    println!(
        "{cut_points} power cuts over {steps} steps of a {segments}-segment bank install, 3 torn-write modes"
    );
}

#[test]
fn a_wrong_source_bank_or_a_small_bank_is_refused_before_a_byte_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(50_000, 1);
    let new = noise(60_000, 2);
    let delta = make_delta(dir.path(), &old, &new);

    // The running bank holds something else.
    let storage = provisioned(&noise(50_000, 3), 64 << 10);
    let mut reported = 0;
    let (result, first_write) = install(&storage, 64 << 10, 50_000, &delta, &mut reported);
    let error = result.unwrap_err().to_string();
    assert!(error.contains("source"), "{error}");
    assert_eq!(first_write, None);

    // The inactive bank is too small for the target.
    let storage = provisioned(&old, 56 << 10);
    let (result, first_write) = install(&storage, 56 << 10, 50_000, &delta, &mut reported);
    let error = result.unwrap_err().to_string();
    assert!(error.contains("does not fit the bank"), "{error}");
    assert_eq!(first_write, None);
}
