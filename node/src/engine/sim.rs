//! A virtual-time depot yard for the engine's tests: scripted peers with their own bandwidth,
//! latency and behaviour, a runtime stand-in that carries out the engine's actions, and a clock
//! that jumps to the next event or engine deadline. Every action is checked against the engine's
//! promises as it happens.
//!
//! The model: a request reaches the peer after one latency; the peer's uplink sends one group at
//! a time, round-robin over its open streams (as QUIC shares a connection between streams); a
//! group arrives one latency after it was sent. A cancel reaches the peer after one latency;
//! groups already sent still arrive, so the engine sees late events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use proto::wire::MAX_GROUP;
use proto::{BlobId, ChunkGroup, ChunkGroupRanges};

use super::{Action, Event, Failure, LAYOUT, RequestId, Transfer, TransferConfig};

/// How a scripted peer answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// Sends what it holds.
    Honest,
    /// Sends a corrupt copy of `bad_group` (the runtime reports `Misbehaved`); after its ban it
    /// reconnects and announces itself again.
    Liar { bad_group: u64 },
    /// Accepts requests and never answers them.
    Stalls,
    /// Answers every request `NotHeld`.
    Refuses,
    /// Answers its first `times` requests `Busy`, then honestly.
    Busy { times: u32 },
}

/// What a peer's have-map says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// Exactly what it holds.
    Holdings,
    /// These groups, whatever it holds.
    Groups(ChunkGroupRanges),
    /// It sends no have-map.
    Nothing,
}

/// A scripted peer.
#[derive(Clone, Debug)]
pub(super) struct PeerSpec {
    pub(super) behaviour: Behaviour,
    pub(super) bytes_per_second: u64,
    pub(super) latency: Duration,
    /// The groups it really holds; `None` for the whole blob.
    pub(super) holds: Option<ChunkGroupRanges>,
    pub(super) claim: Claim,
    pub(super) arrives: Duration,
    pub(super) leaves: Option<Duration>,
}

impl PeerSpec {
    /// An honest peer holding the whole blob, 1 MB/s, 20 ms away, there from the start.
    pub(super) fn full() -> Self {
        Self {
            behaviour: Behaviour::Honest,
            bytes_per_second: 1_000_000,
            latency: Duration::from_millis(20),
            holds: None,
            claim: Claim::Holdings,
            arrives: Duration::ZERO,
            leaves: None,
        }
    }

