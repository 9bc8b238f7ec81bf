//! The delta format: round trips of arbitrary operation plans (byte and word diffs, source
//! windows, every codec the encoder picks), and refusal of every corrupted, truncated or
//! misapplied delta with an error — never a panic, never a segment that passes unchecked.

// Test code: small sizes, and a panic is how a test fails.
#![allow(clippy::cast_possible_truncation, clippy::unwrap_used)]

mod common;

use common::apply;
use delta::{
    DeltaError, DeltaHeader, Effort, Op, SegmentDecoder, SegmentEncoder, SegmentEntry, SegmentPlan,
    SourceView,
};
use proptest::prelude::*;
use proto::BlobId;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Low-entropy enough that compressors have something to find.
            (state % 7) as u8 * 31
        })
        .collect()
}

/// A plan for one segment: cut it into `cuts` pieces; each piece reads a diff run from a
/// pseudo-random source place and takes the rest as extra.
fn plan_for(seg_start: u64, seg_len: usize, source_len: u64, seed: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut t = 0usize;
    while t < seg_len {
        let piece = ((next() % 5000) as usize + 1).min(seg_len - t);
        let diff = if source_len == 0 {
            0
        } else {
            (next() as usize % (piece + 1)).min(source_len as usize)
        };
        let src = if source_len == 0 {
            seg_start
        } else {
            next() % (source_len - diff as u64 + 1)
        };
        ops.push(Op {
            src,
            diff: diff as u32,
            extra: (piece - diff) as u32,
        });
        t += piece;
    }
    ops
}

/// A segment's plan: operations, word phase, source window, LZMA with the window as dictionary.
type Plan = (Vec<Op>, Option<u8>, Option<(u64, u32)>, bool);

/// Builds a whole delta with the encoder, one plan per segment from `plan(index, start, bytes)`.
fn build_with(
    source: &[u8],
    target: &[u8],
    segment_log: u8,
    plan: impl Fn(usize, u64, &[u8]) -> Plan,
) -> Vec<u8> {
    let seg = 1usize << segment_log;
    let count = target.len().div_ceil(seg);
    let mut encoder = SegmentEncoder::new(3);
    let mut bodies = Vec::new();
    let mut entries = Vec::new();
    for (i, chunk) in target.chunks(seg).enumerate() {
        let start = (i * seg) as u64;
        let (ops, word_phase, ref_window, lzma_dict) = plan(i, start, chunk);
        // Both efforts, and the x86 converter on and off, over the segments.
        let effort = match i % 3 {
            0 => Effort::Exhaustive,
            k => Effort::Chosen { x86: k == 1 },
        };
        let plan = SegmentPlan {
            ops: &ops,
            word_phase,
            ref_window,
            lzma_dict,
            effort,
            correction: None,
        };
        let view = SourceView {
            offset: 0,
            bytes: source,
        };
        let body = encoder.encode(i, start, chunk, &plan, view).unwrap();
        // An estimate is of the same order as the body (fast zstd against the best codec).
        let estimate = encoder
            .estimate(i, start, chunk, &plan, view, i % 2 == 0)
            .unwrap()
            .len;
        assert!(
            estimate > 0 && estimate < 4 * body.len() + 256,
            "segment {i}: estimate {estimate} for a body of {}",
            body.len()
        );
        entries.push(SegmentEntry {
            encoded_len: body.len() as u32,
            cv: DeltaHeader::chaining_value(count, segment_log, i, chunk),
        });
        bodies.push(body);
    }
    let header = DeltaHeader {
        source: BlobId::of(source),
        source_len: source.len() as u64,
        target: BlobId::of(target),
        target_len: target.len() as u64,
        segment_log,
        segments: entries,
        model: None,
    };
    let mut delta = header.encode();
    for body in bodies {
        delta.extend_from_slice(&body);
    }
    delta
}

/// A delta of pseudo-random plans.
fn build(
    source: &[u8],
    target: &[u8],
    segment_log: u8,
    seed: u64,
    word: bool,
    window: bool,
) -> Vec<u8> {
    build_with(source, target, segment_log, |i, start, chunk| {
        let ops = plan_for(start, chunk.len(), source.len() as u64, seed ^ i as u64);
        let ref_window = (window && !source.is_empty()).then(|| {
            let offset = (seed as usize + i) % source.len();
            (offset as u64, (source.len() - offset) as u32)
        });
        let lzma_dict = ref_window.is_some() && (seed ^ i as u64) & 1 != 0;
        (ops, word.then_some((seed % 4) as u8), ref_window, lzma_dict)
    })
}

/// The codec byte of each segment's extra stream.
fn extra_codecs(delta: &[u8]) -> Vec<u8> {
    let (header, mut at) = DeltaHeader::parse(delta).unwrap();
    let mut codecs = Vec::new();
    for entry in &header.segments {
        let body = &delta[at..at + entry.encoded_len as usize];
        let flags = body[0];
        let streams = 1 + if flags & 2 != 0 { 12 } else { 0 } + usize::from(flags & 1);
        codecs.push(body[streams + 18]);
        at += entry.encoded_len as usize;
    }
    codecs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_plan_round_trips(
        source_len in 0usize..70_000,
        target_len in 0usize..70_000,
        seed in any::<u64>(),
        word in any::<bool>(),
        window in any::<bool>(),
    ) {
        let source = bytes(source_len, seed);
        let target = bytes(target_len, seed.rotate_left(7));
        let delta = build(&source, &target, 14, seed, word, window);
        prop_assert_eq!(apply(&source, &delta).unwrap(), target);
    }
}

