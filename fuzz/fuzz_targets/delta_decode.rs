//! Any bytes as a delta: the header parser and the segment decoder must return an error or a
//! checked segment, never panic, and never allocate beyond the format's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use delta::{DeltaHeader, SegmentDecoder};

fuzz_target!(|data: &[u8]| {
    let Ok((header, header_len)) = DeltaHeader::parse(data) else {
        return;
    };
    // A small source: reads past it fail cleanly, as a short bank would.
    let source: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
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
