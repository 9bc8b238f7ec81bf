//! The depot's side of the yard swarm, sans-IO: which of the groups a vehicle asks for the depot
//! sends itself, and which it leaves to the vehicles that already hold them (the *tracker*'s
//! knowledge: who on the yard holds what).
//!
//! A depot's uplink is shared by the whole yard; a vehicle's is idle while it waits. So the depot
//! should send each group into the yard about once and let the vehicles spread it among
//! themselves: BitTorrent's *super-seeding* (BEP 16), where the seed hands each piece to one
//! peer and offers it again only once it has seen it spread. Vehicles already spare an upstream
//! they were told of ([`crate::engine::Transfer::mark_upstream`]), but only for groups their
//! neighbours have *announced*; ten vehicles that start together all see the depot as the only
//! source, and an older or misconfigured vehicle may not spare it at all. The depot therefore
//! decides too, from what it knows of the yard.
//!
//! # The rule
//! A [`Seeder`] is told which peers are connected, which groups each holds (their have
//! subscriptions) and what it served. Asked to [`Seeder::grant`] a request of `asker`, it serves
//! the requested groups except those that
//! - another connected peer holds (the asker can fetch them there; the depot also tells it whom
//!   to ask, [`Seeder::yard`]), or
//! - it served to another connected peer less than [`SeedConfig::propagation_grace`] ago (on
//!   their way into the yard: the receiver will announce them within a have push interval).
//!
//! Claims are not facts. A vehicle that banned a peer for sending data that failed verification
//! tells the depot ([`Seeder::distrust`], wire [`proto::wire::Distrust`]): that peer's claims and
//! what was sent to it then hold nothing back from the vehicle that said so, and — once
//! [`SeedConfig::distrust_quorum`] connected peers said it — from anyone; it is left out of
//! their [`Seeder::yard`] answers. The depot cannot check the accusation, but believing it only
//! makes the depot serve more itself, never refuse: a slanderer gains nothing but its own copy
//! from the depot.
//!
//! If that leaves nothing, the asker is *deferred*: the runtime answers `HeldBack`, and the
//! vehicle asks its neighbours for those groups and the depot for others
//! ([`crate::engine::Failure::HeldBack`]). A peer deferred for [`SeedConfig::max_defer`] in a
//! row is served in full: it may not be able to reach the holders (another subnet, a client
//! isolated access point), and a vehicle must never wait on the depot's guess. A grant of some
//! groups ends the deferral.
//!
//! Everything here is fed `now`; nothing reads a clock, so the rule is table-tested with virtual
//! time and `netsim` can run it for a simulated yard.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use proto::{BlobId, ChunkGroupRanges};

/// How long the depot holds back groups it has just sent, and how long it lets a vehicle wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedConfig {
    /// Groups served to a connected peer are not served to another for this long, unless the
    /// receiver announces them first (after which its neighbours fetch them there). Long enough
    /// for a request to finish and the receiver's next have push (500 ms) on a loaded yard.
    pub propagation_grace: Duration,
    /// A peer refused everything for this long in a row is served in full.
    pub max_defer: Duration,
    /// Records of served groups kept per blob at most, over all recipients; older ones are
    /// dropped first (they only ever make the depot serve again, never refuse).
    pub max_served_records: usize,
    /// Connected peers that must distrust a peer (for a blob) before its claims are ignored for
    /// everyone, not only for those who said so. Zero: never for everyone.
    pub distrust_quorum: usize,
}

impl Default for SeedConfig {
    fn default() -> Self {
        Self {
            propagation_grace: Duration::from_secs(3),
            max_defer: Duration::from_secs(15),
            max_served_records: 4096,
            distrust_quorum: 2,
        }
    }
}

/// What [`Seeder::grant`] decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Groups to send.
    pub serve: ChunkGroupRanges,
    /// Requested groups held back: held by, or on their way to, the asker's neighbours.
    pub held_back: ChunkGroupRanges,
    /// True when everything was served because the asker had been deferred for
    /// [`SeedConfig::max_defer`].
    pub deferral_expired: bool,
}

