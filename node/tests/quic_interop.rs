//! This crate's QUIC transport against libp2p's own (`libp2p::quic`), over real sockets on
//! loopback: either side dials, streams carry bytes both ways, and a dial that names the wrong
//! peer fails. A node of this crate must stay reachable from any standard libp2p QUIC peer.

// clippy.toml allows unwrap in `#[test]` functions only; in the helpers below a failed unwrap is
// just as much a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder};
use node::net::{self, NetConfig};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);
const LEN: usize = 4 * 1024 * 1024;

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

fn protocol() -> StreamProtocol {
    StreamProtocol::new(proto::wire::PROTOCOL_ID)
}

fn payload() -> Vec<u8> {
    (0..LEN).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

/// A stock libp2p node: libp2p's QUIC transport and libp2p-stream, nothing of this crate.
struct StockNode {
    peer: PeerId,
    addr: Multiaddr,
    control: libp2p_stream::Control,
    incoming: libp2p_stream::IncomingStreams,
}

/// Starts a stock node listening on loopback; `dial` is dialled before its swarm starts running.
async fn stock_node(dial: Option<Multiaddr>) -> StockNode {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|config| config.with_idle_connection_timeout(WAIT))
        .build();
    swarm.listen_on(loopback()).unwrap();
    let addr = timeout(WAIT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                return address;
            }
        }
    })
    .await
    .unwrap();
    if let Some(dial) = dial {
        swarm.dial(dial).unwrap();
    }
    let peer = *swarm.local_peer_id();
    let mut control = swarm.behaviour().new_control();
    let incoming = control.accept(protocol()).unwrap();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    StockNode {
        peer,
        addr,
        control,
        incoming,
    }
}

/// Reads a stream to its end and sends the bytes back.
async fn echo(mut stream: libp2p::Stream) {
    let mut received = Vec::new();
    stream.read_to_end(&mut received).await.unwrap();
    stream.write_all(&received).await.unwrap();
    stream.close().await.unwrap();
}

/// Sends the payload, closes the write half and checks the echo.
async fn round_trip(mut stream: libp2p::Stream) {
    let sent = payload();
    stream.write_all(&sent).await.unwrap();
    stream.close().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert!(back == sent, "the echo differs from what was sent");
}

fn ours_config() -> NetConfig {
    NetConfig {
        listen: vec![loopback()],
        mdns: false,
        ..NetConfig::default()
    }
}

#[tokio::test]
async fn our_node_dials_a_stock_libp2p_node_and_streams_both_ways() {
    let mut stock = stock_node(None).await;
    let (ours, _events, _incoming) = net::start(ours_config()).await.unwrap();
    let echoing = tokio::spawn(async move {
        let (from, stream) = stock.incoming.next().await.unwrap();
        echo(stream).await;
        from
    });
    let addr = stock.addr.clone().with(Protocol::P2p(stock.peer));
    let dialled = timeout(WAIT, ours.dial(addr)).await.unwrap().unwrap();
    assert_eq!(dialled, stock.peer);
    let stream = ours.open_stream(stock.peer).await.unwrap();
    timeout(WAIT, round_trip(stream)).await.unwrap();
    let from = timeout(WAIT, echoing).await.unwrap().unwrap();
    assert_eq!(from, ours.peer_id());
    ours.shutdown().await;
}

#[tokio::test]
async fn a_stock_libp2p_node_dials_ours_and_streams_both_ways() {
    let (ours, _events, mut incoming) = net::start(ours_config()).await.unwrap();
    let our_addr = timeout(WAIT, ours.listen_addrs())
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let mut stock = stock_node(Some(our_addr)).await;
    let echoing = tokio::spawn(async move {
        let (from, stream) = incoming.next().await.unwrap();
        echo(stream).await;
        from
    });
    let stream = timeout(WAIT, async {
        // The dial was started before the stock swarm ran: retry until it connected.
        loop {
            match stock.control.open_stream(ours.peer_id(), protocol()).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .unwrap();
    timeout(WAIT, round_trip(stream)).await.unwrap();
    let from = timeout(WAIT, echoing).await.unwrap().unwrap();
    assert_eq!(from, stock.peer);
    ours.shutdown().await;
}

#[tokio::test]
async fn a_dial_that_names_another_peer_fails_and_names_both() {
    let stock = stock_node(None).await;
    let (ours, _events, _incoming) = net::start(ours_config()).await.unwrap();
    let impostor = Keypair::generate_ed25519().public().to_peer_id();
    let addr = stock.addr.clone().with(Protocol::P2p(impostor));
    let error = timeout(WAIT, ours.dial(addr))
        .await
        .unwrap()
        .expect_err("the dial reached another peer than it named");
    let text = error.to_string();
    assert!(
        text.contains(&stock.peer.to_string()) || text.contains(&impostor.to_string()),
        "{text}"
    );
    assert!(!ours.is_connected(stock.peer).await.unwrap());
    ours.shutdown().await;
}
