//! Executable-aware matching: the references inside compiled code, found in the *source* image,
//! and each one's new value predicted from where the release moved code and data.
//!
//! When a release moves a function, every call to it, every RIP-relative load of a moved global
//! and every pointer in data changes, though the code around them did not: bsdiff's diff stream
//! (Percival, 2003) carries a few changed bytes every ten or twenty, and a general compressor
//! sees no pattern in them. Zucchini (Chromium's patcher) and Courgette before it fix this by
//! disassembling: a reference is a *target*, and a target moves with the code it points into.
//! This module does the same in depotmesh's format, the way Zucchini's patch does it:
//!
//! - the **references** are found in the source only (the applier has it, verified): on x86-64
//!   every instruction's 32-bit branch displacement or RIP-relative displacement (a linear sweep
//!   with `iced-x86`); on AArch64 every B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, LDR (literal), ADR and
//!   ADRP; in data, every 64-bit pointer — the sites and addends of the dynamic relocation table
//!   for a position-independent image, else every aligned word that points into the image;
//! - the **address map** ([`AddressMap`], in the delta's header) says, for ranges of the source's
//!   virtual addresses, where they went in the target: the creator builds it from its matches;
//! - in a diff run (source bytes plus differences), a reference is not corrected byte by byte: its
//!   new value is *predicted* (a displacement to the target's new place from the site's new
//!   place; a pointer to the target's new place) and the diff stream holds the difference from the
//!   prediction, zero when the code just moved.
//!
//! A prediction is only a guess: a wrong one costs bytes, never correctness, because both sides
//! compute the same guess from the same source bytes and the header's map, and every segment is
//! checked against the target's hash tree. So reference finding may be heuristic (a word of data
//! that looks like a pointer) without risk.
//!
//! Sources over [`MAX_MODEL_SOURCE`] get no model: the applier holds one bit per source byte.

// Offsets and addresses are u64 throughout; a cast to usize is of a value already bounded by a
// buffer's length.
#![allow(clippy::cast_possible_truncation)]

use std::ops::Range;

use iced_x86::{Decoder, DecoderOptions, Instruction, OpKind};
use proto::ReadAt;

use crate::varint::{get_varint, put_varint};

/// Largest source a delta's reference model may be built over (the applier holds a bitmap of
/// one bit per source byte: 16 MiB at this size).
pub const MAX_MODEL_SOURCE: u64 = 128 << 20;
/// Most entries an address map may have.
pub const MAX_MAP_ENTRIES: usize = 1 << 18;
/// Most bytes a header's model may decompress to.
pub const MAX_PACKED_MODEL: usize = 8 << 20;
/// Most loadable segments a target layout may list.
const MAX_LOADS: usize = 32;
/// Most program or section headers read from an image.
const MAX_PROGRAM_HEADERS: usize = 128;
const MAX_SECTION_HEADERS: usize = 1 << 14;
/// Bytes read at a time while finding references.
const CHUNK: usize = 1 << 20;
/// The longest x86 instruction.
const MAX_X86_INSN: usize = 15;
/// Shortest match that goes into the address map.
const MIN_MAP_MATCH: u64 = 32;
/// Lowest address a data word must point at to count as a pointer without relocations.
const MIN_POINTER: u64 = 0x1_0000;

/// The instruction set of an image with references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86-64 (ELF e_machine 62).
    X86_64,
    /// AArch64 (ELF e_machine 183).
    Aarch64,
}

impl Arch {
    fn byte(self) -> u8 {
        match self {
            Self::X86_64 => 1,
            Self::Aarch64 => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::X86_64),
            2 => Some(Self::Aarch64),
            _ => None,
        }
    }

    fn from_machine(machine: u16) -> Option<Self> {
        match machine {
            62 => Some(Self::X86_64),
            183 => Some(Self::Aarch64),
            _ => None,
        }
    }

    /// Width in bytes of a reference in code.
    fn code_width(self) -> u64 {
        4
    }
}

/// One loadable part of an image: file bytes `[offset, offset + filesz)` at virtual address
/// `vaddr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// File offset.
    pub offset: u64,
    /// Virtual address.
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (at least `filesz`).
    pub memsz: u64,
}

/// What the reference finder needs of an ELF image: its loads, the file ranges of its code, its
/// relocation tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub arch: Arch,
    pub loads: Vec<Load>,
    /// File ranges of code (executable sections, else executable loads), sorted, disjoint.
    code: Vec<Range<u64>>,
    /// File ranges of RELA tables (24-byte entries).
    relas: Vec<Range<u64>>,
    /// A position-dependent executable (ELF type EXEC).
    fixed: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads `count` headers of `size` bytes at `offset`, if they lie inside the image.
fn read_table(
    image: &dyn ReadAt,
    len: u64,
    offset: u64,
    size: usize,
    count: usize,
) -> Option<Vec<u8>> {
    let bytes = (size as u64).checked_mul(count as u64)?;
    if offset.checked_add(bytes)? > len {
        return None;
    }
    let mut table = vec![0; bytes as usize];
    image.read_exact_at(offset, &mut table).ok()?;
    Some(table)
}

