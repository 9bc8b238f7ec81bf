//! The libp2p transport: a swarm that moves bytes and reports connectivity, and decides nothing.
//!
//! # Goals
//! - One QUIC (`/quic-v1`) endpoint per node, tuned for bulk transfer on a depot yard LAN.
//! - Raw bidirectional streams of one protocol ([`NetConfig::protocol`], by default
//!   [`proto::wire::PROTOCOL_ID`]) through a stream behaviour of our own ([`streams`]), so the transfer engine writes frames
//!   and bao data straight into a QUIC stream, without a request/response layer in between.
//! - Connectivity as events ([`NetEvent`]): who connected, who left, who was discovered on the LAN
//!   by mDNS, what a peer says about itself (identify).
//!
//! # Non-goals
//! - Choosing peers, ranges, retries or bans: the sans-IO transfer engine does that from the
//!   events this module reports. The only thing done on its own is dialling peers that mDNS found
//!   (switchable with [`NetConfig::mdns_auto_dial`]), because a yard LAN has no other rendezvous.
//! - Trusting anything a peer sends: bytes read from a [`Stream`] are untrusted input for the
//!   decoders in `proto`.
//!
//! # Shape
//! [`start`] builds the swarm and moves it into its own tokio task, which `select!`s over
//! commands from [`NetHandle`]s and swarm events. The task owns the swarm; everything else talks
//! to it through channels, so no lock is held across the network. Streams are opened through
//! a `streams::Control`, which is safe to use concurrently from any task.
//!
//! # Reading and writing streams
//! A [`Stream`] implements `futures::io::{AsyncRead, AsyncWrite}` (not tokio's traits): use
//! `futures::{AsyncReadExt, AsyncWriteExt}` (`read`, `read_exact`, `write_all`, `close`). Closing
//! the write half with `close()` is what gives the reader its end of file. Code that needs tokio's
//! traits can wrap a stream with `tokio_util::compat::FuturesAsyncReadCompatExt::compat`; this
//! crate does not, to avoid a dependency for a one-line adapter.

mod driver;
mod error;
mod introduce;
mod quic;
mod stats;
mod streams;
mod tls;

use std::{
    fmt,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Once},
    task::{Context, Poll},
    time::Duration,
};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol, SwarmBuilder, allow_block_list, identify, identity::Keypair,
    mdns, multiaddr::Protocol, ping, swarm::behaviour::toggle::Toggle,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

pub use error::NetError;
/// A bidirectional byte stream to a peer (a QUIC stream). See the module docs for how to read and
/// write it.
pub use libp2p::Stream;
pub use quic::QuicError;
pub use stats::{TransportCounters, TransportStats};
pub use tls::CipherPreference;

use driver::{Behaviour, Command, Driver, Members};

use crate::membership::{Gate, MembershipCounters, MeshMembership, RevocationsInForce};

/// How many events wait for the application before newer ones are dropped (with a warning).
/// Events are reports, not commands: the swarm must not stall because nobody reads them.
const EVENT_BUFFER: usize = 1024;
/// How many inbound streams of the node's protocol wait for the driver, and then for the
/// application, before newer ones are refused ([`streams`]). A depot's yard of 30 vehicles
/// asks it up to ~100 range requests, have subscriptions and questions at once.
const INCOMING_STREAM_BUFFER: usize = 256;
/// How many commands from handles may queue for the driver.
const COMMAND_BUFFER: usize = 64;
/// Extra time a handle waits beyond the QUIC handshake timeout before it gives up on the driver:
/// the driver reports a failed dial itself, this only guards against a report that never comes.
const REPLY_MARGIN: Duration = Duration::from_secs(1);

