//! The engine's promises, checked by driving it directly and through the yard simulator
//! ([`super::sim`]), which also checks every action as it happens (caps, bans, held groups,
//! probes, endgame).

use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proto::wire::MAX_GROUP;
use proto::{BlobId, ChunkGroupRanges};

use super::pieces::start_piece;
use super::sim::{Behaviour, Claim, PeerSpec, Sim};
use super::*;

const GROUP_BYTES: u64 = 16 * 1024;
const HOUR: Duration = Duration::from_secs(3600);

/// A blob of `groups` groups whose last group is short.
fn blob_size(groups: u64) -> u64 {
    groups * GROUP_BYTES - 1000
}

fn span(range: Range<u64>) -> ChunkGroupRanges {
    ChunkGroupRanges::from(range)
}

fn set(ranges: &[Range<u64>]) -> ChunkGroupRanges {
    ranges.iter().cloned().collect()
}

fn seeded(seed: u64) -> TransferConfig {
    TransferConfig {
        seed,
        ..TransferConfig::default()
    }
}

fn blob() -> BlobId {
    BlobId::of(b"engine test blob")
}

fn assert_completed(sim: &Sim, size: u64) {
    assert!(
        sim.done_at.is_some(),
        "transfer stalled at {:?}: {:#?}",
        sim.elapsed(),
        sim.transfer.stats()
    );
    assert_eq!(sim.transfer.held(), &sim.all_groups());
    assert_eq!(sim.transfer.size(), Some(size));
    assert!(sim.transfer.is_done());
    assert_eq!(
        sim.transfer.requests_in_flight(),
        0,
        "requests left open after Done"
    );
    assert_eq!(sim.transfer.poll_timeout(), None);
}

/// Every action the engine has ready.
fn drain(transfer: &mut Transfer<u32>, now: Instant) -> Vec<Action<u32>> {
    std::iter::from_fn(|| transfer.poll_action(now)).collect()
}

fn announce(transfer: &mut Transfer<u32>, now: Instant, peer: u32, groups: ChunkGroupRanges) {
    transfer.handle(now, Event::PeerConnected { peer });
    transfer.handle(
        now,
        Event::HaveMap {
            peer,
            size: None,
            groups,
        },
    );
}

