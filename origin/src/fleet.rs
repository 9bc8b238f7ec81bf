//! The fleet's membership, the origin's side: the fleet key, the membership certificates it
//! issues, and the signed list of peers thrown out early (see [`proto::membership`] for what
//! they say and how nodes check them).
//!
//! The fleet key is an online key (`keys/fleet-membership.json`, the origin's key file format):
//! the director issues a vehicle's certificate when the vehicle is enrolled. `origin init` makes
//! it; an origin made before fleet membership gets it at the first command that needs it
//! ([`ensure_key`]). Nodes are configured with its public half (`origin member key`).
//!
//! The revocation list is `fleet/revocations.json`, a [`SignedRevocations`] whose version grows
//! by one with every revocation. It is changed under a lock (the CLI and `origin serve` may
//! both revoke) and replaced whole, durably (written beside, synced, renamed), so a reader sees
//! the old list or the new one; it is read back only when it verifies under the fleet key.
//! Every issue and revocation is an entry of the audit log.

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use ed25519_dalek::{SigningKey, VerifyingKey};
use proto::membership::{
    FleetKeys, MemberRole, Membership, MembershipCert, Revocations, SignedRevocations, key_id,
};
use serde_json::json;

use crate::repo::Origin;
use crate::{Actor, audit, keys};

/// How long a membership certificate holds unless told otherwise.
pub const DEFAULT_VALIDITY_DAYS: u32 = 365;

/// The longest a membership certificate may hold: a lost node must drop out some day even if
/// nobody revokes it.
pub const MAX_VALIDITY_DAYS: u32 = 3650;

/// The largest revocation list file read: [`proto::membership::MAX_REVOKED`] peer ids of at
/// most 128 characters, with the JSON around them.
const MAX_REVOCATIONS_FILE: u64 = proto::membership::MAX_REVOKED as u64 * 140 + 4096;

/// Why a membership is not issued or a peer not revoked as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The peer id is not a libp2p peer id.
    #[error("peer {peer:?} is not a libp2p peer id: {detail}")]
    BadPeer {
        /// The text given (at most 128 characters of it).
        peer: String,
        /// What is wrong.
        detail: String,
    },
    /// A validity of no days, or of more than [`MAX_VALIDITY_DAYS`].
    #[error("a membership must hold 1 to {MAX_VALIDITY_DAYS} days, not {0}")]
    BadValidity(u32),
}

/// The fleet key's public half, as nodes are configured with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetPublicKey {
    /// The ed25519 public key, hex: a node's `fleet_key`.
    pub fleet_key: String,
    /// Its [`key_id`], as certificates and revocation lists name their signer.
    pub key_id: String,
}

/// The fleet key's file.
pub fn key_path(origin: &Origin) -> PathBuf {
    origin.dir.join("keys").join("fleet-membership.json")
}

/// The revocation list's file.
pub fn revocations_path(origin: &Origin) -> PathBuf {
    origin.dir.join("fleet").join("revocations.json")
}

/// Makes the fleet key of an origin that has none (one made before fleet membership); returns
/// whether it made it, so that the caller can say so.
pub fn ensure_key(origin: &Origin) -> anyhow::Result<bool> {
    let path = key_path(origin);
    if path.exists() {
        return Ok(false);
    }
    match keys::create(&path) {
        Ok(_) => Ok(true),
        // Made by another process (the CLI and `origin serve`) since the check.
        Err(_) if path.exists() => Ok(false),
        Err(error) => Err(error),
    }
}

/// The fleet signing key, made first when missing ([`ensure_key`]).
fn signing_key(origin: &Origin) -> anyhow::Result<SigningKey> {
    if ensure_key(origin)? {
        tracing::warn!(file = %key_path(origin).display(), "made the missing fleet key");
    }
    keys::load(&key_path(origin))
}

/// The fleet key's public half.
pub fn public_key(origin: &Origin) -> anyhow::Result<VerifyingKey> {
    Ok(signing_key(origin)?.verifying_key())
}

/// The fleet key's public half as nodes are configured with it.
pub fn describe_key(origin: &Origin) -> anyhow::Result<FleetPublicKey> {
    let key = public_key(origin)?;
    Ok(FleetPublicKey {
        fleet_key: hex::encode(key.as_bytes()),
        key_id: key_id(&key),
    })
}

/// The fleet keys a node of this fleet trusts: this origin's.
pub fn fleet_keys(origin: &Origin) -> anyhow::Result<FleetKeys> {
    Ok(FleetKeys::new([public_key(origin)?]))
}

