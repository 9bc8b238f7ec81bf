//! Single-bank ECUs: in-place updates through a logical-to-physical block map — the idea of
//! device-mapper snapshots and Android's Virtual A/B, for one plain partition.
//!
//! An ECU with one bank cannot write a second copy of its image, so an update writes only the
//! blocks that differ into a spare area and a *map* says, for each logical block, whether it is
//! read from home (its own place) or from a spare block. The running image is never touched: a
//! new map switches to the new image at one reboot, and dropping that map is the rollback.
//! Once the new software is committed, the remapped blocks are copied home in the background
//! and the spare area is freed (the merge).
//!
//! Physical layout of the partition (or file), in blocks of `block_size` bytes:
//!
//! ```text
//! | home: logical_blocks | spare: spare_blocks | map copy 0 | map copy 1 |
//! ```
//!
//! A map copy: `DMREMAP1` · block_size u32 · logical_blocks u32 · spare_blocks u32 ·
//! generation u64 · count u32 · count × (logical u32 · spare u32), logical ascending, spare
//! blocks distinct · BLAKE3 of all before it (32 bytes); little-endian, zero-padded to whole
//! blocks. A copy that does not check (torn, blank, another geometry) is never used.
//!
//! **Slots are map copies.** The boot control ([`crate::boot::UbootBoot`], with its one-try
//! trial and automatic fallback, exactly as for A/B) chooses a slot; slot `slots[i]` shows the
//! image through map copy `i` (on a gateway the initramfs reads `rauc.slot`, checks that copy
//! and sets up the mapping). Every write keeps this true at every instant: **each copy that
//! checks shows a whole, verified image — the old one or the new one** — and no copy that
//! checks names a spare block being written. The generation orders the copies: a write always
//! takes the highest generation of the two plus one, which is how a merge cut short knows which
//! of its steps were done.
//!
//! | step | written | why it is safe |
//! |---|---|---|
//! | install: retire | other copy := running map | the other slot was made unbootable first (flasher); afterwards it shows the running image |
//! | install: write | changed blocks → spare blocks no copy names | nothing that checks reads them |
//! | install: switch | other copy := running map + new blocks, then verified through it | a torn copy does not check; the trial starts only after it verifies |
//! | rollback | other copy := running map | drops the new map; home was never written |
//! | merge A | old copy := committed map | both copies show the new image |
//! | merge B | remapped blocks copied home | both copies read those blocks from spare |
//! | merge C | old copy := identity; boot the old slot; committed copy := identity | home holds the new image; each copy shows it |

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use delta::{
    ApplyError, ApplyInputs, DeltaSegments, Progress, ReadAt, WriteAt, hash_of, read_header,
};
use proto::BlobId;
use serde::Serialize;

use crate::bank::{Bank, BankError};
use crate::boot::{BootError, Slot, UbootBoot};
use crate::slots::{Banks, MergeReport, SparePlan, WriteError};

const MAGIC: &[u8; 8] = b"DMREMAP1";
/// Bytes before a map's entries.
const HEAD: usize = 8 + 4 + 4 + 4 + 8 + 4;
/// Smallest and largest block: a block never straddles a delta segment (at least 16 KiB).
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 1 << delta::MIN_SEGMENT_LOG;
/// Blocks copied home between syncs (and merge progress records) during a merge.
const MERGE_BATCH: usize = 64;

/// Why a partition cannot be divided as asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// A block size that is not a power of two in range.
    #[error("block size {0} must be a power of two from {MIN_BLOCK} to {MAX_BLOCK}")]
    BlockSize(u32),
    /// More spare blocks than a map can name.
    #[error("{0} bytes of spare area is too many blocks")]
    SpareTooLarge(u64),
    /// No spare area.
    #[error("the spare area must hold at least one block")]
    NoSpare,
    /// The partition cannot hold the spare area, the maps and a block of image.
    #[error(
        "{capacity} bytes cannot hold {spare_blocks} spare blocks of {block_size} bytes, two maps and an image"
    )]
    TooSmall {
        /// The partition's size.
        capacity: u64,
        /// Spare blocks asked for.
        spare_blocks: u32,
        /// The block size.
        block_size: u32,
    },
    /// More home blocks than a map can name.
    #[error("{0} home blocks are too many")]
    HomeTooLarge(u64),
}

