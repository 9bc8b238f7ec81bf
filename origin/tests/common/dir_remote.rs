//! A repository directory as a TUF remote: what a vehicle fetching from the origin's files sees
//! (a missing file is `NotFound`, one over its limit `TooLong`). Shared by `tests/cli.rs` and
//! `tests/registry.rs` (through `#[path]`).

use std::path::PathBuf;

use proto::tuf::{FetchError, Remote};

/// The repository in this directory.
pub(crate) struct DirRemote(pub(crate) PathBuf);

impl Remote for DirRemote {
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        let bytes = std::fs::read(self.0.join(path)).map_err(|_| FetchError::NotFound)?;
        if bytes.len() as u64 > max_bytes {
            return Err(FetchError::TooLong);
        }
        Ok(bytes)
    }
}
