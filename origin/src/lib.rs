//! The cloud side: release publishing (sign images the TUF/Uptane way, build bao outboards and
//! deltas, publish targets metadata) and the director (per-vehicle signed targets, staged
//! campaigns with gates, and the append-only audit trail).
//!
//! It must never sign a release or promote a campaign wave without recording who approved it, and
//! must keep offline (root, image targets) keys apart from the director's online key.
//!
//! Today: [`keys`] (key files), [`repo`] (the image and director repositories on disk: init,
//! delegations, key rotation, timestamp refresh), [`admin`] (the origin as a whole: made, its
//! keys listed and rotated, every timestamp refreshed, every repository verified), [`release`]
//! (an image signed with its deltas and its audit entry), [`chain`] (the check before every
//! signing that what it builds on verifies), [`director`] (each vehicle's signed
//! director targets), [`fleet`] (the fleet key, mesh membership certificates and revocations),
//! [`audit`] (the append-only log), [`verify`] (every problem of a repository, each naming its
//! file), [`service`] and [`http`] (the director service and its HTTP API), [`jobs`] (its
//! background work: a wave's targets signed, a halt's withdrawn, a batch at a time), [`file_delta`]
//! (`origin delta`) and [`operator_file`] (the operator's campaign and vehicle files).

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod campaign;
pub mod chain;
pub mod director;
pub mod file_delta;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod keystore;
pub mod mesh;
mod metrics;
pub mod mirror;
pub mod oidc;
pub mod operator_file;
pub mod operators;
pub mod pkcs11;
pub mod publish;
pub mod registry;
pub mod release;
pub mod repo;
pub mod service;
pub mod storage;
pub mod tls;
pub mod verify;

pub use admin::init;
pub use audit::{Actor, AuditedError};
pub use node::storage::replace_file as write_durably;
pub use release::{Release, Released};
pub use repo::Origin;
