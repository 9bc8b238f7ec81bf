//! The blob store: blobs as files with their bao outboards, partial blobs with the set of verified
//! chunk groups they hold, and an index of both that never claims more than a crash could keep.
//!
//! # Layout under the storage root
//! - `blobs/<id>.data`: the blob's bytes at their offsets (a partial blob is a sparse file of the
//!   full size);
//! - `blobs/<id>.obao`: its pre-order outboard (parent pairs above its 16 KiB chunk groups);
//! - `tmp/`: imports in progress;
//! - the index ([`Index`]): per blob, its size, whether it is complete, and the groups durably held;
//!   and the *names* a node serves blobs under (`image/metadata/timestamp.json` → a blob id), keyed
//!   `name:` + BLAKE3 of the name so that no name key is ever 32 bytes long like a blob's.
//!
//! # What survives a crash
//! A group is written only after the bao verifier has checked it ([`Verified`] can only come from
//! the verifier), with the parent pairs that prove it. A [`BlobStore::checkpoint`] syncs the data
//! and outboard files and only then records the held groups in the index, so after a power cut the
//! index never lists a group whose bytes were not durable. Groups written after the last
//! checkpoint are not lost either when their bytes did reach the disk (a killed process, or a
//! disk that wrote its cache back): opening the store re-verifies every group the index does not
//! list against the blob's root, from the files, and keeps those that pass. A torn or half-written
//! group fails that check and is simply fetched again.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use proto::bao::{self, Layout, Outboard, Owed, RangeVerifier, Verified, VerifiedGroup};
use proto::{BlobId, ChunkGroupRanges, ReadAhead, ReadAt};

use crate::storage::{Index, Storage, StorageFile};

/// The chunk-group layout of every stored blob.
pub const LAYOUT: Layout = Layout::MESH;
/// Unsynced bytes after which a write checkpoints by itself.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;

/// Bytes of a blob's data read at once when its groups are verified from the files in order
/// (an export, recovery after a crash).
const DATA_READ_AHEAD: u64 = 256 * 1024;

/// Bytes of an outboard read at once for the same: its pairs lie in pre-order, each 64 bytes.
const OUTBOARD_READ_AHEAD: usize = 16 * 1024;

const BLOBS_DIR: &str = "blobs";
const TMP_DIR: &str = "tmp";
const RECORD_VERSION: u8 = 1;
const NAME_KEY_PREFIX: &[u8] = b"name:";
const NAME_RECORD_VERSION: u8 = 1;
/// Index keys of blobs' last-use stamps (see [`BlobStore::flush_usage`]).
const USED_KEY_PREFIX: &[u8] = b"used:";

/// Why a store operation failed. Every variant names the blob or file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the file or blob.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The store does not hold the blob.
    #[error("blob {0} is not in the store")]
    NotFound(BlobId),
    /// The blob is already known with another size.
    #[error("blob {blob} is stored with size {stored}, not {requested}")]
    SizeMismatch {
        /// The blob.
        blob: BlobId,
        /// The size on record.
        stored: u64,
        /// The size asked for.
        requested: u64,
    },
    /// The blob is larger than depotmesh handles.
    #[error(
        "blob of {size} bytes is larger than the limit of {} bytes",
        bao::MAX_BLOB_SIZE
    )]
    TooLarge {
        /// The size.
        size: u64,
    },
    /// A verified item does not belong to this blob's tree (a caller mixed up blobs).
    #[error("item for blob {blob} does not fit its tree: {detail}")]
    Misplaced {
        /// The blob.
        blob: BlobId,
        /// What did not fit.
        detail: String,
    },
    /// The stored copy failed verification (disk corruption); the groups were dropped and must
    /// be fetched again.
    #[error("stored copy of blob {blob} is corrupt in chunk groups {}..{}", .groups.start, .groups.end)]
    Corrupt {
        /// The blob.
        blob: BlobId,
        /// The groups that failed.
        groups: std::ops::Range<u64>,
    },
    /// A name breaks [`proto::wire::check_name`].
    #[error("invalid name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The disk cap cannot make room: pinned blobs fill it.
    #[error(transparent)]
    CapFull(crate::cache::CapFull),
    /// The blob is not complete.
    #[error("blob {blob} is incomplete: {held} of {total} chunk groups held")]
    Incomplete {
        /// The blob.
        blob: BlobId,
        /// Groups held.
        held: u64,
        /// Groups in the blob.
        total: u64,
    },
}

/// The error for a failed I/O step; `what` names the step and runs only on failure (hot paths
/// must not format a message for every successful write).
fn io_error<W: Into<String>>(what: impl FnOnce() -> W) -> impl FnOnce(io::Error) -> StoreError {
    move |source| StoreError::Io {
        what: what().into(),
        source,
    }
}

/// What the store knows of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob.
    pub id: BlobId,
    /// Its size in bytes.
    pub size: u64,
    /// The verified groups held (some may not be durable until the next checkpoint).
    pub held: ChunkGroupRanges,
    /// True when every group is held.
    pub complete: bool,
}

/// What a blob's open needed: how its groups were found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Blobs in the index.
    pub blobs: usize,
    /// Groups listed in the index as durably held.
    pub recorded_groups: u64,
    /// Groups not listed but found verified on disk and kept.
    pub recovered_groups: u64,
    /// Leftover files (imports interrupted, blobs never recorded) removed.
    pub removed_files: usize,
    /// Records that could not be read, dropped with their files.
    pub dropped_records: usize,
    /// Names in the index.
    pub names: usize,
}

struct Entry<F> {
    id: BlobId,
    size: u64,
    data: F,
    outboard: F,
    state: Mutex<EntryState>,
    /// Held through a checkpoint, so that checkpoints of one blob run one at a time and each
    /// records at least what the one before it did (a background checkpoint finishing after the
    /// final one must not record less).
    checkpointing: Mutex<()>,
    /// The store's use clock when the blob was last written or served.
    last_used: AtomicU64,
}

#[derive(Debug)]
struct EntryState {
    /// Verified groups whose bytes were written.
    held: ChunkGroupRanges,
    /// Groups the index lists: synced before they were recorded.
    recorded: ChunkGroupRanges,
    /// Bytes written since the last sync.
    unsynced: u64,
    /// A writer was told a checkpoint is due and has not finished it yet
    /// ([`BlobStore::write_deferred`]): others are not told again meanwhile.
    checkpoint_claimed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entry state is a set of ranges and counters, consistent between statements; a panic in
    // another thread cannot leave it half-updated in a way that matters.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The blob store over a [`Storage`] and an [`Index`].
pub struct BlobStore<S: Storage, I: Index> {
    storage: S,
    index: I,
    entries: Mutex<BTreeMap<BlobId, Arc<Entry<S::File>>>>,
    names: Mutex<BTreeMap<String, BlobId>>,
    next_tmp: Mutex<u64>,
    /// A logical clock: ticks at every use of a blob (write, serve, import).
    use_clock: AtomicU64,
}

impl<S: Storage, I: Index> std::fmt::Debug for BlobStore<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("blobs", &lock(&self.entries).len())
            .finish_non_exhaustive()
    }
}

