//! A bao response from a peer. Two modes, chosen by the first byte:
//! - raw: the rest is the response for a request chosen by the next bytes;
//! - patched: a valid response with XOR patches applied at chosen offsets.
//!
//! Verification never panics; every group it yields equals the real blob's bytes; and a valid
//! response in which any byte changed is always rejected.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use proto::ChunkGroupRanges;
use proto::bao::{self, ExpectedSize, Layout, Outboard, VerifiedReader};

const SIZE: usize = 5 * 16 * 1024 + 777;

fn blob() -> &'static (Vec<u8>, Outboard) {
    static BLOB: OnceLock<(Vec<u8>, Outboard)> = OnceLock::new();
    BLOB.get_or_init(|| {
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 253) as u8).collect();
        let outboard = Outboard::create(&data, Layout::MESH);
        (data, outboard)
    })
}

fn groups_from(selector: u8) -> ChunkGroupRanges {
    // Bit i selects group i (6 groups), bit 7 asks past the end.
    let mut groups = ChunkGroupRanges::empty();
    for group in 0..7u64 {
        if selector & (1 << group) != 0 {
            groups.insert(group..group + 1);
        }
    }
    if selector & 0x80 != 0 {
        groups.insert(40..45);
    }
    groups
}

fn verify(stream: &[u8], groups: &ChunkGroupRanges, expected: ExpectedSize) -> Result<(), String> {
    let (data, outboard) = blob();
    let reader = VerifiedReader::new(outboard.id(), Layout::MESH, groups, expected, stream)
        .map_err(|e| e.to_string())?;
    reader
        .for_each_group(|offset, bytes| {
            let start = offset as usize;
            assert_eq!(bytes, &data[start..start + bytes.len()], "verified bytes differ");
            Ok(())
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fuzz_target!(|input: &[u8]| {
    let [mode, selector, rest @ ..] = input else {
        return;
    };
    let groups = groups_from(*selector);
    if mode & 1 == 0 {
        let expected = if mode & 2 == 0 {
            ExpectedSize::Exactly(SIZE as u64)
        } else {
            ExpectedSize::AtMost(u64::MAX)
        };
        let _ = verify(rest, &groups, expected);
        return;
    }
    let (data, outboard) = blob();
    let mut original = Vec::new();
    bao::encode_ranges(&data[..], outboard, &groups, &mut original).expect("encode own blob");
    let mut stream = original.clone();
    for patch in rest.chunks_exact(3) {
        let offset = usize::from(u16::from_le_bytes([patch[0], patch[1]])) % stream.len();
        stream[offset] ^= patch[2];
    }
    let result = verify(&stream, &groups, ExpectedSize::Exactly(SIZE as u64));
    if stream == original {
        assert!(result.is_ok(), "the valid response was rejected: {result:?}");
    } else {
        assert!(result.is_err(), "a changed response was accepted");
    }
});
