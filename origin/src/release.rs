//! A release: an image signed into the image repository with its deltas, and its audit entry.
//!
//! [`Release::sign`] stores the image (and its bao outboard) in the origin's mesh store, builds
//! the deltas from earlier releases and the image compressed (a delta from nothing, listed when
//! it is [`WORTH_LISTING`] smaller), signs new targets, snapshot and timestamp, and appends the
//! `release` entry to the audit log under the acting [`Actor`], all in one call: there is no way
//! to sign a release without its entry.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use proto::BlobId;
use proto::custom::{CompressedRef, DeltaRef, ImageCustom};
use proto::tuf::build;
use serde_json::{Map, json};

use crate::audit::{self, Actor, AuditedError};
use crate::director;
use crate::repo::Origin;

/// What a release published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The image's BLAKE3: its blob id in the mesh.
    pub blob: BlobId,
    /// Its length.
    pub length: u64,
    /// The image repository's new targets version.
    pub targets_version: u64,
    /// The image compressed, if it was listed.
    pub compressed: Option<CompressedRef>,
    /// The deltas listed with it, by the target name of the image each applies to.
    pub deltas: BTreeMap<String, DeltaRef>,
}

/// The image compressed is listed only when it saves at least 1/`WORTH_LISTING` of the
/// image: a blob that saves less still costs every depot its backhaul and its disk.
pub const WORTH_LISTING: u64 = 16;

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

/// A release to sign: the image in a file, released as a target name of the image repository
/// for some hardware at a release counter; by default signed by the `targets` role, without
/// deltas, with the image compressed.
#[derive(Debug, Clone)]
pub struct Release {
    file: PathBuf,
    name: String,
    hardware_ids: Vec<String>,
    release_counter: u64,
    role: String,
    deltas_from: Vec<String>,
    delta_options: delta::DeltaOptions,
    compressed: bool,
}

impl Release {
    /// The image in `file` as target `name`, for `hardware_ids`, at `release_counter` (vehicles
    /// never install a lower one).
    pub fn new(
        file: impl Into<PathBuf>,
        name: impl Into<String>,
        hardware_ids: impl IntoIterator<Item = impl Into<String>>,
        release_counter: u64,
    ) -> Self {
        Self {
            file: file.into(),
            name: name.into(),
            hardware_ids: hardware_ids.into_iter().map(Into::into).collect(),
            release_counter,
            role: "targets".to_owned(),
            deltas_from: Vec::new(),
            delta_options: delta::DeltaOptions::default(),
            compressed: true,
        }
    }

