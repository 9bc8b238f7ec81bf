//! Segment bodies: encoding (creator side) and decoding (apply side). See the crate docs for the
//! layout.

// Every length cast here is of a stream or run already checked against the segment's size (at
// most 16 MiB), and varint bytes are masked to 7 bits before their cast.
#![allow(clippy::cast_possible_truncation)]

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

use proto::ReadAt;

use std::sync::Arc;

use proto::BlobId;

use crate::format::{
    BodyError, Codec, CodecError, DeltaError, DeltaHeader, EncodeError, MAX_LZMA_DICT,
    MAX_REF_WINDOW, MAX_WINDOW_LOG,
};
use crate::refs::{Correction, References};
use crate::varint::{get_varint, put_varint};

const FLAG_WORD_DIFF: u8 = 1;
const FLAG_REF_WINDOW: u8 = 2;
const FLAG_REFERENCES: u8 = 4;
/// Control bytes a segment may carry beyond one per target byte (the creator stays far below).
const CONTROL_SLACK: u64 = 4096;

/// One operation of a segment: `diff` bytes of source-plus-diff read from source offset `src`,
/// then `extra` bytes from the extra stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Absolute source offset of the diff run.
    pub src: u64,
    /// Length of the diff run.
    pub diff: u32,
    /// Bytes taken from the extra stream after it.
    pub extra: u32,
}

/// What the creator decided for one segment.
#[derive(Clone, Copy, Debug)]
pub struct SegmentPlan<'a> {
    /// The operations, covering the segment exactly.
    pub ops: &'a [Op],
    /// Word diff with this phase (0..4), or byte diff.
    pub word_phase: Option<u8>,
    /// Source window (offset, length) to compress the extra stream against.
    pub ref_window: Option<(u64, u32)>,
    /// Compress the extra stream against the window with LZMA2 (the window as its preset
    /// dictionary, plain and through the x86 branch converter) instead of with zstd. Often 10–15 %
    /// smaller on compiled code, and slow: LZMA indexes the whole window for each try.
    pub lzma_dict: bool,
    /// How hard to work on the streams.
    pub effort: Effort,
    /// Correct the source's references in byte diff runs against their predicted values
    /// (the delta's header must carry the model; not with word diff).
    pub correction: Option<Correction<'a>>,
}

/// How hard [`SegmentEncoder::encode`] works on a plan's streams. Both write a body that decodes
/// to the segment; they differ in size and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// The codecs that win in practice, one try per large stream: LZMA for a diff stream over
    /// [`SMALL_STREAM`] bytes (zstd too below it); for the extra stream, LZMA with the window as
    /// dictionary (through the x86 converter when `x86`) if the plan asks for it and it fits,
    /// else zstd against the window. The extra stream is compressed on a thread of its own
    /// while the control and diff streams are.
    Chosen {
        /// Put the extra stream (and window) through the x86 branch converter.
        x86: bool,
    },
    /// Every codec the plan allows, each stream the smallest of them: several times slower
    /// than [`Effort::Chosen`], for comparisons.
    Exhaustive,
}

/// What [`SegmentEncoder`] does with the streams: [`Effort`], or an estimate.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Fast zstd for every stream, the extra stream against the window (both through the x86
    /// converter when `x86`): a length that ranks candidate plans at a small fraction of the
    /// cost of encoding them. With `x86` the body does not decode; only its length counts.
    Estimate {
        x86: bool,
    },
    Encode(Effort),
}

/// Below this many bytes a stream is cheap to compress every way that could win.
pub const SMALL_STREAM: usize = 256 << 10;

/// zstd level of [`SegmentEncoder::estimate`].
const ESTIMATE_LEVEL: i32 = 6;

/// The part of the source the creator holds in memory: `bytes` are the source at `offset`.
#[derive(Clone, Copy, Debug)]
pub struct SourceView<'s> {
    /// Source offset of `bytes[0]`.
    pub offset: u64,
    /// The bytes.
    pub bytes: &'s [u8],
}

impl<'s> SourceView<'s> {
    fn get(&self, offset: u64, len: u64) -> Option<&'s [u8]> {
        let start = usize::try_from(offset.checked_sub(self.offset)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(start..end)
    }
}

/// The source bytes of `op`'s diff run and the target bytes they are diffed with, from `t` on.
fn diff_run<'s, 't>(
    source: SourceView<'s>,
    target: &'t [u8],
    op: &Op,
    t: usize,
) -> Result<(&'s [u8], &'t [u8]), EncodeError> {
    let old = source
        .get(op.src, u64::from(op.diff))
        .ok_or(EncodeError::OutsideView { src: op.src })?;
    let new = target
        .get(t..t + op.diff as usize)
        .ok_or(EncodeError::PastSegment)?;
    Ok((old, new))
}

/// What [`SegmentEncoder::estimate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// About how many bytes the segment's body would take.
    pub len: usize,
    /// Bytes in the plan's extra stream ...
    pub extra: usize,
    /// ... and what the estimate's codec made of them (against the plan's window, if any).
    pub extra_compressed: usize,
}

/// Compresses segment bodies. Holds a zstd context between segments; the source windows it
/// compresses against live as long as the view (`'s`).
pub struct SegmentEncoder<'s> {
    cctx: CCtx<'s>,
    level: i32,
}