/// `items` cut into stretches that follow each other on disk: each starts where the one before
/// it ends (`start` and `len` say where an item lies).
fn runs<T>(
    items: &[T],
    start: impl Fn(&T) -> u64,
    len: impl Fn(&T) -> u64,
) -> impl Iterator<Item = &[T]> {
    items.chunk_by(move |before, after| start(before) + len(before) == start(after))
}

fn used_key(id: &BlobId) -> Vec<u8> {
    [USED_KEY_PREFIX, id.as_bytes()].concat()
}

fn data_name(id: &BlobId) -> String {
    format!("{BLOBS_DIR}/{id}.data")
}

fn outboard_name(id: &BlobId) -> String {
    format!("{BLOBS_DIR}/{id}.obao")
}

impl<S: Storage, I: Index> BlobStore<S, I> {
    /// Opens the store: reads the index, re-verifies what a crash may have left unrecorded, and
    /// removes leftovers of interrupted imports.
    pub fn open(storage: S, index: I) -> Result<(Self, OpenReport), StoreError> {
        let store = Self {
            storage,
            index,
            entries: Mutex::new(BTreeMap::new()),
            names: Mutex::new(BTreeMap::new()),
            next_tmp: Mutex::new(0),
            use_clock: AtomicU64::new(1),
        };
        let report = store.load()?;
        Ok((store, report))
    }

    fn load(&self) -> Result<OpenReport, StoreError> {
        let mut report = OpenReport::default();
        let records = self
            .index
            .load()
            .map_err(io_error(|| "reading the store index"))?;
        let mut entries = BTreeMap::new();
        let mut names = BTreeMap::new();
        let mut recovered_blobs = Vec::new();
        let mut used = BTreeMap::new();
        for (key, value) in records {
            if let Some(id) = key.strip_prefix(USED_KEY_PREFIX) {
                let stamp = <[u8; 32]>::try_from(id)
                    .ok()
                    .zip(<[u8; 8]>::try_from(value.as_slice()).ok());
                match stamp {
                    Some((id, stamp)) => {
                        used.insert(BlobId::from_bytes(id), u64::from_le_bytes(stamp));
                    }
                    None => {
                        self.index
                            .remove(&key)
                            .map_err(io_error(|| "removing an unreadable use record"))?;
                        report.dropped_records += 1;
                    }
                }
                continue;
            }
            if key.len() != BlobId::LEN && key.starts_with(NAME_KEY_PREFIX) {
                match decode_name_record(&key, &value) {
                    Ok((name, id)) => {
                        names.insert(name, id);
                    }
                    Err(reason) => {
                        tracing::warn!(key = hex::encode(&key), %reason, "dropping unreadable name record");
                        self.index
                            .remove(&key)
                            .map_err(io_error(|| "removing an unreadable name record"))?;
                        report.dropped_records += 1;
                    }
                }
                continue;
            }
            let parsed = <[u8; 32]>::try_from(key.as_slice())
                .map(BlobId::from_bytes)
                .map_err(|_| RecordError::Key)
                .and_then(|id| Record::decode(&value).map(|record| (id, record)));
            let (id, record) = match parsed {
                Ok(parsed) => parsed,
                Err(reason) => {
                    tracing::warn!(key = hex::encode(&key), %reason, "dropping unreadable index record");
                    self.index
                        .remove(&key)
                        .map_err(io_error(|| "removing an unreadable index record"))?;
                    report.dropped_records += 1;
                    continue;
                }
            };
            let Some(entry) = self.open_entry(id, record, &mut report)? else {
                continue;
            };
            let recovered = self.recover(&entry)?;
            report.recovered_groups += recovered;
            if recovered > 0 {
                recovered_blobs.push(id);
            }
            entries.insert(id, Arc::new(entry));
        }
        report.blobs = entries.len();
        report.names = names.len();
        let mut clock = 0;
        for (id, stamp) in used {
            match entries.get(&id) {
                Some(entry) => {
                    entry.last_used.store(stamp, Ordering::Relaxed);
                    clock = clock.max(stamp);
                }
                None => self
                    .index
                    .remove(&used_key(&id))
                    .map_err(io_error(|| format!("removing the use record of blob {id}")))?,
            }
        }
        self.use_clock.store(clock + 1, Ordering::Relaxed);
        report.removed_files = self.remove_leftovers(&entries)?;
        *lock(&self.entries) = entries;
        *lock(&self.names) = names;
        // Recovered groups were on disk but maybe only in the page cache: make them durable and
        // recorded now, so the next crash does not have to find them again.
        for id in recovered_blobs {
            self.checkpoint(&id)?;
        }
        Ok(report)
    }

