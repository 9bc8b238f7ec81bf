//! QUIC v1 as a libp2p [`Transport`], over quinn, with every knob this crate needs in reach.
//!
//! libp2p's own QUIC transport keeps quinn's configuration private: its TLS offers ChaCha20
//! first on every CPU, and the send window, ACK frequency and datagram size bounds cannot be set.
//! This transport speaks the same protocol (QUIC v1, the libp2p TLS handshake of [`super::tls`],
//! `/ip4|ip6/…/udp/…/quic-v1` addresses, bidirectional streams only) so it interoperates with
//! stock libp2p peers, and takes its settings from [`QuicParams`].
//!
//! # Shape
//! - One quinn endpoint (one UDP socket) per listen address. Dials go out from a listener's
//!   socket of the same address family when there is one, so a peer sees the address it can dial
//!   back; otherwise from a dial-only socket per family, bound on first use.
//! - A listener on an unspecified address (`0.0.0.0`, `::`) reports one address per interface
//!   and follows interfaces coming and going (`if-watch`), as libp2p's transports do: mDNS and
//!   identify announce what is reported here.
//! - The handshake runs in the upgrade future the swarm polls; the peer id is read from the
//!   certificate the handshake verified, and a dial of `/p2p/<id>` that reaches another peer is
//!   closed and fails.
//! - No hole punching (dialling in the listener role): a yard LAN needs none.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use if_watch::IfEvent;
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};
use libp2p::core::{Endpoint as Role, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::stats::{Entry, TransportCounters};
use super::tls::{self, CipherPreference};

/// What the transport is built from.
#[derive(Clone, Debug)]
pub(super) struct QuicParams {
    /// How long a handshake may take.
    pub(super) handshake_timeout: Duration,
    /// A connection silent for this long is dead.
    pub(super) max_idle_timeout: Duration,
    /// PING interval on a quiet connection.
    pub(super) keep_alive_interval: Duration,
    /// Bidirectional streams a peer may hold open to us at once.
    pub(super) max_concurrent_streams: u32,
    /// Receive window of one stream, bytes.
    pub(super) stream_window: u32,
    /// Receive window of one connection, bytes.
    pub(super) connection_window: u32,
    /// Bytes this side keeps in flight and unacknowledged on one connection.
    pub(super) send_window: u64,
    /// The largest UDP payload path MTU discovery tries.
    pub(super) mtu_upper_bound: u16,
    /// Ask the peer to acknowledge every this many ack-eliciting packets (the QUIC ACK
    /// frequency extension, where the peer supports it); `None` leaves quinn's default of two.
    pub(super) ack_every: Option<u32>,
    /// The longest a peer may hold an acknowledgement back (with `ack_every`); `None` leaves
    /// the peer's own (25 ms unless it says otherwise).
    pub(super) ack_delay: Option<Duration>,
    /// Bytes of the connection ids peers put in every packet they send us.
    pub(super) connection_id_length: u8,
    /// Which cipher suite the dialler lists first.
    pub(super) ciphers: CipherPreference,
    /// The congestion controller of every connection.
    pub(super) congestion: super::Congestion,
    /// The UDP socket's receive buffer asked of the kernel, bytes; 0 leaves the system default.
    pub(super) socket_receive_buffer: u32,
}

/// What went wrong on the transport.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// quinn refused to start a connection (an address it cannot reach, an exhausted endpoint).
    #[error("dialling {addr}: {reason}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// quinn's reason.
        reason: String,
    },
    /// The handshake failed.
    #[error("QUIC handshake with {addr}: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectionError,
    },
    /// The handshake did not finish in time.
    #[error("QUIC handshake with {addr}: no answer within {timeout:?}")]
    HandshakeTimeout {
        /// The peer's address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The handshake finished without a libp2p identity (should not happen: the TLS verifier
    /// requires one).
    #[error("{addr} proved no libp2p identity: {reason}")]
    Identity {
        /// The peer's address.
        addr: SocketAddr,
        /// What was missing.
        reason: String,
    },
    /// A dial of one peer reached another.
    #[error("dialled {expected} at {addr}, but {actual} answered")]
    WrongPeer {
        /// The address dialled.
        addr: SocketAddr,
        /// The peer the address named.
        expected: Box<PeerId>,
        /// The peer that answered.
        actual: Box<PeerId>,
    },
    /// An established connection failed.
    #[error("QUIC connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Watching the machine's interfaces failed.
    #[error("watching network interfaces: {0}")]
    Interfaces(io::Error),
}

