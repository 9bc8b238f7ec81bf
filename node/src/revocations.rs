//! The fleet's revocation list from the mesh: how a node that never reaches the director (a
//! vehicle reporting through its depot) learns of revocations. It asks its peers in turn —
//! the configured ones (its depot) first, then, unless one answered, the other members it is
//! connected to — for a newer list than the one in force ([`protocol::query_revocations`]),
//! and hands a list it gets to [`crate::mesh_config::take_revocations`]: the membership gate
//! checks the fleet key's signature and refuses a version older than the one in force, cuts
//! the revoked members off at once, and the list is kept for the next start.
//!
//! A peer is a carrier, not an authority: one that hands on a forged or older list is refused
//! by the gate and the next peer is asked; the list in force and the one kept stay as they
//! were. Only admitted members can ask or be asked: a stranger's streams are reset unread
//! ([`crate::membership`]).
//!
//! Which peer to ask and when to stop is the order of [`ask_order`]; the decision on a list is
//! the gate's ([`crate::membership::Gate::update_revocations`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::mesh_config::{TakeRevocationsError, take_revocations};
use crate::net::NetHandle;
use crate::protocol::{self, OfferedRevocations};

/// What asking the mesh gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeshRevocations {
    /// A peer handed on a newer list, now in force and kept.
    Taken {
        /// Its version.
        version: u64,
        /// The peer that handed it on.
        from: PeerId,
        /// The admitted peers it cut off.
        revoked: Vec<PeerId>,
    },
    /// A peer holds no newer list than the one in force.
    Current {
        /// The version the peer holds (0: none).
        version: u64,
        /// The peer.
        from: PeerId,
    },
}

/// Why asking the mesh gave nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshRevocationsError {
    /// The node runs an open mesh: it has no fleet, so no revocation list.
    #[error("this node runs an open mesh: it holds no revocation list")]
    OpenMesh,
    /// No peer answered, or each one that did handed on a list the gate refused; `tried` says
    /// what each one did.
    #[error("no peer handed on the fleet's revocation list: {tried}")]
    Unanswered {
        /// Per peer (or address), what happened.
        tried: String,
    },
    /// Time ran out before a peer answered.
    #[error("no peer answered within {} s: {tried}", .timeout.as_secs_f64())]
    TimedOut {
        /// The time allowed.
        timeout: Duration,
        /// Per peer, what happened before.
        tried: String,
    },
    /// A newer list is in force but could not be kept for the next start.
    #[error("keeping the revocation list in {}: {source}", path.display())]
    Keep {
        /// Where it was to be kept.
        path: PathBuf,
        /// Why it was not.
        source: std::io::Error,
    },
}

/// The peers to ask, in order: the configured ones as dialled (`listed`, duplicates dropped),
/// then the other connected members. Asking stops at the first peer that answers.
pub fn ask_order(listed: &[PeerId], connected: &[PeerId]) -> Vec<PeerId> {
    let mut order: Vec<PeerId> = Vec::with_capacity(listed.len() + connected.len());
    for peer in listed.iter().chain(connected) {
        if !order.contains(peer) {
            order.push(*peer);
        }
    }
    order
}

/// Asks `peers` (with `/p2p/<peer id>`; dialled if need be), then the other connected members,
/// for a newer revocation list than the one in force, and takes the first one the gate accepts
/// (kept at `keep`). Each peer but the last gets at most half the time left, so one that stalls
/// cannot use up the time of the others; the whole takes at most `timeout`.
pub async fn refresh_from_mesh(
    net: &NetHandle,
    peers: &[Multiaddr],
    keep: Option<&Path>,
    timeout: Duration,
) -> Result<MeshRevocations, MeshRevocationsError> {
    if net.membership_counters().is_none() {
        return Err(MeshRevocationsError::OpenMesh);
    }
    let mut tried = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let asked =
        tokio::time::timeout_at(deadline, ask_peers(net, peers, keep, deadline, &mut tried));
    match asked.await {
        Ok(result) => result,
        Err(_) => Err(MeshRevocationsError::TimedOut {
            timeout,
            tried: describe(&tried),
        }),
    }
}

async fn ask_peers(
    net: &NetHandle,
    peers: &[Multiaddr],
    keep: Option<&Path>,
    deadline: tokio::time::Instant,
    tried: &mut Vec<String>,
) -> Result<MeshRevocations, MeshRevocationsError> {
    let mut listed = Vec::with_capacity(peers.len());
    for addr in peers {
        match net.dial(addr.clone()).await {
            Ok(peer) => listed.push(peer),
            Err(error) => tried.push(format!("{addr}: {error}")),
        }
    }
    let order = ask_order(&listed, &net.connected_peers().await);
    let count = order.len();
    for (index, peer) in order.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let share = if index + 1 == count { left } else { left / 2 };
        match tokio::time::timeout(share, ask_one(net, peer, keep)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(PeerFailure::Keep { path, source })) => {
                return Err(MeshRevocationsError::Keep { path, source });
            }
            Ok(Err(failure)) => {
                tracing::debug!(%peer, %failure, "no revocation list from this peer");
                tried.push(format!("{peer}: {failure}"));
            }
            Err(_) => tried.push(format!(
                "{peer}: did not answer within its {:.1} s share of the time",
                share.as_secs_f64()
            )),
        }
    }
    Err(MeshRevocationsError::Unanswered {
        tried: describe(tried),
    })
}

/// Why one peer gave no list.
#[derive(Debug, thiserror::Error)]
enum PeerFailure {
    #[error("{0}")]
    Net(#[from] crate::net::NetError),
    #[error("{0}")]
    Exchange(#[from] protocol::ExchangeError),
    #[error("handed on version {version}, which was refused: {reason}")]
    Refused { version: u64, reason: String },
    #[error("keeping the list in {}: {source}", path.display())]
    Keep {
        path: PathBuf,
        source: std::io::Error,
    },
}

async fn ask_one(
    net: &NetHandle,
    peer: PeerId,
    keep: Option<&Path>,
) -> Result<MeshRevocations, PeerFailure> {
    let held = net
        .membership_counters()
        .map_or(0, |counters| counters.revocations_version.load(Relaxed));
    let stream = net.open_stream(peer).await?;
    let signed = match protocol::query_revocations(stream, held).await? {
        OfferedRevocations::NotNewer { version } => {
            return Ok(MeshRevocations::Current {
                version,
                from: peer,
            });
        }
        OfferedRevocations::List(signed) => signed,
    };
    let version = signed.revocations.version;
    match take_revocations(net, signed, keep).await {
        Ok(revoked) => Ok(MeshRevocations::Taken {
            version,
            from: peer,
            revoked,
        }),
        Err(TakeRevocationsError::Refused(error)) => Err(PeerFailure::Refused {
            version,
            reason: error.to_string(),
        }),
        Err(TakeRevocationsError::Keep { path, source }) => Err(PeerFailure::Keep { path, source }),
    }
}

fn describe(tried: &[String]) -> String {
    if tried.is_empty() {
        "no member was reachable".into()
    } else {
        tried.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_peers_are_asked_first_and_each_peer_once() {
        let (depot, other_depot, neighbour) =
            (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(
            ask_order(&[depot, other_depot, depot], &[neighbour, depot]),
            [depot, other_depot, neighbour]
        );
        assert_eq!(ask_order(&[], &[neighbour]), [neighbour]);
        assert!(ask_order(&[], &[]).is_empty());
    }
}