    /// Blob `id` as its index `record` says, with its files; `None`, and the record dropped,
    /// when its files are gone.
    fn open_entry(
        &self,
        id: BlobId,
        record: Record,
        report: &mut OpenReport,
    ) -> Result<Option<Entry<S::File>>, StoreError> {
        let opened = self
            .storage
            .open(&data_name(&id), false)
            .and_then(|data| Ok((data, self.storage.open(&outboard_name(&id), false)?)));
        let (data, outboard) = match opened {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(blob = %id, %error, "dropping index record whose files are gone");
                self.index
                    .remove(id.as_bytes())
                    .map_err(io_error(|| format!("removing the record of blob {id}")))?;
                report.dropped_records += 1;
                return Ok(None);
            }
        };
        report.recorded_groups += record.held.group_count();
        Ok(Some(Entry {
            id,
            size: record.size,
            data,
            outboard,
            state: Mutex::new(EntryState {
                held: record.held.clone(),
                recorded: record.held,
                unsynced: 0,
                checkpoint_claimed: false,
            }),
            checkpointing: Mutex::new(()),
            last_used: AtomicU64::new(0),
        }))
    }

    /// Re-verifies, from the files, every group the index does not list; keeps those that pass.
    fn recover(&self, entry: &Entry<S::File>) -> Result<u64, StoreError> {
        let missing = {
            let state = lock(&entry.state);
            LAYOUT.all_groups(entry.size).difference(&state.held)
        };
        let mut found = ChunkGroupRanges::empty();
        for group in missing.iter().flatten() {
            let one = ChunkGroupRanges::from(group..group + 1);
            if self.verify_from_files(entry, &one, |_, _| Ok(())).is_ok() {
                found.insert(group..group + 1);
            }
        }
        let count = found.group_count();
        if count > 0 {
            let mut state = lock(&entry.state);
            state.held = state.held.union(&found);
            // Recovered groups are on disk but maybe not durable: the next checkpoint syncs and
            // records them.
            state.unsynced += 1;
        }
        Ok(count)
    }

    /// Feeds the verifier from the data and outboard files, handing each verified group's bytes
    /// to `sink`.
    fn verify_from_files(
        &self,
        entry: &Entry<S::File>,
        groups: &ChunkGroupRanges,
        mut sink: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut verifier = RangeVerifier::new(entry.id, LAYOUT, entry.size, groups);
        // Items are read in order, so through windows: a few reads per 256 KiB of a whole blob
        // rather than two per group. A window is no larger than the groups asked for, so a
        // check of one group (recovery) reads what it did before.
        let span = groups.group_count().saturating_mul(LAYOUT.group_bytes());
        let data = ReadAhead::new(
            &entry.data,
            entry.size,
            usize::try_from(span.min(DATA_READ_AHEAD)).unwrap_or(0),
        );
        let outboard = ReadAhead::new(
            &entry.outboard,
            LAYOUT.outboard_size(entry.size),
            OUTBOARD_READ_AHEAD,
        );
        let mut buffer = Vec::new();
        while let Some(owed) = verifier.owed() {
            let (file, offset, len, what) = match owed {
                Owed::Proof {
                    outboard_offset: Some(offset),
                    groups,
                } => (&outboard, offset, bao::PARENT_PAIR_BYTES, groups),
                Owed::Proof {
                    outboard_offset: None,
                    groups,
                } => {
                    return Err(StoreError::Corrupt {
                        blob: entry.id,
                        groups,
                    });
                }
                Owed::Group { group, offset, len } => (&data, offset, len, group.0..group.0 + 1),
            };
            buffer.resize(len, 0);
            file.read_exact_at(offset, &mut buffer)
                .map_err(io_error(|| format!("reading blob {}", entry.id)))?;
            match verifier.verify_next(&buffer) {
                Ok(Verified::Group(group)) => sink(group.offset(), group.data())?,
                Ok(Verified::Proof(_)) => {}
                Err(_) => {
                    return Err(StoreError::Corrupt {
                        blob: entry.id,
                        groups: what,
                    });
                }
            }
        }
        Ok(())
    }

    fn remove_leftovers(
        &self,
        entries: &BTreeMap<BlobId, Arc<Entry<S::File>>>,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for name in self
            .storage
            .list(TMP_DIR)
            .map_err(io_error(|| "listing tmp/"))?
        {
            self.storage
                .remove(&format!("{TMP_DIR}/{name}"))
                .map_err(io_error(|| format!("removing tmp/{name}")))?;
            removed += 1;
        }
        for name in self
            .storage
            .list(BLOBS_DIR)
            .map_err(io_error(|| "listing blobs/"))?
        {
            let id = name
                .split('.')
                .next()
                .and_then(|hex| hex.parse::<BlobId>().ok());
            if id.is_some_and(|id| entries.contains_key(&id)) {
                continue;
            }
            self.storage
                .remove(&format!("{BLOBS_DIR}/{name}"))
                .map_err(io_error(|| format!("removing blobs/{name}")))?;
            removed += 1;
        }
        if removed > 0 {
            for dir in [TMP_DIR, BLOBS_DIR] {
                self.storage
                    .sync_dir(dir)
                    .map_err(io_error(|| format!("syncing {dir}/")))?;
            }
        }
        Ok(removed)
    }

    fn tick(&self) -> u64 {
        self.use_clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Bytes the blob takes on disk (data and outboard), as far as the store can tell.
    fn disk_bytes(entry: &Entry<S::File>) -> u64 {
        entry.size + entry.outboard.len().unwrap_or(0)
    }

    /// Each blob's disk footprint and last use, for a cache's accounting.
    pub fn usage(&self) -> Vec<crate::cache::CachedBlob> {
        let entries: Vec<_> = lock(&self.entries).values().cloned().collect();
        entries
            .iter()
            .map(|entry| crate::cache::CachedBlob {
                id: entry.id,
                bytes: Self::disk_bytes(entry),
                last_used: entry.last_used.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Records every blob's last use in the index, so that least-recently-used order survives
    /// a restart. Cheap enough to call every minute and at shutdown; uses since the last call
    /// are lost in a crash (the order is a hint, never a correctness matter).
    pub fn flush_usage(&self) -> Result<(), StoreError> {
        for blob in self.usage() {
            self.index
                .put(&used_key(&blob.id), &blob.last_used.to_le_bytes())
                .map_err(io_error(|| {
                    format!("recording the use of blob {}", blob.id)
                }))?;
        }
        Ok(())
    }

    /// Makes room for `incoming` more bytes under a disk cap of `cap` bytes: forgets the least
    /// recently used blobs not in `pinned` until the rest fits. Returns what it forgot; refuses
    /// (forgetting nothing) when even forgetting every unpinned blob would not be enough.
    pub fn make_room(
        &self,
        incoming: u64,
        cap: u64,
        pinned: &std::collections::BTreeSet<BlobId>,
    ) -> Result<Vec<BlobId>, StoreError> {
        let plan = crate::cache::plan_eviction(&self.usage(), pinned, incoming, cap)
            .map_err(StoreError::CapFull)?;
        for id in &plan {
            self.forget(id)?;
        }
        Ok(plan)
    }

    fn entry(&self, id: &BlobId) -> Result<Arc<Entry<S::File>>, StoreError> {
        lock(&self.entries)
            .get(id)
            .cloned()
            .ok_or(StoreError::NotFound(*id))
    }

    /// What the store holds of `id`, if anything.
    pub fn info(&self, id: &BlobId) -> Option<BlobInfo> {
        let entry = self.entry(id).ok()?;
        let state = lock(&entry.state);
        Some(BlobInfo {
            id: entry.id,
            size: entry.size,
            complete: state.held == LAYOUT.all_groups(entry.size),
            held: state.held.clone(),
        })
    }

    /// Every blob the store knows.
    pub fn list(&self) -> Vec<BlobInfo> {
        let ids: Vec<BlobId> = lock(&self.entries).keys().copied().collect();
        ids.iter().filter_map(|id| self.info(id)).collect()
    }

    /// Stores the bytes `reader` yields as a complete blob and returns its id. The bytes are
    /// hashed here, so they need not be trusted.
    pub fn import(&self, mut reader: impl Read) -> Result<BlobId, StoreError> {
        let tmp = {
            let mut next = lock(&self.next_tmp);
            *next += 1;
            format!("{TMP_DIR}/import-{}", *next)
        };
        let (tmp_data, tmp_outboard) = (format!("{tmp}.data"), format!("{tmp}.obao"));
        let file = self
            .storage
            .open(&tmp_data, true)
            .map_err(io_error(|| format!("creating {tmp_data}")))?;
        let mut size = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(io_error(|| "reading the blob to import")(error)),
            };
            file.write_all_at(size, &buffer[..n])
                .map_err(io_error(|| format!("writing {tmp_data}")))?;
            size += n as u64;
            if size > bao::MAX_BLOB_SIZE {
                return Err(StoreError::TooLarge { size });
            }
        }
        let outboard = Outboard::create_from_reader(
            FileReader {
                file: &file,
                position: 0,
                len: size,
            },
            size,
            LAYOUT,
        )
        .map_err(|error| match error {
            bao::OutboardError::TooLarge { size } => StoreError::TooLarge { size },
            other => io_error(|| format!("hashing {tmp_data}"))(io::Error::other(other)),
        })?;
        let id = outboard.id();
        if self.info(&id).is_some_and(|info| info.complete) {
            self.storage
                .remove(&tmp_data)
                .map_err(io_error(|| format!("removing {tmp_data}")))?;
            return Ok(id);
        }
        let pairs = self
            .storage
            .open(&tmp_outboard, true)
            .map_err(io_error(|| format!("creating {tmp_outboard}")))?;
        pairs
            .write_all_at(0, outboard.data())
            .map_err(io_error(|| format!("writing {tmp_outboard}")))?;
        file.sync()
            .map_err(io_error(|| format!("syncing {tmp_data}")))?;
        pairs
            .sync()
            .map_err(io_error(|| format!("syncing {tmp_outboard}")))?;
        drop((file, pairs));
        // A partial copy of the same blob gives way to the complete one.
        self.forget(&id)?;
        let (data_name, outboard_name) = (data_name(&id), outboard_name(&id));
        self.storage
            .rename(&tmp_data, &data_name)
            .map_err(io_error(|| format!("renaming {tmp_data} to {data_name}")))?;
        self.storage
            .rename(&tmp_outboard, &outboard_name)
            .map_err(io_error(|| {
                format!("renaming {tmp_outboard} to {outboard_name}")
            }))?;
        self.storage
            .sync_dir(BLOBS_DIR)
            .map_err(io_error(|| "syncing blobs/"))?;
        let all = LAYOUT.all_groups(size);
        self.put_record(&id, size, &all)?;
        self.insert_entry(id, size, all.clone(), all)?;
        Ok(id)
    }

    /// Makes room for a blob to be fetched: `size` bytes, no group held yet. Does nothing when
    /// the blob is already known with that size.
    pub fn create_partial(&self, id: BlobId, size: u64) -> Result<BlobInfo, StoreError> {
        if size > bao::MAX_BLOB_SIZE {
            return Err(StoreError::TooLarge { size });
        }
        if let Some(info) = self.info(&id) {
            if info.size != size {
                return Err(StoreError::SizeMismatch {
                    blob: id,
                    stored: info.size,
                    requested: size,
                });
            }
            return Ok(info);
        }
        let (data_name, outboard_name) = (data_name(&id), outboard_name(&id));
        for (name, len) in [
            (&data_name, size),
            (&outboard_name, LAYOUT.outboard_size(size)),
        ] {
            let file = self
                .storage
                .open(name, true)
                .map_err(io_error(|| format!("creating {name}")))?;
            file.set_len(len)
                .map_err(io_error(|| format!("sizing {name}")))?;
            file.sync()
                .map_err(io_error(|| format!("syncing {name}")))?;
        }
        self.storage
            .sync_dir(BLOBS_DIR)
            .map_err(io_error(|| "syncing blobs/"))?;
        let none = ChunkGroupRanges::empty();
        self.put_record(&id, size, &none)?;
        self.insert_entry(id, size, none.clone(), none)?;
        self.info(&id).ok_or(StoreError::NotFound(id))
    }

    fn insert_entry(
        &self,
        id: BlobId,
        size: u64,
        held: ChunkGroupRanges,
        recorded: ChunkGroupRanges,
    ) -> Result<(), StoreError> {
        let open = |name: String| {
            self.storage
                .open(&name, false)
                .map_err(io_error(|| format!("opening {name}")))
        };
        let entry = Entry {
            id,
            size,
            data: open(data_name(&id))?,
            outboard: open(outboard_name(&id))?,
            state: Mutex::new(EntryState {
                held,
                recorded,
                unsynced: 0,
                checkpoint_claimed: false,
            }),
            checkpointing: Mutex::new(()),
            last_used: AtomicU64::new(self.tick()),
        };
        lock(&self.entries).insert(id, Arc::new(entry));
        Ok(())
    }

    fn put_record(
        &self,
        id: &BlobId,
        size: u64,
        held: &ChunkGroupRanges,
    ) -> Result<(), StoreError> {
        let record = Record {
            size,
            held: held.clone(),
        };
        self.index
            .put(id.as_bytes(), &record.encode())
            .map_err(io_error(|| format!("recording blob {id} in the index")))
    }

    /// Removes a blob: its record first (so a crash leaves only unlisted files, which the next
    /// open removes), then its files.
    pub fn forget(&self, id: &BlobId) -> Result<(), StoreError> {
        let Some(entry) = lock(&self.entries).remove(id) else {
            return Ok(());
        };
        self.index
            .remove(id.as_bytes())
            .map_err(io_error(|| format!("removing blob {id} from the index")))?;
        self.index
            .remove(&used_key(id))
            .map_err(io_error(|| format!("removing the use record of blob {id}")))?;
        drop(entry);
        for name in [data_name(id), outboard_name(id)] {
            self.storage
                .remove(&name)
                .map_err(io_error(|| format!("removing {name}")))?;
        }
        Ok(())
    }

    /// Serves the complete blob `id` under `name` from now on (replacing what the name stood
    /// for): durable when it returns.
    pub fn set_name(&self, name: &str, id: &BlobId) -> Result<(), StoreError> {
        proto::wire::check_name(name).map_err(|reason| StoreError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        let info = self.info(id).ok_or(StoreError::NotFound(*id))?;
        if !info.complete {
            return Err(StoreError::Incomplete {
                blob: *id,
                held: info.held.group_count(),
                total: LAYOUT.group_count(info.size),
            });
        }
        let mut names = lock(&self.names);
        let mut value = Vec::with_capacity(1 + BlobId::LEN + name.len());
        value.push(NAME_RECORD_VERSION);
        value.extend_from_slice(id.as_bytes());
        value.extend_from_slice(name.as_bytes());
        self.index
            .put(&name_key(name), &value)
            .map_err(io_error(|| format!("recording name {name:?} in the index")))?;
        names.insert(name.to_owned(), *id);
        Ok(())
    }

    /// Stops serving anything under `name`: durable when it returns.
    pub fn remove_name(&self, name: &str) -> Result<(), StoreError> {
        let mut names = lock(&self.names);
        if names.remove(name).is_some() {
            self.index.remove(&name_key(name)).map_err(io_error(|| {
                format!("removing name {name:?} from the index")
            }))?;
        }
        Ok(())
    }

    /// The complete blob served under `name`, if any (a name whose blob was forgotten or is
    /// incomplete resolves to nothing).
    pub fn resolve(&self, name: &str) -> Option<BlobInfo> {
        let id = *lock(&self.names).get(name)?;
        self.info(&id).filter(|info| info.complete)
    }

    /// Every name and the blob it stands for.
    pub fn names(&self) -> Vec<(String, BlobId)> {
        lock(&self.names)
            .iter()
            .map(|(name, id)| (name.clone(), *id))
            .collect()
    }

    /// Writes a verified item of a response for blob `id`: a parent pair into the outboard, or a
    /// group's bytes into the data file. Only the bao verifier makes [`Verified`] items, so
    /// nothing unverified reaches the files. Checkpoints by itself every [`CHECKPOINT_BYTES`].
    pub fn write(&self, id: &BlobId, item: &Verified<'_>) -> Result<(), StoreError> {
        if self.write_deferred(id, item)? {
            self.checkpoint(id)?;
        }
        Ok(())
    }

    /// Writes a verified item as [`Self::write`] does, but leaves the checkpoint to the caller:
    /// `true` means one is due, and the caller runs [`Self::checkpoint`], where it does not hold
    /// up the network (a sync of [`CHECKPOINT_BYTES`] can take tens of milliseconds). Until that
    /// checkpoint ends, no other write reports one due. A caller that never runs it loses no
    /// data, only the progress a crash would keep: the next checkpoint records everything.
    pub fn write_deferred(&self, id: &BlobId, item: &Verified<'_>) -> Result<bool, StoreError> {
        self.write_all_deferred(id, std::slice::from_ref(item))
    }

    /// Writes verified items of a response for blob `id` as [`Self::write_deferred`] does one
    /// at a time, but each stretch of consecutive groups, and each of adjacent parent pairs, in
    /// one write: a response's groups follow each other in the data file, and its pairs in the
    /// pre-order outboard, so a chunk of a response takes a few system calls instead of two per
    /// group. Every item is checked for its place before any is written; groups already held
    /// (endgame duplicates) are skipped. The groups count as held once their bytes are written.
    pub fn write_all_deferred(
        &self,
        id: &BlobId,
        items: &[Verified<'_>],
    ) -> Result<bool, StoreError> {
        let entry = self.entry(id)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        let outboard_size = LAYOUT.outboard_size(entry.size);
        // Pairs inside a group are not kept (the group's hash covers them): the rest, in order.
        let mut pairs: Vec<(u64, [u8; bao::PARENT_PAIR_BYTES])> = Vec::new();
        let mut groups: Vec<&VerifiedGroup<'_>> = Vec::new();
        {
            let state = lock(&entry.state);
            for item in items {
                match item {
                    Verified::Proof(proof) => {
                        let Some(offset) = proof.outboard_offset() else {
                            continue;
                        };
                        if offset + bao::PARENT_PAIR_BYTES as u64 > outboard_size {
                            return Err(StoreError::Misplaced {
                                blob: *id,
                                detail: format!("parent pair at outboard offset {offset}"),
                            });
                        }
                        pairs.push((offset, proof.pair_bytes()));
                    }
                    Verified::Group(group) => {
                        let range = LAYOUT.group_byte_range(group.group(), entry.size);
                        if range.start != group.offset()
                            || range.end - range.start != group.data().len() as u64
                        {
                            return Err(StoreError::Misplaced {
                                blob: *id,
                                detail: format!("{} at offset {}", group.group(), group.offset()),
                            });
                        }
                        // A duplicate (endgame): the bytes are already there and may be
                        // durable; do not rewrite them.
                        if !state.held.contains(group.group()) {
                            groups.push(group);
                        }
                    }
                }
            }
        }
        for run in runs(
            &pairs,
            |(offset, _)| *offset,
            |_| bao::PARENT_PAIR_BYTES as u64,
        ) {
            let bufs: Vec<&[u8]> = run.iter().map(|(_, pair)| pair.as_slice()).collect();
            entry
                .outboard
                .write_all_vectored_at(run[0].0, &bufs)
                .map_err(io_error(|| format!("writing the outboard of blob {id}")))?;
        }
        let mut written = ChunkGroupRanges::empty();
        let mut written_bytes = 0;
        for run in runs(
            &groups,
            |group| group.offset(),
            |group| group.data().len() as u64,
        ) {
            let bufs: Vec<&[u8]> = run.iter().map(|group| group.data()).collect();
            entry
                .data
                .write_all_vectored_at(run[0].offset(), &bufs)
                .map_err(io_error(|| format!("writing blob {id}")))?;
            for group in run {
                let index = group.group().0;
                written.insert(index..index + 1);
                written_bytes += group.data().len() as u64;
            }
        }
        let mut state = lock(&entry.state);
        state.held = state.held.union(&written);
        state.unsynced += pairs.len() as u64 * bao::PARENT_PAIR_BYTES as u64 + written_bytes;
        let due = state.unsynced >= CHECKPOINT_BYTES && !state.checkpoint_claimed;
        state.checkpoint_claimed |= due;
        Ok(due)
    }

    /// Makes every written group durable and records it in the index: sync the data, sync the
    /// outboard, then record. Returns what the blob now holds.
    pub fn checkpoint(&self, id: &BlobId) -> Result<BlobInfo, StoreError> {
        let result = self.sync_and_record(id);
        if let Ok(entry) = self.entry(id) {
            lock(&entry.state).checkpoint_claimed = false;
        }
        result
    }

    fn sync_and_record(&self, id: &BlobId) -> Result<BlobInfo, StoreError> {
        let entry = self.entry(id)?;
        let _one_at_a_time = lock(&entry.checkpointing);
        let (held, dirty) = {
            let state = lock(&entry.state);
            (
                state.held.clone(),
                state.unsynced > 0 || state.held != state.recorded,
            )
        };
        if dirty {
            entry
                .data
                .sync()
                .map_err(io_error(|| format!("syncing blob {id}")))?;
            entry
                .outboard
                .sync()
                .map_err(io_error(|| format!("syncing the outboard of blob {id}")))?;
            self.put_record(id, entry.size, &held)?;
            let mut state = lock(&entry.state);
            state.recorded = held;
            state.unsynced = 0;
        }
        self.info(id).ok_or(StoreError::NotFound(*id))
    }

    /// Writes the response to a request for `groups` of blob `id`, as [`Self::serve_into`] builds
    /// it. Returns the groups served and the bytes written.
    pub fn serve(
        &self,
        id: &BlobId,
        groups: &ChunkGroupRanges,
        mut out: impl Write,
    ) -> Result<(ChunkGroupRanges, u64), StoreError> {
        let mut body = bao::ResponseBody::default();
        let served = self.serve_into(id, groups, &mut body)?;
        out.write_all(body.bytes())
            .map_err(io_error(|| format!("serving blob {id}")))?;
        Ok(served)
    }

    /// Appends the response to a request for `groups` of blob `id` to `body`: the groups asked
    /// for that the store holds, each re-checked against the root as it is read into place.
    /// Groups that fail are dropped from what the store holds. Returns the groups served (the
    /// ones that follow) and the bytes appended.
    pub fn serve_into(
        &self,
        id: &BlobId,
        groups: &ChunkGroupRanges,
        body: &mut bao::ResponseBody,
    ) -> Result<(ChunkGroupRanges, u64), StoreError> {
        let entry = self.entry(id)?;
        entry.last_used.store(self.tick(), Ordering::Relaxed);
        let served = self.servable(&entry, groups);
        let outboard = Outboard::from_parts(entry.id, entry.size, LAYOUT, &entry.outboard);
        let written =
            bao::encode_ranges_into(&entry.data, &outboard, &served, body).map_err(|error| {
                match error {
                    bao::EncodeError::LocalCorruption { groups, .. } => {
                        self.drop_groups(&entry, &groups);
                        StoreError::Corrupt { blob: *id, groups }
                    }
                    other => io_error(|| format!("serving blob {id}"))(io::Error::other(other)),
                }
            })?;
        Ok((served, written))
    }

    /// The groups of `groups` that the store can serve: those it holds, with a request past the
    /// end answered by the last group, as the bao format does.
    pub fn servable_groups(
        &self,
        id: &BlobId,
        groups: &ChunkGroupRanges,
    ) -> Result<ChunkGroupRanges, StoreError> {
        let entry = self.entry(id)?;
        Ok(self.servable(&entry, groups))
    }

    fn servable(&self, entry: &Entry<S::File>, groups: &ChunkGroupRanges) -> ChunkGroupRanges {
        let count = LAYOUT.group_count(entry.size);
        let mut wanted = groups.intersection(&LAYOUT.all_groups(entry.size));
        if groups.end() > count {
            wanted.insert(count - 1..count);
        }
        wanted.intersection(&lock(&entry.state).held)
    }

    fn drop_groups(&self, entry: &Entry<S::File>, groups: &std::ops::Range<u64>) {
        tracing::error!(blob = %entry.id, groups = ?groups, "stored copy failed verification; dropping the groups");
        let mut state = lock(&entry.state);
        state.held = state
            .held
            .difference(&ChunkGroupRanges::from(groups.clone()));
        // The index may still list them; the next checkpoint records the smaller set.
        state.unsynced += 1;
    }

    /// Writes a complete blob to the file `path` durably, verified as [`Self::export`] does:
    /// into `path` with the extension `part`, synced, renamed over `path`, the directory
    /// synced. A crash leaves either the old `path` (or none) or the whole verified blob.
    pub fn export_to_file(&self, id: &BlobId, path: &std::path::Path) -> Result<u64, StoreError> {
        use std::io::Write;
        // The file is replaced by a rename: over a device, a pipe or a symlink that would put a
        // regular file in its place (`--out /dev/null` would replace /dev/null).
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_file() => {
                return Err(io_error(|| {
                    format!(
                        "{} exists and is not a regular file; give the path of a file to \
                         write the blob to",
                        path.display()
                    )
                })(io::Error::from(
                    io::ErrorKind::InvalidInput,
                )));
            }
            _ => {}
        }
        let part = path.with_extension("part");
        let file = std::fs::File::create(&part)
            .map_err(io_error(|| format!("creating {}", part.display())))?;
        let mut writer = io::BufWriter::with_capacity(1 << 20, file);
        let written = self.export(id, &mut writer)?;
        writer
            .flush()
            .map_err(io_error(|| format!("writing {}", part.display())))?;
        let file = writer.into_inner().map_err(|error| {
            io_error(|| format!("writing {}", part.display()))(error.into_error())
        })?;
        file.sync_all()
            .map_err(io_error(|| format!("syncing {}", part.display())))?;
        std::fs::rename(&part, path).map_err(io_error(|| {
            format!("renaming {} to {}", part.display(), path.display())
        }))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(|| format!("syncing {}", dir.display())))?;
        }
        Ok(written)
    }

    /// Copies a complete blob to `out`, verifying every group against the root as it is read,
    /// so what leaves the store (to be flashed, say) is checked again.
    pub fn export(&self, id: &BlobId, mut out: impl Write) -> Result<u64, StoreError> {
        let entry = self.entry(id)?;
        let info = self.info(id).ok_or(StoreError::NotFound(*id))?;
        if !info.complete {
            return Err(StoreError::Incomplete {
                blob: *id,
                held: info.held.group_count(),
                total: LAYOUT.group_count(entry.size),
            });
        }
        let mut written = 0;
        let result = self.verify_from_files(&entry, &LAYOUT.all_groups(entry.size), |_, bytes| {
            out.write_all(bytes)
                .map_err(io_error(|| format!("writing out blob {id}")))?;
            written += bytes.len() as u64;
            Ok(())
        });
        if let Err(StoreError::Corrupt { groups, .. }) = &result {
            self.drop_groups(&entry, groups);
        }
        result?;
        Ok(written)
    }
}

