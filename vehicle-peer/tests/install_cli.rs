//! `vehicle-peer install` and `vehicle-peer boot` by hand on a file-backed ECU: the real binary,
//! real director targets, a real delta, a sled journal; a commit, a rollback, and bad
//! configurations refused by key and line.

// Test code: a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod sim_ecu;

use std::path::Path;
use std::process::Command;

use delta::WriteAt;
use ed25519_dalek::SigningKey;
use proto::tuf::{Time, build};
use serde_json::{Map, Value, json};
use sim_ecu::{make_delta, noise};
use vehicle_peer::bank::FileBank;

const NOW: &str = "2026-06-01T00:00:00Z";

fn vehicle_peer(args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (output.status.success(), value, stderr)
}

/// A simulated ECU in `dir`: banks of 256 KiB (A holding `old`), a zeroed 2 × 1 KiB
/// environment, a key, and its configuration with `health` as the health command.
fn setup(dir: &Path, old: &[u8], health: &str, director: &SigningKey) -> std::path::PathBuf {
    let mut a = FileBank::create(&dir.join("bank-a.img"), 256 << 10).unwrap();
    a.write_all_at(0, old).unwrap();
    a.sync().unwrap();
    FileBank::create(&dir.join("bank-b.img"), 256 << 10).unwrap();
    std::fs::write(dir.join("env.img"), vec![0u8; 2048]).unwrap();
    std::fs::write(dir.join("ecu.key"), hex::encode([5u8; 32])).unwrap();
    let config = format!(
        r#"serial = "BRK-1"
hardware_id = "brake-v2"
key_file = "{dir}/ecu.key"
journal = "{dir}/journal"
director_targets_key = "{key}"

[installed]
target = "ecu/brake-1.0.bin"
sha256 = "{sha}"
release_counter = 1

[banks]
kind = "file"
A = "{dir}/bank-a.img"
B = "{dir}/bank-b.img"

[boot_env]
path = "{dir}/env.img"
size = 1024
first = 0
second = 1024

[health]
command = ["sh", "-c", "{health}"]
timeout_secs = 10
"#,
        dir = dir.display(),
        key = hex::encode(director.verifying_key().as_bytes()),
        sha = build::TargetDigests::of(old).sha256,
    );
    let path = dir.join("ecu.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn director_targets(dir: &Path, image: &[u8], director: &SigningKey) -> std::path::PathBuf {
    let entry = build::target_file(
        image,
        json!({"ecu_identifiers": {"BRK-1": {"hardware_id": "brake-v2"}}, "release_counter": 2}),
    );
    let now = Time::parse(NOW).unwrap();
    let targets = Map::from_iter([("ecu/brake-2.0.bin".to_string(), entry)]);
    let signed = build::sign(
        &build::targets(1, Time::from_unix(now.unix() + 86_400), targets, &[]),
        &[director],
    )
    .unwrap();
    let path = dir.join("targets.json");
    std::fs::write(&path, signed).unwrap();
    path
}

struct Run {
    dir: tempfile::TempDir,
    config: String,
    targets: String,
    delta: String,
    new: Vec<u8>,
}

fn prepare(health: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let old = noise(120_000, 3);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(1_999) {
        new[i] ^= 0x33;
    }
    new.extend_from_slice(&noise(7_000, 4));
    let director = SigningKey::from_bytes(&[77; 32]);
    let config = setup(dir.path(), &old, health, &director);
    let targets = director_targets(dir.path(), &new, &director);
    std::fs::write(
        dir.path().join("patch.dm"),
        make_delta(dir.path(), &old, &new),
    )
    .unwrap();
    let delta = dir.path().join("patch.dm").display().to_string();
    Run {
        config: config.display().to_string(),
        targets: targets.display().to_string(),
        delta,
        new,
        dir,
    }
}

fn step(run: &Run, running: &str, with_image: bool) -> (bool, Value, String) {
    let mut args = vec![
        "install",
        "--ecu-config",
        &run.config,
        "--running",
        running,
        "--now",
        NOW,
        "--report-nonce",
        "n-1",
    ];
    if with_image {
        args.extend(["--director-targets", &run.targets, "--delta", &run.delta]);
    }
    vehicle_peer(&args)
}

/// The first step on an ECU running slot A: `targets` approve, `file` is the `--delta` or
/// `--image` (`flag`).
fn install_from_a(run: &Run, targets: &str, flag: &str, file: &str) -> (bool, Value, String) {
    vehicle_peer(&[
        "install",
        "--ecu-config",
        &run.config,
        "--running",
        "A",
        "--now",
        NOW,
        "--director-targets",
        targets,
        flag,
        file,
    ])
}

#[test]
fn an_install_by_hand_commits_and_reports_the_new_image() {
    let run = prepare("test \\\"$DEPOTMESH_SLOT\\\" = B");
    let (ok, out, err) = vehicle_peer(&["boot", "--ecu-config", &run.config, "--provision"]);
    assert!(ok, "{err}");
    assert_eq!(out["booted"], "A");
    let (ok, out, err) = step(&run, "A", true);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "trial", "{out}");
    assert_eq!(out["reboot_into"], "B");
    assert_eq!(
        out["report"]["signed"]["installed_image"],
        "ecu/brake-1.0.bin"
    );
    let (ok, out, _) = vehicle_peer(&["boot", "--ecu-config", &run.config]);
    assert!(ok);
    assert_eq!(out["booted"], "B");
    let (ok, out, err) = step(&run, "B", false);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "committed", "{out}");
    assert_eq!(
        out["report"]["signed"]["installed_image"],
        "ecu/brake-2.0.bin"
    );
    assert_eq!(out["report"]["signed"]["release_counter"], 2);
    let b = std::fs::read(run.dir.path().join("bank-b.img")).unwrap();
    assert_eq!(b[..run.new.len()], run.new[..]);
    let (_, out, _) = vehicle_peer(&["boot", "--ecu-config", &run.config]);
    assert_eq!(out["booted"], "B");
    // Without new targets: nothing to do. With the same targets again: the ECU already runs
    // that image, and nothing is written.
    let (ok, out, _) = step(&run, "B", false);
    assert!(ok);
    assert_eq!(out["stage"], "committed");
    let (ok, out, err) = step(&run, "B", true);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "up_to_date", "{out}");
    assert_eq!(out["image"], "ecu/brake-2.0.bin");
}

