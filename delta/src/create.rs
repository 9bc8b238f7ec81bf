//! Building deltas: for each target segment, the smallest of several encodings in the format of
//! this crate.
//!
//! Candidates per segment:
//!
//! - **patch-from**: the whole segment in the extra stream, compressed against a source window
//!   of up to 64 MiB (zstd's `--patch-from` idea, segment by segment);
//! - **bsdiff**: operations from a suffix-array matcher over the source (Percival's construction:
//!   exact matches extended both ways while at least half the bytes agree, the rest as diff and
//!   extra), with the extra stream *also* compressed against the source window, so bytes the
//!   matcher left as "new" still find short matches in the source;
//! - **hybrid**: the bsdiff operations with their poor diff runs turned into extra bytes;
//! - **aligned**: the bsdiff operations with every gap between two matches rebuilt as a diff
//!   against the source where the previous match pointed (not as extra), in word mode: the shape of
//!   retrained weights (same layout, every value nudged), where byte-wise matching finds nothing.
//!
//! How a segment is built, so that the whole costs about what one `zstd -22 --patch-from` does:
//!
//! 1. the source window is indexed once (its suffix array; two halves on two threads from
//!    16 MiB on), and the segment matched against it in pieces on parallel threads, striding
//!    through long stretches without matches;
//! 2. every candidate that can win is *estimated*: its streams at zstd level 6, the extra stream
//!    against the window (through the x86 converter for x86 code), a fraction of a second each;
//! 3. the best estimate, and a runner-up of the other kind (patch-from against matcher
//!    operations) within 3 %, are *encoded* with the codecs that win in practice
//!    ([`Effort::Chosen`]): LZMA for large diff streams, one LZMA try with the window as
//!    dictionary for the extra stream, on two threads. [`DeltaOptions::exhaustive`] tries every
//!    codec on the same finalists instead (E3 esbuild: 0.3 % smaller, 2.3× the time to encode
//!    them).
//!
//! Every candidate is decoded again and checked against the target's hash tree before it can be
//! chosen, so a creator bug cannot ship a delta that does not apply.
//!
//! Memory: the source is matched in windows of at most [`DeltaOptions::match_window`] bytes (the
//! whole source when it fits): the window, its suffix array (4 bytes per byte) and the filter
//! of its 8-byte strings (at most 2 bytes per byte), then per
//! worker one segment of the target, its streams, and one compressor's state — LZMA's with the
//! window as dictionary is the largest (B1 biome, a 46 MB source: 861 MiB peak on two
//! workers). A 2 GiB image is matched in two overlapping 1 GiB windows.
//! [`DeltaOptions::memory_budget`] caps the workers by [`memory_plan`]: the window at 7 bytes
//! per source byte, each worker at [`WORKER_BYTES_PER_SEGMENT_BYTE`] per segment byte and
//! [`WORKER_BYTES_PER_WINDOW_BYTE`] per byte of the window it compresses against.
//!
//! Segments are taken by the workers one after another as they finish, and written in order as
//! soon as those before them are; a worker left without a segment lends its core to a segment
//! with two finalists, which are then encoded at once.
//!
//! Crates: `libsais` (bindings to Ilya Grebnov's libsais, the fastest suffix-array construction
//! published, single-threaded per part: its OpenMP build would link libgomp into the vehicle's
//! binary too) and `zstd` (the reference library: the format's streams are
//! zstd frames so that any zstd can inspect them).

// The matcher works in signed offsets inside one window (under 2^31 bytes) and one segment (at
// most 16 MiB), as Percival's algorithm is written; every cast here is of a value in that range.
#![allow(clippy::cast_possible_truncation)]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use proto::{BlobId, ReadAt};

use crate::format::Codec;
use crate::format::{
    DeltaError, DeltaHeader, FIXED_HEADER_LEN, MAX_HEADER_LEN, MAX_REF_WINDOW, MAX_SEGMENT_LOG,
    MIN_SEGMENT_LOG, SEGMENT_ENTRY_LEN, SegmentEntry,
};
use crate::refs::{Correction, Layout, MAX_MODEL_SOURCE, ReferenceModel, References};
use crate::segment::{Effort, Op, SegmentDecoder, SegmentEncoder, SegmentPlan, SourceView};
use std::sync::Arc;

/// Why a delta could not be built. Every variant names what was wrong; nothing half-written is
/// left under the output's name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The segment size is outside the format's range.
    #[error("segment size 2^{0} is outside 2^{MIN_SEGMENT_LOG}..=2^{MAX_SEGMENT_LOG} bytes")]
    SegmentSize(u8),
    /// The match window is outside 1 MiB..2 GiB.
    #[error("match window must be between 1 MiB and 2 GiB (got {0} bytes)")]
    MatchWindow(u64),
    /// The output path has no file name.
    #[error("--out must name a file")]
    OutNotAFile,
    /// The target needs more segments than one header holds.
    #[error("{0} segments are too many for one header; use a larger --segment-size")]
    TooManySegments(usize),
    /// Reading the source or target, or writing the delta, failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the file.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A length does not fit this machine's address space (or a segment table entry).
    #[error("{what} of {value} bytes is out of range")]
    OutOfRange {
        /// What was measured.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The suffix array of a source window could not be built.
    #[error("suffix array construction failed: {0}")]
    SuffixArray(libsais::LibsaisError),
    /// The memory budget cannot hold the source window, its index and one worker.
    #[error(
        "a memory budget of {} MiB cannot hold the source window, its index and one segment worker ({} MiB)",
        budget >> 20,
        needed.div_ceil(1 << 20)
    )]
    MemoryBudget {
        /// The budget, bytes.
        budget: u64,
        /// What one worker needs with the window, bytes.
        needed: u64,
    },
    /// A worker thread died.
    #[error("a segment worker panicked")]
    WorkerPanicked,
    /// A segment's result went missing.
    #[error("segment {0} was not encoded")]
    NotEncoded(usize),
    /// No candidate encoding of a segment was tried.
    #[error("segment {0}: no encoding")]
    NoEncoding(usize),
    /// Compressing a segment failed.
    #[error(transparent)]
    Encode(#[from] DeltaError),
    /// A chosen encoding does not decode to its target: a creator bug, caught before shipping.
    #[error("segment {segment} ({method:?}) does not decode to the target; this is a bug")]
    RoundTrip {
        /// Which segment.
        segment: usize,
        /// The encoding that failed.
        method: Method,
        /// How it failed.
        #[source]
        source: DeltaError,
    },
}

/// The I/O error of doing `what`, for `map_err`.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CreateError {
    let what = what.into();
    move |source| CreateError::Io { what, source }
}

/// `value` as a `T`, or the error naming `what`.
fn fits<T: TryFrom<u64>>(what: &'static str, value: u64) -> Result<T, CreateError> {
    T::try_from(value).map_err(|_| CreateError::OutOfRange { what, value })
}

/// How to build a delta.
#[derive(Clone, Debug)]
pub struct DeltaOptions {
    /// log2 of the segment size (default 23: 8 MiB).
    pub segment_log: u8,
    /// zstd level for every stream (default 22).
    pub level: i32,
    /// Largest source window matched at once (default 1 GiB).
    pub match_window: u64,
    /// Worker threads (default: the machine's cores).
    pub threads: usize,
    /// Also try LZMA with the source window as dictionary on the extra stream of promising
    /// candidates (default on): 5–15 % smaller on far pairs of compiled code, and slow (each try
    /// indexes the whole window).
    pub lzma_dict: bool,
    /// Encode each finalist with every codec that could win instead of those that win in
    /// practice (default off): a little smaller, several times slower.
    pub exhaustive: bool,
    /// At most this many bytes for the source window, its index and the workers (default: no
    /// limit): fewer segments are encoded at once when all `threads` would not fit, and a
    /// budget that cannot hold the window and one worker is refused before any work
    /// ([`memory_plan`]).
    pub memory_budget: Option<u64>,
    /// Executable-aware matching (default on): for an x86-64 or AArch64 ELF source and target
    /// of the same kind, correct the source's references in diff runs against where the
    /// release moved their targets ([`crate::refs`]). Appliers older than the reference model
    /// refuse such a delta (its header flag).
    pub references: bool,
}

/// Bytes one segment worker may hold per byte of segment (its target bytes, the streams of its
/// candidates, the check's decoded copy, zstd's and LZMA's state for them) ...
pub const WORKER_BYTES_PER_SEGMENT_BYTE: u64 = 32;

/// ... and per byte of the source window its extra stream is compressed against (at most
/// [`MAX_REF_WINDOW`]: LZMA's match finder over it). Fitted to the peak RSS of one worker
/// (`--jobs 1`, 8 MiB segments, less the window's index) on the corpus: E4 esbuild 283 MiB
/// with a 9.6 MB source, B1 biome 456 MiB with a 46.8 MB one; 30 and 5 fit both. Two workers'
/// peaks do not coincide: B1 on two workers peaked at 858 MiB against 1.2 GiB planned.
pub const WORKER_BYTES_PER_WINDOW_BYTE: u64 = 6;

