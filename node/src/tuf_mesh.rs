//! TUF over the mesh, for every role that keeps trusted metadata: vehicles refresh from their
//! depot, depots from their upstream. Metadata files travel by name (`<repository>/metadata/
//! <file>`) and are checked by [`proto::tuf::Updater`] exactly as if they came from the origin;
//! trusted metadata is kept on disk with [`DirStore`]. The updater is push-style, so the fetches
//! are plain `async` ([`MeshUpdater`]): no thread blocks on the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::Multiaddr;
use proto::tuf::{
    self, FetchError, LocalStore, LocalStoreError, Operation, Request, Response, Step, TargetFile,
    Time, TufError, Updater,
};
use proto::uptane::{ApprovedImage, EcuState, FullStep, FullVerification, Repository, UptaneError};

use crate::named::{Ask, NamedFetch, NamedFetchError, fetch_named};
use crate::net::NetHandle;
use crate::storage::{Index, Storage};
use crate::store::BlobStore;

/// Trusted metadata as `<dir>/<role>.json` (role names percent-encoded), each replaced
/// atomically and durably: written to a temporary file, synced, renamed over the old one, and
/// the directory synced. A power cut leaves the old file or the new one, never a torn one.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Metadata in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The file that holds `role`'s metadata.
    pub fn path(&self, role: &str) -> PathBuf {
        self.dir.join(format!("{}.json", quote(role)))
    }
}

impl LocalStore for DirStore {
    fn load(&self, role: &str) -> Option<Vec<u8>> {
        fs::read(self.path(role)).ok()
    }

    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), LocalStoreError> {
        crate::storage::replace_file(&self.path(role), bytes)?;
        Ok(())
    }
}

pub use proto::tuf::quote;

/// Where a repository's trusted metadata lives in a data directory.
pub fn metadata_dir(data_dir: &Path, repository: &str) -> PathBuf {
    data_dir.join("tuf").join(quote(repository))
}

/// Why the trusted metadata of a repository could not be opened ([`trusted_store`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustedStoreError {
    /// Its directory could not be opened or created.
    #[error("opening the trusted metadata in {}: {source}", dir.display())]
    Open {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It holds no root, and none was given.
    #[error(
        "no trusted root for repository {repository:?} in {}: give the first root with --root",
        dir.display()
    )]
    NoRoot {
        /// The repository.
        repository: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// The root given could not be read.
    #[error("reading the root {}: {source}", path.display())]
    ReadRoot {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The root given is not a root signed by its own keys.
    #[error("{} is not a usable root: {source}", path.display())]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: tuf::TufError,
    },
    /// The root given could not be stored.
    #[error("storing the root in {}: {source}", dir.display())]
    StoreRoot {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: LocalStoreError,
    },
}

/// The VIN of `repository` when it is a vehicle's director repository (`director/<vin>`) and
/// `error` says that no peer asked serves its timestamp: the director has no repository for
/// that vehicle (it signs one at registration), or the peers asked do not relay it. Callers
/// say so in the operator's words rather than "fetching metadata/timestamp.json: not found".
pub fn director_repository_missing<'a>(repository: &'a str, error: &TufError) -> Option<&'a str> {
    let vin = repository.strip_prefix("director/")?;
    (error.not_found() == Some("metadata/timestamp.json")).then_some(vin)
}

/// The trusted metadata of `repository` in `data_dir`, started from `root` when there is none
/// yet (a node ships with its first root; later roots come by rotation).
pub fn trusted_store(
    data_dir: &Path,
    repository: &str,
    root: Option<&Path>,
) -> Result<DirStore, TrustedStoreError> {
    let dir = metadata_dir(data_dir, repository);
    let mut local = DirStore::open(&dir).map_err(|source| TrustedStoreError::Open {
        dir: dir.clone(),
        source,
    })?;
    if local.load("root").is_none() {
        let Some(root) = root else {
            return Err(TrustedStoreError::NoRoot {
                repository: repository.to_string(),
                dir,
            });
        };
        let path = root.to_path_buf();
        let bytes = match fs::read(root) {
            Ok(bytes) => bytes,
            Err(source) => return Err(TrustedStoreError::ReadRoot { path, source }),
        };
        // Checked before it is trusted: it must at least be a root signed by its own keys.
        if let Err(source) = tuf::TrustedSet::new(&bytes, Time::from_unix(0)) {
            return Err(TrustedStoreError::BadRoot { path, source });
        }
        if let Err(source) = local.store("root", &bytes) {
            return Err(TrustedStoreError::StoreRoot { dir, source });
        }
    }
    Ok(local)
}

/// Metadata fetched by name over the mesh: `<repository>/metadata/<file>`, from the given peers
/// in order, then any connected peer. Each fetch is `async`: the updater it feeds does no I/O
/// ([`proto::tuf::Operation`]), so nothing here blocks a thread.
#[derive(Debug)]
pub struct MeshRemote<S: Storage, I: Index> {
    net: NetHandle,
    store: Arc<BlobStore<S, I>>,
    peers: Vec<Multiaddr>,
    repository: String,
    timeout: Duration,
    ask: Ask,
    /// Per name fetched, the bytes that came (a cache relays the ones the updater accepted).
    pub fetched: Vec<(String, Vec<u8>)>,
}

