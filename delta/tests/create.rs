//! Creating deltas: the creator picks, per segment, the encoding the data calls for, the result
//! applies byte-exact, and large sources are matched in windows. (`origin delta`, the command,
//! is tested with origin's CLI.)

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::Path;

use delta::{
    CreateError, CreateProgress, DeltaHeader, DeltaOptions, Method, SegmentDecoder,
    WORKER_BYTES_PER_SEGMENT_BYTE, WORKER_BYTES_PER_WINDOW_BYTE, create, create_with_progress,
    memory_plan, window_memory,
};
use proto::BlobId;

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

/// Applies in memory, checking every segment against the target's hash tree.
fn apply(source: &[u8], delta: &[u8]) -> Vec<u8> {
    let (header, len) = DeltaHeader::parse(delta).unwrap();
    header
        .check_source(BlobId::of(source), source.len() as u64)
        .unwrap();
    assert_eq!(header.delta_len(), delta.len() as u64);
    let mut decoder = SegmentDecoder::new();
    let (mut out, mut segment, mut at) = (Vec::new(), Vec::new(), len);
    for (i, entry) in header.segments.iter().enumerate() {
        let body = &delta[at..at + entry.encoded_len as usize];
        decoder
            .decode(&header, i, body, &source, &mut segment)
            .unwrap();
        out.extend_from_slice(&segment);
        at += entry.encoded_len as usize;
    }
    out
}

fn round_trip(
    dir: &Path,
    old: &[u8],
    new: &[u8],
    options: &DeltaOptions,
) -> (Vec<(Method, usize)>, u64) {
    std::fs::write(dir.join("old"), old).unwrap();
    std::fs::write(dir.join("new"), new).unwrap();
    let summary = create(
        &dir.join("old"),
        &dir.join("new"),
        &dir.join("patch"),
        options,
    )
    .unwrap();
    let delta = std::fs::read(dir.join("patch")).unwrap();
    assert_eq!(summary.delta_len, delta.len() as u64);
    assert_eq!(summary.delta, BlobId::of(&delta));
    assert_eq!(apply(old, &delta), new);
    (summary.methods, summary.delta_len)
}

fn options(segment_log: u8) -> DeltaOptions {
    DeltaOptions {
        segment_log,
        level: 9,
        threads: 2,
        ..DeltaOptions::default()
    }
}

#[test]
fn each_kind_of_change_gets_its_encoding_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Retrained weights: every f32 nudged. Only the aligned word diff finds this.
    let weights: Vec<f32> = (0..60_000)
        .map(|i| ((i as f32) * 0.013).sin() * 0.2)
        .collect();
    let old: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
    let new: Vec<u8> = weights
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (w + 0.002 * ((i as f32) * 1.7).cos()).to_le_bytes())
        .collect();
    let (methods, size) = round_trip(d, &old, &new, &options(16));
    assert!(
        methods.iter().any(|(m, _)| *m == Method::Aligned),
        "{methods:?}"
    );
    assert!(
        size < new.len() as u64 * 3 / 4,
        "{size} bytes for nudged weights"
    );

    // Code-like edits: a few bytes changed every few KiB, a shifted block.
    let old = noise(300_000, 1);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(3001) {
        new[i] ^= 0x10;
    }
    new.splice(100_000..100_000, noise(3000, 2));
    let (methods, size) = round_trip(d, &old, &new, &options(16));
    assert!(
        methods.iter().all(|(m, _)| *m != Method::PatchFrom),
        "{methods:?}"
    );
    assert!(size < 20_000, "{size} bytes for a small edit");

    // Nothing in common: the segment is just compressed.
    let new = noise(100_000, 3);
    let (methods, _) = round_trip(d, &old, &new, &options(16));
    assert_eq!(methods, [(Method::PatchFrom, 2)]);

    // Degenerate sizes.
    round_trip(d, &[], &new, &options(14));
    round_trip(d, &old, &[], &options(14));
    round_trip(d, &[], &[], &options(14));
    round_trip(d, &old, &old, &options(14));
}

