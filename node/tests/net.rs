//! The libp2p transport over real QUIC sockets.
//!
//! Every node here listens on 127.0.0.1 with mDNS off: libp2p-mdns skips loopback addresses and
//! would multicast on the machine's real network interfaces, which a test must never do. The mDNS
//! test instead runs in a private network namespace it makes itself (see
//! `mdns_discovery_in_private_network_namespace`). Every wait is bounded by a timeout.

// clippy.toml allows unwrap in `#[test]` functions only; in the helpers below a failed unwrap is
// just as much a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, UdpSocket},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};
use node::net::{
    self, IncomingStreams, NetConfig, NetError, NetEvent, NetEvents, NetHandle, Stream,
};
use tokio::time::timeout;

const MIB: usize = 1024 * 1024;
/// Generous for loopback; only a hang or a lost event ever gets near it.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// Bound on moving a few MiB over loopback in a debug build.
const TRANSFER_WAIT: Duration = Duration::from_secs(30);

fn loopback() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()
}

fn loopback_config(agent: &str) -> NetConfig {
    NetConfig {
        listen: vec![loopback()],
        mdns: false,
        agent_version: agent.to_owned(),
        ..NetConfig::default()
    }
}

/// A started node and what it reports.
struct TestNode {
    handle: NetHandle,
    events: EventLog,
    incoming: IncomingStreams,
}

impl TestNode {
    async fn start(config: NetConfig) -> Self {
        let (handle, events, incoming) = net::start(config).await.unwrap();
        Self {
            handle,
            events: EventLog {
                receiver: events,
                seen: Vec::new(),
            },
            incoming,
        }
    }

    async fn address(&self) -> Multiaddr {
        let addrs = timeout(EVENT_WAIT, self.handle.listen_addrs())
            .await
            .expect("listen address within the bound");
        addrs.into_iter().next().expect("one listen address")
    }

    async fn accept(&mut self) -> (PeerId, Stream) {
        timeout(EVENT_WAIT, self.incoming.next())
            .await
            .expect("an inbound stream within the bound")
            .expect("node still running")
    }
}

/// Events received so far, so that a test can wait for an event that may have arrived before
/// another one it waited for first.
struct EventLog {
    receiver: NetEvents,
    seen: Vec<NetEvent>,
}

impl EventLog {
    async fn expect(&mut self, what: &str, matches: impl Fn(&NetEvent) -> bool) -> NetEvent {
        if let Some(found) = self.seen.iter().find(|event| matches(event)) {
            return found.clone();
        }
        let waiting = async {
            loop {
                let event = self
                    .receiver
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("event channel closed while waiting for {what}"));
                self.seen.push(event.clone());
                if matches(&event) {
                    return event;
                }
            }
        };
        match timeout(EVENT_WAIT, waiting).await {
            Ok(event) => event,
            Err(_) => panic!("no {what} within {EVENT_WAIT:?}; saw {:?}", self.seen),
        }
    }

    async fn connected(&mut self, peer: PeerId) -> NetEvent {
        self.expect(
            &format!("PeerConnected({peer})"),
            |event| matches!(event, NetEvent::PeerConnected { peer: p, .. } if *p == peer),
        )
        .await
    }

    async fn disconnected(&mut self, peer: PeerId) -> NetEvent {
        self.expect(
            &format!("PeerDisconnected({peer})"),
            |event| matches!(event, NetEvent::PeerDisconnected { peer: p, .. } if *p == peer),
        )
        .await
    }
}

/// The byte at `offset` of the test pattern: a hash of the offset, so that a lost, repeated or
/// reordered block shows as a mismatch at a known offset.
fn pattern_byte(offset: u64) -> u8 {
    let mut x = offset ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x.to_le_bytes()[0]
}

/// Writes `len` pattern bytes starting at pattern offset `start`.
async fn write_pattern(stream: &mut Stream, start: u64, len: usize) -> std::io::Result<()> {
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut offset = start;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(buffer.len());
        for (index, byte) in buffer[..chunk].iter_mut().enumerate() {
            *byte = pattern_byte(offset + u64::try_from(index).unwrap());
        }
        stream.write_all(&buffer[..chunk]).await?;
        offset += u64::try_from(chunk).unwrap();
        left -= chunk;
    }
    stream.flush().await
}