impl std::fmt::Debug for SegmentEncoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentEncoder")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl<'s> SegmentEncoder<'s> {
    /// An encoder compressing streams at zstd `level` (1..=22).
    pub fn new(level: i32) -> Self {
        Self {
            cctx: CCtx::create(),
            level: level.clamp(1, zstd_safe::max_c_level()),
        }
    }

    /// Encodes segment `index` (target bytes `target`, at `target_offset`) as `plan` says.
    /// Every source byte the plan reads must be inside `source`.
    pub fn encode(
        &mut self,
        index: usize,
        target_offset: u64,
        target: &[u8],
        plan: &SegmentPlan<'_>,
        source: SourceView<'s>,
    ) -> Result<Vec<u8>, DeltaError> {
        self.work(
            index,
            target_offset,
            target,
            plan,
            source,
            Work::Encode(plan.effort),
        )
        .map(|(body, ..)| body)
    }

    /// About how many bytes the byte diff stream of `ops` takes, compressed with the estimate's
    /// fast codec, with the source's references corrected (`correction`) or not: the only
    /// stream correcting references changes, so two of these weigh a correction at a fraction
    /// of the cost of two full estimates (no window to index).
    pub fn estimate_diff(
        &mut self,
        index: usize,
        target: &[u8],
        target_offset: u64,
        ops: &[Op],
        source: SourceView<'s>,
        correction: Option<Correction<'_>>,
    ) -> Result<usize, DeltaError> {
        let bad = |detail: EncodeError| DeltaError::Compress {
            segment: index,
            detail,
        };
        let mut diff_bytes = Vec::new();
        let mut t = 0usize;
        for op in ops {
            let (old, new) = diff_run(source, target, op, t).map_err(bad)?;
            push_diff(
                &mut diff_bytes,
                old,
                new,
                op.src,
                target_offset + t as u64,
                correction,
            );
            t += (op.diff + op.extra) as usize;
        }
        compress_smallest(
            &mut self.cctx,
            ESTIMATE_LEVEL,
            &diff_bytes,
            &[Codec::Zstd],
            None,
            0,
        )
        .map(|(_, z)| z.len())
        .map_err(|e| bad(e.into()))
    }

    /// About how many bytes `plan` would take, from fast codecs (zstd at a low level, the
    /// extra stream against the plan's window), with the x86 converter applied first to the
    /// extra stream and the window when `x86`. `plan.effort` is not used. A small fraction of
    /// the cost of [`SegmentEncoder::encode`]; its results rank plans of one segment.
    pub fn estimate(
        &mut self,
        index: usize,
        target_offset: u64,
        target: &[u8],
        plan: &SegmentPlan<'_>,
        source: SourceView<'s>,
        x86: bool,
    ) -> Result<Estimate, DeltaError> {
        self.work(
            index,
            target_offset,
            target,
            plan,
            source,
            Work::Estimate { x86 },
        )
        .map(|(body, extra, extra_compressed)| Estimate {
            len: body.len(),
            extra,
            extra_compressed,
        })
    }

    fn work(
        &mut self,
        index: usize,
        target_offset: u64,
        target: &[u8],
        plan: &SegmentPlan<'_>,
        source: SourceView<'s>,
        work: Work,
    ) -> Result<(Vec<u8>, usize, usize), DeltaError> {
        let bad = |detail: EncodeError| DeltaError::Compress {
            segment: index,
            detail,
        };
        let mut control = Vec::new();
        let mut diff_bytes = Vec::new();
        let mut extra = Vec::new();
        let mut planes: [Vec<u8>; 4] = Default::default();
        let mut pos = target_offset;
        let mut t = 0usize;
        for op in plan.ops {
            let seek = op.src.wrapping_sub(pos) as i64;
            put_varint(&mut control, zigzag(seek));
            put_varint(&mut control, u64::from(op.diff));
            put_varint(&mut control, u64::from(op.extra));
            let (old, new) = diff_run(source, target, op, t).map_err(bad)?;
            match plan.word_phase {
                None => push_diff(
                    &mut diff_bytes,
                    old,
                    new,
                    op.src,
                    target_offset + t as u64,
                    plan.correction,
                ),
                Some(phase) => {
                    for_each_word(
                        target_offset + t as u64,
                        new.len(),
                        phase,
                        |j, plane, word| {
                            if word {
                                let n = u32::from_le_bytes([
                                    new[j],
                                    new[j + 1],
                                    new[j + 2],
                                    new[j + 3],
                                ]);
                                let o = u32::from_le_bytes([
                                    old[j],
                                    old[j + 1],
                                    old[j + 2],
                                    old[j + 3],
                                ]);
                                let d = n.wrapping_sub(o) as i32;
                                let zigzagged = ((d << 1) ^ (d >> 31)) as u32;
                                for (k, byte) in zigzagged.to_le_bytes().into_iter().enumerate() {
                                    planes[k].push(byte);
                                }
                            } else {
                                planes[plane].push(new[j].wrapping_sub(old[j]));
                            }
                        },
                    );
                }
            }
            t += op.diff as usize;
            let tail = target
                .get(t..t + op.extra as usize)
                .ok_or_else(|| bad(EncodeError::PastSegment))?;
            extra.extend_from_slice(tail);
            t += op.extra as usize;
            pos = op.src + u64::from(op.diff);
        }
        if t != target.len() {
            return Err(bad(EncodeError::Uncovered {
                covered: t,
                len: target.len(),
            }));
        }
        if plan.word_phase.is_some() {
            diff_bytes = planes.concat();
        }
        let reference = match plan.ref_window {
            Some((offset, len)) => Some(
                source
                    .get(offset, u64::from(len))
                    .filter(|_| len > 0 && len <= MAX_REF_WINDOW)
                    .ok_or_else(|| bad(EncodeError::Window { offset, len }))?,
            ),
            None => None,
        };
        let window = reference
            .zip(plan.ref_window)
            .map(|(bytes, (offset, _))| (offset, bytes));
        let dict_fits = reference.is_some_and(|w| w.len() + extra.len() <= MAX_LZMA_DICT as usize);
        let lzma_ref = plan.lzma_dict && dict_fits;
        let (control_z, diff_z, extra_z) = match work {
            Work::Estimate { x86 } => {
                let level = ESTIMATE_LEVEL;
                let extra_z = match window {
                    Some((offset, bytes)) if x86 => {
                        let converted = x86_encode(bytes, offset).map_err(|e| bad(e.into()))?;
                        let stream =
                            x86_encode(&extra, target_offset).map_err(|e| bad(e.into()))?;
                        zstd_compress(&mut CCtx::create(), level, &stream, Some(&converted))
                            .map(|z| (Codec::ZstdRef, z))
                    }
                    Some(_) => compress_smallest(
                        &mut self.cctx,
                        level,
                        &extra,
                        &[Codec::ZstdRef],
                        window,
                        target_offset,
                    ),
                    None => {
                        compress_smallest(&mut self.cctx, level, &extra, &[Codec::Zstd], None, 0)
                    }
                };
                (
                    compress_smallest(&mut self.cctx, level, &control, &[Codec::Zstd], None, 0),
                    compress_smallest(&mut self.cctx, level, &diff_bytes, &[Codec::Zstd], None, 0),
                    extra_z,
                )
            }
            Work::Encode(Effort::Exhaustive) => {
                let extra_codecs: &[Codec] = match reference {
                    Some(_) if lzma_ref => &[Codec::LzmaRef, Codec::X86LzmaRef],
                    Some(_) => &[Codec::ZstdRef, Codec::Zstd, Codec::Lzma, Codec::X86Lzma],
                    None => &[Codec::Zstd, Codec::Lzma, Codec::X86Lzma],
                };
                let both = &[Codec::Zstd, Codec::Lzma];
                let level = self.level;
                (
                    compress_smallest(&mut self.cctx, level, &control, both, None, 0),
                    compress_smallest(&mut self.cctx, level, &diff_bytes, both, None, 0),
                    compress_smallest(
                        &mut self.cctx,
                        level,
                        &extra,
                        extra_codecs,
                        window,
                        target_offset,
                    ),
                )
            }
            Work::Encode(Effort::Chosen { x86 }) => {
                let extra_codecs: &[Codec] = match (window, lzma_ref, x86) {
                    (Some(_), true, true) => &[Codec::X86LzmaRef],
                    (Some(_), true, false) => &[Codec::LzmaRef],
                    (Some(_), false, _) => &[Codec::ZstdRef],
                    (None, _, true) if extra.len() > SMALL_STREAM => &[Codec::X86Lzma],
                    (None, _, false) if extra.len() > SMALL_STREAM => &[Codec::Lzma],
                    (None, ..) => &[Codec::Zstd, Codec::Lzma, Codec::X86Lzma],
                };
                let diff_codecs: &[Codec] = if diff_bytes.len() > SMALL_STREAM {
                    &[Codec::Lzma]
                } else {
                    &[Codec::Zstd, Codec::Lzma]
                };
                let level = self.level;
                let cctx = &mut self.cctx;
                std::thread::scope(|scope| {
                    let extra_z = scope.spawn(|| {
                        compress_smallest(
                            &mut CCtx::create(),
                            level,
                            &extra,
                            extra_codecs,
                            window,
                            target_offset,
                        )
                    });
                    let control_z = compress_smallest(
                        cctx,
                        level,
                        &control,
                        &[Codec::Zstd, Codec::Lzma],
                        None,
                        0,
                    );
                    let diff_z = compress_smallest(cctx, level, &diff_bytes, diff_codecs, None, 0);
                    let extra_z = extra_z.join().unwrap_or(Err(CodecError::NoCodec));
                    (control_z, diff_z, extra_z)
                })
            }
        };
        let control_z = control_z.map_err(|e| bad(e.into()))?;
        let diff_z = diff_z.map_err(|e| bad(e.into()))?;
        let extra_z = extra_z.map_err(|e| bad(e.into()))?;

        let mut body =
            Vec::with_capacity(40 + control_z.1.len() + diff_z.1.len() + extra_z.1.len());
        let mut flags = 0;
        if plan.word_phase.is_some() {
            flags |= FLAG_WORD_DIFF;
        }
        if plan.ref_window.is_some() {
            flags |= FLAG_REF_WINDOW;
        }
        if plan.correction.is_some() && plan.word_phase.is_none() {
            flags |= FLAG_REFERENCES;
        }
        body.push(flags);
        if let Some((offset, len)) = plan.ref_window {
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
        }
        if let Some(phase) = plan.word_phase {
            body.push(phase & 3);
        }
        for (raw, (codec, z)) in [
            (&control, &control_z),
            (&diff_bytes, &diff_z),
            (&extra, &extra_z),
        ] {
            body.push(*codec as u8);
            body.extend_from_slice(&len32(raw.len()).to_le_bytes());
            body.extend_from_slice(&len32(z.len()).to_le_bytes());
        }
        body.extend_from_slice(&control_z.1);
        body.extend_from_slice(&diff_z.1);
        body.extend_from_slice(&extra_z.1);
        Ok((body, extra.len(), extra_z.1.len()))
    }
}

