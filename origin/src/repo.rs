//! The origin's two TUF repositories on disk (`image/` and `director/` under the origin
//! directory), each `metadata/` (consistent-snapshot names: `N.root.json`, `N.targets.json`,
//! `N.snapshot.json`, and `timestamp.json`) and, for the image repository, `targets/` with each
//! image under `<dir>/<hash>.<name>` for each of its hashes.
//!
//! Where those files are kept is the origin's [`Storage`]: the origin directory itself by
//! default, or object storage that `DIR/storage.toml` names.
//!
//! Offline keys (both roots, the image repository's targets) live in a key store the operator
//! names on every command that needs them: a directory kept off the origin machine otherwise,
//! or a PKCS #11 token ([`KeyStore`]). Online keys (snapshot, timestamp, the director's targets)
//! live in the origin's `keys/`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use proto::tuf::Time;
use proto::tuf::build::{self, RoleSpec};
use proto::tuf::keys::KeyType;
use proto::tuf::signer::Signer;
use serde_json::{Map, Value};

use crate::chain;
pub use crate::chain::latest_version;
use crate::keystore::{KeyStore, NewKey, ReadKey, RoleKey};
use crate::storage::{Storage, StorageError};

/// The two repositories.
pub const REPOSITORIES: [&str; 2] = ["image", "director"];
/// Roles whose keys are offline, per repository: both roots, and the image repository's targets
/// and every role it delegates to (a supplier's or ECU family's key).
pub fn is_offline(repository: &str, role: &str) -> bool {
    role == "root" || (repository == "image" && (role == "targets" || !ROLES.contains(&role)))
}

/// Checks the name of a delegated role: 1 to 64 of `a-z 0-9 - _`, not a top-level role's.
pub fn check_role_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid || ROLES.contains(&name) {
        bail!(
            "role name {name:?} must be 1 to 64 of a-z, 0-9, - and _, and not root, targets, snapshot or timestamp"
        );
    }
    Ok(())
}
/// The top-level roles.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// How long each role's metadata stays valid when signed.
pub fn lifetime_days(role: &str) -> i64 {
    match role {
        "root" => 365,
        "targets" => 90,
        "snapshot" => 7,
        // Short, so that a depot relaying metadata cannot freeze a vehicle for long.
        _ => 1,
    }
}

/// Days before its expiry that `origin timestamp` signs a snapshot again.
pub const SNAPSHOT_RENEW_DAYS: i64 = 2;

/// An origin directory and the offline key directory given for this command.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The origin directory.
    pub dir: PathBuf,
    /// Where offline keys are, when the command needs them.
    pub offline_keys: Option<KeyStore>,
    /// The clock.
    pub now: Time,
    /// Where the repositories are kept.
    pub storage: Storage,
}

impl Origin {
    /// The origin in directory `dir`, its repositories in the directory too.
    pub fn new(dir: PathBuf, offline_keys: Option<KeyStore>, now: Time) -> Self {
        let storage = Storage::local(&dir);
        Self {
            dir,
            offline_keys,
            now,
            storage,
        }
    }

    /// The origin in directory `dir`, its repositories where its `storage.toml` says (in the
    /// directory when there is none).
    ///
    /// # Errors
    /// An unreadable or wrong `storage.toml`.
    pub fn open(
        dir: PathBuf,
        offline_keys: Option<KeyStore>,
        now: Time,
    ) -> Result<Self, StorageError> {
        let storage = Storage::of_origin(&dir)?;
        Ok(Self {
            dir,
            offline_keys,
            now,
            storage,
        })
    }

    /// A repository's metadata directory, as a storage path (`image/metadata`).
    pub fn metadata_key(repository: &str) -> String {
        format!("{repository}/metadata")
    }

    /// Metadata file `name` of `repository` (`3.targets.json`), read from the storage.
    ///
    /// # Errors
    /// When it is missing or cannot be read; the message names it.
    pub fn read_metadata(&self, repository: &str, name: &str) -> anyhow::Result<Vec<u8>> {
        let key = format!("{}/{name}", Self::metadata_key(repository));
        self.storage
            .read(&key)?
            .with_context(|| format!("{}: no such file", self.storage.describe(&key)))
    }

    /// The highest N of `repository`'s `N.<role>.json` files; `None` when there is none.
    ///
    /// # Errors
    /// When the metadata cannot be listed.
    pub fn latest_version(&self, repository: &str, role: &str) -> anyhow::Result<Option<u64>> {
        Ok(chain::latest_stored_version(
            &self.storage,
            &Self::metadata_key(repository),
            role,
        )?)
    }