/// Reads exactly `len` bytes and checks them against the pattern from offset `start`.
async fn read_pattern(stream: &mut Stream, start: u64, len: usize) {
    let mut buffer = vec![0_u8; 64 * 1024];
    let mut offset = start;
    let mut left = len;
    while left > 0 {
        let want = left.min(buffer.len());
        let got = stream.read(&mut buffer[..want]).await.unwrap();
        assert!(got > 0, "end of stream with {left} bytes still expected");
        for (index, byte) in buffer[..got].iter().enumerate() {
            let at = offset + u64::try_from(index).unwrap();
            assert_eq!(*byte, pattern_byte(at), "wrong byte at offset {at}");
        }
        offset += u64::try_from(got).unwrap();
        left -= got;
    }
}

async fn expect_end_of_stream(stream: &mut Stream) {
    let mut byte = [0_u8; 1];
    let got = stream.read(&mut byte).await.unwrap();
    assert_eq!(got, 0, "expected end of stream, got more data");
}

#[tokio::test]
async fn two_nodes_move_8_mib_over_one_stream() {
    let mut a = TestNode::start(loopback_config("depotmesh-test-a/1")).await;
    let mut b = TestNode::start(loopback_config("depotmesh-test-b/1")).await;
    let a_id = a.handle.peer_id();
    let b_id = b.handle.peer_id();

    let a_addr = a.address().await;
    println!("A listens on {a_addr}");
    assert_eq!(a_addr.iter().last(), Some(Protocol::P2p(a_id)));
    assert!(a_addr.to_string().starts_with("/ip4/127.0.0.1/udp/"));

    let dialled = timeout(EVENT_WAIT, b.handle.dial(a_addr.clone()))
        .await
        .expect("dial within the bound")
        .unwrap();
    assert_eq!(dialled, a_id);
    // A second dial of a connected peer returns at once with the same peer.
    assert_eq!(b.handle.dial(a_addr).await.unwrap(), a_id);

    b.events.connected(a_id).await;
    a.events.connected(b_id).await;
    assert_eq!(b.handle.connected_peers().await, vec![a_id]);
    assert!(a.handle.is_connected(b_id).await.unwrap());

    const LEN: usize = 8 * MIB;
    let mut outbound = b.handle.open_stream(a_id).await.unwrap();
    let writer = tokio::spawn(async move {
        write_pattern(&mut outbound, 0, LEN).await?;
        outbound.close().await
    });
    let (from, mut inbound) = a.accept().await;
    assert_eq!(from, b_id);
    timeout(TRANSFER_WAIT, async {
        read_pattern(&mut inbound, 0, LEN).await;
        expect_end_of_stream(&mut inbound).await;
    })
    .await
    .expect("8 MiB within the bound");
    timeout(EVENT_WAIT, writer)
        .await
        .expect("writer finishes")
        .unwrap()
        .unwrap();

    let identified = b
        .events
        .expect(
            "Identified(A)",
            |event| matches!(event, NetEvent::Identified { peer, .. } if *peer == a_id),
        )
        .await;
    let NetEvent::Identified {
        agent,
        listen_addrs,
        ..
    } = identified
    else {
        unreachable!("matched above")
    };
    assert_eq!(agent, "depotmesh-test-a/1");
    assert!(!listen_addrs.is_empty());
    let identified_b = a
        .events
        .expect(
            "Identified(B)",
            |event| matches!(event, NetEvent::Identified { peer, .. } if *peer == b_id),
        )
        .await;
    assert!(
        matches!(identified_b, NetEvent::Identified { ref agent, .. } if agent == "depotmesh-test-b/1")
    );

    // Both ends counted the one connection and the bytes that crossed it, headers included.
    let sent = b.handle.transport_stats();
    let received = a.handle.transport_stats();
    assert_eq!((sent.connections, received.connections), (1, 1));
    assert!(sent.udp_tx_bytes > LEN as u64, "{sent:?}");
    assert!(received.udp_rx_bytes > LEN as u64, "{received:?}");
    assert!(sent.sent_packets >= sent.udp_tx_datagrams, "{sent:?}");
    assert!(sent.stream_frames_sent > 0 && received.ack_frames_sent > 0);
    // The figures outlive the node: its closed connections keep what they counted.
    let counters = b.handle.transport_counters();
    a.handle.shutdown().await;
    b.handle.shutdown().await;
    let after = counters.read();
    assert_eq!(after.connections, 1);
    assert!(after.udp_tx_bytes >= sent.udp_tx_bytes, "{after:?}");
}

