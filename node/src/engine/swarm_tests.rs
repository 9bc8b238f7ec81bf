//! The [`Swarm`]'s decisions, table by table, in virtual time: a clock that is an `Instant`
//! plus offsets, events scripted at offsets, and the swarm's own deadlines in between.

use std::time::{Duration, Instant};

use proto::{BlobId, ChunkGroupRanges};

use super::*;

const GROUP_BYTES: u64 = 16 * 1024;
/// This node.
const ME: u32 = 99;

fn config() -> SwarmConfig {
    SwarmConfig {
        stall_timeout: Duration::from_secs(20),
        max_bytes: None,
        refresh: Duration::from_secs(2),
    }
}

/// A swarm around a transfer of a blob of `groups` whole groups, none held.
fn swarm(groups: u64, named_dials: usize, config: SwarmConfig, now: Instant) -> Swarm<u32> {
    let blob = BlobId::of(b"swarm test blob");
    let transfer = Transfer::new(
        blob,
        Some(groups * GROUP_BYTES),
        ChunkGroupRanges::empty(),
        TransferConfig {
            seed: 1,
            ..TransferConfig::default()
        },
        now,
    );
    Swarm::new(transfer, config, ME, named_dials, now)
}

fn drain(swarm: &mut Swarm<u32>, now: Instant) -> Vec<SwarmAction<u32>> {
    std::iter::from_fn(|| swarm.poll_action(now)).collect()
}

fn connect(swarm: &mut Swarm<u32>, now: Instant, peer: u32, groups: ChunkGroupRanges) {
    let claim = Event::HaveMap {
        peer,
        size: None,
        groups,
    };
    for event in [Event::PeerConnected { peer }, claim] {
        swarm.handle(now, event);
    }
}

/// The upstreams asked for neighbours, and the neighbours dialled.
fn asked_and_dialled(actions: &[SwarmAction<u32>]) -> (Vec<u32>, Vec<u32>) {
    let (mut asked, mut dialled) = (Vec::new(), Vec::new());
    for action in actions {
        match action {
            SwarmAction::AskNeighbours { upstream } => asked.push(*upstream),
            SwarmAction::Dial { peer } => dialled.push(*peer),
            _ => {}
        }
    }
    (asked, dialled)
}

fn asked(actions: &[SwarmAction<u32>]) -> Vec<u32> {
    asked_and_dialled(actions).0
}

fn dialled(actions: &[SwarmAction<u32>]) -> Vec<u32> {
    asked_and_dialled(actions).1
}

fn gave_up(actions: &[SwarmAction<u32>]) -> Option<GiveUp> {
    actions.iter().find_map(|action| match action {
        SwarmAction::GiveUp(give_up) => Some(give_up.clone()),
        _ => None,
    })
}

#[test]
fn depots_are_spotted_by_their_agent_and_asked_for_neighbours() {
    let table = [
        ("depot-cache/0.3.0", true),
        ("depot-cache/", true),
        ("depot-cache", false),
        ("vehicle-peer/0.3.0", false),
        ("rust-libp2p/0.53.0", false),
        ("", false),
    ];
    for (agent, depot) in table {
        let now = Instant::now();
        let mut swarm = swarm(4, 0, config(), now);
        connect(&mut swarm, now, 1, ChunkGroupRanges::empty());
        drain(&mut swarm, now);
        let identified = SwarmEvent::Identified {
            peer: 1,
            agent: agent.to_owned(),
        };
        swarm.handle(now, identified);
        let actions = drain(&mut swarm, now);
        assert_eq!(is_depot_agent(agent), depot, "{agent:?}");
        assert_eq!(swarm.is_upstream(&1), depot, "{agent:?}");
        let expected: &[u32] = if depot { &[1] } else { &[] };
        assert_eq!(asked(&actions), expected, "{agent:?}");
    }
}

