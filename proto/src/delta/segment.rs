//! Segment bodies: encoding (creator side) and decoding (apply side). See the module docs of
//! [`crate::delta`] for the layout.

// Every length cast here is of a stream or run already checked against the segment's size (at
// most 16 MiB), and varint bytes are masked to 7 bits before their cast.
#![allow(clippy::cast_possible_truncation)]

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

use super::{DeltaError, DeltaHeader, MAX_REF_WINDOW, MAX_WINDOW_LOG, SourceRead};

const FLAG_WORD_DIFF: u8 = 1;
const FLAG_REF_WINDOW: u8 = 2;
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
}

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
        let bad = |detail: String| DeltaError::Compress {
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
            let old = source
                .get(op.src, u64::from(op.diff))
                .ok_or_else(|| bad(format!("diff run at source {} is outside the view", op.src)))?;
            let new = target
                .get(t..t + op.diff as usize)
                .ok_or_else(|| bad("operations run past the segment".into()))?;
            match plan.word_phase {
                None => diff_bytes.extend(new.iter().zip(old).map(|(n, o)| n.wrapping_sub(*o))),
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
                .ok_or_else(|| bad("operations run past the segment".into()))?;
            extra.extend_from_slice(tail);
            t += op.extra as usize;
            pos = op.src + u64::from(op.diff);
        }
        if t != target.len() {
            return Err(bad(format!(
                "operations cover {t} of {} bytes",
                target.len()
            )));
        }
        if plan.word_phase.is_some() {
            diff_bytes = planes.concat();
        }
        let reference = match plan.ref_window {
            Some((offset, len)) => Some(
                source
                    .get(offset, u64::from(len))
                    .filter(|_| len > 0 && len <= MAX_REF_WINDOW)
                    .ok_or_else(|| bad(format!("source window {offset}+{len} is not usable")))?,
            ),
            None => None,
        };
        let control_z = self
            .smallest(&control, &[Codec::Zstd, Codec::Lzma], None)
            .map_err(bad)?;
        let diff_z = self
            .smallest(&diff_bytes, &[Codec::Zstd, Codec::Lzma], None)
            .map_err(bad)?;
        let extra_codecs: &[Codec] = if reference.is_some() {
            &[Codec::ZstdRef, Codec::Zstd, Codec::Lzma, Codec::X86Lzma]
        } else {
            &[Codec::Zstd, Codec::Lzma, Codec::X86Lzma]
        };
        let extra_z = self
            .smallest(&extra, extra_codecs, reference)
            .map_err(bad)?;

        let mut body =
            Vec::with_capacity(40 + control_z.1.len() + diff_z.1.len() + extra_z.1.len());
        let mut flags = 0;
        if plan.word_phase.is_some() {
            flags |= FLAG_WORD_DIFF;
        }
        if plan.ref_window.is_some() {
            flags |= FLAG_REF_WINDOW;
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
        Ok(body)
    }

    /// The smallest of `raw` compressed with each of `codecs`.
    fn smallest(
        &mut self,
        raw: &[u8],
        codecs: &[Codec],
        reference: Option<&'s [u8]>,
    ) -> Result<(Codec, Vec<u8>), String> {
        if raw.is_empty() {
            return Ok((Codec::Zstd, Vec::new()));
        }
        let mut best: Option<(Codec, Vec<u8>)> = None;
        for &codec in codecs {
            let z = match codec {
                Codec::Zstd => self.compress(raw, None)?,
                Codec::ZstdRef => self.compress(raw, reference)?,
                Codec::Lzma | Codec::X86Lzma => lzma_compress(raw, codec == Codec::X86Lzma)?,
            };
            if best.as_ref().is_none_or(|(_, b)| z.len() < b.len()) {
                best = Some((codec, z));
            }
        }
        best.ok_or_else(|| "no codec".to_string())
    }

    fn compress(&mut self, raw: &[u8], reference: Option<&'s [u8]>) -> Result<Vec<u8>, String> {
        let name = |code| zstd_safe::get_error_name(code).to_string();
        self.cctx
            .reset(zstd_safe::ResetDirective::SessionAndParameters)
            .map_err(name)?;
        self.cctx
            .set_parameter(CParameter::CompressionLevel(self.level))
            .map_err(name)?;
        if let Some(prefix) = reference {
            let span = (prefix.len() + raw.len()) as u64;
            let log = (64 - span.saturating_sub(1).leading_zeros()).clamp(10, MAX_WINDOW_LOG);
            self.cctx
                .set_parameter(CParameter::WindowLog(log))
                .map_err(name)?;
            self.cctx
                .set_parameter(CParameter::EnableLongDistanceMatching(true))
                .map_err(name)?;
            self.cctx.ref_prefix(prefix).map_err(name)?;
        } else {
            let log = (64 - (raw.len() as u64).saturating_sub(1).leading_zeros())
                .clamp(10, MAX_WINDOW_LOG);
            self.cctx
                .set_parameter(CParameter::WindowLog(log))
                .map_err(name)?;
        }
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(raw.len()));
        self.cctx.compress2(&mut out, raw).map_err(name)?;
        Ok(out)
    }
}

