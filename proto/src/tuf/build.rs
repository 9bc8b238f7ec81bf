//! Making signed metadata: key ids, the `signed` parts of each role, and signing them. Used by
//! `origin` to publish repositories and by tests to make repositories that go wrong in exactly
//! one way. Pure functions: the caller holds the keys and writes the files.

use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value, json};
use sha2::Digest;

use super::Time;
use super::canonical::{CanonicalError, to_canonical};
use super::keys::Key;
use super::signer::Signer;

/// The TUF key object of an ed25519 public key.
pub fn key_json(key: &VerifyingKey) -> Value {
    Key::Ed25519(*key).to_json()
}

/// An ed25519 key's id as python-tuf computes it: the SHA-256 of its key object's canonical
/// JSON ([`Key::id`] for every type).
pub fn key_id(key: &VerifyingKey) -> String {
    Key::Ed25519(*key).id()
}

/// A role's keys and threshold, as a root or a delegation lists them.
#[derive(Debug, Clone)]
pub struct RoleSpec<'a> {
    /// The role's name.
    pub name: &'a str,
    /// Its public keys, of any type.
    pub keys: &'a [Key],
    /// Signatures it needs.
    pub threshold: u64,
}

fn keys_and_role(spec: &RoleSpec<'_>, keys: &mut Map<String, Value>) -> Value {
    let keyids: Vec<String> = spec.keys.iter().map(Key::id).collect();
    for key in spec.keys {
        keys.insert(key.id(), key.to_json());
    }
    json!({"keyids": keyids, "threshold": spec.threshold})
}

fn common(kind: &str, version: u64, expires: Time) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("_type".into(), json!(kind));
    map.insert("spec_version".into(), json!("1.0.31"));
    map.insert("version".into(), json!(version));
    map.insert("expires".into(), json!(expires.to_string()));
    map
}

/// The `signed` part of a root listing `roles` (root, targets, snapshot, timestamp).
pub fn root(
    version: u64,
    expires: Time,
    consistent_snapshot: bool,
    roles: &[RoleSpec<'_>],
) -> Value {
    let mut map = common("root", version, expires);
    let mut keys = Map::new();
    let mut role_map = Map::new();
    for spec in roles {
        role_map.insert(spec.name.to_string(), keys_and_role(spec, &mut keys));
    }
    map.insert("consistent_snapshot".into(), json!(consistent_snapshot));
    map.insert("keys".into(), Value::Object(keys));
    map.insert("roles".into(), Value::Object(role_map));
    Value::Object(map)
}

/// The pin of a file: version, length and SHA-256 of its bytes.
pub fn meta_file(version: u64, bytes: &[u8]) -> Value {
    json!({
        "version": version,
        "length": bytes.len(),
        "hashes": {"sha256": hex::encode(sha2::Sha256::digest(bytes))},
    })
}

/// The `signed` part of a timestamp pinning `snapshot` (its bytes and version).
pub fn timestamp(version: u64, expires: Time, snapshot_version: u64, snapshot: &[u8]) -> Value {
    let mut map = common("timestamp", version, expires);
    map.insert(
        "meta".into(),
        json!({"snapshot.json": meta_file(snapshot_version, snapshot)}),
    );
    Value::Object(map)
}

/// The `signed` part of a snapshot pinning targets roles by version.
pub fn snapshot(version: u64, expires: Time, roles: &[(&str, u64)]) -> Value {
    let mut map = common("snapshot", version, expires);
    let meta: Map<String, Value> = roles
        .iter()
        .map(|(role, role_version)| (format!("{role}.json"), json!({"version": role_version})))
        .collect();
    map.insert("meta".into(), Value::Object(meta));
    Value::Object(map)
}

/// What a target entry records of an image: its length and hex digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDigests {
    /// Bytes.
    pub length: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// SHA-512, hex.
    pub sha512: String,
    /// BLAKE3 (the image's blob id), hex.
    pub blake3: String,
}

impl TargetDigests {
    /// The digests of `bytes` (for images held in memory; `origin` streams large ones).
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            length: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
            sha512: hex::encode(sha2::Sha512::digest(bytes)),
            blake3: blake3::hash(bytes).to_hex().to_string(),
        }
    }
}

/// A target entry: length, SHA-256 and SHA-512 of `bytes`, BLAKE3 and `custom` fields merged.
pub fn target_file(bytes: &[u8], custom: Value) -> Value {
    target_entry(&TargetDigests::of(bytes), custom)
}

/// A target entry from `digests`, with the BLAKE3 merged into `custom`.
pub fn target_entry(digests: &TargetDigests, custom: Value) -> Value {
    let mut custom = match custom {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    custom.insert("blake3".into(), json!(digests.blake3));
    json!({
        "length": digests.length,
        "hashes": {"sha256": digests.sha256, "sha512": digests.sha512},
        "custom": custom,
    })
}

/// A delegation from a targets role: `spec`'s keys may sign for `paths`.
#[derive(Debug, Clone)]
pub struct DelegationSpec<'a> {
    /// The delegated role and its keys.
    pub role: RoleSpec<'a>,
    /// Path patterns it may sign for.
    pub paths: &'a [&'a str],
    /// Whether the search stops at it.
    pub terminating: bool,
}

/// The `signed` part of a targets role with `targets` (path → [`target_file`]) and
/// delegations.
pub fn targets(
    version: u64,
    expires: Time,
    targets: Map<String, Value>,
    delegations: &[DelegationSpec<'_>],
) -> Value {
    let mut map = common("targets", version, expires);
    map.insert("targets".into(), Value::Object(targets));
    if !delegations.is_empty() {
        let mut keys = Map::new();
        let roles: Vec<Value> = delegations
            .iter()
            .map(|delegation| {
                let mut role = keys_and_role(&delegation.role, &mut keys);
                if let Value::Object(role) = &mut role {
                    role.insert("name".into(), json!(delegation.role.name));
                    role.insert("paths".into(), json!(delegation.paths));
                    role.insert("terminating".into(), json!(delegation.terminating));
                }
                role
            })
            .collect();
        map.insert("delegations".into(), json!({"keys": keys, "roles": roles}));
    }
    Value::Object(map)
}

/// Why metadata could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// `signed` has no canonical form (a float, say).
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// A key could not sign.
    #[error(transparent)]
    Key(#[from] super::signer::SignError),
}

/// Signs `signed` with each key (of any type, held anywhere) and returns the metadata file's
/// bytes.
pub fn sign(signed: &Value, keys: &[&dyn Signer]) -> Result<Vec<u8>, SignError> {
    let canonical = to_canonical(signed)?;
    let mut signatures = Vec::with_capacity(keys.len());
    for key in keys {
        signatures.push(json!({
            "keyid": key.public_key().id(),
            "sig": hex::encode(key.sign(&canonical)?),
        }));
    }
    let file = json!({"signatures": signatures, "signed": signed});
    // serde_json writes what it parsed; pretty for people who read repositories.
    Ok(serde_json::to_vec_pretty(&file).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_what_python_tuf_computes() {
        // root-0 of ../shared/vectors/tuf/repo (keys/public_keys.json).
        let public: [u8; 32] =
            hex::decode("2e53f0e839860505de4244972d87cb61d2a9a906ebe94492a8b35fb8bcf7f7c3")
                .unwrap()
                .try_into()
                .unwrap();
        let key = VerifyingKey::from_bytes(&public).unwrap();
        assert_eq!(
            key_id(&key),
            "2873343cda97dea0769db0eb4ffeb328635865105737ddb1f55dae00ada37e39"
        );
    }
}
