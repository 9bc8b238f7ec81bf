//! The server side of a node: every stream a peer opens is answered from the blob store, within
//! a bounded number of transfer slots and have subscriptions, of which one peer holds at most a
//! share, and with a deadline on every write, with the extra duties of a depot ([`Roles`]: the
//! yard's tracker, the report relay, an upload pace) and of every fleet member (handing on the
//! fleet's revocation list).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::Either;
use libp2p::PeerId;
use proto::wire::{ErrorCode, HaveQuery, Message, PeersQuery, RevocationsQuery};
use tokio::task::JoinHandle;

use crate::admission::{Admission, Refusal};
use crate::membership::RevocationsInForce;
use crate::net::IncomingStreams;
use crate::protocol::{self, ExchangeError, Served};
use crate::ratelimit::{RateLimit, Throttled};
use crate::relay::ReportInbox;
use crate::storage::{Index, Storage};
use crate::store::BlobStore;
use crate::tracker::Tracker;
use crate::write_deadline::{WriteDeadline, is_write_stall};

/// Range requests served at once; more are refused `Busy`, and their askers try other peers
/// (or this one again after a back-off) instead of queueing here, where a queued request makes
/// no progress and times out.
///
/// Enough for a full yard (each of 30 vehicles asks one or two requests of each peer, see
/// [`crate::engine::TransferConfig::max_requests_total`]): QUIC then shares the uplink among the askers'
/// connections, which the 30-vehicle testbed showed to be fairer than a few slots (16 slots
/// starved some vehicles of a neighbour's uplink for minutes). Each request served holds its
/// encoded response (256 KiB to 1 MiB as depotmesh fetchers ask, at most 4 MiB:
/// [`proto::wire::MAX_REQUEST_GROUPS`]), so this also bounds a server's memory.
pub const MAX_CONCURRENT_SERVES: usize = 128;

/// Of [`MAX_CONCURRENT_SERVES`], the most one peer holds at once; its further requests are
/// refused `Busy` while other peers are still served.
///
/// Four times what the transfer engine asks of one peer
/// ([`crate::engine::TransferConfig::max_requests_per_peer`], 4): room for endgame duplicates
/// and for a few fetches at once (a depot prefetching several blobs from its upstream). A
/// peer asking more is hogging, and with this share it takes eight peers, not one, to hold
/// the whole pool. Refused at once rather than queued: a `Busy` asker backs off and asks
/// again or elsewhere, while a queued request would make no progress and hold a task.
pub const MAX_SERVES_PER_PEER: usize = 16;

/// How long an answer's write may stay blocked, the peer taking not one byte, before the
/// stream is dropped and its slot freed ([`ServeCounters::write_timeouts`]).
///
/// A reading peer unblocks a write within a round trip, and its reader pauses for
/// milliseconds (an fsync on eMMC) or a Wi-Fi retry burst of a second or so; 5 s is well
/// past those. It is also half the asker's own
/// [`crate::engine::TransferConfig::request_timeout`] (10 s), after which an honest asker
/// has given up on the request anyway, and half QUIC's idle timeout: a peer that is gone is
/// noticed by the connection, this catches one that is there and does not read. The clock
/// stops while the answer is held back by [`Roles::upload_limit`]: pacing is not stalling.
pub const ANSWER_WRITE_DEADLINE: Duration = Duration::from_secs(5);

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
    /// Of those, requests and subscriptions refused `Busy` because their peer held its share
    /// ([`MAX_SERVES_PER_PEER`], [`MAX_SUBSCRIPTIONS_PER_PEER`]).
    pub over_share: std::sync::atomic::AtomicU64,
    /// Exchanges cut because the peer read nothing for [`ANSWER_WRITE_DEADLINE`] (not counted
    /// in `refused`).
    pub write_timeouts: std::sync::atomic::AtomicU64,
}

/// Have subscriptions served at once; more are refused `Busy` (the asker then polls).
pub const MAX_SUBSCRIPTIONS: usize = 1024;

