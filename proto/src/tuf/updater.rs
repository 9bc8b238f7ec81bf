//! The TUF client workflow (specification §5) over a [`Remote`] repository and a
//! [`LocalStore`] of trusted metadata, with the same steps and checks as python-tuf's
//! `ngclient.Updater`: root rotation up to a limit, timestamp, snapshot and top-level targets,
//! each read back from the local store first (so rollback checks hold across runs), then
//! delegated targets searched pre-order depth-first when a target is looked up.

use super::metadata::{Role, TargetFile};
use super::{Time, TrustedSet, TufError};

/// Why a [`Remote`] could not give a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The repository has no such file (HTTP 403/404, a peer that does not hold it).
    NotFound,
    /// The file is longer than the limit asked for (endless data).
    TooLong,
    /// Anything else (the transport failed, a timeout), in words.
    Other(String),
}

/// Where the repository's files come from.
pub trait Remote {
    /// The file at `path` in the repository (`metadata/1.root.json`,
    /// `targets/ecu/<hash>.fw.bin`), at most `max_bytes` long: the implementation must stop
    /// reading after `max_bytes` and return [`FetchError::TooLong`] if there is more.
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError>;
}

/// Where trusted metadata is kept between runs, one file per role (`root`, `timestamp`,
/// `snapshot`, `targets`, delegated role names).
pub trait LocalStore {
    /// The stored bytes of `role`'s metadata, if any.
    fn load(&self, role: &str) -> Option<Vec<u8>>;
    /// Stores `role`'s metadata durably, replacing what was there.
    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), String>;
}

/// Trusted metadata in memory (tests, simulations, and a vehicle that keeps none on disk).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore(pub std::collections::BTreeMap<String, Vec<u8>>);

impl LocalStore for MemoryStore {
    fn load(&self, role: &str) -> Option<Vec<u8>> {
        self.0.get(role).cloned()
    }

    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), String> {
        self.0.insert(role.to_string(), bytes.to_vec());
        Ok(())
    }
}

/// How fresh a client's trusted metadata is: what its newest stored timestamp says. A client
/// must not install when it is not [`Freshness::Fresh`]: it may be cut off from the repository
/// (a vehicle long offline), or be fed old metadata (a freeze attack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No timestamp was ever stored: the client has never refreshed.
    NeverRefreshed,
    /// The stored timestamp holds until this time.
    Fresh(Time),
    /// The stored timestamp expired at this time.
    Expired(Time),
}

/// The freshness of the metadata in `local` at `now`. Only the stored timestamp is read: it was
/// verified before it was stored, and a refresh stores a newer one only once that verified.
pub fn freshness(local: &impl LocalStore, now: Time) -> Freshness {
    let Some(bytes) = local.load("timestamp") else {
        return Freshness::NeverRefreshed;
    };
    match super::metadata::Signed::<super::metadata::Timestamp>::from_bytes(
        &bytes,
        "timestamp.json",
    ) {
        Ok(timestamp) if timestamp.signed.expires() > now => {
            Freshness::Fresh(timestamp.signed.expires())
        }
        Ok(timestamp) => Freshness::Expired(timestamp.signed.expires()),
        // An unreadable stored timestamp gives no freshness at all.
        Err(_) => Freshness::NeverRefreshed,
    }
}

/// Upper bounds on what the client downloads and how far it follows chains. The byte limits
/// apply where signed metadata gives no length (python-tuf's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one root file.
    pub root_bytes: u64,
    /// Bytes of the timestamp.
    pub timestamp_bytes: u64,
    /// Bytes of the snapshot, when the timestamp gives no length.
    pub snapshot_bytes: u64,
    /// Bytes of a targets file, when the snapshot gives no length.
    pub targets_bytes: u64,
    /// Root versions followed in one refresh.
    pub max_root_rotations: u64,
    /// Targets roles visited looking up one target.
    pub max_delegations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            root_bytes: 512_000,
            timestamp_bytes: 16_384,
            snapshot_bytes: 2_000_000,
            targets_bytes: 5_000_000,
            max_root_rotations: 32,
            max_delegations: 32,
        }
    }
}

/// A TUF client: refreshes trusted metadata from a repository and looks up and checks targets.
#[derive(Debug)]
pub struct Updater<R, L> {
    trusted: TrustedSet,
    remote: R,
    local: L,
    limits: Limits,
    refreshed: bool,
}