    /// The store of a role's key and the key's name in it (`image-root`).
    pub fn key_store(&self, repository: &str, role: &str) -> anyhow::Result<(KeyStore, String)> {
        // A vehicle's director repository (`director/vehicles/<vin>`) signs with the
        // director's keys.
        let repository = repository.split('/').next().unwrap_or(repository);
        let name = format!("{repository}-{role}");
        if is_offline(repository, role) {
            let store = self.offline_keys.as_ref().with_context(|| {
                format!("the {repository} {role} key is offline: give --offline-keys DIR or a pkcs11: URI")
            })?;
            Ok((store.clone(), name))
        } else {
            Ok((KeyStore::Dir(self.online_keys_dir()), name))
        }
    }

    /// Where the online keys are: `keys/` in the origin directory.
    pub fn online_keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Loads a role's signing key.
    pub fn key(&self, repository: &str, role: &str) -> anyhow::Result<RoleKey> {
        let (store, name) = self.key_store(repository, role)?;
        store
            .load(&name)
            .with_context(|| format!("the {repository} {role} key"))
    }

    /// Refuses a signing of `repository` that writes `renews` anew with their keys unless the
    /// chain it builds on verifies and lists those keys ([`chain::verify`]).
    pub(crate) fn verified(&self, repository: &str, renews: &[&str]) -> anyhow::Result<()> {
        let verified = chain::verify(&self.storage, self.now, repository, renews)?;
        for role in renews {
            verified.check_key(role, &self.key(repository, role)?)?;
        }
        Ok(())
    }

    /// [`Self::verified`] for a signing that carries nothing over from a vehicle's files
    /// ([`chain::verify_fresh`]: a vehicle repository never published has its roots checked).
    pub(crate) fn verified_fresh(&self, repository: &str, renews: &[&str]) -> anyhow::Result<()> {
        let verified = chain::verify_fresh(&self.storage, self.now, repository, renews)?;
        for role in renews {
            verified.check_key(role, &self.key(repository, role)?)?;
        }
        Ok(())
    }

    /// When `role`'s metadata signed now expires.
    pub fn expires(&self, role: &str) -> Time {
        Time::from_unix(self.now.unix() + lifetime_days(role) * 86_400)
    }

    /// The latest version of `role` in `repository` and its `signed` part.
    pub fn latest(&self, repository: &str, role: &str) -> anyhow::Result<(u64, Value)> {
        let name = if role == "timestamp" {
            "timestamp.json".to_owned()
        } else {
            let version = self.latest_version(repository, role)?.with_context(|| {
                format!(
                    "{}: no {role} metadata",
                    self.storage.describe(&Self::metadata_key(repository))
                )
            })?;
            format!("{version}.{role}.json")
        };
        let file = self
            .storage
            .describe(&format!("{}/{name}", Self::metadata_key(repository)));
        let value: Value = serde_json::from_slice(&self.read_metadata(repository, &name)?)
            .with_context(|| format!("{file}: not JSON"))?;
        let version = value["signed"]["version"]
            .as_u64()
            .with_context(|| format!("{file}: field signed.version is missing"))?;
        Ok((version, value["signed"].clone()))
    }

    /// Signs and writes `signed` as `role`'s metadata (its `version` must already be set).
    /// Crate-only: it signs whatever it is given, so callers outside the crate go through the
    /// operations that check what they sign and, for images and assignments, record it in the
    /// audit log ([`crate::Release`], [`crate::director::assign`]).
    pub(crate) fn write(
        &self,
        repository: &str,
        role: &str,
        signed: &Value,
        keys: &[&dyn Signer],
    ) -> anyhow::Result<Vec<u8>> {
        let bytes = build::sign(signed, keys)?;
        let name = if role == "timestamp" {
            "timestamp.json".to_string()
        } else {
            let version = signed["version"].as_u64().unwrap_or(0);
            format!("{version}.{role}.json")
        };
        let key = format!("{}/{name}", Self::metadata_key(repository));
        if role == "timestamp" {
            self.storage.write(&key, &bytes)?;
        } else if !self.storage.create(&key, &bytes)? {
            // Taken atomically: of two signings racing for one version (two machines sharing
            // object storage), one gets it and the other stops here, before its snapshot.
            bail!(
                "{} exists: another signing took this version meanwhile (versions are never \
                 rewritten); run the command again",
                self.storage.describe(&key)
            );
        }
        if role == "timestamp" {
            // The timestamp completes the repository's new version: the origin's mesh node
            // serves it now. Signing stands if the note fails; the node's full pass finds it.
            if let Err(error) = crate::publish::note(&self.dir, repository) {
                tracing::warn!(
                    repository,
                    "noting the signing in the publish journal: {error}"
                );
            }
        }
        Ok(bytes)
    }