/// Why a map copy does not check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// All zeros: never written.
    #[error("blank")]
    Blank,
    /// Not a map.
    #[error("no map here (bad magic)")]
    Magic,
    /// More entries than spare blocks.
    #[error("{count} entries, more than the {spare_blocks} spare blocks")]
    TooManyEntries {
        /// Entries it claims.
        count: usize,
        /// Spare blocks of the bank.
        spare_blocks: u32,
    },
    /// The copy ends inside its entries.
    #[error("shorter than its entries")]
    Short,
    /// Its checksum does not match.
    #[error("checksum does not match (torn or damaged)")]
    Checksum,
    /// Made for another geometry.
    #[error(
        "made for blocks of {} bytes, {} home and {} spare blocks; this bank has {}, {} and {}",
        .made.0, .made.1, .made.2, .bank.0, .bank.1, .bank.2
    )]
    Geometry {
        /// Block size, home and spare blocks it was made for.
        made: (u32, u32, u32),
        /// This bank's.
        bank: (u32, u32, u32),
    },
    /// An entry names a block outside the bank.
    #[error("entry {index} ({logical} → {spare}) is out of range")]
    OutOfRange {
        /// Which entry.
        index: usize,
        /// Its logical block.
        logical: u32,
        /// Its spare block.
        spare: u32,
    },
    /// An entry repeats a logical or spare block, or is out of order.
    #[error("entry {index} ({logical} → {spare}) repeats or is out of order")]
    Repeats {
        /// Which entry.
        index: usize,
        /// Its logical block.
        logical: u32,
        /// Its spare block.
        spare: u32,
    },
}

/// How a remapping bank divides its partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RemapLayout {
    /// Bytes per block (a power of two, 512 to 16384): the unit of remapping.
    pub block_size: u32,
    /// Blocks of the logical image (the home area).
    pub logical_blocks: u32,
    /// Blocks of the spare area.
    pub spare_blocks: u32,
}

impl RemapLayout {
    /// The layout of a partition of `capacity` bytes with `spare_bytes` of spare area (rounded
    /// up to whole blocks); the home area takes what is left after the two map copies.
    pub fn fit(capacity: u64, block_size: u32, spare_bytes: u64) -> Result<Self, LayoutError> {
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(LayoutError::BlockSize(block_size));
        }
        let bs = u64::from(block_size);
        let spare = u32::try_from(spare_bytes.div_ceil(bs))
            .map_err(|_| LayoutError::SpareTooLarge(spare_bytes))?;
        if spare == 0 {
            return Err(LayoutError::NoSpare);
        }
        let probe = Self {
            block_size,
            logical_blocks: 0,
            spare_blocks: spare,
        };
        let fixed = u64::from(spare) * bs + 2 * probe.map_len();
        let home = capacity
            .checked_sub(fixed)
            .map(|left| left / bs)
            .filter(|n| *n > 0);
        let Some(home) = home else {
            return Err(LayoutError::TooSmall {
                capacity,
                spare_blocks: spare,
                block_size,
            });
        };
        Ok(Self {
            logical_blocks: u32::try_from(home).map_err(|_| LayoutError::HomeTooLarge(home))?,
            ..probe
        })
    }

    fn bs(&self) -> u64 {
        u64::from(self.block_size)
    }

    /// Bytes of the logical image.
    pub fn logical_len(&self) -> u64 {
        u64::from(self.logical_blocks) * self.bs()
    }

    /// Bytes of the spare area.
    pub fn spare_len(&self) -> u64 {
        u64::from(self.spare_blocks) * self.bs()
    }

    /// Bytes of one map copy (whole blocks).
    pub fn map_len(&self) -> u64 {
        let raw = (HEAD + 8 * self.spare_blocks as usize + 32) as u64;
        raw.div_ceil(self.bs()) * self.bs()
    }

    /// Bytes of the partition this layout uses.
    pub fn physical_len(&self) -> u64 {
        self.logical_len() + self.spare_len() + 2 * self.map_len()
    }

    fn home_offset(&self, block: u32) -> u64 {
        u64::from(block) * self.bs()
    }

    fn spare_offset(&self, spare: u32) -> u64 {
        self.logical_len() + u64::from(spare) * self.bs()
    }

    fn copy_offset(&self, copy: usize) -> u64 {
        self.logical_len() + self.spare_len() + copy as u64 * self.map_len()
    }
}

/// One map: which logical blocks are read from which spare blocks (the rest from home).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemapMap {
    /// Orders the copies: the later write has the higher one.
    pub generation: u64,
    /// Logical block → spare block.
    pub entries: BTreeMap<u32, u32>,
}

