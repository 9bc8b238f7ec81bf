//! The fetch driver: fetches one blob from every reachable peer at once. It makes no decisions
//! of its own: it reports what the network did to the sans-IO [`Swarm`] (and the [`Transfer`]
//! inside it) and carries out their actions, each in a task of its own ([`tasks`]); what peers
//! say they hold comes from have subscriptions ([`haves`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use proto::wire::ErrorCode;
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::{
    Action, Event, Failure, GiveUp, RequestId, Swarm, SwarmAction, SwarmConfig, SwarmEvent,
    Transfer, TransferConfig,
};
use crate::net::{NetEvent, NetEvents, NetHandle};
use crate::protocol::{ExchangeError, FetchProgress};
use crate::ratelimit::RateLimit;
use crate::storage::{Index, Storage};
use crate::store::{BlobStore, LAYOUT, StoreError};

mod haves;
mod tasks;

use haves::Haves;
use tasks::{TaskMessage, ask_upstream, neighbours_in, spawn_dial, spawn_fetch};

/// How to fetch one blob.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The blob.
    pub blob: BlobId,
    /// Its size when known from signed metadata; otherwise it is probed and proven.
    pub size: Option<u64>,
    /// Peers to dial (with `/p2p/…`), besides those already connected or found by mDNS. Each is
    /// dialled again, with a back-off, whenever its connection closes or a dial of it fails, for
    /// as long as the fetch runs ([`crate::engine::Redial`]).
    pub peers: Vec<Multiaddr>,
    /// The engine's settings.
    pub transfer: TransferConfig,
    /// How often a peer whose have subscription failed is subscribed again, and a peer that
    /// cannot subscribe (an older version) is asked again what it holds.
    pub have_refresh: Duration,
    /// Give up when, for this long, nothing is in flight and no connected peer claims a group
    /// still missing ([`Transfer::is_stalled`]).
    pub stall_timeout: Duration,
    /// The largest size a peer may claim for a blob of unknown size.
    pub size_limit: u64,
    /// Paces every stream of the fetch: one bucket for all of them, and for every fetch that
    /// shares it (a depot's backhaul limit, a vehicle's download limit); `None`: as fast as it
    /// goes.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// Stop once this many bytes arrived in this run (a metered link's allowance): the fetch
    /// ends with [`FetchError::Allowance`], keeping what it verified. Requests in flight when
    /// it is reached still land, so a caller holds back `max_pieces_per_request` ×
    /// `groups_per_request` × `max_requests_total` × 16 KiB of margin. `None`: no limit.
    pub max_bytes: Option<u64>,
}

impl FetchOptions {
    /// Defaults for `blob`.
    pub fn new(blob: BlobId) -> Self {
        Self {
            blob,
            size: None,
            peers: Vec::new(),
            transfer: TransferConfig::default(),
            have_refresh: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(20),
            size_limit: proto::bao::MAX_BLOB_SIZE,
            rate_limit: None,
            max_bytes: None,
        }
    }
}

/// What a fetch did.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchReport {
    /// The blob.
    pub blob: BlobId,
    /// Its size.
    pub size: u64,
    /// Groups already held when the fetch started (a resumed fetch).
    pub resumed_groups: u64,
    /// Bytes of verified groups received in this run, duplicates included.
    pub bytes_fetched: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Verified bytes per peer.
    pub bytes_per_peer: BTreeMap<PeerId, u64>,
    /// Chunk groups that failed verification.
    pub bad_chunk_groups: u64,
    /// Peers banned for bad data.
    pub banned_peers: Vec<PeerId>,
    /// What happened to the requests: the engine's counters.
    pub requests: RequestCounts,
}