/// Bytes a source window of `len` bytes holds while it is matched: the bytes, the suffix array
/// (4 bytes per byte), the filter of its 8-byte strings (at most 2 bytes per byte) and the
/// two-byte bucket table of each of its (at most two) parts.
pub fn window_memory(len: u64) -> u64 {
    len.saturating_mul(7) + ((1 << 16) + 1) * 4 * 2
}

/// How a delta's work fits its memory budget: the source window and its index, what one
/// worker may hold, and the workers that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Bytes of the largest source window and its index ([`window_memory`]).
    pub window: u64,
    /// Bytes one worker may hold ([`WORKER_BYTES_PER_SEGMENT_BYTE`] per segment byte and
    /// [`WORKER_BYTES_PER_WINDOW_BYTE`] per byte of the window it compresses against).
    pub per_worker: u64,
    /// Segments encoded at once: `threads`, or fewer under the budget.
    pub workers: usize,
}

/// The memory plan of building a delta from a `source_len`-byte source with `options`, or
/// [`CreateError::MemoryBudget`] when the budget cannot hold the window and one worker.
pub fn memory_plan(source_len: u64, options: &DeltaOptions) -> Result<MemoryPlan, CreateError> {
    let window_len = source_len.min(options.match_window);
    let window = window_memory(window_len);
    let per_worker = (1u64 << options.segment_log.min(MAX_SEGMENT_LOG))
        .saturating_mul(WORKER_BYTES_PER_SEGMENT_BYTE)
        .saturating_add(
            window_len
                .min(u64::from(MAX_REF_WINDOW))
                .saturating_mul(WORKER_BYTES_PER_WINDOW_BYTE),
        );
    let threads = options.threads.max(1);
    let workers = match options.memory_budget {
        None => threads,
        Some(budget) => {
            let fit = budget.saturating_sub(window) / per_worker;
            if fit == 0 {
                return Err(CreateError::MemoryBudget {
                    budget,
                    needed: window + per_worker,
                });
            }
            threads.min(usize::try_from(fit).unwrap_or(usize::MAX))
        }
    };
    Ok(MemoryPlan {
        window,
        per_worker,
        workers,
    })
}

impl Default for DeltaOptions {
    fn default() -> Self {
        Self {
            segment_log: 23,
            level: 22,
            match_window: 1 << 30,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            lzma_dict: true,
            exhaustive: false,
            memory_budget: None,
            references: true,
        }
    }
}

/// Which encoding a segment got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Extra stream only, against a source window.
    PatchFrom,
    /// Matcher operations, byte diff.
    Bsdiff,
    /// Matcher operations with gaps as word diffs.
    Aligned,
    /// Matcher operations whose poor diff runs became extra.
    Hybrid,
}

/// What [`create`] built.
#[derive(Clone, Debug)]
pub struct DeltaSummary {
    /// Source id and length.
    pub source: (BlobId, u64),
    /// Target id and length.
    pub target: (BlobId, u64),
    /// The delta's length in bytes.
    pub delta_len: u64,
    /// The delta's own BLAKE3.
    pub delta: BlobId,
    /// How many segments got each method.
    pub methods: Vec<(Method, usize)>,
    /// How many segments' extra streams are LZMA with the source window as dictionary.
    pub lzma_dict_segments: usize,
    /// Segments encoded at once (fewer than the threads asked for under a memory budget).
    pub workers: usize,
    /// References found in the source and address map entries, when the delta corrects
    /// references (executable-aware matching).
    pub references: Option<(u64, usize)>,
    /// Segments whose diff runs correct references.
    pub corrected_segments: usize,
    /// Wall time.
    pub seconds: f64,
}

/// How far [`create_with_progress`] is, each time a segment is done.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CreateProgress {
    /// Segments done.
    pub segments_done: usize,
    /// Segments in all.
    pub segments: usize,
    /// Target bytes in the segments done.
    pub bytes_done: u64,
    /// The target's length.
    pub target_len: u64,
    /// Seconds since the start.
    pub seconds: f64,
}

impl CreateProgress {
    /// Target bytes done per second so far.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_done as f64 / self.seconds.max(1e-3)
    }

    /// Seconds left at the rate so far, once a segment is done.
    pub fn eta_seconds(&self) -> Option<f64> {
        (self.bytes_done > 0).then(|| {
            self.target_len.saturating_sub(self.bytes_done) as f64 / self.bytes_per_second()
        })
    }
}

/// Builds the delta from `source` to `target` into `out` (written to a temporary file beside it,
/// fsynced, then renamed into place).
pub fn create(
    source: &Path,
    target: &Path,
    out: &Path,
    options: &DeltaOptions,
) -> Result<DeltaSummary, CreateError> {
    create_with_progress(source, target, out, options, &|_| {})
}

/// [`create`], calling `progress` (from a worker thread) each time a segment is done.
pub fn create_with_progress(
    source: &Path,
    target: &Path,
    out: &Path,
    options: &DeltaOptions,
    progress: &(dyn Fn(CreateProgress) + Sync),
) -> Result<DeltaSummary, CreateError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .ok_or(CreateError::OutNotAFile)?
        .to_string_lossy()
        .into_owned();
    let temp = parent.join(format!(".{name}.partial"));
    let result = create_into(source, target, out, &temp, options, progress);
    if result.is_err() {
        std::fs::remove_file(&temp).ok();
    }
    result
}

