//! The decisions around one [`Transfer`] that concern the swarm of peers rather than its
//! ranges: which peers are upstreams, when to ask an upstream who else holds the blob, which of
//! the neighbours it names to dial, when to dial a configured peer again ([`Redial`]), when the
//! run's byte allowance stops the fetch, and when a stall has lasted long enough to give up.
//!
//! A [`Swarm`] is sans-IO like the transfer it wraps: the node's fetch driver feeds
//! it `now` and [`SwarmEvent`]s and carries out the [`SwarmAction`]s it returns, in the same
//! loop as the transfer's:
//!
//! ```text
//! loop {
//!     while let Some(action) = swarm.poll_action(now) { carry it out }
//!     sleep until an event arrives or until swarm.poll_timeout()
//!     swarm.handle(now, event)   or   swarm.handle_timeout(now)
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::redial::Redial;
use super::{Action, Event, Failure, Transfer};

/// The agent string a depot cache reports through identify starts with this; a fetch treats
/// such a peer as an upstream (see [`Transfer::mark_upstream`]) however it was found.
pub const DEPOT_AGENT_PREFIX: &str = "depot-cache/";

/// An upstream that held groups back is asked who its yard is at most this often.
pub const NEIGHBOUR_ASK_GAP: Duration = Duration::from_millis(250);

/// A neighbour named by an upstream is dialled again no sooner than this.
pub const NEIGHBOUR_REDIAL: Duration = Duration::from_secs(10);

/// Whether identify's `agent` string names a depot cache: an upstream to the vehicles it
/// serves, and no member of any yard.
pub fn is_depot_agent(agent: &str) -> bool {
    agent.starts_with(DEPOT_AGENT_PREFIX)
}

/// When a [`Swarm`] gives up, and how often it looks around.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Give up when, for this long, nothing is in flight, no dial of a named peer is pending and
    /// no connected peer claims a group still missing ([`Transfer::is_stalled`]).
    pub stall_timeout: Duration,
    /// Stop once this many bytes arrived in this run (a metered link's allowance), unless they
    /// completed the blob. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// How often have-maps are refreshed ([`SwarmAction::RefreshHaves`]) and every connected
    /// upstream is asked again who holds the blob (vehicles arrive and leave).
    pub refresh: Duration,
}

/// Something the driver observed, for [`Swarm::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwarmEvent<P> {
    /// What the transfer takes (connections, have-maps, verified groups, request outcomes).
    /// A connection that was already reported, or a close of a peer not connected, is ignored.
    Transfer(Event<P>),
    /// A dial of the caller's configured address number `address` ended (the first one, or
    /// one [`SwarmAction::DialNamed`] asked for): `Some` with the peer when it connected.
    NamedDialled {
        /// The address's index in the caller's list.
        address: usize,
        /// The peer reached.
        peer: Option<P>,
    },
    /// `peer` said through identify that it runs `agent`.
    Identified {
        /// The peer.
        peer: P,
        /// Its agent string.
        agent: String,
    },
    /// An upstream answered who holds the blob, naming `named` (each with an address the driver
    /// can dial). `after_distrust` when this answers a report of a banned peer: the upstream
    /// then no longer holds groups back for that peer's claims.
    Neighbours {
        /// The upstream.
        from: P,
        /// The peers it named.
        named: Vec<P>,
        /// Whether this answers [`SwarmAction::ReportDistrust`].
        after_distrust: bool,
    },
}

impl<P> From<Event<P>> for SwarmEvent<P> {
    fn from(event: Event<P>) -> Self {
        Self::Transfer(event)
    }
}

/// Why a [`Swarm`] gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// Nothing could move for [`SwarmConfig::stall_timeout`].
    Stalled,
    /// The run's allowance ([`SwarmConfig::max_bytes`]) is spent.
    Allowance {
        /// Bytes received in this run.
        bytes: u64,
        /// The allowance.
        allowance: u64,
    },
}

/// What the driver must do, from [`Swarm::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwarmAction<P> {
    /// The transfer's action. After [`Action::Done`] nothing more comes.
    Transfer(Action<P>),
    /// Follow what `peer` says it holds (a have subscription), for the transfer's
    /// [`Event::HaveMap`].
    WatchHaves {
        /// The peer.
        peer: P,
    },
    /// Stop following `peer` and forget what it said (gone, or banned).
    ForgetHaves {
        /// The peer.
        peer: P,
    },
    /// Subscribe again to peers whose subscription failed, and ask those that cannot subscribe.
    RefreshHaves,
    /// Ask `upstream` who holds the blob; its answer is [`SwarmEvent::Neighbours`].
    AskNeighbours {
        /// The upstream.
        upstream: P,
    },
    /// Tell `upstream` that `peer` sent bad data, then ask it who holds the blob (the answer is
    /// [`SwarmEvent::Neighbours`] with `after_distrust`).
    ReportDistrust {
        /// The upstream.
        upstream: P,
        /// The banned peer.
        peer: P,
    },
    /// Dial `peer`, a neighbour an upstream named, at the address it gave.
    Dial {
        /// The peer.
        peer: P,
    },
    /// Dial the caller's configured address number `address` again (its peer went away, or
    /// the last dial failed); the outcome is [`SwarmEvent::NamedDialled`].
    DialNamed {
        /// The address's index in the caller's list.
        address: usize,
    },
    /// Stop the fetch, keeping what was verified. Nothing more comes.
    GiveUp(GiveUp),
}