/// `peer` as a libp2p peer id, in its canonical text (what a node compares with the identity a
/// connection proved).
pub fn parse_peer(peer: &str) -> Result<String, MemberError> {
    let bad = |detail: String| MemberError::BadPeer {
        peer: peer.chars().take(128).collect(),
        detail,
    };
    proto::membership::check_peer_text(peer).map_err(|e| bad(e.to_string()))?;
    let id: libp2p::PeerId = peer.parse().map_err(|e| bad(format!("{e}")))?;
    Ok(id.to_string())
}

/// Issues a membership certificate for `peer` in `role`, from `origin.now` for `days` days,
/// recorded in the audit log as done by `actor`.
pub fn issue(
    origin: &Origin,
    actor: &Actor,
    peer: &str,
    role: MemberRole,
    days: u32,
) -> anyhow::Result<MembershipCert> {
    let peer = parse_peer(peer)?;
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(MemberError::BadValidity(days).into());
    }
    let key = signing_key(origin)?;
    let issued = u64::try_from(origin.now.unix()).context("the clock is before 1970")?;
    let membership = Membership {
        peer,
        role,
        issued,
        expires: issued + u64::from(days) * 86_400,
    };
    let signed = audit::audited(
        origin,
        actor,
        "member issue",
        || Ok(MembershipCert::issue(&key, membership)?),
        |cert| {
            let m = &cert.membership;
            (
                format!("the membership certificate of {}", m.peer),
                json!({"peer": m.peer, "role": m.role, "issued": m.issued,
                       "expires": m.expires, "key_id": cert.key_id}),
            )
        },
    )?;
    Ok(signed)
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The list now in force.
    pub list: SignedRevocations,
    /// Whether the peer was revoked already (then nothing changed and nothing was recorded).
    pub already: bool,
}

/// The revocation list, locked for a change until dropped.
struct Locked {
    _lock: fs::File,
}

fn lock(origin: &Origin) -> anyhow::Result<Locked> {
    let path = revocations_path(origin).with_extension("lock");
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    fs2::FileExt::lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))?;
    Ok(Locked { _lock: file })
}

