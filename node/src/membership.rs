//! Who may use this node: only fleet members, proven by a membership certificate the fleet key
//! signed for the peer id the connection authenticated ([`proto::membership`]).
//!
//! When a connection is made, the dialer introduces itself on the membership protocol
//! ([`MEMBER_PROTOCOL`]) with its certificate, and the listener answers with its own once it
//! has admitted the dialer; each end checks the other's against the fleet keys it trusts, the
//! clock and the newest revocation list it holds. Until then the connection is not reported to
//! the application and no stream on it is served; a peer that presents nothing within
//! [`INTRODUCTION_TIMEOUT`], or something that does not hold, is disconnected and counted.
//! Revocations and expiries also end the connections of peers already admitted.
//!
//! The signed revocation list a node holds is handed on to members that ask for a newer one
//! ([`RevocationsInForce`], [`offer`]): the fleet key signed it, so any member can carry it,
//! and a vehicle that never reaches the director learns of revocations from its depot.
//!
//! [`Gate`] is the decision, sans-IO; the network driver (`net::driver`) does the talking.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use libp2p::{PeerId, StreamProtocol};
use proto::membership::{
    FleetKeys, MemberRole, MembershipCert, MembershipError, Revocations, SignedRevocations,
};
use proto::wire::RevocationsOffer;

/// The protocol on which peers introduce themselves.
pub const MEMBER_PROTOCOL: StreamProtocol = StreamProtocol::new("/depotmesh/member/1.0.0");

/// How long a peer that connected has to introduce itself (and a dialer to hear the answer):
/// an introduction is one round trip of ~300 bytes, so this is for a lossy yard Wi-Fi.
pub const INTRODUCTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The most peers connected and not admitted yet at once. An honest member introduces itself
/// within a round trip; a crowd of strangers, each refused only after [`INTRODUCTION_TIMEOUT`],
/// would otherwise hold one entry (and a connection) each: when the waiting room is full, the
/// peer waiting longest is refused (counted silent) to make room, so a member still gets in.
pub const MAX_WAITING: usize = 256;

/// How often the driver looks for admitted peers whose certificates expired.
pub const EXPIRY_SWEEP: Duration = Duration::from_secs(60);

/// What a node needs to take part in a fleet's mesh.
#[derive(Clone, Debug)]
pub struct MeshMembership {
    /// This node's own certificate, presented to every peer.
    pub certificate: MembershipCert,
    /// The fleet keys whose certificates and revocation lists it accepts.
    pub keys: FleetKeys,
    /// The newest revocation list it holds (checked again here), if any.
    pub revocations: Option<SignedRevocations>,
}

/// Why a peer was refused, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefusalKind {
    /// It presented no certificate in time, or none this node could read.
    Silent,
    /// Its certificate is not the fleet's, not its own, or altered.
    Stranger,
    /// Its certificate expired, or holds only later.
    Expired,
    /// It was revoked.
    Revoked,
}

impl RefusalKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 4] = [Self::Silent, Self::Stranger, Self::Expired, Self::Revoked];

    /// The label in metrics and status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::Stranger => "stranger",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    fn of(error: &MembershipError) -> Self {
        match error {
            MembershipError::Expired { .. } | MembershipError::NotYetValid { .. } => Self::Expired,
            _ => Self::Stranger,
        }
    }
}

/// A refused peer: the kind, and the reason in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{peer} is not admitted ({}): {reason}", kind.name())]
pub struct Refused {
    /// The peer.
    pub peer: PeerId,
    /// The kind counted.
    pub kind: RefusalKind,
    /// What was wrong.
    pub reason: String,
}

/// Counts of what the gate decided, shared with whoever reports them (a depot's `/metrics`).
#[derive(Debug, Default)]
pub struct MembershipCounters {
    /// Peers admitted.
    pub admitted: AtomicU64,
    /// Peers refused, by [`RefusalKind`] in [`RefusalKind::ALL`] order.
    refused: [AtomicU64; 4],
    /// Streams a peer opened before or without being admitted, dropped unread.
    pub streams_refused: AtomicU64,
    /// Admitted peers disconnected because they were revoked or their certificate expired.
    pub evicted: AtomicU64,
    /// The version of the revocation list in force (0: none).
    pub revocations_version: AtomicU64,
    /// When this node's own certificate expires (unix seconds): peers refuse it from then on,
    /// so operators renew it before (`origin member issue`).
    pub certificate_expires: AtomicU64,
}

