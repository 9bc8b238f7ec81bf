//! The sans-IO transfer engine: which chunk groups of one blob to ask of which peer, and what to
//! do when peers are slow, refuse, vanish or lie.
//!
//! A [`Transfer`] owns the decisions for one blob and nothing else: no sockets, files, clock or
//! randomness. Its driver (the libp2p runtime, or `netsim`) reports what happened as [`Event`]s
//! and carries out the [`Action`]s it returns:
//!
//! ```text
//! loop {
//!     while let Some(action) = transfer.poll_action(now) { carry it out }
//!     sleep until an event arrives or until transfer.poll_timeout()
//!     transfer.handle(now, event)   or   transfer.handle_timeout(now)
//! }
//! ```
//!
//! Around a transfer, a [`Swarm`] makes the decisions that concern the peers rather than the
//! ranges (which peers are upstreams, whom to ask for neighbours and whom to dial, when the
//! allowance or a stall ends the fetch), in the same shape; the node's fetch driver runs the
//! swarm.
//!
//! # Trust
//! Events are the driver's own reports and are believed: `GroupsVerified` means the groups were
//! verified against the blob's root *and* stored. What peers say about themselves is not: a
//! have-map or a have-map's size is a claim, used only to decide whom to ask. Events that do not
//! fit the engine's state (unknown peers or requests, groups outside the blob, repeats) are
//! ignored and counted in [`TransferStats::ignored_events`]; none of them can make it panic.
//!
//! # Policy
//! - Every connected peer that is not banned or benched, has sent a have-map and has a free
//!   request slot gets work: [`TransferConfig::max_requests_total`] shared among the usable
//!   peers, at least one and at most [`TransferConfig::max_requests_per_peer`] each (fewer for
//!   an upstream while neighbours are in reach).
//! - The blob is cut into pieces of [`TransferConfig::groups_per_request`] aligned groups. A
//!   request is the missing groups of one piece that the peer claims and that no other request
//!   is fetching. The piece is the rarest one the peer can serve (fewest usable peers claim its
//!   groups); ties go to a hash of (seed, piece), so vehicles in one yard start apart.
//! - Endgame: once no usable peer can take a group that is not already in flight, an idle peer
//!   duplicates groups in flight elsewhere (each group at most twice, slowest request first); a
//!   request whose groups all arrived by another route is cancelled. Only requests out for
//!   [`TransferConfig::endgame_patience`], and for longer than requests of their size had been
//!   taking when they were sent ([`TransferConfig::endgame_slowness`]), are duplicated: a small
//!   blob (a delta of a few hundred KiB) is mostly in flight at once, and in a yard thirty
//!   neighbours share a vehicle's downlink so that every request takes seconds; copying
//!   requests that are about to finish only doubles what the senders send.
//! - A request with no progress for [`TransferConfig::request_timeout`] is cancelled and its peer
//!   struck; a peer with [`TransferConfig::max_timeouts_per_peer`] strikes is *benched*: not
//!   asked, and not counted as a source, for one request timeout per strike beyond the limit
//!   (at most [`MAX_BENCH_TIMEOUTS`]). A request it completes clears its strikes. Nobody is
//!   dropped for good for being slow: on a loaded yard everyone is slow now and then, and a
//!   peer that is the only source of some groups must be asked again.
//! - Peers that answer `Busy` are left alone for [`TransferConfig::busy_backoff`]; they, too, do
//!   not count as sources meanwhile.
//! - A peer that misbehaves (bad group, proof or size) is banned: one [`Action::Ban`], its
//!   requests forgotten, never asked again for this blob, whatever it sends later.
//! - Without a known size the engine first probes for it (see [`Transfer::new`]).
//!
//! # Cost
//! Each event marks the transfer for a scheduling pass at the next `poll_action`. Rarity is a
//! step function updated claim by claim ([`pieces::Coverage`]), never rebuilt. A peer with a
//! free slot that got nothing in a pass is *starved*: it is skipped until something happens that
//! could give it work (its claim grows; groups it claims are missing again; a peer's standing,
//! the size or the endgame changes). So most events (a batch of verified groups, a have-map
//! from a peer with nothing new) cost a walk over the peers, and the costly choice, a walk over
//! the open requests and the pieces one peer could serve, runs about once per request issued.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use proto::bao::{Layout, MAX_BLOB_SIZE};
use proto::wire::{MAX_GROUP, MAX_RANGES, MAX_REQUEST_GROUPS};
use proto::{BlobId, ChunkGroup, ChunkGroupRanges};

mod pieces;
mod redial;
#[cfg(test)]
mod sim;
mod swarm;
#[cfg(test)]
mod swarm_tests;
#[cfg(test)]
mod tests;

use pieces::{Coverage, piece_groups, piece_rank, start_piece, tie_break};
pub use redial::{REDIAL_FIRST, REDIAL_MAX, Redial, redial_backoff};
pub use swarm::{
    DEPOT_AGENT_PREFIX, GiveUp, NEIGHBOUR_ASK_GAP, NEIGHBOUR_REDIAL, Swarm, SwarmAction,
    SwarmConfig, SwarmEvent, is_depot_agent,
};

/// The longest bench, in request timeouts.
pub const MAX_BENCH_TIMEOUTS: u32 = 6;

/// Failed size probes after which a peer is not probed again until its have-map grows.
pub const MAX_PROBE_FAILURES: u32 = 3;

/// The layout every transfer uses: depotmesh stores and sends 16 KiB chunk groups.
const LAYOUT: Layout = Layout::MESH;

/// Names one request of a [`Transfer`]; unique within it, never reused. The driver sends it as
/// the wire request id and echoes it in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}", self.0)
    }
}

