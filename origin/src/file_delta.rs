//! `origin delta`: a delta between two image files, outside any repository, and the summary the
//! command prints.

use std::path::Path;

use serde_json::{Map, Value, json};

/// A segment size that is not a power of two from 16 to 16384 KiB.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--segment-kib {0} must be a power of two from 16 to 16384")]
pub struct SegmentSizeError(pub u64);

/// The options of a delta with segments of `segment_kib` KiB, streams at zstd `level`, on
/// `threads` workers (default: every core), with or without the LZMA-with-source-dictionary
/// pass.
pub fn options(
    segment_kib: u64,
    level: i32,
    threads: Option<usize>,
    lzma_dict: bool,
) -> Result<delta::DeltaOptions, SegmentSizeError> {
    if !segment_kib.is_power_of_two() || !(16..=16384).contains(&segment_kib) {
        return Err(SegmentSizeError(segment_kib));
    }
    let segment_log = u8::try_from(segment_kib.trailing_zeros() + 10)
        .map_err(|_| SegmentSizeError(segment_kib))?;
    let mut options = delta::DeltaOptions {
        segment_log,
        level,
        lzma_dict,
        ..Default::default()
    };
    if let Some(threads) = threads {
        options.threads = threads.max(1);
    }
    Ok(options)
}

/// Builds the delta that rebuilds `to` from `from` into `out` (written beside it, fsynced, then
/// renamed); returns its summary: sizes, blob ids, each segment method's count and the time.
pub fn build(
    from: &Path,
    to: &Path,
    out: &Path,
    options: &delta::DeltaOptions,
) -> anyhow::Result<Value> {
    let summary = delta::create(from, to, out, options)?;
    let methods: Map<String, Value> = summary
        .methods
        .iter()
        .map(|(method, n)| (format!("{method:?}"), Value::from(*n)))
        .collect();
    Ok(json!({
        "delta": out.display().to_string(),
        "delta_blob": summary.delta.to_string(),
        "delta_bytes": summary.delta_len,
        "source": summary.source.0.to_string(),
        "source_bytes": summary.source.1,
        "target": summary.target.0.to_string(),
        "target_bytes": summary.target.1,
        "percent_of_target": 100.0 * summary.delta_len as f64 / summary.target.1.max(1) as f64,
        "segments": methods,
        "lzma_dict_segments": summary.lzma_dict_segments,
        "seconds": summary.seconds,
    }))
}