#[tokio::test]
async fn concurrent_streams_to_two_peers_and_a_peer_that_leaves_mid_stream() {
    let a = TestNode::start(loopback_config("depotmesh-test-a/1")).await;
    let mut b = TestNode::start(loopback_config("depotmesh-test-b/1")).await;
    let mut c = TestNode::start(loopback_config("depotmesh-test-c/1")).await;
    let a_id = a.handle.peer_id();
    let (b_id, c_id) = (b.handle.peer_id(), c.handle.peer_id());

    let (b_addr, c_addr) = (b.address().await, c.address().await);
    let (to_b, to_c) = tokio::join!(a.handle.dial(b_addr), a.handle.dial(c_addr));
    assert_eq!((to_b.unwrap(), to_c.unwrap()), (b_id, c_id));

    // Two streams opened and written at the same time, one to each peer. The stream to B runs to
    // completion; the one to C stops half-way and A then shuts down under it.
    const FULL: usize = 4 * MIB;
    const HALF: usize = 2 * MIB;
    let (stream_b, stream_c) = tokio::join!(a.handle.open_stream(b_id), a.handle.open_stream(c_id));
    let (mut stream_b, mut stream_c) = (stream_b.unwrap(), stream_c.unwrap());
    let writer_b = tokio::spawn(async move {
        write_pattern(&mut stream_b, 0, FULL).await?;
        stream_b.close().await
    });
    let (release_c, released_c) = tokio::sync::oneshot::channel::<()>();
    let writer_c = tokio::spawn(async move {
        write_pattern(&mut stream_c, 0, HALF).await?;
        // Keep the stream open, unfinished, until the test has shut A down.
        let _ = released_c.await;
        drop(stream_c);
        std::io::Result::Ok(())
    });

    let ((from_b, mut inbound_b), (from_c, mut inbound_c)) = tokio::join!(b.accept(), c.accept());
    assert_eq!((from_b, from_c), (a_id, a_id));
    timeout(
        TRANSFER_WAIT,
        futures::future::join(
            async {
                read_pattern(&mut inbound_b, 0, FULL).await;
                expect_end_of_stream(&mut inbound_b).await;
            },
            read_pattern(&mut inbound_c, 0, HALF),
        ),
    )
    .await
    .expect("both streams within the bound");
    writer_b.await.unwrap().unwrap();

    // A leaves while C still expects the rest of its stream.
    let started = Instant::now();
    a.handle.shutdown().await;
    let mut rest = vec![0_u8; 64 * 1024];
    let outcome = timeout(EVENT_WAIT, inbound_c.read(&mut rest))
        .await
        .expect("the reader is told the writer is gone instead of hanging");
    match &outcome {
        Ok(0) => println!("C's read after A left: end of stream"),
        Ok(n) => panic!("C read {n} more bytes from a peer that had stopped writing"),
        Err(error) => println!("C's read after A left: error {error}"),
    }
    c.events.disconnected(a_id).await;
    b.events.disconnected(a_id).await;
    println!(
        "C saw the end of the stream and PeerDisconnected(A) {:?} after A's shutdown began",
        started.elapsed()
    );
    let _ = release_c.send(());
    writer_c.await.unwrap().unwrap();

    // A's peers cannot reach it any more, and A's handle refuses work.
    assert!(matches!(
        b.handle.open_stream(a_id).await,
        Err(NetError::PeerNotConnected { peer }) if peer == a_id
    ));
    assert!(matches!(
        a.handle.open_stream(b_id).await,
        Err(NetError::Shutdown)
    ));
    assert!(a.handle.connected_peers().await.is_empty());

    b.handle.shutdown().await;
    c.handle.shutdown().await;
}

/// Clients that each dial `server` and open `streams` streams at once, all writing an 8-byte
/// question and closing their side; what each stream then read (its answer) or the error
/// (`TimedOut` if nothing came within `wait`).
async fn burst(
    server: &Multiaddr,
    clients: usize,
    streams: usize,
    wait: Duration,
) -> (Vec<TestNode>, Vec<std::io::Result<Vec<u8>>>) {
    let mut nodes = Vec::new();
    for i in 0..clients {
        let node = TestNode::start(loopback_config(&format!("depotmesh-test-burst-{i}/1"))).await;
        node.handle.dial(server.clone()).await.unwrap();
        nodes.push(node);
    }
    let server_id = match server.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => panic!("{server} names no peer"),
    };
    let asks = nodes.iter().flat_map(|node| {
        (0..streams as u64).map(move |i| async move {
            let ask = async {
                let mut stream = node
                    .handle
                    .open_stream(server_id)
                    .await
                    .map_err(std::io::Error::other)?;
                stream.write_all(&i.to_le_bytes()).await?;
                stream.close().await?;
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await?;
                Ok(answer)
            };
            timeout(wait, ask)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        })
    });
    let answers = futures::future::join_all(asks).await;
    (nodes, answers)
}

