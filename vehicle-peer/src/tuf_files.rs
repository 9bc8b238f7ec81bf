//! TUF metadata on the vehicle's disk and over plain HTTP: the two ends [`proto::tuf::Updater`]
//! needs outside the mesh. The conformance client uses both; the vehicle keeps its trusted
//! metadata with [`DirStore`] whatever transport brought it.

use std::io::Read;
use std::time::Duration;

use proto::tuf::{FetchError, Remote};

pub use node::tuf_mesh::DirStore;

pub use node::storage::replace_file as write_durably;

pub use node::tuf_mesh::quote;

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