/// How a [`Transfer`] spreads its requests and when it gives up on a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// Requests in flight to one peer at most. Zero is taken as one.
    pub max_requests_per_peer: usize,
    /// Requests in flight in all, spread over the usable peers: each may have
    /// `ceil(max_requests_total / usable peers)` (between 1 and `max_requests_per_peer`). With a
    /// few peers each gets several, to fill the link; in a full yard each gets one, so the work a
    /// vehicle has queued at others stays a few seconds of its downlink and every uploader splits
    /// its uplink among fewer, faster streams. Zero is taken as one.
    pub max_requests_total: usize,
    /// Requests in flight to an upstream peer (see [`Transfer::mark_upstream`]) at most, while
    /// some usable neighbour is connected; never more than any peer's share (see
    /// `max_requests_total`). Zero is taken as one.
    pub max_requests_per_upstream: usize,
    /// Groups per piece, and so the most groups in one request while many peers share the
    /// slots. Zero is taken as one.
    pub groups_per_request: u64,
    /// Consecutive pieces one request may take at most. A request takes as many as keep the
    /// peer's share of `max_requests_total` pieces in flight: with one usable peer, which gets
    /// `max_requests_per_peer` slots, `max_requests_total / max_requests_per_peer` pieces each;
    /// with more peers, fewer, and one piece once the slots are all shared out. Fewer, longer
    /// requests cost a single source less CPU per byte (a stream and a hand-over each), while
    /// the bytes in flight stay what a full yard has. Zero is taken as one.
    pub max_pieces_per_request: u64,
    /// A request with no verified group for this long is cancelled and its peer struck.
    pub request_timeout: Duration,
    /// Strikes (timeouts in a row) after which a peer is benched. Zero is taken as one.
    pub max_timeouts_per_peer: u32,
    /// How long a peer that answered `Busy` is left alone.
    pub busy_backoff: Duration,
    /// Seeds the tie-break between equally rare pieces; give each vehicle its own.
    pub seed: u64,
    /// How long groups a peer held back ([`Failure::HeldBack`]) are not asked of it again.
    pub held_back_hold: Duration,
    /// How long a request is out, at least, before the endgame may ask another peer for its
    /// groups too. It waits longer where requests take longer ([`Self::endgame_slowness`]).
    pub endgame_patience: Duration,
    /// The endgame duplicates a request once it has been out this many times as long as a
    /// request of its size was taking when it was sent (a moving average over the requests
    /// completed so far), and at least [`Self::endgame_patience`]. 0: the patience alone.
    pub endgame_slowness: u32,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            max_requests_per_peer: 4,
            max_requests_total: 16,
            max_requests_per_upstream: 2,
            // 16 groups of 16 KiB: 256 KiB per request.
            groups_per_request: 16,
            // A sole source: 4 requests of 4 pieces (1 MiB) in flight.
            max_pieces_per_request: 4,
            request_timeout: Duration::from_secs(10),
            max_timeouts_per_peer: 3,
            busy_backoff: Duration::from_secs(1),
            seed: 0,
            // The depot's propagation grace (`node::seeding`): by then the groups are announced
            // by whoever got them, or the depot serves them again.
            held_back_hold: Duration::from_secs(3),
            // A piece (256 KiB) takes about 0.2 s at 10 Mbit/s: a request out for a second is
            // slow, and its duplicate likely finishes first.
            endgame_patience: Duration::from_secs(1),
            // In a yard thirty neighbours share a vehicle's downlink and a piece takes seconds;
            // one out for longer than usual is a straggler. On the 30-vehicle testbed 2 saved
            // more duplicates but let the tail drag ~10 s longer (docs/measurements.md).
            endgame_slowness: 1,
        }
    }
}

/// Something the driver observed, for [`Transfer::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<P> {
    /// A connection to `peer` is up; it may be asked once its have-map arrives.
    PeerConnected {
        /// The peer.
        peer: P,
    },
    /// The connection to `peer` is gone, with every stream on it. Its requests' groups are
    /// missing again; its have-map is forgotten (a reconnecting peer sends a new one).
    PeerClosed {
        /// The peer.
        peer: P,
    },
    /// `peer` claims to hold `groups` (replacing its earlier claim) and, if it says so, the
    /// blob's size. Only a hint: neither is trusted.
    HaveMap {
        /// The peer.
        peer: P,
        /// The size the peer claims.
        size: Option<u64>,
        /// The groups the peer claims.
        groups: ChunkGroupRanges,
    },
    /// Groups of `request` were verified against the blob's root and stored. May arrive several
    /// times per request as its stream goes on (all before its `RequestFinished`); each one
    /// counts as progress against the timeout. Recorded as held even when the request is no
    /// longer tracked (cancelled, or its peer banned): the groups are verified either way.
    GroupsVerified {
        /// The peer that sent them.
        peer: P,
        /// The request they answer.
        request: RequestId,
        /// The groups now held.
        groups: ChunkGroupRanges,
        /// Their bytes, for the statistics.
        bytes: u64,
    },
    /// A verified response covered the blob's last group, which proves the blob's size. Report
    /// it before the response's `RequestFinished`: a probe that finishes without it has failed.
    SizeProven {
        /// The size.
        size: u64,
    },
    /// The stream of `request` ended normally. Groups it did not deliver are missing again, and
    /// the peer's claim to them is dropped: it has shown it does not hold them.
    RequestFinished {
        /// The peer.
        peer: P,
        /// The request.
        request: RequestId,
    },
    /// `request` failed; the groups it did not deliver are missing again.
    RequestFailed {
        /// The peer.
        peer: P,
        /// The request.
        request: RequestId,
        /// Why.
        failure: Failure,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer sent a group, proof or size that failed verification. The peer is banned, even
    /// if the request is no longer tracked (say, cancelled): the bad data was real.
    Misbehaved {
        /// The groups that failed (`VerifyError::failed_groups`); empty when the failure names
        /// none, as for a false size.
        bad_groups: ChunkGroupRanges,
    },
    /// The peer answered `NotHeld` (or `NotFound`): its claim to the requested groups is dropped.
    NotHeld,
    /// The peer answered `Busy`: it is left alone for [`TransferConfig::busy_backoff`].
    Busy,
    /// The peer (a depot seeding its yard) left the requested groups to its other peers: it is
    /// not asked for them for [`TransferConfig::held_back_hold`], and is asked for others at
    /// once. Its claim stands: after the hold it may be asked again (the neighbour it counted on
    /// may have left).
    HeldBack,
    /// The stream broke. Not held against the peer.
    Lost,
}

/// What the driver must do, from [`Transfer::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `groups` of the blob under id `request` (a wire `RangeRequest`). `groups`
    /// holds at most [`MAX_RANGES`] ranges.
    Request {
        /// The peer.
        peer: P,
        /// The id to send and to echo in events.
        request: RequestId,
        /// The groups wanted.
        groups: ChunkGroupRanges,
    },
    /// Withdraw `request` (a wire `Cancel`) and stop reading its stream. Later events for it are
    /// ignored, except that verified groups are still recorded as held.
    Cancel {
        /// The peer.
        peer: P,
        /// The request.
        request: RequestId,
    },
    /// `peer` sent provably bad data for this blob: drop every stream of it for this blob and
    /// never serve it data it could have poisoned. Emitted once per peer.
    Ban {
        /// The peer.
        peer: P,
    },
    /// Every group of the blob is held and its size is known. Emitted once, after a `Cancel`
    /// for every request still open: nothing is in flight after it.
    Done,
}

/// What one peer did for this transfer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Bytes of verified groups it sent.
    pub bytes: u64,
    /// Verified groups it sent, including ones already held by then.
    pub groups: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Its timeouts.
    pub timeouts: u32,
    /// Times it was benched for timeouts.
    pub benched: u32,
    /// True once it is banned.
    pub banned: bool,
}

/// Counters of a [`Transfer`], for logs, metrics and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferStats<P> {
    /// Per peer that was ever heard of.
    pub peers: BTreeMap<P, PeerStats>,
    /// Requests sent, size probes and endgame duplicates included.
    pub requests: u64,
    /// Size probes sent.
    pub size_probes: u64,
    /// Endgame requests for groups already in flight elsewhere.
    pub duplicate_requests: u64,
    /// Verified groups that were already held when they arrived (the price of the endgame).
    pub redundant_groups: u64,
    /// Requests cancelled because their groups arrived by another route.
    pub cancelled: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests refused (`NotHeld` or `Busy`).
    pub refused: u64,
    /// Requests whose stream broke.
    pub lost: u64,
    /// Groups named in misbehaviour reports.
    pub bad_groups: u64,
    /// Peers banned.
    pub banned_peers: u64,
    /// Times a peer was benched for timeouts.
    pub benched: u64,
    /// Events that did not fit the engine's state and were ignored, entirely or in part.
    pub ignored_events: u64,
    /// When the transfer was created.
    pub started: Instant,
    /// When the last missing group was recorded.
    pub finished: Option<Instant>,
}