/// The swarm around one transfer. See the [module docs](self).
#[derive(Debug)]
pub struct Swarm<P> {
    transfer: Transfer<P>,
    config: SwarmConfig,
    /// This node: never dialled.
    me: P,
    connected: BTreeSet<P>,
    /// Peers known to be upstreams (named by the caller, or depots by their agent); forgotten
    /// when they disconnect.
    upstreams: BTreeSet<P>,
    /// In the order they were banned.
    banned: Vec<P>,
    /// The caller's configured addresses: dialled again for as long as the fetch runs.
    redial: Redial<P>,
    /// Bytes of verified groups received in this run, duplicates included.
    bytes: u64,
    stalled_since: Option<Instant>,
    next_refresh: Instant,
    last_neighbour_ask: Option<Instant>,
    /// Neighbours dialled, with when.
    dialled: BTreeMap<P, Instant>,
    actions: VecDeque<SwarmAction<P>>,
    /// Decided on the last event; announced before anything else.
    spent: Option<GiveUp>,
    /// Gave up or done: nothing more to do.
    ended: bool,
}

impl<P: Clone + Ord + fmt::Debug> Swarm<P> {
    /// The swarm around `transfer`, for node `me`, with the first dials of the caller's
    /// `named_dials` configured addresses under way.
    pub fn new(
        transfer: Transfer<P>,
        config: SwarmConfig,
        me: P,
        named_dials: usize,
        now: Instant,
    ) -> Self {
        let next_refresh = now.checked_add(config.refresh).unwrap_or(now);
        Self {
            transfer,
            config,
            me,
            connected: BTreeSet::new(),
            upstreams: BTreeSet::new(),
            banned: Vec::new(),
            redial: Redial::new(named_dials),
            bytes: 0,
            stalled_since: None,
            next_refresh,
            last_neighbour_ask: None,
            dialled: BTreeMap::new(),
            actions: VecDeque::new(),
            spent: None,
            ended: false,
        }
    }

    /// The transfer.
    pub fn transfer(&self) -> &Transfer<P> {
        &self.transfer
    }

    /// Bytes of verified groups received in this run, duplicates included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Peers connected now.
    pub fn connected(&self) -> usize {
        self.connected.len()
    }

    /// Peers banned for bad data, in the order they were banned.
    pub fn banned(&self) -> &[P] {
        &self.banned
    }

    /// Whether `peer` is connected and not banned: worth asking what it holds.
    pub fn is_usable(&self, peer: &P) -> bool {
        self.connected.contains(peer) && !self.banned.contains(peer)
    }

    /// Whether `peer` is known to be an upstream.
    pub fn is_upstream(&self, peer: &P) -> bool {
        self.upstreams.contains(peer)
    }

    /// Takes in one event. Never panics, whatever the event.
    pub fn handle(&mut self, now: Instant, event: impl Into<SwarmEvent<P>>) {
        if self.ended {
            return;
        }
        match event.into() {
            SwarmEvent::Transfer(event) => self.on_transfer_event(now, event),
            SwarmEvent::NamedDialled { address, peer } => {
                let banned = peer.as_ref().is_some_and(|peer| self.banned.contains(peer));
                self.redial.dialled(now, address, peer.clone());
                if banned {
                    return;
                }
                if let Some(peer) = peer {
                    // Peers the caller named are the depot or an upstream cache: spare their
                    // uplink for what no neighbour has, and ask them who nearby holds the blob.
                    self.transfer.mark_upstream(peer.clone());
                    self.add_upstream(peer);
                }
            }
            SwarmEvent::Identified { peer, agent } => {
                // A depot found by mDNS is an upstream like one named by the caller.
                if is_depot_agent(&agent) && !self.upstreams.contains(&peer) {
                    self.transfer.mark_upstream(peer.clone());
                    self.add_upstream(peer);
                }
            }
            SwarmEvent::Neighbours {
                from,
                named,
                after_distrust,
            } => {
                if after_distrust {
                    self.transfer.release_held_back(&from);
                }
                self.dial_neighbours(now, named);
            }
        }
    }

