//! Fleet membership: which libp2p identities belong to the fleet's mesh, in what role, until
//! when, and which of them were thrown out before that.
//!
//! - A [`MembershipCert`] says that the node with peer id `peer` is a fleet member in `role`
//!   from `issued` to `expires` (unix seconds), signed by a **fleet key** the origin holds. A
//!   node presents its own when it connects; the other end checks it against the fleet keys it
//!   was configured with ([`FleetKeys`]) before it serves any stream. The certificate names no
//!   VIN or depot: a node shows it to a peer before it knows whether the peer is a member.
//! - A [`SignedRevocations`] lists the peer ids thrown out before their certificates expire,
//!   with a version that only grows: nodes refresh it with the rest of their metadata and
//!   refuse an older one than they hold, so a revocation cannot be rolled back by replaying an
//!   earlier list.
//!
//! Both are signed over a fixed, domain-separated text (like
//! [`ApprovalStatement`](crate::director_api::ApprovalStatement)), never over JSON a parser
//! could read two ways. Peer ids are carried as text (`12D3Koo…`): this crate does not depend on
//! libp2p; the node compares the text with the identity the connection proved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The most bytes an encoded [`MembershipCert`] may take: a certificate is ~300 bytes, and a
/// node reads a peer's before it knows it.
pub const MAX_CERT_BYTES: usize = 4096;

/// The most peer ids one revocation list may hold (~60 bytes each): a fleet's whole size. A
/// revoked peer stays listed (nothing prunes it once its certificate has expired, which would
/// keep the list short), so this bounds what a node reads, not what a fleet revokes over years.
pub const MAX_REVOKED: usize = 200_000;

/// The longest peer id text accepted (an ed25519 peer id is 52 characters; RSA ones longer).
const MAX_PEER_TEXT: usize = 128;

/// The most bytes an encoded [`SignedRevocations`] may take, as read from the director or from
/// a peer: [`MAX_REVOKED`] peer ids (52 characters each for ed25519 ones, 128 at most) with
/// their JSON and the signature.
pub const MAX_REVOCATIONS_BYTES: usize = MAX_REVOKED * 140 + 4096;

/// What a member does on the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberRole {
    /// A vehicle's gateway: fetches, and serves its neighbours.
    Vehicle,
    /// A depot's cache: serves its yard, tracks, relays reports.
    Depot,
    /// The origin's cache: the depots' upstream.
    OriginCache,
}

impl MemberRole {
    /// Its name as written in certificates and configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vehicle => "vehicle",
            Self::Depot => "depot",
            Self::OriginCache => "origin-cache",
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MemberRole {
    type Err = MembershipError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Self::Vehicle, Self::Depot, Self::OriginCache]
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| {
                MembershipError::Malformed(format!(
                    "role {text:?}: expected vehicle, depot or origin-cache"
                ))
            })
    }
}

/// What a membership certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The member's libp2p peer id, as text.
    pub peer: String,
    /// Its role.
    pub role: MemberRole,
    /// From when it holds (unix seconds).
    pub issued: u64,
    /// Until when it holds (unix seconds, exclusive).
    pub expires: u64,
}

impl Membership {
    /// The bytes the fleet key signs.
    fn statement(&self) -> Vec<u8> {
        format!(
            "depotmesh fleet membership v1\npeer: {}\nrole: {}\nissued: {}\nexpires: {}\n",
            self.peer, self.role, self.issued, self.expires
        )
        .into_bytes()
    }
}

/// A [`Membership`] signed by a fleet key. See the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipCert {
    /// What is certified.
    pub membership: Membership,
    /// [`key_id`] of the fleet key that signed.
    pub key_id: String,
    /// The ed25519 signature over the membership's statement, hex.
    pub signature: String,
}

impl MembershipCert {
    /// Signs `membership` with the fleet key `key`.
    pub fn issue(key: &SigningKey, membership: Membership) -> Result<Self, MembershipError> {
        check_peer_text(&membership.peer)?;
        if membership.expires <= membership.issued {
            return Err(MembershipError::Malformed(format!(
                "expires {} is not after issued {}",
                membership.expires, membership.issued
            )));
        }
        let (key_id, signature) = sign_statement(key, &membership.statement());
        Ok(Self {
            membership,
            key_id,
            signature,
        })
    }

