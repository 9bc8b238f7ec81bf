//! The tokio driver that ties the transport ([`crate::net`]), the mesh protocol
//! ([`crate::protocol`]), the store and the transfer engine together. It makes no decisions of
//! its own: it reports what the network did to the [`Transfer`] engine and carries out the
//! engine's actions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use proto::wire::{ErrorCode, Have, HaveQuery, Message, PeersQuery};
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::engine::{Action, Event, Failure, RequestId, Transfer, TransferConfig};
use crate::net::{IncomingStreams, NetEvent, NetEvents, NetHandle};
use crate::protocol::{self, ExchangeError, FetchProgress, Served};
use crate::ratelimit::{RateLimit, Throttled};
use crate::relay::ReportInbox;
use crate::storage::{Index, Storage};
use crate::store::{BlobStore, LAYOUT, StoreError};
use crate::tracker::Tracker;
use futures::future::Either;

/// Verified groups a fetch task collects before it reports them to the engine loop.
const PROGRESS_BATCH_GROUPS: u64 = 8;

/// A group that arrives this long after a fetch task's last report is reported at once, batch
/// or not: progress is what keeps a slow request from timing out, so a stream sharing a busy
/// uplink with a hundred others (a group every second or two) must report every group.
const PROGRESS_REPORT_GAP: Duration = Duration::from_millis(250);

/// Range requests served at once; more are refused `Busy`, and their askers try other peers
/// (or this one again after a back-off) instead of queueing here, where a queued request makes
/// no progress and times out.
///
/// Enough for a full yard (each of 30 vehicles asks one or two requests of each peer, see
/// [`TransferConfig::max_requests_total`]): QUIC then shares the uplink among the askers'
/// connections, which the 30-vehicle testbed showed to be fairer than a few slots (16 slots
/// starved some vehicles of a neighbour's uplink for minutes). Each request served holds its
/// encoded response, at most a few hundred KiB, so this also bounds a server's memory.
pub const MAX_CONCURRENT_SERVES: usize = 128;

/// How synchronous code (the TUF client, a prefetch run) waits on the node's async work.
///
/// A current-thread runtime moves its sockets and timers only inside `Runtime::block_on`, so
/// the thread that owns it must wait through the runtime itself; waiting through a `Handle`
/// works only while some other thread is inside `Runtime::block_on` (a daemon's main thread,
/// with the wait in `spawn_blocking`). Waiting through a `Handle` alone on a one-thread
/// runtime hangs: nothing drives the network.
#[derive(Clone, Copy, Debug)]
pub enum BlockOn<'a> {
    /// This thread owns the runtime (a one-shot command such as `get` or `prefetch`).
    Runtime(&'a tokio::runtime::Runtime),
    /// The runtime is driven elsewhere (a daemon); this is a blocking thread beside it.
    Handle(&'a tokio::runtime::Handle),
}

impl BlockOn<'_> {
    /// Runs `future` to completion, blocking this thread.
    pub fn block_on<F: std::future::Future>(self, future: F) -> F::Output {
        match self {
            Self::Runtime(runtime) => runtime.block_on(future),
            Self::Handle(handle) => handle.block_on(future),
        }
    }
}

/// A node opened from its data directory, as the one-shot commands (`get`, `prefetch`) use it:
/// its blob store, and its network started with its own identity.
#[derive(Debug)]
pub struct OpenedNode {
    /// The store in `<data_dir>/store` and `<data_dir>/index`.
    pub store: Arc<crate::store::DiskStore>,
    /// The network.
    pub net: NetHandle,
    /// Its events.
    pub events: NetEvents,
    /// Streams peers open to it (hand them to [`spawn_server`] to serve).
    pub incoming: IncomingStreams,
}

/// Opens the store and identity in `data_dir` and starts the network listening on `listen`
/// (with mDNS when `mdns`). Errors name the directory and the step. Call from outside
/// `runtime`.
pub fn open_node(
    runtime: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    listen: Vec<Multiaddr>,
    mdns: bool,
) -> Result<OpenedNode, String> {
    let (store, _) = crate::store::open_data_dir(data_dir)
        .map_err(|e| format!("opening the store in {}: {e}", data_dir.display()))?;
    let keypair = crate::identity::load_or_create(data_dir)
        .map_err(|e| format!("loading the identity in {}: {e}", data_dir.display()))?;
    let (net, events, incoming) = runtime
        .block_on(crate::net::start(crate::net::NetConfig {
            keypair: Some(keypair),
            listen,
            mdns,
            ..crate::net::NetConfig::default()
        }))
        .map_err(|e| format!("starting the network: {e}"))?;
    Ok(OpenedNode {
        store: Arc::new(store),
        net,
        events,
        incoming,
    })
}

