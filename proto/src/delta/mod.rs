//! The delta format: a target image rebuilt from a source image in independently decodable,
//! independently verified segments.
//!
//! A delta is a blob like any other (addressed by its BLAKE3, moved in verified chunk groups). This
//! module is its format: the header, the segment encoding, and a decoder that needs only the
//! source (read at offsets through [`SourceRead`]) and one segment's bytes. The matcher that
//! chooses what to put in a segment lives in `origin`; the streaming, resumable apply lives in
//! `vehicle-peer`.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! ```text
//! header   magic "DMDELTA\0" (8) · version u16 = 1 · flags u16 = 0 · header_len u32
//!          source id [32] · source_len u64 · target id [32] · target_len u64
//!          segment_log u8 (14..=24) · reserved [3] = 0 · segment_count u32
//!          segment_count × { encoded_len u32 · chaining value [32] }
//! segments segment_count bodies, back to back, each exactly its encoded_len
//! ```
//!
//! `header_len` is the whole header, `104 + 36 × segment_count` bytes, at most
//! [`MAX_HEADER_LEN`]. Segment `i` rebuilds target bytes `[i << segment_log, (i + 1) <<
//! segment_log)` (the last one ends at `target_len`), so `segment_count` is
//! `ceil(target_len / 2^segment_log)`. Segments are whole, aligned subtrees of the target's BLAKE3
//! tree: the chaining values in the table are that tree's nodes, and a header is accepted only if
//! they merge to the target id. A finished segment is then checked against its own value before it
//! counts as done, so an apply can stop after any segment and resume at the next one, and a target
//! whose segments all check out *is* the target.
//!
//! ## Segment body
//!
//! ```text
//! flags u8            bit 0: word diff · bit 1: the extra stream references a source window
//! [bit 1] ref_offset u64 · ref_len u32       source window (≤ MAX_REF_WINDOW) the extra stream
//!                                            was compressed against (zstd "patch-from")
//! [bit 0] phase u8 (0..4)                    word alignment: words start where target offset ≡ phase (mod 4)
//! control: codec u8 · raw_len u32 · packed_len u32
//! diff:    codec u8 · raw_len u32 · packed_len u32
//! extra:   codec u8 · raw_len u32 · packed_len u32
//! the packed control, diff and extra streams (a stream with raw_len 0 has packed_len 0, codec 0)
//! ```
//!
//! Codecs: 0 a zstd frame; 1 a zstd frame compressed with the source window as prefix (extra
//! stream only); 2 raw LZMA2 (preset 9e, pb 0, dictionary the stream's length rounded up to a
//! power of two, 4 KiB..=32 MiB); 3 the x86 branch converter then raw LZMA2; 4 raw LZMA2 with
//! the source window as preset dictionary (extra stream only; pb 0, dictionary exactly window
//! plus stream length, at most [`MAX_LZMA_DICT`]); 5 as 4, with the stream and the window each
//! first through the x86 branch converter (BCJ), the stream counting positions from the
//! segment's target offset and the window from its source offset, both modulo 2^32 — so a call
//! into code that kept its address reads the same in both. LZMA's finer entropy coding wins most
//! diff streams (mostly zeros with the changed bytes of moved pointers between them) and, with
//! the window as dictionary, the extra streams of far releases of compiled code, 10–15 % under
//! zstd's patch-from.
//!
//! A decoder of codecs 4 and 5 need not hold the window twice: an LZMA2 stream that starts with
//! the window as stored (uncompressed, 64 KiB) chunks, the first resetting the dictionary, and
//! continues with the frame (whose first chunk resets state and properties but not the
//! dictionary) decodes to the window followed by the stream — the window can be streamed from
//! the source into the decoder's dictionary.
//!
//! The control stream is a list of operations, each three LEB128 varints: `seek` (zigzag signed:
//! where the next source read starts, relative to where the previous one ended; the first is
//! relative to the segment's own target offset), `diff_len`, `extra_len`. An operation writes
//! `diff_len` bytes of source-plus-diff, then `extra_len` bytes taken from the extra stream — the
//! bsdiff construction (Percival, "Naive differences of executable code", 2003). Without word
//! diff, a diff byte is added to its source byte modulo 256. With word diff, target bytes whose
//! four-byte word (aligned by `phase`) lies inside one operation's diff run are rebuilt as a
//! little-endian `u32`: source word plus the signed difference, stored zigzagged (`(d << 1) ^
//! (d >> 31)`, so small changes either way have zero high bytes); the rest byte by byte; and the diff
//! stream holds four planes one after the other — plane `k` the diff bytes at target offsets
//! `≡ phase + k (mod 4)` — so a run of perturbed `f32`s puts its unchanged sign/exponent bytes
//! together, where they compress to nothing.
//!
//! The extra stream, compressed with the source window as a zstd prefix, is zstd's own
//! `--patch-from`: a segment whose control is one operation with no diff is exactly a
//! patch-from of that segment, so the format holds both tools' constructions and the creator
//! picks, per segment, whichever is smaller.
//!
//! ## Limits (what a decoder will allocate)
//!
//! A segment is at most 2^24 bytes (16 MiB); the control and extra streams decode to at most a
//! segment each and the diff stream to at most its sum of diff runs; a source window is at most
//! [`MAX_REF_WINDOW`]; zstd frames may not declare a window over 2^[`MAX_WINDOW_LOG`]; an LZMA
//! dictionary of codecs 4 and 5 is at most [`MAX_LZMA_DICT`] (window plus stream) and replaces
//! the window buffer. The decoder therefore holds at most about 72 + 4 × 16 MiB whatever the
//! image size, and 72 + 4 × 8 MiB at the creator's default segment size.