impl<R: Remote, L: LocalStore> Updater<R, L> {
    /// Starts from the root in `local` (it must be there: a client ships with its first root).
    pub fn new(remote: R, local: L, now: Time, limits: Limits) -> Result<Self, TufError> {
        let root = local.load("root").ok_or_else(|| TufError::Fetch {
            file: "root.json".into(),
            detail: "no trusted root in the local store".into(),
        })?;
        Ok(Self {
            trusted: TrustedSet::new(&root, now)?,
            remote,
            local,
            limits,
            refreshed: false,
        })
    }

    /// What is trusted now.
    pub fn trusted(&self) -> &TrustedSet {
        &self.trusted
    }

    /// The local store.
    pub fn local(&self) -> &L {
        &self.local
    }

    /// Brings root, timestamp, snapshot and top-level targets up to date (§5.3–5.6). Once per
    /// updater: a later refresh needs a new one, started from the store.
    pub fn refresh(&mut self) -> Result<(), TufError> {
        if self.refreshed {
            return Err(TufError::Repository(
                "this updater has refreshed already; start a new one".into(),
            ));
        }
        self.refreshed = true;
        self.load_root()?;
        self.load_timestamp()?;
        self.load_snapshot()?;
        self.load_targets("targets", "root")?;
        Ok(())
    }

