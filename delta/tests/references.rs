//! Executable-aware matching: a release that moves code changes every call into what moved;
//! deltas between ELF images correct those references against where the code went, apply
//! byte-exact (the applier finds the references in its own copy of the source), and say what is
//! wrong when the model or the source is not what the segment needs.
//!
//! The images are built here: a program of a few thousand functions that call each other, with
//! a table of pointers to them, linked as a small ELF executable for x86-64 (calls `E8 rel32`,
//! RIP-relative `lea`) and for AArch64 (`BL`, `B`, `ADRP`); the new release inserts a function a
//! third of the way in and edits a few others, so everything after moves.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod common;

use common::apply;
use delta::{BodyError, DeltaError, DeltaHeader, DeltaOptions, SegmentDecoder, create};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    X86,
    Arm,
}

#[derive(Clone)]
enum Insn {
    /// An instruction with an immediate that is not a reference.
    Filler(u16),
    /// A call to a function.
    Call(usize),
    /// The address of the pointer table (RIP-relative lea; ADRP on AArch64).
    Table,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn program(functions: usize, seed: u64) -> Vec<Vec<Insn>> {
    let mut rng = Rng(seed | 1);
    (0..functions)
        .map(|_| {
            let n = 6 + rng.next() % 20;
            (0..n)
                .map(|_| match rng.next() % 8 {
                    0 | 1 => Insn::Call(rng.next() as usize % functions),
                    2 => Insn::Table,
                    _ => Insn::Filler(rng.next() as u16),
                })
                .collect()
        })
        .collect()
}

const BASE: u64 = 0x40_0000;
const TEXT_AT: u64 = 0x1000;
const ELF_HEADER: usize = 64;
const PROGRAM_HEADER: usize = 56;

fn insn_len(isa: Isa, insn: &Insn) -> u64 {
    match (isa, insn) {
        (Isa::Arm, _) => 4,
        (Isa::X86, Insn::Filler(_) | Insn::Call(_)) => 5,
        (Isa::X86, Insn::Table) => 7,
    }
}

/// Links the functions in order into an ELF executable: text at `BASE + TEXT_AT`, then (page
/// aligned) a data load holding one 8-byte pointer per function.
fn link(isa: Isa, functions: &[Vec<Insn>]) -> Vec<u8> {
    let ret = if isa == Isa::X86 { 1 } else { 4 };
    let mut addr = Vec::with_capacity(functions.len());
    let mut at = BASE + TEXT_AT;
    for f in functions {
        addr.push(at);
        at += f.iter().map(|i| insn_len(isa, i)).sum::<u64>() + ret;
        at = at.next_multiple_of(16);
    }
    let text_end = at;
    let data_at = (text_end - BASE).next_multiple_of(0x1000);
    let table = BASE + data_at;
    // Code is padded with int3 (0xcc) on x86, as compilers do, so a sweep stays in step.
    let pad = if isa == Isa::X86 { 0xcc } else { 0 };
    let mut image = vec![pad; data_at as usize + 8 * functions.len()];
    image[..TEXT_AT as usize].fill(0);
    for (f, &start) in functions.iter().zip(&addr) {
        let mut pc = start;
        for insn in f {
            let o = (pc - BASE) as usize;
            match (isa, insn) {
                (Isa::X86, Insn::Filler(v)) => {
                    image[o] = 0xb8; // mov eax, imm32
                    image[o + 1..o + 5].copy_from_slice(&u32::from(*v).to_le_bytes());
                }
                (Isa::X86, Insn::Call(to)) => {
                    image[o] = 0xe8;
                    let rel = addr[*to].wrapping_sub(pc + 5) as i32;
                    image[o + 1..o + 5].copy_from_slice(&rel.to_le_bytes());
                }
                (Isa::X86, Insn::Table) => {
                    image[o..o + 3].copy_from_slice(&[0x48, 0x8d, 0x05]); // lea rax, [rip + d]
                    let rel = table.wrapping_sub(pc + 7) as i32;
                    image[o + 3..o + 7].copy_from_slice(&rel.to_le_bytes());
                }
                (Isa::Arm, Insn::Filler(v)) => {
                    let w = 0xd280_0000 | (u32::from(*v) << 5); // movz x0, #v
                    image[o..o + 4].copy_from_slice(&w.to_le_bytes());
                }
                (Isa::Arm, Insn::Call(to)) => {
                    let imm = ((addr[*to] as i64 - pc as i64) >> 2) as u32 & 0x03ff_ffff;
                    image[o..o + 4].copy_from_slice(&(0x9400_0000 | imm).to_le_bytes());
                }
                (Isa::Arm, Insn::Table) => {
                    let pages = (((table & !0xfff) as i64 - (pc & !0xfff) as i64) >> 12) as u32;
                    let w = 0x9000_0000 | ((pages & 3) << 29) | (((pages >> 2) & 0x7_ffff) << 5);
                    image[o..o + 4].copy_from_slice(&w.to_le_bytes());
                }
            }
            pc += insn_len(isa, insn);
        }
        let o = (pc - BASE) as usize;
        match isa {
            Isa::X86 => image[o] = 0xc3,
            Isa::Arm => image[o..o + 4].copy_from_slice(&0xd65f_03c0u32.to_le_bytes()),
        }
    }
    for (k, &a) in addr.iter().enumerate() {
        let o = data_at as usize + 8 * k;
        image[o..o + 8].copy_from_slice(&a.to_le_bytes());
    }
    // ELF header and two loads: code (R X) from offset 0, data (R W).
    let machine: u16 = if isa == Isa::X86 { 62 } else { 183 };
    let mut h = Vec::new();
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&machine.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&(BASE + TEXT_AT).to_le_bytes()); // entry
    h.extend_from_slice(&(ELF_HEADER as u64).to_le_bytes()); // phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // shoff: no sections
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(ELF_HEADER as u16).to_le_bytes());
    h.extend_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let load = |flags: u32, offset: u64, len: u64| {
        let mut p = Vec::new();
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&(BASE + offset).to_le_bytes());
        p.extend_from_slice(&(BASE + offset).to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(&0x1000u64.to_le_bytes());
        p
    };
    h.extend(load(5, 0, text_end - BASE));
    h.extend(load(6, data_at, 8 * functions.len() as u64));
    image[..h.len()].copy_from_slice(&h);
    image
}