    fn on_transfer_event(&mut self, now: Instant, event: Event<P>) {
        match &event {
            Event::PeerConnected { peer } => {
                if !self.connected.insert(peer.clone()) {
                    return;
                }
                self.redial.connected(peer);
                self.actions
                    .push_back(SwarmAction::WatchHaves { peer: peer.clone() });
            }
            Event::PeerClosed { peer } => {
                if !self.connected.remove(peer) {
                    return;
                }
                self.upstreams.remove(peer);
                if !self.banned.contains(peer) {
                    self.redial.closed(now, peer);
                }
                self.actions
                    .push_back(SwarmAction::ForgetHaves { peer: peer.clone() });
            }
            Event::GroupsVerified { bytes, .. } => {
                self.bytes = self.bytes.saturating_add(*bytes);
            }
            Event::RequestFailed {
                peer,
                failure: Failure::HeldBack,
                ..
            } => {
                // Held back for neighbours we may not know yet: ask who they are now rather
                // than at the next refresh.
                let due = self
                    .last_neighbour_ask
                    .is_none_or(|at| now.saturating_duration_since(at) >= NEIGHBOUR_ASK_GAP);
                if due {
                    self.last_neighbour_ask = Some(now);
                    self.actions.push_back(SwarmAction::AskNeighbours {
                        upstream: peer.clone(),
                    });
                }
            }
            _ => {}
        }
        let verified = matches!(event, Event::GroupsVerified { .. });
        self.transfer.handle(now, event);
        if verified {
            self.check_allowance();
        }
    }

    /// Requests in flight when the allowance is reached still land: the caller keeps a margin.
    fn check_allowance(&mut self) {
        if let Some(allowance) = self.config.max_bytes {
            if self.bytes >= allowance && !self.transfer.is_done() {
                self.spent = Some(GiveUp::Allowance {
                    bytes: self.bytes,
                    allowance,
                });
            }
        }
    }

    fn add_upstream(&mut self, peer: P) {
        if self.upstreams.insert(peer.clone()) {
            self.actions
                .push_back(SwarmAction::AskNeighbours { upstream: peer });
        }
    }

    /// Dials the peers an upstream named that are not connected, banned or this node, and were
    /// not dialled in the last [`NEIGHBOUR_REDIAL`].
    fn dial_neighbours(&mut self, now: Instant, named: Vec<P>) {
        for peer in named {
            let known =
                peer == self.me || self.connected.contains(&peer) || self.banned.contains(&peer);
            let recent = self
                .dialled
                .get(&peer)
                .is_some_and(|at| now.saturating_duration_since(*at) < NEIGHBOUR_REDIAL);
            if known || recent {
                continue;
            }
            self.dialled.insert(peer.clone(), now);
            self.actions.push_back(SwarmAction::Dial { peer });
        }
    }

    /// The next thing the driver must do; call until `None` after every
    /// [`handle`](Self::handle) and [`handle_timeout`](Self::handle_timeout).
    pub fn poll_action(&mut self, now: Instant) -> Option<SwarmAction<P>> {
        if self.ended {
            return None;
        }
        if let Some(give_up) = self.spent.take() {
            self.ended = true;
            return Some(SwarmAction::GiveUp(give_up));
        }
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if let Some(address) = self.redial.poll_dial(now) {
            return Some(SwarmAction::DialNamed { address });
        }
        match self.transfer.poll_action(now) {
            Some(Action::Ban { peer }) => {
                self.on_ban(&peer);
                Some(SwarmAction::Transfer(Action::Ban { peer }))
            }
            Some(Action::Done) => {
                self.ended = true;
                Some(SwarmAction::Transfer(Action::Done))
            }
            Some(action) => Some(SwarmAction::Transfer(action)),
            None => self.check_stall(now),
        }
    }

    fn on_ban(&mut self, peer: &P) {
        // An upstream may be holding groups back for this peer's claims: say so.
        for upstream in self.upstreams.intersection(&self.connected) {
            if upstream != peer {
                self.actions.push_back(SwarmAction::ReportDistrust {
                    upstream: upstream.clone(),
                    peer: peer.clone(),
                });
            }
        }
        self.banned.push(peer.clone());
        self.redial.abandon(peer);
        self.actions
            .push_back(SwarmAction::ForgetHaves { peer: peer.clone() });
    }

    /// Whether any peer could still help is the transfer's call (a benched or busy peer that
    /// holds missing groups is worth waiting for); how long to wait for help is the caller's.
    fn check_stall(&mut self, now: Instant) -> Option<SwarmAction<P>> {
        if !self.transfer.is_stalled() || self.redial.first_dials_pending() {
            self.stalled_since = None;
            return None;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.config.stall_timeout {
            return None;
        }
        self.ended = true;
        Some(SwarmAction::GiveUp(GiveUp::Stalled))
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let stall = self
            .stalled_since
            .and_then(|since| since.checked_add(self.config.stall_timeout));
        [
            self.transfer.poll_timeout(),
            stall,
            Some(self.next_refresh),
            self.redial.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Refreshes have-maps and asks the upstreams again when that is due, and lets the
    /// transfer's timers run.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if now >= self.next_refresh {
            self.next_refresh = now.checked_add(self.config.refresh).unwrap_or(now);
            self.actions.push_back(SwarmAction::RefreshHaves);
            // Vehicles arrive and leave: ask the upstreams again who is here.
            for upstream in self.upstreams.intersection(&self.connected) {
                self.actions.push_back(SwarmAction::AskNeighbours {
                    upstream: upstream.clone(),
                });
            }
        }
        if self.transfer.poll_timeout().is_some_and(|at| at <= now) {
            self.transfer.handle_timeout(now);
        }
    }
}