/// Bytes shaped like x86 code: relative calls (E8 rel32) into a set of functions between
/// filler instructions.
fn code(len: usize, seed: u64, functions: &[u32], base: u32) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state % 4 == 0 {
            let at = base.wrapping_add(out.len() as u32 + 5);
            let to = functions[(state >> 8) as usize % functions.len()];
            out.push(0xE8);
            out.extend_from_slice(&to.wrapping_sub(at).to_le_bytes());
        } else {
            out.extend_from_slice(&[
                0x48,
                0x8b,
                0x40 | (state >> 20) as u8 & 7,
                (state >> 32) as u8 & 0x38,
            ]);
        }
    }
    out.truncate(len);
    out
}

/// A release's image compressed is a delta from the empty image: it round-trips, code
/// compresses, and noise costs at most its framing over its own size.
#[test]
fn an_image_compressed_is_a_delta_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let functions: Vec<u32> = (0..64).map(|i| 0x40_0000 + i * 977).collect();
    let image = code(600_000, 5, &functions, 0x40_0000);
    let (methods, size) = round_trip(d, &[], &image, &options(16));
    let segments = image.len().div_ceil(1 << 16);
    assert_eq!(methods, [(Method::PatchFrom, segments)]);
    assert!(
        size < image.len() as u64 / 3,
        "{size} bytes for {}",
        image.len()
    );
    let random = noise(200_000, 11);
    let (_, size) = round_trip(d, &[], &random, &options(16));
    let framing = 104 + random.len().div_ceil(1 << 16) as u64 * (36 + 64);
    assert!(
        size <= random.len() as u64 + random.len() as u64 / 64 + framing,
        "{size}"
    );
}

/// A memory budget caps the segments encoded at once and changes nothing else: the delta is
/// byte for byte the same. A budget that cannot hold the window's index and one worker is
/// refused before anything is written.
#[test]
fn a_memory_budget_caps_the_workers_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = noise(400_000, 3);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(7001) {
        new[i] ^= 0x55;
    }
    std::fs::write(d.join("old"), &old).unwrap();
    std::fs::write(d.join("new"), &new).unwrap();
    let options = DeltaOptions {
        threads: 3,
        ..options(16)
    };
    let free = create(&d.join("old"), &d.join("new"), &d.join("free"), &options).unwrap();
    assert_eq!(free.workers, 3);
    let plan = memory_plan(old.len() as u64, &options).unwrap();
    assert_eq!(
        (plan.window, plan.per_worker),
        (
            window_memory(400_000),
            (1 << 16) * WORKER_BYTES_PER_SEGMENT_BYTE + 400_000 * WORKER_BYTES_PER_WINDOW_BYTE
        )
    );
    let one = DeltaOptions {
        memory_budget: Some(plan.window + plan.per_worker),
        ..options.clone()
    };
    let capped = create(&d.join("old"), &d.join("new"), &d.join("capped"), &one).unwrap();
    assert_eq!(capped.workers, 1);
    assert_eq!(
        std::fs::read(d.join("free")).unwrap(),
        std::fs::read(d.join("capped")).unwrap()
    );
    let too_small = DeltaOptions {
        memory_budget: Some(plan.window + plan.per_worker - 1),
        ..options
    };
    let error = create(&d.join("old"), &d.join("new"), &d.join("none"), &too_small).unwrap_err();
    assert!(
        matches!(error, CreateError::MemoryBudget { needed, .. } if needed == plan.window + plan.per_worker),
        "{error}"
    );
    assert!(!d.join("none").exists() && !d.join(".none.partial").exists());
}

#[test]
fn far_releases_of_code_get_lzma_with_the_source_as_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A far release: the old code's pieces moved around (their calls now relative to new
    // places), between new code.
    let functions: Vec<u32> = (0..400).map(|i| i * 2_311 + 64).collect();
    let old = code(400_000, 11, &functions, 0);
    let mut new = Vec::new();
    let mut k = 0u64;
    while new.len() < 420_000 {
        k += 1;
        let from = (k * 7_919 * 13) as usize % (old.len() - 3_000);
        new.extend_from_slice(&old[from..from + 1_000 + (k as usize * 37) % 2_000]);
        new.extend(code(
            300 + (k as usize * 53) % 900,
            k,
            &functions,
            new.len() as u32,
        ));
    }
    std::fs::write(d.join("old"), &old).unwrap();
    std::fs::write(d.join("new"), &new).unwrap();
    let make = |lzma_dict: bool, name: &str| {
        let options = DeltaOptions {
            lzma_dict,
            ..options(18)
        };
        let summary = create(&d.join("old"), &d.join("new"), &d.join(name), &options).unwrap();
        let delta = std::fs::read(d.join(name)).unwrap();
        assert_eq!(apply(&old, &delta), new, "lzma_dict {lzma_dict}");
        summary
    };
    let with = make(true, "with");
    let without = make(false, "without");
    assert_eq!(without.lzma_dict_segments, 0);
    assert!(with.lzma_dict_segments > 0, "{with:?}");
    assert!(
        with.delta_len < without.delta_len,
        "{} bytes with the LZMA pass, {} without",
        with.delta_len,
        without.delta_len
    );
}