/// A depot's yard asks at once: 6 peers open 24 streams each in the same instant, on this
/// one-thread runtime as the node commands run. Each must reach the server and be answered.
/// libp2p-stream handed inbound streams over a channel of one slot and reset those that found
/// it full: on the 30-vehicle testbed 3,377 streams a run were lost so.
#[tokio::test]
async fn a_burst_of_streams_from_many_peers_is_answered_whole() {
    let mut server = TestNode::start(loopback_config("depotmesh-test-server/1")).await;
    let addr = server.address().await;
    let answering = tokio::spawn(async move {
        while let Some((_, mut stream)) = server.incoming.next().await {
            tokio::spawn(async move {
                let mut question = Vec::new();
                stream.read_to_end(&mut question).await?;
                stream.write_all(&question).await?;
                stream.close().await
            });
        }
    });
    let (clients, answers) = burst(&addr, 6, 24, TRANSFER_WAIT).await;
    let mut failed = 0;
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(bytes) => assert_eq!(bytes[..], ((i % 24) as u64).to_le_bytes()),
            Err(error) => {
                failed += 1;
                println!("stream {i}: {error}");
            }
        }
    }
    assert_eq!(failed, 0, "of {} streams", answers.len());
    for client in clients {
        client.handle.shutdown().await;
    }
    answering.abort();
}

