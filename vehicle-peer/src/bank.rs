//! A/B banks: the two places an ECU's image lives. The flasher reads the running bank (the delta's
//! source) and writes only the other one; nothing here hands out the running bank for writing.
//!
//! One driver for both kinds of storage, [`FileBank`]: a regular file of fixed capacity (the
//! simulated ECU of tests and netsim, [`FileBank::create`], [`FileBank::open`]) or a partition
//! per slot on a real gateway ([`FileBank::open_block`]: refused while mounted). Writes go
//! straight to the file or device; their `sync` is `fdatasync`.
//!
//! This module is the bottom of the vehicle's storage stack: it knows nothing of deltas, remapping
//! or the flasher, which all build on it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use delta::{ReadAt, WriteAt};
use proto::BlobId;

use crate::boot::Slot;

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

/// One bank of an ECU: fixed capacity, read and written at offsets inside it ([`WriteAt`]).
pub trait Bank: WriteAt + std::fmt::Debug {
    /// Where it is (for messages).
    fn path(&self) -> &Path;
    /// Its size in bytes.
    fn capacity(&self) -> u64;
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
}

impl ReadAt for FileBank {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_range(self.capacity, offset, buf.len())?;
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

impl WriteAt for FileBank {
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