type Upgrade = BoxFuture<'static, Result<(PeerId, Connection), QuicError>>;

/// The transport. Built with [`QuicTransport::new`]; handed to libp2p's `SwarmBuilder`.
pub(super) struct QuicTransport {
    client: quinn::ClientConfig,
    server: quinn::ServerConfig,
    endpoint_config: quinn::EndpointConfig,
    handshake_timeout: Duration,
    listeners: Vec<Listener>,
    dial_v4: Option<quinn::Endpoint>,
    dial_v6: Option<quinn::Endpoint>,
    /// Woken when a listener is added or removed, so the swarm polls again.
    waker: Option<Waker>,
    /// Every connection's counters.
    stats: TransportCounters,
    /// The receive buffer each UDP socket asks for (0: the system's default).
    socket_receive_buffer: u32,
}

impl QuicTransport {
    /// A transport for the node `keypair`, with `params`.
    pub(super) fn new(keypair: &Keypair, params: &QuicParams) -> Result<Self, QuicError> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(0_u32.into())
            .max_concurrent_bidi_streams(params.max_concurrent_streams.into())
            .datagram_receive_buffer_size(None)
            .keep_alive_interval(Some(params.keep_alive_interval))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(params.max_idle_timeout).map_err(|_| {
                    QuicError::Connect {
                        addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                        reason: format!(
                            "idle timeout {:?} is beyond QUIC's range",
                            params.max_idle_timeout
                        ),
                    }
                })?,
            ))
            .allow_spin(false)
            .stream_receive_window(params.stream_window.into())
            .receive_window(params.connection_window.into())
            .send_window(params.send_window);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(params.mtu_upper_bound);
        transport.mtu_discovery_config(Some(mtu));
        if let Some(every) = params.ack_every {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(every.saturating_sub(1).into())
                .max_ack_delay(params.ack_delay);
            transport.ack_frequency_config(Some(ack));
        }
        match params.congestion {
            super::Congestion::NewReno => {
                transport.congestion_controller_factory(Arc::new(
                    quinn::congestion::NewRenoConfig::default(),
                ));
            }
            super::Congestion::Cubic => {
                transport.congestion_controller_factory(Arc::new(
                    quinn::congestion::CubicConfig::default(),
                ));
            }
        }
        let transport = Arc::new(transport);

        let client_tls = tls::client_config(keypair, params.ciphers)?;
        let server_tls = tls::server_config(keypair, params.ciphers)?;
        let mut client = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls).map_err(|error| QuicError::Connect {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                reason: format!("the TLS client configuration does not suit QUIC: {error}"),
            })?,
        ));
        client.transport_config(transport.clone());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            QuicServerConfig::try_from(server_tls).map_err(|error| QuicError::Connect {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                reason: format!("the TLS server configuration does not suit QUIC: {error}"),
            })?,
        ));
        server.transport = transport;
        // A peer that changes address is a new connection: the swarm tracks addresses per
        // connection and has no event for a migrated one.
        server.migration(false);

        // Stateless resets let a restarted node end its peers' connections to its previous run
        // at once instead of after their idle timeout; that needs the same key across restarts,
        // so it is derived from the node's identity.
        let mut endpoint_config = match keypair.derive_secret(b"depotmesh quic stateless reset") {
            Some(secret) => quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret,
            ))),
            None => quinn::EndpointConfig::default(),
        };
        endpoint_config.supported_versions(vec![1]);
        let length = params.connection_id_length;
        endpoint_config.cid_generator(move || Box::new(RandomIds { length, made: 0 }));

        Ok(Self {
            client,
            server,
            endpoint_config,
            handshake_timeout: params.handshake_timeout,
            listeners: Vec::new(),
            dial_v4: None,
            dial_v6: None,
            waker: None,
            stats: TransportCounters::default(),
            socket_receive_buffer: params.socket_receive_buffer,
        })
    }

    /// The counters of every connection this transport makes or accepts.
    pub(super) fn stats(&self) -> TransportCounters {
        self.stats.clone()
    }

    fn endpoint(&self, socket: SocketAddr, server: bool) -> Result<quinn::Endpoint, QuicError> {
        let bind = |source| QuicError::Bind {
            addr: socket,
            source,
        };
        let udp = socket2::Socket::new(
            socket2::Domain::for_address(socket),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(bind)?;
        if socket.is_ipv6() {
            // An IPv6 listener and an IPv4 one on the same port are two sockets.
            udp.set_only_v6(true).map_err(bind)?;
        }
        if self.socket_receive_buffer > 0 {
            receive_buffer(&udp, self.socket_receive_buffer).map_err(bind)?;
        }
        udp.bind(&socket.into()).map_err(bind)?;
        let server = server.then(|| self.server.clone());
        quinn::Endpoint::new(
            self.endpoint_config.clone(),
            server,
            udp.into(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind)
    }

    /// The endpoint a dial to `remote` goes out from.
    fn dial_endpoint(
        &mut self,
        remote: SocketAddr,
        port_use: PortUse,
    ) -> Result<quinn::Endpoint, QuicError> {
        if port_use == PortUse::Reuse
            && let Some(listener) = self
                .listeners
                .iter()
                .filter(|listener| !listener.closed)
                .find(|listener| listener.serves(remote.ip()))
        {
            return Ok(listener.endpoint.clone());
        }
        let (slot, any) = if remote.is_ipv4() {
            (&self.dial_v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        } else {
            (&self.dial_v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = self.endpoint(SocketAddr::new(any, 0), false)?;
        if remote.is_ipv4() {
            self.dial_v4 = Some(endpoint.clone());
        } else {
            self.dial_v6 = Some(endpoint.clone());
        }
        Ok(endpoint)
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The socket address (and the peer, if named) of a `/ip4|ip6/…/udp/…/quic-v1[/p2p/…]` address.
pub(super) fn socket_of(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => IpAddr::V4(ip),
        Protocol::Ip6(ip) => IpAddr::V6(ip),
        _ => return None,
    };
    let Protocol::Udp(port) = parts.next()? else {
        return None;
    };
    let Protocol::QuicV1 = parts.next()? else {
        return None;
    };
    let peer = match parts.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((SocketAddr::new(ip, port), peer))
}

/// `/ip4|ip6/…/udp/…/quic-v1` of a socket address.
fn multiaddr_of(socket: SocketAddr) -> Multiaddr {
    let ip = match socket.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(socket.port()))
        .with(Protocol::QuicV1)
}

/// Asks for a receive buffer of `bytes` on `udp`. The kernel caps the request at
/// `net.core.rmem_max`; a smaller buffer than asked is logged once, with the setting to raise.
fn receive_buffer(udp: &socket2::Socket, bytes: u32) -> io::Result<()> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let wanted = usize::try_from(bytes).unwrap_or(usize::MAX);
    udp.set_recv_buffer_size(wanted)?;
    // Linux reports twice what it granted (the doubling covers its bookkeeping).
    let granted = udp.recv_buffer_size()? / 2;
    if granted < wanted {
        WARNED.call_once(|| {
            tracing::warn!(
                wanted,
                granted,
                "the UDP receive buffer is smaller than asked: raise net.core.rmem_max to at \
                 least {wanted} (sysctl), or a busy node drops datagrams that arrive in bursts"
            );
        });
    }
    Ok(())
}

/// Runs a handshake to its end and reads the peer's identity from it.
async fn establish(
    connecting: quinn::Connecting,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(PeerId, quinn::Connection), QuicError> {
    let connection = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(source)) => return Err(QuicError::Handshake { addr, source }),
        Err(_) => return Err(QuicError::HandshakeTimeout { addr, timeout }),
    };
    let certificates = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| QuicError::Identity {
            addr,
            reason: "no certificate".to_owned(),
        })?;
    let peer =
        tls::peer_of(&certificates).map_err(|reason| QuicError::Identity { addr, reason })?;
    Ok((peer, connection))
}

impl Transport for QuicTransport {
    type Output = (PeerId, Connection);
    type Error = QuicError;
    type ListenerUpgrade = Upgrade;
    type Dial = Upgrade;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some((socket, None)) = socket_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let endpoint = self.endpoint(socket, true).map_err(TransportError::Other)?;
        let bound = endpoint.local_addr().map_err(|source| {
            TransportError::Other(QuicError::Bind {
                addr: socket,
                source,
            })
        })?;
        let listener = Listener::new(
            id,
            endpoint,
            bound,
            self.handshake_timeout,
            self.stats.clone(),
        )
        .map_err(TransportError::Other)?;
        self.listeners.push(listener);
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(listener) = self
            .listeners
            .iter_mut()
            .find(|listener| listener.id == id && !listener.closed)
        else {
            return false;
        };
        listener.close(Ok(()));
        self.wake();
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some((remote, expected)) = socket_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        if remote.port() == 0 || remote.ip().is_unspecified() || opts.role == Role::Listener {
            // Dialling as the listener is hole punching, which this transport does not do.
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let endpoint = self
            .dial_endpoint(remote, opts.port_use)
            .map_err(TransportError::Other)?;
        // Any valid name: the libp2p verifier checks the peer's identity, not a name.
        let connecting = endpoint
            .connect_with(self.client.clone(), remote, "l")
            .map_err(|error| {
                TransportError::Other(QuicError::Connect {
                    addr: remote,
                    reason: error.to_string(),
                })
            })?;
        let timeout = self.handshake_timeout;
        let stats = self.stats.clone();
        Ok(async move {
            let (peer, connection) = establish(connecting, remote, timeout).await?;
            let entry = stats.open(&connection);
            if let Some(expected) = expected
                && expected != peer
            {
                connection.close(0_u32.into(), b"not the peer dialled");
                return Err(QuicError::WrongPeer {
                    addr: remote,
                    expected: Box::new(expected),
                    actual: Box::new(peer),
                });
            }
            Ok((peer, Connection::new(connection, entry)))
        }
        .boxed())
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = self.get_mut();
        let mut index = 0;
        while index < this.listeners.len() {
            let Some(listener) = this.listeners.get_mut(index) else {
                break;
            };
            match listener.poll(cx) {
                Poll::Ready(event) => {
                    if listener.closed && listener.events.is_empty() {
                        this.listeners.swap_remove(index);
                    }
                    return Poll::Ready(event);
                }
                Poll::Pending => index += 1,
            }
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// One listening endpoint.
struct Listener {
    id: ListenerId,
    endpoint: quinn::Endpoint,
    /// The bound address (its IP may be unspecified).
    bound: SocketAddr,
    handshake_timeout: Duration,
    stats: TransportCounters,
    accepting: BoxFuture<'static, Option<quinn::Incoming>>,
    /// Interface changes, for a listener on an unspecified address.
    interfaces: Option<if_watch::tokio::IfWatcher>,
    events: VecDeque<TransportEvent<Upgrade, QuicError>>,
    closed: bool,
}

fn accept(endpoint: &quinn::Endpoint) -> BoxFuture<'static, Option<quinn::Incoming>> {
    let endpoint = endpoint.clone();
    async move { endpoint.accept().await }.boxed()
}

impl Listener {
    fn new(
        id: ListenerId,
        endpoint: quinn::Endpoint,
        bound: SocketAddr,
        handshake_timeout: Duration,
        stats: TransportCounters,
    ) -> Result<Self, QuicError> {
        let mut events = VecDeque::new();
        let interfaces = if bound.ip().is_unspecified() {
            Some(if_watch::tokio::IfWatcher::new().map_err(QuicError::Interfaces)?)
        } else {
            events.push_back(TransportEvent::NewAddress {
                listener_id: id,
                listen_addr: multiaddr_of(bound),
            });
            None
        };
        Ok(Self {
            id,
            accepting: accept(&endpoint),
            endpoint,
            bound,
            handshake_timeout,
            stats,
            interfaces,
            events,
            closed: false,
        })
    }

    /// Whether a dial to `remote` may go out from this listener's socket.
    fn serves(&self, remote: IpAddr) -> bool {
        let ip = self.bound.ip();
        ip.is_ipv4() == remote.is_ipv4()
            && (ip.is_unspecified() || ip.is_loopback() == remote.is_loopback())
    }

    fn close(&mut self, reason: Result<(), QuicError>) {
        // Refuse new connections; established ones keep the endpoint's socket until they end.
        self.endpoint.set_server_config(None);
        self.closed = true;
        self.interfaces = None;
        self.events.push_back(TransportEvent::ListenerClosed {
            listener_id: self.id,
            reason,
        });
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<TransportEvent<Upgrade, QuicError>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        if self.closed {
            return Poll::Pending;
        }
        if let Some(interfaces) = self.interfaces.as_mut() {
            while let Poll::Ready(event) = interfaces.poll_if_event(cx) {
                match event {
                    Ok(IfEvent::Up(net)) if net.addr().is_ipv4() == self.bound.is_ipv4() => {
                        return Poll::Ready(TransportEvent::NewAddress {
                            listener_id: self.id,
                            listen_addr: multiaddr_of(SocketAddr::new(
                                net.addr(),
                                self.bound.port(),
                            )),
                        });
                    }
                    Ok(IfEvent::Down(net)) if net.addr().is_ipv4() == self.bound.is_ipv4() => {
                        return Poll::Ready(TransportEvent::AddressExpired {
                            listener_id: self.id,
                            listen_addr: multiaddr_of(SocketAddr::new(
                                net.addr(),
                                self.bound.port(),
                            )),
                        });
                    }
                    Ok(_) => {}
                    Err(error) => {
                        return Poll::Ready(TransportEvent::ListenerError {
                            listener_id: self.id,
                            error: QuicError::Interfaces(error),
                        });
                    }
                }
            }
        }
        match self.accepting.poll_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.close(Ok(()));
                self.poll(cx)
            }
            Poll::Ready(Some(incoming)) => {
                self.accepting = accept(&self.endpoint);
                let remote = incoming.remote_address();
                let local = SocketAddr::new(
                    incoming.local_ip().unwrap_or(self.bound.ip()),
                    self.bound.port(),
                );
                let timeout = self.handshake_timeout;
                let stats = self.stats.clone();
                let upgrade = async move {
                    let connecting = incoming.accept().map_err(|source| QuicError::Handshake {
                        addr: remote,
                        source,
                    })?;
                    let (peer, connection) = establish(connecting, remote, timeout).await?;
                    let entry = stats.open(&connection);
                    Ok((peer, Connection::new(connection, entry)))
                }
                .boxed();
                Poll::Ready(TransportEvent::Incoming {
                    listener_id: self.id,
                    upgrade,
                    local_addr: multiaddr_of(local),
                    send_back_addr: multiaddr_of(remote),
                })
            }
        }
    }
}

type StreamPair = (quinn::SendStream, quinn::RecvStream);

/// An established connection: libp2p's view of it as a stream multiplexer.
pub(super) struct Connection {
    connection: quinn::Connection,
    inbound: Option<BoxFuture<'static, Result<StreamPair, quinn::ConnectionError>>>,
    outbound: Option<BoxFuture<'static, Result<StreamPair, quinn::ConnectionError>>>,
    closing: Option<BoxFuture<'static, quinn::ConnectionError>>,
    /// Files the connection's counters as closed when it is dropped.
    _stats: Entry,
}

impl Connection {
    fn new(connection: quinn::Connection, stats: Entry) -> Self {
        Self {
            connection,
            _stats: stats,
            inbound: None,
            outbound: None,
            closing: None,
        }
    }
}

/// Polls the stream being opened (or accepted) in `slot`, starting it with `start` if none is.
fn poll_stream(
    slot: &mut Option<BoxFuture<'static, Result<StreamPair, quinn::ConnectionError>>>,
    cx: &mut Context<'_>,
    start: impl FnOnce() -> BoxFuture<'static, Result<StreamPair, quinn::ConnectionError>>,
) -> Poll<Result<Stream, QuicError>> {
    let opening = slot.get_or_insert_with(start);
    let result = futures::ready!(opening.poll_unpin(cx));
    *slot = None;
    let (send, recv) = result?;
    Poll::Ready(Ok(Stream::new(send, recv)))
}

impl StreamMuxer for Connection {
    type Substream = Stream;
    type Error = QuicError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let connection = &this.connection;
        poll_stream(&mut this.inbound, cx, || {
            let connection = connection.clone();
            async move { connection.accept_bi().await }.boxed()
        })
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        let connection = &this.connection;
        poll_stream(&mut this.outbound, cx, || {
            let connection = connection.clone();
            async move { connection.open_bi().await }.boxed()
        })
    }

    fn poll(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        // Migration is off, so a connection's address never changes: nothing to report.
        Poll::Pending
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let closing = this.closing.get_or_insert_with(|| {
            this.connection.close(0_u32.into(), b"");
            let connection = this.connection.clone();
            async move { connection.closed().await }.boxed()
        });
        match futures::ready!(closing.poll_unpin(cx)) {
            quinn::ConnectionError::LocallyClosed => Poll::Ready(Ok(())),
            error => Poll::Ready(Err(QuicError::Connection(error))),
        }
    }
}