fn requests_to(actions: &[Action<u32>], to: u32) -> Vec<ChunkGroupRanges> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Request { peer, groups, .. } if *peer == to => Some(groups.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn many_peers_work_at_once_within_the_cap() {
    let size = blob_size(400);
    let peers = vec![PeerSpec::full().speed(500_000); 5];
    let mut sim = Sim::new(size, true, ChunkGroupRanges::empty(), seeded(1), peers);
    sim.strict_endgame = true;
    sim.run(HOUR);
    assert_completed(&sim, size);
    for peer in 0..5 {
        assert!(
            sim.transfer.stats().peers[&peer].bytes > 0,
            "peer {peer} idle"
        );
    }
    assert_eq!(sim.most_busy_peers, 5, "not every peer was used at once");
    // The simulator asserts the cap on every request; this shows the pipelines were filled.
    assert_eq!(sim.most_open_at_one_peer, 4);
}

#[test]
fn the_rarest_piece_goes_first() {
    let now = Instant::now();
    let size = Some(blob_size(64));
    let one_each = TransferConfig {
        max_requests_per_peer: 1,
        max_pieces_per_request: 1,
        ..seeded(7)
    };
    // Piece 3 (groups 48..64) is only at peer 2.
    let mut transfer = Transfer::new(blob(), size, set(&[]), one_each.clone(), now);
    announce(&mut transfer, now, 0, span(0..48));
    announce(&mut transfer, now, 1, span(0..48));
    announce(&mut transfer, now, 2, span(0..64));
    let actions = drain(&mut transfer, now);
    assert_eq!(requests_to(&actions, 2), vec![span(48..64)]);
    let others: BTreeSet<_> = [0, 1]
        .into_iter()
        .flat_map(|peer| requests_to(&actions, peer))
        .map(|groups| groups.boundaries()[0] / 16)
        .collect();
    assert_eq!(others.len(), 2, "peers 0 and 1 must take different pieces");
    assert!(!others.contains(&3));

    // Rarity is per group: piece 2 has groups 40..48 at two peers, every other group is at
    // three, so piece 2 goes first even to a peer that holds everything.
    let mut transfer = Transfer::new(blob(), size, set(&[]), one_each.clone(), now);
    announce(&mut transfer, now, 0, span(0..64));
    announce(&mut transfer, now, 1, set(&[0..40, 48..64]));
    announce(&mut transfer, now, 2, span(0..64));
    let actions = drain(&mut transfer, now);
    assert_eq!(requests_to(&actions, 0), vec![span(32..48)]);

    // A banned peer's claims do not count. Take a seed whose tie-break favours piece 3 among
    // four equally rare pieces: while peer 2 claims piece 3 too, it is the common one...
    let seed = (0..)
        .find(|&seed| start_piece(seed, 4) == 3)
        .expect("some seed favours piece 3");
    let config = TransferConfig { seed, ..one_each };
    let yard = |transfer: &mut Transfer<u32>| {
        announce(transfer, now, 0, span(0..64));
        announce(transfer, now, 1, span(0..64));
        announce(transfer, now, 2, span(48..64));
    };
    let mut transfer = Transfer::new(blob(), size, set(&[]), config.clone(), now);
    yard(&mut transfer);
    let unbanned = drain(&mut transfer, now);
    assert_eq!(requests_to(&unbanned, 0).len(), 1);
    assert_ne!(requests_to(&unbanned, 0), vec![span(48..64)]);
    // ...and once peer 2 is banned, piece 3 is as rare as the rest and the seed decides.
    let mut transfer = Transfer::new(blob(), size, set(&[]), config, now);
    yard(&mut transfer);
    let misbehaved = Failure::Misbehaved {
        bad_groups: set(&[]),
    };
    transfer.handle(
        now,
        Event::RequestFailed {
            peer: 2,
            request: RequestId(99),
            failure: misbehaved,
        },
    );
    let banned = drain(&mut transfer, now);
    assert_eq!(banned[0], Action::Ban { peer: 2 });
    assert_eq!(requests_to(&banned, 0), vec![span(48..64)]);
    assert!(requests_to(&banned, 2).is_empty());
}

#[test]
fn the_seed_spreads_first_pieces() {
    let now = Instant::now();
    let first_piece = |seed| {
        let config = TransferConfig {
            max_requests_per_peer: 1,
            ..seeded(seed)
        };
        let mut transfer = Transfer::new(blob(), Some(blob_size(256)), set(&[]), config, now);
        announce(&mut transfer, now, 0, span(0..256));
        requests_to(&drain(&mut transfer, now), 0)[0].boundaries()[0] / 16
    };
    let firsts: BTreeSet<u64> = (0..32).map(first_piece).collect();
    assert!(firsts.len() > 8, "32 seeds chose only pieces {firsts:?}");
    assert_eq!(first_piece(3), first_piece(3));
}

#[test]
fn endgame_duplicates_a_slow_request_and_cancels_it() {
    let size = blob_size(64);
    // Only groups 0..16 are missing: two pieces of 8.
    let held = span(16..64);
    let config = TransferConfig {
        groups_per_request: 8,
        max_pieces_per_request: 1,
        ..seeded(3)
    };
    let slow = PeerSpec::full().speed(4_000);
    let fast = PeerSpec::full().arriving_at(Duration::from_secs(1));
    let mut sim = Sim::new(size, true, held, config, vec![slow, fast]);
    sim.strict_endgame = true;
    sim.run(HOUR);
    assert_completed(&sim, size);
    // The slow peer took both pieces; the fast one arrived to find everything in flight.
    let to_slow: Vec<_> = sim.requests.iter().filter(|r| r.peer == 0).collect();
    let to_fast: Vec<_> = sim.requests.iter().filter(|r| r.peer == 1).collect();
    assert_eq!(to_slow.len(), 2);
    assert!(to_slow.iter().all(|r| !r.duplicate));
    assert_eq!(to_fast.len(), 2);
    assert!(to_fast.iter().all(|r| r.duplicate));
    assert_eq!(sim.transfer.stats().duplicate_requests, 2);
    // The fast copies overtook the slow requests, which were cancelled.
    let cancelled: BTreeSet<_> = sim
        .cancels
        .iter()
        .filter(|&&(_, peer, _)| peer == 0)
        .map(|&(_, _, id)| id)
        .collect();
    let expected: BTreeSet<_> = to_slow.iter().map(|r| r.id).collect();
    assert_eq!(cancelled, expected);
    // Both as overtaken, not merely closed at `Done`.
    assert_eq!(sim.transfer.stats().cancelled, 2);
    assert!(sim.done_at.expect("done") < Duration::from_secs(2));
    assert_eq!(sim.transfer.stats().timeouts, 0);
}

/// A small blob from two fast peers (a delta of a few hundred KiB): everything is in flight at
/// once, and each request finishes well within the endgame's patience, so nothing is fetched
/// twice. (Without the patience, the peer that ran out of fresh pieces first duplicated the
/// other's requests at once.)
#[test]
fn a_small_blob_from_fast_peers_is_not_fetched_twice() {
    let size = blob_size(21);
    let config = TransferConfig {
        groups_per_request: 4,
        max_pieces_per_request: 1,
        ..seeded(5)
    };
    let fast = || PeerSpec::full().speed(50_000_000);
    let mut sim = Sim::new(
        size,
        true,
        ChunkGroupRanges::empty(),
        config.clone(),
        vec![fast(), fast()],
    );
    sim.strict_endgame = true;
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert_eq!(sim.transfer.stats().duplicate_requests, 0);
    assert!(sim.requests.iter().all(|r| !r.duplicate));
    // With no patience, the same transfer duplicates: the test shows what the patience saves.
    let impatient = TransferConfig {
        endgame_patience: Duration::ZERO,
        ..config
    };
    let mut sim = Sim::new(
        size,
        true,
        ChunkGroupRanges::empty(),
        impatient,
        vec![fast(), fast()],
    );
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert!(sim.transfer.stats().duplicate_requests > 0);
}

/// A yard: many peers share the fetcher's downlink, so every request takes seconds, well past
/// the endgame's one-second floor. The endgame waits for as long as requests have been taking
/// before it duplicates one ([`TransferConfig::endgame_slowness`]), so requests going at the
/// yard's usual pace are mostly left to finish; with the floor alone, the same transfer
/// duplicated most requests in flight at its end.
#[test]
fn the_endgame_waits_as_long_as_requests_usually_take() {
    let size = blob_size(384);
    let config = TransferConfig {
        groups_per_request: 4,
        max_pieces_per_request: 1,
        ..seeded(7)
    };
    // 64 KiB requests, four at a time from each peer at 20 kB/s: ~13 s each.
    let peers = || {
        (0..6)
            .map(|_| PeerSpec::full().speed(20_000))
            .collect::<Vec<_>>()
    };
    let duplicates = |slowness: u32| {
        let config = TransferConfig {
            endgame_slowness: slowness,
            ..config.clone()
        };
        let mut sim = Sim::new(size, true, ChunkGroupRanges::empty(), config, peers());
        sim.run(HOUR);
        assert_completed(&sim, size);
        sim.transfer.stats().duplicate_requests
    };
    let (floor_only, usual, twice) = (duplicates(0), duplicates(1), duplicates(2));
    println!("duplicates: floor only {floor_only}, as long as usual {usual}, twice {twice}");
    assert!(usual < floor_only, "{usual} vs {floor_only}");
    assert_eq!(twice, 0);
    assert_eq!(TransferConfig::default().endgame_slowness, 1);
    // A straggler among them is still duplicated: one peer at a tenth of the others' pace.
    let mut mixed = peers();
    mixed[0] = PeerSpec::full().speed(2_000);
    let mut sim = Sim::new(size, true, ChunkGroupRanges::empty(), config, mixed);
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert!(sim.requests.iter().any(|r| r.duplicate && r.peer != 0));
}

#[test]
fn timeouts_strike_and_bench_a_stalling_peer() {
    // Long enough for the honest peer that the bench ends before the endgame (which would
    // duplicate only the honest peer's requests, once they are slower than usual).
    let size = blob_size(200);
    let config = TransferConfig {
        max_requests_per_peer: 1,
        max_timeouts_per_peer: 2,
        ..seeded(4)
    };
    let stalls = PeerSpec::full().behaving(Behaviour::Stalls);
    let honest = PeerSpec::full().speed(40_000);
    let mut sim = Sim::new(size, true, set(&[]), config, vec![stalls, honest]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    let to_staller: Vec<_> = sim.requests.iter().filter(|r| r.peer == 0).collect();
    let cancels: Vec<_> = sim.cancels.iter().filter(|c| c.1 == 0).collect();
    assert!(to_staller.len() >= 3, "never asked again after its bench");
    assert_eq!(cancels.len(), to_staller.len());
    for (request, cancel) in to_staller.iter().zip(&cancels) {
        assert_eq!(request.id, cancel.2);
        assert_eq!(cancel.0 - request.at, Duration::from_secs(10));
    }
    // Two strikes bench it for one request timeout; the third for two.
    assert_eq!(
        to_staller[1].at, cancels[0].0,
        "asked again at once after one strike"
    );
    assert_eq!(to_staller[2].at - cancels[1].0, Duration::from_secs(10));
    if let (Some(fourth), Some(third)) = (to_staller.get(3), cancels.get(2)) {
        assert_eq!(fourth.at - third.0, Duration::from_secs(20));
    }
    let stats = &sim.transfer.stats().peers[&0];
    assert_eq!(stats.timeouts as usize, to_staller.len());
    assert!(stats.benched >= 1 && !stats.banned);
    assert!(sim.bans.is_empty(), "a slow peer is not a liar");
    // The honest peer still works after the staller's strikes, so the transfer outlives them.
    assert!(sim.done_at.expect("done") > cancels[1].0);
}

#[test]
fn a_liar_is_banned_once_and_never_asked_again() {
    let size = blob_size(100);
    let liar = PeerSpec::full()
        .speed(2_000_000)
        .behaving(Behaviour::Liar { bad_group: 5 });
    let honest = PeerSpec::full().arriving_at(Duration::from_secs(5));
    let mut sim = Sim::new(size, true, set(&[]), seeded(5), vec![liar, honest]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert_eq!(sim.bans.len(), 1);
    let (banned_at, banned) = sim.bans[0];
    assert_eq!(banned, 0);
    assert!(
        sim.requests
            .iter()
            .all(|r| r.peer != 0 || r.at <= banned_at)
    );
    let stats = sim.transfer.stats();
    assert_eq!((stats.banned_peers, stats.bad_groups), (1, 1));
    assert!(stats.peers[&0].banned);
    // It reconnected and announced itself again; the have-map was ignored.
    assert!(stats.ignored_events >= 1);
    assert!(
        sim.requests
            .iter()
            .any(|r| r.peer == 1 && r.groups.contains(proto::ChunkGroup(5)))
    );
}

#[test]
fn the_size_is_probed_first_and_the_probe_retried_elsewhere() {
    let size = blob_size(50);
    let refuses = PeerSpec::full().behaving(Behaviour::Refuses);
    let honest = PeerSpec::full();
    let mut sim = Sim::new(size, false, set(&[]), seeded(6), vec![refuses, honest]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    let probe = span(MAX_GROUP - 1..MAX_GROUP);
    let first: Vec<_> = sim
        .requests
        .iter()
        .take(2)
        .map(|r| (r.peer, r.groups.clone()))
        .collect();
    assert_eq!(first, vec![(0, probe.clone()), (1, probe)]);
    assert_eq!(sim.transfer.stats().size_probes, 2);
}

#[test]
fn the_size_probe_prefers_a_peer_with_a_have_map() {
    let now = Instant::now();
    let mut transfer = Transfer::new(blob(), None, set(&[]), seeded(0), now);
    transfer.handle(now, Event::PeerConnected { peer: 0 });
    transfer.handle(now, Event::PeerConnected { peer: 1 });
    transfer.handle(
        now,
        Event::HaveMap {
            peer: 1,
            size: Some(blob_size(50)),
            groups: span(0..50),
        },
    );
    let actions = drain(&mut transfer, now);
    let probe = span(MAX_GROUP - 1..MAX_GROUP);
    assert_eq!(requests_to(&actions, 1), vec![probe]);
    assert_eq!(
        actions.len(),
        1,
        "nothing but the probe before the size is known"
    );
}

#[test]
fn resume_never_requests_held_groups() {
    let size = blob_size(100);
    let held = set(&[0..10, 30..40, 99..100]);
    let peers = vec![PeerSpec::full(), PeerSpec::full(), PeerSpec::full()];
    let mut sim = Sim::new(size, true, held.clone(), seeded(8), peers);
    sim.run(HOUR);
    assert_completed(&sim, size);
    let requested = sim
        .requests
        .iter()
        .fold(set(&[]), |acc, r| acc.union(&r.groups));
    assert!(requested.intersection(&held).is_empty());
    assert_eq!(requested, sim.all_groups().difference(&held));
}

#[test]
fn a_complete_blob_is_done_at_once_and_once() {
    let now = Instant::now();
    let size = blob_size(10);
    let mut transfer = Transfer::new(blob(), Some(size), span(0..10), seeded(0), now);
    announce(&mut transfer, now, 0, span(0..10));
    assert_eq!(drain(&mut transfer, now), vec![Action::Done]);
    transfer.handle(now, Event::PeerConnected { peer: 1 });
    assert_eq!(drain(&mut transfer, now), vec![]);
    assert_eq!(transfer.poll_timeout(), None);
}

#[test]
fn a_busy_peer_is_left_alone_for_the_backoff() {
    let size = blob_size(100);
    let busy = PeerSpec::full().behaving(Behaviour::Busy { times: 2 });
    let mut sim = Sim::new(size, true, set(&[]), seeded(9), vec![busy]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert_eq!(sim.transfer.stats().refused, 2);
    // Four requests at the have-map (20 ms), two refused Busy at 60 ms: nothing new before
    // the back-off ends at 1.06 s even though slots free up earlier.
    let quiet = Duration::from_millis(21)..Duration::from_millis(1060);
    assert!(sim.requests.iter().all(|r| !quiet.contains(&r.at)));
    assert!(sim.requests.iter().any(|r| r.at >= quiet.end));
}

#[test]
fn a_vanished_peers_groups_are_fetched_elsewhere() {
    let size = blob_size(100);
    let leaves = PeerSpec::full().leaving_at(Duration::from_millis(300));
    let stays = PeerSpec::full().speed(200_000);
    let mut sim = Sim::new(size, true, set(&[]), seeded(10), vec![leaves, stays]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    assert!(sim.transfer.stats().lost > 0);
    let gone = Duration::from_millis(300);
    assert!(sim.requests.iter().all(|r| r.peer != 0 || r.at < gone));
}

#[test]
fn a_false_claim_is_dropped_after_it_fails() {
    let size = blob_size(100);
    // Claims everything, holds half.
    let overclaims = PeerSpec::full()
        .holding(span(0..50))
        .claiming(Claim::Groups(span(0..100)));
    let honest = PeerSpec::full()
        .speed(100_000)
        .arriving_at(Duration::from_secs(1));
    let mut sim = Sim::new(size, true, set(&[]), seeded(11), vec![overclaims, honest]);
    sim.run(HOUR);
    assert_completed(&sim, size);
    for group in 50..100 {
        let asked = sim
            .requests
            .iter()
            .filter(|r| r.peer == 0 && r.groups.contains(proto::ChunkGroup(group)))
            .count();
        assert!(
            asked <= 1,
            "group {group} asked of a peer without it {asked} times"
        );
    }
}

#[test]
fn garbage_events_are_ignored_without_panicking() {
    let now = Instant::now();
    let size = blob_size(20);
    // Degenerate settings are clamped, and a timeout of centuries means no timeout.
    let config = TransferConfig {
        max_requests_per_peer: 0,
        max_requests_total: 0,
        max_requests_per_upstream: 0,
        groups_per_request: 0,
        max_pieces_per_request: 0,
        request_timeout: Duration::MAX,
        max_timeouts_per_peer: 0,
        busy_backoff: Duration::MAX,
        seed: 0,
        held_back_hold: Duration::MAX,
        endgame_patience: Duration::MAX,
        endgame_slowness: u32::MAX,
    };
    let held = set(&[0..2, 500..600, MAX_GROUP - 1..MAX_GROUP]);
    let mut transfer = Transfer::new(blob(), Some(size), held, config, now);
    assert_eq!(transfer.held(), &span(0..2), "held clipped to the blob");
    let bogus = RequestId(12345);
    let garbage = vec![
        Event::HaveMap {
            peer: 9,
            size: None,
            groups: span(0..20),
        },
        Event::PeerClosed { peer: 9 },
        Event::RequestFinished {
            peer: 9,
            request: bogus,
        },
        Event::RequestFailed {
            peer: 9,
            request: bogus,
            failure: Failure::Lost,
        },
        Event::GroupsVerified {
            peer: 9,
            request: bogus,
            groups: set(&[18..40, MAX_GROUP - 5..MAX_GROUP]),
            bytes: u64::MAX,
        },
        Event::GroupsVerified {
            peer: 9,
            request: bogus,
            groups: span(19..30),
            bytes: u64::MAX,
        },
        Event::SizeProven { size: size + 1 },
        Event::SizeProven { size: u64::MAX },
        Event::PeerConnected { peer: 1 },
        Event::PeerConnected { peer: 1 },
        Event::HaveMap {
            peer: 1,
            size: Some(u64::MAX),
            groups: span(0..MAX_GROUP),
        },
    ];
    for event in garbage {
        transfer.handle(now, event);
        transfer.handle_timeout(now);
        drain(&mut transfer, now);
    }
    assert_eq!(transfer.held(), &set(&[0..2, 18..20]));
    assert_eq!(transfer.size(), Some(size));
    assert!(transfer.stats().ignored_events >= 9);
    assert_eq!(transfer.poll_timeout(), None);
    // Peer 1 got one request (the clamped cap) of one group (the clamped piece).
    assert_eq!(transfer.requests_in_flight(), 1);
    // A finish from the wrong peer, then a busy answer that backs off "forever".
    transfer.handle(
        now,
        Event::RequestFinished {
            peer: 2,
            request: RequestId(0),
        },
    );
    assert_eq!(transfer.requests_in_flight(), 1);
    let busy = Event::RequestFailed {
        peer: 1,
        request: RequestId(0),
        failure: Failure::Busy,
    };
    transfer.handle(now, busy);
    assert_eq!(drain(&mut transfer, now), vec![]);
    assert!(!transfer.is_done());
}

/// A mixed yard: liar, staller, partial holder, vanishing peer, unknown size.
fn mixed_yard(seed: u64) -> Sim {
    let size = blob_size(120);
    let peers = vec![
        PeerSpec::full().speed(300_000),
        PeerSpec::full().behaving(Behaviour::Liar { bad_group: 70 }),
        PeerSpec::full().behaving(Behaviour::Stalls),
        PeerSpec::full().holding(span(0..60)).latency_ms(5),
        PeerSpec::full().leaving_at(Duration::from_millis(700)),
        PeerSpec::full().behaving(Behaviour::Busy { times: 3 }),
    ];
    let mut sim = Sim::new(size, false, span(10..20), seeded(seed), peers);
    sim.run(HOUR);
    assert_completed(&sim, size);
    sim
}

#[test]
fn the_same_seed_gives_the_same_actions() {
    let first = mixed_yard(5);
    let second = mixed_yard(5);
    assert_eq!(first.log, second.log);
    assert!(first.log.len() > 20);
    assert_ne!(first.log, mixed_yard(6).log);
}

fn arbitrary_peer(groups: u64) -> impl Strategy<Value = PeerSpec> {
    (
        0u8..7,
        20_000u64..2_000_000,
        1u64..100,
        0..groups,
        0..groups,
        0u64..5_000,
        proptest::option::of(1u64..20_000),
    )
        .prop_map(move |(kind, speed, latency, a, b, arrives, leaves)| {
            let part = span(a.min(b)..a.max(b) + 1);
            let mut peer = PeerSpec::full()
                .speed(speed)
                .latency_ms(latency)
                .arriving_at(Duration::from_millis(arrives));
            if let Some(leaves) = leaves {
                peer = peer.leaving_at(Duration::from_millis(arrives + leaves));
            }
            match kind {
                0 => peer,
                1 => peer.holding(part),
                2 => peer.behaving(Behaviour::Liar { bad_group: a }),
                3 => peer.behaving(Behaviour::Stalls),
                4 => peer.behaving(Behaviour::Refuses),
                5 => peer.behaving(Behaviour::Busy {
                    times: u32::try_from(b % 5).unwrap_or(0),
                }),
                _ => peer.holding(part).claiming(Claim::Groups(span(0..groups))),
            }
        })
}

/// A blob size, the size's group count, and peers for it.
fn arbitrary_yard() -> impl Strategy<Value = (u64, Vec<PeerSpec>)> {
    (0u64..2_000_000).prop_flat_map(|size| {
        let groups = proto::bao::Layout::MESH.group_count(size);
        (
            Just(size),
            proptest::collection::vec(arbitrary_peer(groups), 0..6),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// With one honest full peer that stays, any mix of other peers ends in a complete blob,
    /// and (checked by the simulator on every action) no banned peer is asked, no cap is
    /// exceeded and no held group is requested.
    #[test]
    fn random_yards_complete(
        (size, others) in arbitrary_yard(),
        seed in any::<u64>(),
        size_known in any::<bool>(),
        honest_speed in 20_000u64..2_000_000,
        honest_arrives in 0u64..5_000,
        held_ranges in proptest::collection::vec((0u64..130, 1u64..20), 0..4),
    ) {
        let mut peers = vec![PeerSpec::full()
            .speed(honest_speed)
            .arriving_at(Duration::from_millis(honest_arrives))];
        peers.extend(others);
        let held: ChunkGroupRanges = held_ranges.iter().map(|&(s, l)| s..s + l).collect();
        let liars: BTreeSet<u32> = (0u32..)
            .zip(&peers)
            .filter(|(_, p)| matches!(p.behaviour, Behaviour::Liar { .. }))
            .map(|(i, _)| i)
            .collect();
        let mut sim = Sim::new(size, size_known, held, seeded(seed), peers);
        sim.run(HOUR);
        assert_completed(&sim, size);
        for (_, peer) in &sim.bans {
            prop_assert!(liars.contains(peer), "honest peer {} banned", peer);
        }
    }

    /// Arbitrary events in arbitrary order never panic, never make the engine claim groups
    /// past the blob, never ask a banned peer, and never exceed the cap. (Every pass also checks,
    /// in test builds, that no peer it skipped as starved had work.)
    #[test]
    fn random_events_never_panic(
        steps in proptest::collection::vec(
            (0u8..10, 0u32..4, 0u64..12, 0u64..80, 0u64..40, 0u64..3_000),
            0..120,
        ),
        size_known in any::<bool>(),
    ) {
        let start = Instant::now();
        let size = blob_size(50);
        let config = TransferConfig { groups_per_request: 8, ..seeded(1) };
        let mut transfer = Transfer::new(blob(), size_known.then_some(size), set(&[]), config, start);
        let mut now = start;
        let mut banned = BTreeSet::new();
        let mut done = 0;
        for (kind, peer, request, first, len, millis) in steps {
            now += Duration::from_millis(millis);
            let request = RequestId(request);
            let groups = span(first..first + len);
            if kind == 9 {
                transfer.mark_upstream(peer);
            }
            let event = match kind {
                0 | 9 => Event::PeerConnected { peer },
                1 => Event::PeerClosed { peer },
                2 => Event::HaveMap { peer, size: Some(first * GROUP_BYTES), groups },
                3 => Event::GroupsVerified { peer, request, groups, bytes: len * GROUP_BYTES },
                4 => Event::SizeProven { size: if first % 2 == 0 { size } else { first } },
                5 => Event::RequestFinished { peer, request },
                6 => Event::RequestFailed { peer, request, failure: Failure::Lost },
                7 => Event::RequestFailed { peer, request, failure: Failure::NotHeld },
                _ if len % 7 == 0 => Event::RequestFailed {
                    peer, request, failure: Failure::Misbehaved { bad_groups: groups },
                },
                _ => Event::RequestFailed { peer, request, failure: Failure::Busy },
            };
            transfer.handle(now, event);
            if transfer.poll_timeout().is_some_and(|at| at <= now) {
                transfer.handle_timeout(now);
            }
            while let Some(action) = transfer.poll_action(now) {
                match action {
                    Action::Ban { peer } => prop_assert!(banned.insert(peer)),
                    Action::Request { peer, .. } => prop_assert!(!banned.contains(&peer)),
                    Action::Done => done += 1,
                    Action::Cancel { .. } => {}
                }
            }
            prop_assert!(transfer.requests_in_flight() <= 4 * 4);
            let limit = transfer.size().map_or(MAX_GROUP, |s| proto::bao::Layout::MESH.group_count(s));
            prop_assert!(transfer.held().end() <= limit);
        }
        prop_assert!(done <= 1);
    }
}

#[test]
fn an_upstream_peer_is_asked_only_for_what_no_neighbour_claims() {
    let size = blob_size(64);
    let now = Instant::now();
    let mut transfer: Transfer<u32> = Transfer::new(
        blob(),
        Some(size),
        ChunkGroupRanges::empty(),
        seeded(7),
        now,
    );
    transfer.mark_upstream(0);
    announce(&mut transfer, now, 0, span(0..64));
    // A neighbour claims the first half: the depot must not be asked for any of it.
    announce(&mut transfer, now, 1, span(0..32));
    let actions = drain(&mut transfer, now);
    let to_depot = requests_to(&actions, 0);
    assert!(!to_depot.is_empty(), "the depot was left idle");
    for groups in &to_depot {
        assert!(
            groups.intersection(&span(0..32)).is_empty(),
            "depot asked for {groups}"
        );
    }
    for groups in requests_to(&actions, 1) {
        assert!(groups.is_subset(&span(0..32)));
    }

    // Without neighbours, an upstream peer is asked for anything, in its full share of
    // requests (one piece each, to count them).
    let mut alone: Transfer<u32> = Transfer::new(
        blob(),
        Some(size),
        ChunkGroupRanges::empty(),
        TransferConfig {
            max_pieces_per_request: 1,
            ..seeded(7)
        },
        now,
    );
    alone.mark_upstream(0);
    announce(&mut alone, now, 0, span(0..64));
    let requests = requests_to(&drain(&mut alone, now), 0);
    assert_eq!(requests.len(), 4, "{requests:?}");
}

#[test]
fn a_sole_source_gets_runs_of_pieces_and_a_shared_yard_one_piece_a_request() {
    let now = Instant::now();
    let size = Some(blob_size(256));
    // One peer: 4 slots of the 16 in flight, so 4 pieces (64 groups, 1 MiB) a request, each a
    // run of the blob (shorter only where the blob ends).
    let mut alone = Transfer::new(blob(), size, set(&[]), seeded(5), now);
    announce(&mut alone, now, 0, span(0..256));
    let requests = requests_to(&drain(&mut alone, now), 0);
    assert_eq!(requests.len(), 4, "{requests:?}");
    for groups in &requests {
        assert_eq!(groups.iter().count(), 1, "{groups} is not one run");
        if groups.end() < 256 {
            assert_eq!(groups.group_count(), 64, "{groups}");
        }
    }
    assert!(
        requests
            .iter()
            .filter(|groups| groups.group_count() == 64)
            .count()
            >= 3
    );
    // A run stops at a gap: with every other piece held, one piece a request.
    let held: ChunkGroupRanges = (0..16u64).step_by(2).map(|p| p * 16..p * 16 + 16).collect();
    let mut gappy = Transfer::new(blob(), size, held, seeded(5), now);
    announce(&mut gappy, now, 0, span(0..256));
    for groups in requests_to(&drain(&mut gappy, now), 0) {
        assert_eq!(groups.group_count(), 16, "{groups}");
    }
    // Two peers: 4 slots each, 2 pieces a request.
    let mut pair = Transfer::new(blob(), size, set(&[]), seeded(5), now);
    announce(&mut pair, now, 0, span(0..256));
    announce(&mut pair, now, 1, span(0..256));
    let actions = drain(&mut pair, now);
    for peer in 0..2 {
        let requests = requests_to(&actions, peer);
        assert_eq!(requests.len(), 4, "{requests:?}");
        assert!(requests.iter().all(|groups| groups.group_count() == 32));
    }
    // Four peers share the 16 slots out: one piece a request, as in a full yard.
    let mut yard = Transfer::new(blob(), size, set(&[]), seeded(5), now);
    for peer in 0..4 {
        announce(&mut yard, now, peer, span(0..256));
    }
    let actions = drain(&mut yard, now);
    for peer in 0..4 {
        assert!(
            requests_to(&actions, peer)
                .iter()
                .all(|groups| groups.group_count() == 16)
        );
    }
    // A run never outgrows what a server answers in one response.
    let config = TransferConfig {
        groups_per_request: 128,
        ..seeded(5)
    };
    let mut long = Transfer::new(blob(), Some(blob_size(1024)), set(&[]), config, now);
    announce(&mut long, now, 0, span(0..1024));
    for groups in requests_to(&drain(&mut long, now), 0) {
        assert!(
            groups.group_count() <= proto::wire::MAX_REQUEST_GROUPS,
            "{groups}"
        );
        assert_eq!(groups.group_count(), 256, "{groups}");
    }
}

#[test]
fn a_benched_peer_is_waited_for_and_asked_again() {
    let size = blob_size(8);
    let config = TransferConfig {
        max_requests_per_peer: 1,
        max_timeouts_per_peer: 1,
        ..seeded(5)
    };
    let start = Instant::now();
    let mut transfer: Transfer<u32> =
        Transfer::new(blob(), Some(size), ChunkGroupRanges::empty(), config, start);
    announce(&mut transfer, start, 0, span(0..8));
    let first = requests_to(&drain(&mut transfer, start), 0);
    assert_eq!(first.len(), 1);
    // The only peer times out once and is benched for one request timeout...
    let later = transfer.poll_timeout().expect("a request deadline");
    transfer.handle_timeout(later);
    assert_eq!(transfer.stats().peers[&0].benched, 1);
    assert!(requests_to(&drain(&mut transfer, later), 0).is_empty());
    // ...which is not a stall: it holds what is missing, and it will be back.
    assert!(!transfer.is_stalled());
    let back = transfer.poll_timeout().expect("the end of the bench");
    assert_eq!(back - later, Duration::from_secs(10));
    transfer.handle_timeout(back);
    let again = requests_to(&drain(&mut transfer, back), 0);
    assert_eq!(again.len(), 1, "the only peer was never asked again");
    // Gone, it leaves nobody who could help: that is a stall.
    transfer.handle(back, Event::PeerClosed { peer: 0 });
    assert!(transfer.is_stalled());
}

#[test]
fn an_upstream_with_neighbours_in_reach_gets_fewer_slots_and_fresh_pieces() {
    let size = blob_size(256);
    let now = Instant::now();
    let mut transfer: Transfer<u32> = Transfer::new(
        blob(),
        Some(size),
        ChunkGroupRanges::empty(),
        seeded(3),
        now,
    );
    transfer.mark_upstream(0);
    announce(&mut transfer, now, 0, span(0..256));
    // A neighbour has begun pieces 0 and 2 (16 groups per piece).
    announce(&mut transfer, now, 1, set(&[0..3, 40..41]));
    let actions = drain(&mut transfer, now);
    let to_depot = requests_to(&actions, 0);
    assert_eq!(to_depot.len(), 2, "{to_depot:?}");
    for groups in &to_depot {
        assert!(
            !groups.intersects(&set(&[0..16, 32..48])),
            "depot asked for {groups}, part of a piece a neighbour has begun"
        );
    }

    // When only begun pieces are left, the upstream is asked for their missing groups.
    let mut late: Transfer<u32> = Transfer::new(
        blob(),
        Some(size),
        ChunkGroupRanges::empty(),
        seeded(3),
        now,
    );
    late.mark_upstream(0);
    announce(&mut late, now, 0, span(0..256));
    announce(&mut late, now, 1, set(&[0..5, 8..256]));
    let to_depot = requests_to(&drain(&mut late, now), 0);
    assert_eq!(to_depot, vec![span(5..8)]);
}

#[test]
fn requests_per_peer_shrink_as_the_yard_fills() {
    let size = blob_size(2048);
    let now = Instant::now();
    let config = TransferConfig {
        max_requests_per_peer: 4,
        max_requests_total: 16,
        ..seeded(9)
    };
    let count_per_peer = |peers: u32| {
        let mut transfer: Transfer<u32> = Transfer::new(
            blob(),
            Some(size),
            ChunkGroupRanges::empty(),
            config.clone(),
            now,
        );
        for peer in 0..peers {
            announce(&mut transfer, now, peer, span(0..2048));
        }
        let actions = drain(&mut transfer, now);
        (0..peers)
            .map(|peer| requests_to(&actions, peer).len())
            .collect::<Vec<_>>()
    };
    // Two peers: the per-peer cap binds (16 / 2 = 8 > 4).
    assert_eq!(count_per_peer(2), vec![4, 4]);
    // Six peers: ceil(16 / 6) = 3 each.
    assert_eq!(count_per_peer(6), vec![3; 6]);
    // A full yard: one each, however many peers there are.
    assert_eq!(count_per_peer(30), vec![1; 30]);
}

/// A depot that holds groups back for the neighbours is asked for other groups at once, not
/// left alone like a busy peer; the held-back groups are asked of it again after the hold.
#[test]
fn held_back_groups_are_skipped_for_the_hold_and_other_groups_asked_at_once() {
    let start = Instant::now();
    let size = blob_size(64);
    let config = TransferConfig {
        max_requests_per_peer: 1,
        max_requests_total: 1,
        max_requests_per_upstream: 1,
        ..seeded(3)
    };
    let mut transfer = Transfer::new(blob(), Some(size), set(&[]), config, start);
    transfer.mark_upstream(1);
    announce(&mut transfer, start, 1, span(0..64));
    let first = match drain(&mut transfer, start).as_slice() {
        [
            Action::Request {
                peer: 1,
                request,
                groups,
            },
        ] => (*request, groups.clone()),
        other => panic!("expected one request of the depot, got {other:?}"),
    };
    transfer.handle(
        start,
        Event::RequestFailed {
            peer: 1,
            request: first.0,
            failure: Failure::HeldBack,
        },
    );
    // At once, a request of other groups.
    let second = match drain(&mut transfer, start).as_slice() {
        [
            Action::Request {
                peer: 1,
                request,
                groups,
            },
        ] => (*request, groups.clone()),
        other => panic!("expected another request of the depot, got {other:?}"),
    };
    assert!(!second.1.intersects(&first.1), "{:?} asked again", first.1);
    // The rest of the blob arrives; only the held-back piece is missing. It is not asked for
    // until the hold ends, and then it is.
    let rest = span(0..64).difference(&first.1);
    transfer.handle(
        start,
        Event::GroupsVerified {
            peer: 1,
            request: second.0,
            groups: rest.clone(),
            bytes: rest.group_count() * GROUP_BYTES,
        },
    );
    transfer.handle(
        start,
        Event::RequestFinished {
            peer: 1,
            request: second.0,
        },
    );
    assert!(drain(&mut transfer, start).is_empty());
    assert!(!transfer.is_stalled(), "a held-back claim is a prospect");
    let wake = transfer.poll_timeout().unwrap();
    assert_eq!(wake, start + TransferConfig::default().held_back_hold);
    transfer.handle_timeout(wake);
    match drain(&mut transfer, wake).as_slice() {
        [
            Action::Request {
                peer: 1, groups, ..
            },
        ] => assert_eq!(groups, &first.1),
        other => panic!("expected the held-back piece again, got {other:?}"),
    }
}
