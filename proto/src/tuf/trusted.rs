//! The metadata a client trusts, and the only ways to change it: each `update_*` takes the
//! bytes of one file, checks them against what is already trusted, and either takes them or
//! returns why not. The order is fixed by the spec (root, timestamp, snapshot, targets, then
//! delegated targets); the checks are python-tuf's `TrustedMetadataSet`, so that our answers
//! match the reference implementation's on every fixture.

use std::collections::BTreeMap;

use super::metadata::{MetaFile, Role, Root, Signed, Snapshot, Targets, Timestamp};
use super::{Time, TufError};

/// Trusted root, timestamp, snapshot and targets (top-level and delegated), at one reference time.
#[derive(Debug, Clone)]
pub struct TrustedSet {
    now: Time,
    root: Signed<Root>,
    timestamp: Option<Signed<Timestamp>>,
    snapshot: Option<Signed<Snapshot>>,
    targets: BTreeMap<String, Signed<Targets>>,
}

impl TrustedSet {
    /// Starts from a root the client already trusts (shipped with it or stored earlier). It must
    /// be signed by its own root threshold; it may have expired (a newer one may follow).
    pub fn new(root: &[u8], now: Time) -> Result<Self, TufError> {
        let root = Signed::<Root>::from_bytes(root, "root.json")?;
        verify_by_root(&root, &root.signed, "root")?;
        Ok(Self {
            now,
            root,
            timestamp: None,
            snapshot: None,
            targets: BTreeMap::new(),
        })
    }

    /// The reference time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The trusted root.
    pub fn root(&self) -> &Signed<Root> {
        &self.root
    }

    /// The trusted timestamp, once loaded.
    pub fn timestamp(&self) -> Option<&Signed<Timestamp>> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, once loaded.
    pub fn snapshot(&self) -> Option<&Signed<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// A trusted targets role (`targets` or a delegated one), once loaded.
    pub fn targets(&self, role: &str) -> Option<&Signed<Targets>> {
        self.targets.get(role)
    }

    /// Replaces the root with version N+1, which must be signed by the threshold of the
    /// current root's root keys and by the threshold of its own.
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<(), TufError> {
        if self.timestamp.is_some() {
            return Err(TufError::Repository(
                "root cannot change after the timestamp is loaded".into(),
            ));
        }
        let next_version = self.root.signed.version() + 1;
        let file = format!("{next_version}.root.json");
        let new = Signed::<Root>::from_bytes(bytes, &file)?;
        verify_by_root(&new, &self.root.signed, "root")?;
        if new.signed.version() != next_version {
            return Err(TufError::BadVersion {
                role: "root".into(),
                detail: format!(
                    "{file} holds version {}, expected {next_version}",
                    new.signed.version()
                ),
            });
        }
        verify_by_root(&new, &new.signed, "root")?;
        self.root = new;
        Ok(())
    }

    /// Takes a timestamp: signed by the root's timestamp keys, no older than the trusted one
    /// (equal is [`TufError::EqualVersion`]: keep the old), not pinning an older snapshot, and
    /// not expired. Fails first if the final root has expired.
    pub fn update_timestamp(&mut self, bytes: &[u8]) -> Result<(), TufError> {
        if self.snapshot.is_some() {
            return Err(TufError::Repository(
                "the timestamp cannot change after the snapshot is loaded".into(),
            ));
        }
        self.check_not_expired("root", self.root.signed.expires())?;
        let new = Signed::<Timestamp>::from_bytes(bytes, "timestamp.json")?;
        verify_by_root(&new, &self.root.signed, "timestamp")?;
        if let Some(old) = &self.timestamp {
            let (old_version, new_version) = (old.signed.version(), new.signed.version());
            if new_version < old_version {
                return Err(TufError::BadVersion {
                    role: "timestamp".into(),
                    detail: format!("version {new_version} is older than trusted {old_version}"),
                });
            }
            if new_version == old_version {
                return Err(TufError::EqualVersion {
                    role: "timestamp".into(),
                    version: new_version,
                });
            }
            let (old_pin, new_pin) = (old.signed.snapshot.version, new.signed.snapshot.version);
            if new_pin < old_pin {
                return Err(TufError::BadVersion {
                    role: "snapshot".into(),
                    detail: format!(
                        "timestamp v{new_version} pins snapshot v{new_pin}, older than v{old_pin} pinned by trusted timestamp v{old_version}"
                    ),
                });
            }
        }
        // Taken before the expiry check, as python-tuf does: an expired local timestamp still
        // guards against rollback by the remote one.
        self.timestamp = Some(new);
        self.check_final_timestamp()
    }

