//! Round trips at depotmesh's 16 KiB chunk groups: whole blobs and arbitrary group subsets over
//! sizes 0 … 4 MiB and every boundary size, and corruption of any byte of a response, which must
//! be rejected with an error naming the chunk group (or the groups whose proof) it hit.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::ops::Range;

use proptest::prelude::*;
use proto::bao::{
    self, ExpectedSize, Layout, Missing, Outboard, RangeVerifier, VerifiedReader, VerifyError,
};
use proto::{BlobId, ChunkGroup, ChunkGroupRanges};

const LAYOUT: Layout = Layout::MESH;
const GROUP: u64 = 16 * 1024;

fn blob_bytes(len: usize, seed: u64) -> Vec<u8> {
    // A cheap xorshift stream: incompressible-looking, reproducible from the seed.
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn encode(data: &[u8], outboard: &Outboard, groups: &ChunkGroupRanges) -> Vec<u8> {
    let mut encoded = Vec::new();
    let written = bao::encode_ranges(data, outboard, groups, &mut encoded).unwrap();
    assert_eq!(written, encoded.len() as u64);
    assert_eq!(written, LAYOUT.response_size(data.len() as u64, groups));
    encoded
}

/// Verifies a response and checks every group it yields against the original bytes; returns
/// the groups yielded.
fn decode_and_compare(
    data: &[u8],
    blob: BlobId,
    groups: &ChunkGroupRanges,
    encoded: &[u8],
) -> Result<ChunkGroupRanges, VerifyError> {
    let reader = VerifiedReader::new(
        blob,
        LAYOUT,
        groups,
        ExpectedSize::Exactly(data.len() as u64),
        encoded,
    )?;
    let mut seen = ChunkGroupRanges::empty();
    reader.for_each_group(|offset, bytes| {
        let start = offset as usize;
        assert_eq!(bytes, &data[start..start + bytes.len()]);
        let group = offset / GROUP;
        seen.insert(group..group + 1);
        Ok(())
    })?;
    Ok(seen)
}

/// Which item of a clean response each byte belongs to, and what a failure there must name.
fn item_map(
    blob: BlobId,
    size: u64,
    groups: &ChunkGroupRanges,
    encoded: &[u8],
) -> Vec<(Range<usize>, Missing)> {
    let mut verifier = RangeVerifier::new(blob, LAYOUT, size, groups);
    let mut offset = bao::SIZE_HEADER_BYTES;
    let mut map = vec![(0..offset, Missing::SizeHeader)];
    while let Some(len) = verifier.next_item_len() {
        let missing = verifier.missing().expect("an item is owed");
        if map.len() == 1 {
            if let Missing::Proof(groups) = &missing {
                // The first proof in any response is the root's: it must cover the whole blob.
                assert_eq!(*groups, 0..LAYOUT.group_count(size));
            }
        }
        verifier
            .verify_next(&encoded[offset..offset + len])
            .unwrap();
        map.push((offset..offset + len, missing));
        offset += len;
    }
    assert!(verifier.is_complete());
    assert_eq!(offset, encoded.len());
    map
}

/// Flips `offset` and checks the error names exactly what it hit.
fn assert_corruption_named(
    data: &[u8],
    blob: BlobId,
    groups: &ChunkGroupRanges,
    encoded: &[u8],
    map: &[(Range<usize>, Missing)],
    offset: usize,
) {
    let mut corrupt = encoded.to_vec();
    corrupt[offset] ^= 0x01;
    let error = decode_and_compare(data, blob, groups, &corrupt)
        .expect_err("a corrupted response must be rejected");
    let (_, hit) = map
        .iter()
        .find(|(range, _)| range.contains(&offset))
        .expect("offset is inside the response");
    match (hit, &error) {
        (Missing::SizeHeader, VerifyError::SizeMismatch { .. }) => {}
        (Missing::Group(expected), VerifyError::ChunkGroupMismatch { group, .. }) => {
            assert_eq!(group, expected, "byte {offset}: {error}");
            assert!(
                error
                    .to_string()
                    .contains(&format!("chunk group {} ", expected.0))
            );
        }
        (Missing::Proof(expected), VerifyError::ProofMismatch { groups, .. }) => {
            assert_eq!(groups, expected, "byte {offset}: {error}");
        }
        _ => panic!("byte {offset} in {hit:?} gave {error}"),
    }
}

const BOUNDARY_SIZES: &[u64] = &[
    0,
    1,
    1023,
    1024,
    1025,
    GROUP - 1,
    GROUP,
    GROUP + 1,
    2 * GROUP - 1,
    2 * GROUP,
    2 * GROUP + 1,
    3 * GROUP,
    4 * GROUP + 1024,
    (1 << 20) - 1,
    1 << 20,
    (1 << 20) + 1,
    (4 << 20) - 1,
    4 << 20,
];

#[test]
fn boundary_sizes_whole_blob_and_every_single_group() {
    for &size in BOUNDARY_SIZES {
        let data = blob_bytes(size as usize, size);
        let outboard = Outboard::create(&data, LAYOUT);
        let blob = outboard.id();
        assert_eq!(blob, BlobId::of(&data));
        let all = LAYOUT.all_groups(size);
        let encoded = encode(&data, &outboard, &all);
        assert_eq!(
            decode_and_compare(&data, blob, &all, &encoded).unwrap(),
            all
        );
        // Wire overhead of a whole blob: ≤ 0.5 % once the blob spans a few groups.
        if size >= 4 * GROUP {
            let overhead = (encoded.len() as u64 - size) as f64 / size as f64;
            assert!(overhead <= 0.005, "size {size}: overhead {overhead}");
        }
        for group in 0..LAYOUT.group_count(size) {
            let one = ChunkGroupRanges::from(group..group + 1);
            let encoded = encode(&data, &outboard, &one);
            assert_eq!(
                decode_and_compare(&data, blob, &one, &encoded).unwrap(),
                one
            );
        }
    }
}

#[test]
fn requests_past_the_end_are_answered_with_the_last_group() {
    let size = 5 * GROUP + 7;
    let data = blob_bytes(size as usize, 3);
    let outboard = Outboard::create(&data, LAYOUT);
    let past = ChunkGroupRanges::from(9..20);
    let encoded = encode(&data, &outboard, &past);
    let seen = decode_and_compare(&data, outboard.id(), &past, &encoded).unwrap();
    assert_eq!(seen, ChunkGroupRanges::from(5..6));
}

#[test]
fn every_corrupted_byte_is_rejected_naming_its_group_or_proof() {
    // Several groups, a partial tail group and a sparse request, so the response holds proofs at
    // several levels, full groups and a short group.
    let size = 6 * GROUP + 1000;
    let data = blob_bytes(size as usize, 11);
    let outboard = Outboard::create(&data, LAYOUT);
    let blob = outboard.id();
    for groups in [
        LAYOUT.all_groups(size),
        [1..2, 4..7].into_iter().collect::<ChunkGroupRanges>(),
    ] {
        let encoded = encode(&data, &outboard, &groups);
        let map = item_map(blob, size, &groups, &encoded);
        for offset in 0..encoded.len() {
            assert_corruption_named(&data, blob, &groups, &encoded, &map, offset);
        }
    }
}

#[test]
fn truncated_response_names_what_is_missing() {
    let size = 3 * GROUP;
    let data = blob_bytes(size as usize, 5);
    let outboard = Outboard::create(&data, LAYOUT);
    let groups = LAYOUT.all_groups(size);
    let encoded = encode(&data, &outboard, &groups);
    let cut = encoded.len() - 10;
    let error = decode_and_compare(&data, outboard.id(), &groups, &encoded[..cut]).unwrap_err();
    assert!(
        matches!(
            error,
            VerifyError::Truncated {
                missing: Missing::Group(ChunkGroup(2)),
                ..
            }
        ),
        "{error}"
    );
    let error = decode_and_compare(&data, outboard.id(), &groups, &encoded[..3]).unwrap_err();
    assert!(matches!(
        error,
        VerifyError::Truncated {
            missing: Missing::SizeHeader,
            ..
        }
    ));
}

#[test]
fn a_response_for_another_blob_is_rejected() {
    let data = blob_bytes(40_000, 1);
    let other = blob_bytes(40_000, 2);
    let outboard = Outboard::create(&other, LAYOUT);
    let groups = LAYOUT.all_groups(40_000);
    let encoded = encode(&other, &outboard, &groups);
    let error = decode_and_compare(&data, BlobId::of(&data), &groups, &encoded).unwrap_err();
    assert!(error.is_peer_misbehaviour(), "{error}");
}

fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=(4 << 20),
        proptest::sample::select(BOUNDARY_SIZES.to_vec()),
        (1u64..=256).prop_map(|groups| groups * GROUP),
        (1u64..=256).prop_map(|groups| groups * GROUP + 1),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_sizes_and_group_subsets_round_trip(
        size in size_strategy(),
        picks in proptest::collection::vec((0u64..300, 1u64..40), 0..6),
        seed in any::<u64>(),
        flip_at in any::<prop::sample::Index>(),
    ) {
        let data = blob_bytes(size as usize, seed);
        let outboard = Outboard::create(&data, LAYOUT);
        let blob = outboard.id();
        let count = LAYOUT.group_count(size);
        let groups: ChunkGroupRanges = picks
            .iter()
            .map(|&(start, len)| start % count..(start % count + len).min(count))
            .collect();
        let encoded = encode(&data, &outboard, &groups);
        let seen = decode_and_compare(&data, blob, &groups, &encoded).unwrap();
        prop_assert_eq!(seen, groups.clone());

        let map = item_map(blob, size, &groups, &encoded);
        let offset = flip_at.index(encoded.len());
        assert_corruption_named(&data, blob, &groups, &encoded, &map, offset);
    }
}
