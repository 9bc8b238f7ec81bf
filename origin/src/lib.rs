//! The cloud side: release publishing (sign images the TUF/Uptane way, build bao outboards and
//! deltas, publish targets metadata) and the director (per-vehicle signed targets, staged
//! campaigns with gates, and the append-only audit trail).
//!
//! It must never sign a release or promote a campaign wave without recording who approved it, and
//! must keep offline (root, image targets) keys apart from the director's online key.
//!
//! Today: [`keys`] (key files), [`repo`] (the image and director repositories on disk: init,
//! delegations, key rotation, timestamp refresh), [`release`] (an image signed with its deltas
//! and its audit entry), [`director`] (each vehicle's signed director targets), [`audit`] (the
//! append-only log) and [`verify`] (every problem of a repository, each naming its file).

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub mod audit;
pub mod campaign;
pub mod director;
pub mod http;
pub mod keys;
mod metrics;
pub mod registry;
pub mod release;
pub mod repo;
pub mod service;
pub mod verify;

pub use audit::{Actor, AuditedError};
pub use node::storage::replace_file as write_durably;
pub use release::{Release, Released};
pub use repo::Origin;

/// Makes a new origin: both repositories with fresh keys; the offline ones into
/// `origin.offline_keys`, which must not be inside the origin directory.
pub fn init(origin: &Origin) -> anyhow::Result<()> {
    let offline = origin
        .offline_keys
        .as_ref()
        .context("give --offline-keys DIR: where the offline root and targets keys go")?;
    let absolute = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fs::create_dir_all(&origin.dir)
        .with_context(|| format!("creating {}", origin.dir.display()))?;
    fs::create_dir_all(offline).with_context(|| format!("creating {}", offline.display()))?;
    if absolute(offline).starts_with(absolute(&origin.dir)) {
        bail!(
            "--offline-keys {} is inside the origin directory; offline keys must be kept apart",
            offline.display()
        );
    }
    for repository in repo::REPOSITORIES {
        if origin.metadata_dir(repository).exists() {
            bail!(
                "{} exists; the origin is already initialised",
                origin.metadata_dir(repository).display()
            );
        }
    }
    for repository in repo::REPOSITORIES {
        origin.init_repository(repository)?;
    }
    Ok(())
}

/// The public description of every key of the origin: repository, role, key id, public key,
/// and whether it is offline. Never the private halves.
pub fn describe_keys(origin: &Origin) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for repository in repo::REPOSITORIES {
        let (_, root) = origin.latest(repository, "root")?;
        for role in repo::ROLES {
            for keyid in root["roles"][role]["keyids"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let keyid = keyid.as_str().unwrap_or_default();
                out.push(json!({
                    "repository": repository,
                    "role": role,
                    "keyid": keyid,
                    "public": root["keys"][keyid]["keyval"]["public"],
                    "offline": repo::is_offline(repository, role),
                }));
            }
        }
        // Roles the top-level targets delegates to, with the keys it lists for them.
        let (_, targets) = origin.latest(repository, "targets")?;
        let delegations = &targets["delegations"];
        for role in delegations["roles"].as_array().into_iter().flatten() {
            let name = role["name"].as_str().unwrap_or_default();
            for keyid in role["keyids"].as_array().into_iter().flatten() {
                let keyid = keyid.as_str().unwrap_or_default();
                out.push(json!({
                    "repository": repository,
                    "role": name,
                    "delegated_paths": role["paths"],
                    "keyid": keyid,
                    "public": delegations["keys"][keyid]["keyval"]["public"],
                    "offline": repo::is_offline(repository, name),
                }));
            }
        }
    }
    Ok(out)
}