/// Reads a storage file front to back.
struct FileReader<'a, F> {
    file: &'a F,
    position: u64,
    len: u64,
}

impl<F: StorageFile> Read for FileReader<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.position;
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.file.read_exact_at(self.position, &mut buf[..n])?;
        self.position += n as u64;
        Ok(n)
    }
}

/// The store of a node's data directory: files under `DIR/store`, the sled index in `DIR/index`.
pub type DiskStore = BlobStore<crate::storage::DiskStorage, crate::storage::SledIndex>;

/// Opens (creating if needed) the store in data directory `dir`. A second process opening the
/// same directory gets an error (sled holds a lock on its index).
pub fn open_data_dir(dir: &std::path::Path) -> Result<(DiskStore, OpenReport), StoreError> {
    let storage = crate::storage::DiskStorage::new(dir.join("store")).map_err(io_error(|| {
        format!("creating {}", dir.join("store").display())
    }))?;
    let index = crate::storage::SledIndex::open(&dir.join("index")).map_err(io_error(|| {
        format!("opening the index in {}", dir.join("index").display())
    }))?;
    BlobStore::open(storage, index)
}

fn name_key(name: &str) -> Vec<u8> {
    let mut key = NAME_KEY_PREFIX.to_vec();
    key.extend_from_slice(blake3::hash(name.as_bytes()).as_bytes());
    key
}