    /// A new repository: keys for every role (offline ones into `offline_keys`; of `kind`, or
    /// the store's default type), root, empty targets, snapshot and timestamp, all version 1.
    pub fn init_repository(&self, repository: &str, kind: Option<KeyType>) -> anyhow::Result<()> {
        let mut signing = Vec::new();
        for role in ROLES {
            let (store, name) = self.key_store(repository, role)?;
            let kind = kind.unwrap_or_else(|| store.default_key_type());
            signing.push(store.create(&name, kind)?);
        }
        let public: Vec<[proto::tuf::Key; 1]> =
            signing.iter().map(|key| [key.public_key()]).collect();
        let specs: Vec<RoleSpec<'_>> = ROLES
            .iter()
            .zip(&public)
            .map(|(name, keys)| RoleSpec {
                name,
                keys,
                threshold: 1,
            })
            .collect();
        let root = build::root(1, self.expires("root"), true, &specs);
        self.write(repository, "root", &root, &[&signing[0]])?;
        let targets = build::targets(1, self.expires("targets"), Map::new(), &[]);
        self.write(repository, "targets", &targets, &[&signing[1]])?;
        self.publish_snapshot(repository, &signing[2], &signing[3])
    }

    /// [`Self::publish_snapshot`] with the repository's own snapshot and timestamp keys (a
    /// vehicle's director repository uses the director's). Crate-only, as are the two below:
    /// they sign on top of what is on disk, which their callers have verified.
    pub(crate) fn publish(&self, repository: &str) -> anyhow::Result<()> {
        self.publish_snapshot(
            repository,
            &self.key(repository, "snapshot")?,
            &self.key(repository, "timestamp")?,
        )
    }

    /// Signs a new snapshot pinning the latest targets, then a new timestamp pinning it.
    pub(crate) fn publish_snapshot(
        &self,
        repository: &str,
        snapshot_key: &dyn Signer,
        timestamp_key: &dyn Signer,
    ) -> anyhow::Result<()> {
        let (targets_version, targets) = self.latest(repository, "targets")?;
        let mut pins = vec![("targets".to_string(), targets_version)];
        for role in delegated_roles(&targets) {
            let (version, _) = self.latest(repository, &role)?;
            pins.push((role, version));
        }
        let pins: Vec<(&str, u64)> = pins.iter().map(|(r, v)| (r.as_str(), *v)).collect();
        let snapshot_version = self
            .latest(repository, "snapshot")
            .map(|(version, _)| version + 1)
            .unwrap_or(1);
        let snapshot = build::snapshot(snapshot_version, self.expires("snapshot"), &pins);
        let bytes = self.write(repository, "snapshot", &snapshot, &[snapshot_key])?;
        self.publish_timestamp(repository, snapshot_version, &bytes, timestamp_key)
    }

    /// Signs a new timestamp pinning snapshot `version` (its bytes).
    pub(crate) fn publish_timestamp(
        &self,
        repository: &str,
        version: u64,
        snapshot: &[u8],
        key: &dyn Signer,
    ) -> anyhow::Result<()> {
        let timestamp_version = self
            .latest(repository, "timestamp")
            .map(|(version, _)| version + 1)
            .unwrap_or(1);
        let timestamp = build::timestamp(
            timestamp_version,
            self.expires("timestamp"),
            version,
            snapshot,
        );
        self.write(repository, "timestamp", &timestamp, &[key])?;
        Ok(())
    }

    /// Re-signs the timestamp over the current snapshot (run it well inside the timestamp's
    /// one-day lifetime, e.g. hourly); and the snapshot too (online key) when it has less than
    /// [`SNAPSHOT_RENEW_DAYS`] left, so a repository nobody changes for a week (a vehicle not
    /// reassigned) stays fresh.
    pub fn refresh_timestamp(&self, repository: &str) -> anyhow::Result<()> {
        let (_, snapshot) = self.latest(repository, "snapshot")?;
        let expires = snapshot["expires"]
            .as_str()
            .and_then(|t| Time::parse(t).ok())
            .map_or(i64::MIN, Time::unix);
        if expires - self.now.unix() < SNAPSHOT_RENEW_DAYS * 86_400 {
            self.verified(repository, &["snapshot", "timestamp"])?;
            return self.publish(repository);
        }
        self.verified(repository, &["timestamp"])?;
        let (version, _) = self.latest(repository, "snapshot")?;
        let bytes = self.read_metadata(repository, &format!("{version}.snapshot.json"))?;
        self.publish_timestamp(
            repository,
            version,
            &bytes,
            &self.key(repository, "timestamp")?,
        )
    }