impl<S: Storage, I: Index> MeshRemote<S, I> {
    /// Files of `repository` (`image`, `director/<vin>`) from `peers` and connected peers, each
    /// within `timeout`.
    pub fn new(
        net: NetHandle,
        store: Arc<BlobStore<S, I>>,
        peers: Vec<Multiaddr>,
        repository: &str,
        timeout: Duration,
    ) -> Self {
        Self {
            net,
            store,
            peers,
            repository: repository.trim_end_matches('/').to_string(),
            timeout,
            ask: Ask::ListedThenConnected,
            fetched: Vec::new(),
        }
    }

    /// Asks `ask`'s peers (the default: listed, then connected).
    #[must_use]
    pub fn asking(mut self, ask: Ask) -> Self {
        self.ask = ask;
        self
    }

    /// The file `request` names, by name over the mesh, at most `request.max_bytes` long.
    pub async fn fetch(&mut self, request: &Request) -> Response {
        let named = NamedFetch {
            name: format!("{}/{}", self.repository, request.path),
            peers: self.peers.clone(),
            ask: self.ask,
            max_bytes: request.max_bytes,
            timeout: self.timeout,
        };
        match fetch_named(&self.net, self.store.clone(), &named).await {
            Ok((_, bytes)) => {
                self.fetched.push((named.name, bytes.clone()));
                Ok(bytes)
            }
            Err(NamedFetchError::TooLong { .. }) => Err(FetchError::TooLong),
            // A peer that answered "no such name" is what a repository's 404 is: how the client
            // learns there is no newer root.
            Err(NamedFetchError::Unavailable { not_served, .. }) if not_served > 0 => {
                Err(FetchError::NotFound)
            }
            Err(other) => Err(FetchError::Other(other.to_string())),
        }
    }

    /// Runs `operation` to the end, fetching each file it asks for over the mesh.
    pub async fn run<O: Operation>(&mut self, mut operation: O) -> Result<O::Output, TufError> {
        loop {
            match operation.next_step()? {
                Step::Fetch(request) => {
                    let response = self.fetch(&request).await;
                    operation.handle_response(response)?;
                }
                Step::Done(output) => return Ok(output),
            }
        }
    }
}

/// A TUF client of one repository over the mesh: the trusted metadata in a [`DirStore`], checked
/// by the push-style [`Updater`], fed by a [`MeshRemote`]. The vehicle's `get` and check, and the
/// depot's prefetch, all start here.
#[derive(Debug)]
pub struct MeshUpdater<S: Storage, I: Index> {
    updater: Updater<DirStore>,
    remote: MeshRemote<S, I>,
}

impl<S: Storage, I: Index> MeshUpdater<S, I> {
    /// Starts from the trusted metadata in `local` (its root must be there), refreshing through
    /// `remote`.
    pub fn new(remote: MeshRemote<S, I>, local: DirStore, now: Time) -> Result<Self, TufError> {
        Ok(Self {
            updater: Updater::new(local, now, tuf::Limits::default())?,
            remote,
        })
    }

    /// See [`Updater::refresh`].
    pub async fn refresh(&mut self) -> Result<(), TufError> {
        self.remote.run(self.updater.refresh()).await
    }

    /// See [`Updater::target_info`].
    pub async fn target_info(&mut self, target_path: &str) -> Result<Option<TargetFile>, TufError> {
        self.remote.run(self.updater.target_info(target_path)).await
    }

    /// See [`Updater::target_names`].
    pub async fn target_names(&mut self) -> Result<BTreeSet<String>, TufError> {
        self.remote.run(self.updater.target_names()).await
    }

    /// What is trusted now.
    pub fn trusted(&self) -> &tuf::TrustedSet {
        self.updater.trusted()
    }

    /// The trusted metadata on disk.
    pub fn local(&self) -> &DirStore {
        self.updater.local()
    }

    /// The transport, e.g. to see what it fetched.
    pub fn remote(&self) -> &MeshRemote<S, I> {
        &self.remote
    }
}

/// Uptane's full verification ([`FullVerification`]) of `ecus` against the director's and the
/// image repository, each fetched over the mesh.
pub async fn verify_full<S: Storage, I: Index>(
    director: &mut MeshUpdater<S, I>,
    image: &mut MeshUpdater<S, I>,
    ecus: &BTreeMap<String, EcuState>,
) -> Result<Vec<ApprovedImage>, UptaneError> {
    let (director_remote, image_remote) = (&mut director.remote, &mut image.remote);
    let mut verification = FullVerification::new(&mut director.updater, &mut image.updater, ecus);
    loop {
        let (repository, request) = match verification.next_step()? {
            FullStep::Done(approved) => return Ok(approved),
            FullStep::Fetch {
                repository,
                request,
            } => (repository, request),
        };
        let remote = if repository == Repository::Director {
            &mut *director_remote
        } else {
            &mut *image_remote
        };
        verification.handle_response(remote.fetch(&request).await)?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stores_replace_files_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DirStore::open(dir.path()).unwrap();
        assert_eq!(store.load("root"), None);
        store.store("root", b"one").unwrap();
        store.store("root", b"two").unwrap();
        assert_eq!(store.load("root").unwrap(), b"two");
        store.store("a/b", b"x").unwrap();
        assert!(dir.path().join("a%2Fb.json").exists());
        // A role name with path segments stays one file of the directory.
        store.store("../x", b"y").unwrap();
        assert!(dir.path().join("..%2Fx.json").exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temporary files left: {names:?}");
    }
}