impl RemapMap {
    fn encode(&self, layout: &RemapLayout) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEAD + 8 * self.entries.len() + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&layout.block_size.to_le_bytes());
        out.extend_from_slice(&layout.logical_blocks.to_le_bytes());
        out.extend_from_slice(&layout.spare_blocks.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        let count = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (logical, spare) in &self.entries {
            out.extend_from_slice(&logical.to_le_bytes());
            out.extend_from_slice(&spare.to_le_bytes());
        }
        let check = *blake3::hash(&out).as_bytes();
        out.extend_from_slice(&check);
        let padded = usize::try_from(layout.map_len()).unwrap_or(out.len());
        out.resize(padded.max(out.len()), 0);
        out
    }

    /// The map in `bytes` (one copy), or why it does not check.
    fn decode(bytes: &[u8], layout: &RemapLayout) -> Result<Self, MapError> {
        if bytes.iter().all(|b| *b == 0) {
            return Err(MapError::Blank);
        }
        if bytes.len() < HEAD + 32 || &bytes[..8] != MAGIC {
            return Err(MapError::Magic);
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let count = u32_at(28) as usize;
        if count > layout.spare_blocks as usize {
            return Err(MapError::TooManyEntries {
                count,
                spare_blocks: layout.spare_blocks,
            });
        }
        let end = HEAD + 8 * count;
        if bytes.len() < end + 32 {
            return Err(MapError::Short);
        }
        if blake3::hash(&bytes[..end]).as_bytes() != &bytes[end..end + 32] {
            return Err(MapError::Checksum);
        }
        let geometry = (u32_at(8), u32_at(12), u32_at(16));
        let want = (
            layout.block_size,
            layout.logical_blocks,
            layout.spare_blocks,
        );
        if geometry != want {
            return Err(MapError::Geometry {
                made: geometry,
                bank: want,
            });
        }
        let mut generation = [0u8; 8];
        generation.copy_from_slice(&bytes[20..28]);
        let mut entries = BTreeMap::new();
        let mut spares = BTreeSet::new();
        for i in 0..count {
            let (logical, spare) = (u32_at(HEAD + 8 * i), u32_at(HEAD + 8 * i + 4));
            if logical >= layout.logical_blocks || spare >= layout.spare_blocks {
                return Err(MapError::OutOfRange {
                    index: i,
                    logical,
                    spare,
                });
            }
            if entries
                .last_key_value()
                .is_some_and(|(last, _)| *last >= logical)
                || !spares.insert(spare)
            {
                return Err(MapError::Repeats {
                    index: i,
                    logical,
                    spare,
                });
            }
            entries.insert(logical, spare);
        }
        Ok(Self {
            generation: u64::from_le_bytes(generation),
            entries,
        })
    }
}

/// Flash writes a remapping bank made (since it was opened).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlashWrites {
    /// Bytes written to the spare area.
    pub spare_bytes: u64,
    /// Bytes written home (by merges).
    pub home_bytes: u64,
    /// Bytes of map copies written.
    pub map_bytes: u64,
    /// Syncs.
    pub syncs: u64,
}

/// A map copy as read: the map, or why it does not check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapCopy {
    /// It checks.
    Valid(RemapMap),
    /// It does not (torn, blank, damaged, another geometry), and why.
    Invalid(MapError),
}

impl MapCopy {
    fn valid(&self) -> Option<&RemapMap> {
        match self {
            Self::Valid(map) => Some(map),
            Self::Invalid(_) => None,
        }
    }
}

/// One partition (or file) with a home area, a spare area and two map copies, one per slot.
#[derive(Debug)]
pub struct RemapBank<B> {
    dev: RefCell<B>,
    path: PathBuf,
    layout: RemapLayout,
    slots: [Slot; 2],
    writes: Cell<FlashWrites>,
    merge_batch: usize,
}

impl<B: Bank> RemapBank<B> {
    /// Makes `dev` a remapping bank whose image is what its home area holds now: both map
    /// copies are written empty (every block read from home). For provisioning.
    pub fn format(dev: B, layout: RemapLayout, slots: [Slot; 2]) -> Result<Self, BankError> {
        let bank = Self::wrap(dev, layout, slots)?;
        for copy in 0..2 {
            bank.write_copy(
                copy,
                &RemapMap {
                    generation: copy as u64 + 1,
                    entries: BTreeMap::new(),
                },
            )?;
        }
        Ok(bank)
    }

    /// Opens a formatted remapping bank: at least one map copy must check.
    pub fn open(dev: B, layout: RemapLayout, slots: [Slot; 2]) -> Result<Self, BankError> {
        let bank = Self::wrap(dev, layout, slots)?;
        if bank.copy(0)?.valid().is_none() && bank.copy(1)?.valid().is_none() {
            let why = |copy| match bank.copy(copy) {
                Ok(MapCopy::Invalid(why)) => why.to_string(),
                Ok(MapCopy::Valid(_)) => "checks".into(),
                Err(e) => e.to_string(),
            };
            return Err(bank.refused(format!(
                "neither map copy checks (copy 0: {}; copy 1: {}): not a formatted remapping bank",
                why(0),
                why(1)
            )));
        }
        Ok(bank)
    }