/// A peer of the yard as the tracker sees it, for a "who has what" answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder<P> {
    /// The peer.
    pub peer: P,
    /// Groups of the blob it announced.
    pub groups: u64,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedStats {
    /// Requests granted in full or in part.
    pub granted: u64,
    /// Requests refused in full (the asker was deferred).
    pub deferred: u64,
    /// Requests served in full because their asker's deferral ran out.
    pub deferral_expired: u64,
    /// Groups held back, summed over requests.
    pub groups_held_back: u64,
    /// Peers reported for bad data (new accuser, accused and blob only).
    pub distrusts: u64,
}

/// A peer some connected peers distrust for a blob, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accused<P> {
    /// The peer said to have sent bad data.
    pub peer: P,
    /// The blob.
    pub blob: BlobId,
    /// Connected peers that said so.
    pub accusers: usize,
    /// Whether its claims are ignored for everyone ([`SeedConfig::distrust_quorum`] reached).
    pub for_everyone: bool,
}

/// Peers one peer distrusts per blob, at most this many per blob (a vehicle bans few).
const MAX_DISTRUSTED: usize = 64;

#[derive(Debug)]
struct PeerState<P> {
    /// Groups held, per blob, as announced.
    holds: HashMap<BlobId, ChunkGroupRanges>,
    /// Per blob: since when every request was refused in full.
    deferred_since: HashMap<BlobId, Instant>,
    /// Per blob: peers this one said sent it bad data.
    distrusts: HashMap<BlobId, BTreeSet<P>>,
}

impl<P> Default for PeerState<P> {
    fn default() -> Self {
        Self {
            holds: HashMap::new(),
            deferred_since: HashMap::new(),
            distrusts: HashMap::new(),
        }
    }
}

/// The depot's super-seeding decisions and the yard's have-maps; see the module docs.
#[derive(Debug)]
pub struct Seeder<P> {
    config: SeedConfig,
    peers: BTreeMap<P, PeerState<P>>,
    /// Per blob: what was served to whom, and when.
    served: HashMap<BlobId, ServedRecords<P>>,
    stats: SeedStats,
}

impl<P: Ord + Clone> Seeder<P> {
    /// An empty yard.
    pub fn new(config: SeedConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
            served: HashMap::new(),
            stats: SeedStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SeedConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> SeedStats {
        self.stats
    }

    /// Peers connected now.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// `peer` connected. Idempotent.
    pub fn connected(&mut self, peer: P) {
        self.peers.entry(peer).or_default();
    }

    /// `peer`'s last connection closed: what it holds is out of reach, and what was sent to it
    /// no longer holds anything back.
    pub fn disconnected(&mut self, peer: &P) {
        self.peers.remove(peer);
        for records in self.served.values_mut() {
            records.forget(peer);
        }
        self.served.retain(|_, records| !records.is_empty());
    }

    /// `peer` announced `groups` of `blob`: all it holds when `replace`, else groups gained.
    /// Ignored for a peer that is not connected (a late message).
    pub fn holds(&mut self, peer: &P, blob: BlobId, groups: &ChunkGroupRanges, replace: bool) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        let held = state.holds.entry(blob).or_default();
        *held = if replace {
            groups.clone()
        } else {
            held.union(groups)
        };
    }

    /// What `peer` announced of `blob`.
    pub fn held_by(&self, peer: &P, blob: &BlobId) -> Option<&ChunkGroupRanges> {
        self.peers.get(peer)?.holds.get(blob)
    }

    /// Decides which of `requested` (groups of `blob` that `asker` asked for) to send; records
    /// them as served at `now`. See the module docs for the rule.
    pub fn grant(
        &mut self,
        now: Instant,
        asker: &P,
        blob: BlobId,
        requested: &ChunkGroupRanges,
    ) -> Grant {
        self.expire(now, blob);
        let ignored = self.ignored(asker, &blob);
        let mut elsewhere = ChunkGroupRanges::empty();
        for (peer, state) in &self.peers {
            if peer == asker || ignored.contains(peer) {
                continue;
            }
            if let Some(held) = state.holds.get(&blob) {
                if held.intersects(requested) {
                    elsewhere = elsewhere.union(&held.intersection(requested));
                }
            }
        }
        if let Some(records) = self.served.get(&blob) {
            // The asker's own records are skipped whole: a single fast peer asking hundreds of
            // times within the grace period costs nothing per request.
            for (to, sent) in &records.by_peer {
                if to == asker || ignored.contains(to) {
                    continue;
                }
                for (_, groups) in sent {
                    if groups.intersects(requested) {
                        elsewhere = elsewhere.union(&groups.intersection(requested));
                    }
                }
            }
        }
        let mut serve = requested.difference(&elsewhere);
        let mut held_back = requested.intersection(&elsewhere);
        let mut deferral_expired = false;
        let state = self.peers.entry(asker.clone()).or_default();
        if serve.is_empty() {
            let since = *state.deferred_since.entry(blob).or_insert(now);
            if now.saturating_duration_since(since) >= self.config.max_defer {
                serve = requested.clone();
                held_back = ChunkGroupRanges::empty();
                deferral_expired = true;
                state.deferred_since.remove(&blob);
            }
        } else {
            state.deferred_since.remove(&blob);
        }
        self.stats.groups_held_back += held_back.group_count();
        if serve.is_empty() {
            self.stats.deferred += 1;
        } else {
            self.stats.granted += 1;
            if deferral_expired {
                self.stats.deferral_expired += 1;
            }
            self.record(now, asker, blob, &serve);
        }
        Grant {
            serve,
            held_back,
            deferral_expired,
        }
    }

