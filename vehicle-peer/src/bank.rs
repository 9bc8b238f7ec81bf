//! A/B banks: the two places an ECU's image lives. The flasher reads the running bank (the delta's
//! source) and writes only the other one; nothing here hands out the running bank for writing.
//!
//! One driver for both kinds of storage, [`FileBank`]: a regular file of fixed capacity (the
//! simulated ECU of tests and netsim, [`FileBank::create`], [`FileBank::open`]) or a partition
//! per slot on a real gateway ([`FileBank::open_block`]: refused while mounted). Writes go
//! straight to the file or device; [`Bank::sync`] is `fdatasync`.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use proto::BlobId;

use crate::boot::{Slot, UbootBoot};
use crate::delta::{ApplyError, ApplyInputs, BankProgress, ReadAt, apply_into_bank, read_header};

use crate::flasher::FlashError;
use crate::remap::{MergeReport, SparePlan};

/// Why a bank could not be opened, read, written or verified. Every variant names the bank.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BankError {
    /// An I/O error on the bank.
    #[error("bank {path}: {what}: {source}")]
    Io {
        /// The bank's path.
        path: PathBuf,
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bank is not what its configuration says, or may not be used.
    #[error("bank {path}: {detail}")]
    Refused {
        /// The bank's path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// An update needs more spare blocks than the remapping bank has free: refused before a
    /// byte is written.
    #[error(
        "bank {path}: the update changes {changed} blocks of {block_size} bytes ({needed} bytes of spare space), but only {available} bytes of spare space are free"
    )]
    SpareTooSmall {
        /// The bank's path.
        path: PathBuf,
        /// Blocks the update changes.
        changed: u64,
        /// The bank's block size.
        block_size: u32,
        /// Spare bytes it needs.
        needed: u64,
        /// Spare bytes free.
        available: u64,
    },
    /// An image does not fit the bank.
    #[error("bank {path}: an image of {len} bytes does not fit its {capacity} bytes")]
    TooSmall {
        /// The bank's path.
        path: PathBuf,
        /// The image's length.
        len: u64,
        /// The bank's capacity.
        capacity: u64,
    },
}

/// One bank of an ECU: fixed capacity, read and written at offsets.
pub trait Bank: std::fmt::Debug {
    /// Where it is (for messages).
    fn path(&self) -> &Path;
    /// Its size in bytes.
    fn capacity(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// Writes `data` at `offset` (inside the capacity).
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Makes every finished write durable.
    fn sync(&mut self) -> std::io::Result<()>;
}

fn check_range(capacity: u64, offset: u64, len: usize) -> std::io::Result<()> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > capacity)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{len} bytes at {offset} run past the bank's {capacity} bytes"),
        ));
    }
    Ok(())
}

/// A bank in a regular file of fixed length, or on a block device.
#[derive(Debug)]
pub struct FileBank {
    file: File,
    path: PathBuf,
    capacity: u64,
}

impl FileBank {
    /// Creates (or truncates to) a zero-filled bank of `capacity` bytes at `path`.
    pub fn create(path: &Path, capacity: u64) -> Result<Self, BankError> {
        let io = |what: &str| {
            let (path, what) = (path.to_path_buf(), what.to_string());
            move |source| BankError::Io { path, what, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("creating"))?;
        file.set_len(capacity).map_err(io("sizing"))?;
        file.sync_all().map_err(io("syncing"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity,
        })
    }

    /// Opens an existing file bank; its length is its capacity.
    pub fn open(path: &Path) -> Result<Self, BankError> {
        let io = |what: &str| {
            let (path, what) = (path.to_path_buf(), what.to_string());
            move |source| BankError::Io { path, what, source }
        };
        let meta = std::fs::metadata(path).map_err(io("reading metadata"))?;
        if !meta.is_file() {
            return Err(BankError::Refused {
                path: path.to_path_buf(),
                detail: "is not a regular file (use a block-device bank for a partition)".into(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("opening"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity: meta.len(),
        })
    }

    /// Opens the partition at `path` for reading and writing. Refused when it is not a block
    /// device, or when it is mounted (per `/proc/self/mountinfo`): a mounted partition is in use,
    /// and the running root is always mounted.
    pub fn open_block(path: &Path) -> Result<Self, BankError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::open_block_with_mounts(path, &mountinfo)
    }

    /// [`FileBank::open_block`] against the given mount table (the text of a `mountinfo` file).
    pub fn open_block_with_mounts(path: &Path, mountinfo: &str) -> Result<Self, BankError> {
        let io = |what: &str| {
            let (path, what) = (path.to_path_buf(), what.to_string());
            move |source| BankError::Io { path, what, source }
        };
        let refused = |detail: String| BankError::Refused {
            path: path.to_path_buf(),
            detail,
        };
        let meta = std::fs::metadata(path).map_err(io("reading metadata"))?;
        if !meta.file_type().is_block_device() {
            return Err(refused("is not a block device".into()));
        }
        let (major, minor) = dev_numbers(meta.rdev());
        if let Some(mount) = mounted_at(mountinfo, major, minor) {
            return Err(refused(format!(
                "device {major}:{minor} is mounted at {mount}; a bank in use is never written"
            )));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("opening"))?;
        let capacity = file.seek(SeekFrom::End(0)).map_err(io("sizing"))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            capacity,
        })
    }
}

impl Bank for FileBank {
    fn path(&self) -> &Path {
        &self.path
    }
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_range(self.capacity, offset, buf.len())?;
        FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        check_range(self.capacity, offset, data.len())?;
        self.file.write_all_at(data, offset)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// Linux's major and minor numbers of a `dev_t` (glibc's encoding).
pub fn dev_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// Where device `major:minor` is mounted, per a `mountinfo` table (field 3 is `major:minor`,
/// field 5 the mount point).
pub fn mounted_at(mountinfo: &str, major: u64, minor: u64) -> Option<String> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let point = fields.nth(1)?;
        (dev == want).then(|| point.to_string())
    })
}

