//! The depot as the yard's tracker, on the runtime: it follows which vehicles are connected and
//! what they hold, answers "who has what" ([`proto::wire::PeersQuery`]), and decides with the
//! sans-IO [`Seeder`] which requested groups it sends itself (see [`crate::seeding`]).
//!
//! What it knows of a vehicle's holdings comes from the vehicle itself: the first time a vehicle
//! asks the depot anything about a blob, the depot subscribes to that vehicle's have-map for it
//! (the same subscription vehicles use among themselves). A vehicle's claims are only used to
//! hold groups back and to point its neighbours at it; a false claim costs its neighbours a
//! refused request and the depot serves them after [`crate::seeding::SeedConfig::max_defer`], or
//! at once once they report the liar ([`proto::wire::Distrust`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use proto::wire::{self, Peers, YardPeer};
use proto::{BlobId, ChunkGroupRanges};
use tokio::task::JoinHandle;

use crate::net::{NetEvent, NetEvents, NetHandle};
use crate::protocol;
use crate::seeding::{Accused, Grant, SeedConfig, SeedStats, Seeder};

/// How long after a failed have subscription the depot tries that peer and blob again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(5);

enum Watch {
    Active(JoinHandle<()>),
    /// Ended cleanly: the peer holds the whole blob and said so.
    Complete,
    Failed(Instant),
}