    /// Signed by `role`: `targets` (the image repository's own, offline key) or a role
    /// delegated to with [`Origin::delegate`], whose paths must allow the name.
    #[must_use]
    pub fn signed_by(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// Also builds a delta from each of `sources` (target names of earlier releases in this
    /// image repository) to the new image. Each delta is stored in the mesh store and listed,
    /// signed with the image, in the target's `custom.deltas`. A vehicle running a listed
    /// source fetches the delta instead of the image; the flasher checks what it rebuilds
    /// against the image's BLAKE3.
    #[must_use]
    pub fn with_deltas_from(
        mut self,
        sources: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.deltas_from.extend(sources.into_iter().map(Into::into));
        self
    }

    /// Whether to build the image compressed (default: yes) and list it in the target's
    /// `custom.compressed` when it saves at least 1/[`WORTH_LISTING`] of the image. A vehicle
    /// that runs nothing a listed delta applies to fetches it instead of the image. It is a
    /// delta from the empty image, made with the delta options (the x86 converter for code).
    #[must_use]
    pub fn compressed(mut self, compressed: bool) -> Self {
        self.compressed = compressed;
        self
    }

    /// Builds the deltas with `options` (default: [`delta::DeltaOptions::default`]).
    #[must_use]
    pub fn delta_options(mut self, options: delta::DeltaOptions) -> Self {
        self.delta_options = options;
        self
    }

    /// Signs the release and records it in the audit log as done by `actor`.
    ///
    /// Reads the image as a stream (an image of any size is never held in memory): stores it in
    /// the origin's mesh store (which builds its bao outboard) while hashing it, builds the
    /// deltas, copies it under its consistent-snapshot names, then signs new targets, snapshot
    /// and timestamp, and appends the `release` entry.
    pub fn sign(&self, origin: &Origin, actor: &Actor) -> Result<Released, AuditedError> {
        audit::audited(
            origin,
            actor,
            "release",
            || self.publish(origin),
            |released| {
                let what = format!(
                    "the release of {} (image {} v{})",
                    self.name, self.role, released.targets_version
                );
                (what, self.audit_detail(released))
            },
        )
    }

    /// The audit entry's detail.
    fn audit_detail(&self, released: &Released) -> serde_json::Value {
        json!({
            "target": self.name, "blake3": released.blob.to_string(), "length": released.length,
            "hardware_ids": self.hardware_ids, "release_counter": self.release_counter,
            "role": self.role, "targets_version": released.targets_version,
            "deltas_from": self.deltas_from,
            "compressed": released.compressed.as_ref().map(|c| json!({"blake3": c.blake3.to_string(), "length": c.length})),
        })
    }

    /// Refuses what cannot be released before any byte is read or signed.
    fn check(&self, origin: &Origin) -> anyhow::Result<()> {
        let (name, role) = (&self.name, &self.role);
        check_target_name(name)?;
        if self.deltas_from.iter().any(|from| from == name) {
            bail!("--delta-from {name}: a release cannot be its own delta source");
        }
        if self.hardware_ids.is_empty() || self.hardware_ids.iter().any(String::is_empty) {
            bail!("give at least one --hardware-id, none empty");
        }
        // Before any byte is read or stored: what this release signs on top of must verify.
        origin.verified("image", &[role.as_str(), "snapshot", "timestamp"])?;
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
        Ok(())
    }

    /// Stores the image and its deltas and signs the targets that list them.
    fn publish(&self, origin: &Origin) -> anyhow::Result<Released> {
        self.check(origin)?;
        let file = &self.file;
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
        let custom = ImageCustom {
            blake3: Some(blob),
            hardware_ids: self.hardware_ids.clone(),
            release_counter: Some(self.release_counter),
            deltas: build_deltas(
                origin,
                &store,
                file,
                blob,
                &self.deltas_from,
                &self.delta_options,
            )?,
            compressed: match self.compressed {
                true => build_compressed(origin, &store, file, length, &self.delta_options)?,
                false => None,
            },
        };
        let entry = build::target_entry(&digests, custom.to_value());
        write_target_files(origin, &store, &self.name, blob, &digests)?;
        let targets_version = origin.add_targets(
            "image",
            &self.role,
            Map::from_iter([(self.name.clone(), entry)]),
        )?;
        Ok(Released {
            blob,
            length,
            targets_version,
            compressed: custom.compressed,
            deltas: custom.deltas,
        })
    }
}

/// Copies the stored image `blob` under its consistent-snapshot names (`<hash>.<base name>`
/// for each of its hashes) into the image repository's targets.
fn write_target_files(
    origin: &Origin,
    store: &node::store::DiskStore,
    name: &str,
    blob: BlobId,
    digests: &build::TargetDigests,
) -> anyhow::Result<()> {
    for hash in [&digests.sha256, &digests.sha512] {
        store_blob(origin, store, &blob, &target_key(name, hash))?;
    }
    Ok(())
}

/// Where target `name` is kept under its consistent-snapshot name for `hash`.
fn target_key(name: &str, hash: &str) -> String {
    match name.rsplit_once('/') {
        Some((dir, base)) => format!("image/targets/{dir}/{hash}.{base}"),
        None => format!("image/targets/{hash}.{name}"),
    }
}

/// Copies `blob` from the work store to the origin's storage as `key`: straight into the file
/// when the storage is the origin directory, through a verified export otherwise.
fn store_blob(
    origin: &Origin,
    store: &node::store::DiskStore,
    blob: &BlobId,
    key: &str,
) -> anyhow::Result<()> {
    let describe = || format!("writing {}", origin.storage.describe(key));
    if let Some(root) = origin.storage.local_dir() {
        let path = root.join(key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        store.export_to_file(blob, &path).with_context(describe)?;
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix(".upload")
        .tempdir_in(&origin.dir)
        .with_context(|| format!("creating a work directory in {}", origin.dir.display()))?;
    let file = work.path().join("blob");
    store.export_to_file(blob, &file).with_context(describe)?;
    origin.storage.upload(key, &file).with_context(describe)?;
    Ok(())
}

/// Puts released target `source` (`info`, BLAKE3 `blob`) into `file`: from the work store, or
/// else from the origin's storage (released from another machine), checked against its
/// signed BLAKE3 before use.
fn fetch_source(
    origin: &Origin,
    store: &node::store::DiskStore,
    source: &str,
    info: &proto::tuf::TargetFile,
    blob: &BlobId,
    file: &Path,
) -> anyhow::Result<()> {
    if store.export_to_file(blob, file).is_ok() {
        return Ok(());
    }
    let sha256 = info
        .hashes
        .get("sha256")
        .with_context(|| format!("--delta-from {source}: its signed metadata gives no sha256"))?;
    let key = target_key(source, sha256);
    if !origin.storage.download(&key, file)? {
        bail!(
            "--delta-from {source}: neither the origin's mesh store nor {} holds it",
            origin.storage.describe(&key)
        );
    }
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(fs::File::open(file).with_context(|| format!("opening {}", file.display()))?)
        .with_context(|| format!("reading {}", file.display()))?;
    if BlobId::from_bytes(*hasher.finalize().as_bytes()) != *blob {
        bail!(
            "--delta-from {source}: {} is not the image its signed metadata names (BLAKE3 differs)",
            origin.storage.describe(&key)
        );
    }
    Ok(())
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
) -> anyhow::Result<BTreeMap<String, DeltaRef>> {
    let mut deltas = BTreeMap::new();
    if sources.is_empty() {
        return Ok(deltas);
    }
    let mut image = director::image_updater(origin)?;
    let work = tempfile::Builder::new()
        .prefix(".deltas")
        .tempdir_in(&origin.dir)
        .with_context(|| format!("creating a work directory in {}", origin.dir.display()))?;
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
        fetch_source(origin, store, source, &info, &source_blob, &source_file)?;
        let out = work.path().join("delta");
        let progress = crate::file_delta::terminal_progress(format!("delta from {source}"));
        let summary = delta::create_with_progress(&source_file, file, &out, options, &progress)
            .with_context(|| format!("building the delta from {source}"))?;
        store_delta(origin, store, &out, &summary)
            .with_context(|| format!("storing the delta from {source}"))?;
        deltas.insert(
            source.clone(),
            DeltaRef {
                blake3: summary.delta,
                length: summary.delta_len,
                from_blake3: source_blob,
            },
        );
    }
    Ok(deltas)
}

/// Builds the image in `file` (`length` bytes) compressed: a delta from the empty image. Stores
/// and describes it when it saves at least 1/[`WORTH_LISTING`] of the image.
fn build_compressed(
    origin: &Origin,
    store: &node::store::DiskStore,
    file: &Path,
    length: u64,
    options: &delta::DeltaOptions,
) -> anyhow::Result<Option<CompressedRef>> {
    if length == 0 {
        return Ok(None);
    }
    let work = tempfile::Builder::new()
        .prefix(".compressed")
        .tempdir_in(&origin.dir)
        .with_context(|| format!("creating a work directory in {}", origin.dir.display()))?;
    let nothing = work.path().join("nothing");
    fs::write(&nothing, b"").with_context(|| format!("writing {}", nothing.display()))?;
    let out = work.path().join("compressed");
    let progress = crate::file_delta::terminal_progress("compressed image".to_string());
    let summary = delta::create_with_progress(&nothing, file, &out, options, &progress)
        .context("compressing the image")?;
    if summary.delta_len > length - length / WORTH_LISTING {
        tracing::info!(
            length,
            compressed = summary.delta_len,
            "the image compresses too little to list it compressed"
        );
        return Ok(None);
    }
    store_delta(origin, store, &out, &summary).context("storing the compressed image")?;
    Ok(Some(CompressedRef {
        blake3: summary.delta,
        length: summary.delta_len,
    }))
}

/// Stores the delta in `file` (made as `summary` says) in the mesh store and beside the
/// repository's targets, in `image/deltas/<BLAKE3>`, so a cache importing the repository
/// directory (`depot-cache import-repo`) serves it too.
fn store_delta(
    origin: &Origin,
    store: &node::store::DiskStore,
    file: &Path,
    summary: &delta::DeltaSummary,
) -> anyhow::Result<()> {
    let delta_file = fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let stored = store
        .import(std::io::BufReader::with_capacity(1 << 20, delta_file))
        .context("storing it in the mesh store")?;
    if stored != summary.delta {
        bail!("{} changed on disk while it was stored", file.display());
    }
    store_blob(origin, store, &stored, &format!("image/deltas/{stored}"))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn initialised(dir: &Path) -> Origin {
        let origin = Origin::new(
            dir.join("origin"),
            Some(dir.join("usb").into()),
            proto::tuf::Time::parse("2026-11-22T10:00:00Z").unwrap(),
        );
        crate::init(&origin, None).unwrap();
        origin
    }

    fn image(dir: &Path, name: &str, fill: u8) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, vec![fill; 50_000]).unwrap();
        path
    }