impl Layout {
    /// The layout of a 64-bit little-endian ELF image for x86-64 or AArch64 of `len` bytes, or
    /// `None` for anything else (or a malformed one).
    pub(crate) fn parse(image: &dyn ReadAt, len: u64) -> Option<Self> {
        let mut ident = [0u8; 64];
        if len < 64 {
            return None;
        }
        image.read_exact_at(0, &mut ident).ok()?;
        // ELF, 64-bit, little-endian.
        if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
            return None;
        }
        let kind = u16_at(&ident, 16)?;
        let arch = Arch::from_machine(u16_at(&ident, 18)?)?;
        let phoff = u64_at(&ident, 32)?;
        let shoff = u64_at(&ident, 40)?;
        let phentsize = usize::from(u16_at(&ident, 54)?);
        let phnum = usize::from(u16_at(&ident, 56)?);
        let shentsize = usize::from(u16_at(&ident, 58)?);
        let shnum = usize::from(u16_at(&ident, 60)?);
        if phentsize < 56 || phnum == 0 || phnum > MAX_PROGRAM_HEADERS {
            return None;
        }
        let table = read_table(image, len, phoff, phentsize, phnum)?;
        let mut loads = Vec::new();
        let mut exec_loads = Vec::new();
        for ph in table.chunks_exact(phentsize) {
            // PT_LOAD
            if u32_at(ph, 0)? != 1 {
                continue;
            }
            let flags = u32_at(ph, 4)?;
            let offset = u64_at(ph, 8)?;
            let vaddr = u64_at(ph, 16)?;
            let filesz = u64_at(ph, 32)?;
            let memsz = u64_at(ph, 40)?.max(filesz);
            let end = offset.checked_add(filesz)?;
            if end > len || vaddr.checked_add(memsz).is_none() {
                return None;
            }
            if loads.len() == MAX_LOADS {
                return None;
            }
            loads.push(Load {
                offset,
                vaddr,
                filesz,
                memsz,
            });
            if flags & 1 != 0 {
                exec_loads.push(offset..end);
            }
        }
        if loads.is_empty() {
            return None;
        }
        let mut code = Vec::new();
        let mut relas = Vec::new();
        if shentsize >= 64 && shnum > 0 && shnum <= MAX_SECTION_HEADERS {
            if let Some(sections) = read_table(image, len, shoff, shentsize, shnum) {
                for sh in sections.chunks_exact(shentsize) {
                    let kind = u32_at(sh, 4)?;
                    let flags = u64_at(sh, 8)?;
                    let offset = u64_at(sh, 24)?;
                    let size = u64_at(sh, 32)?;
                    let Some(end) = offset.checked_add(size).filter(|e| *e <= len) else {
                        continue;
                    };
                    // SHT_PROGBITS with SHF_ALLOC | SHF_EXECINSTR
                    if kind == 1 && flags & 6 == 6 {
                        code.push(offset..end);
                    }
                    // SHT_RELA with 24-byte entries
                    if kind == 4 && u64_at(sh, 56)? == 24 {
                        relas.push(offset..end - size % 24);
                    }
                }
            }
        }
        if code.is_empty() {
            code = exec_loads;
        }
        code.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(code.len());
        for range in code {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        relas.sort_by_key(|r| r.start);
        Some(Self {
            arch,
            loads,
            code: merged,
            relas,
            fixed: kind == 2,
        })
    }

    fn is_code(&self, offset: u64) -> bool {
        let i = self.code.partition_point(|r| r.start <= offset);
        i > 0 && offset < self.code[i - 1].end
    }

    /// Lowest and highest (exclusive) virtual address of the loads.
    fn span(&self) -> (u64, u64) {
        vaddr_span(&self.loads)
    }
}

fn vaddr_span(loads: &[Load]) -> (u64, u64) {
    let lo = loads.iter().map(|l| l.vaddr).min().unwrap_or(0);
    let hi = loads
        .iter()
        .map(|l| l.vaddr.saturating_add(l.memsz))
        .max()
        .unwrap_or(0);
    (lo, hi)
}

/// The virtual address of file offset `offset` in `loads`.
fn vaddr_of(loads: &[Load], offset: u64) -> Option<u64> {
    loads
        .iter()
        .find(|l| offset >= l.offset && offset - l.offset < l.filesz)
        .map(|l| l.vaddr + (offset - l.offset))
}

/// The file offset of virtual address `vaddr` in `loads`, if the file holds it.
fn offset_of(loads: &[Load], vaddr: u64) -> Option<u64> {
    loads
        .iter()
        .find(|l| vaddr >= l.vaddr && vaddr - l.vaddr < l.filesz)
        .map(|l| l.offset + (vaddr - l.vaddr))
}

/// Where a reference starts in the source: one bit per source byte.
pub struct References {
    layout: Layout,
    len: u64,
    bits: Vec<u64>,
    count: u64,
}