/// The slot the running system booted from, as RAUC's U-Boot script tells the kernel
/// (`rauc.slot=A` on the command line).
pub fn running_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix("rauc.slot="))
        .and_then(|name| Slot::new(name).ok())
}

/// An ECU's two banks and which one runs. The running bank is lent only for reading.
#[derive(Debug)]
pub struct BankPair<B> {
    banks: [(Slot, B); 2],
}

impl<B: Bank> BankPair<B> {
    /// The banks of slots `a` and `b` (distinct names).
    pub fn new(a: (Slot, B), b: (Slot, B)) -> Result<Self, BankError> {
        if a.0 == b.0 {
            return Err(BankError::Refused {
                path: b.1.path().to_path_buf(),
                detail: format!("both banks are slot {}", a.0),
            });
        }
        Ok(Self { banks: [a, b] })
    }

    /// The slots, in the order given.
    pub fn slots(&self) -> [&Slot; 2] {
        [&self.banks[0].0, &self.banks[1].0]
    }

    /// The bank of `slot`, for reading.
    pub fn get(&self, slot: &Slot) -> Option<&B> {
        self.banks.iter().find(|(s, _)| s == slot).map(|(_, b)| b)
    }

    /// With `running` the slot the ECU runs: (the running bank to read, the other slot and its
    /// bank to write).
    pub fn split(&mut self, running: &Slot) -> Option<(&B, &Slot, &mut B)> {
        let [(a, bank_a), (b, bank_b)] = &mut self.banks;
        if running == a {
            Some((bank_a, b, bank_b))
        } else if running == b {
            Some((bank_b, a, bank_a))
        } else {
            None
        }
    }
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
        resume: Option<BankProgress>,
        record: &mut dyn FnMut(BankProgress, usize) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError>;

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
    ) -> Result<(), ApplyError>;

    /// The spare space an update needs and has, before it starts (`payload` is a delta from
    /// what `running` shows, or with `full_image` the image itself). `None` when the banks
    /// need no spare space (A/B: the other bank is written whole).
    fn spare_plan<D: ReadAt + ?Sized>(
        &self,
        running: &Slot,
        payload: &D,
        len: u64,
        full_image: bool,
    ) -> Result<Option<SparePlan>, ApplyError> {
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
    /// remapping bank copies the remapped blocks home and frees its spare area.
    fn merge<M: crate::boot::Medium>(
        &mut self,
        kept: &Slot,
        boot: &mut UbootBoot<M>,
        resume: Option<(u64, usize)>,
        record: &mut dyn FnMut(u64, usize) -> Result<(), FlashError>,
    ) -> Result<MergeReport, FlashError> {
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
        resume: Option<BankProgress>,
        record: &mut dyn FnMut(BankProgress, usize) -> Result<(), ApplyError>,
    ) -> Result<(), ApplyError> {
        let (header, _) = read_header(delta)?;
        let unknown = unknown_slot(self, running);
        let (source, _, inactive) = self.split(running).ok_or(unknown)?;
        let inputs = ApplyInputs {
            source: &BankSource(source),
            source_len: header.source_len,
            delta,
            delta_len,
            expect_target: Some(expect),
        };
        apply_into_bank(inactive, &inputs, resume, record).map(|_| ())
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
    ) -> Result<(), ApplyError> {
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

fn unknown_slot<K: Banks + ?Sized>(banks: &K, slot: &Slot) -> BankError {
    let [a, b] = banks.slots();
    BankError::Refused {
        path: PathBuf::from(slot.as_str()),
        detail: format!("slot {slot} is neither of the ECU's slots ({a}, {b})"),
    }
}

/// Whether the first `len` bytes of `bank` hash to `expect` (BLAKE3, read 1 MiB at a time); an
/// image longer than the bank is an error.
pub fn holds(bank: &dyn Bank, len: u64, expect: BlobId) -> Result<bool, BankError> {
    if len > bank.capacity() {
        return Err(BankError::TooSmall {
            path: bank.path().to_path_buf(),
            len,
            capacity: bank.capacity(),
        });
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).map_or(buf.len(), |left| left.min(buf.len()));
        bank.read_exact_at(at, &mut buf[..n])
            .map_err(|source| BankError::Io {
                path: bank.path().to_path_buf(),
                what: format!("reading {n} bytes at {at}"),
                source,
            })?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(BlobId::from_bytes(*hasher.finalize().as_bytes()) == expect)
}

/// A bank read as a delta's source.
#[derive(Debug)]
pub struct BankSource<'a, B: ?Sized>(pub &'a B);

impl<B: Bank + ?Sized> proto::delta::SourceRead for BankSource<'_, B> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}