#[test]
fn a_source_larger_than_the_match_window_is_matched_in_windows() {
    let dir = tempfile::tempdir().unwrap();
    // 5 MiB source, 1 MiB windows: the creator moves its window along the source.
    let old = noise(5 << 20, 4);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(65_537) {
        new[i] = new[i].wrapping_add(1);
    }
    new.splice(3 << 20..3 << 20, noise(10_000, 5));
    let options = DeltaOptions {
        segment_log: 18,
        level: 3,
        threads: 2,
        match_window: 1 << 20,
        lzma_dict: true,
        exhaustive: false,
        memory_budget: None,
        references: true,
    };
    let (_, size) = round_trip(dir.path(), &old, &new, &options);
    assert!(size < 100_000, "{size} bytes: the windows found no matches");
}

#[test]
fn progress_counts_every_segment_once_up_to_the_whole_target() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let old = noise(700_000, 8);
    let mut new = old.clone();
    new.splice(300_000..300_000, noise(50_000, 9));
    std::fs::write(d.join("old"), &old).unwrap();
    std::fs::write(d.join("new"), &new).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let summary = create_with_progress(
        &d.join("old"),
        &d.join("new"),
        &d.join("patch"),
        &options(17),
        &|p: CreateProgress| seen.lock().unwrap().push(p),
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    let segments = new.len().div_ceil(1 << 17);
    assert_eq!(seen.len(), segments, "{seen:?}");
    for (k, p) in seen.iter().enumerate() {
        assert_eq!(p.segments_done, k + 1);
        assert_eq!(p.segments, segments);
        assert_eq!(p.target_len, new.len() as u64);
        assert!(p.bytes_done <= p.target_len);
    }
    let last = seen.last().unwrap();
    assert_eq!(last.bytes_done, new.len() as u64);
    assert_eq!(last.eta_seconds(), Some(0.0));
    assert!(last.seconds <= summary.seconds);
    let delta = std::fs::read(d.join("patch")).unwrap();
    assert_eq!(apply(&old, &delta), new);
}

#[test]
fn segments_matched_in_pieces_and_every_codec_tried_both_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One 4 MiB segment, matched in four pieces on four threads: the changes straddle the cuts.
    let functions: Vec<u32> = (0..300).map(|i| i * 4_099 + 77).collect();
    let old = code(4 << 20, 21, &functions, 0);
    let mut new = old.clone();
    for at in [(1 << 20) - 500, 2 << 20, (3 << 20) + 7] {
        new.splice(at..at + 300, code(900, at as u64, &functions, at as u32));
    }
    new.truncate(4 << 20);
    std::fs::write(d.join("old"), &old).unwrap();
    std::fs::write(d.join("new"), &new).unwrap();
    let make = |threads: usize, exhaustive: bool| {
        let options = DeltaOptions {
            threads,
            exhaustive,
            ..options(22)
        };
        let name = format!("patch-{threads}-{exhaustive}");
        let summary = create(&d.join("old"), &d.join("new"), &d.join(&name), &options).unwrap();
        let delta = std::fs::read(d.join(&name)).unwrap();
        assert_eq!(
            apply(&old, &delta),
            new,
            "{threads} threads, exhaustive {exhaustive}"
        );
        summary.delta_len
    };
    let whole = make(1, false);
    let pieces = make(4, false);
    let every_codec = make(4, true);
    // The cuts cost at most a match each.
    assert!(
        pieces <= whole + whole / 50 + 64,
        "{pieces} bytes in pieces, {whole} in one"
    );
    // Every codec on the same finalists is never larger than the chosen ones.
    assert!(
        every_codec <= pieces,
        "{every_codec} bytes with every codec, {pieces} with the chosen"
    );
    // All of it far below the 4 MiB image.
    assert!(pieces < 100_000, "{pieces} bytes");
}