/// QUIC transport parameters. The defaults are chosen for bulk transfer between vehicles and the
/// depot cache on a yard LAN (wired or Wi-Fi); see [`QuicTuning::default`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicTuning {
    /// Receive window of one stream in bytes: how much a sender may have in flight on a single
    /// stream before the reader consumes it.
    pub max_stream_data: u32,
    /// Receive window of one connection in bytes, across all its streams.
    pub max_connection_data: u32,
    /// A connection with no packet from the peer for this long is dead. This is how a vehicle
    /// that drives out of the yard mid-transfer is noticed.
    pub max_idle_timeout: Duration,
    /// Interval of QUIC PINGs on a quiet connection, so that a live peer is never mistaken for a
    /// dead one. Must be well below `max_idle_timeout` of both ends.
    pub keep_alive_interval: Duration,
    /// Most streams a peer may hold open to us at once.
    pub max_concurrent_streams: u32,
    /// Bytes one connection keeps in flight unacknowledged (quinn's send window).
    pub send_window: u64,
    /// The largest UDP payload path MTU discovery probes for. Discovery starts at QUIC's
    /// 1200 bytes and climbs only as far as the path carries.
    pub mtu_upper_bound: u16,
    /// Ask peers to acknowledge every this many packets (QUIC's ACK frequency extension, used
    /// where both ends support it); `None` keeps QUIC's default of every second packet.
    pub ack_every: Option<u32>,
    /// With `ack_every`: the longest a peer may hold an acknowledgement back while fewer packets
    /// came. `None` leaves the peer's own (QUIC's 25 ms). quinn caps what it asks at the
    /// larger of the path's round trip and 25 ms.
    pub ack_delay: Option<Duration>,
    /// Bytes of the connection id peers put in every packet they send us (4 to 20).
    pub connection_id_length: u8,
    /// Which cipher suite this node lists first when it dials. The dialler's list decides.
    pub ciphers: CipherPreference,
    /// How a connection decides how much it may have in flight.
    pub congestion: Congestion,
    /// The receive buffer each UDP socket asks the kernel for, in bytes (0: the system default,
    /// 208 KiB on Linux). The kernel grants at most `net.core.rmem_max`.
    pub socket_receive_buffer: u32,
}

/// The congestion controller of a node's QUIC connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Congestion {
    /// NewReno, QUIC's reference controller (RFC 9002, section 7): the window grows by one
    /// datagram per round trip and halves on a loss. The default: on the shaped 30-vehicle
    /// testbed it lost 2.3 % of packets where CUBIC lost 7–8 % (docs/measurements.md).
    #[default]
    NewReno,
    /// CUBIC (RFC 9438), quinn's default: grows faster after a loss, and on a yard whose
    /// downlinks several senders share, overflows their queues more often.
    Cubic,
}