impl MembershipCounters {
    /// Peers refused for `kind`.
    pub fn refused(&self, kind: RefusalKind) -> u64 {
        self.refused[kind as usize].load(Relaxed)
    }

    /// Peers refused, every kind together.
    pub fn refused_total(&self) -> u64 {
        RefusalKind::ALL
            .iter()
            .map(|kind| self.refused(*kind))
            .sum()
    }

    /// Counts one peer refused for `kind` (the gate's own decisions count themselves; the
    /// driver counts the connections it refuses at the handshake).
    pub(crate) fn count_refusal(&self, kind: RefusalKind) {
        self.refused[kind as usize].fetch_add(1, Relaxed);
    }
}

/// A signed revocation list as a node hands it on: its version and its bytes, encoded once
/// ([`SignedRevocations::encode`]) rather than for every peer that asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRevocations {
    /// The list's version.
    pub version: u64,
    /// The signed list's JSON.
    pub bytes: Arc<[u8]>,
}

impl HeldRevocations {
    /// `signed`, encoded.
    pub fn of(signed: &SignedRevocations) -> Self {
        Self {
            version: signed.revocations.version,
            bytes: signed.encode().into(),
        }
    }
}

/// What to answer a peer that holds version `newer_than` (0: none) when this node holds `held`:
/// the offer, and the bytes that follow it (none when the list is not newer than the asker's).
pub fn offer(
    held: Option<&HeldRevocations>,
    newer_than: u64,
) -> (RevocationsOffer, Option<Arc<[u8]>>) {
    match held {
        Some(held) if held.version > newer_than => (
            RevocationsOffer {
                version: held.version,
                length: held.bytes.len() as u64,
            },
            Some(held.bytes.clone()),
        ),
        _ => (
            RevocationsOffer {
                version: held.map_or(0, |held| held.version),
                length: 0,
            },
            None,
        ),
    }
}

/// The revocation list in force on a node, shared by its [`Gate`], which replaces it with every
/// newer list it takes, and whoever hands it on (the server's
/// [`Roles::revocations`](crate::serve::Roles::revocations)). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RevocationsInForce(Arc<Mutex<Option<HeldRevocations>>>);

impl RevocationsInForce {
    /// The list in force now, if the node holds one.
    pub fn get(&self) -> Option<HeldRevocations> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, signed: &SignedRevocations) {
        let held = HeldRevocations::of(signed);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }
}

/// An admitted peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its certified role.
    pub role: MemberRole,
    /// When its certificate expires (unix seconds).
    pub expires: u64,
}

/// The decisions: who is admitted, against which revocations. See the [module docs](self).
#[derive(Debug)]
pub struct Gate {
    me: PeerId,
    keys: FleetKeys,
    own: Vec<u8>,
    own_expires: u64,
    revocations: Revocations,
    in_force: RevocationsInForce,
    admitted: BTreeMap<PeerId, Member>,
    counters: Arc<MembershipCounters>,
}

impl Gate {
    /// The gate of node `me` with `membership`, at `now` (unix seconds). Refuses a certificate
    /// that is not `me`'s or not valid now, and a revocation list that does not verify or
    /// revokes `me`: a node that could not be admitted anywhere says so at its start.
    pub fn new(
        me: PeerId,
        membership: MeshMembership,
        now: u64,
        counters: Arc<MembershipCounters>,
    ) -> Result<Self, MembershipError> {
        let MeshMembership {
            certificate,
            keys,
            revocations,
        } = membership;
        keys.verify_cert(&certificate, &me.to_string(), now)?;
        let in_force = RevocationsInForce::default();
        let revocations = match revocations {
            Some(signed) => {
                let revocations = keys.verify_revocations(&signed, 0)?.clone();
                in_force.set(&signed);
                revocations
            }
            None => Revocations::default(),
        };
        if revocations.revokes(&me.to_string()) {
            return Err(MembershipError::Malformed(format!(
                "this node ({me}) is revoked in revocations version {}",
                revocations.version
            )));
        }
        counters
            .revocations_version
            .store(revocations.version, Relaxed);
        counters
            .certificate_expires
            .store(certificate.membership.expires, Relaxed);
        Ok(Self {
            me,
            keys,
            own: certificate.encode(),
            own_expires: certificate.membership.expires,
            revocations,
            in_force,
            admitted: BTreeMap::new(),
            counters,
        })
    }

