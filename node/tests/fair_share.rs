//! Fair share on real QUIC nodes: one slow reader that opens as many range requests as it can
//! on one connection and never reads their answers must not freeze a seeding node for everyone
//! else. Its share of the serving slots is bounded, and answers it does not read are cut after
//! the write deadline.
//!
//! A closed receive window is modelled by the attacker's own QUIC windows: 16 KiB a stream and
//! 64 KiB a connection, and no read ever. The server can then put at most 64 KiB on the wire
//! for all the attacker's answers together; every other write of an answer to it blocks, as it
//! would behind a peer that never opens its window.

// Test code: a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::Multiaddr;
use node::fetch::{self, FetchOptions};
use node::net::{self, NetConfig, QuicTuning};
use node::serve::{self, ServeCounters};
use proto::wire::{Message, RangeRequest};
use proto::{BlobId, ChunkGroupRanges};

mod common;
use common::{loopback_config, new_store, start_node};

const MIB: usize = 1024 * 1024;
/// Honest fetchers per round.
const HONEST: usize = 4;
/// Range requests the attacker opens: more than the whole serving pool, fewer than the
/// 256 streams QUIC lets one connection hold open.
const ATTACK_STREAMS: usize = 200;
/// Bound on one round of honest fetches (each of a few MiB over loopback, in a debug build);
/// only a frozen server gets near it.
const ROUND_WAIT: Duration = Duration::from_secs(90);

fn blob_bytes() -> Vec<u8> {
    (0..(8 * MIB) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Fetches `blob` with `HONEST` fresh nodes at once from `seed`; returns each one's seconds.
async fn honest_round(blob: BlobId, data: &[u8], seed: &Multiaddr) -> Vec<f64> {
    let mut fetches = Vec::new();
    for _ in 0..HONEST {
        let seed = seed.clone();
        fetches.push(tokio::spawn(async move {
            let store = Arc::new(new_store());
            let (handle, mut events, _incoming, _) = start_node().await;
            let mut options = FetchOptions::new(blob);
            options.peers = vec![seed];
            let started = Instant::now();
            let report = fetch::fetch(&handle, &mut events, store.clone(), options, |_| {})
                .await
                .expect("an honest fetch completes");
            let seconds = started.elapsed().as_secs_f64();
            let mut out = Vec::new();
            store.export(&blob, &mut out).unwrap();
            handle.shutdown().await;
            (report, out, seconds)
        }));
    }
    let mut seconds = Vec::new();
    for fetch in fetches {
        let (report, out, took) = tokio::time::timeout(ROUND_WAIT, fetch)
            .await
            .expect("an honest fetch finished within the bound")
            .unwrap();
        assert!(out == data, "fetched blob differs");
        assert_eq!(report.size, data.len() as u64);
        seconds.push(took);
    }
    seconds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holding_every_stream_it_can_does_not_freeze_the_seed() {
    let data = blob_bytes();
    let seed_store = Arc::new(new_store());
    let blob = seed_store.import(&data[..]).unwrap();
    let (seed, _seed_events, seed_incoming, seed_addr) = start_node().await;
    let counters = Arc::new(ServeCounters::default());
    serve::spawn_server(seed_store, seed_incoming, counters.clone());

    let without = honest_round(blob, &data, &seed_addr).await;

    // The attacker: a window of 64 KiB for its whole connection, and no read ever.
    let (attacker, _attacker_events, _attacker_incoming) = net::start(NetConfig {
        quic: QuicTuning {
            max_stream_data: 16 * 1024,
            max_connection_data: 64 * 1024,
            ..QuicTuning::default()
        },
        ..loopback_config()
    })
    .await
    .unwrap();
    let seed_id = attacker.dial(seed_addr.clone()).await.unwrap();
    assert_eq!(seed_id, seed.peer_id());
    let groups = node::store::LAYOUT.all_groups(data.len() as u64);
    let group_count = groups.group_count();
    // Every stream is opened before any request is written: opening one is a negotiation
    // whose answer the attacker must read, which a window filled by answers would hold up.
    let mut held = Vec::new();
    while held.len() < ATTACK_STREAMS {
        match tokio::time::timeout(Duration::from_secs(5), attacker.open_stream(seed_id)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    for (request_id, stream) in (0u64..).zip(held.iter_mut()) {
        // Sixteen groups (256 KiB) a request, as the engine asks, spread over the blob.
        let first = (request_id * 16) % group_count.saturating_sub(16).max(1);
        let request = Message::Request(RangeRequest {
            request_id,
            blob,
            groups: ChunkGroupRanges::from_range(first..first + 16),
        });
        stream.write_all(&request.encode().unwrap()).await.unwrap();
        stream.flush().await.unwrap();
    }
    eprintln!("the attacker holds {} range requests open", held.len());
    assert!(held.len() > serve::MAX_CONCURRENT_SERVES, "{}", held.len());

    let with = honest_round(blob, &data, &seed_addr).await;
    eprintln!("honest fetch seconds without the attacker: {without:.2?}");
    eprintln!("honest fetch seconds with the attacker:    {with:.2?}");

    // The attacker's unread answers lose their slots at the write deadline.
    let cut_by = Instant::now() + serve::ANSWER_WRITE_DEADLINE * 3;
    while counters.write_timeouts.load(Ordering::Relaxed) == 0 && Instant::now() < cut_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        counters.write_timeouts.load(Ordering::Relaxed) > 0,
        "no answer was cut: {counters:?}"
    );
    eprintln!("{counters:?}");
    drop(held);
    attacker.shutdown().await;
}