impl std::fmt::Debug for References {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("References")
            .field("arch", &self.layout.arch)
            .field("len", &self.len)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl References {
    /// Finds the references of the source image `image` of `len` bytes: `None` when it is not an
    /// ELF image this module reads, or over [`MAX_MODEL_SOURCE`]; an error when reading fails.
    pub fn find(image: &dyn ReadAt, len: u64) -> std::io::Result<Option<Self>> {
        if len > MAX_MODEL_SOURCE {
            return Ok(None);
        }
        let Some(layout) = Layout::parse(image, len) else {
            return Ok(None);
        };
        let mut refs = Self {
            len,
            bits: vec![0; len.div_ceil(64) as usize],
            count: 0,
            layout,
        };
        let code = refs.layout.code.clone();
        for range in &code {
            match refs.layout.arch {
                Arch::X86_64 => refs.sweep_x86(image, range.clone())?,
                Arch::Aarch64 => refs.sweep_aarch64(image, range.clone())?,
            }
        }
        refs.find_pointers(image)?;
        Ok(Some(refs))
    }

    /// The architecture of the source.
    pub fn arch(&self) -> Arch {
        self.layout.arch
    }

    /// How many references were found.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn mark(&mut self, at: u64, width: u64) {
        if at.checked_add(width).is_none_or(|end| end > self.len) {
            return;
        }
        let (word, bit) = ((at / 64) as usize, at % 64);
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.count += 1;
        }
    }

    /// Where the reference at source offset `at` with source bytes `old` points (a virtual
    /// address of the source), if it points into the image.
    pub(crate) fn target_of(&self, at: u64, old: &[u8]) -> Option<u64> {
        let (lo, hi) = self.layout.span();
        let target = if old.len() == 8 {
            u64_at(old, 0)?
        } else {
            let word = u32_at(old, 0)?;
            let site = vaddr_of(&self.layout.loads, at)?;
            match self.layout.arch {
                Arch::X86_64 => site
                    .wrapping_add(4)
                    .wrapping_add_signed(i64::from(word as i32)),
                Arch::Aarch64 => Arm::of(word)?.target(word, site),
            }
        };
        (lo..hi).contains(&target).then_some(target)
    }

    /// The width of the reference at source offset `at` (4 in code, 8 in data).
    fn width(&self, at: u64) -> u64 {
        if self.layout.is_code(at) {
            self.layout.arch.code_width()
        } else {
            8
        }
    }

    /// Calls `each(offset, width)` for each reference lying wholly in source `[start, end)`, in
    /// order.
    pub(crate) fn each_in(&self, start: u64, end: u64, mut each: impl FnMut(u64, u64)) {
        let end = end.min(self.len);
        if start >= end {
            return;
        }
        let mut word = (start / 64) as usize;
        let last = ((end - 1) / 64) as usize;
        while word <= last {
            let mut bits = self.bits[word];
            if word == (start / 64) as usize {
                bits &= u64::MAX << (start % 64);
            }
            while bits != 0 {
                let at = word as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if at >= end {
                    return;
                }
                let width = self.width(at);
                if at + width <= end {
                    each(at, width);
                }
            }
            word += 1;
        }
    }

    /// x86-64: a linear sweep of `range` marking each 32-bit branch displacement and
    /// RIP-relative displacement. An undecodable byte is skipped.
    fn sweep_x86(&mut self, image: &dyn ReadAt, range: Range<u64>) -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut pos = range.start;
        let mut instr = Instruction::default();
        while pos < range.end {
            let n = (range.end - pos).min(CHUNK as u64) as usize;
            let bytes = &mut buf[..n];
            image.read_exact_at(pos, bytes)?;
            let last = pos + n as u64 >= range.end;
            // Instructions starting past this may run over the chunk: the next chunk takes them.
            let limit = if last { n } else { n - MAX_X86_INSN };
            let mut decoder = Decoder::with_ip(64, bytes, pos, DecoderOptions::NONE);
            let mut at = 0usize;
            while at < limit {
                decoder.decode_out(&mut instr);
                let len = instr.len();
                if instr.is_invalid() || len == 0 {
                    at += 1;
                    if decoder.set_position(at).is_err() {
                        break;
                    }
                    decoder.set_ip(pos + at as u64);
                    continue;
                }
                let site = pos + at as u64;
                if let Some(disp) = x86_displacement(&decoder, &instr, bytes, at) {
                    self.mark(site + disp as u64, 4);
                }
                at += len;
            }
            pos += at as u64;
        }
        Ok(())
    }

    /// AArch64: every word of `range` (4-aligned in the file) that is a PC-relative branch,
    /// literal load or address computation.
    fn sweep_aarch64(&mut self, image: &dyn ReadAt, range: Range<u64>) -> std::io::Result<()> {
        let start = range.start.next_multiple_of(4);
        let mut buf = vec![0u8; CHUNK];
        let mut pos = start;
        while pos + 4 <= range.end {
            let n = ((range.end - pos) / 4 * 4).min(CHUNK as u64) as usize;
            let bytes = &mut buf[..n];
            image.read_exact_at(pos, bytes)?;
            for (k, word) in bytes.chunks_exact(4).enumerate() {
                let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                if Arm::of(w).is_some() {
                    self.mark(pos + 4 * k as u64, 4);
                }
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Pointers in data: the relocation tables' addresses and the sites they name, for an image
    /// with relative relocations; else, in a position-dependent executable, every aligned word of
    /// its non-code loads that points into the image.
    fn find_pointers(&mut self, image: &dyn ReadAt) -> std::io::Result<()> {
        let relative = match self.layout.arch {
            Arch::X86_64 => [8u32, 37],    // R_X86_64_RELATIVE, R_X86_64_IRELATIVE
            Arch::Aarch64 => [1027, 1032], // R_AARCH64_RELATIVE, R_AARCH64_IRELATIVE
        };
        let mut found_relative = false;
        let mut buf = vec![0u8; CHUNK / 24 * 24];
        for range in self.layout.relas.clone() {
            let mut pos = range.start;
            while pos < range.end {
                let n = ((range.end - pos) as usize).min(buf.len());
                let bytes = &mut buf[..n];
                image.read_exact_at(pos, bytes)?;
                for (k, entry) in bytes.chunks_exact(24).enumerate() {
                    let at = pos + 24 * k as u64;
                    let (Some(offset), Some(info)) = (u64_at(entry, 0), u64_at(entry, 8)) else {
                        continue;
                    };
                    self.mark(at, 8);
                    if relative.contains(&(info as u32)) {
                        found_relative = true;
                        self.mark(at + 16, 8);
                        if let Some(site) = offset_of(&self.layout.loads, offset) {
                            if !self.layout.is_code(site) {
                                self.mark(site, 8);
                            }
                        }
                    }
                }
                pos += n as u64;
            }
        }
        if found_relative || !self.layout.fixed {
            return Ok(());
        }
        let (lo, hi) = self.layout.span();
        if lo < MIN_POINTER {
            return Ok(());
        }
        for load in self.layout.loads.clone() {
            let mut pos = load.offset.next_multiple_of(8);
            let end = load.offset + load.filesz;
            while pos + 8 <= end {
                let n = ((end - pos) / 8 * 8).min(CHUNK as u64) as usize;
                let take = n.min(buf.len()) / 8 * 8;
                let bytes = &mut buf[..take];
                let n = bytes.len();
                image.read_exact_at(pos, bytes)?;
                for (k, word) in bytes.chunks_exact(8).enumerate() {
                    let at = pos + 8 * k as u64;
                    let value = u64::from_le_bytes(word.try_into().unwrap_or_default());
                    if (lo..hi).contains(&value) && !self.layout.is_code(at) {
                        self.mark(at, 8);
                    }
                }
                pos += n as u64;
            }
        }
        Ok(())
    }
}

/// The offset within the instruction at `at` of its 32-bit displacement to a target: a near
/// branch's (call, jmp, jcc with rel32) or a RIP-relative memory operand's.
fn x86_displacement(
    decoder: &Decoder<'_>,
    instr: &Instruction,
    bytes: &[u8],
    at: usize,
) -> Option<usize> {
    let len = instr.len();
    if instr.op0_kind() == OpKind::NearBranch64 && len >= 5 {
        // A rel32 branch ends with its displacement.
        let disp = instr.near_branch64().wrapping_sub(instr.next_ip()) as i64;
        let disp = i32::try_from(disp).ok()?;
        let tail = bytes.get(at + len - 4..at + len)?;
        return (tail == disp.to_le_bytes()).then_some(len - 4);
    }
    if instr.is_ip_rel_memory_operand() {
        let offsets = decoder.get_constant_offsets(instr);
        if offsets.has_displacement() && offsets.displacement_size() == 4 {
            return Some(offsets.displacement_offset());
        }
    }
    None
}

/// An AArch64 PC-relative instruction form: where its immediate is, and its scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// B, BL: imm26 at bit 0, ×4.
    Imm26,
    /// B.cond, CBZ, CBNZ, LDR (literal): imm19 at bit 5, ×4.
    Imm19,
    /// TBZ, TBNZ: imm14 at bit 5, ×4.
    Imm14,
    /// ADR: immhi:immlo (21 bits), ×1.
    Adr,
    /// ADRP: immhi:immlo (21 bits), ×4096 from the page of the instruction.
    Adrp,
}

impl Arm {
    fn of(w: u32) -> Option<Self> {
        if w & 0x7c00_0000 == 0x1400_0000 {
            Some(Self::Imm26)
        } else if w & 0xff00_0010 == 0x5400_0000
            || w & 0x7e00_0000 == 0x3400_0000
            || w & 0x3b00_0000 == 0x1800_0000
        {
            Some(Self::Imm19)
        } else if w & 0x7e00_0000 == 0x3600_0000 {
            Some(Self::Imm14)
        } else if w & 0x9f00_0000 == 0x1000_0000 {
            Some(Self::Adr)
        } else if w & 0x9f00_0000 == 0x9000_0000 {
            Some(Self::Adrp)
        } else {
            None
        }
    }

    /// The signed immediate field of `w` and its width in bits.
    fn imm(self, w: u32) -> (i64, u32) {
        let (raw, bits) = match self {
            Self::Imm26 => (w & 0x03ff_ffff, 26),
            Self::Imm19 => ((w >> 5) & 0x7_ffff, 19),
            Self::Imm14 => ((w >> 5) & 0x3fff, 14),
            Self::Adr | Self::Adrp => ((((w >> 5) & 0x7_ffff) << 2) | ((w >> 29) & 3), 21),
        };
        let shift = 64 - bits;
        ((i64::from(raw) << shift) >> shift, bits)
    }

    /// `w` with its immediate field set to `imm`, or `None` when it does not fit.
    fn with_imm(self, w: u32, imm: i64) -> Option<u32> {
        let (_, bits) = self.imm(w);
        let half = 1i64 << (bits - 1);
        if imm < -half || imm >= half {
            return None;
        }
        let raw = (imm as u32) & ((1u32 << bits) - 1);
        Some(match self {
            Self::Imm26 => (w & !0x03ff_ffff) | raw,
            Self::Imm19 => (w & !(0x7_ffff << 5)) | (raw << 5),
            Self::Imm14 => (w & !(0x3fff << 5)) | (raw << 5),
            Self::Adr | Self::Adrp => {
                (w & !((0x7_ffff << 5) | (3 << 29))) | ((raw >> 2) << 5) | ((raw & 3) << 29)
            }
        })
    }

    /// The target of `w` at address `pc`.
    fn target(self, w: u32, pc: u64) -> u64 {
        let (imm, _) = self.imm(w);
        match self {
            Self::Adr => pc.wrapping_add_signed(imm),
            Self::Adrp => (pc & !0xfff).wrapping_add_signed(imm << 12),
            _ => pc.wrapping_add_signed(imm << 2),
        }
    }

    /// The immediate that makes an instruction at `pc` reach `target`, before range checks.
    fn imm_for(self, target: u64, pc: u64) -> Option<i64> {
        match self {
            Self::Adr => Some(target.wrapping_sub(pc) as i64),
            Self::Adrp => Some(((target & !0xfff).wrapping_sub(pc & !0xfff) as i64) >> 12),
            _ => {
                let d = target.wrapping_sub(pc) as i64;
                (d % 4 == 0).then_some(d >> 2)
            }
        }
    }
}

/// Where ranges of the source's virtual addresses went in the target: sorted, disjoint entries
/// of (source address, length, shift). An address between entries takes the shift of the entry
/// before it (the first entry's before them all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMap {
    entries: Vec<(u64, u64, i64)>,
}