#[test]
fn an_upstream_is_asked_once_however_it_was_found_until_it_reconnects() {
    let now = Instant::now();
    let mut swarm = swarm(4, 2, config(), now);
    let depot = || SwarmEvent::Identified {
        peer: 1,
        agent: format!("{DEPOT_AGENT_PREFIX}1.0"),
    };
    // (event, upstreams asked)
    let table: Vec<(SwarmEvent<u32>, Vec<u32>)> = vec![
        (Event::PeerConnected { peer: 1 }.into(), vec![]),
        (
            SwarmEvent::NamedDialled {
                address: 0,
                peer: Some(1),
            },
            vec![1],
        ),
        (depot(), vec![]),
        (
            SwarmEvent::NamedDialled {
                address: 0,
                peer: Some(1),
            },
            vec![],
        ),
        (Event::PeerClosed { peer: 1 }.into(), vec![]),
        (Event::PeerConnected { peer: 1 }.into(), vec![]),
        (depot(), vec![1]),
    ];
    for (step, (event, expected)) in table.into_iter().enumerate() {
        swarm.handle(now, event);
        assert_eq!(asked(&drain(&mut swarm, now)), expected, "step {step}");
    }
}

#[test]
fn connections_start_and_stop_have_subscriptions_once() {
    let now = Instant::now();
    let mut swarm = swarm(4, 0, config(), now);
    let table: Vec<(Event<u32>, Vec<SwarmAction<u32>>)> = vec![
        (
            Event::PeerConnected { peer: 1 },
            vec![SwarmAction::WatchHaves { peer: 1 }],
        ),
        (Event::PeerConnected { peer: 1 }, vec![]),
        (
            Event::PeerClosed { peer: 1 },
            vec![SwarmAction::ForgetHaves { peer: 1 }],
        ),
        (Event::PeerClosed { peer: 1 }, vec![]),
    ];
    for (step, (event, expected)) in table.into_iter().enumerate() {
        swarm.handle(now, event);
        assert_eq!(drain(&mut swarm, now), expected, "step {step}");
        assert_eq!(swarm.connected(), usize::from(step == 0 || step == 1));
    }
}

#[test]
fn held_back_refusals_ask_for_neighbours_at_most_once_per_gap() {
    let start = Instant::now();
    let mut swarm = swarm(64, 0, config(), start);
    connect(&mut swarm, start, 1, ChunkGroupRanges::from(0..64));
    drain(&mut swarm, start);
    // (milliseconds after the start, asked)
    let table = [
        (0, true),
        (100, false),
        (249, false),
        (250, true),
        (400, false),
        (499, false),
        (500, true),
        (10_000, true),
    ];
    assert_eq!(NEIGHBOUR_ASK_GAP, Duration::from_millis(250));
    for (step, (millis, expected)) in table.into_iter().enumerate() {
        let now = start + Duration::from_millis(millis);
        let refused = Event::RequestFailed {
            peer: 1,
            request: RequestId(1000 + step as u64),
            failure: Failure::HeldBack,
        };
        swarm.handle(now, refused);
        let expected: &[u32] = if expected { &[1] } else { &[] };
        assert_eq!(asked(&drain(&mut swarm, now)), expected, "at {millis} ms");
    }
    // Other refusals ask nobody.
    let now = start + Duration::from_secs(60);
    for failure in [Failure::Busy, Failure::NotHeld, Failure::Lost] {
        swarm.handle(
            now,
            Event::RequestFailed {
                peer: 1,
                request: RequestId(2000),
                failure,
            },
        );
        assert_eq!(asked(&drain(&mut swarm, now)), Vec::<u32>::new());
    }
}

#[test]
fn named_neighbours_are_dialled_unless_known_or_dialled_lately() {
    let start = Instant::now();
    let mut swarm = swarm(4, 0, config(), start);
    // 1 is the upstream, 2 a connected neighbour, 3 banned (and gone), 99 this node.
    for peer in [1, 2, 3] {
        connect(&mut swarm, start, peer, ChunkGroupRanges::empty());
    }
    swarm.handle(
        start,
        Event::RequestFailed {
            peer: 3,
            request: RequestId(77),
            failure: Failure::Misbehaved {
                bad_groups: ChunkGroupRanges::empty(),
            },
        },
    );
    swarm.handle(start, Event::PeerClosed { peer: 3 });
    drain(&mut swarm, start);
    assert_eq!(swarm.banned(), &[3]);
    // (milliseconds after the start, peers named, peers dialled)
    let table: [(u64, &[u32], &[u32]); 6] = [
        (0, &[2, 3, ME, 4, 5, 4], &[4, 5]),
        (5_000, &[4, 6], &[6]),
        (9_999, &[4, 5], &[]),
        (10_000, &[4, 5], &[4, 5]),
        (10_000, &[6], &[]),
        (15_000, &[6, 1], &[6]),
    ];
    assert_eq!(NEIGHBOUR_REDIAL, Duration::from_secs(10));
    for (millis, named, expected) in table {
        let now = start + Duration::from_millis(millis);
        swarm.handle(
            now,
            SwarmEvent::Neighbours {
                from: 1,
                named: named.to_vec(),
                after_distrust: false,
            },
        );
        assert_eq!(dialled(&drain(&mut swarm, now)), expected, "at {millis} ms");
    }
}

