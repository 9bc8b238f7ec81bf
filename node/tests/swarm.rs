//! A vehicle fetching from four real libp2p QUIC nodes on loopback at once: a depot, an honest
//! neighbour, a neighbour that serves corrupt data and one that vanishes mid-transfer. The blob
//! must arrive verified, the liar must be banned, and nothing unverified may be in the store.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::AsyncWriteExt;
use libp2p::PeerId;
use node::fetch::{self, FetchOptions};
use node::net;
use node::protocol;
use node::serve::{self, ServeCounters};
use proto::wire::Message;

mod common;
use common::{new_store, spawn_liar, start_node};

/// A peer that says it holds the whole blob, accepts every request and then never answers nor
/// closes the stream: a process that hung, or a link that went dark without the connection
/// noticing yet.
fn spawn_staller(blob: proto::BlobId, size: u64, mut incoming: net::IncomingStreams) {
    tokio::spawn(async move {
        let mut held_open = Vec::new();
        while let Some((_, mut stream)) = incoming.next().await {
            let Ok(message) = protocol::read_message(&mut stream).await else {
                continue;
            };
            if let Message::HaveQuery(_) | Message::HaveSubscribe(_) = message {
                let have = Message::Have(proto::wire::Have {
                    blob,
                    size: Some(size),
                    groups: node::store::LAYOUT.all_groups(size),
                });
                let _ = stream.write_all(&have.encode().unwrap()).await;
                let _ = stream.flush().await;
            }
            held_open.push(stream);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_one_liar_one_vanishing_one_stalling() {
    let data: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    let depot_store = Arc::new(new_store());
    let blob = depot_store.import(&data[..]).unwrap();
    let (depot, _depot_events, depot_incoming, depot_addr) = start_node().await;
    serve::spawn_server(
        depot_store.clone(),
        depot_incoming,
        Arc::new(ServeCounters::default()),
    );

    let honest_store = Arc::new(new_store());
    honest_store.import(&data[..]).unwrap();
    let (honest, _honest_events, honest_incoming, honest_addr) = start_node().await;
    let honest_counters = Arc::new(ServeCounters::default());
    serve::spawn_server(honest_store, honest_incoming, honest_counters.clone());

    let liar_store = Arc::new(new_store());
    liar_store.import(&data[..]).unwrap();
    let (liar, _liar_events, liar_incoming, liar_addr) = start_node().await;
    spawn_liar(liar_store, liar_incoming);

    // The vanishing peer serves a few requests, then its node shuts down.
    let vanishing_store = Arc::new(new_store());
    vanishing_store.import(&data[..]).unwrap();
    let (vanishing, _vanishing_events, vanishing_incoming, vanishing_addr) = start_node().await;
    let vanishing_counters = Arc::new(ServeCounters::default());
    serve::spawn_server(
        vanishing_store,
        vanishing_incoming,
        vanishing_counters.clone(),
    );
    let watcher = vanishing.clone();
    let served_then = vanishing_counters.clone();
    let vanished_after = Arc::new(AtomicU64::new(0));
    let vanished_flag = vanished_after.clone();
    tokio::spawn(async move {
        while served_then.requests.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        vanished_flag.store(served_then.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        watcher.shutdown().await;
    });

    let (staller, _staller_events, staller_incoming, staller_addr) = start_node().await;
    spawn_staller(blob, data.len() as u64, staller_incoming);

    let fetcher_store = Arc::new(new_store());
    let (fetcher, mut fetcher_events, _fetcher_incoming, _) = start_node().await;
    let mut options = FetchOptions::new(blob);
    options.peers = vec![
        depot_addr,
        honest_addr,
        liar_addr,
        vanishing_addr,
        staller_addr,
    ];
    options.stall_timeout = Duration::from_secs(10);
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        fetch::fetch(
            &fetcher,
            &mut fetcher_events,
            fetcher_store.clone(),
            options,
            |_| {},
        ),
    )
    .await
    .expect("fetch finished in time")
    .expect("fetch succeeded");

    // The blob is complete and every byte re-verifies on the way out.
    let mut out = Vec::new();
    fetcher_store.export(&blob, &mut out).unwrap();
    assert!(out == data, "fetched blob differs");
    assert_eq!(report.size, data.len() as u64);

    let liar_id: PeerId = liar.peer_id();
    assert_eq!(report.banned_peers, vec![liar_id], "{report:?}");
    assert!(report.bad_chunk_groups >= 1);
    // Before its ban the liar could only deliver the good groups of the requests it had open.
    let from_liar = report.bytes_per_peer.get(&liar_id).copied().unwrap_or(0);
    assert!(
        from_liar <= 4 * 16 * 16384,
        "liar delivered {from_liar} bytes"
    );
    assert!(
        vanished_after.load(Ordering::Relaxed) > 0,
        "the vanishing peer never served"
    );
    let from_depot = report
        .bytes_per_peer
        .get(&depot.peer_id())
        .copied()
        .unwrap_or(0);
    let from_honest = report
        .bytes_per_peer
        .get(&honest.peer_id())
        .copied()
        .unwrap_or(0);
    assert!(from_depot > 0 && from_honest > 0, "{report:?}");
    // The staller delivered nothing; its groups came from others, by the endgame or after its
    // requests timed out, and it was not taken for a liar.
    assert_eq!(report.bytes_per_peer.get(&staller.peer_id()), None);
    assert!(!report.banned_peers.contains(&staller.peer_id()));
    assert!(
        report.requests.duplicates + report.requests.timeouts > 0,
        "{report:?}"
    );
    eprintln!("{report:#?}");
}