    /// This node's certificate as presented.
    pub fn own_certificate(&self) -> &[u8] {
        &self.own
    }

    /// The signed revocation list in force, as it is handed on; it follows every newer list
    /// this gate takes.
    pub fn in_force(&self) -> RevocationsInForce {
        self.in_force.clone()
    }

    /// Takes a renewed certificate of this node's own, presented to every peer from now on.
    /// Refuses one that is not this node's, not valid at `now`, or expires no later than the
    /// one it has.
    pub fn renew(&mut self, certificate: &MembershipCert, now: u64) -> Result<(), MembershipError> {
        self.keys
            .verify_cert(certificate, &self.me.to_string(), now)?;
        let expires = certificate.membership.expires;
        if expires <= self.own_expires {
            return Err(MembershipError::Malformed(format!(
                "the renewed certificate expires at {expires}, no later than the one held ({})",
                self.own_expires
            )));
        }
        self.own = certificate.encode();
        self.own_expires = expires;
        self.counters.certificate_expires.store(expires, Relaxed);
        Ok(())
    }

    /// Admits `peer` on the certificate bytes it presented, at `now`, or refuses it (counted).
    pub fn admit(&mut self, peer: PeerId, presented: &[u8], now: u64) -> Result<Member, Refused> {
        if let Some(member) = self.admitted.get(&peer) {
            return Ok(*member);
        }
        let refuse = |kind: RefusalKind, reason: String| {
            self.counters.count_refusal(kind);
            Refused { peer, kind, reason }
        };
        let cert = MembershipCert::decode(presented)
            .map_err(|error| refuse(RefusalKind::Stranger, error.to_string()))?;
        let text = peer.to_string();
        let membership = self
            .keys
            .verify_cert(&cert, &text, now)
            .map_err(|error| refuse(RefusalKind::of(&error), error.to_string()))?;
        if self.revocations.revokes(&text) {
            let reason = format!("revoked in version {}", self.revocations.version);
            return Err(refuse(RefusalKind::Revoked, reason));
        }
        let member = Member {
            role: membership.role,
            expires: membership.expires,
        };
        self.admitted.insert(peer, member);
        self.counters.admitted.fetch_add(1, Relaxed);
        Ok(member)
    }

    /// Counts `peer` refused for saying nothing (in time).
    pub fn silent(&self, peer: PeerId, reason: String) -> Refused {
        self.counters.count_refusal(RefusalKind::Silent);
        Refused {
            peer,
            kind: RefusalKind::Silent,
            reason,
        }
    }