/// A depot's view of its yard. Create it with [`Tracker::start`] and hand it to the server among
/// the depot's roles (the server asks it; it knows nothing of the server).
pub struct Tracker {
    net: NetHandle,
    /// Peers that identified as depot caches (an upstream, a neighbouring depot): not part of
    /// the yard. Their holdings are not followed or passed on, and they are served in full.
    depots: Mutex<std::collections::HashSet<PeerId>>,
    seeder: Mutex<Seeder<PeerId>>,
    addrs: Mutex<HashMap<PeerId, Vec<Multiaddr>>>,
    watches: Mutex<HashMap<(PeerId, BlobId), Watch>>,
    /// Peers swarming a blob: they subscribed to the depot's holdings of it or asked who
    /// holds it, so they can fetch held-back groups from their neighbours. Everyone else (a
    /// named fetch of a metadata file, an older peer) is served in full.
    swarming: Mutex<std::collections::HashSet<(PeerId, BlobId)>>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("peers", &lock(&self.seeder).peer_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (every update is one
    // call); carry on rather than take the depot down.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tracker {
    /// A tracker over `net`, following its connections through `events` (which it consumes)
    /// until the node shuts down.
    pub fn start(net: NetHandle, events: NetEvents, config: SeedConfig) -> Arc<Self> {
        let tracker = Arc::new(Self {
            net,
            depots: Mutex::new(std::collections::HashSet::new()),
            seeder: Mutex::new(Seeder::new(config)),
            addrs: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            swarming: Mutex::new(std::collections::HashSet::new()),
        });
        let weak = Arc::downgrade(&tracker);
        tokio::spawn(async move {
            let mut events = events;
            while let Some(event) = events.recv().await {
                let Some(tracker) = weak.upgrade() else {
                    return;
                };
                tracker.on_event(event);
            }
        });
        tracker
    }

    fn on_event(&self, event: NetEvent) {
        match event {
            NetEvent::PeerConnected { peer, addr } => {
                lock(&self.seeder).connected(peer);
                // The observed address until the peer says where it listens.
                lock(&self.addrs)
                    .entry(peer)
                    .or_insert_with(|| dialable(std::iter::once(addr)));
            }
            NetEvent::PeerDisconnected { peer, .. } => {
                lock(&self.depots).remove(&peer);
                lock(&self.seeder).disconnected(&peer);
                lock(&self.addrs).remove(&peer);
                self.unwatch(&peer);
            }
            NetEvent::Identified { peer, agent, .. } if crate::engine::is_depot_agent(&agent) => {
                // A cache, not a vehicle: forget whatever was learnt of it as a yard peer.
                lock(&self.depots).insert(peer);
                lock(&self.seeder).disconnected(&peer);
                lock(&self.addrs).remove(&peer);
                self.unwatch(&peer);
            }
            NetEvent::Identified {
                peer, listen_addrs, ..
            } => {
                let addrs = dialable(listen_addrs.into_iter());
                if !addrs.is_empty() {
                    lock(&self.addrs).insert(peer, addrs);
                }
            }
            _ => {}
        }
    }

    /// `peer` swarms `blob` (it subscribed to the depot's holdings of it or asked who holds
    /// it): from now on its requests for `blob` go through super-seeding.
    pub fn swarms(self: &Arc<Self>, peer: PeerId, blob: BlobId) {
        if self.is_depot(&peer) {
            return;
        }
        lock(&self.swarming).insert((peer, blob));
        self.watch(peer, blob);
    }

    /// Whether `peer` swarms `blob`.
    pub fn is_swarming(&self, peer: &PeerId, blob: &BlobId) -> bool {
        lock(&self.swarming).contains(&(*peer, *blob))
    }

    fn unwatch(&self, peer: &PeerId) {
        lock(&self.swarming).retain(|(swarming, _)| swarming != peer);
        lock(&self.watches).retain(|(watched, _), watch| {
            if watched != peer {
                return true;
            }
            if let Watch::Active(task) = watch {
                task.abort();
            }
            false
        });
    }

    fn is_depot(&self, peer: &PeerId) -> bool {
        lock(&self.depots).contains(peer)
    }

    /// Decides which of `groups` (of `blob`, asked by `peer`) the depot sends; see
    /// [`Seeder::grant`]. Starts following `peer`'s holdings of `blob`. Another depot is
    /// granted everything: it serves a yard of its own.
    pub fn grant(self: &Arc<Self>, peer: PeerId, blob: BlobId, groups: &ChunkGroupRanges) -> Grant {
        if self.is_depot(&peer) {
            return Grant {
                serve: groups.clone(),
                held_back: ChunkGroupRanges::empty(),
                deferral_expired: false,
            };
        }
        self.watch(peer, blob);
        lock(&self.seeder).grant(Instant::now(), &peer, blob, groups)
    }

    /// `peer` finished receiving `groups` of `blob`.
    pub fn served(&self, peer: PeerId, blob: BlobId, groups: &ChunkGroupRanges) {
        lock(&self.seeder).served(Instant::now(), &peer, blob, groups);
    }

    /// `peer` says `accused` sent it bad data of `blob`; see [`Seeder::distrust`].
    pub fn distrust(&self, peer: PeerId, blob: BlobId, accused: PeerId) {
        if lock(&self.seeder).distrust(&peer, blob, accused) {
            tracing::warn!(%peer, %accused, %blob, "a yard peer reports bad data from another: its claims no longer hold back what the reporter is sent");
        }
    }

    /// Peers some connected peer distrusts; see [`Seeder::accused`].
    pub fn accused(&self) -> Vec<Accused<PeerId>> {
        lock(&self.seeder).accused()
    }

    /// The answer to `peer`'s question of who holds `blob`: those holding most first, with
    /// where they listen. Starts following `peer`'s holdings of `blob`.
    pub fn peers(self: &Arc<Self>, peer: PeerId, blob: BlobId) -> Peers {
        self.watch(peer, blob);
        let holders = lock(&self.seeder).yard(&blob, &peer, wire::MAX_YARD_PEERS);
        let addrs = lock(&self.addrs);
        let peers = holders
            .into_iter()
            .filter_map(|holder| {
                let listen = addrs.get(&holder.peer)?;
                let encoded: Vec<Vec<u8>> = listen.iter().map(Multiaddr::to_vec).collect();
                if encoded.is_empty() {
                    return None;
                }
                Some(YardPeer {
                    peer: holder.peer.to_bytes(),
                    addrs: encoded,
                    groups: holder.groups,
                })
            })
            .collect();
        Peers { blob, peers }
    }

    /// Follows what `peer` holds of `blob` (a have subscription to it), unless it is a depot or
    /// already followed; a failed subscription is tried again after a few seconds. Called
    /// whenever a yard peer shows it wants `blob`: it asks for groups, for its neighbours, or
    /// subscribes to the depot's own have-map.
    pub fn watch(self: &Arc<Self>, peer: PeerId, blob: BlobId) {
        if self.is_depot(&peer) {
            return;
        }
        let mut watches = lock(&self.watches);
        match watches.get(&(peer, blob)) {
            Some(Watch::Active(_) | Watch::Complete) => return,
            Some(Watch::Failed(at)) if at.elapsed() < RESUBSCRIBE_AFTER => return,
            _ => {}
        }
        let tracker = Arc::downgrade(self);
        let net = self.net.clone();
        let task = tokio::spawn(async move {
            let result = match net.open_stream(peer).await {
                Ok(stream) => protocol::subscribe_have(stream, blob, |have, first| {
                    let Some(tracker) = tracker.upgrade() else {
                        return std::ops::ControlFlow::Break(());
                    };
                    lock(&tracker.seeder).holds(&peer, blob, &have.groups, first);
                    std::ops::ControlFlow::Continue(())
                })
                .await
                .map_err(|error| error.to_string()),
                Err(error) => Err(error.to_string()),
            };
            let Some(tracker) = tracker.upgrade() else {
                return;
            };
            let mut watches = lock(&tracker.watches);
            // Only if still watched: a disconnect removed the entry and must not be undone.
            if let Some(watch) = watches.get_mut(&(peer, blob)) {
                *watch = match result {
                    Ok(()) => Watch::Complete,
                    Err(error) => {
                        tracing::debug!(%peer, %blob, %error, "have subscription to a yard peer ended");
                        Watch::Failed(Instant::now())
                    }
                };
            }
        });
        watches.insert((peer, blob), Watch::Active(task));
    }

    /// The seeding counters.
    pub fn stats(&self) -> SeedStats {
        lock(&self.seeder).stats()
    }

    /// Peers connected now.
    pub fn peer_count(&self) -> usize {
        lock(&self.seeder).peer_count()
    }
}

/// The addresses worth telling others: not unspecified, not relayed, short enough for the wire,
/// at most [`wire::MAX_PEER_ADDRS`], without a `/p2p/` suffix.
fn dialable(addrs: impl Iterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        let addr: Multiaddr = addr
            .iter()
            .filter(|part| !matches!(part, Protocol::P2p(_)))
            .collect();
        let usable = addr.iter().all(|part| match part {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::P2pCircuit => false,
            _ => true,
        });
        if usable
            && !addr.is_empty()
            && addr.to_vec().len() <= wire::MAX_ADDR_BYTES
            && !out.contains(&addr)
        {
            out.push(addr);
        }
        if out.len() == wire::MAX_PEER_ADDRS {
            break;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_dialable_addresses_are_passed_on() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> = [
            "/ip4/0.0.0.0/udp/4001/quic-v1".to_owned(),
            format!("/ip4/10.0.0.7/udp/4001/quic-v1/p2p/{peer}"),
            "/ip4/10.0.0.7/udp/4001/quic-v1".to_owned(),
            "/ip6/::/udp/4001/quic-v1".to_owned(),
            "/ip6/fe80::1/udp/4001/quic-v1".to_owned(),
            format!("/ip4/10.0.0.9/udp/1/quic-v1/p2p/{peer}/p2p-circuit"),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let kept = dialable(addrs.into_iter());
        assert_eq!(
            kept,
            vec![
                "/ip4/10.0.0.7/udp/4001/quic-v1"
                    .parse::<Multiaddr>()
                    .unwrap(),
                "/ip6/fe80::1/udp/4001/quic-v1".parse().unwrap(),
            ]
        );
        let many = (0..10).map(|i| format!("/ip4/10.0.0.{i}/udp/1/quic-v1").parse().unwrap());
        assert_eq!(dialable(many).len(), wire::MAX_PEER_ADDRS);
    }
}