    fn wrap(dev: B, layout: RemapLayout, slots: [Slot; 2]) -> Result<Self, BankError> {
        let refused = |detail: String| BankError::Refused {
            path: dev.path().to_path_buf(),
            detail,
        };
        if !layout.block_size.is_power_of_two()
            || !(MIN_BLOCK..=MAX_BLOCK).contains(&layout.block_size)
            || layout.logical_blocks == 0
            || layout.spare_blocks == 0
        {
            return Err(refused(format!("unusable remap layout {layout:?}")));
        }
        if layout.physical_len() > dev.capacity() {
            return Err(refused(format!(
                "the remap layout needs {} bytes, the bank has {}",
                layout.physical_len(),
                dev.capacity()
            )));
        }
        if slots[0] == slots[1] {
            return Err(refused(format!("both map copies are slot {}", slots[0])));
        }
        Ok(Self {
            path: dev.path().to_path_buf(),
            dev: RefCell::new(dev),
            layout,
            slots,
            writes: Cell::new(FlashWrites::default()),
            merge_batch: MERGE_BATCH,
        })
    }

    /// Blocks a merge copies home between syncs and progress records (default 64; at least 1).
    pub fn set_merge_batch(&mut self, blocks: usize) {
        self.merge_batch = blocks.max(1);
    }

    /// Its layout.
    pub fn layout(&self) -> &RemapLayout {
        &self.layout
    }

    /// The partition's path.
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The flash writes made since it was opened.
    pub fn writes(&self) -> FlashWrites {
        self.writes.get()
    }