impl<P> TransferStats<P> {
    fn new(started: Instant) -> Self {
        Self {
            peers: BTreeMap::new(),
            requests: 0,
            size_probes: 0,
            duplicate_requests: 0,
            redundant_groups: 0,
            cancelled: 0,
            timeouts: 0,
            refused: 0,
            lost: 0,
            bad_groups: 0,
            banned_peers: 0,
            benched: 0,
            ignored_events: 0,
            started,
            finished: None,
        }
    }
}

/// Whether a peer may still be asked for this blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    Usable,
    /// Lied: not asked again, whatever it says.
    Banned,
}

#[derive(Debug)]
struct PeerState {
    connected: bool,
    standing: Standing,
    /// What it claims to hold, clipped to the blob; `None` until a have-map arrives.
    claim: Option<ChunkGroupRanges>,
    claimed_size: Option<u64>,
    /// Timeouts since its last completed request.
    strikes: u32,
    in_flight: usize,
    /// Set when it answered `Busy` or was benched.
    backoff: Option<Backoff>,
    probe_failures: u32,
    /// The groups this peer adds to the coverage now: its claim while it is connected, usable
    /// and not backing off (busy or benched), else nothing.
    counted: ChunkGroupRanges,
    /// Had a free slot and got no work in the last pass that considered it; skipped until woken.
    starved: bool,
    /// Groups it held back, each until when they are not asked of it.
    held_back: Vec<(Instant, ChunkGroupRanges)>,
}

/// What a [`Transfer::recount`] changed in the coverage.
#[derive(Clone, Copy, Debug, Default)]
struct Recount {
    added: bool,
    removed: bool,
}

/// Requests in flight a peer may have, from [`Transfer::slots`].
#[derive(Clone, Copy, Debug)]
struct Slots {
    per_peer: usize,
    per_upstream: usize,
    /// Pieces one fresh request may take.
    pieces_per_request: u64,
}

/// What one scheduling pass works from, computed once and kept up to date as it issues requests.
struct Pass {
    /// Groups neither held nor in flight.
    unassigned: ChunkGroupRanges,
    /// Groups some usable peer claims.
    support: ChunkGroupRanges,
    /// Groups some usable peer that is not upstream claims; computed when first needed.
    neighbour_support: Option<ChunkGroupRanges>,
}

impl Pass {
    /// The endgame: no usable peer can take a group that is neither held nor in flight.
    fn is_endgame(&self) -> bool {
        !self.unassigned.intersects(&self.support)
    }

    fn note_issued(&mut self, groups: &ChunkGroupRanges) {
        self.unassigned = self.unassigned.difference(groups);
    }
}

/// Every group of every piece that `groups` touches.
fn widen_to_pieces(groups: &ChunkGroupRanges, per_piece: u64) -> ChunkGroupRanges {
    groups
        .iter()
        .map(|range| {
            let start = range.start / per_piece * per_piece;
            let end = range.end.div_ceil(per_piece).saturating_mul(per_piece);
            start..end
        })
        .collect()
}

/// How long a busy peer is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backoff {
    Until(Instant),
    Indefinite,
}