    /// Signs a new version of targets role `role` of `repository` (`targets`, or a role it
    /// delegates to, which may only list names its paths allow) with `entries` added (name →
    /// target entry); then snapshot and timestamp. Crate-only: images are added through
    /// [`crate::Release`], which records each in the audit log.
    pub(crate) fn add_targets(
        &self,
        repository: &str,
        role: &str,
        entries: Map<String, Value>,
    ) -> anyhow::Result<u64> {
        if role != "targets" {
            let delegation = self.delegation(repository, role)?;
            for name in entries.keys() {
                if !delegation.is_delegated_path(name) {
                    bail!(
                        "role {role} may not sign for {name}: its paths are {}",
                        delegation.paths.as_deref().unwrap_or_default().join(", ")
                    );
                }
            }
        }
        self.verified(repository, &[role, "snapshot", "timestamp"])?;
        let (version, signed) = self.latest(repository, role)?;
        let mut targets = signed["targets"].as_object().cloned().unwrap_or_default();
        for (name, entry) in entries {
            if let Some(existing) = targets.get(&name) {
                if existing != &entry {
                    bail!(
                        "target {name} is already released with other content; release it under a new name"
                    );
                }
            }
            targets.insert(name, entry);
        }
        let mut next = signed.clone();
        next["version"] = Value::from(version + 1);
        next["expires"] = Value::from(self.expires("targets").to_string());
        next["targets"] = Value::Object(targets);
        self.write(repository, role, &next, &[&self.key(repository, role)?])?;
        self.publish(repository)?;
        Ok(version + 1)
    }

    /// The delegation of `role` from `repository`'s top-level targets, as a vehicle reads it.
    pub fn delegation(
        &self,
        repository: &str,
        role: &str,
    ) -> anyhow::Result<proto::tuf::DelegatedRole> {
        let (version, _) = self.latest(repository, "targets")?;
        let bytes = self.read_metadata(repository, &format!("{version}.targets.json"))?;
        let targets = proto::tuf::Signed::<proto::tuf::Targets>::from_bytes(&bytes, "targets")?;
        targets
            .signed
            .delegations
            .iter()
            .flat_map(|delegations| &delegations.roles)
            .find(|delegated| delegated.name == role)
            .cloned()
            .with_context(|| {
                format!("{repository} targets delegates to no role {role:?}: add it with `origin delegate`")
            })
    }

    /// Delegates `paths` (patterns like `brake/*`) of the image repository to a new role
    /// `role` with `key` (its holder, e.g. a supplier, signs that role's targets; or a key made
    /// in the offline store): a new top-level targets version listing the delegation (signed
    /// with the offline targets key), the role's empty version 1, then snapshot and timestamp.
    /// The role's key is kept in the offline store as `image-<role>`. Returns the new targets
    /// version and the role's key id.
    pub fn delegate(
        &self,
        role: &str,
        paths: &[String],
        key: &NewKey,
        terminating: bool,
    ) -> anyhow::Result<(u64, String)> {
        let repository = "image";
        check_role_name(role)?;
        if paths.is_empty() || paths.iter().any(String::is_empty) {
            bail!("give at least one --path pattern, none empty");
        }
        let (store, name) = self.key_store(repository, role)?;
        let key = key.read(&store)?;
        self.verified(repository, &["targets", "snapshot", "timestamp"])?;
        let targets_key = self.key(repository, "targets")?;
        let (version, signed) = self.latest(repository, "targets")?;
        if delegated_roles(&signed).iter().any(|name| name == role) {
            bail!("{repository} targets already delegates to {role}");
        }
        let key = match key {
            ReadKey::File(key, path) => {
                if !store.contains(&name)? {
                    store.keep_file(&name, path)?;
                }
                RoleKey::File(*key)
            }
            // A key left by a delegation cut short is taken again.
            ReadKey::Make(_) if store.contains(&name)? => store.load(&name)?,
            ReadKey::Make(kind) => store.create(&name, kind)?,
        };
        let public = key.public_key();
        let keyid = public.id();
        let mut next = signed.clone();
        let delegations = next["delegations"].as_object().cloned().unwrap_or_default();
        let mut delegation_keys = delegations
            .get("keys")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        delegation_keys.insert(keyid.clone(), public.to_json());
        let mut roles = delegations
            .get("roles")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        roles.push(serde_json::json!({
            "name": role,
            "keyids": [keyid],
            "threshold": 1,
            "paths": paths,
            "terminating": terminating,
        }));
        next["delegations"] = serde_json::json!({"keys": delegation_keys, "roles": roles});
        next["version"] = Value::from(version + 1);
        next["expires"] = Value::from(self.expires("targets").to_string());
        let role_targets = build::targets(1, self.expires("targets"), Map::new(), &[]);
        self.write(repository, role, &role_targets, &[&key])?;
        self.write(repository, "targets", &next, &[&targets_key])?;
        self.publish(repository)?;
        Ok((version + 1, keyid))
    }

