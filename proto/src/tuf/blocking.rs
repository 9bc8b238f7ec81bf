//! The push-style [`Updater`] driven from a blocking source of files: a small helper for the
//! callers that fetch synchronously (the conformance client over HTTP, the origin reading its
//! own repository from disk, tests). Nothing here checks anything: every check is the
//! updater's.

use std::collections::BTreeSet;

use super::metadata::TargetFile;
use super::{FetchError, Limits, LocalStore, Operation, Step, Time, TrustedSet, TufError, Updater};

/// A blocking source of a repository's files.
pub trait Remote {
    /// The file at `path` in the repository (`metadata/1.root.json`,
    /// `targets/ecu/<hash>.fw.bin`), at most `max_bytes` long: the implementation must stop
    /// reading after `max_bytes` and return [`FetchError::TooLong`] if there is more.
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError>;
}

/// Runs `operation` to the end, fetching each file it asks for from `remote`.
pub fn run<O: Operation>(
    mut operation: O,
    remote: &mut impl Remote,
) -> Result<O::Output, TufError> {
    loop {
        match operation.next_step()? {
            Step::Fetch(request) => {
                let response = remote.fetch(&request.path, request.max_bytes);
                operation.handle_response(response)?;
            }
            Step::Done(output) => return Ok(output),
        }
    }
}

/// An [`Updater`] with a blocking [`Remote`]: each operation runs to the end in one call.
#[derive(Debug)]
pub struct BlockingUpdater<R, L> {
    updater: Updater<L>,
    remote: R,
}

impl<R: Remote, L: LocalStore> BlockingUpdater<R, L> {
    /// Starts from the root in `local`; see [`Updater::new`].
    pub fn new(remote: R, local: L, now: Time, limits: Limits) -> Result<Self, TufError> {
        Ok(Self {
            updater: Updater::new(local, now, limits)?,
            remote,
        })
    }

    /// See [`Updater::refresh`].
    pub fn refresh(&mut self) -> Result<(), TufError> {
        run(self.updater.refresh(), &mut self.remote)
    }

    /// See [`Updater::target_info`].
    pub fn target_info(&mut self, target_path: &str) -> Result<Option<TargetFile>, TufError> {
        run(self.updater.target_info(target_path), &mut self.remote)
    }

    /// See [`Updater::target_names`].
    pub fn target_names(&mut self) -> Result<BTreeSet<String>, TufError> {
        run(self.updater.target_names(), &mut self.remote)
    }

    /// See [`Updater::download_target`].
    pub fn download_target(
        &mut self,
        target_path: &str,
        info: &TargetFile,
    ) -> Result<Vec<u8>, TufError> {
        run(
            self.updater.download_target(target_path, info),
            &mut self.remote,
        )
    }

    /// What is trusted now.
    pub fn trusted(&self) -> &TrustedSet {
        self.updater.trusted()
    }

    /// The local store.
    pub fn local(&self) -> &L {
        self.updater.local()
    }

    /// The transport, e.g. to see what it fetched.
    pub fn remote(&self) -> &R {
        &self.remote
    }

    /// The updater and the transport, to drive a larger operation over both (Uptane's full
    /// verification).
    pub fn parts_mut(&mut self) -> (&mut Updater<L>, &mut R) {
        (&mut self.updater, &mut self.remote)
    }
}
