//! What the delta tests share.

use delta::{DeltaError, DeltaHeader, SegmentDecoder};
use proto::BlobId;

/// Applies a delta in memory the way a vehicle does: header, source check, each segment
/// decoded with a fresh decoder (which finds the source's references itself) and checked.
pub(crate) fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let (header, header_len) = DeltaHeader::parse(delta)?;
    header.check_source(BlobId::of(source), source.len() as u64)?;
    if delta.len() as u64 != header.delta_len() {
        return Err(DeltaError::Truncated("segments"));
    }
    let mut decoder = SegmentDecoder::new();
    let mut out = Vec::new();
    let mut segment = Vec::new();
    let mut at = header_len;
    for (i, entry) in header.segments.iter().enumerate() {
        let body = &delta[at..at + entry.encoded_len as usize];
        decoder.decode(&header, i, body, &source, &mut segment)?;
        out.extend_from_slice(&segment);
        at += entry.encoded_len as usize;
    }
    Ok(out)
}