/// Counters of what a server sent, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ServeCounters {
    /// Bytes of bao streams sent.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Range requests answered with data.
    pub requests: std::sync::atomic::AtomicU64,
    /// Exchanges refused or failed.
    pub refused: std::sync::atomic::AtomicU64,
    /// Of those, requests and questions for a blob or name not held here (cache misses).
    pub misses: std::sync::atomic::AtomicU64,
}

/// Have subscriptions served at once; more are refused `Busy` (the asker then polls).
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// How long a new stream may take to say what it wants.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves every inbound stream from `store` until the node shuts down: at most
/// [`MAX_CONCURRENT_SERVES`] transfers at once and [`MAX_SUBSCRIPTIONS`] have subscriptions
/// (which hold no transfer slot); more of either are refused `Busy`.
pub fn spawn_server<S: Storage, I: Index>(
    store: Arc<BlobStore<S, I>>,
    incoming: IncomingStreams,
    counters: Arc<ServeCounters>,
) -> JoinHandle<()> {
    spawn_server_with(store, incoming, counters, Roles::default())
}

/// What a server does besides serving blobs (a depot does both), and how fast it may send.
#[derive(Clone, Default)]
pub struct Roles {
    /// The yard's tracker: range requests are granted by its super-seeding rule (groups held
    /// back are left to the asker's neighbours; a request with nothing granted is refused
    /// `HeldBack`), and "who has what" questions are answered.
    pub tracker: Option<Arc<Tracker>>,
    /// Where vehicles' reports to relay go; without one they are refused `NotFound`.
    pub reports: Option<Arc<dyn ReportInbox>>,
    /// Paces what the server sends in answers (range responses, have and name answers): one
    /// bucket shared by every stream it serves, e.g. a depot's share of the yard WiFi. Have
    /// subscriptions, peer lists, report acknowledgements and refusals (a few hundred bytes
    /// each) are not paced. `None`: as fast as it goes.
    pub upload_limit: Option<Arc<RateLimit>>,
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roles")
            .field("tracker", &self.tracker.is_some())
            .field("reports", &self.reports.is_some())
            .field(
                "upload_limit",
                &self.upload_limit.as_ref().map(|l| l.bytes_per_second()),
            )
            .finish()
    }
}

/// Like [`spawn_server`], with the [`Roles`] of a depot.
pub fn spawn_server_with<S: Storage, I: Index>(
    store: Arc<BlobStore<S, I>>,
    mut incoming: IncomingStreams,
    counters: Arc<ServeCounters>,
    roles: Roles,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let transfers = Arc::new(Semaphore::new(MAX_CONCURRENT_SERVES));
        let subscriptions = Arc::new(Semaphore::new(MAX_SUBSCRIPTIONS));
        while let Some((peer, stream)) = incoming.next().await {
            let store = store.clone();
            let counters = counters.clone();
            let transfers = transfers.clone();
            let subscriptions = subscriptions.clone();
            let roles = roles.clone();
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::Relaxed;
                let slots = Slots {
                    transfers: &transfers,
                    subscriptions: &subscriptions,
                };
                match serve_stream(&store, peer, stream, slots, &roles).await {
                    Ok(Served::Groups { bytes, .. }) => {
                        counters.bytes.fetch_add(bytes, Relaxed);
                        counters.requests.fetch_add(1, Relaxed);
                    }
                    Ok(
                        Served::Have { .. }
                        | Served::Subscription { .. }
                        | Served::Name { .. }
                        | Served::Peers { .. }
                        | Served::Distrust { .. }
                        | Served::Report { .. },
                    ) => {}
                    Ok(Served::Refused { code }) => {
                        counters.refused.fetch_add(1, Relaxed);
                        if code == ErrorCode::NotFound {
                            counters.misses.fetch_add(1, Relaxed);
                        }
                        tracing::debug!(%peer, %code, "refused");
                    }
                    Err(error) => {
                        counters.refused.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, %error, "exchange failed");
                    }
                }
            });
        }
    })
}

