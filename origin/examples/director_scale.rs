//! How the director service scales with the fleet: registers N simulated vehicles (own primary
//! and ECU keys), runs one campaign (canary 1 %, 10 %, then everyone, no soak; `--waves` for
//! others) and feeds it every vehicle's signed manifest through `Director::accept_manifest`, the
//! HTTP handler's own call. Prints the time to register; the approval's own latency and that of
//! each call that opened a wave (they only say what is due); the time from each opening until
//! every member's director targets are signed by the background work (`Director::work`, default
//! batches, as `origin serve`'s worker runs it) and the longest batch (the longest a report
//! waits for the director meanwhile); per accepted report (first, median, last thousand); and
//! the registry's size (on disk for sled; `pg_database_size` for PostgreSQL).
//!
//! The registry is the embedded sled database by default; `--postgres` starts a real temporary
//! PostgreSQL server as the tests do (`tests/common/postgres_server.rs`: Debian's `postgresql`,
//! `initdb` in a temporary directory, stopped when the example exits) and keeps it there;
//! `--registry postgres://…` uses a server the operator runs (the password from
//! `--registry-password-file`, `PGPASSWORD` or a passfile, as `origin serve` finds it; the
//! database is written to, so give an empty one). `--signers N` signs N vehicles of a batch at
//! a time (default: one per CPU).
//!
//! ```sh
//! cargo run --release -p origin --example director_scale -- --vehicles 20000 [--waves 1,10,100] \
//!     [--postgres | --registry postgres://USER@HOST/DB [--registry-password-file FILE]] [--signers N]
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use origin::jobs::Batch;
use origin::registry::{Location, PostgresTarget};
use origin::service::Director;
use serde_json::json;

#[path = "../tests/common/postgres_server.rs"]
mod postgres_server;
#[path = "../tests/common/sim_fleet.rs"]
mod sim_fleet;
use sim_fleet::{
    START, approve_as_two, gateway_campaign, manifest, origin_with_releases, vehicle_record, vin,
};

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = entry.metadata().unwrap();
            total += if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

/// Runs the background work until nothing is due; prints what it took, labelled `what`.
/// Returns the seconds it took.
fn sign_all(director: &mut Director, now: u64, what: &str) -> f64 {
    let started = Instant::now();
    let mut batches: Vec<f64> = Vec::new();
    let mut vehicles = 0;
    loop {
        let t = Instant::now();
        let worked = director.work(now, &Batch::default()).unwrap();
        if worked.vehicles > 0 {
            batches.push(t.elapsed().as_secs_f64());
        }
        vehicles += worked.vehicles;
        assert_eq!(worked.failed, 0);
        if worked.due == 0 {
            break;
        }
    }
    let took = started.elapsed().as_secs_f64();
    batches.sort_by(f64::total_cmp);
    println!(
        "  {what}: {vehicles} vehicles' targets signed in the background in {took:.2} s ({:.2} ms each), {} batches, median {:.0} ms, longest {:.0} ms",
        took * 1e3 / vehicles.max(1) as f64,
        batches.len(),
        batches.get(batches.len() / 2).copied().unwrap_or(0.0) * 1e3,
        batches.last().copied().unwrap_or(0.0) * 1e3,
    );
    took
}

/// Where the registry is kept.
enum Kept {
    /// sled, under the origin directory.
    Sled,
    /// A temporary PostgreSQL server started here.
    TemporaryPostgres,
    /// A PostgreSQL server the operator runs.
    Postgres(String),
}

