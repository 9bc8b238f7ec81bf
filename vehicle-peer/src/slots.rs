//! Where one ECU's image lives, as the flasher drives it: [`Banks`], two slots the boot control
//! chooses between, one running and one written — two physical banks ([`BankPair`], here) or one
//! bank remapped in place ([`crate::remap::RemapBank`]) — and what writing a slot reports.
//!
//! It sits above the banks and the delta apply and below the remapping bank and the flasher: the
//! storage modules import one way, `boot`, `bank` < `delta` < `slots` < `remap`, `flasher`.

use std::path::PathBuf;

use delta::{ApplyError, ApplyInputs, Progress, ReadAt, WriteAt, read_header};
use proto::BlobId;
use serde::Serialize;

use crate::bank::{Bank, BankError, BankPair, holds};
use crate::boot::{BootError, Slot, UbootBoot};
use crate::delta::apply_into_bank;

/// Why writing a slot stopped: the delta or image could not be applied, or the bank refused
/// (too small, no spare space, a slot it does not have).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Applying failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The bank refused.
    #[error(transparent)]
    Bank(#[from] BankError),
}

/// The spare space an update needs, worked out before it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SparePlan {
    /// The bank's block size.
    pub block_size: u32,
    /// Bytes of the new image.
    pub target_len: u64,
    /// Blocks the new image covers.
    pub image_blocks: u64,
    /// Logical blocks whose content changes, ascending: each takes one spare block.
    pub changed: Vec<u32>,
    /// Spare blocks free for it (not named by the running map).
    pub free_blocks: u64,
}

impl SparePlan {
    /// Spare bytes the update needs.
    pub fn needed_bytes(&self) -> u64 {
        self.changed.len() as u64 * u64::from(self.block_size)
    }

    /// Spare bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks * u64::from(self.block_size)
    }

    /// Whether it fits.
    pub fn fits(&self) -> bool {
        self.changed.len() as u64 <= self.free_blocks
    }
}

/// What a merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    /// Blocks copied home by this call (a resumed merge counts only what it copied).
    pub blocks_copied: u64,
    /// Blocks that were remapped when the merge began (0: nothing to merge).
    pub remapped: u64,
}

/// Where one ECU's image lives, as the flasher drives it: two slots the boot control chooses
/// between, one running and one written. [`BankPair`] is two physical banks (A/B);
/// [`crate::remap::RemapBank`] is one bank and a spare area, each slot a block map over it.
/// Whatever the kind, what the running slot shows is never written.
pub trait Banks: std::fmt::Debug {
    /// The two slots.
    fn slots(&self) -> [&Slot; 2];

    /// The slot that is not `running`; `None` when `running` is neither.
    fn other(&self, running: &Slot) -> Option<Slot> {
        let [a, b] = self.slots();
        if running == a {
            Some(b.clone())
        } else if running == b {
            Some(a.clone())
        } else {
            None
        }
    }

    /// Whether the first `len` bytes of what `slot` shows hash to `expect`.
    fn holds(&self, slot: &Slot, len: u64, expect: BlobId) -> Result<bool, BankError>;

    /// Writes the target of `delta` (`delta_len` bytes; it must rebuild `expect`) for the slot
    /// that is not `running`, from what `running` shows, resuming after `resume` when it is for
    /// this delta. Each segment is durable before `record(progress, total)` is called; the
    /// caller journals it. Ends with the written image hashed against `expect`
    /// ([`ApplyError::FinalHash`] when it does not match).
    fn write_delta<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        delta: &D,
        delta_len: u64,
        expect: BlobId,
        resume: Option<Progress>,
        record: &mut dyn FnMut(Progress, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError>;

    /// Writes the image (`len` bytes, hashing to `expect`) for the slot that is not `running`,
    /// in pieces of `piece` bytes from piece `from_piece`; each piece is durable before
    /// `record(done, total)`. The caller verifies the slot afterwards.
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
    ) -> Result<(), WriteError>;

    /// The spare space an update needs and has, before it starts (`payload` is a delta from
    /// what `running` shows, or with `full_image` the image itself). `None` when the banks
    /// need no spare space (A/B: the other bank is written whole).
    fn spare_plan<D: ReadAt + ?Sized>(
        &self,
        running: &Slot,
        payload: &D,
        len: u64,
        full_image: bool,
    ) -> Result<Option<SparePlan>, WriteError> {
        let _ = (running, payload, len, full_image);
        Ok(None)
    }

    /// What was written for the slot that is not `running` is dropped (a rollback): A/B has
    /// nothing to drop; a remapping bank drops the new map.
    fn discard(&mut self, running: &Slot) -> Result<(), BankError> {
        let _ = running;
        Ok(())
    }

    /// After `kept` was committed (no rollback will be needed): finishes what keeping it
    /// leaves to do, resuming from `resume` (what `record` was last given). A/B: nothing; a
    /// remapping bank copies the remapped blocks home and frees its spare area. `E` is the
    /// caller's error, which `record` returns and bank and boot errors become.
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
        let _ = (kept, boot, resume, record);
        Ok(MergeReport::default())
    }
}

impl<B: Bank> Banks for BankPair<B> {
    fn slots(&self) -> [&Slot; 2] {
        BankPair::slots(self)
    }

    fn holds(&self, slot: &Slot, len: u64, expect: BlobId) -> Result<bool, BankError> {
        let bank = self.get(slot).ok_or_else(|| unknown_slot(self, slot))?;
        holds(bank, len, expect)
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
        let unknown = unknown_slot(self, running);
        let (source, _, inactive) = self.split(running).ok_or(unknown)?;
        let inputs = ApplyInputs {
            source,
            source_len: header.source_len,
            delta,
            delta_len,
            expect_target: Some(expect),
        };
        apply_into_bank(inactive, &inputs, resume, record)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_image<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        image: &D,
        len: u64,
        _expect: BlobId,
        piece: usize,
        from_piece: usize,
        record: &mut dyn FnMut(usize, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        let unknown = unknown_slot(self, running);
        let (_, _, inactive) = self.split(running).ok_or(unknown)?;
        if len > inactive.capacity() {
            return Err(BankError::TooSmall {
                path: inactive.path().to_path_buf(),
                len,
                capacity: inactive.capacity(),
            }
            .into());
        }
        let piece_len = piece.clamp(4096, 64 << 20);
        let piece = piece_len as u64;
        let total = usize::try_from(len.div_ceil(piece)).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; piece_len];
        let path = inactive.path().display().to_string();
        let io = |what: &str| {
            let what = format!("{what} bank {path}");
            move |source| ApplyError::Io { what, source }
        };
        for index in from_piece..total {
            let at = index as u64 * piece;
            let n = usize::try_from((len - at).min(piece)).unwrap_or(piece_len);
            image
                .read_exact_at(at, &mut buf[..n])
                .map_err(|source| ApplyError::Io {
                    what: format!("reading the image at {at}"),
                    source,
                })?;
            inactive
                .write_all_at(at, &buf[..n])
                .map_err(io("writing"))?;
            inactive.sync().map_err(io("syncing"))?;
            record(index + 1, total)?;
        }
        Ok(())
    }
}

/// The refusal of a slot that is neither of `banks`' two.
fn unknown_slot<K: Banks + ?Sized>(banks: &K, slot: &Slot) -> BankError {
    let [a, b] = banks.slots();
    BankError::Refused {
        path: PathBuf::from(slot.as_str()),
        detail: format!("slot {slot} is neither of the ECU's slots ({a}, {b})"),
    }
}
