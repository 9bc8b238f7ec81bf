//! The director's per-vehicle repositories: which image each ECU of one vehicle must install.
//!
//! Each vehicle has its own targets, snapshot and timestamp under
//! `director/vehicles/<vin>/metadata/`, signed with the director's online keys, next to copies
//! of the director's root files (one root for all vehicles). A depot serves that directory to
//! the vehicle under the name `director/<vin>` (`depot-cache import-repo --name director/<vin>`).
//!
//! A director target names, in `custom`, the ECU serials it is for with their hardware id
//! (`ecu_identifiers`) and the image's `release_counter`; its length and hashes are the image
//! repository's, so that the vehicle's full verification ([`proto::uptane::verify_full`]) finds
//! the two repositories agreeing. An assignment is refused here, naming the ECU, when the image
//! repository does not list the image or lists it for other hardware.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use proto::custom::{DirectorCustom, EcuIdentifier, ImageCustom, Priority};
use proto::tuf::{BlockingUpdater, FetchError, Limits, MemoryStore, Remote};
use proto::{EcuSerial, Vin};
use serde_json::{Map, Value, json};

use crate::audit::{self, Actor, AuditedError};
use crate::repo::Origin;
use crate::storage::Storage;

/// One ECU's assignment: install `target` (an image repository target name) on ECU `serial`,
/// whose hardware is `hardware_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The ECU's serial.
    pub serial: EcuSerial,
    /// Its hardware id.
    pub hardware_id: String,
    /// The image repository target to install.
    pub target: String,
}

/// An `--ecu` that is not `SERIAL,HARDWARE_ID,TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not SERIAL,HARDWARE_ID,TARGET (e.g. BRK-1,brake-v2,ecu/brake-1.2.0.bin){detail}"
)]
pub struct AssignmentError {
    /// What was given.
    pub text: String,
    /// What was wrong with a part, if one was.
    pub detail: String,
}

impl std::str::FromStr for Assignment {
    type Err = AssignmentError;

    /// `SERIAL,HARDWARE_ID,TARGET`.
    fn from_str(text: &str) -> Result<Self, AssignmentError> {
        let refuse = |detail: String| AssignmentError {
            text: text.to_string(),
            detail,
        };
        let parts: Vec<&str> = text.splitn(3, ',').collect();
        match parts.as_slice() {
            [serial, hardware_id, target] if !hardware_id.is_empty() && !target.is_empty() => {
                Ok(Self {
                    serial: EcuSerial::parse(serial).map_err(|e| refuse(format!(": {e}")))?,
                    hardware_id: (*hardware_id).to_string(),
                    target: (*target).to_string(),
                })
            }
            _ => Err(refuse(String::new())),
        }
    }
}

/// The repository name (under the origin directory) of vehicle `vin`'s director metadata.
pub fn vehicle_repository(vin: &Vin) -> String {
    format!("director/vehicles/{vin}")
}

/// The vehicles that have a director repository.
pub fn vehicles(origin: &Origin) -> anyhow::Result<Vec<Vin>> {
    let mut vins: Vec<Vin> = origin
        .storage
        .list("director/vehicles")?
        .iter()
        .filter_map(|name| Vin::parse(name).ok())
        .collect();
    vins.sort();
    Ok(vins)
}

/// Signs a new director targets version for vehicle `vin` listing `assignments` (replacing the
/// previous ones), then its snapshot and timestamp, and records it in the audit log as an
/// `assign` by `actor`. Returns the targets version.
///
/// Each target also carries, signed, the update's `priority` class (the vehicle's link policy
/// reads it: whether cellular may be used) and `released` (Unix seconds: when a fix's cellular
/// deadline starts to run), so a depot relaying the metadata cannot make an update more urgent.
pub fn assign(
    origin: &Origin,
    actor: &Actor,
    vin: &Vin,
    assignments: &[Assignment],
    priority: Priority,
) -> Result<u64, AuditedError> {
    audit::audited(
        origin,
        actor,
        "assign",
        || {
            sign_assignment(
                origin,
                &mut ImageRepo::open(origin)?,
                vin,
                assignments,
                priority,
            )
        },
        |version| {
            let detail = json!({
                "vin": vin,
                "director_targets_version": version,
                "priority": priority.name(),
                "ecus": assignments.iter().map(|e| json!({
                    "serial": e.serial, "hardware_id": e.hardware_id, "target": e.target,
                })).collect::<Vec<_>>(),
            });
            (format!("director targets v{version} for {vin}"), detail)
        },
    )
}