impl AddressMap {
    /// The map's entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the entries no address of `targets` (sorted) falls in: they would cost header
    /// bytes and predict nothing.
    fn keep_targeted(&mut self, targets: &[u64]) {
        self.entries.retain(|&(start, len, _)| {
            let i = targets.partition_point(|&t| t < start);
            targets.get(i).is_some_and(|&t| t - start < len)
        });
    }

    /// How far the target moved source address `vaddr`.
    fn shift(&self, vaddr: u64) -> i64 {
        let i = self.entries.partition_point(|e| e.0 <= vaddr);
        match (i, self.entries.first()) {
            (0, Some(first)) => first.2,
            (0, None) => 0,
            _ => self.entries[i - 1].2,
        }
    }

    /// The map of matched ranges `(source vaddr, target vaddr, length)`: only the heaviest chain
    /// of ranges in the same order in both images (most bytes; a short match of common bytes
    /// far from its neighbours' shift is noise), overlaps cut, neighbours with the same shift
    /// merged.
    fn from_ranges(ranges: Vec<(u64, u64, u64)>) -> Self {
        let mut ranges = heaviest_chain(ranges);
        ranges.sort_by_key(|r| (r.0, std::cmp::Reverse(r.2)));
        let mut entries: Vec<(u64, u64, i64)> = Vec::new();
        let mut end = 0u64;
        for (old, new, len) in ranges {
            let shift = new.wrapping_sub(old) as i64;
            let (mut old, mut len) = (old, len);
            if old < end {
                let cut = end - old;
                if cut >= len {
                    continue;
                }
                old += cut;
                len -= cut;
            }
            match entries.last_mut() {
                Some(last) if last.2 == shift => last.1 = old + len - last.0,
                _ => entries.push((old, len, shift)),
            }
            end = old + len;
        }
        if entries.len() > MAX_MAP_ENTRIES {
            // Keep the longest (a prediction from a coarser map is only less often right).
            let mut by_len: Vec<usize> = (0..entries.len()).collect();
            by_len.sort_by_key(|&i| std::cmp::Reverse(entries[i].1));
            by_len.truncate(MAX_MAP_ENTRIES);
            by_len.sort_unstable();
            entries = by_len.into_iter().map(|i| entries[i]).collect();
        }
        Self { entries }
    }
}

