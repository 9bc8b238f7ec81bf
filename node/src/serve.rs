//! The server side of a node: every stream a peer opens is answered from the blob store, within
//! a bounded number of transfer slots and have subscriptions, with the extra duties of a depot
//! ([`Roles`]: the yard's tracker, the report relay, an upload pace).

use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use libp2p::PeerId;
use proto::wire::{ErrorCode, HaveQuery, Message, PeersQuery};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::net::IncomingStreams;
use crate::protocol::{self, ExchangeError, Served};
use crate::ratelimit::{RateLimit, Throttled};
use crate::relay::ReportInbox;
use crate::storage::{Index, Storage};
use crate::store::BlobStore;
use crate::tracker::Tracker;

/// Range requests served at once; more are refused `Busy`, and their askers try other peers
/// (or this one again after a back-off) instead of queueing here, where a queued request makes
/// no progress and times out.
///
/// Enough for a full yard (each of 30 vehicles asks one or two requests of each peer, see
/// [`crate::engine::TransferConfig::max_requests_total`]): QUIC then shares the uplink among the askers'
/// connections, which the 30-vehicle testbed showed to be fairer than a few slots (16 slots
/// starved some vehicles of a neighbour's uplink for minutes). Each request served holds its
/// encoded response, at most a few hundred KiB, so this also bounds a server's memory.
pub const MAX_CONCURRENT_SERVES: usize = 128;

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
        (Message::Report(report), _) => relay_report(stream, peer, report, roles).await,
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

/// Hands a vehicle's report to the relay's inbox, if this server relays any.
async fn relay_report(
    stream: libp2p::Stream,
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