/// [`assign`] without its audit entry, for the director service: a campaign's vehicles get
/// their targets when a wave opens, and the decision that opened it is the entry.
pub(crate) fn sign_assignment(
    origin: &Origin,
    image: &mut ImageRepo,
    vin: &Vin,
    assignments: &[Assignment],
    priority: Priority,
) -> anyhow::Result<u64> {
    if assignments.is_empty() {
        bail!("give at least one --ecu SERIAL,HARDWARE_ID,TARGET");
    }
    let mut by_target: BTreeMap<&str, Vec<&Assignment>> = BTreeMap::new();
    let mut serials = std::collections::BTreeSet::new();
    for assignment in assignments {
        if !serials.insert(&assignment.serial) {
            bail!("ECU {} is assigned twice", assignment.serial);
        }
        by_target
            .entry(assignment.target.as_str())
            .or_default()
            .push(assignment);
    }
    let repository = vehicle_repository(vin);
    origin.verified_fresh(&repository, &RENEWED)?;

    // What the image repository says of each target.
    let mut entries = Map::new();
    for (target, ecus) in by_target {
        let file = image
            .0
            .target_info(target)
            .with_context(|| format!("looking up {target} in the image repository"))?
            .with_context(|| format!("the image repository does not list {target}"))?;
        let image_custom = ImageCustom::of(target, &file)?;
        let mut ecu_identifiers = BTreeMap::new();
        for ecu in ecus {
            if !image_custom.fits(&ecu.hardware_id) {
                bail!(
                    "ECU {} is {} hardware, but the image repository releases {target} for {}",
                    ecu.serial,
                    ecu.hardware_id,
                    image_custom.hardware_ids.join(", ")
                );
            }
            ecu_identifiers.insert(
                ecu.serial.clone(),
                EcuIdentifier {
                    hardware_id: ecu.hardware_id.clone(),
                },
            );
        }
        let release_counter = image_custom
            .release_counter
            .with_context(|| format!("the image repository gives {target} no release_counter"))?;
        let director_custom = DirectorCustom {
            ecu_identifiers,
            release_counter: Some(release_counter),
            priority: Some(priority),
            released: u64::try_from(origin.now.unix()).ok(),
            blake3: image_custom.blake3,
        };
        entries.insert(
            target.to_string(),
            json!({
                "length": file.length,
                "hashes": file.hashes,
                "custom": director_custom.to_value(),
            }),
        );
    }

    copy_roots(origin, &repository)?;
    let version = targets_version(origin, vin) + 1;
    let signed = proto::tuf::build::targets(version, origin.expires("targets"), entries, &[]);
    publish_vehicle(origin, &repository, Some(&signed))?;
    Ok(version)
}

/// Signs a new director targets version for vehicle `vin` that lists nothing: the vehicle is to
/// keep what it runs (a halted campaign withdraws its release from vehicles that have not
/// installed it yet). Returns the targets version. Crate-only: the campaign decision that
/// withdraws is the audit entry.
pub(crate) fn withdraw(origin: &Origin, vin: &Vin) -> anyhow::Result<u64> {
    sign_empty(origin, vin)
}

