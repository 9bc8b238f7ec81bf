//! Importing a repository directory (as `origin` writes it) into a store under mesh names:
//! how the origin's cache is filled (`depot-cache import-repo`, and netsim's origin node).

use std::path::{Path, PathBuf};

use anyhow::Context;
use node::storage::{Index, Storage};
use node::store::BlobStore;
use proto::BlobId;

/// Imports `repo`'s `metadata/`, `targets/` and `deltas/` files into `store`, each named
/// `<name>/<path in the repository>` (a name already taken now names the new file). Returns
/// each file's id and name, in path order.
pub fn import_repo<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    name: &str,
    repo: &Path,
) -> anyhow::Result<Vec<(BlobId, String)>> {
    let name = name.trim_end_matches('/');
    let mut files = Vec::new();
    // `deltas/` holds the deltas `origin release --delta-from` listed with images.
    for part in ["metadata", "targets", "deltas"] {
        collect_files(&repo.join(part), part, &mut files)?;
    }
    if !files.iter().any(|(path, _)| path.starts_with("metadata/")) {
        anyhow::bail!(
            "{} holds no metadata/ files: not a repository directory",
            repo.display()
        );
    }
    let mut imported = Vec::with_capacity(files.len());
    for (relative, path) in files {
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let id = store
            .import(std::io::BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("importing {}", path.display()))?;
        let mesh_name = format!("{name}/{relative}");
        store
            .set_name(&mesh_name, &id)
            .with_context(|| format!("naming {}", path.display()))?;
        imported.push((id, mesh_name));
    }
    Ok(imported)
}

/// Every regular file under `dir` as (`prefix/relative path`, path), in name order. A missing
/// directory holds nothing.
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("listing {}", dir.display())),
    };
    let mut entries = entries
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            anyhow::bail!("{}: file name is not UTF-8", entry.path().display());
        };
        let relative = format!("{prefix}/{file_name}");
        let kind = entry
            .file_type()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        if kind.is_dir() {
            collect_files(&entry.path(), &relative, out)?;
        } else if kind.is_file() && !file_name.starts_with('.') {
            out.push((relative, entry.path()));
        }
    }
    Ok(())
}
