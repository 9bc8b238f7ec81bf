//! The publish journal (`DIR/published`): every signing that completes a repository's new
//! version (its timestamp, written last) appends the repository's name, one per line, so that
//! the origin's mesh node ([`crate::mesh`]) serves it at once, whichever process signed: `origin
//! serve` opening a wave, or `origin release`, `assign` and `timestamp` beside it.
//!
//! Writers append under an exclusive lock on the file; the reader takes the same lock to read
//! every line and empty the file, so that no line is lost between its read and the emptying and
//! the file never grows past what the reader has not yet taken. A line lost anyway (a reader
//! killed after emptying, before it imported) is caught by the reader's full pass at its start
//! and at its periodic full passes.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs2::FileExt;

/// The journal of origin directory `dir`.
pub fn journal_path(dir: &Path) -> PathBuf {
    dir.join("published")
}

/// Notes that `repository` (`image`, `director/vehicles/<vin>`) has a new version.
///
/// # Errors
/// When the journal cannot be opened, locked or written.
pub fn note(dir: &Path, repository: &str) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(dir))?;
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
    }
}