    /// Takes a snapshot: matching the timestamp's pin (length and hashes, unless `trusted`, i.e.
    /// read back from our own store), signed by the root's snapshot keys, dropping no role and
    /// rolling back no role's version, and then being the final one (not expired, the version
    /// the timestamp pins).
    pub fn update_snapshot(&mut self, bytes: &[u8], trusted: bool) -> Result<(), TufError> {
        let Some(timestamp) = &self.timestamp else {
            return Err(TufError::Repository(
                "the snapshot cannot be loaded before the timestamp".into(),
            ));
        };
        if self.targets.contains_key("targets") {
            return Err(TufError::Repository(
                "the snapshot cannot change after targets are loaded".into(),
            ));
        }
        self.check_final_timestamp()?;
        if !trusted {
            timestamp.signed.snapshot.verify("snapshot.json", bytes)?;
        }
        let new = Signed::<Snapshot>::from_bytes(bytes, "snapshot.json")?;
        verify_by_root(&new, &self.root.signed, "snapshot")?;
        if let Some(old) = &self.snapshot {
            for (file, pin) in &old.signed.meta {
                let Some(new_pin) = new.signed.meta.get(file) else {
                    return Err(TufError::Repository(format!(
                        "the new snapshot drops {file}, which the trusted one lists"
                    )));
                };
                if new_pin.version < pin.version {
                    return Err(TufError::BadVersion {
                        role: file.trim_end_matches(".json").into(),
                        detail: format!(
                            "snapshot v{} lists it at v{}, older than v{} in trusted snapshot v{}",
                            new.signed.version(),
                            new_pin.version,
                            pin.version,
                            old.signed.version()
                        ),
                    });
                }
            }
        }
        self.snapshot = Some(new);
        self.check_final_snapshot()
    }

    /// Takes a targets role: `targets` delegated by the root, or a role delegated by an already
    /// trusted targets role. It must match the snapshot's pin (length, hashes, exact version),
    /// carry the delegator's threshold of signatures, and not have expired.
    pub fn update_delegated_targets(
        &mut self,
        bytes: &[u8],
        role: &str,
        delegator: &str,
    ) -> Result<(), TufError> {
        if self.snapshot.is_none() {
            return Err(TufError::Repository(
                "targets cannot be loaded before the snapshot".into(),
            ));
        }
        self.check_final_snapshot()?;
        let file = format!("{role}.json");
        let pin = self.snapshot_pin(role)?;
        pin.verify(&file, bytes)?;
        let new = Signed::<Targets>::from_bytes(bytes, &file)?;
        if delegator == "root" {
            verify_by_root(&new, &self.root.signed, role)?;
        } else {
            let Some(parent) = self.targets.get(delegator) else {
                return Err(TufError::Repository(format!(
                    "{role} is delegated by {delegator}, which is not loaded"
                )));
            };
            let delegations = parent.signed.delegations.as_ref();
            let Some(delegated) = delegations
                .and_then(|delegations| delegations.roles.iter().find(|r| r.name == role))
            else {
                return Err(TufError::Repository(format!(
                    "{delegator} does not delegate to {role}"
                )));
            };
            let keys = &delegations.map(|d| &d.keys).cloned().unwrap_or_default();
            new.verify(role, keys, &delegated.keys)?;
        }
        if new.signed.version() != pin.version {
            return Err(TufError::BadVersion {
                role: role.into(),
                detail: format!(
                    "{file} holds version {}, the snapshot pins {}",
                    new.signed.version(),
                    pin.version
                ),
            });
        }
        self.check_not_expired(role, new.signed.expires())?;
        self.targets.insert(role.to_string(), new);
        Ok(())
    }

    /// What the trusted snapshot says of `role`'s metadata file.
    pub fn snapshot_pin(&self, role: &str) -> Result<&MetaFile, TufError> {
        let file = format!("{role}.json");
        self.snapshot
            .as_ref()
            .and_then(|snapshot| snapshot.signed.meta.get(&file))
            .ok_or_else(|| TufError::Repository(format!("the snapshot does not list {file}")))
    }

    fn check_not_expired(&self, role: &str, expires: Time) -> Result<(), TufError> {
        if self.now >= expires {
            return Err(TufError::Expired {
                role: role.into(),
                expires,
                now: self.now,
            });
        }
        Ok(())
    }

    fn check_final_timestamp(&self) -> Result<(), TufError> {
        match &self.timestamp {
            Some(timestamp) => self.check_not_expired("timestamp", timestamp.signed.expires()),
            None => Err(TufError::Repository("no timestamp is loaded".into())),
        }
    }

    fn check_final_snapshot(&self) -> Result<(), TufError> {
        let (Some(timestamp), Some(snapshot)) = (&self.timestamp, &self.snapshot) else {
            return Err(TufError::Repository("no snapshot is loaded".into()));
        };
        self.check_not_expired("snapshot", snapshot.signed.expires())?;
        let pinned = timestamp.signed.snapshot.version;
        if snapshot.signed.version() != pinned {
            return Err(TufError::BadVersion {
                role: "snapshot".into(),
                detail: format!(
                    "version {} is not the version {pinned} the timestamp pins",
                    snapshot.signed.version()
                ),
            });
        }
        Ok(())
    }
}

fn verify_by_root<T: Role>(metadata: &Signed<T>, root: &Root, role: &str) -> Result<(), TufError> {
    let Some(keys) = root.roles.get(role) else {
        return Err(TufError::Repository(format!("root has no {role} role")));
    };
    metadata.verify(role, &root.keys, keys)
}
