//! Applying a delta ([`proto::delta`]): streaming, bounded in memory, verified segment by
//! segment, and resumable after a crash or power cut at any instant.
//!
//! The target is rebuilt into `.NAME.partial` beside its final name. After each segment is
//! decoded and checked against the target's hash tree, it is written and synced, and only then
//! does the journal `.NAME.progress` (replaced atomically: temporary file, sync, rename, directory
//! sync) say so. A restart reads the journal and resumes at the first segment not recorded — the
//! journal names the delta's header by hash, so a different delta starts over. When every
//! segment is in, the whole file is hashed once more against the target id before it is renamed
//! to NAME: a file by that name is always the complete, verified target, whatever instant the
//! power was cut.
//!
//! Memory: one segment out, its streams, and the source window its extra stream was compressed
//! against (at most 64 MiB) — never the image.

use std::io;

use node::storage::{Storage, StorageFile};
use proto::BlobId;
use proto::delta::{DeltaError, DeltaHeader, SegmentDecoder, SourceRead};

use crate::bank::Bank;

const JOURNAL_MAGIC: &[u8; 8] = b"DMAPPLY1";
const JOURNAL_LEN: usize = 8 + 32 + 8 + 32;
const READ_CHUNK: usize = 1 << 20;

/// Why an apply stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The delta is malformed, for another source, or rebuilt something other than its target.
    #[error(transparent)]
    Delta(#[from] DeltaError),
    /// The delta's length disagrees with its header.
    #[error("delta is {actual} bytes but its header describes {expected}: truncated or padded")]
    DeltaLength {
        /// What the header describes.
        expected: u64,
        /// What the file holds.
        actual: u64,
    },
    /// The caller expected another target.
    #[error("the delta rebuilds {actual}, not the expected {expected}")]
    UnexpectedTarget {
        /// What the caller expected.
        expected: BlobId,
        /// What the delta rebuilds.
        actual: BlobId,
    },
    /// The finished file did not hash to the target (the disk changed it); the journal is
    /// dropped so the next attempt starts over.
    #[error(
        "the rebuilt file hashes to {actual}, not the target {expected}; starting over next time"
    )]
    FinalHash {
        /// The target id.
        expected: BlobId,
        /// What the file hashed to.
        actual: BlobId,
    },
    /// The bank refused (too small, no spare space, a slot it does not have).
    #[error(transparent)]
    Bank(#[from] crate::bank::BankError),
    /// Reading the delta or source, or writing the target, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Io { what, source }
}

/// Something that can be read at offsets: the delta file, a bank, a byte slice.
pub trait ReadAt {
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        SourceRead::read_exact_at(&mut { self }, offset, buf)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

struct Source<'a, R: ReadAt + ?Sized>(&'a R);

impl<R: ReadAt + ?Sized> SourceRead for Source<'_, R> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}

/// What one apply did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The target rebuilt.
    pub target: BlobId,
    /// Its length.
    pub target_len: u64,
    /// Segments in the delta.
    pub segments: usize,
    /// The first segment this run decoded (0 unless it resumed).
    pub resumed_at: usize,
}

/// The inputs of one apply.
#[derive(Debug)]
pub struct ApplyInputs<'a, R: ReadAt + ?Sized, D: ReadAt + ?Sized> {
    /// The source image (the active bank, or the old file).
    pub source: &'a R,
    /// Its length.
    pub source_len: u64,
    /// The delta.
    pub delta: &'a D,
    /// Its length.
    pub delta_len: u64,
    /// Refuse a delta that rebuilds anything else.
    pub expect_target: Option<BlobId>,
}