#[test]
fn a_full_image_installs_by_hand_too() {
    let run = prepare("true");
    std::fs::write(run.dir.path().join("new.img"), &run.new).unwrap();
    let image = run.dir.path().join("new.img").display().to_string();
    vehicle_peer(&["boot", "--ecu-config", &run.config, "--provision"]);
    let (ok, out, err) = install_from_a(&run, &run.targets, "--image", &image);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "trial", "{out}");
    vehicle_peer(&["boot", "--ecu-config", &run.config]);
    let (ok, out, err) = step(&run, "B", false);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "committed", "{out}");
    // An image of another length than approved is refused before writing.
    let run = prepare("true");
    std::fs::write(run.dir.path().join("short.img"), &run.new[1..]).unwrap();
    let short = run.dir.path().join("short.img").display().to_string();
    let (ok, _, err) = install_from_a(&run, &run.targets, "--image", &short);
    assert!(!ok);
    assert!(err.contains("the approval says"), "{err}");
}

#[test]
fn a_failing_health_command_rolls_back() {
    let run = prepare("echo no CAN traffic >&2; exit 4");
    vehicle_peer(&["boot", "--ecu-config", &run.config, "--provision"]);
    let (ok, out, err) = step(&run, "A", true);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "trial");
    let (_, out, _) = vehicle_peer(&["boot", "--ecu-config", &run.config]);
    assert_eq!(out["booted"], "B");
    let (ok, out, err) = step(&run, "B", false);
    assert!(ok, "{err}");
    assert_eq!(out["stage"], "rolled_back", "{out}");
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("exited with exit status: 4"),
        "{out}"
    );
    assert_eq!(
        out["report"]["signed"]["installed_image"],
        "ecu/brake-1.0.bin"
    );
    let (_, out, _) = vehicle_peer(&["boot", "--ecu-config", &run.config]);
    assert_eq!(out["booted"], "A");
}

