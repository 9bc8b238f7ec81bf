//! TUF metadata on the vehicle's disk and over plain HTTP: the two ends [`proto::tuf::Updater`]
//! needs outside the mesh. The conformance client uses both; the vehicle keeps its trusted
//! metadata with [`DirStore`] whatever transport brought it.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::tuf::{FetchError, LocalStore, Remote};

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

    fn store(&mut self, role: &str, bytes: &[u8]) -> Result<(), String> {
        write_durably(&self.path(role), bytes).map_err(|error| error.to_string())
    }
}

pub use node::storage::replace_file as write_durably;

/// Percent-encodes everything but ASCII letters, digits and `_.-~`, as Python's
/// `urllib.parse.quote(name, safe="")` does: a role or target name becomes one safe file name.
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

/// A TUF repository over plain HTTP(S): `metadata/...` under one base URL, `targets/...` under
/// another. Every fetch stops at its byte limit and at a timeout.
#[derive(Debug)]
pub struct HttpRemote {
    metadata_url: String,
    targets_url: Option<String>,
    agent: ureq::Agent,
}

impl HttpRemote {
    /// Metadata from `metadata_url`, targets from `targets_url`; each request gives up after
    /// `timeout` (a slow-retrieval attack ends there).
    pub fn new(metadata_url: &str, targets_url: Option<&str>, timeout: Duration) -> Self {
        let slash = |url: &str| format!("{}/", url.trim_end_matches('/'));
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            metadata_url: slash(metadata_url),
            targets_url: targets_url.map(slash),
            agent,
        }
    }
}

impl Remote for HttpRemote {
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let url = if let Some(rest) = path.strip_prefix("metadata/") {
            format!("{}{}", self.metadata_url, rest)
        } else if let Some(rest) = path.strip_prefix("targets/") {
            let Some(base) = &self.targets_url else {
                return Err(FetchError::Other("no target base URL given".into()));
            };
            format!("{base}{rest}")
        } else {
            return Err(FetchError::Other(format!("unknown repository path {path}")));
        };
        let response = self
            .agent
            .get(&url)
            .call()
            .map_err(|error| FetchError::Other(format!("{url}: {error}")))?;
        match response.status().as_u16() {
            200 => {}
            403 | 404 => return Err(FetchError::NotFound),
            status => return Err(FetchError::Other(format!("{url}: HTTP {status}"))),
        }
        let mut body = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|error| FetchError::Other(format!("{url}: {error}")))?;
        if body.len() as u64 > max_bytes {
            return Err(FetchError::TooLong);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_python() {
        assert_eq!(quote("ecu/brake-1.2.0.bin"), "ecu%2Fbrake-1.2.0.bin");
        assert_eq!(quote("a b~_"), "a%20b~_");
        assert_eq!(quote("é"), "%C3%A9");
    }

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
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }
}