fn create_into(
    source: &Path,
    target: &Path,
    out: &Path,
    temp: &Path,
    options: &DeltaOptions,
    progress: &(dyn Fn(CreateProgress) + Sync),
) -> Result<DeltaSummary, CreateError> {
    let started = Instant::now();
    let parent = temp.parent().unwrap_or(Path::new("."));
    if !(MIN_SEGMENT_LOG..=MAX_SEGMENT_LOG).contains(&options.segment_log) {
        return Err(CreateError::SegmentSize(options.segment_log));
    }
    if options.match_window < (1 << 20) || options.match_window > (i32::MAX as u64) {
        return Err(CreateError::MatchWindow(options.match_window));
    }
    let source_file =
        File::open(source).map_err(io(format!("opening source {}", source.display())))?;
    let target_file =
        File::open(target).map_err(io(format!("opening target {}", target.display())))?;
    let source_len = file_len(&source_file, source)?;
    let target_len = file_len(&target_file, target)?;
    // Refuse a budget too small before reading a byte more.
    let workers = memory_plan(source_len, options)?.workers;
    let source_id = hash_file(&source_file).map_err(io(format!("reading {}", source.display())))?;
    let target_id = hash_file(&target_file).map_err(io(format!("reading {}", target.display())))?;

    let segment_size = 1u64 << options.segment_log;
    let count: usize = fits("the segment count", target_len.div_ceil(segment_size))?;
    let mut head = [0; 64];
    let head_len = (target_len.min(64)) as usize;
    FileExt::read_exact_at(&target_file, &mut head[..head_len], 0)
        .map_err(io(format!("reading {}", target.display())))?;
    let x86 = is_x86_code(&head[..head_len]);
    let code = is_code(&head[..head_len]);
    let done = Mutex::new((0usize, 0u64));
    let report = |i: usize| {
        let range_len = ((i as u64 + 1) * segment_size).min(target_len) - i as u64 * segment_size;
        let Ok(mut done) = done.lock() else { return };
        done.0 += 1;
        done.1 += range_len;
        progress(CreateProgress {
            segments_done: done.0,
            segments: count,
            bytes_done: done.1,
            target_len,
            seconds: started.elapsed().as_secs_f64(),
        });
    };
    let header_len = FIXED_HEADER_LEN + SEGMENT_ENTRY_LEN * count;
    if header_len > MAX_HEADER_LEN {
        return Err(CreateError::TooManySegments(count));
    }

    let writing = || io(format!("writing {}", temp.display()));
    // Read too: bodies move down when the reference model is dropped.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp)
        .map_err(io(format!("creating {}", temp.display())))?;
    file.write_all(&vec![0; header_len]).map_err(writing())?;

    let mut entries = vec![
        SegmentEntry {
            encoded_len: 0,
            cv: [0; 32]
        };
        count
    ];
    let mut methods = std::collections::BTreeMap::new();
    let mut lzma_dict_segments = 0;
    let mut corrected_segments = 0;
    let mut window: Option<Window> = None;
    // Executable-aware: the whole source in one window, matched for every segment first, so
    // that the address map the references are predicted from covers the whole image.
    let executable = if options.references
        && source_len <= MAX_MODEL_SOURCE
        && source_len <= options.match_window
    {
        executable_model(&source_file, source_len, &target_file, target_len, options)?
    } else {
        None
    };
    let executable = executable.map(|(exe, w)| {
        window = Some(w);
        exe
    });
    let model = executable
        .as_ref()
        .and_then(|e| e.model.as_ref())
        .map(|(_, m)| m.clone());
    let header_len = header_len + model.as_ref().map_or(0, |m| 4 + m.packed_bytes().len());
    if header_len > MAX_HEADER_LEN {
        return Err(CreateError::TooManySegments(count));
    }
    file.write_all(&vec![
        0;
        header_len
            - FIXED_HEADER_LEN
            - SEGMENT_ENTRY_LEN * count
    ])
    .map_err(writing())?;
    let mut index = 0;
    while index < count {
        // One window for the whole source: every segment in one batch, workers taking the next
        // as they finish (no core waits at a batch's end). Windows over a larger source: a
        // batch of `workers` segments per window position.
        let batch = if source_len <= options.match_window {
            index..count
        } else {
            index..(index + workers).min(count)
        };
        let mid = (batch.start as u64 * segment_size
            + (batch.end as u64 * segment_size).min(target_len))
            / 2;
        let wanted = window_for(mid, source_len, target_len, options.match_window);
        if window
            .as_ref()
            .is_none_or(|w| w.offset != wanted.0 || w.bytes.len() as u64 != wanted.1)
        {
            drop(window.take()); // free the old window and its suffix array first
        }
        let w = match window.take() {
            Some(w) => w,
            None => Window::load(&source_file, wanted.0, wanted.1, options.threads)?,
        };
        let w = &*window.insert(w);
        let job = Job {
            window: w,
            executable: executable.as_ref(),
            target: &target_file,
            count,
            target_len,
            source_len,
            x86,
            code,
            options,
            workers,
            progress: &report,
        };
        encode_batch(&job, batch.clone(), &mut |i,
                                                (
            body,
            method,
            dict,
            corrected,
            cv,
        )| {
            lzma_dict_segments += usize::from(dict);
            corrected_segments += usize::from(corrected);
            entries[i] = SegmentEntry {
                encoded_len: fits("a segment body", body.len() as u64)?,
                cv,
            };
            *methods.entry(method).or_insert(0) += 1;
            file.write_all(&body).map_err(writing())
        })?;
        index = batch.end;
    }
    // No segment corrects references: the model goes, and the bodies move up to the table.
    let model = model.filter(|_| corrected_segments > 0);
    let header = DeltaHeader {
        source: source_id,
        source_len,
        target: target_id,
        target_len,
        segment_log: options.segment_log,
        segments: entries,
        model,
    };
    if header.len() < header_len {
        shift_down(&file, header_len as u64, header.len() as u64).map_err(writing())?;
    }
    file.seek(SeekFrom::Start(0)).map_err(writing())?;
    file.write_all(&header.encode()).map_err(writing())?;
    file.sync_all().map_err(writing())?;
    drop(file);
    // The delta as written must parse (its hashes add up to the target).
    let reading = || io(format!("reading {}", temp.display()));
    let delta_file = File::open(temp).map_err(reading())?;
    let delta_len = file_len(&delta_file, temp)?;
    let delta = hash_file(&delta_file).map_err(reading())?;
    std::fs::rename(temp, out).map_err(io(format!("renaming into {}", out.display())))?;
    if let Ok(dir) = File::open(parent) {
        dir.sync_all().ok();
    }
    Ok(DeltaSummary {
        source: (source_id, source_len),
        target: (target_id, target_len),
        delta_len,
        delta,
        methods: methods.into_iter().collect(),
        lzma_dict_segments,
        workers,
        references: executable
            .as_ref()
            .and_then(|e| e.model.as_ref())
            .map(|(r, m)| (r.count(), m.map().len())),
        corrected_segments,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a reference predicted right saves, for weighing a reference model against its header
/// bytes: a corrected reference leaves zeros where the diff stream had 1–4 changed bytes.
const BYTES_PER_FIXED_REFERENCE: i64 = 2;

/// Moves the bytes of `file` from offset `from` to its end down to offset `to` (< `from`), and
/// cuts the file there.
fn shift_down(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        FileExt::read_exact_at(file, &mut buf[..n], at)?;
        FileExt::write_all_at(file, &buf[..n], at - (from - to))?;
        at += n as u64;
    }
    file.set_len(len - (from - to))
}

/// What executable-aware matching holds for the whole delta: the source's references, the
/// model in the header, and every segment's matches (found before any is encoded).
struct Executable {
    /// The source's references and the model, when the model is worth its header bytes.
    model: Option<(Arc<References>, ReferenceModel)>,
    /// Every segment's matches, found before any segment is encoded.
    matches: Vec<Vec<Match>>,
}

/// The reference model of a delta between two ELF images of one architecture, with every
/// segment's matches, and the source window they were matched in; `None` when either is not
/// such an image.
fn executable_model(
    source_file: &File,
    source_len: u64,
    target_file: &File,
    target_len: u64,
    options: &DeltaOptions,
) -> Result<Option<(Executable, Window)>, CreateError> {
    let (Some(old), Some(new)) = (
        Layout::parse(source_file, source_len),
        Layout::parse(target_file, target_len),
    ) else {
        return Ok(None);
    };
    if old.arch != new.arch {
        return Ok(None);
    }
    // The references are found while the window is indexed (E1 esbuild, 10 MB: ~1 s of
    // suffix sorting on one core).
    let bytes = read_window(source_file, 0, source_len)?;
    let (window, references) = std::thread::scope(|scope| {
        let references = scope.spawn(|| References::find(&bytes, source_len));
        let index = Window::index(&bytes, window_parts(bytes.len()), options.threads);
        let references = references
            .join()
            .map_err(|_| CreateError::WorkerPanicked)
            .and_then(|r| r.map_err(io("reading the source")));
        (index, references)
    });
    let ((parts, grams), references) = (window?, references?);
    let window = Window::new(0, bytes, parts, grams);
    let Some(references) = references else {
        return Ok(None);
    };
    let segment_size = 1u64 << options.segment_log;
    let read_segment = |start: u64| -> Result<Vec<u8>, CreateError> {
        let end = (start + segment_size).min(target_len);
        let mut target = vec![0; fits("a segment", end - start)?];
        FileExt::read_exact_at(target_file, &mut target, start)
            .map_err(io("reading the target"))?;
        Ok(target)
    };
    let mut matches = Vec::new();
    let mut ranges = Vec::new();
    let mut targets = Vec::new();
    let mut start = 0u64;
    while start < target_len {
        let target = read_segment(start)?;
        let found = find_matches_in_pieces(&window, &target, start, options.threads)?;
        let mut t = start;
        for m in &found {
            ranges.push((m.src, t, m.len));
            t += m.len + m.extra;
            references.each_in(m.src, m.src + m.len, |at, width| {
                let at_ = at as usize;
                if let Some(target) =
                    references.target_of(at, &window.bytes[at_..at_ + width as usize])
                {
                    targets.push(target);
                }
            });
        }
        matches.push(found);
        start += target.len() as u64;
    }
    targets.sort_unstable();
    let model = ReferenceModel::build(&old, &new, &ranges, &targets);
    // Worth its header bytes? Count the references in diff runs the model predicts right where
    // the bytes differ, less those it gets wrong where they did not differ.
    let correction = Correction {
        refs: &references,
        model: &model,
    };
    let mut fixed = 0i64;
    let mut start = 0u64;
    for found in &matches {
        let target = read_segment(start)?;
        let mut t = 0usize;
        for m in found {
            references.each_in(m.src, m.src + m.len, |at, width| {
                let (w, i) = (width as usize, (at - m.src) as usize);
                let old = &window.bytes[at as usize..at as usize + w];
                let new = &target[t + i..t + i + w];
                let mut bytes = [0u8; 8];
                bytes[..w].copy_from_slice(new);
                let predicted = correction.predict(at, old, start + (t + i) as u64);
                let right = predicted == u64::from_le_bytes(bytes);
                fixed += i64::from(right && old != new) - i64::from(!right && old == new);
            });
            t += (m.len + m.extra) as usize;
        }
        start += target.len() as u64;
    }
    let cost = model.packed_bytes().len() as i64;
    // Not worth it: the segments are encoded without, from the matches already found.
    let model = (fixed * BYTES_PER_FIXED_REFERENCE >= cost).then(|| (Arc::new(references), model));
    Ok(Some((Executable { model, matches }, window)))
}

/// Whether an image whose first bytes are `head` is x86 code: an ELF file for x86 or x86-64
/// (e_machine 3 or 62), or a PE/COFF file (MZ). Its extra streams then go through the x86
/// branch converter, which made E4 esbuild's first patch-from stream 7 % smaller with the
/// window as dictionary (2.00 MB against 2.15 MB) and E1's 20 KB extra stream 0.8 % larger.
fn is_x86_code(head: &[u8]) -> bool {
    head.starts_with(b"MZ") || matches!(elf_machine(head), Some(3 | 62))
}

/// Whether an image whose first bytes are `head` is compiled code, x86 or AArch64 (ELF
/// e_machine 183): a patch-from candidate of such code is ranked for what LZMA makes of it.
fn is_code(head: &[u8]) -> bool {
    is_x86_code(head) || elf_machine(head) == Some(183)
}

/// The e_machine of an ELF header, read in the file's byte order (EI_DATA at 5: 1 little, 2
/// big).
fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || !head.starts_with(b"\x7fELF") {
        return None;
    }
    Some(match head[5] {
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => u16::from_le_bytes([head[18], head[19]]),
    })
}

/// The source window matched for target offset `at`: the whole source when it fits, else a
/// window placed proportionally, aligned to half a window so neighbouring segments share it.
fn window_for(at: u64, source_len: u64, target_len: u64, max: u64) -> (u64, u64) {
    if source_len <= max {
        return (0, source_len);
    }
    let half = max / 2;
    let centre = (u128::from(at) * u128::from(source_len) / u128::from(target_len.max(1))) as u64;
    let start = (centre.saturating_sub(half) / half * half).min(source_len - max);
    (start, max)
}

/// A source window and its index: the suffix array of each of its parts.
struct Window {
    offset: u64,
    bytes: Vec<u8>,
    /// One part, or two halves for a window of [`SPLIT_WINDOW`] bytes or more.
    parts: Vec<Part>,
    /// Which [`GRAM`]-byte strings the window may hold.
    grams: Grams,
}

/// Bytes of the strings [`Grams`] records: a match shorter than this cannot be taken (the
/// matcher takes one longer by 8 bytes than what the current alignment already agrees on,
/// or the alignment itself).
const GRAM: usize = 8;

/// A one-hash Bloom filter of every [`GRAM`]-byte string of a window, about 8 bits per window
/// byte (1/8 filled, so one string in eight not in the window passes). The matcher searches
/// the suffix array only where the target's next bytes may be in the window: on E4 esbuild,
/// 58 % of the target's positions start 8 bytes found nowhere in the source, and each search is
/// a dozen or more cache misses.
struct Grams {
    bits: Vec<u64>,
    shift: u32,
}

impl Grams {
    fn new(bytes: &[u8]) -> Self {
        let log = (usize::BITS - bytes.len().max(1).leading_zeros() + 3).clamp(16, 33);
        let mut bits = vec![0u64; 1 << (log - 6)];
        let shift = 64 - log;
        for gram in bytes.windows(GRAM) {
            let h = Self::hash(gram, shift);
            bits[h >> 6] |= 1 << (h & 63);
        }
        Self { bits, shift }
    }

    fn hash(gram: &[u8], shift: u32) -> usize {
        let mut word = [0u8; 8];
        word.copy_from_slice(&gram[..GRAM]);
        (u64::from_le_bytes(word).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
    }

    /// Whether the window may hold `bytes`' first [`GRAM`] bytes (true when shorter).
    fn may_hold(&self, bytes: &[u8]) -> bool {
        if bytes.len() < GRAM {
            return true;
        }
        let h = Self::hash(bytes, self.shift);
        self.bits[h >> 6] & (1 << (h & 63)) != 0
    }
}

/// Windows of at least this many bytes are indexed as two halves, each with its own suffix
/// array, built on two threads: construction is the one step of a delta on a large source
/// that runs on one core while the other waits (32 MiB, `netsim yard`'s image: 2.7 s of its
/// 5.1 s). A match then cannot run across the cut; the next search after it picks up there.
/// Fixed, not by the machine's cores, so that a delta does not depend on where it was built.
const SPLIT_WINDOW: usize = 16 << 20;

/// A stretch of a window, `start..start + suffixes.len()`, and its suffix array.
struct Part {
    start: usize,
    suffixes: Vec<i32>,
    /// Where each two-byte prefix's suffixes start in `suffixes` (65 537 entries; the last is
    /// the end): a search starts inside its bucket, skipping the first dozen or more steps of
    /// the binary search, each a cache miss on a source this size.
    buckets: Vec<u32>,
}

impl Part {
    /// The index of `bytes`, found at `start` of its window.
    fn index(start: usize, bytes: &[u8]) -> Result<Self, CreateError> {
        let suffixes = if bytes.is_empty() {
            Vec::new()
        } else {
            libsais::SuffixArrayConstruction::for_text(bytes)
                .in_owned_buffer32()
                .single_threaded()
                .run()
                .map_err(CreateError::SuffixArray)?
                .into_vec()
        };
        Ok(Self {
            start,
            suffixes,
            buckets: buckets(bytes),
        })
    }
}

/// The two-byte bucket of the suffix at `p` of `bytes`; the one-byte suffix at the end sorts
/// first among those starting with its byte, so it takes that byte's bucket for a zero.
fn bucket_of(bytes: &[u8], p: usize) -> usize {
    usize::from(bytes[p]) << 8 | usize::from(bytes.get(p + 1).copied().unwrap_or(0))
}

/// The start of every two-byte bucket in the suffix array of `bytes`: each bucket's suffixes
/// sort together, so its start is the count of suffixes in the buckets before it, counted in
/// one pass over the text (walking the suffix array instead reads the text at random: 9 % of
/// `netsim yard`'s delta, on the critical path).
fn buckets(bytes: &[u8]) -> Vec<u32> {
    let mut starts = vec![0u32; (1 << 16) + 1];
    for p in 0..bytes.len() {
        starts[bucket_of(bytes, p) + 1] += 1;
    }
    for k in 1..starts.len() {
        starts[k] += starts[k - 1];
    }
    starts
}

/// `len` source bytes from `offset`.
fn read_window(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, CreateError> {
    let mut bytes = vec![0; fits("a source window", len)?];
    FileExt::read_exact_at(file, &mut bytes, offset).map_err(io("reading the source"))?;
    Ok(bytes)
}

/// How many parts a window of `len` bytes is indexed in.
fn window_parts(len: usize) -> usize {
    if len >= SPLIT_WINDOW { 2 } else { 1 }
}

impl Window {
    /// The window of `len` source bytes at `offset`, indexed on up to `threads` threads.
    fn load(file: &File, offset: u64, len: u64, threads: usize) -> Result<Self, CreateError> {
        let bytes = read_window(file, offset, len)?;
        let (parts, grams) = Self::index(&bytes, window_parts(bytes.len()), threads)?;
        Ok(Self::new(offset, bytes, parts, grams))
    }

    fn new(offset: u64, bytes: Vec<u8>, parts: Vec<Part>, grams: Grams) -> Self {
        Self {
            offset,
            bytes,
            parts,
            grams,
        }
    }

    /// The index of `bytes` in `parts` equal parts and the filter of its strings, built on up
    /// to `threads` threads (the filter beside the parts' suffix arrays).
    fn index(
        bytes: &[u8],
        parts: usize,
        threads: usize,
    ) -> Result<(Vec<Part>, Grams), CreateError> {
        let size = bytes.len().div_ceil(parts.max(1)).max(1);
        let cuts: Vec<usize> = (0..bytes.len()).step_by(size).collect();
        let index =
            |&start: &usize| Part::index(start, &bytes[start..(start + size).min(bytes.len())]);
        if threads > 1 {
            std::thread::scope(|scope| {
                let handles: Vec<_> = cuts.iter().map(|c| scope.spawn(move || index(c))).collect();
                let grams = Grams::new(bytes);
                let parts = handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| CreateError::WorkerPanicked)?)
                    .collect::<Result<_, _>>()?;
                Ok((parts, grams))
            })
        } else {
            let parts = cuts.iter().map(index).collect::<Result<_, _>>()?;
            Ok((parts, Grams::new(bytes)))
        }
    }

    /// The longest match of a prefix of `new` in one part of the window: (offset in the window,
    /// length), the first part's on a tie. The window is not empty.
    fn search(&self, new: &[u8]) -> (usize, usize) {
        let mut best: Option<(usize, usize)> = None;
        for part in &self.parts {
            let text = &self.bytes[part.start..part.start + part.suffixes.len()];
            let (p, l) = search(&part.suffixes, text, new, &part.buckets);
            if best.is_none_or(|(_, b)| l > b) {
                best = Some((part.start + p, l));
            }
        }
        best.unwrap_or((0, 0))
    }
}

/// A segment's body, its method, whether its extra stream is LZMA with the window as
/// dictionary, and its chaining value.
type Encoded = (Vec<u8>, Method, bool, bool, [u8; 32]);

/// What every segment of a batch shares.
struct Job<'a> {
    window: &'a Window,
    /// Executable-aware matching's model, references and matches.
    executable: Option<&'a Executable>,
    target: &'a File,
    count: usize,
    target_len: u64,
    source_len: u64,
    /// The target is x86 code: extra streams go through the x86 branch converter.
    x86: bool,
    /// The target is x86 or AArch64 code.
    code: bool,
    options: &'a DeltaOptions,
    /// Segments encoded at once.
    workers: usize,
    /// Called with each segment's index when it is done.
    progress: &'a (dyn Fn(usize) + Sync),
}

