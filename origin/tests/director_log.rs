//! The director stores a campaign's reports as a log between whole-record snapshots
//! (`service::Director`), and signs its vehicles' targets in the background, each batch logged
//! before and after (`origin::jobs`). Power cut at every registry write of a campaign's report
//! phase — each batch begun and done, logged report, vehicle record, snapshot and log trim, and
//! the writes of the decisions reports cause — then the service restarts on what was stored and
//! the vehicle whose report was in flight sends it again: every run must end exactly as the run
//! without a cut (same members, outcomes, decisions, byte counts, and every vehicle's targets
//! signed once), and a last restart must read back the same campaign. Beside it: approval
//! returns before any targets are signed; a restart in the middle of a wave, between batches or
//! inside one, finishes it signing no vehicle twice; a halt while signing stops the signing and
//! withdraws what was signed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use origin::jobs::{Batch, Worked};
use origin::registry::{Registry, SledRegistry, VehicleRecord};
use origin::service::{CampaignRecord, Director};
use proto::director_api::TargetsWork;
use proto::{CampaignId, Vin};
use serde_json::json;

#[path = "common/sim_fleet.rs"]
mod sim_fleet;
use sim_fleet::{
    START, approve_as_two, gateway_campaign, manifest, origin_at, origin_with_releases,
    vehicle_record, vin,
};

const VEHICLES: usize = 24;
const ID: &str = "log";

/// Batches of four vehicles, whatever they take: a run's registry writes are the same each time.
const FOUR: Batch = Batch {
    vehicles: 4,
    time: std::time::Duration::MAX,
};

/// Does the director's background work in batches of [`FOUR`] until nothing is due.
fn work(director: &mut Director, now: u64) -> anyhow::Result<()> {
    while director.work(now, &FOUR)?.due > 0 {}
    Ok(())
}

/// The director targets version a vehicle's registration signs: empty, nothing assigned. A
/// campaign's signing is the next.
const REGISTERED: u64 = 1;

/// Vehicle `i`'s director targets version on disk under `dir` (0: none signed).
fn version(dir: &Path, i: usize) -> u64 {
    origin::director::targets_version(&origin_at(dir), &vin(i))
}

/// The targets vehicle `i` holds on disk under `dir`.
fn held(dir: &Path, i: usize) -> Vec<String> {
    let (_, signed) = origin_at(dir)
        .latest(&origin::director::vehicle_repository(&vin(i)), "targets")
        .unwrap();
    signed["targets"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Two vehicles roll back; the gates let the campaign go on.
fn vehicle_manifest(i: usize, version: u64, now: u64) -> Vec<u8> {
    let (installed, outcome) = if i % 11 == 5 {
        ("gw/1.0.bin", "rolled_back")
    } else {
        ("gw/2.0.bin", "committed")
    };
    let bytes = json!({"yard-wifi": 1000 + i, "cellular": i % 3});
    manifest(i, version, now, installed, outcome, bytes)
}

/// An origin with two releases, the fleet registered, and the campaign approved.
fn set_up(dir: &Path) {
    let origin = origin_with_releases(dir);
    let mut director = Director::open(origin).unwrap();
    for i in 0..VEHICLES {
        director
            .register(&vehicle_record(i, 3, 1), "ops", START)
            .unwrap();
    }
    let spec = gateway_campaign(ID, &[10.0, 50.0, 100.0], 0.5, 0.5, 1);
    director.create(spec, "alice", START).unwrap();
    approve_as_two(&mut director, ID, START);
}

/// The sled registry, with a power cut at its `cut_at`-th write (counted from 0 over every
/// instance sharing `writes`): that write and every later one fail without touching the disk.
struct Cutting {
    inner: SledRegistry,
    writes: Arc<AtomicUsize>,
    cut_at: Option<usize>,
}

impl Cutting {
    fn write(&self) -> anyhow::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        match self.cut_at {
            Some(cut) if n >= cut => anyhow::bail!("power cut at registry write {cut}"),
            _ => Ok(()),
        }
    }
}

impl Registry for Cutting {
    fn put_vehicle(&self, vehicle: &VehicleRecord) -> anyhow::Result<()> {
        self.write()?;
        self.inner.put_vehicle(vehicle)
    }
    fn vehicle(&self, vin: &Vin) -> anyhow::Result<Option<VehicleRecord>> {
        self.inner.vehicle(vin)
    }
    fn vehicles(&self) -> anyhow::Result<Vec<VehicleRecord>> {
        self.inner.vehicles()
    }
    fn put_campaign(&self, id: &CampaignId, record: &[u8]) -> anyhow::Result<()> {
        self.write()?;
        self.inner.put_campaign(id, record)
    }
    fn campaigns(&self) -> anyhow::Result<Vec<(CampaignId, Vec<u8>)>> {
        self.inner.campaigns()
    }
    fn log_campaign_event(&self, id: &CampaignId, seq: u64, event: &[u8]) -> anyhow::Result<()> {
        self.write()?;
        self.inner.log_campaign_event(id, seq, event)
    }
    fn campaign_events(&self, id: &CampaignId) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
        self.inner.campaign_events(id)
    }
    fn drop_campaign_events(&self, id: &CampaignId, through: u64) -> anyhow::Result<()> {
        self.write()?;
        self.inner.drop_campaign_events(id, through)
    }
}