/// A node that takes no streams: its queues fill, and what does not fit is reset at once, so
/// the opener hears of it instead of waiting; the node counts each one.
#[tokio::test]
async fn streams_beyond_the_queue_are_reset_and_counted() {
    let server = TestNode::start(loopback_config("depotmesh-test-server/1")).await;
    let addr = server.address().await;
    // 600 streams: more than the two queues in the node hold (256 each, and one in hand), fewer
    // than 128 per connection (the swarm's own bound on streams being negotiated). The queued
    // ones are never answered: their clients give up reading after the wait.
    let (clients, answers) = burst(&addr, 5, 120, Duration::from_secs(5)).await;
    let reset = answers
        .iter()
        .filter(|answer| {
            answer
                .as_ref()
                .is_err_and(|error| error.kind() != std::io::ErrorKind::TimedOut)
        })
        .count();
    let mut kinds = std::collections::BTreeMap::new();
    for answer in &answers {
        let kind = match answer {
            Ok(_) => "answered".to_owned(),
            Err(error) => format!("{:?}: {error}", error.kind()),
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    println!("{kinds:#?}");
    let dropped = server.handle.transport_stats().streams_dropped;
    assert!(dropped > 0, "600 streams fit a node that reads none");
    assert_eq!(reset as u64, dropped);
    for client in clients {
        client.handle.shutdown().await;
    }
}

#[tokio::test]
async fn dial_and_listen_errors_are_clear_and_bounded() {
    let a = TestNode::start(loopback_config("depotmesh-test-a/1")).await;

    // Nothing listens on this UDP port once the probe socket is closed.
    let port = {
        let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        probe.local_addr().unwrap().port()
    };
    let nobody = Keypair::generate_ed25519().public().to_peer_id();
    let unreachable: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{nobody}")
        .parse()
        .unwrap();
    let started = Instant::now();
    let error = timeout(Duration::from_secs(15), a.handle.dial(unreachable.clone()))
        .await
        .expect("dial of an unreachable address must end by itself")
        .unwrap_err();
    println!(
        "unreachable dial failed after {:?}: {error}",
        started.elapsed()
    );
    match &error {
        NetError::Dial { addr, .. } | NetError::DialTimeout { addr, .. } => {
            assert_eq!(*addr, unreachable);
        }
        other => panic!("expected a dial error, got {other:?}"),
    }
    assert!(error.to_string().contains(&port.to_string()), "{error}");

    // The right address with the wrong peer id: the handshake must refuse the impostor.
    let b = TestNode::start(loopback_config("depotmesh-test-b/1")).await;
    let b_addr = b.address().await;
    let mut wrong_peer = b_addr.clone();
    wrong_peer.pop();
    let wrong_peer = wrong_peer.with(Protocol::P2p(nobody));
    let error = timeout(EVENT_WAIT, a.handle.dial(wrong_peer))
        .await
        .expect("bounded")
        .unwrap_err();
    println!("dial with the wrong peer id: {error}");
    assert!(matches!(error, NetError::Dial { .. }), "{error:?}");
    assert!(error.to_string().contains(&nobody.to_string()), "{error}");

    // Malformed and non-QUIC addresses are refused before any packet is sent.
    let malformed = "/ip4/127.0.0.1/udp/not-a-port/quic-v1";
    let error = net::parse_multiaddr(malformed).unwrap_err();
    println!("malformed multiaddr: {error}");
    assert!(matches!(error, NetError::InvalidMultiaddr { ref input, .. } if input == malformed));
    assert!(error.to_string().contains(malformed), "{error}");
    let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
    assert!(matches!(
        a.handle.dial(tcp.clone()).await,
        Err(NetError::UnsupportedAddress { addr }) if addr == tcp
    ));

    // A stream to a peer we are not connected to is refused, not dialled.
    assert!(matches!(
        a.handle.open_stream(nobody).await,
        Err(NetError::PeerNotConnected { peer }) if peer == nobody
    ));

    // Listening on an address this machine does not have fails at start, naming it.
    let foreign: Multiaddr = "/ip4/192.0.2.55/udp/0/quic-v1".parse().unwrap();
    let error = net::start(NetConfig {
        listen: vec![foreign.clone()],
        mdns: false,
        ..NetConfig::default()
    })
    .await
    .unwrap_err();
    println!("listen on a foreign address: {error}");
    assert!(matches!(error, NetError::Listen { ref addr, .. } if *addr == foreign));

    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

/// Marks the copy of this test binary that runs inside the private network namespace.
const NETNS_CHILD: &str = "DEPOTMESH_MDNS_NETNS_CHILD";
/// The address the namespace's only LAN interface gets; it exists only inside the namespace.
const NETNS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The whole test, namespace set-up included, must end within this.
const MDNS_CAP: Duration = Duration::from_secs(10);

/// Makes a LAN inside a fresh network namespace (a veth pair, or loopback with multicast on when
/// veth is unavailable), routes multicast onto it, then runs the given command there.
const NETNS_SETUP: &str = r#"
set -e
ip link set lo up
if ip link add mesh0 type veth peer name mesh1 2>/dev/null; then
  ip addr add 10.213.0.1/24 dev mesh0
  ip link set mesh1 up
  ip link set mesh0 up
  ip route add 224.0.0.0/4 dev mesh0
else
  ip link set lo multicast on
  ip addr add 10.213.0.1/32 dev lo
  ip route add 224.0.0.0/4 dev lo
fi
echo NETNS_READY
exec "$@"
"#;

/// Writes past the test harness's output capture, so that "not tested" is seen even when the
/// test passes.
fn report(line: &str) {
    let mut stderr = std::io::stderr();
    let _ = writeln!(stderr, "{line}");
}

/// mDNS discovery between two nodes.
///
/// libp2p-mdns ignores loopback addresses, so on the host it would multicast on the real LAN
/// interfaces. This test therefore re-runs itself inside a private network namespace that it
/// creates (`unshare --net`, or `--user --map-root-user --net` when not root), where the only LAN
/// is a veth pair that leads nowhere. If no namespace can be made, or multicast does not work in
/// it, the test says so loudly and checks nothing; it never runs mDNS on the host's network.
#[test]
fn mdns_discovery_in_private_network_namespace() {
    if std::env::var_os(NETNS_CHILD).is_some() {
        mdns_child();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let deadline = Instant::now() + MDNS_CAP;
    let mut reasons = Vec::new();
    for unshare_flags in [&["--net"][..], &["--user", "--map-root-user", "--net"][..]] {
        let mut command = Command::new("unshare");
        command
            .args(unshare_flags)
            .args(["--", "sh", "-c", NETNS_SETUP, "netns-setup"])
            .arg(&exe)
            .args([
                "mdns_discovery_in_private_network_namespace",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(NETNS_CHILD, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let outcome = match run_bounded(command, deadline) {
            Ok(outcome) => outcome,
            Err(error) => {
                reasons.push(format!("unshare {unshare_flags:?}: {error}"));
                continue;
            }
        };
        if !outcome.stdout.contains("NETNS_READY") {
            reasons.push(format!(
                "unshare {unshare_flags:?}: {}",
                outcome.stderr.trim()
            ));
            continue;
        }
        println!("{}\n{}", outcome.stdout, outcome.stderr);
        assert!(
            !outcome.timed_out,
            "mDNS test did not finish within {MDNS_CAP:?}"
        );
        assert!(outcome.success, "mDNS test failed in the namespace");
        // The harness may print "test … " on the same line before the verdict.
        if let Some(verdict) = outcome
            .stdout
            .lines()
            .find_map(|line| line.find("MDNS_").map(|start| &line[start..]))
        {
            report(&format!("mdns_discovery: {verdict}"));
        }
        return;
    }
    report(&format!(
        "mdns_discovery: MDNS_NOT_TESTED: no private network namespace could be made here ({})",
        reasons.join("; ")
    ));
}

struct ChildOutcome {
    stdout: String,
    stderr: String,
    success: bool,
    timed_out: bool,
}

/// Runs `command`, killing it at `deadline`. Pipes are drained on threads so that a chatty child
/// cannot block on a full pipe.
fn run_bounded(mut command: Command, deadline: Instant) -> std::io::Result<ChildOutcome> {
    let mut child = command.spawn()?;
    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(ChildOutcome {
        stdout: stdout_reader.join().unwrap_or_default(),
        stderr: stderr_reader.join().unwrap_or_default(),
        success: status.success(),
        timed_out,
    })
}

/// Inside the namespace: check that multicast works at all, then that two nodes find each other.
fn mdns_child() {
    if let Err(why) = multicast_works() {
        println!("MDNS_NOT_TESTED: multicast does not work in the private namespace: {why}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = |agent: &str| NetConfig {
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(NETNS_ADDR))
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
            ],
            mdns: true,
            mdns_auto_dial: true,
            agent_version: agent.to_owned(),
            ..NetConfig::default()
        };
        let started = Instant::now();
        let mut a = TestNode::start(config("depotmesh-test-a/1")).await;
        let mut b = TestNode::start(config("depotmesh-test-b/1")).await;
        let (a_id, b_id) = (a.handle.peer_id(), b.handle.peer_id());
        let discovered = |peer: PeerId| {
            move |event: &NetEvent| matches!(event, NetEvent::PeerDiscovered { peer: p, .. } if *p == peer)
        };
        a.events.expect("A discovers B", discovered(b_id)).await;
        b.events.expect("B discovers A", discovered(a_id)).await;
        let found = started.elapsed();
        // Auto-dial: a connection follows discovery without anyone asking.
        a.events.connected(b_id).await;
        b.events.connected(a_id).await;
        let mut stream = a.handle.open_stream(b_id).await.unwrap();
        write_pattern(&mut stream, 0, 64 * 1024).await.unwrap();
        stream.close().await.unwrap();
        let (from, mut inbound) = b.accept().await;
        assert_eq!(from, a_id);
        read_pattern(&mut inbound, 0, 64 * 1024).await;
        println!(
            "MDNS_OK: two nodes discovered each other by mDNS in {found:?}, auto-dialled and moved a stream"
        );
        a.handle.shutdown().await;
        b.handle.shutdown().await;
    });
}

/// Sends one datagram to the mDNS group on the namespace's LAN address and waits for it to come
/// back through multicast loopback.
fn multicast_works() -> Result<(), String> {
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let receiver =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("bind receiver: {e}"))?;
    receiver
        .join_multicast_v4(&group, &NETNS_ADDR)
        .map_err(|e| format!("join {group} on {NETNS_ADDR}: {e}"))?;
    receiver
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let port = receiver.local_addr().map_err(|e| e.to_string())?.port();
    let sender = UdpSocket::bind((NETNS_ADDR, 0)).map_err(|e| format!("bind sender: {e}"))?;
    sender
        .send_to(b"depotmesh-multicast-probe", (group, port))
        .map_err(|e| format!("send to {group}:{port}: {e}"))?;
    let mut buffer = [0_u8; 64];
    let (len, _) = receiver
        .recv_from(&mut buffer)
        .map_err(|e| format!("no multicast datagram came back within 1 s: {e}"))?;
    if &buffer[..len] == b"depotmesh-multicast-probe" {
        Ok(())
    } else {
        Err("a different datagram came back".to_owned())
    }
}