impl Congestion {
    /// The name used on command lines and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewReno => "newreno",
            Self::Cubic => "cubic",
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Congestion {
    type Err = UnknownCongestion;

    fn from_str(text: &str) -> Result<Self, UnknownCongestion> {
        match text {
            "newreno" => Ok(Self::NewReno),
            "cubic" => Ok(Self::Cubic),
            other => Err(UnknownCongestion(other.to_owned())),
        }
    }
}

/// A congestion controller's name that is not one of [`Congestion`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a congestion controller: give newreno or cubic")]
pub struct UnknownCongestion(pub String);

impl Default for QuicTuning {
    /// Why these numbers:
    ///
    /// - Stream window 4 MiB. A stream moves at most one window per round trip, so the window
    ///   must exceed the bandwidth-delay product: yard Wi-Fi at ~300 Mbit/s with 10–30 ms round
    ///   trips is 0.4–1.1 MB, gigabit Ethernet at ~1 ms is 0.125 MB. 4 MiB is several times the
    ///   worst of these, and also covers a reader that stalls for ~30 ms at gigabit speed (an
    ///   fsync of a chunk group on eMMC) without the sender stopping.
    /// - Connection window 16 MiB: four streams to one peer at full window (the engine fetches
    ///   ranges from a peer in parallel). It is also the most unread data one peer can make us
    ///   buffer, so a gateway pulling from five neighbours holds at most 80 MiB, where libp2p's
    ///   internet-oriented defaults (10 MB per stream, 15 MB per connection) allow about as
    ///   much per connection with no throughput to show for it on a LAN. Windows are limits,
    ///   not allocations. (quinn's send window, 10 MB per connection and not settable through
    ///   libp2p, caps what one sender has in flight anyway; a larger connection window buys
    ///   nothing.) On loopback the copy benchmark (`examples/stream_copy.rs`) runs at the same
    ///   speed, within run-to-run noise, with these windows, with libp2p's and with 1 MiB ones:
    ///   it is CPU-bound there, so the choice rests on the Wi-Fi arithmetic above.
    /// - Idle timeout 10 s and keep-alive 2 s: on a LAN a live peer answers within milliseconds,
    ///   so five unanswered PINGs in a row mean the peer is gone (drove away, powered down). The
    ///   transfer engine should move its ranges to another peer after seconds, not after the 30 s
    ///   or more that internet-oriented settings take. The keep-alive costs one small packet
    ///   every 2 s per connection, nothing next to a firmware image.
    /// - 256 concurrent streams: libp2p's default; far above what the engine opens per peer.
    /// - Send window 16 MiB: the connection window of the receiving end; a larger one would
    ///   only queue bytes the receiver may not take.
    /// - Datagrams up to 9000 bytes: path MTU discovery climbs from QUIC's 1200 bytes as far as
    ///   the path carries (quinn probes safely; a probe too large for the link is simply lost).
    ///   That is 1472 on an Ethernet or Wi-Fi yard over IPv4 (quinn's default bound, 1452, leaves
    ///   20 bytes of every packet unused there) and 8972 where the yard runs jumbo frames.
    /// - ACK every 8 packets (the QUIC ACK frequency extension, when the peer supports it): a
    ///   receiver sends a quarter of the acknowledgements QUIC's default asks for. On a yard
    ///   the CPU is spent per packet (on a shaped 30-vehicle testbed most of it in the kernel),
    ///   and every acknowledgement is a packet both ends handle. The delay an acknowledgement
    ///   may wait for its 8 packets stays QUIC's 25 ms: at 100 ms the 30-vehicle testbed sent
    ///   14 % fewer ACK frames but fetched 1.8 % more duplicate payload, requests taking longer
    ///   to finish (docs/measurements.md).
    /// - Connection ids of 4 bytes (quinn's default is 8): every packet carries one, and 4
    ///   bytes tell a node's few hundred connections apart.
    /// - AES-GCM first where the CPU has AES instructions ([`CipherPreference::for_this_cpu`]).
    /// - NewReno congestion control ([`Congestion::NewReno`]): see docs/measurements.md,
    ///   "Transfer at line rate", for the yard figures beside CUBIC.
    /// - A 4 MiB socket receive buffer: a node whose CPU is busy (a gateway verifying and
    ///   writing, or the 2-core testbed running 31 nodes) does not read its socket for a few
    ///   milliseconds at times, and the default 208 KiB buffer then drops datagrams. On the
    ///   30-vehicle testbed that was 76,000–111,000 datagrams a run, of ~200,000 QUIC lost.
    fn default() -> Self {
        Self {
            max_stream_data: 4 * 1024 * 1024,
            max_connection_data: 16 * 1024 * 1024,
            max_idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
            max_concurrent_streams: 256,
            send_window: 16 * 1024 * 1024,
            mtu_upper_bound: 9000,
            ack_every: Some(8),
            ack_delay: None,
            connection_id_length: 4,
            ciphers: CipherPreference::for_this_cpu(),
            congestion: Congestion::default(),
            socket_receive_buffer: 4 * 1024 * 1024,
        }
    }
}

/// How to start a node's transport.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's identity. `None` generates a fresh ed25519 key (fine for tests; a real node
    /// keeps its key so its peer id is stable across restarts).
    pub keypair: Option<Keypair>,
    /// Addresses to listen on, each `/ip4|/ip6/…/udp/<port>/quic-v1`. Empty means dial-only.
    pub listen: Vec<Multiaddr>,
    /// Whether to discover and announce peers on the LAN by mDNS.
    pub mdns: bool,
    /// Whether peers found by mDNS are dialled at once (only when not connected already).
    pub mdns_auto_dial: bool,
    /// The protocol of the streams this node opens and accepts.
    pub protocol: StreamProtocol,
    /// How long a connection with no open stream is kept before it is closed. Independent of the
    /// QUIC idle timeout, which detects dead peers.
    pub idle_timeout: Duration,
    /// How long a dial (QUIC handshake included) may take before it counts as failed.
    pub dial_timeout: Duration,
    /// How long opening a stream on an existing connection may take (protocol negotiation).
    pub stream_open_timeout: Duration,
    /// The agent string this node reports through identify (`name/version`).
    pub agent_version: String,
    /// QUIC transport parameters.
    pub quic: QuicTuning,
    /// The fleet's mesh this node belongs to: only peers with a valid membership certificate
    /// are served or reported ([`crate::membership`]). `None` runs an open mesh, where every
    /// peer that connects is served: for tests and closed networks only.
    pub membership: Option<MeshMembership>,
}

impl Default for NetConfig {
    /// Listens on every IPv4 interface on a random UDP port (a vehicle must be reachable on the
    /// yard LAN, whose address it does not know in advance), with mDNS on and auto-dial on.
    fn default() -> Self {
        Self {
            keypair: None,
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
            ],
            mdns: true,
            mdns_auto_dial: true,
            protocol: StreamProtocol::new(proto::wire::PROTOCOL_ID),
            idle_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(5),
            stream_open_timeout: Duration::from_secs(10),
            agent_version: concat!("depotmesh-node/", env!("CARGO_PKG_VERSION")).to_owned(),
            quic: QuicTuning::default(),
            membership: None,
        }
    }
}

