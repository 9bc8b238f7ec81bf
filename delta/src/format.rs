//! The header of a delta, the format's limits, and the errors of a delta refused. The layout is
//! in the crate docs.

use proto::BlobId;

use crate::refs::{MAX_MODEL_SOURCE, ReferenceModel};
use crate::tree;

/// Header flag: a reference model follows the segment table.
const HEADER_FLAG_MODEL: u16 = 1;
/// Most bytes of a header's packed reference model.
pub const MAX_MODEL_FRAME: usize = 768 << 10;

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
        detail: BodyError,
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
        /// What failed.
        detail: EncodeError,
    },
}

/// What is wrong inside one segment body (the detail of [`DeltaError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The header has no entry for the segment.
    #[error("no such segment")]
    NoSuchSegment,
    /// The body's length is not the one its table entry gives.
    #[error("body is {actual} bytes, the header says {expected}")]
    Length {
        /// The body's length.
        actual: usize,
        /// The table's.
        expected: u32,
    },
    /// The body ends before its own header does.
    #[error("body ends inside its header")]
    ShortHeader,
    /// Flags this decoder does not know.
    #[error("unknown flags {0:#04x}")]
    Flags(u8),
    /// A source window of no bytes or over [`MAX_REF_WINDOW`].
    #[error("source window of {0} bytes (allowed 1..={MAX_REF_WINDOW})")]
    WindowSize(u32),
    /// A source window that ends past the source.
    #[error("source window {offset}+{len} runs past the source ({source_len} bytes)")]
    WindowPastSource {
        /// Where the window starts.
        offset: u64,
        /// Its length.
        len: u32,
        /// The source's length.
        source_len: u64,
    },
    /// A segment corrects references, and the header has no reference model.
    #[error("the segment corrects references but the header has no reference model")]
    NoModel,
    /// A segment corrects references, and the source is not an image of the model's kind.
    #[error("the segment corrects references but the source is not a {0:?} ELF image")]
    NotExecutable(crate::refs::Arch),
    /// A word phase outside 0..4.
    #[error("word phase {0} (must be 0..4)")]
    Phase(u8),
    /// A codec byte this decoder does not know.
    #[error("unknown stream codec {0}")]
    UnknownCodec(u8),
    /// A stream whose raw and packed lengths are not both zero or both non-zero.
    #[error("an empty stream must have an empty frame and only it")]
    EmptyStream,
    /// A codec that reads the source window, where there is none or on another stream.
    #[error("codec {0}: only the extra stream of a segment with a source window may use it")]
    WindowCodec(u8),
    /// An LZMA dictionary (window plus stream) over [`MAX_LZMA_DICT`].
    #[error("an LZMA dictionary of window plus stream over {MAX_LZMA_DICT} bytes")]
    DictTooLarge,
    /// The streams' packed lengths do not add up to the body.
    #[error("streams take {streams} bytes, the body has {body}")]
    StreamsLength {
        /// What the stream headers add up to.
        streams: u64,
        /// The body's length.
        body: usize,
    },
    /// A stream longer than its segment allows.
    #[error("a stream is longer than the segment allows")]
    StreamTooLong,
    /// A stream does not decompress.
    #[error("{stream} stream: {source}")]
    Stream {
        /// Which stream: control, diff or extra.
        stream: &'static str,
        /// Why.
        source: CodecError,
    },
    /// The operations use other amounts of diff and extra bytes than the streams hold.
    #[error(
        "operations use {diff} diff and {extra} extra bytes, the streams hold {diff_len} and {extra_len}"
    )]
    StreamUse {
        /// Diff bytes the operations use.
        diff: u64,
        /// Extra bytes they use.
        extra: u64,
        /// Diff bytes in the stream.
        diff_len: u32,
        /// Extra bytes in the stream.
        extra_len: u32,
    },
    /// The control stream holds a malformed varint.
    #[error("control stream: bad varint")]
    Varint,
    /// An operation seeks outside the source's address space.
    #[error("operation {op}: seek {seek} from {pos} leaves the source")]
    SeekOutside {
        /// Which operation.
        op: usize,
        /// Its seek.
        seek: i64,
        /// Where it seeks from.
        pos: u64,
    },
    /// An operation reads past the source's end.
    #[error("operation {op}: reads source {src}+{diff}, past its {source_len} bytes")]
    ReadPastSource {
        /// Which operation.
        op: usize,
        /// Where it reads.
        src: u64,
        /// How much.
        diff: u64,
        /// The source's length.
        source_len: u64,
    },
    /// An operation that writes nothing.
    #[error("operation {0} is empty")]
    EmptyOp(usize),
    /// An operation writes past the segment's end.
    #[error("operation {op} writes past the segment's {seg_len} bytes")]
    PastSegment {
        /// Which operation.
        op: usize,
        /// The segment's length.
        seg_len: u64,
    },
    /// The operations leave part of the segment unwritten.
    #[error("operations write {written} of the segment's {seg_len} bytes")]
    Unwritten {
        /// Bytes they write.
        written: u64,
        /// The segment's length.
        seg_len: u64,
    },
}

impl BodyError {
    pub(crate) fn stream(stream: &'static str, source: CodecError) -> Self {
        Self::Stream { stream, source }
    }
}