/// Why a name record in the index could not be read (it is dropped at open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NameRecordError {
    #[error("empty name record")]
    Empty,
    #[error("name record version {0} is not supported")]
    Version(u8),
    #[error("name record too short for a blob id")]
    TooShort,
    #[error("name is not UTF-8")]
    NotUtf8,
    /// The name breaks the wire's rules for names (their words).
    #[error("{0}")]
    Name(&'static str),
    #[error("name record does not match its key")]
    WrongKey,
}

/// A name record: version, blob id, then the name's UTF-8 bytes.
fn decode_name_record(key: &[u8], value: &[u8]) -> Result<(String, BlobId), NameRecordError> {
    let (&version, rest) = value.split_first().ok_or(NameRecordError::Empty)?;
    if version != NAME_RECORD_VERSION {
        return Err(NameRecordError::Version(version));
    }
    let (id, name) = rest
        .split_first_chunk::<{ BlobId::LEN }>()
        .ok_or(NameRecordError::TooShort)?;
    let name = std::str::from_utf8(name).map_err(|_| NameRecordError::NotUtf8)?;
    proto::wire::check_name(name).map_err(NameRecordError::Name)?;
    if name_key(name) != key {
        return Err(NameRecordError::WrongKey);
    }
    Ok((name.to_owned(), BlobId::from_bytes(*id)))
}

