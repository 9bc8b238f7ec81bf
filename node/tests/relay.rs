//! Reports handed over the mesh between real libp2p QUIC nodes on loopback: a peer that relays
//! nothing refuses by name and the next relay in the list takes the report; a relay with a
//! full queue refuses it as busy; a relay that takes one has it on disk before it answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use node::relay::{ReportQueue, send_report};
use node::serve::{self, Roles, ServeCounters};

mod common;
use common::{new_store, start_node};

fn manifest(n: u32) -> Vec<u8> {
    format!(r#"{{"signatures":[],"signed":{{"vin":"VIN-7","n":{n}}}}}"#).into_bytes()
}

#[tokio::test]
async fn reports_go_to_the_first_relay_that_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    // A neighbour vehicle: serves blobs, relays nothing.
    let (_plain, _e1, incoming, plain_addr) = start_node().await;
    serve::spawn_server(
        Arc::new(new_store()),
        incoming,
        Arc::new(ServeCounters::default()),
    );
    // The depot: relays, with room for two reports.
    let queue = Arc::new(ReportQueue::open(dir.path(), 2).unwrap());
    let (depot, _e2, incoming, depot_addr) = start_node().await;
    serve::spawn_server_with(
        Arc::new(new_store()),
        incoming,
        Arc::new(ServeCounters::default()),
        Roles {
            reports: Some(queue.clone()),
            ..Roles::default()
        },
    );
    let (vehicle, _e3, _incoming, _) = start_node().await;
    let timeout = Duration::from_secs(10);

    // Only the neighbour: refused, and the error says so.
    let error = send_report(
        &vehicle,
        std::slice::from_ref(&plain_addr),
        &manifest(1),
        timeout,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("relays no reports"), "{error}");

    // The neighbour first, then the depot: the depot takes it, and has it on disk.
    let relays = [plain_addr, depot_addr];
    let taker = send_report(&vehicle, &relays, &manifest(1), timeout)
        .await
        .unwrap();
    assert_eq!(taker, depot.peer_id());
    let reopened = ReportQueue::open(dir.path(), 2).unwrap();
    let pending = reopened.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].manifest, manifest(1));
    assert_eq!(pending[0].vin, "VIN-7");

    // The same report again is taken without a second copy; a third report finds the queue
    // full; a report that is not a manifest is refused by name.
    send_report(&vehicle, &relays, &manifest(1), timeout)
        .await
        .unwrap();
    send_report(&vehicle, &relays, &manifest(2), timeout)
        .await
        .unwrap();
    assert_eq!(queue.len(), 2);
    let error = send_report(&vehicle, &relays, &manifest(3), timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("busy") && error.contains("queue is full"),
        "{error}"
    );
    let error = send_report(&vehicle, &relays, b"hello", timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a signed vehicle manifest"), "{error}");
    // Nothing configured: said so.
    let error = send_report(&vehicle, &[], &manifest(4), timeout)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no relay is configured"), "{error}");
}
