//! The systemd units in `config/` are what systemd accepts (`systemd-analyze verify`, with each
//! `/usr/bin/<binary>` pointed at an executable here), and the origin's units run commands the
//! `origin` binary accepts: the timestamp job re-signs a fresh origin's timestamps. (The packages
//! that install them are checked in `tests/tests/packages.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// The `ExecStart=` command of `unit`, split on spaces (the units quote nothing).
fn exec_start(unit: &str) -> Vec<String> {
    unit.lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn units_verify_and_run_what_the_binaries_accept() {
    let analyze = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "this test needs systemd-analyze (Debian's systemd package)"
    );
    let work = tempfile::tempdir().unwrap();
    let origin = env!("CARGO_BIN_EXE_origin");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        let is_unit = path
            .extension()
            .is_some_and(|ext| ext == "service" || ext == "timer");
        if !is_unit {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // `origin` is the binary built here; the others only need to be executables.
        let text = text
            .replace("ExecStart=/usr/bin/origin", &format!("ExecStart={origin}"))
            .replace("ExecStart=/usr/bin/depot-cache", "ExecStart=/bin/true")
            .replace("ExecStart=/usr/bin/vehicle-peer", "ExecStart=/bin/true");
        let copy = work.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        units.push(copy);
    }
    let names: Vec<String> = units
        .iter()
        .map(|unit| unit.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "origin-serve.service",
        "origin-timestamp.service",
        "origin-timestamp.timer",
        "depot-cache.service",
        "vehicle-peer.service",
    ] {
        assert!(names.iter().any(|name| name == expected), "{names:?}");
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "systemd-analyze verify: {stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    // The timestamp job's command, on a fresh origin in place of /var/lib/depotmesh/origin.
    let dir = work.path().join("origin");
    let init = Command::new(origin)
        .arg("--dir")
        .arg(&dir)
        .arg("--offline-keys")
        .arg(work.path().join("usb"))
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let unit = std::fs::read_to_string(config_dir().join("origin-timestamp.service")).unwrap();
    let command = exec_start(&unit);
    assert_eq!(command[0], "/usr/bin/origin");
    let args: Vec<String> = command[1..]
        .iter()
        .map(|arg| arg.replace("/var/lib/depotmesh/origin", dir.to_str().unwrap()))
        .collect();
    let before = std::fs::read(dir.join("image/metadata/timestamp.json")).unwrap();
    let run = Command::new(origin).args(&args).output().unwrap();
    assert!(run.status.success(), "{run:?}");
    let after = std::fs::read(dir.join("image/metadata/timestamp.json")).unwrap();
    assert_ne!(before, after, "the timestamp was not re-signed");

    // The service's command line parses (up to its subcommand's flags).
    let unit = std::fs::read_to_string(config_dir().join("origin-serve.service")).unwrap();
    let command = exec_start(&unit);
    let help = Command::new(origin)
        .args(&command[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
}
