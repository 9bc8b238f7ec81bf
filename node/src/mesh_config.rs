//! The `[mesh]` section a depot's and a vehicle's configuration share: which fleet the node
//! belongs to ([`crate::membership`]), or, said explicitly, that it runs an open mesh.
//!
//! ```toml
//! [mesh]
//! fleet_keys = ["<hex of the fleet key>"]   # `origin member key` prints it
//! certificate = "/etc/depotmesh/member.json" # `origin member issue`, or the enrolment's answer
//! revocations = "/var/lib/depotmesh/revocations.json" # kept by the node; may not exist yet
//! ```
//!
//! Deny by default: a config without `[mesh]` is refused; `open = true` (every peer served)
//! must be written out, and is for closed networks and tests only. The one-shot commands
//! (`depot-cache serve`, `vehicle-peer fetch`, ...) take the same settings as flags
//! ([`MeshArgs`]), and refuse to start without them just as the services do.

use std::path::{Path, PathBuf};

use proto::membership::{FleetKeys, MembershipCert, SignedRevocations};
use serde::Deserialize;

use crate::membership::MeshMembership;

/// The section as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Serve every peer that connects: no membership at all.
    #[serde(default)]
    pub open: bool,
    /// The fleet keys (ed25519 public keys, hex) whose certificates are accepted.
    #[serde(default)]
    pub fleet_keys: Vec<String>,
    /// This node's membership certificate (JSON).
    pub certificate: Option<PathBuf>,
    /// Where the newest verified revocation list is kept (read at start if it exists, written
    /// when a newer one arrives).
    pub revocations: Option<PathBuf>,
}

/// The `[mesh]` section as command-line flags, for the commands that start a node without a
/// configuration file. Giving none of them is refused, as a config without `[mesh]` is.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct MeshArgs {
    /// Serve every peer that connects, fleet member or not (closed networks and tests only).
    #[arg(long, conflicts_with_all = ["fleet_keys", "certificate", "revocations"])]
    pub open_mesh: bool,
    /// A fleet key (ed25519 public key, hex; `origin member key` prints it) whose members this
    /// node serves and dials. Repeatable.
    #[arg(long = "fleet-key", value_name = "HEX")]
    pub fleet_keys: Vec<String>,
    /// This node's membership certificate (`origin member issue`, or the enrolment's answer).
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// The fleet's signed revocation list (read at start when it exists; a newer one the node
    /// is handed is kept there).
    #[arg(long, value_name = "FILE")]
    pub revocations: Option<PathBuf>,
}

impl MeshArgs {
    /// An open mesh, said explicitly (tests, benchmarks on a closed network).
    pub fn open() -> Self {
        Self {
            open_mesh: true,
            ..Self::default()
        }
    }

    /// The flags as the `[mesh]` section they stand for; refuses none at all, naming the flags.
    pub fn section(&self) -> Result<MeshSection, MeshConfigError> {
        if !self.open_mesh
            && self.fleet_keys.is_empty()
            && self.certificate.is_none()
            && self.revocations.is_none()
        {
            return Err(MeshConfigError::NoFlags);
        }
        Ok(MeshSection {
            open: self.open_mesh,
            fleet_keys: self.fleet_keys.clone(),
            certificate: self.certificate.clone(),
            revocations: self.revocations.clone(),
        })
    }

    /// The flags checked and their files read, as [`MeshSection::load`] does; errors name the
    /// flag.
    pub fn load(&self) -> Result<Mesh, MeshConfigError> {
        let section = self.section()?;
        MeshSection::load(Some(&section)).map_err(|error| match error {
            MeshConfigError::Required(key) => MeshConfigError::RequiredFlag(match key {
                "fleet_keys" => "--fleet-key",
                _ => "--certificate",
            }),
            other => other,
        })
    }
}

/// What the section says, checked.
#[derive(Clone, Debug)]
pub enum Mesh {
    /// Every peer is served (`open = true`).
    Open,
    /// Only the fleet's members.
    Fleet {
        /// What the node presents and accepts.
        membership: Box<MeshMembership>,
        /// Where its revocation list is kept.
        revocations: Option<PathBuf>,
    },
}