#[test]
fn the_allowance_stops_a_fetch_unless_it_completed_the_blob() {
    // (allowance, groups delivered one by one before it gives up, or None: it completes)
    let table: [(Option<u64>, Option<u64>); 5] = [
        (None, None),
        (Some(1), Some(1)),
        (Some(2 * GROUP_BYTES), Some(2)),
        (Some(2 * GROUP_BYTES + 1), Some(3)),
        // The last group reaches the allowance and completes the blob: done, not stopped.
        (Some(4 * GROUP_BYTES), None),
    ];
    for (allowance, stops_after) in table {
        let now = Instant::now();
        let config = SwarmConfig {
            max_bytes: allowance,
            ..config()
        };
        let mut swarm = swarm(4, 0, config, now);
        connect(&mut swarm, now, 1, ChunkGroupRanges::from(0..4));
        let request = drain(&mut swarm, now)
            .into_iter()
            .find_map(|action| match action {
                SwarmAction::Transfer(Action::Request { request, .. }) => Some(request),
                _ => None,
            })
            .expect("a request for the blob");
        let mut outcome = None;
        for group in 0..4 {
            let verified = Event::GroupsVerified {
                peer: 1,
                request,
                groups: ChunkGroupRanges::from(group..group + 1),
                bytes: GROUP_BYTES,
            };
            swarm.handle(now, verified);
            let actions = drain(&mut swarm, now);
            if let Some(give_up) = gave_up(&actions) {
                outcome = Some((group + 1, give_up));
                break;
            }
            if actions.contains(&SwarmAction::Transfer(Action::Done)) {
                break;
            }
        }
        let expected = stops_after.zip(allowance).map(|(groups, allowance)| {
            let bytes = groups * GROUP_BYTES;
            (groups, GiveUp::Allowance { bytes, allowance })
        });
        assert_eq!(outcome, expected, "allowance {allowance:?}");
        // Either way it has ended.
        assert_eq!(swarm.poll_action(now), None);
        assert_eq!(swarm.poll_timeout(), None);
    }
}

/// Events at offsets from the start.
type Script = Vec<(Duration, SwarmEvent<u32>)>;

/// Runs `swarm` from `start` through `script` (events at offsets) and its own deadlines, for at
/// most `limit`; returns when it gave up, as an offset.
fn stall_after(
    mut swarm: Swarm<u32>,
    start: Instant,
    mut script: Script,
    limit: Duration,
) -> Option<Duration> {
    script.reverse();
    let mut now = start;
    loop {
        let actions = drain(&mut swarm, now);
        if gave_up(&actions) == Some(GiveUp::Stalled) {
            return Some(now - start);
        }
        let deadline = swarm.poll_timeout()?;
        match script.last() {
            Some((at, _)) if start + *at <= deadline => {
                let (at, event) = script.pop()?;
                now = start + at;
                swarm.handle(now, event);
            }
            _ => {
                now = deadline;
                swarm.handle_timeout(now);
            }
        }
        if now - start > limit {
            return None;
        }
    }
}

#[test]
fn a_stall_is_given_up_after_the_stall_timeout() {
    let seconds = Duration::from_secs;
    let claims = |peer| {
        SwarmEvent::from(Event::HaveMap {
            peer,
            size: None,
            groups: ChunkGroupRanges::from(0..4),
        })
    };
    let connected = |peer| SwarmEvent::from(Event::PeerConnected { peer });
    let closed = |peer| SwarmEvent::from(Event::PeerClosed { peer });
    // (named dials, script, when it gives up)
    let table: Vec<(usize, Script, Option<Duration>)> = vec![
        // Nobody at all.
        (0, vec![], Some(seconds(20))),
        // A named peer that cannot be reached after 5 s: the wait starts then.
        (
            1,
            vec![(
                seconds(5),
                SwarmEvent::NamedDialled {
                    address: 0,
                    peer: None,
                },
            )],
            Some(seconds(25)),
        ),
        // A peer that claims nothing.
        (
            0,
            vec![
                (seconds(1), connected(1)),
                (
                    seconds(1),
                    SwarmEvent::from(Event::HaveMap {
                        peer: 1,
                        size: None,
                        groups: ChunkGroupRanges::empty(),
                    }),
                ),
            ],
            Some(seconds(20)),
        ),
        // A source arrives at 15 s and leaves at 18 s: the wait starts again at 18 s.
        (
            0,
            vec![
                (seconds(15), connected(1)),
                (seconds(15), claims(1)),
                (seconds(18), closed(1)),
            ],
            Some(seconds(38)),
        ),
        // A source that never answers but stays: benched, but still a prospect.
        (
            0,
            vec![(seconds(1), connected(1)), (seconds(1), claims(1))],
            None,
        ),
    ];
    for (row, (named_dials, script, expected)) in table.into_iter().enumerate() {
        let start = Instant::now();
        let swarm = swarm(4, named_dials, config(), start);
        let got = stall_after(swarm, start, script, Duration::from_secs(600));
        assert_eq!(got, expected, "row {row}");
    }
}