/// The list on disk, verified under `key`; version 0, empty, signed and written when there is
/// none yet. The caller holds the lock.
fn current(
    origin: &Origin,
    key: &SigningKey,
    _locked: &Locked,
) -> anyhow::Result<SignedRevocations> {
    let path = revocations_path(origin);
    let bytes = match fs::File::open(&path) {
        Ok(file) => {
            use std::io::Read;
            let mut bytes = Vec::new();
            file.take(MAX_REVOCATIONS_FILE + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            bytes
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let issued = u64::try_from(origin.now.unix()).context("the clock is before 1970")?;
            let first = SignedRevocations::sign(
                key,
                Revocations {
                    version: 0,
                    issued,
                    peers: Default::default(),
                },
            )?;
            write(origin, &first)?;
            return Ok(first);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes.len() as u64 > MAX_REVOCATIONS_FILE {
        anyhow::bail!(
            "{}: over the {MAX_REVOCATIONS_FILE} bytes a revocation list may hold",
            path.display()
        );
    }
    let signed: SignedRevocations = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a signed revocation list", path.display()))?;
    FleetKeys::new([key.verifying_key()])
        .verify_revocations(&signed, 0)
        .with_context(|| {
            format!(
                "{}: does not verify under this origin's fleet key",
                path.display()
            )
        })?;
    Ok(signed)
}

fn write(origin: &Origin, signed: &SignedRevocations) -> anyhow::Result<()> {
    let path = revocations_path(origin);
    let bytes = serde_json::to_vec_pretty(signed)?;
    crate::write_durably(&path, &bytes).with_context(|| format!("writing {}", path.display()))
}

/// The revocation list in force, verified under the fleet key (version 0, empty, when nobody
/// was revoked yet).
pub fn revocations(origin: &Origin) -> anyhow::Result<SignedRevocations> {
    let key = signing_key(origin)?;
    let locked = lock(origin)?;
    current(origin, &key, &locked)
}

/// Throws `peer` out of the fleet: the list gains it, its version grows by one, it is signed
/// at `origin.now`, and the revocation recorded in the audit log as done by `actor`. A peer
/// revoked already changes nothing ([`Revoked::already`]).
pub fn revoke(origin: &Origin, actor: &Actor, peer: &str) -> anyhow::Result<Revoked> {
    let peer = parse_peer(peer)?;
    let key = signing_key(origin)?;
    let locked = lock(origin)?;
    let list = current(origin, &key, &locked)?;
    if list.revocations.revokes(&peer) {
        return Ok(Revoked {
            list,
            already: true,
        });
    }
    let mut next = list.revocations.clone();
    next.version += 1;
    next.issued = u64::try_from(origin.now.unix()).context("the clock is before 1970")?;
    next.peers.insert(peer.clone());
    let signed = SignedRevocations::sign(&key, next)?;
    let list = audit::audited(
        origin,
        actor,
        "member revoke",
        || {
            write(origin, &signed)?;
            Ok(signed)
        },
        |signed| {
            let version = signed.revocations.version;
            (
                format!("fleet revocations v{version}"),
                json!({"peer": peer, "version": version, "key_id": signed.key_id}),
            )
        },
    )?;
    Ok(Revoked {
        list,
        already: false,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PEER: &str = "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf";
    const OTHER: &str = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";

    fn origin(dir: &std::path::Path) -> Origin {
        Origin::new(
            dir.to_path_buf(),
            None,
            proto::tuf::Time::parse("2026-11-22T10:00:00Z").unwrap(),
        )
    }

    #[test]
    fn revocations_are_replaced_whole_and_only_this_fleet_keys_list_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let origin = origin(dir.path());
        let actor = Actor::new("alice").unwrap();
        let keys = fleet_keys(&origin).unwrap();
        assert_eq!(revocations(&origin).unwrap().revocations.version, 0);
        let first = revoke(&origin, &actor, PEER).unwrap();
        assert!(!first.already);
        assert_eq!(first.list.revocations.version, 1);
        let again = revoke(&origin, &actor, PEER).unwrap();
        assert!(again.already);
        assert_eq!(again.list, first.list);
        let second = revoke(&origin, &actor, OTHER).unwrap().list;
        let read = revocations(&origin).unwrap();
        assert_eq!(read, second);
        let list = keys.verify_revocations(&read, 1).unwrap();
        assert!(list.revokes(PEER) && list.revokes(OTHER) && list.version == 2);
        // Nothing is left beside the list but its lock: the temporary file was renamed.
        let mut names: Vec<String> = fs::read_dir(dir.path().join("fleet"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["revocations.json", "revocations.lock"]);
        // Two revocations and one audit entry each.
        let log = audit::entries(&audit::log_path(&origin)).unwrap();
        let revoked: Vec<_> = log
            .iter()
            .filter(|e| e["action"] == "member revoke")
            .collect();
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[1]["detail"]["version"], 2);

        // A list signed by another key (a pardon someone wrote in) is refused, not served.
        let forged = SignedRevocations::sign(
            &keys::generate(),
            Revocations {
                version: 3,
                issued: 0,
                peers: Default::default(),
            },
        )
        .unwrap();
        fs::write(
            revocations_path(&origin),
            serde_json::to_vec(&forged).unwrap(),
        )
        .unwrap();
        let error = format!("{:#}", revocations(&origin).unwrap_err());
        assert!(error.contains("does not verify"), "{error}");
        assert!(revoke(&origin, &actor, OTHER).is_err());
        // Nor is a list of this key whose contents were changed under its signature.
        let mut pardoned = second.clone();
        pardoned.revocations.peers.remove(PEER);
        fs::write(
            revocations_path(&origin),
            serde_json::to_vec(&pardoned).unwrap(),
        )
        .unwrap();
        assert!(revocations(&origin).is_err());
        // The list put back verifies again.
        fs::write(
            revocations_path(&origin),
            serde_json::to_vec(&second).unwrap(),
        )
        .unwrap();
        assert_eq!(revocations(&origin).unwrap(), second);
    }

    #[test]
    fn certificates_verify_for_their_peer_and_bad_input_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let origin = origin(dir.path());
        let actor = Actor::new("alice").unwrap();
        assert!(!key_path(&origin).exists());
        let cert = issue(&origin, &actor, PEER, MemberRole::Depot, 30).unwrap();
        assert!(key_path(&origin).exists());
        assert!(!ensure_key(&origin).unwrap());
        let now = u64::try_from(origin.now.unix()).unwrap();
        let keys = fleet_keys(&origin).unwrap();
        assert_eq!(
            keys.verify_cert(&cert, PEER, now).unwrap().role,
            MemberRole::Depot
        );
        assert_eq!(cert.membership.expires, now + 30 * 86_400);
        for bad in ["", "12D3Koo", "not a peer", "QmNotAPeer"] {
            let error = issue(&origin, &actor, bad, MemberRole::Vehicle, 30).unwrap_err();
            assert!(
                matches!(error.downcast_ref(), Some(MemberError::BadPeer { .. })),
                "{bad}: {error:#}"
            );
        }
        for days in [0, MAX_VALIDITY_DAYS + 1] {
            let error = issue(&origin, &actor, PEER, MemberRole::Vehicle, days).unwrap_err();
            assert_eq!(error.downcast_ref(), Some(&MemberError::BadValidity(days)));
        }
        let log = audit::entries(&audit::log_path(&origin)).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0]["detail"]["role"], "depot");
    }
}