/// How a fetch's requests went, for the summary and for tuning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Requests sent (size probes and endgame duplicates included).
    pub sent: u64,
    /// Endgame duplicates among them.
    pub duplicates: u64,
    /// Refused by the peer (`NotHeld`, `Busy`).
    pub refused: u64,
    /// Timed out (no verified group for the request timeout).
    pub timeouts: u64,
    /// Whose stream broke.
    pub lost: u64,
    /// Cancelled because their groups came by another route.
    pub cancelled: u64,
    /// Verified groups that were already held on arrival.
    pub redundant_groups: u64,
    /// Times a peer was benched for timeouts.
    pub benched: u64,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No peer could be reached or held the blob, and nothing moved for the stall timeout.
    #[error("no progress on blob {blob} for {seconds} s: {why}")]
    Stalled {
        /// The blob.
        blob: BlobId,
        /// How long nothing moved.
        seconds: u64,
        /// What the peers said.
        why: String,
    },
    /// The run's byte allowance ([`FetchOptions::max_bytes`]) is spent; what arrived is kept.
    #[error(
        "stopped fetching blob {blob} after {bytes} bytes: the allowance of {allowance} bytes for this link is spent"
    )]
    Allowance {
        /// The blob.
        blob: BlobId,
        /// Bytes received in this run.
        bytes: u64,
        /// The allowance.
        allowance: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Progress of a fetch, for a progress bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Groups held.
    pub held_groups: u64,
    /// Groups in the blob, once the size is known.
    pub total_groups: Option<u64>,
    /// Bytes received in this run.
    pub bytes: u64,
    /// Peers connected.
    pub peers: usize,
}

/// Fetches `options.blob` into `store` from every reachable peer at once, until it is complete.
/// Interrupting it (dropping the future, killing the process) loses at most the groups in
/// flight: the store keeps every verified group, and the next fetch resumes from them.
pub async fn fetch<S: Storage, I: Index>(
    net: &NetHandle,
    events: &mut NetEvents,
    store: Arc<BlobStore<S, I>>,
    options: FetchOptions,
    mut on_progress: impl FnMut(&Progress),
) -> Result<FetchReport, FetchError> {
    let (sender, mut inbox) = mpsc::unbounded_channel::<TaskMessage>();
    let mut driver = Driver::start(net, store, options, sender)?;
    for peer in net.connected_peers().await {
        driver
            .swarm
            .handle(Instant::now(), Event::PeerConnected { peer });
    }
    loop {
        while let Some(action) = driver.swarm.poll_action(Instant::now()) {
            if let Some(end) = driver.carry_out(action) {
                return end;
            }
        }
        let wake = driver.swarm.poll_timeout().map_or_else(
            || tokio::time::Instant::now() + driver.options.have_refresh,
            tokio::time::Instant::from_std,
        );
        tokio::select! {
            message = inbox.recv() => {
                if let Some(message) = message {
                    driver.on_message(message, &mut on_progress);
                }
            }
            event = events.recv() => {
                if let Some(event) = event {
                    driver.on_net_event(event);
                }
            }
            () = tokio::time::sleep_until(wake) => driver.swarm.handle_timeout(Instant::now()),
        }
    }
}

/// One fetch in progress: the swarm that decides, and the tasks that carry out its actions.
struct Driver<'a, S: Storage, I: Index> {
    net: &'a NetHandle,
    store: Arc<BlobStore<S, I>>,
    options: FetchOptions,
    sender: mpsc::UnboundedSender<TaskMessage>,
    swarm: Swarm<PeerId>,
    fetches: BTreeMap<RequestId, (PeerId, JoinHandle<()>)>,
    haves: Haves,
    /// What each peer last said, for the stall message.
    said: BTreeMap<PeerId, String>,
    /// The last dial error of each configured address, by its index.
    dial_errors: BTreeMap<usize, String>,
    /// Where the neighbours the last upstream answer named listen.
    neighbour_addrs: BTreeMap<PeerId, Multiaddr>,
    started: Instant,
    resumed_groups: u64,
}