/// The smallest of `raw` (target bytes from `target_offset` on, for the x86 converter)
/// compressed with each of `codecs` (zstd at `level`), against the source `window` (offset,
/// bytes) for the codecs that use it.
fn compress_smallest<'a>(
    cctx: &mut CCtx<'a>,
    level: i32,
    raw: &[u8],
    codecs: &[Codec],
    window: Option<(u64, &'a [u8])>,
    target_offset: u64,
) -> Result<(Codec, Vec<u8>), CodecError> {
    if raw.is_empty() {
        return Ok((Codec::Zstd, Vec::new()));
    }
    let mut best: Option<(Codec, Vec<u8>)> = None;
    for &codec in codecs {
        let z = match (codec, window) {
            (Codec::Zstd, _) => zstd_compress(cctx, level, raw, None)?,
            (Codec::ZstdRef, Some((_, bytes))) => zstd_compress(cctx, level, raw, Some(bytes))?,
            (Codec::Lzma | Codec::X86Lzma, _) => lzma_compress(raw, codec == Codec::X86Lzma)?,
            (Codec::LzmaRef | Codec::X86LzmaRef, Some((offset, bytes))) => lzma_dict_compress(
                raw,
                target_offset,
                bytes,
                offset,
                codec == Codec::X86LzmaRef,
            )?,
            (_, None) => return Err(CodecError::NeedsWindow(codec)),
        };
        if best.as_ref().is_none_or(|(_, b)| z.len() < b.len()) {
            best = Some((codec, z));
        }
    }
    best.ok_or(CodecError::NoCodec)
}

/// One zstd frame of `raw` at `level`, with `reference` as its prefix when given.
fn zstd_compress<'a>(
    cctx: &mut CCtx<'a>,
    level: i32,
    raw: &[u8],
    reference: Option<&'a [u8]>,
) -> Result<Vec<u8>, CodecError> {
    let name = |code| CodecError::Zstd(zstd_safe::get_error_name(code));
    cctx.reset(zstd_safe::ResetDirective::SessionAndParameters)
        .map_err(name)?;
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(name)?;
    let span = (reference.map_or(0, <[u8]>::len) + raw.len()) as u64;
    let log = (64 - span.saturating_sub(1).leading_zeros()).clamp(10, MAX_WINDOW_LOG);
    cctx.set_parameter(CParameter::WindowLog(log))
        .map_err(name)?;
    if let Some(prefix) = reference {
        cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .map_err(name)?;
        // The prefix is referenced for this one frame only: the next reset drops it.
        cctx.ref_prefix(prefix).map_err(name)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(raw.len()));
    cctx.compress2(&mut out, raw).map_err(name)?;
    Ok(out)
}