    /// The physical device, for tests and tools that look under the map.
    pub fn device(&self) -> std::cell::Ref<'_, B> {
        self.dev.borrow()
    }

    fn refused(&self, detail: String) -> BankError {
        BankError::Refused {
            path: self.path(),
            detail,
        }
    }

    fn io(&self, what: String) -> impl FnOnce(io::Error) -> BankError {
        let path = self.path();
        move |source| BankError::Io { path, what, source }
    }

    fn copy_index(&self, slot: &Slot) -> Result<usize, BankError> {
        self.slots.iter().position(|s| s == slot).ok_or_else(|| {
            self.refused(format!(
                "slot {slot} is neither of its map copies ({}, {})",
                self.slots[0], self.slots[1]
            ))
        })
    }

    /// Map copy `copy` (0 or 1) as it reads now.
    pub fn copy(&self, copy: usize) -> Result<MapCopy, BankError> {
        let mut bytes = vec![0u8; usize::try_from(self.layout.map_len()).unwrap_or(0)];
        self.dev
            .borrow()
            .read_exact_at(self.layout.copy_offset(copy), &mut bytes)
            .map_err(self.io(format!("reading map copy {copy}")))?;
        Ok(match RemapMap::decode(&bytes, &self.layout) {
            Ok(map) => MapCopy::Valid(map),
            Err(why) => MapCopy::Invalid(why),
        })
    }

    /// The map `slot` boots with, as it reads now.
    pub fn map_of(&self, slot: &Slot) -> Result<MapCopy, BankError> {
        self.copy(self.copy_index(slot)?)
    }

    fn valid_map(&self, slot: &Slot) -> Result<RemapMap, BankError> {
        match self.map_of(slot)? {
            MapCopy::Valid(map) => Ok(map),
            MapCopy::Invalid(why) => Err(self.refused(format!("the map of slot {slot}: {why}"))),
        }
    }

    fn next_generation(&self) -> Result<u64, BankError> {
        let mut top = 0;
        for copy in 0..2 {
            if let MapCopy::Valid(map) = self.copy(copy)? {
                top = top.max(map.generation);
            }
        }
        Ok(top + 1)
    }

    /// Writes `entries` as copy `copy` with the next generation, and syncs.
    fn put_map(&self, copy: usize, entries: BTreeMap<u32, u32>) -> Result<(), BankError> {
        let map = RemapMap {
            generation: self.next_generation()?,
            entries,
        };
        self.write_copy(copy, &map)
    }

    fn write_copy(&self, copy: usize, map: &RemapMap) -> Result<(), BankError> {
        let bytes = map.encode(&self.layout);
        let mut dev = self.dev.borrow_mut();
        dev.write_all_at(self.layout.copy_offset(copy), &bytes)
            .map_err(self.io(format!("writing map copy {copy}")))?;
        dev.sync()
            .map_err(self.io(format!("syncing map copy {copy}")))?;
        let mut writes = self.writes.get();
        writes.map_bytes += bytes.len() as u64;
        writes.syncs += 1;
        self.writes.set(writes);
        Ok(())
    }

    fn sync(&self) -> Result<(), BankError> {
        self.dev
            .borrow_mut()
            .sync()
            .map_err(self.io("syncing".into()))?;
        let mut writes = self.writes.get();
        writes.syncs += 1;
        self.writes.set(writes);
        Ok(())
    }

    /// The image `slot` shows (read-only).
    pub fn view(&self, slot: &Slot) -> Result<LogicalView<'_, B>, BankError> {
        Ok(LogicalView {
            bank: self,
            map: self.valid_map(slot)?,
        })
    }

    /// What the bank holds, for a status report.
    pub fn status(&self) -> Result<serde_json::Value, BankError> {
        let copies: Vec<serde_json::Value> = (0..2)
            .map(|copy| {
                Ok(match self.copy(copy)? {
                    MapCopy::Valid(map) => serde_json::json!({
                        "slot": self.slots[copy].as_str(),
                        "generation": map.generation,
                        "remapped_blocks": map.entries.len(),
                    }),
                    MapCopy::Invalid(why) => serde_json::json!({
                        "slot": self.slots[copy].as_str(),
                        "invalid": why.to_string(),
                    }),
                })
            })
            .collect::<Result<_, BankError>>()?;
        Ok(serde_json::json!({
            "layout": self.layout,
            "maps": copies,
        }))
    }

    /// Spare blocks `map` does not name, ascending.
    fn free_spares(&self, map: &RemapMap) -> Vec<u32> {
        let used: BTreeSet<u32> = map.entries.values().copied().collect();
        (0..self.layout.spare_blocks)
            .filter(|s| !used.contains(s))
            .collect()
    }

    /// The other slot's copy shows the running image (`running` map), and so names no spare
    /// block the running map does not. The flasher has made the other slot unbootable first.
    fn retire(&self, other: usize, running: &RemapMap) -> Result<(), BankError> {
        let same =
            matches!(self.copy(other)?, MapCopy::Valid(map) if map.entries == running.entries);
        if !same {
            self.put_map(other, running.entries.clone())?;
        }
        Ok(())
    }

    /// Which logical blocks of what `running` shows the update's units change.
    fn plan(
        &self,
        view: &LogicalView<'_, B>,
        units: &mut dyn Units,
    ) -> Result<SparePlan, WriteError> {
        let target_len = units.target_len();
        self.check_fits(target_len)?;
        let bs = self.layout.bs();
        let mut changed = Vec::new();
        let mut out = Vec::new();
        let mut old = vec![0u8; self.layout.block_size as usize];
        for index in 0..units.count() {
            let at = units.unit(index, &mut out)?;
            for (block, part) in blocks_of(at, &out, bs)? {
                let old = &mut old[..part.len()];
                view.read_exact_at(u64::from(block) * bs, old)
                    .map_err(view_error(block))?;
                if old != part {
                    changed.push(block);
                }
            }
        }
        Ok(SparePlan {
            block_size: self.layout.block_size,
            target_len,
            image_blocks: target_len.div_ceil(bs),
            changed,
            free_blocks: self.free_spares(&view.map).len() as u64,
        })
    }

    fn check_fits(&self, target_len: u64) -> Result<(), BankError> {
        if target_len > self.layout.logical_len() {
            return Err(BankError::TooSmall {
                path: self.path(),
                len: target_len,
                capacity: self.layout.logical_len(),
            });
        }
        Ok(())
    }

    /// The install's write phase for the slot that is not `running` (see the module's table):
    /// plan, refuse when the spare area is too small, retire the other copy, write the changed
    /// blocks unit by unit from `from` (each durable before `record`), switch the other copy to
    /// the new map and verify the image through it against `expect`.
    fn install(
        &self,
        running: &Slot,
        units: &mut dyn Units,
        from: usize,
        expect: BlobId,
        record: &mut dyn FnMut(usize, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        let running_map = self.valid_map(running)?;
        let other = 1 - self.copy_index(running)?;
        let view = LogicalView {
            bank: self,
            map: running_map.clone(),
        };
        let plan = self.plan(&view, units)?;
        if !plan.fits() {
            return Err(BankError::SpareTooSmall {
                path: self.path(),
                changed: plan.changed.len() as u64,
                block_size: plan.block_size,
                needed: plan.needed_bytes(),
                available: plan.free_bytes(),
            }
            .into());
        }
        self.retire(other, &running_map)?;
        let free = self.free_spares(&running_map);
        let bs = self.layout.bs();
        let total = units.count();
        let mut out = Vec::new();
        let mut block_buf = vec![0u8; self.layout.block_size as usize];
        for index in from..total {
            let at = units.unit(index, &mut out)?;
            let mut wrote = false;
            for (block, part) in blocks_of(at, &out, bs)? {
                let Ok(j) = plan.changed.binary_search(&block) else {
                    continue;
                };
                let data: &[u8] = if part.len() == block_buf.len() {
                    part
                } else {
                    // The image's last, partial block: the rest as the running image has it.
                    view.read_exact_at(u64::from(block) * bs, &mut block_buf)
                        .map_err(view_error(block))?;
                    block_buf[..part.len()].copy_from_slice(part);
                    &block_buf
                };
                let spare = free[j];
                self.dev
                    .borrow_mut()
                    .write_all_at(self.layout.spare_offset(spare), data)
                    .map_err(self.io(format!("writing spare block {spare}")))?;
                let mut writes = self.writes.get();
                writes.spare_bytes += data.len() as u64;
                self.writes.set(writes);
                wrote = true;
            }
            if wrote {
                self.sync()?;
            }
            record(index + 1, total)?;
        }
        let mut entries = running_map.entries.clone();
        for (j, block) in plan.changed.iter().enumerate() {
            entries.insert(*block, free[j]);
        }
        self.put_map(other, entries)?;
        let new = self.view(&self.slots[other])?;
        let actual = hash_of(&new, plan.target_len).map_err(|source| ApplyError::Io {
            what: format!("reading the new image of {}", self.path().display()),
            source,
        })?;
        if actual != expect {
            return Err(ApplyError::FinalHash {
                expected: expect,
                actual,
            }
            .into());
        }
        Ok(())
    }
}