/// Old and new releases: the new one has a function inserted a third of the way in (so every
/// address after it moves) and a few functions edited.
fn releases(isa: Isa) -> (Vec<u8>, Vec<u8>) {
    let old = program(3000, 7);
    let mut new = old.clone();
    let mut extra = program(1, 99).remove(0);
    extra.retain(|i| !matches!(i, Insn::Call(_)));
    new.insert(1000, extra);
    // Calls to the functions after the inserted one now name their new index.
    for f in &mut new {
        for insn in f.iter_mut() {
            if let Insn::Call(to) = insn {
                if *to >= 1000 {
                    *to += 1;
                }
            }
        }
    }
    for k in [17, 1500, 2900] {
        new[k].push(Insn::Filler(0xbeef));
    }
    (link(isa, &old), link(isa, &new))
}

fn make(dir: &std::path::Path, old: &[u8], new: &[u8], references: bool) -> Vec<u8> {
    std::fs::write(dir.join("old"), old).unwrap();
    std::fs::write(dir.join("new"), new).unwrap();
    let options = DeltaOptions {
        segment_log: 18,
        threads: 2,
        references,
        ..DeltaOptions::default()
    };
    let out = dir.join(format!("delta-{references}"));
    let summary = create(&dir.join("old"), &dir.join("new"), &out, &options).unwrap();
    let delta = std::fs::read(&out).unwrap();
    assert_eq!(summary.delta_len, delta.len() as u64);
    assert_eq!(
        summary.corrected_segments > 0,
        references,
        "{:?}",
        summary.methods
    );
    delta
}

fn moved_code_costs_little(isa: Isa) {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = releases(isa);
    let with = make(dir.path(), &old, &new, true);
    let without = make(dir.path(), &old, &new, false);
    assert_eq!(apply(&old, &with).unwrap(), new);
    assert_eq!(apply(&old, &without).unwrap(), new);
    assert!(DeltaHeader::parse(&with).unwrap().0.model.is_some());
    assert!(DeltaHeader::parse(&without).unwrap().0.model.is_none());
    // Every call and pointer after the insertion changed; corrected, they cost next to nothing.
    assert!(
        with.len() * 3 < without.len(),
        "{} bytes with references corrected, {} without",
        with.len(),
        without.len()
    );
}

#[test]
fn x86_64_code_that_moved_is_corrected_not_diffed() {
    moved_code_costs_little(Isa::X86);
}

#[test]
fn aarch64_code_that_moved_is_corrected_not_diffed() {
    moved_code_costs_little(Isa::Arm);
}

#[test]
fn a_segment_that_corrects_references_needs_the_model_and_an_executable_source() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = releases(Isa::X86);
    let delta = make(dir.path(), &old, &new, true);
    let (mut header, len) = DeltaHeader::parse(&delta).unwrap();
    let body = &delta[len..len + header.segments[0].encoded_len as usize];

    // The same bytes in a source that is no ELF image: refused, naming what it is not.
    let mut flat = old.clone();
    flat[..4].copy_from_slice(b"\0\0\0\0");
    let mut out = Vec::new();
    let error = SegmentDecoder::new()
        .decode(&header, 0, body, &flat, &mut out)
        .unwrap_err();
    assert!(
        matches!(
            error,
            DeltaError::Corrupt {
                detail: BodyError::NotExecutable(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("not a X86_64 ELF image"),
        "{error}"
    );
    assert!(out.is_empty());

    // A header without the model.
    header.model = None;
    let error = SegmentDecoder::new()
        .decode(&header, 0, body, &old, &mut out)
        .unwrap_err();
    assert!(
        matches!(
            error,
            DeltaError::Corrupt {
                detail: BodyError::NoModel,
                ..
            }
        ),
        "{error}"
    );

    // A header whose model was cut or whose flag was cleared does not parse.
    let mut cleared = delta.clone();
    cleared[10] = 0;
    assert!(matches!(
        DeltaHeader::parse(&cleared),
        Err(DeltaError::BadHeader(_))
    ));
    let mut cut = delta[..len].to_vec();
    let frame_at = len - header_model_len(&delta, len);
    cut[frame_at] ^= 0xff; // corrupt the model's zstd frame
    assert!(matches!(
        DeltaHeader::parse(&cut),
        Err(DeltaError::BadHeader(_))
    ));
}

/// The length of the packed model at the end of a header of `len` bytes.
fn header_model_len(delta: &[u8], len: usize) -> usize {
    let (header, _) = DeltaHeader::parse(delta).unwrap();
    len - (delta::FIXED_HEADER_LEN + delta::SEGMENT_ENTRY_LEN * header.segments.len() + 4)
}
