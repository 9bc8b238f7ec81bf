//! Director replicas on one PostgreSQL registry (issue 27): the leader, in a process of its own
//! (this test binary run again), counts a campaign's reports until it is killed with SIGKILL at
//! a moment of the test's choosing, possibly between two of a report's registry writes; a
//! standby (`Director::open_standby`, what `origin serve --standby` runs) has been waiting for
//! the registry's lock, takes over when the leader's session ends, and the vehicle whose report
//! was in flight sends it again. The campaign must end exactly as the same reports end it on one
//! director that never stopped: the same outcomes, the same decisions at the same times — none
//! made twice, none lost.
//!
//! Then the same on two hosts: the leader and the standby each with an origin directory of its
//! own (keys, TLS and `storage.toml` copied, as a second machine is set up), sharing only the
//! PostgreSQL registry and an S3-API bucket (moto) that holds the repositories and the audit
//! log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use origin::jobs::Batch;
use origin::registry::{Location, PostgresTarget};
use origin::service::{CampaignRecord, Director};
use serde_json::json;

#[path = "common/child.rs"]
mod child;
#[path = "common/postgres_server.rs"]
mod postgres_server;
#[path = "common/s3_server.rs"]
mod s3_server;
#[path = "common/sim_fleet.rs"]
mod sim_fleet;
use postgres_server::server;
use sim_fleet::{
    START, approve_as_two, gateway_campaign, manifest, origin_at, origin_with_releases,
    vehicle_record, vin,
};

const VEHICLES: usize = 24;
const ID: &str = "replicas";
/// Set (to the registry's URL) in the leader's process.
const LEADER: &str = "DEPOTMESH_REPLICA_LEADER";
/// The origin directory of the leader's process.
const LEADER_DIR: &str = "DEPOTMESH_REPLICA_DIR";
/// The password file of the leader's process.
const LEADER_PASSWORD: &str = "DEPOTMESH_REPLICA_PASSWORD";
/// Vehicles signed per batch of background work, always (reproducible runs).
const BATCH: Batch = Batch {
    vehicles: 3,
    time: std::time::Duration::MAX,
};
/// Set (to the S3 server's endpoint) in the process that runs the two-host test.
const S3: &str = "DEPOTMESH_REPLICA_S3";
/// Reports the leader counts before the test kills it.
const KILL_AFTER: usize = 7;

/// Two vehicles roll back; the gates let the campaign go on.
fn vehicle_manifest(i: usize, version: u64, now: u64) -> Vec<u8> {
    let (installed, outcome) = if i % 11 == 5 {
        ("gw/1.0.bin", "rolled_back")
    } else {
        ("gw/2.0.bin", "committed")
    };
    manifest(
        i,
        version,
        now,
        installed,
        outcome,
        json!({"yard-wifi": 1000 + i, "cellular": i % 3}),
    )
}

/// An origin with two releases, the fleet registered and the campaign approved, on `location`.
fn set_up(dir: &Path, location: &Location) {
    let origin = origin_with_releases(dir);
    let mut director = Director::open_at(origin, location).unwrap();
    for i in 0..VEHICLES {
        director
            .register(&vehicle_record(i, 3, 1), "ops", START)
            .unwrap();
    }
    let spec = gateway_campaign(ID, &[10.0, 50.0, 100.0], 0.5, 0.5, 1);
    director.create(spec, "alice", START).unwrap();
    approve_as_two(&mut director, ID, START);
}

/// Counts every vehicle's report, wave by wave, each at `START + 60 +` the reports stored before
/// it (so a director that takes over sends each the time the one before would have); ticks when
/// no vehicle is due, until nothing changes. `each` hears of every report stored. Returns the
/// campaign as it ends.
fn report_phase(director: &mut Director, each: &mut dyn FnMut(usize)) -> CampaignRecord {
    loop {
        let reported = {
            let campaign = director.campaigns()[ID].campaign.as_ref().unwrap();
            (0..VEHICLES)
                .filter(|&i| campaign.outcome_of(vin(i).as_str()).is_some())
                .count()
        };
        let now = START + 60 + reported as u64;
        // The targets due are signed first, in small batches (a kill may land inside one).
        while director.work(now, &BATCH).unwrap().due > 0 {}
        let record = &director.campaigns()[ID];
        let campaign = record.campaign.as_ref().unwrap();
        let plan = campaign.plan().clone();
        let mut due: Vec<(usize, u64)> = (0..VEHICLES)
            .filter(|&i| campaign.outcome_of(vin(i).as_str()).is_none())
            .filter_map(|i| Some((i, *record.assigned.get(&vin(i))?)))
            .collect();
        due.sort_by_key(|&(i, _)| (plan.wave_of(vin(i).as_str()), i));
        let Some(&(i, version)) = due.first() else {
            if director.tick(now).unwrap().is_empty() {
                return director.campaigns()[ID].clone();
            }
            continue;
        };
        director
            .accept_manifest(&vin(i), &vehicle_manifest(i, version, now), now)
            .unwrap();
        each(reported + 1);
    }
}

fn postgres(url: &str, password_file: &Path) -> Location {
    let mut target = PostgresTarget::parse(url).unwrap();
    target
        .resolve_password(Some(password_file), &|_| None)
        .unwrap();
    Location::Postgres(Box::new(target))
}