fn view_error(block: u32) -> impl FnOnce(io::Error) -> ApplyError {
    move |source| ApplyError::Io {
        what: format!("reading logical block {block} of the running image"),
        source,
    }
}

/// The blocks `data` (at target offset `at`, block-aligned) covers: (block, its bytes).
fn blocks_of(at: u64, data: &[u8], bs: u64) -> Result<Vec<(u32, &[u8])>, ApplyError> {
    if at % bs != 0 {
        return Err(ApplyError::Io {
            what: "remapping".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a piece at {at} is not aligned to blocks of {bs} bytes"),
            ),
        });
    }
    let chunk = usize::try_from(bs).unwrap_or(usize::MAX);
    data.chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let block = at / bs + i as u64;
            u32::try_from(block)
                .map(|block| (block, part))
                .map_err(|_| ApplyError::Io {
                    what: "remapping".into(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("block {block} is beyond any map"),
                    ),
                })
        })
        .collect()
}

/// The image one slot shows: each logical block from its spare block when the map names one,
/// else from home. Read-only.
#[derive(Debug)]
pub struct LogicalView<'a, B> {
    bank: &'a RemapBank<B>,
    map: RemapMap,
}

impl<B: Bank> LogicalView<'_, B> {
    /// The map it reads through.
    pub fn map(&self) -> &RemapMap {
        &self.map
    }
}

impl<B: Bank> ReadAt for LogicalView<'_, B> {
    /// Fills `buf` from logical `offset`, one physical run at a time.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let layout = &self.bank.layout;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= layout.logical_len())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} bytes at {offset} run past the logical image's {} bytes",
                        buf.len(),
                        layout.logical_len()
                    ),
                )
            })?;
        let bs = layout.bs();
        let dev = self.bank.dev.borrow();
        let mut at = offset;
        while at < end {
            let block = u32::try_from(at / bs).unwrap_or(u32::MAX);
            let within = at % bs;
            let physical = |block: u32| match self.map.entries.get(&block) {
                Some(spare) => layout.spare_offset(*spare),
                None => layout.home_offset(block),
            };
            let start = physical(block) + within;
            // Extend the run while the next block is physically next.
            let mut run_end = (u64::from(block) + 1) * bs;
            while run_end < end {
                let next = u32::try_from(run_end / bs).unwrap_or(u32::MAX);
                if physical(next) != start - within + (run_end - u64::from(block) * bs) {
                    break;
                }
                run_end += bs;
            }
            let run_end = run_end.min(end);
            let (from, to) = (
                usize::try_from(at - offset).unwrap_or(0),
                usize::try_from(run_end - offset).unwrap_or(0),
            );
            dev.read_exact_at(start, &mut buf[from..to])?;
            at = run_end;
        }
        Ok(())
    }
}