/// Gives vehicle `vin` a director repository when it has none its vehicle could read (no
/// timestamp published): director targets that list nothing, then snapshot and timestamp,
/// signed as an assignment signs them. A registered vehicle with nothing assigned yet then
/// reads "nothing to install" (Uptane's way: the director signs at registration), and its
/// depot's prefetch of `director/<vin>` succeeds, instead of both failing on a missing
/// timestamp. Returns the targets version signed, or `None` when the vehicle's repository is
/// published already: an assignment, or the empty targets of an earlier registration, are
/// kept. Crate-only: the registration (or the director's start, for vehicles registered
/// before it did this) is the audit entry.
pub(crate) fn sign_unassigned(origin: &Origin, vin: &Vin) -> anyhow::Result<Option<u64>> {
    if published_targets_version(origin, vin) > 0 {
        return Ok(None);
    }
    // A version signed and never published (a stop before its timestamp) is passed over:
    // the vehicle never saw it.
    sign_empty(origin, vin).map(Some)
}

/// Signs the next director targets version of vehicle `vin`, listing nothing, then its
/// snapshot and timestamp.
fn sign_empty(origin: &Origin, vin: &Vin) -> anyhow::Result<u64> {
    let repository = vehicle_repository(vin);
    origin.verified_fresh(&repository, &RENEWED)?;
    copy_roots(origin, &repository)?;
    let version = targets_version(origin, vin) + 1;
    let signed = proto::tuf::build::targets(version, origin.expires("targets"), Map::new(), &[]);
    publish_vehicle(origin, &repository, Some(&signed))?;
    Ok(version)
}

/// The version of vehicle `vin`'s director targets (0: none signed yet).
pub fn targets_version(origin: &Origin, vin: &Vin) -> u64 {
    origin
        .latest(&vehicle_repository(vin), "targets")
        .map_or(0, |(version, _)| version)
}

/// The version of vehicle `vin`'s director targets that its vehicle sees: the one its
/// timestamp's snapshot pins (0: none published). Lower than [`targets_version`] when a stop
/// came between the signing of targets and the snapshot and timestamp that publish them.
pub fn published_targets_version(origin: &Origin, vin: &Vin) -> u64 {
    let repository = vehicle_repository(vin);
    let pinned = || -> Option<u64> {
        let (_, timestamp) = origin.latest(&repository, "timestamp").ok()?;
        let snapshot = timestamp["meta"]["snapshot.json"]["version"].as_u64()?;
        let bytes = origin
            .read_metadata(&repository, &format!("{snapshot}.snapshot.json"))
            .ok()?;
        let snapshot: Value = serde_json::from_slice(&bytes).ok()?;
        snapshot["signed"]["meta"]["targets.json"]["version"].as_u64()
    };
    pinned().unwrap_or(0)
}

/// Signs `targets` (when given) for a vehicle's repository with the director's targets key,
/// then a new snapshot and timestamp.
fn publish_vehicle(
    origin: &Origin,
    repository: &str,
    targets: Option<&Value>,
) -> anyhow::Result<()> {
    if let Some(targets) = targets {
        origin.write(
            repository,
            "targets",
            targets,
            &[&origin.key("director", "targets")?],
        )?;
    }
    origin.publish(repository)
}

/// What an assignment or its withdrawal signs anew in a vehicle's repository.
const RENEWED: [&str; 3] = ["targets", "snapshot", "timestamp"];

/// Refuses a rotation of the director's `role` key unless every vehicle's repository, which
/// [`after_rotation`] then signs on top of, verifies.
pub(crate) fn before_rotation(origin: &Origin, role: &str) -> anyhow::Result<()> {
    let renews: &[&str] = if role == "targets" {
        &RENEWED
    } else {
        &RENEWED[1..]
    };
    for vin in vehicles(origin)? {
        origin.verified(&vehicle_repository(&vin), renews)?;
    }
    Ok(())
}

