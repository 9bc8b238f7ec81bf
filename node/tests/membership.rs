//! Fleet membership on real QUIC nodes: a depot that serves only the fleet. A stranger on the
//! yard's Wi-Fi (a fresh identity, a certificate from another key, a member's certificate
//! copied, an expired one) gets no byte, no have-map and no answer; a member fetches; a revoked
//! member is cut off at once and refused at the handshake when it comes back; a crowd of silent
//! strangers does not keep a member out. Every refusal is counted.
//!
//! The revocation list travels the mesh too: a depot hands a newer list to a vehicle that asks,
//! which cuts its revoked neighbour off and keeps the list; an older, forged or garbled list
//! from a peer is refused and the list kept stays; a stranger cannot ask.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use node::fetch::{self, FetchOptions};
use node::membership::{MAX_WAITING, MEMBER_PROTOCOL, MeshMembership, RefusalKind};
use node::net::{self, NetConfig, NetEvent, NetHandle};
use node::serve::{self, ServeCounters};
use proto::membership::{
    FleetKeys, MemberRole, Membership, MembershipCert, Revocations, SignedRevocations,
};
use proto::wire::{HaveQuery, Message};

mod common;
use common::{loopback_config, new_store};

const WAIT: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fleet_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn certificate(
    key: &SigningKey,
    peer: PeerId,
    role: MemberRole,
    issued: u64,
    expires: u64,
) -> MembershipCert {
    let membership = Membership {
        peer: peer.to_string(),
        role,
        issued,
        expires,
    };
    MembershipCert::issue(key, membership).unwrap()
}

/// A loopback node of the fleet in `role`, its certificate valid for a day.
async fn member(role: MemberRole) -> (NetHandle, net::NetEvents, net::IncomingStreams, Multiaddr) {
    member_holding(role, None).await
}

/// [`member`], started with the revocation list `revocations`.
async fn member_holding(
    role: MemberRole,
    revocations: Option<SignedRevocations>,
) -> (NetHandle, net::NetEvents, net::IncomingStreams, Multiaddr) {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let membership = MeshMembership {
        certificate: certificate(&fleet_key(), peer, role, now() - 60, now() + 86_400),
        keys: FleetKeys::new([fleet_key().verifying_key()]),
        revocations,
    };
    let config = NetConfig {
        keypair: Some(keypair),
        membership: Some(membership),
        ..loopback_config()
    };
    let (handle, events, incoming) = net::start(config).await.unwrap();
    let addr = handle.listen_addrs().await.into_iter().next().unwrap();
    (handle, events, incoming, addr)
}

/// A node outside the fleet that speaks the introduction protocol by hand: its streams are
/// introductions, so it can present whatever bytes it likes as its certificate.
async fn impostor(keypair: Keypair) -> NetHandle {
    let config = NetConfig {
        keypair: Some(keypair),
        protocol: MEMBER_PROTOCOL,
        ..loopback_config()
    };
    net::start(config).await.unwrap().0
}

/// Presents `bytes` to `depot` as `impostor`'s certificate; returns the depot's answer, if any.
async fn introduce(impostor: &NetHandle, depot: &Multiaddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let depot_id = impostor.dial(depot.clone()).await.ok()?;
    let mut stream = impostor.open_stream(depot_id).await.ok()?;
    let length = u16::try_from(bytes.len()).unwrap().to_be_bytes();
    stream.write_all(&length).await.ok()?;
    stream.write_all(bytes).await.ok()?;
    stream.flush().await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    (!answer.is_empty()).then_some(answer)
}

/// Waits for `events` to report what `wanted` matches; `what` names it when it does not come.
async fn until(events: &mut net::NetEvents, what: &str, wanted: impl Fn(&NetEvent) -> bool) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if wanted(&event) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{what}");
}