/// Decodes segment bodies, keeping the last source window and stream buffers between segments.
#[derive(Debug, Default)]
pub struct SegmentDecoder {
    window: Option<(u64, Vec<u8>)>,
    /// The references of the source (by id), found on the first segment that corrects them.
    references: Option<(BlobId, Arc<References>)>,
    control: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

struct BodyHeader {
    word_phase: Option<u8>,
    references: bool,
    ref_window: Option<(u64, u32)>,
    lens: [(Codec, u32, u32); 3],
    frames_at: usize,
}

/// The filters of codecs 2 and 3 for a stream of `raw_len` bytes (the decoder's, and the
/// encoder's). A `sparse` stream ([`is_sparse`]) is encoded with a hash chain and a nice length
/// of 32 in place of preset 9e's binary tree and 273 (the decoder does not see the difference):
/// the binary tree spends its time on the runs of zeros. On the 32 MiB `netsim yard` delta, 40 %
/// of the CPU was bt4's skip; with this the delta took 5.5–5.8 s instead of 7.1–7.6 s and came
/// out 0.05 % larger, and no corpus pair's delta changed size.
fn lzma_filters(
    raw_len: usize,
    x86: bool,
    sparse: bool,
) -> Result<liblzma::stream::Filters, CodecError> {
    let dict = raw_len.next_power_of_two().clamp(4096, 32 << 20);
    let mut options = liblzma::stream::LzmaOptions::new_preset(9 | liblzma::stream::PRESET_EXTREME)
        .map_err(CodecError::Lzma)?;
    options
        .dict_size(u32::try_from(dict).unwrap_or(32 << 20))
        .position_bits(0);
    if sparse {
        options
            .match_finder(liblzma::stream::MatchFinder::HashChain4)
            .nice_len(32);
    }
    let mut filters = liblzma::stream::Filters::new();
    if x86 {
        filters.x86();
    }
    filters.lzma2(&options);
    Ok(filters)
}

fn lzma_compress(raw: &[u8], x86: bool) -> Result<Vec<u8>, CodecError> {
    let filters = lzma_filters(raw.len(), x86, is_sparse(raw))?;
    let mut stream =
        liblzma::stream::Stream::new_raw_encoder(&filters).map_err(CodecError::Lzma)?;
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8 + 1024);
    loop {
        let consumed = stream.total_in() as usize;
        match stream
            .process_vec(&raw[consumed..], &mut out, liblzma::stream::Action::Finish)
            .map_err(CodecError::Lzma)?
        {
            liblzma::stream::Status::StreamEnd => return Ok(out),
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
}

/// A stream with fewer than one byte in [`SPARSE_RATIO`] not zero: the diff stream of a point
/// release (matched bytes that did not change are zeros).
fn is_sparse(raw: &[u8]) -> bool {
    raw.iter().filter(|&&b| b != 0).count() < raw.len() / SPARSE_RATIO
}

/// See [`is_sparse`].
const SPARSE_RATIO: usize = 64;

fn lzma_decompress(
    out: &mut Vec<u8>,
    frame: &[u8],
    raw_len: u32,
    x86: bool,
) -> Result<(), CodecError> {
    let mut stream =
        liblzma::stream::Stream::new_raw_decoder(&lzma_filters(raw_len as usize, x86, false)?)
            .map_err(CodecError::Lzma)?;
    out.reserve_exact(raw_len as usize);
    let status = stream
        .process_vec(frame, out, liblzma::stream::Action::Finish)
        .map_err(CodecError::LzmaData)?;
    if out.len() != raw_len as usize {
        return Err(CodecError::Length {
            decoded: out.len(),
            expected: raw_len,
        });
    }
    if status != liblzma::stream::Status::StreamEnd || stream.total_in() != frame.len() as u64 {
        return Err(CodecError::NoEnd(raw_len));
    }
    Ok(())
}

/// Where the x86 branch converter starts counting for data at `offset` (it works modulo 2^32,
/// on both sides alike).
fn x86_start(offset: u64) -> usize {
    (offset & 0xffff_ffff) as usize
}

fn x86_encode(bytes: &[u8], offset: u64) -> Result<Vec<u8>, CodecError> {
    use std::io::Write as _;
    let mut writer = lzma_rust2::filter::bcj::BcjWriter::new_x86(
        Vec::with_capacity(bytes.len()),
        x86_start(offset),
    );
    writer.write_all(bytes).map_err(CodecError::Io)?;
    writer.finish().map_err(CodecError::Io)
}

/// From this many window bytes per stream byte on, LZMA with the window as dictionary indexes
/// the window with a hash chain instead of a binary tree.
const HC4_WINDOW_RATIO: usize = 3;
/// From this many window bytes per stream byte on, the hash chain is searched 64 deep, not 24.
const HC4_DEEP_RATIO: usize = 8;

/// The LZMA2 dictionary for a stream of `stream` bytes after a window of `window` bytes.
fn dict_size(window: usize, stream: usize) -> Result<u32, CodecError> {
    u32::try_from(window + stream)
        .ok()
        .filter(|&d| d <= MAX_LZMA_DICT)
        .ok_or(CodecError::DictTooLarge)
}

/// Raw LZMA2 of `raw` (target bytes at `target_offset`) with `window` (source bytes at
/// `window_offset`) as preset dictionary; with `x86`, each first goes through the x86 branch
/// converter counting from its own offset, so a call into code that kept its address encodes
/// the same on both sides.
fn lzma_dict_compress(
    raw: &[u8],
    target_offset: u64,
    window: &[u8],
    window_offset: u64,
    x86: bool,
) -> Result<Vec<u8>, CodecError> {
    use std::io::Write as _;
    let mut options = lzma_rust2::LzmaOptions::with_preset(9);
    options.pb = 0;
    options.dict_size = dict_size(window.len(), raw.len())?;
    // The match finder by cost. A binary tree (bt4) indexes the window at about 0.3 s/MB and
    // then searches the stream well; a hash chain (hc4) indexes it ten times faster and
    // searches at depth 64 about as well on a stream much shorter than the window (B1 biome,
    // 8 MiB against 46 MB: 1.194 MB in 6.0 s against bt4's 1.188 MB in 21.7 s), and worse
    // on one as long as the window (E4 esbuild: +5 % at depth 20, slower at 64). Between the
    // two, depth 24 (B2 biome, 8 MiB against 29 MB a segment: 47 s and 21.31 % in all, against
    // 75 s and 21.08 % at depth 64).
    if window.len() >= HC4_WINDOW_RATIO * raw.len() {
        options.mf = lzma_rust2::MfType::Hc4;
        options.nice_len = 64;
        options.depth_limit = if window.len() >= HC4_DEEP_RATIO * raw.len() {
            64
        } else {
            24
        };
    } else {
        // nice 32 instead of 64: 0.6 % larger, 20 % faster (E4).
        options.nice_len = 32;
    }
    let converted;
    let data = if x86 {
        options.preset_dict = Some(x86_encode(window, window_offset)?);
        converted = x86_encode(raw, target_offset)?;
        &converted[..]
    } else {
        options.preset_dict = Some(window.to_vec());
        raw
    };
    let mut writer = lzma_rust2::Lzma2Writer::new(
        Vec::with_capacity(raw.len() / 4 + 1024),
        lzma_rust2::Lzma2Options {
            lzma_options: options,
            chunk_size: None,
        },
    );
    writer.write_all(data).map_err(CodecError::Io)?;
    writer.finish().map_err(CodecError::Io)
}

enum DictError {
    Source { offset: u64, source: std::io::Error },
    Stream(CodecError),
}

/// Decodes an extra stream of codec 4 or 5 into `out`. The decoder does not hold the window
/// twice: it feeds the LZMA2 decoder a stream that starts with the window as stored
/// (uncompressed) LZMA2 chunks, read from the source 64 KiB at a time, and continues with the
/// frame, whose first chunk resets the coder state but keeps the dictionary — exactly what a
/// preset dictionary is. The window's bytes come out first and are dropped.
fn lzma_dict_decompress(
    out: &mut Vec<u8>,
    frame: &[u8],
    raw_len: u32,
    target_offset: u64,
    source: &dyn ReadAt,
    (window_offset, window_len): (u64, u32),
    x86: bool,
) -> Result<(), DictError> {
    use std::io::Read as _;
    let stream = DictError::Stream;
    out.clear();
    let dict = dict_size(window_len as usize, raw_len as usize).map_err(stream)?;
    let primed = Primed {
        source,
        next: window_offset,
        end: window_offset + u64::from(window_len),
        x86: x86.then(|| {
            lzma_rust2::filter::bcj::BcjWriter::new_x86(Vec::new(), x86_start(window_offset))
        }),
        converted: Vec::new(),
        chunk: Vec::new(),
        chunk_at: 0,
        first: true,
        frame,
        frame_at: 0,
        failed: None,
    };
    let mut reader = lzma_rust2::Lzma2Reader::new(primed, dict, None);
    let mut result = (|| {
        let mut scratch = vec![0u8; CHUNK];
        let mut left = window_len as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            reader.read_exact(&mut scratch[..n])?;
            left -= n;
        }
        out.resize(raw_len as usize, 0);
        reader.read_exact(out)?;
        let mut probe = [0u8; 1];
        if reader.read(&mut probe)? != 0 {
            return Err(std::io::Error::other(
                "the stream holds more than its length",
            ));
        }
        Ok(())
    })()
    .map_err(|e: std::io::Error| stream(CodecError::LzmaRead(e)));
    let primed = reader.into_inner();
    if let Some((offset, source)) = primed.failed {
        result = Err(DictError::Source { offset, source });
    } else if result.is_ok() && primed.frame_at != frame.len() {
        result = Err(stream(CodecError::EndsEarly(frame.len() - primed.frame_at)));
    }
    if result.is_err() {
        out.clear();
        return result;
    }
    if x86 {
        let mut filter = lzma_rust2::filter::StreamFilter::new(
            &lzma_rust2::FilterConfig::new_bcj_x86((target_offset & 0xffff_ffff) as u32),
        )
        .map_err(|e| stream(CodecError::Io(e)))?;
        filter.decode(out);
        filter.finish();
    }
    Ok(())
}

/// The most an uncompressed LZMA2 chunk holds.
const CHUNK: usize = 1 << 16;

/// The input of [`lzma_dict_decompress`]: the source window as stored LZMA2 chunks (through
/// the x86 converter when asked), then the frame.
struct Primed<'a> {
    source: &'a dyn ReadAt,
    next: u64,
    end: u64,
    x86: Option<lzma_rust2::filter::bcj::BcjWriter<Vec<u8>>>,
    /// Window bytes (converted) not yet put in a chunk.
    converted: Vec<u8>,
    /// The chunk being handed out, header included.
    chunk: Vec<u8>,
    chunk_at: usize,
    first: bool,
    frame: &'a [u8],
    frame_at: usize,
    failed: Option<(u64, std::io::Error)>,
}

