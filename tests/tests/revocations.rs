//! Issue 25: "revocation reaches depots and vehicles within one metadata refresh". First for the
//! vehicle that never reaches the director. A depot daemon holds the fleet's revocation list
//! version 2 (kept at its `[mesh] revocations`), which revokes a vehicle's neighbour; the vehicle
//! agent (`vehicle_peer::daemon`, no `director_url`, holding version 1) is connected to that
//! neighbour over real QUIC. Within one check it has version 2 from its depot, has cut the
//! neighbour off, and keeps the list for its next start; the next check finds nothing newer.
//! Then for the depot: a revocation made at a real director reaches a depot daemon through its
//! `[relay]` within one refresh, and the revoked member is cut off. Last, the other end of a
//! membership's life: a vehicle renews its own certificate at the director before it expires.
//!
//! (The node's side, with older, forged and garbled lists and strangers, is in
//! `node/tests/membership.rs`. This test lives here rather than in `vehicle-peer/tests` because
//! the depot daemon it runs is this crate's fixture.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use depotmesh_tests::depot::DepotDaemon;
use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use node::membership::MeshMembership;
use node::mesh_config::{MeshSection, keep_revocations, read_revocations};
use node::net::{NetConfig, NetEvent};
use proto::membership::{
    FleetKeys, MemberRole, Membership, MembershipCert, Revocations, SignedRevocations,
};

fn fleet_key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn certificate(peer: PeerId, role: MemberRole) -> MembershipCert {
    let now = node::clock::unix_now();
    let membership = Membership {
        peer: peer.to_string(),
        role,
        issued: now - 60,
        expires: now + 86_400,
    };
    MembershipCert::issue(&fleet_key(), membership).unwrap()
}

fn revocation_list(version: u64, peers: &[PeerId]) -> SignedRevocations {
    let revocations = Revocations {
        version,
        issued: node::clock::unix_now(),
        peers: peers.iter().map(PeerId::to_string).collect(),
    };
    SignedRevocations::sign(&fleet_key(), revocations).unwrap()
}

/// Enrols the node whose identity is in `data_dir` in `role`, as `origin member issue` does,
/// starting it with `held` kept in `dir`; returns its `[mesh]` section and peer id.
fn enrol(
    dir: &Path,
    data_dir: &Path,
    role: MemberRole,
    held: &SignedRevocations,
) -> (MeshSection, PeerId) {
    std::fs::create_dir_all(data_dir).unwrap();
    let peer = node::identity::load_or_create(data_dir)
        .unwrap()
        .public()
        .to_peer_id();
    let path = dir.join("member.json");
    std::fs::write(&path, certificate(peer, role).encode()).unwrap();
    let revocations = dir.join("revocations.json");
    keep_revocations(&revocations, held).unwrap();
    let section = MeshSection {
        open: false,
        fleet_keys: vec![hex::encode(fleet_key().verifying_key().as_bytes())],
        certificate: Some(path),
        revocations: Some(revocations),
    };
    (section, peer)
}

/// Keeps the daemon's node running (its runtime runs only while its thread waits in it) until
/// `task`, on the test's runtime, has finished.
fn serve_until<T>(
    daemon: &vehicle_peer::daemon::Daemon,
    runtime: &tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !task.is_finished() {
        assert!(Instant::now() < deadline, "the task did not finish");
        daemon.serve_for(Duration::from_millis(50));
    }
    runtime.block_on(task).unwrap()
}

/// A loopback member node in the test's runtime: `keypair` presenting `certificate`, trusting
/// `keys`.
async fn member_node(
    keypair: Keypair,
    certificate: MembershipCert,
    keys: FleetKeys,
) -> (node::net::NetHandle, node::net::NetEvents) {
    let membership = MeshMembership {
        certificate,
        keys,
        revocations: None,
    };
    let (net, events, _incoming) = node::net::start(NetConfig {
        keypair: Some(keypair),
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        mdns_auto_dial: false,
        membership: Some(membership),
        ..NetConfig::default()
    })
    .await
    .unwrap();
    (net, events)
}

/// What differs between the vehicle agents these tests run.
struct Agent<'a> {
    vin: &'a str,
    serial: &'a str,
    depot: &'a str,
    director: Option<(&'a str, &'a Path)>,
    primary_seed: u8,
    ecu_seed: u8,
    director_key: &'a str,
    mesh: &'a MeshSection,
    metadata_timeout_secs: u64,
}