impl<'a, S: Storage, I: Index> Driver<'a, S, I> {
    /// Opens the blob in the store (at the signed size, when known), starts the swarm from what
    /// is held, and dials the peers the caller named.
    fn start(
        net: &'a NetHandle,
        store: Arc<BlobStore<S, I>>,
        options: FetchOptions,
        sender: mpsc::UnboundedSender<TaskMessage>,
    ) -> Result<Self, FetchError> {
        let blob = options.blob;
        let started = Instant::now();
        let mut info = store.info(&blob);
        if let (None, Some(size)) = (&info, options.size) {
            // A size from signed metadata: the blob is created at it, so every response is
            // checked against it and no size probe is needed. (A wrong size fails the first
            // verified group: a BLAKE3 root commits to the length.)
            info = Some(store.create_partial(blob, size)?);
        }
        let held = info.as_ref().map(|i| i.held.clone()).unwrap_or_default();
        let resumed_groups = held.group_count();
        let size = info.as_ref().map(|i| i.size).or(options.size);
        let mut config = options.transfer.clone();
        if config.seed == 0 {
            // Vehicles in one yard must not all start on the same pieces: with one seed they
            // would all ask the depot for the same groups first. This node's identity spreads
            // them.
            config.seed = seed_from(&net.peer_id());
        }
        let transfer = Transfer::new(blob, size, held, config, started);
        let swarm_config = SwarmConfig {
            stall_timeout: options.stall_timeout,
            max_bytes: options.max_bytes,
            refresh: options.have_refresh,
        };
        let swarm = Swarm::new(
            transfer,
            swarm_config,
            net.peer_id(),
            options.peers.len(),
            started,
        );
        for (index, addr) in options.peers.iter().enumerate() {
            spawn_dial(net, &sender, addr.clone(), Some(index));
        }
        Ok(Self {
            net,
            store,
            options,
            sender,
            swarm,
            fetches: BTreeMap::new(),
            haves: Haves::default(),
            said: BTreeMap::new(),
            dial_errors: BTreeMap::new(),
            neighbour_addrs: BTreeMap::new(),
            started,
            resumed_groups,
        })
    }