impl Primed<'_> {
    /// Makes the next chunk; false once the window is all handed out.
    fn refill(&mut self) -> std::io::Result<bool> {
        use std::io::Write as _;
        while self.converted.len() < CHUNK && (self.next < self.end || self.x86.is_some()) {
            if self.next < self.end {
                let n = (self.end - self.next).min(CHUNK as u64) as usize;
                let mut piece = vec![0u8; n];
                if let Err(e) = self.source.read_exact_at(self.next, &mut piece) {
                    let kind = e.kind();
                    self.failed = Some((self.next, e));
                    return Err(std::io::Error::new(kind, "reading the source window"));
                }
                self.next += n as u64;
                match &mut self.x86 {
                    Some(writer) => {
                        writer.write_all(&piece)?;
                        self.converted.append(writer.inner_mut());
                    }
                    None => self.converted.extend_from_slice(&piece),
                }
            } else if let Some(writer) = self.x86.take() {
                self.converted.extend_from_slice(&writer.finish()?);
            }
        }
        if self.converted.is_empty() {
            return Ok(false);
        }
        let n = self.converted.len().min(CHUNK);
        self.chunk.clear();
        self.chunk.push(if self.first { 1 } else { 2 });
        self.chunk
            .extend_from_slice(&((n - 1) as u16).to_be_bytes());
        self.chunk.extend(self.converted.drain(..n));
        self.chunk_at = 0;
        self.first = false;
        Ok(true)
    }
}

impl std::io::Read for Primed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunk_at == self.chunk.len() && !self.refill()? {
            let n = buf.len().min(self.frame.len() - self.frame_at);
            buf[..n].copy_from_slice(&self.frame[self.frame_at..self.frame_at + n]);
            self.frame_at += n;
            return Ok(n);
        }
        let n = buf.len().min(self.chunk.len() - self.chunk_at);
        buf[..n].copy_from_slice(&self.chunk[self.chunk_at..self.chunk_at + n]);
        self.chunk_at += n;
        Ok(n)
    }
}

impl SegmentDecoder {
    /// A decoder with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that takes the references of the source `source` from `references` instead of
    /// finding them itself (the creator has them already).
    pub fn with_references(source: BlobId, references: Arc<References>) -> Self {
        Self {
            references: Some((source, references)),
            ..Self::default()
        }
    }

