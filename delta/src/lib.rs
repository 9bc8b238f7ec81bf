//! depotmesh's delta format: a target image rebuilt from a source image in independently
//! decodable, independently verified segments — how deltas are made ([`create`]), decoded
//! ([`SegmentDecoder`]) and applied in bounded memory, resumably ([`DeltaSegments::apply`]).
//!
//! `origin` creates deltas with this crate; `vehicle-peer` applies them into a file or an ECU's
//! bank, recording progress in its own journal through the callback the apply takes. Sources,
//! deltas and targets are read through [`ReadAt`] (proto's positioned-read trait, the one every
//! crate shares) and targets written through [`WriteAt`].
//!
//! This crate must never depend on `node` or a role crate (it sits beside `node`, below the
//! roles); never count a segment as done before it is checked against the target's hash tree
//! and durable; never hold more than a few segments and one source window in memory, whatever
//! the image size; and never panic on bytes of a delta, which are untrusted until verified.
//!
//! # Layout (version 1, all integers little-endian)
//!
//! ```text
//! header   magic "DMDELTA\0" (8) · version u16 = 1 · flags u16 · header_len u32
//!          source id [32] · source_len u64 · target id [32] · target_len u64
//!          segment_log u8 (14..=24) · reserved [3] = 0 · segment_count u32
//!          segment_count × { encoded_len u32 · chaining value [32] }
//!          [flags bit 0] model_len u32 · reference model (a zstd frame, ≤ MAX_MODEL_FRAME)
//! segments segment_count bodies, back to back, each exactly its encoded_len
//! ```
//!
//! `header_len` is the whole header, `104 + 36 × segment_count` bytes (plus `4 + model_len` with
//! a reference model), at most [`MAX_HEADER_LEN`]. Header flag bit 0 is the only one defined:
//! the delta corrects references in compiled code (executable-aware matching, [`References`]);
//! its model — the target's loads and an address map saying where ranges of the source's
//! virtual addresses went — is in the header, and a source over [`MAX_MODEL_SOURCE`] may not
//! have one. A decoder from before the model refuses such a delta ("unknown header flags"). Segment `i` rebuilds target bytes `[i << segment_log, (i + 1) <<
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
//! flags u8            bit 0: word diff · bit 1: the extra stream references a source window ·
//!                     bit 2: byte diff runs correct references (needs the header's model; not
//!                     with bit 0)
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
//! With body flag bit 2, the applier finds the references of the source image itself (x86-64:
//! each 32-bit branch and RIP-relative displacement of a linear sweep of the code; AArch64: each
//! B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, LDR literal, ADR and ADRP; 64-bit pointers in data: the
//! dynamic relocations' addresses and sites, else aligned words pointing into a fixed-address
//! image), and a reference lying wholly inside a diff run is rebuilt as its *predicted* value
//! plus the diff bytes at its place read as a little-endian integer of its width (4 or 8),
//! wrapping. The prediction moves the reference's target by the address map and re-aims it from
//! the site's new address (`refs` module docs). Every other byte is rebuilt as above.
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
//! image size, and 72 + 4 × 8 MiB at the creator's default segment size; a delta that corrects
//! references adds one bit per source byte (at most 16 MiB, [`MAX_MODEL_SOURCE`] is 128 MiB) and
//! its model (at most [`MAX_PACKED_MODEL`] decompressed).

#![forbid(unsafe_code)]

mod apply;
mod create;
mod format;
mod refs;
mod segment;
mod tree;
mod varint;

pub use apply::{
    Applied, ApplyError, ApplyInputs, DeltaSegments, Progress, WriteAt, hash_of, read_header,
};
pub use create::{
    CreateError, CreateProgress, DeltaOptions, DeltaSummary, MemoryPlan, Method,
    WORKER_BYTES_PER_SEGMENT_BYTE, WORKER_BYTES_PER_WINDOW_BYTE, create, create_with_progress,
    memory_plan, window_memory,
};
pub use format::{
    BodyError, Codec, CodecError, DeltaError, DeltaHeader, EncodeError, FIXED_HEADER_LEN, MAGIC,
    MAX_HEADER_LEN, MAX_LZMA_DICT, MAX_MODEL_FRAME, MAX_REF_WINDOW, MAX_SEGMENT_LOG,
    MAX_WINDOW_LOG, MIN_SEGMENT_LOG, SEGMENT_ENTRY_LEN, SegmentEntry, VERSION,
};
pub use proto::ReadAt;
pub use refs::{
    AddressMap, Arch, Correction, Load, MAX_MAP_ENTRIES, MAX_MODEL_SOURCE, MAX_PACKED_MODEL,
    ModelError, ReferenceModel, References,
};
pub use segment::{
    Effort, Op, SMALL_STREAM, SegmentDecoder, SegmentEncoder, SegmentPlan, SourceView,
};