    /// Its JSON, as a node presents it and stores it.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads one from untrusted bytes (at most [`MAX_CERT_BYTES`]); checks nothing but form.
    pub fn decode(bytes: &[u8]) -> Result<Self, MembershipError> {
        let cert: Self = decode_bounded(bytes, MAX_CERT_BYTES, "certificate")?;
        check_peer_text(&cert.membership.peer)?;
        Ok(cert)
    }
}

/// The peers thrown out of the fleet before their certificates expire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Grows by one with every change; a node never goes back to a lower one.
    pub version: u64,
    /// When this version was signed (unix seconds).
    pub issued: u64,
    /// The revoked peer ids, as text.
    pub peers: BTreeSet<String>,
}

impl Revocations {
    /// The bytes the fleet key signs.
    fn statement(&self) -> Vec<u8> {
        let mut text = format!(
            "depotmesh fleet revocations v1\nversion: {}\nissued: {}\n",
            self.version, self.issued
        );
        for peer in &self.peers {
            text.push_str("revoked: ");
            text.push_str(peer);
            text.push('\n');
        }
        text.into_bytes()
    }

    /// Whether `peer` is revoked.
    pub fn revokes(&self, peer: &str) -> bool {
        self.peers.contains(peer)
    }
}

/// A [`Revocations`] signed by a fleet key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRevocations {
    /// The list.
    pub revocations: Revocations,
    /// [`key_id`] of the fleet key that signed.
    pub key_id: String,
    /// The ed25519 signature over the list's statement, hex.
    pub signature: String,
}

impl SignedRevocations {
    /// Signs `revocations` with the fleet key `key`.
    pub fn sign(key: &SigningKey, revocations: Revocations) -> Result<Self, MembershipError> {
        check_revoked(&revocations)?;
        let (key_id, signature) = sign_statement(key, &revocations.statement());
        Ok(Self {
            revocations,
            key_id,
            signature,
        })
    }

    /// Its JSON, as a node keeps it and hands it on.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads one from untrusted bytes (at most [`MAX_REVOCATIONS_BYTES`]): its form and bounds,
    /// not its signature, which is [`FleetKeys::verify_revocations`]'.
    pub fn decode(bytes: &[u8]) -> Result<Self, MembershipError> {
        let signed: Self = decode_bounded(bytes, MAX_REVOCATIONS_BYTES, "revocation list")?;
        check_revoked(&signed.revocations)?;
        Ok(signed)
    }
}

/// `key`'s id and its ed25519 signature (hex) over `statement`.
fn sign_statement(key: &SigningKey, statement: &[u8]) -> (String, String) {
    let signature = hex::encode(key.sign(statement).to_bytes());
    (key_id(&key.verifying_key()), signature)
}

/// The `what` in untrusted `bytes`, at most `max` of them; only its form is checked.
fn decode_bounded<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    max: usize,
    what: &str,
) -> Result<T, MembershipError> {
    if bytes.len() > max {
        return Err(MembershipError::Malformed(format!(
            "a {what} of {} bytes (at most {max})",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| MembershipError::Malformed(format!("{what}: {e}")))
}

/// Why a certificate or a revocation list is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Not a certificate or list at all, or one out of bounds.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Signed by a key this node does not trust.
    #[error("signed by fleet key {0}, which this node does not trust")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the fleet key's signature does not verify")]
    BadSignature,
    /// A valid certificate of another peer (a copied one).
    #[error("the certificate is {certified}'s, presented by {presented}")]
    WrongPeer {
        /// Whom the certificate names.
        certified: String,
        /// Who presented it.
        presented: String,
    },
    /// Issued for later.
    #[error("the certificate holds from {issued}, and it is {now}")]
    NotYetValid {
        /// From when it holds.
        issued: u64,
        /// The checker's time.
        now: u64,
    },
    /// Expired.
    #[error("the certificate expired at {expires}, and it is {now}")]
    Expired {
        /// Until when it held.
        expires: u64,
        /// The checker's time.
        now: u64,
    },
    /// A revocation list older than the one held.
    #[error("revocations version {offered} is older than version {held}, which this node holds")]
    RolledBack {
        /// The version offered.
        offered: u64,
        /// The version held.
        held: u64,
    },
}

/// The fleet keys a node trusts (more than one while the fleet key is being rotated).
#[derive(Clone, Debug, Default)]
pub struct FleetKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl FleetKeys {
    /// Trusts exactly `keys`.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|key| (key_id(&key), key)).collect(),
        }
    }

    /// Whether no key is trusted (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `cert` is signed by a trusted key, names `presented` and holds at `now`;
    /// revocation is the caller's, against the list it holds.
    pub fn verify_cert<'c>(
        &self,
        cert: &'c MembershipCert,
        presented: &str,
        now: u64,
    ) -> Result<&'c Membership, MembershipError> {
        let membership = &cert.membership;
        self.verify(&cert.key_id, &membership.statement(), &cert.signature)?;
        if membership.peer != presented {
            return Err(MembershipError::WrongPeer {
                certified: membership.peer.clone(),
                presented: presented.to_owned(),
            });
        }
        if now < membership.issued {
            return Err(MembershipError::NotYetValid {
                issued: membership.issued,
                now,
            });
        }
        if now >= membership.expires {
            return Err(MembershipError::Expired {
                expires: membership.expires,
                now,
            });
        }
        Ok(membership)
    }

    /// Checks that `signed` is signed by a trusted key and not older than `held` (the version
    /// the node holds, 0 when none).
    pub fn verify_revocations<'s>(
        &self,
        signed: &'s SignedRevocations,
        held: u64,
    ) -> Result<&'s Revocations, MembershipError> {
        let revocations = &signed.revocations;
        check_revoked(revocations)?;
        self.verify(&signed.key_id, &revocations.statement(), &signed.signature)?;
        if revocations.version < held {
            return Err(MembershipError::RolledBack {
                offered: revocations.version,
                held,
            });
        }
        Ok(revocations)
    }

    fn verify(&self, id: &str, statement: &[u8], signature: &str) -> Result<(), MembershipError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| MembershipError::UnknownKey(id.chars().take(64).collect()))?;
        let bytes = hex::decode(signature)
            .ok()
            .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
            .ok_or(MembershipError::BadSignature)?;
        key.verify_strict(statement, &Signature::from_bytes(&bytes))
            .map_err(|_| MembershipError::BadSignature)
    }
}

