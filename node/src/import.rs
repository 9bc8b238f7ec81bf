//! Importing a repository directory (as `origin` writes it) into a store under mesh names: how
//! the origin's mesh node follows what the origin signs, and how `depot-cache import-repo` fills
//! a cache by hand. Each file `<path>` of the repository's `metadata/`, `targets/` and `deltas/`
//! is named `<name>/<path>`.
//!
//! [`Import::Changes`] imports only what a signing can have added: files not yet named, and
//! `metadata/timestamp.json`, the one file a repository rewrites in place (every other file's
//! name holds its version or its hash, and `origin` never rewrites one). Signing writes the
//! timestamp last, so a repository imported while it is being signed serves the old timestamp
//! with whatever newer files are already there, which no client follows before the new
//! timestamp names them.

use std::path::{Path, PathBuf};

use proto::BlobId;

use crate::storage::{Index, Storage};
use crate::store::{BlobStore, StoreError};

/// What to import of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Import {
    /// Every file, naming each anew.
    All,
    /// Files not yet named, and the timestamp (see the module's documentation).
    Changes,
}

/// Why a repository could not be imported. Names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A directory or file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file name that is not UTF-8 (mesh names are text).
    #[error("{}: file name is not UTF-8", .0.display())]
    NotUtf8(PathBuf),
    /// The directory holds no `metadata/` files.
    #[error("{}: holds no metadata/ files: not a repository directory", .0.display())]
    NotARepository(PathBuf),
    /// The store refused the file or its name.
    #[error("{}: {source}", .path.display())]
    Store {
        /// The file.
        path: PathBuf,
        /// What the store said.
        source: StoreError,
    },
}

/// Imports `repo` into `store` under `name` (`image`, `director/<vin>`); a name already taken
/// now names the new file. Returns each imported file's id and name, in path order.
///
/// # Errors
/// [`ImportError`], naming the file; files imported before it stay imported.
pub fn import_repo<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    name: &str,
    repo: &Path,
    what: Import,
) -> Result<Vec<(BlobId, String)>, ImportError> {
    let name = name.trim_end_matches('/');
    let mut files = Vec::new();
    // `deltas/` holds the deltas `origin release --delta-from` listed with images.
    for part in ["metadata", "targets", "deltas"] {
        collect_files(&repo.join(part), part, &mut files)?;
    }
    if !files.iter().any(|(path, _)| path.starts_with("metadata/")) {
        return Err(ImportError::NotARepository(repo.to_path_buf()));
    }
    let mut imported = Vec::with_capacity(files.len());
    for (relative, path) in files {
        let mesh_name = format!("{name}/{relative}");
        if what == Import::Changes
            && relative != "metadata/timestamp.json"
            && store.resolve(&mesh_name).is_some()
        {
            continue;
        }
        let file = std::fs::File::open(&path).map_err(|source| ImportError::Read {
            path: path.clone(),
            source,
        })?;
        let stored = |source| ImportError::Store {
            path: path.clone(),
            source,
        };
        let id = store
            .import(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(stored)?;
        store.set_name(&mesh_name, &id).map_err(stored)?;
        imported.push((id, mesh_name));
    }
    Ok(imported)
}

/// Every regular file under `dir` as (`prefix/relative path`, path), in name order. A missing
/// directory holds nothing.
fn collect_files(
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), ImportError> {
    let read = |source| ImportError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(read(error)),
    };
    let mut entries = entries.collect::<Result<Vec<_>, _>>().map_err(read)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            return Err(ImportError::NotUtf8(entry.path()));
        };
        let relative = format!("{prefix}/{file_name}");
        let kind = entry.file_type().map_err(|source| ImportError::Read {
            path: entry.path(),
            source,
        })?;
        if kind.is_dir() {
            collect_files(&entry.path(), &relative, out)?;
        } else if kind.is_file() && !file_name.starts_with('.') {
            out.push((relative, entry.path()));
        }
    }
    Ok(())
}
