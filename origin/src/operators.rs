//! The people (and automation) who may change the fleet: operators, their roles, the
//! credentials that prove who they are, and the keys their approvals are signed with.
//!
//! The registry is one file, `DIR/operators.json`, written by `origin operator add|remove` and
//! read by `origin serve` again whenever it changes (a removed operator is refused at their next
//! request). Each entry and each change is also an entry of the audit log, so an auditor can
//! rebuild who held which key when (`origin audit verify` checks approvals against those
//! entries, not against this file).
//!
//! An operator is named by a [`OperatorName`]: lowercase letters, digits and `.`, `_`, `-`,
//! `@`, never a name the director writes itself ([`RESERVED`]), so no request can be recorded
//! as the gates or pass a check as someone else under a variant of their name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::repo::Origin;

/// Names the director writes in the audit log itself; no operator may take one.
pub const RESERVED: [&str; 4] = ["director-gates", "director", "origin", "vehicle"];

/// What an operator may do. Every route of the director service names the one it needs
/// (`origin::http::auth`); an operator with any role may also view.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Sees campaigns, vehicles and metrics.
    Viewer,
    /// Creates campaigns.
    ReleaseManager,
    /// Approves campaigns and resumes halted ones, each time with a signature of their own key.
    Approver,
    /// Halts, resumes and aborts campaigns (resuming also takes approvers' signatures).
    Operator,
    /// Enrols vehicles, rotates their keys, and revokes fleet members.
    Provisioner,
    /// Reads the audit log.
    Auditor,
    /// Manages operators.
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 7] = [
        Role::Viewer,
        Role::ReleaseManager,
        Role::Approver,
        Role::Operator,
        Role::Provisioner,
        Role::Auditor,
        Role::Admin,
    ];

    /// Its name, as written in files, tokens' role claims and errors.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::ReleaseManager => "release-manager",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Provisioner => "provisioner",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// The role called `name`, if there is one.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operator's name: 1–64 of `a-z 0-9 . _ - @`, starting with a letter or digit, not
/// [`RESERVED`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OperatorName(String);

/// Why a name is not an operator's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty, too long, or with a character outside the set.
    #[error("operator name {0:?} must be 1-64 of a-z 0-9 . _ - @, starting with a letter or digit")]
    Malformed(String),
    /// A name the director writes itself.
    #[error("operator name {0:?} is reserved for the director")]
    Reserved(String),
}

impl OperatorName {
    /// `name`, checked.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_@".contains(c);
        let first_ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || name.len() > 64 || !name.chars().all(allowed) {
            return Err(NameError::Malformed(name.to_string()));
        }
        if RESERVED.contains(&name) {
            return Err(NameError::Reserved(name.to_string()));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OperatorName {
    type Error = NameError;

    fn try_from(name: String) -> Result<Self, NameError> {
        Self::new(&name)
    }
}

impl From<OperatorName> for String {
    fn from(name: OperatorName) -> String {
        name.0
    }
}

impl std::str::FromStr for OperatorName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<Self, NameError> {
        Self::new(name)
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One operator as the registry keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// What they may do.
    pub roles: BTreeSet<Role>,
    /// SHA-256 (hex) of each client certificate issued to them that is still accepted.
    #[serde(default)]
    pub certificates: BTreeSet<String>,
    /// Their approval key (ed25519 public key, hex): approvals and resumes they sign verify
    /// under it. None: they cannot approve.
    #[serde(default)]
    pub approval_key: Option<String>,
}

/// The registry: every operator by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operators {
    /// Operators by name.
    pub operators: BTreeMap<OperatorName, Operator>,
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a registry.
    #[error("{path}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
}

impl Operators {
    /// Where `origin` keeps its registry.
    pub fn path(origin: &Origin) -> PathBuf {
        origin.dir.join("operators.json")
    }