/// Why one stream could not be compressed or decompressed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// zstd refused, with its error name.
    #[error("{0}")]
    Zstd(&'static str),
    /// liblzma refused to set up or run a coder.
    #[error("{0}")]
    Lzma(liblzma::stream::Error),
    /// The LZMA data is malformed.
    #[error("lzma: {0}")]
    LzmaData(liblzma::stream::Error),
    /// The LZMA2 decoder over the source window failed.
    #[error("lzma: {0}")]
    LzmaRead(std::io::Error),
    /// The x86 converter or the LZMA2 encoder failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// A stream decoded to another length than its header gives.
    #[error("decoded to {decoded} bytes, expected {expected}")]
    Length {
        /// Bytes decoded.
        decoded: usize,
        /// Bytes the header gives.
        expected: u32,
    },
    /// An LZMA stream that goes on after its length.
    #[error("lzma stream does not end after its {0} bytes")]
    NoEnd(u32),
    /// An LZMA stream that ends before its frame does.
    #[error("lzma stream ends {0} bytes before its frame")]
    EndsEarly(usize),
    /// Window plus stream over [`MAX_LZMA_DICT`].
    #[error("window plus stream exceed the {MAX_LZMA_DICT}-byte dictionary")]
    DictTooLarge,
    /// A codec that needs the source window, without one.
    #[error("{0:?} needs a source window")]
    NeedsWindow(Codec),
    /// A codec of the extra stream on another stream.
    #[error("{0:?} is only for an extra stream")]
    ExtraOnly(Codec),
    /// No codec was given to choose from.
    #[error("no codec")]
    NoCodec,
}

/// Why the creator could not encode a segment as planned (the detail of
/// [`DeltaError::Compress`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A diff run reads source bytes the creator does not hold.
    #[error("diff run at source {src} is outside the view")]
    OutsideView {
        /// Where the run starts in the source.
        src: u64,
    },
    /// The operations run past the segment's bytes.
    #[error("operations run past the segment")]
    PastSegment,
    /// The operations do not cover the whole segment.
    #[error("operations cover {covered} of {len} bytes")]
    Uncovered {
        /// Bytes covered.
        covered: usize,
        /// The segment's length.
        len: usize,
    },
    /// The source window is empty, too large or outside the view.
    #[error("source window {offset}+{len} is not usable")]
    Window {
        /// Where it starts.
        offset: u64,
        /// Its length.
        len: u32,
    },
    /// A stream could not be compressed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// How one stream of a segment body is compressed (the codec byte of its stream header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// A zstd frame.
    Zstd = 0,
    /// A zstd frame compressed with the segment's source window as prefix (extra stream only).
    ZstdRef = 1,
    /// Raw LZMA2 (dictionary: the stream's length rounded up to a power of two, 4 KiB..=32 MiB).
    Lzma = 2,
    /// The x86 branch converter, then raw LZMA2.
    X86Lzma = 3,
    /// Raw LZMA2 with the segment's source window as preset dictionary (extra stream only).
    LzmaRef = 4,
    /// [`Codec::LzmaRef`] with the stream and the window each through the x86 branch converter.
    X86LzmaRef = 5,
}

impl Codec {
    pub(crate) fn uses_window(self) -> bool {
        matches!(self, Self::ZstdRef | Self::LzmaRef | Self::X86LzmaRef)
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Zstd,
            1 => Self::ZstdRef,
            2 => Self::Lzma,
            3 => Self::X86Lzma,
            4 => Self::LzmaRef,
            5 => Self::X86LzmaRef,
            _ => return None,
        })
    }
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
    /// The references model of an executable-aware delta (header flag bit 0): the target's
    /// loads and where the source's addresses went ([`crate::refs`]).
    pub model: Option<ReferenceModel>,
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
        if flags & !HEADER_FLAG_MODEL != 0 {
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
        let has_model = u16::from_le_bytes([header[10], header[11]]) & HEADER_FLAG_MODEL != 0;
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
        let table_end = FIXED_HEADER_LEN + SEGMENT_ENTRY_LEN * count;
        if (!has_model && len != table_end) || (has_model && len < table_end + 4) {
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
        let model = if has_model {
            if source_len > MAX_MODEL_SOURCE {
                return Err(DeltaError::BadHeader(format!(
                    "a reference model over a source of {source_len} bytes (at most {MAX_MODEL_SOURCE})"
                )));
            }
            let frame_len = r.u32()? as usize;
            if frame_len > MAX_MODEL_FRAME || len != table_end + 4 + frame_len {
                return Err(DeltaError::BadHeader(format!(
                    "reference model of {frame_len} bytes does not fit the header's {len} (at most {MAX_MODEL_FRAME})"
                )));
            }
            let frame = r.take(frame_len)?;
            Some(ReferenceModel::unpack(frame).map_err(|e| DeltaError::BadHeader(e.to_string()))?)
        } else {
            None
        };
        let parsed = Self {
            source,
            source_len,
            target,
            target_len,
            segment_log,
            segments,
            model,
        };
        let cvs: Vec<[u8; 32]> = parsed.segments.iter().map(|s| s.cv).collect();
        if tree::root_of(&cvs) != *target.as_bytes() {
            return Err(DeltaError::TreeMismatch(target));
        }
        Ok((parsed, len))
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.model.is_some() {
            HEADER_FLAG_MODEL
        } else {
            0
        };
        out.extend_from_slice(&flags.to_le_bytes());
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
        if let Some(model) = &self.model {
            let frame = model.packed_bytes();
            out.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(frame);
        }
        out
    }

    /// The header's length in bytes.
    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN
            + SEGMENT_ENTRY_LEN * self.segments.len()
            + self
                .model
                .as_ref()
                .map_or(0, |m| 4 + m.packed_bytes().len())
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
        let entry = self.segments.get(index).ok_or(DeltaError::Corrupt {
            segment: index,
            detail: BodyError::NoSuchSegment,
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
