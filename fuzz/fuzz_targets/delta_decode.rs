//! Any bytes as a delta: the header parser and the segment decoder must return an error or a
//! checked segment, never panic, and never allocate beyond the format's limits.
//!
//! The source is a small x86-64 ELF executable (calls, RIP-relative loads and a pointer table)
//! so that segments which correct references against a header's model reach the reference
//! finder and the correction of diff runs, not only the "not an ELF image" error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use delta::{DeltaHeader, SegmentDecoder};

/// 64 KiB: ELF header and two loads (code from offset 0, a pointer table at 0xc000), code of
/// `call rel32`, `lea rax, [rip + d]` and `mov eax, imm32` from 0x1000.
fn source() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let mut image = vec![0xccu8; 65_536];
    let mut at = 0x1000usize;
    let mut k = 0u32;
    while at + 7 < 0xc000 {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        match k >> 29 {
            0 | 1 => {
                image[at] = 0xe8;
                let to = 0x1000 + (k as usize >> 7) % 0xa000;
                let rel = (to as i64 - (at as i64 + 5)) as i32;
                image[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
                at += 5;
            }
            2 => {
                image[at..at + 3].copy_from_slice(&[0x48, 0x8d, 0x05]);
                let rel = (0xc000i64 - (at as i64 + 7)) as i32;
                image[at + 3..at + 7].copy_from_slice(&rel.to_le_bytes());
                at += 7;
            }
            _ => {
                image[at] = 0xb8;
                image[at + 1..at + 5].copy_from_slice(&(k >> 8).to_le_bytes());
                at += 5;
            }
        }
    }
    for (i, slot) in image[0xc000..].chunks_exact_mut(8).enumerate() {
        slot.copy_from_slice(&(BASE + 0x1000 + 64 * i as u64).to_le_bytes());
    }
    let mut h = Vec::new();
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&62u16.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(BASE + 0x1000).to_le_bytes());
    h.extend_from_slice(&64u64.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&64u16.to_le_bytes());
    h.extend_from_slice(&56u16.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&[0; 6]);
    for (flags, offset, len) in [(5u32, 0u64, 0xc000u64), (6, 0xc000, 0x4000)] {
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&offset.to_le_bytes());
        h.extend_from_slice(&(BASE + offset).to_le_bytes());
        h.extend_from_slice(&(BASE + offset).to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&0x1000u64.to_le_bytes());
    }
    image[..64].fill(0);
    image[..h.len()].copy_from_slice(&h);
    image
}

fuzz_target!(|data: &[u8]| {
    let Ok((header, header_len)) = DeltaHeader::parse(data) else {
        return;
    };
    let source = source();
    let mut decoder = SegmentDecoder::new();
    let mut out = Vec::new();
    let mut at = header_len;
    for (index, entry) in header.segments.iter().enumerate() {
        let Some(body) = data.get(at..at.saturating_add(entry.encoded_len as usize)) else {
            return;
        };
        let _ = decoder.decode(&header, index, body, &source, &mut out);
        at += entry.encoded_len as usize;
    }
});