/// Rebuilds the target of `inputs.delta` as `name` in `storage`, resuming an earlier attempt
/// if its journal is there. Calls `progress(done, total)` after each segment.
pub fn apply<S, R, D>(
    storage: &S,
    name: &str,
    inputs: &ApplyInputs<'_, R, D>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Applied, ApplyError>
where
    S: Storage,
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let (dir, file) = match name.rsplit_once('/') {
        Some((dir, file)) => (dir, file),
        None => ("", name),
    };
    let join = |file: String| {
        if dir.is_empty() {
            file
        } else {
            format!("{dir}/{file}")
        }
    };
    let partial_name = join(format!(".{file}.partial"));
    let journal_name = join(format!(".{file}.progress"));

    let mut segments = DeltaSegments::new(inputs)?;
    let header = segments.header().clone();

    // Finished before (the power went out between the rename and the journal's removal)?
    if let Ok(existing) = storage.open(name, false) {
        let whole = existing.len().ok() == Some(header.target_len)
            && hash_of(&FileRead(&existing), header.target_len).ok() == Some(header.target);
        if whole {
            drop(existing);
            storage
                .remove(&journal_name)
                .map_err(io_error(format!("removing {journal_name}")))?;
            storage
                .remove(&partial_name)
                .map_err(io_error(format!("removing {partial_name}")))?;
            storage
                .sync_dir(dir)
                .map_err(io_error("syncing the directory"))?;
            let segments = header.segments.len();
            return Ok(Applied {
                target: header.target,
                target_len: header.target_len,
                segments,
                resumed_at: segments,
            });
        }
    }

    let header_digest = segments.header_digest();
    let resumed_at = read_journal(storage, &journal_name, &header_digest)
        .filter(|next| *next <= header.segments.len())
        .unwrap_or(0);
    let partial = storage
        .open(&partial_name, true)
        .map_err(io_error(format!("opening {partial_name}")))?;
    decode_segments(&mut segments, inputs, resumed_at, |index, at, out| {
        partial
            .write_all_at(at, out)
            .map_err(io_error(format!("writing {partial_name}")))?;
        partial
            .sync()
            .map_err(io_error(format!("syncing {partial_name}")))?;
        write_journal(storage, &journal_name, &header_digest, index + 1)
            .map_err(io_error(format!("writing {journal_name}")))?;
        progress(index + 1, header.segments.len());
        Ok(())
    })?;

    partial
        .set_len(header.target_len)
        .map_err(io_error(format!("sizing {partial_name}")))?;
    partial
        .sync()
        .map_err(io_error(format!("syncing {partial_name}")))?;
    let rebuilt = hash_of(&FileRead(&partial), header.target_len)
        .map_err(io_error(format!("reading {partial_name}")))?;
    if rebuilt != header.target {
        storage.remove(&journal_name).ok();
        storage.sync_dir(dir).ok();
        return Err(ApplyError::FinalHash {
            expected: header.target,
            actual: rebuilt,
        });
    }
    drop(partial);
    storage
        .rename(&partial_name, name)
        .map_err(io_error(format!("renaming into {name}")))?;
    storage
        .sync_dir(dir)
        .map_err(io_error("syncing the directory"))?;
    storage
        .remove(&journal_name)
        .map_err(io_error(format!("removing {journal_name}")))?;
    storage
        .sync_dir(dir)
        .map_err(io_error("syncing the directory"))?;
    Ok(Applied {
        target: header.target,
        target_len: header.target_len,
        segments: header.segments.len(),
        resumed_at,
    })
}

/// Reads and parses the header of `delta` (nothing else is checked): the header and its bytes.
pub fn read_header<D: ReadAt + ?Sized>(delta: &D) -> Result<(DeltaHeader, Vec<u8>), ApplyError> {
    let mut prefix = [0u8; 16];
    delta
        .read_exact_at(0, &mut prefix)
        .map_err(|_| ApplyError::Delta(DeltaError::Truncated("header")))?;
    let header_len = DeltaHeader::announced_len(&prefix)?;
    let mut header_bytes = vec![0; header_len];
    delta
        .read_exact_at(0, &mut header_bytes)
        .map_err(|_| ApplyError::Delta(DeltaError::Truncated("header")))?;
    let (header, _) = DeltaHeader::parse(&header_bytes)?;
    Ok((header, header_bytes))
}

/// Reads the delta's header and checks it: its hashes add up to the target, its length is the
/// delta's, it rebuilds the expected target, and the source is the one it was made from — all
/// before a byte is written. Returns the header and its bytes.
fn checked_header<R, D>(
    inputs: &ApplyInputs<'_, R, D>,
) -> Result<(DeltaHeader, Vec<u8>), ApplyError>
where
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let (header, header_bytes) = read_header(inputs.delta)?;
    if header.delta_len() != inputs.delta_len {
        return Err(ApplyError::DeltaLength {
            expected: header.delta_len(),
            actual: inputs.delta_len,
        });
    }
    if let Some(expected) = inputs.expect_target {
        if expected != header.target {
            return Err(ApplyError::UnexpectedTarget {
                expected,
                actual: header.target,
            });
        }
    }
    let source_id =
        hash_of(inputs.source, inputs.source_len).map_err(io_error("reading the source"))?;
    header.check_source(source_id, inputs.source_len)?;
    Ok((header, header_bytes))
}