#[derive(Clone, Copy)]
struct Slots<'a> {
    transfers: &'a Arc<Semaphore>,
    subscriptions: &'a Arc<Semaphore>,
}

async fn serve_stream<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    peer: PeerId,
    mut stream: libp2p::Stream,
    slots: Slots<'_>,
    roles: &Roles,
) -> Result<Served, ExchangeError> {
    let tracker = roles.tracker.as_ref();
    let question = tokio::time::timeout(QUESTION_TIMEOUT, protocol::read_question(&mut stream))
        .await
        .map_err(|_| {
            ExchangeError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer opened a stream and asked nothing",
            ))
        })??;
    match (question, tracker) {
        (Message::Report(report), _) => {
            // Refusals carry no request id, so the question they name needs no bytes.
            let question = Message::Report(proto::wire::Report {
                manifest: Vec::new(),
            });
            let Some(inbox) = roles.reports.clone() else {
                let detail = "this peer relays no reports";
                return protocol::refuse(stream, &question, ErrorCode::NotFound, detail).await;
            };
            let manifest = report.manifest;
            let taken = tokio::task::spawn_blocking(move || inbox.take(&peer, &manifest)).await;
            match taken {
                Ok(Ok(digest)) => {
                    let answer = Message::ReportTaken(proto::wire::ReportTaken { report: digest });
                    protocol::reply(stream, &answer).await?;
                    Ok(Served::Report { report: digest })
                }
                Ok(Err(refusal)) => {
                    protocol::refuse(stream, &question, refusal.code, &refusal.detail).await
                }
                Err(_) => {
                    let detail = "the relay failed to store the report";
                    protocol::refuse(stream, &question, ErrorCode::Internal, detail).await
                }
            }
        }
        (Message::HaveSubscribe(HaveQuery { blob }), _) => {
            if let Some(tracker) = tracker {
                tracker.swarms(peer, blob);
            }
            match slots.subscriptions.clone().try_acquire_owned() {
                Ok(_slot) => protocol::serve_subscription(store, stream, blob).await,
                Err(_) => {
                    let question = Message::HaveSubscribe(HaveQuery { blob });
                    let detail = "too many have subscriptions";
                    protocol::refuse(stream, &question, ErrorCode::Busy, detail).await
                }
            }
        }
        (Message::PeersQuery(PeersQuery { blob }), Some(tracker)) => {
            tracker.swarms(peer, blob);
            let peers = tracker.peers(peer, blob);
            let listed = peers.peers.len();
            protocol::reply(stream, &Message::Peers(peers)).await?;
            Ok(Served::Peers { blob, listed })
        }
        (Message::Distrust(distrust), Some(tracker)) => {
            let blob = distrust.blob;
            let Ok(accused) = PeerId::from_bytes(&distrust.peer) else {
                let detail = "the distrusted peer's identity is not a peer id";
                return protocol::refuse(
                    stream,
                    &Message::Distrust(distrust),
                    ErrorCode::BadRequest,
                    detail,
                )
                .await;
            };
            tracker.swarms(peer, blob);
            tracker.distrust(peer, blob, accused);
            let peers = tracker.peers(peer, blob);
            let listed = peers.peers.len();
            protocol::reply(stream, &Message::Peers(peers)).await?;
            Ok(Served::Distrust { blob, listed })
        }
        (Message::Request(mut request), Some(tracker))
            if tracker.is_swarming(&peer, &request.blob) =>
        {
            let grant = tracker.grant(peer, request.blob, &request.groups);
            if grant.serve.is_empty() {
                let question = Message::Request(request);
                let detail = "held by your neighbours or on its way to them: ask them";
                return protocol::refuse(stream, &question, ErrorCode::HeldBack, detail).await;
            }
            request.groups = grant.serve;
            let question = Message::Request(request);
            let served = answer_within_slots(store, stream, question, slots, roles).await;
            if let Ok(Served::Groups { blob, groups, .. }) = &served {
                tracker.served(peer, *blob, groups);
            }
            served
        }
        (question, _) => answer_within_slots(store, stream, question, slots, roles).await,
    }
}