/// Why a blob's index record could not be read (it is dropped at open); each names the offset
/// or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RecordError {
    #[error("key is not a blob id")]
    Key,
    #[error("record ends at byte {len}, inside a field at {at}")]
    Truncated { len: usize, at: usize },
    #[error("record version {0} is not {RECORD_VERSION}")]
    Version(u8),
    #[error("record is empty")]
    Empty,
    #[error("record size {0} is above the limit")]
    TooLarge(u64),
    #[error("record of {len} bytes cannot hold {count} boundaries")]
    Boundaries { len: usize, count: u64 },
    #[error("record boundaries are not increasing pairs")]
    NotIncreasing,
    #[error("record holds group {0} past the blob's end")]
    PastEnd(u64),
}

/// A blob's index record: version, size, then the held groups as boundaries.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    size: u64,
    held: ChunkGroupRanges,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let boundaries = self.held.boundaries();
        let mut out = Vec::with_capacity(1 + 8 + 8 + 8 * boundaries.len());
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(boundaries.len() as u64).to_le_bytes());
        for boundary in boundaries {
            out.extend_from_slice(&boundary.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let word = |at: usize| -> Result<u64, RecordError> {
            bytes
                .get(at..at + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or(RecordError::Truncated {
                    len: bytes.len(),
                    at,
                })
        };
        match bytes.first() {
            Some(&RECORD_VERSION) => {}
            Some(&version) => return Err(RecordError::Version(version)),
            None => return Err(RecordError::Empty),
        }
        let size = word(1)?;
        if size > bao::MAX_BLOB_SIZE {
            return Err(RecordError::TooLarge(size));
        }
        let count = word(9)?;
        let expected_len = usize::try_from(count)
            .ok()
            .and_then(|count| count.checked_mul(8))
            .and_then(|len| len.checked_add(17))
            .filter(|&len| len == bytes.len())
            .ok_or(RecordError::Boundaries {
                len: bytes.len(),
                count,
            })?;
        let boundaries = (17..expected_len)
            .step_by(8)
            .map(word)
            .collect::<Result<Vec<_>, _>>()?;
        let held =
            ChunkGroupRanges::from_boundaries(&boundaries).ok_or(RecordError::NotIncreasing)?;
        if held.end() > LAYOUT.group_count(size) {
            return Err(RecordError::PastEnd(held.end() - 1));
        }
        Ok(Self { size, held })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::storage::sim::{CrashIndex, CrashStorage};

    fn store() -> (BlobStore<CrashStorage, CrashIndex>, CrashStorage) {
        let storage = CrashStorage::new();
        let (store, _) = BlobStore::open(storage.clone(), storage.index()).unwrap();
        (store, storage)
    }

    #[test]
    fn exporting_over_something_that_is_not_a_regular_file_is_refused_and_leaves_it_alone() {
        // `--out /dev/null` once replaced the device node with a regular file: the export writes
        // PATH.part and renames it over PATH. A symlink stands in for the device here.
        let (store, _) = store();
        let id = store.import(&[7u8; 40_000][..]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = store.export_to_file(&id, &link).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert!(!dir.path().join("link.part").exists());
        // A regular file, or none, is written whole.
        assert_eq!(store.export_to_file(&id, &target).unwrap(), 40_000);
        assert_eq!(std::fs::read(&target).unwrap(), vec![7u8; 40_000]);
    }

    #[test]
    fn record_round_trip_and_bad_records_name_the_problem() {
        let record = Record {
            size: 1 << 20,
            held: [0..3, 10..12].into_iter().collect(),
        };
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        let mut bad = record.encode();
        bad[0] = 9;
        assert!(
            Record::decode(&bad)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
        let bytes = record.encode();
        assert!(Record::decode(&bytes[..bytes.len() - 1]).is_err());
        let past_end = Record {
            size: 16384,
            held: (0..2).into(),
        };
        assert!(
            Record::decode(&past_end.encode())
                .unwrap_err()
                .to_string()
                .contains("past the blob's end")
        );
    }

    #[test]
    fn names_resolve_survive_reopen_and_a_power_cut() {
        let (store, storage) = store();
        let v1 = store.import(&b"timestamp v1"[..]).unwrap();
        let v2 = store.import(&b"timestamp v2"[..]).unwrap();
        let name = "image/metadata/timestamp.json";
        assert!(store.resolve(name).is_none());
        store.set_name(name, &v1).unwrap();
        assert_eq!(store.resolve(name).unwrap().id, v1);

        // Bad names and blobs the store cannot serve whole are refused by name.
        let error = store.set_name("a\u{7}b", &v1).unwrap_err();
        assert!(error.to_string().contains("control characters"), "{error}");
        let missing = BlobId::of(b"nothing");
        assert!(matches!(
            store.set_name("x", &missing),
            Err(StoreError::NotFound(_))
        ));
        let partial = BlobId::of(&[1u8; 40_000]);
        store.create_partial(partial, 40_000).unwrap();
        assert!(matches!(
            store.set_name("x", &partial),
            Err(StoreError::Incomplete { .. })
        ));

        // A power cut while the name moves to v2 leaves it at v1 or v2, never unreadable.
        let steps_before = storage.steps();
        storage.cut_at(steps_before + 1);
        assert!(store.set_name(name, &v2).is_err());
        let image = storage.crash_image(crate::storage::sim::Torn::Lost);
        let (reopened, report) = BlobStore::open(image.clone(), image.index()).unwrap();
        assert_eq!(report.names, 1);
        assert_eq!(reopened.resolve(name).unwrap().id, v1);
        reopened.set_name(name, &v2).unwrap();
        let (reopened, _) = BlobStore::open(image.clone(), image.index()).unwrap();
        assert_eq!(reopened.resolve(name).unwrap().id, v2);
        assert_eq!(reopened.names(), vec![(name.to_owned(), v2)]);

        // A forgotten blob's name resolves to nothing; a removed name is gone after reopening.
        reopened.forget(&v2).unwrap();
        assert!(reopened.resolve(name).is_none());
        reopened.remove_name(name).unwrap();
        let (reopened, report) = BlobStore::open(image.clone(), image.index()).unwrap();
        assert_eq!(report.names, 0);
        assert!(reopened.names().is_empty());
    }

    #[test]
    fn unreadable_name_records_are_dropped_not_fatal() {
        let (store, storage) = store();
        let id = store.import(&b"root"[..]).unwrap();
        store.set_name("image/metadata/1.root.json", &id).unwrap();
        // A record under another name's key, and one that is cut short.
        let index = storage.index();
        let mut value = vec![NAME_RECORD_VERSION];
        value.extend_from_slice(id.as_bytes());
        value.extend_from_slice(b"other");
        index.put(&name_key("not other"), &value).unwrap();
        index
            .put(&name_key("short"), &[NAME_RECORD_VERSION, 1, 2])
            .unwrap();
        let (reopened, report) = BlobStore::open(storage.clone(), storage.index()).unwrap();
        assert_eq!(report.dropped_records, 2);
        assert_eq!(report.names, 1);
        assert_eq!(
            reopened.resolve("image/metadata/1.root.json").unwrap().id,
            id
        );
    }

    #[test]
    fn import_export_and_serve() {
        let (store, _) = store();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = store.import(&data[..]).unwrap();
        assert_eq!(id, BlobId::of(&data));
        let info = store.info(&id).unwrap();
        assert!(info.complete);
        let mut out = Vec::new();
        store.export(&id, &mut out).unwrap();
        assert_eq!(out, data);
        // Importing again is a no-op.
        assert_eq!(store.import(&data[..]).unwrap(), id);

        let (served, _) = store
            .serve(&id, &[(1..3), (50..60)].into_iter().collect(), Vec::new())
            .unwrap();
        assert_eq!(served.boundaries(), &[1, 3, 12, 13]);
    }

    #[test]
    fn partial_blob_filled_from_a_verified_response() {
        let (source, _) = store();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let id = source.import(&data[..]).unwrap();

        let (sink, _) = store();
        sink.create_partial(id, data.len() as u64).unwrap();
        let wanted: ChunkGroupRanges = [0..2, 4..7].into_iter().collect();
        let mut response = Vec::new();
        let (served, _) = source.serve(&id, &wanted, &mut response).unwrap();
        let size = u64::from_le_bytes(response[..8].try_into().unwrap());
        let mut verifier = RangeVerifier::new(id, LAYOUT, size, &served);
        let mut at = 8;
        while let Some(len) = verifier.next_item_len() {
            let item = verifier.verify_next(&response[at..at + len]).unwrap();
            sink.write(&id, &item).unwrap();
            at += len;
        }
        let info = sink.checkpoint(&id).unwrap();
        assert_eq!(info.held, served);
        assert!(!info.complete);
        assert!(matches!(
            sink.export(&id, Vec::new()),
            Err(StoreError::Incomplete { .. })
        ));
        // What the partial store holds, it can serve on.
        let (again, _) = sink.serve(&id, &wanted, Vec::new()).unwrap();
        assert_eq!(again, served);
    }

    /// The items of `response` (as [`BlobStore::serve`] writes it) for `groups` of a blob
    /// of `size`, verified.
    fn verified_items<'a>(
        id: BlobId,
        size: u64,
        groups: &ChunkGroupRanges,
        response: &'a [u8],
    ) -> Vec<Verified<'a>> {
        let mut verifier = RangeVerifier::new(id, LAYOUT, size, groups);
        let mut at = 8;
        let mut items = Vec::new();
        while let Some(len) = verifier.next_item_len() {
            items.push(verifier.verify_next(&response[at..at + len]).unwrap());
            at += len;
        }
        items
    }

    #[test]
    fn a_response_written_in_stretches_leaves_what_one_item_at_a_time_does() {
        let (source, _) = store();
        let data: Vec<u8> = (0..1_100_000u32).map(|i| (i % 241) as u8).collect();
        let size = data.len() as u64;
        let id = source.import(&data[..]).unwrap();
        let wanted: ChunkGroupRanges = [0..5, 9..30, 40..LAYOUT.group_count(size)]
            .into_iter()
            .collect();
        let mut response = Vec::new();
        let (served, _) = source.serve(&id, &wanted, &mut response).unwrap();
        let items = verified_items(id, size, &served, &response);

        let (one_by_one, one_storage) = store();
        one_by_one.create_partial(id, size).unwrap();
        for item in &items {
            one_by_one.write_deferred(&id, item).unwrap();
        }
        let (together, together_storage) = store();
        together.create_partial(id, size).unwrap();
        // A group already held (an endgame duplicate) is left as it is.
        let twelve = ChunkGroupRanges::from(12..13);
        let mut early = Vec::new();
        source.serve(&id, &twelve, &mut early).unwrap();
        for item in verified_items(id, size, &twelve, &early) {
            together.write_deferred(&id, &item).unwrap();
        }
        assert!(!together.write_all_deferred(&id, &items).unwrap());

        let one = one_by_one.checkpoint(&id).unwrap();
        let all = together.checkpoint(&id).unwrap();
        assert_eq!(one.held, served);
        assert_eq!(all.held, served);
        for name in [data_name(&id), outboard_name(&id)] {
            assert_eq!(
                one_storage.read_all(&name),
                together_storage.read_all(&name),
                "{name} differs"
            );
        }
        // And it serves on what it wrote.
        let (again, _) = together.serve(&id, &served, Vec::new()).unwrap();
        assert_eq!(again, served);
    }

    #[test]
    fn items_that_do_not_fit_the_blob_are_refused_before_any_is_written() {
        let (source, _) = store();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 239) as u8).collect();
        let id = source.import(&data[..]).unwrap();
        let all = LAYOUT.all_groups(data.len() as u64);
        let mut response = Vec::new();
        let (served, _) = source.serve(&id, &all, &mut response).unwrap();
        let items = verified_items(id, data.len() as u64, &served, &response);
        // The same id, stored as a shorter blob: the first groups fit, the later ones do not.
        let (sink, storage) = store();
        sink.create_partial(id, 100_000).unwrap();
        let before = storage.read_all(&data_name(&id));
        let error = sink.write_all_deferred(&id, &items).unwrap_err();
        assert!(matches!(error, StoreError::Misplaced { .. }), "{error}");
        assert_eq!(storage.read_all(&data_name(&id)), before);
        assert!(sink.checkpoint(&id).unwrap().held.is_empty());
    }

    #[test]
    fn a_due_checkpoint_is_reported_once_until_it_runs() {
        let (source, _) = store();
        // Three checkpoints' worth of bytes.
        let len = usize::try_from(3 * CHECKPOINT_BYTES).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let id = source.import(&data[..]).unwrap();
        let (sink, _) = store();
        sink.create_partial(id, data.len() as u64).unwrap();
        let all = LAYOUT.all_groups(data.len() as u64);
        let mut response = Vec::new();
        let (served, _) = source.serve(&id, &all, &mut response).unwrap();
        let mut verifier = RangeVerifier::new(id, LAYOUT, data.len() as u64, &served);
        let mut at = 8;
        let mut due = 0;
        let mut written = 0_u64;
        while let Some(len) = verifier.next_item_len() {
            let item = verifier.verify_next(&response[at..at + len]).unwrap();
            at += len;
            if let Verified::Group(group) = &item {
                written += group.data().len() as u64;
            }
            if sink.write_deferred(&id, &item).unwrap() {
                due += 1;
                // The first time only: the claim stands until the checkpoint runs. (Outboard
                // pairs count towards the threshold too.)
                assert_eq!(
                    due, 1,
                    "a second checkpoint was reported due before the first ran"
                );
                assert!(written >= CHECKPOINT_BYTES - CHECKPOINT_BYTES / 64);
            }
        }
        assert_eq!(due, 1);
        assert!(sink.checkpoint(&id).unwrap().complete);
        // Once it ran, the next due one is reported again.
        let (again, _) = store();
        again.create_partial(id, data.len() as u64).unwrap();
        let mut verifier = RangeVerifier::new(id, LAYOUT, data.len() as u64, &served);
        let mut at = 8;
        let mut due = 0;
        while let Some(len) = verifier.next_item_len() {
            let item = verifier.verify_next(&response[at..at + len]).unwrap();
            at += len;
            if again.write_deferred(&id, &item).unwrap() {
                due += 1;
                again.checkpoint(&id).unwrap();
            }
        }
        assert!(
            due >= 2,
            "{due} checkpoints for three checkpoints' worth of bytes"
        );
    }
}
