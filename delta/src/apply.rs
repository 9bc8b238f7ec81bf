//! Applying a delta: streaming, bounded in memory, verified segment by segment, and resumable
//! after a crash or power cut at any instant.
//!
//! [`DeltaSegments::apply`] rebuilds the target into anything written at offsets ([`WriteAt`]):
//! an ECU's bank, a partial file. Each segment is decoded, checked against the target's hash tree, written and
//! synced before the caller's `record` hears of it; the caller journals that [`Progress`]
//! durably, in whatever store it keeps, and hands it back after a restart, so a finished segment
//! is never written again. The journal names the delta by the hash of its header, so progress of
//! another delta starts over. When every segment is in, the target's bytes are hashed once more
//! against the target id ([`ApplyError::FinalHash`] when the medium changed them).
//!
//! Memory: one segment out, its streams, and the source window its extra stream was compressed
//! against (at most 64 MiB) — never the image.

use std::io;

use proto::{BlobId, ReadAt};

use crate::format::{DeltaError, DeltaHeader};
use crate::segment::SegmentDecoder;

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
    /// The finished target did not hash to the target id (the medium changed it); the caller
    /// drops its progress so the next attempt starts over.
    #[error(
        "the rebuilt file hashes to {actual}, not the target {expected}; starting over next time"
    )]
    FinalHash {
        /// The target id.
        expected: BlobId,
        /// What the target hashed to.
        actual: BlobId,
    },
    /// Reading the delta or source, writing the target, or recording progress failed.
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

/// Where an apply writes: positioned writes, durable once [`WriteAt::sync`] returns, and read
/// back for the final check. A bank, a boot medium, a partial file.
pub trait WriteAt: ReadAt {
    /// Writes all of `data` at `offset`.
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every finished write durable.
    fn sync(&mut self) -> io::Result<()>;
}

impl WriteAt for std::fs::File {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_data()
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

/// Where a resumable apply stands, for the caller's journal: the delta (by the hash of its
/// header) and how many segments are durably in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// BLAKE3 of the delta's header: progress of another delta does not count.
    pub header_digest: [u8; 32],
    /// Segments written and synced.
    pub done: usize,
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
/// to apply them, or for a caller that decodes them more than once or out of a loop, as a
/// remapping bank does: once to plan, once to write.
#[derive(Debug)]
pub struct DeltaSegments {
    header: DeltaHeader,
    header_digest: [u8; 32],
    decoder: SegmentDecoder,
    body: Vec<u8>,
}

impl DeltaSegments {
    /// Checks the delta of `inputs` as an apply does (lengths, target, source) before a segment
    /// is decoded.
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

    /// The first segment not yet done by `progress`: its count when it is progress of this delta,
    /// else 0.
    pub fn resume_at(&self, progress: Option<Progress>) -> usize {
        progress
            .filter(|p| {
                p.header_digest == self.header_digest && p.done <= self.header.segments.len()
            })
            .map_or(0, |p| p.done)
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
        self.decoder
            .decode(&self.header, index, &self.body, &inputs.source, out)?;
        Ok(self.header.target_range(index).start)
    }

    /// Rebuilds the target into `target` (named `target_name` in errors) from byte 0, resuming
    /// after `resume` when it is for this delta (else starting over). Each segment is decoded,
    /// checked against the target's hash tree, written and synced before `record` is called with
    /// the new progress and the segment count: the caller journals it, durably, and a restart
    /// passes it back. At the end the target's first `target_len` bytes are hashed once more
    /// against the target id; on a mismatch ([`ApplyError::FinalHash`]) the caller drops its
    /// progress and the next attempt starts over. ([`DeltaSegments::write_into`], then
    /// [`DeltaSegments::check_written`].)
    pub fn apply<W, R, D>(
        mut self,
        inputs: &ApplyInputs<'_, R, D>,
        target: &mut W,
        target_name: &str,
        resume: Option<Progress>,
        record: impl FnMut(Progress, usize) -> Result<(), ApplyError>,
    ) -> Result<Applied, ApplyError>
    where
        W: WriteAt + ?Sized,
        R: ReadAt + ?Sized,
        D: ReadAt + ?Sized,
    {
        let resumed_at = self.write_into(inputs, target, target_name, resume, record)?;
        self.check_written(&*target, target_name)?;
        Ok(Applied {
            target: self.header.target,
            target_len: self.header.target_len,
            segments: self.header.segments.len(),
            resumed_at,
        })
    }

    /// Decodes the segments `resume` does not count as done, in order, and writes each at its
    /// target offset into `target`, synced before `record(progress, segment count)` is called.
    /// Returns the first segment it decoded.
    pub fn write_into<W, R, D>(
        &mut self,
        inputs: &ApplyInputs<'_, R, D>,
        target: &mut W,
        target_name: &str,
        resume: Option<Progress>,
        mut record: impl FnMut(Progress, usize) -> Result<(), ApplyError>,
    ) -> Result<usize, ApplyError>
    where
        W: WriteAt + ?Sized,
        R: ReadAt + ?Sized,
        D: ReadAt + ?Sized,
    {
        let from = self.resume_at(resume);
        let total = self.header.segments.len();
        let mut out = Vec::new();
        for index in from..total {
            let at = self.decode(inputs, index, &mut out)?;
            target
                .write_all_at(at, &out)
                .map_err(io_error(format!("writing {target_name}")))?;
            target
                .sync()
                .map_err(io_error(format!("syncing {target_name}")))?;
            record(
                Progress {
                    header_digest: self.header_digest,
                    done: index + 1,
                },
                total,
            )?;
        }
        Ok(from)
    }

    /// Hashes the first `target_len` bytes of `target` against the target id.
    pub fn check_written<T: ReadAt + ?Sized>(
        &self,
        target: &T,
        target_name: &str,
    ) -> Result<(), ApplyError> {
        let rebuilt = hash_of(target, self.header.target_len)
            .map_err(io_error(format!("reading {target_name}")))?;
        if rebuilt != self.header.target {
            return Err(ApplyError::FinalHash {
                expected: self.header.target,
                actual: rebuilt,
            });
        }
        Ok(())
    }
}

/// The BLAKE3 of the first `len` bytes, read a megabyte at a time.
pub fn hash_of<R: ReadAt + ?Sized>(reader: &R, len: u64) -> io::Result<BlobId> {
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
