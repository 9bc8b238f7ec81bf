//! TUF metadata in TUF's own JSON format, and the checks a client makes before it trusts any of
//! it: signatures over canonical JSON with thresholds, expiry against an injected clock, version
//! monotonicity, root rotation, consistent snapshots, length limits and target hashes.
//!
//! - [`canonical`]: the canonical JSON the signatures cover.
//! - [`build`]: making and signing metadata (for `origin` and for tests).
//! - [`metadata`]: the four top-level roles and delegated targets, parsed from JSON with errors
//!   that name the file and field.
//! - [`TrustedSet`]: the metadata a client trusts, and the rules for replacing each piece
//!   (python-tuf's `TrustedMetadataSet`, the reference implementation's reading of the spec).
//! - [`Updater`]: the client workflow of the TUF specification (section 5), push-style: each
//!   operation says which file it needs next and checks what it is handed ([`Operation`]), and
//!   trusted metadata is kept through the small [`LocalStore`] trait. No I/O of its own, so the
//!   vehicle (fetching over the mesh with `async`), the conformance client and the tests run
//!   the same code.
//! - [`blocking`]: drives those operations from a blocking [`Remote`] (HTTP, a directory).
//!
//! Tested against the repository and the 21 attack and rotation cases python-tuf made
//! (`../shared/vectors/tuf`, see `proto/tests/tuf_vectors.rs`).

pub mod blocking;
pub mod build;
pub mod canonical;
pub mod keys;
pub mod metadata;
pub mod signer;
mod time;
mod trusted;
mod updater;

pub use blocking::{BlockingUpdater, Remote};
pub use metadata::{
    DelegatedRole, Delegations, Key, MetaFile, Role, RoleKeys, Root, Signed, Snapshot, TargetFile,
    Targets, Timestamp,
};
pub use time::{Time, TimeError};
pub use trusted::TrustedSet;
pub use updater::{
    FetchError, Freshness, Limits, LocalStore, LocalStoreError, MemoryStore, Operation, Refresh,
    Request, Response, Step, TargetDownload, TargetLookup, TargetNames, Updater, freshness, quote,
};
pub(crate) use updater::{Lookup, Machine, RefreshMachine, Walk};

/// Why metadata or a target was not trusted. Each variant names the role or file concerned;
/// the names follow python-tuf's exception classes, so that a case in the vectors can be matched
/// with the reason python-tuf gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    /// The bytes are not valid metadata: bad JSON, a missing or mistyped field, a duplicate
    /// signature key id.
    #[error("{file}: {detail}")]
    Deserialization {
        /// The file (or role) being read.
        file: String,
        /// What is wrong, naming the field.
        detail: String,
    },
    /// Fewer valid signatures from the role's keys than its threshold.
    #[error("{role}: {valid} valid signature(s) from its keys, threshold {threshold}")]
    Unsigned {
        /// The role whose signatures were counted.
        role: String,
        /// Distinct keys of the role with a valid signature.
        valid: usize,
        /// Signatures the role needs.
        threshold: u64,
    },
    /// The metadata expired before the reference time (a freeze attack, or a vehicle that has
    /// been offline too long).
    #[error("{role} expired at {expires} (now {now})")]
    Expired {
        /// The role.
        role: String,
        /// Its expiry.
        expires: Time,
        /// The reference time.
        now: Time,
    },
    /// A version went backwards, or is not the one the signed chain pins.
    #[error("{role}: {detail}")]
    BadVersion {
        /// The role.
        role: String,
        /// Which versions.
        detail: String,
    },
    /// The remote timestamp has the version already trusted: nothing new (not an attack).
    #[error("{role}: version {version} is already trusted")]
    EqualVersion {
        /// The role.
        role: String,
        /// The version.
        version: u64,
    },
    /// A file's length or hash differs from what signed metadata says, or uses a hash we
    /// cannot check.
    #[error("{file}: {detail}")]
    LengthOrHashMismatch {
        /// The file.
        file: String,
        /// What differs.
        detail: String,
    },
    /// The repository sent more bytes than the limit for this file (endless data).
    #[error("{file}: more than the {limit} bytes allowed")]
    DownloadLength {
        /// The file.
        file: String,
        /// The limit.
        limit: u64,
    },
    /// The repository could not give the file.
    #[error("fetching {file}: {detail}")]
    Fetch {
        /// The file.
        file: String,
        /// Why.
        detail: String,
    },
    /// Any other inconsistency in the repository (a role missing from the snapshot, a
    /// delegation that does not exist, a snapshot that drops a role).
    #[error("{0}")]
    Repository(String),
    /// A response was handed to an operation that asked for no file: its driver broke the
    /// [`Operation`] protocol.
    #[error("a response was handed over with no file asked for")]
    NotAsked,
    /// Storing trusted metadata locally failed.
    #[error("storing {file}: {detail}")]
    Store {
        /// The file.
        file: String,
        /// Why.
        detail: String,
    },
}

impl TufError {
    /// The file the repository said it does not have ([`FetchError::NotFound`]: an HTTP
    /// 403/404, a peer that does not serve the name), when that is the error.
    pub fn not_found(&self) -> Option<&str> {
        match self {
            Self::Fetch { file, detail } if detail == updater::NOT_FOUND => Some(file),
            _ => None,
        }
    }
}