/// Something that happened on the network. Reports only; the receiver decides what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetEvent {
    /// The first connection to a peer was established (further parallel connections to the same
    /// peer are not reported).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// The peer's address on that connection.
        addr: Multiaddr,
    },
    /// The last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
        /// Why the last connection closed, if it was an error (idle timeout, reset).
        reason: Option<String>,
    },
    /// mDNS found a peer on the LAN.
    PeerDiscovered {
        /// The peer.
        peer: PeerId,
        /// Where it says it listens.
        addrs: Vec<Multiaddr>,
    },
    /// A connected peer told us about itself (identify).
    Identified {
        /// The peer.
        peer: PeerId,
        /// Its agent string, e.g. `depotmesh-node/0.1.0`.
        agent: String,
        /// The addresses it says it listens on (untrusted).
        listen_addrs: Vec<Multiaddr>,
    },
    /// A peer connected and was refused: it is no fleet member, or no longer one (its
    /// connections are closing; no stream of it is served).
    PeerRefused {
        /// The peer.
        peer: PeerId,
        /// Why, in words.
        reason: String,
    },
    /// This node listens on a new address (with `/p2p/<own peer id>`).
    ListenAddr(Multiaddr),
    /// An outgoing connection attempt failed.
    DialFailed {
        /// The peer that was dialled, if known.
        peer: Option<PeerId>,
        /// Why, with the underlying error chain.
        error: String,
    },
}

/// The receiving end of a node's [`NetEvent`]s. Events are dropped (with a warning) while it holds
/// `1024` unread ones; dropping the receiver is allowed and only stops the reports.
pub type NetEvents = mpsc::Receiver<NetEvent>;

/// Copies one node's [`NetEvents`] to any number of readers, for a daemon where several parts
/// follow the network (the tracker, and each prefetch's fetch). A reader that stops reading
/// loses events past 1024 unread (with a warning) and never blocks the others; a dropped one
/// is forgotten.
#[derive(Clone, Debug)]
pub struct EventHub {
    readers: std::sync::Arc<std::sync::Mutex<Vec<mpsc::Sender<NetEvent>>>>,
}

impl EventHub {
    /// Starts copying `events` until the node shuts down.
    pub fn start(mut events: NetEvents) -> Self {
        let hub = Self {
            readers: std::sync::Arc::default(),
        };
        let readers = hub.readers.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut readers = readers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                readers.retain(|reader| match reader.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            "a reader of network events is behind; an event was dropped"
                        );
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            }
        });
        hub
    }

    /// A new reader: every event from now on.
    pub fn subscribe(&self) -> NetEvents {
        let (sender, receiver) = mpsc::channel(1024);
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sender);
        receiver
    }
}

/// Streams that peers opened to this node, in the order they arrived. Ends after the node shuts
/// down. Read it promptly: while 64 accepted streams are waiting, further ones are reset.
pub struct IncomingStreams {
    receiver: mpsc::Receiver<(PeerId, Stream)>,
}

impl IncomingStreams {
    /// The next inbound stream and the peer that opened it; `None` once the node has shut down.
    pub async fn next(&mut self) -> Option<(PeerId, Stream)> {
        self.receiver.recv().await
    }
}

impl futures::Stream for IncomingStreams {
    type Item = (PeerId, Stream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStreams")
            .field("waiting", &self.receiver.len())
            .finish()
    }
}

/// Controls a running node. Cheap to clone; when every clone is dropped the node shuts down.
#[derive(Clone)]
pub struct NetHandle {
    peer_id: PeerId,
    protocol: StreamProtocol,
    commands: mpsc::Sender<Command>,
    control: streams::Control,
    dial_timeout: Duration,
    stream_open_timeout: Duration,
    membership: Option<Arc<MembershipCounters>>,
    revocations: Option<RevocationsInForce>,
    transport: TransportCounters,
}

