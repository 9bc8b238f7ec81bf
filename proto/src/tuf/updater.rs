//! The TUF client workflow (specification §5) with the same steps and checks as python-tuf's
//! `ngclient.Updater`: root rotation up to a limit, timestamp, snapshot and top-level targets,
//! each read back from the [`LocalStore`] first (so rollback checks hold across runs), then
//! delegated targets searched pre-order depth-first when a target is looked up.
//!
//! Push-style, with no I/O of its own: each operation ([`Refresh`], [`TargetLookup`],
//! [`TargetNames`], [`TargetDownload`]) is an [`Operation`] that says which file it needs next
//! ([`Step::Fetch`]) and checks what its caller hands it ([`Operation::handle_response`]), until
//! it is [`Step::Done`]. The caller fetches however it likes: over the mesh with `async`, from
//! HTTP or a directory with [`super::blocking`].

use std::collections::BTreeSet;

use super::metadata::{Role, TargetFile, Targets};
use super::{Time, TrustedSet, TufError};

/// Why a file could not be had, as its caller hands it to [`Operation::handle_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The repository has no such file (HTTP 403/404, a peer that does not hold it).
    NotFound,
    /// The file is longer than the limit asked for (endless data).
    TooLong,
    /// Anything else (the transport failed, a timeout), in words.
    Other(String),
}

/// What came for a [`Request`]: the file's bytes, or why there are none.
pub type Response = Result<Vec<u8>, FetchError>;

/// A file an operation needs: fetch it and hand over what came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The path in the repository (`metadata/1.root.json`, `targets/ecu/<hash>.fw.bin`).
    pub path: String,
    /// The most bytes to read: the fetch must stop after `max_bytes` and answer
    /// [`FetchError::TooLong`] if there is more.
    pub max_bytes: u64,
}

/// What an operation needs next, or what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// This file, handed over with [`Operation::handle_response`].
    Fetch(Request),
    /// Finished, with this outcome.
    Done(T),
}

/// One TUF operation in progress, driven by its caller: call [`Self::next_step`]; fetch the
/// file it asks for and hand what came to [`Self::handle_response`]; repeat until
/// [`Step::Done`]. An error ends the operation.
pub trait Operation {
    /// What the operation gives when done.
    type Output;

    /// The file needed next, or the outcome.
    fn next_step(&mut self) -> Result<Step<Self::Output>, TufError>;

    /// Checks what came for the file [`Self::next_step`] asked for.
    fn handle_response(&mut self, response: Response) -> Result<(), TufError>;
}

/// Where trusted metadata is kept between runs, one file per role (`root`, `timestamp`,
/// `snapshot`, `targets`, delegated role names).
pub trait LocalStore {
    /// The stored bytes of `role`'s metadata, if any.
    fn load(&self, role: &str) -> Option<Vec<u8>>;
    /// Stores `role`'s metadata durably, replacing what was there.
    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), LocalStoreError>;
}

/// Why a [`LocalStore`] could not store a role's metadata. The updater names the role
/// ([`TufError::Store`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalStoreError {
    /// Writing it failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Percent-encodes everything but ASCII letters, digits and `_.-~`, as Python's
