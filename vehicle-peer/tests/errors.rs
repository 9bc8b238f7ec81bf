//! `vehicle-peer fetch`, `get` and `--config`, the real binary, given things it cannot do: an unknown blob, a
//! peer that is not there, malformed arguments, no trusted root, a bad agent configuration. Each ends with a non-zero exit and a message that names
//! what was wrong, within a bounded time.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::serve::ServeCounters;

mod common;

fn fetch(args: &[&str]) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .args(["fetch", "--open-mesh"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn unknown_blob_unreachable_peer_and_bad_arguments_fail_clearly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A depot that holds one blob, but not the one asked for.
    let (depot_store, _) = node::store::open_data_dir(&dir.path().join("depot")).unwrap();
    depot_store.import(&b"some other image"[..]).unwrap();
    let (handle, depot_addr) =
        common::start_depot(&runtime, depot_store, Arc::new(ServeCounters::default()));
    let data_dir = dir.path().join("vehicle");
    let out = dir.path().join("out.bin");
    let unknown = proto::BlobId::of(b"an image nobody has").to_string();
    let depot = depot_addr.to_string();
    let common = [
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--stall-timeout",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];

    let mut args = common.to_vec();
    args.extend(["--peer", &depot, &unknown]);
    let (ok, stderr, took) = fetch(&args);
    assert!(!ok, "fetching an unknown blob succeeded");
    assert!(stderr.contains("no progress"), "{stderr}");
    assert!(
        stderr.contains("not here"),
        "the depot's answer is missing: {stderr}"
    );
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    assert!(!out.exists());

    // A peer id nobody has, on a port nothing listens on.
    let nobody = format!(
        "/ip4/127.0.0.1/udp/9/quic-v1/p2p/{}",
        libp2p::PeerId::random()
    );
    let mut args = common.to_vec();
    args.extend(["--peer", &nobody, &unknown]);
    let (ok, stderr, took) = fetch(&args);
    assert!(!ok);
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(took < Duration::from_secs(60), "gave up after {took:?}");

    let mut args = common.to_vec();
    args.extend(["--peer", &depot, "not-a-blob-id"]);
    let (ok, stderr, _) = fetch(&args);
    assert!(!ok);
    assert!(
        stderr.contains("not-a-blob-id") || stderr.contains("blob"),
        "{stderr}"
    );

    let mut args = common.to_vec();
    args.extend(["--peer", "/ip4/127.0.0.1/tcp/1", &unknown]);
    let (ok, stderr, _) = fetch(&args);
    assert!(!ok);
    assert!(stderr.contains("/ip4/127.0.0.1/tcp/1"), "{stderr}");

    // Without saying whom it serves and dials, a peer does not start (deny by default).
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .arg("fetch")
        .args(common)
        .args(["--peer", &depot, &unknown])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no mesh given"), "{stderr}");

    let mut args = common.to_vec();
    args.extend(["--threads", "0", "--peer", &depot, &unknown]);
    let (ok, stderr, _) = fetch(&args);
    assert!(!ok);
    assert!(stderr.contains("--threads"), "{stderr}");

    // `get` without a root to start from, with a file that is no root, with a bad time.
    let get = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
            .args(["get", "--open-mesh"])
            .args(&common[..5])
            .args(["--out", out.to_str().unwrap(), "--peer", &depot])
            .args(extra)
            .arg("ecu/fw.bin")
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = get(&[]);
    assert!(stderr.contains("--root"), "{stderr}");
    let not_root = dir.path().join("not-root.json");
    std::fs::write(&not_root, br#"{"signed": {"_type": "targets"}}"#).unwrap();
    let stderr = get(&["--root", not_root.to_str().unwrap()]);
    assert!(
        stderr.contains("not-root.json is not a usable root"),
        "{stderr}"
    );
    let stderr = get(&["--now", "yesterday"]);
    assert!(stderr.contains("yesterday"), "{stderr}");
    assert!(!out.exists());

    runtime.block_on(handle.shutdown());
}

#[test]
fn the_agent_refuses_a_bad_configuration_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vehicle.toml");
    let run = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
            .arg("--config")
            .arg(&config)
            .arg("--once")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let good = "vin = \"V1\"\ndata_dir = \"/d\"\nprimary_key_file = \"/k\"\necus = [\"/e.toml\"]\n\
                [link]\nclass = \"yard-wifi\"\n[boot]\nmode = \"simulated\"\n";
    let (ok, stderr) = run(&good.replace("yard-wifi", "wlan"));
    assert!(!ok);
    assert!(stderr.contains("link.class (line 6)"), "{stderr}");
    assert!(stderr.contains("vehicle.toml"), "{stderr}");
    // A good file naming an ECU configuration that is not there: the file is named.
    let (ok, stderr) = run(&good.replace("/d", &dir.path().join("data").display().to_string()));
    assert!(!ok);
    assert!(stderr.contains("/e.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Neither --config nor a command.
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--config FILE"));
}