/// The registry, opened again after a restart in this process: sled's background flusher of the
/// instance just dropped may hold the database's file lock a moment longer (a real restart is a
/// new process, whose lock the kernel released with the old one).
fn reopen_registry(path: &Path) -> SledRegistry {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledRegistry::open(path) {
            Ok(registry) => return registry,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("registry still locked, retrying: {error:#}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("{error:#}"),
        }
    }
}

fn open(dir: &Path, writes: &Arc<AtomicUsize>, cut_at: Option<usize>) -> Director {
    let origin = origin_at(dir);
    let registry = Cutting {
        inner: reopen_registry(&origin.dir.join("registry")),
        writes: Arc::clone(writes),
        cut_at,
    };
    let mut director = Director::with_registry(origin, Box::new(registry)).unwrap();
    director.set_snapshot_min_events(3);
    // Three vehicles of a batch signed at a time, whatever the machine's CPUs: every test
    // here runs the signing threads, batches of four and eight split unevenly between them.
    director.set_signers(3);
    director
}

/// Runs the report phase with a power cut at write `cut_at` (none: no cut). Returns the campaign
/// as it ends, the registry writes made, and whether a cut happened.
fn report_phase(dir: &Path, cut_at: Option<usize>) -> (CampaignRecord, usize, bool) {
    let writes = Arc::new(AtomicUsize::new(0));
    let mut director = open(dir, &writes, cut_at);
    let mut cut = false;
    let mut now = START + 60;
    let mut acknowledged = [false; VEHICLES];
    let mut in_flight: Option<usize> = None;
    'run: loop {
        // The targets a decision made due are signed before the vehicles look.
        if work(&mut director, now).is_err() {
            assert!(cut_at.is_some() && !cut);
            cut = true;
            drop(director);
            director = open(dir, &writes, None);
            continue;
        }
        let mut due: Vec<(usize, u64)> = {
            let record = &director.campaigns()[ID];
            (0..VEHICLES)
                .filter(|&i| !acknowledged[i])
                .filter_map(|i| Some((i, *record.assigned.get(&vin(i))?)))
                .collect()
        };
        // Vehicles report wave by wave, as in the run without a cut (where a wave's list is
        // done before the next wave's is read); the vehicle whose report the cut interrupted
        // sends it again first.
        let plan = director.campaigns()[ID]
            .campaign
            .as_ref()
            .unwrap()
            .plan()
            .clone();
        due.sort_by_key(|&(i, _)| (Some(i) != in_flight, plan.wave_of(vin(i).as_str()), i));
        if due.is_empty() {
            match director.tick(now) {
                Ok(decisions) if decisions.is_empty() => break,
                Ok(_) => continue,
                Err(_) => {
                    cut = true;
                    drop(director);
                    director = open(dir, &writes, None);
                    continue;
                }
            }
        }
        for (i, version) in due {
            let bytes = vehicle_manifest(i, version, now);
            match director.accept_manifest(&vin(i), &bytes, now) {
                Ok(_) => {
                    acknowledged[i] = true;
                    now += 1;
                }
                Err(error) => {
                    assert!(cut_at.is_some() && !cut, "{error}");
                    // The service died; it restarts on what was stored, and the vehicle sends
                    // the same manifest again (it never heard an answer).
                    cut = true;
                    in_flight = Some(i);
                    drop(director);
                    director = open(dir, &writes, None);
                    continue 'run;
                }
            }
        }
    }
    let record = director.campaigns()[ID].clone();
    drop(director);
    // A last restart reads back the same campaign.
    let reopened = open(dir, &Arc::new(AtomicUsize::new(0)), None);
    let again = &reopened.campaigns()[ID];
    assert_eq!(again.campaign, record.campaign);
    assert_eq!(again.bytes, record.bytes);
    assert_eq!(again.decisions, record.decisions);
    assert_eq!(again.logged, record.logged);
    // Every vehicle's last report is stored.
    for vehicle in reopened.registry().vehicles().unwrap() {
        assert!(vehicle.last_report.is_some(), "{}", vehicle.vin);
    }
    (record, writes.load(Ordering::SeqCst), cut)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_power_cut_at_any_registry_write_of_the_report_phase_loses_no_report() {
    let work = tempfile::tempdir().unwrap();
    let template = work.path().join("template");
    set_up(&template);

    let reference_dir = work.path().join("reference");
    copy_dir(&template, &reference_dir);
    let (reference, writes, _) = report_phase(&reference_dir, None);
    let campaign = reference.campaign.as_ref().unwrap();
    assert!(
        matches!(campaign.state(), origin::campaign::State::Completed),
        "{:?}",
        campaign.state()
    );
    assert_eq!(reference.decisions.len(), 3, "{:?}", reference.decisions);
    // Reports went to the log, each batch of background work (two entries: begun, done), and
    // snapshots trimmed it (more than a write or two per report would mean whole records per
    // report again).
    let plan = reference.campaign.as_ref().unwrap().plan().clone();
    let batches: usize = (0..plan.waves.len())
        .map(|wave| {
            let members = (0..VEHICLES)
                .filter(|&i| plan.wave_of(vin(i).as_str()) == wave)
                .count();
            members.div_ceil(FOUR.vehicles)
        })
        .sum();
    assert_eq!(reference.logged, (VEHICLES + 2 * batches) as u64);
    // A batch: its two entries, and its share of the snapshots the entries bring about.
    assert!(
        writes < VEHICLES * 3 + 3 * batches,
        "{writes} registry writes for {VEHICLES} reports and {batches} batches"
    );
    // Every vehicle's targets were signed once (after its registration's).
    for i in 0..VEHICLES {
        assert_eq!(version(&reference_dir, i), REGISTERED + 1, "{}", vin(i));
    }

    for cut_at in 0..writes {
        let dir = work.path().join(format!("cut-{cut_at}"));
        copy_dir(&template, &dir);
        let (record, _, cut) = report_phase(&dir, Some(cut_at));
        assert!(cut, "no cut at write {cut_at}");
        assert_eq!(record.campaign, reference.campaign, "cut at write {cut_at}");
        assert_eq!(record.bytes, reference.bytes, "cut at write {cut_at}");
        assert_eq!(
            record.decisions, reference.decisions,
            "cut at write {cut_at}"
        );
        assert_eq!(record.assigned, reference.assigned, "cut at write {cut_at}");
        for i in 0..VEHICLES {
            assert_eq!(
                version(&dir, i),
                REGISTERED + 1,
                "cut at write {cut_at}: {} signed more than once, or never",
                vin(i)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{writes} registry writes in the report phase, a power cut at each: all ended as the run without one"
    );
}

/// An origin with `n` vehicles registered and campaign [`ID`] (everyone in one wave) approved,
/// its director on a registry that counts its writes (and cuts at none).
fn approved(dir: &Path, n: usize) -> (Director, Arc<AtomicUsize>) {
    origin_with_releases(dir);
    let writes = Arc::new(AtomicUsize::new(0));
    let mut director = open(dir, &writes, None);
    for i in 0..n {
        director
            .register(&vehicle_record(i, 3, 1), "ops", START)
            .unwrap();
    }
    let spec = gateway_campaign(ID, &[100.0], 0.5, 0.5, 1);
    director.create(spec, "alice", START).unwrap();
    approve_as_two(&mut director, ID, START);
    (director, writes)
}

fn id() -> CampaignId {
    ID.parse().unwrap()
}

#[test]
fn approval_returns_before_any_targets_are_signed_and_the_work_signs_each_vehicle_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut director, _) = approved(dir.path(), 40);
    // The approval said what is due and signed nothing.
    let job = director.targets_job(&id()).unwrap();
    assert_eq!((job.work, job.due, job.done), (TargetsWork::Sign, 40, 0));
    assert!((0..40).all(|i| version(dir.path(), i) == REGISTERED));
    assert!(director.campaigns()[ID].assigned.is_empty());
    // What the API and /metrics show.
    let status = director.status(START);
    assert_eq!(
        status.campaign(&id()).unwrap().targets_job.as_ref(),
        Some(&job)
    );
    let metrics = director
        .metrics(START, &std::collections::BTreeMap::new())
        .unwrap();
    let due =
        "depotmesh_campaign_targets_job_vehicles{campaign=\"log\",work=\"sign\",status=\"due\"} 40";
    assert!(metrics.contains(due), "{metrics}");

    // One batch: the vehicles it took are signed and recorded, the others still due.
    let eight = Batch {
        vehicles: 8,
        time: std::time::Duration::MAX,
    };
    let worked = director.work(START, &eight).unwrap();
    assert_eq!(
        worked,
        Worked {
            vehicles: 8,
            failed: 0,
            due: 32
        }
    );
    let signed: Vec<usize> = (0..40)
        .filter(|&i| version(dir.path(), i) == REGISTERED + 1)
        .collect();
    assert_eq!(signed.len(), 8);
    let assigned = &director.campaigns()[ID].assigned;
    assert_eq!(
        assigned.keys().cloned().collect::<Vec<_>>(),
        signed.iter().map(|&i| vin(i)).collect::<Vec<_>>()
    );
    assert!(assigned.values().all(|&v| v == REGISTERED + 1));

    // The rest, then nothing more to do.
    director.work_until_idle(START).unwrap();
    for i in 0..40 {
        assert_eq!(version(dir.path(), i), REGISTERED + 1, "{}", vin(i));
        assert_eq!(held(dir.path(), i), ["gw/2.0.bin"], "{}", vin(i));
        assert_eq!(
            director.campaigns()[ID].assigned.get(&vin(i)),
            Some(&(REGISTERED + 1))
        );
    }
    let job = director.targets_job(&id()).unwrap();
    assert_eq!((job.due, job.done, job.failed), (0, 40, 0));
    assert_eq!(director.work(START, &eight).unwrap(), Worked::default());
}

#[test]
fn a_director_restarted_in_the_middle_of_a_wave_finishes_it_signing_no_vehicle_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut director, writes) = approved(dir.path(), 40);
    let eight = Batch {
        vehicles: 8,
        time: std::time::Duration::MAX,
    };
    let signed = |dir: &Path| (0..40).filter(|&i| version(dir, i) > REGISTERED).count();

    // A stop between two batches: the batch done is kept, the rest is due again.
    director.work(START, &eight).unwrap();
    drop(director);
    let director = open(dir.path(), &writes, None);
    assert_eq!(director.campaigns()[ID].assigned.len(), 8);
    assert_eq!(director.targets_job(&id()).unwrap().due, 32);

    // A stop inside a batch, before it was logged as begun: nothing of it signed.
    drop(director);
    let mut director = open(dir.path(), &writes, Some(writes.load(Ordering::SeqCst)));
    assert!(director.work(START, &eight).is_err());
    assert_eq!(signed(dir.path()), 8);
    drop(director);

    // A stop inside a batch after its vehicles were signed, before it was logged as done:
    // the restart finds them signed (from their targets) and does not sign them again.
    let mut director = open(dir.path(), &writes, Some(writes.load(Ordering::SeqCst) + 1));
    assert_eq!(director.targets_job(&id()).unwrap().due, 32);
    let error = director.work(START, &eight).unwrap_err();
    assert!(format!("{error:#}").contains("power cut"), "{error:#}");
    assert_eq!(signed(dir.path()), 16);
    drop(director);
    let mut director = open(dir.path(), &writes, None);
    assert_eq!(director.campaigns()[ID].assigned.len(), 16);
    assert_eq!(director.targets_job(&id()).unwrap().due, 24);

    // It finishes the wave: every vehicle signed once, none lost.
    director.work_until_idle(START).unwrap();
    for i in 0..40 {
        assert_eq!(version(dir.path(), i), REGISTERED + 1, "{}", vin(i));
        assert_eq!(
            director.campaigns()[ID].assigned.get(&vin(i)),
            Some(&(REGISTERED + 1))
        );
    }
    assert_eq!(director.targets_job(&id()).unwrap().due, 0);
    // And a last restart has nothing left to do.
    drop(director);
    let director = open(dir.path(), &writes, None);
    assert_eq!(director.work_due(), 0);
}