/// `urllib.parse.quote(name, safe="")` does (python-tuf's client quotes role names so): a role
/// or target name becomes one URL path segment or one file name, whatever it holds (`/`, `..`,
/// `?`, `#`), and can never leave the directory it is looked up in.
pub fn quote(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"_.-~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Trusted metadata in memory (tests, simulations, and a vehicle that keeps none on disk).
#[derive(Debug, Clone, Default)]
pub struct MemoryStore(pub std::collections::BTreeMap<String, Vec<u8>>);

impl LocalStore for MemoryStore {
    fn load(&self, role: &str) -> Option<Vec<u8>> {
        self.0.get(role).cloned()
    }

    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), LocalStoreError> {
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
/// Each of its operations borrows it until done.
#[derive(Debug)]
pub struct Updater<L> {
    trusted: TrustedSet,
    local: L,
    limits: Limits,
    refreshed: bool,
}

impl<L: LocalStore> Updater<L> {
    /// Starts from the root in `local` (it must be there: a client ships with its first root).
    pub fn new(local: L, now: Time, limits: Limits) -> Result<Self, TufError> {
        let root = local.load("root").ok_or_else(|| TufError::Fetch {
            file: "root.json".into(),
            detail: "no trusted root in the local store".into(),
        })?;
        Ok(Self {
            trusted: TrustedSet::new(&root, now)?,
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
    pub fn refresh(&mut self) -> Refresh<'_, L> {
        Running {
            updater: self,
            machine: RefreshMachine::new(),
        }
    }

    /// The signed description of `target_path`, searching delegations pre-order depth-first
    /// from `targets` (refreshing first if that has not been done). `None`: no role that may
    /// sign for it lists it.
    pub fn target_info(&mut self, target_path: &str) -> TargetLookup<'_, L> {
        let machine = Walk::new(self, Lookup::new(target_path));
        Running {
            updater: self,
            machine,
        }
    }

    /// The name of every target any role reachable from `targets` lists (loading each role,
    /// within the delegation budget). A name here is not yet trusted for its path: ask
    /// [`Self::target_info`], which applies the delegations' path rules — a cache that
    /// prefetches a repository's images does both.
    pub fn target_names(&mut self) -> TargetNames<'_, L> {
        let machine = Walk::new(self, Names::default());
        Running {
            updater: self,
            machine,
        }
    }

    /// Downloads `target_path` (described by `info`, from [`Self::target_info`]) and checks its
    /// length and every hash. With consistent snapshots the file is fetched under
    /// `<dir>/<hash>.<name>`, with the first hash in algorithm order.
    pub fn download_target(&self, target_path: &str, info: &TargetFile) -> TargetDownload {
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
        TargetDownload {
            target_path: target_path.to_string(),
            info: info.clone(),
            request: Request {
                path: format!("targets/{remote_path}"),
                max_bytes: info.length,
            },
            data: None,
        }
    }

    /// The first step of a refresh: once per updater.
    fn begin_refresh(&mut self) -> Result<(), TufError> {
        if self.refreshed {
            return Err(TufError::Repository(
                "this updater has refreshed already; start a new one".into(),
            ));
        }
        self.refreshed = true;
        Ok(())
    }

    fn root_request(&self, version: u64) -> Request {
        Request {
            path: format!("metadata/{version}.root.json"),
            max_bytes: self.limits.root_bytes,
        }
    }

    /// Takes the next root; `false` when the repository has none (the rotation is over).
    fn accept_root(&mut self, request: &Request, response: Response) -> Result<bool, TufError> {
        // A root's length is bounded by the transport alone, as it always was here; the other
        // files are checked again by `checked`.
        let data = match response {
            Ok(data) => data,
            Err(FetchError::NotFound) => return Ok(false),
            Err(error) => return Err(fetch_error(&request.path, request.max_bytes, error)),
        };
        self.trusted.update_root(&data)?;
        self.store("root", &data)?;
        Ok(true)
    }

    /// Reads the stored timestamp first, as a floor for rollback checks.
    fn timestamp_request(&mut self) -> Request {
        if let Some(data) = self.local.load("timestamp") {
            // A stored timestamp that no longer verifies (rotated keys) or has expired is only
            // a floor for rollback checks; a failure here is not an error.
            let _ = self.trusted.update_timestamp(&data);
        }
        Request {
            path: "metadata/timestamp.json".into(),
            max_bytes: self.limits.timestamp_bytes,
        }
    }

    fn accept_timestamp(&mut self, request: &Request, response: Response) -> Result<(), TufError> {
        let data = checked(request, response)?;
        match self.trusted.update_timestamp(&data) {
            Ok(()) => self.store("timestamp", &data),
            Err(TufError::EqualVersion { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The snapshot to fetch, or `None` when the stored one is still the one to trust.
    fn snapshot_request(&mut self) -> Result<Option<Request>, TufError> {
        if let Some(data) = self.local.load("snapshot") {
            if self.trusted.update_snapshot(&data, true).is_ok() {
                return Ok(None);
            }
        }
        let Some(timestamp) = self.trusted.timestamp() else {
            return Err(TufError::Repository("no timestamp is loaded".into()));
        };
        let pin = &timestamp.signed.snapshot;
        let max_bytes = pin.length.unwrap_or(self.limits.snapshot_bytes);
        let path = if self.trusted.root().signed.consistent_snapshot {
            format!("metadata/{}.snapshot.json", pin.version)
        } else {
            "metadata/snapshot.json".to_string()
        };
        Ok(Some(Request { path, max_bytes }))
    }

    fn accept_snapshot(&mut self, request: &Request, response: Response) -> Result<(), TufError> {
        let data = checked(request, response)?;
        self.trusted.update_snapshot(&data, false)?;
        self.store("snapshot", &data)
    }

    /// The targets role `role` (delegated by `parent`) to fetch, or `None` when it is trusted
    /// already or the stored one still verifies.
    fn targets_request(&mut self, role: &str, parent: &str) -> Result<Option<Request>, TufError> {
        if self.trusted.targets(role).is_some() {
            return Ok(None);
        }
        if let Some(data) = self.local.load(role) {
            if self
                .trusted
                .update_delegated_targets(&data, role, parent)
                .is_ok()
            {
                return Ok(None);
            }
        }
        let pin = self.trusted.snapshot_pin(role)?;
        let max_bytes = pin.length.unwrap_or(self.limits.targets_bytes);
        // The role's name quoted: `../x` or `a/b` is asked for as one file of `metadata/`.
        let file = format!("{}.json", quote(role));
        let path = if self.trusted.root().signed.consistent_snapshot {
            format!("metadata/{}.{file}", pin.version)
        } else {
            format!("metadata/{file}")
        };
        Ok(Some(Request { path, max_bytes }))
    }

    fn accept_targets(
        &mut self,
        role: &str,
        parent: &str,
        request: &Request,
        response: Response,
    ) -> Result<(), TufError> {
        let data = checked(request, response)?;
        self.trusted.update_delegated_targets(&data, role, parent)?;
        self.store(role, &data)
    }

    fn store(&mut self, role: &str, data: &[u8]) -> Result<(), TufError> {
        self.local
            .store(role, data)
            .map_err(|error| TufError::Store {
                file: format!("{role}.json"),
                detail: error.to_string(),
            })
    }
}

/// The bytes of a response, or why there are none; longer than asked is refused here too, in
/// case the transport ignored the limit.
fn checked(request: &Request, response: Response) -> Result<Vec<u8>, TufError> {
    let data = response.map_err(|error| fetch_error(&request.path, request.max_bytes, error))?;
    if data.len() as u64 > request.max_bytes {
        return Err(TufError::DownloadLength {
            file: request.path.clone(),
            limit: request.max_bytes,
        });
    }
    Ok(data)
}

/// [`TufError::Fetch`]'s detail for [`FetchError::NotFound`] ([`TufError::not_found`]).
pub(crate) const NOT_FOUND: &str = "not found";

fn fetch_error(path: &str, limit: u64, error: FetchError) -> TufError {
    match error {
        FetchError::TooLong => TufError::DownloadLength {
            file: path.to_string(),
            limit,
        },
        FetchError::NotFound => TufError::Fetch {
            file: path.to_string(),
            detail: NOT_FOUND.into(),
        },
        FetchError::Other(detail) => TufError::Fetch {
            file: path.to_string(),
            detail,
        },
    }
}

fn not_asked() -> TufError {
    TufError::NotAsked
}

/// Where a refresh is: the spec's order, root versions one by one.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Start,
    /// Asking for root `version`, up to (not including) `end`.
    Root {
        version: u64,
        end: u64,
    },
    Timestamp,
    Snapshot,
    Targets,
    Done,
}

/// The state of a refresh, apart from the updater it works on (so that a larger operation, such
/// as Uptane's full verification, can hold it next to the updater).
#[derive(Debug)]
pub struct RefreshMachine {
    stage: Stage,
    pending: Option<Request>,
}

impl RefreshMachine {
    pub(crate) fn new() -> Self {
        Self {
            stage: Stage::Start,
            pending: None,
        }
    }
}

impl Machine for RefreshMachine {
    type Output = ();

    fn step<L: LocalStore>(&mut self, updater: &mut Updater<L>) -> Result<Step<()>, TufError> {
        loop {
            if let Some(request) = &self.pending {
                return Ok(Step::Fetch(request.clone()));
            }
            let request = match self.stage {
                Stage::Start => {
                    updater.begin_refresh()?;
                    let first = updater.trusted.root().signed.version() + 1;
                    let end = first.saturating_add(updater.limits.max_root_rotations);
                    self.stage = Stage::Root {
                        version: first,
                        end,
                    };
                    continue;
                }
                Stage::Root { version, end } if version < end => updater.root_request(version),
                Stage::Root { .. } => {
                    self.stage = Stage::Timestamp;
                    continue;
                }
                Stage::Timestamp => updater.timestamp_request(),
                Stage::Snapshot => match updater.snapshot_request()? {
                    Some(request) => request,
                    None => {
                        self.stage = Stage::Targets;
                        continue;
                    }
                },
                Stage::Targets => match updater.targets_request("targets", "root")? {
                    Some(request) => request,
                    None => {
                        self.stage = Stage::Done;
                        continue;
                    }
                },
                Stage::Done => return Ok(Step::Done(())),
            };
            self.pending = Some(request);
        }
    }

    fn handle<L: LocalStore>(
        &mut self,
        updater: &mut Updater<L>,
        response: Response,
    ) -> Result<(), TufError> {
        let request = self.pending.take().ok_or_else(not_asked)?;
        self.stage = match self.stage {
            Stage::Root { version, end } => {
                if updater.accept_root(&request, response)? {
                    Stage::Root {
                        version: version + 1,
                        end,
                    }
                } else {
                    Stage::Timestamp
                }
            }
            Stage::Timestamp => {
                updater.accept_timestamp(&request, response)?;
                Stage::Snapshot
            }
            Stage::Snapshot => {
                updater.accept_snapshot(&request, response)?;
                Stage::Targets
            }
            Stage::Targets => {
                updater.accept_targets("targets", "root", &request, response)?;
                Stage::Done
            }
            Stage::Start | Stage::Done => return Err(not_asked()),
        };
        Ok(())
    }
}

/// The roles a walk is still to visit, as `(role, delegator)`, the next one last.
pub(crate) type Stack = Vec<(String, String)>;

/// What a walk over the targets roles looks for.
pub trait Search {
    /// What the walk finds.
    type Output;

    /// Looks at `role`, now trusted: `Some` ends the walk with that; otherwise pushes the roles
    /// to visit next on `stack`.
    fn visit(&mut self, role: &str, targets: &Targets, stack: &mut Stack) -> Option<Self::Output>;

    /// What the walk found when it ran out of roles or budget.
    fn finish(&mut self) -> Self::Output;
}

/// Looks up one target: the first role, pre-order depth-first, that may sign for it and lists
/// it; a terminating delegation ends the search below it.
#[derive(Debug)]
pub struct Lookup {
    target: String,
}

impl Lookup {
    pub(crate) fn new(target: &str) -> Self {
        Self {
            target: target.to_string(),
        }
    }
}

impl Search for Lookup {
    type Output = Option<TargetFile>;

    fn visit(&mut self, role: &str, targets: &Targets, stack: &mut Stack) -> Option<Self::Output> {
        if let Some(file) = targets.targets.get(&self.target) {
            return Some(Some(file.clone()));
        }
        if let Some(delegations) = &targets.delegations {
            let mut children: Vec<(String, String)> = Vec::new();
            for child in delegations.roles_for_target(&self.target) {
                children.push((child.name.clone(), role.to_string()));
                if child.terminating {
                    stack.clear();
                }
            }
            children.reverse();
            stack.extend(children);
        }
        None
    }

    fn finish(&mut self) -> Self::Output {
        None
    }
}

/// Gathers the names every reachable role lists.
#[derive(Debug, Default)]
pub struct Names {
    names: BTreeSet<String>,
}

impl Search for Names {
    type Output = BTreeSet<String>;

    fn visit(&mut self, role: &str, targets: &Targets, stack: &mut Stack) -> Option<Self::Output> {
        self.names.extend(targets.targets.keys().cloned());
        if let Some(delegations) = &targets.delegations {
            stack.extend(
                delegations
                    .roles
                    .iter()
                    .rev()
                    .map(|child| (child.name.clone(), role.to_string())),
            );
        }
        None
    }

    fn finish(&mut self) -> Self::Output {
        std::mem::take(&mut self.names)
    }
}

/// Where a walk is with the role it visits.
#[derive(Debug)]
enum Visit {
    /// Waiting for the role's file.
    Fetching {
        role: String,
        parent: String,
        request: Request,
    },
    /// The role is trusted: look at it.
    Loaded { role: String },
}

/// A walk over the targets roles from `targets`, pre-order depth-first, each role visited once
/// and at most [`Limits::max_delegations`] of them; refreshing first when top-level targets
/// are not trusted yet.
#[derive(Debug)]
pub struct Walk<S> {
    search: S,
    refresh: Option<RefreshMachine>,
    to_visit: Stack,
    visited: BTreeSet<String>,
    budget: usize,
    visit: Option<Visit>,
}

impl<S: Search> Walk<S> {
    pub(crate) fn new<L: LocalStore>(updater: &Updater<L>, search: S) -> Self {
        Self {
            search,
            refresh: updater
                .trusted
                .targets("targets")
                .is_none()
                .then(RefreshMachine::new),
            to_visit: vec![("targets".to_string(), "root".to_string())],
            visited: BTreeSet::new(),
            budget: updater.limits.max_delegations,
            visit: None,
        }
    }
}

impl<S: Search> Machine for Walk<S> {
    type Output = S::Output;

    fn step<L: LocalStore>(
        &mut self,
        updater: &mut Updater<L>,
    ) -> Result<Step<S::Output>, TufError> {
        if let Some(refresh) = &mut self.refresh {
            match refresh.step(updater)? {
                Step::Fetch(request) => return Ok(Step::Fetch(request)),
                Step::Done(()) => self.refresh = None,
            }
        }
        loop {
            match self.visit.take() {
                Some(Visit::Fetching {
                    role,
                    parent,
                    request,
                }) => {
                    let step = Step::Fetch(request.clone());
                    self.visit = Some(Visit::Fetching {
                        role,
                        parent,
                        request,
                    });
                    return Ok(step);
                }
                Some(Visit::Loaded { role }) => {
                    let Some(targets) = updater.trusted.targets(&role) else {
                        return Err(TufError::Repository(format!("{role} did not load")));
                    };
                    let found = self
                        .search
                        .visit(&role, &targets.signed, &mut self.to_visit);
                    if let Some(output) = found {
                        return Ok(Step::Done(output));
                    }
                }
                None => {
                    let next = if self.budget == 0 {
                        None
                    } else {
                        self.to_visit.pop()
                    };
                    let Some((role, parent)) = next else {
                        return Ok(Step::Done(self.search.finish()));
                    };
                    if !self.visited.insert(role.clone()) {
                        continue;
                    }
                    self.budget -= 1;
                    self.visit = Some(match updater.targets_request(&role, &parent)? {
                        Some(request) => Visit::Fetching {
                            role,
                            parent,
                            request,
                        },
                        None => Visit::Loaded { role },
                    });
                }
            }
        }
    }

    fn handle<L: LocalStore>(
        &mut self,
        updater: &mut Updater<L>,
        response: Response,
    ) -> Result<(), TufError> {
        if let Some(refresh) = &mut self.refresh {
            return refresh.handle(updater, response);
        }
        let Some(Visit::Fetching {
            role,
            parent,
            request,
        }) = self.visit.take()
        else {
            return Err(not_asked());
        };
        updater.accept_targets(&role, &parent, &request, response)?;
        self.visit = Some(Visit::Loaded { role });
        Ok(())
    }
}

/// The state of an updater's operation, apart from the updater it works on (so that a larger
/// operation, such as Uptane's full verification, can hold it next to the updater). Not
/// nameable outside the crate: callers see [`Refresh`], [`TargetLookup`] and [`TargetNames`].
pub trait Machine {
    /// What the operation gives when done.
    type Output;

    /// See [`Operation::next_step`].
    fn step<L: LocalStore>(
        &mut self,
        updater: &mut Updater<L>,
    ) -> Result<Step<Self::Output>, TufError>;

    /// See [`Operation::handle_response`].
    fn handle<L: LocalStore>(
        &mut self,
        updater: &mut Updater<L>,
        response: Response,
    ) -> Result<(), TufError>;
}

/// An operation of an [`Updater`] in progress; it borrows the updater until done.
#[derive(Debug)]
pub struct Running<'a, L, M> {
    updater: &'a mut Updater<L>,
    machine: M,
}

impl<L: LocalStore, M: Machine> Operation for Running<'_, L, M> {
    type Output = M::Output;

    fn next_step(&mut self) -> Result<Step<M::Output>, TufError> {
        self.machine.step(self.updater)
    }

    fn handle_response(&mut self, response: Response) -> Result<(), TufError> {
        self.machine.handle(self.updater, response)
    }
}

/// A refresh in progress: see [`Updater::refresh`].
pub type Refresh<'a, L> = Running<'a, L, RefreshMachine>;

/// A target lookup in progress: see [`Updater::target_info`].
pub type TargetLookup<'a, L> = Running<'a, L, Walk<Lookup>>;

/// A walk over every reachable role's target names: see [`Updater::target_names`].
pub type TargetNames<'a, L> = Running<'a, L, Walk<Names>>;

/// A target download in progress: see [`Updater::download_target`]. Done with the target's
/// bytes, checked against its signed length and every hash.
#[derive(Debug)]
pub struct TargetDownload {
    target_path: String,
    info: TargetFile,
    request: Request,
    data: Option<Vec<u8>>,
}

impl Operation for TargetDownload {
    type Output = Vec<u8>;

    fn next_step(&mut self) -> Result<Step<Vec<u8>>, TufError> {
        Ok(match self.data.take() {
            Some(data) => Step::Done(data),
            None => Step::Fetch(self.request.clone()),
        })
    }

    fn handle_response(&mut self, response: Response) -> Result<(), TufError> {
        let data = checked(&self.request, response)?;
        self.info.verify(&self.target_path, &data)?;
        self.data = Some(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_like_python() {
        assert_eq!(quote("ecu/brake-1.2.0.bin"), "ecu%2Fbrake-1.2.0.bin");
        assert_eq!(quote("a b~_"), "a%20b~_");
        assert_eq!(quote("é"), "%C3%A9");
        assert_eq!(quote("../x?a#b"), "..%2Fx%3Fa%23b");
    }

    #[test]
    fn only_a_missing_file_reads_as_not_found() {
        use super::{FetchError, fetch_error};
        let missing = fetch_error("metadata/timestamp.json", 100, FetchError::NotFound);
        assert_eq!(missing.not_found(), Some("metadata/timestamp.json"));
        assert_eq!(
            missing.to_string(),
            "fetching metadata/timestamp.json: not found"
        );
        let other = fetch_error(
            "metadata/timestamp.json",
            100,
            FetchError::Other("timeout".into()),
        );
        assert_eq!(other.not_found(), None);
        assert_eq!(fetch_error("x", 100, FetchError::TooLong).not_found(), None);
    }
}