/// Decodes segment bodies, keeping the last source window and stream buffers between segments.
#[derive(Debug, Default)]
pub struct SegmentDecoder {
    window: Option<(u64, Vec<u8>)>,
    control: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

struct BodyHeader {
    word_phase: Option<u8>,
    ref_window: Option<(u64, u32)>,
    lens: [(Codec, u32, u32); 3],
    frames_at: usize,
}

/// How one stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Codec {
    /// A zstd frame.
    Zstd = 0,
    /// A zstd frame compressed with the segment's source window as prefix (extra stream only).
    ZstdRef = 1,
    /// Raw LZMA2 (dictionary: the stream's length rounded up to a power of two, 4 KiB..=32 MiB).
    Lzma = 2,
    /// The x86 branch converter, then raw LZMA2.
    X86Lzma = 3,
}

impl Codec {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Zstd,
            1 => Self::ZstdRef,
            2 => Self::Lzma,
            3 => Self::X86Lzma,
            _ => return None,
        })
    }
}

fn lzma_filters(raw_len: usize, x86: bool) -> Result<liblzma::stream::Filters, String> {
    let dict = raw_len.next_power_of_two().clamp(4096, 32 << 20);
    let mut options = liblzma::stream::LzmaOptions::new_preset(9 | liblzma::stream::PRESET_EXTREME)
        .map_err(|e| e.to_string())?;
    options
        .dict_size(u32::try_from(dict).unwrap_or(32 << 20))
        .position_bits(0);
    let mut filters = liblzma::stream::Filters::new();
    if x86 {
        filters.x86();
    }
    filters.lzma2(&options);
    Ok(filters)
}

fn lzma_compress(raw: &[u8], x86: bool) -> Result<Vec<u8>, String> {
    let mut stream = liblzma::stream::Stream::new_raw_encoder(&lzma_filters(raw.len(), x86)?)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8 + 1024);
    loop {
        let consumed = stream.total_in() as usize;
        match stream
            .process_vec(&raw[consumed..], &mut out, liblzma::stream::Action::Finish)
            .map_err(|e| e.to_string())?
        {
            liblzma::stream::Status::StreamEnd => return Ok(out),
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
}

fn lzma_decompress(out: &mut Vec<u8>, frame: &[u8], raw_len: u32, x86: bool) -> Result<(), String> {
    let mut stream =
        liblzma::stream::Stream::new_raw_decoder(&lzma_filters(raw_len as usize, x86)?)
            .map_err(|e| e.to_string())?;
    out.reserve_exact(raw_len as usize);
    let status = stream
        .process_vec(frame, out, liblzma::stream::Action::Finish)
        .map_err(|e| format!("lzma: {e}"))?;
    if out.len() != raw_len as usize {
        return Err(format!(
            "decoded to {} bytes, expected {raw_len}",
            out.len()
        ));
    }
    if status != liblzma::stream::Status::StreamEnd || stream.total_in() != frame.len() as u64 {
        return Err(format!(
            "lzma stream does not end after its {raw_len} bytes"
        ));
    }
    Ok(())
}

impl SegmentDecoder {
    /// A decoder with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds segment `index` of the delta `header` from its `body`, reading the source through
    /// `source`, into `out` (cleared first), and checks the result against the target's hash tree.
    /// On any error `out` holds nothing that could pass for the segment.
    pub fn decode(
        &mut self,
        header: &DeltaHeader,
        index: usize,
        body: &[u8],
        source: &mut dyn SourceRead,
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
        source: &mut dyn SourceRead,
        out: &mut Vec<u8>,
    ) -> Result<(), DeltaError> {
        let corrupt = |detail: String| DeltaError::Corrupt {
            segment: index,
            detail,
        };
        let entry = header
            .segments
            .get(index)
            .ok_or_else(|| corrupt("no such segment".into()))?;
        if body.len() != entry.encoded_len as usize {
            return Err(corrupt(format!(
                "body is {} bytes, the header says {}",
                body.len(),
                entry.encoded_len
            )));
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
            return Err(corrupt("a stream is longer than the segment allows".into()));
        }
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
        .map_err(|e| corrupt(format!("control stream: {e}")))?;
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
            return Err(corrupt(format!(
                "operations use {} diff and {} extra bytes, the streams hold {diff_len} and {extra_len}",
                totals.0, totals.1
            )));
        }

        decompress(&mut self.diff, diff_codec, diff_frame, diff_len, None)
            .map_err(|e| corrupt(format!("diff stream: {e}")))?;
        let reference = match parsed.ref_window {
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
        decompress(
            &mut self.extra,
            extra_codec,
            extra_frame,
            extra_len,
            reference,
        )
        .map_err(|e| corrupt(format!("extra stream: {e}")))?;

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
                        for (byte, d) in run.iter_mut().zip(&self.diff[diff_at..]) {
                            *byte = byte.wrapping_add(*d);
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

fn parse_body(body: &[u8], source_len: u64) -> Result<BodyHeader, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = body.get(at..at + n).ok_or("body ends inside its header")?;
        at += n;
        Ok(slice)
    };
    let flags = take(1)?[0];
    if flags & !(FLAG_WORD_DIFF | FLAG_REF_WINDOW) != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let ref_window = if flags & FLAG_REF_WINDOW != 0 {
        let offset = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "short")?);
        let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "short")?);
        if len == 0 || len > MAX_REF_WINDOW {
            return Err(format!(
                "source window of {len} bytes (allowed 1..={MAX_REF_WINDOW})"
            ));
        }
        if offset
            .checked_add(u64::from(len))
            .is_none_or(|end| end > source_len)
        {
            return Err(format!(
                "source window {offset}+{len} runs past the source ({source_len} bytes)"
            ));
        }
        Some((offset, len))
    } else {
        None
    };
    let word_phase = if flags & FLAG_WORD_DIFF != 0 {
        let phase = take(1)?[0];
        if phase > 3 {
            return Err(format!("word phase {phase} (must be 0..4)"));
        }
        Some(phase)
    } else {
        None
    };
    let mut lens = [(Codec::Zstd, 0u32, 0u32); 3];
    for (k, len) in lens.iter_mut().enumerate() {
        let byte = take(1)?[0];
        let codec = Codec::from_byte(byte).ok_or_else(|| format!("unknown stream codec {byte}"))?;
        let raw = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "short")?);
        let z = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "short")?);
        if (raw == 0) != (z == 0) {
            return Err("an empty stream must have an empty frame and only it".into());
        }
        if codec == Codec::ZstdRef && (k != 2 || ref_window.is_none()) {
            return Err(
                "only the extra stream of a segment with a source window may use it".into(),
            );
        }
        *len = (codec, raw, z);
    }
    let frames: u64 = lens.iter().map(|(_, _, z)| u64::from(*z)).sum();
    if at as u64 + frames != body.len() as u64 {
        return Err(format!(
            "streams take {} bytes, the body has {}",
            at as u64 + frames,
            body.len()
        ));
    }
    Ok(BodyHeader {
        word_phase,
        ref_window,
        lens,
        frames_at: at,
    })
}