    /// `asker` finished receiving `groups` of `blob` at `now` (a request takes a while on a
    /// loaded yard): they are held back from others for the grace period from now.
    pub fn served(&mut self, now: Instant, asker: &P, blob: BlobId, groups: &ChunkGroupRanges) {
        if groups.is_empty() || !self.peers.contains_key(asker) {
            return;
        }
        self.expire(now, blob);
        self.record(now, asker, blob, groups);
    }

    /// `asker` says `accused` sent it data of `blob` that failed verification (it banned it):
    /// from now on `accused`'s claims and what was sent to it hold nothing back from `asker`,
    /// and from everyone once [`SeedConfig::distrust_quorum`] connected peers said so. Returns
    /// whether this was news. Ignored from a peer that is not connected, or about itself.
    pub fn distrust(&mut self, asker: &P, blob: BlobId, accused: P) -> bool {
        if *asker == accused {
            return false;
        }
        let Some(state) = self.peers.get_mut(asker) else {
            return false;
        };
        let distrusted = state.distrusts.entry(blob).or_default();
        if distrusted.contains(&accused) || distrusted.len() >= MAX_DISTRUSTED {
            return false;
        }
        distrusted.insert(accused);
        // It asked to be served in spite of the accused: no deferral to carry over.
        state.deferred_since.remove(&blob);
        self.stats.distrusts += 1;
        true
    }

    /// Peers whose claims about `blob` hold nothing back from `asker`: those it distrusts, and
    /// those a quorum of connected peers distrusts.
    fn ignored(&self, asker: &P, blob: &BlobId) -> BTreeSet<P> {
        let mut ignored: BTreeSet<P> = self
            .peers
            .get(asker)
            .and_then(|state| state.distrusts.get(blob))
            .cloned()
            .unwrap_or_default();
        ignored.extend(
            self.accused()
                .into_iter()
                .filter(|accused| accused.for_everyone && accused.blob == *blob)
                .map(|accused| accused.peer),
        );
        ignored
    }

    /// Every peer that some connected peer distrusts, per blob, with how many say so (in peer
    /// order, then blob).
    pub fn accused(&self) -> Vec<Accused<P>> {
        let mut counts: BTreeMap<(P, BlobId), usize> = BTreeMap::new();
        for state in self.peers.values() {
            for (blob, peers) in &state.distrusts {
                for peer in peers {
                    *counts.entry((peer.clone(), *blob)).or_default() += 1;
                }
            }
        }
        let quorum = self.config.distrust_quorum;
        counts
            .into_iter()
            .map(|((peer, blob), accusers)| Accused {
                peer,
                blob,
                accusers,
                for_everyone: quorum > 0 && accusers >= quorum,
            })
            .collect()
    }

    /// Peers other than `asker` that announced groups of `blob`, most groups first (ties in
    /// peer order), at most `limit`. Peers whose claims hold nothing back from `asker` (see
    /// [`Seeder::distrust`]) are left out.
    pub fn yard(&self, blob: &BlobId, asker: &P, limit: usize) -> Vec<Holder<P>> {
        let ignored = self.ignored(asker, blob);
        let mut holders: Vec<Holder<P>> = self
            .peers
            .iter()
            .filter(|(peer, _)| *peer != asker && !ignored.contains(peer))
            .filter_map(|(peer, state)| {
                let groups = state.holds.get(blob)?.group_count();
                Some(Holder {
                    peer: peer.clone(),
                    groups,
                })
            })
            .collect();
        // Stable: equal counts keep peer order.
        holders.sort_by_key(|holder| std::cmp::Reverse(holder.groups));
        holders.truncate(limit);
        holders
    }