/// Waits for `events` to report `peer` gone.
async fn disconnected(events: &mut net::NetEvents, peer: PeerId) {
    let gone = |event: &NetEvent| matches!(event, NetEvent::PeerDisconnected { peer: gone, .. } if *gone == peer);
    until(events, "the peer was disconnected", gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_members_fetch_and_a_revoked_member_is_cut_off() {
    let data: Vec<u8> = (0..(3 << 20) as u32).map(|i| (i % 251) as u8).collect();
    let store = Arc::new(new_store());
    let blob = store.import(&data[..]).unwrap();
    let (depot, mut depot_events, depot_incoming, depot_addr) = member(MemberRole::Depot).await;
    let served = Arc::new(ServeCounters::default());
    serve::spawn_server(store, depot_incoming, served.clone());
    let gate = depot
        .membership_counters()
        .expect("the depot is a fleet member");

    // A member fetches the whole blob.
    let (vehicle, mut vehicle_events, _vehicle_incoming, _) = member(MemberRole::Vehicle).await;
    let vehicle_store = Arc::new(new_store());
    let mut options = FetchOptions::new(blob);
    options.peers = vec![depot_addr.clone()];
    let report = fetch::fetch(
        &vehicle,
        &mut vehicle_events,
        vehicle_store.clone(),
        options,
        |_| {},
    )
    .await
    .expect("a member fetches");
    assert_eq!(report.size, data.len() as u64);
    assert_eq!(gate.admitted.load(Relaxed), 1);
    let served_to_members = served.bytes.load(Relaxed);
    assert!(served_to_members >= data.len() as u64);

    // A stranger with a fresh identity and no certificate: its dial is taken, its streams are
    // reset unread, it is dropped when its time to introduce itself is up.
    let (stranger, mut stranger_events, _stranger_incoming) =
        net::start(loopback_config()).await.unwrap();
    let depot_id = stranger.dial(depot_addr.clone()).await.unwrap();
    let mut stream = stranger.open_stream(depot_id).await.unwrap();
    let question = Message::HaveQuery(HaveQuery { blob }).encode().unwrap();
    let _ = stream.write_all(&question).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "a stranger got {} bytes", answer.len());
    let mut options = FetchOptions::new(blob);
    options.peers = vec![depot_addr.clone()];
    options.stall_timeout = Duration::from_secs(3);
    let stranger_store = Arc::new(new_store());
    assert!(
        fetch::fetch(
            &stranger,
            &mut stranger_events,
            stranger_store,
            options,
            |_| {}
        )
        .await
        .is_err(),
        "a stranger fetched"
    );
    // (Polled, not awaited as an event: the fetch above may have read that event already.)
    tokio::time::timeout(WAIT, async {
        while stranger.connected_peers().await.contains(&depot_id) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the depot dropped the stranger");
    assert!(gate.streams_refused.load(Relaxed) >= 1, "{gate:?}");
    assert!(gate.refused(RefusalKind::Silent) >= 1, "{gate:?}");

    // Impostors: a certificate from another key, the vehicle's own copied, and an expired one.
    let forger = Keypair::generate_ed25519();
    let forged = certificate(
        &SigningKey::from_bytes(&[7; 32]),
        forger.public().to_peer_id(),
        MemberRole::Depot,
        now() - 60,
        now() + 86_400,
    );
    let copier = Keypair::generate_ed25519();
    let copied = certificate(
        &fleet_key(),
        vehicle.peer_id(),
        MemberRole::Vehicle,
        now() - 60,
        now() + 86_400,
    );
    let late = Keypair::generate_ed25519();
    let expired = certificate(
        &fleet_key(),
        late.public().to_peer_id(),
        MemberRole::Vehicle,
        now() - 7200,
        now() - 3600,
    );
    for (keypair, cert) in [(forger, forged), (copier, copied), (late, expired)] {
        let impostor = impostor(keypair).await;
        let answer = introduce(&impostor, &depot_addr, &cert.encode()).await;
        assert_eq!(answer, None, "the depot answered an impostor");
        impostor.shutdown().await;
    }
    assert_eq!(gate.refused(RefusalKind::Stranger), 2, "{gate:?}");
    assert_eq!(gate.refused(RefusalKind::Expired), 1, "{gate:?}");
    assert_eq!(
        gate.admitted.load(Relaxed),
        1,
        "only the vehicle was ever admitted"
    );
    assert_eq!(
        served.bytes.load(Relaxed),
        served_to_members,
        "nothing was served to anyone but the member"
    );

    // Revoked: cut off at once, and refused at the handshake when it dials again: no
    // introduction is read, so the gate has nothing to refuse (no `PeerRefused`).
    let revocations = Revocations {
        version: 1,
        issued: now(),
        peers: [vehicle.peer_id().to_string()].into(),
    };
    let signed = SignedRevocations::sign(&fleet_key(), revocations).unwrap();
    let forged_list =
        SignedRevocations::sign(&SigningKey::from_bytes(&[7; 32]), Revocations::default()).unwrap();
    assert!(depot.update_revocations(forged_list).await.is_err());
    assert_eq!(
        depot.update_revocations(signed.clone()).await.unwrap(),
        [vehicle.peer_id()]
    );
    disconnected(&mut vehicle_events, depot.peer_id()).await;
    while depot_events.try_recv().is_ok() {}
    // The vehicle sees its connection closed before either side introduced itself.
    let error = vehicle.dial(depot_addr.clone()).await.unwrap_err();
    assert!(error.to_string().contains("admitted"), "{error}");
    assert_eq!(gate.refused(RefusalKind::Revoked), 1, "{gate:?}");
    while let Ok(event) = depot_events.try_recv() {
        assert!(
            !matches!(&event, NetEvent::PeerRefused { peer, .. } if *peer == vehicle.peer_id()),
            "the revoked peer got as far as the introduction: {event:?}"
        );
    }
    assert_eq!(gate.revocations_version.load(Relaxed), 1);
    assert!(gate.evicted.load(Relaxed) >= 1);
    let older = SignedRevocations::sign(&fleet_key(), Revocations::default()).unwrap();
    let error = depot.update_revocations(older).await.unwrap_err();
    assert!(error.to_string().contains("older"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_does_not_serve_a_stranger_it_dialled_and_two_members_meet_both_ways() {
    let (a, mut a_events, _a_incoming, a_addr) = member(MemberRole::Vehicle).await;
    let (b, mut b_events, _b_incoming, b_addr) = member(MemberRole::Vehicle).await;
    // Both dial at once: each ends with the other admitted.
    let (to_b, to_a) = tokio::join!(a.dial(b_addr.clone()), b.dial(a_addr.clone()));
    assert_eq!(to_b.unwrap(), b.peer_id());
    assert_eq!(to_a.unwrap(), a.peer_id());
    for (events, peer) in [(&mut a_events, b.peer_id()), (&mut b_events, a.peer_id())] {
        let connected = |event: &NetEvent| matches!(event, NetEvent::PeerConnected { peer: p, .. } if *p == peer);
        until(events, "each reports the other connected", connected).await;
    }
    assert_eq!(a.connected_peers().await, [b.peer_id()]);

    // A member that dials a stranger (say, found by mDNS) hears no introduction back and drops it.
    let (stranger, _events, _incoming) = net::start(loopback_config()).await.unwrap();
    let stranger_addr = stranger.listen_addrs().await.into_iter().next().unwrap();
    let error = a.dial(stranger_addr).await.unwrap_err();
    assert!(error.to_string().contains("not admitted"), "{error}");
    assert!(!a.connected_peers().await.contains(&stranger.peer_id()));
}

/// A yard starting: every vehicle dials the depot and its neighbours at the same moment. Every
/// introduction must be heard: libp2p-stream dropped an inbound stream that found its one-slot
/// channel full, and a dropped introduction used to make the introducer refuse the depot as
/// silent (on the 30-vehicle testbed every vehicle's first dial of the depot failed so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yard_of_members_dialling_at_once_admits_every_one() {
    const VEHICLES: usize = 12;
    let (depot, _depot_events, _depot_incoming, depot_addr) = member(MemberRole::Depot).await;
    let mut vehicles = Vec::new();
    for _ in 0..VEHICLES {
        vehicles.push(member(MemberRole::Vehicle).await);
    }
    // Each vehicle dials the depot and every other vehicle, all at once: pairs dial both ways.
    let dials = vehicles.iter().flat_map(|(vehicle, _, _, _)| {
        std::iter::once(depot_addr.clone())
            .chain(
                vehicles
                    .iter()
                    .filter(|(other, _, _, _)| other.peer_id() != vehicle.peer_id())
                    .map(|(_, _, _, addr)| addr.clone()),
            )
            .map(move |addr| async move { (addr.clone(), vehicle.dial(addr).await) })
    });
    let results = futures::future::join_all(dials).await;
    let failed: Vec<_> = results
        .iter()
        .filter_map(|(addr, result)| {
            result
                .as_ref()
                .err()
                .map(|error| format!("{addr}: {error}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} dials failed: {failed:#?}",
        failed.len()
    );
    let gate = depot.membership_counters().unwrap();
    assert_eq!(gate.admitted.load(Relaxed), VEHICLES as u64, "{gate:?}");
    assert_eq!(gate.refused(RefusalKind::Silent), 0, "{gate:?}");
    for (vehicle, _, _, _) in &vehicles {
        let counters = vehicle.membership_counters().unwrap();
        assert_eq!(counters.refused(RefusalKind::Silent), 0, "{counters:?}");
        assert_eq!(
            vehicle.connected_peers().await.len(),
            VEHICLES,
            "depot and the others"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_silent_strangers_does_not_keep_a_member_out() {
    let data: Vec<u8> = (0..(1 << 20) as u32).map(|i| (i % 241) as u8).collect();
    let store = Arc::new(new_store());
    let blob = store.import(&data[..]).unwrap();
    let (depot, mut depot_events, depot_incoming, depot_addr) = member(MemberRole::Depot).await;
    serve::spawn_server(store, depot_incoming, Arc::new(ServeCounters::default()));
    let gate = depot.membership_counters().unwrap();

    // More strangers than the waiting room holds connect and say nothing (an open node does not
    // introduce itself); each would wait out the introduction's timeout.
    // They come 32 at a time (all at once, a loaded machine times some handshakes out).
    let mut strangers = Vec::new();
    let mut crowd = 0;
    for _ in 0..(MAX_WAITING / 32 + 1) {
        let batch = futures::future::join_all((0..32).map(|_| async {
            let (stranger, _events, _incoming) = net::start(loopback_config()).await.unwrap();
            let connected = stranger.dial(depot_addr.clone()).await.is_ok();
            (stranger, connected)
        }))
        .await;
        crowd += batch.iter().filter(|(_, connected)| *connected).count();
        strangers.extend(batch.into_iter().map(|(stranger, _)| stranger));
    }
    assert!(crowd > MAX_WAITING, "only {crowd} strangers connected");

    // A member still gets in and fetches meanwhile.
    let (vehicle, mut vehicle_events, _incoming, _) = member(MemberRole::Vehicle).await;
    let mut options = FetchOptions::new(blob);
    options.peers = vec![depot_addr.clone()];
    let report = fetch::fetch(
        &vehicle,
        &mut vehicle_events,
        Arc::new(new_store()),
        options,
        |_| {},
    )
    .await
    .expect("a member fetches beside the crowd");
    assert_eq!(report.size, data.len() as u64);

    // The room overflowed: those waiting longest were refused to make room, counted silent (on a
    // slow machine some wait out the introduction's timeout first, also silent).
    let (mut made_room, mut timed_out) = (0, 0);
    while made_room + timed_out < crowd - MAX_WAITING {
        let event = tokio::time::timeout(WAIT, depot_events.recv()).await;
        let Ok(Some(event)) = event else {
            panic!("{made_room} refused to make room, {timed_out} timed out, then nothing");
        };
        if let NetEvent::PeerRefused { reason, .. } = event {
            made_room += usize::from(reason.contains("introducing themselves at once"));
            timed_out += usize::from(reason.contains("introduced nothing within"));
        }
    }
    assert!(made_room >= 1, "nobody was refused to make room");
    assert!(
        gate.refused(RefusalKind::Silent) >= (made_room + timed_out) as u64,
        "{gate:?}"
    );
    assert_eq!(
        gate.admitted.load(Relaxed),
        1,
        "only the member was admitted"
    );
    for stranger in strangers {
        stranger.shutdown().await;
    }
}

#[tokio::test]
async fn a_node_whose_certificate_is_not_its_own_or_expired_does_not_start() {
    let keypair = Keypair::generate_ed25519();
    let someone = PeerId::random();
    for (peer, expires) in [
        (someone, now() + 3600),
        (keypair.public().to_peer_id(), now() - 1),
    ] {
        let membership = MeshMembership {
            certificate: certificate(&fleet_key(), peer, MemberRole::Depot, now() - 7200, expires),
            keys: FleetKeys::new([fleet_key().verifying_key()]),
            revocations: None,
        };
        let config = NetConfig {
            keypair: Some(keypair.clone()),
            membership: Some(membership),
            ..loopback_config()
        };
        let error = net::start(config).await.unwrap_err();
        assert!(error.to_string().contains("membership"), "{error}");
    }
}

/// The fleet's revocation list `version`, revoking `peers`, signed by `key`.
fn revocation_list(key: &SigningKey, version: u64, peers: &[PeerId]) -> SignedRevocations {
    let revocations = Revocations {
        version,
        issued: now(),
        peers: peers.iter().map(PeerId::to_string).collect(),
    };
    SignedRevocations::sign(key, revocations).unwrap()
}

/// Serves `store` as a depot does, handing on the revocation list `node` holds.
fn serve_with_revocations(node: &NetHandle, incoming: net::IncomingStreams) -> Arc<ServeCounters> {
    let served = Arc::new(ServeCounters::default());
    let roles = serve::Roles {
        revocations: node.revocations_in_force(),
        ..serve::Roles::default()
    };
    serve::spawn_server_with(Arc::new(new_store()), incoming, served.clone(), roles);
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depot_hands_a_newer_revocation_list_on_and_the_revoked_neighbour_is_cut_off() {
    let (neighbour, mut neighbour_events, _neighbour_incoming, neighbour_addr) =
        member(MemberRole::Vehicle).await;
    let list = revocation_list(&fleet_key(), 2, &[neighbour.peer_id()]);
    let (depot, _depot_events, depot_incoming, depot_addr) =
        member_holding(MemberRole::Depot, Some(list.clone())).await;
    let served = serve_with_revocations(&depot, depot_incoming);

    // A vehicle that holds no list yet, connected to its neighbour.
    let (vehicle, _vehicle_events, _vehicle_incoming, _) = member(MemberRole::Vehicle).await;
    assert_eq!(
        vehicle.dial(neighbour_addr).await.unwrap(),
        neighbour.peer_id()
    );
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("revocations.json");

    let got = node::revocations::refresh_from_mesh(
        &vehicle,
        std::slice::from_ref(&depot_addr),
        Some(&keep),
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        node::revocations::MeshRevocations::Taken {
            version: 2,
            from: depot.peer_id(),
            revoked: vec![neighbour.peer_id()],
        }
    );
    disconnected(&mut neighbour_events, vehicle.peer_id()).await;
    let gate = vehicle.membership_counters().unwrap();
    let vehicle_addr = vehicle.listen_addrs().await[0].clone();
    assert!(
        neighbour.dial(vehicle_addr).await.is_err(),
        "the revoked neighbour came back"
    );
    assert_eq!(gate.refused(RefusalKind::Revoked), 1, "{gate:?}");
    assert_eq!(gate.revocations_version.load(Relaxed), 2);
    assert_eq!(
        node::mesh_config::read_revocations(&keep).unwrap(),
        Some(list)
    );
    // The vehicle now hands the same list on itself.
    assert_eq!(
        vehicle
            .revocations_in_force()
            .unwrap()
            .get()
            .unwrap()
            .version,
        2
    );

    // Asked again, the depot has nothing newer: its offer comes without a list.
    let again = node::revocations::refresh_from_mesh(&vehicle, &[depot_addr], Some(&keep), WAIT)
        .await
        .unwrap();
    assert_eq!(
        again,
        node::revocations::MeshRevocations::Current {
            version: 2,
            from: depot.peer_id(),
        }
    );
    assert_eq!(served.refused.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_forged_or_garbled_list_from_a_peer_is_refused_and_the_kept_list_stays() {
    let revoked = PeerId::random();
    let held = revocation_list(&fleet_key(), 2, &[revoked]);
    let (vehicle, _vehicle_events, _vehicle_incoming, _) =
        member_holding(MemberRole::Vehicle, Some(held.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("revocations.json");
    node::mesh_config::keep_revocations(&keep, &held).unwrap();
    let kept = std::fs::read(&keep).unwrap();

    // A member that answers by hand, with what each case sends after its offer.
    let (rogue, _rogue_events, mut rogue_incoming, rogue_addr) = member(MemberRole::Vehicle).await;
    let older = revocation_list(&fleet_key(), 1, &[]).encode();
    let forged = revocation_list(&SigningKey::from_bytes(&[7; 32]), 9, &[]).encode();
    let mut pardon = revocation_list(&fleet_key(), 3, &[revoked]);
    pardon.revocations.peers.clear();
    let relabelled = revocation_list(&fleet_key(), 3, &[revoked]).encode();
    let cases: Vec<(u64, u64, Vec<u8>, &str)> = vec![
        (1, older.len() as u64, older, "older than version 2"),
        (9, forged.len() as u64, forged, "does not trust"),
        (
            3,
            pardon.encode().len() as u64,
            pardon.encode(),
            "does not verify",
        ),
        (
            7,
            relabelled.len() as u64,
            relabelled,
            "version 7 was offered, and the list is version 3",
        ),
        (
            5,
            1000,
            b"{\"revocations\":".to_vec(),
            "ended after 15 of the 1000 bytes",
        ),
        (5, 2, b"{}".to_vec(), "revocation list: missing field"),
    ];
    let (asked, mut questions) = tokio::sync::mpsc::unbounded_channel();
    let answers: Vec<(u64, u64, Vec<u8>)> = cases
        .iter()
        .map(|(v, l, b, _)| (*v, *l, b.clone()))
        .collect();
    tokio::spawn(async move {
        for (version, length, bytes) in answers {
            let (_, mut stream) = rogue_incoming.next().await.unwrap();
            let question = node::protocol::read_question(&mut stream).await.unwrap();
            asked.send(question).unwrap();
            let offer =
                Message::RevocationsOffer(proto::wire::RevocationsOffer { version, length });
            stream.write_all(&offer.encode().unwrap()).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            stream.close().await.unwrap();
        }
    });
    for (_, _, _, expected) in &cases {
        let error = node::revocations::refresh_from_mesh(
            &vehicle,
            std::slice::from_ref(&rogue_addr),
            Some(&keep),
            WAIT,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                node::revocations::MeshRevocationsError::Unanswered { .. }
            ),
            "{error}"
        );
        assert!(error.to_string().contains(expected), "{expected}: {error}");
        assert_eq!(
            questions.recv().await.unwrap(),
            Message::RevocationsQuery(proto::wire::RevocationsQuery { newer_than: 2 })
        );
        assert_eq!(std::fs::read(&keep).unwrap(), kept, "the kept list changed");
        let gate = vehicle.membership_counters().unwrap();
        assert_eq!(gate.revocations_version.load(Relaxed), 2);
        assert!(vehicle.connected_peers().await.contains(&rogue.peer_id()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_ask_for_the_revocation_list() {
    let list = revocation_list(&fleet_key(), 4, &[PeerId::random()]);
    let (depot, _depot_events, depot_incoming, depot_addr) =
        member_holding(MemberRole::Depot, Some(list)).await;
    let served = serve_with_revocations(&depot, depot_incoming);
    let gate = depot.membership_counters().unwrap();

    let (stranger, _stranger_events, _stranger_incoming) =
        net::start(loopback_config()).await.unwrap();
    let depot_id = stranger.dial(depot_addr.clone()).await.unwrap();
    let stream = stranger.open_stream(depot_id).await.unwrap();
    let asked = tokio::time::timeout(WAIT, node::protocol::query_revocations(stream, 0))
        .await
        .expect("the exchange ended");
    assert!(asked.is_err(), "a stranger got {asked:?}");
    // A raw question gets no byte either.
    if let Ok(mut stream) = stranger.open_stream(depot_id).await {
        let question = Message::RevocationsQuery(proto::wire::RevocationsQuery { newer_than: 0 });
        let _ = stream.write_all(&question.encode().unwrap()).await;
        let _ = stream.close().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
        assert!(answer.is_empty(), "a stranger got {} bytes", answer.len());
    }
    assert!(gate.streams_refused.load(Relaxed) >= 1, "{gate:?}");
    assert_eq!(
        served.refused.load(Relaxed),
        0,
        "the server saw the stranger's question"
    );
    // And a node without a fleet has no list to refresh.
    let error = node::revocations::refresh_from_mesh(&stranger, &[depot_addr], None, WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(error, node::revocations::MeshRevocationsError::OpenMesh),
        "{error}"
    );
}