    /// The source's references, found once per source.
    fn references(
        &mut self,
        header: &DeltaHeader,
        source: &dyn ReadAt,
        index: usize,
    ) -> Result<Arc<References>, DeltaError> {
        if let Some((id, refs)) = &self.references {
            if *id == header.source {
                return Ok(refs.clone());
            }
        }
        let corrupt = |detail| DeltaError::Corrupt {
            segment: index,
            detail,
        };
        let model = header.model.as_ref().ok_or(corrupt(BodyError::NoModel))?;
        let refs = References::find(source, header.source_len)
            .map_err(|source| DeltaError::Source { offset: 0, source })?
            .filter(|r| r.arch() == model.arch())
            .ok_or(corrupt(BodyError::NotExecutable(model.arch())))?;
        let refs = Arc::new(refs);
        self.references = Some((header.source, refs.clone()));
        Ok(refs)
    }

    /// Rebuilds segment `index` of the delta `header` from its `body`, reading the source through
    /// `source`, into `out` (cleared first), and checks the result against the target's hash tree.
    /// On any error `out` holds nothing that could pass for the segment.
    pub fn decode(
        &mut self,
        header: &DeltaHeader,
        index: usize,
        body: &[u8],
        source: &dyn ReadAt,
        out: &mut Vec<u8>,
    ) -> Result<(), DeltaError> {
        out.clear();
        let result = self.decode_unchecked(header, index, body, source, out);
        let result = result.and_then(|()| header.check_segment(index, out));
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn decode_unchecked(
        &mut self,
        header: &DeltaHeader,
        index: usize,
        body: &[u8],
        source: &dyn ReadAt,
        out: &mut Vec<u8>,
    ) -> Result<(), DeltaError> {
        let corrupt = |detail: BodyError| DeltaError::Corrupt {
            segment: index,
            detail,
        };
        let entry = header
            .segments
            .get(index)
            .ok_or_else(|| corrupt(BodyError::NoSuchSegment))?;
        if body.len() != entry.encoded_len as usize {
            return Err(corrupt(BodyError::Length {
                actual: body.len(),
                expected: entry.encoded_len,
            }));
        }
        let range = header.target_range(index);
        let seg_len = range.end - range.start;
        let parsed = parse_body(body, header.source_len).map_err(corrupt)?;
        let [
            (control_codec, control_len, control_z),
            (diff_codec, diff_len, diff_z),
            (extra_codec, extra_len, extra_z),
        ] = parsed.lens;
        if u64::from(control_len) > seg_len + CONTROL_SLACK
            || u64::from(diff_len) > seg_len
            || u64::from(extra_len) > seg_len
        {
            return Err(corrupt(BodyError::StreamTooLong));
        }
        let references = if parsed.references {
            let model = header.model.as_ref().ok_or(corrupt(BodyError::NoModel))?;
            Some((self.references(header, source, index)?, model))
        } else {
            None
        };
        let mut at = parsed.frames_at;
        let mut frame = |z: u32| {
            let start = at;
            at += z as usize;
            &body[start..at]
        };
        let (control_frame, diff_frame, extra_frame) =
            (frame(control_z), frame(diff_z), frame(extra_z));

        decompress(
            &mut self.control,
            control_codec,
            control_frame,
            control_len,
            None,
        )
        .map_err(|e| corrupt(BodyError::stream("control", e)))?;
        // First pass: check every operation and count the diff planes before touching anything.
        let mut planes = [0usize; 4];
        let mut totals = (0u64, 0u64);
        walk_ops(
            &self.control,
            range.start,
            header.source_len,
            seg_len,
            |t, _src, diff, extra| {
                totals.0 += diff;
                totals.1 += extra;
                if let Some(phase) = parsed.word_phase {
                    count_planes(t, diff, phase, &mut planes);
                }
            },
        )
        .map_err(corrupt)?;
        if totals != (u64::from(diff_len), u64::from(extra_len)) {
            return Err(corrupt(BodyError::StreamUse {
                diff: totals.0,
                extra: totals.1,
                diff_len,
                extra_len,
            }));
        }

        decompress(&mut self.diff, diff_codec, diff_frame, diff_len, None)
            .map_err(|e| corrupt(BodyError::stream("diff", e)))?;
        if let (Some(window), Codec::LzmaRef | Codec::X86LzmaRef) = (parsed.ref_window, extra_codec)
        {
            // The dictionary holds its own copy of the window; drop any cached one first.
            self.window = None;
            lzma_dict_decompress(
                &mut self.extra,
                extra_frame,
                extra_len,
                range.start,
                source,
                window,
                extra_codec == Codec::X86LzmaRef,
            )
            .map_err(|e| match e {
                DictError::Source { offset, source } => DeltaError::Source { offset, source },
                DictError::Stream(e) => corrupt(BodyError::stream("extra", e)),
            })?;
        }
        let reference = match parsed.ref_window {
            _ if matches!(extra_codec, Codec::LzmaRef | Codec::X86LzmaRef) => None,
            Some((offset, len)) if extra_codec == Codec::ZstdRef => {
                let cached =
                    matches!(&self.window, Some((o, w)) if *o == offset && w.len() == len as usize);
                if !cached {
                    self.window = None;
                    let mut window = vec![0; len as usize];
                    source
                        .read_exact_at(offset, &mut window)
                        .map_err(|source| DeltaError::Source { offset, source })?;
                    self.window = Some((offset, window));
                }
                self.window.as_ref().map(|(_, w)| w.as_slice())
            }
            _ => None,
        };
        if !matches!(extra_codec, Codec::LzmaRef | Codec::X86LzmaRef) {
            decompress(
                &mut self.extra,
                extra_codec,
                extra_frame,
                extra_len,
                reference,
            )
            .map_err(|e| corrupt(BodyError::stream("extra", e)))?;
        }

        // Second pass: rebuild.
        out.reserve(seg_len as usize);
        let mut plane_at = [0usize; 4];
        let mut plane_start = [0usize; 4];
        for k in 1..4 {
            plane_start[k] = plane_start[k - 1] + planes[k - 1];
        }
        let mut diff_at = 0usize;
        let mut extra_at = 0usize;
        let mut io_error = None;
        let control = std::mem::take(&mut self.control);
        let walked = walk_ops(
            &control,
            range.start,
            header.source_len,
            seg_len,
            |t, src, diff, extra| {
                if io_error.is_some() {
                    return;
                }
                let start = out.len();
                out.resize(start + diff as usize, 0);
                if let Err(e) = source.read_exact_at(src, &mut out[start..]) {
                    io_error = Some(DeltaError::Source {
                        offset: src,
                        source: e,
                    });
                    return;
                }
                let run = &mut out[start..];
                match parsed.word_phase {
                    None => {
                        let diff = &self.diff[diff_at..];
                        let mut fixed = Vec::new();
                        if let Some((refs, model)) = &references {
                            let correction = Correction { refs, model };
                            correct_run(correction, src, run, t, |i, w, predicted| {
                                let mut d = [0u8; 8];
                                d[..w].copy_from_slice(&diff[i..i + w]);
                                let value = predicted.wrapping_add(u64::from_le_bytes(d));
                                fixed.push((i, w, value));
                            });
                        }
                        for (byte, d) in run.iter_mut().zip(diff) {
                            *byte = byte.wrapping_add(*d);
                        }
                        for (i, w, value) in fixed {
                            run[i..i + w].copy_from_slice(&value.to_le_bytes()[..w]);
                        }
                        diff_at += run.len();
                    }
                    Some(phase) => {
                        let diff = &self.diff;
                        let mut take = |plane: usize| {
                            let byte = diff[plane_start[plane] + plane_at[plane]];
                            plane_at[plane] += 1;
                            byte
                        };
                        for_each_word(t, run.len(), phase, |j, plane, word| {
                            if word {
                                let z = u32::from_le_bytes([take(0), take(1), take(2), take(3)]);
                                let d = (z >> 1) ^ (z & 1).wrapping_neg();
                                let s = u32::from_le_bytes([
                                    run[j],
                                    run[j + 1],
                                    run[j + 2],
                                    run[j + 3],
                                ]);
                                run[j..j + 4].copy_from_slice(&s.wrapping_add(d).to_le_bytes());
                            } else {
                                run[j] = run[j].wrapping_add(take(plane));
                            }
                        });
                    }
                }
                out.extend_from_slice(&self.extra[extra_at..extra_at + extra as usize]);
                extra_at += extra as usize;
            },
        );
        self.control = control;
        walked.map_err(corrupt)?;
        if let Some(e) = io_error {
            return Err(e);
        }
        Ok(())
    }
}

/// Appends the byte diff of one run (`new` less `old`, read at source `src`, landing at target
/// offset `new_at`), each reference `correction` finds in it as its difference from the
/// predicted value.
fn push_diff(
    diff_bytes: &mut Vec<u8>,
    old: &[u8],
    new: &[u8],
    src: u64,
    new_at: u64,
    correction: Option<Correction<'_>>,
) {
    let run = diff_bytes.len();
    diff_bytes.extend(new.iter().zip(old).map(|(n, o)| n.wrapping_sub(*o)));
    if let Some(correction) = correction {
        correct_run(correction, src, old, new_at, |i, w, predicted| {
            let mut actual = [0u8; 8];
            actual[..w].copy_from_slice(&new[i..i + w]);
            let d = u64::from_le_bytes(actual).wrapping_sub(predicted);
            diff_bytes[run + i..run + i + w].copy_from_slice(&d.to_le_bytes()[..w]);
        });
    }
}

/// Calls `each(i, width, predicted)` for each source reference lying wholly in the diff run of
/// source bytes `old` read at `src`, whose first byte lands at target offset `new_at`: `i` is
/// its index in the run, `predicted` its predicted value in the target (low `width` bytes).
fn correct_run(
    correction: Correction<'_>,
    src: u64,
    old: &[u8],
    new_at: u64,
    mut each: impl FnMut(usize, usize, u64),
) {
    correction
        .refs
        .each_in(src, src + old.len() as u64, |at, width| {
            let i = (at - src) as usize;
            let w = width as usize;
            let predicted = correction.predict(at, &old[i..i + w], new_at + i as u64);
            each(i, w, predicted);
        });
}

/// The codec of a body's extra stream, if the body parses.
pub(crate) fn extra_codec(body: &[u8], source_len: u64) -> Option<Codec> {
    parse_body(body, source_len)
        .ok()
        .map(|header| header.lens[2].0)
}

fn parse_body(body: &[u8], source_len: u64) -> Result<BodyHeader, BodyError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], BodyError> {
        let slice = body.get(at..at + n).ok_or(BodyError::ShortHeader)?;
        at += n;
        Ok(slice)
    };
    let flags = take(1)?[0];
    if flags & !(FLAG_WORD_DIFF | FLAG_REF_WINDOW | FLAG_REFERENCES) != 0
        || flags & (FLAG_WORD_DIFF | FLAG_REFERENCES) == FLAG_WORD_DIFF | FLAG_REFERENCES
    {
        return Err(BodyError::Flags(flags));
    }
    let ref_window = if flags & FLAG_REF_WINDOW != 0 {
        let offset = u64::from_le_bytes(array(take(8)?)?);
        let len = u32::from_le_bytes(array(take(4)?)?);
        if len == 0 || len > MAX_REF_WINDOW {
            return Err(BodyError::WindowSize(len));
        }
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > source_len)
        {
            return Err(BodyError::WindowPastSource {
                offset,
                len,
                source_len,
            });
        }
        Some((offset, len))
    } else {
        None
    };
    let word_phase = if flags & FLAG_WORD_DIFF != 0 {
        let phase = take(1)?[0];
        if phase > 3 {
            return Err(BodyError::Phase(phase));
        }
        Some(phase)
    } else {
        None
    };
    let mut lens = [(Codec::Zstd, 0u32, 0u32); 3];
    for (k, len) in lens.iter_mut().enumerate() {
        let byte = take(1)?[0];
        let codec = Codec::from_byte(byte).ok_or(BodyError::UnknownCodec(byte))?;
        let raw = u32::from_le_bytes(array(take(4)?)?);
        let z = u32::from_le_bytes(array(take(4)?)?);
        if (raw == 0) != (z == 0) {
            return Err(BodyError::EmptyStream);
        }
        if codec.uses_window() && (k != 2 || ref_window.is_none()) {
            return Err(BodyError::WindowCodec(byte));
        }
        if matches!(codec, Codec::LzmaRef | Codec::X86LzmaRef)
            && ref_window
                .is_some_and(|(_, w)| u64::from(w) + u64::from(raw) > u64::from(MAX_LZMA_DICT))
        {
            return Err(BodyError::DictTooLarge);
        }
        *len = (codec, raw, z);
    }
    let frames: u64 = lens.iter().map(|(_, _, z)| u64::from(*z)).sum();
    if at as u64 + frames != body.len() as u64 {
        return Err(BodyError::StreamsLength {
            streams: at as u64 + frames,
            body: body.len(),
        });
    }
    Ok(BodyHeader {
        word_phase,
        references: flags & FLAG_REFERENCES != 0,
        ref_window,
        lens,
        frames_at: at,
    })
}

