//! `origin verify`: checks a repository directory the way a vehicle would, but instead of
//! stopping at the first problem it lists every one, each naming its file.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use proto::tuf::metadata::{Key, Role, Root, Signed, Snapshot, Targets, Timestamp};
use proto::tuf::{Time, TufError};

use crate::repo::latest_version;

/// Every problem found in the repository under `dir` (`metadata/`, and `targets/` when
/// `check_targets`), at time `now`. Empty: the repository is sound.
pub fn verify_repository(dir: &Path, check_targets: bool, now: Time) -> Vec<String> {
    let mut problems = Vec::new();
    let metadata = dir.join("metadata");
    let read = |name: &str, problems: &mut Vec<String>| -> Option<Vec<u8>> {
        match fs::read(metadata.join(name)) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                problems.push(format!("{}: {error}", metadata.join(name).display()));
                None
            }
        }
    };
    // Root chain: 1.root.json self-signed, each N+1 signed by N and by itself.
    let latest_root = match latest_version(&metadata, "root") {
        Ok(Some(version)) => version,
        Ok(None) => {
            problems.push(format!(
                "{}: no root metadata (1.root.json)",
                metadata.display()
            ));
            return problems;
        }
        Err(error) => {
            problems.push(format!("{error:#}"));
            return problems;
        }
    };
    let mut root: Option<Signed<Root>> = None;
    for version in 1..=latest_root {
        let name = format!("{version}.root.json");
        let Some(bytes) = read(&name, &mut problems) else {
            continue;
        };
        let parsed = match Signed::<Root>::from_bytes(&bytes, &name) {
            Ok(parsed) => parsed,
            Err(error) => {
                problems.push(error.to_string());
                continue;
            }
        };
        if parsed.signed.version() != version {
            problems.push(format!("{name}: holds version {}", parsed.signed.version()));
        }
        for (keyid, key) in &parsed.signed.keys {
            if let Key::Unsupported { keytype, scheme } = key {
                problems.push(format!(
                    "{name}: field signed.keys.{keyid}: unsupported key type {keytype}/{scheme}"
                ));
            }
        }
        let signers = [root.as_ref().map(|r| &r.signed), Some(&parsed.signed)];
        for signer in signers.into_iter().flatten() {
            if let Some(role) = signer.roles.get("root") {
                if let Err(error) = parsed.verify("root", &signer.keys, role) {
                    problems.push(format!("{name}: {error} (root v{})", signer.common.version));
                }
            }
        }
        root = Some(parsed);
    }
    let Some(root) = root else {
        return problems;
    };
    let expired = |role: &str, file: &str, expires: Time, problems: &mut Vec<String>| {
        if now >= expires {
            problems.push(format!(
                "{file}: {}",
                TufError::Expired {
                    role: role.into(),
                    expires,
                    now
                }
            ));
        }
    };
    expired(
        "root",
        &format!("{latest_root}.root.json"),
        root.signed.common.expires,
        &mut problems,
    );
    let by_root = |role: &str| root.signed.roles.get(role).cloned();

    // Timestamp → snapshot → targets.
    let Some(bytes) = read("timestamp.json", &mut problems) else {
        return problems;
    };
    let timestamp = match Signed::<Timestamp>::from_bytes(&bytes, "timestamp.json") {
        Ok(timestamp) => timestamp,
        Err(error) => {
            problems.push(error.to_string());
            return problems;
        }
    };
    if let Some(role) = by_root("timestamp") {
        if let Err(error) = timestamp.verify("timestamp", &root.signed.keys, &role) {
            problems.push(format!("timestamp.json: {error}"));
        }
    }
    expired(
        "timestamp",
        "timestamp.json",
        timestamp.signed.common.expires,
        &mut problems,
    );
    let pin = &timestamp.signed.snapshot;
    let snapshot_name = format!("{}.snapshot.json", pin.version);
    let Some(bytes) = read(&snapshot_name, &mut problems) else {
        return problems;
    };
    if let Err(error) = pin.verify(&snapshot_name, &bytes) {
        problems.push(format!("{error} (pinned by timestamp.json)"));
    }
    let snapshot = match Signed::<Snapshot>::from_bytes(&bytes, &snapshot_name) {
        Ok(snapshot) => snapshot,
        Err(error) => {
            problems.push(error.to_string());
            return problems;
        }
    };
    if let Some(role) = by_root("snapshot") {
        if let Err(error) = snapshot.verify("snapshot", &root.signed.keys, &role) {
            problems.push(format!("{snapshot_name}: {error}"));
        }
    }
    if snapshot.signed.version() != pin.version {
        problems.push(format!(
            "{snapshot_name}: holds version {}",
            snapshot.signed.version()
        ));
    }
    expired(
        "snapshot",
        &snapshot_name,
        snapshot.signed.common.expires,
        &mut problems,
    );
    let mut targets_roles: BTreeMap<String, Signed<Targets>> = BTreeMap::new();
    for (file, meta) in &snapshot.signed.meta {
        let role = file.trim_end_matches(".json");
        let name = format!("{}.{file}", meta.version);
        let Some(bytes) = read(&name, &mut problems) else {
            continue;
        };
        if let Err(error) = meta.verify(&name, &bytes) {
            problems.push(format!("{error} (pinned by {snapshot_name})"));
        }
        match Signed::<Targets>::from_bytes(&bytes, &name) {
            Ok(targets) => {
                if targets.signed.version() != meta.version {
                    problems.push(format!(
                        "{name}: holds version {}",
                        targets.signed.version()
                    ));
                }
                expired(role, &name, targets.signed.common.expires, &mut problems);
                targets_roles.insert(role.to_string(), targets);
            }
            Err(error) => problems.push(error.to_string()),
        }
    }
    // Signatures of targets roles: top-level by the root, delegated ones by their delegator.
    for (role, targets) in &targets_roles {
        let name = format!("{role}.json");
        if role == "targets" {
            if let Some(keys) = by_root("targets") {
                if let Err(error) = targets.verify("targets", &root.signed.keys, &keys) {
                    problems.push(format!("{name}: {error}"));
                }
            }
            continue;
        }
        let delegator = targets_roles.iter().find_map(|(parent, signed)| {
            let delegations = signed.signed.delegations.as_ref()?;
            let delegated = delegations.roles.iter().find(|r| &r.name == role)?;
            Some((parent, delegations, delegated))
        });
        match delegator {
            None => problems.push(format!(
                "{name}: listed in the snapshot but no role delegates to it"
            )),
            Some((_, delegations, delegated)) => {
                if let Err(error) = targets.verify(role, &delegations.keys, &delegated.keys) {
                    problems.push(format!("{name}: {error}"));
                }
            }
        }
    }
    if !targets_roles.contains_key("targets") && !snapshot.signed.meta.contains_key("targets.json")
    {
        problems.push(format!("{snapshot_name}: does not list targets.json"));
    }
    if check_targets {
        for targets in targets_roles.values() {
            for (path, file) in &targets.signed.targets {
                for hash in file.hashes.values() {
                    let on_disk = match path.rsplit_once('/') {
                        Some((dir_part, name)) => format!("{dir_part}/{hash}.{name}"),
                        None => format!("{hash}.{path}"),
                    };
                    let full = dir.join("targets").join(&on_disk);
                    match fs::read(&full) {
                        Ok(bytes) => {
                            if let Err(error) = file.verify(path, &bytes) {
                                problems.push(format!("{}: {error}", full.display()));
                            }
                            let blake3 = file.custom.as_ref().and_then(|c| c["blake3"].as_str());
                            if let Some(expected) = blake3 {
                                if blake3::hash(&bytes).to_hex().as_str() != expected {
                                    problems.push(format!(
                                        "{}: BLAKE3 differs from custom.blake3 of {path}",
                                        full.display()
                                    ));
                                }
                            }
                        }
                        Err(error) => {
                            problems.push(format!("{}: {error} (target {path})", full.display()))
                        }
                    }
                }
            }
        }
    }
    problems
}
