//! The task that owns the swarm: it turns handle commands into swarm calls and swarm events into
//! [`NetEvent`]s, and forwards inbound streams.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, identify, mdns,
    multiaddr::Protocol,
    ping,
    swarm::{
        ConnectionId, NetworkBehaviour, SwarmEvent,
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use tokio::sync::{mpsc, oneshot};

use super::introduce::{self, Heard};
use super::{NetError, NetEvent, Stream, error::error_chain};
use crate::membership::{
    EXPIRY_SWEEP, Gate, MAX_WAITING, MembershipCounters, RefusalKind, Refused,
};

/// How long shutdown waits for connections to close cleanly before dropping the swarm anyway.
/// A clean close tells peers at once that we are gone; without it they wait for their QUIC idle
/// timeout.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The behaviours of a node.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// Peers revoked by the fleet's list in force: their connections are refused at the
    /// handshake (first, so no other behaviour sees them).
    pub(super) revoked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) stream: super::streams::Streams,
}

/// What a [`super::NetHandle`] asks of the driver.
pub(super) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    IsConnected {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Revocations {
        signed: Box<proto::membership::SignedRevocations>,
        reply: oneshot::Sender<Result<Vec<PeerId>, String>>,
    },
    Certificate {
        certificate: Box<proto::membership::MembershipCert>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Fleet membership, when the node takes part in a fleet's mesh ([`crate::membership`]).
pub(super) struct Members {
    pub(super) gate: Gate,
    /// Introductions peers open to us.
    pub(super) incoming: mpsc::Receiver<(PeerId, Stream)>,
    pub(super) control: super::streams::Control,
    pub(super) counters: Arc<MembershipCounters>,
    heard: mpsc::UnboundedSender<Heard>,
    hearing: mpsc::UnboundedReceiver<Heard>,
    /// Peers connected but not admitted yet.
    waiting: HashMap<PeerId, Waiting>,
    /// Introductions read before the driver heard of their connection (a connection's streams
    /// reach the node on their own path, and may overtake the swarm's event for it): taken up
    /// when the connection is, dropped at the introduction's deadline.
    early: HashMap<PeerId, Heard>,
}

impl Members {
    pub(super) fn new(
        gate: Gate,
        incoming: mpsc::Receiver<(PeerId, Stream)>,
        control: super::streams::Control,
        counters: Arc<MembershipCounters>,
    ) -> Self {
        let (heard, hearing) = mpsc::unbounded_channel();
        Self {
            gate,
            incoming,
            control,
            counters,
            heard,
            hearing,
            waiting: HashMap::new(),
            early: HashMap::new(),
        }
    }
}

/// A peer connected and not admitted yet.
struct Waiting {
    /// Since when.
    since: std::time::Instant,
    /// The address of its first connection, for the [`NetEvent::PeerConnected`] to come.
    addr: Multiaddr,
    /// Dials that reached it, answered once it is admitted or refused.
    dials: Vec<PendingDial>,
    /// Whether we introduced ourselves (on a connection we dialled).
    introduced: bool,
}

/// What the membership side of the driver has next.
enum FromMembers {
    /// A peer opened an introduction.
    Introduction(PeerId, Stream),
    /// An introduction task reports.
    Heard(Heard),
}

/// The next thing from the membership side, when the node has members at all.
async fn next_from_members(members: &mut Option<Members>) -> FromMembers {
    let Some(members) = members else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some((peer, stream)) = members.incoming.recv() => FromMembers::Introduction(peer, stream),
        Some(heard) = members.hearing.recv() => FromMembers::Heard(heard),
        else => std::future::pending().await,
    }
}

/// A dial a handle is waiting on.
struct PendingDial {
    addr: Multiaddr,
    reply: oneshot::Sender<Result<PeerId, NetError>>,
}

pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    /// Streams of the node's protocol peers open to us.
    incoming: mpsc::Receiver<(PeerId, Stream)>,
    streams: mpsc::Sender<(PeerId, Stream)>,
    /// Our listen addresses, each with `/p2p/<own id>`.
    listen_addrs: Vec<Multiaddr>,
    /// Handles waiting for the first listen address.
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    /// Listeners not closed yet; when none is left, nobody should wait for an address.
    open_listeners: usize,
    pending_dials: HashMap<ConnectionId, PendingDial>,
    mdns_auto_dial: bool,
    dropped_events: u64,
    members: Option<Members>,
    /// Where streams dropped on a full queue are counted.
    transport: super::TransportCounters,
}

