//! Crash consistency of the blob store.
//!
//! 1. Power cut at every step: a realistic sequence (partial blob filled by several verified
//!    responses with checkpoints, an import, a forget) runs on the crash-simulating storage with
//!    the power cut at step 1, 2, …, N; each crash image (unsynced writes lost, kept, or torn in
//!    half) is reopened and must hold everything promised durable, hold nothing unverified, and
//!    finish the fetch.
//! 2. SIGKILL at random moments: the real store (files on disk, sled index) runs in a child
//!    process that is killed at random points; after each kill the store reopens with every
//!    checkpointed group, every group whose write had returned, and nothing torn.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::single_range_in_vec_init
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::storage::sim::{CrashIndex, CrashStorage, Torn};
use node::storage::{DiskStorage, Index, SledIndex, Storage};
use node::store::{BlobStore, LAYOUT, StoreError};
use proto::bao::{ExpectedSize, RangeVerifier, VerifiedReader};
use proto::{BlobId, ChunkGroupRanges};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Fetches `groups` of `id` from `source` into `sink`, verifying as a peer's response would be.
fn fetch<S1: Storage, I1: Index, S2: Storage, I2: Index>(
    source: &BlobStore<S1, I1>,
    sink: &BlobStore<S2, I2>,
    id: &BlobId,
    groups: &ChunkGroupRanges,
) -> Result<(), StoreError> {
    let mut response = Vec::new();
    let (served, _) = source.serve(id, groups, &mut response)?;
    let size = u64::from_le_bytes(response[..8].try_into().unwrap());
    let mut verifier = RangeVerifier::new(*id, LAYOUT, size, &served);
    let mut at = 8;
    while let Some(len) = verifier.next_item_len() {
        let item = verifier
            .verify_next(&response[at..at + len])
            .expect("source serves verified data");
        sink.write(id, &item)?;
        at += len;
    }
    Ok(())
}

/// Checks that every group `store` claims to hold is the source's byte for byte, read back
/// through the verifier.
fn assert_held_groups_verify<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    id: &BlobId,
    data: &[u8],
) {
    let info = store.info(id).expect("blob present");
    let mut response = Vec::new();
    let (served, _) = store
        .serve(id, &info.held, &mut response)
        .expect("held groups re-verify against the root");
    assert_eq!(served, info.held);
    let reader = VerifiedReader::new(
        *id,
        LAYOUT,
        &served,
        ExpectedSize::Exactly(data.len() as u64),
        &response[..],
    )
    .unwrap();
    reader
        .for_each_group(|offset, bytes| {
            let start = offset as usize;
            assert_eq!(bytes, &data[start..start + bytes.len()]);
            Ok(())
        })
        .unwrap();
}

/// What the sequence had been promised durable when the power went out.
#[derive(Debug, Default)]
struct Promised {
    partial_created: bool,
    checkpointed: ChunkGroupRanges,
    imported: Option<BlobId>,
    forget_started: bool,
    forgotten: bool,
}

struct Fixture {
    source: BlobStore<CrashStorage, CrashIndex>,
    fetched: BlobId,
    fetched_data: Vec<u8>,
    imported_data: Vec<u8>,
    doomed: BlobId,
    doomed_data: Vec<u8>,
}

fn fixture() -> Fixture {
    let storage = CrashStorage::new();
    let (source, _) = BlobStore::open(storage.clone(), storage.index()).unwrap();
    let fetched_data = pattern(9 * 16384 + 1234, 1);
    let fetched = source.import(&fetched_data[..]).unwrap();
    let doomed_data = pattern(3 * 16384, 3);
    let doomed = BlobId::of(&doomed_data);
    Fixture {
        source,
        fetched,
        fetched_data,
        imported_data: pattern(2 * 16384 + 77, 2),
        doomed,
        doomed_data,
    }
}