#[test]
fn connected_upstreams_are_asked_again_at_every_refresh() {
    let start = Instant::now();
    let mut swarm = swarm(4, 1, config(), start);
    let depot = |peer| SwarmEvent::Identified {
        peer,
        agent: format!("{DEPOT_AGENT_PREFIX}1.0"),
    };
    connect(&mut swarm, start, 1, ChunkGroupRanges::empty());
    connect(&mut swarm, start, 2, ChunkGroupRanges::empty());
    swarm.handle(
        start,
        SwarmEvent::NamedDialled {
            address: 0,
            peer: Some(1),
        },
    );
    swarm.handle(start, depot(2));
    swarm.handle(start, depot(3));
    assert_eq!(asked(&drain(&mut swarm, start)), [1, 2, 3]);
    swarm.handle(start, Event::PeerClosed { peer: 2 });
    drain(&mut swarm, start);
    // (seconds after the start, the deadline before, refreshed, upstreams asked)
    let table: [(u64, u64, bool, &[u32]); 4] = [
        (1, 2, false, &[]),
        (2, 2, true, &[1]),
        (3, 4, false, &[]),
        (4, 4, true, &[1]),
    ];
    for (second, deadline, refreshed, expected) in table {
        let now = start + Duration::from_secs(second);
        let deadline = start + Duration::from_secs(deadline);
        assert_eq!(swarm.poll_timeout(), Some(deadline), "at {second} s");
        swarm.handle_timeout(now);
        let actions = drain(&mut swarm, now);
        assert_eq!(
            actions.contains(&SwarmAction::RefreshHaves),
            refreshed,
            "at {second} s"
        );
        assert_eq!(asked(&actions), expected, "at {second} s");
    }
}

#[test]
fn a_banned_peer_is_reported_to_every_other_connected_upstream() {
    // (the peer that lies, the upstreams told)
    let table: [(u32, &[u32]); 2] = [(5, &[1, 2]), (1, &[2])];
    for (liar, expected) in table {
        let now = Instant::now();
        let mut swarm = swarm(4, 0, config(), now);
        for peer in [1, 2, 3, 5] {
            connect(&mut swarm, now, peer, ChunkGroupRanges::empty());
        }
        for (address, upstream) in [1, 2, 3].into_iter().enumerate() {
            swarm.handle(
                now,
                SwarmEvent::NamedDialled {
                    address,
                    peer: Some(upstream),
                },
            );
        }
        // 3 left: it is told nothing.
        swarm.handle(now, Event::PeerClosed { peer: 3 });
        drain(&mut swarm, now);
        swarm.handle(
            now,
            Event::RequestFailed {
                peer: liar,
                request: RequestId(9),
                failure: Failure::Misbehaved {
                    bad_groups: ChunkGroupRanges::from(0..1),
                },
            },
        );
        let actions = drain(&mut swarm, now);
        let told: Vec<u32> = actions
            .iter()
            .filter_map(|action| match action {
                SwarmAction::ReportDistrust { upstream, peer } if *peer == liar => Some(*upstream),
                _ => None,
            })
            .collect();
        assert_eq!(told, expected, "liar {liar}");
        assert!(actions.contains(&SwarmAction::Transfer(Action::Ban { peer: liar })));
        assert!(actions.contains(&SwarmAction::ForgetHaves { peer: liar }));
        assert!(!swarm.is_usable(&liar));
    }
}
