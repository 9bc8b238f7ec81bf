//! A corrupt vehicle in the yard, on real libp2p QUIC nodes: it holds the blob, says so (the
//! depot's tracker follows it and holds groups back for it) and corrupts what it sends. The
//! vehicle that catches it tells the depot (`Distrust`), and the depot serves it at once instead
//! of deferring to the liar until its deferral runs out — here set far beyond the test's time
//! limit, so without the report the fetch could not finish in time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;
use std::time::Duration;

use node::fetch::{self, FetchOptions};
use node::protocol::{self, ExchangeError};
use node::seeding::{Accused, SeedConfig};
use node::serve::{self, Roles, ServeCounters};
use node::tracker::Tracker;
use proto::wire::ErrorCode;

mod common;
use common::{new_store, spawn_liar, start_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_that_catches_a_liar_tells_the_depot_and_is_served_at_once() {
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();

    // The depot: tracker and super-seeding, with a deferral no test waits out.
    let depot_store = Arc::new(new_store());
    let blob = depot_store.import(&data[..]).unwrap();
    let (depot, depot_events, depot_incoming, depot_addr) = start_node().await;
    let tracker = Tracker::start(
        depot.clone(),
        depot_events,
        SeedConfig {
            max_defer: Duration::from_secs(3600),
            ..SeedConfig::default()
        },
    );
    serve::spawn_server_with(
        depot_store,
        depot_incoming,
        Arc::new(ServeCounters::default()),
        Roles {
            tracker: Some(tracker.clone()),
            ..Roles::default()
        },
    );

    // The liar joins the yard as a vehicle does: it asks the depot who holds the blob, so the
    // depot follows its (truthful, complete) have-map.
    let liar_store = Arc::new(new_store());
    liar_store.import(&data[..]).unwrap();
    let (liar, _liar_events, liar_incoming, _) = start_node().await;
    spawn_liar(liar_store, liar_incoming);
    liar.dial(depot_addr.clone()).await.unwrap();
    let stream = liar.open_stream(depot.peer_id()).await.unwrap();
    protocol::query_peers(stream, blob).await.unwrap();

    // A vehicle that knows only the depot. Once the depot names the liar to it, the depot
    // holds back everything.
    let vehicle_store = Arc::new(new_store());
    let (vehicle, mut vehicle_events, _vehicle_incoming, _) = start_node().await;
    vehicle.dial(depot_addr.clone()).await.unwrap();
    let named = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let stream = vehicle.open_stream(depot.peer_id()).await.unwrap();
            let peers = protocol::query_peers(stream, blob).await.unwrap();
            if peers
                .peers
                .iter()
                .any(|p| p.peer == liar.peer_id().to_bytes())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(named.is_ok(), "the depot never learnt what the liar holds");

    let mut options = FetchOptions::new(blob);
    options.peers = vec![depot_addr];
    options.stall_timeout = Duration::from_secs(60);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        fetch::fetch(
            &vehicle,
            &mut vehicle_events,
            vehicle_store.clone(),
            options,
            |_| {},
        ),
    )
    .await
    .expect("fetch finished before the depot's deferral could have run out")
    .expect("fetch succeeded");

    let mut out = Vec::new();
    vehicle_store.export(&blob, &mut out).unwrap();
    assert!(out == data, "fetched blob differs");
    assert_eq!(report.banned_peers, vec![liar.peer_id()], "{report:?}");
    // What the liar sent before its last, corrupt, group was verified and kept; the rest came
    // from the depot.
    let from_liar = report
        .bytes_per_peer
        .get(&liar.peer_id())
        .copied()
        .unwrap_or(0);
    let from_depot = report
        .bytes_per_peer
        .get(&depot.peer_id())
        .copied()
        .unwrap_or(0);
    assert!(from_depot > 0, "{report:?}");
    assert_eq!(from_liar + from_depot, report.bytes_fetched, "{report:?}");
    let stats = tracker.stats();
    assert_eq!(stats.distrusts, 1, "{stats:?}");
    assert_eq!(stats.deferral_expired, 0, "{stats:?}");
    assert_eq!(
        tracker.accused(),
        vec![Accused {
            peer: liar.peer_id(),
            blob,
            accusers: 1,
            for_everyone: false,
        }]
    );
    // The depot no longer names the liar to the vehicle that caught it.
    let stream = vehicle.open_stream(depot.peer_id()).await.unwrap();
    let peers = protocol::query_peers(stream, blob).await.unwrap();
    assert!(peers.peers.is_empty(), "{peers:?}");

    // An identity that is not a peer id is refused by name, and changes nothing.
    let stream = vehicle.open_stream(depot.peer_id()).await.unwrap();
    let error = protocol::report_distrust(stream, blob, vec![1, 2, 3])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ExchangeError::Refused { code: ErrorCode::BadRequest, detail } if detail.contains("not a peer id")),
        "{error}"
    );
    assert_eq!(tracker.stats().distrusts, 1);

    // A peer without a tracker (an ordinary vehicle, or an older depot) refuses the question.
    let (plain, _plain_events, plain_incoming, plain_addr) = start_node().await;
    serve::spawn_server(
        Arc::new(new_store()),
        plain_incoming,
        Arc::new(ServeCounters::default()),
    );
    vehicle.dial(plain_addr).await.unwrap();
    let stream = vehicle.open_stream(plain.peer_id()).await.unwrap();
    let error = protocol::report_distrust(stream, blob, liar.peer_id().to_bytes())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ExchangeError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{error}"
    );
    eprintln!("{report:#?}\n{stats:?}");
}