#[test]
fn a_halt_while_signing_stops_signing_and_withdraws_what_was_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut director, _) = approved(dir.path(), 40);
    let eight = Batch {
        vehicles: 8,
        time: std::time::Duration::MAX,
    };
    director.work(START, &eight).unwrap();
    let first: Vec<usize> = (0..40)
        .filter(|&i| version(dir.path(), i) == REGISTERED + 1)
        .collect();
    assert_eq!(first.len(), 8);

    // Halted with 32 still to sign: none of them is signed; the 8 have it withdrawn.
    director
        .halt(&id(), "dave", "brakes pulsing", START + 10)
        .unwrap();
    let job = director.targets_job(&id()).unwrap();
    assert_eq!((job.work, job.due), (TargetsWork::Withdraw, 8));
    director.work_until_idle(START + 10).unwrap();
    for i in 0..40 {
        if first.contains(&i) {
            assert_eq!(version(dir.path(), i), REGISTERED + 2, "{}", vin(i));
            assert!(held(dir.path(), i).is_empty(), "{}", vin(i));
        } else {
            assert_eq!(version(dir.path(), i), REGISTERED, "{}", vin(i));
        }
    }
    let record = &director.campaigns()[ID];
    assert_eq!(record.withdrawn.len(), 8);
    assert_eq!(record.assigned.len(), 8);

    // Resumed: every vehicle is due its targets again. One of the first eight installed the
    // release before it was withdrawn and reports it while it waits: it leaves the queue
    // and is not signed again.
    approve_as_two(&mut director, ID, START + 20);
    let job = director.targets_job(&id()).unwrap();
    assert_eq!((job.work, job.due), (TargetsWork::Sign, 40));
    let early = first[0];
    let report = manifest(
        early,
        REGISTERED + 1,
        START + 30,
        "gw/2.0.bin",
        "committed",
        json!({"yard-wifi": 1, "cellular": 0}),
    );
    let accepted = director
        .accept_manifest(&vin(early), &report, START + 30)
        .unwrap();
    assert_eq!(
        accepted.outcomes.get(&id()),
        Some(&origin::campaign::Outcome::Committed)
    );
    assert_eq!(director.targets_job(&id()).unwrap().due, 39);
    director.work_until_idle(START + 30).unwrap();
    for i in 0..40 {
        let expected = REGISTERED
            + if i == early {
                2
            } else if first.contains(&i) {
                3
            } else {
                1
            };
        assert_eq!(version(dir.path(), i), expected, "{}", vin(i));
    }
}

