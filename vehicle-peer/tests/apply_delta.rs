//! Delta apply: real deltas from `delta::create`, applied through the crash-simulating
//! storage with the power cut at every write, sync, rename and removal (and each unsynced write
//! lost, kept, or torn in half); then the real `vehicle-peer apply-delta` binary on corrupt,
//! truncated, mismatched and wrong-source deltas.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::Path;
use std::process::Command;

use delta::{ApplyError, ApplyInputs};
use node::storage::Storage;
use node::storage::sim::{CrashStorage, Torn};
use proto::BlobId;
use vehicle_peer::delta::apply;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 29) as u8
        })
        .collect()
}

/// An "old image" and a "new image": edits, an insertion that shifts the rest, new bytes.
fn image_pair(len: usize) -> (Vec<u8>, Vec<u8>) {
    let old = noise(len, 7);
    let mut new = old.clone();
    for i in (1000..new.len()).step_by(4099) {
        new[i] = new[i].wrapping_add(3);
    }
    new.splice(len / 3..len / 3, noise(5000, 9));
    new.extend_from_slice(&noise(20_000, 11));
    (old, new)
}

fn make_delta(dir: &Path, old: &[u8], new: &[u8], segment_log: u8) -> Vec<u8> {
    std::fs::write(dir.join("old"), old).unwrap();
    std::fs::write(dir.join("new"), new).unwrap();
    let options = delta::DeltaOptions {
        segment_log,
        level: 3,
        threads: 1,
        ..Default::default()
    };
    delta::create(
        &dir.join("old"),
        &dir.join("new"),
        &dir.join("patch"),
        &options,
    )
    .unwrap();
    std::fs::read(dir.join("patch")).unwrap()
}

fn run(
    storage: &CrashStorage,
    old: &[u8],
    delta: &[u8],
    done: &mut usize,
) -> Result<delta::Applied, ApplyError> {
    let inputs = ApplyInputs {
        source: old,
        source_len: old.len() as u64,
        delta,
        delta_len: delta.len() as u64,
        expect_target: None,
    };
    apply(storage, "bank/new.img", &inputs, |n, _| *done = n)
}

#[test]
fn power_cut_at_every_step_resumes_without_rewriting_and_never_shows_a_partial_target() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = image_pair(200_000);
    let delta = make_delta(dir.path(), &old, &new, 14);

    // A clean run counts the steps.
    let clean = CrashStorage::new();
    let mut done = 0;
    let applied = run(&clean, &old, &delta, &mut done).unwrap();
    assert_eq!(clean.read_all("bank/new.img").unwrap(), new);
    assert_eq!(applied.resumed_at, 0);
    let segments = applied.segments;
    assert!(segments >= 13, "{segments} segments");
    let steps = clean.steps();

    let mut cut_points = 0;
    for torn in [Torn::Lost, Torn::Kept, Torn::FirstHalf] {
        for cut in 1..=steps {
            let storage = CrashStorage::new();
            storage.cut_at(cut);
            let mut reported = 0;
            assert!(
                run(&storage, &old, &delta, &mut reported).is_err(),
                "cut at {cut} did not stop the apply"
            );
            let after = storage.crash_image(torn);
            // Whatever survived: the target's name holds the whole target or nothing.
            if let Some(bytes) = after.read_all("bank/new.img") {
                assert_eq!(
                    bytes, new,
                    "cut at {cut} ({torn:?}) left a wrong file under the target's name"
                );
            }
            let mut done = 0;
            let resumed = run(&after, &old, &delta, &mut done).unwrap();
            assert_eq!(
                after.read_all("bank/new.img").unwrap(),
                new,
                "cut at {cut} ({torn:?})"
            );
            // Every segment reported done before the cut was durable: it is not decoded again.
            assert!(
                resumed.resumed_at >= reported,
                "cut at {cut} ({torn:?}): {reported} segments were done, resumed at {}",
                resumed.resumed_at
            );
            // Nothing is left behind but the target.
            let mut leftovers = after.list("bank").unwrap();
            leftovers.retain(|name| name != "new.img");
            assert!(
                leftovers.is_empty(),
                "cut at {cut} ({torn:?}) left {leftovers:?}"
            );
            cut_points += 1;
        }
    }
    println!(
        "{cut_points} power cuts over {steps} steps of a {segments}-segment apply, 3 torn-write modes"
    );
}