/// Of [`MAX_SUBSCRIPTIONS`], the most one peer holds at once. A vehicle subscribes once per
/// blob it fetches from a peer, and a release is a handful of images and deltas: 64 is far
/// above that, and keeps one peer from taking every subscription.
pub const MAX_SUBSCRIPTIONS_PER_PEER: usize = 64;

/// How long a new stream may take to say what it wants.
const QUESTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves every inbound stream from `store` until the node shuts down: at most
/// [`MAX_CONCURRENT_SERVES`] transfers at once and [`MAX_SUBSCRIPTIONS`] have subscriptions
/// (which hold no transfer slot), at most [`MAX_SERVES_PER_PEER`] and
/// [`MAX_SUBSCRIPTIONS_PER_PEER`] of them for one peer; more are refused `Busy`. A write
/// blocked for [`ANSWER_WRITE_DEADLINE`] ends its exchange.
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
    /// The fleet's signed revocation list this node holds ([`crate::net::NetHandle::
    /// revocations_in_force`]), handed to members that hold an older one: a depot's yard learns
    /// of revocations from it without reaching the director. Within a transfer slot, paced.
    /// `None` (an open mesh): such questions are refused `NotFound`.
    pub revocations: Option<RevocationsInForce>,
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
            .field("revocations", &self.revocations.is_some())
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
        let slots = Slots {
            transfers: Pool::new(MAX_CONCURRENT_SERVES, MAX_SERVES_PER_PEER),
            subscriptions: Pool::new(MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_PER_PEER),
            counters: counters.clone(),
        };
        while let Some((peer, stream)) = incoming.next().await {
            let store = store.clone();
            let counters = counters.clone();
            let slots = slots.clone();
            let roles = roles.clone();
            tokio::spawn(async move {
                let stream = WriteDeadline::new(stream, ANSWER_WRITE_DEADLINE);
                match serve_stream(&store, peer, stream, &slots, &roles).await {
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
                        | Served::Report { .. }
                        | Served::Revocations { .. },
                    ) => {}
                    Ok(Served::Refused { code }) => {
                        counters.refused.fetch_add(1, Relaxed);
                        if code == ErrorCode::NotFound {
                            counters.misses.fetch_add(1, Relaxed);
                        }
                        tracing::debug!(%peer, %code, "refused");
                    }
                    Err(ExchangeError::Io(error)) if is_write_stall(&error) => {
                        counters.write_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, %error, "answer cut");
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

/// What every stream is served on: libp2p's, whose writes end at [`ANSWER_WRITE_DEADLINE`].
type ServedStream = WriteDeadline<libp2p::Stream>;

/// A server's slots, shared by the tasks of its streams.
#[derive(Clone)]
struct Slots {
    transfers: Pool,
    subscriptions: Pool,
    counters: Arc<ServeCounters>,
}

/// An [`Admission`] shared by the tasks of a server's streams.
#[derive(Clone)]
struct Pool(Arc<Mutex<Admission<PeerId>>>);

impl Pool {
    fn new(capacity: usize, per_peer: usize) -> Self {
        Self(Arc::new(Mutex::new(Admission::new(capacity, per_peer))))
    }

    /// A slot for `peer`, given back when dropped, or why not. A refusal for the peer's share
    /// is counted in `counters`.
    fn take(&self, peer: PeerId, counters: &ServeCounters) -> Result<Slot, Refusal> {
        let admitted = self.lock().admit(&peer);
        match admitted {
            Ok(()) => Ok(Slot {
                pool: self.clone(),
                peer,
            }),
            Err(refusal) => {
                if refusal == Refusal::PeerShare {
                    counters.over_share.fetch_add(1, Relaxed);
                }
                Err(refusal)
            }
        }
    }

    /// The admission, even when a task panicked holding it: a count is never left half-made.
    fn lock(&self) -> std::sync::MutexGuard<'_, Admission<PeerId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A slot held in a [`Pool`] until dropped.
struct Slot {
    pool: Pool,
    peer: PeerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.lock().release(&self.peer);
    }
}

/// What an asker refused `Busy` is told: `when_full` when the whole pool is held.
fn busy_detail(refusal: Refusal, when_full: &'static str) -> &'static str {
    match refusal {
        Refusal::PeerShare => "you hold your share of this peer's serving slots",
        Refusal::Full => when_full,
    }
}

async fn serve_stream<S: Storage, I: Index>(
    store: &Arc<BlobStore<S, I>>,
    peer: PeerId,
    mut stream: ServedStream,
    slots: &Slots,
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
        (Message::Report(report), _) => relay_report(stream, peer, report, roles).await,
        (Message::RevocationsQuery(RevocationsQuery { newer_than }), _) => {
            hand_on_revocations(stream, peer, newer_than, slots, roles).await
        }
        (Message::HaveSubscribe(HaveQuery { blob }), _) => {
            if let Some(tracker) = tracker {
                tracker.swarms(peer, blob);
            }
            match slots.subscriptions.take(peer, &slots.counters) {
                Ok(_slot) => protocol::serve_subscription(store, stream, blob).await,
                Err(refusal) => {
                    let question = Message::HaveSubscribe(HaveQuery { blob });
                    let detail = busy_detail(refusal, "too many have subscriptions");
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
            let served = answer_within_slots(store, peer, stream, question, slots, roles).await;
            if let Ok(Served::Groups { blob, groups, .. }) = &served {
                tracker.served(peer, *blob, groups);
            }
            served
        }
        (question, _) => answer_within_slots(store, peer, stream, question, slots, roles).await,
    }
}

/// Hands a vehicle's report to the relay's inbox, if this server relays any.
async fn relay_report(
    stream: ServedStream,
    peer: PeerId,
    report: proto::wire::Report,
    roles: &Roles,
) -> Result<Served, ExchangeError> {
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

/// Hands the revocation list in force to a member that holds an older one (the gate admitted
/// it: strangers' streams never reach the server), within a transfer slot and the upload pace.
async fn hand_on_revocations(
    stream: ServedStream,
    peer: PeerId,
    newer_than: u64,
    slots: &Slots,
    roles: &Roles,
) -> Result<Served, ExchangeError> {
    let question = Message::RevocationsQuery(RevocationsQuery { newer_than });
    let Some(in_force) = &roles.revocations else {
        let detail = "this peer hands on no revocation list (it runs an open mesh)";
        return protocol::refuse(stream, &question, ErrorCode::NotFound, detail).await;
    };
    match slots.transfers.take(peer, &slots.counters) {
        Ok(_slot) => {
            let held = in_force.get();
            protocol::answer_revocations(paced(stream, roles), newer_than, held.as_ref()).await
        }
        Err(refusal) => {
            let detail = busy_detail(refusal, "serving as many requests as it can");
            protocol::refuse(stream, &question, ErrorCode::Busy, detail).await
        }
    }
}

/// `stream`, its writes paced by [`Roles::upload_limit`] when there is one.
fn paced(stream: ServedStream, roles: &Roles) -> Either<ServedStream, Throttled<ServedStream>> {
    match &roles.upload_limit {
        Some(limit) => Either::Right(Throttled::writes(stream, limit.clone())),
        None => Either::Left(stream),
    }
}

async fn answer_within_slots<S: Storage, I: Index>(
    store: &Arc<BlobStore<S, I>>,
    peer: PeerId,
    stream: ServedStream,
    question: Message,
    slots: &Slots,
    roles: &Roles,
) -> Result<Served, ExchangeError> {
    match slots.transfers.take(peer, &slots.counters) {
        Ok(_slot) => protocol::answer(store, paced(stream, roles), question).await,
        Err(refusal) => {
            let detail = busy_detail(refusal, "serving as many requests as it can");
            protocol::refuse(stream, &question, ErrorCode::Busy, detail).await
        }
    }
}
