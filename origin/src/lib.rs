//! The cloud side: release publishing (sign images the TUF/Uptane way, build bao outboards and
//! deltas, publish targets metadata) and the director (per-vehicle signed targets, staged
//! campaigns with gates, and the append-only audit trail).
//!
//! It must never sign a release or promote a campaign wave without recording who approved it, and
//! must keep offline (root, image targets) keys apart from the director's online key.
//!
//! Today: [`keys`] (key files), [`repo`] (the image and director repositories on disk: init,
//! release, delegations, key rotation, timestamp refresh), [`director`] (each vehicle's signed
//! director targets) and [`verify`] (every problem of a repository, each naming its file).

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use proto::BlobId;
use proto::tuf::build;
use serde_json::{Map, Value, json};

pub mod audit;
pub mod campaign;
pub mod director;
pub mod http;
pub mod keys;
mod metrics;
pub mod registry;
pub mod repo;
pub mod service;
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

/// Releases the image in `file` as target `name` of the image repository, signed by `role`
/// (`targets`, or a role delegated to with [`Origin::delegate`]): for `hardware_ids`, at
/// `release_counter`. Reads the image as a stream (an image of any size is never held in
/// memory): stores it in the origin's mesh store (which builds its bao outboard) while hashing
/// it, copies it under its consistent-snapshot names, then signs new targets, snapshot and
/// timestamp.
pub fn release(
    origin: &Origin,
    file: &Path,
    name: &str,
    role: &str,
    hardware_ids: &[String],
    release_counter: u64,
) -> anyhow::Result<Released> {
    release_with_deltas(
        origin,
        file,
        name,
        role,
        hardware_ids,
        release_counter,
        &[],
        &delta::DeltaOptions::default(),
    )
}

/// [`release`], also building a delta from each image in `deltas_from` (target names of earlier
/// releases in this image repository) to the new one. Each delta is stored in the mesh store
/// and listed, signed with the image, in the target's `custom.deltas`: source target name →
/// `{"blake3", "length", "from_blake3"}`. A vehicle running a listed source fetches the delta
/// instead of the image; the flasher checks what it rebuilds against the image's BLAKE3.
#[allow(clippy::too_many_arguments)]
pub fn release_with_deltas(
    origin: &Origin,
    file: &Path,
    name: &str,
    role: &str,
    hardware_ids: &[String],
    release_counter: u64,
    deltas_from: &[String],
    delta_options: &delta::DeltaOptions,
) -> anyhow::Result<Released> {
    check_target_name(name)?;
    if deltas_from.iter().any(|from| from == name) {
        bail!("--delta-from {name}: a release cannot be its own delta source");
    }
    if hardware_ids.is_empty() || hardware_ids.iter().any(String::is_empty) {
        bail!("give at least one --hardware-id, none empty");
    }
    // Sign nothing before the keys are known to be there.
    for key_role in [role, "snapshot", "timestamp"] {
        origin.key("image", key_role)?;
    }
    if role != "targets" {
        // Refuse a name outside the role's paths before reading gigabytes.
        let delegation = origin.delegation("image", role)?;
        if !delegation.is_delegated_path(name) {
            bail!(
                "role {role} may not sign for {name}: its paths are {}",
                delegation.paths.as_deref().unwrap_or_default().join(", ")
            );
        }
    }
    let (store, _) = node::store::open_data_dir(&origin.dir.join("mesh"))
        .context("opening the origin's mesh store")?;
    let image = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut hashing = HashingReader::new(std::io::BufReader::with_capacity(1 << 20, image));
    let blob = store
        .import(&mut hashing)
        .with_context(|| format!("storing {} in the mesh store", file.display()))?;
    let (length, sha256, sha512) = hashing.finish();
    let digests = build::TargetDigests {
        length,
        sha256,
        sha512,
        blake3: blob.to_string(),
    };
    let mut custom = json!({"hardware_ids": hardware_ids, "release_counter": release_counter});
    if !deltas_from.is_empty() {
        custom["deltas"] = Value::Object(build_deltas(
            origin,
            &store,
            file,
            blob,
            deltas_from,
            delta_options,
        )?);
    }
    let entry = build::target_entry(&digests, custom);
    let targets_dir = origin.targets_dir();
    for hash in [&digests.sha256, &digests.sha512] {
        let on_disk = match name.rsplit_once('/') {
            Some((dir, base)) => targets_dir.join(dir).join(format!("{hash}.{base}")),
            None => targets_dir.join(format!("{hash}.{name}")),
        };
        if let Some(parent) = on_disk.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        store
            .export_to_file(&blob, &on_disk)
            .with_context(|| format!("writing {}", on_disk.display()))?;
    }
    let targets_version =
        origin.add_targets("image", role, Map::from_iter([(name.to_string(), entry)]))?;
    Ok(Released {
        blob,
        length,
        targets_version,
    })
}