impl fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetHandle")
            .field("peer_id", &self.peer_id)
            .field("protocol", &self.protocol)
            .field("running", &!self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

impl NetHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses this node listens on, each ending in `/p2p/<peer id>` so that it can be
    /// handed to [`NetHandle::dial`] as is. Waits for the first address to be bound; empty if the
    /// node listens nowhere, all its listeners failed, or it has shut down.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ListenAddrs(reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Connects to `addr` and returns the peer's id once the connection is up (QUIC handshake and
    /// peer authentication done). If `addr` ends in `/p2p/<peer id>`, the remote must prove that
    /// identity; if we are connected to that peer already, this returns at once.
    #[tracing::instrument(level = "debug", skip(self), fields(%addr))]
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        check_quic_address(&addr)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Dial {
                addr: addr.clone(),
                reply,
            })
            .await
            .map_err(|_| NetError::Shutdown)?;
        // On a fleet's mesh a dial ends once the peer is admitted, an introduction later.
        let patience = self.dial_timeout + REPLY_MARGIN + crate::membership::INTRODUCTION_TIMEOUT;
        match tokio::time::timeout(patience, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Shutdown),
            Err(_) => Err(NetError::DialTimeout {
                addr,
                after: patience,
            }),
        }
    }

    /// Opens a stream of the node's protocol to a connected peer.
    ///
    /// Does not dial: a peer we hold no connection to gives [`NetError::PeerNotConnected`], so
    /// that the caller (which knows addresses and policy) decides whether to dial.
    #[tracing::instrument(level = "debug", skip(self), fields(%peer))]
    pub async fn open_stream(&self, peer: PeerId) -> Result<Stream, NetError> {
        if !self.is_connected(peer).await? {
            return Err(NetError::PeerNotConnected { peer });
        }
        let protocol = self.protocol.clone();
        let opening = self.control.open_stream(peer, protocol.clone());
        // Negotiation has a deadline of its own (the swarm's upgrade timeout); this one bounds
        // the whole wait, whatever the connection does.
        match tokio::time::timeout(self.stream_open_timeout, opening).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(streams::OpenError::UnsupportedProtocol(protocol))) => {
                Err(NetError::UnsupportedProtocol { peer, protocol })
            }
            Ok(Err(streams::OpenError::NotConnected)) => Err(NetError::PeerNotConnected { peer }),
            Ok(Err(streams::OpenError::Io(source))) => Err(NetError::StreamOpen {
                peer,
                protocol,
                source,
            }),
            Ok(Err(closed @ streams::OpenError::ConnectionClosed)) => Err(NetError::StreamOpen {
                peer,
                protocol,
                source: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, closed),
            }),
            Err(_) => Err(NetError::StreamOpenTimeout {
                peer,
                protocol,
                after: self.stream_open_timeout,
            }),
        }
    }

    /// Whether at least one connection to `peer` is open.
    pub async fn is_connected(&self, peer: PeerId) -> Result<bool, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::IsConnected { peer, reply })
            .await
            .map_err(|_| NetError::Shutdown)?;
        answer.await.map_err(|_| NetError::Shutdown)
    }

    /// The peers we hold at least one connection to, in peer id order. Empty after shutdown.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ConnectedPeers(reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// What the QUIC transport sent, received and lost so far, over every connection.
    pub fn transport_stats(&self) -> TransportStats {
        self.transport.read()
    }

    /// The transport's counters, to read later (after the node has shut down too).
    pub fn transport_counters(&self) -> TransportCounters {
        self.transport.clone()
    }

    /// What the membership gate decided so far; `None` on an open mesh.
    pub fn membership_counters(&self) -> Option<Arc<MembershipCounters>> {
        self.membership.clone()
    }

    /// The signed revocation list in force, as this node hands it on to members that ask
    /// ([`crate::serve::Roles::revocations`]); `None` on an open mesh. Holding it does not keep
    /// the node running.
    pub fn revocations_in_force(&self) -> Option<RevocationsInForce> {
        self.revocations.clone()
    }

    /// Takes a newer fleet revocation list: peers it revokes are disconnected at once and
    /// refused from now on. Returns them. Refused when the list does not verify, is older than
    /// the one in force, or the node runs an open mesh.
    pub async fn update_revocations(
        &self,
        signed: proto::membership::SignedRevocations,
    ) -> Result<Vec<PeerId>, NetError> {
        self.ask_membership(|reply| Command::Revocations {
            signed: Box::new(signed),
            reply,
        })
        .await
    }

    /// Presents `certificate` (this node's own, renewed) to every peer from now on; peers
    /// admitted already keep their admission. Refused when it is not this node's, not valid
    /// now, expires no later than the one held, or the node runs an open mesh.
    pub async fn renew_certificate(
        &self,
        certificate: proto::membership::MembershipCert,
    ) -> Result<(), NetError> {
        self.ask_membership(|reply| Command::Certificate {
            certificate: Box::new(certificate),
            reply,
        })
        .await
    }

    /// Sends the driver a membership command and waits for its answer; a refusal becomes
    /// [`NetError::Membership`].
    async fn ask_membership<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NetError::Shutdown)?;
        answer
            .await
            .map_err(|_| NetError::Shutdown)?
            .map_err(|reason| NetError::Membership { reason })
    }

    /// Closes every connection (peers see the QUIC connection close at once rather than after
    /// their idle timeout) and stops the node. Returns when the node's task has finished; calling
    /// it again, or from a clone, is harmless.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            // An error only means the task ended already, which is what we want.
            let _ = answer.await;
        }
    }
}

