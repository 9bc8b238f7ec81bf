//! Applying a delta on the vehicle: into a file through the store's [`Storage`] with its own
//! journal ([`apply`], `vehicle-peer apply-delta`), or into an ECU's inactive bank with the
//! flasher's journal ([`apply_into_bank`]). The decoding, verifying and resuming are the `delta`
//! crate's; this module gives them a place to write and a journal.
//!
//! A file target is rebuilt into `.NAME.partial` beside its final name. After each segment is
//! decoded, checked against the target's hash tree, written and synced, the journal
//! `.NAME.progress` (replaced atomically: temporary file, sync, rename, directory sync) says so.
//! A restart reads the journal and resumes at the first segment not recorded — the journal names
//! the delta's header by hash, so a different delta starts over. When every segment is in, the
//! whole file is hashed once more against the target id before it is renamed to NAME: a file by
//! that name is always the complete, verified target, whatever instant the power was cut.

use std::io;

use ::delta::{
    Applied, ApplyError, ApplyInputs, DeltaSegments, Progress, ReadAt, WriteAt, hash_of,
};
use node::storage::{Storage, StorageFile};
use proto::BlobId;

use crate::bank::Bank;

const JOURNAL_MAGIC: &[u8; 8] = b"DMAPPLY1";
const JOURNAL_LEN: usize = 8 + 32 + 8 + 32;

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Io { what, source }
}

/// The partial file, as the place an apply writes.
struct Partial<'a, F>(&'a F);

impl<F: StorageFile> ReadAt for Partial<'_, F> {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(offset, buf)
    }
}

impl<F: StorageFile> WriteAt for Partial<'_, F> {
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_all_at(offset, data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync()
    }
}

/// Rebuilds the target of `inputs.delta` as `name` in `storage`, resuming an earlier attempt
/// if its journal is there. Calls `progress(done, total)` after each segment.
pub fn apply<S, R, D>(
    storage: &S,
    name: &str,
    inputs: &ApplyInputs<'_, R, D>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Applied, ApplyError>
where
    S: Storage,
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let (dir, file) = match name.rsplit_once('/') {
        Some((dir, file)) => (dir, file),
        None => ("", name),
    };
    let join = |file: String| {
        if dir.is_empty() {
            file
        } else {
            format!("{dir}/{file}")
        }
    };
    let partial_name = join(format!(".{file}.partial"));
    let journal_name = join(format!(".{file}.progress"));

    let mut segments = DeltaSegments::new(inputs)?;
    let header = segments.header().clone();

    // Finished before (the power went out between the rename and the journal's removal)?
    if let Ok(existing) = storage.open(name, false) {
        let whole = existing.len().ok() == Some(header.target_len)
            && hash_of(&existing, header.target_len).ok() == Some(header.target);
        if whole {
            drop(existing);
            storage
                .remove(&journal_name)
                .map_err(io_error(format!("removing {journal_name}")))?;
            storage
                .remove(&partial_name)
                .map_err(io_error(format!("removing {partial_name}")))?;
            storage
                .sync_dir(dir)
                .map_err(io_error("syncing the directory"))?;
            let segments = header.segments.len();
            return Ok(Applied {
                target: header.target,
                target_len: header.target_len,
                segments,
                resumed_at: segments,
            });
        }
    }

    let header_digest = segments.header_digest();
    let resume = read_journal(storage, &journal_name, &header_digest).map(|done| Progress {
        header_digest,
        done,
    });
    let partial = storage
        .open(&partial_name, true)
        .map_err(io_error(format!("opening {partial_name}")))?;
    let resumed_at = segments.write_into(
        inputs,
        &mut Partial(&partial),
        &partial_name,
        resume,
        |done, total| {
            write_journal(storage, &journal_name, &header_digest, done.done)
                .map_err(io_error(format!("writing {journal_name}")))?;
            progress(done.done, total);
            Ok(())
        },
    )?;

    partial
        .set_len(header.target_len)
        .map_err(io_error(format!("sizing {partial_name}")))?;
    partial
        .sync()
        .map_err(io_error(format!("syncing {partial_name}")))?;
    if let Err(error) = segments.check_written(&partial, &partial_name) {
        if matches!(error, ApplyError::FinalHash { .. }) {
            storage.remove(&journal_name).ok();
            storage.sync_dir(dir).ok();
        }
        return Err(error);
    }
    drop(partial);
    storage
        .rename(&partial_name, name)
        .map_err(io_error(format!("renaming into {name}")))?;
    storage
        .sync_dir(dir)
        .map_err(io_error("syncing the directory"))?;
    storage
        .remove(&journal_name)
        .map_err(io_error(format!("removing {journal_name}")))?;
    storage
        .sync_dir(dir)
        .map_err(io_error("syncing the directory"))?;
    Ok(Applied {
        target: header.target,
        target_len: header.target_len,
        segments: header.segments.len(),
        resumed_at,
    })
}

