//! The fleet model: a discrete-event simulation at the level of flows.
//!
//! Vehicles drive daily routes between depots. Parked at a depot, a vehicle that knows of the
//! release downloads it over the yard WiFi from the depot cache and from its neighbours; away,
//! it asks the link policy (`node::policy`, the code the vehicle peer runs) whether it may use
//! cellular, and downloads there within what the policy allows. Within a yard, rates are shared
//! max-min fairly ([`super::flow`]) over the depot's upload, the pooled uploads of the vehicles
//! holding data, the yard WiFi and each vehicle's download. Rates stay constant between events;
//! every event that changes a yard brings its byte counts up to date and shares again.
//!
//! The director is `origin::campaign` itself: it starts the campaign, receives every report,
//! ticks, and its decisions (advance, halt, complete) open waves or withdraw the release.
//!
//! Swarm approximation. Within a yard, what the depot sends is new to the yard (the depot
//! super-seeds, `node::seeding`) until the yard holds the whole delta; the yard's *union* is
//! what the depot sent plus what vehicles brought with them (from cellular or other yards),
//! at most the delta. A vehicle can get from its neighbours only what the union holds and it
//! lacks: one that has caught up with the union gets new data from them at most as fast as it
//! enters the yard. The depot serves a release once it holds it whole (the real depot forwards
//! groups as they arrive: the model is pessimistic there by at most the prefetch time).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use node::policy::{Link, LinkClass, LinkPolicy};
use origin::campaign::{Campaign, Decision, Outcome, State as CampaignState};
use proto::BlobId;
use serde::Serialize;
use vehicle_peer::agent::{
    Action, Agent, Blob, DeltaOffer, EcuFacts, FetchEnd, Image, Step, Verified,
};
use vehicle_peer::flasher::{GroupDecision, Outcome as Flashed};

use super::flow::MaxMin;
use super::scenario::Checked;

const NO_SLOT: u32 = u32::MAX;

/// A vehicle within this many bytes of the end of the delta has all of it. Byte counts are the
/// fluid model's, fractional; a real download counts whole bytes, and a residue below one byte
/// would otherwise ask for a cellular run shorter than the clock's resolution (a microsecond),
/// which moves nothing and is asked for again at the same instant, for ever.
const WHOLE_DELTA_SLACK: f64 = 1.0;

/// The shortest run of a link the model schedules, in seconds: rounding never spins.
const MIN_STEP_SECS: f64 = 0.001;

/// Events handled at one instant of virtual time before the run is declared stuck: far more
/// than any real burst (every vehicle of the fleet acting at once, several times over).
fn stall_limit(vehicles: u32) -> u64 {
    (64 * u64::from(vehicles)).max(1_000_000)
}

/// Watches virtual time move: too many events at one instant means a rule keeps rescheduling
/// itself without progress, and the run stops with the event that was spinning rather than
/// never ending.
#[derive(Debug)]
struct StallGuard {
    at: u64,
    same: u64,
    limit: u64,
}

impl StallGuard {
    fn new(limit: u64) -> Self {
        Self {
            at: 0,
            same: 0,
            limit,
        }
    }

    /// Counts an event at `key` (microseconds of virtual time); an error once `limit` events in
    /// a row came at the same instant.
    fn observe(&mut self, key: u64, ev: &Ev) -> anyhow::Result<()> {
        if key != self.at {
            self.at = key;
            self.same = 0;
        }
        self.same += 1;
        if self.same > self.limit {
            #[allow(clippy::cast_precision_loss)]
            let secs = key as f64 / 1_000_000.0;
            anyhow::bail!(
                "virtual time stopped at {secs:.6} s: {} events in a row at that instant, the \
                 last {}",
                self.same,
                ev.describe()
            );
        }
        Ok(())
    }
}

/// A 64-bit mix (SplitMix64's finaliser): the model's only source of randomness, so a run
/// depends on the seed alone.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) for (seed, what, a, b).
fn draw(seed: u64, what: u64, a: u64, b: u64) -> f64 {
    let h = mix(mix(mix(seed ^ mix(what)) ^ a) ^ b);
    #[allow(clippy::cast_precision_loss)]
    let x = (h >> 11) as f64 / (1u64 << 53) as f64;
    x
}

// What a draw is for.
const DRAW_CHECK: u64 = 1;
const DRAW_CELL_CHECK: u64 = 2;
const DRAW_SIGNAL: u64 = 3;
const DRAW_HEALTH: u64 = 4;
const DRAW_ROLLBACK: u64 = 5;
const DRAW_CORRUPT: u64 = 6;
const DRAW_DEPART: u64 = 7;
const DRAW_RETURN: u64 = 8;
const DRAW_AWAY: u64 = 9;
const DRAW_VISIT: u64 = 10;
const DRAW_VISIT_WHERE: u64 = 11;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    CampaignStart,
    Tick,
    Sample,
    PrefetchDone(u32),
    DepotDown(u32),
    DepotUp(u32),
    Depart { vehicle: u32, day: u32 },
    Arrive { vehicle: u32, depot: u32, day: u32 },
    Learn(u32),
    Decide { vehicle: u32, generation: u32 },
    CellStop { vehicle: u32, generation: u32 },
    Yard { depot: u32, version: u64 },
    Installed(u32),
    Report(u32),
}