/// A vehicle agent in `dir` with one file-backed gateway ECU running v1 and no trusted root
/// (its checks fail at metadata, after the membership steps these tests look at).
fn vehicle_agent(w: &Path, dir: &Path, agent: &Agent<'_>) -> vehicle_peer::daemon::Daemon {
    let ecu = vehicle_peer::simulated::file_ecu(
        &dir.join("ecu"),
        &vehicle_peer::simulated::FileEcu {
            serial: agent.serial,
            hardware_id: "gw-v1",
            installed: ("ecu/gw-1.bin", b"firmware v1", 1),
            bank_bytes: 1 << 16,
            key: &hex::encode([agent.ecu_seed; 32]),
            director_key: agent.director_key,
            health: "exit 0",
            single_bank_spare: None,
        },
    )
    .unwrap();
    let no_root = w.join("no-root.json");
    let extra = format!(
        "metadata_timeout_secs = {}\n[link]\nclass = \"yard-wifi\"",
        agent.metadata_timeout_secs
    );
    let config = vehicle_peer::simulated::loopback_vehicle(
        dir,
        &vehicle_peer::simulated::LoopbackVehicle {
            vin: agent.vin,
            depot: agent.depot,
            roots: (&no_root, &no_root),
            director: agent.director,
            primary_key: &hex::encode([agent.primary_seed; 32]),
            ecus: &[ecu],
            mesh: Some(agent.mesh),
            extra: &extra,
        },
    )
    .unwrap();
    let config = vehicle_peer::config::load(&config).unwrap();
    assert_eq!(config.director_url.is_some(), agent.director.is_some());
    vehicle_peer::daemon::Daemon::open(config).unwrap()
}

#[test]
fn a_vehicle_that_reaches_no_director_gets_a_newer_list_from_its_depot_within_one_check() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The neighbour to be revoked: a member node in the test's runtime.
    let neighbour_key = Keypair::generate_ed25519();
    let neighbour_id = neighbour_key.public().to_peer_id();
    let newer = revocation_list(2, &[neighbour_id]);

    // The depot holds version 2 (as its relay would have fetched it from the director).
    let depot_dir = w.join("depot");
    let (depot_mesh, depot_id) = enrol(&depot_dir, &depot_dir, MemberRole::Depot, &newer);
    let depot = DepotDaemon::start(
        &depot_dir,
        &format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\n{}\n",
            depot_dir.display().to_string(),
            depot_mesh.inline_toml()
        ),
    );

    // The vehicle: no director_url, its depot as its one peer, holding version 1.
    let vehicle_dir = w.join("vehicle");
    let older = revocation_list(1, &[]);
    let (vehicle_mesh, vehicle_id) = enrol(
        &vehicle_dir,
        &vehicle_dir.join("data"),
        MemberRole::Vehicle,
        &older,
    );
    let director_key = hex::encode(SigningKey::from_bytes(&[5; 32]).verifying_key().as_bytes());
    let mut daemon = vehicle_agent(
        w,
        &vehicle_dir,
        &Agent {
            vin: "REV-1",
            serial: "GW-REV-1",
            depot: &depot.addr.to_string(),
            director: None,
            primary_seed: 7,
            ecu_seed: 6,
            director_key: &director_key,
            mesh: &vehicle_mesh,
            metadata_timeout_secs: 10,
        },
    );
    let vehicle_addr = daemon.listen_addrs()[0].clone();

    // The neighbour connects to the vehicle, and both admit each other.
    let (neighbour, mut neighbour_events) = runtime.block_on(member_node(
        neighbour_key,
        certificate(neighbour_id, MemberRole::Vehicle),
        FleetKeys::new([fleet_key().verifying_key()]),
    ));
    let dial = runtime.spawn({
        let neighbour = neighbour.clone();
        let addr = vehicle_addr.clone();
        async move { neighbour.dial(addr).await }
    });
    assert_eq!(serve_until(&daemon, &runtime, dial).unwrap(), vehicle_id);

    // One check. It fails later on (this vehicle has no trusted root), after the revocations.
    let _ = daemon.check(node::clock::unix_now());
    let status = daemon.status().clone();
    assert_eq!(status["revocations"]["version"], 2, "{status}");
    assert_eq!(
        status["revocations"]["from"],
        depot_id.to_string(),
        "{status}"
    );
    let kept = vehicle_mesh.revocations.as_deref().unwrap();
    assert_eq!(read_revocations(kept).unwrap(), Some(newer.clone()));

    // The neighbour is cut off, and refused when it dials again.
    let gone = runtime.spawn(async move {
        while let Some(event) = neighbour_events.recv().await {
            if matches!(event, NetEvent::PeerDisconnected { peer, .. } if peer == vehicle_id) {
                return true;
            }
        }
        false
    });
    assert!(serve_until(&daemon, &runtime, gone), "no disconnection");
    let again = runtime.spawn({
        let neighbour = neighbour.clone();
        async move { neighbour.dial(vehicle_addr).await }
    });
    assert!(
        serve_until(&daemon, &runtime, again).is_err(),
        "the revoked neighbour was admitted again"
    );

    // The next check finds nothing newer at the depot; the list kept stays.
    let _ = daemon.check(node::clock::unix_now());
    assert_eq!(daemon.status()["revocations"]["version"], 2);
    assert!(daemon.status()["revocations"]["error"].is_null());
    assert_eq!(read_revocations(kept).unwrap(), Some(newer));
    runtime.block_on(neighbour.shutdown());
}