/// The sequence under test; stops at the first error (the power cut).
fn run_sequence(
    fixture: &Fixture,
    store: &BlobStore<CrashStorage, CrashIndex>,
    promised: &mut Promised,
) -> Result<(), StoreError> {
    let id = fixture.fetched;
    store.create_partial(id, fixture.fetched_data.len() as u64)?;
    promised.partial_created = true;
    // Out of order, overlapping, with a duplicate group, as a swarm delivers them.
    let batches: [&[std::ops::Range<u64>]; 4] =
        [&[0..2, 6..7], &[2..4], &[3..5, 9..10], &[5..6, 7..9]];
    for batch in batches {
        let groups: ChunkGroupRanges = batch.iter().cloned().collect();
        fetch(&fixture.source, store, &id, &groups)?;
        let info = store.checkpoint(&id)?;
        promised.checkpointed = info.held;
    }
    let imported = store.import(&fixture.imported_data[..])?;
    promised.imported = Some(imported);
    promised.forget_started = true;
    store.forget(&fixture.doomed)?;
    promised.forgotten = true;
    Ok(())
}

#[test]
fn power_cut_at_every_step_keeps_every_promise() {
    let fixture = fixture();
    let prepare = || {
        let storage = CrashStorage::new();
        let (store, _) = BlobStore::open(storage.clone(), storage.index()).unwrap();
        // A blob to forget during the sequence.
        store.import(&fixture.doomed_data[..]).unwrap();
        (store, storage)
    };
    // A run without a cut counts the steps.
    let (store, storage) = prepare();
    let start = storage.steps();
    run_sequence(&fixture, &store, &mut Promised::default()).unwrap();
    let steps = storage.steps() - start;
    assert!(steps > 50, "sequence has only {steps} steps");

    let mut images = 0;
    for cut in 1..=steps + 1 {
        let (store, storage) = prepare();
        storage.cut_at(storage.steps() + cut);
        let mut promised = Promised::default();
        let result = run_sequence(&fixture, &store, &mut promised);
        assert_eq!(result.is_err(), cut <= steps, "cut at step {cut}");
        drop(store);
        for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
            let image = storage.crash_image(torn);
            let (reopened, report) = BlobStore::open(image.clone(), image.index())
                .unwrap_or_else(|e| panic!("cut {cut} {torn:?}: reopen failed: {e}"));
            let what = format!("cut at step {cut}/{steps}, unsynced writes {torn:?}, {report:?}");
            let id = fixture.fetched;
            match reopened.info(&id) {
                Some(info) => {
                    assert!(
                        promised.checkpointed.is_subset(&info.held),
                        "{what}: lost checkpointed groups {} (holds {})",
                        promised.checkpointed,
                        info.held
                    );
                    assert_held_groups_verify(&reopened, &id, &fixture.fetched_data);
                    // Resume: fetch what is missing; the blob completes and exports intact.
                    let missing = LAYOUT.all_groups(info.size).difference(&info.held);
                    fetch(&fixture.source, &reopened, &id, &missing).unwrap();
                    reopened.checkpoint(&id).unwrap();
                    let mut out = Vec::new();
                    reopened.export(&id, &mut out).unwrap();
                    assert!(out == fixture.fetched_data, "{what}: resumed blob differs");
                }
                None => assert!(!promised.partial_created, "{what}: partial blob lost"),
            }
            if let Some(imported) = promised.imported {
                let mut out = Vec::new();
                reopened
                    .export(&imported, &mut out)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    out == fixture.imported_data,
                    "{what}: imported blob differs"
                );
            }
            match reopened.info(&fixture.doomed) {
                Some(_) => {
                    assert!(!promised.forgotten, "{what}: forgotten blob came back");
                    assert_held_groups_verify(&reopened, &fixture.doomed, &fixture.doomed_data);
                }
                None => assert!(promised.forget_started, "{what}: blob vanished unasked"),
            }
            assert!(
                image.list("tmp").unwrap().is_empty(),
                "{what}: leftovers in tmp/"
            );
            images += 1;
        }
    }
    eprintln!("{steps} cut points, {images} crash images checked");
}

// ---- SIGKILL of a child process running the real (disk + sled) store ----

const CHILD_ENV: &str = "DEPOTMESH_STORE_CRASH_CHILD";
const KILL_BLOB_SIZE: usize = 32 << 20;
const CHECKPOINT_EVERY: u64 = 64;