impl Ev {
    /// The event, naming its vehicle or depot, for errors.
    fn describe(&self) -> String {
        match *self {
            Self::CampaignStart => "the campaign's start".into(),
            Self::Tick => "a campaign tick".into(),
            Self::Sample => "a sample".into(),
            Self::PrefetchDone(d) => format!("depot {d}'s prefetch ending"),
            Self::DepotDown(d) => format!("depot {d} going down"),
            Self::DepotUp(d) => format!("depot {d} coming back"),
            Self::Depart { vehicle, day } => format!("vehicle {vehicle} departing on day {day}"),
            Self::Arrive {
                vehicle,
                depot,
                day,
            } => format!("vehicle {vehicle} arriving at depot {depot} on day {day}"),
            Self::Learn(v) => format!("vehicle {v} learning of the release"),
            Self::Decide { vehicle, .. } => {
                format!("vehicle {vehicle} asking its link policy about cellular")
            }
            Self::CellStop { vehicle, .. } => format!("vehicle {vehicle} ending a cellular run"),
            Self::Yard { depot, .. } => format!("depot {depot}'s yard sharing its links again"),
            Self::Installed(v) => format!("vehicle {v} finishing its install"),
            Self::Report(v) => format!("vehicle {v} reporting"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not told of the release (its wave is closed, or it has not checked since).
    Unaware,
    Downloading,
    Installing,
    /// Installed; the link has not let the report go yet.
    Unreported,
    /// Installed; the report is on its way.
    Reporting,
    /// Installed and reported.
    Done,
    /// The campaign halted before it installed.
    Withdrawn,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    since: f64,
    cap: f64,
}

#[derive(Debug)]
struct Vehicle {
    home: u32,
    region: u32,
    wave: u32,
    at: Option<u32>,
    present_slot: u32,
    yard_slot: u32,
    phase: Phase,
    have: f64,
    from_cellular: f64,
    rate_depot: f64,
    rate_pool: f64,
    caught_up: bool,
    cell: Option<Cell>,
    generation: u32,
    last_yard: u32,
    signal: u8,
    corrupt: bool,
    /// The vehicle agent itself: every decision it takes is the real agent's.
    agent: Agent,
    reported_at: Option<f64>,
    outcome: Option<Outcome>,
}

#[derive(Debug, Default)]
struct Yard {
    region: u32,
    up: bool,
    holds: bool,
    present: Vec<u32>,
    downloaders: Vec<u32>,
    holders: u32,
    union: f64,
    last: f64,
    version: u64,
    served_depot: f64,
    served_peers: f64,
    /// Busy periods: (start, vehicles that joined during it).
    busy_since: Option<f64>,
    busy_joins: u32,
    busy_secs: f64,
    bound_secs: f64,
    client_server_secs: f64,
    vehicles: u32,
    prefetch_start: f64,
    prefetch_done: f64,
}

/// One yard in the summary.
#[derive(Clone, Debug, Serialize)]
pub struct YardResult {
    /// Depot index.
    pub depot: u32,
    /// Its region.
    pub region: u32,
    /// Vehicles that downloaded there.
    pub vehicles: u32,
    /// Bytes the depot cache sent onto the yard.
    pub bytes_from_depot: f64,
    /// Bytes vehicles sent each other.
    pub bytes_from_peers: f64,
    /// Seconds with at least one vehicle downloading.
    pub busy_secs: f64,
    /// The fluid lower bound summed over its busy periods:
    /// `max(F/u_depot, F/d, N·F/(u_depot + Σ u_vehicle), N·F/wifi)` with N the vehicles that
    /// joined in the period.
    pub fluid_bound_secs: f64,
    /// The client-server bound summed the same way: `max(N·F/min(u_depot, wifi), F/d)`.
    pub client_server_secs: f64,
    /// `busy_secs / fluid_bound_secs`.
    pub ratio_to_fluid: Option<f64>,
}

/// A time series sample.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Hours since the campaign started (negative before).
    pub hours: f64,
    /// Share of the fleet committed, per region.
    pub region_updated: Vec<f64>,
    /// Share of each wave's own vehicles committed.
    pub wave_updated: Vec<f64>,
    /// Share of the fleet committed.
    pub fleet_updated: f64,
    /// Cumulative cellular bytes.
    pub cellular_bytes: f64,
    /// Cumulative yard WiFi bytes (depot and peers).
    pub wifi_bytes: f64,
    /// Cumulative depot backhaul bytes.
    pub backhaul_bytes: f64,
}

/// A decision of the campaign, when it was taken.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionAt {
    /// Hours after the campaign started.
    pub hours: f64,
    /// `advance`, `halt`, `complete`.
    pub decision: String,
    /// Why.
    pub reason: String,
}

/// A depot outage of the scenario, on the campaign's clock.
#[derive(Clone, Debug, Serialize)]
pub struct OutageAt {
    /// The depot (0-based).
    pub depot: u32,
    /// Its region.
    pub region: u32,
    /// Hours after the campaign started that it went down (negative: before).
    pub from_hours: f64,
    /// Hours after the campaign started that it came back.
    pub to_hours: f64,
}

/// The outcome of a fleet run.
#[derive(Clone, Debug, Serialize)]
pub struct FleetSummary {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Vehicles.
    pub vehicles: u32,
    /// Depots.
    pub depots: u32,
    /// Regions.
    pub regions: u32,
    /// Each region's name in reports (the scenario's, else `region <i>` and its time zone).
    pub region_labels: Vec<String>,
    /// The scenario's depot outages.
    pub depot_outages: Vec<OutageAt>,
    /// Delta bytes (F).
    pub delta_bytes: f64,
    /// Simulated hours run from the campaign's start (with `stop_when_done`, the run ends
    /// once the campaign has ended and no vehicle is still busy).
    pub simulated_hours: f64,
    /// The campaign's final state.
    pub campaign_state: String,
    /// Its decisions.
    pub decisions: Vec<DecisionAt>,
    /// Hours from the campaign's start until 50, 90 and 99 % of the fleet had committed.
    pub hours_to_fleet: [Option<f64>; 3],
    /// Vehicles committed, rolled back, failed health check, never updated.
    pub committed: u32,
    /// Rolled back by the flasher.
    pub rolled_back: u32,
    /// Failed the health check.
    pub health_failed: u32,
    /// Did not install (not offered, withdrawn, or still downloading at the end).
    pub not_installed: u32,
    /// Cellular bytes, whole fleet.
    pub cellular_bytes: f64,
    /// Cellular bytes per vehicle: mean, median, 99th percentile, largest.
    pub cellular_per_vehicle: [f64; 4],
    /// Vehicles that used cellular at all.
    pub vehicles_on_cellular: u32,
    /// Yard bytes from depot caches.
    pub wifi_depot_bytes: f64,
    /// Yard bytes between vehicles.
    pub wifi_peer_bytes: f64,
    /// Backhaul bytes (all depots' prefetch).
    pub backhaul_bytes: f64,
    /// Bytes an origin would send with no depots and no peers: every vehicle the delta over
    /// cellular.
    pub client_server_bytes: f64,
    /// Every yard where something was downloaded.
    pub yards: Vec<YardResult>,
    /// Median, 90th percentile and largest of the yards' ratio to the fluid bound.
    pub yard_ratio: [Option<f64>; 3],
    /// Time series.
    pub samples: Vec<Sample>,
    /// Events processed.
    pub events: u64,
    /// Wall-clock seconds the run took.
    pub wall_secs: f64,
    /// Peak resident memory of this process, bytes (Linux; 0 elsewhere).
    pub peak_rss_bytes: u64,
}

struct Model<'a> {
    sc: &'a Checked,
    seed: u64,
    now: f64,
    end: f64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    events: u64,
    vehicles: Vec<Vehicle>,
    vins: Vec<String>,
    yards: Vec<Yard>,
    waves: Vec<Vec<u32>>,
    wave_opened: Vec<f64>,
    region_depots: Vec<(u32, u32)>,
    region_size: Vec<u32>,
    campaign: Option<Campaign>,
    campaign_at: f64,
    decisions: Vec<DecisionAt>,
    outstanding: u32,
    cellular_done: f64,
    margin: f64,
    maxmin: MaxMin,
    samples: Vec<Sample>,
    committed_times: Vec<f64>,
    committed_by_region: Vec<u32>,
    committed_by_wave: Vec<u32>,
    /// What every vehicle's refresh verifies (its holding and its install's end filled in).
    release: Verified,
}