    /// Carries out one action; `Some` with the fetch's outcome when it ends the fetch.
    fn carry_out(
        &mut self,
        action: SwarmAction<PeerId>,
    ) -> Option<Result<FetchReport, FetchError>> {
        let blob = self.options.blob;
        match action {
            SwarmAction::Transfer(Action::Request {
                peer,
                request,
                groups,
            }) => {
                let task = spawn_fetch(
                    self.net,
                    &self.store,
                    &self.sender,
                    peer,
                    request,
                    blob,
                    groups,
                    self.options.size_limit,
                    self.options.rate_limit.clone(),
                );
                self.fetches.insert(request, (peer, task));
            }
            SwarmAction::Transfer(Action::Cancel { request, .. }) => {
                if let Some((_, task)) = self.fetches.remove(&request) {
                    // Dropping the stream resets it: the peer stops sending.
                    task.abort();
                }
            }
            SwarmAction::Transfer(Action::Ban { peer }) => {
                tracing::warn!(%peer, %blob, "peer sent bad data: banned for this blob");
                self.fetches.retain(|_, (owner, task)| {
                    let keep = *owner != peer;
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
            SwarmAction::Transfer(Action::Done) => return Some(self.finish()),
            SwarmAction::WatchHaves { peer } => {
                self.haves.subscribe(self.net, &self.sender, peer, blob);
            }
            SwarmAction::ForgetHaves { peer } => self.haves.forget(&peer),
            SwarmAction::RefreshHaves => {
                let swarm = &self.swarm;
                let usable = |peer: &PeerId| swarm.is_usable(peer);
                self.haves.refresh(self.net, &self.sender, usable, blob);
            }
            SwarmAction::AskNeighbours { upstream } => {
                ask_upstream(self.net, &self.sender, upstream, blob, None);
            }
            SwarmAction::ReportDistrust { upstream, peer } => {
                ask_upstream(self.net, &self.sender, upstream, blob, Some(peer));
            }
            SwarmAction::Dial { peer } => {
                if let Some(addr) = self.neighbour_addrs.get(&peer) {
                    let addr = addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer));
                    spawn_dial(self.net, &self.sender, addr, None);
                }
            }
            SwarmAction::DialNamed { address } => {
                if let Some(addr) = self.options.peers.get(address) {
                    tracing::debug!(%addr, "dialling a configured peer again");
                    spawn_dial(self.net, &self.sender, addr.clone(), Some(address));
                }
            }
            SwarmAction::GiveUp(give_up) => return Some(Err(self.give_up(give_up))),
        }
        None
    }

    /// Reports one task's news to the swarm.
    fn on_message(&mut self, message: TaskMessage, on_progress: &mut impl FnMut(&Progress)) {
        let now = Instant::now();
        match message {
            TaskMessage::Dialled {
                result,
                configured: Some(address),
            } => {
                let peer = result
                    .map_err(|error| {
                        tracing::warn!(%error, "dial failed");
                        self.dial_errors.insert(address, error);
                    })
                    .ok();
                if peer.is_some() {
                    self.dial_errors.remove(&address);
                }
                self.swarm
                    .handle(now, SwarmEvent::NamedDialled { address, peer });
            }
            TaskMessage::Dialled {
                result,
                configured: None,
            } => {
                if let Err(error) = result {
                    tracing::debug!(%error, "dialling a neighbour the depot named failed");
                }
            }
            TaskMessage::Peers {
                from,
                result,
                distrusted,
            } => self.on_neighbours(now, from, result, distrusted),
            TaskMessage::Have { peer, result } => {
                self.haves.polls.remove(&peer);
                match result {
                    Ok(have) => self.on_have(now, peer, have, true),
                    Err(error) => {
                        self.said.insert(peer, error.to_string());
                    }
                }
            }
            TaskMessage::HaveUpdate { peer, have, first } => self.on_have(now, peer, have, first),
            TaskMessage::HaveEnded { peer, result } => {
                self.haves.ended(peer, result, &mut self.said);
            }
            TaskMessage::Progress {
                peer,
                request,
                progress,
            } => match progress {
                FetchProgress::Groups { groups, bytes } => {
                    let verified = Event::GroupsVerified {
                        peer,
                        request,
                        groups,
                        bytes,
                    };
                    self.swarm.handle(now, verified);
                    let transfer = self.swarm.transfer();
                    on_progress(&Progress {
                        held_groups: transfer.held().group_count(),
                        total_groups: transfer.size().map(|s| LAYOUT.group_count(s)),
                        bytes: self.swarm.bytes(),
                        peers: self.swarm.connected(),
                    });
                }
                FetchProgress::SizeProven(size) => {
                    self.swarm.handle(now, Event::SizeProven { size });
                }
                // The fetch task runs the checkpoint itself.
                FetchProgress::Size(_) | FetchProgress::CheckpointDue => {}
            },
            TaskMessage::Finished {
                peer,
                request,
                result,
            } => self.on_finished(now, peer, request, result),
        }
    }

    fn on_neighbours(
        &mut self,
        now: Instant,
        from: PeerId,
        result: Result<proto::wire::Peers, ExchangeError>,
        distrusted: Option<PeerId>,
    ) {
        match result {
            Ok(answer) => {
                let named = neighbours_in(&answer);
                self.neighbour_addrs.clear();
                for (peer, addr) in &named {
                    self.neighbour_addrs
                        .entry(*peer)
                        .or_insert_with(|| addr.clone());
                }
                let event = SwarmEvent::Neighbours {
                    from,
                    named: named.into_iter().map(|(peer, _)| peer).collect(),
                    after_distrust: distrusted.is_some(),
                };
                self.swarm.handle(now, event);
            }
            // An upstream that keeps no tracker (an older one) answers BadRequest.
            Err(error) => match distrusted {
                Some(liar) => {
                    tracing::debug!(peer = %from, %liar, %error, "telling the upstream of a banned peer failed");
                }
                None => tracing::debug!(peer = %from, %error, "asking for neighbours failed"),
            },
        }
    }

    fn on_have(&mut self, now: Instant, peer: PeerId, have: proto::wire::Have, first: bool) {
        if let Some((size, groups)) = self.haves.update(peer, have, first) {
            self.said.insert(peer, claim_said(size, &groups));
            self.swarm
                .handle(now, Event::HaveMap { peer, size, groups });
        }
    }

    fn on_finished(
        &mut self,
        now: Instant,
        peer: PeerId,
        request: RequestId,
        result: Result<(), ExchangeError>,
    ) {
        self.fetches.remove(&request);
        let event = match result {
            Ok(()) => Event::RequestFinished { peer, request },
            Err(error) => {
                tracing::debug!(%peer, %request, %error, "request failed");
                if error.is_misbehaviour() {
                    self.said.insert(peer, format!("sent bad data: {error}"));
                } else if matches!(error, ExchangeError::Refused { .. }) {
                    self.said.insert(peer, error.to_string());
                }
                Event::RequestFailed {
                    peer,
                    request,
                    failure: failure_of(&error),
                }
            }
        };
        self.swarm.handle(now, event);
    }

    fn on_net_event(&mut self, event: NetEvent) {
        let now = Instant::now();
        match event {
            NetEvent::PeerConnected { peer, .. } => {
                self.swarm.handle(now, Event::PeerConnected { peer });
            }
            NetEvent::Identified { peer, agent, .. } => {
                self.swarm
                    .handle(now, SwarmEvent::Identified { peer, agent });
            }
            NetEvent::PeerDisconnected { peer, .. } => {
                self.swarm.handle(now, Event::PeerClosed { peer });
            }
            _ => {}
        }
    }

    /// Every group is held: stops what still runs and says what the fetch did.
    fn finish(&mut self) -> Result<FetchReport, FetchError> {
        self.stop_all();
        let blob = self.options.blob;
        let info = self.store.checkpoint(&blob)?;
        let stats = self.swarm.transfer().stats();
        Ok(FetchReport {
            blob,
            size: info.size,
            resumed_groups: self.resumed_groups,
            bytes_fetched: self.swarm.bytes(),
            seconds: self.started.elapsed().as_secs_f64(),
            bytes_per_peer: stats
                .peers
                .iter()
                .filter(|(_, s)| s.bytes > 0)
                .map(|(peer, s)| (*peer, s.bytes))
                .collect(),
            bad_chunk_groups: stats.bad_groups,
            banned_peers: self.swarm.banned().to_vec(),
            requests: RequestCounts {
                sent: stats.requests,
                duplicates: stats.duplicate_requests,
                refused: stats.refused,
                timeouts: stats.timeouts,
                lost: stats.lost,
                cancelled: stats.cancelled,
                redundant_groups: stats.redundant_groups,
                benched: stats.benched,
            },
        })
    }

    /// The swarm gave up: stops what still runs and keeps what was verified (the next run
    /// resumes from it).
    fn give_up(&mut self, give_up: GiveUp) -> FetchError {
        self.stop_all();
        let blob = self.options.blob;
        self.store.checkpoint(&blob).ok();
        match give_up {
            GiveUp::Allowance { bytes, allowance } => FetchError::Allowance {
                blob,
                bytes,
                allowance,
            },
            GiveUp::Stalled => FetchError::Stalled {
                blob,
                seconds: self.options.stall_timeout.as_secs(),
                why: self.why_stalled(),
            },
        }
    }

    fn why_stalled(&self) -> String {
        let mut reasons: Vec<String> = self
            .said
            .iter()
            .map(|(peer, what)| format!("{peer}: {what}"))
            .collect();
        reasons.extend(
            self.dial_errors
                .values()
                .map(|error| format!("unreachable: {error}")),
        );
        if reasons.is_empty() {
            "no peer was found".to_owned()
        } else {
            reasons.join("; ")
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.fetches) {
            task.abort();
        }
        self.haves.end_all();
    }
}

fn failure_of(error: &ExchangeError) -> Failure {
    match error {
        ExchangeError::Verify(verify) if error.is_misbehaviour() => Failure::Misbehaved {
            bad_groups: verify
                .failed_groups()
                .map(ChunkGroupRanges::from)
                .unwrap_or_default(),
        },
        _ if error.is_misbehaviour() => Failure::Misbehaved {
            bad_groups: ChunkGroupRanges::empty(),
        },
        ExchangeError::Refused {
            code: ErrorCode::Busy,
            ..
        } => Failure::Busy,
        ExchangeError::Refused {
            code: ErrorCode::HeldBack,
            ..
        } => Failure::HeldBack,
        ExchangeError::Refused { .. } => Failure::NotHeld,
        _ => Failure::Lost,
    }
}

/// What a peer's have-map says, for a stall message. An empty one without a size is how a peer
/// subscribed to says it has none of the blob; it must read the same as its refusal of a range
/// request ("not here"), whichever of the two answers arrives last.
fn claim_said(size: Option<u64>, groups: &ChunkGroupRanges) -> String {
    if size.is_none() && groups.is_empty() {
        "blob is not here (yet)".to_owned()
    } else {
        format!("holds {} groups", groups.group_count())
    }
}

/// A seed for the engine's tie-breaks, different for every node and stable across its restarts.
fn seed_from(peer: &PeerId) -> u64 {
    let hash = blake3::hash(&peer.to_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(bytes) | 1
}
