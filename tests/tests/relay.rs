//! The depot's relay of vehicles' reports, against a real director over HTTPS: what the director
//! refuses (a manifest the depot altered, an unknown vehicle) leaves the queue counted and
//! named; while the director is unreachable, reports stay queued, in order, across a reopen.
//! (Delivery of good reports from real vehicle agents, across a depot kill, is in
//! `vehicle_agent.rs`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use depotmesh_tests::director::{
    DirectorService, ECU_SEED, PRIMARY_SEED, assign_gateway, register_vehicle, registry,
};
use depotmesh_tests::release::{Release, new_origin, release};
use node::director_client::{ClientTls, DirectorClient};
use node::policy::Priority;
use node::relay::{ReportInbox, ReportQueue};

#[test]
fn refused_reports_leave_the_queue_and_unreachable_directors_keep_them() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = new_origin(w, node::clock::now());
    release(
        &origin,
        &Release::new("ecu/gw-1.bin", b"firmware v1", "gw-v1", 1),
    )
    .unwrap();
    assign_gateway(&origin, "VIN-1", "GW-1", "ecu/gw-1.bin", Priority::Fix);
    let version = origin::director::targets_version(&origin, &"VIN-1".parse().unwrap());
    let director = DirectorService::start(&origin);
    let url = director.url.clone();
    register_vehicle(&director, "VIN-1", "GW-1");

    // The vehicle's signed manifest; the same altered by the relay (it claims a rollback); and
    // one for a vehicle the director does not know.
    let nonce = format!("director-v{version}@1");
    let report = proto::uptane::EcuVersionReport {
        ecu_serial: "GW-1".into(),
        installed_image: "ecu/gw-1.bin".into(),
        sha256: proto::tuf::build::TargetDigests::of(b"firmware v1").sha256,
        release_counter: 1,
        nonce: nonce.clone(),
        attacks_detected: String::new(),
    };
    let ecu_key = ed25519_dalek::SigningKey::from_bytes(&[ECU_SEED; 32]);
    let reports = [proto::uptane::sign_ecu_report(&report, &ecu_key).unwrap()];
    let key = ed25519_dalek::SigningKey::from_bytes(&[PRIMARY_SEED; 32]);
    let install =
        serde_json::json!({"group": format!("director-v{version}"), "outcome": "committed"});
    let genuine =
        proto::uptane::sign_vehicle_manifest("VIN-1", "GW-1", &reports, Some(&install), &key)
            .unwrap();
    let altered = String::from_utf8(genuine.clone())
        .unwrap()
        .replace("\"committed\"", "\"rolled_back\"")
        .into_bytes();
    assert_ne!(altered, genuine);
    let stranger =
        proto::uptane::sign_vehicle_manifest("VIN-9", "GW-9", &reports, None, &key).unwrap();

    let queue_dir = w.join("queue");
    let queue = ReportQueue::open(&queue_dir, 100).unwrap();
    let peer = libp2p::PeerId::random();
    queue.take(&peer, &altered).unwrap();
    queue.take(&peer, &stranger).unwrap();
    queue.take(&peer, &genuine).unwrap();

    // The director down (nothing listens on port 1): the round stops, both stay, in order.
    let tls = ClientTls::trusting(&director.ca).unwrap();
    let down = DirectorClient::new("https://127.0.0.1:1", Duration::from_secs(5), &tls).unwrap();
    let round = depot_cache::relay::relay_once(&queue, &down);
    assert_eq!((round.accepted, round.refused), (0, 0));
    assert!(round.stopped.unwrap().contains("127.0.0.1:1"));
    drop(queue);
    let queue = ReportQueue::open(&queue_dir, 100).unwrap();
    let vins: Vec<_> = queue
        .pending()
        .unwrap()
        .into_iter()
        .map(|r| r.vin)
        .collect();
    assert_eq!(vins, ["VIN-1", "VIN-9", "VIN-1"]);

    // The director up: it refuses the altered and the stranger's, and says why; it takes the
    // genuine one; nothing is left to resend.
    let up = DirectorClient::new(&url, Duration::from_secs(5), &tls).unwrap();
    let round = depot_cache::relay::relay_once(&queue, &up);
    assert_eq!((round.accepted, round.refused, round.stopped), (1, 2, None));
    assert!(
        round.refusals[0].starts_with("VIN-1"),
        "{:?}",
        round.refusals
    );
    assert!(round.refusals[0].contains("403"), "{:?}", round.refusals);
    assert!(
        round.refusals[0].contains("signature"),
        "{:?}",
        round.refusals
    );
    assert!(
        round.refusals[1].starts_with("VIN-9"),
        "{:?}",
        round.refusals
    );
    assert!(round.refusals[1].contains("404"), "{:?}", round.refusals);
    assert!(queue.is_empty());

    // What the director believes is what the vehicle signed.
    let registry = registry(&director);
    assert_eq!(registry[0]["vin"], "VIN-1");
    assert_eq!(
        registry[0]["last_report"]["outcome"], "committed",
        "{registry}"
    );
    assert_eq!(
        registry[0]["last_report"]["nonce"],
        nonce.as_str(),
        "{registry}"
    );
}