/// Rebuilds the delta's target into `bank` from byte 0 — the flasher's write of the inactive
/// bank — as [`DeltaSegments::apply`] does, after checking that the target fits the bank. The
/// caller journals each [`Progress`] `record` is given and passes the last one back as `resume`
/// after a restart; on [`ApplyError::FinalHash`] it drops it and the next attempt starts over.
/// The source is typically the running bank.
pub fn apply_into_bank<B, R, D>(
    bank: &mut B,
    inputs: &ApplyInputs<'_, R, D>,
    resume: Option<Progress>,
    record: impl FnMut(Progress, usize) -> Result<(), ApplyError>,
) -> Result<Applied, ApplyError>
where
    B: Bank + ?Sized,
    R: ReadAt + ?Sized,
    D: ReadAt + ?Sized,
{
    let segments = DeltaSegments::new(inputs)?;
    let target_len = segments.header().target_len;
    if target_len > bank.capacity() {
        return Err(ApplyError::Io {
            what: format!("bank {}", bank.path().display()),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the target of {target_len} bytes does not fit the bank's {}",
                    bank.capacity()
                ),
            ),
        });
    }
    let name = format!("bank {}", bank.path().display());
    segments.apply(inputs, bank, &name, resume, record)
}

/// The next segment an earlier attempt recorded for this delta, if its journal is whole.
fn read_journal<S: Storage>(storage: &S, name: &str, header_digest: &[u8; 32]) -> Option<usize> {
    let file = storage.open(name, false).ok()?;
    if file.len().ok()? != JOURNAL_LEN as u64 {
        return None;
    }
    let mut bytes = [0u8; JOURNAL_LEN];
    file.read_exact_at(0, &mut bytes).ok()?;
    let (body, check) = bytes.split_at(JOURNAL_LEN - 32);
    if blake3::hash(body).as_bytes() != check
        || &body[..8] != JOURNAL_MAGIC
        || &body[8..40] != header_digest
    {
        return None;
    }
    usize::try_from(u64::from_le_bytes(body[40..48].try_into().ok()?)).ok()
}

fn write_journal<S: Storage>(
    storage: &S,
    name: &str,
    header_digest: &[u8; 32],
    next: usize,
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(JOURNAL_LEN);
    bytes.extend_from_slice(JOURNAL_MAGIC);
    bytes.extend_from_slice(header_digest);
    bytes.extend_from_slice(&(next as u64).to_le_bytes());
    let check = *blake3::hash(&bytes).as_bytes();
    bytes.extend_from_slice(&check);
    let temp = format!("{name}.tmp");
    let file = storage.open(&temp, true)?;
    file.set_len(0)?;
    file.write_all_at(0, &bytes)?;
    file.sync()?;
    drop(file);
    storage.rename(&temp, name)?;
    let dir = name.rsplit_once('/').map_or("", |(dir, _)| dir);
    storage.sync_dir(dir)
}

/// `vehicle-peer apply-delta`: rebuilds `out` from the file `from` and the delta file `delta`;
/// returns the JSON summary line.
pub fn apply_files(
    from: &std::path::Path,
    delta: &std::path::Path,
    out: &std::path::Path,
    expect_target: Option<BlobId>,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let source = std::fs::File::open(from)
        .with_context(|| format!("opening the source {}", from.display()))?;
    let delta_file = std::fs::File::open(delta)
        .with_context(|| format!("opening the delta {}", delta.display()))?;
    let source_len = source.metadata()?.len();
    let delta_len = delta_file.metadata()?.len();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("--out {} must end in a file name", out.display()))?;
    let storage = node::storage::DiskStorage::new(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    let inputs = ApplyInputs {
        source: &source,
        source_len,
        delta: &delta_file,
        delta_len,
        expect_target,
    };
    let applied = apply(&storage, name, &inputs, |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("applying {} to {}", delta.display(), from.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(serde_json::json!({
        "out": out.display().to_string(),
        "target": applied.target.to_string(),
        "target_bytes": applied.target_len,
        "segments": applied.segments,
        "resumed_at_segment": applied.resumed_at,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