    fn record(&mut self, now: Instant, to: &P, blob: BlobId, groups: &ChunkGroupRanges) {
        let records = self.served.entry(blob).or_default();
        records.push(now, to, groups.clone());
        while records.count > self.config.max_served_records.max(1) {
            records.drop_oldest();
        }
    }

    fn expire(&mut self, now: Instant, blob: BlobId) {
        let grace = self.config.propagation_grace;
        if let Some(records) = self.served.get_mut(&blob) {
            records.expire(|at| now.saturating_duration_since(at) >= grace);
            if records.is_empty() {
                self.served.remove(&blob);
            }
        }
    }
}

/// What was served of one blob: per recipient, (when, which groups), oldest first.
#[derive(Debug)]
struct ServedRecords<P> {
    by_peer: BTreeMap<P, VecDeque<(Instant, ChunkGroupRanges)>>,
    /// Records in all the queues.
    count: usize,
}

impl<P> Default for ServedRecords<P> {
    fn default() -> Self {
        Self {
            by_peer: BTreeMap::new(),
            count: 0,
        }
    }
}

impl<P: Ord + Clone> ServedRecords<P> {
    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(&mut self, at: Instant, to: &P, groups: ChunkGroupRanges) {
        self.by_peer
            .entry(to.clone())
            .or_default()
            .push_back((at, groups));
        self.count += 1;
    }