/// The worker slots of a batch left idle: a worker with no segment left to take gives its slot
/// back, and a segment with two finalists borrows one, when there is one before its first
/// finalist is done, to encode the second beside it.
struct Idle {
    slots: Mutex<usize>,
    changed: std::sync::Condvar,
}

impl Idle {
    fn new(slots: usize) -> Self {
        Self {
            slots: Mutex::new(slots),
            changed: std::sync::Condvar::new(),
        }
    }

    /// Waits for an idle slot and takes it (true), or for `stop` to be set (false).
    fn take_unless(&self, stop: &AtomicBool) -> bool {
        let Ok(mut slots) = self.slots.lock() else {
            return false;
        };
        loop {
            if *slots > 0 {
                *slots -= 1;
                return true;
            }
            if stop.load(Ordering::Acquire) {
                return false;
            }
            match self.changed.wait(slots) {
                Ok(s) => slots = s,
                Err(_) => return false,
            }
        }
    }

    fn give(&self) {
        if let Ok(mut slots) = self.slots.lock() {
            *slots += 1;
        }
        self.changed.notify_all();
    }

    /// Wakes the waiters of [`Idle::take_unless`] to look at their `stop` again.
    fn wake(&self) {
        drop(self.slots.lock());
        self.changed.notify_all();
    }
}