/// The ranges `(source, target, length)` of the heaviest chain increasing in both source and
/// target order (a weighted longest increasing subsequence, O(n log n) with a Fenwick tree of
/// prefix maxima over the target order).
fn heaviest_chain(mut ranges: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    let n = ranges.len();
    if n < 2 {
        return ranges;
    }
    ranges.sort_unstable_by_key(|r| (r.0, r.1));
    let mut order: Vec<u64> = ranges.iter().map(|r| r.1).collect();
    order.sort_unstable();
    order.dedup();
    // tree[i]: the best (weight, index + 1) among ranges whose target rank is in i's span.
    let mut tree = vec![(0u64, 0usize); order.len() + 1];
    let mut back = vec![0usize; n];
    let mut best = (0u64, 0usize);
    // Ranges with the same source start must not chain to each other: hold their updates back.
    let mut pending: Vec<(usize, u64, usize)> = Vec::new();
    let mut group_start = u64::MAX;
    for (i, &(old, new, len)) in ranges.iter().enumerate() {
        if old != group_start {
            for (rank, weight, at) in pending.drain(..) {
                let mut k = rank;
                while k < tree.len() {
                    if tree[k].0 < weight {
                        tree[k] = (weight, at);
                    }
                    k += k & k.wrapping_neg();
                }
            }
            group_start = old;
        }
        let rank = order.partition_point(|&v| v < new) + 1;
        // The best chain ending at a target before this one.
        let mut prev = (0u64, 0usize);
        let mut k = rank - 1;
        while k > 0 {
            if tree[k].0 > prev.0 {
                prev = tree[k];
            }
            k -= k & k.wrapping_neg();
        }
        let weight = prev.0 + len;
        back[i] = prev.1;
        if weight > best.0 {
            best = (weight, i + 1);
        }
        pending.push((rank, weight, i + 1));
    }
    let mut chain = Vec::new();
    let mut at = best.1;
    while at > 0 {
        chain.push(ranges[at - 1]);
        at = back[at - 1];
    }
    chain.reverse();
    chain
}