/// A `[mesh]` section that cannot be used; each names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshConfigError {
    /// No `[mesh]` section.
    #[error(
        "no [mesh] section: give fleet_keys and certificate (the node then serves only the fleet), or open = true to serve every peer"
    )]
    Missing,
    /// A command was given none of the mesh flags.
    #[error(
        "no mesh given: --fleet-key and --certificate (the node then serves only the fleet), or --open-mesh to serve every peer"
    )]
    NoFlags,
    /// A flag is missing.
    #[error("{0} is required unless --open-mesh")]
    RequiredFlag(&'static str),
    /// `open = true` with fleet settings too.
    #[error(
        "mesh.open = true serves every peer; it cannot go with fleet_keys, certificate or revocations"
    )]
    OpenAndFleet,
    /// A key is missing.
    #[error("mesh.{0} is required unless mesh.open = true")]
    Required(&'static str),
    /// A fleet key is not an ed25519 public key in hex.
    #[error("mesh.fleet_keys[{index}]: {reason}")]
    FleetKey {
        /// Its position.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or is not what it should be.
    #[error("mesh.{key}: {}: {reason}", path.display())]
    File {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl MeshSection {
    /// Checks the section (`None`: the config has none) and reads its files.
    pub fn load(section: Option<&Self>) -> Result<Mesh, MeshConfigError> {
        let section = section.ok_or(MeshConfigError::Missing)?;
        if section.open {
            if !section.fleet_keys.is_empty()
                || section.certificate.is_some()
                || section.revocations.is_some()
            {
                return Err(MeshConfigError::OpenAndFleet);
            }
            return Ok(Mesh::Open);
        }
        if section.fleet_keys.is_empty() {
            return Err(MeshConfigError::Required("fleet_keys"));
        }
        let keys = section
            .fleet_keys
            .iter()
            .enumerate()
            .map(|(index, text)| {
                proto::director_api::parse_key(text).map_err(|error| MeshConfigError::FleetKey {
                    index,
                    reason: error.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = section
            .certificate
            .as_deref()
            .ok_or(MeshConfigError::Required("certificate"))?;
        let bytes = read("certificate", path)?;
        let certificate = MembershipCert::decode(&bytes)
            .map_err(|error| file_error("certificate", path, error))?;
        let revocations = match &section.revocations {
            Some(path) => read_revocations(path)?,
            None => None,
        };
        Ok(Mesh::Fleet {
            membership: Box::new(MeshMembership {
                certificate,
                keys: FleetKeys::new(keys),
                revocations,
            }),
            revocations: section.revocations.clone(),
        })
    }
}

impl MeshSection {
    /// The section as one top-level TOML line (`mesh = { ... }`), for configs a program
    /// writes (netsim, tests).
    pub fn inline_toml(&self) -> String {
        let mut fields = Vec::new();
        if self.open {
            fields.push("open = true".to_owned());
        }
        if !self.fleet_keys.is_empty() {
            let keys: Vec<String> = self
                .fleet_keys
                .iter()
                .map(|key| format!("{key:?}"))
                .collect();
            fields.push(format!("fleet_keys = [{}]", keys.join(", ")));
        }
        for (name, path) in [
            ("certificate", &self.certificate),
            ("revocations", &self.revocations),
        ] {
            if let Some(path) = path {
                fields.push(format!("{name} = {:?}", path.display().to_string()));
            }
        }
        format!("mesh = {{ {} }}", fields.join(", "))
    }
}

impl Mesh {
    /// The membership to start the node with; `None` for an open mesh.
    pub fn membership(&self) -> Option<MeshMembership> {
        match self {
            Self::Open => None,
            Self::Fleet { membership, .. } => Some(MeshMembership::clone(membership)),
        }
    }
}

/// The revocation list kept at `path`, if the file exists (its signature is checked when the
/// node starts).
pub fn read_revocations(path: &Path) -> Result<Option<SignedRevocations>, MeshConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| file_error("revocations", path, error)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(file_error("revocations", path, error)),
    }
}

/// Keeps `signed` at `path` ([`crate::storage::replace_file`]), so
/// a restart, even after a power cut, starts with the newest list the node verified.
pub fn keep_revocations(path: &Path, signed: &SignedRevocations) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(signed).map_err(std::io::Error::other)?;
    crate::storage::replace_file(path, &bytes)
}

/// Why a fetched revocation list was not taken or not kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakeRevocationsError {
    /// The node refused it (it does not verify, it is older than the list in force, or the node
    /// runs an open mesh).
    #[error("the revocation list was refused: {0}")]
    Refused(#[from] crate::net::NetError),
    /// It is in force, but could not be kept for the next start.
    #[error("keeping the revocation list in {}: {source}", path.display())]
    Keep {
        /// Where it was to be kept.
        path: PathBuf,
        /// Why it was not.
        source: std::io::Error,
    },
}

/// Hands a fetched revocation list to `net` (which cuts revoked peers off at once) and keeps it
/// at `keep` when it is newer than the list in force. Returns the peers it cut off.
pub async fn take_revocations(
    net: &crate::net::NetHandle,
    signed: SignedRevocations,
    keep: Option<&Path>,
) -> Result<Vec<libp2p::PeerId>, TakeRevocationsError> {
    let held = net.membership_counters().map_or(0, |counters| {
        counters
            .revocations_version
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    let version = signed.revocations.version;
    let revoked = net.update_revocations(signed.clone()).await?;
    if version > held
        && let Some(path) = keep
    {
        keep_revocations(path, &signed).map_err(|source| TakeRevocationsError::Keep {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(revoked)
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, MeshConfigError> {
    std::fs::read(path).map_err(|error| file_error(key, path, error))
}

fn file_error(key: &'static str, path: &Path, error: impl std::fmt::Display) -> MeshConfigError {
    MeshConfigError::File {
        key,
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> MeshSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_flags_deny_by_default_and_name_themselves() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            mesh: MeshArgs,
        }
        let parse = |args: &[&str]| {
            Command::try_parse_from(std::iter::once("command").chain(args.iter().copied()))
                .map(|command| command.mesh)
        };
        let none = parse(&[]).unwrap();
        assert!(matches!(none.load(), Err(MeshConfigError::NoFlags)));
        assert!(matches!(
            parse(&["--open-mesh"]).unwrap().load().unwrap(),
            Mesh::Open
        ));
        assert_eq!(parse(&["--open-mesh"]).unwrap(), MeshArgs::open());
        assert!(parse(&["--open-mesh", "--certificate", "member.json"]).is_err());
        let key = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let cases: [(&[&str], &str); 3] = [
            (&["--certificate", "x"], "--fleet-key is required"),
            (&["--fleet-key", key], "--certificate is required"),
            (
                &[
                    "--fleet-key",
                    key,
                    "--certificate",
                    "/nonexistent/member.json",
                ],
                "/nonexistent/member.json",
            ),
        ];
        for (args, expected) in cases {
            let error = parse(args).unwrap().load().unwrap_err();
            assert!(error.to_string().contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn deny_by_default_and_each_mistake_named() {
        assert!(matches!(
            MeshSection::load(None),
            Err(MeshConfigError::Missing)
        ));
        assert!(matches!(
            MeshSection::load(Some(&section("open = true"))).unwrap(),
            Mesh::Open
        ));
        let cases = [
            ("open = true\ncertificate = \"x\"", "cannot go with"),
            ("certificate = \"x\"", "mesh.fleet_keys is required"),
            ("fleet_keys = [\"abc\"]", "mesh.fleet_keys[0]"),
            (
                "fleet_keys = [\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"]",
                "mesh.certificate is required",
            ),
            (
                "fleet_keys = [\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"]\ncertificate = \"/nonexistent/member.json\"",
                "mesh.certificate: /nonexistent/member.json",
            ),
        ];
        for (text, expected) in cases {
            let error = MeshSection::load(Some(&section(text))).unwrap_err();
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
        assert!(toml::from_str::<MeshSection>("opne = true").is_err());
        let written = MeshSection {
            open: false,
            fleet_keys: vec!["ab".into()],
            certificate: Some("/a \"b\"/member.json".into()),
            revocations: None,
        };
        #[derive(Deserialize)]
        struct Config {
            mesh: MeshSection,
        }
        let read: Config = toml::from_str(&written.inline_toml()).unwrap();
        assert_eq!(read.mesh, written);
    }

    #[test]
    fn a_kept_revocation_list_reads_back_and_a_damaged_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        assert_eq!(read_revocations(&path).unwrap(), None);
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let signed = SignedRevocations::sign(&key, Default::default()).unwrap();
        keep_revocations(&path, &signed).unwrap();
        assert_eq!(read_revocations(&path).unwrap(), Some(signed));
        std::fs::write(&path, b"{\"revocations\":").unwrap();
        let error = read_revocations(&path).unwrap_err();
        assert!(error.to_string().contains("mesh.revocations"), "{error}");
    }
}
