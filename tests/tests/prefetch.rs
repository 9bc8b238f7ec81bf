//! `depot-cache prefetch` (the library call the command makes, in this test's process): a depot
//! brings the origin's current release (two images, one of them signed through a delegation)
//! from its upstream over the mesh, checks the metadata as a vehicle would, relays it, and then
//! serves a vehicle with the upstream gone. A second run moves nothing; a disk cap evicts an old
//! unpinned blob and refuses when the release alone does not fit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use depot_cache::prefetch::PrefetchRequest;
use depotmesh_tests::depot::{DepotDaemon, import, import_repo, list};
use depotmesh_tests::release::brake_releases;
use depotmesh_tests::vehicle::MeshVehicle;
use proto::tuf::Time;

const LATER: &str = "2026-01-01T01:00:00Z";

/// One prefetch into the cache in `data` from `upstream`, as `depot-cache prefetch --data-dir
/// DATA --upstream ADDR --root ROOT --now LATER [--cap CAP]` runs it (on a runtime of its own,
/// gone when it returns, as the command's process is).
fn prefetch(
    data: &Path,
    upstream: &DepotDaemon,
    root: &Path,
    cap: Option<u64>,
) -> anyhow::Result<serde_json::Value> {
    let runtime = node::runtime::build_tokio(Some(1)).unwrap();
    depot_cache::prefetch::prefetch(
        &runtime,
        &PrefetchRequest {
            data_dir: data.to_path_buf(),
            upstream: vec![upstream.addr.clone()],
            repository: "image".into(),
            root: Some(root.to_path_buf()),
            cap,
            now: Some(Time::parse(LATER).unwrap()),
            metadata_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            rate_limit: None,
        },
        None,
    )
}

/// The brake releases under `work`, their image repository imported into an upstream cache
/// and served; returns the upstream, the repository's first root and both firmwares.
fn upstream_with_brake_releases(work: &Path) -> (DepotDaemon, PathBuf, Vec<u8>, Vec<u8>) {
    let (image, fw1, fw2) = brake_releases(work);
    let dir = work.join("upstream");
    import_repo(&dir, "image", &image);
    let root = image.join("metadata/1.root.json");
    (DepotDaemon::serve(&dir), root, fw1, fw2)
}

#[test]
fn a_depot_prefetches_the_release_once_and_then_serves_the_yard_alone() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (upstream, root, fw1, fw2) = upstream_with_brake_releases(w);
    let depot_dir = w.join("depot");

    let summary = prefetch(&depot_dir, &upstream, &root, None).unwrap();
    // Both images and each one compressed (the brake firmware is a repeating table: a few
    // hundred bytes compressed), for vehicles no delta applies to.
    assert_eq!(summary["targets"], 4, "{summary}");
    let fetched = summary["fetched"].as_array().unwrap();
    let compressed = |f: &&serde_json::Value| {
        f["target"]
            .as_str()
            .is_some_and(|t| t.ends_with(" (compressed)"))
    };
    assert_eq!(
        (fetched.len(), fetched.iter().filter(compressed).count()),
        (4, 2),
        "{summary}"
    );
    let release = (fw1.len() + fw2.len()) as u64;
    let upstream_bytes = summary["upstream_bytes"].as_u64().unwrap();
    // One copy of the release over the backhaul, plus the bao proofs.
    assert!(
        upstream_bytes >= release && upstream_bytes < release + release / 20,
        "{upstream_bytes} bytes for a {release}-byte release"
    );
    // timestamp, snapshot, targets and the delegated role (the root is the one it started from).
    assert_eq!(summary["metadata_relayed"], 4, "{summary}");

    // Again: nothing new, nothing crosses the backhaul.
    let again = prefetch(&depot_dir, &upstream, &root, None).unwrap();
    assert_eq!(again["fetched"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["upstream_bytes"], 0);

    // The upstream goes away; the depot serves a vehicle by itself: metadata it relayed, the
    // delegated role included, and the image.
    drop(upstream);
    let depot = DepotDaemon::serve(&depot_dir);
    let vehicle = MeshVehicle::new(w.join("vehicle"), root.clone());
    let got = vehicle
        .get(
            std::slice::from_ref(&depot.addr),
            "ecu/fw-2.bin",
            &w.join("got.bin"),
            Time::parse(LATER).unwrap(),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(std::fs::read(w.join("got.bin")).unwrap(), fw2);
    assert_eq!(got["length"], 900_000);
}

#[test]
fn the_disk_cap_evicts_old_blobs_but_never_the_release() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (upstream, root, fw1, fw2) = upstream_with_brake_releases(w);

    // A depot holding an old 600 KB blob, with room for the release and little more.
    let depot_dir = w.join("depot");
    let old: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(w.join("old.bin"), &old).unwrap();
    let old_id = import(&depot_dir, &w.join("old.bin")).to_string();
    let footprints = node::cache::footprint(fw1.len() as u64)
        + node::cache::footprint(fw2.len() as u64)
        + node::cache::footprint(old.len() as u64);
    let cap = footprints - 100_000;
    let summary = prefetch(&depot_dir, &upstream, &root, Some(cap)).unwrap();
    assert_eq!(summary["evicted"], serde_json::json!([old_id]), "{summary}");
    let listed: Vec<String> = list(&depot_dir).iter().map(ToString::to_string).collect();
    assert!(!listed.contains(&old_id), "{listed:?}");

    // A cap the release alone exceeds: refused, naming the pinned bytes.
    let small = w.join("small");
    let err = format!(
        "{:#}",
        prefetch(&small, &upstream, &root, Some(1_000_000)).unwrap_err()
    );
    assert!(
        err.contains("disk cap of 1000000 bytes") && err.contains("pinned"),
        "{err}"
    );
}
