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
/// pass, and trying every codec on each finalist when `exhaustive`.
pub fn options(
    segment_kib: u64,
    level: i32,
    threads: Option<usize>,
    lzma_dict: bool,
    exhaustive: bool,
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
        exhaustive,
        ..Default::default()
    };
    if let Some(threads) = threads {
        options.threads = threads.max(1);
    }
    Ok(options)
}

/// A progress callback for [`delta::create_with_progress`] that, when standard error is a
/// terminal, keeps one line there, headed `name`, up to date: segments done, megabytes, rate
/// and time left. Elsewhere (a log, a pipe) it prints nothing.
pub fn terminal_progress(name: String) -> impl Fn(delta::CreateProgress) + Sync {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    move |p: delta::CreateProgress| {
        if !terminal {
            return;
        }
        let eta = p
            .eta_seconds()
            .map_or_else(String::new, |s| format!(", {s:.0} s left"));
        let end = if p.segments_done == p.segments {
            "\n"
        } else {
            ""
        };
        let mut err = std::io::stderr().lock();
        // A progress line that cannot be written is not worth failing the delta for.
        let _ = write!(
            err,
            "\r\x1b[K{name}: segment {}/{}, {:.1}/{:.1} MB, {:.2} MB/s{eta}{end}",
            p.segments_done,
            p.segments,
            p.bytes_done as f64 / 1e6,
            p.target_len as f64 / 1e6,
            p.bytes_per_second() / 1e6,
        );
        let _ = err.flush();
    }
}

/// Builds the delta that rebuilds `to` from `from` into `out` (written beside it, fsynced, then
/// renamed); returns its summary: sizes, blob ids, each segment method's count and the time.
pub fn build(
    from: &Path,
    to: &Path,
    out: &Path,
    options: &delta::DeltaOptions,
) -> anyhow::Result<Value> {
    let summary = delta::create_with_progress(
        from,
        to,
        out,
        options,
        &terminal_progress(out.display().to_string()),
    )?;
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
        "references": summary.references.map(|(found, map)| json!({
            "found_in_source": found,
            "address_map_entries": map,
            "corrected_segments": summary.corrected_segments,
        })),
        "workers": summary.workers,
        "seconds": summary.seconds,
    }))
}