    /// The signed description of `target_path`, searching delegations pre-order depth-first
    /// from `targets`. `Ok(None)`: no role that may sign for it lists it.
    pub fn target_info(&mut self, target_path: &str) -> Result<Option<TargetFile>, TufError> {
        if self.trusted.targets("targets").is_none() {
            self.refresh()?;
        }
        let mut to_visit = vec![("targets".to_string(), "root".to_string())];
        let mut visited = std::collections::BTreeSet::new();
        let mut budget = self.limits.max_delegations;
        while budget > 0 {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&role) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let Some(targets) = self.trusted.targets(&role) else {
                return Err(TufError::Repository(format!("{role} did not load")));
            };
            if let Some(file) = targets.signed.targets.get(target_path) {
                return Ok(Some(file.clone()));
            }
            visited.insert(role.clone());
            budget -= 1;
            if let Some(delegations) = &targets.signed.delegations {
                let mut children: Vec<(String, String)> = Vec::new();
                for child in delegations.roles_for_target(target_path) {
                    children.push((child.name.clone(), role.clone()));
                    if child.terminating {
                        to_visit.clear();
                    }
                }
                children.reverse();
                to_visit.extend(children);
            }
        }
        Ok(None)
    }

    /// The name of every target any role reachable from `targets` lists (loading each role,
    /// within the delegation budget). A name here is not yet trusted for its path: ask
    /// [`Self::target_info`], which applies the delegations' path rules — a cache that
    /// prefetches a repository's images does both.
    pub fn target_names(&mut self) -> Result<std::collections::BTreeSet<String>, TufError> {
        if self.trusted.targets("targets").is_none() {
            self.refresh()?;
        }
        let mut names = std::collections::BTreeSet::new();
        let mut to_visit = vec![("targets".to_string(), "root".to_string())];
        let mut visited = std::collections::BTreeSet::new();
        let mut budget = self.limits.max_delegations;
        while budget > 0 {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if !visited.insert(role.clone()) {
                continue;
            }
            budget -= 1;
            self.load_targets(&role, &parent)?;
            let Some(targets) = self.trusted.targets(&role) else {
                return Err(TufError::Repository(format!("{role} did not load")));
            };
            names.extend(targets.signed.targets.keys().cloned());
            if let Some(delegations) = &targets.signed.delegations {
                to_visit.extend(
                    delegations
                        .roles
                        .iter()
                        .rev()
                        .map(|child| (child.name.clone(), role.clone())),
                );
            }
        }
        Ok(names)
    }

    /// The transport, e.g. to see what it fetched.
    pub fn remote(&self) -> &R {
        &self.remote
    }

    /// Downloads `target_path` (described by `info`, from [`Self::target_info`]) and checks its
    /// length and every hash. With consistent snapshots the file is fetched under
    /// `<dir>/<hash>.<name>`, with the first hash in algorithm order.
    pub fn download_target(
        &mut self,
        target_path: &str,
        info: &TargetFile,
    ) -> Result<Vec<u8>, TufError> {
        let remote_path = match (
            self.trusted.root().signed.consistent_snapshot,
            info.hashes.values().next(),
        ) {
            (true, Some(hash)) => match target_path.rsplit_once('/') {
                Some((dir, name)) => format!("{dir}/{hash}.{name}"),
                None => format!("{hash}.{target_path}"),
            },
            _ => target_path.to_string(),
        };
        let data = self.fetch(&format!("targets/{remote_path}"), info.length)?;
        info.verify(target_path, &data)?;
        Ok(data)
    }

    fn load_root(&mut self) -> Result<(), TufError> {
        let first = self.trusted.root().signed.version() + 1;
        for version in first..first + self.limits.max_root_rotations {
            let path = format!("metadata/{version}.root.json");
            let data = match self.remote.fetch(&path, self.limits.root_bytes) {
                Ok(data) => data,
                Err(FetchError::NotFound) => break,
                Err(error) => return Err(fetch_error(&path, self.limits.root_bytes, error)),
            };
            self.trusted.update_root(&data)?;
            self.store("root", &data)?;
        }
        Ok(())
    }

    fn load_timestamp(&mut self) -> Result<(), TufError> {
        if let Some(data) = self.local.load("timestamp") {
            // A stored timestamp that no longer verifies (rotated keys) or has expired is only
            // a floor for rollback checks; a failure here is not an error.
            let _ = self.trusted.update_timestamp(&data);
        }
        let data = self.fetch("metadata/timestamp.json", self.limits.timestamp_bytes)?;
        match self.trusted.update_timestamp(&data) {
            Ok(()) => self.store("timestamp", &data),
            Err(TufError::EqualVersion { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn load_snapshot(&mut self) -> Result<(), TufError> {
        if let Some(data) = self.local.load("snapshot") {
            if self.trusted.update_snapshot(&data, true).is_ok() {
                return Ok(());
            }
        }
        let Some(timestamp) = self.trusted.timestamp() else {
            return Err(TufError::Repository("no timestamp is loaded".into()));
        };
        let pin = &timestamp.signed.snapshot;
        let limit = pin.length.unwrap_or(self.limits.snapshot_bytes);
        let path = if self.trusted.root().signed.consistent_snapshot {
            format!("metadata/{}.snapshot.json", pin.version)
        } else {
            "metadata/snapshot.json".to_string()
        };
        let data = self.fetch(&path, limit)?;
        self.trusted.update_snapshot(&data, false)?;
        self.store("snapshot", &data)
    }

    fn load_targets(&mut self, role: &str, parent: &str) -> Result<(), TufError> {
        if self.trusted.targets(role).is_some() {
            return Ok(());
        }
        if let Some(data) = self.local.load(role) {
            if self
                .trusted
                .update_delegated_targets(&data, role, parent)
                .is_ok()
            {
                return Ok(());
            }
        }
        let file = format!("{role}.json");
        let pin = self.trusted.snapshot_pin(role)?;
        let limit = pin.length.unwrap_or(self.limits.targets_bytes);
        let path = if self.trusted.root().signed.consistent_snapshot {
            format!("metadata/{}.{file}", pin.version)
        } else {
            format!("metadata/{file}")
        };
        let data = self.fetch(&path, limit)?;
        self.trusted.update_delegated_targets(&data, role, parent)?;
        self.store(role, &data)
    }

    fn fetch(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, TufError> {
        let data = self
            .remote
            .fetch(path, limit)
            .map_err(|error| fetch_error(path, limit, error))?;
        // A remote that ignores the limit is caught here.
        if data.len() as u64 > limit {
            return Err(TufError::DownloadLength {
                file: path.to_string(),
                limit,
            });
        }
        Ok(data)
    }

    fn store(&mut self, role: &str, data: &[u8]) -> Result<(), TufError> {
        self.local
            .store(role, data)
            .map_err(|detail| TufError::Store {
                file: format!("{role}.json"),
                detail,
            })
    }
}

fn fetch_error(path: &str, limit: u64, error: FetchError) -> TufError {
    match error {
        FetchError::TooLong => TufError::DownloadLength {
            file: path.to_string(),
            limit,
        },
        FetchError::NotFound => TufError::Fetch {
            file: path.to_string(),
            detail: "not found".into(),
        },
        FetchError::Other(detail) => TufError::Fetch {
            file: path.to_string(),
            detail,
        },
    }
}