/// Builds, stores and describes the deltas from each of `sources` (released targets) to the
/// image in `file` (BLAKE3 `target`).
fn build_deltas(
    origin: &Origin,
    store: &node::store::DiskStore,
    file: &Path,
    target: BlobId,
    sources: &[String],
    options: &delta::DeltaOptions,
) -> anyhow::Result<Map<String, Value>> {
    let mut image = director::image_updater(origin, &origin.dir.join("image"))?;
    let work = tempfile::Builder::new()
        .prefix(".deltas")
        .tempdir_in(&origin.dir)
        .with_context(|| format!("creating a work directory in {}", origin.dir.display()))?;
    let mut deltas = Map::new();
    for source in sources {
        let info = image
            .target_info(source)
            .with_context(|| format!("looking up --delta-from {source}"))?
            .with_context(|| {
                format!("--delta-from {source}: the image repository does not list it")
            })?;
        let source_blob = info.blake3().with_context(|| {
            format!("--delta-from {source}: its signed metadata gives no BLAKE3")
        })?;
        if source_blob == target {
            bail!("--delta-from {source} is the same image as the release");
        }
        let source_file = work.path().join("source");
        store
            .export_to_file(&source_blob, &source_file)
            .with_context(|| {
                format!("--delta-from {source}: reading it from the origin's mesh store")
            })?;
        let out = work.path().join("delta");
        let summary = delta::create(&source_file, file, &out, options)
            .with_context(|| format!("building the delta from {source}"))?;
        let delta_file =
            fs::File::open(&out).with_context(|| format!("opening {}", out.display()))?;
        let stored = store
            .import(std::io::BufReader::with_capacity(1 << 20, delta_file))
            .context("storing the delta in the mesh store")?;
        if stored != summary.delta {
            bail!("the delta from {source} changed on disk while it was stored");
        }
        // Beside the repository's targets, so a cache importing the repository directory
        // (`depot-cache import-repo`) serves it too.
        let deltas_dir = origin.dir.join("image").join("deltas");
        fs::create_dir_all(&deltas_dir)
            .with_context(|| format!("creating {}", deltas_dir.display()))?;
        store
            .export_to_file(&stored, &deltas_dir.join(stored.to_string()))
            .with_context(|| format!("writing the delta into {}", deltas_dir.display()))?;
        deltas.insert(
            source.clone(),
            json!({
                "blake3": summary.delta.to_string(),
                "length": summary.delta_len,
                "from_blake3": source_blob.to_string(),
            }),
        );
    }
    Ok(deltas)
}

/// A reader that hashes what passes through it (SHA-256, SHA-512) and counts it.
struct HashingReader<R> {
    inner: R,
    length: u64,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        use sha2::Digest;
        Self {
            inner,
            length: 0,
            sha256: sha2::Sha256::new(),
            sha512: sha2::Sha512::new(),
        }
    }

    /// Length, SHA-256 and SHA-512 (hex) of what was read.
    fn finish(self) -> (u64, String, String) {
        use sha2::Digest;
        (
            self.length,
            hex::encode(self.sha256.finalize()),
            hex::encode(self.sha512.finalize()),
        )
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let read = self.inner.read(buf)?;
        self.length += read as u64;
        self.sha256.update(&buf[..read]);
        self.sha512.update(&buf[..read]);
        Ok(read)
    }
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
        // Roles the top-level targets delegates to, with the keys it lists for them.
        let (_, targets) = origin.latest(repository, "targets")?;
        let delegations = &targets["delegations"];
        for role in delegations["roles"].as_array().into_iter().flatten() {
            let name = role["name"].as_str().unwrap_or_default();
            for keyid in role["keyids"].as_array().into_iter().flatten() {
                let keyid = keyid.as_str().unwrap_or_default();
                out.push(json!({
                    "repository": repository,
                    "role": name,
                    "delegated_paths": role["paths"],
                    "keyid": keyid,
                    "public": delegations["keys"][keyid]["keyval"]["public"],
                    "offline": repo::is_offline(repository, name),
                }));
            }
        }
    }
    Ok(out)
}
