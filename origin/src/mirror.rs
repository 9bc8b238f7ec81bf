//! A local copy of repositories kept in object storage, for the origin's mesh node
//! ([`crate::mesh`]) to import as it imports the origin directory's: the node's store is local,
//! and `node::import` reads a repository directory.
//!
//! A repository is copied timestamp first: its `metadata/timestamp.json` is read, then its
//! files are listed and those not yet copied fetched, then the timestamp is put in place. The
//! origin writes the timestamp last, after every file it pins, and object storage lists what
//! was written before a read, so the copy never holds a timestamp whose snapshot it lacks.
//! Every other file's name holds its version or hash and is never rewritten, so a file once
//! copied is not fetched again; the timestamp is fetched again when the store's version of it
//! (its ETag) changed. A full pass lists each repository root once (a page per thousand
//! files) and copies only the repositories that changed. The versions copied are kept in
//! `versions.json` beside the copy ([`Mirror::save`]), so that a restart fetches no timestamp
//! that did not change: at 200,000 vehicles a restart costs the listing (a few hundred pages),
//! not two requests per vehicle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::storage::{Listed, Storage};

/// The file a repository rewrites in place.
const TIMESTAMP: &str = "metadata/timestamp.json";
/// The versions copied, beside the copy.
const VERSIONS: &str = "versions.json";

/// The copy, and what it knows of the store.
#[derive(Debug)]
pub struct Mirror {
    storage: Storage,
    dir: PathBuf,
    /// Each copied repository's timestamp version in the store, as last copied.
    seen: BTreeMap<String, String>,
}

impl Mirror {
    /// A copy of `storage`'s repositories in `dir` (made when needed), knowing the versions
    /// [`Self::save`] kept there (none when unreadable: then every timestamp is fetched again).
    pub fn new(storage: Storage, dir: &Path) -> Self {
        let seen = std::fs::read(dir.join(VERSIONS))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Self {
            storage,
            dir: dir.to_path_buf(),
            seen,
        }
    }

