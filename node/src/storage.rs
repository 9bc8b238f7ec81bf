//! The file operations the blob store needs, behind a small trait, so that the same store runs on
//! a real disk ([`DiskStorage`]) and on a backend that simulates a power cut after any write or
//! sync ([`sim::CrashStorage`]).
//!
//! Files are named by relative paths with `/` separators (`blobs/<id>.data`); the store never
//! names anything outside its root.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use proto::ReadAt;

/// Replaces the file at `path` with `bytes` so that a crash at any instant leaves either the old
/// file or the whole new one: write a temporary file beside it, sync it, rename it over, sync
/// the directory. For small files written whole (metadata, keys, exported targets).
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// A directory of files the store may create, write, sync, rename and remove.
pub trait Storage: Send + Sync + 'static {
    /// An open file.
    type File: StorageFile;

    /// Opens `name`, creating it (empty) when `create` is set and it does not exist.
    fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;

    /// Renames `from` to `to`, replacing `to`. Durable once [`Storage::sync_dir`] returns
    /// for `to`'s directory.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes `name`; removing a missing file is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// The names of the files in directory `dir` (not recursive).
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;

    /// Makes creations, renames and removals in `dir` durable.
    /// (`""` is the root.)
    fn sync_dir(&self, dir: &str) -> io::Result<()>;
}

/// A file with positioned reads ([`ReadAt`]: bytes past the end of the file read as an
/// `UnexpectedEof` error) and writes.
pub trait StorageFile: ReadAt + Send + Sync + 'static {
    /// Writes all of `buf` at `offset`, growing the file if needed. Not durable until
    /// [`StorageFile::sync`].
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// Writes `bufs` one after another from `offset`, as one [`StorageFile::write_all_at`] of
    /// their concatenation would. Not durable until [`StorageFile::sync`]. A file on disk does
    /// it in one system call where it can (`pwritev`); the default writes each in turn.
    fn write_all_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let mut at = offset;
        for buf in bufs {
            self.write_all_at(at, buf)?;
            at += buf.len() as u64;
        }
        Ok(())
    }

    /// Sets the length, zero-filling when it grows. Not durable until [`StorageFile::sync`].
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// The current length.
    fn len(&self) -> io::Result<u64>;

    /// True when the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Makes every earlier write and length change durable.
    fn sync(&self) -> io::Result<()>;
}

/// Files under a directory on a real file system.
#[derive(Debug, Clone)]
pub struct DiskStorage {
    root: PathBuf,
}

impl DiskStorage {
    /// Files under `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        // Names come from the store, not from peers, but refuse anything that could escape the
        // root all the same.
        let safe = !name.is_empty()
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("storage name {name:?} is not a plain relative path"),
            ));
        }
        Ok(self.root.join(name))
    }

    /// Creates the directory holding `path` if missing, and makes its entry in the root durable.
    fn ensure_parent(&self, path: &Path) -> io::Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if parent.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(parent)?;
        File::open(&self.root)?.sync_all()
    }
}

/// A file on disk.
#[derive(Debug)]
pub struct DiskFile(File);

impl Storage for DiskStorage {
    type File = DiskFile;

    fn open(&self, name: &str, create: bool) -> io::Result<DiskFile> {
        let path = self.path(name)?;
        if create {
            self.ensure_parent(&path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)
            .map_err(|error| {
                io::Error::new(error.kind(), format!("{}: {error}", path.display()))
            })?;
        Ok(DiskFile(file))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let to = self.path(to)?;
        self.ensure_parent(&to)?;
        std::fs::rename(self.path(from)?, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.path(name)?) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let path = self.path(dir)?;
        let entries = match std::fs::read_dir(&path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        let path = if dir.is_empty() {
            self.root.clone()
        } else {
            self.path(dir)?
        };
        match File::open(&path) {
            Ok(file) => file.sync_all(),
            // Nothing was ever created there: nothing to make durable.
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io::Error::new(
                error.kind(),
                format!("{}: {error}", path.display()),
            )),
        }
    }
}

impl ReadAt for DiskFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
}

impl StorageFile for DiskFile {
    fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    fn write_all_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        // At most IOV_MAX (1024 on Linux) slices a call; a response's chunk has a few dozen.
        const MOST_SLICES: usize = 1024;
        let mut at = offset;
        for batch in bufs.chunks(MOST_SLICES) {
            let mut slices: Vec<io::IoSlice<'_>> =
                batch.iter().map(|buf| io::IoSlice::new(buf)).collect();
            let mut remaining: &mut [io::IoSlice<'_>] = &mut slices;
            while !remaining.is_empty() {
                let position = i64::try_from(at).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "write offset beyond i64")
                })?;
                let written = match nix::sys::uio::pwritev(&self.0, remaining, position) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(written) => written,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(errno) => return Err(io::Error::from(errno)),
                };
                at += written as u64;
                io::IoSlice::advance_slices(&mut remaining, written);
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        // Data and length; timestamps do not matter to the store.
        self.0.sync_data()
    }
}