/// An update as units written one at a time: a delta's segments or an image's pieces.
trait Units {
    fn count(&self) -> usize;
    fn target_len(&self) -> u64;
    /// Unit `index` into `out`; returns its target offset.
    fn unit(&mut self, index: usize, out: &mut Vec<u8>) -> Result<u64, ApplyError>;
}

struct DeltaUnits<'i, 'a, R: ReadAt + ?Sized, D: ReadAt + ?Sized> {
    segments: DeltaSegments,
    inputs: &'i ApplyInputs<'a, R, D>,
}

impl<R: ReadAt + ?Sized, D: ReadAt + ?Sized> Units for DeltaUnits<'_, '_, R, D> {
    fn count(&self) -> usize {
        self.segments.header().segments.len()
    }
    fn target_len(&self) -> u64 {
        self.segments.header().target_len
    }
    fn unit(&mut self, index: usize, out: &mut Vec<u8>) -> Result<u64, ApplyError> {
        self.segments.decode(self.inputs, index, out)
    }
}

struct ImageUnits<'a, D: ?Sized> {
    image: &'a D,
    len: u64,
    piece: u64,
}

impl<D: ReadAt + ?Sized> Units for ImageUnits<'_, D> {
    fn count(&self) -> usize {
        usize::try_from(self.len.div_ceil(self.piece)).unwrap_or(usize::MAX)
    }
    fn target_len(&self) -> u64 {
        self.len
    }
    fn unit(&mut self, index: usize, out: &mut Vec<u8>) -> Result<u64, ApplyError> {
        let at = index as u64 * self.piece;
        let n = usize::try_from(self.len.saturating_sub(at).min(self.piece)).unwrap_or(0);
        out.resize(n, 0);
        self.image
            .read_exact_at(at, out)
            .map_err(|source| ApplyError::Io {
                what: format!("reading the image at {at}"),
                source,
            })?;
        Ok(at)
    }
}

/// Image pieces a whole number of blocks (and within the flasher's bounds).
fn image_piece(piece: usize, block_size: u32) -> u64 {
    let bs = u64::from(block_size);
    (piece.clamp(4096, 64 << 20) as u64).div_ceil(bs) * bs
}

impl<B: Bank> Banks for RemapBank<B> {
    fn slots(&self) -> [&Slot; 2] {
        [&self.slots[0], &self.slots[1]]
    }

    fn holds(&self, slot: &Slot, len: u64, expect: BlobId) -> Result<bool, BankError> {
        if len > self.layout.logical_len() {
            return Err(BankError::TooSmall {
                path: self.path(),
                len,
                capacity: self.layout.logical_len(),
            });
        }
        let view = match self.map_of(slot)? {
            MapCopy::Valid(map) => LogicalView { bank: self, map },
            // A map that does not check shows no image at all.
            MapCopy::Invalid(_) => return Ok(false),
        };
        let actual = hash_of(&view, len).map_err(self.io(format!("reading slot {slot}")))?;
        Ok(actual == expect)
    }

