//! The origin as a whole, for its operator: made with fresh keys, its keys listed and rotated,
//! every repository's timestamp refreshed, every repository verified. "Every repository" is the
//! image repository, the director, and each vehicle's director repository.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use proto::tuf::keys::KeyType;
use proto::tuf::signer::Signer as _;
use serde_json::{Value, json};

use crate::keystore::{KeyStore, NewKey};
use crate::repo::{self, Origin};
use crate::{audit, director, keys, verify};

/// Makes a new origin: both repositories with fresh keys of `kind` (by default the store's:
/// ed25519 in files, ECDSA P-256 in a token); the offline ones into `origin.offline_keys`, a
/// directory outside the origin directory or a PKCS #11 token; the fleet key
/// ([`crate::fleet`]) and the director's TLS.
pub fn init(origin: &Origin, kind: Option<KeyType>) -> anyhow::Result<()> {
    let offline = origin.offline_keys.as_ref().context(
        "give --offline-keys DIR or a pkcs11: URI: where the offline root and targets keys go",
    )?;
    let absolute = |path: &Path| fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fs::create_dir_all(&origin.dir)
        .with_context(|| format!("creating {}", origin.dir.display()))?;
    if let KeyStore::Dir(offline) = offline {
        fs::create_dir_all(offline).with_context(|| format!("creating {}", offline.display()))?;
        if absolute(offline).starts_with(absolute(&origin.dir)) {
            bail!(
                "--offline-keys {} is inside the origin directory; offline keys must be kept apart",
                offline.display()
            );
        }
    }
    for repository in repo::REPOSITORIES {
        let metadata = Origin::metadata_key(repository);
        if !origin.storage.list(&metadata)?.is_empty() {
            bail!(
                "{} exists; the origin is already initialised",
                origin.storage.describe(&metadata)
            );
        }
    }
    for repository in repo::REPOSITORIES {
        origin.init_repository(repository, kind)?;
    }
    keys::create(&crate::fleet::key_path(origin))?;
    // Made now, so that a second machine given this origin's keys/ signs the same chain.
    audit::key(origin)?;
    crate::tls::init(origin, &[])
}

/// The public description of every key of the origin: repository, role, key id, public key,
/// and whether it is offline; last, the audit log's key (made on first use), for auditors.
/// Never the private halves.
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
    let audit = audit::key(origin)?.verifying_key();
    out.push(json!({"role": "audit", "public_key": hex::encode(audit.as_bytes())}));
    Ok(out)
}

/// Every repository of the origin, by name under its directory.
pub fn repositories(origin: &Origin) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = repo::REPOSITORIES
        .iter()
        .map(|r| (*r).to_string())
        .collect();
    for vin in director::vehicles(origin)? {
        all.push(director::vehicle_repository(&vin));
    }
    Ok(all)
}

/// Re-signs every repository's timestamp (they expire after a day: run it hourly). One that
/// refuses ([`crate::chain`]) does not stop the others, which the fleet still needs fresh; the
/// error names each that refused. A vehicle's repository that a rotation of the director's
/// keys has not reached yet (the rotation was cut short) is brought up to the director's root
/// first ([`director::catch_up`]). Returns the repositories re-signed.
pub fn refresh_timestamps(origin: &Origin) -> anyhow::Result<Vec<String>> {
    let mut refused = Vec::new();
    let mut refreshed = Vec::new();
    for repository in repositories(origin)? {
        let vin = repository
            .strip_prefix("director/vehicles/")
            .and_then(|vin| proto::Vin::parse(vin).ok());
        if let Some(vin) = vin {
            match director::catch_up(origin, &vin) {
                Ok(true) => {
                    refreshed.push(repository);
                    continue;
                }
                Ok(false) => {}
                Err(error) => {
                    refused.push(format!("the {repository} rotation: {error:#}"));
                    continue;
                }
            }
        }
        match origin.refresh_timestamp(&repository) {
            Ok(()) => refreshed.push(repository),
            Err(error) => refused.push(format!("the {repository} timestamp: {error:#}")),
        }
    }
    if !refused.is_empty() {
        bail!("{}", refused.join("\n"));
    }
    Ok(refreshed)
}