    pub(super) fn behaving(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    pub(super) fn speed(mut self, bytes_per_second: u64) -> Self {
        self.bytes_per_second = bytes_per_second;
        self
    }

    pub(super) fn latency_ms(mut self, millis: u64) -> Self {
        self.latency = Duration::from_millis(millis);
        self
    }

    pub(super) fn holding(mut self, groups: ChunkGroupRanges) -> Self {
        self.holds = Some(groups);
        self
    }

    pub(super) fn claiming(mut self, claim: Claim) -> Self {
        self.claim = claim;
        self
    }

    pub(super) fn arriving_at(mut self, at: Duration) -> Self {
        self.arrives = at;
        self
    }

    pub(super) fn leaving_at(mut self, at: Duration) -> Self {
        self.leaves = Some(at);
        self
    }
}

/// A request the engine sent, as the runtime saw it.
#[derive(Clone, Debug)]
pub(super) struct SentRequest {
    pub(super) at: Duration,
    pub(super) peer: u32,
    pub(super) id: RequestId,
    pub(super) groups: ChunkGroupRanges,
    /// True if some of `groups` were being fetched by another open request at the time.
    pub(super) duplicate: bool,
}

#[derive(Debug)]
struct Stream {
    request: RequestId,
    groups: VecDeque<u64>,
}

#[derive(Debug, Default)]
struct Uplink {
    streams: VecDeque<Stream>,
    sending: bool,
    busy_answers_left: u32,
}

#[derive(Debug)]
enum Scheduled {
    /// An event from `peer` reaches the engine.
    Deliver {
        peer: u32,
        event: Event<u32>,
    },
    Connect(u32),
    Announce(u32),
    Vanish(u32),
    Disconnect(u32),
    StreamArrives(u32, RequestId, ChunkGroupRanges),
    CancelArrives(u32, RequestId),
    UplinkFree(u32),
}

/// The yard and the engine under test.
#[derive(Debug)]
pub(super) struct Sim {
    pub(super) transfer: Transfer<u32>,
    start: Instant,
    now: Instant,
    size: u64,
    config: TransferConfig,
    specs: Vec<PeerSpec>,
    uplinks: BTreeMap<u32, Uplink>,
    queue: BTreeMap<(Instant, u64), Scheduled>,
    sequence: u64,
    connected: BTreeSet<u32>,
    announced: BTreeMap<u32, ChunkGroupRanges>,
    open: BTreeMap<RequestId, (u32, ChunkGroupRanges)>,
    banned: BTreeSet<u32>,
    /// Check that duplicates are only sent when every claimed missing group is in flight. Only
    /// sound when peers' claims are true (the engine forgets false claims the yard still sees).
    pub(super) strict_endgame: bool,
    pub(super) log: Vec<String>,
    pub(super) requests: Vec<SentRequest>,
    pub(super) cancels: Vec<(Duration, u32, RequestId)>,
    pub(super) bans: Vec<(Duration, u32)>,
    pub(super) done_at: Option<Duration>,
    /// The most peers with open requests at one time.
    pub(super) most_busy_peers: usize,
    /// The most requests open at one peer at one time.
    pub(super) most_open_at_one_peer: usize,
}

impl Sim {
    /// A yard of `specs` (peer `i` is `specs[i]`) and a transfer of a blob of `size` bytes, of
    /// which `held` is already stored; `size_known` says whether the engine is told the size.
    pub(super) fn new(
        size: u64,
        size_known: bool,
        held: ChunkGroupRanges,
        config: TransferConfig,
        specs: Vec<PeerSpec>,
    ) -> Self {
        let start = Instant::now();
        let blob = BlobId::of(b"sim blob");
        let transfer = Transfer::new(
            blob,
            size_known.then_some(size),
            held,
            config.clone(),
            start,
        );
        let mut sim = Self {
            transfer,
            start,
            now: start,
            size,
            config,
            specs,
            uplinks: BTreeMap::new(),
            queue: BTreeMap::new(),
            sequence: 0,
            connected: BTreeSet::new(),
            announced: BTreeMap::new(),
            open: BTreeMap::new(),
            banned: BTreeSet::new(),
            strict_endgame: false,
            log: Vec::new(),
            requests: Vec::new(),
            cancels: Vec::new(),
            bans: Vec::new(),
            done_at: None,
            most_busy_peers: 0,
            most_open_at_one_peer: 0,
        };
        for index in 0..sim.specs.len() {
            let peer = u32::try_from(index).expect("a test yard has few peers");
            let spec = &sim.specs[index];
            let (arrives, leaves) = (spec.arrives, spec.leaves);
            sim.uplinks.insert(peer, Uplink::default());
            if let Behaviour::Busy { times } = spec.behaviour {
                sim.uplinks.entry(peer).or_default().busy_answers_left = times;
            }
            sim.at(start + arrives, Scheduled::Connect(peer));
            if let Some(leaves) = leaves {
                sim.at(start + leaves, Scheduled::Vanish(peer));
            }
        }
        sim
    }

    pub(super) fn all_groups(&self) -> ChunkGroupRanges {
        LAYOUT.all_groups(self.size)
    }

    /// Runs until the engine says `Done`, nothing is left to happen, or `limit` of virtual time
    /// has passed.
    pub(super) fn run(&mut self, limit: Duration) {
        self.drain_actions();
        while self.done_at.is_none() {
            let next_event = self.queue.keys().next().map(|&(at, _)| at);
            let next_timeout = self.transfer.poll_timeout();
            let Some(next) = next_event.into_iter().chain(next_timeout).min() else {
                break;
            };
            if next > self.start + limit {
                break;
            }
            self.now = self.now.max(next);
            if next_timeout.is_some_and(|at| at <= self.now) {
                self.transfer.handle_timeout(self.now);
                self.drain_actions();
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let item = entry.remove();
                self.process(item);
                self.drain_actions();
            }
        }
    }

