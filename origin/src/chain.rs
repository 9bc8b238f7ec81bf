//! The chain a signing builds on. Before the origin signs anything on top of a repository's
//! metadata (a release, a delegation, a rotation, a timestamp, a vehicle's assignment), it
//! verifies that metadata with proto's TUF client ([`TrustedSet`], the checks a vehicle makes):
//! the root chain from `1.root.json`, then timestamp, snapshot, targets and every role they
//! delegate to. It refuses, naming the file and what failed, when any of it does not verify: a
//! file edited by someone who can write the origin directory but holds no key must never be
//! re-signed with one.
//!
//! Besides what the timestamp pins, it checks the newest file of each role, which is what the
//! signing reads: one newer than the published chain is left by a signing cut short, and must
//! be signed by its role's keys like any other. And it refuses a signing key that the verified
//! root (or delegation) does not list for its role, so that a repository swapped whole for one
//! of someone else's making is not signed on either.
//!
//! A vehicle's director repository (`director/vehicles/<vin>`) copies the director's root
//! files: the director repository is verified first, and the vehicle's roots must be its own.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use proto::tuf::signer::Signer;
use proto::tuf::{Key, Role, RoleKeys, Signed, Snapshot, Targets, Time, TrustedSet, TufError};

use crate::storage::{Storage, StorageError};

/// Why a signing refused the metadata it would build on. Each variant names the file, relative
/// to the origin directory (`image/metadata/3.targets.json`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The file does not verify.
    #[error("{}: {error}{note}; refusing to sign on top of it (run `origin verify`)", .file.display())]
    Unverified {
        /// The file.
        file: PathBuf,
        /// What the TUF client found wrong with it, naming the role or field.
        error: TufError,
        /// Where the file stands in the chain, when that is not the published one.
        note: String,
    },
    /// The file cannot be read.
    #[error("{}: {error}; refusing to sign on top of it (run `origin verify`)", .file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        error: String,
    },
    /// The metadata cannot be listed.
    #[error("{0}; refusing to sign on top of it")]
    Unlisted(StorageError),
    /// The verified metadata does not list a key this signing uses for its role.
    #[error(
        "{}: field {field} does not list key {keyid}, which signs {role} here; refusing to sign on top of it",
        .file.display()
    )]
    UnlistedKey {
        /// The root (or targets) file that lists the role's keys.
        file: PathBuf,
        /// Its field.
        field: String,
        /// The role.
        role: String,
        /// The key id of the key the signing would use.
        keyid: String,
    },
    /// A vehicle's root file that is not the director's, which it must copy.
    #[error(
        "{}: is not director/metadata/{name}, the director's root it copies; refusing to sign on top of it",
        .file.display()
    )]
    NotDirectorRoot {
        /// The vehicle's root file.
        file: PathBuf,
        /// Its name in both repositories.
        name: String,
    },
}

/// A repository whose chain verified (for a vehicle's, the director's, whose keys sign it): what
/// its root, and its top-level targets, say of the keys a signing may use.
#[derive(Debug)]
pub(crate) struct Verified {
    metadata: PathBuf,
    trusted: TrustedSet,
    /// The newest file of top-level targets: a new delegation's keys are listed there.
    targets_file: String,
}

/// Verifies `repository` (`image`, `director` or `director/vehicles/<vin>`) kept in `origin`,
/// at time `now`, before a signing
/// that writes `renews` anew. Expiry is checked, as a client checks it, for every role but
/// those: signing a role anew is how its expiry is mended (the hourly timestamp refresh must work
/// after a timestamp expired), so refusing on it would lock the operator out of the mend,
/// whereas everything else a vehicle checks (signatures, thresholds, versions, lengths and
/// hashes) can only go wrong through a change that no key holder made.
pub(crate) fn verify(
    origin: &Storage,
    now: Time,
    repository: &str,
    renews: &[&str],
) -> Result<Verified, ChainError> {
    if !repository.starts_with("director/vehicles/") {
        return Client::new(origin, now, repository).run(renews);
    }
    // A vehicle's repository is signed with the director's keys, which the director's root
    // lists; the signing copies that root in (a vehicle left behind by a rotation cut short
    // catches up). The director's other roles are not signed on here.
    let director =
        Client::new(origin, now, "director").run(&["targets", "snapshot", "timestamp"])?;
    let vehicle_roots = origin
        .list(&format!("{repository}/metadata"))
        .map_err(ChainError::Unlisted)?;
    if !vehicle_roots.is_empty() {
        same_roots(origin, repository)?;
        Client::new(origin, now, repository).run(renews)?;
    }
    Ok(director)
}

