//! Streams of the node's own protocols on its libp2p connections: opened on demand, several at
//! once on one connection, and handed over inbound through a queue per protocol whose size the
//! node chooses.
//!
//! It replaces libp2p-stream, which hands each protocol's inbound streams over a channel of one
//! slot and resets a stream that finds it full. Connections deliver their streams from their own
//! tasks, so on a busy one-thread runtime a second stream often arrived before the first was
//! taken: on the 30-vehicle testbed 3,377 inbound streams a run were reset unread (1,036 at the
//! depot), each a range request lost, or an introduction or have subscription to try again.
//! libp2p-stream also opens one stream at a time per connection, each waiting for the last one's
//! protocol negotiation.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::{mpsc, oneshot};

use super::TransportCounters;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    /// The peer does not speak the protocol.
    #[error("the peer does not support {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// No connection to the peer (any more).
    #[error("no connection to the peer")]
    NotConnected,
    /// The connection closed before the stream was negotiated.
    #[error("the connection closed before the stream was open")]
    ConnectionClosed,
    /// Negotiating the stream failed or timed out.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a stream opened to us is handed over as: who opened it, and the stream.
pub(super) type Incoming = (PeerId, Stream);

/// The protocols peers may open streams of, each with the queue its streams wait in until the
/// node takes them. A stream that finds its queue full is dropped (reset): the node is not
/// keeping up, and the opener hears so at once.
#[derive(Debug, Default)]
pub(super) struct Protocols {
    queues: HashMap<StreamProtocol, mpsc::Sender<Incoming>>,
}

impl Protocols {
    /// Accepts `protocol`, its streams waiting in a queue of `capacity`; returns the queue's end,
    /// or gives the protocol back if it was accepted already (its streams go to one queue only).
    pub(super) fn accept(
        &mut self,
        protocol: StreamProtocol,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Incoming>, StreamProtocol> {
        match self.queues.entry(protocol) {
            std::collections::hash_map::Entry::Occupied(taken) => Err(taken.key().clone()),
            std::collections::hash_map::Entry::Vacant(free) => {
                let (sender, receiver) = mpsc::channel(capacity.max(1));
                free.insert(sender);
                Ok(receiver)
            }
        }
    }
}

/// What every connection handler shares: the queues, and the counters where what they drop
/// is counted.
#[derive(Debug)]
struct Inbound {
    queues: HashMap<StreamProtocol, mpsc::Sender<Incoming>>,
    names: Vec<StreamProtocol>,
    counters: TransportCounters,
}

impl Inbound {
    fn deliver(&self, peer: PeerId, protocol: &StreamProtocol, stream: Stream) {
        let Some(queue) = self.queues.get(protocol) else {
            return;
        };
        match queue.try_send((peer, stream)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.stream_dropped();
                tracing::debug!(%peer, %protocol, "inbound stream refused: its queue is full");
            }
            // The node no longer takes this protocol: the stream is dropped, so reset.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A request to open a stream, from a [`Control`] to the connection that will carry it.
#[derive(Debug)]
pub(super) struct Open {
    protocol: StreamProtocol,
    reply: oneshot::Sender<Result<Stream, OpenError>>,
}

/// Opens streams to peers. Cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct Control {
    requests: mpsc::UnboundedSender<(PeerId, Open)>,
}

impl Control {
    /// Opens a stream of `protocol` on a connection to `peer` (which must be connected: this
    /// does not dial). Several may be opening at once on one connection.
    pub(super) async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((peer, Open { protocol, reply }))
            .map_err(|_| OpenError::NotConnected)?;
        // A dropped reply: the request met no connection, or its connection closed.
        answer.await.unwrap_or(Err(OpenError::ConnectionClosed))
    }
}

/// The behaviour: routes [`Control`]s' requests to a connection of their peer, and gives each
/// connection a handler that delivers inbound streams to the node's [`Protocols`].
pub(super) struct Streams {
    inbound: Arc<Inbound>,
    requests: mpsc::UnboundedReceiver<(PeerId, Open)>,
    control: Control,
    /// Each connected peer's connections, oldest first: streams go on the oldest, so that a
    /// second connection from a simultaneous dial falls idle and closes.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
}

impl Streams {
    /// A behaviour accepting `protocols`; streams dropped on a full queue are counted in
    /// `counters` ([`super::TransportStats::streams_dropped`]).
    pub(super) fn new(protocols: Protocols, counters: TransportCounters) -> Self {
        let names = protocols.queues.keys().cloned().collect();
        let (sender, requests) = mpsc::unbounded_channel();
        Self {
            inbound: Arc::new(Inbound {
                queues: protocols.queues,
                names,
                counters,
            }),
            requests,
            control: Control { requests: sender },
            connections: HashMap::new(),
        }
    }

    pub(super) fn control(&self) -> Control {
        self.control.clone()
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            inbound: self.inbound.clone(),
            to_open: VecDeque::new(),
            opening: 0,
        }
    }
}

impl NetworkBehaviour for Streams {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(established) => self
                .connections
                .entry(established.peer_id)
                .or_default()
                .push(established.connection_id),
            FromSwarm::ConnectionClosed(closed) => {
                if let Some(connections) = self.connections.get_mut(&closed.peer_id) {
                    connections.retain(|id| *id != closed.connection_id);
                    if connections.is_empty() {
                        self.connections.remove(&closed.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((peer, open))) = self.requests.poll_recv(cx) {
            match self.connections.get(&peer).and_then(|all| all.first()) {
                Some(connection) => {
                    // If the connection closes before its handler takes the request, the
                    // request is dropped with it and the opener hears `ConnectionClosed`.
                    return Poll::Ready(ToSwarm::NotifyHandler {
                        peer_id: peer,
                        handler: NotifyHandler::One(*connection),
                        event: open,
                    });
                }
                None => {
                    let _ = open.reply.send(Err(OpenError::NotConnected));
                }
            }
        }
        Poll::Pending
    }
}

/// One connection's handler.
pub(super) struct Handler {
    peer: PeerId,
    inbound: Arc<Inbound>,
    /// Requests not yet handed to the connection.
    to_open: VecDeque<Open>,
    /// Streams handed to the connection and being negotiated.
    opening: usize,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Open;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Open;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade(self.inbound.names.clone()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        // Streams keep a connection alive by themselves; requests do until they are streams.
        !self.to_open.is_empty() || self.opening > 0
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Self::OutboundOpenInfo, Infallible>> {
        match self.to_open.pop_front() {
            Some(open) => {
                self.opening += 1;
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(Upgrade(vec![open.protocol.clone()]), open),
                })
            }
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, open: Open) {
        self.to_open.push_back(open);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Upgrade, Upgrade, (), Self::OutboundOpenInfo>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.inbound.deliver(self.peer, &protocol, stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: open,
            }) => {
                self.opening = self.opening.saturating_sub(1);
                let _ = open.reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, info: open }) => {
                self.opening = self.opening.saturating_sub(1);
                let error = match error {
                    StreamUpgradeError::Timeout => {
                        OpenError::Io(std::io::ErrorKind::TimedOut.into())
                    }
                    StreamUpgradeError::NegotiationFailed => {
                        OpenError::UnsupportedProtocol(open.protocol)
                    }
                    StreamUpgradeError::Io(error) => OpenError::Io(error),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = open.reply.send(Err(error));
            }
            _ => {}
        }
    }
}

/// The protocols of a stream being negotiated: the node's own on inbound streams, the one
/// asked for on an outbound one. Negotiation is all there is to it.
#[derive(Debug)]
pub(super) struct Upgrade(Vec<StreamProtocol>);

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