fn kill_blob() -> Vec<u8> {
    pattern(KILL_BLOB_SIZE, 7)
}

/// The child: fetches the missing groups one at a time from an in-memory source, checkpointing
/// every 64 groups, and reports each finished write and checkpoint on stdout.
#[test]
fn child_process_entry() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let data = kill_blob();
    let source_storage = CrashStorage::new();
    let (source, _) = BlobStore::open(source_storage.clone(), source_storage.index()).unwrap();
    let id = source.import(&data[..]).unwrap();

    let storage = DiskStorage::new(dir.join("store")).unwrap();
    // The parent has just closed the index; sled releases its lock from a background thread,
    // so give it a moment.
    let mut attempts = 0;
    let index = loop {
        match SledIndex::open(&dir.join("index")) {
            Ok(index) => break index,
            Err(error) if attempts < 100 => {
                attempts += 1;
                eprintln!("index busy ({error}), retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("opening the index: {error}"),
        }
    };
    let (store, _) = BlobStore::open(storage, index).unwrap();
    let info = store.create_partial(id, data.len() as u64).unwrap();
    let missing = LAYOUT.all_groups(info.size).difference(&info.held);
    let mut since_checkpoint = 0;
    for group in missing.iter().flatten() {
        fetch(
            &source,
            &store,
            &id,
            &ChunkGroupRanges::from(group..group + 1),
        )
        .unwrap();
        println!("wrote {group}");
        since_checkpoint += 1;
        if since_checkpoint == CHECKPOINT_EVERY {
            let info = store.checkpoint(&id).unwrap();
            println!("checkpoint {}", info.held.group_count());
            since_checkpoint = 0;
        }
    }
    store.checkpoint(&id).unwrap();
    println!("done");
}

#[test]
fn sigkill_at_random_moments_loses_nothing_written() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = kill_blob();
    let id = BlobId::of(&data);
    let total = LAYOUT.group_count(data.len() as u64);
    // A fixed seed: the kill delays are reproducible, and printed.
    let mut seed = 0x5eed_u64;
    println!("seed {seed:#x}");
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "child never finished");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Six kills of at most 220 lines each, plus what the child writes ahead of the pipe,
        // stay well inside the blob's 2048 groups: every kill lands mid-work.
        let kill_after_lines = 20 + seed % 200;
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut written, mut checkpointed, mut done) = (ChunkGroupRanges::empty(), 0, false);
        let mut lines = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(group) = line.strip_prefix("wrote ") {
                let group: u64 = group.parse().unwrap();
                written.insert(group..group + 1);
            } else if let Some(count) = line.strip_prefix("checkpoint ") {
                checkpointed = count.parse().unwrap();
            } else if line == "done" {
                done = true;
            }
            lines += 1;
            if kills < 6 && lines == kill_after_lines {
                child.kill().unwrap();
                kills += 1;
                break;
            }
        }
        let _ = child.wait();

        // Reopen in this process, as the restarted fetcher would.
        let storage = DiskStorage::new(dir.path().join("store")).unwrap();
        let index = SledIndex::open(&dir.path().join("index")).unwrap();
        let (store, report) = BlobStore::open(storage, index).unwrap();
        let info = store.info(&id).expect("partial blob survives");
        assert!(
            info.held.group_count() >= checkpointed,
            "checkpointed {checkpointed} groups, reopened with {}",
            info.held.group_count()
        );
        // A killed process loses no write that returned: only the group in flight is fetched
        // again.
        assert!(
            written.is_subset(&info.held),
            "groups written before the kill are missing: {}",
            written.difference(&info.held)
        );
        assert_held_groups_verify(&store, &id, &data);
        println!(
            "run {kills}: {} groups written this run, reopened with {} of {total} ({report:?})",
            written.group_count(),
            info.held.group_count()
        );
        if done {
            assert!(info.complete);
            break;
        }
    }
    assert!(
        kills >= 3,
        "the child finished before it could be killed enough"
    );
}
