//! The fetch driver: fetches one blob from every reachable peer at once. It makes no decisions
//! of its own: it reports what the network did to the [`Transfer`] engine and carries out the
//! engine's actions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use proto::wire::ErrorCode;
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::{
    Action, DEPOT_AGENT_PREFIX, Event, Failure, RequestId, Transfer, TransferConfig,
};
use crate::net::{NetEvent, NetEvents, NetHandle};
use crate::protocol::{ExchangeError, FetchProgress};
use crate::ratelimit::RateLimit;
use crate::storage::{Index, Storage};
use crate::store::{BlobStore, LAYOUT, StoreError};

mod haves;
mod tasks;

use haves::Haves;
use tasks::{
    TaskMessage, ask_for_neighbours, ask_upstream, dial_neighbours, spawn_dial, spawn_fetch,
};

/// An upstream that held groups back is asked who its yard is at most this often.
const NEIGHBOUR_ASK_GAP: Duration = Duration::from_millis(250);

/// How to fetch one blob.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The blob.
    pub blob: BlobId,
    /// Its size when known from signed metadata; otherwise it is probed and proven.
    pub size: Option<u64>,
    /// Peers to dial (with `/p2p/…`), besides those already connected or found by mDNS.
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
    /// it is reached still land, so a caller holds back `groups_per_request` ×
    /// `max_requests_total` × 16 KiB of margin. `None`: no limit.
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
    let blob = options.blob;
    let started = Instant::now();
    let mut info = store.info(&blob);
    if let (None, Some(size)) = (&info, options.size) {
        // A size from signed metadata: the blob is created at it, so every response is checked
        // against it and no size probe is needed. (A wrong size fails the first verified group:
        // a BLAKE3 root commits to the length.)
        info = Some(store.create_partial(blob, size)?);
    }
    let held = info.as_ref().map(|i| i.held.clone()).unwrap_or_default();
    let resumed_groups = held.group_count();
    let size = info.as_ref().map(|i| i.size).or(options.size);
    let mut config = options.transfer.clone();
    if config.seed == 0 {
        // Vehicles in one yard must not all start on the same pieces: with one seed they would
        // all ask the depot for the same groups first. This node's identity spreads them.
        config.seed = seed_from(&net.peer_id());
    }
    let mut engine: Transfer<PeerId> = Transfer::new(blob, size, held, config, started);

    let (sender, mut inbox) = mpsc::unbounded_channel::<TaskMessage>();
    let mut fetches: BTreeMap<RequestId, (PeerId, JoinHandle<()>)> = BTreeMap::new();
    let mut haves = Haves::default();
    let mut connected: BTreeSet<PeerId> = BTreeSet::new();
    let mut banned: Vec<PeerId> = Vec::new();
    let mut said: BTreeMap<PeerId, String> = BTreeMap::new();
    let mut dial_errors: Vec<String> = Vec::new();
    let mut bytes_fetched = 0u64;
    let mut stalled_since: Option<Instant> = None;
    let mut pending_dials = options.peers.len();
    let mut upstreams: BTreeSet<PeerId> = BTreeSet::new();
    let mut neighbour_dials: BTreeMap<PeerId, Instant> = BTreeMap::new();
    let mut last_neighbour_ask: Option<Instant> = None;

    for addr in &options.peers {
        spawn_dial(net, &sender, addr.clone(), true);
    }
    for peer in net.connected_peers().await {
        connected.insert(peer);
        engine.handle(Instant::now(), Event::PeerConnected { peer });
        haves.subscribe(net, &sender, peer, blob);
    }

    let mut refresh = tokio::time::interval(options.have_refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Carry out every action the engine has.
        while let Some(action) = engine.poll_action(Instant::now()) {
            match action {
                Action::Request {
                    peer,
                    request,
                    groups,
                } => {
                    let task = spawn_fetch(
                        net,
                        &store,
                        &sender,
                        peer,
                        request,
                        blob,
                        groups,
                        options.size_limit,
                        options.rate_limit.clone(),
                    );
                    fetches.insert(request, (peer, task));
                }
                Action::Cancel { request, .. } => {
                    if let Some((_, task)) = fetches.remove(&request) {
                        // Dropping the stream resets it: the peer stops sending.
                        task.abort();
                    }
                }
                Action::Ban { peer } => {
                    tracing::warn!(%peer, %blob, "peer sent bad data: banned for this blob");
                    // An upstream may be holding groups back for this peer's claims: say so.
                    for &upstream in upstreams
                        .iter()
                        .filter(|up| **up != peer && connected.contains(up))
                    {
                        ask_upstream(net, &sender, upstream, blob, Some(peer));
                    }
                    banned.push(peer);
                    haves.forget(&peer);
                    fetches.retain(|_, (owner, task)| {
                        let keep = *owner != peer;
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                }
                Action::Done => {
                    for (_, (_, task)) in std::mem::take(&mut fetches) {
                        task.abort();
                    }
                    haves.end_all();
                    let info = store.checkpoint(&blob)?;
                    let stats = engine.stats();
                    return Ok(FetchReport {
                        blob,
                        size: info.size,
                        resumed_groups,
                        bytes_fetched,
                        seconds: started.elapsed().as_secs_f64(),
                        bytes_per_peer: stats
                            .peers
                            .iter()
                            .filter(|(_, s)| s.bytes > 0)
                            .map(|(peer, s)| (*peer, s.bytes))
                            .collect(),
                        bad_chunk_groups: stats.bad_groups,
                        banned_peers: banned,
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
                    });
                }
            }
        }

        // Whether any peer could still help is the engine's call (a benched or busy peer that
        // holds missing groups is worth waiting for); how long to wait for help is the caller's.
        let stalled = engine.is_stalled() && pending_dials == 0;
        let since = if stalled {
            *stalled_since.get_or_insert_with(Instant::now)
        } else {
            stalled_since = None;
            Instant::now()
        };
        if since.elapsed() >= options.stall_timeout {
            let mut reasons: Vec<String> = said
                .iter()
                .map(|(peer, what)| format!("{peer}: {what}"))
                .collect();
            reasons.extend(
                dial_errors
                    .iter()
                    .map(|error| format!("unreachable: {error}")),
            );
            let why = if reasons.is_empty() {
                "no peer was found".to_owned()
            } else {
                reasons.join("; ")
            };
            // Keep what was verified: the next run resumes from it.
            store.checkpoint(&blob).ok();
            haves.end_all();
            return Err(FetchError::Stalled {
                blob,
                seconds: options.stall_timeout.as_secs(),
                why,
            });
        }
        let wake = engine
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + options.have_refresh);

        tokio::select! {
            message = inbox.recv() => {
                let Some(message) = message else { continue };
                let now = Instant::now();
                match message {
                    TaskMessage::Dialled { result, upstream: true } => {
                        pending_dials = pending_dials.saturating_sub(1);
                        match result {
                            // Peers named on the command line are the depot or an upstream
                            // cache: spare their uplink for what no neighbour has, and ask
                            // them who nearby holds the blob.
                            Ok(peer) => {
                                engine.mark_upstream(peer);
                                if upstreams.insert(peer) {
                                    ask_for_neighbours(net, &sender, peer, blob);
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "dial failed");
                                dial_errors.push(error);
                            }
                        }
                    }
                    TaskMessage::Dialled { result, upstream: false } => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "dialling a neighbour the depot named failed");
                        }
                    }
                    TaskMessage::Peers { from, result, distrusted } => match result {
                        Ok(answer) => {
                            if distrusted.is_some() {
                                engine.release_held_back(&from);
                            }
                            let mut known = connected.clone();
                            known.extend(banned.iter().copied());
                            known.insert(net.peer_id());
                            dial_neighbours(net, &sender, &answer, &known, &mut neighbour_dials, now);
                        }
                        // An upstream that keeps no tracker (an older one) answers BadRequest.
                        Err(error) => match distrusted {
                            Some(liar) => tracing::debug!(peer = %from, %liar, %error, "telling the upstream of a banned peer failed"),
                            None => tracing::debug!(peer = %from, %error, "asking for neighbours failed"),
                        },
                    },
                    TaskMessage::Have { peer, result } => {
                        haves.polls.remove(&peer);
                        match result {
                            Ok(have) => {
                                if let Some((size, groups)) = haves.update(peer, have, true) {
                                    said.insert(peer, claim_said(size, &groups));
                                    engine.handle(now, Event::HaveMap { peer, size, groups });
                                }
                            }
                            Err(error) => {
                                said.insert(peer, error.to_string());
                            }
                        }
                    }
                    TaskMessage::HaveUpdate { peer, have, first } => {
                        if let Some((size, groups)) = haves.update(peer, have, first) {
                            said.insert(peer, claim_said(size, &groups));
                            engine.handle(now, Event::HaveMap { peer, size, groups });
                        }
                    }
                    TaskMessage::HaveEnded { peer, result } => {
                        haves.ended(peer, result, &mut said);
                    }
                    TaskMessage::Progress { peer, request, progress } => match progress {
                        FetchProgress::Groups { groups, bytes } => {
                            bytes_fetched += bytes;
                            engine.handle(now, Event::GroupsVerified { peer, request, groups, bytes });
                            on_progress(&Progress {
                                held_groups: engine.held().group_count(),
                                total_groups: engine.size().map(|s| LAYOUT.group_count(s)),
                                bytes: bytes_fetched,
                                peers: connected.len(),
                            });
                            if let Some(allowance) = options.max_bytes {
                                let complete = engine.size().is_some_and(|s| engine.held().group_count() >= LAYOUT.group_count(s));
                                if bytes_fetched >= allowance && !complete {
                                    for (_, (_, task)) in std::mem::take(&mut fetches) {
                                        task.abort();
                                    }
                                    haves.end_all();
                                    store.checkpoint(&blob).ok();
                                    return Err(FetchError::Allowance { blob, bytes: bytes_fetched, allowance });
                                }
                            }
                        }
                        FetchProgress::SizeProven(size) => engine.handle(now, Event::SizeProven { size }),
                        FetchProgress::Size(_) => {}
                    },
                    TaskMessage::Finished { peer, request, result } => {
                        fetches.remove(&request);
                        let event = match result {
                            Ok(()) => Event::RequestFinished { peer, request },
                            Err(error) => {
                                tracing::debug!(%peer, %request, %error, "request failed");
                                // Held back for neighbours we may not know yet: ask who they are
                                // now rather than at the next refresh.
                                if matches!(error, ExchangeError::Refused { code: ErrorCode::HeldBack, .. })
                                    && last_neighbour_ask.is_none_or(|at| now.saturating_duration_since(at) >= NEIGHBOUR_ASK_GAP)
                                {
                                    last_neighbour_ask = Some(now);
                                    ask_for_neighbours(net, &sender, peer, blob);
                                }
                                if error.is_misbehaviour() {
                                    said.insert(peer, format!("sent bad data: {error}"));
                                } else if matches!(error, ExchangeError::Refused { .. }) {
                                    said.insert(peer, error.to_string());
                                }
                                Event::RequestFailed { peer, request, failure: failure_of(&error) }
                            }
                        };
                        engine.handle(now, event);
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else { continue };
                let now = Instant::now();
                match event {
                    NetEvent::PeerConnected { peer, .. } if connected.insert(peer) => {
                        engine.handle(now, Event::PeerConnected { peer });
                        haves.subscribe(net, &sender, peer, blob);
                    }
                    // A depot found by mDNS is an upstream like one named by the caller.
                    NetEvent::Identified { peer, agent, .. }
                        if agent.starts_with(DEPOT_AGENT_PREFIX) && upstreams.insert(peer) =>
                    {
                        engine.mark_upstream(peer);
                        ask_for_neighbours(net, &sender, peer, blob);
                    }
                    NetEvent::PeerDisconnected { peer, .. } if connected.remove(&peer) => {
                        upstreams.remove(&peer);
                        haves.forget(&peer);
                        engine.handle(now, Event::PeerClosed { peer });
                    }
                    _ => {}
                }
            }
            _ = refresh.tick() => {
                haves.refresh(net, &sender, &connected, &banned, blob);
                // Vehicles arrive and leave: ask the upstreams again who is here.
                for &upstream in upstreams.iter().filter(|peer| connected.contains(peer)) {
                    ask_for_neighbours(net, &sender, upstream, blob);
                }
            }
            () = tokio::time::sleep_until(wake) => {
                engine.handle_timeout(Instant::now());
            }
        }
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