/// The store's index: small records by key, each `put` atomic and durable when it returns.
///
/// The store keeps one record per blob (its size and the chunk groups durably held) and writes
/// it only after the data it describes is synced, so the index never claims what a crash could
/// have lost.
pub trait Index: Send + Sync + 'static {
    /// Every record.
    fn load(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Sets `key` to `value`: atomic, and durable when it returns.
    fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()>;

    /// Removes `key`: atomic, and durable when it returns.
    fn remove(&self, key: &[u8]) -> io::Result<()>;
}

/// The index in a sled database.
#[derive(Debug, Clone)]
pub struct SledIndex {
    tree: sled::Tree,
}

impl SledIndex {
    /// Opens (or creates) the database in directory `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let db = sled::Config::new()
            .path(path)
            // The store flushes after every put itself; sled's timer would only add writes.
            .flush_every_ms(None)
            .open()
            .map_err(sled_error)?;
        let tree = db.open_tree("blobs").map_err(sled_error)?;
        Ok(Self { tree })
    }
}

fn sled_error(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(error) => error,
        other => io::Error::other(format!("sled: {other}")),
    }
}

impl Index for SledIndex {
    fn load(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.tree
            .iter()
            .map(|item| {
                item.map(|(key, value)| (key.to_vec(), value.to_vec()))
                    .map_err(sled_error)
            })
            .collect()
    }

    fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.tree.insert(key, value).map_err(sled_error)?;
        self.tree.flush().map_err(sled_error)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> io::Result<()> {
        self.tree.remove(key).map_err(sled_error)?;
        self.tree.flush().map_err(sled_error)?;
        Ok(())
    }
}

pub mod sim {
    //! A storage backend that simulates power cuts, for crash-consistency tests and for netsim.
    //!
    //! Every write, length change, sync, rename and removal counts as one *step*. With a cut
    //! planned at step `n`, step `n` and everything after it fail as if the power went out. The
    //! surviving state ([`CrashStorage::crash_image`]) holds what was durable (synced) at the cut,
    //! plus — depending on [`Torn`] — none, all, or the first half of each write that was still
    //! in flight, the way a disk may or may not have written back its cache.

    use std::collections::BTreeMap;
    use std::io;
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::{Index, ReadAt, Storage, StorageFile};