/// What a delta's header says about references: the architecture, the target's loads (so a
/// site's new address is known before the target exists) and the address map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceModel {
    arch: Arch,
    new_loads: Vec<Load>,
    map: AddressMap,
    /// [`ReferenceModel::encode`]'s bytes as a zstd frame: what the header carries.
    packed: Vec<u8>,
}

/// Why a reference model in a header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model ends early or has bytes after its end.
    #[error("reference model: {0}")]
    Malformed(&'static str),
    /// An architecture this decoder does not know.
    #[error("reference model: unknown architecture {0}")]
    Arch(u8),
    /// More loads or map entries than allowed.
    #[error("reference model: {what} {count} (at most {max})")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many it claims.
        count: u64,
        /// The limit.
        max: usize,
    },
}

impl ReferenceModel {
    /// The model of a delta from `old` to a target whose layout is `new`, with the matched
    /// ranges `(source offset, target offset, length)` the creator found.
    pub(crate) fn build(
        old: &Layout,
        new: &Layout,
        matches: &[(u64, u64, u64)],
        targets: &[u64],
    ) -> Self {
        let mut ranges = Vec::with_capacity(matches.len());
        for &(src, dst, len) in matches {
            if len < MIN_MAP_MATCH {
                continue;
            }
            // Clip to the loads holding each end's start.
            let (Some(a), Some(b)) = (
                old.loads
                    .iter()
                    .find(|l| src >= l.offset && src - l.offset < l.filesz),
                new.loads
                    .iter()
                    .find(|l| dst >= l.offset && dst - l.offset < l.filesz),
            ) else {
                continue;
            };
            let len = len
                .min(a.offset + a.filesz - src)
                .min(b.offset + b.filesz - dst);
            ranges.push((a.vaddr + (src - a.offset), b.vaddr + (dst - b.offset), len));
        }
        let mut map = AddressMap::from_ranges(ranges);
        map.keep_targeted(targets);
        Self::packed(old.arch, new.loads.clone(), map)
    }

    fn packed(arch: Arch, new_loads: Vec<Load>, map: AddressMap) -> Self {
        let mut model = Self {
            arch,
            new_loads,
            map,
            packed: Vec::new(),
        };
        let raw = model.encode();
        model.packed = zstd::bulk::compress(&raw, 19).unwrap_or_default();
        model
    }

    /// The model as the header carries it (a zstd frame).
    pub fn packed_bytes(&self) -> &[u8] {
        &self.packed
    }