/// The director's side of the same promise: a provisioner revokes a member at the director
/// (`POST /v1/fleet/revoke`), and a depot whose `[relay]` names that director takes the new list
/// at its next refresh (as often as it prefetches: every second here), cuts the member off,
/// refuses it when it dials again, and keeps the list for its next start.
#[test]
fn a_revocation_at_the_director_reaches_a_depot_within_one_refresh() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = depotmesh_tests::release::new_origin(w, node::clock::now());
    let director = depotmesh_tests::director::DirectorService::start(&origin);
    let actor = depotmesh_tests::release::actor();
    let fleet_key = origin::fleet::describe_key(&origin).unwrap().fleet_key;
    let enrol = |data_dir: &Path, role: MemberRole| -> (PathBuf, PeerId) {
        std::fs::create_dir_all(data_dir).unwrap();
        let peer = node::identity::load_or_create(data_dir)
            .unwrap()
            .public()
            .to_peer_id();
        let cert = origin::fleet::issue(&origin, &actor, &peer.to_string(), role, 1).unwrap();
        let path = data_dir.join("member.json");
        std::fs::write(&path, cert.encode()).unwrap();
        (path, peer)
    };

    // The depot: a fleet member relaying to the director, "prefetching" every second from an
    // upstream that is not there (what sets its refresh interval).
    let depot_dir = w.join("depot");
    let (depot_cert, depot_id) = enrol(&depot_dir, MemberRole::Depot);
    let kept = depot_dir.join("revocations.json");
    let mesh = MeshSection {
        open: false,
        fleet_keys: vec![fleet_key.clone()],
        certificate: Some(depot_cert),
        revocations: Some(kept.clone()),
    };
    let nobody = format!("/ip4/127.0.0.1/udp/9/quic-v1/p2p/{}", PeerId::random());
    let depot = DepotDaemon::start(
        &depot_dir,
        &format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nhttp = \"127.0.0.1:0\"\n{}\n\
             [prefetch]\nupstream = [{nobody:?}]\ninterval_secs = 1\n\
             [relay]\ndirector_url = {:?}\ndirector_ca = {:?}\nretry_secs = 1\n",
            depot_dir.display().to_string(),
            mesh.inline_toml(),
            director.url,
            director.ca.display().to_string(),
        ),
    );

    // A member vehicle connects to the depot and is admitted.
    let vehicle_dir = w.join("vehicle");
    let (vehicle_cert, vehicle_id) = enrol(&vehicle_dir, MemberRole::Vehicle);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (vehicle, mut vehicle_events) = runtime.block_on(member_node(
        node::identity::load_or_create(&vehicle_dir).unwrap(),
        MembershipCert::decode(&std::fs::read(&vehicle_cert).unwrap()).unwrap(),
        origin::fleet::fleet_keys(&origin).unwrap(),
    ));
    let admitted = runtime.block_on(vehicle.dial(depot.addr.clone())).unwrap();
    assert_eq!(admitted, depot_id);

    // A provisioner revokes it at the director.
    let answer = director
        .agent()
        .post(format!("{}/v1/fleet/revoke", director.url))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "peer": vehicle_id.to_string() }).to_string())
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let list: SignedRevocations = serde_json::from_str(&answer).unwrap();
    assert_eq!(list.revocations.version, 1, "{answer}");

    // The depot cuts it off at its next refresh, and refuses it when it dials again.
    let gone = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = vehicle_events.recv().await {
                if matches!(event, NetEvent::PeerDisconnected { peer, .. } if peer == depot_id) {
                    return true;
                }
            }
            false
        })
        .await
    });
    assert_eq!(
        gone,
        Ok(true),
        "the depot did not cut the revoked member off"
    );
    assert!(
        runtime.block_on(vehicle.dial(depot.addr.clone())).is_err(),
        "the revoked member was admitted again"
    );
    let status = depot.status();
    assert_eq!(status["membership"]["revocations_version"], 1, "{status}");
    assert!(
        status["membership"]["refused"]["revoked"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(read_revocations(&kept).unwrap(), Some(list));
    runtime.block_on(vehicle.shutdown());
}

/// A vehicle's own certificate, renewed before it expires: enrolled with its peer id, holding a
/// certificate with ten days left, the vehicle agent asks the director at its next check
/// (signed with its primary key), presents the new one and keeps it; with a year left it does
/// not ask again.
#[test]
fn a_vehicle_renews_its_certificate_at_the_director_before_it_expires() {
    use depotmesh_tests::director::{DirectorService, ECU_SEED, PRIMARY_SEED, public};
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = depotmesh_tests::release::new_origin(w, node::clock::now());
    let director = DirectorService::start(&origin);
    let actor = depotmesh_tests::release::actor();

    // Enrolled with its peer id; its certificate (made here) has ten days left.
    let vehicle_dir = w.join("vehicle");
    let data_dir = vehicle_dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let peer = node::identity::load_or_create(&data_dir)
        .unwrap()
        .public()
        .to_peer_id();
    let record = serde_json::json!({
        "vin": "RENEW-1", "region": "eu-north", "vehicle_type": "tractor", "home_depot": "depot-1",
        "primary_key": public(PRIMARY_SEED), "peer": peer.to_string(),
        "ecus": [{"serial": "GW-RENEW-1", "hardware_id": "gw-v1",
                  "public_key": public(ECU_SEED), "installed": "ecu/gw-1.bin"}],
    });
    let response = director
        .agent()
        .post(format!("{}/v1/vehicles", director.url))
        .send(serde_json::json!({ "vehicle": record }).to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let short =
        origin::fleet::issue(&origin, &actor, &peer.to_string(), MemberRole::Vehicle, 10).unwrap();
    let cert_path = vehicle_dir.join("member.json");
    std::fs::write(&cert_path, short.encode()).unwrap();
    let mesh = MeshSection {
        open: false,
        fleet_keys: vec![origin::fleet::describe_key(&origin).unwrap().fleet_key],
        certificate: Some(cert_path.clone()),
        revocations: Some(vehicle_dir.join("revocations.json")),
    };

    let nobody = format!("/ip4/127.0.0.1/udp/9/quic-v1/p2p/{}", PeerId::random());
    let mut daemon = vehicle_agent(
        w,
        &vehicle_dir,
        &Agent {
            vin: "RENEW-1",
            serial: "GW-RENEW-1",
            depot: &nobody,
            director: Some((&director.url, &director.ca)),
            primary_seed: PRIMARY_SEED,
            ecu_seed: ECU_SEED,
            director_key: &public(5),
            mesh: &mesh,
            metadata_timeout_secs: 2,
        },
    );

    // One check (it fails later on: no depot, no trusted root), after the renewal.
    let _ = daemon.check(node::clock::unix_now());
    let status = daemon.status().clone();
    let kept = MembershipCert::decode(&std::fs::read(&cert_path).unwrap()).unwrap();
    let keys = origin::fleet::fleet_keys(&origin).unwrap();
    let renewed = keys
        .verify_cert(&kept, &peer.to_string(), node::clock::unix_now())
        .unwrap();
    assert!(
        renewed.expires > short.membership.expires + 300 * 86_400,
        "{status}"
    );
    assert_eq!(status["membership"]["expires"], renewed.expires, "{status}");
    let by_vehicle = || {
        origin::audit::entries(&origin::audit::log_path(&origin))
            .unwrap()
            .into_iter()
            .filter(|entry| entry["actor"] == "vehicle RENEW-1")
            .count()
    };
    assert_eq!(by_vehicle(), 1);

    // A year left: the next check does not ask.
    let _ = daemon.check(node::clock::unix_now());
    assert_eq!(by_vehicle(), 1);
}