/// A delta's segments, decoded one at a time (each checked against the target's hash tree) —
/// for a caller that decodes them more than once or out of a loop, as the remapping bank does:
/// once to plan, once to write.
#[derive(Debug)]
pub struct DeltaSegments {
    header: DeltaHeader,
    header_digest: [u8; 32],
    decoder: SegmentDecoder,
    body: Vec<u8>,
}

impl DeltaSegments {
    /// Checks the delta of `inputs` as an apply does ([`checked_header`]: lengths, target,
    /// source) before a segment is decoded.
    pub fn new<R: ReadAt + ?Sized, D: ReadAt + ?Sized>(
        inputs: &ApplyInputs<'_, R, D>,
    ) -> Result<Self, ApplyError> {
        let (header, header_bytes) = checked_header(inputs)?;
        Ok(Self {
            header_digest: *blake3::hash(&header_bytes).as_bytes(),
            header,
            decoder: SegmentDecoder::new(),
            body: Vec::new(),
        })
    }

    /// The checked header.
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// BLAKE3 of the header's bytes (names the delta in progress records).
    pub fn header_digest(&self) -> [u8; 32] {
        self.header_digest
    }

    /// Decodes segment `index` into `out` (replacing its contents); returns the target offset
    /// it starts at.
    pub fn decode<R: ReadAt + ?Sized, D: ReadAt + ?Sized>(
        &mut self,
        inputs: &ApplyInputs<'_, R, D>,
        index: usize,
        out: &mut Vec<u8>,
    ) -> Result<u64, ApplyError> {
        let entry = self.header.segments.get(index).copied().ok_or_else(|| {
            ApplyError::Delta(DeltaError::BadHeader(format!(
                "segment {index} of {} asked for",
                self.header.segments.len()
            )))
        })?;
        self.body.resize(entry.encoded_len as usize, 0);
        inputs
            .delta
            .read_exact_at(self.header.body_offset(index), &mut self.body)
            .map_err(io_error(format!("reading segment {index} of the delta")))?;
        let mut source = Source(inputs.source);
        self.decoder
            .decode(&self.header, index, &self.body, &mut source, out)?;
        Ok(self.header.target_range(index).start)
    }
}

/// Decodes segments `from..` of the delta in order, each checked against the target's hash
/// tree, and hands each to `write(index, target_offset, bytes)` — which must make it durable
/// before it records it.
fn decode_segments<R, D>(
    segments: &mut DeltaSegments,
    inputs: &ApplyInputs<'_, R, D>,
    from: usize,
    mut write: impl FnMut(usize, u64, &[u8]) -> Result<(), ApplyError>,
) -> Result<(), ApplyError>
where
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let mut out = Vec::new();
    for index in from..segments.header.segments.len() {
        let at = segments.decode(inputs, index, &mut out)?;
        write(index, at, &out)?;
    }
    Ok(())
}

/// Where a bank install stands, for the caller's journal: the delta (by the hash of its
/// header) and how many segments are durably in the bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BankProgress {
    /// BLAKE3 of the delta's header: progress of another delta does not count.
    pub header_digest: [u8; 32],
    /// Segments written and synced.
    pub done: usize,
}

/// Rebuilds the delta's target into `bank` from byte 0 — the flasher's write of the inactive
/// bank. Resumes after `resume` when it is for this delta (else starts over). Each segment is
/// decoded, checked against the target's hash tree, written and the bank synced before
/// `record` is called with the new progress: the caller journals it, durably, and a restart
/// passes it back, so finished segments are never written again. At the end the bank's first
/// `target_len` bytes are hashed once more against the target id; on a mismatch
/// ([`ApplyError::FinalHash`]) the caller drops its progress and the next attempt starts over.
/// The source is typically the running bank, read through [`crate::bank::BankSource`].
pub fn apply_into_bank<B, R, D>(
    bank: &mut B,
    inputs: &ApplyInputs<'_, R, D>,
    resume: Option<BankProgress>,
    mut record: impl FnMut(BankProgress, usize) -> Result<(), ApplyError>,
) -> Result<Applied, ApplyError>
where
    B: Bank + ?Sized,
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let mut segments = DeltaSegments::new(inputs)?;
    let header = segments.header().clone();
    if header.target_len > bank.capacity() {
        return Err(ApplyError::Io {
            what: format!("bank {}", bank.path().display()),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the target of {} bytes does not fit the bank's {}",
                    header.target_len,
                    bank.capacity()
                ),
            ),
        });
    }
    let header_digest = segments.header_digest();
    let resumed_at = resume
        .filter(|p| p.header_digest == header_digest && p.done <= header.segments.len())
        .map_or(0, |p| p.done);
    let total = header.segments.len();
    let path = bank.path().display().to_string();
    decode_segments(&mut segments, inputs, resumed_at, |index, at, out| {
        bank.write_all_at(at, out)
            .map_err(io_error(format!("writing bank {path}")))?;
        bank.sync()
            .map_err(io_error(format!("syncing bank {path}")))?;
        record(
            BankProgress {
                header_digest,
                done: index + 1,
            },
            total,
        )
    })?;
    let rebuilt = hash_of(&crate::bank::BankSource(&*bank), header.target_len)
        .map_err(io_error(format!("reading bank {path}")))?;
    if rebuilt != header.target {
        return Err(ApplyError::FinalHash {
            expected: header.target,
            actual: rebuilt,
        });
    }
    Ok(Applied {
        target: header.target,
        target_len: header.target_len,
        segments: total,
        resumed_at,
    })
}

