//! The slow reader: a member that asks the depot for ranges of the release's blobs, as many at
//! once as the depot lets one peer hold, and reads nothing of the answers. Its receive windows
//! are tiny (16 KiB a stream, 64 KiB a connection, as in `node/tests/fair_share.rs`): the depot
//! can put at most 64 KiB on the wire for all its answers together, and every further write to
//! it blocks, as behind a peer that never opens its window.
//!
//! A connection whose window is full takes no new stream either (opening one is a negotiation
//! whose answer it would have to read), so it opens its streams first, [`STREAMS_PER_CONNECTION`]
//! of them, then asks on them: [`IN_FLIGHT`] requests at a time, twice the share the depot
//! grants one peer, so that its share is always held and the depot always has more to refuse;
//! each stream the depot lets go of (refused `Busy`, answered, or cut at its write deadline) is
//! replaced by the next. When its streams are used up it connects again: new windows at both
//! ends.
//!
//! It sees only that the depot let go of a stream (a probe write fails once the depot stopped
//! reading it), not why: the depot's `/status` says how many it refused for the share and cut
//! for not reading.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{AsyncWriteExt as _, FutureExt as _};
use libp2p::{Multiaddr, Stream};
use node::membership::MeshMembership;
use node::net::{self, QuicTuning};
use proto::BlobId;
use proto::ChunkGroupRanges;
use proto::wire::{Message, RangeRequest};

use super::{Attacker, count, identity, node_config};
use crate::actor::{Running, Started};

/// Streams opened on one connection before any is asked on: more than the depot's whole
/// serving pool ([`node::serve::MAX_CONCURRENT_SERVES`]), fewer than the 256 a connection may
/// hold open.
pub const STREAMS_PER_CONNECTION: usize = 200;

/// Requests outstanding at once: twice what the depot serves for one peer
/// ([`node::serve::MAX_SERVES_PER_PEER`]).
pub const IN_FLIGHT: usize = 2 * node::serve::MAX_SERVES_PER_PEER;

/// Chunk groups a request asks for: as many as the transfer engine asks (256 KiB).
const GROUPS_PER_REQUEST: u64 = 16;

/// How often it looks which of its streams the depot let go of.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Windows of a peer that never reads: 16 KiB a stream, 64 KiB a connection.
fn closed_windows() -> QuicTuning {
    QuicTuning {
        max_stream_data: 16 * 1024,
        max_connection_data: 64 * 1024,
        ..QuicTuning::default()
    }
}

/// A blob of the release it asks for, and how many chunk groups it has.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The blob.
    pub blob: BlobId,
    /// Its chunk groups.
    pub groups: u64,
}

impl Target {
    /// The blob `blob` of `size` bytes.
    pub fn new(blob: BlobId, size: u64) -> Self {
        Self {
            blob,
            groups: node::store::LAYOUT.all_groups(size).group_count(),
        }
    }
}

/// What the slow reader did.
#[derive(Debug, Default)]
pub struct SlowReaderCounts {
    /// Connections it made to the depot.
    pub connections: AtomicU64,
    /// Range requests it sent.
    pub requests: AtomicU64,
    /// Of those, the ones the depot let go of: refused, answered into its send buffer, or cut
    /// for not being read.
    pub let_go: AtomicU64,
}

/// The running slow reader; stops when dropped.
pub type SlowReader = Attacker<SlowReaderCounts>;

/// Starts the slow reader in `dir` (its identity), a member by `membership`, asking the depot
/// at `depot` for ranges of `targets` in turn. Returns once it has its first connection.
pub fn start(
    dir: &Path,
    depot: &Multiaddr,
    membership: MeshMembership,
    targets: Vec<Target>,
) -> anyhow::Result<SlowReader> {
    anyhow::ensure!(
        targets.iter().any(|t| t.groups > 0),
        "the slow reader has no blob to ask for"
    );
    let (keypair, peer) = identity(dir)?;
    let counts = Arc::new(SlowReaderCounts::default());
    let config = node_config(&keypair, &membership, closed_windows());
    let (depot, counting) = (depot.clone(), counts.clone());
    let running = Running::start("slow reader", move |started| async move {
        let mut asks = Asks::new(targets);
        loop {
            connection(&config, &depot, &mut asks, &counting, &started).await?;
        }
    })?;
    Ok(Attacker {
        peer,
        counts,
        running: Some(running),
    })
}