/// The `N` bytes `take` handed out, as an array.
fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], BodyError> {
    bytes.try_into().map_err(|_| BodyError::ShortHeader)
}

fn decompress(
    out: &mut Vec<u8>,
    codec: Codec,
    frame: &[u8],
    raw_len: u32,
    reference: Option<&[u8]>,
) -> Result<(), CodecError> {
    out.clear();
    if raw_len == 0 {
        return Ok(());
    }
    match codec {
        Codec::Lzma | Codec::X86Lzma => {
            return lzma_decompress(out, frame, raw_len, codec == Codec::X86Lzma);
        }
        Codec::LzmaRef | Codec::X86LzmaRef => {
            return Err(CodecError::ExtraOnly(codec));
        }
        Codec::Zstd | Codec::ZstdRef => {}
    }
    let name = |code| CodecError::Zstd(zstd_safe::get_error_name(code));
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(name)?;
    if let Some(prefix) = reference {
        dctx.ref_prefix(prefix).map_err(name)?;
    }
    out.reserve_exact(raw_len as usize);
    let n = dctx.decompress(out, frame).map_err(name)?;
    if n != raw_len as usize {
        return Err(CodecError::Length {
            decoded: n,
            expected: raw_len,
        });
    }
    Ok(())
}

/// Walks the control stream, checking each operation, and calls `each(target_offset,
/// source_offset, diff_len, extra_len)`.
fn walk_ops(
    control: &[u8],
    target_start: u64,
    source_len: u64,
    seg_len: u64,
    mut each: impl FnMut(u64, u64, u64, u64),
) -> Result<(), BodyError> {
    let mut at = 0usize;
    let mut pos = target_start;
    let mut written = 0u64;
    let mut n = 0usize;
    while at < control.len() {
        let seek = unzigzag(get_varint(control, &mut at).ok_or(BodyError::Varint)?);
        let diff = get_varint(control, &mut at).ok_or(BodyError::Varint)?;
        let extra = get_varint(control, &mut at).ok_or(BodyError::Varint)?;
        let src =
            pos.checked_add_signed(seek)
                .ok_or(BodyError::SeekOutside { op: n, seek, pos })?;
        let end = src
            .checked_add(diff)
            .filter(|end| *end <= source_len)
            .ok_or(BodyError::ReadPastSource {
                op: n,
                src,
                diff,
                source_len,
            })?;
        if diff == 0 && extra == 0 {
            return Err(BodyError::EmptyOp(n));
        }
        // Each part is at most a segment, so the sums below cannot overflow.
        if diff > seg_len || extra > seg_len {
            return Err(BodyError::PastSegment { op: n, seg_len });
        }
        let len = diff + extra;
        if written + len > seg_len {
            return Err(BodyError::PastSegment { op: n, seg_len });
        }
        each(target_start + written, src, diff, extra);
        written += len;
        pos = end;
        n += 1;
    }
    if written != seg_len {
        return Err(BodyError::Unwritten { written, seg_len });
    }
    Ok(())
}