/// [`verify`] for a signing that carries nothing over from a vehicle's files (an assignment
/// or a withdrawal signs its targets anew): a vehicle repository that was never published (no
/// timestamp: its first signing stopped after its targets, before its snapshot and timestamp)
/// has nothing a vehicle trusts, so only its roots are checked (they must be the director's),
/// and the signing publishes it. Anything else is [`verify`]'s.
pub(crate) fn verify_fresh(
    origin: &Storage,
    now: Time,
    repository: &str,
    renews: &[&str],
) -> Result<Verified, ChainError> {
    let unpublished = repository.starts_with("director/vehicles/")
        && !origin
            .exists(&format!("{repository}/metadata/timestamp.json"))
            .map_err(ChainError::Unlisted)?;
    if !unpublished {
        return verify(origin, now, repository, renews);
    }
    let director =
        Client::new(origin, now, "director").run(&["targets", "snapshot", "timestamp"])?;
    same_roots(origin, repository)?;
    Ok(director)
}

impl Verified {
    /// Refuses `key` for `role` (a top-level role, or one the top-level targets delegates to)
    /// when the verified metadata does not list it.
    pub(crate) fn check_key(&self, role: &str, key: &dyn Signer) -> Result<(), ChainError> {
        let trusted = &self.trusted;
        let keyid = key.public_key().id();
        let root = trusted.root();
        let (listed, file, field) = match root.signed.roles.get(role) {
            Some(keys) => (
                keys.keyids.contains(&keyid),
                format!("{}.root.json", root.signed.version()),
                format!("signed.roles.{role}.keyids"),
            ),
            None => {
                let delegated = trusted
                    .targets("targets")
                    .and_then(|targets| targets.signed.delegations.as_ref())
                    .and_then(|delegations| delegations.roles.iter().find(|r| r.name == role));
                (
                    delegated.is_some_and(|d| d.keys.keyids.contains(&keyid)),
                    self.targets_file.clone(),
                    format!("signed.delegations.roles[{role}].keyids"),
                )
            }
        };
        if listed {
            return Ok(());
        }
        Err(ChainError::UnlistedKey {
            file: self.metadata.join(file),
            field,
            role: role.to_string(),
            keyid,
        })
    }
}

/// One run of the TUF client over a repository's `metadata/` as stored.
struct Client<'a> {
    /// Where the repositories are.
    origin: &'a Storage,
    now: Time,
    /// The metadata directory, relative to the origin directory (for messages).
    metadata: PathBuf,
    /// The newest file of each role and when it expires, for the expiry checks.
    newest: BTreeMap<String, (String, Time)>,
}