/// Segments a batch's workers may run ahead of the first one not yet written, per worker: the
/// encoded bodies held for writing stay bounded by a few segments per worker.
const AHEAD_PER_WORKER: usize = 2;

/// Encodes the segments of `batch` on `job.workers` threads, handing each to `write` in order,
/// on the calling thread, as soon as it and those before it are done. The first error stops
/// the workers (each finishes the segment it is on) and is returned.
fn encode_batch(
    job: &Job<'_>,
    batch: std::ops::Range<usize>,
    write: &mut dyn FnMut(usize, Encoded) -> Result<(), CreateError>,
) -> Result<(), CreateError> {
    /// The next segment to take, the first not yet written, and whether to stop.
    struct Queue {
        next: usize,
        written: usize,
        stop: bool,
    }
    let queue = Mutex::new(Queue {
        next: batch.start,
        written: batch.start,
        stop: false,
    });
    let moved = std::sync::Condvar::new();
    let ahead = job.workers * AHEAD_PER_WORKER;
    let threads = job.workers.min(batch.len());
    let idle = Idle::new(job.workers - threads);
    let (done, results) = std::sync::mpsc::channel::<(usize, Result<Encoded, CreateError>)>();
    let take = || -> Option<usize> {
        let mut q = queue.lock().ok()?;
        while !q.stop && q.next < batch.end && q.next >= q.written + ahead {
            q = moved.wait(q).ok()?;
        }
        if q.stop || q.next >= batch.end {
            return None;
        }
        q.next += 1;
        Some(q.next - 1)
    };
    let set = |f: &dyn Fn(&mut Queue)| {
        if let Ok(mut q) = queue.lock() {
            f(&mut q);
        }
        moved.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let done = done.clone();
            let (take, idle) = (&take, &idle);
            scope.spawn(move || {
                while let Some(i) = take() {
                    let result = encode_segment(job, idle, i);
                    (job.progress)(i);
                    if done.send((i, result)).is_err() {
                        break;
                    }
                }
                idle.give();
            });
        }
        drop(done);
        let mut pending = std::collections::BTreeMap::new();
        let mut next = batch.start;
        let mut outcome = Ok(());
        // Until every worker has gone (each drops its sender).
        for (i, result) in results {
            match result {
                Ok(encoded) if outcome.is_ok() => {
                    pending.insert(i, encoded);
                }
                Ok(_) => {}
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                    set(&|q| q.stop = true);
                }
            }
            while outcome.is_ok() {
                let Some(encoded) = pending.remove(&next) else {
                    break;
                };
                if let Err(e) = write(next, encoded) {
                    outcome = Err(e);
                    set(&|q| q.stop = true);
                    break;
                }
                next += 1;
                set(&|q| q.written = next);
            }
        }
        match outcome {
            Ok(()) if next < batch.end => Err(CreateError::NotEncoded(next)),
            other => other,
        }
    })
}