/// A fleet key's id: the SHA-256 of its 32 public bytes, hex.
pub fn key_id(key: &VerifyingKey) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Checks that a peer id's text is plain (base58 or base32 characters) and short: it goes into
/// a line of a signed statement, where a newline would let one field pose as another.
pub fn check_peer_text(peer: &str) -> Result<(), MembershipError> {
    if peer.is_empty()
        || peer.len() > MAX_PEER_TEXT
        || !peer.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(MembershipError::Malformed(format!(
            "peer id {:?}: expected 1 to {MAX_PEER_TEXT} letters and digits",
            peer.chars().take(MAX_PEER_TEXT).collect::<String>()
        )));
    }
    Ok(())
}

fn check_revoked(revocations: &Revocations) -> Result<(), MembershipError> {
    if revocations.peers.len() > MAX_REVOKED {
        return Err(MembershipError::Malformed(format!(
            "{} revoked peers (at most {MAX_REVOKED})",
            revocations.peers.len()
        )));
    }
    revocations
        .peers
        .iter()
        .try_for_each(|peer| check_peer_text(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf";
    const OTHER: &str = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn membership(peer: &str) -> Membership {
        Membership {
            peer: peer.to_owned(),
            role: MemberRole::Vehicle,
            issued: 1_000,
            expires: 2_000,
        }
    }

    #[test]
    fn a_certificate_holds_for_its_peer_its_time_and_its_key_only() {
        let fleet = key(1);
        let keys = FleetKeys::new([fleet.verifying_key()]);
        let cert = MembershipCert::issue(&fleet, membership(PEER)).unwrap();
        let read = MembershipCert::decode(&cert.encode()).unwrap();
        assert_eq!(read, cert);
        assert_eq!(
            keys.verify_cert(&read, PEER, 1_500).unwrap().role,
            MemberRole::Vehicle
        );

        assert!(matches!(
            keys.verify_cert(&read, OTHER, 1_500),
            Err(MembershipError::WrongPeer { .. })
        ));
        assert!(matches!(
            keys.verify_cert(&read, PEER, 999),
            Err(MembershipError::NotYetValid { .. })
        ));
        assert!(matches!(
            keys.verify_cert(&read, PEER, 2_000),
            Err(MembershipError::Expired { .. })
        ));
        // Any other key, or any change under the signature, is refused.
        let stranger = MembershipCert::issue(&key(2), membership(PEER)).unwrap();
        assert!(matches!(
            keys.verify_cert(&stranger, PEER, 1_500),
            Err(MembershipError::UnknownKey(_))
        ));
        let mut promoted = cert.clone();
        promoted.membership.role = MemberRole::Depot;
        assert_eq!(
            keys.verify_cert(&promoted, PEER, 1_500),
            Err(MembershipError::BadSignature)
        );
        let mut extended = cert.clone();
        extended.membership.expires = u64::MAX;
        assert_eq!(
            keys.verify_cert(&extended, PEER, 1_500),
            Err(MembershipError::BadSignature)
        );
        let mut renamed = cert;
        renamed.membership.peer = OTHER.to_owned();
        assert_eq!(
            keys.verify_cert(&renamed, OTHER, 1_500),
            Err(MembershipError::BadSignature)
        );
    }

    #[test]
    fn bad_bytes_are_named_and_never_panic() {
        for bytes in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"membership\":{\"peer\":\"a\\nrole: depot\",\"role\":\"vehicle\",\"issued\":1,\"expires\":2},\"key_id\":\"\",\"signature\":\"\"}",
            b"{\"membership\":{\"peer\":\"a\",\"role\":\"admin\",\"issued\":1,\"expires\":2},\"key_id\":\"\",\"signature\":\"\"}",
        ] {
            assert!(matches!(
                MembershipCert::decode(bytes),
                Err(MembershipError::Malformed(_))
            ));
        }
        let big = vec![b' '; MAX_CERT_BYTES + 1];
        let error = MembershipCert::decode(&big).unwrap_err();
        assert!(error.to_string().contains("4096"), "{error}");
        let keys = FleetKeys::new([key(1).verifying_key()]);
        let mut cert = MembershipCert::issue(&key(1), membership(PEER)).unwrap();
        cert.signature = "zz".to_owned();
        assert_eq!(
            keys.verify_cert(&cert, PEER, 1_500),
            Err(MembershipError::BadSignature)
        );
        assert!(MembershipCert::issue(&key(1), membership("a b")).is_err());
        let backwards = Membership {
            expires: 10,
            ..membership(PEER)
        };
        assert!(MembershipCert::issue(&key(1), backwards).is_err());
        assert_eq!("origin-cache".parse(), Ok(MemberRole::OriginCache));
        assert!("root".parse::<MemberRole>().is_err());
    }

    #[test]
    fn revocations_verify_and_never_go_back() {
        let fleet = key(1);
        let keys = FleetKeys::new([fleet.verifying_key()]);
        let list = Revocations {
            version: 3,
            issued: 1_000,
            peers: [PEER.to_owned()].into(),
        };
        let signed = SignedRevocations::sign(&fleet, list).unwrap();
        let read = keys.verify_revocations(&signed, 2).unwrap();
        assert!(read.revokes(PEER) && !read.revokes(OTHER));
        assert_eq!(
            keys.verify_revocations(&signed, 4),
            Err(MembershipError::RolledBack {
                offered: 3,
                held: 4
            })
        );
        let mut pardoned = signed.clone();
        pardoned.revocations.peers.clear();
        assert_eq!(
            keys.verify_revocations(&pardoned, 0),
            Err(MembershipError::BadSignature)
        );
        let forged = SignedRevocations::sign(&key(9), Revocations::default()).unwrap();
        assert!(matches!(
            keys.verify_revocations(&forged, 0),
            Err(MembershipError::UnknownKey(_))
        ));
        let round_trip: SignedRevocations =
            serde_json::from_slice(&serde_json::to_vec(&signed).unwrap()).unwrap();
        assert_eq!(round_trip, signed);
        assert_eq!(SignedRevocations::decode(&signed.encode()).unwrap(), signed);
    }

    #[test]
    fn a_revocation_list_from_bytes_is_bounded_and_its_faults_named() {
        let big = vec![b' '; MAX_REVOCATIONS_BYTES + 1];
        let error = SignedRevocations::decode(&big).unwrap_err();
        assert!(error.to_string().contains("at most"), "{error}");
        for (bytes, named) in [
            (&b"{"[..], "revocation list"),
            (b"{\"revocations\":{\"version\":1,\"issued\":1,\"peers\":[]},\"key_id\":\"\",\"signature\":\"\",\"extra\":1}", "extra"),
            (b"{\"revocations\":{\"version\":1,\"issued\":1,\"peers\":[\"a\\nrevoked: b\"]},\"key_id\":\"\",\"signature\":\"\"}", "peer id"),
        ] {
            let error = SignedRevocations::decode(bytes).unwrap_err();
            assert!(matches!(error, MembershipError::Malformed(_)), "{error}");
            assert!(error.to_string().contains(named), "{error}");
        }
    }
}