/// The release as a vehicle's agent sees it after verification: one ECU running the previous
/// image, the new one approved (the prefetch less the delta), the delta between them listed.
fn release(sc: &Checked, released: u64) -> Verified {
    let whole = |bytes: f64| -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bytes = bytes.max(0.0).ceil() as u64;
        bytes
    };
    let image = |target: &str| Image {
        target: target.into(),
        sha256: target.into(),
    };
    Verified {
        director_version: 1,
        priority: sc.priority,
        released,
        ecus: vec![EcuFacts {
            // Letters, digits and a dash: always a valid serial.
            serial: "GW-1".parse().unwrap_or_else(|_| unreachable!()),
            approved: image("release-2"),
            image: Some(Blob {
                id: BlobId::from_bytes([2; 32]),
                length: whole(sc.prefetch_bytes - sc.delta_bytes),
                held: false,
            }),
            running: image("release-1"),
            in_flight: false,
            deltas: std::collections::BTreeMap::from([(
                "release-1".to_string(),
                DeltaOffer {
                    blob: Blob {
                        id: BlobId::from_bytes([9; 32]),
                        length: whole(sc.delta_bytes),
                        held: false,
                    },
                    from_sha256: "release-1".into(),
                },
            )]),
            compressed: None,
        }],
        ended: None,
    }
}

/// How far a run has come, for a progress line.
#[derive(Clone, Copy, Debug)]
pub struct RunProgress {
    /// Simulated hours since the campaign started (negative before).
    pub hours: f64,
    /// Simulated hours the run lasts at most, from the campaign's start.
    pub end_hours: f64,
    /// Events handled.
    pub events: u64,
    /// Share of the fleet committed.
    pub committed: f64,
}

/// Events between two calls of a run's progress callback.
const PROGRESS_EVERY: u64 = 1 << 16;

/// Runs `scenario` (with `seed` in place of its own, if given).
pub fn run(scenario: &Checked, seed: Option<u64>) -> anyhow::Result<FleetSummary> {
    run_with_progress(scenario, seed, &mut |_| {})
}

/// [`run`], calling `progress` every few tens of thousands of events.
pub fn run_with_progress(
    scenario: &Checked,
    seed: Option<u64>,
    progress: &mut dyn FnMut(RunProgress),
) -> anyhow::Result<FleetSummary> {
    let started = Instant::now();
    let mut model = Model::new(scenario, seed.unwrap_or(scenario.scenario.seed));
    model.run(progress)?;
    Ok(model.summary(started.elapsed().as_secs_f64()))
}

/// Runs `scenario` and also says when the director had each vehicle's report (seconds of
/// simulated time, vehicles in scenario order).
pub fn run_with_times(
    scenario: &Checked,
    seed: Option<u64>,
) -> anyhow::Result<(FleetSummary, Vec<Option<f64>>)> {
    let started = Instant::now();
    let mut model = Model::new(scenario, seed.unwrap_or(scenario.scenario.seed));
    model.run(&mut |_| {})?;
    let times = model.vehicles.iter().map(|v| v.reported_at).collect();
    Ok((model.summary(started.elapsed().as_secs_f64()), times))
}

fn secs_to_key(t: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let key = (t.max(0.0) * 1_000_000.0).round() as u64;
    key
}

impl<'a> Model<'a> {
    fn new(sc: &'a Checked, seed: u64) -> Self {
        let s = &sc.scenario;
        let (n, depots, regions) = (s.fleet.vehicles, s.fleet.depots, s.fleet.regions);
        let region_of_depot = |d: u32| -> u32 {
            u32::try_from(u64::from(d) * u64::from(regions) / u64::from(depots)).unwrap_or(0)
        };
        let mut region_depots = vec![(u32::MAX, 0u32); regions as usize];
        for d in 0..depots {
            let r = region_of_depot(d) as usize;
            region_depots[r].0 = region_depots[r].0.min(d);
            region_depots[r].1 = region_depots[r].1.max(d + 1);
        }
        let mut yards: Vec<Yard> = (0..depots)
            .map(|d| Yard {
                region: region_of_depot(d),
                up: true,
                ..Yard::default()
            })
            .collect();
        let plan = &sc.plan;
        let mut vehicles = Vec::with_capacity(n as usize);
        let mut vins = Vec::with_capacity(n as usize);
        let mut waves = vec![Vec::new(); plan.waves.len()];
        let mut region_size = vec![0u32; regions as usize];
        for v in 0..n {
            let home = u32::try_from(u64::from(v) * u64::from(depots) / u64::from(n)).unwrap_or(0);
            let region = region_of_depot(home);
            let vin = s
                .fleet
                .vins
                .get(v as usize)
                .cloned()
                .unwrap_or_else(|| format!("SIM{v:08}"));
            let wave = u32::try_from(plan.wave_of(&vin)).unwrap_or(0);
            waves[wave as usize].push(v);
            region_size[region as usize] += 1;
            let [lo, hi] = s.vehicle.signal;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let signal = lo
                + (draw(seed, DRAW_SIGNAL, u64::from(v), 0) * f64::from(hi - lo + 1))
                    .floor()
                    .min(f64::from(hi - lo)) as u8;
            let yard = &mut yards[home as usize];
            yard.present.push(v);
            vehicles.push(Vehicle {
                home,
                region,
                wave,
                at: Some(home),
                present_slot: u32::try_from(yard.present.len() - 1).unwrap_or(NO_SLOT),
                yard_slot: NO_SLOT,
                phase: Phase::Unaware,
                have: 0.0,
                from_cellular: 0.0,
                rate_depot: 0.0,
                rate_pool: 0.0,
                caught_up: false,
                cell: None,
                generation: 0,
                last_yard: NO_SLOT,
                signal,
                corrupt: draw(seed, DRAW_CORRUPT, u64::from(v), 0) < s.failures.corrupt_peers,
                agent: Agent::new(LinkPolicy::new(sc.policy_for(region))),
                reported_at: None,
                outcome: None,
            });
            vins.push(vin);
        }
        let campaign_at = s.campaign.start_hours * 3600.0;
        let mut model = Self {
            sc,
            seed,
            now: 0.0,
            end: s.days * 86_400.0,
            queue: BinaryHeap::new(),
            seq: 0,
            events: 0,
            vehicles,
            vins,
            yards,
            wave_opened: Vec::new(),
            waves,
            region_depots,
            region_size,
            campaign: None,
            campaign_at,
            decisions: Vec::new(),
            outstanding: 0,
            cellular_done: 0.0,
            margin: (sc.delta_bytes / 64.0).min(1_048_576.0),
            maxmin: MaxMin::default(),
            samples: Vec::new(),
            committed_times: Vec::new(),
            committed_by_region: vec![0; regions as usize],
            committed_by_wave: vec![0; plan.waves.len()],
            release: release(
                sc,
                s.start_unix + {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let at = campaign_at as u64;
                    at
                },
            ),
        };
        // Depots prefetch from publication on, at their backhaul's rate; an outage pauses it.
        let publish = (campaign_at - s.release.published_hours_before * 3600.0).max(0.0);
        let fetch = sc.prefetch_bytes / sc.backhaul;
        for d in 0..depots {
            let mut done = publish + fetch;
            for o in s.failures.depot_outages.iter().filter(|o| o.depot == d) {
                let (a, b) = (o.start_hours * 3600.0, (o.start_hours + o.hours) * 3600.0);
                if a < done && b > publish {
                    done += b - a.max(publish);
                }
            }
            model.yards[d as usize].prefetch_start = publish;
            model.yards[d as usize].prefetch_done = done;
            model.push(done, Ev::PrefetchDone(d));
        }
        for o in &s.failures.depot_outages {
            model.push(o.start_hours * 3600.0, Ev::DepotDown(o.depot));
            model.push((o.start_hours + o.hours) * 3600.0, Ev::DepotUp(o.depot));
        }
        model.push(campaign_at, Ev::CampaignStart);
        model.push(0.0, Ev::Sample);
        if !s.routes.always_present {
            for v in 0..n {
                let first = model.depart_time(v, 0);
                let day = if first > 0.0 { 0 } else { 1 };
                let at = model.depart_time(v, day);
                model.push(at, Ev::Depart { vehicle: v, day });
            }
        }
        model
    }

