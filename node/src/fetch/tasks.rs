//! The background tasks of a fetch: one per range request, per question to an upstream and per
//! dial. Each reports back to the fetch's loop as a [`TaskMessage`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::Either;
use libp2p::{Multiaddr, PeerId};
use proto::wire::Have;
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::engine::RequestId;
use crate::net::NetHandle;
use crate::protocol::{self, ExchangeError, FetchProgress};
use crate::ratelimit::{RateLimit, Throttled};
use crate::storage::{Index, Storage};
use crate::store::BlobStore;

/// Verified groups a fetch task collects before it reports them to the engine loop.
const PROGRESS_BATCH_GROUPS: u64 = 8;

/// A group that arrives this long after a fetch task's last report is reported at once, batch
/// or not: progress is what keeps a slow request from timing out, so a stream sharing a busy
/// uplink with a hundred others (a group every second or two) must report every group.
const PROGRESS_REPORT_GAP: Duration = Duration::from_millis(250);

pub(super) enum TaskMessage {
    /// A dial ended: of the caller's configured address number `configured` (an upstream) when
    /// `Some`, else of a neighbour an upstream named.
    Dialled {
        result: Result<PeerId, String>,
        configured: Option<usize>,
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

/// Asks `upstream` who holds `blob`; with `distrusted`, tells it first that this peer sent bad
/// data of it (the answer then leaves it out, and what the upstream held back for its claims
/// it now sends).
pub(super) fn ask_upstream(
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

/// The peers an upstream's answer names, each with the first of its addresses that parses.
/// Entries that do not parse are skipped: the answer is a hint.
pub(super) fn neighbours_in(answer: &proto::wire::Peers) -> Vec<(PeerId, Multiaddr)> {
    answer
        .peers
        .iter()
        .filter_map(|entry| {
            let peer = PeerId::from_bytes(&entry.peer).ok()?;
            let addr = entry
                .addrs
                .iter()
                .find_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())?;
            Some((peer, addr))
        })
        .collect()
}

/// Dials `addr` in the background; the outcome comes back as [`TaskMessage::Dialled`].
pub(super) fn spawn_dial(
    net: &NetHandle,
    sender: &mpsc::UnboundedSender<TaskMessage>,
    addr: Multiaddr,
    configured: Option<usize>,
) {
    let net = net.clone();
    let sender = sender.clone();
    tokio::spawn(async move {
        let result = net
            .dial(addr.clone())
            .await
            .map_err(|e| format!("{addr}: {e}"));
        let _ = sender.send(TaskMessage::Dialled { result, configured });
    });
}

#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_fetch<S: Storage, I: Index>(
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
    let store_for_checkpoints = store.clone();
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
                    FetchProgress::CheckpointDue => {
                        // A sync of tens of MiB must not stall this worker thread: the other
                        // requests' streams and the QUIC drivers run on it too.
                        let store = store_for_checkpoints.clone();
                        tokio::task::spawn_blocking(move || {
                            if let Err(error) = store.checkpoint(&blob) {
                                tracing::warn!(%blob, %error, "checkpoint failed; the next one retries");
                            }
                        });
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