    /// The virtual time elapsed.
    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn at(&mut self, when: Instant, item: Scheduled) {
        self.sequence += 1;
        self.queue.insert((when, self.sequence), item);
    }

    fn spec(&self, peer: u32) -> &PeerSpec {
        &self.specs[peer as usize]
    }

    fn holdings(&self, peer: u32) -> ChunkGroupRanges {
        self.spec(peer)
            .holds
            .clone()
            .unwrap_or_else(|| self.all_groups())
    }

    fn process(&mut self, item: Scheduled) {
        match item {
            Scheduled::Deliver { event, .. } => {
                if let Event::RequestFinished { request, .. }
                | Event::RequestFailed { request, .. } = &event
                {
                    self.open.remove(request);
                }
                self.transfer.handle(self.now, event);
            }
            Scheduled::Connect(peer) => {
                self.connected.insert(peer);
                self.transfer
                    .handle(self.now, Event::PeerConnected { peer });
                let latency = self.spec(peer).latency;
                if self.spec(peer).claim != Claim::Nothing {
                    self.at(self.now + latency, Scheduled::Announce(peer));
                }
            }
            Scheduled::Announce(peer) => {
                if !self.connected.contains(&peer) {
                    return;
                }
                let groups = match &self.spec(peer).claim {
                    Claim::Groups(groups) => groups.clone(),
                    _ => self.holdings(peer),
                };
                self.announced.insert(peer, groups.clone());
                let size = Some(self.size);
                self.transfer
                    .handle(self.now, Event::HaveMap { peer, size, groups });
            }
            Scheduled::Vanish(peer) => {
                if !self.connected.contains(&peer) {
                    return;
                }
                self.silence(peer);
                let lost: Vec<RequestId> = self.open_requests_of(peer);
                for request in lost {
                    self.open.remove(&request);
                    let failure = Failure::Lost;
                    self.transfer.handle(
                        self.now,
                        Event::RequestFailed {
                            peer,
                            request,
                            failure,
                        },
                    );
                }
                self.disconnect(peer);
            }
            Scheduled::Disconnect(peer) => {
                if self.connected.contains(&peer) {
                    self.silence(peer);
                    self.disconnect(peer);
                }
            }
            Scheduled::StreamArrives(peer, request, groups) => self.serve(peer, request, &groups),
            Scheduled::CancelArrives(peer, request) => {
                if let Some(uplink) = self.uplinks.get_mut(&peer) {
                    uplink.streams.retain(|stream| stream.request != request);
                }
            }
            Scheduled::UplinkFree(peer) => {
                if let Some(uplink) = self.uplinks.get_mut(&peer) {
                    uplink.sending = false;
                }
                self.send_next(peer);
            }
        }
    }

    fn disconnect(&mut self, peer: u32) {
        self.connected.remove(&peer);
        self.announced.remove(&peer);
        self.transfer.handle(self.now, Event::PeerClosed { peer });
    }