fn decompress(
    out: &mut Vec<u8>,
    codec: Codec,
    frame: &[u8],
    raw_len: u32,
    reference: Option<&[u8]>,
) -> Result<(), String> {
    out.clear();
    if raw_len == 0 {
        return Ok(());
    }
    if matches!(codec, Codec::Lzma | Codec::X86Lzma) {
        return lzma_decompress(out, frame, raw_len, codec == Codec::X86Lzma);
    }
    let name = |code| zstd_safe::get_error_name(code).to_string();
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(name)?;
    if let Some(prefix) = reference {
        dctx.ref_prefix(prefix).map_err(name)?;
    }
    out.reserve_exact(raw_len as usize);
    let n = dctx.decompress(out, frame).map_err(name)?;
    if n != raw_len as usize {
        return Err(format!("decoded to {n} bytes, expected {raw_len}"));
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
) -> Result<(), String> {
    let mut at = 0usize;
    let mut pos = target_start;
    let mut written = 0u64;
    let mut n = 0usize;
    while at < control.len() {
        let seek = unzigzag(get_varint(control, &mut at).ok_or("control stream: bad varint")?);
        let diff = get_varint(control, &mut at).ok_or("control stream: bad varint")?;
        let extra = get_varint(control, &mut at).ok_or("control stream: bad varint")?;
        let src = pos
            .checked_add_signed(seek)
            .ok_or_else(|| format!("operation {n}: seek {seek} from {pos} leaves the source"))?;
        let end = src
            .checked_add(diff)
            .filter(|end| *end <= source_len)
            .ok_or_else(|| {
                format!("operation {n}: reads source {src}+{diff}, past its {source_len} bytes")
            })?;
        if diff == 0 && extra == 0 {
            return Err(format!("operation {n} is empty"));
        }
        // Each part is at most a segment, so the sums below cannot overflow.
        if diff > seg_len || extra > seg_len {
            return Err(format!(
                "operation {n} writes past the segment's {seg_len} bytes"
            ));
        }
        let len = diff + extra;
        if written + len > seg_len {
            return Err(format!(
                "operation {n} writes past the segment's {seg_len} bytes"
            ));
        }
        each(target_start + written, src, diff, extra);
        written += len;
        pos = end;
        n += 1;
    }
    if written != seg_len {
        return Err(format!(
            "operations write {written} of the segment's {seg_len} bytes"
        ));
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

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(((v & 0x7f) as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}