/// Visits each position `j` of a diff run of `len` bytes at target offset `t`: either the first
/// byte of a whole aligned word (`word` = true, covering `j..j + 4`) or a lone byte with its plane.
fn for_each_word(t: u64, len: usize, phase: u8, mut visit: impl FnMut(usize, usize, bool)) {
    let mut j = 0usize;
    while j < len {
        let plane = ((t + j as u64 + 4 - u64::from(phase)) % 4) as usize;
        if plane == 0 && j + 4 <= len {
            visit(j, 0, true);
            j += 4;
        } else {
            visit(j, plane, false);
            j += 1;
        }
    }
}

fn count_planes(t: u64, len: u64, phase: u8, planes: &mut [usize; 4]) {
    // Every diff byte lands in the plane of its target offset; count without visiting each byte.
    let full = (len / 4) as usize;
    for p in planes.iter_mut() {
        *p += full;
    }
    for k in 0..len % 4 {
        planes[((t + (len / 4) * 4 + k + 4 - u64::from(phase)) % 4) as usize] += 1;
    }
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Bytes that look like x86 code: relative calls (E8 rel32) to a few hundred "functions"
    /// between filler, so the branch converter has something to turn absolute.
    fn code(len: usize, seed: u64, functions: &[u64], base: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 == 0 {
                let at = base + out.len() as u64 + 5;
                let to = functions[(x >> 8) as usize % functions.len()];
                out.push(0xE8);
                out.extend_from_slice(&(to.wrapping_sub(at) as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&[0x48, 0x89, (x >> 16) as u8 & 0x3f]);
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn lzma_with_the_window_as_dictionary_round_trips() {
        let functions: Vec<u64> = (0..300).map(|i| i * 4099 + 77).collect();
        // A window of several stored chunks, at an odd offset; the stream at a target offset
        // past 4 GiB (the converter counts modulo 2^32 on both sides).
        let source = code(300_001, 7, &functions, 0);
        let (w_off, w_len) = (1_234u64, 270_000u32);
        let window = &source[w_off as usize..w_off as usize + w_len as usize];
        let mut target = window[5_000..90_000].to_vec();
        target.extend(code(40_000, 9, &functions, 1 << 33));
        let at = (1u64 << 32) + 12_345;
        for x86 in [false, true] {
            let frame = lzma_dict_compress(&target, at, window, w_off, x86).unwrap();
            assert!(
                frame.len() < target.len() / 3,
                "x86 {x86}: {} bytes",
                frame.len()
            );
            let mut out = Vec::new();
            let result = lzma_dict_decompress(
                &mut out,
                &frame,
                target.len() as u32,
                at,
                &&source[..],
                (w_off, w_len),
                x86,
            );
            assert!(result.is_ok(), "x86 {x86}");
            assert!(out == target, "x86 {x86}: wrong bytes");
            // Any other window, or a cut frame, does not give the stream back.
            for (offset, frame_len) in [(w_off + 1, frame.len()), (w_off, frame.len() - 1)] {
                let mut out = Vec::new();
                let result = lzma_dict_decompress(
                    &mut out,
                    &frame[..frame_len],
                    target.len() as u32,
                    at,
                    &&source[..],
                    (offset, w_len),
                    x86,
                );
                assert!(
                    result.is_err() || out != target,
                    "x86 {x86} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn a_window_the_source_cannot_supply_is_a_source_error() {
        let source = vec![7u8; 100_000];
        let target = vec![7u8; 1_000];
        let frame = lzma_dict_compress(&target, 0, &source[..90_000], 0, false).unwrap();
        let short = &source[..80_000];
        let mut out = Vec::new();
        let result = lzma_dict_decompress(&mut out, &frame, 1_000, 0, &short, (0, 90_000), false);
        assert!(matches!(
            result,
            Err(DictError::Source { offset: 65_536, .. })
        ));
        assert!(out.is_empty());
    }
}