/// The requests it sends, in turn over its targets' ranges.
struct Asks {
    /// Each target with groups, and the first group of its next request.
    targets: Vec<(Target, u64)>,
    turn: usize,
    request_id: u64,
}

impl Asks {
    fn new(targets: Vec<Target>) -> Self {
        Self {
            targets: targets
                .into_iter()
                .filter(|t| t.groups > 0)
                .map(|t| (t, 0))
                .collect(),
            turn: 0,
            request_id: 0,
        }
    }

    /// The next request: sixteen groups of the next target (each target's ranges in turn),
    /// or `None` with no target.
    fn next_request(&mut self) -> Option<Message> {
        let count = self.targets.len();
        let (target, first) = self.targets.get_mut(self.turn % count.max(1))?;
        self.turn = (self.turn + 1) % count;
        let start = *first;
        let end = (start + GROUPS_PER_REQUEST).min(target.groups);
        *first = end % target.groups;
        self.request_id += 1;
        Some(Message::Request(RangeRequest {
            request_id: self.request_id,
            blob: target.blob,
            groups: ChunkGroupRanges::from_range(start..end),
        }))
    }
}

/// One connection: opens its streams, asks on them until each was let go of, leaves.
async fn connection(
    config: &net::NetConfig,
    depot: &Multiaddr,
    asks: &mut Asks,
    counts: &SlowReaderCounts,
    started: &Started,
) -> anyhow::Result<()> {
    let (handle, mut events, _incoming) = net::start(config.clone()).await?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let depot_peer = match handle.dial(depot.clone()).await {
        Ok(peer) => peer,
        Err(error) => {
            handle.shutdown().await;
            return Err(error.into());
        }
    };
    count(&counts.connections);
    started.now();
    let mut unused: Vec<Stream> = Vec::new();
    while unused.len() < STREAMS_PER_CONNECTION {
        match handle.open_stream(depot_peer).await {
            Ok(stream) => unused.push(stream),
            Err(error) => {
                tracing::debug!("slow reader: no more streams: {error}");
                break;
            }
        }
    }
    let mut asked: Vec<Stream> = Vec::new();
    while !(unused.is_empty() && asked.is_empty()) {
        while asked.len() < IN_FLIGHT {
            let (Some(mut stream), Some(request)) = (unused.pop(), asks.next_request()) else {
                break;
            };
            if ask(&mut stream, request).await.is_ok() {
                count(&counts.requests);
                asked.push(stream);
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
        let before = asked.len();
        asked.retain_mut(held);
        counts
            .let_go
            .fetch_add((before - asked.len()) as u64, Ordering::Relaxed);
        if !handle.is_connected(depot_peer).await.unwrap_or(false) {
            break;
        }
    }
    handle.shutdown().await;
    Ok(())
}

/// Writes `request` on `stream`, leaving it open: a closed side could not tell when the depot
/// stops reading.
async fn ask(stream: &mut Stream, request: Message) -> anyhow::Result<()> {
    stream.write_all(&request.encode()?).await?;
    stream.flush().await?;
    Ok(())
}

/// Whether the depot still holds `stream`: a byte written after the request is taken until
/// the depot dropped its side (it stops reading, and the write fails).
fn held(stream: &mut Stream) -> bool {
    // The depot reads nothing after the question: the byte only waits in its receive buffer.
    match stream.write(&[0]).now_or_never() {
        Some(Err(_)) => false,
        Some(Ok(_)) | None => true,
    }
}