    fn push(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.queue
            .push(Reverse((secs_to_key(at.max(self.now)), self.seq, ev)));
    }

    fn unix(&self) -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let secs = self.now.max(0.0).floor() as u64;
        self.sc.scenario.start_unix + secs
    }

    /// Simulated time of local minute `minute` on local day `day` (day 0: the local day the
    /// run starts in) in `region`.
    fn local_time(&self, region: u32, day: u32, minute: f64) -> f64 {
        let offset = i64::from(self.sc.utc_offset(region)) * 60;
        let start = i64::try_from(self.sc.scenario.start_unix).unwrap_or(0);
        let local_start = start + offset;
        let day0 = local_start - local_start.rem_euclid(86_400);
        #[allow(clippy::cast_precision_loss)]
        let base = (day0 - local_start) as f64;
        base + f64::from(day) * 86_400.0 + minute * 60.0
    }

    fn jitter(&self, what: u64, vehicle: u32, day: u32) -> f64 {
        let j = self.sc.scenario.routes.jitter_minutes;
        (draw(self.seed, what, u64::from(vehicle), u64::from(day)) * 2.0 - 1.0) * j
    }

    fn depart_time(&self, v: u32, day: u32) -> f64 {
        let region = self.vehicles[v as usize].region;
        let minute = self.sc.depart_minute + self.jitter(DRAW_DEPART, v, day);
        self.local_time(region, day, minute)
    }

    fn return_time(&self, v: u32, day: u32) -> f64 {
        let region = self.vehicles[v as usize].region;
        let minute = self.sc.return_minute + self.jitter(DRAW_RETURN, v, day);
        self.local_time(region, day, minute)
    }

    fn run(&mut self, progress: &mut dyn FnMut(RunProgress)) -> anyhow::Result<()> {
        let mut guard = StallGuard::new(stall_limit(self.sc.scenario.fleet.vehicles));
        while let Some(Reverse((key, _, ev))) = self.queue.pop() {
            #[allow(clippy::cast_precision_loss)]
            let at = key as f64 / 1_000_000.0;
            if at > self.end {
                break;
            }
            guard.observe(key, &ev)?;
            self.now = at;
            self.events += 1;
            if self.events % PROGRESS_EVERY == 0 {
                progress(RunProgress {
                    hours: (self.now - self.campaign_at) / 3600.0,
                    end_hours: (self.end - self.campaign_at) / 3600.0,
                    events: self.events,
                    #[allow(clippy::cast_precision_loss)]
                    committed: self.committed_times.len() as f64
                        / f64::from(self.sc.scenario.fleet.vehicles),
                });
            }
            self.handle(ev)?;
            if self.finished() {
                break;
            }
        }
        self.now = self.now.min(self.end);
        for d in 0..self.yards.len() {
            self.advance(u32::try_from(d).unwrap_or(0));
            self.close_busy(u32::try_from(d).unwrap_or(0));
        }
        for v in 0..self.vehicles.len() {
            self.stop_cell(u32::try_from(v).unwrap_or(0));
        }
        self.sample();
        Ok(())
    }

    fn finished(&self) -> bool {
        if !self.sc.scenario.stop_when_done {
            return false;
        }
        let ended = matches!(
            self.campaign.as_ref().map(Campaign::state),
            Some(CampaignState::Completed | CampaignState::Halted { .. })
        );
        ended && self.outstanding == 0
    }

    fn handle(&mut self, ev: Ev) -> anyhow::Result<()> {
        match ev {
            Ev::CampaignStart => self.start_campaign()?,
            Ev::Tick => {
                let unix = self.unix();
                let decision = self.campaign.as_mut().and_then(|c| c.tick(unix));
                self.decided(decision);
                if matches!(
                    self.campaign.as_ref().map(Campaign::state),
                    Some(CampaignState::Running { .. })
                ) {
                    #[allow(clippy::cast_precision_loss)]
                    let next = self.now + self.sc.scenario.campaign.tick_secs as f64;
                    self.push(next, Ev::Tick);
                }
            }
            Ev::Sample => {
                self.sample();
                #[allow(clippy::cast_precision_loss)]
                let next = self.now + self.sc.scenario.sample_secs as f64;
                self.push(next, Ev::Sample);
            }
            Ev::PrefetchDone(d) => {
                self.advance(d);
                self.yards[d as usize].holds = true;
                self.reshare(d);
            }
            Ev::DepotDown(d) => {
                self.advance(d);
                self.yards[d as usize].up = false;
                self.reshare(d);
            }
            Ev::DepotUp(d) => {
                self.advance(d);
                self.yards[d as usize].up = true;
                self.reshare(d);
                let parked = self.yards[d as usize].present.clone();
                for v in parked {
                    self.schedule_learn(v);
                }
            }
            Ev::Depart { vehicle, day } => self.depart(vehicle, day),
            Ev::Arrive {
                vehicle,
                depot,
                day,
            } => self.arrive(vehicle, depot, day),
            Ev::Learn(v) => self.learn(v),
            Ev::Decide {
                vehicle,
                generation,
            } => {
                if self.vehicles[vehicle as usize].generation == generation {
                    self.check(vehicle);
                }
            }
            Ev::CellStop {
                vehicle,
                generation,
            } => {
                if self.vehicles[vehicle as usize].generation == generation {
                    self.stop_cell(vehicle);
                    if self.has_whole_delta(vehicle) {
                        self.downloaded(vehicle);
                    } else {
                        // The run ended at its allowance or at the policy's recheck: the next
                        // check asks the policy again.
                        self.check(vehicle);
                    }
                }
            }
            Ev::Yard { depot, version } => {
                if self.yards[depot as usize].version == version {
                    self.advance(depot);
                    self.reshare(depot);
                }
            }
            Ev::Installed(v) => self.installed(v),
            Ev::Report(v) => self.report(v)?,
        }
        Ok(())
    }

    fn start_campaign(&mut self) -> anyhow::Result<()> {
        let population = self
            .vins
            .iter()
            .zip(&self.vehicles)
            .map(|(vin, v)| (vin.clone(), vec![format!("region:r{}", v.region)]));
        let campaign = Campaign::start(self.sc.plan.clone(), population, self.unix())
            .map_err(|e| anyhow::anyhow!("starting the campaign: {e}"))?;
        self.campaign = Some(campaign);
        self.decisions.push(DecisionAt {
            hours: 0.0,
            decision: "start".into(),
            reason: format!(
                "approved: wave 1 ({} %) opens",
                self.sc.plan.waves[0].percent
            ),
        });
        self.open_wave(0);
        #[allow(clippy::cast_precision_loss)]
        let next = self.now + self.sc.scenario.campaign.tick_secs as f64;
        self.push(next, Ev::Tick);
        Ok(())
    }

    fn open_wave(&mut self, wave: usize) {
        while self.wave_opened.len() <= wave {
            self.wave_opened.push(self.now);
        }
        let members = self.waves[wave].clone();
        self.outstanding += u32::try_from(members.len()).unwrap_or(u32::MAX);
        for v in members {
            self.schedule_learn(v);
        }
    }

    fn decided(&mut self, decision: Option<Decision>) {
        let Some(decision) = decision else {
            return;
        };
        let hours = (self.now - self.campaign_at) / 3600.0;
        let (name, reason) = match &decision {
            Decision::Advance { reason, .. }
            | Decision::Halt { reason }
            | Decision::Complete { reason }
            | Decision::Abort { reason } => (decision.name(), reason.clone()),
            Decision::Resume { by } => (decision.name(), format!("approved by {by}")),
        };
        self.decisions.push(DecisionAt {
            hours,
            decision: name.into(),
            reason,
        });
        match decision {
            Decision::Advance { wave, .. } => self.open_wave(wave),
            Decision::Halt { .. } | Decision::Abort { .. } => self.withdraw(),
            Decision::Complete { .. } | Decision::Resume { .. } => {}
        }
    }

    /// The director stops handing the release out: vehicles that have not begun installing
    /// drop it.
    fn withdraw(&mut self) {
        for v in 0..self.vehicles.len() {
            let v = u32::try_from(v).unwrap_or(0);
            let phase = self.vehicles[v as usize].phase;
            let opened = (self.vehicles[v as usize].wave as usize) < self.wave_opened.len();
            if phase == Phase::Downloading || (phase == Phase::Unaware && opened) {
                if phase == Phase::Downloading {
                    self.stop_cell(v);
                    let in_yard = self.vehicles[v as usize].yard_slot != NO_SLOT;
                    if let Some(d) = self.vehicles[v as usize].at.filter(|_| in_yard) {
                        self.advance(d);
                        self.leave_downloaders(v, d);
                        self.reshare(d);
                    }
                }
                self.vehicles[v as usize].phase = Phase::Withdrawn;
                self.outstanding = self.outstanding.saturating_sub(1);
            }
        }
    }

    /// When the vehicle will next ask the director (through its depot, or over cellular
    /// while away or while its depot is down).
    fn schedule_learn(&mut self, v: u32) {
        let vehicle = &self.vehicles[v as usize];
        if vehicle.phase != Phase::Unaware {
            return;
        }
        let Some(&opened) = self.wave_opened.get(vehicle.wave as usize) else {
            return;
        };
        let s = &self.sc.scenario;
        let at = match vehicle.at {
            Some(d) if self.yards[d as usize].up => {
                let ready = opened + s.depot.metadata_delay_secs;
                self.now.max(ready)
                    + draw(self.seed, DRAW_CHECK, u64::from(v), 0) * s.vehicle.check_secs
            }
            _ => {
                self.now
                    + draw(self.seed, DRAW_CELL_CHECK, u64::from(v), 0)
                        * s.vehicle.cellular_check_secs
            }
        };
        self.push(at, Ev::Learn(v));
    }

    fn learn(&mut self, v: u32) {
        if self.vehicles[v as usize].phase != Phase::Unaware {
            return;
        }
        let may = self
            .campaign
            .as_ref()
            .is_some_and(|c| c.may_install(&self.vins[v as usize]));
        if !may {
            return;
        }
        self.vehicles[v as usize].phase = Phase::Downloading;
        self.check(v);
    }

    fn depart(&mut self, v: u32, day: u32) {
        if let Some(d) = self.vehicles[v as usize].at {
            self.advance(d);
            if self.vehicles[v as usize].yard_slot != NO_SLOT {
                self.leave_downloaders(v, d);
            }
            self.leave_present(v, d);
            self.reshare(d);
        }
        // Tonight: home, another depot of the region, or out.
        let s = &self.sc.scenario.routes;
        let mut night = day;
        if draw(self.seed, DRAW_AWAY, u64::from(v), u64::from(day)) < s.overnight_away {
            night += 1;
        }
        let home = self.vehicles[v as usize].home;
        let mut depot = home;
        if draw(self.seed, DRAW_VISIT, u64::from(v), u64::from(day)) < s.visit_other_depot {
            let (lo, hi) = self.region_depots[self.vehicles[v as usize].region as usize];
            if hi - lo > 1 {
                let pick = draw(self.seed, DRAW_VISIT_WHERE, u64::from(v), u64::from(day));
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let other = lo + ((pick * f64::from(hi - lo - 1)).floor() as u32).min(hi - lo - 2);
                depot = if other >= home { other + 1 } else { other };
            }
        }
        let at = self.return_time(v, night);
        self.push(
            at,
            Ev::Arrive {
                vehicle: v,
                depot,
                day: night,
            },
        );
        self.check(v);
    }

    fn arrive(&mut self, v: u32, d: u32, day: u32) {
        self.stop_cell(v);
        self.vehicles[v as usize].generation += 1;
        self.advance(d);
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.at = Some(d);
        let yard = &mut self.yards[d as usize];
        yard.present.push(v);
        vehicle.present_slot = u32::try_from(yard.present.len() - 1).unwrap_or(NO_SLOT);
        if vehicle.have > 0.0 && !vehicle.corrupt {
            yard.holders += 1;
            yard.union = (yard.union + vehicle.have).min(self.sc.delta_bytes);
        }
        if matches!(vehicle.phase, Phase::Downloading | Phase::Unreported) {
            self.reshare(d);
            self.check(v);
        } else {
            self.reshare(d);
            self.schedule_learn(v);
        }
        let next = self.depart_time(v, day + 1).max(self.now + 60.0);
        self.push(
            next,
            Ev::Depart {
                vehicle: v,
                day: day + 1,
            },
        );
    }

    fn leave_present(&mut self, v: u32, d: u32) {
        let slot = self.vehicles[v as usize].present_slot as usize;
        let yard = &mut self.yards[d as usize];
        yard.present.swap_remove(slot);
        if let Some(&moved) = yard.present.get(slot) {
            self.vehicles[moved as usize].present_slot = u32::try_from(slot).unwrap_or(NO_SLOT);
        }
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.present_slot = NO_SLOT;
        vehicle.at = None;
        if vehicle.have > 0.0 && !vehicle.corrupt {
            yard.holders = yard.holders.saturating_sub(1);
            if yard.holders == 0 {
                yard.union = 0.0;
            }
        }
    }

    fn join_downloaders(&mut self, v: u32, d: u32) {
        self.advance(d);
        let yard = &mut self.yards[d as usize];
        yard.downloaders.push(v);
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.yard_slot = u32::try_from(yard.downloaders.len() - 1).unwrap_or(NO_SLOT);
        vehicle.caught_up = false;
        if yard.busy_since.is_none() {
            yard.busy_since = Some(self.now);
            yard.busy_joins = 0;
        }
        yard.busy_joins += 1;
        if vehicle.last_yard != d {
            vehicle.last_yard = d;
            yard.vehicles += 1;
        }
        self.reshare(d);
    }

    fn leave_downloaders(&mut self, v: u32, d: u32) {
        let slot = self.vehicles[v as usize].yard_slot as usize;
        let yard = &mut self.yards[d as usize];
        yard.downloaders.swap_remove(slot);
        if let Some(&moved) = yard.downloaders.get(slot) {
            self.vehicles[moved as usize].yard_slot = u32::try_from(slot).unwrap_or(NO_SLOT);
        }
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.yard_slot = NO_SLOT;
        vehicle.rate_depot = 0.0;
        vehicle.rate_pool = 0.0;
        if yard.downloaders.is_empty() {
            self.close_busy(d);
        }
    }

    /// Ends a yard's busy period, adding its bounds.
    fn close_busy(&mut self, d: u32) {
        let sc = self.sc;
        let yard = &mut self.yards[d as usize];
        let Some(since) = yard.busy_since.take() else {
            return;
        };
        let n = f64::from(yard.busy_joins.max(1));
        let f = sc.delta_bytes;
        let fluid = (f / sc.depot_up)
            .max(f / sc.vehicle_down)
            .max(n * f / (sc.depot_up + n * sc.vehicle_up))
            .max(n * f / sc.wifi);
        let client_server = (n * f / sc.depot_up.min(sc.wifi)).max(f / sc.vehicle_down);
        yard.busy_secs += self.now - since;
        yard.bound_secs += fluid;
        yard.client_server_secs += client_server;
    }

    /// Brings a yard's byte counts up to now at the rates last shared.
    fn advance(&mut self, d: u32) {
        let f = self.sc.delta_bytes;
        let yard = &mut self.yards[d as usize];
        let dt = self.now - yard.last;
        yard.last = self.now;
        if dt <= 0.0 || yard.downloaders.is_empty() {
            return;
        }
        let injected: f64 = yard
            .downloaders
            .iter()
            .map(|&v| self.vehicles[v as usize].rate_depot * dt)
            .sum();
        let union = (yard.union + injected).min(f);
        yard.union = union;
        for &v in &yard.downloaders {
            let vehicle = &mut self.vehicles[v as usize];
            let before = vehicle.have;
            let from_depot = (vehicle.rate_depot * dt).min(f - before);
            let with_depot = before + from_depot;
            let ceiling = union.max(with_depot).min(f);
            let from_peers = (vehicle.rate_pool * dt).min((ceiling - with_depot).max(0.0));
            vehicle.have = with_depot + from_peers;
            yard.served_depot += from_depot;
            yard.served_peers += from_peers;
            if before <= 0.0 && vehicle.have > 0.0 && !vehicle.corrupt {
                yard.holders += 1;
            }
        }
    }

    /// Shares the yard's links again, finishes the downloads that are complete and schedules
    /// the yard's next event.
    fn reshare(&mut self, d: u32) {
        let f = self.sc.delta_bytes;
        // Downloads that are complete leave first.
        let done: Vec<u32> = self.yards[d as usize]
            .downloaders
            .iter()
            .copied()
            .filter(|&v| self.has_whole_delta(v))
            .collect();
        for v in done {
            self.leave_downloaders(v, d);
            self.downloaded(v);
        }
        let sc = self.sc;
        let margin = self.margin;
        let yard = &mut self.yards[d as usize];
        yard.version += 1;
        if yard.downloaders.is_empty() {
            return;
        }
        let union = yard.union;
        // Who has caught up with what the yard holds (with hysteresis: 1 margin in, 2 out).
        for &v in &yard.downloaders {
            let vehicle = &mut self.vehicles[v as usize];
            let gap = union - vehicle.have;
            // A byte of slack: the event that brings a vehicle to the margin lands on it only
            // up to rounding, and must not be followed by a string of tiny steps.
            vehicle.caught_up = if vehicle.caught_up {
                gap <= 2.0 * margin
            } else {
                gap <= margin + 1.0
            } && union < f;
        }
        let depot_cap = if yard.up && yard.holds {
            sc.depot_up
        } else {
            0.0
        };
        let pool_cap = f64::from(yard.holders) * sc.vehicle_up;
        let build = |m: &mut MaxMin, vehicles: &[Vehicle], downloaders: &[u32], cap: f64| {
            m.clear();
            let depot = m.link(depot_cap);
            let pool = m.link(pool_cap);
            let wifi = m.link(sc.wifi);
            for &v in downloaders {
                let down = m.link(sc.vehicle_down);
                m.flow([depot, wifi, down]);
                if vehicles[v as usize].caught_up {
                    let limit = m.link(cap);
                    // Three links per flow: the downlink is respected when the rates are
                    // read back (what is left of it after the depot's share).
                    m.flow([pool, wifi, limit]);
                } else {
                    m.flow([pool, wifi, down]);
                }
            }
        };
        // First pass: the rate at which new data enters the yard.
        build(&mut self.maxmin, &self.vehicles, &yard.downloaders, 0.0);
        let rates = self.maxmin.solve();
        let entering: f64 = if union < f {
            rates.iter().step_by(2).sum()
        } else {
            0.0
        };
        // Second pass: vehicles that caught up get from their neighbours at most that rate.
        build(
            &mut self.maxmin,
            &self.vehicles,
            &yard.downloaders,
            entering,
        );
        let rates = self.maxmin.solve().to_vec();
        let mut next = f64::INFINITY;
        for (i, &v) in yard.downloaders.iter().enumerate() {
            let vehicle = &mut self.vehicles[v as usize];
            vehicle.rate_depot = rates[2 * i];
            vehicle.rate_pool = rates[2 * i + 1]
                .min(sc.vehicle_down - vehicle.rate_depot)
                .max(0.0);
            let total = vehicle.rate_depot + vehicle.rate_pool;
            if total > 0.0 {
                next = next.min((f - vehicle.have) / total);
            }
            let gap = union - vehicle.have;
            if vehicle.caught_up {
                if entering > total {
                    next = next.min((2.0 * margin - gap).max(0.0) / (entering - total));
                }
            } else if total > entering && gap > margin + 1.0 {
                next = next.min((gap - margin) / (total - entering));
            }
        }
        if entering > 0.0 {
            next = next.min((f - union) / entering);
        }
        let version = yard.version;
        if next.is_finite() {
            let at = self.now + next.max(MIN_STEP_SECS);
            self.push(at, Ev::Yard { depot: d, version });
        }
    }

    fn has_whole_delta(&self, v: u32) -> bool {
        self.vehicles[v as usize].have >= self.sc.delta_bytes - WHOLE_DELTA_SLACK
    }

    fn downloaded(&mut self, v: u32) {
        if self.vehicles[v as usize].phase != Phase::Downloading {
            return;
        }
        let unix = self.unix();
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.have = self.sc.delta_bytes;
        vehicle.agent.advance(unix);
        vehicle.agent.fetch_ended(&FetchEnd::Complete);
        self.drive(v);
    }

    /// The link the vehicle has now: its yard's WiFi when parked, else cellular at its signal.
    fn link_of(&self, v: u32) -> Link {
        let vehicle = &self.vehicles[v as usize];
        match vehicle.at {
            Some(_) => Link {
                class: LinkClass::YardWifi,
                signal: 100,
            },
            None => Link {
                class: LinkClass::Cellular,
                signal: vehicle.signal,
            },
        }
    }

    /// What the vehicle's refresh verifies: one ECU running the previous release, the new one
    /// approved, with the delta between them listed; what it holds; how its install ended.
    fn verified(&self, v: u32) -> Verified {
        let vehicle = &self.vehicles[v as usize];
        let mut verified = self.release.clone();
        verified.ecus[0]
            .deltas
            .values_mut()
            .for_each(|d| d.blob.held = self.has_whole_delta(v));
        verified.ended = match vehicle.outcome {
            None => None,
            Some(Outcome::Committed) => Some(GroupDecision::Commit),
            Some(Outcome::RolledBack) => Some(GroupDecision::RollBack {
                reason: "the trial boot failed".into(),
            }),
            Some(Outcome::HealthFailed) => Some(GroupDecision::RollBack {
                reason: "health check failed".into(),
            }),
        };
        verified
    }

    /// A check of the vehicle's agent on the link it has now, carried out to its end.
    fn check(&mut self, v: u32) {
        if !matches!(
            self.vehicles[v as usize].phase,
            Phase::Downloading | Phase::Unreported
        ) {
            return;
        }
        let unix = self.unix();
        let link = self.link_of(v);
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.generation += 1;
        vehicle.agent.start_check(unix, Some(link));
        self.drive(v);
    }

    /// Carries out the agent's actions until it waits for something the model brings: a
    /// fetch's end, an install's end, a new link or a time.
    fn drive(&mut self, v: u32) {
        loop {
            let action = self.vehicles[v as usize].agent.poll();
            match action {
                Action::Refresh => {
                    let verified = self.verified(v);
                    // One ECU with a delta and an image: planning cannot fail.
                    if self.vehicles[v as usize]
                        .agent
                        .refreshed(&verified)
                        .is_err()
                    {
                        return;
                    }
                }
                Action::Fetch(fetch) => {
                    self.fetch(v, fetch.allowance);
                    return;
                }
                Action::Install { .. } => {
                    self.vehicles[v as usize].phase = Phase::Installing;
                    let at = self.now + self.sc.scenario.vehicle.install_secs;
                    self.push(at, Ev::Installed(v));
                    return;
                }
                Action::Conclude { .. } => {
                    let vehicle = &mut self.vehicles[v as usize];
                    let already = vehicle.phase == Phase::Unreported;
                    vehicle.phase = Phase::Unreported;
                    vehicle.agent.concluded(already);
                }
                Action::SendReports => {
                    let vehicle = &mut self.vehicles[v as usize];
                    vehicle.agent.reports_sent();
                    if vehicle.phase == Phase::Unreported {
                        vehicle.phase = Phase::Reporting;
                        let at = self.now + self.sc.scenario.vehicle.report_delay_secs;
                        self.push(at, Ev::Report(v));
                    }
                }
                Action::Done(step) => {
                    if let Step::Waiting {
                        retry_at: Some(at), ..
                    } = step
                    {
                        #[allow(clippy::cast_precision_loss)]
                        let at = (at.saturating_sub(self.sc.scenario.start_unix)) as f64;
                        let generation = self.vehicles[v as usize].generation;
                        self.push(
                            at.max(self.now + 1.0),
                            Ev::Decide {
                                vehicle: v,
                                generation,
                            },
                        );
                    }
                    return;
                }
            }
        }
    }

    /// A fetch the agent asked for: in its yard, among the yard's downloaders; away, a cellular
    /// run within the allowance.
    fn fetch(&mut self, v: u32, allowance: Option<u64>) {
        let vehicle = &self.vehicles[v as usize];
        if let Some(d) = vehicle.at {
            if vehicle.yard_slot == NO_SLOT {
                self.join_downloaders(v, d);
            }
            return;
        }
        if vehicle.cell.is_some() {
            return;
        }
        #[allow(clippy::cast_precision_loss)]
        let cap = allowance
            .map_or(f64::INFINITY, |a| a as f64)
            .min(self.sc.delta_bytes - vehicle.have);
        let run = (cap / self.sc.cellular)
            .min(self.sc.scenario.vehicle.policy_recheck_secs)
            .max(MIN_STEP_SECS);
        let generation = vehicle.generation;
        self.vehicles[v as usize].cell = Some(Cell {
            since: self.now,
            cap,
        });
        self.push(
            self.now + run,
            Ev::CellStop {
                vehicle: v,
                generation,
            },
        );
    }

    /// The install ended: the flasher's verdict (drawn from the scenario's failure rates) goes
    /// to the agent, which concludes and reports.
    fn installed(&mut self, v: u32) {
        let f = &self.sc.scenario.failures;
        let outcome = if draw(self.seed, DRAW_HEALTH, u64::from(v), 0) < f.health_fail {
            Outcome::HealthFailed
        } else if draw(self.seed, DRAW_ROLLBACK, u64::from(v), 0) < f.rollback {
            Outcome::RolledBack
        } else {
            Outcome::Committed
        };
        let flashed = match outcome {
            Outcome::Committed => Flashed::Committed,
            Outcome::RolledBack => Flashed::RolledBack {
                reason: "the trial boot failed".into(),
            },
            Outcome::HealthFailed => Flashed::RolledBack {
                reason: "health check failed".into(),
            },
        };
        let unix = self.unix();
        let link = self.link_of(v);
        let vehicle = &mut self.vehicles[v as usize];
        vehicle.outcome = Some(outcome);
        // The install took a while: the vehicle may have driven off meanwhile.
        vehicle.agent.advance(unix);
        vehicle.agent.link_changed(Some(link));
        vehicle.agent.installed(&flashed);
        self.drive(v);
    }

    fn stop_cell(&mut self, v: u32) {
        let unix = self.unix();
        let vehicle = &mut self.vehicles[v as usize];
        let Some(cell) = vehicle.cell.take() else {
            return;
        };
        let bytes = ((self.now - cell.since) * self.sc.cellular)
            .min(cell.cap)
            .max(0.0);
        vehicle.have = (vehicle.have + bytes).min(self.sc.delta_bytes);
        vehicle.from_cellular += bytes;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        vehicle.agent.record(bytes.ceil() as u64, unix);
        self.cellular_done += bytes;
    }

    fn report(&mut self, v: u32) -> anyhow::Result<()> {
        let unix = self.unix();
        let Some(outcome) = self.vehicles[v as usize].outcome else {
            return Ok(());
        };
        let vehicle = &mut self.vehicles[v as usize];
        if vehicle.phase != Phase::Reporting {
            return Ok(());
        }
        vehicle.phase = Phase::Done;
        vehicle.reported_at = Some(self.now);
        self.outstanding = self.outstanding.saturating_sub(1);
        if outcome == Outcome::Committed {
            self.committed_times.push(self.now - self.campaign_at);
            self.committed_by_region[vehicle.region as usize] += 1;
            self.committed_by_wave[vehicle.wave as usize] += 1;
        }
        let Some(campaign) = self.campaign.as_mut() else {
            return Ok(());
        };
        let decision = campaign
            .report(&self.vins[v as usize], outcome, unix)
            .map_err(|e| anyhow::anyhow!("the campaign refused a report: {e}"))?;
        self.decided(decision);
        Ok(())
    }

    fn sample(&mut self) {
        for d in 0..self.yards.len() {
            self.advance(u32::try_from(d).unwrap_or(0));
        }
        let cellular_running: f64 = self
            .vehicles
            .iter()
            .filter_map(|v| {
                v.cell
                    .map(|c| ((self.now - c.since) * self.sc.cellular).min(c.cap))
            })
            .sum();
        let wifi: f64 = self
            .yards
            .iter()
            .map(|y| y.served_depot + y.served_peers)
            .sum();
        let backhaul: f64 = self
            .yards
            .iter()
            .map(|y| {
                let span = (y.prefetch_done - y.prefetch_start).max(1e-9);
                self.sc.prefetch_bytes * ((self.now - y.prefetch_start) / span).clamp(0.0, 1.0)
            })
            .sum();
        let fleet = f64::from(self.sc.scenario.fleet.vehicles);
        self.samples.push(Sample {
            hours: (self.now - self.campaign_at) / 3600.0,
            region_updated: self
                .committed_by_region
                .iter()
                .zip(&self.region_size)
                .map(|(&c, &n)| f64::from(c) / f64::from(n.max(1)))
                .collect(),
            wave_updated: self
                .committed_by_wave
                .iter()
                .zip(&self.waves)
                .map(|(&c, members)| {
                    #[allow(clippy::cast_precision_loss)]
                    let n = members.len().max(1) as f64;
                    f64::from(c) / n
                })
                .collect(),
            #[allow(clippy::cast_precision_loss)]
            fleet_updated: self.committed_times.len() as f64 / fleet,
            cellular_bytes: self.cellular_done + cellular_running,
            wifi_bytes: wifi,
            backhaul_bytes: backhaul,
        });
    }

    fn summary(&self, wall_secs: f64) -> FleetSummary {
        let s = &self.sc.scenario;
        let n = s.fleet.vehicles;
        let mut times = self.committed_times.clone();
        times.sort_by(f64::total_cmp);
        let hours_to = |p: f64| -> Option<f64> {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let need = (f64::from(n) * p).ceil() as usize;
            times.get(need.max(1) - 1).map(|t| t / 3600.0)
        };
        let count = |o: Outcome| {
            u32::try_from(
                self.vehicles
                    .iter()
                    .filter(|v| v.phase == Phase::Done && v.outcome == Some(o))
                    .count(),
            )
            .unwrap_or(u32::MAX)
        };
        let (committed, rolled_back, health_failed) = (
            count(Outcome::Committed),
            count(Outcome::RolledBack),
            count(Outcome::HealthFailed),
        );
        let mut cellular: Vec<f64> = self.vehicles.iter().map(|v| v.from_cellular).collect();
        cellular.sort_by(f64::total_cmp);
        let total_cell: f64 = cellular.iter().sum();
        let pick = |p: usize| cellular[(cellular.len() - 1) * p / 100];
        let yards: Vec<YardResult> = self
            .yards
            .iter()
            .enumerate()
            .filter(|(_, y)| y.vehicles > 0)
            .map(|(d, y)| YardResult {
                depot: u32::try_from(d).unwrap_or(0),
                region: y.region,
                vehicles: y.vehicles,
                bytes_from_depot: y.served_depot,
                bytes_from_peers: y.served_peers,
                busy_secs: y.busy_secs,
                fluid_bound_secs: y.bound_secs,
                client_server_secs: y.client_server_secs,
                ratio_to_fluid: (y.bound_secs > 0.0).then(|| y.busy_secs / y.bound_secs),
            })
            .collect();
        let mut ratios: Vec<f64> = yards.iter().filter_map(|y| y.ratio_to_fluid).collect();
        ratios.sort_by(f64::total_cmp);
        let ratio_at =
            |p: usize| (!ratios.is_empty()).then(|| ratios[(ratios.len() - 1) * p / 100]);
        FleetSummary {
            scenario: s.name.clone(),
            seed: self.seed,
            vehicles: n,
            depots: s.fleet.depots,
            regions: s.fleet.regions,
            region_labels: (0..s.fleet.regions)
                .map(|r| self.sc.region_label(r))
                .collect(),
            depot_outages: s
                .failures
                .depot_outages
                .iter()
                .map(|o| OutageAt {
                    depot: o.depot,
                    region: self.yards.get(o.depot as usize).map_or(0, |y| y.region),
                    from_hours: o.start_hours - self.campaign_at / 3600.0,
                    to_hours: o.start_hours + o.hours - self.campaign_at / 3600.0,
                })
                .collect(),
            delta_bytes: self.sc.delta_bytes,
            simulated_hours: (self.now - self.campaign_at) / 3600.0,
            campaign_state: match self.campaign.as_ref().map(Campaign::state) {
                None => "not started".into(),
                Some(CampaignState::Running { open }) => {
                    format!("running (wave {} open)", open + 1)
                }
                Some(CampaignState::Halted { reason, .. }) => format!("halted: {reason}"),
                Some(CampaignState::Completed) => "completed".into(),
                Some(CampaignState::Aborted { reason, .. }) => format!("aborted: {reason}"),
            },
            decisions: self.decisions.clone(),
            hours_to_fleet: [hours_to(0.5), hours_to(0.9), hours_to(0.99)],
            committed,
            rolled_back,
            health_failed,
            not_installed: n - committed - rolled_back - health_failed,
            cellular_bytes: total_cell,
            cellular_per_vehicle: [total_cell / f64::from(n), pick(50), pick(99), pick(100)],
            vehicles_on_cellular: u32::try_from(cellular.iter().filter(|&&c| c > 0.0).count())
                .unwrap_or(u32::MAX),
            wifi_depot_bytes: self.yards.iter().map(|y| y.served_depot).sum(),
            wifi_peer_bytes: self.yards.iter().map(|y| y.served_peers).sum(),
            backhaul_bytes: self.samples.last().map_or(0.0, |s| s.backhaul_bytes),
            client_server_bytes: f64::from(n) * self.sc.delta_bytes,
            yards,
            yard_ratio: [ratio_at(50), ratio_at(90), ratio_at(100)],
            samples: self.samples.clone(),
            events: self.events,
            wall_secs,
            peak_rss_bytes: peak_rss(),
        }
    }
}

/// The process's peak resident set (VmHWM), bytes; 0 where `/proc` does not say.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_guard_names_the_event_that_keeps_time_still() {
        let mut guard = StallGuard::new(3);
        let ev = Ev::CellStop {
            vehicle: 42,
            generation: 7,
        };
        // Time moving on resets the count, however many events came before.
        for key in 0..10 {
            for _ in 0..3 {
                guard.observe(key, &ev).unwrap();
            }
        }
        let error = guard.observe(9, &ev).unwrap_err().to_string();
        assert!(
            error.contains("vehicle 42 ending a cellular run"),
            "{error}"
        );
        assert!(error.contains("at 0.000009 s"), "{error}");
        assert!(error.contains("4 events"), "{error}");
    }

    #[test]
    fn the_stall_limit_grows_with_the_fleet() {
        assert_eq!(stall_limit(10), 1_000_000);
        assert_eq!(stall_limit(200_000), 12_800_000);
    }
}
