//! proto against official test vectors from outside the project (`../shared/vectors`): BLAKE3's
//! 35 cases and bao's encode / outboard / slice cases, every corruption offset included.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;

use proto::BlobId;
use proto::bao::{self, ExpectedSize, Layout, Outboard, VerifiedReader, VerifyError};
use serde_json::Value;

fn vectors_dir() -> PathBuf {
    match std::env::var_os("DEPOTMESH_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    }
}

fn load(relative: &str) -> Value {
    let path = vectors_dir().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "test vectors are required at {} ({error}); set DEPOTMESH_VECTORS to their folder",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn hex_of(value: &Value) -> &str {
    value.as_str().expect("hex string")
}

fn as_u64(value: &Value) -> u64 {
    value.as_u64().expect("integer")
}

fn usize_list(value: &Value) -> Vec<usize> {
    value
        .as_array()
        .expect("array")
        .iter()
        .map(|v| as_u64(v) as usize)
        .collect()
}

/// BLAKE3's vector input: bytes 0, 1, …, 250, 0, 1, …
fn blake3_input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// bao's vector input: a little-endian u32 counter starting at 1, cut to `len` bytes.
fn bao_input(len: usize) -> Vec<u8> {
    (1u32..).flat_map(u32::to_le_bytes).take(len).collect()
}

#[test]
fn blake3_official_vectors_all_35_cases() {
    let vectors = load("blake3/test_vectors.json");
    let key: [u8; 32] = vectors["key"]
        .as_str()
        .expect("key")
        .as_bytes()
        .try_into()
        .expect("32-byte key");
    let context = vectors["context_string"].as_str().expect("context");
    let cases = vectors["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 35);
    for case in cases {
        let input = blake3_input(as_u64(&case["input_len"]) as usize);
        let xof = |mut hasher: blake3::Hasher, expected_hex: &str| {
            let mut out = vec![0u8; expected_hex.len() / 2];
            hasher.update(&input);
            hasher.finalize_xof().fill(&mut out);
            assert_eq!(hex::encode(&out), expected_hex, "input_len {}", input.len());
            // The default-length output is the prefix of the extended output, and is the id.
            assert_eq!(hasher.finalize().to_hex().as_str(), &expected_hex[..64]);
        };
        xof(blake3::Hasher::new(), hex_of(&case["hash"]));
        xof(blake3::Hasher::new_keyed(&key), hex_of(&case["keyed_hash"]));
        xof(
            blake3::Hasher::new_derive_key(context),
            hex_of(&case["derive_key"]),
        );
        assert_eq!(BlobId::of(&input).to_string(), &hex_of(&case["hash"])[..64]);
    }
}

#[test]
fn bao_hash_vectors_match_our_root_at_every_group_size() {
    let vectors = load("bao/test_vectors.json");
    for case in vectors["hash"].as_array().expect("hash cases") {
        let input = bao_input(as_u64(&case["input_len"]) as usize);
        let expected = hex_of(&case["bao_hash"]);
        for layout in [Layout::BAO_STANDARD, Layout::MESH] {
            let outboard = Outboard::create(&input, layout);
            assert_eq!(outboard.id().to_string(), expected);
            let from_reader =
                Outboard::create_from_reader(&input[..], input.len() as u64, layout).unwrap();
            assert_eq!(from_reader.id(), outboard.id());
            assert_eq!(from_reader.data(), outboard.data());
        }
    }
}

/// Verifies a whole response with the size taken from its header, as a bao decoder does.
fn decode_all(
    blob: BlobId,
    layout: Layout,
    groups: &proto::ChunkGroupRanges,
    encoded: &[u8],
) -> Result<Vec<(u64, Vec<u8>)>, VerifyError> {
    let reader = VerifiedReader::new(
        blob,
        layout,
        groups,
        ExpectedSize::AtMost(u64::MAX),
        encoded,
    )?;
    let mut pieces = Vec::new();
    reader.for_each_group(|offset, bytes| {
        pieces.push((offset, bytes.to_vec()));
        Ok(())
    })?;
    Ok(pieces)
}

fn flip(bytes: &[u8], offset: usize) -> Vec<u8> {
    let mut corrupt = bytes.to_vec();
    corrupt[offset] ^= 1;
    corrupt
}

#[test]
fn bao_encode_vectors_and_every_corruption() {
    let vectors = load("bao/test_vectors.json");
    let mut corruptions = 0;
    for case in vectors["encode"].as_array().expect("encode cases") {
        let input = bao_input(as_u64(&case["input_len"]) as usize);
        let layout = Layout::BAO_STANDARD;
        let outboard = Outboard::create(&input, layout);
        let blob = outboard.id();
        assert_eq!(blob.to_string(), hex_of(&case["bao_hash"]));
        let groups = layout.all_groups(input.len() as u64);
        let mut encoded = Vec::new();
        bao::encode_ranges(&input[..], &outboard, &groups, &mut encoded).unwrap();
        assert_eq!(encoded.len() as u64, as_u64(&case["output_len"]));
        assert_eq!(
            blake3::hash(&encoded).to_hex().as_str(),
            hex_of(&case["encoded_blake3"])
        );
        let decoded: Vec<u8> = decode_all(blob, layout, &groups, &encoded)
            .unwrap()
            .into_iter()
            .flat_map(|(_, bytes)| bytes)
            .collect();
        assert_eq!(decoded, input);
        for offset in usize_list(&case["corruptions"]) {
            let result = decode_all(blob, layout, &groups, &flip(&encoded, offset));
            assert!(
                result.is_err(),
                "input_len {} corruption at {offset} was accepted",
                input.len()
            );
            corruptions += 1;
        }
    }
    assert_eq!(corruptions, 93);
}

#[test]
fn bao_outboard_vectors_and_every_corruption() {
    let vectors = load("bao/test_vectors.json");
    let layout = Layout::BAO_STANDARD;
    let mut corruptions = 0;
    for case in vectors["outboard"].as_array().expect("outboard cases") {
        let input = bao_input(as_u64(&case["input_len"]) as usize);
        let outboard = Outboard::create(&input, layout);
        let blob = outboard.id();
        // bao's outboard encoding is the 8-byte size followed by our pre-order pairs.
        let mut bao_outboard = (input.len() as u64).to_le_bytes().to_vec();
        bao_outboard.extend_from_slice(outboard.data());
        assert_eq!(bao_outboard.len() as u64, as_u64(&case["output_len"]));
        assert_eq!(
            blake3::hash(&bao_outboard).to_hex().as_str(),
            hex_of(&case["encoded_blake3"])
        );

        // Decoding from an outboard: combine the (possibly corrupt) outboard and input without
        // checking, as a lying peer would, then verify the stream.
        let decode_from = |bao_outboard: &[u8], input: &[u8]| -> Result<(), String> {
            let size = u64::from_le_bytes(bao_outboard[..8].try_into().expect("8 bytes"));
            let untrusted = Outboard::from_parts(blob, size, layout, bao_outboard[8..].to_vec());
            let groups = layout.all_groups(size);
            let mut stream = size.to_le_bytes().to_vec();
            let ranges = bao_tree::ChunkRanges::all();
            bao_tree::io::sync::encode_ranges(input, &untrusted, &ranges, &mut stream)
                .map_err(|error| format!("unreadable: {error}"))?;
            decode_all(blob, layout, &groups, &stream)
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        decode_from(&bao_outboard, &input).unwrap();
        for offset in usize_list(&case["outboard_corruptions"]) {
            assert!(
                decode_from(&flip(&bao_outboard, offset), &input).is_err(),
                "input_len {} outboard corruption at {offset} was accepted",
                input.len()
            );
            corruptions += 1;
        }
        for offset in usize_list(&case["input_corruptions"]) {
            let error = decode_from(&bao_outboard, &flip(&input, offset)).unwrap_err();
            // The error names the 1 KiB group the flipped byte is in.
            let group = offset / 1024;
            assert!(
                error.contains(&format!("chunk group {group} ")),
                "input_len {} corruption at {offset}: {error}",
                input.len()
            );
            corruptions += 1;
        }
    }
    assert_eq!(corruptions, 93);
}

#[test]
fn bao_slice_vectors_and_every_corruption() {
    let vectors = load("bao/test_vectors.json");
    let layout = Layout::BAO_STANDARD;
    let (mut slices, mut corruptions) = (0, 0);
    for case in vectors["slice"].as_array().expect("slice cases") {
        let input = bao_input(as_u64(&case["input_len"]) as usize);
        let outboard = Outboard::create(&input, layout);
        let blob = outboard.id();
        for slice in case["slices"].as_array().expect("slices") {
            let (start, len) = (as_u64(&slice["start"]), as_u64(&slice["len"]));
            let groups = layout.groups_for_bytes(start, len);
            let mut encoded = Vec::new();
            bao::encode_ranges(&input[..], &outboard, &groups, &mut encoded).unwrap();
            let what = format!("input_len {} slice {start}+{len}", input.len());
            assert_eq!(encoded.len() as u64, as_u64(&slice["output_len"]), "{what}");
            assert_eq!(
                blake3::hash(&encoded).to_hex().as_str(),
                hex_of(&slice["output_blake3"]),
                "{what}"
            );
            for (offset, bytes) in decode_all(blob, layout, &groups, &encoded).unwrap() {
                let offset = offset as usize;
                assert_eq!(bytes, &input[offset..offset + bytes.len()], "{what}");
            }
            for offset in usize_list(&slice["corruptions"]) {
                assert!(
                    decode_all(blob, layout, &groups, &flip(&encoded, offset)).is_err(),
                    "{what}: corruption at {offset} was accepted"
                );
                corruptions += 1;
            }
            slices += 1;
        }
    }
    assert_eq!((slices, corruptions), (222, 876));
}