async fn answer_within_slots<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    stream: libp2p::Stream,
    question: Message,
    slots: Slots<'_>,
    roles: &Roles,
) -> Result<Served, ExchangeError> {
    match slots.transfers.clone().try_acquire_owned() {
        Ok(_slot) => {
            let stream = match &roles.upload_limit {
                Some(limit) => Either::Right(Throttled::writes(stream, limit.clone())),
                None => Either::Left(stream),
            };
            protocol::answer(store, stream, question).await
        }
        Err(_) => {
            let detail = "serving as many requests as it can";
            protocol::refuse(stream, &question, ErrorCode::Busy, detail).await
        }
    }
}

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

enum TaskMessage {
    /// A dial ended: of a peer the caller named (an upstream) when `upstream`, else of a
    /// neighbour an upstream named.
    Dialled {
        result: Result<PeerId, String>,
        upstream: bool,
    },
    /// An upstream's answer to "who holds the blob", or to "this peer sent bad data" when
    /// `distrusted` names it.
    Peers {
        from: PeerId,
        result: Result<proto::wire::Peers, ExchangeError>,
        distrusted: Option<PeerId>,
    },
    /// The answer to a one-off have query (a peer that cannot subscribe).
    Have {
        peer: PeerId,
        result: Result<Have, ExchangeError>,
    },
    /// A subscription's message: the whole map when `first`, else groups to add.
    HaveUpdate {
        peer: PeerId,
        have: Have,
        first: bool,
    },
    /// A subscription ended: `Ok` when the peer closed its side cleanly (what it said stands).
    HaveEnded {
        peer: PeerId,
        result: Result<(), ExchangeError>,
    },
    Progress {
        peer: PeerId,
        request: RequestId,
        progress: FetchProgress,
    },
    Finished {
        peer: PeerId,
        request: RequestId,
        result: Result<(), ExchangeError>,
    },
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

/// The agent string a depot cache reports through identify starts with this; a fetch treats
/// such a peer as an upstream (see [`Transfer::mark_upstream`]) however it was found.
pub const DEPOT_AGENT_PREFIX: &str = "depot-cache/";

/// An upstream that held groups back is asked who its yard is at most this often.
const NEIGHBOUR_ASK_GAP: Duration = Duration::from_millis(250);

/// A neighbour named by an upstream is dialled again no sooner than this.
const NEIGHBOUR_REDIAL: Duration = Duration::from_secs(10);

fn ask_for_neighbours(
    net: &NetHandle,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    upstream: PeerId,
    blob: BlobId,
) {
    ask_upstream(net, sender, upstream, blob, None);
}

/// Asks `upstream` who holds `blob`; with `distrusted`, tells it first that this peer sent bad
/// data of it (the answer then leaves it out, and what the upstream held back for its claims
/// it now sends).
fn ask_upstream(
    net: &NetHandle,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    upstream: PeerId,
    blob: BlobId,
    distrusted: Option<PeerId>,
) {
    let net = net.clone();
    let sender = sender.clone();
    tokio::spawn(async move {
        let result = match net.open_stream(upstream).await {
            Ok(stream) => match distrusted {
                Some(peer) => protocol::report_distrust(stream, blob, peer.to_bytes()).await,
                None => protocol::query_peers(stream, blob).await,
            },
            Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
        };
        let _ = sender.send(TaskMessage::Peers {
            from: upstream,
            result,
            distrusted,
        });
    });
}

/// Dials the peers in an upstream's answer that are not `known` (connected, banned or this
/// node) and were not dialled in the last [`NEIGHBOUR_REDIAL`]. Entries that do not parse are
/// skipped: the answer is a hint.
fn dial_neighbours(
    net: &NetHandle,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    answer: &proto::wire::Peers,
    known: &BTreeSet<PeerId>,
    dialled: &mut BTreeMap<PeerId, Instant>,
    now: Instant,
) {
    for entry in &answer.peers {
        let Ok(peer) = PeerId::from_bytes(&entry.peer) else {
            continue;
        };
        if known.contains(&peer)
            || dialled
                .get(&peer)
                .is_some_and(|at| now.saturating_duration_since(*at) < NEIGHBOUR_REDIAL)
        {
            continue;
        }
        let Some(addr) = entry
            .addrs
            .iter()
            .find_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())
        else {
            continue;
        };
        dialled.insert(peer, now);
        let addr = addr.with(libp2p::multiaddr::Protocol::P2p(peer));
        spawn_dial(net, sender, addr, false);
    }
}

