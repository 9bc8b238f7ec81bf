//! The cloud side: release publishing (sign images the TUF/Uptane way, build bao outboards and
//! deltas, publish targets metadata) and the director (per-vehicle signed targets, staged
//! campaigns with gates, and the append-only audit trail).
//!
//! It must never sign a release or promote a campaign wave without recording who approved it, and
//! must keep offline (root, image targets) keys apart from the director's online key.
//!
//! Today: [`keys`] (key files), [`repo`] (the image and director repositories on disk: init,
//! release, key rotation, timestamp refresh) and [`verify`] (every problem of a repository,
//! each naming its file).

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use proto::BlobId;
use proto::tuf::build;
use serde_json::{Map, Value, json};

pub mod keys;
pub mod repo;
pub mod verify;

pub use node::storage::replace_file as write_durably;
pub use repo::Origin;

/// What `release` published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The image's BLAKE3: its blob id in the mesh.
    pub blob: BlobId,
    /// Its length.
    pub length: u64,
    /// The image repository's new targets version.
    pub targets_version: u64,
}

/// Checks a target name: relative, `/`-separated, no empty, `.` or `..` segment.
pub fn check_target_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("target name {name:?} must be a relative path like ecu/brake-1.2.0.bin");
    }
    Ok(())
}

/// Releases the image in `file` as target `name` of the image repository: for `hardware_ids`,
/// at `release_counter`. Stores it in the origin's mesh store (which builds its bao outboard)
/// and under its consistent-snapshot names, then signs new targets (offline key), snapshot and
/// timestamp.
pub fn release(
    origin: &Origin,
    file: &Path,
    name: &str,
    hardware_ids: &[String],
    release_counter: u64,
) -> anyhow::Result<Released> {
    check_target_name(name)?;
    if hardware_ids.is_empty() || hardware_ids.iter().any(String::is_empty) {
        bail!("give at least one --hardware-id, none empty");
    }
    // Sign nothing before the keys are known to be there.
    for role in ["targets", "snapshot", "timestamp"] {
        origin.key("image", role)?;
    }
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let entry = build::target_file(
        &bytes,
        json!({"hardware_ids": hardware_ids, "release_counter": release_counter}),
    );
    let (store, _) = node::store::open_data_dir(&origin.dir.join("mesh"))
        .context("opening the origin's mesh store")?;
    let blob = store
        .import(bytes.as_slice())
        .with_context(|| format!("storing {} in the mesh store", file.display()))?;
    if entry["custom"]["blake3"].as_str() != Some(blob.to_string().as_str()) {
        bail!("the mesh store's id {blob} is not the image's BLAKE3 (a bug)");
    }
    let targets_dir = origin.targets_dir();
    for hash in entry["hashes"]
        .as_object()
        .into_iter()
        .flat_map(Map::values)
    {
        let hash = hash.as_str().unwrap_or_default();
        let on_disk = match name.rsplit_once('/') {
            Some((dir, base)) => targets_dir.join(dir).join(format!("{hash}.{base}")),
            None => targets_dir.join(format!("{hash}.{name}")),
        };
        if let Some(parent) = on_disk.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        write_durably(&on_disk, &bytes)
            .with_context(|| format!("writing {}", on_disk.display()))?;
    }
    let targets_version =
        origin.add_targets("image", Map::from_iter([(name.to_string(), entry)]))?;
    Ok(Released {
        blob,
        length: bytes.len() as u64,
        targets_version,
    })
}

/// Makes a new origin: both repositories with fresh keys; the offline ones into
/// `origin.offline_keys`, which must not be inside the origin directory.
pub fn init(origin: &Origin) -> anyhow::Result<()> {
    let offline = origin
        .offline_keys
        .as_ref()
        .context("give --offline-keys DIR: where the offline root and targets keys go")?;
    let absolute = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fs::create_dir_all(&origin.dir)
        .with_context(|| format!("creating {}", origin.dir.display()))?;
    fs::create_dir_all(offline).with_context(|| format!("creating {}", offline.display()))?;
    if absolute(offline).starts_with(absolute(&origin.dir)) {
        bail!(
            "--offline-keys {} is inside the origin directory; offline keys must be kept apart",
            offline.display()
        );
    }
    for repository in repo::REPOSITORIES {
        if origin.metadata_dir(repository).exists() {
            bail!(
                "{} exists; the origin is already initialised",
                origin.metadata_dir(repository).display()
            );
        }
    }
    for repository in repo::REPOSITORIES {
        origin.init_repository(repository)?;
    }
    Ok(())
}

/// The public description of every key of the origin: repository, role, key id, public key,
/// and whether it is offline. Never the private halves.
pub fn describe_keys(origin: &Origin) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for repository in repo::REPOSITORIES {
        let (_, root) = origin.latest(repository, "root")?;
        for role in repo::ROLES {
            for keyid in root["roles"][role]["keyids"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let keyid = keyid.as_str().unwrap_or_default();
                out.push(json!({
                    "repository": repository,
                    "role": role,
                    "keyid": keyid,
                    "public": root["keys"][keyid]["keyval"]["public"],
                    "offline": repo::is_offline(repository, role),
                }));
            }
        }
    }
    Ok(out)
}