    /// The model from the header's frame, bounded by [`MAX_PACKED_MODEL`] decompressed.
    pub fn unpack(frame: &[u8]) -> Result<Self, ModelError> {
        let raw = zstd::bulk::decompress(frame, MAX_PACKED_MODEL)
            .map_err(|_| ModelError::Malformed("not a zstd frame of at most 8 MiB"))?;
        let mut model = Self::decode(&raw)?;
        model.packed = frame.to_vec();
        Ok(model)
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The address map.
    pub fn map(&self) -> &AddressMap {
        &self.map
    }

    /// The model's bytes: arch u8 · load count u8 · loads × (offset, vaddr, filesz, memsz) u64 ·
    /// entry count varint · entries × (gap from the previous entry's end, length, zigzag shift)
    /// varints.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.arch.byte(), self.new_loads.len() as u8];
        for l in &self.new_loads {
            for v in [l.offset, l.vaddr, l.filesz, l.memsz] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        put_varint(&mut out, self.map.entries.len() as u64);
        let mut end = 0u64;
        for &(old, len, shift) in &self.map.entries {
            put_varint(&mut out, old - end);
            put_varint(&mut out, len);
            put_varint(&mut out, ((shift << 1) ^ (shift >> 63)) as u64);
            end = old + len;
        }
        out
    }

    /// Parses [`ReferenceModel::encode`]'s bytes, bounded by [`MAX_LOADS`] and
    /// [`MAX_MAP_ENTRIES`].
    fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        let arch_byte = *bytes.first().ok_or(ModelError::Malformed("empty"))?;
        let arch = Arch::from_byte(arch_byte).ok_or(ModelError::Arch(arch_byte))?;
        let loads = usize::from(*bytes.get(1).ok_or(ModelError::Malformed("ends early"))?);
        if loads == 0 || loads > MAX_LOADS {
            return Err(ModelError::TooMany {
                what: "target loads",
                count: loads as u64,
                max: MAX_LOADS,
            });
        }
        let mut at = 2usize;
        let mut new_loads = Vec::with_capacity(loads);
        for _ in 0..loads {
            let mut v = [0u64; 4];
            for x in &mut v {
                *x = u64_at(bytes, at).ok_or(ModelError::Malformed("ends early"))?;
                at += 8;
            }
            if v[0].checked_add(v[2]).is_none() || v[1].checked_add(v[3]).is_none() || v[3] < v[2] {
                return Err(ModelError::Malformed("a target load wraps"));
            }
            new_loads.push(Load {
                offset: v[0],
                vaddr: v[1],
                filesz: v[2],
                memsz: v[3],
            });
        }
        let count = get_varint(bytes, &mut at).ok_or(ModelError::Malformed("ends early"))?;
        if count > MAX_MAP_ENTRIES as u64 {
            return Err(ModelError::TooMany {
                what: "address map entries",
                count,
                max: MAX_MAP_ENTRIES,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut end = 0u64;
        for _ in 0..count {
            let gap = get_varint(bytes, &mut at).ok_or(ModelError::Malformed("ends early"))?;
            let len = get_varint(bytes, &mut at).ok_or(ModelError::Malformed("ends early"))?;
            let z = get_varint(bytes, &mut at).ok_or(ModelError::Malformed("ends early"))?;
            let old = end
                .checked_add(gap)
                .ok_or(ModelError::Malformed("an address map entry wraps"))?;
            end = old
                .checked_add(len)
                .ok_or(ModelError::Malformed("an address map entry wraps"))?;
            if len == 0 {
                return Err(ModelError::Malformed("an empty address map entry"));
            }
            entries.push((old, len, ((z >> 1) as i64) ^ -((z & 1) as i64)));
        }
        if at != bytes.len() {
            return Err(ModelError::Malformed("bytes after its end"));
        }
        Ok(Self {
            arch,
            new_loads,
            map: AddressMap { entries },
            packed: Vec::new(),
        })
    }
}

/// The source's references with a delta's model: what a diff run needs to correct them.
#[derive(Clone, Copy, Debug)]
pub struct Correction<'a> {
    /// The source's references.
    pub refs: &'a References,
    /// The header's model.
    pub model: &'a ReferenceModel,
}

impl Correction<'_> {
    /// How far the target moved source address `vaddr`: the map's entry at or before it in the
    /// same source load, else the first one after it there, else how far that load moved (loads
    /// paired in order; a table of pointers rewritten everywhere matches nothing, yet moved with
    /// its load).
    fn shift(&self, vaddr: u64) -> i64 {
        let map = &self.model.map;
        let old = &self.refs.layout.loads;
        let Some(k) = old
            .iter()
            .position(|l| vaddr >= l.vaddr && vaddr - l.vaddr < l.memsz)
        else {
            return map.shift(vaddr);
        };
        let load = old[k];
        let entries = &map.entries;
        let i = entries.partition_point(|e| e.0 <= vaddr);
        if i > 0 && entries[i - 1].0 + entries[i - 1].1 > load.vaddr {
            return entries[i - 1].2;
        }
        if i < entries.len() && entries[i].0 - load.vaddr < load.memsz {
            return entries[i].2;
        }
        match self.model.new_loads.get(k) {
            Some(new) if self.model.new_loads.len() == old.len() => {
                new.vaddr.wrapping_sub(load.vaddr) as i64
            }
            _ => map.shift(vaddr),
        }
    }

    /// The predicted target value of the reference at source offset `at` whose source bytes are
    /// `old` (4 or 8 of them), when its bytes land at target offset `new_at`; in the low bytes.
    pub(crate) fn predict(&self, at: u64, old: &[u8], new_at: u64) -> u64 {
        let refs = self.refs;
        if old.len() == 8 {
            let value = u64_at(old, 0).unwrap_or(0);
            let (lo, hi) = refs.layout.span();
            if (lo..hi).contains(&value) {
                return value.wrapping_add_signed(self.shift(value));
            }
            return value;
        }
        let Some(word) = u32_at(old, 0) else {
            return 0;
        };
        let Some(site) = vaddr_of(&refs.layout.loads, at) else {
            return u64::from(word);
        };
        // Where the site is in the target: from the target's loads, else moved with the run.
        let new_site = vaddr_of(&self.model.new_loads, new_at)
            .unwrap_or_else(|| site.wrapping_add(new_at.wrapping_sub(at)));
        match refs.layout.arch {
            Arch::X86_64 => {
                // A displacement from the end of its 4 bytes (an immediate after it is ignored:
                // the same on both sides, and it only shifts which map entry is used).
                let disp = i64::from(word as i32);
                let target = site.wrapping_add(4).wrapping_add_signed(disp);
                let moved = target.wrapping_add_signed(self.shift(target));
                u64::from(moved.wrapping_sub(new_site.wrapping_add(4)) as u32)
            }
            Arch::Aarch64 => {
                let Some(form) = Arm::of(word) else {
                    return u64::from(word);
                };
                let target = form.target(word, site);
                let moved = target.wrapping_add_signed(self.shift(target));
                form.imm_for(moved, new_site)
                    .and_then(|imm| form.with_imm(word, imm))
                    .map_or(u64::from(word), u64::from)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aarch64_immediates_round_trip_and_reach_their_targets() {
        // bl +0x100, b.ne -8, cbz x0 +0x40, tbz w1 #3 +0x20, adr x0 +5, adrp x0 +12 pages
        let cases: [(u32, Arm); 6] = [
            (0x9400_0040, Arm::Imm26),
            (0x54ff_ffc1, Arm::Imm19),
            (0xb400_0200, Arm::Imm19),
            (0x3618_0101, Arm::Imm14),
            (0x3000_0020, Arm::Adr),
            (0x9000_0060, Arm::Adrp),
        ];
        let pc = 0x40_1234u64 & !3;
        for (w, form) in cases {
            assert_eq!(Arm::of(w), Some(form), "{w:#010x}");
            let target = form.target(w, pc);
            let imm = form.imm_for(target, pc).unwrap();
            assert_eq!(form.with_imm(w, imm), Some(w), "{w:#010x}");
        }
        assert_eq!(Arm::Imm26.target(0x9400_0040, 0x1000), 0x1100);
        assert_eq!(Arm::Imm19.target(0x54ff_ffc1, 0x1000), 0x1000 - 8);
        assert_eq!(Arm::Adrp.target(0x9000_0060, 0x1234), 0x1000 + 12 * 0x1000);
        assert_eq!(Arm::Adr.target(0x3000_0020, 0x1234), 0x1239);
        // Out of range: an imm14 cannot reach 1 MiB.
        assert_eq!(Arm::Imm14.with_imm(0x3618_0101, 1 << 18), None);
    }

    #[test]
    fn an_address_map_keeps_the_longer_match_and_merges_equal_shifts() {
        let map = AddressMap::from_ranges(vec![
            (0x1000, 0x1100, 0x100),
            (0x1100, 0x1200, 0x80),  // same shift, merged
            (0x1120, 0x1000, 0x10),  // inside the merged entry, shorter: dropped
            (0x2000, 0x1f00, 0x100), // shift -0x100
        ]);
        assert_eq!(
            map.entries,
            vec![(0x1000, 0x180, 0x100), (0x2000, 0x100, -0x100)]
        );
        assert_eq!(map.shift(0x0), 0x100);
        assert_eq!(map.shift(0x1050), 0x100);
        assert_eq!(map.shift(0x1f00), 0x100);
        assert_eq!(map.shift(0x2050), -0x100);
        assert_eq!(map.shift(0x9000), -0x100);
    }

    #[test]
    fn a_model_round_trips_and_bad_bytes_are_refused() {
        let model = ReferenceModel::packed(
            Arch::Aarch64,
            vec![Load {
                offset: 0,
                vaddr: 0x40_0000,
                filesz: 0x1000,
                memsz: 0x2000,
            }],
            AddressMap::from_ranges(vec![(0x40_0000, 0x40_0010, 0x800)]),
        );
        assert_eq!(ReferenceModel::unpack(model.packed_bytes()).unwrap(), model);
        assert!(ReferenceModel::unpack(b"not zstd").is_err());
        let bytes = model.encode();
        for cut in 0..bytes.len() {
            assert!(
                ReferenceModel::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ReferenceModel::decode(&longer).is_err());
        let mut arch = bytes.clone();
        arch[0] = 9;
        assert!(matches!(
            ReferenceModel::decode(&arch),
            Err(ModelError::Arch(9))
        ));
        let mut many = vec![1, 1];
        many.extend_from_slice(&[0; 32]);
        put_varint(&mut many, u64::MAX);
        assert!(matches!(
            ReferenceModel::decode(&many),
            Err(ModelError::TooMany { .. })
        ));
    }
}
