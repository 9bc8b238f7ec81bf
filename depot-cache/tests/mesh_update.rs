//! A vehicle refreshing its TUF metadata from depot caches over the mesh and fetching a signed
//! target, end to end: `origin` signs (its library), `depot-cache import-repo` and `serve` run as
//! real processes, and the vehicle is `vehicle_peer::mesh::get_target` on a real libp2p node.
//! Release 2 is signed by a supplier's delegated role. Then depots that lie the ways a depot can: an old repository (rollback), a forged timestamp,
//! an endless timestamp, a repository left to expire (freeze); and no depot at all (a vehicle
//! offline too long). Each must be refused, saying why, and nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use libp2p::Multiaddr;
use origin::repo::Origin;
use proto::tuf::Time;
use vehicle_peer::mesh::{GetRequest, get_target};

const SIGNED_AT: &str = "2026-01-01T00:00:00Z";

fn time(text: &str) -> Time {
    Time::parse(text).unwrap()
}

/// A `depot-cache serve` process, killed when dropped.
struct Depot {
    child: Child,
    addr: Multiaddr,
}

impl Drop for Depot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn depot_cache(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_depot-cache"))
        .args(args)
        .output()
        .unwrap()
}

/// Imports `repo` into a new depot data directory under `work` and serves it.
fn depot(work: &Path, label: &str, repo: &Path) -> Depot {
    let data = work.join(label);
    let output = depot_cache(&[
        "import-repo",
        "--data-dir",
        data.to_str().unwrap(),
        repo.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains("  image/metadata/timestamp.json"),
        "{listed}"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot-cache"))
        .args([
            "serve",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Depot {
        child,
        addr: line.trim().parse().unwrap(),
    }
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

struct Vehicle {
    runtime: tokio::runtime::Runtime,
    data_dir: PathBuf,
    root: PathBuf,
    out_dir: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Vehicle {
    fn get(
        &self,
        depots: &[&Depot],
        target: &str,
        now: &str,
        timeout: u64,
    ) -> anyhow::Result<serde_json::Value> {
        self.runs.set(self.runs.get() + 1);
        let out = self
            .out_dir
            .join(format!("{}-{}", self.runs.get(), target.replace('/', "_")));
        let result = get_target(
            &self.runtime,
            &GetRequest {
                data_dir: self.data_dir.clone(),
                peers: depots.iter().map(|depot| depot.addr.clone()).collect(),
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                mdns: false,
                root: Some(self.root.clone()),
                repository: "image".into(),
                target: target.into(),
                out: out.clone(),
                now: Some(time(now)),
                metadata_timeout: Duration::from_secs(timeout),
                stall_timeout: Duration::from_secs(10),
            },
        );
        if result.is_err() {
            assert!(!out.exists(), "a refused target must not be written");
            assert!(!out.with_extension("part").exists());
        }
        result
    }
}

fn refused(result: anyhow::Result<serde_json::Value>) -> String {
    let message = format!("{:#}", result.expect_err("must be refused"));
    eprintln!("refused: {message}");
    message
}

#[test]
fn vehicle_updates_through_a_depot_that_can_relay_but_not_forge() {
    let work = tempfile::tempdir().unwrap();
    let origin = Origin {
        dir: work.path().join("origin"),
        offline_keys: Some(work.path().join("usb")),
        now: time(SIGNED_AT),
    };
    origin::init(&origin).unwrap();
    let actor = origin::Actor::new("test").unwrap();
    let image = origin.dir.join("image");
    let fw1: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let fw2: Vec<u8> = (0..900_000u32).map(|i| (i * 17 % 241) as u8).collect();
    std::fs::write(work.path().join("fw1.bin"), &fw1).unwrap();
    std::fs::write(work.path().join("fw2.bin"), &fw2).unwrap();
    let hw = ["brake-v2".to_string()];
    origin::Release::new(work.path().join("fw1.bin"), "ecu/fw-1.bin", &hw, 1)
        .sign(&origin, &actor)
        .unwrap();
    // The repository as it stood at release 1: what a stale (or malicious) depot replays.
    copy_dir(&image, &work.path().join("old-image"));
    // Release 2 comes from the brake supplier, through a delegation of `ecu/fw-*` to its key:
    // the vehicle finds it by walking the delegation, fetching the supplier's role by name too.
    let supplier = origin::keys::generate();
    origin
        .delegate("brake-supplier", &["ecu/fw-*".into()], &supplier, false)
        .unwrap();
    let outside = origin::Release::new(work.path().join("fw2.bin"), "ecu/other.bin", &hw, 2)
        .signed_by("brake-supplier")
        .sign(&origin, &actor)
        .unwrap_err();
    assert!(
        outside
            .to_string()
            .contains("may not sign for ecu/other.bin"),
        "{outside}"
    );
    origin::Release::new(work.path().join("fw2.bin"), "ecu/fw-2.bin", &hw, 2)
        .signed_by("brake-supplier")
        .sign(&origin, &actor)
        .unwrap();

    let vehicle = Vehicle {
        runtime: node::runtime::build_tokio(Some(1)).unwrap(),
        data_dir: work.path().join("vehicle"),
        root: image.join("metadata/1.root.json"),
        out_dir: work.path().to_path_buf(),
        runs: std::cell::Cell::new(0),
    };
    let honest = depot(work.path(), "depot", &image);
    let hour_later = "2026-01-01T01:00:00Z";

    // The whole path: metadata by name from the depot, the target by its signed BLAKE3.
    let summary = vehicle
        .get(&[&honest], "ecu/fw-2.bin", hour_later, 10)
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("1-ecu_fw-2.bin")).unwrap(),
        fw2
    );
    assert_eq!(summary["length"], 900_000);
    assert_eq!(summary["metadata_versions"]["targets"], 3);
    assert!(
        vehicle
            .data_dir
            .join("tuf/image/brake-supplier.json")
            .exists()
    );
    let trusted = vehicle.data_dir.join("tuf/image");
    for role in ["root", "timestamp", "snapshot", "targets"] {
        assert!(trusted.join(format!("{role}.json")).exists(), "{role}");
    }

    // Rollback: a depot that serves the repository as it was at release 1.
    let stale = depot(work.path(), "stale", &work.path().join("old-image"));
    let error = refused(vehicle.get(&[&stale], "ecu/fw-1.bin", hour_later, 10));
    assert!(error.contains("timestamp"), "{error}");
    assert!(error.contains("version"), "{error}");

    // Forgery: a depot that raises the timestamp's version without the key.
    let forged_dir = work.path().join("forged-image");
    copy_dir(&image, &forged_dir);
    let path = forged_dir.join("metadata/timestamp.json");
    let mut timestamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let version = timestamp["signed"]["version"].as_u64().unwrap();
    timestamp["signed"]["version"] = (version + 1).into();
    std::fs::write(&path, serde_json::to_vec(&timestamp).unwrap()).unwrap();
    let forged = depot(work.path(), "forged", &forged_dir);
    let error = refused(vehicle.get(&[&forged], "ecu/fw-2.bin", hour_later, 10));
    assert!(error.contains("valid signature"), "{error}");

    // Endless data: a depot whose timestamp.json is 1 MiB.
    let endless_dir = work.path().join("endless-image");
    copy_dir(&image, &endless_dir);
    std::fs::write(
        endless_dir.join("metadata/timestamp.json"),
        vec![b' '; 1 << 20],
    )
    .unwrap();
    let endless = depot(work.path(), "endless", &endless_dir);
    let error = refused(vehicle.get(&[&endless], "ecu/fw-2.bin", hour_later, 10));
    assert!(error.contains("bytes allowed"), "{error}");

    // Freeze: the honest depot's timestamp (one day) has expired; it offers nothing newer.
    let days_later = "2026-01-04T00:00:00Z";
    let error = refused(vehicle.get(&[&honest], "ecu/fw-2.bin", days_later, 10));
    assert!(
        error.contains("the newest timestamp the peers offer expired at 2026-01-02T00:00:00Z"),
        "{error}"
    );

    // Offline too long: no depot answers at all, and what the vehicle trusts has expired.
    drop(honest);
    drop(stale);
    drop(forged);
    drop(endless);
    let gone = depot(work.path(), "gone", &image);
    let addr = gone.addr.clone();
    drop(gone);
    let error = refused(vehicle.get(
        &[&Depot {
            child: Command::new("true").spawn().unwrap(),
            addr,
        }],
        "ecu/fw-2.bin",
        days_later,
        2,
    ));
    assert!(error.contains("offline too long"), "{error}");
    assert!(error.contains("expired at 2026-01-02T00:00:00Z"), "{error}");
}