mod segment;
mod tree;

pub use segment::{Op, SegmentDecoder, SegmentEncoder, SegmentPlan, SourceView};

use crate::BlobId;

/// The first bytes of every delta.
pub const MAGIC: [u8; 8] = *b"DMDELTA\0";
/// The format version this module reads and writes.
pub const VERSION: u16 = 1;
/// The fixed part of the header: everything before the segment table.
pub const FIXED_HEADER_LEN: usize = 104;
/// One segment table entry: encoded length and chaining value.
pub const SEGMENT_ENTRY_LEN: usize = 36;
/// The most header a decoder accepts (about 29 000 segments).
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Smallest segment: one 16 KiB chunk group.
pub const MIN_SEGMENT_LOG: u8 = 14;
/// Largest segment: 16 MiB.
pub const MAX_SEGMENT_LOG: u8 = 24;
/// Largest source window a segment's extra stream may be compressed against.
pub const MAX_REF_WINDOW: u32 = 64 << 20;
/// Largest LZMA2 dictionary (source window plus extra stream) of codecs 4 and 5.
pub const MAX_LZMA_DICT: u32 = 72 << 20;
/// Largest zstd window a frame may declare (128 MiB covers a full window plus a segment).
pub const MAX_WINDOW_LOG: u32 = 27;

/// Why a delta (or applying it) was refused. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The bytes do not start with [`MAGIC`].
    #[error("not a depotmesh delta (bad magic)")]
    BadMagic,
    /// A version this decoder does not read.
    #[error("delta format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    /// The input ended before the named part.
    #[error("delta is truncated: {0} is incomplete")]
    Truncated(&'static str),
    /// A header field is out of range or inconsistent.
    #[error("delta header: {0}")]
    BadHeader(String),
    /// The segment chaining values do not merge to the target id.
    #[error("delta header: segment hashes do not add up to the target id {0}")]
    TreeMismatch(BlobId),
    /// The source given is not the one the delta was made from.
    #[error(
        "wrong source: the delta was made from {expected} ({expected_len} bytes), this source is {actual} ({actual_len} bytes)"
    )]
    WrongSource {
        /// The source the header names.
        expected: BlobId,
        /// Its length.
        expected_len: u64,
        /// The source at hand.
        actual: BlobId,
        /// Its length.
        actual_len: u64,
    },
    /// A segment body is malformed.
    #[error("delta segment {segment}: {detail}")]
    Corrupt {
        /// Which segment.
        segment: usize,
        /// What was wrong.
        detail: String,
    },
    /// A segment decoded, but to bytes other than the target's.
    #[error("delta segment {segment} rebuilt bytes that do not match the target's hash tree")]
    SegmentMismatch {
        /// Which segment.
        segment: usize,
    },
    /// Reading the source failed.
    #[error("reading the source at offset {offset}: {source}")]
    Source {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Compressing a segment failed (creator side only).
    #[error("compressing segment {segment}: {detail}")]
    Compress {
        /// Which segment.
        segment: usize,
        /// zstd's message.
        detail: String,
    },
}