    #[test]
    fn a_release_with_a_delta_is_signed_and_recorded_under_its_actor() {
        let dir = tempfile::tempdir().unwrap();
        let origin = initialised(dir.path());
        let alice = Actor::new("alice@release-eng").unwrap();
        Release::new(image(dir.path(), "1.bin", 1), "ecu/fw-1.bin", ["fw-v1"], 1)
            .sign(&origin, &alice)
            .unwrap();
        let mut v2 = vec![1u8; 50_000];
        v2[100..200].fill(9);
        fs::write(dir.path().join("2.bin"), &v2).unwrap();
        let options = delta::DeltaOptions {
            lzma_dict: false,
            threads: 1,
            ..Default::default()
        };
        let released = Release::new(dir.path().join("2.bin"), "ecu/fw-2.bin", ["fw-v1"], 2)
            .with_deltas_from(["ecu/fw-1.bin"])
            .delta_options(options)
            .sign(&origin, &alice)
            .unwrap();
        assert_eq!(released.blob, BlobId::of(&v2));
        let entries = audit::entries(&audit::log_path(&origin)).unwrap();
        assert_eq!(entries.len(), 2);
        let entry = &entries[1];
        assert_eq!(entry["actor"], "alice@release-eng");
        assert_eq!(entry["action"], "release");
        assert_eq!(
            entry["detail"],
            json!({
                "target": "ecu/fw-2.bin", "blake3": released.blob.to_string(), "length": 50_000,
                "hardware_ids": ["fw-v1"], "release_counter": 2, "role": "targets",
                "targets_version": released.targets_version, "deltas_from": ["ecu/fw-1.bin"],
                "compressed": {
                    "blake3": released.compressed.as_ref().unwrap().blake3.to_string(),
                    "length": released.compressed.as_ref().unwrap().length,
                },
            })
        );
    }

    #[test]
    fn a_refused_release_records_nothing_and_a_damaged_log_refuses_before_signing() {
        let dir = tempfile::tempdir().unwrap();
        let origin = initialised(dir.path());
        let bob = Actor::new("bob").unwrap();
        let file = image(dir.path(), "1.bin", 1);
        let refused = Release::new(&file, "../escape.bin", ["fw-v1"], 1)
            .sign(&origin, &bob)
            .unwrap_err();
        assert!(matches!(refused, AuditedError::Failed(_)), "{refused}");
        assert!(
            audit::entries(&audit::log_path(&origin))
                .unwrap()
                .is_empty()
        );

        let (before, _) = origin.latest("image", "targets").unwrap();
        fs::write(audit::log_path(&origin), "not an entry\n").unwrap();
        let refused = Release::new(&file, "ecu/fw-1.bin", ["fw-v1"], 1)
            .sign(&origin, &bob)
            .unwrap_err();
        assert!(format!("{refused:#}").contains("not JSON"), "{refused:#}");
        assert_eq!(origin.latest("image", "targets").unwrap().0, before);
    }
}