fn encode_segment(job: &Job<'_>, idle: &Idle, index: usize) -> Result<Encoded, CreateError> {
    let Job {
        window,
        executable,
        target: target_file,
        count,
        target_len,
        source_len,
        x86,
        code,
        options,
        workers: _,
        progress: _,
    } = *job;
    let seg_size = 1u64 << options.segment_log;
    let start = index as u64 * seg_size;
    let end = (start + seg_size).min(target_len);
    let mut target = vec![0; fits("a segment", end - start)?];
    FileExt::read_exact_at(target_file, &mut target, start).map_err(io("reading the target"))?;
    let cv = DeltaHeader::chaining_value(count, options.segment_log, index, &target);

    let matches = match executable {
        Some(exe) => exe
            .matches
            .get(index)
            .cloned()
            .ok_or(CreateError::NotEncoded(index))?,
        None => find_matches_in_pieces(window, &target, start, options.threads)?,
    };
    let correction = executable
        .and_then(|exe| exe.model.as_ref())
        .map(|(refs, model)| Correction {
            refs: refs.as_ref(),
            model,
        });
    let bsdiff = to_ops(&matches, window, target.len(), false);
    let aligned = to_ops(&matches, window, target.len(), true);
    let hybrid = hybrid(&bsdiff, window, &target, HYBRID_KEEP);
    let reference = ref_window(
        &bsdiff,
        window,
        start,
        (target_len, source_len),
        u64::from(MAX_REF_WINDOW),
    );
    let view = SourceView {
        offset: window.offset,
        bytes: &window.bytes,
    };
    let mut encoder = SegmentEncoder::new(options.level);
    let patch_from = [Op {
        src: start.min(source_len),
        diff: 0,
        extra: fits("a segment", target.len() as u64)?,
    }];

    let candidates: [(Method, &[Op], Option<u8>); 4] = [
        (Method::PatchFrom, &patch_from, None),
        (Method::Bsdiff, &bsdiff, None),
        (Method::Aligned, &aligned, Some(phase_of(&aligned, start))),
        (Method::Hybrid, &hybrid, None),
    ];
    // Which candidates can win at all.
    let matched = agreeing_bytes(&bsdiff, window, &target);
    let extra: u64 = bsdiff.iter().map(|op| u64::from(op.extra)).sum();
    let seg_len = target.len() as u64;
    // First every candidate that can win, estimated with fast codecs: the estimates rank them.
    let lzma_final = reference.is_some() && options.lzma_dict;
    let mut ranked = Vec::new();
    for (method, ops, word_phase) in candidates {
        let skip = match method {
            // The matcher found nothing: the other candidates are patch-from.
            _ if method != Method::PatchFrom && ops.iter().all(|op| op.diff == 0) => true,
            // Nine bytes in ten match the source where the matcher put them: zstd alone never
            // came close on such segments of the corpus.
            Method::PatchFrom => matched * 10 >= seg_len * 9,
            // Almost no gaps to fill; or compiled code, where the word diff (made for retrained
            // weights) won no segment of the corpus's 9 pairs of x86-64 and AArch64 code and its
            // estimate cost the most (E3 esbuild's first segment: 1.1 of 3 s).
            Method::Aligned => code || extra * 64 < seg_len,
            Method::Hybrid => ops == bsdiff.as_slice(),
            Method::Bsdiff => false,
        };
        if skip {
            continue;
        }
        let plan = SegmentPlan {
            ops,
            word_phase,
            ref_window: reference,
            lzma_dict: false,
            effort: Effort::Exhaustive,
            correction: None,
        };
        let found = encoder.estimate(index, start, &target, &plan, view, x86)?;
        let mut estimate = found.len;
        // Extra bytes the estimate could not compress, against the window or alone (new
        // noise-like data: encrypted or compressed blobs, `netsim yard`'s inserted bytes),
        // are not worth indexing the window for: LZMA does no better on them.
        let incompressible = found.extra_compressed * 32 >= found.extra * 31;
        // Correct the references if that saves this segment's share of the model's header
        // bytes at least (a far pair gains little: E3 esbuild's second segment 0.1 %).
        let mut corrected = None;
        if let Some(correction) = correction.filter(|_| corrects(method)) {
            let plain = encoder.estimate_diff(index, &target, start, ops, view, None)?;
            let with = encoder.estimate_diff(index, &target, start, ops, view, Some(correction))?;
            let share =
                correction.model.packed_bytes().len() * target.len() / target_len.max(1) as usize;
            if with.saturating_add(share) < plain {
                estimate = estimate + with - plain;
                corrected = Some(correction);
            }
        }
        // LZMA codes a literal after a match against the byte at the match's distance, so
        // compiled code moved and patched (a patch-from stream against the window) ends far
        // smaller with LZMA than zstd's estimate says: 0.60–0.81 of it on the corpus's x86
        // pairs, against 0.66–0.88 for matcher candidates, and ranking by the estimates alone
        // lost 25 % on one segment (E3 esbuild). The same holds for AArch64 code without a
        // converter (A3 esbuild arm64: 25.41 % ranked as estimated, 22.27 % so). On other
        // content (weights) it gains nothing.
        let rank = if method == Method::PatchFrom && code && lzma_final {
            estimate / 5 * 4
        } else {
            estimate
        };
        ranked.push((rank, method, ops, word_phase, corrected, incompressible));
    }
    ranked.sort_by_key(|r| r.0);
    // Then the best of them, and a runner-up within FINALIST_MARGIN of it, with the codecs that
    // win (or every codec, when asked). Estimates rank LZMA's results less well than zstd's:
    // the runner-up catches most of what that misses.
    let cut = ranked.first().map_or(0, |r| r.0 + r.0 / FINALIST_MARGIN);
    let effort = if options.exhaustive {
        Effort::Exhaustive
    } else {
        Effort::Chosen { x86 }
    };
    let first = ranked.first().map(|r| r.1);
    let mut plans = Vec::new();
    for (estimate, method, ops, word_phase, corrected, incompressible) in
        ranked.into_iter().take(FINALISTS)
    {
        // A runner-up is encoded only if it is of the other kind (patch-from against matcher
        // operations): bsdiff, hybrid and aligned bodies of one segment end within 0.1 % of
        // each other when their estimates do (B1 biome).
        let other_kind =
            first.is_some_and(|f| (f == Method::PatchFrom) != (method == Method::PatchFrom));
        if !plans.is_empty() && (estimate > cut || !other_kind) {
            break;
        }
        // A few kilobytes of extra bytes are not worth indexing the window for (46 MB of it
        // took 1.2 s with LZMA's hash chain, per segment): compressed alone they come out
        // about 6 % larger (E1 esbuild, 20 KB: 11.5 KB against 10.8 KB).
        // A longer stream is compressed against a window of 32 bytes per extra byte around
        // the segment's matches, at least 4 MiB: indexing costs by the window's length.
        let extra_len: u64 = ops.iter().map(|op| u64::from(op.extra)).sum();
        let ref_window = if extra_len < TINY_EXTRA || (incompressible && !options.exhaustive) {
            None
        } else {
            ref_window(
                &bsdiff,
                window,
                start,
                (target_len, source_len),
                (extra_len * REF_PER_EXTRA).max(MIN_REF_WINDOW),
            )
        };
        let plan = SegmentPlan {
            ops,
            word_phase,
            ref_window,
            lzma_dict: ref_window.is_some() && options.lzma_dict,
            effort,
            correction: corrected,
        };
        plans.push((method, plan));
    }
    // Two finalists: the second on a worker slot of this batch left idle, if one is or becomes
    // idle before the first is done, else after it. E3 esbuild's first segment is encoded both
    // as patch-from and as hybrid, each with LZMA against the window, while its second, 3 MB
    // segment is done seconds earlier.
    let first_done = &AtomicBool::new(false);
    let bodies: Vec<Result<Vec<u8>, CreateError>> = match plans.as_slice() {
        [(_, a), (_, b)] => std::thread::scope(|scope| {
            let second = scope.spawn(|| {
                idle.take_unless(first_done).then(|| {
                    let body =
                        SegmentEncoder::new(options.level).encode(index, start, &target, b, view);
                    idle.give();
                    body
                })
            });
            let first = encoder.encode(index, start, &target, a, view);
            first_done.store(true, Ordering::Release);
            idle.wake();
            let second = match second.join() {
                Ok(Some(body)) => body.map_err(CreateError::from),
                Ok(None) => encoder
                    .encode(index, start, &target, b, view)
                    .map_err(CreateError::from),
                Err(_) => Err(CreateError::WorkerPanicked),
            };
            vec![first.map_err(CreateError::from), second]
        }),
        _ => plans
            .iter()
            .map(|(_, plan)| Ok(encoder.encode(index, start, &target, plan, view)?))
            .collect(),
    };
    let mut best: Option<(Vec<u8>, Method, bool)> = None;
    for ((method, plan), body) in plans.iter().zip(bodies) {
        let (method, body) = (*method, body?);
        // Matcher operations must beat patch-from by more than 1/512 of their size: on a tie
        // (noise against noise) the segment is just compressed, and applies without reading
        // the source where the operations point.
        let score = |len: usize, method: Method| {
            len.saturating_mul(512) + if method == Method::PatchFrom { 0 } else { len }
        };
        if best
            .as_ref()
            .is_none_or(|(b, m, _)| score(body.len(), method) < score(b.len(), *m))
        {
            best = Some((body, method, plan.correction.is_some()));
        }
    }
    let Some((body, method, corrected)) = best else {
        return Err(CreateError::NoEncoding(index));
    };
    let dict = matches!(
        crate::segment::extra_codec(&body, source_len),
        Some(Codec::LzmaRef | Codec::X86LzmaRef)
    );
    // Decode what we are about to ship. The decoder reads only this segment's entry (and the
    // lengths), so the others and the ids can be blank.
    let mut segments = vec![
        SegmentEntry {
            encoded_len: 0,
            cv: [0; 32]
        };
        count
    ];
    segments[index] = SegmentEntry {
        encoded_len: fits("a segment body", body.len() as u64)?,
        cv,
    };
    let header = DeltaHeader {
        source: BlobId::from_bytes([0; 32]),
        source_len,
        target: BlobId::from_bytes([0; 32]),
        target_len,
        segment_log: options.segment_log,
        segments,
        model: executable
            .and_then(|exe| exe.model.as_ref())
            .map(|(_, m)| m.clone()),
    };
    let mut decoder = match executable.and_then(|exe| exe.model.as_ref()) {
        Some((refs, _)) => SegmentDecoder::with_references(header.source, refs.clone()),
        None => SegmentDecoder::new(),
    };
    let mut rebuilt = Vec::new();
    decoder
        .decode(&header, index, &body, &WindowRead(window), &mut rebuilt)
        .map_err(|source| CreateError::RoundTrip {
            segment: index,
            method,
            source,
        })?;
    Ok((body, method, dict, corrected, cv))
}

/// Whether a method's diff runs correct references (byte diff runs: bsdiff and hybrid).
fn corrects(method: Method) -> bool {
    matches!(method, Method::Bsdiff | Method::Hybrid)
}

struct WindowRead<'a>(&'a Window);

impl ReadAt for WindowRead<'_> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = offset
            .checked_sub(self.0.offset)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        self.0.bytes.read_exact_at(start, buf)
    }
}

/// The source window a segment's extra stream is compressed against: the whole window when it
/// is at most `max` (and 64 MiB) long, else that much centred on where the segment's matches
/// point (or its proportional place), aligned to a quarter of its length so that neighbouring
/// segments share it.
fn ref_window(
    ops: &[Op],
    window: &Window,
    start: u64,
    (target_len, source_len): (u64, u64),
    max: u64,
) -> Option<(u64, u32)> {
    let len = window.bytes.len() as u64;
    if len == 0 {
        return None;
    }
    let max = max.min(u64::from(MAX_REF_WINDOW));
    if len <= max {
        return Some((window.offset, u32::try_from(len).ok()?));
    }
    let mut weighted: Vec<(u64, u64)> = ops
        .iter()
        .filter(|o| o.diff > 0)
        .map(|o| (o.src, u64::from(o.diff)))
        .collect();
    let centre = if weighted.is_empty() {
        (u128::from(start) * u128::from(source_len) / u128::from(target_len.max(1))) as u64
    } else {
        weighted.sort_unstable();
        let total: u64 = weighted.iter().map(|w| w.1).sum();
        let mut acc = 0;
        weighted
            .iter()
            .find(|w| {
                acc += w.1;
                acc * 2 >= total
            })
            .map_or(0, |w| w.0)
    };
    let align = (max / 4).max(1);
    let lo = window.offset;
    let hi = window.offset + len - max;
    let offset = (centre.saturating_sub(max / 2) / align * align).clamp(lo, hi);
    Some((offset, u32::try_from(max).ok()?))
}