#[test]
fn a_stop_between_a_vehicles_targets_and_their_timestamp_leaves_it_due_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writes) = approved(dir.path(), 8);
    let eight = Batch {
        vehicles: 8,
        time: std::time::Duration::MAX,
    };
    let origin = origin_at(dir.path());
    let metadata = |i: usize| {
        origin
            .dir
            .join(origin::director::vehicle_repository(&vin(i)))
            .join("metadata")
    };
    // Vehicle 2 was registered before the director signed a repository at registration: it
    // has none. Vehicle 5's timestamp as its registration signed it.
    std::fs::remove_dir_all(metadata(2).parent().unwrap()).unwrap();
    let registered = std::fs::read(metadata(5).join("timestamp.json")).unwrap();
    // The batch signs its eight vehicles, then the power goes before it is logged as done...
    let mut director = open(dir.path(), &writes, Some(writes.load(Ordering::SeqCst) + 1));
    assert!(director.work(START, &eight).is_err());
    drop(director);
    // ...and, for two of them, before their snapshot and timestamp were written: a first
    // signing (no timestamp at all), and one whose timestamp still pins the version before.
    std::fs::remove_file(metadata(2).join("1.snapshot.json")).unwrap();
    std::fs::remove_file(metadata(2).join("timestamp.json")).unwrap();
    std::fs::remove_file(metadata(5).join("2.snapshot.json")).unwrap();
    std::fs::write(metadata(5).join("timestamp.json"), registered).unwrap();
    assert_eq!(version(dir.path(), 2), 1);
    assert_eq!(
        origin::director::published_targets_version(&origin, &vin(2)),
        0
    );
    assert_eq!(version(dir.path(), 5), REGISTERED + 1);
    assert_eq!(
        origin::director::published_targets_version(&origin, &vin(5)),
        REGISTERED
    );

    // The restart counts the six published as signed and keeps the two due; their vehicles
    // then get targets they can see, on the director's roots, and the repositories verify.
    let mut director = open(dir.path(), &writes, None);
    assert_eq!(director.campaigns()[ID].assigned.len(), 6);
    assert_eq!(director.targets_job(&id()).unwrap().due, 2);
    director.work_until_idle(START).unwrap();
    for i in 0..8 {
        let published = origin::director::published_targets_version(&origin, &vin(i));
        let expected = match i {
            2 => 2,
            5 => REGISTERED + 2,
            _ => REGISTERED + 1,
        };
        assert_eq!(published, expected, "{}", vin(i));
        assert_eq!(held(dir.path(), i), ["gw/2.0.bin"], "{}", vin(i));
        assert_eq!(
            director.campaigns()[ID].assigned.get(&vin(i)),
            Some(&expected)
        );
    }
    assert!(
        origin::admin::verify(&origin).unwrap().is_empty(),
        "{:?}",
        origin::admin::verify(&origin)
    );
}