/// One bidirectional QUIC stream.
pub(super) struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The outcome of closing the write half, kept so that closing again returns it.
    closed: Option<Result<(), io::ErrorKind>>,
}

impl Stream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            send,
            recv,
            closed: None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(closed) = this.closed {
            return Poll::Ready(closed.map_err(io::Error::from));
        }
        let result = futures::ready!(AsyncWrite::poll_close(Pin::new(&mut this.send), cx));
        this.closed = Some(result.as_ref().map(|_| ()).map_err(io::Error::kind));
        Poll::Ready(result)
    }
}

/// The longest connection id QUIC v1 allows (RFC 9000, 17.2).
pub(super) const MAX_CONNECTION_ID: u8 = 20;

/// Connection ids of a chosen length, drawn from the system's random source. quinn checks a new
/// id against those in use, so a short id is safe among a node's few hundred connections; it
/// only has to tell them apart (packets are authenticated by their keys, not their ids).
struct RandomIds {
    length: u8,
    /// Ids made so far: what an id is derived from should the random source ever fail.
    made: u64,
}

impl quinn::ConnectionIdGenerator for RandomIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.made += 1;
        let length = usize::from(self.length.min(MAX_CONNECTION_ID));
        let mut bytes = [0_u8; MAX_CONNECTION_ID as usize];
        let id = &mut bytes[..length];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), id).is_err() {
            // Still distinct from one id to the next, which is all quinn needs to route.
            let derived = blake3::hash(&self.made.to_le_bytes());
            id.copy_from_slice(&derived.as_bytes()[..length]);
        }
        quinn::ConnectionId::new(id)
    }

    fn cid_len(&self) -> usize {
        usize::from(self.length.min(MAX_CONNECTION_ID))
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_addresses_map_to_sockets_and_others_do_not() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let (socket, named) =
            socket_of(&"/ip4/10.0.0.7/udp/7470/quic-v1".parse().unwrap()).unwrap();
        assert_eq!(socket, "10.0.0.7:7470".parse().unwrap());
        assert_eq!(named, None);
        let with_peer: Multiaddr = format!("/ip6/::1/udp/9/quic-v1/p2p/{peer}")
            .parse()
            .unwrap();
        assert_eq!(
            socket_of(&with_peer),
            Some(("[::1]:9".parse().unwrap(), Some(peer)))
        );
        for other in [
            "/ip4/10.0.0.7/udp/7470/quic",
            "/ip4/10.0.0.7/tcp/7470",
            "/ip4/10.0.0.7/udp/7470/quic-v1/webtransport",
            "/dns4/depot/udp/7470/quic-v1",
        ] {
            assert_eq!(socket_of(&other.parse().unwrap()), None, "{other}");
        }
        assert_eq!(
            multiaddr_of(socket).to_string(),
            "/ip4/10.0.0.7/udp/7470/quic-v1"
        );
    }
}