/// The word phase that aligns most of the aligned candidate's diff bytes: the target offset
/// class (mod 4) of the first long diff run's start.
fn phase_of(ops: &[Op], start: u64) -> u8 {
    let mut t = start;
    let mut best = (0u32, 0u8);
    for op in ops {
        if op.diff > best.0 {
            best = (op.diff, (t % 4) as u8);
        }
        t += u64::from(op.diff) + u64::from(op.extra);
    }
    best.1
}

/// One approximate match of the matcher: target bytes `[t, t + len)` against source `src..`,
/// followed by `extra` bytes the matcher could not place.
#[derive(Clone, Copy, Debug)]
struct Match {
    src: u64,
    len: u64,
    extra: u64,
}

/// Fruitless searches one byte apart before the matcher starts to stride.
const GALLOP_AFTER: u32 = 32;
/// Fruitless searches per doubling of the stride.
const GALLOP_EVERY: u32 = 16;
/// The longest stride: 2^5 = 32 bytes.
const GALLOP_MAX_LOG: u32 = 5;

/// Segments shorter than twice this are matched in one piece.
const MIN_MATCH_PIECE: usize = 1 << 20;

/// [`find_matches`] over `new` cut into `pieces` pieces, each matched on a thread of its own,
/// one after the other in the result. The matcher is sequential and a segment of a far pair
/// takes it seconds (4 s for the first 8 MiB of E4 esbuild, 10 s for the retrained model M2),
/// while the other workers may have nothing left to do. A piece starts its search afresh,
/// which loses at most a match at each cut.
fn find_matches_in_pieces(
    window: &Window,
    new: &[u8],
    start: u64,
    pieces: usize,
) -> Result<Vec<Match>, CreateError> {
    let pieces = pieces.min(new.len() / MIN_MATCH_PIECE).max(1);
    if pieces == 1 {
        return Ok(find_matches(window, new, start));
    }
    let piece = new.len().div_ceil(pieces);
    std::thread::scope(|scope| {
        let handles: Vec<_> = new
            .chunks(piece)
            .enumerate()
            .map(|(k, chunk)| {
                let at = start + (k * piece) as u64;
                scope.spawn(move || find_matches(window, chunk, at))
            })
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.join().map_err(|_| CreateError::WorkerPanicked)?);
        }
        Ok(all)
    })
}

/// Percival's bsdiff matcher over one target segment: returns (source, diff length, extra length)
/// triples covering the segment. Source offsets are absolute.
fn find_matches(window: &Window, new: &[u8], start: u64) -> Vec<Match> {
    let old = &window.bytes[..];
    let mut out = Vec::new();
    if old.is_empty() || new.is_empty() {
        out.push(Match {
            src: window.offset,
            len: 0,
            extra: new.len() as u64,
        });
        return out;
    }
    let (n_old, n_new) = (old.len() as i64, new.len() as i64);
    let (mut scan, mut len, mut pos) = (0i64, 0i64, 0i64);
    // Before the first match, assume the segment sits where it sits in the target.
    let identity = (start.saturating_sub(window.offset) as i64).min(n_old);
    let (mut last_scan, mut last_pos, mut last_offset) = (0i64, identity, identity);
    while scan < n_new {
        let mut old_score = 0i64;
        scan += len;
        let mut scsc = scan;
        let mut misses = 0u32;
        while scan < n_new {
            // Nothing to take here when the next GRAM bytes are nowhere in the window.
            let next = &new[scan as usize..];
            let searched = window.grams.may_hold(next);
            if !searched {
                len = 0;
            } else {
                let (p, l) = window.search(next);
                pos = p as i64;
                len = l as i64;
            }
            scsc = scsc.max(scan);
            while scsc < scan + len {
                if scsc + last_offset >= 0
                    && scsc + last_offset < n_old
                    && old[(scsc + last_offset) as usize] == new[scsc as usize]
                {
                    old_score += 1;
                }
                scsc += 1;
            }
            if (len == old_score && len != 0) || len > old_score + 8 {
                break;
            }
            // Percival's matcher searches again one byte on; after a run of fruitless searches
            // it searches every `step` bytes. A long match starting between two searches is
            // still found from its next search on and extended backwards below, and a short
            // one missed here is found again by the extra stream's codec against the window.
            // A position the filter passed over cost no search and does not count.
            misses += u32::from(searched);
            let step =
                1i64 << (misses.saturating_sub(GALLOP_AFTER) / GALLOP_EVERY).min(GALLOP_MAX_LOG);
            for _ in 0..step {
                if scan >= n_new {
                    break;
                }
                if scan < scsc
                    && scan + last_offset >= 0
                    && scan + last_offset < n_old
                    && old[(scan + last_offset) as usize] == new[scan as usize]
                {
                    old_score -= 1;
                }
                scan += 1;
            }
        }
        if len != old_score || scan == n_new {
            // Extend the previous match forwards while at least half its bytes agree.
            let (mut s, mut best_f, mut len_f) = (0i64, 0i64, 0i64);
            let mut i = 0i64;
            while last_scan + i < scan && last_pos + i < n_old {
                if old[(last_pos + i) as usize] == new[(last_scan + i) as usize] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i > best_f * 2 - len_f {
                    best_f = s;
                    len_f = i;
                }
            }
            // And this match backwards.
            let mut len_b = 0i64;
            if scan < n_new {
                let (mut s, mut best_b) = (0i64, 0i64);
                let mut i = 1i64;
                while scan >= last_scan + i && pos >= i {
                    if old[(pos - i) as usize] == new[(scan - i) as usize] {
                        s += 1;
                    }
                    if s * 2 - i > best_b * 2 - len_b {
                        best_b = s;
                        len_b = i;
                    }
                    i += 1;
                }
            }
            // Where they overlap, split at the point that keeps the most agreeing bytes.
            if last_scan + len_f > scan - len_b {
                let overlap = (last_scan + len_f) - (scan - len_b);
                let (mut s, mut best, mut cut) = (0i64, 0i64, 0i64);
                for i in 0..overlap {
                    if new[(last_scan + len_f - overlap + i) as usize]
                        == old[(last_pos + len_f - overlap + i) as usize]
                    {
                        s += 1;
                    }
                    if new[(scan - len_b + i) as usize] == old[(pos - len_b + i) as usize] {
                        s -= 1;
                    }
                    if s > best {
                        best = s;
                        cut = i + 1;
                    }
                }
                len_f += cut - overlap;
                len_b -= cut;
            }
            out.push(Match {
                src: window.offset + last_pos as u64,
                len: len_f as u64,
                extra: ((scan - len_b) - (last_scan + len_f)) as u64,
            });
            last_scan = scan - len_b;
            last_pos = pos - len_b;
            last_offset = pos - scan;
        }
    }
    out
}

/// The longest prefix of `new` found in `old`, by binary search over the suffix array. Each
/// step compares from the shorter of the two bounds' common prefixes on (every suffix between
/// the bounds shares it with `new`), so a long match is not compared again from its first byte
/// at every step.
fn search(sa: &[i32], old: &[u8], new: &[u8], buckets: &[u32]) -> (usize, usize) {
    let common_from = |p: usize, from: usize| from + common_prefix(&old[p + from..], &new[from..]);
    // Within the bucket of `new`'s first two bytes when it has any suffix: the longest match
    // is there. Otherwise no match is two bytes long, and the whole array is searched.
    let key = (new.len() >= 2).then(|| bucket_of(new, 0));
    let (mut lo, mut hi) = match key.map(|k| (buckets[k] as usize, buckets[k + 1] as usize)) {
        Some((start, end)) if start < end => (start, end - 1),
        _ => (0usize, sa.len() - 1),
    };
    let mut lcp_lo = common_from(sa[lo] as usize, 0);
    let mut lcp_hi = common_from(sa[hi] as usize, 0);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let p = sa[mid] as usize;
        let l = common_from(p, lcp_lo.min(lcp_hi));
        // The suffix sorts before `new` if it differs at `l` with a smaller byte or ends there;
        // equal over the shorter of the two (including `new` ending) counts as not before.
        let n = (old.len() - p).min(new.len());
        let before = l < n && old[p + l] < new[l];
        if before {
            lo = mid;
            lcp_lo = l;
        } else {
            hi = mid;
            lcp_hi = l;
        }
    }
    if lcp_lo >= lcp_hi {
        (sa[lo] as usize, lcp_lo)
    } else {
        (sa[hi] as usize, lcp_hi)
    }
}