/// Every problem of every repository, each as `<repository>: <problem>` naming its file. Empty:
/// every repository verifies.
pub fn verify(origin: &Origin) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for repository in repositories(origin)? {
        let check_targets = repository == "image";
        // In object storage, checked in a local copy of what a vehicle would fetch.
        let copy;
        let dir = match origin.storage.local_dir() {
            Some(root) => root.join(&repository),
            None => {
                copy = copy_repository(origin, &repository, check_targets)?;
                copy.path().to_path_buf()
            }
        };
        for problem in verify::verify_repository(&dir, check_targets, origin.now) {
            problems.push(format!("{repository}: {problem}"));
        }
    }
    Ok(problems)
}

/// A local copy of `repository`'s metadata (and targets, when `targets`) from the storage.
fn copy_repository(
    origin: &Origin,
    repository: &str,
    targets: bool,
) -> anyhow::Result<tempfile::TempDir> {
    let copy = tempfile::Builder::new()
        .prefix(".verify")
        .tempdir_in(&origin.dir)
        .with_context(|| format!("creating a work directory in {}", origin.dir.display()))?;
    let mut dirs = vec![format!("{repository}/metadata")];
    if targets {
        dirs.push(format!("{repository}/targets"));
    }
    for dir in dirs {
        for listed in origin.storage.list_all(&dir)? {
            let Some(relative) = listed.key.strip_prefix(&format!("{repository}/")) else {
                continue;
            };
            origin
                .storage
                .download(&listed.key, &copy.path().join(relative))?;
        }
    }
    Ok(copy)
}

/// Replaces `role`'s key of `repository` (`image` or `director`) with `new_key` (see
/// [`Origin::rotate`]); after a director rotation, each vehicle's director repository follows.
/// Returns the new root version.
pub fn rotate(
    origin: &Origin,
    actor: &audit::Actor,
    repository: &str,
    role: &str,
    new_key: &NewKey,
) -> anyhow::Result<u64> {
    if repository == "director" {
        director::before_rotation(origin, role)?;
    }
    let version = origin.rotate(repository, role, new_key)?;
    let key_id = origin.key(repository, role)?.public_key().id();
    audit::append(
        origin,
        actor.as_str(),
        "key rotate",
        json!({"repository": repository, "role": role, "root_version": version, "key_id": key_id}),
    )?;
    if repository == "director" {
        for vin in director::vehicles(origin)? {
            director::after_rotation(origin, &vin, role).with_context(|| {
                format!(
                    "re-signing the director metadata of {vin} (root v{version} is signed; \
                     `origin timestamp` brings the vehicles not reached yet up to it)"
                )
            })?;
        }
    }
    Ok(version)
}

/// Delegates `paths` of the image repository to a new role `role` with `key` (see
/// [`Origin::delegate`]), recorded in the audit log as `actor`'s. Returns the new targets
/// version and the role's key id.
pub fn delegate(
    origin: &Origin,
    actor: &audit::Actor,
    role: &str,
    paths: &[String],
    key: &NewKey,
    terminating: bool,
) -> anyhow::Result<(u64, String)> {
    let (version, key_id) = origin.delegate(role, paths, key, terminating)?;
    audit::append(
        origin,
        actor.as_str(),
        "delegate",
        json!({
            "role": role, "paths": paths, "terminating": terminating,
            "key_id": key_id, "targets_version": version,
        }),
    )?;
    Ok((version, key_id))
}

/// Issues the director's server certificate again for `names` (see
/// [`crate::tls::issue_director_cert_valid_for`]), recorded in the audit log as `actor`'s.
pub fn director_cert(
    origin: &Origin,
    actor: &audit::Actor,
    names: &[String],
    days: crate::tls::CertificateDays,
) -> anyhow::Result<()> {
    crate::tls::issue_director_cert_valid_for(origin, names, days)?;
    audit::append(
        origin,
        actor.as_str(),
        "director certificate issue",
        json!({"names": names, "days": days.get()}),
    )?;
    Ok(())
}