/// Dials `addr` in the background; the outcome comes back as [`TaskMessage::Dialled`].
fn spawn_dial(
    net: &NetHandle,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    addr: Multiaddr,
    upstream: bool,
) {
    let net = net.clone();
    let sender = sender.clone();
    tokio::spawn(async move {
        let result = net
            .dial(addr.clone())
            .await
            .map_err(|e| format!("{addr}: {e}"));
        let _ = sender.send(TaskMessage::Dialled { result, upstream });
    });
}

/// What each connected peer says it holds, kept up to date by have subscriptions (or, for a
/// peer that cannot subscribe, by a query every refresh).
#[derive(Default)]
struct Haves {
    /// Per peer: the size it claims and every group it said it holds.
    claims: BTreeMap<PeerId, (Option<u64>, ChunkGroupRanges)>,
    /// Open subscriptions.
    subscriptions: BTreeMap<PeerId, JoinHandle<()>>,
    /// Peers whose subscription failed: subscribed again at the next refresh.
    retry: BTreeSet<PeerId>,
    /// Peers that do not know subscriptions: asked at every refresh until complete.
    pollers: BTreeSet<PeerId>,
    /// Peers with a have query in flight.
    polls: BTreeSet<PeerId>,
}

impl Haves {
    fn subscribe(
        &mut self,
        net: &NetHandle,
        sender: &mpsc::UnboundedSender<TaskMessage>,
        peer: PeerId,
        blob: BlobId,
    ) {
        if self.subscriptions.contains_key(&peer) {
            return;
        }
        self.retry.remove(&peer);
        let net = net.clone();
        let sender = sender.clone();
        let task = tokio::spawn(async move {
            let result = match net.open_stream(peer).await {
                Ok(stream) => {
                    protocol::subscribe_have(stream, blob, |have, first| {
                        let _ = sender.send(TaskMessage::HaveUpdate { peer, have, first });
                        // Kept open until the fetch ends: the stream also keeps the connection.
                        std::ops::ControlFlow::Continue(())
                    })
                    .await
                }
                Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
            };
            let _ = sender.send(TaskMessage::HaveEnded { peer, result });
        });
        self.subscriptions.insert(peer, task);
    }

    /// Folds one message into `peer`'s claim; returns the claim to hand the engine, or `None`
    /// when it did not change.
    fn update(
        &mut self,
        peer: PeerId,
        have: Have,
        first: bool,
    ) -> Option<(Option<u64>, ChunkGroupRanges)> {
        let claim = self.claims.entry(peer).or_default();
        let groups = if first {
            have.groups
        } else {
            claim.1.union(&have.groups)
        };
        let size = have.size.or(if first { None } else { claim.0 });
        if !first && groups == claim.1 && size == claim.0 {
            return None;
        }
        *claim = (size, groups);
        Some(claim.clone())
    }

    fn ended(
        &mut self,
        peer: PeerId,
        result: Result<(), ExchangeError>,
        said: &mut BTreeMap<PeerId, String>,
    ) {
        if self.subscriptions.remove(&peer).is_none() {
            // Ended after it was forgotten (disconnect, ban): nothing to do.
            return;
        }
        match result {
            // The peer closed its side: it will say no more, but what it said stands.
            Ok(()) => {}
            Err(ExchangeError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }) => {
                tracing::debug!(%peer, "peer cannot subscribe; polling it");
                self.pollers.insert(peer);
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "have subscription ended");
                said.insert(peer, error.to_string());
                self.retry.insert(peer);
            }
        }
    }

    fn refresh(
        &mut self,
        net: &NetHandle,
        sender: &mpsc::UnboundedSender<TaskMessage>,
        connected: &BTreeSet<PeerId>,
        banned: &[PeerId],
        blob: BlobId,
    ) {
        let usable = |peer: &PeerId| connected.contains(peer) && !banned.contains(peer);
        for peer in std::mem::take(&mut self.retry) {
            if usable(&peer) {
                self.subscribe(net, sender, peer, blob);
            }
        }
        let complete = |claim: Option<&(Option<u64>, ChunkGroupRanges)>| {
            claim.is_some_and(|(size, groups)| {
                size.is_some_and(|size| *groups == LAYOUT.all_groups(size))
            })
        };
        let pollers: Vec<PeerId> = self.pollers.iter().copied().collect();
        for peer in pollers {
            if usable(&peer) && !complete(self.claims.get(&peer)) && self.polls.insert(peer) {
                let net = net.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let result = match net.open_stream(peer).await {
                        Ok(stream) => protocol::query_have(stream, blob).await,
                        Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
                    };
                    let _ = sender.send(TaskMessage::Have { peer, result });
                });
            }
        }
    }

    /// Stops listening to `peer` (gone, or banned) and forgets what it said.
    fn forget(&mut self, peer: &PeerId) {
        if let Some(task) = self.subscriptions.remove(peer) {
            task.abort();
        }
        self.claims.remove(peer);
        self.retry.remove(peer);
        self.pollers.remove(peer);
        self.polls.remove(peer);
    }

    fn end_all(&mut self) {
        for (_, task) in std::mem::take(&mut self.subscriptions) {
            task.abort();
        }
    }
}

