//! Fetching by name from real libp2p QUIC nodes on loopback: an honest depot, a depot offering
//! endless data (claimed, and hidden behind a false size), and a peer that trickles (slow
//! retrieval). Every fetch must end within its byte and time bounds, with an error that says
//! which bound, and leave nothing half-fetched in the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::Multiaddr;
use node::named::{NamedFetch, NamedFetchError, fetch_named};
use node::net::{self, NetHandle};
use node::protocol;
use node::serve::{self, ServeCounters};
use proto::wire::{Message, Named, RangeResponse};

mod common;
use common::{Store, new_store, start_node};

const NAME: &str = "image/metadata/timestamp.json";

/// An honest depot serving `data` under [`NAME`].
async fn honest_depot(data: &[u8]) -> (NetHandle, Multiaddr) {
    let store = Arc::new(new_store());
    let id = store.import(data).unwrap();
    store.set_name(NAME, &id).unwrap();
    let (handle, _events, incoming, addr) = start_node().await;
    serve::spawn_server(store, incoming, Arc::new(ServeCounters::default()));
    (handle, addr)
}

/// How a misbehaving peer answers.
#[derive(Clone, Copy)]
enum Lie {
    /// Names the blob with a size far below its real one, then serves it honestly.
    SmallSize,
    /// Names the blob honestly, then announces the response and sends a byte every 200 ms.
    Trickle,
}

fn spawn_liar(store: Arc<Store>, id: proto::BlobId, lie: Lie, mut incoming: net::IncomingStreams) {
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let store = store.clone();
            tokio::spawn(async move {
                let Ok(message) = protocol::read_message(&mut stream).await else {
                    return;
                };
                let size = store.info(&id).unwrap().size;
                match (message, lie) {
                    (Message::NameQuery(query), _) => {
                        let claimed = match lie {
                            Lie::SmallSize => 1000,
                            Lie::Trickle => size,
                        };
                        let named = Message::Named(Named {
                            name: query.name,
                            blob: id,
                            size: claimed,
                        });
                        let _ = stream.write_all(&named.encode().unwrap()).await;
                        let _ = stream.close().await;
                    }
                    (Message::Request(request), Lie::Trickle) => {
                        let mut body = Vec::new();
                        let (served, _) = store.serve(&id, &request.groups, &mut body).unwrap();
                        let announce = Message::Response(RangeResponse {
                            request_id: request.request_id,
                            groups: served,
                        });
                        let _ = stream.write_all(&announce.encode().unwrap()).await;
                        for byte in body {
                            if stream.write_all(&[byte]).await.is_err() {
                                return;
                            }
                            let _ = stream.flush().await;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    (question, Lie::SmallSize) => {
                        let _ = protocol::answer(&store, stream, question).await;
                    }
                    _ => {}
                }
            });
        }
    });
}

async fn liar(data: &[u8], lie: Lie) -> (NetHandle, Multiaddr) {
    let store = Arc::new(new_store());
    let id = store.import(data).unwrap();
    let (handle, _events, incoming, addr) = start_node().await;
    spawn_liar(store, id, lie, incoming);
    (handle, addr)
}

fn request(peers: Vec<Multiaddr>, max_bytes: u64, timeout: Duration) -> NamedFetch {
    NamedFetch {
        name: NAME.into(),
        peers,
        ask: node::named::Ask::ListedThenConnected,
        max_bytes,
        timeout,
    }
}

fn timestamp_like() -> Vec<u8> {
    br#"{"signed":{"_type":"timestamp","version":7}}"#.repeat(40)
}