    /// The registry at `path`; empty when there is no file yet.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(RegistryError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| RegistryError::Malformed {
            path: path.to_path_buf(),
            detail: format!("{}: {}", e.path(), e.inner()),
        })
    }

    /// Writes the registry to `path` durably (a reader sees the old file or the new one).
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| RegistryError::Malformed {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        crate::write_durably(path, &text).map_err(|source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The operator a client certificate (by fingerprint) was issued to.
    pub fn by_certificate(&self, fingerprint: &str) -> Option<(&OperatorName, &Operator)> {
        self.operators
            .iter()
            .find(|(_, operator)| operator.certificates.contains(fingerprint))
    }
}

/// What `origin operator add` made: the files the operator takes away.
#[derive(Debug, Clone)]
pub struct Added {
    /// Their client certificate (PEM).
    pub certificate: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Their approval key (ed25519, mode 0600), if they were given one.
    pub approval_key: Option<PathBuf>,
    /// The certificate's SHA-256, hex.
    pub fingerprint: String,
}

/// How long an operator's certificate is valid by default.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;

/// Adds operator `name` with `roles` (or gives an existing one a new certificate and these
/// roles): issues a client certificate valid `days` from `origin.now` under the operator CA
/// into `out/NAME.pem` and `out/NAME.key`, and, for an approver or operator, an approval key
/// `out/NAME.approval.key` (unless they have one). Recorded in the registry and the audit log
/// as done by `actor`.
pub fn add(
    origin: &Origin,
    actor: &crate::Actor,
    name: &OperatorName,
    roles: &BTreeSet<Role>,
    days: u32,
    out: &Path,
) -> anyhow::Result<Added> {
    use anyhow::Context;
    if roles.is_empty() {
        anyhow::bail!("give {name} at least one --role");
    }
    let path = Operators::path(origin);
    let mut registry = Operators::load(&path)?;
    let now = origin.now.unix();
    let credential = crate::tls::issue_operator_cert(
        origin,
        name.as_str(),
        now - 60,
        now + i64::from(days) * 86_400,
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let certificate = out.join(format!("{name}.pem"));
    let key = out.join(format!("{name}.key"));
    crate::keys::write_secret(&key, credential.key_pem.as_bytes())?;
    crate::write_durably(&certificate, credential.cert_pem.as_bytes())
        .with_context(|| format!("writing {}", certificate.display()))?;
    let entry = registry
        .operators
        .entry(name.clone())
        .or_insert_with(|| Operator {
            roles: BTreeSet::new(),
            certificates: BTreeSet::new(),
            approval_key: None,
        });
    entry.roles.clone_from(roles);
    entry.certificates.insert(credential.fingerprint.clone());
    let signs = roles.contains(&Role::Approver) || roles.contains(&Role::Operator);
    let mut approval_key = None;
    if signs && entry.approval_key.is_none() {
        let file = out.join(format!("{name}.approval.key"));
        let signing = crate::keys::generate();
        crate::keys::write_secret(&file, hex::encode(signing.to_bytes()).as_bytes())?;
        entry.approval_key = Some(hex::encode(signing.verifying_key().as_bytes()));
        approval_key = Some(file);
    }
    let detail = serde_json::json!({
        "operator": name,
        "roles": roles,
        "certificate": credential.fingerprint,
        "approval_key": entry.approval_key,
    });
    registry.save(&path)?;
    crate::audit::append(origin, actor.as_str(), "operator add", detail)?;
    Ok(Added {
        certificate,
        key,
        approval_key,
        fingerprint: credential.fingerprint,
    })
}

/// Removes operator `name`: their certificates are refused from the next request on.
/// Recorded in the audit log as done by `actor`.
pub fn remove(origin: &Origin, actor: &crate::Actor, name: &OperatorName) -> anyhow::Result<()> {
    let path = Operators::path(origin);
    let mut registry = Operators::load(&path)?;
    if registry.operators.remove(name).is_none() {
        anyhow::bail!("there is no operator {name}");
    }
    registry.save(&path)?;
    crate::audit::append(
        origin,
        actor.as_str(),
        "operator remove",
        serde_json::json!({"operator": name}),
    )?;
    Ok(())
}

/// Reads an approval key file (`NAME.approval.key`: the ed25519 seed, hex).
pub fn load_approval_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("{}: not an approval key (64 hex digits)", path.display()))?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_strict_and_never_the_directors() {
        for good in ["alice", "bob@safety", "ci.release-bot_2", "7eleven"] {
            assert!(OperatorName::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "alice ",
            " alice",
            "Alice",
            "al ice",
            "-x",
            ".x",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(OperatorName::new(bad), Err(NameError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            OperatorName::new("director-gates"),
            Err(NameError::Reserved(_))
        ));
    }

    #[test]
    fn roles_read_and_write_by_name() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.name()));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_bad_registry_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operators.json");
        assert_eq!(Operators::load(&path).unwrap(), Operators::default());
        std::fs::write(
            &path,
            r#"{"operators": {"alice": {"roles": ["approver", "god"]}}}"#,
        )
        .unwrap();
        let error = Operators::load(&path).unwrap_err().to_string();
        assert!(error.contains("operators.alice.roles"), "{error}");
        std::fs::write(&path, r#"{"operators": {"Alice": {"roles": []}}}"#).unwrap();
        let error = Operators::load(&path).unwrap_err().to_string();
        assert!(error.contains("Alice"), "{error}");
    }
}