/// In the leader's process (the test binary run again by [`takeover`]): counts reports,
/// saying each, until it is killed. `false` in any other process.
fn leader_if_asked() -> bool {
    let Some(url) = std::env::var_os(LEADER) else {
        return false;
    };
    let dir = std::env::var_os(LEADER_DIR).unwrap();
    let password = std::env::var_os(LEADER_PASSWORD).unwrap();
    let location = postgres(url.to_str().unwrap(), Path::new(&password));
    let mut director = Director::open_at(origin_at(Path::new(&dir)), &location).unwrap();
    println!("leader: open");
    report_phase(&mut director, &mut |n| {
        println!("leader: report {n}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    });
    // Never reached when the test kills it in time; it would fail the run below.
    println!("leader: done");
    true
}

/// Sets up the campaign in `leader_dir` on a PostgreSQL registry, then `prepare_standby`;
/// runs the leader (test `name` run again) until its report [`KILL_AFTER`] and kills it while
/// a standby in `standby_dir` waits; the standby finishes the campaign, which must end as on
/// a director that never stopped.
fn takeover(
    name: &str,
    work: &Path,
    leader_dir: &Path,
    standby_dir: &Path,
    prepare_standby: impl FnOnce(),
) {
    // The reference: one director that never stops (its own embedded registry).
    let reference_dir = work.join("reference");
    set_up(&reference_dir, &Location::Embedded);
    let reference = report_phase(
        &mut Director::open(origin_at(&reference_dir)).unwrap(),
        &mut |_| {},
    );
    assert_eq!(reference.decisions.len(), 3, "{:?}", reference.decisions);

    // The replicas' registry.
    let pg = server();
    let url = pg.url(&pg.database(&name[..20]), "sslmode=disable");
    let location = postgres(&url, &pg.password_file);
    set_up(leader_dir, &location);
    prepare_standby();

    let mut leader = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(LEADER, &url)
        .env(LEADER_DIR, leader_dir)
        .env(LEADER_PASSWORD, &pg.password_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(leader.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        said.push(line.clone());
        if line == format!("leader: report {KILL_AFTER}") {
            break;
        }
    }
    assert!(
        // libtest's "test … ... " may begin the line.
        said.iter().any(|l| l.ends_with("leader: open")),
        "the leader did not start: {said:?}"
    );
    // The standby waits for the leader's lock in a thread of its own; the leader is killed
    // while it sleeps between reports or is in the middle of the next one.
    let standby = std::thread::spawn({
        let (dir, location) = (standby_dir.to_path_buf(), location.clone());
        move || Director::open_standby(origin_at(&dir), &location).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(3));
    leader.kill().unwrap();
    let status = leader.wait().unwrap();
    assert!(!status.success(), "the leader was not killed: {status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        !rest.iter().any(|l| l == "leader: done"),
        "the leader finished before it was killed"
    );

    let mut director = standby.join().unwrap();
    let record = report_phase(&mut director, &mut |_| {});
    assert_eq!(record.campaign, reference.campaign);
    assert_eq!(record.decisions, reference.decisions);
    assert_eq!(record.bytes, reference.bytes);
    assert_eq!(record.assigned, reference.assigned);
    // The audit log, shared by both replicas, holds each decision once, as the reference's does.
    let decisions = |dir: &Path| -> Vec<String> {
        origin::audit::entries_of(&origin_at(dir))
            .unwrap()
            .iter()
            .filter_map(|entry| entry["action"].as_str().map(str::to_owned))
            .filter(|action| action.starts_with("campaign "))
            .collect()
    };
    assert_eq!(decisions(standby_dir), decisions(&reference_dir));
    assert_eq!(decisions(leader_dir), decisions(&reference_dir));
    origin::audit::verify_origin(&origin_at(standby_dir), None).unwrap();
}

#[test]
fn a_standby_takes_over_a_campaign_from_a_killed_leader_with_no_decision_twice_or_lost() {
    if leader_if_asked() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("replicas");
    takeover(
        "a_standby_takes_over_a_campaign_from_a_killed_leader_with_no_decision_twice_or_lost",
        work.path(),
        &dir,
        &dir,
        || {},
    );
}

#[test]
fn replicas_on_two_hosts_share_only_postgres_and_object_storage() {
    const NAME: &str = "replicas_on_two_hosts_share_only_postgres_and_object_storage";
    if leader_if_asked() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // The credentials come from the environment, as under systemd: the test runs again with
    // them (the workspace forbids the unsafe set_var).
    let Some(endpoint) = std::env::var_os(S3) else {
        let server = s3_server::S3Server::start(&work.path().join("moto.log"));
        let mut env = vec![(S3, server.endpoint.as_str())];
        env.extend(s3_server::CREDENTIALS);
        child::rerun_with_env(NAME, &env);
        return;
    };
    let config = origin::storage::StorageConfig::from_flags(
        &format!("s3://{}/replicas", s3_server::BUCKET),
        &s3_server::options(&endpoint.to_string_lossy()),
    )
    .unwrap();
    let (host_a, host_b) = (work.path().join("host-a"), work.path().join("host-b"));
    for host in [&host_a, &host_b] {
        origin::storage::record(&host.join("origin"), &config).unwrap();
    }
    takeover(NAME, work.path(), &host_a, &host_b, || {
        // The second machine gets the online keys and the director's TLS, nothing else.
        for what in ["keys", "tls"] {
            let status = Command::new("cp")
                .arg("-a")
                .arg(host_a.join("origin").join(what))
                .arg(host_b.join("origin"))
                .status()
                .unwrap();
            assert!(status.success(), "copying {what}");
        }
    });
    // Neither host kept a repository or an audit log of its own.
    for host in [&host_a, &host_b] {
        for local in ["image", "director", "audit.log"] {
            assert!(
                !host.join("origin").join(local).exists(),
                "{local} on {}",
                host.display()
            );
        }
    }
}