    /// Keeps the versions copied, for the next start.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(VERSIONS);
        crate::write_durably(&path, &serde_json::to_vec(&self.seen)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The repositories copied so far: `image` and each vehicle's.
    pub fn repositories(&self) -> Vec<String> {
        let mut all = Vec::new();
        if self.repository_dir("image").join(TIMESTAMP).exists() {
            all.push("image".to_owned());
        }
        let vehicles = self.dir.join("director").join("vehicles");
        let mut vins: Vec<String> = std::fs::read_dir(vehicles)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
            .collect();
        vins.sort();
        all.extend(
            vins.into_iter()
                .map(|vin| format!("director/vehicles/{vin}")),
        );
        all
    }

    /// Where repository `repository`'s copy is.
    pub fn repository_dir(&self, repository: &str) -> PathBuf {
        self.dir.join(repository)
    }

    /// Brings the copy of `repository` up to the store; `true` when anything was copied.
    /// `false` also when the store holds no timestamp for it (nothing is published yet).
    ///
    /// # Errors
    /// When the store cannot be read or the copy written.
    pub fn sync(&mut self, repository: &str) -> anyhow::Result<bool> {
        let key = format!("{repository}/{TIMESTAMP}");
        let Some((timestamp, version)) = self.storage.read_versioned(&key)? else {
            return Ok(false);
        };
        let mut changed = false;
        for listed in self.storage.list_all(repository)? {
            let Some(relative) = listed.key.strip_prefix(&format!("{repository}/")) else {
                continue;
            };
            // Another repository below this one (`director` holds `vehicles/…`).
            if !(relative.starts_with("metadata/")
                || relative.starts_with("targets/")
                || relative.starts_with("deltas/"))
                || relative == TIMESTAMP
            {
                continue;
            }
            let file = self.repository_dir(repository).join(relative);
            if !file.exists() {
                self.storage.download(&listed.key, &file)?;
                changed = true;
            }
        }
        let file = self.repository_dir(repository).join(TIMESTAMP);
        if std::fs::read(&file).ok().as_deref() != Some(&timestamp[..]) {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            crate::write_durably(&file, &timestamp)
                .with_context(|| format!("writing {}", file.display()))?;
            changed = true;
        }
        self.seen.insert(repository.to_owned(), version);
        Ok(changed)
    }

    /// The repositories under `root` (`image`, or `director/vehicles` for every vehicle's)
    /// whose store differs from the copy: a timestamp of another version than last copied, or
    /// a file not copied. One listing of `root`.
    ///
    /// # Errors
    /// When the store cannot be listed.
    pub fn changed(&self, root: &str) -> anyhow::Result<Vec<String>> {
        let mut repositories: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
        for listed in self.storage.list_all(root)? {
            let Some(repository) = repository_of(root, &listed.key) else {
                continue;
            };
            repositories.entry(repository).or_default().push(listed);
        }
        let mut changed = BTreeSet::new();
        for (repository, files) in repositories {
            let copy = self.repository_dir(&repository);
            let differs = files.iter().any(|listed| {
                let relative = &listed.key[repository.len() + 1..];
                if relative == TIMESTAMP {
                    self.seen.get(&repository) != Some(&listed.version)
                } else {
                    !copy.join(relative).exists()
                }
            });
            if differs {
                changed.insert(repository);
            }
        }
        Ok(changed.into_iter().collect())
    }
}

/// The repository a file `key` listed under `root` belongs to: `root` itself for `image`, the
/// vehicle's for `director/vehicles`.
fn repository_of(root: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(root)?.strip_prefix('/')?;
    if root == "director/vehicles" {
        let vin = rest.split('/').next()?;
        return Some(format!("{root}/{vin}"));
    }
    let first = rest.split('/').next()?;
    ["metadata", "targets", "deltas"]
        .contains(&first)
        .then(|| root.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_takes_new_files_and_a_rewritten_timestamp_only() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(&dir.path().join("store"));
        let mut mirror = Mirror::new(storage.clone(), &dir.path().join("copy"));
        assert!(!mirror.sync("image").unwrap(), "nothing published yet");
        storage.write("image/metadata/1.root.json", b"r1").unwrap();
        storage.write("image/targets/h.a.bin", b"blob").unwrap();
        storage
            .write("image/metadata/timestamp.json", b"t1")
            .unwrap();
        storage
            .write("director/vehicles/V1/metadata/timestamp.json", b"v1")
            .unwrap();
        assert_eq!(mirror.changed("image").unwrap(), ["image"]);
        assert!(mirror.sync("image").unwrap());
        let copy = mirror.repository_dir("image");
        assert_eq!(
            std::fs::read(copy.join("targets/h.a.bin")).unwrap(),
            b"blob"
        );
        assert!(mirror.changed("image").unwrap().is_empty());
        assert!(!mirror.sync("image").unwrap(), "nothing new");
        // Rewritten in place (another length: another version even within one mtime tick).
        storage
            .write("image/metadata/timestamp.json", b"t2-")
            .unwrap();
        assert_eq!(mirror.changed("image").unwrap(), ["image"]);
        assert!(mirror.sync("image").unwrap());
        assert_eq!(std::fs::read(copy.join(TIMESTAMP)).unwrap(), b"t2-");
        assert_eq!(
            mirror.changed("director/vehicles").unwrap(),
            ["director/vehicles/V1"]
        );
        assert!(mirror.sync("director/vehicles/V1").unwrap());
        assert_eq!(mirror.repositories(), ["image", "director/vehicles/V1"]);
        // A restart knows what it copied: nothing to fetch again.
        mirror.save().unwrap();
        let restarted = Mirror::new(storage, &dir.path().join("copy"));
        assert!(restarted.changed("image").unwrap().is_empty());
        assert!(restarted.changed("director/vehicles").unwrap().is_empty());
    }

    #[test]
    fn listed_files_belong_to_their_repository() {
        assert_eq!(
            repository_of(
                "director/vehicles",
                "director/vehicles/V1/metadata/1.root.json"
            )
            .as_deref(),
            Some("director/vehicles/V1")
        );
        assert_eq!(
            repository_of("image", "image/targets/gw/h.1.bin").as_deref(),
            Some("image")
        );
        assert_eq!(repository_of("image", "imagex/metadata/1.root.json"), None);
        assert_eq!(repository_of("image", "image/other/x"), None);
    }
}