impl<'a> Client<'a> {
    fn new(origin: &'a Storage, now: Time, repository: &str) -> Self {
        Self {
            origin,
            now,
            metadata: Path::new(repository).join("metadata"),
            newest: BTreeMap::new(),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ChainError> {
        let file = self.metadata.join(name);
        match self.origin.read(&file.to_string_lossy()) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(ChainError::Unreadable {
                file,
                error: "no such file".into(),
            }),
            Err(error) => Err(ChainError::Unreadable {
                file,
                error: error.to_string(),
            }),
        }
    }

    /// The highest version of `role` stored (`None`: none, or the listing failed).
    fn stored_version(&self, role: &str) -> Option<u64> {
        latest_stored_version(self.origin, &self.metadata.to_string_lossy(), role)
            .ok()
            .flatten()
    }

    /// The refusal of file `name` for `error`; `pinned_by` says which file pins it, for the
    /// errors that compare it with that pin.
    fn refuse(&self, name: &str, pinned_by: &str) -> impl FnOnce(TufError) -> ChainError {
        let file = self.metadata.join(name);
        let pinned_by = pinned_by.to_string();
        move |error| {
            let note = match &error {
                TufError::LengthOrHashMismatch { .. } | TufError::BadVersion { .. } => pinned_by,
                _ => String::new(),
            };
            ChainError::Unverified { file, error, note }
        }
    }

    /// The highest version of `role` on disk (at least `pinned`, whose file was read).
    fn newest_version(&self, role: &str, pinned: u64) -> u64 {
        self.stored_version(role)
            .map_or(pinned, |newest| newest.max(pinned))
    }

    /// Runs the client over the whole chain, then checks the expiry of every role but `renews`.
    fn run(mut self, renews: &[&str]) -> Result<Verified, ChainError> {
        let mut trusted = self.root_chain()?;
        let snapshot = self.timestamp_and_snapshot(&mut trusted)?;
        self.targets_roles(&mut trusted, &snapshot)?;
        for (role, (file, expires)) in &self.newest {
            if !renews.contains(&role.as_str()) && self.now >= *expires {
                let error = TufError::Expired {
                    role: role.clone(),
                    expires: *expires,
                    now: self.now,
                };
                return Err(self.refuse(file, "")(error));
            }
        }
        let targets_file = self
            .newest
            .get("targets")
            .map(|(file, _)| file.clone())
            .unwrap_or_default();
        Ok(Verified {
            metadata: self.metadata,
            trusted,
            targets_file,
        })
    }

    /// The root chain from `1.root.json` to the newest root file.
    fn root_chain(&mut self) -> Result<TrustedSet, ChainError> {
        // The client runs at a reference time before anything expired, so that it makes every
        // check but expiry; [`Self::run`] checks expiry last, only for the roles kept.
        let mut trusted = TrustedSet::new(&self.read("1.root.json")?, Time::from_unix(i64::MIN))
            .map_err(self.refuse("1.root.json", ""))?;
        let latest = self.stored_version("root").unwrap_or(1);
        for version in 2..=latest {
            let name = format!("{version}.root.json");
            trusted
                .update_root(&self.read(&name)?)
                .map_err(self.refuse(&name, " (root chain from 1.root.json)"))?;
        }
        let file = format!("{latest}.root.json");
        let expires = trusted.root().signed.expires();
        self.newest.insert("root".into(), (file, expires));
        Ok(trusted)
    }

    /// The timestamp and the snapshot it pins (and a newer snapshot, if one is left); the
    /// pinned snapshot's file name.
    fn timestamp_and_snapshot(&mut self, trusted: &mut TrustedSet) -> Result<String, ChainError> {
        trusted
            .update_timestamp(&self.read("timestamp.json")?)
            .map_err(self.refuse("timestamp.json", ""))?;
        let Some(timestamp) = trusted.timestamp() else {
            let error = TufError::Repository("no timestamp is loaded".into());
            return Err(self.refuse("timestamp.json", "")(error));
        };
        let (pinned, expires) = (
            timestamp.signed.snapshot.version,
            timestamp.signed.expires(),
        );
        self.newest
            .insert("timestamp".into(), ("timestamp.json".into(), expires));
        let name = format!("{pinned}.snapshot.json");
        trusted
            .update_snapshot(&self.read(&name)?, false)
            .map_err(self.refuse(&name, " (pinned by timestamp.json)"))?;
        let root = &trusted.root().signed;
        let keys = root.roles.get("snapshot").cloned();
        self.newest_file::<Snapshot>("snapshot", pinned, &root.keys, keys)?;
        Ok(name)
    }

    /// `targets` and every role delegated to from it, as the snapshot pins them (and a newer
    /// file of each, if one is left).
    fn targets_roles(
        &mut self,
        trusted: &mut TrustedSet,
        snapshot: &str,
    ) -> Result<(), ChainError> {
        let note = format!(" (pinned by {snapshot})");
        let mut to_visit = vec![("targets".to_string(), "root".to_string())];
        let mut visited = BTreeSet::new();
        while let Some((role, delegator)) = to_visit.pop() {
            if !visited.insert(role.clone()) {
                continue;
            }
            let pin = trusted
                .snapshot_pin(&role)
                .map_err(self.refuse(snapshot, ""))?
                .version;
            let name = format!("{pin}.{role}.json");
            trusted
                .update_delegated_targets(&self.read(&name)?, &role, &delegator)
                .map_err(self.refuse(&name, &note))?;
            let (keys, role_keys) = if delegator == "root" {
                let root = &trusted.root().signed;
                (root.keys.clone(), root.roles.get(&role).cloned())
            } else {
                let delegations = trusted
                    .targets(&delegator)
                    .and_then(|parent| parent.signed.delegations.as_ref());
                let role_keys = delegations
                    .and_then(|d| d.roles.iter().find(|r| r.name == role))
                    .map(|delegated| delegated.keys.clone());
                let keys = delegations.map(|d| d.keys.clone()).unwrap_or_default();
                (keys, role_keys)
            };
            self.newest_file::<Targets>(&role, pin, &keys, role_keys)?;
            let children = trusted
                .targets(&role)
                .and_then(|targets| targets.signed.delegations.as_ref())
                .into_iter()
                .flat_map(|delegations| &delegations.roles)
                .map(|child| (child.name.clone(), role.clone()));
            to_visit.extend(children);
        }
        Ok(())
    }

    /// Checks the newest file of `role` when it is newer than the `pinned` version the client
    /// verified: signed by `role_keys` (looked up in `keys`), holding the version its name says.
    fn newest_file<T: Role>(
        &mut self,
        role: &str,
        pinned: u64,
        keys: &BTreeMap<String, Key>,
        role_keys: Option<RoleKeys>,
    ) -> Result<(), ChainError> {
        let newest = self.newest_version(role, pinned);
        let name = format!("{newest}.{role}.json");
        let bytes = self.read(&name)?;
        let note = if newest == pinned {
            String::new()
        } else {
            format!(" (newer than the {pinned}.{role}.json the chain pins)")
        };
        let refuse = |error| ChainError::Unverified {
            file: self.metadata.join(&name),
            error,
            note: note.clone(),
        };
        let parsed = Signed::<T>::from_bytes(&bytes, &name).map_err(refuse)?;
        if newest != pinned {
            let role_keys = role_keys.ok_or_else(|| {
                refuse(TufError::Repository(format!(
                    "no role lists the keys of {role}"
                )))
            })?;
            parsed.verify(role, keys, &role_keys).map_err(refuse)?;
            if parsed.signed.version() != newest {
                return Err(refuse(TufError::BadVersion {
                    role: role.to_string(),
                    detail: format!("{name} holds version {}", parsed.signed.version()),
                }));
            }
        }
        self.newest
            .insert(role.to_string(), (name, parsed.signed.expires()));
        Ok(())
    }
}

/// Refuses a root file of vehicle repository `repository` that is not the director's own of the
/// same version: the vehicle follows the director's root chain from there.
fn same_roots(origin: &Storage, repository: &str) -> Result<(), ChainError> {
    let dir = format!("{repository}/metadata");
    let latest = latest_stored_version(origin, &dir, "root")
        .map_err(ChainError::Unlisted)?
        .unwrap_or(0);
    for version in 1..=latest {
        let name = format!("{version}.root.json");
        let file = Path::new(repository).join("metadata").join(&name);
        let ours = match origin.read(&format!("{dir}/{name}")) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(ChainError::Unreadable {
                    file,
                    error: "no such file".into(),
                });
            }
            Err(error) => {
                return Err(ChainError::Unreadable {
                    file,
                    error: error.to_string(),
                });
            }
        };
        let director = origin
            .read(&format!("director/metadata/{name}"))
            .ok()
            .flatten();
        if director.as_ref() != Some(&ours) {
            return Err(ChainError::NotDirectorRoot { file, name });
        }
    }
    Ok(())
}

/// The highest N of the `N.<role>.json` files stored in directory `dir` (`image/metadata`).
///
/// # Errors
/// When it cannot be listed.
pub fn latest_stored_version(
    storage: &Storage,
    dir: &str,
    role: &str,
) -> Result<Option<u64>, StorageError> {
    Ok(highest_version(
        storage.list(dir)?.iter().map(String::as_str),
        role,
    ))
}

/// The highest N of the names `N.<role>.json` among `names`.
fn highest_version<'a>(names: impl Iterator<Item = &'a str>, role: &str) -> Option<u64> {
    let suffix = format!(".{role}.json");
    names
        .filter_map(|name| name.strip_suffix(&suffix)?.parse::<u64>().ok())
        .max()
}

/// The highest N of the `N.<role>.json` files in the local directory `dir`.
///
/// # Errors
/// When it cannot be listed.
pub fn latest_version(dir: &Path, role: &str) -> anyhow::Result<Option<u64>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(highest_version(names.iter().map(String::as_str), role))
}