/// One segment table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentEntry {
    /// The segment body's length in the delta.
    pub encoded_len: u32,
    /// The chaining value of the target bytes it rebuilds.
    pub cv: [u8; 32],
}

/// A parsed, checked delta header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The source image the delta reads.
    pub source: BlobId,
    /// Its length in bytes.
    pub source_len: u64,
    /// The target image the delta rebuilds.
    pub target: BlobId,
    /// Its length in bytes.
    pub target_len: u64,
    /// log2 of the segment size.
    pub segment_log: u8,
    /// One entry per segment, in target order.
    pub segments: Vec<SegmentEntry>,
}

impl DeltaHeader {
    /// How many header bytes the first 16 bytes of a delta announce, after checking magic and
    /// version. Read that many bytes and hand them to [`DeltaHeader::parse`].
    pub fn announced_len(prefix: &[u8]) -> Result<usize, DeltaError> {
        if prefix.len() < 16 {
            return Err(DeltaError::Truncated("header"));
        }
        if prefix[..8] != MAGIC {
            return Err(DeltaError::BadMagic);
        }
        let version = u16::from_le_bytes([prefix[8], prefix[9]]);
        if version != VERSION {
            return Err(DeltaError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([prefix[10], prefix[11]]);
        if flags != 0 {
            return Err(DeltaError::BadHeader(format!(
                "unknown header flags {flags:#06x}"
            )));
        }
        let len = u32::from_le_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]) as usize;
        if len > MAX_HEADER_LEN {
            return Err(DeltaError::BadHeader(format!(
                "header of {len} bytes exceeds the limit of {MAX_HEADER_LEN}"
            )));
        }
        if len < FIXED_HEADER_LEN {
            return Err(DeltaError::BadHeader(format!(
                "header of {len} bytes is too short"
            )));
        }
        Ok(len)
    }

    /// Parses and checks a header: field ranges, segment count against the target length, and
    /// that the segment chaining values merge to the target id. `bytes` may run on past the
    /// header; the header's length is returned alongside.
    pub fn parse(bytes: &[u8]) -> Result<(Self, usize), DeltaError> {
        let len = Self::announced_len(bytes)?;
        let header = bytes.get(..len).ok_or(DeltaError::Truncated("header"))?;
        let mut r = Reader {
            bytes: header,
            at: 16,
        };
        let source = BlobId::from_bytes(r.array()?);
        let source_len = r.u64()?;
        let target = BlobId::from_bytes(r.array()?);
        let target_len = r.u64()?;
        let segment_log = r.u8()?;
        let reserved: [u8; 3] = r.array()?;
        let count = r.u32()? as usize;
        if !(MIN_SEGMENT_LOG..=MAX_SEGMENT_LOG).contains(&segment_log) {
            return Err(DeltaError::BadHeader(format!(
                "segment size 2^{segment_log} is outside 2^{MIN_SEGMENT_LOG}..=2^{MAX_SEGMENT_LOG}"
            )));
        }
        if reserved != [0; 3] {
            return Err(DeltaError::BadHeader("reserved bytes are not zero".into()));
        }
        let expected_count = target_len.div_ceil(1 << segment_log);
        if count as u64 != expected_count {
            return Err(DeltaError::BadHeader(format!(
                "{count} segments for a target of {target_len} bytes in 2^{segment_log}-byte segments (expected {expected_count})"
            )));
        }
        if len != FIXED_HEADER_LEN + SEGMENT_ENTRY_LEN * count {
            return Err(DeltaError::BadHeader(format!(
                "header length {len} does not fit {count} segments"
            )));
        }
        let mut segments = Vec::with_capacity(count);
        // A body is never much larger than the bytes it rebuilds (incompressible data stores at a
        // small overhead); refusing more keeps a decoder's buffer bounded by the format.
        let max_body = (2u64 << segment_log) + (1 << 20);
        for i in 0..count {
            let encoded_len = r.u32()?;
            if u64::from(encoded_len) > max_body {
                return Err(DeltaError::BadHeader(format!(
                    "segment {i} claims {encoded_len} bytes, more than {max_body} for a 2^{segment_log}-byte segment"
                )));
            }
            let cv = r.array()?;
            segments.push(SegmentEntry { encoded_len, cv });
        }
        let parsed = Self {
            source,
            source_len,
            target,
            target_len,
            segment_log,
            segments,
        };
        let cvs: Vec<[u8; 32]> = parsed.segments.iter().map(|s| s.cv).collect();
        if tree::root_of(&cvs) != *target.as_bytes() {
            return Err(DeltaError::TreeMismatch(target));
        }
        Ok((parsed, len))
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let len = FIXED_HEADER_LEN + SEGMENT_ENTRY_LEN * self.segments.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(&self.source_len.to_le_bytes());
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(&self.target_len.to_le_bytes());
        out.push(self.segment_log);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(
            &u32::try_from(self.segments.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for segment in &self.segments {
            out.extend_from_slice(&segment.encoded_len.to_le_bytes());
            out.extend_from_slice(&segment.cv);
        }
        out
    }

    /// The header's length in bytes.
    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN + SEGMENT_ENTRY_LEN * self.segments.len()
    }

    /// Whether the delta rebuilds an empty target (no segments).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// The segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        1 << self.segment_log
    }