#[test]
fn a_different_delta_does_not_resume_from_anothers_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = image_pair(100_000);
    let delta = make_delta(dir.path(), &old, &new, 14);
    let storage = CrashStorage::new();
    storage.cut_at(20);
    let mut done = 0;
    assert!(run(&storage, &old, &delta, &mut done).is_err());
    assert!(done > 0);
    let after = storage.crash_image(Torn::Kept);
    // Another target from the same source.
    let mut other = new.clone();
    other[50] ^= 0xff;
    let other_delta = make_delta(dir.path(), &old, &other, 14);
    let applied = run(&after, &old, &other_delta, &mut done).unwrap();
    assert_eq!(applied.resumed_at, 0);
    assert_eq!(after.read_all("bank/new.img").unwrap(), other);
}

#[test]
fn wrong_source_corrupt_and_truncated_deltas_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = image_pair(100_000);
    let delta = make_delta(dir.path(), &old, &new, 14);

    // The wrong source: refused before a byte is written.
    let mut wrong = old.clone();
    wrong[10] ^= 1;
    let storage = CrashStorage::new();
    let error = run(&storage, &wrong, &delta, &mut 0).unwrap_err();
    assert!(error.to_string().contains("wrong source"), "{error}");
    assert_eq!(
        storage.steps(),
        0,
        "something was written before the source was checked"
    );

    // Truncated.
    let storage = CrashStorage::new();
    let error = run(&storage, &old, &delta[..delta.len() - 1], &mut 0).unwrap_err();
    assert!(error.to_string().contains("truncated or padded"), "{error}");
    assert_eq!(storage.steps(), 0);

    // A body byte flipped: the segment fails its hash and the target never appears.
    let mut corrupt = delta.clone();
    let at = corrupt.len() - 100;
    corrupt[at] ^= 0x40;
    let storage = CrashStorage::new();
    let error = run(&storage, &old, &corrupt, &mut 0).unwrap_err();
    assert!(error.to_string().contains("delta segment"), "{error}");
    assert!(storage.read_all("bank/new.img").is_none());

    // Expecting another target.
    let inputs = ApplyInputs {
        source: &old[..],
        source_len: old.len() as u64,
        delta: &delta[..],
        delta_len: delta.len() as u64,
        expect_target: Some(BlobId::of(b"something else")),
    };
    let error = apply(&CrashStorage::new(), "x", &inputs, |_, _| {}).unwrap_err();
    assert!(error.to_string().contains("not the expected"), "{error}");
}

fn apply_cli(from: &Path, delta: &Path, out: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .args(["apply-delta", "--from"])
        .arg(from)
        .arg("--delta")
        .arg(delta)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_applies_and_refuses_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = image_pair(300_000);
    make_delta(d, &old, &new, 16);
    let out = d.join("rebuilt");
    let (ok, stdout, stderr) = apply_cli(&d.join("old"), &d.join("patch"), &out);
    assert!(ok, "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), new);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["target"], BlobId::of(&new).to_string());
    // Left nothing beside the output.
    let mut names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["new", "old", "patch", "rebuilt"]);

    let patch = std::fs::read(d.join("patch")).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"GIF89a, not a delta at all".to_vec(),
            "bad magic",
        ),
        (
            "truncated",
            patch[..patch.len() / 2].to_vec(),
            "truncated or padded",
        ),
        ("empty", Vec::new(), "truncated"),
        (
            "flipped",
            {
                let mut p = patch.clone();
                let at = p.len() - 10;
                p[at] ^= 1;
                p
            },
            "delta segment",
        ),
    ];
    for (name, bytes, expected) in cases {
        let bad = d.join(name);
        std::fs::write(&bad, bytes).unwrap();
        let out = d.join(format!("{name}.out"));
        let (ok, _, stderr) = apply_cli(&d.join("old"), &bad, &out);
        assert!(!ok, "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!out.exists(), "{name} left an output");
    }
    // The new image as source: the wrong one.
    let (ok, _, stderr) = apply_cli(&d.join("new"), &d.join("patch"), &d.join("x"));
    assert!(!ok);
    assert!(stderr.contains("wrong source"), "{stderr}");
    let (ok, _, stderr) = apply_cli(&d.join("missing"), &d.join("patch"), &d.join("x"));
    assert!(!ok);
    assert!(stderr.contains("opening the source"), "{stderr}");
}