#[test]
fn bad_configurations_and_arguments_are_refused_by_name() {
    let run = prepare("true");
    let config = std::fs::read_to_string(&run.config).unwrap();
    let bad = |name: &str, text: String| {
        let path = run.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, _, err) = vehicle_peer(&[
            "install",
            "--ecu-config",
            path.to_str().unwrap(),
            "--running",
            "A",
        ]);
        assert!(!ok);
        err
    };
    let err = bad(
        "unknown.toml",
        config.replace("[banks]", "[banks]\nspeed = 3"),
    );
    assert!(
        err.contains("unknown field `speed`") && err.contains("line"),
        "{err}"
    );
    let err = bad(
        "kind.toml",
        config.replace("kind = \"file\"", "kind = \"nand\""),
    );
    assert!(err.contains("banks.kind = \"nand\""), "{err}");
    // A single-bank ECU has one device and a spare area, not two banks.
    let err = bad(
        "remap-two.toml",
        config.replace("kind = \"file\"", "kind = \"remap\"\nspare_bytes = 65536"),
    );
    assert!(err.contains("not banks.A and banks.B"), "{err}");
    let remap = |extra: &str| {
        let start = config.find("[banks]").unwrap();
        let end = config.find("[boot_env]").unwrap();
        format!(
            "{}[banks]\nkind = \"remap\"\n{extra}\n{}",
            &config[..start],
            &config[end..]
        )
    };
    let err = bad("remap-device.toml", remap("spare_bytes = 65536"));
    assert!(err.contains("banks.device is required"), "{err}");
    let err = bad("remap-spare.toml", remap("device = \"/nonexistent\""));
    assert!(err.contains("banks.spare_bytes is required"), "{err}");
    let err = bad(
        "remap-block.toml",
        remap("device = \"/nonexistent\"\nspare_bytes = 65536\nblock_size = 3000"),
    );
    assert!(
        err.contains("block size 3000 must be a power of two"),
        "{err}"
    );
    let err = bad(
        "remap-unformatted.toml",
        remap(&format!(
            "device = \"{}\"\nspare_bytes = 65536",
            run.dir.path().join("bank-b.img").display()
        )),
    );
    assert!(
        err.contains("neither map copy checks") && err.contains("boot --provision"),
        "{err}"
    );
    // An ECU RAUC installs has no banks or environment of its own, and this command does
    // not drive it (the agent does).
    let rauc = |banks: &str, env: bool| {
        let start = config.find("[banks]").unwrap();
        let env_at = config.find("[boot_env]").unwrap();
        let health = config.find("[health]").unwrap();
        format!(
            "{}[banks]\n{banks}\n{}{}",
            &config[..start],
            if env { &config[env_at..health] } else { "" },
            &config[health..]
        )
    };
    let err = bad("rauc-env.toml", rauc("kind = \"rauc\"", true));
    assert!(err.contains("kind = \"rauc\" has no [boot_env]"), "{err}");
    let err = bad(
        "rauc-banks.toml",
        rauc("kind = \"rauc\"\nA = \"/a\"", false),
    );
    assert!(err.contains("only banks.class, banks.rauc_conf"), "{err}");
    let err = bad(
        "rauc-class.toml",
        rauc("kind = \"rauc\"\nclass = \"root fs\"", false),
    );
    assert!(err.contains("not a RAUC slot class"), "{err}");
    let err = bad(
        "file-class.toml",
        config.replace("kind = \"file\"", "kind = \"file\"\nclass = \"rootfs\""),
    );
    assert!(err.contains("are for kind = \"rauc\""), "{err}");
    let err = bad(
        "file-no-env.toml",
        rauc("kind = \"file\"\nA = \"/a\"\nB = \"/b\"", false),
    );
    assert!(
        err.contains("[boot_env] is required with kind = \"file\""),
        "{err}"
    );
    let err = bad("rauc.toml", rauc("kind = \"rauc\"", false));
    assert!(err.contains("installed by RAUC"), "{err}");
    let err = bad("missing.toml", config.replace("serial = \"BRK-1\"\n", ""));
    assert!(err.contains("missing field `serial`"), "{err}");
    let err = bad(
        "overlap.toml",
        config.replace("second = 1024", "second = 512"),
    );
    assert!(err.contains("overlap"), "{err}");
    let err = bad("key.toml", config.replace("ecu.key", "nokey"));
    assert!(err.contains("reading key_file"), "{err}");

    // Targets signed by another key never start an install.
    let other = SigningKey::from_bytes(&[78; 32]);
    let targets = director_targets(run.dir.path(), &run.new, &other);
    vehicle_peer(&["boot", "--ecu-config", &run.config, "--provision"]);
    let (ok, _, err) = install_from_a(&run, targets.to_str().unwrap(), "--delta", &run.delta);
    assert!(!ok);
    assert!(err.contains("director"), "{err}");
    let b = std::fs::read(run.dir.path().join("bank-b.img")).unwrap();
    assert!(b.iter().all(|&x| x == 0), "bank B was written");
    // A slot name that is not one.
    let (ok, _, err) = vehicle_peer(&["install", "--ecu-config", &run.config, "--running", "A/"]);
    assert!(!ok);
    assert!(err.contains("not a slot name"), "{err}");
}