    fn open_requests_of(&self, peer: u32) -> Vec<RequestId> {
        self.open
            .iter()
            .filter(|(_, (owner, _))| *owner == peer)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Stops everything `peer` was doing: its streams, and everything of its still on the way.
    fn silence(&mut self, peer: u32) {
        if let Some(uplink) = self.uplinks.get_mut(&peer) {
            uplink.streams.clear();
        }
        self.queue.retain(|_, item| match item {
            Scheduled::Deliver { peer: from, .. }
            | Scheduled::StreamArrives(from, ..)
            | Scheduled::CancelArrives(from, _) => *from != peer,
            _ => true,
        });
    }

    /// The peer receives a request.
    fn serve(&mut self, peer: u32, request: RequestId, groups: &ChunkGroupRanges) {
        if !self.connected.contains(&peer) {
            return;
        }
        let latency = self.spec(peer).latency;
        let refusal = match self.spec(peer).behaviour {
            Behaviour::Stalls => return,
            Behaviour::Refuses => Some(Failure::NotHeld),
            Behaviour::Busy { .. } => {
                let uplink = self.uplinks.entry(peer).or_default();
                if uplink.busy_answers_left > 0 {
                    uplink.busy_answers_left -= 1;
                    Some(Failure::Busy)
                } else {
                    None
                }
            }
            Behaviour::Honest | Behaviour::Liar { .. } => None,
        };
        let count = LAYOUT.group_count(self.size);
        // A request past the end is answered with the last group, which proves the size.
        let served = if groups.end() > count {
            ChunkGroupRanges::from(count - 1..count)
        } else {
            groups.intersection(&self.holdings(peer))
        };
        let refusal = refusal.or_else(|| served.is_empty().then_some(Failure::NotHeld));
        if let Some(failure) = refusal {
            let event = Event::RequestFailed {
                peer,
                request,
                failure,
            };
            self.at(self.now + latency, Scheduled::Deliver { peer, event });
            return;
        }
        let stream = Stream {
            request,
            groups: served.iter().flatten().collect(),
        };
        self.uplinks
            .entry(peer)
            .or_default()
            .streams
            .push_back(stream);
        self.send_next(peer);
    }

    /// The peer's uplink sends the next group of the stream whose turn it is.
    fn send_next(&mut self, peer: u32) {
        let Some(uplink) = self.uplinks.get_mut(&peer) else {
            return;
        };
        if uplink.sending {
            return;
        }
        let Some(mut stream) = uplink.streams.pop_front() else {
            return;
        };
        let Some(group) = stream.groups.pop_front() else {
            return;
        };
        let spec = self.spec(peer);
        let bytes = {
            let range = LAYOUT.group_byte_range(ChunkGroup(group), self.size);
            range.end - range.start
        };
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(spec.bytes_per_second.max(1));
        let sent = self.now + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let arrives = sent + spec.latency;
        let lies = spec.behaviour == Behaviour::Liar { bad_group: group };
        let request = stream.request;
        if lies {
            let failure = Failure::Misbehaved {
                bad_groups: ChunkGroupRanges::from(group..group + 1),
            };
            let event = Event::RequestFailed {
                peer,
                request,
                failure,
            };
            self.at(arrives, Scheduled::Deliver { peer, event });
        } else {
            let groups = ChunkGroupRanges::from(group..group + 1);
            let event = Event::GroupsVerified {
                peer,
                request,
                groups,
                bytes,
            };
            self.at(arrives, Scheduled::Deliver { peer, event });
            if group + 1 == LAYOUT.group_count(self.size) {
                let event = Event::SizeProven { size: self.size };
                self.at(arrives, Scheduled::Deliver { peer, event });
            }
            if stream.groups.is_empty() {
                let event = Event::RequestFinished { peer, request };
                self.at(arrives, Scheduled::Deliver { peer, event });
            } else if let Some(uplink) = self.uplinks.get_mut(&peer) {
                uplink.streams.push_back(stream);
            }
        }
        if let Some(uplink) = self.uplinks.get_mut(&peer) {
            uplink.sending = true;
        }
        self.at(sent, Scheduled::UplinkFree(peer));
    }

    fn drain_actions(&mut self) {
        while let Some(action) = self.transfer.poll_action(self.now) {
            let elapsed = self.elapsed();
            self.log.push(format!("{elapsed:?} {action:?}"));
            match action {
                Action::Request {
                    peer,
                    request,
                    groups,
                } => self.on_request(peer, request, groups),
                Action::Cancel { peer, request } => {
                    let owner = self.open.remove(&request).map(|(owner, _)| owner);
                    assert_eq!(owner, Some(peer), "cancel of {request} that is not open");
                    self.cancels.push((elapsed, peer, request));
                    let latency = self.spec(peer).latency;
                    self.at(self.now + latency, Scheduled::CancelArrives(peer, request));
                }
                Action::Ban { peer } => {
                    assert!(self.banned.insert(peer), "peer {peer} banned twice");
                    self.bans.push((elapsed, peer));
                    // The runtime drops the peer's streams for this blob at once.
                    for request in self.open_requests_of(peer) {
                        self.open.remove(&request);
                    }
                    self.silence(peer);
                    if matches!(self.spec(peer).behaviour, Behaviour::Liar { .. }) {
                        // A liar comes back and tries again.
                        let second = Duration::from_secs(1);
                        self.at(self.now + second, Scheduled::Disconnect(peer));
                        self.at(self.now + 2 * second, Scheduled::Connect(peer));
                    }
                }
                Action::Done => {
                    assert!(self.done_at.is_none(), "Done twice");
                    assert_eq!(self.transfer.held(), &self.all_groups(), "Done too early");
                    self.done_at = Some(elapsed);
                }
            }
        }
    }

    fn on_request(&mut self, peer: u32, id: RequestId, groups: ChunkGroupRanges) {
        assert!(
            self.connected.contains(&peer),
            "request to absent peer {peer}"
        );
        assert!(
            !self.banned.contains(&peer),
            "request to banned peer {peer}"
        );
        assert!(!groups.is_empty(), "empty request");
        let open_at_peer = self.open.values().filter(|(p, _)| *p == peer).count();
        assert!(
            open_at_peer < self.config.max_requests_per_peer.max(1),
            "more than {} requests to peer {peer}",
            self.config.max_requests_per_peer
        );
        let probe = ChunkGroupRanges::from(MAX_GROUP - 1..MAX_GROUP);
        if self.transfer.size().is_none() {
            assert_eq!(groups, probe, "request before the size is known");
            assert!(
                self.open.values().all(|(_, g)| *g != probe),
                "two size probes at once"
            );
        } else {
            let held = self.transfer.held();
            assert!(
                groups.intersection(held).is_empty(),
                "request for held groups {groups} (held {held})"
            );
            assert!(groups.is_subset(&self.all_groups()), "request past the end");
            let per_piece = self.config.groups_per_request.max(1);
            let pieces = (groups.end() - 1) / per_piece - groups.boundaries()[0] / per_piece + 1;
            assert!(
                pieces <= self.config.max_pieces_per_request.max(1),
                "request {groups} spans {pieces} pieces"
            );
            assert!(
                groups.group_count() <= proto::wire::MAX_REQUEST_GROUPS,
                "request {groups} is longer than a server answers"
            );
        }
        let in_flight: ChunkGroupRanges = self
            .open
            .values()
            .fold(ChunkGroupRanges::empty(), |acc, (_, g)| acc.union(g))
            .difference(self.transfer.held());
        let duplicate = !groups.intersection(&in_flight).is_empty();
        if duplicate && self.strict_endgame {
            let usable_claims = self
                .announced
                .iter()
                .filter(|(p, _)| {
                    !self.banned.contains(p)
                        && self
                            .transfer
                            .peers
                            .get(p)
                            .is_none_or(|s| s.backoff.is_none())
                })
                .fold(ChunkGroupRanges::empty(), |acc, (_, g)| acc.union(g));
            let missing = self.all_groups().difference(self.transfer.held());
            assert!(
                missing.intersection(&usable_claims).is_subset(&in_flight),
                "duplicate {groups} before the endgame"
            );
        }
        self.requests.push(SentRequest {
            at: self.elapsed(),
            peer,
            id,
            groups: groups.clone(),
            duplicate,
        });
        self.open.insert(id, (peer, groups.clone()));
        let busy_peers: BTreeSet<u32> = self.open.values().map(|(p, _)| *p).collect();
        self.most_busy_peers = self.most_busy_peers.max(busy_peers.len());
        self.most_open_at_one_peer = self.most_open_at_one_peer.max(open_at_peer + 1);
        let latency = self.spec(peer).latency;
        self.at(
            self.now + latency,
            Scheduled::StreamArrives(peer, id, groups),
        );
    }
}