#[tokio::test]
async fn honest_depot_gives_the_named_blob_and_leaves_no_copy() {
    let data = timestamp_like();
    let (_depot, addr) = honest_depot(&data).await;
    let (vehicle, _events, _incoming, _) = start_node().await;
    let store = Arc::new(new_store());
    let (named, bytes) = fetch_named(
        &vehicle,
        store.clone(),
        &request(vec![addr], 16_384, Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(bytes, data);
    assert_eq!(named.blob, proto::BlobId::of(&data));
    assert!(store.list().is_empty(), "metadata blobs are not kept");

    // A name nobody serves is NotFound, and says who was asked.
    let mut missing = request(vec![], 16_384, Duration::from_secs(10));
    missing.name = "image/metadata/9.snapshot.json".into();
    let error = fetch_named(&vehicle, store, &missing).await.unwrap_err();
    assert!(
        matches!(error, NamedFetchError::Unavailable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("nothing is named"), "{error}");
}

#[tokio::test]
async fn endless_data_is_refused_by_length() {
    // A "timestamp" of 1 MiB against a limit of 16 KiB: refused on the peer's own claim,
    // before any of it moves.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let (_depot, addr) = honest_depot(&big).await;
    let (vehicle, _events, _incoming, _) = start_node().await;
    let store = Arc::new(new_store());
    let started = Instant::now();
    let error = fetch_named(
        &vehicle,
        store.clone(),
        &request(vec![addr], 16_384, Duration::from_secs(10)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            error,
            NamedFetchError::TooLong {
                size: 1_048_576,
                limit: 16_384,
                ..
            }
        ),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The same blob named with a false small size: the first verified group refutes the claim
    // (the BLAKE3 root commits to the length), and nothing is left in the store. (A vehicle
    // still connected to the honest depot would ask it too, so this is a fresh one.)
    let (_liar, addr) = liar(&big, Lie::SmallSize).await;
    let (vehicle, _events, _incoming, _) = start_node().await;
    let error = fetch_named(
        &vehicle,
        store.clone(),
        &request(vec![addr], 16_384, Duration::from_secs(10)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, NamedFetchError::Unavailable { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("claims 1048576 bytes"),
        "{error}"
    );
    assert!(store.list().is_empty(), "{:?}", store.list());
}

#[tokio::test]
async fn slow_retrieval_is_bounded_by_time_and_the_next_peer_still_helps() {
    let data = timestamp_like();
    let (_slow, slow_addr) = liar(&data, Lie::Trickle).await;
    let (vehicle, _events, _incoming, _) = start_node().await;
    let store = Arc::new(new_store());

    // Only the trickling peer: the fetch ends at its time bound, not at the peer's pace
    // (1.8 KB at a byte per 200 ms would take six minutes).
    let started = Instant::now();
    let error = fetch_named(
        &vehicle,
        store.clone(),
        &request(vec![slow_addr.clone()], 16_384, Duration::from_secs(3)),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, NamedFetchError::TimedOut { .. }), "{error}");
    assert!(error.to_string().contains("slow retrieval"), "{error}");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(store.list().is_empty(), "{:?}", store.list());

    // The trickler first and an honest depot second: the trickler gets half the time, the
    // depot delivers.
    let (_depot, depot_addr) = honest_depot(&data).await;
    let (_, bytes) = fetch_named(
        &vehicle,
        store.clone(),
        &request(vec![slow_addr, depot_addr], 16_384, Duration::from_secs(6)),
    )
    .await
    .unwrap();
    assert_eq!(bytes, data);
    assert!(store.list().is_empty(), "{:?}", store.list());
}

/// A depot refreshing from its upstream asks the upstream only ([`node::named::Ask::ListedOnly`]):
/// when the upstream has no such name, the depot's other connected peers (its vehicles) are
/// not asked one by one. A vehicle asks its connected neighbours after its depot.
#[tokio::test]
async fn listed_only_asks_no_connected_peer() {
    let data = timestamp_like();
    // The upstream serves nothing under the name; a connected neighbour does.
    let (_upstream, _upstream_events, upstream_incoming, upstream_addr) = start_node().await;
    serve::spawn_server(
        Arc::new(new_store()),
        upstream_incoming,
        Arc::new(ServeCounters::default()),
    );
    let (neighbour, neighbour_addr) = honest_depot(&data).await;
    let (fetcher, _events, _incoming, _) = start_node().await;
    fetcher.dial(neighbour_addr).await.unwrap();
    let store = Arc::new(new_store());
    let mut wanted = request(vec![upstream_addr], 16_384, Duration::from_secs(10));
    wanted.name = "image/metadata/2.root.json".into();
    let mut depot = wanted.clone();
    depot.ask = node::named::Ask::ListedOnly;
    let error = fetch_named(&fetcher, store.clone(), &depot)
        .await
        .unwrap_err();
    let NamedFetchError::Unavailable {
        not_served, tried, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(*not_served, 1, "{error}");
    assert!(
        !tried.contains(&neighbour.peer_id().to_string()),
        "the neighbour was asked: {error}"
    );
    // The same question as a vehicle asks it: the neighbour is asked too (and has no such
    // name either).
    let error = fetch_named(&fetcher, store.clone(), &wanted)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains(&neighbour.peer_id().to_string()),
        "{error}"
    );
    // A name only the neighbour serves: found as a vehicle, not as a depot (the upstream is
    // connected now; it has no such name).
    let mut ours = request(vec![], 16_384, Duration::from_secs(10));
    ours.name = NAME.into();
    let (_, bytes) = fetch_named(&fetcher, store.clone(), &ours).await.unwrap();
    assert_eq!(bytes, data);
    ours.ask = node::named::Ask::ListedOnly;
    assert!(fetch_named(&fetcher, store, &ours).await.is_err());
}