    /// Whether `peer` is admitted.
    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains_key(peer)
    }

    /// What `peer` was admitted as, if it is.
    pub fn member(&self, peer: &PeerId) -> Option<Member> {
        self.admitted.get(peer).copied()
    }

    /// `peer` left: it introduces itself again when it comes back.
    pub fn forget(&mut self, peer: &PeerId) {
        self.admitted.remove(peer);
    }

    /// Takes a newer revocation list (a list of the same version changes nothing) and returns
    /// the admitted peers it revokes, now forgotten: the driver disconnects them.
    pub fn update_revocations(
        &mut self,
        signed: &SignedRevocations,
    ) -> Result<Vec<PeerId>, MembershipError> {
        let offered = self
            .keys
            .verify_revocations(signed, self.revocations.version)?;
        if offered.version == self.revocations.version {
            return Ok(Vec::new());
        }
        self.revocations = offered.clone();
        self.in_force.set(signed);
        self.counters
            .revocations_version
            .store(offered.version, Relaxed);
        let revoked: Vec<PeerId> = self
            .admitted
            .keys()
            .filter(|peer| self.revocations.revokes(&peer.to_string()))
            .copied()
            .collect();
        self.evict(&revoked);
        Ok(revoked)
    }

    /// The admitted peers whose certificates expired by `now`, now forgotten: the driver
    /// disconnects them.
    pub fn expire(&mut self, now: u64) -> Vec<PeerId> {
        let expired: Vec<PeerId> = self
            .admitted
            .iter()
            .filter(|(_, member)| now >= member.expires)
            .map(|(peer, _)| *peer)
            .collect();
        self.evict(&expired);
        expired
    }

    /// The peers the list in force revokes (entries that are no peer id are left out: no
    /// connection can come from them): the driver refuses their connections at the handshake.
    pub fn revoked_peers(&self) -> std::collections::HashSet<PeerId> {
        self.revocations
            .peers
            .iter()
            .filter_map(|text| text.parse().ok())
            .collect()
    }

    /// The version of the revocation list in force.
    pub fn revocations_version(&self) -> u64 {
        self.revocations.version
    }

    fn evict(&mut self, peers: &[PeerId]) {
        for peer in peers {
            self.admitted.remove(peer);
            self.counters.evicted.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proto::membership::Membership;

    fn fleet() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn cert(key: &SigningKey, peer: PeerId, role: MemberRole, expires: u64) -> MembershipCert {
        let membership = Membership {
            peer: peer.to_string(),
            role,
            issued: 100,
            expires,
        };
        MembershipCert::issue(key, membership).unwrap()
    }

    fn gate(me: PeerId) -> (Gate, Arc<MembershipCounters>) {
        let counters = Arc::new(MembershipCounters::default());
        let membership = MeshMembership {
            certificate: cert(&fleet(), me, MemberRole::Depot, 10_000),
            keys: FleetKeys::new([fleet().verifying_key()]),
            revocations: None,
        };
        (
            Gate::new(me, membership, 200, counters.clone()).unwrap(),
            counters,
        )
    }

    #[test]
    fn a_renewed_certificate_must_be_its_own_valid_and_later() {
        let me = PeerId::random();
        let (mut gate, counters) = gate(me);
        assert_eq!(counters.certificate_expires.load(Relaxed), 10_000);
        let someone = cert(&fleet(), PeerId::random(), MemberRole::Depot, 50_000);
        let forged = cert(
            &SigningKey::from_bytes(&[8; 32]),
            me,
            MemberRole::Depot,
            50_000,
        );
        let earlier = cert(&fleet(), me, MemberRole::Depot, 9_000);
        for bad in [someone, forged, earlier] {
            assert!(gate.renew(&bad, 200).is_err(), "{bad:?}");
        }
        assert_eq!(
            gate.own_certificate(),
            cert(&fleet(), me, MemberRole::Depot, 10_000).encode()
        );
        let renewed = cert(&fleet(), me, MemberRole::Depot, 50_000);
        gate.renew(&renewed, 200).unwrap();
        assert_eq!(gate.own_certificate(), renewed.encode());
        assert_eq!(counters.certificate_expires.load(Relaxed), 50_000);
    }

    #[test]
    fn members_are_admitted_and_everyone_else_refused_by_kind() {
        let (me, vehicle, copier, old) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let (mut gate, counters) = gate(me);
        let good = cert(&fleet(), vehicle, MemberRole::Vehicle, 10_000).encode();
        assert_eq!(
            gate.admit(vehicle, &good, 200).unwrap().role,
            MemberRole::Vehicle
        );
        assert!(gate.is_admitted(&vehicle));
        // Someone else's certificate, one made with another key, garbage, an expired one.
        let refused = gate.admit(copier, &good, 200).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Stranger);
        assert!(refused.reason.contains("presented by"), "{refused}");
        let forged = cert(
            &SigningKey::from_bytes(&[8; 32]),
            copier,
            MemberRole::Depot,
            10_000,
        );
        assert_eq!(
            gate.admit(copier, &forged.encode(), 200).unwrap_err().kind,
            RefusalKind::Stranger
        );
        assert_eq!(
            gate.admit(copier, b"hello", 200).unwrap_err().kind,
            RefusalKind::Stranger
        );
        let stale = cert(&fleet(), old, MemberRole::Vehicle, 150).encode();
        assert_eq!(
            gate.admit(old, &stale, 200).unwrap_err().kind,
            RefusalKind::Expired
        );
        assert_eq!(gate.silent(old, "nothing".into()).kind, RefusalKind::Silent);
        assert_eq!(counters.admitted.load(Relaxed), 1);
        assert_eq!(counters.refused(RefusalKind::Stranger), 3);
        assert_eq!(counters.refused(RefusalKind::Expired), 1);
        assert_eq!(counters.refused_total(), 5);
        assert!(!gate.is_admitted(&copier) && !gate.is_admitted(&old));
    }

    #[test]
    fn a_revocation_evicts_at_once_and_an_older_list_is_refused() {
        let (me, vehicle, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (mut gate, counters) = gate(me);
        for peer in [vehicle, other] {
            let bytes = cert(&fleet(), peer, MemberRole::Vehicle, 10_000).encode();
            gate.admit(peer, &bytes, 200).unwrap();
        }
        let list = |version: u64, peers: &[PeerId]| {
            let revocations = Revocations {
                version,
                issued: 300,
                peers: peers.iter().map(PeerId::to_string).collect(),
            };
            SignedRevocations::sign(&fleet(), revocations).unwrap()
        };
        assert_eq!(
            gate.update_revocations(&list(2, &[vehicle])).unwrap(),
            [vehicle]
        );
        assert!(!gate.is_admitted(&vehicle) && gate.is_admitted(&other));
        assert_eq!(counters.evicted.load(Relaxed), 1);
        assert_eq!(counters.revocations_version.load(Relaxed), 2);
        let again = cert(&fleet(), vehicle, MemberRole::Vehicle, 10_000).encode();
        assert_eq!(
            gate.admit(vehicle, &again, 200).unwrap_err().kind,
            RefusalKind::Revoked
        );
        // Replaying version 1 (which revoked nobody) does not pardon it.
        assert!(matches!(
            gate.update_revocations(&list(1, &[])),
            Err(MembershipError::RolledBack { .. })
        ));
        assert_eq!(gate.update_revocations(&list(2, &[vehicle])).unwrap(), []);
        assert_eq!(gate.revocations_version(), 2);
        // The list in force is what the node hands on: version 2, signed, to whoever holds less.
        let held = gate.in_force().get().unwrap();
        assert_eq!(held.version, 2);
        assert_eq!(
            SignedRevocations::decode(&held.bytes).unwrap(),
            list(2, &[vehicle])
        );
        let (to_older, bytes) = offer(Some(&held), 1);
        assert_eq!(
            (to_older.version, to_older.length),
            (2, held.bytes.len() as u64)
        );
        assert_eq!(bytes.as_deref(), Some(&held.bytes[..]));
        for newer_than in [2, 3] {
            let (not_newer, bytes) = offer(Some(&held), newer_than);
            assert_eq!((not_newer.version, not_newer.length, bytes), (2, 0, None));
        }
        assert_eq!(offer(None, 0).0.version, 0);
        // Expiry ends an admission too.
        assert_eq!(gate.expire(10_000), [other]);
        assert!(!gate.is_admitted(&other));
    }

    #[test]
    fn a_node_that_could_not_be_admitted_anywhere_is_told_at_its_start() {
        let me = PeerId::random();
        let keys = FleetKeys::new([fleet().verifying_key()]);
        let counters = Arc::new(MembershipCounters::default());
        let someone_elses = MeshMembership {
            certificate: cert(&fleet(), PeerId::random(), MemberRole::Depot, 10_000),
            keys: keys.clone(),
            revocations: None,
        };
        let error = Gate::new(me, someone_elses, 200, counters.clone()).unwrap_err();
        assert!(
            matches!(error, MembershipError::WrongPeer { .. }),
            "{error}"
        );
        let revocations = Revocations {
            version: 1,
            issued: 100,
            peers: [me.to_string()].into(),
        };
        let revoked = MeshMembership {
            certificate: cert(&fleet(), me, MemberRole::Depot, 10_000),
            keys,
            revocations: Some(SignedRevocations::sign(&fleet(), revocations).unwrap()),
        };
        let error = Gate::new(me, revoked, 200, counters).unwrap_err();
        assert!(error.to_string().contains("revoked"), "{error}");
    }
}