/// Parses a multiaddr, with an error that names the text that was wrong.
pub fn parse_multiaddr(input: &str) -> Result<Multiaddr, NetError> {
    Multiaddr::from_str(input).map_err(|error| NetError::InvalidMultiaddr {
        input: input.to_owned(),
        reason: error.to_string(),
    })
}

/// Installs rustls' ring provider as the process-wide default, once; later calls do nothing.
///
/// Why name it: rustls picks a process default only when exactly one provider is compiled in, and
/// this build has two — `ring` (which the workspace chose) and `aws-lc-rs`, which `libp2p-tls`
/// and `quinn` enable for themselves. Any rustls user in the process that asks for the default
/// (a `ClientConfig::builder()` anywhere, today or in a later dependency) would otherwise panic
/// at run time on the ambiguity. Installing ring up front makes that choice explicit and the same
/// on every node. It does not change libp2p's own handshake: `libp2p-tls` builds its configs with
/// the aws-lc-rs provider named in its code, and both providers implement the same TLS 1.3
/// suites. If the embedding binary installed a default already, that one stays.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another default was installed first (by the binary); keeping it is
        // correct, so there is nothing to handle.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Starts a node: builds the swarm, binds the listen addresses and spawns the task that drives
/// it. Must be called within a tokio runtime. Returns the control handle, the event receiver and
/// the inbound streams of [`NetConfig::protocol`].
pub async fn start(config: NetConfig) -> Result<(NetHandle, NetEvents, IncomingStreams), NetError> {
    install_crypto_provider();

    for addr in &config.listen {
        check_quic_address(addr)?;
    }
    let quic = quic_settings(&config)?;
    let keypair = config.keypair.unwrap_or_else(Keypair::generate_ed25519);
    let peer_id = keypair.public().to_peer_id();
    let counters = Arc::new(MembershipCounters::default());
    let gate = match config.membership {
        Some(membership) => {
            let now = crate::clock::unix_now();
            let gate = Gate::new(peer_id, membership, now, counters.clone()).map_err(|error| {
                NetError::InvalidConfig {
                    field: "membership",
                    reason: error.to_string(),
                }
            })?;
            Some(gate)
        }
        None => None,
    };

    let mdns = if config.mdns {
        let behaviour =
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id).map_err(|error| {
                NetError::Start {
                    reason: format!("mDNS could not start: {error}"),
                }
            })?;
        Some(behaviour)
    } else {
        None
    };
    let transport = quic::QuicTransport::new(&keypair, &quic).map_err(|error| NetError::Start {
        reason: format!("the QUIC transport: {error}"),
    })?;
    let transport_stats = transport.stats();
    let mut protocols = streams::Protocols::default();
    let incoming = protocols
        .accept(config.protocol.clone(), INCOMING_STREAM_BUFFER)
        .map_err(|protocol| NetError::Start {
            reason: format!("protocol {protocol} registered twice"),
        })?;
    let introductions = match gate {
        Some(_) => Some(
            protocols
                .accept(
                    crate::membership::MEMBER_PROTOCOL,
                    crate::membership::MAX_WAITING,
                )
                .map_err(|protocol| NetError::Start {
                    reason: format!(
                        "the membership protocol {protocol} is taken by the node's own"
                    ),
                })?,
        ),
        None => None,
    };
    let streams = streams::Streams::new(protocols, transport_stats.clone());
    let control = streams.control();
    let behaviour = Behaviour {
        revoked: allow_block_list::Behaviour::default(),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), keypair.public())
                .with_agent_version(config.agent_version.clone()),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        mdns: Toggle::from(mdns),
        stream: streams,
    };

    let Ok(builder) = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport);
    let Ok(builder) = builder.with_behaviour(|_| behaviour);
    let idle_timeout = config.idle_timeout;
    let mut swarm = builder
        .with_swarm_config(|swarm| swarm.with_idle_connection_timeout(idle_timeout))
        .build();

    let members = match (gate, introductions) {
        (Some(gate), Some(introductions)) => Some(Members::new(
            gate,
            introductions,
            control.clone(),
            counters.clone(),
        )),
        _ => None,
    };
    let membership = members.as_ref().map(|_| counters);
    let revocations = members.as_ref().map(|members| members.gate.in_force());

    let mut listeners = 0_usize;
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|error| NetError::Listen {
                addr: addr.clone(),
                reason: error::error_chain(&error),
            })?;
        listeners += 1;
    }

    let (command_sender, command_receiver) = mpsc::channel(COMMAND_BUFFER);
    let (event_sender, event_receiver) = mpsc::channel(EVENT_BUFFER);
    let (stream_sender, stream_receiver) = mpsc::channel(INCOMING_STREAM_BUFFER);
    let driver = Driver::new(
        swarm,
        command_receiver,
        event_sender,
        incoming,
        stream_sender,
        listeners,
        config.mdns_auto_dial,
    )
    .counting_in(transport_stats.clone())
    .with_members(members);
    tokio::spawn(
        driver
            .run()
            .instrument(tracing::info_span!("net", local = %peer_id)),
    );

    let handle = NetHandle {
        peer_id,
        protocol: config.protocol,
        commands: command_sender,
        control,
        dial_timeout: config.dial_timeout,
        stream_open_timeout: config.stream_open_timeout,
        membership,
        revocations,
        transport: transport_stats,
    };
    let incoming = IncomingStreams {
        receiver: stream_receiver,
    };
    Ok((handle, event_receiver, incoming))
}