#[test]
fn a_batch_signed_on_many_threads_signs_each_of_its_vehicles_once_and_logs_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut director, _) = approved(dir.path(), 40);
    director.set_signers(8);
    // Vehicles start from different targets versions (their registration's, and none, one or two
    // assignments after it), so each vehicle's result must be paired with it, not with a
    // neighbour signed on another thread.
    let origin = origin_at(dir.path());
    let actor = origin::Actor::new("ops").unwrap();
    for i in 0..40 {
        for _ in 0..i % 3 {
            let ecu = origin::director::Assignment {
                serial: format!("GW-{}", vin(i)).parse().unwrap(),
                hardware_id: "gateway-v1".into(),
                target: "gw/1.0.bin".into(),
            };
            origin::director::assign(
                &origin,
                &actor,
                &vin(i),
                &[ecu],
                proto::custom::Priority::Fix,
            )
            .unwrap();
        }
    }
    let all = Batch {
        vehicles: 40,
        time: std::time::Duration::MAX,
    };
    let worked = director.work(START, &all).unwrap();
    assert_eq!(
        worked,
        Worked {
            vehicles: 40,
            failed: 0,
            due: 0
        }
    );
    let expected: Vec<(String, u64)> = (0..40)
        .map(|i| (vin(i).to_string(), REGISTERED + i as u64 % 3 + 1))
        .collect();
    for (i, (_, signed)) in expected.iter().enumerate() {
        assert_eq!(version(dir.path(), i), *signed, "{}", vin(i));
        assert_eq!(held(dir.path(), i), ["gw/2.0.bin"], "{}", vin(i));
        assert_eq!(
            director.campaigns()[ID].assigned.get(&vin(i)),
            Some(signed),
            "{}",
            vin(i)
        );
    }
    // The batch's entries: begun, then done naming every vehicle in VIN order with its own
    // version, whichever thread signed it and whenever it finished.
    let entries: Vec<serde_json::Value> = director
        .registry()
        .campaign_events(&id())
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| serde_json::from_slice(&bytes).unwrap())
        .collect();
    let done = entries.last().unwrap();
    assert_eq!(done["batch"], "done", "{done}");
    let signed: Vec<(String, u64)> = serde_json::from_value(done["signed"].clone()).unwrap();
    assert_eq!(signed, expected);
    assert_eq!(entries[entries.len() - 2]["batch"], "begun");
}
