//! `depot-cache prefetch`: a depot brings the origin's current release (two images, one of them
//! signed through a delegation) from its upstream over the mesh, checks the metadata as a
//! vehicle would, relays it, and then serves a vehicle with the upstream gone. A second run moves
//! nothing; a disk cap evicts an old unpinned blob and refuses when the release alone does not
//! fit.

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
const LATER: &str = "2026-01-01T01:00:00Z";

struct Served {
    child: Child,
    addr: Multiaddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn depot_cache(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_depot-cache"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn serve(data: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot-cache"))
        .args([
            "serve",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Served {
        child,
        addr: line.trim().parse().unwrap(),
    }
}

fn prefetch(
    data: &Path,
    upstream: &Served,
    root: &Path,
    cap: Option<u64>,
) -> (bool, String, String) {
    let addr = upstream.addr.to_string();
    let mut args = vec![
        "prefetch",
        "--data-dir",
        data.to_str().unwrap(),
        "--upstream",
        &addr,
        "--root",
        root.to_str().unwrap(),
        "--now",
        LATER,
    ];
    let cap = cap.map(|c| c.to_string());
    if let Some(cap) = &cap {
        args.extend(["--cap", cap]);
    }
    depot_cache(&args)
}

/// The upstream cache: the origin's repository imported and served.
fn upstream(work: &Path, image: &Path) -> Served {
    let dir = work.join("upstream");
    let (ok, _, err) = depot_cache(&[
        "import-repo",
        "--data-dir",
        dir.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    serve(&dir)
}

/// Origin with release 1 (`ecu/fw-1.bin`, top-level targets) and release 2 (`ecu/fw-2.bin`,
/// signed by a supplier's delegated role).
fn origin_repo(work: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let origin = Origin {
        dir: work.join("origin"),
        offline_keys: Some(work.join("usb")),
        now: Time::parse(SIGNED_AT).unwrap(),
    };
    origin::init(&origin).unwrap();
    let actor = origin::Actor::new("test").unwrap();
    let fw1: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let fw2: Vec<u8> = (0..900_000u32).map(|i| (i * 17 % 241) as u8).collect();
    std::fs::write(work.join("fw1.bin"), &fw1).unwrap();
    std::fs::write(work.join("fw2.bin"), &fw2).unwrap();
    let hw = ["brake-v2".to_string()];
    origin::Release::new(work.join("fw1.bin"), "ecu/fw-1.bin", &hw, 1)
        .sign(&origin, &actor)
        .unwrap();
    let supplier = origin::keys::generate();
    origin
        .delegate("brake-supplier", &["ecu/fw-*".into()], &supplier, false)
        .unwrap();
    origin::Release::new(work.join("fw2.bin"), "ecu/fw-2.bin", &hw, 2)
        .signed_by("brake-supplier")
        .sign(&origin, &actor)
        .unwrap();
    (origin.dir.join("image"), fw1, fw2)
}

#[test]
fn a_depot_prefetches_the_release_once_and_then_serves_the_yard_alone() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (image, fw1, fw2) = origin_repo(w);
    let upstream = upstream(w, &image);
    let root = image.join("metadata/1.root.json");
    let depot_dir = w.join("depot");

    let (ok, out, err) = prefetch(&depot_dir, &upstream, &root, None);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["targets"], 2, "{summary}");
    assert_eq!(summary["fetched"].as_array().unwrap().len(), 2, "{summary}");
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
    let (ok, out, err) = prefetch(&depot_dir, &upstream, &root, None);
    assert!(ok, "{err}");
    let again: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(again["fetched"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(again["upstream_bytes"], 0);

    // The upstream goes away; the depot serves a vehicle by itself: metadata it relayed, the
    // delegated role included, and the image.
    drop(upstream);
    let depot = serve(&depot_dir);
    let runtime = node::runtime::build_tokio(Some(1)).unwrap();
    let got = get_target(
        &runtime,
        &GetRequest {
            data_dir: w.join("vehicle"),
            peers: vec![depot.addr.clone()],
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            mdns: false,
            root: Some(root.clone()),
            repository: "image".into(),
            target: "ecu/fw-2.bin".into(),
            out: w.join("got.bin"),
            now: Some(Time::parse(LATER).unwrap()),
            metadata_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(w.join("got.bin")).unwrap(), fw2);
    assert_eq!(got["length"], 900_000);
}

#[test]
fn the_disk_cap_evicts_old_blobs_but_never_the_release() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (image, fw1, fw2) = origin_repo(w);
    let upstream = upstream(w, &image);
    let root = image.join("metadata/1.root.json");

    // A depot holding an old 600 KB blob, with room for the release and little more.
    let depot_dir = w.join("depot");
    let old: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(w.join("old.bin"), &old).unwrap();
    let (ok, out, err) = depot_cache(&[
        "import",
        "--data-dir",
        depot_dir.to_str().unwrap(),
        w.join("old.bin").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let old_id = out.split_whitespace().next().unwrap().to_string();
    let footprints = node::cache::footprint(fw1.len() as u64)
        + node::cache::footprint(fw2.len() as u64)
        + node::cache::footprint(old.len() as u64);
    let cap = footprints - 100_000;
    let (ok, out, err) = prefetch(&depot_dir, &upstream, &root, Some(cap));
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["evicted"], serde_json::json!([old_id]), "{summary}");
    let (_, listed, _) = depot_cache(&["list", "--data-dir", depot_dir.to_str().unwrap()]);
    assert!(!listed.contains(&old_id), "{listed}");

    // A cap the release alone exceeds: refused, naming the pinned bytes.
    let small = w.join("small");
    let (ok, _, err) = prefetch(&small, &upstream, &root, Some(1_000_000));
    assert!(!ok);
    assert!(
        err.contains("disk cap of 1000000 bytes") && err.contains("pinned"),
        "{err}"
    );
}