    /// What happens to writes that were not synced when the power went out.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Torn {
        /// They are lost.
        Lost,
        /// They all reached the disk.
        Kept,
        /// Each reached the disk only in its first half (a torn write).
        FirstHalf,
    }

    #[derive(Clone, Debug, Default)]
    struct FileState {
        /// Contents as the running system sees them.
        live: Vec<u8>,
        /// Contents as they would survive a power cut now.
        durable: Vec<u8>,
        /// Writes since the last sync, in order, for building torn images.
        pending: Vec<Pending>,
    }

    #[derive(Clone, Debug)]
    enum Pending {
        Write { offset: u64, bytes: Vec<u8> },
        SetLen(u64),
    }

    #[derive(Debug, Default)]
    struct Disk {
        /// Files by name as the running system sees the directory.
        live: BTreeMap<String, Arc<Mutex<FileState>>>,
        /// The directory as it would survive a power cut: name → file.
        durable_names: BTreeMap<String, Arc<Mutex<FileState>>>,
        /// The simulated index: each put is one step, atomic and durable when it returns (the
        /// contract [`Index`] states, which sled's flush gives on a real disk).
        index: BTreeMap<Vec<u8>, Vec<u8>>,
        steps: u64,
        cut_at: Option<u64>,
        cut: bool,
    }

    /// An in-memory storage that can lose power. Cloning shares the same disk.
    #[derive(Clone, Debug, Default)]
    pub struct CrashStorage {
        disk: Arc<Mutex<Disk>>,
    }

    /// An open file of a [`CrashStorage`].
    #[derive(Debug)]
    pub struct CrashFile {
        disk: Arc<Mutex<Disk>>,
        state: Arc<Mutex<FileState>>,
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // A panic while holding the lock can only come from a failing test; the data is plain
        // bytes and stays usable.
        mutex
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn power_cut() -> io::Error {
        io::Error::other("simulated power cut")
    }

    impl Disk {
        /// Counts one step; fails it (and every later one) once the planned cut is reached.
        fn step(&mut self) -> io::Result<()> {
            if self.cut {
                return Err(power_cut());
            }
            self.steps += 1;
            if self.cut_at.is_some_and(|cut_at| self.steps >= cut_at) {
                self.cut = true;
                return Err(power_cut());
            }
            Ok(())
        }
    }

    impl CrashStorage {
        /// An empty disk with no cut planned.
        pub fn new() -> Self {
            Self::default()
        }

        /// Plans the power cut at step `step` (counted from 1 since this disk was made).
        pub fn cut_at(&self, step: u64) {
            lock(&self.disk).cut_at = Some(step);
        }

        /// Steps taken so far.
        pub fn steps(&self) -> u64 {
            lock(&self.disk).steps
        }

        /// True once the power is out.
        pub fn is_cut(&self) -> bool {
            lock(&self.disk).cut
        }

        /// The disk as found after the power comes back: a fresh storage with no cut planned.
        pub fn crash_image(&self, torn: Torn) -> CrashStorage {
            let disk = lock(&self.disk);
            let mut files = BTreeMap::new();
            for (name, file) in &disk.durable_names {
                let state = lock(file);
                let mut bytes = state.durable.clone();
                for pending in &state.pending {
                    match (pending, torn) {
                        (_, Torn::Lost) => {}
                        (Pending::SetLen(len), _) => resize(&mut bytes, *len),
                        (
                            Pending::Write {
                                offset,
                                bytes: data,
                            },
                            Torn::Kept,
                        ) => {
                            write_into(&mut bytes, *offset, data);
                        }
                        (
                            Pending::Write {
                                offset,
                                bytes: data,
                            },
                            Torn::FirstHalf,
                        ) => {
                            write_into(&mut bytes, *offset, &data[..data.len() / 2]);
                        }
                    }
                }
                let survivor = FileState {
                    live: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                };
                files.insert(name.clone(), Arc::new(Mutex::new(survivor)));
            }
            CrashStorage {
                disk: Arc::new(Mutex::new(Disk {
                    live: files.clone(),
                    durable_names: files,
                    index: disk.index.clone(),
                    ..Disk::default()
                })),
            }
        }

        /// The index on this disk, cut by the same power cut as the files.
        pub fn index(&self) -> CrashIndex {
            CrashIndex {
                disk: self.disk.clone(),
            }
        }

        /// A file's live contents, for tests.
        pub fn read_all(&self, name: &str) -> Option<Vec<u8>> {
            let disk = lock(&self.disk);
            disk.live.get(name).map(|file| lock(file).live.clone())
        }
    }

    fn resize(bytes: &mut Vec<u8>, len: u64) {
        bytes.resize(usize::try_from(len).unwrap_or(usize::MAX), 0);
    }

    fn write_into(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(data.len());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
    }

    impl Storage for CrashStorage {
        type File = CrashFile;

        fn open(&self, name: &str, create: bool) -> io::Result<CrashFile> {
            let mut disk = lock(&self.disk);
            if disk.cut {
                return Err(power_cut());
            }
            let state = match disk.live.get(name) {
                Some(state) => state.clone(),
                None if create => {
                    disk.step()?;
                    let state = Arc::new(Mutex::new(FileState::default()));
                    disk.live.insert(name.to_owned(), state.clone());
                    state
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{name}: no such file"),
                    ));
                }
            };
            Ok(CrashFile {
                disk: self.disk.clone(),
                state,
            })
        }

        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            let mut disk = lock(&self.disk);
            disk.step()?;
            let state = disk.live.remove(from).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{from}: no such file"))
            })?;
            disk.live.insert(to.to_owned(), state);
            Ok(())
        }

        fn remove(&self, name: &str) -> io::Result<()> {
            let mut disk = lock(&self.disk);
            disk.step()?;
            disk.live.remove(name);
            Ok(())
        }

        fn list(&self, dir: &str) -> io::Result<Vec<String>> {
            let disk = lock(&self.disk);
            let prefix = format!("{dir}/");
            Ok(disk
                .live
                .keys()
                .filter_map(|name| name.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(str::to_owned)
                .collect())
        }

        fn sync_dir(&self, dir: &str) -> io::Result<()> {
            let mut disk = lock(&self.disk);
            disk.step()?;
            let prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let in_dir = |name: &String| {
                name.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            };
            disk.durable_names.retain(|name, _| !in_dir(name));
            let live: Vec<_> = disk
                .live
                .iter()
                .filter(|(name, _)| in_dir(name))
                .map(|(name, file)| (name.clone(), file.clone()))
                .collect();
            disk.durable_names.extend(live);
            Ok(())
        }
    }

    /// The index of a [`CrashStorage`].
    #[derive(Clone, Debug)]
    pub struct CrashIndex {
        disk: Arc<Mutex<Disk>>,
    }

    impl Index for CrashIndex {
        fn load(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let disk = lock(&self.disk);
            if disk.cut {
                return Err(power_cut());
            }
            Ok(disk
                .index
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect())
        }

        fn put(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
            let mut disk = lock(&self.disk);
            disk.step()?;
            disk.index.insert(key.to_vec(), value.to_vec());
            Ok(())
        }

        fn remove(&self, key: &[u8]) -> io::Result<()> {
            let mut disk = lock(&self.disk);
            disk.step()?;
            disk.index.remove(key);
            Ok(())
        }
    }

    impl ReadAt for CrashFile {
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if lock(&self.disk).cut {
                return Err(power_cut());
            }
            let state = lock(&self.state);
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start.saturating_add(buf.len());
            let bytes = state.live.get(start..end).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                )
            })?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }

    impl StorageFile for CrashFile {
        fn write_all_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
            lock(&self.disk).step()?;
            let mut state = lock(&self.state);
            write_into(&mut state.live, offset, buf);
            state.pending.push(Pending::Write {
                offset,
                bytes: buf.to_vec(),
            });
            Ok(())
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            lock(&self.disk).step()?;
            let mut state = lock(&self.state);
            resize(&mut state.live, len);
            state.pending.push(Pending::SetLen(len));
            Ok(())
        }

        fn len(&self) -> io::Result<u64> {
            Ok(lock(&self.state).live.len() as u64)
        }

        fn sync(&self) -> io::Result<()> {
            lock(&self.disk).step()?;
            let mut state = lock(&self.state);
            state.durable = state.live.clone();
            state.pending.clear();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::{CrashStorage, Torn};
    use super::*;

    #[test]
    fn crash_image_keeps_only_what_was_synced_and_named() {
        let storage = CrashStorage::new();
        let file = storage.open("blobs/a", true).unwrap();
        file.write_all_at(0, b"durable").unwrap();
        file.sync().unwrap();
        storage.sync_dir("blobs").unwrap();
        file.write_all_at(0, b"VOLATILE").unwrap();
        let unnamed = storage.open("blobs/b", true).unwrap();
        unnamed.write_all_at(0, b"never named").unwrap();
        unnamed.sync().unwrap();

        let lost = storage.crash_image(Torn::Lost);
        assert_eq!(lost.read_all("blobs/a").unwrap(), b"durable");
        assert!(
            lost.read_all("blobs/b").is_none(),
            "its directory entry was never synced"
        );
        let kept = storage.crash_image(Torn::Kept);
        assert_eq!(kept.read_all("blobs/a").unwrap(), b"VOLATILE");
        let torn = storage.crash_image(Torn::FirstHalf);
        assert_eq!(torn.read_all("blobs/a").unwrap(), b"VOLAble");
    }

    #[test]
    fn a_planned_cut_fails_that_step_and_all_later_ones() {
        let storage = CrashStorage::new();
        let file = storage.open("f", true).unwrap();
        storage.cut_at(3);
        file.write_all_at(0, b"x").unwrap();
        assert!(file.sync().is_err());
        assert!(file.write_all_at(0, b"y").is_err());
        assert!(storage.is_cut());
    }

    #[test]
    fn disk_storage_refuses_names_that_escape_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let storage = DiskStorage::new(dir.path()).unwrap();
        for name in ["../x", "/etc/passwd", "a//b", "", "a/./b"] {
            assert!(storage.open(name, true).is_err(), "{name}");
        }
        let file = storage.open("blobs/x", true).unwrap();
        file.write_all_at(3, b"abc").unwrap();
        file.sync().unwrap();
        let mut buf = [9u8; 6];
        file.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"\0\0\0abc");
        assert_eq!(storage.list("blobs").unwrap(), vec!["x".to_owned()]);
        storage.rename("blobs/x", "other/y").unwrap();
        storage.sync_dir("other").unwrap();
        storage.sync_dir("never-made").unwrap();
        assert_eq!(storage.list("other").unwrap(), vec!["y".to_owned()]);
    }

    #[test]
    fn a_vectored_write_on_disk_lands_as_one_write_of_the_slices_would() {
        let dir = tempfile::tempdir().unwrap();
        let storage = DiskStorage::new(dir.path()).unwrap();
        let file = storage.open("blobs/v", true).unwrap();
        // More slices than one pwritev takes (1024), of uneven sizes, some empty.
        let pieces: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 3])
            .collect();
        let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        file.write_all_vectored_at(5, &slices).unwrap();
        let expected: Vec<u8> = pieces.concat();
        let mut read = vec![0u8; expected.len()];
        file.read_exact_at(5, &mut read).unwrap();
        assert_eq!(read, expected);
        assert_eq!(file.len().unwrap(), 5 + expected.len() as u64);
    }
}