/// The identify protocol version: peers of another protocol family are visible in events but the
/// engine will not speak to them.
const IDENTIFY_PROTOCOL_VERSION: &str = "/depotmesh/1.0.0";

/// [`QuicTuning`] and the dial timeout, checked and converted to the transport's parameters.
fn quic_settings(config: &NetConfig) -> Result<quic::QuicParams, NetError> {
    let tuning = &config.quic;
    let max_idle_timeout_ms = u32::try_from(tuning.max_idle_timeout.as_millis()).map_err(|_| {
        NetError::InvalidConfig {
            field: "quic.max_idle_timeout",
            reason: format!(
                "{:?} is beyond u32::MAX milliseconds",
                tuning.max_idle_timeout
            ),
        }
    })?;
    if max_idle_timeout_ms == 0 {
        // QUIC reads 0 as "no idle timeout": a dead peer would never be noticed.
        return Err(NetError::InvalidConfig {
            field: "quic.max_idle_timeout",
            reason: "must be at least 1 ms".to_owned(),
        });
    }
    if tuning.keep_alive_interval.is_zero() || tuning.keep_alive_interval >= tuning.max_idle_timeout
    {
        return Err(NetError::InvalidConfig {
            field: "quic.keep_alive_interval",
            reason: format!(
                "{:?} must be above zero and below max_idle_timeout {:?}",
                tuning.keep_alive_interval, tuning.max_idle_timeout
            ),
        });
    }
    if config.dial_timeout.is_zero() {
        return Err(NetError::InvalidConfig {
            field: "dial_timeout",
            reason: "must be above zero".to_owned(),
        });
    }
    if tuning.mtu_upper_bound < MIN_QUIC_DATAGRAM {
        return Err(NetError::InvalidConfig {
            field: "quic.mtu_upper_bound",
            reason: format!(
                "{} is below QUIC's minimum datagram of {MIN_QUIC_DATAGRAM} bytes",
                tuning.mtu_upper_bound
            ),
        });
    }
    if !(4..=quic::MAX_CONNECTION_ID).contains(&tuning.connection_id_length) {
        return Err(NetError::InvalidConfig {
            field: "quic.connection_id_length",
            reason: format!(
                "{} bytes: give 4 to {} (QUIC's longest)",
                tuning.connection_id_length,
                quic::MAX_CONNECTION_ID
            ),
        });
    }
    if tuning.ack_every == Some(0) {
        return Err(NetError::InvalidConfig {
            field: "quic.ack_every",
            reason: "must be at least 1 packet".to_owned(),
        });
    }
    Ok(quic::QuicParams {
        handshake_timeout: config.dial_timeout,
        max_idle_timeout: tuning.max_idle_timeout,
        keep_alive_interval: tuning.keep_alive_interval,
        max_concurrent_streams: tuning.max_concurrent_streams,
        stream_window: tuning.max_stream_data,
        connection_window: tuning.max_connection_data,
        send_window: tuning.send_window,
        mtu_upper_bound: tuning.mtu_upper_bound,
        ack_every: tuning.ack_every,
        ack_delay: tuning.ack_delay,
        connection_id_length: tuning.connection_id_length,
        ciphers: tuning.ciphers,
        congestion: tuning.congestion,
        socket_receive_buffer: tuning.socket_receive_buffer,
    })
}