    /// Replaces `role`'s key in `repository` with `new_key`: a root N+1 signed by the current
    /// root key and, for a root rotation, by the new one too; then the rotated role's
    /// metadata is re-signed with its new key. The old key stays in its store, retired.
    pub fn rotate(&self, repository: &str, role: &str, wanted: &NewKey) -> anyhow::Result<u64> {
        let (store, name) = self.key_store(repository, role)?;
        let wanted = wanted.read(&store)?;
        let mut renews = vec!["root"];
        renews.extend(resigned_by_rotation(role));
        self.verified(repository, &renews)?;
        let (version, signed) = self.latest(repository, "root")?;
        let old_root_key = self.key(repository, "root")?;
        // A key made in the store waits under a name of its own until the root lists it.
        let pending = format!("{name}.next-v{}", version + 1);
        let (new_key, file) = match wanted {
            ReadKey::File(key, path) => (RoleKey::File(*key), Some(path)),
            ReadKey::Make(_) if store.contains(&pending)? => (store.load(&pending)?, None),
            ReadKey::Make(kind) => (store.create(&pending, kind)?, None),
        };
        let public = new_key.public_key();
        let mut next = signed.clone();
        let keyid = public.id();
        let old_keyids = next["roles"][role]["keyids"].clone();
        next["keys"][&keyid] = public.to_json();
        next["roles"][role]["keyids"] = Value::from(vec![keyid.clone()]);
        // Keys no role uses any more leave the root.
        if let (Some(keys), Some(old)) = (next["keys"].as_object_mut(), old_keyids.as_array()) {
            for old_id in old.iter().filter_map(Value::as_str) {
                let used = ROLES.iter().any(|r| {
                    signed["roles"][r]["keyids"]
                        .as_array()
                        .is_some_and(|ids| *r != role && ids.iter().any(|id| id == old_id))
                });
                if !used && old_id != keyid {
                    keys.remove(old_id);
                }
            }
        }
        next["version"] = Value::from(version + 1);
        next["expires"] = Value::from(self.expires("root").to_string());
        let signers: Vec<&dyn Signer> = if role == "root" {
            vec![&old_root_key, &new_key]
        } else {
            vec![&old_root_key]
        };
        self.write(repository, "root", &next, &signers)?;
        store.retire(&name, version)?;
        match file {
            Some(path) => store.keep_file(&name, path)?,
            None => store.rename(&pending, &name)?,
        }
        match role {
            "targets" => {
                let (targets_version, targets) = self.latest(repository, "targets")?;
                let mut resigned = targets.clone();
                resigned["version"] = Value::from(targets_version + 1);
                self.write(repository, "targets", &resigned, &[&new_key])?;
                self.publish(repository)?;
            }
            "snapshot" | "timestamp" => {
                self.publish(repository)?;
            }
            _ => {}
        }
        Ok(version + 1)
    }
}

/// The roles besides the root that a rotation of `role`'s key signs anew in its repository.
pub(crate) fn resigned_by_rotation(role: &str) -> &'static [&'static str] {
    match role {
        "targets" => &["targets", "snapshot", "timestamp"],
        "snapshot" | "timestamp" => &["snapshot", "timestamp"],
        _ => &[],
    }
}

/// The roles a targets role's `signed` part delegates to, in its order.
pub fn delegated_roles(targets: &Value) -> Vec<String> {
    targets["delegations"]["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|role| role["name"].as_str().map(str::to_string))
        .collect()
}