fn main() {
    let mut vehicles = 20_000usize;
    let mut waves = vec![1.0, 10.0, 100.0];
    let mut kept = Kept::Sled;
    let mut password_file: Option<PathBuf> = None;
    let mut signers: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--postgres" => kept = Kept::TemporaryPostgres,
            "--registry" => {
                kept = Kept::Postgres(args.next().expect("--registry takes postgres://…"));
            }
            "--registry-password-file" => {
                password_file = Some(
                    args.next()
                        .expect("--registry-password-file takes a file")
                        .into(),
                );
            }
            "--signers" => {
                signers = Some(
                    args.next()
                        .and_then(|n| n.parse().ok())
                        .expect("--signers takes a count"),
                );
            }
            "--vehicles" => {
                vehicles = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--vehicles takes a count")
            }
            "--waves" => {
                waves = args
                    .next()
                    .map(|w| w.split(',').map(|p| p.parse().unwrap()).collect())
                    .expect("--waves takes percents, e.g. 1,10,100")
            }
            other => {
                panic!(
                    "unknown argument {other:?} (takes --vehicles N, --waves P1,P2,..., \
                     --postgres, --registry postgres://…, --registry-password-file FILE, --signers N)"
                )
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_with_releases(dir.path());
    let location = match &kept {
        Kept::Sled => {
            println!(
                "registry: sled in {}",
                origin.dir.join("registry").display()
            );
            Location::Embedded
        }
        Kept::TemporaryPostgres => {
            let started = Instant::now();
            let server = postgres_server::server();
            let database = server.database("director_scale");
            let mut target =
                PostgresTarget::parse(&server.url(&database, "sslmode=disable")).unwrap();
            target
                .resolve_password(Some(&server.password_file), &|_| None)
                .unwrap();
            println!(
                "registry: a temporary PostgreSQL, database {database} on 127.0.0.1:{} (started in {:.1} s)",
                server.port,
                started.elapsed().as_secs_f64()
            );
            Location::Postgres(Box::new(target))
        }
        Kept::Postgres(url) => {
            let mut target = PostgresTarget::parse(url).unwrap();
            target
                .resolve_password(password_file.as_deref(), &|name| std::env::var_os(name))
                .unwrap();
            println!("registry: {}", target.describe());
            Location::Postgres(Box::new(target))
        }
    };
    let mut director = Director::open_at(origin.clone(), &location).unwrap();
    if let Some(signers) = signers {
        director.set_signers(signers);
    }

    let started = Instant::now();
    for i in 0..vehicles {
        director
            .register(&vehicle_record(i, 20, 500), "ops", START)
            .unwrap();
        if (i + 1) % 50_000 == 0 && i + 1 < vehicles {
            eprintln!(
                "  {} registered ({:.0} s)",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let register = started.elapsed().as_secs_f64();
    println!(
        "register {vehicles} vehicles: {register:.1} s ({:.2} ms each)",
        register * 1e3 / vehicles as f64
    );

    let spec = gateway_campaign("scale", &waves, 0.9, 0.05, 5);
    director.create(spec, "alice", START).unwrap();
    let t = Instant::now();
    let approved = Instant::now();
    approve_as_two(&mut director, "scale", START);
    println!(
        "approve (opens wave 1; the request's own latency): {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let mut signing = vec![sign_all(&mut director, START, "wave 1")];
    let mut fleet_signed = approved.elapsed().as_secs_f64();

    let mut now = START + 60;
    let mut reported = vec![false; vehicles];
    let mut sent = 0u64;
    let mut times: Vec<f64> = Vec::with_capacity(vehicles);
    let mut wave_opens: Vec<f64> = Vec::new();
    let all = Instant::now();
    loop {
        let assigned: Vec<(usize, u64)> = {
            let record = &director.campaigns()["scale"];
            (0..vehicles)
                .filter(|&i| !reported[i])
                .filter_map(|i| Some((i, *record.assigned.get(&vin(i))?)))
                .collect()
        };
        if assigned.is_empty() {
            break;
        }
        for (i, version) in assigned {
            let bytes = manifest(
                i,
                version,
                now,
                "gw/2.0.bin",
                "committed",
                json!({"yard-wifi": 21_499, "cellular": 0}),
            );
            let t = Instant::now();
            let accepted = director.accept_manifest(&vin(i), &bytes, now).unwrap();
            let took = t.elapsed().as_secs_f64();
            if accepted.decisions.is_empty() {
                times.push(took);
            } else {
                // A report that opened the next wave (its members are signed below).
                wave_opens.push(took);
            }
            reported[i] = true;
            // Ten reports a second: a 50K campaign's reports arrive well inside the gates'
            // report timeout (6 h), as a fleet's do.
            sent += 1;
            if sent % 10 == 0 {
                now += 1;
            }
        }
        let t = Instant::now();
        let decisions = director.tick(now).unwrap();
        if !decisions.is_empty() {
            wave_opens.push(t.elapsed().as_secs_f64());
        }
        if director.work_due() > 0 {
            let wave = format!("wave {}", signing.len() + 1);
            signing.push(sign_all(&mut director, now, &wave));
            fleet_signed = approved.elapsed().as_secs_f64();
        }
    }
    let total = all.elapsed().as_secs_f64();
    let count = times.len();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mean = |slice: &[f64]| slice.iter().sum::<f64>() / slice.len().max(1) as f64 * 1e3;
    println!(
        "{count} reports: {total:.1} s with wave openings; per report first 1000 {:.2} ms, last 1000 {:.2} ms, median {:.2} ms, p99 {:.2} ms",
        mean(&times[..count.min(1000)]),
        mean(&times[count.saturating_sub(1000)..]),
        sorted.get(count / 2).copied().unwrap_or(0.0) * 1e3,
        sorted.get(count * 99 / 100).copied().unwrap_or(0.0) * 1e3,
    );
    println!(
        "wave openings (the report or tick that opened a wave: its own latency): {}",
        wave_opens
            .iter()
            .map(|s| format!("{:.1} ms", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "background signing, from each opening until its last member's targets were signed: {} (total {:.1} s)",
        signing
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
        signing.iter().sum::<f64>()
    );
    println!(
        "from approval until the last member's targets were signed: {fleet_signed:.1} s (the reports of the waves before the last in between, {:.1} s of signing)",
        signing.iter().sum::<f64>()
    );
    let state = director.campaigns()["scale"]
        .campaign
        .as_ref()
        .map(|c| format!("{:?}", c.state()));
    let (what, registry_bytes) = match kept {
        Kept::Sled => ("on disk", dir_bytes(&origin.dir.join("registry"))),
        Kept::TemporaryPostgres | Kept::Postgres(_) => (
            "database (pg_database_size)",
            director
                .registry()
                .stored_bytes()
                .unwrap()
                .expect("PostgreSQL tells its database's size"),
        ),
    };
    println!(
        "campaign state: {state:?}; registry {what} {:.1} MiB; origin dir {:.1} MiB",
        registry_bytes as f64 / 1048576.0,
        dir_bytes(&origin.dir) as f64 / 1048576.0
    );
    let t = Instant::now();
    drop(director);
    let reopened = Director::open_at(origin, &location).unwrap();
    println!(
        "reopen: {:.2} s ({} campaigns)",
        t.elapsed().as_secs_f64(),
        reopened.campaigns().len()
    );
}