#[test]
fn word_diff_round_trips_nudged_floats() {
    // Perturbed little-endian f32s: the case word diff exists for.
    let source: Vec<u8> = (0..20_000)
        .flat_map(|i| (i as f32 * 0.37).sin().to_le_bytes())
        .collect();
    let target: Vec<u8> = (0..20_000)
        .flat_map(|i| ((i as f32 * 0.37).sin() * 1.003 + 1e-4).to_le_bytes())
        .collect();
    for phase in 0..4u8 {
        // Diff against the same place, split at odd lengths so words straddle operations.
        let delta = build_with(&source, &target, 14, |_, start, chunk| {
            let ops = vec![
                Op {
                    src: start,
                    diff: 7,
                    extra: 2,
                },
                Op {
                    src: start + 9,
                    diff: chunk.len() as u32 - 9,
                    extra: 0,
                },
            ];
            (ops, Some(phase), None, false)
        });
        assert_eq!(apply(&source, &delta).unwrap(), target, "phase {phase}");
    }
}

#[test]
fn no_corrupted_byte_yields_a_wrong_target() {
    let source = bytes(40_000, 11);
    let mut target = source.clone();
    target[100..200].copy_from_slice(&bytes(100, 5));
    target.extend_from_slice(&bytes(9000, 3));
    let delta = build(&source, &target, 14, 99, false, true);
    assert_eq!(apply(&source, &delta).unwrap(), target);
    // The flips below reach the zstd patch-from and the LZMA-with-dictionary segments alike.
    let codecs = extra_codecs(&delta);
    assert!(
        codecs.contains(&1) && codecs.iter().any(|c| *c == 4 || *c == 5),
        "{codecs:?}"
    );
    let mut harmless = 0;
    for i in 0..delta.len() {
        for flip in [0x01u8, 0x80] {
            let mut bad = delta.clone();
            bad[i] ^= flip;
            if let Ok(rebuilt) = apply(&source, &bad) {
                assert_eq!(
                    rebuilt, target,
                    "flipping bit {flip:#x} of byte {i} rebuilt something else"
                );
                harmless += 1;
            }
        }
    }
    // Harmless flips exist (a codec bit, an unused window offset) but are rare.
    assert!(
        harmless * 100 <= delta.len() * 2,
        "{harmless} of {} flips went unnoticed",
        delta.len() * 2
    );
}

#[test]
fn every_truncation_is_refused() {
    let source = bytes(30_000, 1);
    let target = bytes(33_000, 2);
    let delta = build(&source, &target, 14, 7, true, true);
    for len in 0..delta.len() {
        assert!(
            apply(&source, &delta[..len]).is_err(),
            "truncated to {len} bytes went unnoticed"
        );
    }
}

#[test]
fn wrong_source_is_refused_before_decoding() {
    let source = bytes(30_000, 1);
    let target = bytes(33_000, 2);
    let delta = build(&source, &target, 14, 7, false, true);
    let mut other = source.clone();
    other[0] ^= 1;
    let error = apply(&other, &delta).unwrap_err();
    assert!(matches!(error, DeltaError::WrongSource { .. }), "{error}");
    assert!(error.to_string().contains("wrong source"), "{error}");
}

#[test]
fn header_errors_name_the_problem() {
    let source = bytes(1000, 1);
    let target = bytes(50_000, 2);
    let delta = build(&source, &target, 14, 7, false, false);
    let text = |bytes: &[u8]| DeltaHeader::parse(bytes).unwrap_err().to_string();
    assert!(text(b"GIF89a..........").contains("bad magic"));
    let mut version = delta.clone();
    version[8] = 9;
    assert!(text(&version).contains("version 9 is not supported"));
    let mut huge = delta.clone();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(text(&huge).contains("exceeds the limit"));
    let mut log = delta.clone();
    log[96] = 40;
    assert!(text(&log).contains("segment size 2^40"));
    let mut cv = delta.clone();
    cv[110] ^= 1;
    assert!(text(&cv).contains("do not add up to the target id"));
    assert!(text(&delta[..50]).contains("truncated"));
}

#[test]
fn empty_target_has_no_segments() {
    let source = bytes(1000, 1);
    let delta = build(&source, &[], 14, 1, false, false);
    assert_eq!(apply(&source, &delta).unwrap(), Vec::<u8>::new());
}

/// Found by reading the decoder while fuzzing: an operation whose extra length wraps the running
/// total (2^64 - S) must be refused, not reach a slice with a wrapped bound.
#[test]
fn an_operation_length_that_would_wrap_is_refused() {
    let delta = hex::decode(concat!(
        "444d44454c544100010000008c0000001bff9d6e2428d34c57701a9ec40dd809e2e9468b0d4548997ec57376d3",
        "71515600040000000000009760b4a50a168ad09f08808fd189579282949d66c67131bedb48dc33fd223d6bdc05",
        "0000000000000e000000010000004b0000009760b4a50a168ad09f08808fd189579282949d66c67131bedb48dc",
        "33fd223d6b0000140000001d00000000000000000000000000dc0500001200000028b52ffd0058a100000000dc",
        "0b0000a4f4ffffffffffffff010000dc0b28b52ffd00584d00001000000100d7fd000b",
    ))
    .unwrap();
    let (header, len) = DeltaHeader::parse(&delta).unwrap();
    let source = vec![0u8; header.source_len as usize];
    let mut out = Vec::new();
    let error = SegmentDecoder::new()
        .decode(&header, 0, &delta[len..], &&source[..], &mut out)
        .unwrap_err();
    assert!(
        error.to_string().contains("writes past the segment"),
        "{error}"
    );
    assert!(out.is_empty());
}
