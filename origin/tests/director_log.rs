//! The director stores a campaign's reports as a log between whole-record snapshots
//! (`service::Director`). Power cut at every registry write of a campaign's report phase — each
//! logged report, vehicle record, snapshot and log trim, and the writes of the decisions reports
//! cause — then the service restarts on what was stored and the vehicle whose report was in
//! flight sends it again: every run must end exactly as the run without a cut (same members,
//! outcomes, decisions, byte counts), and a last restart must read back the same campaign.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use origin::registry::{Registry, SledRegistry, VehicleRecord};
use origin::service::{CampaignRecord, Director};
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
    // Reports went to the log, and snapshots trimmed it (more than a write or two per report
    // would mean whole records per report again).
    assert_eq!(reference.logged, VEHICLES as u64);
    assert!(
        writes < VEHICLES * 3,
        "{writes} registry writes for {VEHICLES} reports"
    );

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
        assert_eq!(
            record.assigned.keys().collect::<Vec<_>>(),
            reference.assigned.keys().collect::<Vec<_>>(),
            "cut at write {cut_at}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{writes} registry writes in the report phase, a power cut at each: all ended as the run without one"
    );
}