/// Brings vehicle `vin`'s director repository up to date after the director's `role` key was
/// rotated: the new root version copied in, the targets re-signed with the new key (when it is
/// the targets key), and a new snapshot and timestamp. Crate-only: it is verified before the
/// rotation ([`before_rotation`]), since after it the vehicle's files are signed with a key its
/// new root no longer lists.
pub(crate) fn after_rotation(origin: &Origin, vin: &Vin, role: &str) -> anyhow::Result<()> {
    let repository = vehicle_repository(vin);
    copy_roots(origin, &repository)?;
    let resigned = if role == "targets" {
        let (version, signed) = origin.latest(&repository, "targets")?;
        let mut resigned = signed.clone();
        resigned["version"] = Value::from(version + 1);
        resigned["expires"] = Value::from(origin.expires("targets").to_string());
        Some(resigned)
    } else {
        None
    };
    publish_vehicle(origin, &repository, resigned.as_ref())
}

/// Completes a rotation of the director's keys that stopped before it reached vehicle `vin`
/// (`origin rotate` cut short): when the vehicle's repository holds an older root than the
/// director's, it is verified on its own chain, as [`before_rotation`] verifies it, then
/// brought up as [`after_rotation`] brings it (the new roots copied in, targets re-signed with
/// the current key, snapshot and timestamp). Until then its vehicle would go on trusting the
/// keys the rotation retired. `false` when it was up to date.
pub(crate) fn catch_up(origin: &Origin, vin: &Vin) -> anyhow::Result<bool> {
    let repository = vehicle_repository(vin);
    let director = origin.latest_version("director", "root")?.unwrap_or(0);
    let copied = origin.latest_version(&repository, "root")?.unwrap_or(0);
    if copied >= director {
        return Ok(false);
    }
    origin.verified(&repository, &RENEWED)?;
    after_rotation(origin, vin, "targets")?;
    Ok(true)
}

/// Copies every director root version into the vehicle's repository (a vehicle follows root
/// rotations from there).
fn copy_roots(origin: &Origin, repository: &str) -> anyhow::Result<()> {
    let storage = &origin.storage;
    let to = Origin::metadata_key(repository);
    let copied = storage.list(&to)?;
    for name in storage.list(&Origin::metadata_key("director"))? {
        if name.ends_with(".root.json") && !copied.contains(&name) {
            let bytes = origin.read_metadata("director", &name)?;
            storage.write(&format!("{to}/{name}"), &bytes)?;
        }
    }
    Ok(())
}

/// A TUF client over the image repository's files, trusting its first root.
/// The image repository as a vehicle reads it (from its first root, every check made).
pub(crate) fn image_updater(
    origin: &Origin,
) -> anyhow::Result<BlockingUpdater<StoredRemote, MemoryStore>> {
    let root = origin.read_metadata("image", "1.root.json")?;
    let mut local = MemoryStore::default();
    local.0.insert("root".into(), root);
    let mut updater = BlockingUpdater::new(
        StoredRemote {
            storage: origin.storage.clone(),
            repository: "image".into(),
        },
        local,
        origin.now,
        Limits::default(),
    )?;
    updater
        .refresh()
        .context("the image repository does not verify (run `origin verify`)")?;
    Ok(updater)
}

/// The image repository as assignments read it: its chain verified (expiry included, so that a
/// refusal names its file), then loaded as a vehicle loads it. Opened once for a batch of
/// assignments (a wave opening), not once per vehicle.
pub(crate) struct ImageRepo(BlockingUpdater<StoredRemote, MemoryStore>);

impl ImageRepo {
    /// The image repository of `origin`, verified.
    pub(crate) fn open(origin: &Origin) -> anyhow::Result<Self> {
        crate::chain::verify(&origin.storage, origin.now, "image", &[])?;
        Ok(Self(image_updater(origin)?))
    }
}

impl std::fmt::Debug for ImageRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRepo").finish_non_exhaustive()
    }
}

/// A repository read from the origin's storage.
#[derive(Debug)]
pub(crate) struct StoredRemote {
    storage: Storage,
    /// The repository (`image`).
    repository: String,
}

impl Remote for StoredRemote {
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        match self.storage.read(&format!("{}/{path}", self.repository)) {
            Ok(Some(bytes)) if bytes.len() as u64 > max_bytes => Err(FetchError::TooLong),
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(FetchError::NotFound),
            Err(error) => Err(FetchError::Other(error.to_string())),
        }
    }
}