impl<B: Bank + ?Sized> ReadAt for crate::bank::BankSource<'_, B> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}

struct FileRead<'a, F: StorageFile>(&'a F);

impl<F: StorageFile> ReadAt for FileRead<'_, F> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}

/// The BLAKE3 of the first `len` bytes, read a megabyte at a time.
pub(crate) fn hash_of<R: ReadAt + ?Sized>(reader: &R, len: u64) -> io::Result<BlobId> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; READ_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        reader.read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(BlobId::from_bytes(*hasher.finalize().as_bytes()))
}

/// The next segment an earlier attempt recorded for this delta, if its journal is whole.
fn read_journal<S: Storage>(storage: &S, name: &str, header_digest: &[u8; 32]) -> Option<usize> {
    let file = storage.open(name, false).ok()?;
    if file.len().ok()? != JOURNAL_LEN as u64 {
        return None;
    }
    let mut bytes = [0u8; JOURNAL_LEN];
    file.read_exact_at(0, &mut bytes).ok()?;
    let (body, check) = bytes.split_at(JOURNAL_LEN - 32);
    if blake3::hash(body).as_bytes() != check
        || &body[..8] != JOURNAL_MAGIC
        || &body[8..40] != header_digest
    {
        return None;
    }
    usize::try_from(u64::from_le_bytes(body[40..48].try_into().ok()?)).ok()
}

fn write_journal<S: Storage>(
    storage: &S,
    name: &str,
    header_digest: &[u8; 32],
    next: usize,
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(JOURNAL_LEN);
    bytes.extend_from_slice(JOURNAL_MAGIC);
    bytes.extend_from_slice(header_digest);
    bytes.extend_from_slice(&(next as u64).to_le_bytes());
    let check = *blake3::hash(&bytes).as_bytes();
    bytes.extend_from_slice(&check);
    let temp = format!("{name}.tmp");
    let file = storage.open(&temp, true)?;
    file.set_len(0)?;
    file.write_all_at(0, &bytes)?;
    file.sync()?;
    drop(file);
    storage.rename(&temp, name)?;
    let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
    storage.sync_dir(dir)
}

/// `vehicle-peer apply-delta`: rebuilds `out` from the file `from` and the delta file `delta`;
/// returns the JSON summary line.
pub fn apply_files(
    from: &std::path::Path,
    delta: &std::path::Path,
    out: &std::path::Path,
    expect_target: Option<BlobId>,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let source = std::fs::File::open(from)
        .with_context(|| format!("opening the source {}", from.display()))?;
    let delta_file = std::fs::File::open(delta)
        .with_context(|| format!("opening the delta {}", delta.display()))?;
    let source_len = source.metadata()?.len();
    let delta_len = delta_file.metadata()?.len();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--out {} must end in a file name", out.display()))?;
    let storage = node::storage::DiskStorage::new(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    let inputs = ApplyInputs {
        source: &source,
        source_len,
        delta: &delta_file,
        delta_len,
        expect_target,
    };
    let applied = apply(&storage, name, &inputs, |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("applying {} to {}", delta.display(), from.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(serde_json::json!({
        "out": out.display().to_string(),
        "target": applied.target.to_string(),
        "target_bytes": applied.target_len,
        "segments": applied.segments,
        "resumed_at_segment": applied.resumed_at,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
