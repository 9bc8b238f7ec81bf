//! Fetching a blob by name: how a vehicle gets the files whose content (and so whose id) it
//! cannot know in advance, chiefly TUF metadata (`image/metadata/timestamp.json`).
//!
//! A peer's answer to a name query is a claim, like everything a peer says. The blob it names is
//! fetched with the same bao verification as any blob, so what arrives is exactly the blob the
//! peer named; whether that blob is the *right* file is for the caller to check (TUF signatures,
//! versions, expiry). What this module guarantees is the bound: a fetch never accepts more than
//! `max_bytes` (a peer claiming more is refused before a byte moves, a peer lying about the
//! size fails the first verified group) and never takes longer than `timeout` in all (a peer
//! that trickles or stalls loses the race against the clock, not the vehicle's update).
//!
//! Names are fetched from one peer at a time, in the order given (depots first), then — unless
//! the caller asks the listed peers only ([`Ask::ListedOnly`]) — from the other connected peers;
//! the first peer that delivers a verified blob wins. Each peer but the
//! last gets at most half the time left, so one that stalls cannot use up the time of the peers
//! after it. Metadata files are
//! small (kilobytes to a few MiB), so the swarm machinery of [`crate::fetch::fetch`] would buy
//! nothing here.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use proto::wire::{ErrorCode, Named};

use crate::net::NetHandle;
use crate::protocol::{self, ExchangeError};
use crate::storage::{Index, Storage};
use crate::store::{BlobStore, LAYOUT, StoreError};

/// Which peers a named fetch asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ask {
    /// The listed peers in order, then every other connected peer: a vehicle, whose
    /// neighbours may hold the file when its depot does not.
    #[default]
    ListedThenConnected,
    /// The listed peers only: a depot refreshing from its upstream. Its other connected peers
    /// are its own vehicles, which hold nothing newer than the depot; asking them would cost
    /// a query per vehicle whenever the upstream has no such name (as for the next root).
    ListedOnly,
}

/// What to fetch and within which bounds.
#[derive(Clone, Debug)]
pub struct NamedFetch {
    /// The name (e.g. `image/metadata/timestamp.json`).
    pub name: String,
    /// Peers to ask first, in order (with `/p2p/<peer id>`); connected peers are asked after
    /// unless `ask` says otherwise.
    pub peers: Vec<Multiaddr>,
    /// Whether connected peers are asked after `peers`.
    pub ask: Ask,
    /// The most bytes the blob may have.
    pub max_bytes: u64,
    /// The most time the whole fetch may take, dialling included.
    pub timeout: Duration,
}

/// Why a named fetch gave nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NamedFetchError {
    /// No peer delivered the blob: none serves the name, none could be reached, or what they
    /// sent failed verification; `tried` says what each one did.
    #[error("no peer delivered {name:?}: {tried}")]
    Unavailable {
        /// The name.
        name: String,
        /// Peers that answered that they serve no such name (a file that does not exist yet,
        /// such as the next root version, gives only these).
        not_served: usize,
        /// Per peer, what happened.
        tried: String,
    },
    /// Every peer that serves the name offers a blob larger than allowed (endless data).
    #[error("{name:?} is offered at {size} bytes, more than the limit of {limit}")]
    TooLong {
        /// The name.
        name: String,
        /// The smallest size offered.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// No peer delivered the blob within the time allowed (slow retrieval).
    #[error("no peer delivered {name:?} within {} s: {tried}", .timeout.as_secs_f64())]
    TimedOut {
        /// The name.
        name: String,
        /// The time allowed.
        timeout: Duration,
        /// Per peer, what happened before time ran out.
        tried: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Fetches the blob a peer serves under `request.name` into memory, verified against the id the
/// peer named and bounded by `request.max_bytes` and `request.timeout`. Returns the peer's answer
/// and the bytes. The blob is not kept in `store` unless it was there before (metadata blobs
/// would otherwise pile up with every refresh).
pub async fn fetch_named<S: Storage, I: Index>(
    net: &NetHandle,
    store: Arc<BlobStore<S, I>>,
    request: &NamedFetch,
) -> Result<(Named, Vec<u8>), NamedFetchError> {
    let mut attempts = Attempts::default();
    let deadline = tokio::time::Instant::now() + request.timeout;
    let outcome = tokio::time::timeout_at(
        deadline,
        fetch_from_peers(net, &store, request, deadline, &mut attempts),
    )
    .await;
    // A blob left partial by an attempt that failed or ran out of time is dropped.
    if let Some(blob) = attempts.created.take() {
        if store.info(&blob).is_some_and(|info| !info.complete) {
            store.forget(&blob)?;
        }
    }
    match outcome {
        Ok(result) => result,
        Err(_) => {
            if let Some(doing) = attempts.doing.take() {
                attempts.log.push(format!("time ran out {doing}"));
            }
            Err(NamedFetchError::TimedOut {
                name: request.name.clone(),
                timeout: request.timeout,
                tried: attempts.describe(),
            })
        }
    }
}

#[derive(Default)]
struct Attempts {
    /// Per peer (or address), what happened.
    log: Vec<String>,
    /// The smallest size offered above the limit.
    too_long: Option<u64>,
    /// A blob this fetch created in the store and has not finished.
    created: Option<proto::BlobId>,
    /// Some peer ran out of its share of the time.
    slow: bool,
    /// Peers that serve no such name.
    not_served: usize,
    /// What the fetch was doing (for a report when time runs out).
    doing: Option<String>,
}

impl Attempts {
    fn describe(&self) -> String {
        if self.log.is_empty() {
            "no peer was reachable".into()
        } else {
            self.log.join("; ")
        }
    }
}

async fn fetch_from_peers<S: Storage, I: Index>(
    net: &NetHandle,
    store: &Arc<BlobStore<S, I>>,
    request: &NamedFetch,
    deadline: tokio::time::Instant,
    attempts: &mut Attempts,
) -> Result<(Named, Vec<u8>), NamedFetchError> {
    let mut candidates: Vec<PeerId> = Vec::new();
    for addr in &request.peers {
        attempts.doing = Some(format!("while dialling {addr}"));
        match net.dial(addr.clone()).await {
            Ok(peer) => {
                if !candidates.contains(&peer) {
                    candidates.push(peer);
                }
            }
            Err(error) => attempts.log.push(format!("{addr}: {error}")),
        }
    }
    if request.ask == Ask::ListedThenConnected {
        for peer in net.connected_peers().await {
            if !candidates.contains(&peer) {
                candidates.push(peer);
            }
        }
    }
    let count = candidates.len();
    for (index, peer) in candidates.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = if index + 1 == count { left } else { left / 2 };
        attempts.doing = Some(format!("while {peer} was sending (slow retrieval)"));
        let attempt = tokio::time::timeout(share, fetch_from(net, store, request, peer, attempts));
        match attempt.await {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(error)) => {
                if let PeerFailure::Exchange(ExchangeError::Refused {
                    code: ErrorCode::NotFound,
                    ..
                }) = error
                {
                    attempts.not_served += 1;
                }
                attempts.log.push(format!("{peer}: {error}"));
            }
            Err(_) => {
                attempts.slow = true;
                attempts.log.push(format!(
                    "{peer}: did not deliver within its {:.1} s share of the time (slow retrieval)",
                    share.as_secs_f64()
                ));
            }
        }
        attempts.doing = None;
        // An attempt cut short may leave its partial blob; the next peer starts afresh.
        if let Some(blob) = attempts.created.take() {
            store.forget(&blob)?;
        }
    }
    if let Some(size) = attempts.too_long {
        return Err(NamedFetchError::TooLong {
            name: request.name.clone(),
            size,
            limit: request.max_bytes,
        });
    }
    if attempts.slow {
        return Err(NamedFetchError::TimedOut {
            name: request.name.clone(),
            timeout: request.timeout,
            tried: attempts.describe(),
        });
    }
    Err(NamedFetchError::Unavailable {
        name: request.name.clone(),
        not_served: attempts.not_served,
        tried: attempts.describe(),
    })
}

