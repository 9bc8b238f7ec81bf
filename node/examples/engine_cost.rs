//! What the transfer engine's decisions cost in CPU, on a workload shaped like a depot yard.
//!
//! ```sh
//! cargo run --release -p node --example engine_cost -- [GROUPS] [NEIGHBOURS] [ROUNDS] [TICK_MS]
//! ```
//!
//! One vehicle fetches a blob of GROUPS 16 KiB chunk groups (default 6400 = 100 MiB) from an
//! upstream depot holding all of it and NEIGHBOURS vehicles (default 29) that start empty and
//! gain random pieces as time goes on, re-announcing their have-maps every tick (default 500 ms:
//! a subscribed peer pushes what it gained every `HAVE_PUSH_INTERVAL`; 2000 was the polling
//! refresh this bench first modelled). The vehicle receives five requests' worth of groups a
//! second (10 Mbit/s), reported as the runtime does: one `GroupsVerified` per 8 groups, then
//! `RequestFinished`.
//! No sockets, no storage: only `Transfer::handle` and `Transfer::poll_action` are timed.
//! Prints events handled, engine time per event, and engine CPU per MiB fetched.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use node::engine::{Action, Event, RequestId, Transfer, TransferConfig};
use proto::{BlobId, ChunkGroupRanges};

const GROUP_BYTES: u64 = 16 * 1024;

fn arg(index: usize, default: u64) -> Result<u64, String> {
    match std::env::args().nth(index) {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| format!("argument {index}: `{text}` is not a whole number")),
    }
}

/// SplitMix64, so every run does the same work.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Timed {
    engine: Transfer<u32>,
    spent: Duration,
    events: u64,
    pending: VecDeque<(u32, RequestId, ChunkGroupRanges)>,
    done: bool,
}

impl Timed {
    fn handle(&mut self, now: Instant, event: Event<u32>) {
        let started = Instant::now();
        self.engine.handle(now, event);
        self.spent += started.elapsed();
        self.events += 1;
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        let started = Instant::now();
        let mut actions = Vec::new();
        while let Some(action) = self.engine.poll_action(now) {
            actions.push(action);
        }
        self.spent += started.elapsed();
        for action in actions {
            match action {
                Action::Request {
                    peer,
                    request,
                    groups,
                } => self.pending.push_back((peer, request, groups)),
                Action::Cancel { request, .. } => self.pending.retain(|(_, id, _)| *id != request),
                Action::Ban { .. } => {}
                Action::Done => self.done = true,
            }
        }
    }
}

fn main() -> Result<(), String> {
    let groups = arg(1, 6400)?.max(1);
    let neighbours = u32::try_from(arg(2, 29)?).map_err(|_| "too many neighbours")?;
    let rounds = arg(3, 3)?.max(1);
    let tick = Duration::from_millis(arg(4, 500)?.max(1));
    let pieces = groups.div_ceil(16);
    // Requests received a second (16 groups of 16 KiB each at 10 Mbit/s), in hundredths.
    let requests_per_second_x100 = 500u128;
    let mut best: Option<(Duration, u64)> = None;
    for _ in 0..rounds {
        let now = Instant::now();
        let config = TransferConfig {
            seed: 7,
            ..TransferConfig::default()
        };
        let mut timed = Timed {
            engine: Transfer::new(
                BlobId::from_bytes([1; 32]),
                Some(groups * GROUP_BYTES),
                ChunkGroupRanges::empty(),
                config,
                now,
            ),
            spent: Duration::ZERO,
            events: 0,
            pending: VecDeque::new(),
            done: false,
        };
        let depot = 0u32;
        timed.handle(now, Event::PeerConnected { peer: depot });
        timed.engine.mark_upstream(depot);
        timed.handle(
            now,
            Event::HaveMap {
                peer: depot,
                size: Some(groups * GROUP_BYTES),
                groups: ChunkGroupRanges::from(0..groups),
            },
        );
        let mut claims = vec![ChunkGroupRanges::empty(); neighbours as usize + 1];
        for peer in 1..=neighbours {
            timed.handle(now, Event::PeerConnected { peer });
        }
        let mut rng = Rng(42);
        let mut ticks = 0u32;
        // Requests owed so far, in hundredths, for this vehicle and for each neighbour.
        let (mut owed, mut gained) = (0u128, 0u128);
        while !timed.done && ticks < 1_000_000 {
            ticks += 1;
            let now = now + tick * ticks;
            owed += requests_per_second_x100 * tick.as_millis() / 1000;
            gained += requests_per_second_x100 * tick.as_millis() / 2000;
            let (requests_this_tick, gains_this_tick) = (owed / 100, gained / 100);
            owed %= 100;
            gained %= 100;
            // Neighbours fetch too: each gains half as many random pieces a tick as this vehicle
            // fetches (some of them pieces it already had).
            for peer in 1..=neighbours {
                let claim = &mut claims[peer as usize];
                for _ in 0..gains_this_tick {
                    let piece = rng.next() % pieces;
                    claim.insert(piece * 16..((piece + 1) * 16).min(groups));
                }
                let groups = claim.clone();
                timed.handle(
                    now,
                    Event::HaveMap {
                        peer,
                        size: Some(groups.end() * GROUP_BYTES),
                        groups,
                    },
                );
            }
            for _ in 0..requests_this_tick {
                let Some((peer, request, wanted)) = timed.pending.pop_front() else {
                    break;
                };
                let mut batch = ChunkGroupRanges::empty();
                let flush = |timed: &mut Timed, batch: &mut ChunkGroupRanges| {
                    if !batch.is_empty() {
                        let groups = std::mem::take(batch);
                        let bytes = groups.group_count() * GROUP_BYTES;
                        timed.handle(
                            now,
                            Event::GroupsVerified {
                                peer,
                                request,
                                groups,
                                bytes,
                            },
                        );
                    }
                };
                for range in wanted.iter() {
                    for group in range {
                        batch.insert(group..group + 1);
                        if batch.group_count() >= 8 {
                            flush(&mut timed, &mut batch);
                        }
                    }
                }
                flush(&mut timed, &mut batch);
                timed.handle(now, Event::RequestFinished { peer, request });
            }
            timed.drain(now);
        }
        if !timed.done {
            return Err("the transfer did not finish".to_owned());
        }
        if best.is_none_or(|(spent, _)| timed.spent < spent) {
            best = Some((timed.spent, timed.events));
        }
    }
    let (spent, events) = best.ok_or("no round ran")?;
    let mib = (groups * GROUP_BYTES) as f64 / (1024.0 * 1024.0);
    println!(
        "engine_cost: {groups} groups ({mib:.0} MiB), {neighbours} neighbours + 1 upstream, have-maps every {} ms, best of {rounds}",
        tick.as_millis()
    );
    println!(
        "  events {events}, engine time {:.1} ms, {:.2} us per event, {:.3} CPU-ms per MiB",
        spent.as_secs_f64() * 1e3,
        spent.as_secs_f64() * 1e6 / events as f64,
        spent.as_secs_f64() * 1e3 / mib,
    );
    Ok(())
}