/// The smallest UDP payload a QUIC v1 path must carry (RFC 9000, 14.1).
const MIN_QUIC_DATAGRAM: u16 = 1200;

/// Refuses addresses of transports this node does not speak, so that the caller hears "not QUIC"
/// rather than a generic transport error from deep inside the swarm. DNS names are refused too:
/// the swarm has no resolver (a yard LAN is addressed by IP or found by mDNS).
fn check_quic_address(addr: &Multiaddr) -> Result<(), NetError> {
    let mut parts = addr.iter();
    let ip = matches!(parts.next(), Some(Protocol::Ip4(_) | Protocol::Ip6(_)));
    let udp = matches!(parts.next(), Some(Protocol::Udp(_)));
    let quic = matches!(parts.next(), Some(Protocol::QuicV1));
    let rest_is_peer = parts.all(|part| matches!(part, Protocol::P2p(_)));
    if ip && udp && quic && rest_is_peer {
        Ok(())
    } else {
        Err(NetError::UnsupportedAddress { addr: addr.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_controllers_parse_by_name_and_others_are_refused() {
        for congestion in [Congestion::NewReno, Congestion::Cubic] {
            assert_eq!(congestion.to_string().parse(), Ok(congestion));
        }
        assert_eq!(Congestion::default(), Congestion::NewReno);
        let error = "bbr".parse::<Congestion>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"bbr\" is not a congestion controller: give newreno or cubic"
        );
    }

    #[test]
    fn quic_addresses_are_accepted_and_others_refused() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        for good in [
            "/ip4/127.0.0.1/udp/4001/quic-v1".to_owned(),
            "/ip6/::1/udp/0/quic-v1".to_owned(),
            format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{peer}"),
        ] {
            let addr = parse_multiaddr(&good).unwrap();
            assert!(check_quic_address(&addr).is_ok(), "{good}");
        }
        for bad in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/127.0.0.1/udp/4001/quic",
            "/ip4/127.0.0.1/udp/4001",
            "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport",
            "/dns4/depot.local/udp/4001/quic-v1",
        ] {
            let addr = parse_multiaddr(bad).unwrap();
            assert!(
                matches!(
                    check_quic_address(&addr),
                    Err(NetError::UnsupportedAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_multiaddr_error_names_the_input() {
        let error = parse_multiaddr("/ip4/300.1.2.3/udp/x").unwrap_err();
        assert!(matches!(error, NetError::InvalidMultiaddr { .. }));
        assert!(
            error.to_string().contains("/ip4/300.1.2.3/udp/x"),
            "{error}"
        );
    }

    #[test]
    fn tuning_out_of_range_is_refused() {
        let mut config = NetConfig::default();
        config.quic.keep_alive_interval = config.quic.max_idle_timeout;
        assert!(matches!(
            quic_settings(&config),
            Err(NetError::InvalidConfig {
                field: "quic.keep_alive_interval",
                ..
            })
        ));
        let mut config = NetConfig::default();
        config.quic.max_idle_timeout = Duration::from_secs(u64::MAX / 1000);
        assert!(matches!(
            quic_settings(&config),
            Err(NetError::InvalidConfig {
                field: "quic.max_idle_timeout",
                ..
            })
        ));
        let mut config = NetConfig::default();
        config.quic.mtu_upper_bound = 1199;
        assert!(matches!(
            quic_settings(&config),
            Err(NetError::InvalidConfig {
                field: "quic.mtu_upper_bound",
                ..
            })
        ));
        for length in [0, 3, 21] {
            let mut config = NetConfig::default();
            config.quic.connection_id_length = length;
            assert!(matches!(
                quic_settings(&config),
                Err(NetError::InvalidConfig {
                    field: "quic.connection_id_length",
                    ..
                })
            ));
        }
        let mut config = NetConfig::default();
        config.quic.ack_every = Some(0);
        assert!(matches!(
            quic_settings(&config),
            Err(NetError::InvalidConfig {
                field: "quic.ack_every",
                ..
            })
        ));
        assert!(quic_settings(&NetConfig::default()).is_ok());
    }

    #[test]
    fn crypto_provider_install_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
