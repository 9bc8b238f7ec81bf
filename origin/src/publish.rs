//! The publish journal (`DIR/published`): every signing that completes a repository's new
//! version (its timestamp, written last) appends the repository's name, one per line, so that
//! the origin's mesh node ([`crate::mesh`]) serves it at once, whichever process signed: `origin
//! serve` opening a wave, or `origin release`, `assign` and `timestamp` beside it.
//!
//! Writers append under an exclusive lock on the file; the reader takes the same lock to read
//! every line and empty the file, so that no line is lost between its read and the emptying. A
//! note is written only when the journal exists (the reader makes it when it starts: an origin
//! that never served the mesh keeps no journal) and holds less than [`MAX_JOURNAL_BYTES`] (a
//! reader stopped for good leaves a bounded file). A line lost anyway (a reader killed after
//! emptying, before it imported; a note skipped at the cap) is caught by the reader's full pass
//! at its start and at its periodic full passes.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// The journal of origin directory `dir`.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join("published")
}

/// Bytes past which notes are skipped (the reader's full passes find what they name).
pub const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// Notes that `repository` (`image`, `director/vehicles/<vin>`) has a new version, if a reader
/// keeps the journal (see the module's documentation).
///
/// # Errors
/// When the journal cannot be opened, locked or written.
pub fn note(dir: &Path, repository: &str) -> std::io::Result<()> {
    let file = match OpenOptions::new().append(true).open(journal_path(dir)) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if file.metadata()?.len() >= MAX_JOURNAL_BYTES {
        return Ok(());
    }
    file.lock_exclusive()?;
    let written = (&file).write_all(format!("{repository}\n").as_bytes());
    let unlocked = FileExt::unlock(&file);
    written.and(unlocked)
}

/// Takes every repository noted since the last call (each once, in name order) and empties the
/// journal.
///
/// # Errors
/// When the journal cannot be opened, locked, read or emptied.
pub fn drain(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut file: File = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(journal_path(dir))?;
    file.lock_exclusive()?;
    let result = (|| -> std::io::Result<BTreeSet<String>> {
        let mut text = String::new();
        file.rewind()?;
        file.read_to_string(&mut text)?;
        if !text.is_empty() {
            file.set_len(0)?;
        }
        Ok(text
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect())
    })();
    let unlocked = FileExt::unlock(&file);
    let names = result?;
    unlocked?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noted_names_are_drained_once_each() {
        let dir = tempfile::tempdir().unwrap();
        // No reader yet: no journal, nothing kept.
        note(dir.path(), "image").unwrap();
        assert!(!journal_path(dir.path()).exists());
        assert!(drain(dir.path()).unwrap().is_empty());
        for name in ["image", "director/vehicles/VIN-1", "image"] {
            note(dir.path(), name).unwrap();
        }
        let names = drain(dir.path()).unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["director/vehicles/VIN-1", "image"]
        );
        assert!(drain(dir.path()).unwrap().is_empty());
        // Writers in other threads while draining: nothing lost, nothing twice.
        let writers: Vec<_> = (0..4)
            .map(|n| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        note(&dir, &format!("director/vehicles/V{n}-{i}")).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        while writers.iter().any(|w| !w.is_finished()) {
            seen.extend(drain(dir.path()).unwrap());
        }
        for writer in writers {
            writer.join().unwrap();
        }
        seen.extend(drain(dir.path()).unwrap());
        assert_eq!(seen.len(), 800);
        // At the cap, notes are skipped: the file stays bounded.
        std::fs::write(
            journal_path(dir.path()),
            vec![b'\n'; usize::try_from(MAX_JOURNAL_BYTES).unwrap()],
        )
        .unwrap();
        note(dir.path(), "image").unwrap();
        assert_eq!(
            std::fs::metadata(journal_path(dir.path())).unwrap().len(),
            MAX_JOURNAL_BYTES
        );
    }
}