impl Driver {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<NetEvent>,
        incoming: mpsc::Receiver<(PeerId, Stream)>,
        streams: mpsc::Sender<(PeerId, Stream)>,
        open_listeners: usize,
        mdns_auto_dial: bool,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            incoming,
            streams,
            listen_addrs: Vec::new(),
            listen_waiters: Vec::new(),
            open_listeners,
            pending_dials: HashMap::new(),
            mdns_auto_dial,
            dropped_events: 0,
            members: None,
            transport: super::TransportCounters::default(),
        }
    }

    /// Counts the streams it drops on a full queue in `transport`, the node's transport counters.
    pub(super) fn counting_in(mut self, transport: super::TransportCounters) -> Self {
        self.transport = transport;
        self
    }

    /// The driver of a node in a fleet's mesh: peers are admitted by `members`' gate.
    pub(super) fn with_members(mut self, members: Option<Members>) -> Self {
        self.members = members;
        self.refuse_revoked_at_handshake();
        self
    }

    pub(super) async fn run(mut self) {
        tracing::debug!("network task started");
        let mut sweep = tokio::time::interval(EXPIRY_SWEEP);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can use the node any more.
                    None => {
                        self.shutdown().await;
                        break;
                    }
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((peer, stream)) = self.incoming.recv() => self.on_incoming_stream(peer, stream),
                from = next_from_members(&mut self.members) => match from {
                    FromMembers::Introduction(peer, stream) => {
                        if let Some(members) = &self.members {
                            introduce::hear(peer, stream, members.heard.clone());
                        }
                    }
                    FromMembers::Heard(heard) => self.on_heard(heard),
                },
                _ = sweep.tick() => self.sweep_expired(),
            }
        }
        tracing::debug!("network task stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(reply) => {
                if self.listen_addrs.is_empty() && self.open_listeners > 0 {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::Dial { addr, reply } => self.dial(addr, reply),
            Command::IsConnected { peer, reply } => {
                let _ = reply.send(self.is_usable(&peer));
            }
            Command::ConnectedPeers(reply) => {
                let mut peers: Vec<PeerId> = self
                    .swarm
                    .connected_peers()
                    .filter(|peer| self.is_admitted(peer))
                    .copied()
                    .collect();
                peers.sort_unstable();
                let _ = reply.send(peers);
            }
            Command::Revocations { signed, reply } => {
                let _ = reply.send(self.update_revocations(&signed));
            }
            Command::Certificate { certificate, reply } => {
                let renewed = match self.members.as_mut() {
                    Some(members) => members
                        .gate
                        .renew(&certificate, crate::clock::unix_now())
                        .map_err(|error| error.to_string()),
                    None => Err("this node runs an open mesh: it holds no fleet membership".into()),
                };
                let _ = reply.send(renewed);
            }
            // Handled in `run`, which must leave its loop.
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, NetError>>) {
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Some(peer),
            _ => None,
        };
        let _span = peer.map(|peer| tracing::debug_span!("peer", %peer).entered());
        if let Some(peer) = peer {
            if peer == *self.swarm.local_peer_id() {
                let _ = reply.send(Err(NetError::Dial {
                    addr,
                    reason: "the address names this node's own peer id".to_owned(),
                }));
                return;
            }
            if self.is_usable(&peer) {
                let _ = reply.send(Ok(peer));
                return;
            }
            if let Some(waiting) = self
                .members
                .as_mut()
                .and_then(|members| members.waiting.get_mut(&peer))
            {
                waiting.dials.push(PendingDial { addr, reply });
                return;
            }
        }
        let opts = match peer {
            // `Always`: the caller asked for this address explicitly, so a dial already running
            // to the same peer (say, from mDNS, possibly to a stale address) must not swallow it.
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                tracing::debug!(%addr, "dialling");
                self.pending_dials
                    .insert(connection, PendingDial { addr, reply });
            }
            Err(error) => {
                let reason = error_chain(&error);
                tracing::debug!(%addr, %reason, "dial refused");
                let _ = reply.send(Err(NetError::Dial { addr, reason }));
            }
        }
    }

    fn on_incoming_stream(&mut self, peer: PeerId, stream: Stream) {
        if !self.is_admitted(&peer) {
            // Dropping the stream resets it: a peer not admitted gets nothing, not even an
            // answer.
            if let Some(members) = &self.members {
                members
                    .counters
                    .streams_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::debug!(%peer, "inbound stream refused: the peer is not admitted");
            return;
        }
        match self.streams.try_send((peer, stream)) {
            Ok(()) => {}
            // Dropping the stream resets it, so the opener gets an error instead of silence.
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Counted (`depotmesh_quic_streams_dropped_total`) rather than logged at warn: a
                // peer opening streams by the thousand must not flood the log.
                self.transport.stream_dropped();
                tracing::debug!(%peer, "inbound stream refused: application is not accepting");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(%peer, "inbound stream refused: nobody accepts streams");
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            event @ (SwarmEvent::NewListenAddr { .. }
            | SwarmEvent::ExpiredListenAddr { .. }
            | SwarmEvent::ListenerClosed { .. }
            | SwarmEvent::ListenerError { .. }) => self.on_listen_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let _span = tracing::info_span!("peer", peer = %peer_id).entered();
                let addr = endpoint.get_remote_address().clone();
                tracing::debug!(%addr, %num_established, "connection established");
                let pending = self.pending_dials.remove(&connection_id);
                if self.await_introduction(peer_id, &addr, endpoint.is_dialer(), pending) {
                    return;
                }
                if num_established.get() == 1 {
                    tracing::info!(%addr, "peer connected");
                    self.emit(NetEvent::PeerConnected {
                        peer: peer_id,
                        addr,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                let _span = tracing::info_span!("peer", peer = %peer_id).entered();
                let reason = cause.map(|cause| error_chain(&cause));
                tracing::debug!(?reason, %num_established, "connection closed");
                if num_established == 0 && self.forget(peer_id) {
                    tracing::info!(?reason, "peer disconnected");
                    self.emit(NetEvent::PeerDisconnected {
                        peer: peer_id,
                        reason,
                    });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let _span = peer_id.map(|peer| tracing::info_span!("peer", %peer).entered());
                let reason = error_chain(&error);
                tracing::info!(%reason, "dial failed");
                if let Some(pending) = self.pending_dials.remove(&connection_id) {
                    let _ = pending.reply.send(Err(NetError::Dial {
                        addr: pending.addr,
                        reason: reason.clone(),
                    }));
                }
                self.emit(NetEvent::DialFailed {
                    peer: peer_id,
                    error: reason,
                });
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                if let libp2p::swarm::ListenError::Denied { cause } = &error
                    && let Some(blocked) = cause.downcast_ref::<allow_block_list::Blocked>()
                    && let Some(members) = &self.members
                {
                    members.counters.count_refusal(RefusalKind::Revoked);
                    tracing::info!(from = %send_back_addr, %blocked, "revoked peer refused at the handshake");
                    return;
                }
                tracing::debug!(from = %send_back_addr, error = %error_chain(&error), "inbound connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// What the listeners did: the addresses this node listens on, and whoever waits for them.
    fn on_listen_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = self.full_listen_addr(address);
                tracing::info!(addr = %full, "listening");
                if !self.listen_addrs.contains(&full) {
                    self.listen_addrs.push(full.clone());
                }
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(self.listen_addrs.clone());
                }
                self.emit(NetEvent::ListenAddr(full));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(addr = %address, "listen address expired");
                let full = self.full_listen_addr(address);
                self.listen_addrs.retain(|known| *known != full);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                match reason {
                    Ok(()) => tracing::info!(?addresses, "listener closed"),
                    Err(error) => tracing::warn!(?addresses, %error, "listener failed"),
                }
                let gone: Vec<Multiaddr> = addresses
                    .into_iter()
                    .map(|address| self.full_listen_addr(address))
                    .collect();
                self.listen_addrs.retain(|known| !gone.contains(known));
                self.open_listeners = self.open_listeners.saturating_sub(1);
                if self.open_listeners == 0 {
                    for waiter in self.listen_waiters.drain(..) {
                        let _ = waiter.send(self.listen_addrs.clone());
                    }
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error_chain(&error), "listener error");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let _span = tracing::info_span!("peer", peer = %peer_id).entered();
                tracing::debug!(agent = %info.agent_version, protocol = %info.protocol_version, "identified");
                self.emit(NetEvent::Identified {
                    peer: peer_id,
                    agent: info.agent_version,
                    listen_addrs: info.listen_addrs,
                });
            }
            BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. }) => {
                let _span = tracing::info_span!("peer", peer = %peer_id).entered();
                tracing::debug!(error = %error_chain(&error), "identify failed");
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => self.on_discovered(found),
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    tracing::debug!(%peer, %addr, "mDNS record expired");
                }
            }
            BehaviourEvent::Ping(ping::Event { peer, result, .. }) => match result {
                Ok(rtt) => tracing::trace!(%peer, ?rtt, "ping"),
                Err(failure) => tracing::debug!(%peer, %failure, "ping failed"),
            },
            BehaviourEvent::Stream(never) => match never {},
        }
    }

    fn on_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        // BTreeMap: peers are reported (and dialled) in a reproducible order.
        let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in found {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            let _span = tracing::info_span!("peer", %peer).entered();
            tracing::info!(?addrs, "discovered by mDNS");
            if self.mdns_auto_dial && !self.swarm.is_connected(&peer) {
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs.clone())
                    // Both ends discover each other at about the same time; one connection
                    // attempt per peer at a time is enough.
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => tracing::debug!("dialling discovered peer"),
                    Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                    Err(error) => {
                        let reason = error_chain(&error);
                        tracing::info!(%reason, "dial of discovered peer refused");
                        self.emit(NetEvent::DialFailed {
                            peer: Some(peer),
                            error: reason,
                        });
                    }
                }
            }
            self.emit(NetEvent::PeerDiscovered { peer, addrs });
        }
    }

    /// Whether `peer` may use this node: every peer on an open mesh, admitted ones on a
    /// fleet's.
    fn is_admitted(&self, peer: &PeerId) -> bool {
        self.members
            .as_ref()
            .is_none_or(|members| members.gate.is_admitted(peer))
    }

    /// Whether `peer` is connected and admitted.
    fn is_usable(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer) && self.is_admitted(peer)
    }

    /// A connection to `peer` is up: on a fleet's mesh, unless the peer is admitted already,
    /// it waits for the introductions (ours when we dialled, and the deadline for theirs), and
    /// `dial`'s answer with it. Returns whether it waits.
    fn await_introduction(
        &mut self,
        peer: PeerId,
        addr: &Multiaddr,
        dialer: bool,
        dial: Option<PendingDial>,
    ) -> bool {
        let Some(members) = self.members.as_mut() else {
            if let Some(dial) = dial {
                let _ = dial.reply.send(Ok(peer));
            }
            return false;
        };
        if members.gate.is_admitted(&peer) {
            if let Some(dial) = dial {
                let _ = dial.reply.send(Ok(peer));
            }
            return true;
        }
        if !members.waiting.contains_key(&peer) && members.waiting.len() >= MAX_WAITING {
            let longest = members
                .waiting
                .iter()
                .min_by_key(|(_, waiting)| waiting.since)
                .map(|(peer, _)| *peer);
            if let Some(longest) = longest {
                let refused = members.gate.silent(
                    longest,
                    format!(
                        "{MAX_WAITING} peers were introducing themselves at once; it waited longest"
                    ),
                );
                self.refuse(refused);
            }
        }
        let Some(members) = self.members.as_mut() else {
            return false;
        };
        let waiting = members.waiting.entry(peer).or_insert_with(|| {
            introduce::deadline(peer, members.heard.clone());
            Waiting {
                since: std::time::Instant::now(),
                addr: addr.clone(),
                dials: Vec::new(),
                introduced: false,
            }
        });
        waiting.dials.extend(dial);
        if dialer && !waiting.introduced {
            waiting.introduced = true;
            let ours = members.gate.own_certificate().to_vec();
            introduce::introduce(&members.control, peer, ours, members.heard.clone());
        }
        if let Some(early) = members.early.remove(&peer) {
            self.on_heard(early);
        }
        true
    }

    fn on_heard(&mut self, heard: Heard) {
        let Some(members) = self.members.as_mut() else {
            return;
        };
        let now = crate::clock::unix_now();
        match heard {
            Heard::Introduced {
                peer,
                certificate,
                reply,
            } => {
                if members.gate.is_admitted(&peer) {
                    let _ = reply.send(Some(members.gate.own_certificate().to_vec()));
                    return;
                }
                if !members.waiting.contains_key(&peer) {
                    // Its connection not seen yet (or gone already): kept until it is, or until
                    // the introduction's deadline, one per peer and a bounded number in all.
                    if members.early.len() >= MAX_WAITING && !members.early.contains_key(&peer) {
                        let _ = reply.send(None);
                        return;
                    }
                    introduce::deadline(peer, members.heard.clone());
                    let early = Heard::Introduced {
                        peer,
                        certificate,
                        reply,
                    };
                    if let Some(Heard::Introduced { reply, .. }) = members.early.insert(peer, early)
                    {
                        let _ = reply.send(None);
                    }
                    return;
                }
                match members.gate.admit(peer, &certificate, now) {
                    Ok(_) => {
                        let _ = reply.send(Some(members.gate.own_certificate().to_vec()));
                        self.on_admitted(peer);
                    }
                    Err(refused) => {
                        let _ = reply.send(None);
                        self.refuse(refused);
                    }
                }
            }
            Heard::Answer { peer, result } => {
                if members.gate.is_admitted(&peer) || !members.waiting.contains_key(&peer) {
                    return;
                }
                match result {
                    Ok(certificate) => match members.gate.admit(peer, &certificate, now) {
                        Ok(_) => self.on_admitted(peer),
                        Err(refused) => self.refuse(refused),
                    },
                    Err(reason) => {
                        let refused = members.gate.silent(peer, reason);
                        self.refuse(refused);
                    }
                }
            }
            Heard::Deadline { peer } => {
                if !members.waiting.contains_key(&peer)
                    && let Some(Heard::Introduced { reply, .. }) = members.early.remove(&peer)
                {
                    // Its connection never showed.
                    let _ = reply.send(None);
                    return;
                }
                if members.gate.is_admitted(&peer) || !members.waiting.contains_key(&peer) {
                    return;
                }
                let reason = format!(
                    "introduced nothing within {:?}",
                    crate::membership::INTRODUCTION_TIMEOUT
                );
                let refused = members.gate.silent(peer, reason);
                self.refuse(refused);
            }
        }
    }

    /// `peer` is admitted: its dials are answered and the application hears of it.
    fn on_admitted(&mut self, peer: PeerId) {
        let Some(waiting) = self
            .members
            .as_mut()
            .and_then(|members| members.waiting.remove(&peer))
        else {
            return;
        };
        let _span = tracing::info_span!("peer", %peer).entered();
        for dial in waiting.dials {
            let _ = dial.reply.send(Ok(peer));
        }
        tracing::info!(addr = %waiting.addr, "peer connected and admitted");
        self.emit(NetEvent::PeerConnected {
            peer,
            addr: waiting.addr,
        });
    }

    /// `refused` is not admitted: its dials fail and its connections close.
    fn refuse(&mut self, refused: Refused) {
        let peer = refused.peer;
        let _span = tracing::info_span!("peer", %peer).entered();
        tracing::info!(kind = refused.kind.name(), reason = %refused.reason, "peer refused");
        if let Some(waiting) = self
            .members
            .as_mut()
            .and_then(|members| members.waiting.remove(&peer))
        {
            for dial in waiting.dials {
                let _ = dial.reply.send(Err(NetError::Dial {
                    addr: dial.addr,
                    reason: refused.to_string(),
                }));
            }
        }
        self.emit(NetEvent::PeerRefused {
            peer,
            reason: refused.to_string(),
        });
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// `peer`'s last connection closed; returns whether the application had heard of it.
    fn forget(&mut self, peer: PeerId) -> bool {
        let Some(members) = self.members.as_mut() else {
            return true;
        };
        if let Some(waiting) = members.waiting.remove(&peer) {
            for dial in waiting.dials {
                let _ = dial.reply.send(Err(NetError::Dial {
                    addr: dial.addr,
                    reason: "the connection closed before the peer was admitted".to_owned(),
                }));
            }
        }
        if let Some(Heard::Introduced { reply, .. }) = members.early.remove(&peer) {
            let _ = reply.send(None);
        }
        let admitted = members.gate.is_admitted(&peer);
        members.gate.forget(&peer);
        admitted
    }

    fn update_revocations(
        &mut self,
        signed: &proto::membership::SignedRevocations,
    ) -> Result<Vec<PeerId>, String> {
        let members = self
            .members
            .as_mut()
            .ok_or("this node runs an open mesh: it holds no fleet membership")?;
        let held = members.gate.revocations_version();
        let revoked = members
            .gate
            .update_revocations(signed)
            .map_err(|error| error.to_string())?;
        // The same list again (each refresh) changes nothing: up to 200,000 peer ids are
        // parsed only when it does.
        if members.gate.revocations_version() != held {
            self.refuse_revoked_at_handshake();
        }
        self.evict(&revoked, "revoked");
        Ok(revoked)
    }

    /// Makes the swarm's block list the gate's revoked peers: their connections are then refused
    /// before any stream, identify or ping (counted as revoked).
    fn refuse_revoked_at_handshake(&mut self) {
        let Some(members) = &self.members else {
            return;
        };
        let revoked = members.gate.revoked_peers();
        let blocks = &mut self.swarm.behaviour_mut().revoked;
        let pardoned: Vec<PeerId> = blocks
            .blocked_peers()
            .difference(&revoked)
            .copied()
            .collect();
        for peer in pardoned {
            blocks.unblock_peer(peer);
        }
        for peer in revoked {
            blocks.block_peer(peer);
        }
    }

    fn sweep_expired(&mut self) {
        let expired = match self.members.as_mut() {
            Some(members) => members.gate.expire(crate::clock::unix_now()),
            None => return,
        };
        self.evict(&expired, "its certificate expired");
    }

    /// Disconnects admitted peers the gate has just forgotten.
    fn evict(&mut self, peers: &[PeerId], why: &str) {
        for peer in peers {
            tracing::info!(%peer, why, "peer evicted");
            if self.swarm.disconnect_peer_id(*peer).is_ok() {
                self.emit(NetEvent::PeerDisconnected {
                    peer: *peer,
                    reason: Some(format!("evicted: {why}")),
                });
            }
        }
    }

    fn emit(&mut self, event: NetEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.dropped_events += 1;
                tracing::warn!(
                    ?event,
                    dropped = self.dropped_events,
                    "event receiver is full; event dropped"
                );
            }
            // The application does not want events; that is its choice.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes every connection and waits (briefly) until they are closed, so that peers learn at
    /// once that we are gone.
    async fn shutdown(&mut self) {
        tracing::debug!("shutting down");
        for pending in self.pending_dials.drain().map(|(_, pending)| pending) {
            let _ = pending.reply.send(Err(NetError::Shutdown));
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            // An error means the peer disconnected in the meantime: nothing left to close.
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("connections did not close in time; dropping them");
                    break;
                }
            }
        }
        self.listen_addrs.clear();
    }

    /// A listen address as handed out to the application: with `/p2p/<own id>`.
    fn full_listen_addr(&self, address: Multiaddr) -> Multiaddr {
        let local = *self.swarm.local_peer_id();
        // `with_p2p` fails only if the address names another peer, which a local listener
        // never does; keep the address as is rather than lose it.
        address.clone().with_p2p(local).unwrap_or(address)
    }
}