/// Why one peer could not give the blob.
#[derive(Debug, thiserror::Error)]
enum PeerFailure {
    #[error("{0}")]
    Net(#[from] crate::net::NetError),
    #[error("{0}")]
    Exchange(#[from] ExchangeError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("offers {size} bytes, more than the limit of {limit}")]
    TooLong { size: u64, limit: u64 },
}

/// Tries a peer again after it reset the stream (it dropped a stream it could not accept in a
/// burst), up to this many times, waiting 10, 20, 40, 80 ms.
const RESET_RETRIES: u32 = 4;

async fn fetch_from<S: Storage, I: Index>(
    net: &NetHandle,
    store: &Arc<BlobStore<S, I>>,
    request: &NamedFetch,
    peer: PeerId,
    attempts: &mut Attempts,
) -> Result<(Named, Vec<u8>), PeerFailure> {
    let mut wait = Duration::from_millis(10);
    let mut retries = 0;
    loop {
        match fetch_from_once(net, store, request, peer, attempts).await {
            Err(PeerFailure::Exchange(error)) if error.is_reset() && retries < RESET_RETRIES => {
                tracing::debug!(%peer, name = %request.name, %error, "stream reset; asking again");
                retries += 1;
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}

async fn fetch_from_once<S: Storage, I: Index>(
    net: &NetHandle,
    store: &Arc<BlobStore<S, I>>,
    request: &NamedFetch,
    peer: PeerId,
    attempts: &mut Attempts,
) -> Result<(Named, Vec<u8>), PeerFailure> {
    let named = protocol::query_name(net.open_stream(peer).await?, &request.name).await?;
    if named.size > request.max_bytes {
        attempts.too_long = Some(attempts.too_long.map_or(named.size, |s| s.min(named.size)));
        return Err(PeerFailure::TooLong {
            size: named.size,
            limit: request.max_bytes,
        });
    }
    let held_before = store.info(&named.blob);
    let complete_before = held_before.as_ref().is_some_and(|info| info.complete);
    if !complete_before {
        if held_before.is_none() {
            // The size is the peer's claim; the first verified group proves or refutes it (a
            // BLAKE3 root commits to the length), and the blob is dropped if it fails.
            store.create_partial(named.blob, named.size)?;
            attempts.created = Some(named.blob);
        }
        let size = store.info(&named.blob).map_or(named.size, |info| info.size);
        let groups = LAYOUT.all_groups(size);
        let stream = net.open_stream(peer).await?;
        let fetched = protocol::fetch(
            stream,
            store,
            named.blob,
            0,
            &groups,
            request.max_bytes,
            |_| {},
        )
        .await;
        if let Err(error) = fetched {
            if attempts.created == Some(named.blob) {
                store.forget(&named.blob)?;
                attempts.created = None;
            }
            return Err(error.into());
        }
        store.checkpoint(&named.blob)?;
    }
    let mut bytes = Vec::new();
    let exported = store.export(&named.blob, &mut bytes);
    if held_before.is_none() {
        store.forget(&named.blob)?;
        attempts.created = None;
    }
    exported?;
    Ok((named, bytes))
}