impl Drop for Haves {
    /// A fetch dropped midway (cancelled by its caller) leaves no subscription running.
    fn drop(&mut self) {
        self.end_all();
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

#[allow(clippy::too_many_arguments)]
fn spawn_fetch<S: Storage, I: Index>(
    net: &NetHandle,
    store: &Arc<BlobStore<S, I>>,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    peer: PeerId,
    request: RequestId,
    blob: BlobId,
    groups: ChunkGroupRanges,
    size_limit: u64,
    rate_limit: Option<Arc<RateLimit>>,
) -> JoinHandle<()> {
    let net = net.clone();
    let store = store.clone();
    let sender = sender.clone();
    tokio::spawn(async move {
        // Verified groups are reported in batches: one message per group would wake the engine
        // loop 64 times per MiB.
        let mut batch = ChunkGroupRanges::empty();
        let mut batch_bytes = 0u64;
        let mut last_report = Instant::now();
        let flush = |batch: &mut ChunkGroupRanges, batch_bytes: &mut u64| {
            if !batch.is_empty() {
                let _ = sender.send(TaskMessage::Progress {
                    peer,
                    request,
                    progress: FetchProgress::Groups {
                        groups: std::mem::take(batch),
                        bytes: std::mem::take(batch_bytes),
                    },
                });
            }
        };
        let result = match net.open_stream(peer).await {
            Ok(stream) => protocol::fetch(
                match rate_limit {
                    Some(limit) => Either::Right(Throttled::new(stream, limit)),
                    None => Either::Left(stream),
                },
                &store,
                blob,
                request.0,
                &groups,
                size_limit,
                |progress| match progress {
                    FetchProgress::Groups { groups, bytes } => {
                        batch = batch.union(&groups);
                        batch_bytes += bytes;
                        if batch.group_count() >= PROGRESS_BATCH_GROUPS
                            || last_report.elapsed() >= PROGRESS_REPORT_GAP
                        {
                            flush(&mut batch, &mut batch_bytes);
                            last_report = Instant::now();
                        }
                    }
                    other => {
                        flush(&mut batch, &mut batch_bytes);
                        let _ = sender.send(TaskMessage::Progress {
                            peer,
                            request,
                            progress: other,
                        });
                    }
                },
            )
            .await
            .map(|_| ()),
            Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
        };
        // Groups verified before a failure count too: they are stored.
        flush(&mut batch, &mut batch_bytes);
        let _ = sender.send(TaskMessage::Finished {
            peer,
            request,
            result,
        });
    })
}

/// Builds the tokio runtime the node's commands run on: `threads` worker threads, one per CPU
/// core when `None`. One thread gets a current-thread runtime, with no hand-offs between
/// workers at all: on loopback and in a 30-vehicle yard it moved more bytes per CPU-second
/// than two workers (docs/measurements.md).
pub fn build_tokio(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads).max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    }
}

/// A seed for the engine's tie-breaks, different for every node and stable across its restarts.
fn seed_from(peer: &PeerId) -> u64 {
    let hash = blake3::hash(&peer.to_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(bytes) | 1
}