impl PeerState {
    fn new() -> Self {
        Self {
            connected: false,
            standing: Standing::Usable,
            claim: None,
            claimed_size: None,
            strikes: 0,
            in_flight: 0,
            backoff: None,
            probe_failures: 0,
            counted: ChunkGroupRanges::empty(),
            starved: false,
            held_back: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct RequestState<P> {
    peer: P,
    /// The groups asked for (for a size probe before the size is known: the probe range).
    groups: ChunkGroupRanges,
    /// When it was sent or last delivered a group: the timeout counts from here.
    last_progress: Instant,
    /// When it was sent.
    issued: Instant,
    /// When the endgame may duplicate it ([`Transfer::patience_end`]); fixed when it is sent,
    /// so that a peer found with nothing to duplicate stays right until this instant passes.
    patience_end: Option<Instant>,
    /// Its endgame patience has run out (set by [`Transfer::handle_timeout`], so that
    /// [`Transfer::poll_timeout`] stops naming it).
    overdue: bool,
    probe: bool,
}

/// The transfer of one blob from many peers at once. See the [module docs](self).
///
/// `P` names a peer: a libp2p `PeerId` in the runtime, a small integer in tests and `netsim`.
/// Its `Ord` fixes the order in which peers are served, so equal inputs give equal actions.
#[derive(Debug)]
pub struct Transfer<P> {
    blob: BlobId,
    config: TransferConfig,
    size: Option<u64>,
    held: ChunkGroupRanges,
    peers: BTreeMap<P, PeerState>,
    /// Peers to spare: asked only for groups no neighbour claims (see [`Transfer::mark_upstream`]).
    upstream: std::collections::BTreeSet<P>,
    requests: BTreeMap<RequestId, RequestState<P>>,
    next_request: u64,
    actions: VecDeque<Action<P>>,
    /// Set by anything that may open new work; cleared by a scheduling pass.
    needs_schedule: bool,
    /// How many usable, connected peers claim each group.
    coverage: Coverage,
    /// The same, counting only peers that are not upstream.
    neighbour_coverage: Coverage,
    /// Whether the endgame had begun when last checked.
    endgame: bool,
    /// How long a group of a completed request took, smoothed over the requests completed so far
    /// (by 1/8 each): what the endgame's patience for new requests scales with.
    group_time: Option<Duration>,
    /// Set when something may have started (or ended) the endgame.
    check_endgame: bool,
    done_announced: bool,
    stats: TransferStats<P>,
}

impl<P: Clone + Ord + fmt::Debug> Transfer<P> {
    /// A transfer of `blob`, of which the groups in `held` are already verified and stored (they
    /// are never requested).
    ///
    /// `size` comes from signed metadata when known. When it is `None`, the first request is a
    /// *size probe* for groups `MAX_GROUP - 1 .. MAX_GROUP`, past the end of any blob, which a
    /// peer answers with the blob's last group and so proves the size; nothing else is requested
    /// until [`Event::SizeProven`]. A failed probe is sent again to another peer.
    pub fn new(
        blob: BlobId,
        size: Option<u64>,
        held: ChunkGroupRanges,
        config: TransferConfig,
        now: Instant,
    ) -> Self {
        let mut transfer = Self {
            blob,
            config,
            size: None,
            held: ChunkGroupRanges::empty(),
            peers: BTreeMap::new(),
            upstream: std::collections::BTreeSet::new(),
            requests: BTreeMap::new(),
            next_request: 0,
            actions: VecDeque::new(),
            needs_schedule: true,
            coverage: Coverage::default(),
            neighbour_coverage: Coverage::default(),
            endgame: false,
            group_time: None,
            check_endgame: true,
            done_announced: false,
            stats: TransferStats::new(now),
        };
        transfer.held = held.intersection(&ChunkGroupRanges::from(0..MAX_GROUP));
        if let Some(size) = size {
            transfer.set_size(size);
        }
        transfer.note_finished(now);
        transfer
    }

    /// The blob being fetched.
    pub fn blob(&self) -> BlobId {
        self.blob
    }

    /// The configuration.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// The groups verified and stored so far.
    pub fn held(&self) -> &ChunkGroupRanges {
        &self.held
    }

    /// The blob's size, once given or proven.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// True when the size is known and every group is held.
    pub fn is_done(&self) -> bool {
        // `held` is clipped to the blob's groups once the size is known, so it is complete
        // exactly when it is the one range of them all.
        self.group_count()
            .is_some_and(|count| count == 0 || self.held.boundaries() == [0, count])
    }

    /// The counters.
    pub fn stats(&self) -> &TransferStats<P> {
        &self.stats
    }

    /// Requests in flight, to all peers.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Marks `peer` as *upstream*: a source whose uplink is scarce and shared by many (the depot
    /// cache, serving a whole yard). It is asked only for groups that no connected, usable
    /// neighbour claims, so that each group crosses its uplink about once and the vehicles spread
    /// it among themselves (BitTorrent's super-seeding, decided by the downloader). With no
    /// neighbour in sight it is asked for everything; the endgame may use it like anyone.
    pub fn mark_upstream(&mut self, peer: P) {
        if !self.upstream.insert(peer.clone()) {
            return;
        }
        if let Some(state) = self.peers.get(&peer) {
            self.neighbour_coverage.remove(&state.counted);
        }
        self.wake_all();
        self.needs_schedule = true;
    }

    /// `peer` may now serve groups it held back ([`Failure::HeldBack`]): an upstream that was told
    /// a peer it deferred to is banned (see [`crate::seeding::Seeder::distrust`]). They are asked
    /// of it again at once rather than after [`TransferConfig::held_back_hold`].
    pub fn release_held_back(&mut self, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            if !state.held_back.is_empty() {
                state.held_back.clear();
                state.starved = false;
                self.needs_schedule = true;
            }
        }
    }

    /// True when the transfer is not done, nothing is in flight, and no connected peer that is
    /// not banned claims a group it lacks (or, before the size is known, no such peer is
    /// connected at all): it can only wait for new peers or new claims. A benched or busy peer
    /// that claims missing groups is a prospect, so waiting out its back-off is not a stall.
    /// The driver decides how long a stall may last before it gives up.
    pub fn is_stalled(&self) -> bool {
        if self.is_done() || !self.requests.is_empty() {
            return false;
        }
        let candidates = self
            .peers
            .values()
            .filter(|peer| peer.connected && peer.standing == Standing::Usable);
        match self.all_groups() {
            None => !candidates
                .into_iter()
                .any(|peer| peer.probe_failures < MAX_PROBE_FAILURES),
            Some(all) => {
                let missing = all.difference(&self.held);
                !candidates
                    .filter_map(|peer| peer.claim.as_ref())
                    .any(|claim| claim.intersects(&missing))
            }
        }
    }

    /// Takes in one event. Never panics, whatever the event.
    pub fn handle(&mut self, now: Instant, event: Event<P>) {
        self.needs_schedule = true;
        match event {
            Event::PeerConnected { peer } => self.on_connected(peer),
            Event::PeerClosed { peer } => self.on_closed(&peer),
            Event::HaveMap { peer, size, groups } => self.on_have_map(&peer, size, groups),
            Event::GroupsVerified {
                peer,
                request,
                groups,
                bytes,
            } => self.on_groups_verified(now, peer, request, &groups, bytes),
            Event::SizeProven { size } => self.on_size_proven(size),
            Event::RequestFinished { peer, request } => self.on_finished(now, &peer, request),
            Event::RequestFailed {
                peer,
                request,
                failure,
            } => self.on_failed(now, peer, request, failure),
        }
        self.note_finished(now);
    }

    /// The next thing the driver must do; call until `None` after every [`handle`](Self::handle)
    /// and [`handle_timeout`](Self::handle_timeout).
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<P>> {
        if self.actions.is_empty() && self.needs_schedule {
            self.needs_schedule = false;
            self.schedule(now);
        }
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let deadlines = self
            .requests
            .values()
            .filter_map(|request| self.deadline(request));
        let backoffs = self.peers.values().filter_map(|peer| match peer.backoff {
            Some(Backoff::Until(until)) => Some(until),
            _ => None,
        });
        let holds = self
            .peers
            .values()
            .flat_map(|peer| peer.held_back.iter().map(|(until, _)| *until));
        // In the endgame, when a request becomes a candidate for a duplicate by a peer that
        // waits for work.
        let waiting: Vec<&P> = if self.endgame {
            self.peers
                .iter()
                .filter(|(_, state)| state.starved && state.claim.is_some())
                .map(|(peer, _)| peer)
                .collect()
        } else {
            Vec::new()
        };
        let patience = self
            .requests
            .values()
            .filter(|request| !request.overdue && waiting.iter().any(|&p| *p != request.peer))
            .filter_map(|request| self.patience_end(request));
        deadlines.chain(backoffs).chain(holds).chain(patience).min()
    }

    /// Fails the requests whose time is up and ends the back-off of busy peers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.needs_schedule = true;
        let mut returned = false;
        for peer in self.peers.values_mut() {
            let before = peer.held_back.len();
            peer.held_back.retain(|(until, _)| *until > now);
            if peer.held_back.len() != before {
                // Groups it held back may be asked of it again.
                peer.starved = false;
            }
            if matches!(peer.backoff, Some(Backoff::Until(until)) if until <= now) {
                peer.backoff = None;
                returned = true;
            }
        }
        if returned {
            // Back as a source: rarity, the upstream's share and the endgame may all change.
            self.recount_all();
            self.wake_all();
        }
        let mut overdue = false;
        for request in self.requests.values_mut() {
            if !request.overdue && request.patience_end.is_some_and(|at| at <= now) {
                request.overdue = true;
                overdue = true;
            }
        }
        if overdue {
            // Idle peers may duplicate these now.
            self.wake_all();
        }
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, request)| self.deadline(request).is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(request) = self.remove_request(id) else {
                continue;
            };
            self.actions.push_back(Action::Cancel {
                peer: request.peer.clone(),
                request: id,
            });
            // A request whose groups all arrived (it merely never saw its stream end) is no
            // sign of a slow peer.
            if self.outstanding(&request).is_empty() {
                continue;
            }
            tracing::debug!(blob = %self.blob, peer = ?request.peer, %id, "request timed out");
            self.stats.timeouts += 1;
            if request.probe && self.size.is_none() {
                self.note_probe_failure(&request.peer);
            }
            self.strike(now, &request.peer);
        }
    }

    /// When `request` has been out for the endgame's patience (`None`: never).
    fn patience_end(&self, request: &RequestState<P>) -> Option<Instant> {
        request.patience_end
    }

    /// The endgame's patience with a request for `groups` sent now: at least
    /// [`TransferConfig::endgame_patience`], and [`TransferConfig::endgame_slowness`] times as
    /// long as a request of its size has been taking.
    fn patience_for(&self, groups: &ChunkGroupRanges) -> Duration {
        let count = u32::try_from(groups.group_count()).unwrap_or(u32::MAX);
        // Before any request completed, the patience alone; a product past `Duration`'s range
        // (a config for measuring) waits for ever.
        let usual = self.group_time.map_or(Duration::ZERO, |each| {
            each.checked_mul(count)
                .and_then(|took| took.checked_mul(self.config.endgame_slowness))
                .unwrap_or(Duration::MAX)
        });
        self.config.endgame_patience.max(usual)
    }

    /// Counts how long a completed `request` took per group, for the endgame's patience.
    fn note_request_time(&mut self, now: Instant, request: &RequestState<P>) {
        let groups = u32::try_from(request.groups.group_count().max(1)).unwrap_or(u32::MAX);
        let each = now.saturating_duration_since(request.issued) / groups;
        self.group_time = Some(match self.group_time {
            None => each,
            Some(before) => before.saturating_mul(7).saturating_add(each) / 8,
        });
    }

    fn deadline(&self, request: &RequestState<P>) -> Option<Instant> {
        // An overflowing deadline (a timeout of years) means "never".
        request
            .last_progress
            .checked_add(self.config.request_timeout)
    }

    fn group_count(&self) -> Option<u64> {
        self.size.map(|size| LAYOUT.group_count(size))
    }

    fn all_groups(&self) -> Option<ChunkGroupRanges> {
        self.group_count()
            .map(|count| ChunkGroupRanges::from(0..count))
    }

    /// Groups that may be named at all: the blob's, or any a blob can have while the size is
    /// unknown.
    fn group_limit(&self) -> ChunkGroupRanges {
        self.all_groups()
            .unwrap_or_else(|| ChunkGroupRanges::from(0..MAX_GROUP))
    }

    /// `groups` cut to [`Self::group_limit`]; a set within it (nearly every one) is returned
    /// as it is, without a merge.
    fn within_limit(&self, groups: ChunkGroupRanges) -> ChunkGroupRanges {
        if groups.end() <= self.group_count().unwrap_or(MAX_GROUP) {
            groups
        } else {
            groups.intersection(&self.group_limit())
        }
    }

    /// The groups of `request` still neither held nor past the end of the blob.
    fn outstanding(&self, request: &RequestState<P>) -> ChunkGroupRanges {
        request
            .groups
            .difference(&self.held)
            .intersection(&self.group_limit())
    }

    fn set_size(&mut self, size: u64) {
        self.size = Some(size);
        let all = LAYOUT.all_groups(size);
        self.held = self.held.intersection(&all);
        for peer in self.peers.values_mut() {
            if let Some(claim) = &mut peer.claim {
                *claim = claim.intersection(&all);
            }
        }
        self.recount_all();
        self.wake_all();
        // The probe was answered with the last group: from now on it is a request for that
        // group, so the usual rules (progress, cancel, timeout) apply to it.
        let last = all.end().saturating_sub(1);
        for request in self.requests.values_mut() {
            request.groups = if request.probe {
                ChunkGroupRanges::from(last..last + 1)
            } else {
                request.groups.intersection(&all)
            };
        }
    }

    fn peer_stats(&mut self, peer: &P) -> &mut PeerStats {
        self.stats.peers.entry(peer.clone()).or_default()
    }

    fn on_connected(&mut self, peer: P) {
        let state = self
            .peers
            .entry(peer.clone())
            .or_insert_with(PeerState::new);
        if state.connected {
            self.stats.ignored_events += 1;
            return;
        }
        state.connected = true;
        self.peer_stats(&peer);
    }

    fn on_closed(&mut self, peer: &P) {
        let Some(state) = self.peers.get_mut(peer).filter(|state| state.connected) else {
            self.stats.ignored_events += 1;
            return;
        };
        state.connected = false;
        state.claim = None;
        state.claimed_size = None;
        state.backoff = None;
        state.starved = false;
        self.recount(peer);
        self.wake_all();
        // The streams died with the connection: nothing to cancel, and the peer's groups are
        // missing again by dropping its requests.
        self.forget_requests_of(peer);
    }

    fn on_have_map(&mut self, peer: &P, size: Option<u64>, groups: ChunkGroupRanges) {
        let claim = self.within_limit(groups);
        let Some(state) = self.peers.get_mut(peer) else {
            self.stats.ignored_events += 1;
            return;
        };
        if !state.connected || state.standing == Standing::Banned {
            self.stats.ignored_events += 1;
            return;
        }
        state.claim = Some(claim);
        state.claimed_size = size.filter(|&size| size <= MAX_BLOB_SIZE);
        // New groups may give this peer work; fewer groups may give anyone work (the
        // upstream, or the endgame).
        let change = self.recount(peer);
        if change.added {
            // New claims are news: it may answer a probe now.
            if let Some(state) = self.peers.get_mut(peer) {
                state.probe_failures = 0;
            }
        }
        match change {
            Recount { removed: true, .. } => self.wake_all(),
            Recount { added: true, .. } => self.wake(peer),
            Recount { .. } => {}
        }
    }

    fn on_groups_verified(
        &mut self,
        now: Instant,
        peer: P,
        id: RequestId,
        groups: &ChunkGroupRanges,
        bytes: u64,
    ) {
        let valid = groups.intersection(&self.group_limit());
        let mut fits = valid == *groups;
        self.stats.redundant_groups += valid.intersection(&self.held).group_count();
        let arrived = valid.difference(&self.held);
        // Groups that no request of this peer was fetching were unassigned: their arrival may
        // leave nothing unassigned, which starts the endgame.
        let carried = self
            .requests
            .get(&id)
            .is_some_and(|request| request.peer == peer && arrived.is_subset(&request.groups));
        if !carried {
            self.check_endgame = true;
        }
        // Believed even for an unknown or cancelled request: the driver says these groups are
        // verified and stored, and asking for them again would only waste a peer's time.
        for range in valid.iter() {
            self.held.insert(range);
        }
        if self.peers.contains_key(&peer) {
            let stats = self.peer_stats(&peer);
            stats.bytes = stats.bytes.saturating_add(bytes);
            stats.groups += valid.group_count();
        }
        match self.requests.get_mut(&id) {
            Some(request) if request.peer == peer => request.last_progress = now,
            _ => fits = false,
        }
        if !fits {
            self.stats.ignored_events += 1;
        }
        self.cancel_overtaken(id, &arrived);
    }

    /// Cancels every request but `carrier` that `arrived` completed: its groups came by another
    /// route. `carrier` is left to end its stream, and so is a request that completed by its own
    /// stream earlier: both are about to finish anyway.
    fn cancel_overtaken(&mut self, carrier: RequestId, arrived: &ChunkGroupRanges) {
        if arrived.is_empty() {
            return;
        }
        let (first, end) = (arrived.boundaries()[0], arrived.end());
        let overtaken: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|&(&id, request)| {
                // Most requests lie outside the arrived span: rule them out without set
                // arithmetic.
                let span = request.groups.boundaries();
                id != carrier
                    && span.first().is_some_and(|&start| start < end)
                    && request.groups.end() > first
                    && request.groups.intersects(arrived)
                    && self.outstanding(request).is_empty()
            })
            .map(|(&id, _)| id)
            .collect();
        for id in overtaken {
            if let Some(request) = self.remove_request(id) {
                self.stats.cancelled += 1;
                self.actions.push_back(Action::Cancel {
                    peer: request.peer,
                    request: id,
                });
            }
        }
    }

    fn on_size_proven(&mut self, size: u64) {
        match self.size {
            None if size <= MAX_BLOB_SIZE => self.set_size(size),
            Some(known) if known == size => {}
            // The driver checks responses against the known size, so a different proven size
            // (or one no blob can have) is a driver bug; the signed size stands.
            _ => self.stats.ignored_events += 1,
        }
    }

    /// Takes `id` out of the books if it is `peer`'s; counts the event as ignored otherwise.
    fn take_request_of(&mut self, peer: &P, id: RequestId) -> Option<RequestState<P>> {
        if self.requests.get(&id).is_some_and(|r| r.peer == *peer) {
            self.remove_request(id)
        } else {
            self.stats.ignored_events += 1;
            None
        }
    }

    fn on_finished(&mut self, now: Instant, peer: &P, id: RequestId) {
        let Some(request) = self.take_request_of(peer, id) else {
            return;
        };
        if request.probe && self.size.is_none() {
            self.note_probe_failure(peer);
            return;
        }
        let undelivered = self.outstanding(&request);
        if undelivered.is_empty() {
            // A completed request shows the peer is not stuck.
            if let Some(state) = self.peers.get_mut(peer) {
                state.strikes = 0;
            }
            self.note_request_time(now, &request);
        }
        self.drop_claim(peer, &undelivered);
    }

    fn on_failed(&mut self, now: Instant, peer: P, id: RequestId, failure: Failure) {
        if let Failure::Misbehaved { bad_groups } = &failure {
            self.stats.bad_groups += bad_groups.group_count();
            // A misbehaviour report convicts the peer even if the request is no longer
            // tracked (say, cancelled): the bad data was real. A request of another peer
            // under this id is a driver mix-up, and convicts no one.
            if self.requests.get(&id).is_some_and(|r| r.peer != peer) {
                self.stats.ignored_events += 1;
            } else {
                self.ban(peer);
            }
            return;
        }
        let Some(request) = self.take_request_of(&peer, id) else {
            return;
        };
        let probing = request.probe && self.size.is_none();
        if probing {
            self.note_probe_failure(&peer);
        }
        match failure {
            Failure::Misbehaved { .. } => {}
            Failure::NotHeld => {
                self.stats.refused += 1;
                if !probing {
                    let undelivered = self.outstanding(&request);
                    self.drop_claim(&peer, &undelivered);
                }
            }
            Failure::Busy => {
                self.stats.refused += 1;
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.backoff = Some(match now.checked_add(self.config.busy_backoff) {
                        Some(until) => Backoff::Until(until),
                        // A back-off too long to represent lasts until the peer reconnects.
                        None => Backoff::Indefinite,
                    });
                    self.recount(&peer);
                    self.wake_all();
                }
            }
            Failure::HeldBack => {
                self.stats.refused += 1;
                let undelivered = self.outstanding(&request);
                if let Some(state) = self.peers.get_mut(&peer) {
                    let until = now.checked_add(self.config.held_back_hold).unwrap_or(now);
                    state.held_back.push((until, undelivered));
                    // Other groups it may serve at once.
                    state.starved = false;
                }
            }
            Failure::Lost => self.stats.lost += 1,
        }
    }

    fn note_probe_failure(&mut self, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.probe_failures = state.probe_failures.saturating_add(1);
        }
    }

    /// The peer showed it does not hold `groups`: stop asking it for them until it says again.
    fn drop_claim(&mut self, peer: &P, groups: &ChunkGroupRanges) {
        if groups.is_empty() {
            return;
        }
        if let Some(claim) = self.peers.get_mut(peer).and_then(|s| s.claim.as_mut()) {
            *claim = claim.difference(groups);
        }
        // Fewer claimants may mean work for the upstream, or the endgame: the caller has woken
        // every claimant of these groups already; the endgame is checked at the next pass.
        self.recount(peer);
        self.check_endgame = true;
    }

    fn ban(&mut self, peer: P) {
        let state = self
            .peers
            .entry(peer.clone())
            .or_insert_with(PeerState::new);
        if state.standing == Standing::Banned {
            return;
        }
        tracing::info!(blob = %self.blob, ?peer, "peer banned: sent data that failed verification");
        state.standing = Standing::Banned;
        state.claim = None;
        self.recount(&peer);
        self.wake_all();
        self.forget_requests_of(&peer);
        self.stats.banned_peers += 1;
        self.peer_stats(&peer).banned = true;
        self.actions.push_back(Action::Ban { peer });
    }

    fn strike(&mut self, now: Instant, peer: &P) {
        let limit = self.config.max_timeouts_per_peer.max(1);
        let timeout = self.config.request_timeout;
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.strikes = state.strikes.saturating_add(1);
        let strikes = state.strikes;
        let bench = strikes >= limit && state.standing == Standing::Usable;
        if bench {
            let turns = (strikes - limit + 1).min(MAX_BENCH_TIMEOUTS);
            let until = timeout
                .checked_mul(turns)
                .and_then(|length| now.checked_add(length));
            // A bench too long to represent lasts until the peer reconnects.
            state.backoff = Some(until.map_or(Backoff::Indefinite, Backoff::Until));
            tracing::debug!(blob = %self.blob, ?peer, strikes, "peer benched for timeouts");
        }
        let stats = self.peer_stats(peer);
        stats.timeouts = stats.timeouts.saturating_add(1);
        if bench {
            stats.benched = stats.benched.saturating_add(1);
            self.stats.benched += 1;
            self.recount(peer);
            self.wake_all();
        }
    }

    fn remove_request(&mut self, id: RequestId) -> Option<RequestState<P>> {
        let request = self.requests.remove(&id)?;
        if let Some(state) = self.peers.get_mut(&request.peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        let missing = self.outstanding(&request);
        self.wake_claimants(&missing);
        Some(request)
    }

    fn forget_requests_of(&mut self, peer: &P) {
        let mut missing = ChunkGroupRanges::empty();
        let mut forgotten = Vec::new();
        for (&id, request) in &self.requests {
            if request.peer == *peer {
                missing = missing.union(&self.outstanding(request));
                forgotten.push(id);
            }
        }
        for id in forgotten {
            self.requests.remove(&id);
        }
        if let Some(state) = self.peers.get_mut(peer) {
            state.in_flight = 0;
        }
        self.wake_claimants(&missing);
    }

    /// Brings the coverage in line with `peer`'s claim, connection and standing; call after
    /// changing any of them.
    fn recount(&mut self, peer: &P) -> Recount {
        let neighbour = !self.upstream.contains(peer);
        let Some(state) = self.peers.get_mut(peer) else {
            return Recount::default();
        };
        let counts =
            state.connected && state.standing == Standing::Usable && state.backoff.is_none();
        let target = match &state.claim {
            Some(claim) if counts => claim.clone(),
            _ => ChunkGroupRanges::empty(),
        };
        if target == state.counted {
            return Recount::default();
        }
        let added = target.difference(&state.counted);
        let removed = state.counted.difference(&target);
        state.counted = target;
        self.coverage.add(&added);
        self.coverage.remove(&removed);
        if neighbour {
            self.neighbour_coverage.add(&added);
            self.neighbour_coverage.remove(&removed);
        }
        Recount {
            added: !added.is_empty(),
            removed: !removed.is_empty(),
        }
    }

    fn recount_all(&mut self) {
        let peers: Vec<P> = self.peers.keys().cloned().collect();
        for peer in &peers {
            self.recount(peer);
        }
    }

    /// `peer` may have work: consider it at the next pass.
    fn wake(&mut self, peer: &P) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.starved = false;
        }
    }

    /// Anyone may have work: consider every peer at the next pass.
    fn wake_all(&mut self) {
        for state in self.peers.values_mut() {
            state.starved = false;
        }
        self.check_endgame = true;
    }

    /// `groups` are missing again: every peer that claims some of them may have work.
    fn wake_claimants(&mut self, groups: &ChunkGroupRanges) {
        if groups.is_empty() {
            return;
        }
        for state in self.peers.values_mut() {
            if state
                .claim
                .as_ref()
                .is_some_and(|claim| claim.intersects(groups))
            {
                state.starved = false;
            }
        }
        self.check_endgame = true;
    }

    fn note_finished(&mut self, now: Instant) {
        if self.stats.finished.is_none() && self.is_done() {
            self.stats.finished = Some(now);
        }
    }

    /// May `peer` get a new request now, with `slots` from [`Self::slots`]?
    fn has_free_slot(&self, peer: &P, state: &PeerState, now: Instant, slots: Slots) -> bool {
        let limit = if self.upstream.contains(peer) {
            slots.per_upstream
        } else {
            slots.per_peer
        };
        state.connected
            && state.standing == Standing::Usable
            && state.in_flight < limit
            && match state.backoff {
                None => true,
                Some(Backoff::Until(until)) => now >= until,
                Some(Backoff::Indefinite) => false,
            }
    }

    /// How many requests a peer may have in flight now: the total shared out among the usable
    /// peers, and fewer for an upstream while neighbours are in reach, so that the pieces it
    /// sends complete (and spread) sooner and vehicles that pick pieces at the same moment
    /// collide on fewer of them. One walk over the peers; a pass computes it once.
    fn slots(&self) -> Slots {
        let mut usable = 0usize;
        let mut neighbours = false;
        for (peer, state) in &self.peers {
            if state.connected && state.standing == Standing::Usable {
                usable += 1;
                neighbours |= !self.upstream.contains(peer);
            }
        }
        let per_peer = self
            .config
            .max_requests_total
            .max(1)
            .div_ceil(usable.max(1))
            .clamp(1, self.config.max_requests_per_peer.max(1));
        let per_upstream = if neighbours {
            self.config.max_requests_per_upstream.clamp(1, per_peer)
        } else {
            per_peer
        };
        // Both at least one: the share of the total each usable peer's slots leave.
        let shared = usable.max(1).saturating_mul(per_peer);
        let pieces_per_request = u64::try_from(self.config.max_requests_total.max(1) / shared)
            .unwrap_or(u64::MAX)
            .clamp(1, self.config.max_pieces_per_request.max(1));
        Slots {
            per_peer,
            per_upstream,
            pieces_per_request,
        }
    }

    fn schedule(&mut self, now: Instant) {
        if self.is_done() {
            if !self.done_announced {
                self.done_announced = true;
                // Whatever is still open holds nothing new; closing it here means the driver
                // may drop the transfer as soon as it sees `Done`.
                let open: Vec<RequestId> = self.requests.keys().copied().collect();
                for id in open {
                    if let Some(request) = self.remove_request(id) {
                        self.actions.push_back(Action::Cancel {
                            peer: request.peer,
                            request: id,
                        });
                    }
                }
                self.actions.push_back(Action::Done);
            }
            return;
        }
        let Some(all) = self.all_groups() else {
            self.schedule_probe(now);
            return;
        };
        // Most passes (one per event) find no peer with both a free slot and a reason to look:
        // only then is the pass's state built.
        let slots = self.slots();
        let wants_work = |(peer, state): (&P, &PeerState)| {
            state.claim.is_some() && !state.starved && self.has_free_slot(peer, state, now, slots)
        };
        if !self.check_endgame && !self.peers.iter().any(wants_work) {
            return;
        }
        let mut pass = self.pass(&all);
        self.check_endgame = false;
        if pass.is_endgame() != self.endgame {
            self.endgame = !self.endgame;
            if self.endgame {
                self.wake_all();
                self.check_endgame = false;
            }
        }
        // Round-robin, one request per peer per round, so that the first peers in key order do
        // not take every piece before the others get one.
        loop {
            let ready: Vec<P> = self
                .peers
                .iter()
                .filter(|(peer, state)| {
                    state.claim.is_some()
                        && !state.starved
                        && self.has_free_slot(peer, state, now, slots)
                })
                .map(|(peer, _)| peer.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            let mut issued = false;
            for peer in ready {
                match self.choose(now, &peer, &mut pass, slots) {
                    Some((groups, duplicate)) => {
                        pass.note_issued(&groups);
                        self.issue(now, peer, groups, false, duplicate);
                        issued = true;
                    }
                    None => {
                        if let Some(state) = self.peers.get_mut(&peer) {
                            state.starved = true;
                        }
                    }
                }
            }
            // Taking the last unassigned groups starts the endgame, which may give work to
            // peers this pass found starved.
            if !self.endgame && pass.is_endgame() {
                self.endgame = true;
                self.wake_all();
                self.check_endgame = false;
            } else if !issued {
                break;
            }
        }
        #[cfg(test)]
        self.check_starved(now, &all);
    }

    /// The state a scheduling pass starts from.
    fn pass(&self, all: &ChunkGroupRanges) -> Pass {
        // Every group some request asks for. What a request still lacks is its groups less the
        // held ones, which the unassigned leave out anyway: one collection of the requests'
        // ranges instead of a difference with the held groups per request.
        let in_flight: ChunkGroupRanges = self
            .requests
            .values()
            .flat_map(|request| request.groups.iter())
            .collect();
        let unassigned = all.difference(&self.held).difference(&in_flight);
        Pass {
            unassigned,
            support: self.coverage.support(),
            neighbour_support: None,
        }
    }

    /// Tests only: every peer skipped as starved would indeed get nothing now, and the endgame
    /// flag is true.
    #[cfg(test)]
    fn check_starved(&self, now: Instant, all: &ChunkGroupRanges) {
        let mut pass = self.pass(all);
        let slots = self.slots();
        assert_eq!(self.endgame, pass.is_endgame(), "stale endgame flag");
        for (peer, state) in &self.peers {
            if state.starved && state.claim.is_some() && self.has_free_slot(peer, state, now, slots)
            {
                assert_eq!(
                    self.choose(now, peer, &mut pass, slots),
                    None,
                    "peer {peer:?} was skipped as starved but has work"
                );
            }
        }
    }

    /// The groups to ask `peer` for next, and whether they are an endgame duplicate.
    fn choose(
        &self,
        now: Instant,
        peer: &P,
        pass: &mut Pass,
        slots: Slots,
    ) -> Option<(ChunkGroupRanges, bool)> {
        let state = self.peers.get(peer)?;
        let mut claim = state.claim.clone()?;
        for (_, held_back) in &state.held_back {
            claim = claim.difference(held_back);
        }
        let claim = &claim;
        let mut mine = claim.intersection(&pass.unassigned);
        let mut spare_upstream = false;
        if self.upstream.contains(peer) {
            let from_neighbours = pass
                .neighbour_support
                .get_or_insert_with(|| self.neighbour_coverage.support());
            mine = mine.difference(from_neighbours);
            // No endgame duplicates from the scarce uplink while neighbours can serve: slow
            // neighbours are timed out and benched instead.
            spare_upstream = !from_neighbours.is_empty();
            // Prefer pieces no neighbour has begun: the rest of a begun piece is most likely on
            // its way to that neighbour from the upstream already.
            let per_piece = self.config.groups_per_request.max(1);
            let begun = widen_to_pieces(from_neighbours, per_piece);
            let fresh = mine.difference(&begun);
            if !fresh.is_empty() {
                mine = fresh;
            }
        }
        if !mine.is_empty() {
            let groups = self.rarest_piece(&mine, &self.coverage);
            let groups = self.run_on(groups, &mine, slots.pieces_per_request);
            return (!groups.is_empty()).then_some((groups, false));
        }
        // Not the endgame while some usable peer could still take a fresh group: duplicates now
        // would only slow the pieces nobody has started.
        if spare_upstream || !pass.is_endgame() {
            return None;
        }
        self.endgame_groups(now, peer, claim)
            .filter(|groups| !groups.is_empty())
            .map(|groups| (groups, true))
    }

    /// Of the pieces touched by `candidates`, the one fewest usable peers can serve; ties go to
    /// the first in this transfer's order, which runs from a piece its seed picks to the end of
    /// the blob and on from the start ([`piece_rank`]). Returns that piece's groups in
    /// `candidates`.
    ///
    /// The search visits each stretch of `candidates` over which the number of claiming peers is
    /// constant once, not each piece: within a stretch the first piece in order is the only one
    /// that can win. So one choice costs the number of stretches, which stays small whatever the
    /// blob's size, and the groups fetched from one source stay in long runs (every set of
    /// groups the engine keeps stays a few ranges, not thousands).
    fn rarest_piece(&self, candidates: &ChunkGroupRanges, coverage: &Coverage) -> ChunkGroupRanges {
        let per_piece = self.config.groups_per_request.max(1);
        let pieces = self
            .group_count()
            .unwrap_or(MAX_GROUP)
            .div_ceil(per_piece)
            .max(1);
        let origin = start_piece(self.config.seed, pieces);
        // (peers claiming the piece's rarest candidate group, rank, piece)
        let mut best: Option<(u32, u64, u64)> = None;
        for range in candidates.iter() {
            for (stretch, _) in coverage.stretches(range.start..range.end) {
                let first = stretch.start / per_piece;
                let last = (stretch.end - 1) / per_piece;
                let piece = if (first..=last).contains(&origin) {
                    origin
                } else {
                    first
                };
                let rank = piece_rank(origin, piece, pieces);
                let count = candidates
                    .clipped(piece_groups(piece, per_piece))
                    .map(|groups| coverage.min_count(groups))
                    .min()
                    .unwrap_or(u32::MAX);
                let key = (count, rank, piece);
                if best.is_none_or(|current| key < current) {
                    best = Some(key);
                }
            }
        }
        let Some((_, _, piece)) = best else {
            return ChunkGroupRanges::empty();
        };
        candidates
            .clipped(piece_groups(piece, per_piece))
            .take(MAX_RANGES)
            .collect()
    }

    /// `groups` (of one piece) and the groups of `mine` in up to `pieces - 1` pieces after it, as
    /// long as they carry on the run without a gap (one request stays one stretch of the blob)
    /// and a server answers them all ([`MAX_REQUEST_GROUPS`]).
    fn run_on(
        &self,
        groups: ChunkGroupRanges,
        mine: &ChunkGroupRanges,
        pieces: u64,
    ) -> ChunkGroupRanges {
        let per_piece = self.config.groups_per_request.max(1);
        let Some(first) = groups.iter().next().map(|range| range.start / per_piece) else {
            return groups;
        };
        let mut run = groups;
        for piece in first.saturating_add(1)..first.saturating_add(pieces) {
            let more = mine.within(piece_groups(piece, per_piece));
            if more.iter().next().map(|range| range.start) != Some(run.end())
                || run.group_count().saturating_add(more.group_count()) > MAX_REQUEST_GROUPS
            {
                break;
            }
            run = run.union(&more);
        }
        run.first_ranges(MAX_RANGES)
    }

    /// Endgame work for `peer`: groups it claims that one other request is fetching, from the
    /// request that has gone longest without progress.
    fn endgame_groups(
        &self,
        now: Instant,
        peer: &P,
        claim: &ChunkGroupRanges,
    ) -> Option<ChunkGroupRanges> {
        let mut seen = ChunkGroupRanges::empty();
        let mut twice = ChunkGroupRanges::empty();
        let mut own = ChunkGroupRanges::empty();
        for request in self.requests.values() {
            let outstanding = self.outstanding(request);
            twice = twice.union(&seen.intersection(&outstanding));
            seen = seen.union(&outstanding);
            if request.peer == *peer {
                own = own.union(&outstanding);
            }
        }
        let per_piece = self.config.groups_per_request.max(1);
        let mut order: Vec<(Instant, u64, RequestId)> = self
            .requests
            .iter()
            .filter(|(_, request)| {
                request.peer != *peer && self.patience_end(request).is_some_and(|at| at <= now)
            })
            .map(|(&id, request)| {
                let piece = request.groups.iter().next().map_or(0, |r| r.start) / per_piece;
                (
                    request.last_progress,
                    tie_break(self.config.seed, piece),
                    id,
                )
            })
            .collect();
        order.sort_unstable();
        order.into_iter().find_map(|(_, _, id)| {
            let request = self.requests.get(&id)?;
            let groups = self
                .outstanding(request)
                .intersection(claim)
                .difference(&twice)
                .difference(&own);
            (!groups.is_empty()).then(|| groups.first_ranges(MAX_RANGES))
        })
    }

    fn schedule_probe(&mut self, now: Instant) {
        if self.requests.values().any(|request| request.probe) {
            return;
        }
        // Prefer peers that have not failed a probe, then peers whose claim includes the last
        // group of the size they claim (they can likely answer), then any have-map at all.
        let slots = self.slots();
        let target = self
            .peers
            .iter()
            .filter(|(peer, state)| {
                state.probe_failures < MAX_PROBE_FAILURES
                    && self.has_free_slot(peer, state, now, slots)
            })
            .min_by_key(|(peer, state)| {
                let rank = match (&state.claim, state.claimed_size) {
                    (Some(claim), Some(size)) => {
                        let last = LAYOUT.group_count(size) - 1;
                        if claim.contains(ChunkGroup(last)) {
                            0
                        } else {
                            1
                        }
                    }
                    (Some(_), None) => 1,
                    (None, _) => 2,
                };
                (state.probe_failures, rank, (*peer).clone())
            })
            .map(|(peer, _)| peer.clone());
        if let Some(peer) = target {
            self.stats.size_probes += 1;
            let probe = ChunkGroupRanges::from(MAX_GROUP - 1..MAX_GROUP);
            self.issue(now, peer, probe, true, false);
        }
    }

    fn issue(
        &mut self,
        now: Instant,
        peer: P,
        groups: ChunkGroupRanges,
        probe: bool,
        duplicate: bool,
    ) {
        if groups.is_empty() {
            return;
        }
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight += 1;
        }
        self.stats.requests += 1;
        if duplicate {
            self.stats.duplicate_requests += 1;
        }
        self.peer_stats(&peer).requests += 1;
        let patience = self.patience_for(&groups);
        tracing::trace!(blob = %self.blob, ?peer, %id, %groups, probe, duplicate, "request");
        self.requests.insert(
            id,
            RequestState {
                peer: peer.clone(),
                groups: groups.clone(),
                last_progress: now,
                issued: now,
                patience_end: now.checked_add(patience),
                overdue: false,
                probe,
            },
        );
        self.actions.push_back(Action::Request {
            peer,
            request: id,
            groups,
        });
    }
}