    /// The target byte range segment `index` rebuilds.
    pub fn target_range(&self, index: usize) -> std::ops::Range<u64> {
        let start = (index as u64) << self.segment_log;
        start..(start + self.segment_size()).min(self.target_len)
    }

    /// Where segment `index`'s body starts in the delta, counted from the delta's first byte.
    pub fn body_offset(&self, index: usize) -> u64 {
        self.len() as u64
            + self.segments[..index.min(self.segments.len())]
                .iter()
                .map(|s| u64::from(s.encoded_len))
                .sum::<u64>()
    }

    /// The whole delta's length: header plus every body.
    pub fn delta_len(&self) -> u64 {
        self.body_offset(self.segments.len())
    }

    /// Refuses a source other than the one the delta was made from.
    pub fn check_source(&self, actual: BlobId, actual_len: u64) -> Result<(), DeltaError> {
        if actual != self.source || actual_len != self.source_len {
            return Err(DeltaError::WrongSource {
                expected: self.source,
                expected_len: self.source_len,
                actual,
                actual_len,
            });
        }
        Ok(())
    }

    /// Checks rebuilt bytes of segment `index` against the target's hash tree.
    pub fn check_segment(&self, index: usize, bytes: &[u8]) -> Result<(), DeltaError> {
        let range = self.target_range(index);
        let entry = self
            .segments
            .get(index)
            .ok_or_else(|| DeltaError::Corrupt {
                segment: index,
                detail: "no such segment".into(),
            })?;
        if bytes.len() as u64 != range.end - range.start
            || tree::segment_cv(self.segments.len(), range.start, bytes) != entry.cv
        {
            return Err(DeltaError::SegmentMismatch { segment: index });
        }
        Ok(())
    }

    /// The chaining value of target bytes at segment `index` (what the creator puts in the
    /// table).
    pub fn chaining_value(
        segment_count: usize,
        segment_log: u8,
        index: usize,
        bytes: &[u8],
    ) -> [u8; 32] {
        tree::segment_cv(segment_count, (index as u64) << segment_log, bytes)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DeltaError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DeltaError::Truncated("header"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DeltaError::Truncated("header"))?;
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DeltaError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DeltaError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Where a decoder reads the source image: at any offset, any length, exactly.
pub trait SourceRead {
    /// Fills `buf` with the source bytes at `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl SourceRead for &[u8] {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let bytes = self
            .get(start..end)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}