    fn write_delta<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        delta: &D,
        delta_len: u64,
        expect: BlobId,
        resume: Option<Progress>,
        record: &mut dyn FnMut(Progress, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        let (header, _) = read_header(delta)?;
        let view = self.view(running)?;
        let inputs = ApplyInputs {
            source: &view,
            source_len: header.source_len,
            delta,
            delta_len,
            expect_target: Some(expect),
        };
        let segments = DeltaSegments::new(&inputs)?;
        let header_digest = segments.header_digest();
        let from = segments.resume_at(resume);
        let mut units = DeltaUnits {
            segments,
            inputs: &inputs,
        };
        self.install(running, &mut units, from, expect, &mut |done, total| {
            record(
                Progress {
                    header_digest,
                    done,
                },
                total,
            )
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn write_image<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        image: &D,
        len: u64,
        expect: BlobId,
        piece: usize,
        from_piece: usize,
        record: &mut dyn FnMut(usize, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        let mut units = ImageUnits {
            image,
            len,
            piece: image_piece(piece, self.layout.block_size),
        };
        self.install(running, &mut units, from_piece, expect, record)
    }

    fn spare_plan<D: ReadAt + ?Sized>(
        &self,
        running: &Slot,
        payload: &D,
        len: u64,
        full_image: bool,
    ) -> Result<Option<SparePlan>, WriteError> {
        let view = self.view(running)?;
        if full_image {
            let mut units = ImageUnits {
                image: payload,
                len,
                piece: image_piece(8 << 20, self.layout.block_size),
            };
            return self.plan(&view, &mut units).map(Some);
        }
        let (header, _) = read_header(payload)?;
        let inputs = ApplyInputs {
            source: &view,
            source_len: header.source_len,
            delta: payload,
            delta_len: len,
            expect_target: None,
        };
        let mut units = DeltaUnits {
            segments: DeltaSegments::new(&inputs)?,
            inputs: &inputs,
        };
        self.plan(&view, &mut units).map(Some)
    }

    fn discard(&mut self, running: &Slot) -> Result<(), BankError> {
        let running_map = self.valid_map(running)?;
        let other = 1 - self.copy_index(running)?;
        self.retire(other, &running_map)
    }

    fn merge<M, E>(
        &mut self,
        kept: &Slot,
        boot: &mut UbootBoot<M>,
        resume: Option<(u64, usize)>,
        record: &mut dyn FnMut(u64, usize) -> Result<(), E>,
    ) -> Result<MergeReport, E>
    where
        M: WriteAt,
        E: From<BankError> + From<BootError>,
    {
        let k = self.copy_index(kept)?;
        let o = 1 - k;
        let old_slot = self.slots[o].clone();
        let kept_copy = self.copy(k)?;
        let old_copy = self.copy(o)?;
        let old_identity_after = |kept_generation: u64| matches!(&old_copy, MapCopy::Valid(map) if map.entries.is_empty() && map.generation > kept_generation);
        let mut report = MergeReport::default();
        let entries = match &kept_copy {
            MapCopy::Valid(map) if map.entries.is_empty() => {
                // Nothing remapped: the old copy shows the same image, or is made to.
                if !matches!(&old_copy, MapCopy::Valid(old) if old.entries.is_empty()) {
                    self.put_map(o, BTreeMap::new())?;
                }
                return Ok(report);
            }
            MapCopy::Valid(map) if old_identity_after(map.generation) => None,
            MapCopy::Valid(map) => Some(map.clone()),
            // Cut while the committed copy was rewritten empty (the last step): only valid when
            // the old copy had become empty first.
            MapCopy::Invalid(_)
                if resume.is_some_and(|(generation, _)| old_identity_after(generation)) =>
            {
                None
            }
            MapCopy::Invalid(why) => {
                return Err(self
                    .refused(format!(
                        "cannot merge: the committed map of slot {kept}: {why}"
                    ))
                    .into());
            }
        };
        if let Some(map) = entries {
            report.remapped = map.entries.len() as u64;
            // A: the old copy shows the committed image too (so home can change under both).
            let a_done = matches!(&old_copy, MapCopy::Valid(old) if old.entries == map.entries && old.generation > map.generation);
            if !a_done {
                self.put_map(o, map.entries.clone())?;
            }
            // B: every remapped block home, in batches, each synced before it is recorded.
            let from = resume
                .filter(|(generation, done)| {
                    *generation == map.generation && *done <= map.entries.len()
                })
                .map_or(0, |(_, done)| done);
            let mut buf = vec![0u8; self.layout.block_size as usize];
            let pairs: Vec<(u32, u32)> = map.entries.iter().map(|(l, s)| (*l, *s)).collect();
            let mut done = from;
            for batch in pairs[from..].chunks(self.merge_batch) {
                for (logical, spare) in batch {
                    let mut dev = self.dev.borrow_mut();
                    dev.read_exact_at(self.layout.spare_offset(*spare), &mut buf)
                        .map_err(self.io(format!("reading spare block {spare}")))?;
                    dev.write_all_at(self.layout.home_offset(*logical), &buf)
                        .map_err(self.io(format!("writing home block {logical}")))?;
                    drop(dev);
                    let mut writes = self.writes.get();
                    writes.home_bytes += buf.len() as u64;
                    self.writes.set(writes);
                }
                self.sync()?;
                done += batch.len();
                report.blocks_copied += batch.len() as u64;
                record(map.generation, done)?;
            }
            // C, first half: the old copy reads everything from home.
            self.put_map(o, BTreeMap::new())?;
        }
        // C, second half: boot the old slot (same image), then empty the committed copy.
        let state = boot.state()?;
        if state.order.first() != Some(&old_slot) {
            boot.commit(&old_slot)?;
        }
        self.put_map(k, BTreeMap::new())?;
        Ok(report)
    }
}

/// A remapping bank on the file at `path` (a simulated single-bank ECU) or a partition.
pub fn open_file(
    path: &Path,
    block: bool,
    layout: RemapLayout,
    slots: [Slot; 2],
) -> Result<RemapBank<crate::bank::FileBank>, BankError> {
    let dev = if block {
        crate::bank::FileBank::open_block(path)?
    } else {
        crate::bank::FileBank::open(path)?
    };
    RemapBank::open(dev, layout, slots)
}
