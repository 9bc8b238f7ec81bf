//! A fetch over a metered link stops when its byte allowance is spent, keeps what it verified,
//! and the next run (with a new allowance) resumes from there without fetching those bytes again.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;

use node::runtime::{self, FetchError, FetchOptions, ServeCounters};

mod common;
use common::{new_store, start_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_allowance_stops_the_fetch_and_the_next_run_resumes() {
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let size = data.len() as u64;
    let depot_store = Arc::new(new_store());
    let blob = depot_store.import(&data[..]).unwrap();
    let (depot, _depot_events, depot_incoming, depot_addr) = start_node().await;
    runtime::spawn_server(
        depot_store,
        depot_incoming,
        Arc::new(ServeCounters::default()),
    );

    let store = Arc::new(new_store());
    let (vehicle, mut events, _incoming, _) = start_node().await;
    let mut options = FetchOptions::new(blob);
    options.size = Some(size);
    options.peers = vec![depot_addr.clone()];
    // One request of four groups in flight: the overshoot is at most 64 KiB.
    options.transfer.groups_per_request = 4;
    options.transfer.max_requests_total = 1;
    options.transfer.max_requests_per_peer = 1;
    options.max_bytes = Some(1 << 20);
    let error = runtime::fetch(
        &vehicle,
        &mut events,
        store.clone(),
        options.clone(),
        |_| {},
    )
    .await
    .unwrap_err();
    let FetchError::Allowance {
        bytes, allowance, ..
    } = error
    else {
        panic!("expected the allowance to end the fetch, got {error}");
    };
    assert_eq!(allowance, 1 << 20);
    assert!(
        (1 << 20..(1 << 20) + (64 << 10) + 4096).contains(&bytes),
        "{bytes} bytes arrived for an allowance of 1 MiB"
    );
    let held = store.info(&blob).unwrap().held.group_count();
    assert!((64..256).contains(&held), "{held} groups kept");

    // A new allowance: the rest comes, and only the rest.
    options.max_bytes = Some(size);
    let report = runtime::fetch(&vehicle, &mut events, store.clone(), options, |_| {})
        .await
        .unwrap();
    assert_eq!(report.resumed_groups, held);
    assert!(
        report.bytes_fetched + bytes < size + size / 20,
        "{} + {bytes} bytes for a {size}-byte blob",
        report.bytes_fetched
    );
    let mut out = Vec::new();
    store.export(&blob, &mut out).unwrap();
    assert_eq!(out, data);
    vehicle.shutdown().await;
    depot.shutdown().await;
}