/// How many leading bytes `a` and `b` share, eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        let diff = x ^ y;
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..]
        .iter()
        .zip(&b[i..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Turns matches into operations. With `gaps_as_diff`, each match's extra bytes become a diff
/// against the source continuing where the match left off (where the source has the bytes).
fn to_ops(matches: &[Match], window: &Window, seg_len: usize, gaps_as_diff: bool) -> Vec<Op> {
    let window_end = window.offset + window.bytes.len() as u64;
    let mut ops = Vec::with_capacity(matches.len());
    let mut covered = 0u64;
    for m in matches {
        let (mut diff, mut extra) = (m.len, m.extra);
        if gaps_as_diff {
            let room = window_end.saturating_sub(m.src + m.len);
            let moved = extra.min(room);
            diff += moved;
            extra -= moved;
        }
        if diff == 0 && extra == 0 {
            continue;
        }
        // Keep each run within u32 (segments are at most 16 MiB, so this never splits in practice).
        ops.push(Op {
            src: m.src,
            diff: diff as u32,
            extra: extra as u32,
        });
        covered += diff + extra;
    }
    debug_assert_eq!(covered, seg_len as u64);
    if gaps_as_diff {
        merge_contiguous(&mut ops);
    }
    ops
}

/// How many bytes of the operations' diff runs agree with the source.
fn agreeing_bytes(ops: &[Op], window: &Window, target: &[u8]) -> u64 {
    let mut t = 0usize;
    let mut same = 0u64;
    for op in ops {
        let start = (op.src - window.offset) as usize;
        let old = &window.bytes[start..start + op.diff as usize];
        same += old
            .iter()
            .zip(&target[t..t + op.diff as usize])
            .filter(|(a, b)| a == b)
            .count() as u64;
        t += (op.diff + op.extra) as usize;
    }
    same
}

/// The share of agreeing bytes below which the hybrid candidate drops a diff run (0.6, 0.75, 0.9
/// and 0.97 were tried on the corpus: 0.6 was smallest).
const HYBRID_KEEP: f64 = 0.6;
/// Extra streams shorter than this are compressed without the source window.
const TINY_EXTRA: u64 = 64 << 10;
/// Window bytes per extra byte a finalist's extra stream is compressed against, at most.
const REF_PER_EXTRA: u64 = 32;
/// The shortest window a finalist's extra stream is compressed against.
const MIN_REF_WINDOW: u64 = 4 << 20;
/// Candidates encoded in full per segment, at most: the best estimate and a runner-up.
const FINALISTS: usize = 2;
/// A runner-up is encoded in full only if its estimate is within 1/this of the best (3 %).
const FINALIST_MARGIN: usize = 33;

/// The bsdiff operations with every diff run where fewer than `threshold` of the bytes agree
/// with the source turned into extra bytes (left to zstd's own matching against the source).
fn hybrid(ops: &[Op], window: &Window, target: &[u8], threshold: f64) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::with_capacity(ops.len());
    let mut t = 0usize;
    for op in ops {
        let start = (op.src - window.offset) as usize;
        let old = &window.bytes[start..start + op.diff as usize];
        let new = &target[t..t + op.diff as usize];
        let same = old.iter().zip(new).filter(|(a, b)| a == b).count();
        let keep = op.diff > 0 && (same as f64) >= threshold * f64::from(op.diff);
        t += (op.diff + op.extra) as usize;
        if keep {
            out.push(*op);
            continue;
        }
        let len = op.diff + op.extra;
        match out.last_mut() {
            Some(last) => last.extra += len,
            None => out.push(Op {
                src: op.src,
                diff: 0,
                extra: len,
            }),
        }
    }
    out
}

/// Merges operations whose diff runs continue each other in the source with no extra between.
fn merge_contiguous(ops: &mut Vec<Op>) {
    let mut merged: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops.drain(..) {
        if let Some(last) = merged.last_mut() {
            if last.extra == 0 && last.src + u64::from(last.diff) == op.src {
                last.diff += op.diff;
                last.extra = op.extra;
                continue;
            }
        }
        merged.push(op);
    }
    *ops = merged;
}

fn file_len(file: &File, path: &Path) -> Result<u64, CreateError> {
    Ok(file
        .metadata()
        .map_err(io(format!("reading the length of {}", path.display())))?
        .len())
}

fn hash_file(file: &File) -> std::io::Result<BlobId> {
    let mut hasher = blake3::Hasher::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(BlobId::from_bytes(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_finds_the_longest_match_from_its_bucket() {
        // A small alphabet, so that matches are long and buckets uneven (some empty).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut byte = |k: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % k) as u8
        };
        let old: Vec<u8> = (0..20_000).map(|_| byte(3) * 7).collect();
        // One part, and three (the last shorter) indexed on two threads: the longest match
        // that stays inside one part.
        for (parts, threads) in [(1, 1), (3, 2)] {
            let (index, grams) = Window::index(&old, parts, threads).unwrap();
            let window = Window::new(0, old.clone(), index, grams);
            assert_eq!(window.parts.len(), parts);
            let size = old.len().div_ceil(parts);
            for len in [1usize, 2, 3, 9, 40] {
                for _ in 0..200 {
                    let new: Vec<u8> = (0..len).map(|_| byte(4) * 7).collect();
                    let (p, l) = window.search(&new);
                    assert_eq!(old[p..p + l], new[..l]);
                    let longest = (0..old.len())
                        .map(|q| {
                            common_prefix(&old[q..((q / size + 1) * size).min(old.len())], &new)
                        })
                        .max()
                        .unwrap();
                    assert_eq!(l, longest, "{parts} parts: {new:?}");
                }
            }
        }
    }

    /// Buckets counted from the text are where the suffix array puts them: every suffix in
    /// bucket k lies in `starts[k]..starts[k + 1]`, on texts whose last byte's one-byte suffix
    /// shares a bucket with two-byte ones, and on one byte, two and none.
    #[test]
    fn buckets_counted_from_the_text_bound_the_suffix_array() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut texts: Vec<Vec<u8>> = vec![vec![], vec![5], vec![0, 0], vec![7, 0, 7]];
        for alphabet in [2u64, 3, 256] {
            texts.push(
                (0..5000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % alphabet) as u8
                    })
                    .collect(),
            );
        }
        for text in texts {
            let part = Part::index(0, &text).unwrap();
            assert_eq!(part.buckets.len(), (1 << 16) + 1);
            assert_eq!(part.buckets[1 << 16] as usize, text.len());
            for (i, &p) in part.suffixes.iter().enumerate() {
                let k = bucket_of(&text, p as usize);
                let range = part.buckets[k] as usize..part.buckets[k + 1] as usize;
                assert!(
                    range.contains(&i),
                    "{text:?}: suffix {p} at {i}, bucket {range:?}"
                );
            }
        }
    }

    /// The filter of a window's 8-byte strings holds every one of them (the matcher must never
    /// skip a position a match starts at) and passes few others.
    #[test]
    fn the_string_filter_never_misses_and_rarely_passes_strangers() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bytes: Vec<u8> = (0..100_000).map(|_| next() as u8).collect();
        let grams = Grams::new(&bytes);
        assert!(bytes.windows(GRAM).all(|g| grams.may_hold(g)));
        assert!(grams.may_hold(&bytes[..GRAM - 1]), "too short to tell");
        let strangers = (0..100_000)
            .filter(|_| grams.may_hold(&next().to_le_bytes()))
            .count();
        assert!(strangers < 100_000 / 6, "{strangers} of 100000 passed");
        let empty = Grams::new(&[]);
        assert!(!empty.may_hold(&[0; GRAM]));
    }

    #[test]
    fn x86_code_is_told_by_its_header() {
        let elf = |class: u8, data: u8, machine: [u8; 2]| {
            let mut head = vec![0u8; 64];
            head[..4].copy_from_slice(b"\x7fELF");
            head[4] = class;
            head[5] = data;
            head[18..20].copy_from_slice(&machine);
            head
        };
        assert!(is_x86_code(&elf(2, 1, [62, 0]))); // x86-64
        assert!(is_x86_code(&elf(1, 1, [3, 0]))); // i386
        assert!(!is_x86_code(&elf(2, 1, [183, 0]))); // AArch64
        assert!(!is_x86_code(&elf(1, 1, [40, 0]))); // 32-bit Arm
        assert!(!is_x86_code(&elf(2, 2, [0, 21]))); // PowerPC 64, big-endian
        assert!(!is_x86_code(&elf(2, 2, [62, 0]))); // 62 << 8 read big-endian: not x86-64
        assert!(is_x86_code(b"MZ\x90\x00"));
        assert!(!is_x86_code(b"\x7fELF"));
        assert!(!is_x86_code(b""));
        assert!(!is_x86_code(&[0x08; 64])); // an ONNX model starts with a protobuf tag
        assert!(is_code(&elf(2, 1, [183, 0])) && is_code(&elf(2, 1, [62, 0])));
        assert!(!is_code(&elf(1, 1, [40, 0])) && !is_code(&[0x08; 64]));
    }
}
