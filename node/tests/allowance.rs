//! Limits on what a link carries. A fetch over a metered link stops when its byte allowance is
//! spent, keeps what it verified, and the next run (with a new allowance) resumes from there
//! without fetching those bytes again. A server with an upload limit sends no faster than it.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;
use std::time::Instant;

use node::fetch::{self, FetchError, FetchOptions};
use node::ratelimit::{LINK_BURST, RateLimit};
use node::serve::{self, Roles, ServeCounters};

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
    serve::spawn_server(
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
    let error = fetch::fetch(
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
    let report = fetch::fetch(&vehicle, &mut events, store.clone(), options, |_| {})
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_an_upload_limit_sends_no_faster_than_it() {
    let data: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let depot_store = Arc::new(new_store());
    let blob = depot_store.import(&data[..]).unwrap();
    let (depot, _depot_events, depot_incoming, depot_addr) = start_node().await;
    let counters = Arc::new(ServeCounters::default());
    // The bucket starts empty: by any moment, the server has sent at most the rate times the
    // time since the limit was made. That lower bound is what is checked; how much longer the
    // fetch takes depends on the machine.
    let started = Instant::now();
    let limit = RateLimit::with_burst(1 << 20, LINK_BURST);
    serve::spawn_server_with(
        depot_store,
        depot_incoming,
        counters.clone(),
        Roles {
            upload_limit: Some(limit),
            ..Roles::default()
        },
    );

    let store = Arc::new(new_store());
    let (vehicle, mut events, _incoming, _) = start_node().await;
    let mut options = FetchOptions::new(blob);
    options.size = Some(data.len() as u64);
    options.peers = vec![depot_addr];
    let report = fetch::fetch(&vehicle, &mut events, store.clone(), options, |_| {})
        .await
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    let mut out = Vec::new();
    store.export(&blob, &mut out).unwrap();
    assert_eq!(out, data);
    let sent = counters.bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 2 << 20, "the server counted {sent} bytes sent");
    // 2 MiB at 1 MiB/s from an empty bucket: 2 s at least (1.5 s leaves room for rounding).
    assert!(
        took >= 1.5,
        "2 MiB from a server limited to 1 MiB/s took {took} s"
    );
    println!(
        "2 MiB at an upload limit of 1 MiB/s: {took:.2} s ({} bytes received)",
        report.bytes_fetched
    );
    vehicle.shutdown().await;
    depot.shutdown().await;
}
