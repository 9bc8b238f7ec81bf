//! A vehicle refreshing its TUF metadata from depot caches over the mesh and fetching a signed
//! target, end to end: `origin` signs (its library), depots are filled and served as
//! `depot-cache import-repo` and `serve` do it (their library calls, in this test's process), and
//! the vehicle is `vehicle_peer::mesh::get_target` on a real libp2p node. Release 2 is signed by
//! a supplier's delegated role. Then depots that lie the ways a depot can: an old repository
//! (rollback), a forged timestamp, an endless timestamp, a repository left to expire (freeze);
//! and no depot at all (a vehicle offline too long). Each must be refused, saying why, and
//! nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use depotmesh_tests::depot::{DepotDaemon, import_repo};
use depotmesh_tests::release::{
    BRAKE_HARDWARE, BRAKE_SUPPLIER, Release, SIGNED_AT, brake_firmware, delegate_to_brake_supplier,
    new_origin, release,
};
use depotmesh_tests::vehicle::MeshVehicle;
use libp2p::Multiaddr;
use proto::tuf::Time;

fn time(text: &str) -> Time {
    Time::parse(text).unwrap()
}

/// Imports `repo` into a new depot data directory under `work` and serves it.
fn depot(work: &Path, label: &str, repo: &Path) -> DepotDaemon {
    let data = work.join(label);
    let listed = import_repo(&data, "image", repo);
    assert!(
        listed
            .iter()
            .any(|name| name == "image/metadata/timestamp.json"),
        "{listed:?}"
    );
    DepotDaemon::serve(&data)
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
    mesh: MeshVehicle,
    out_dir: PathBuf,
    runs: std::cell::Cell<u32>,
}

impl Vehicle {
    fn get(
        &self,
        depots: &[&Multiaddr],
        target: &str,
        now: &str,
        timeout: u64,
    ) -> anyhow::Result<serde_json::Value> {
        self.runs.set(self.runs.get() + 1);
        let out = self
            .out_dir
            .join(format!("{}-{}", self.runs.get(), target.replace('/', "_")));
        let peers: Vec<Multiaddr> = depots.iter().map(|&addr| addr.clone()).collect();
        let result = self.mesh.get(
            &peers,
            target,
            &out,
            time(now),
            Duration::from_secs(timeout),
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
    let origin = new_origin(work.path(), time(SIGNED_AT));
    let image = origin.dir.join("image");
    let (fw1, fw2) = brake_firmware();
    release(
        &origin,
        &Release::new("ecu/fw-1.bin", &fw1, BRAKE_HARDWARE, 1),
    )
    .unwrap();
    // The repository as it stood at release 1: what a stale (or malicious) depot replays.
    copy_dir(&image, &work.path().join("old-image"));
    // Release 2 comes from the brake supplier, through a delegation of `ecu/fw-*` to its key:
    // the vehicle finds it by walking the delegation, fetching the supplier's role by name too.
    delegate_to_brake_supplier(&origin);
    let by_supplier = |name: &'static str| Release {
        role: BRAKE_SUPPLIER,
        ..Release::new(name, &fw2, BRAKE_HARDWARE, 2)
    };
    let outside = release(&origin, &by_supplier("ecu/other.bin")).unwrap_err();
    assert!(
        outside
            .to_string()
            .contains("may not sign for ecu/other.bin"),
        "{outside}"
    );
    release(&origin, &by_supplier("ecu/fw-2.bin")).unwrap();

    let vehicle = Vehicle {
        mesh: MeshVehicle::new(
            work.path().join("vehicle"),
            image.join("metadata/1.root.json"),
        ),
        out_dir: work.path().to_path_buf(),
        runs: std::cell::Cell::new(0),
    };
    let honest = depot(work.path(), "depot", &image);
    let hour_later = "2026-01-01T01:00:00Z";

    // The whole path: metadata by name from the depot, the target by its signed BLAKE3.
    let summary = vehicle
        .get(&[&honest.addr], "ecu/fw-2.bin", hour_later, 10)
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("1-ecu_fw-2.bin")).unwrap(),
        fw2
    );
    assert_eq!(summary["length"], 900_000);
    assert_eq!(summary["metadata_versions"]["targets"], 3);
    assert!(
        vehicle
            .mesh
            .data_dir
            .join("tuf/image/brake-supplier.json")
            .exists()
    );
    let trusted = vehicle.mesh.data_dir.join("tuf/image");
    for role in ["root", "timestamp", "snapshot", "targets"] {
        assert!(trusted.join(format!("{role}.json")).exists(), "{role}");
    }

    // Rollback: a depot that serves the repository as it was at release 1.
    let stale = depot(work.path(), "stale", &work.path().join("old-image"));
    let error = refused(vehicle.get(&[&stale.addr], "ecu/fw-1.bin", hour_later, 10));
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
    let error = refused(vehicle.get(&[&forged.addr], "ecu/fw-2.bin", hour_later, 10));
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
    let error = refused(vehicle.get(&[&endless.addr], "ecu/fw-2.bin", hour_later, 10));
    assert!(error.contains("bytes allowed"), "{error}");

    // Freeze: the honest depot's timestamp (one day) has expired; it offers nothing newer.
    let days_later = "2026-01-04T00:00:00Z";
    let error = refused(vehicle.get(&[&honest.addr], "ecu/fw-2.bin", days_later, 10));
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
    let error = refused(vehicle.get(&[&addr], "ecu/fw-2.bin", days_later, 2));
    assert!(error.contains("offline too long"), "{error}");
    assert!(error.contains("expired at 2026-01-02T00:00:00Z"), "{error}");
}