    /// Drops the oldest record of any recipient.
    fn drop_oldest(&mut self) {
        let oldest = self
            .by_peer
            .iter()
            .filter_map(|(peer, sent)| Some((sent.front()?.0, peer)))
            .min_by_key(|(at, _)| *at)
            .map(|(_, peer)| peer.clone());
        let Some(peer) = oldest else {
            return;
        };
        if let Some(sent) = self.by_peer.get_mut(&peer) {
            sent.pop_front();
            self.count -= 1;
            if sent.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Drops every record for which `old` says so (they are in time order per recipient).
    fn expire(&mut self, old: impl Fn(Instant) -> bool) {
        let mut dropped = 0;
        self.by_peer.retain(|_, sent| {
            while sent.front().is_some_and(|(at, _)| old(*at)) {
                sent.pop_front();
                dropped += 1;
            }
            !sent.is_empty()
        });
        self.count -= dropped;
    }

    /// Forgets what was served to `peer`.
    fn forget(&mut self, peer: &P) {
        if let Some(sent) = self.by_peer.remove(peer) {
            self.count -= sent.len();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn blob() -> BlobId {
        BlobId::of(b"release")
    }

    fn groups(range: std::ops::Range<u64>) -> ChunkGroupRanges {
        ChunkGroupRanges::from_range(range)
    }

    fn yard(peers: &[u32]) -> (Seeder<u32>, Instant) {
        let mut seeder = Seeder::new(SeedConfig::default());
        for &peer in peers {
            seeder.connected(peer);
        }
        (seeder, Instant::now())
    }

    #[test]
    fn an_empty_yard_is_served_everything() {
        let (mut seeder, t0) = yard(&[1]);
        let grant = seeder.grant(t0, &1, blob(), &groups(0..16));
        assert_eq!(grant.serve, groups(0..16));
        assert!(grant.held_back.is_empty());
    }

    #[test]
    fn groups_a_neighbour_holds_are_held_back() {
        let (mut seeder, t0) = yard(&[1, 2]);
        seeder.holds(&2, blob(), &groups(0..8), true);
        let grant = seeder.grant(t0, &1, blob(), &groups(0..16));
        assert_eq!(grant.serve, groups(8..16));
        assert_eq!(grant.held_back, groups(0..8));
        // Its own holdings never hold anything back from the asker.
        let grant = seeder.grant(t0, &2, blob(), &groups(0..4));
        assert_eq!(grant.serve, groups(0..4));
    }

    #[test]
    fn groups_just_sent_to_a_neighbour_wait_out_the_grace_then_go_again() {
        let (mut seeder, t0) = yard(&[1, 2]);
        assert_eq!(
            seeder.grant(t0, &1, blob(), &groups(0..16)).serve,
            groups(0..16)
        );
        // Vehicle 2 asks for the same piece at once: nothing, it is on its way into the yard.
        let grant = seeder.grant(t0 + S, &2, blob(), &groups(0..16));
        assert!(grant.serve.is_empty());
        assert_eq!(seeder.stats().deferred, 1);
        // Vehicle 1 never announced it (its request broke): after the grace it goes again.
        let grant = seeder.grant(t0 + 3 * S, &2, blob(), &groups(0..16));
        assert_eq!(grant.serve, groups(0..16));
    }

    #[test]
    fn a_finished_request_restarts_the_grace() {
        let (mut seeder, t0) = yard(&[1, 2]);
        seeder.grant(t0, &1, blob(), &groups(0..16));
        seeder.served(t0 + 2 * S, &1, blob(), &groups(0..16));
        assert!(
            seeder
                .grant(t0 + 4 * S, &2, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert_eq!(
            seeder.grant(t0 + 5 * S, &2, blob(), &groups(0..16)).serve,
            groups(0..16)
        );
    }

    #[test]
    fn a_vehicle_that_cannot_reach_the_holders_is_served_after_max_defer() {
        let (mut seeder, t0) = yard(&[1, 2]);
        seeder.holds(&2, blob(), &groups(0..100), true);
        for second in 0..15 {
            let grant = seeder.grant(t0 + second * S, &1, blob(), &groups(0..16));
            assert!(grant.serve.is_empty(), "second {second}");
        }
        let grant = seeder.grant(t0 + 15 * S, &1, blob(), &groups(0..16));
        assert_eq!(grant.serve, groups(0..16));
        assert!(grant.deferral_expired);
        // The deferral starts afresh.
        assert!(
            seeder
                .grant(t0 + 16 * S, &1, blob(), &groups(16..32))
                .serve
                .is_empty()
        );
    }

    #[test]
    fn a_partial_grant_ends_the_deferral() {
        let (mut seeder, t0) = yard(&[1, 2]);
        seeder.holds(&2, blob(), &groups(0..16), true);
        assert!(
            seeder
                .grant(t0, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert_eq!(
            seeder.grant(t0 + 10 * S, &1, blob(), &groups(8..24)).serve,
            groups(16..24)
        );
        // Deferred again from 11 s: not served in full at 20 s.
        assert!(
            seeder
                .grant(t0 + 11 * S, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert!(
            seeder
                .grant(t0 + 20 * S, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert!(
            seeder
                .grant(t0 + 26 * S, &1, blob(), &groups(0..16))
                .deferral_expired
        );
    }

    #[test]
    fn a_neighbour_that_leaves_takes_its_groups_and_its_hold_with_it() {
        let (mut seeder, t0) = yard(&[1, 2, 3]);
        seeder.holds(&2, blob(), &groups(0..8), true);
        seeder.grant(t0, &3, blob(), &groups(8..16));
        assert!(
            seeder
                .grant(t0, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        seeder.disconnected(&2);
        seeder.disconnected(&3);
        assert_eq!(
            seeder.grant(t0, &1, blob(), &groups(0..16)).serve,
            groups(0..16)
        );
        // A late announcement from a gone peer changes nothing.
        seeder.holds(&2, blob(), &groups(0..100), true);
        assert_eq!(seeder.held_by(&2, &blob()), None);
    }

    #[test]
    fn a_distrusted_peer_holds_nothing_back_from_its_accuser_and_from_all_at_quorum() {
        let (mut seeder, t0) = yard(&[1, 2, 3, 9]);
        // 9 claims everything and lies; 1 asks first: deferred to 9.
        seeder.holds(&9, blob(), &groups(0..100), true);
        assert!(
            seeder
                .grant(t0, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert_eq!(seeder.yard(&blob(), &1, 8).len(), 1);
        // 1 caught 9: served at once, and 9 is no longer named to it.
        assert!(seeder.distrust(&1, blob(), 9));
        assert!(!seeder.distrust(&1, blob(), 9), "said twice is not news");
        let grant = seeder.grant(t0 + S, &1, blob(), &groups(0..16));
        assert_eq!(grant.serve, groups(0..16));
        assert!(!grant.deferral_expired);
        assert!(seeder.yard(&blob(), &1, 8).is_empty());
        // One accuser does not speak for the others: 2 still defers to 9 (and to what 1 got).
        assert!(
            seeder
                .grant(t0 + S, &2, blob(), &groups(16..32))
                .serve
                .is_empty()
        );
        assert_eq!(
            seeder.accused(),
            vec![Accused {
                peer: 9,
                blob: blob(),
                accusers: 1,
                for_everyone: false
            }]
        );
        // A second accuser makes the quorum of 2: 3 is served without having said anything.
        assert!(seeder.distrust(&2, blob(), 9));
        assert_eq!(
            seeder.grant(t0 + S, &3, blob(), &groups(32..48)).serve,
            groups(32..48)
        );
        assert!(seeder.accused()[0].for_everyone);
        assert!(seeder.yard(&blob(), &3, 8).is_empty());
        // Only for that blob.
        let other = BlobId::of(b"other");
        seeder.holds(&9, other, &groups(0..4), true);
        assert!(
            seeder
                .grant(t0 + S, &3, other, &groups(0..4))
                .serve
                .is_empty()
        );
        // An accuser that leaves takes its word with it: below the quorum again.
        seeder.disconnected(&2);
        assert!(
            seeder
                .grant(t0 + S, &3, blob(), &groups(48..64))
                .serve
                .is_empty()
        );
        assert_eq!(seeder.stats().distrusts, 2);
    }

    #[test]
    fn what_was_sent_to_a_distrusted_peer_holds_nothing_back_and_nonsense_is_ignored() {
        let (mut seeder, t0) = yard(&[1, 9]);
        seeder.grant(t0, &9, blob(), &groups(0..16));
        assert!(
            seeder
                .grant(t0, &1, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        seeder.distrust(&1, blob(), 9);
        assert_eq!(
            seeder.grant(t0, &1, blob(), &groups(0..16)).serve,
            groups(0..16)
        );
        // About itself, or from a peer not connected: nothing changes.
        assert!(!seeder.distrust(&1, blob(), 1));
        assert!(!seeder.distrust(&5, blob(), 9));
        // A quorum of zero never ignores a peer for everyone.
        let mut seeder = Seeder::new(SeedConfig {
            distrust_quorum: 0,
            ..SeedConfig::default()
        });
        for peer in [1, 2, 3, 9] {
            seeder.connected(peer);
        }
        seeder.holds(&9, blob(), &groups(0..16), true);
        seeder.distrust(&1, blob(), 9);
        seeder.distrust(&2, blob(), 9);
        assert!(
            seeder
                .grant(t0, &3, blob(), &groups(0..16))
                .serve
                .is_empty()
        );
        assert!(!seeder.accused()[0].for_everyone);
    }

    #[test]
    fn announcements_add_up_unless_they_replace() {
        let (mut seeder, _) = yard(&[1]);
        seeder.holds(&1, blob(), &groups(0..4), true);
        seeder.holds(&1, blob(), &groups(8..12), false);
        let mut both = groups(0..4);
        both.insert(8..12);
        assert_eq!(seeder.held_by(&1, &blob()), Some(&both));
        seeder.holds(&1, blob(), &groups(2..3), true);
        assert_eq!(seeder.held_by(&1, &blob()), Some(&groups(2..3)));
    }

    #[test]
    fn other_blobs_do_not_interfere() {
        let (mut seeder, t0) = yard(&[1, 2]);
        let other = BlobId::of(b"other");
        seeder.holds(&2, other, &groups(0..16), true);
        seeder.grant(t0, &2, other, &groups(16..32));
        assert_eq!(
            seeder.grant(t0, &1, blob(), &groups(0..32)).serve,
            groups(0..32)
        );
    }

    #[test]
    fn the_yard_lists_holders_most_first_without_the_asker() {
        let (mut seeder, _) = yard(&[1, 2, 3, 4]);
        seeder.holds(&2, blob(), &groups(0..4), true);
        seeder.holds(&3, blob(), &groups(0..40), true);
        seeder.holds(&1, blob(), &groups(0..400), true);
        let holders = seeder.yard(&blob(), &1, 8);
        assert_eq!(
            holders,
            vec![
                Holder {
                    peer: 3,
                    groups: 40
                },
                Holder { peer: 2, groups: 4 }
            ]
        );
        assert_eq!(seeder.yard(&blob(), &1, 1).len(), 1);
    }

    #[test]
    fn served_records_are_bounded() {
        let mut seeder = Seeder::new(SeedConfig {
            max_served_records: 2,
            ..SeedConfig::default()
        });
        let t0 = Instant::now();
        seeder.connected(1);
        seeder.connected(2);
        for piece in 0..3 {
            seeder.grant(t0, &1, blob(), &groups(piece * 16..piece * 16 + 16));
        }
        // The oldest record was dropped: its groups may go again (never the reverse).
        assert_eq!(
            seeder.grant(t0, &2, blob(), &groups(0..16)).serve,
            groups(0..16)
        );
        assert!(
            seeder
                .grant(t0, &2, blob(), &groups(32..48))
                .serve
                .is_empty()
        );
    }

    #[test]
    fn the_bound_drops_the_oldest_record_of_any_recipient() {
        let mut seeder = Seeder::new(SeedConfig {
            max_served_records: 2,
            ..SeedConfig::default()
        });
        let t0 = Instant::now();
        for peer in 1..=3 {
            seeder.connected(peer);
        }
        seeder.grant(t0, &1, blob(), &groups(0..16));
        seeder.grant(t0 + S / 4, &2, blob(), &groups(16..32));
        seeder.grant(t0 + S / 2, &1, blob(), &groups(32..48));
        // 1's first record (the oldest of all) went; 2's and 1's second hold back from 3.
        let grant = seeder.grant(t0 + S / 2, &3, blob(), &groups(0..48));
        assert_eq!(grant.serve, groups(0..16));
        // 3's grant is recorded in turn, and 2's record was the oldest: 16..32 may go again.
        assert_eq!(
            seeder.grant(t0 + S / 2, &1, blob(), &groups(16..32)).serve,
            groups(16..32)
        );
        // What was sent to a peer that left holds nothing back, and is counted out of the bound.
        seeder.disconnected(&1);
        seeder.disconnected(&3);
        assert_eq!(
            seeder.grant(t0 + S / 2, &2, blob(), &groups(0..48)).serve,
            groups(0..48)
        );
    }

    /// Ten vehicles start together, each asking the depot for its own rarest pieces first and
    /// then for whatever no neighbour announced yet; every announcement lands a little later.
    /// The depot sends about one copy of the blob however the requests interleave.
    #[test]
    fn a_yard_starting_together_gets_about_one_copy_from_the_depot() {
        const PIECES: u64 = 64;
        let (mut seeder, t0) = yard(&(0..10).collect::<Vec<u32>>());
        let mut held: Vec<ChunkGroupRanges> = vec![ChunkGroupRanges::empty(); 10];
        let mut sent_groups = 0u64;
        let mut now = t0;
        for round in 0..200u64 {
            now += Duration::from_millis(100);
            for vehicle in 0..10u32 {
                let mine = &held[vehicle as usize];
                // The piece it would ask for: its seeded tie-break among missing pieces.
                let piece = (0..PIECES)
                    .map(|p| (p * 7 + u64::from(vehicle) * 13 + round) % PIECES)
                    .find(|&p| !mine.contains(proto::ChunkGroup(p * 16)));
                let Some(piece) = piece else { continue };
                let grant =
                    seeder.grant(now, &vehicle, blob(), &groups(piece * 16..piece * 16 + 16));
                sent_groups += grant.serve.group_count();
                held[vehicle as usize] = held[vehicle as usize].union(&grant.serve);
                // Neighbours fill the rest from whoever announced it.
                let yard_holds = (0..10u32)
                    .filter(|&v| v != vehicle)
                    .filter_map(|v| seeder.held_by(&v, &blob()).cloned())
                    .fold(ChunkGroupRanges::empty(), |a, b| a.union(&b));
                held[vehicle as usize] = held[vehicle as usize].union(&yard_holds);
            }
            for vehicle in 0..10u32 {
                let holds = held[vehicle as usize].clone();
                seeder.holds(&vehicle, blob(), &holds, true);
            }
        }
        assert!(held.iter().all(|h| h.group_count() == PIECES * 16));
        let copies = sent_groups as f64 / (PIECES * 16) as f64;
        assert!(copies <= 1.2, "the depot sent {copies:.2} copies");
    }
}
