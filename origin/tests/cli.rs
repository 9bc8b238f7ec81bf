//! The `origin` binary end to end: keys, init, release, rotation and verify, with a vehicle's
//! TUF client (`proto::tuf::Updater`) reading what it published, and `verify` naming each
//! problem of a damaged repository; `delta` printing its summary and refusing bad arguments. No
//! command may print a private key.

#![allow(clippy::unwrap_used)]

#[path = "common/dir_remote.rs"]
mod dir_remote;

use std::path::{Path, PathBuf};
use std::process::Command;

use proto::tuf::{BlockingUpdater, Limits, MemoryStore, Time};
use serde_json::Value;

use dir_remote::DirRemote;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

struct Fixture {
    _work: tempfile::TempDir,
    dir: PathBuf,
    offline: PathBuf,
    transcript: String,
}

const NOW: &str = "2026-01-01T00:00:00Z";

impl Fixture {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("origin");
        let offline = work.path().join("usb-stick");
        Self {
            _work: work,
            dir,
            offline,
            transcript: String::new(),
        }
    }

    fn origin(&mut self, args: &[&str]) -> Run {
        self.origin_at(Some(NOW), args)
    }

    /// Runs `origin` at `now` (none: the system clock).
    fn origin_at(&mut self, now: Option<&str>, args: &[&str]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_origin"));
        command
            .arg("--dir")
            .arg(&self.dir)
            .arg("--offline-keys")
            .arg(&self.offline);
        if let Some(now) = now {
            command.args(["--now", now]);
        }
        let output = command.args(args).output().unwrap();
        let run = Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.transcript.push_str(&run.stdout);
        self.transcript.push_str(&run.stderr);
        run
    }

    fn image(&self) -> PathBuf {
        self.dir.join("image")
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.parent().unwrap().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Every private key written so far, in hex.
    fn private_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for dir in [
            self.offline.clone(),
            self.dir.join("keys"),
            self.dir.parent().unwrap().to_path_buf(),
        ] {
            for entry in std::fs::read_dir(dir).into_iter().flatten() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
                if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(private) = value["keyval"]["private"].as_str() {
                        keys.push(private.to_string());
                    }
                }
            }
        }
        keys
    }
}

/// A vehicle that trusted `root` downloads `target` from the repository at `dir`.
fn vehicle_download(dir: &Path, root: &[u8], target: &str) -> Result<Vec<u8>, String> {
    let mut store = MemoryStore::default();
    store.0.insert("root".into(), root.to_vec());
    let now = Time::parse(NOW).unwrap();
    let mut updater =
        BlockingUpdater::new(DirRemote(dir.to_path_buf()), store, now, Limits::default())
            .map_err(|e| e.to_string())?;
    updater.refresh().map_err(|e| e.to_string())?;
    let info = updater
        .target_info(target)
        .map_err(|e| e.to_string())?
        .ok_or("not listed")?;
    updater
        .download_target(target, &info)
        .map_err(|e| e.to_string())
}

/// Uptane full verification of vehicle `vin` (one brake ECU, BRK-1, running release 1)
/// against the origin's image repository and that vehicle's director repository.
fn full_verification(
    f: &Fixture,
    image_root: &[u8],
    vin: &str,
) -> Result<Vec<proto::uptane::ApprovedImage>, proto::uptane::UptaneError> {
    let now = Time::parse(NOW).unwrap();
    let updater = |dir: PathBuf, root: &[u8]| {
        let mut store = MemoryStore::default();
        store.0.insert("root".into(), root.to_vec());
        BlockingUpdater::new(DirRemote(dir), store, now, Limits::default()).unwrap()
    };
    let director_root = std::fs::read(f.dir.join("director/metadata/1.root.json")).unwrap();
    let ecus = std::collections::BTreeMap::from([(
        "BRK-1".to_string(),
        proto::uptane::EcuState {
            hardware_id: "brake-v2".into(),
            installed_release_counter: 1,
        },
    )]);
    proto::uptane::verify_full(
        &mut updater(f.dir.join("director/vehicles").join(vin), &director_root),
        &mut updater(f.image(), image_root),
        &ecus,
    )
}

#[test]
fn release_rotate_and_verify_as_a_vehicle_sees_it() {
    let mut f = Fixture::new();
    // Offline keys may not live inside the origin directory.
    let inside = f.dir.join("keys-offline");
    let output = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&f.dir)
        .arg("--offline-keys")
        .arg(&inside)
        .arg("init")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("kept apart"));
    std::fs::remove_dir_all(&f.dir).unwrap();

    let run = f.origin(&["init"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        f.offline.join("image-root.key.json").exists()
            && f.offline.join("image-targets.key.json").exists()
    );
    assert!(f.dir.join("keys/image-timestamp.key.json").exists());
    assert!(
        !f.dir.join("keys/image-root.key.json").exists(),
        "an offline key on the origin"
    );
    let run = f.origin(&["verify"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let root_v1 = std::fs::read(f.image().join("metadata/1.root.json")).unwrap();

    let image: Vec<u8> = (0..300_000u32)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let file = f.write("brake.bin", &image);
    let run = f.origin(&[
        "release",
        file.to_str().unwrap(),
        "--name",
        "ecu/brake-1.2.0.bin",
        "--hardware-id",
        "brake-v2",
        "--release-counter",
        "5",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let blob = run.stdout.split_whitespace().next().unwrap().to_string();
    assert_eq!(blob, blake3::hash(&image).to_hex().as_str());
    assert_eq!(
        vehicle_download(&f.image(), &root_v1, "ecu/brake-1.2.0.bin").unwrap(),
        image
    );
    // The mesh store holds it, complete, under its BLAKE3.
    let (store, _) = node::store::open_data_dir(&f.dir.join("mesh")).unwrap();
    let held = store.list();
    assert!(
        held.iter()
            .any(|info| info.id.to_string() == blob && info.complete)
    );
    drop(store);
    // The same name with other bytes is refused.
    let other = f.write("other.bin", b"other bytes");
    let run = f.origin(&[
        "release",
        other.to_str().unwrap(),
        "--name",
        "ecu/brake-1.2.0.bin",
        "--hardware-id",
        "brake-v2",
        "--release-counter",
        "6",
    ]);
    assert!(
        !run.ok && run.stderr.contains("already released"),
        "{}",
        run.stderr
    );

    // A supplier's role: names under supplier/ are signed by its key, and only those.
    let supplier_key = f.dir.parent().unwrap().join("supplier.json");
    assert!(
        f.origin(&["keygen", "--out", supplier_key.to_str().unwrap()])
            .ok
    );
    let run = f.origin(&[
        "delegate",
        "--name",
        "brake-supplier",
        "--path",
        "supplier/*",
        "--key",
        supplier_key.to_str().unwrap(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let release_as = |f: &mut Fixture, name: &str| {
        f.origin(&[
            "release",
            file.to_str().unwrap(),
            "--name",
            name,
            "--role",
            "brake-supplier",
            "--hardware-id",
            "brake-v2",
            "--release-counter",
            "7",
        ])
    };
    let run = release_as(&mut f, "supplier/brake-2.0.0.bin");
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("image brake-supplier v2"),
        "{}",
        run.stdout
    );
    let run = release_as(&mut f, "ecu/brake-2.0.0.bin");
    assert!(!run.ok && run.stderr.contains("may not sign for ecu/brake-2.0.0.bin"));
    let run = f.origin(&["verify"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        vehicle_download(&f.image(), &root_v1, "supplier/brake-2.0.0.bin").unwrap(),
        image
    );
    let run = f.origin(&["keys"]);
    assert!(
        run.stdout.contains(r#""role":"brake-supplier""#),
        "{}",
        run.stdout
    );

    // The director tells vehicle VIN-1 to put the supplier's image on its brake ECU; the
    // vehicle's full verification finds both repositories agreeing.
    let run = f.origin(&[
        "assign",
        "--vin",
        "VIN-1",
        "--ecu",
        "BRK-1,brake-v2,supplier/brake-2.0.0.bin",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let run = f.origin(&[
        "assign",
        "--vin",
        "VIN-1",
        "--ecu",
        "BRK-1,gateway-v1,supplier/brake-2.0.0.bin",
    ]);
    assert!(
        !run.ok && run.stderr.contains("ECU BRK-1 is gateway-v1 hardware"),
        "{}",
        run.stderr
    );
    let run = f.origin(&["verify"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let approved = full_verification(&f, &root_v1, "VIN-1").unwrap();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].ecu_serial(), "BRK-1");
    assert_eq!(approved[0].release_counter(), 7);
    assert_eq!(approved[0].blake3().unwrap().to_string(), blob);

    // Rotate the image timestamp key, then the root key: a vehicle holding root v1 follows.
    for (role, seed) in [
        ("timestamp", "new-ts.json"),
        ("root", "new-root.json"),
        ("targets", "new-targets.json"),
    ] {
        let key = f.dir.parent().unwrap().join(seed);
        assert!(f.origin(&["keygen", "--out", key.to_str().unwrap()]).ok);
        let run = f.origin(&[
            "rotate",
            "--repository",
            "image",
            "--role",
            role,
            "--new-key",
            key.to_str().unwrap(),
        ]);
        assert!(run.ok, "{role}: {}", run.stderr);
        let run = f.origin(&["verify"]);
        assert!(
            run.ok,
            "after rotating {role}: {}{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            vehicle_download(&f.image(), &root_v1, "ecu/brake-1.2.0.bin").unwrap(),
            image,
            "{role}"
        );
    }
    // Rotating the director's keys re-signs every vehicle's director metadata: the vehicle,
    // holding the director's root v1, still approves its image.
    let director_root_v1 = std::fs::read(f.dir.join("director/metadata/1.root.json")).unwrap();
    for (role, seed) in [
        ("targets", "new-director-targets.json"),
        ("snapshot", "new-director-snapshot.json"),
        ("root", "new-director-root.json"),
    ] {
        let key = f.dir.parent().unwrap().join(seed);
        assert!(f.origin(&["keygen", "--out", key.to_str().unwrap()]).ok);
        let run = f.origin(&[
            "rotate",
            "--repository",
            "director",
            "--role",
            role,
            "--new-key",
            key.to_str().unwrap(),
        ]);
        assert!(run.ok, "director {role}: {}", run.stderr);
        assert!(f.origin(&["verify"]).ok, "after rotating director {role}");
        let approved = full_verification(&f, &root_v1, "VIN-1").unwrap();
        assert_eq!(approved.len(), 1, "director {role}");
    }
    assert_eq!(
        std::fs::read(f.dir.join("director/metadata/1.root.json")).unwrap(),
        director_root_v1
    );

    let run = f.origin(&["keys"]);
    assert!(
        run.ok && run.stdout.contains("\"offline\":true"),
        "{}",
        run.stdout
    );
    for private in f.private_keys() {
        assert!(
            !f.transcript.contains(&private),
            "a private key was printed"
        );
    }

    // Every delegation and key rotation is in the audit log, with who did it and the key.
    let entries = origin::audit::entries(&f.dir.join("audit.log")).unwrap();
    let of = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let delegations = of("delegate");
    assert_eq!(delegations.len(), 1, "{entries:#?}");
    assert_eq!(delegations[0]["detail"]["role"], "brake-supplier");
    assert_eq!(
        delegations[0]["detail"]["paths"],
        serde_json::json!(["supplier/*"])
    );
    let rotations = of("key rotate");
    assert_eq!(rotations.len(), 6, "{entries:#?}");
    let director_root = rotations.last().unwrap();
    assert_eq!(director_root["detail"]["repository"], "director");
    assert_eq!(director_root["detail"]["role"], "root");
    assert_eq!(director_root["detail"]["root_version"], 4);
    assert!(director_root["detail"]["key_id"].as_str().is_some());
    assert!(
        delegations
            .iter()
            .chain(&rotations)
            .all(|e| e["actor"] != "")
    );
    assert!(f.origin(&["audit", "verify"]).ok, "{}", f.transcript);
}

#[test]
fn verify_names_each_problem() {
    let mut f = Fixture::new();
    assert!(f.origin(&["init"]).ok);
    let file = f.write("fw.bin", b"firmware image bytes");
    assert!(
        f.origin(&[
            "release",
            file.to_str().unwrap(),
            "--name",
            "fw.bin",
            "--hardware-id",
            "gw-1",
            "--release-counter",
            "1"
        ])
        .ok
    );
    let image = f.image();
    let metadata = image.join("metadata");

    // A tampered image file.
    let sha256 = blake3_free_sha256(b"firmware image bytes");
    std::fs::write(image.join(format!("targets/{sha256}.fw.bin")), b"tampered").unwrap();
    // The director's snapshot is gone.
    std::fs::remove_file(f.dir.join("director/metadata/1.snapshot.json")).unwrap();
    let run = f.origin(&["verify"]);
    assert!(!run.ok);
    let out = &run.stdout;
    assert!(
        out.contains(&format!("{sha256}.fw.bin: fw.bin: 8 bytes, expected 20")),
        "{out}"
    );
    assert!(
        out.contains("director: ") && out.contains("1.snapshot.json: No such file"),
        "{out}"
    );

    // Targets metadata with a wrong type.
    let latest_targets = metadata.join("2.targets.json");
    let mut targets: Value =
        serde_json::from_slice(&std::fs::read(&latest_targets).unwrap()).unwrap();
    targets["signed"]["targets"]["fw.bin"]["length"] = Value::from("twenty");
    std::fs::write(&latest_targets, serde_json::to_vec(&targets).unwrap()).unwrap();
    let run = f.origin(&["verify"]);
    assert!(
        run.stdout
            .contains("image: 2.targets.json: field signed.targets.fw.bin.length"),
        "{}",
        run.stdout
    );

    // A day later the timestamps have expired: verify says so for both.
    let output = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&f.dir)
        .args(["--now", "2026-01-03T00:00:00Z", "verify"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.matches("timestamp.json: timestamp expired").count() == 2,
        "{out}"
    );

    // Malformed key files and a root with an unknown key type.
    let bad_key = f.write("bad-key.json", b"{\"keytype\": \"rsa\"}");
    let run = f.origin(&[
        "rotate",
        "--repository",
        "director",
        "--role",
        "timestamp",
        "--new-key",
        bad_key.to_str().unwrap(),
    ]);
    assert!(
        !run.ok && run.stderr.contains("bad-key.json") && run.stderr.contains("keytype"),
        "{}",
        run.stderr
    );
    let root_path = f.dir.join("director/metadata/1.root.json");
    let mut root: Value = serde_json::from_slice(&std::fs::read(&root_path).unwrap()).unwrap();
    let first = root["signed"]["keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    root["signed"]["keys"][&first]["keytype"] = Value::from("rsa");
    std::fs::write(&root_path, serde_json::to_vec(&root).unwrap()).unwrap();
    let run = f.origin(&["verify"]);
    assert!(
        run.stdout.contains("unsupported key type rsa"),
        "{}",
        run.stdout
    );
    // Bad arguments.
    let run = f.origin(&[
        "release",
        file.to_str().unwrap(),
        "--name",
        "../escape.bin",
        "--hardware-id",
        "x",
        "--release-counter",
        "1",
    ]);
    assert!(
        !run.ok && run.stderr.contains("relative path"),
        "{}",
        run.stderr
    );
}

/// Rebuilds an image from `delta`, a delta from nothing, as a vehicle does (every segment
/// checked against the image's hash tree, the whole hashed at the end).
fn apply_from_nothing(delta: &Path, out: &Path, expect: proto::BlobId) -> Vec<u8> {
    let delta_file = std::fs::File::open(delta).unwrap();
    let inputs = delta::ApplyInputs {
        source: &[][..],
        source_len: 0,
        delta: &delta_file,
        delta_len: delta_file.metadata().unwrap().len(),
        expect_target: Some(expect),
    };
    let mut target = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .unwrap();
    delta::DeltaSegments::new(&inputs)
        .unwrap()
        .apply(&inputs, &mut target, "image", None, |_, _| Ok(()))
        .unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn a_release_lists_its_image_compressed_when_that_saves_enough() {
    let mut f = Fixture::new();
    assert!(f.origin(&["init"]).ok);
    // Table-like firmware compresses several times; noise does not.
    let firmware: Vec<u8> = (0..600_000u32)
        .map(|i| ((i % 97) ^ (i / 4096)).to_le_bytes()[0])
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..300_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[3]
        })
        .collect();
    let release = |f: &mut Fixture, bytes: &[u8], name: &str, extra: &[&str]| {
        let file = f.write(&name.replace('/', "_"), bytes);
        let mut args = vec![
            "release",
            file.to_str().unwrap(),
            "--name",
            name,
            "--hardware-id",
            "gw-v1",
            "--release-counter",
            "1",
        ];
        args.extend_from_slice(extra);
        let run = f.origin(&args);
        assert!(run.ok, "{}", run.stderr);
        run.stdout
    };
    let targets = |f: &Fixture, version: u32| -> Value {
        let path = f.image().join(format!("metadata/{version}.targets.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };

    // Compressible: listed, signed with the image, stored beside the deltas, and it rebuilds
    // the image exactly.
    let stdout = release(&mut f, &firmware, "ecu/fw-1.bin", &[]);
    let entry = &targets(&f, 2)["signed"]["targets"]["ecu/fw-1.bin"];
    let compressed = &entry["custom"]["compressed"];
    let length = compressed["length"].as_u64().unwrap();
    assert!(length < firmware.len() as u64 / 4, "{compressed}");
    assert!(
        stdout.contains(&format!("compressed {length} bytes")),
        "{stdout}"
    );
    let blob: proto::BlobId = compressed["blake3"].as_str().unwrap().parse().unwrap();
    let stored = f.image().join("deltas").join(blob.to_string());
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), length);
    let image_blob = entry["custom"]["blake3"].as_str().unwrap().parse().unwrap();
    let rebuilt = apply_from_nothing(&stored, &f.dir.with_file_name("rebuilt"), image_blob);
    assert!(
        rebuilt == firmware,
        "the compressed image rebuilds another image"
    );

    // Noise compresses by less than a sixteenth: not listed, nothing stored.
    let stdout = release(&mut f, &noise, "ecu/noise-1.bin", &[]);
    let custom = &targets(&f, 3)["signed"]["targets"]["ecu/noise-1.bin"]["custom"];
    assert!(custom.get("compressed").is_none(), "{custom}");
    assert!(!stdout.contains("compressed"), "{stdout}");
    // --no-compressed: not even built.
    release(
        &mut f,
        &firmware[1..],
        "ecu/fw-1b.bin",
        &["--no-compressed"],
    );
    let custom = &targets(&f, 4)["signed"]["targets"]["ecu/fw-1b.bin"]["custom"];
    assert!(custom.get("compressed").is_none(), "{custom}");
    assert_eq!(
        std::fs::read_dir(f.image().join("deltas")).unwrap().count(),
        1
    );

    // The audit log records what was listed.
    let export = f.origin(&["audit", "export"]);
    assert!(export.ok, "{}", export.stderr);
    assert!(
        export.stdout.contains(&format!(
            "\"compressed\":{{\"blake3\":\"{blob}\",\"length\":{length}}}"
        )),
        "{}",
        export.stdout
    );
}

fn blake3_free_sha256(bytes: &[u8]) -> String {
    let value = proto::tuf::build::target_file(bytes, Value::Null);
    value["hashes"]["sha256"].as_str().unwrap().to_string()
}

#[test]
fn releases_and_assignments_land_in_a_verifiable_audit_log_and_tampering_is_named() {
    let mut f = Fixture::new();
    assert!(f.origin(&["init"]).ok);
    let v1 = f.write("fw-1.bin", &[1u8; 70_000]);
    let mut v2_bytes = vec![1u8; 70_000];
    v2_bytes[1000..1100].fill(7);
    let v2 = f.write("fw-2.bin", &v2_bytes);
    let release = |f: &mut Fixture, file: &Path, name: &str, counter: &str, extra: &[&str]| {
        let mut args = vec![
            "--actor",
            "alice@release-eng",
            "release",
            file.to_str().unwrap(),
            "--name",
            name,
            "--hardware-id",
            "brake-v2",
            "--release-counter",
            counter,
        ];
        args.extend_from_slice(extra);
        let run = f.origin(&args);
        assert!(run.ok, "{}", run.stderr);
    };
    release(&mut f, &v1, "ecu/brake-1.bin", "1", &[]);
    release(
        &mut f,
        &v2,
        "ecu/brake-2.bin",
        "2",
        &["--delta-from", "ecu/brake-1.bin", "--no-lzma-dict"],
    );
    let run = f.origin(&[
        "--actor",
        "bob@fleet-ops",
        "assign",
        "--vin",
        "VIN1",
        "--ecu",
        "BRK-1,brake-v2,ecu/brake-2.bin",
        "--priority",
        "security",
    ]);
    assert!(run.ok, "{}", run.stderr);

    // The delta is listed, signed, with the image.
    let targets: Value =
        serde_json::from_slice(&std::fs::read(f.image().join("metadata/3.targets.json")).unwrap())
            .unwrap();
    let delta =
        &targets["signed"]["targets"]["ecu/brake-2.bin"]["custom"]["deltas"]["ecu/brake-1.bin"];
    assert!(delta["length"].as_u64().unwrap() < 10_000, "{delta}");
    assert!(
        f.image()
            .join("deltas")
            .join(delta["blake3"].as_str().unwrap())
            .exists()
    );

    let run = f.origin(&["audit", "verify"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("3 entries"), "{}", run.stdout);
    let export = f.origin(&["audit", "export"]);
    let entries: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["actor"], "bob@fleet-ops");
    assert_eq!(entries[2]["action"], "assign");
    assert_eq!(entries[2]["detail"]["vin"], "VIN1");
    assert_eq!(entries[2]["detail"]["priority"], "security");
    assert_eq!(entries[2]["detail"]["ecus"][0]["target"], "ecu/brake-2.bin");
    assert_eq!(entries[0]["at"], NOW);

    // An auditor's copy of the public key checks it too; someone else's does not.
    let keys = f.origin(&["keys"]);
    let audit_key = keys
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|k| k["role"] == "audit")
        .unwrap();
    let public = audit_key["public_key"].as_str().unwrap().to_owned();
    assert!(f.origin(&["audit", "verify", "--public-key", &public]).ok);
    let wrong = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[3u8; 32])
            .verifying_key()
            .as_bytes(),
    );
    let run = f.origin(&["audit", "verify", "--public-key", &wrong]);
    assert!(!run.ok);
    assert!(run.stderr.contains("entry 1"), "{}", run.stderr);

    // Whoever edits an entry (here: who approved the assignment) is caught at that entry.
    let log = f.dir.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replace("bob@fleet-ops", "eve@fleet-ops")).unwrap();
    let run = f.origin(&["audit", "verify"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("entry 3"), "{}", run.stderr);
}

/// `origin serve` and the campaign and vehicle commands, with the example files in `config/`.
#[test]
fn serve_runs_campaigns_from_the_example_files_through_the_cli() {
    use std::io::BufRead;
    let mut f = Fixture::new();
    assert!(f.origin_at(None, &["init"]).ok, "{}", f.transcript);
    for (name, counter) in [("gw/1.0.bin", "1"), ("gw/2.0.bin", "2")] {
        let file = f.write("image.bin", name.as_bytes());
        let run = f.origin_at(
            None,
            &[
                "release",
                file.to_str().unwrap(),
                "--name",
                name,
                "--hardware-id",
                "gateway-v1",
                "--release-counter",
                counter,
            ],
        );
        assert!(run.ok, "{}", f.transcript);
    }
    // The operators, each with a certificate from the origin's operator CA (and, for the
    // approvers, an approval key).
    let ops = f.dir.join("../ops");
    for (name, roles) in [
        ("provisioning", &["provisioner"][..]),
        ("alice", &["release-manager", "approver"]),
        ("bob", &["approver"]),
        ("carol", &["approver", "operator"]),
        ("dave", &["viewer"]),
    ] {
        let mut args = vec!["operator", "add", name, "--out", ops.to_str().unwrap()];
        for role in roles {
            args.extend(["--role", role]);
        }
        let run = f.origin_at(None, &args);
        assert!(run.ok, "{}", f.transcript);
    }
    let run = f.origin_at(
        None,
        &["operator", "add", "eve", "--role", "root", "--out", "x"],
    );
    assert!(!run.ok && run.stderr.contains("root"), "{}", run.stderr);
    let mut serve = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&f.dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--tick-secs", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("director listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    // Who acts is whoever the certificate proves (--actor is not asked for, nor believed).
    let cli = |f: &mut Fixture, who: &str, args: &[&str]| {
        let cert = ops.join(format!("{who}.pem"));
        let key = ops.join(format!("{who}.key"));
        let approval = ops.join(format!("{who}.approval.key"));
        let mut all = args.to_vec();
        all.extend_from_slice(&["--director", &url]);
        all.extend_from_slice(&[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        if matches!(args.get(1), Some(&"approve" | &"resume")) {
            all.extend_from_slice(&["--approval-key", approval.to_str().unwrap()]);
        }
        all.extend_from_slice(&["--actor", "someone-else"]);
        f.origin_at(None, &all)
    };
    let registration = config.join("vehicle-registration.toml");
    let run = cli(
        &mut f,
        "provisioning",
        &[
            "vehicle",
            "register",
            "--file",
            registration.to_str().unwrap(),
        ],
    );
    assert!(run.ok, "{}", f.transcript);
    // Its membership certificate straight into the file the vehicle reads: only when the
    // registration names the gateway's peer id.
    let member = f.dir.parent().unwrap().join("member.json");
    let membership_out = |f: &mut Fixture, file: &Path| {
        let args = [
            "vehicle",
            "register",
            "--file",
            file.to_str().unwrap(),
            "--membership-out",
            member.to_str().unwrap(),
        ];
        cli(f, "provisioning", &args)
    };
    let run = membership_out(&mut f, &registration);
    assert!(
        !run.ok && run.stderr.contains("names no `peer`") && !member.exists(),
        "{}",
        run.stderr
    );
    let peer = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let with_peer = f.write(
        "with-peer.toml",
        std::fs::read_to_string(&registration)
            .unwrap()
            .replace("# peer = \"12D3KooW...\"", &format!("peer = \"{peer}\""))
            .as_bytes(),
    );
    let run = membership_out(&mut f, &with_peer);
    assert!(run.ok, "{}", f.transcript);
    let cert = proto::membership::MembershipCert::decode(&std::fs::read(&member).unwrap()).unwrap();
    assert_eq!(cert.membership.peer, peer);
    let campaign = config.join("campaign.toml");
    let run = cli(
        &mut f,
        "alice",
        &["campaign", "create", "--file", campaign.to_str().unwrap()],
    );
    assert!(run.ok, "{}", f.transcript);
    let run = cli(&mut f, "alice", &["campaign", "approve", "gw-2.0"]);
    assert!(
        !run.ok && run.stderr.contains("someone else must approve"),
        "{}",
        run.stderr
    );
    // A viewer may not approve.
    let run = cli(
        &mut f,
        "dave",
        &["campaign", "halt", "gw-2.0", "--reason", "x"],
    );
    assert!(
        !run.ok && run.stderr.contains("needs the operator role"),
        "{}",
        run.stderr
    );
    let run = cli(&mut f, "bob", &["campaign", "approve", "gw-2.0"]);
    assert!(
        run.ok && run.stdout.contains("\"still_needed\": 1"),
        "{}",
        f.transcript
    );
    let run = cli(&mut f, "bob", &["campaign", "approve", "gw-2.0"]);
    assert!(
        !run.ok && run.stderr.contains("already signed"),
        "{}",
        run.stderr
    );
    assert!(
        cli(&mut f, "carol", &["campaign", "approve", "gw-2.0"]).ok,
        "{}",
        f.transcript
    );
    let run = cli(&mut f, "dave", &["campaign", "status", "gw-2.0"]);
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["state"]["state"], "running", "{status:#}");
    assert_eq!(status["progress"]["population"], 1);
    let run = cli(
        &mut f,
        "carol",
        &["campaign", "halt", "gw-2.0", "--reason", "dealer complaint"],
    );
    assert!(
        run.ok && run.stdout.contains("dealer complaint"),
        "{}",
        f.transcript
    );
    assert!(
        cli(&mut f, "bob", &["campaign", "resume", "gw-2.0"]).ok,
        "{}",
        f.transcript
    );
    assert!(
        cli(&mut f, "carol", &["campaign", "resume", "gw-2.0"]).ok,
        "{}",
        f.transcript
    );
    let run = cli(&mut f, "dave", &["campaign", "status"]);
    assert!(run.stdout.contains("\"running\""), "{}", run.stdout);
    // Refusals name what was wrong; a missing service is named too.
    let run = cli(
        &mut f,
        "carol",
        &["campaign", "halt", "nope", "--reason", "x"],
    );
    assert!(
        !run.ok && run.stderr.contains("no campaign nope"),
        "{}",
        run.stderr
    );
    serve.kill().unwrap();
    serve.wait().unwrap();
    let run = cli(&mut f, "dave", &["campaign", "status"]);
    assert!(
        !run.ok && run.stderr.contains("is `origin serve` running?"),
        "{}",
        run.stderr
    );
    // Everything is in the audit log, and it verifies.
    let run = f.origin(&["audit", "export"]);
    for needle in [
        "\"vehicle register\"",
        "\"campaign create\"",
        "\"campaign approve\"",
        "\"campaign sign\"",
        "\"operator add\"",
        "\"campaign halt\"",
        "\"campaign resume\"",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {}", run.stdout);
    }
    assert!(f.origin(&["audit", "verify"]).ok, "{}", f.transcript);
}

#[test]
fn the_binary_prints_a_summary_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The new image is the old one and 10 000 bytes more.
    let image: Vec<u8> = (0..60_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    std::fs::write(d.join("old"), &image[..50_000]).unwrap();
    std::fs::write(d.join("new"), &image).unwrap();
    let origin = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_origin"))
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // From old to new into `out`, with `extra` arguments.
    let delta = |out: &str, extra: &[&str]| {
        let mut args = vec!["delta", "--from", "old", "--to", "new", "--out", out];
        args.extend_from_slice(extra);
        origin(&args)
    };
    let (ok, stdout, stderr) = delta("patch", &["--segment-kib", "16", "--level", "5"]);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["target_bytes"], 60_000);
    assert_eq!(
        summary["delta_bytes"],
        std::fs::metadata(d.join("patch")).unwrap().len()
    );

    // One worker, every codec: the same finalists, never larger.
    let (ok, stdout, stderr) = delta(
        "patch-every-codec",
        &[
            "--segment-kib",
            "16",
            "--level",
            "5",
            "--jobs",
            "1",
            "--exhaustive",
        ],
    );
    assert!(ok, "{stderr}");
    let every: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        every["delta_bytes"].as_u64() <= summary["delta_bytes"].as_u64(),
        "{every} against {summary}"
    );
    // Standard error is no terminal here: no progress lines.
    assert!(!stderr.contains("segment 1/"), "{stderr}");

    let (ok, _, stderr) = delta("p2", &["--segment-kib", "24"]);
    assert!(!ok);
    assert!(
        stderr.contains("--segment-kib 24 must be a power of two"),
        "{stderr}"
    );
    let (ok, _, stderr) = origin(&["delta", "--from", "missing", "--to", "new", "--out", "p3"]);
    assert!(!ok);
    assert!(stderr.contains("opening source missing"), "{stderr}");
    // From old to new into p4 with `flag value`: refused before any work, saying `why`.
    let refused = |flag: &str, value: &str, why: &[&str]| {
        let (ok, _, stderr) = delta("p4", &[flag, value]);
        assert!(!ok, "{flag} {value}");
        assert!(
            why.iter().all(|w| stderr.contains(w)),
            "{flag} {value}: {stderr}"
        );
    };
    refused("--level", "30", &["30"]);
    // Workers are bounded: none, or more than any machine has, is refused before any work.
    refused("--jobs", "0", &["1..=256"]);
    refused("--jobs", "257", &["1..=256"]);
    // A memory budget that cannot hold the source's index and one 8 MiB segment worker
    // (over 256 MiB) is refused before any work, naming both figures; no budget at all is
    // refused by the parser.
    let too_small = [
        "a memory budget of 100 MiB cannot hold",
        "one segment worker (2",
    ];
    refused("--memory-budget-mib", "100", &too_small);
    refused("--memory-budget-mib", "0", &["--memory-budget-mib"]);
    // Nothing half-written is left by the failures.
    let mut names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["new", "old", "patch", "patch-every-codec"]);
}

/// The offline keys are a flag of the commands that sign with them (before or after the
/// subcommand, not both); the mesh node's peer id is printed before it first serves, and stays;
/// a reader that closes the pipe early (`| head`) ends the command quietly, not in a panic.
#[test]
fn offline_keys_go_where_they_are_used_and_output_ends_quietly_when_the_reader_goes() {
    let mut f = Fixture::new();
    // After the subcommand.
    let init = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&f.dir)
        .args(["--now", NOW, "init", "--offline-keys"])
        .arg(&f.offline)
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    assert!(f.offline.join("image-root.key.json").exists());
    // Before and after: which one was meant is not guessed.
    let file = f.write("fw.bin", b"firmware");
    let offline = f.offline.to_str().unwrap().to_owned();
    let release = [
        "release",
        file.to_str().unwrap(),
        "--name",
        "fw.bin",
        "--hardware-id",
        "hw",
        "--release-counter",
        "1",
        "--offline-keys",
        &offline,
    ];
    let run = f.origin(&release);
    assert!(
        !run.ok && run.stderr.contains("--offline-keys is given twice"),
        "{}",
        run.stderr
    );
    // Only the commands that sign with them list them.
    let help = |command: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_origin"))
            .args([command, "--help"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains("--offline-keys")
    };
    for command in ["init", "release", "rotate", "delegate"] {
        assert!(help(command), "{command}");
    }
    for command in [
        "serve",
        "assign",
        "director-cert",
        "timestamp",
        "vehicle",
        "campaign",
    ] {
        assert!(!help(command), "{command}");
    }

    // The mesh node's identity: made once, printed the same each time, where the node keeps it.
    let first = f.origin(&["mesh-identity"]);
    assert!(first.ok, "{}", first.stderr);
    let peer: libp2p::PeerId = first.stdout.trim().parse().unwrap();
    assert_eq!(f.origin(&["mesh-identity"]).stdout, first.stdout);
    let node = node::identity::load_or_create(&f.dir.join("mesh-node")).unwrap();
    assert_eq!(node.public().to_peer_id(), peer);

    // The reader of the output is gone before the command writes.
    let mut keys = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&f.dir)
        .arg("keys")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(keys.stdout.take());
    let output = keys.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An origin made before the director spoke HTTPS: `serve` says what is missing and how to
/// make it; `director-cert` makes the CAs and the certificate for the names given.
#[test]
fn an_origin_without_tls_is_told_how_to_make_it() {
    let mut f = Fixture::new();
    assert!(f.origin_at(None, &["init"]).ok, "{}", f.transcript);
    for file in [
        "tls",
        "keys/director-ca.key",
        "keys/director-tls.key",
        "keys/operator-ca.key",
    ] {
        let path = f.dir.join(file);
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }
    let run = f.origin_at(None, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(
        !run.ok
            && run.stderr.contains("director.pem is missing")
            && run.stderr.contains("director-cert"),
        "{}",
        run.stderr
    );
    let run = f.origin_at(None, &["director-cert", "--name", "director.fleet.example"]);
    assert!(run.ok, "{}", f.transcript);
    let chain = std::fs::read_to_string(f.dir.join("tls/director.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    assert!(f.dir.join("tls/operator-ca.pem").exists());
    // And again, for another name, from the same CA: clients need no change.
    let ca = std::fs::read(f.dir.join("tls/director-ca.pem")).unwrap();
    assert!(
        f.origin_at(None, &["director-cert", "--name", "10.0.0.5"])
            .ok,
        "{}",
        f.transcript
    );
    assert_eq!(
        std::fs::read(f.dir.join("tls/director-ca.pem")).unwrap(),
        ca
    );
    // A name that is not one is refused, naming it.
    let run = f.origin_at(None, &["director-cert", "--name", "not a name"]);
    assert!(
        !run.ok && run.stderr.contains("\"not a name\" is neither a DNS name"),
        "{}",
        run.stderr
    );
    // Each issue is in the audit log, with its names and days.
    let issued: Vec<_> = origin::audit::entries(&f.dir.join("audit.log"))
        .unwrap()
        .into_iter()
        .filter(|e| e["action"] == "director certificate issue")
        .collect();
    assert_eq!(issued.len(), 2, "{issued:#?}");
    assert_eq!(
        issued[1]["detail"]["names"],
        serde_json::json!(["10.0.0.5"])
    );
    assert_eq!(issued[1]["detail"]["days"], 199);
}

/// A new libp2p peer id, as a node's identity gives it.
fn peer_id() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// `origin member`: a certificate that verifies under the key nodes are given, for that peer
/// and role only; bad arguments named; revocations that grow once per peer and verify.
#[test]
fn member_certificates_verify_under_the_fleet_key_and_revocations_only_grow() {
    let mut f = Fixture::new();
    assert!(f.origin(&["init"]).ok, "{}", f.transcript);
    assert!(f.dir.join("keys/fleet-membership.json").exists());
    let run = f.origin(&["member", "key"]);
    assert!(run.ok, "{}", run.stderr);
    let key: Value = serde_json::from_str(&run.stdout).unwrap();
    let public = proto::director_api::parse_key(key["fleet_key"].as_str().unwrap()).unwrap();
    assert_eq!(key["key_id"], proto::membership::key_id(&public));
    let keys = proto::membership::FleetKeys::new([public]);

    let (depot, other) = (peer_id(), peer_id());
    let run = f.origin(&[
        "member", "issue", "--peer", &depot, "--role", "depot", "--days", "30",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let cert = proto::membership::MembershipCert::decode(run.stdout.as_bytes()).unwrap();
    let now = Time::parse(NOW).unwrap().unix() as u64;
    let membership = keys.verify_cert(&cert, &depot, now + 60).unwrap();
    assert_eq!(membership.role, proto::membership::MemberRole::Depot);
    assert_eq!(membership.expires, now + 30 * 86_400);
    assert!(keys.verify_cert(&cert, &other, now + 60).is_err());
    assert!(keys.verify_cert(&cert, &depot, now + 31 * 86_400).is_err());
    // --out writes what a node presents; the default is a year.
    let out = f.dir.parent().unwrap().join("vehicle.cert.json");
    let run = f.origin(&[
        "member",
        "issue",
        "--peer",
        &other,
        "--role",
        "vehicle",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let cert = proto::membership::MembershipCert::decode(&std::fs::read(&out).unwrap()).unwrap();
    let membership = keys.verify_cert(&cert, &other, now).unwrap();
    assert_eq!(membership.role, proto::membership::MemberRole::Vehicle);
    assert_eq!(membership.expires, now + 365 * 86_400);

    // Bad arguments are refused, naming what was wrong; nothing is issued.
    for (args, named) in [
        (
            vec!["--peer", "not-a-peer", "--role", "depot"],
            "\"not-a-peer\"",
        ),
        (
            vec!["--peer", "12D3KooW", "--role", "depot"],
            "\"12D3KooW\"",
        ),
        (vec!["--peer", depot.as_str(), "--role", "admin"], "--role"),
        (
            vec!["--peer", depot.as_str(), "--role", "depot", "--days", "0"],
            "--days",
        ),
        (
            vec![
                "--peer",
                depot.as_str(),
                "--role",
                "depot",
                "--days",
                "5000",
            ],
            "--days",
        ),
        (
            vec!["--peer", depot.as_str(), "--role", "depot", "--days", "x"],
            "--days",
        ),
    ] {
        let mut all = vec!["member", "issue"];
        all.extend(args.iter().copied());
        let run = f.origin(&all);
        assert!(!run.ok && run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(named), "{args:?}: {}", run.stderr);
    }
    let entries = origin::audit::entries(&f.dir.join("audit.log")).unwrap();
    let issued: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "member issue")
        .collect();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0]["detail"]["peer"], depot.as_str());

    // Revocations: version 0 before any; each new peer one more; the same peer again changes
    // nothing and says so; every list verifies under the fleet key.
    let list = |f: &mut Fixture| {
        let run = f.origin(&["member", "revocations"]);
        assert!(run.ok, "{}", run.stderr);
        serde_json::from_str::<proto::membership::SignedRevocations>(&run.stdout).unwrap()
    };
    assert_eq!(list(&mut f).revocations.version, 0);
    let run = f.origin(&["member", "revoke", &depot]);
    assert!(
        run.ok && run.stdout.contains("v1"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    let first = list(&mut f);
    let verified = keys.verify_revocations(&first, 0).unwrap();
    assert!(verified.version == 1 && verified.revokes(&depot) && !verified.revokes(&other));
    let run = f.origin(&["member", "revoke", &depot]);
    assert!(
        run.ok && run.stderr.contains("revoked already"),
        "{}",
        run.stderr
    );
    assert_eq!(list(&mut f), first);
    assert!(f.origin(&["member", "revoke", &other]).ok);
    let second = list(&mut f);
    assert_eq!(keys.verify_revocations(&second, 1).unwrap().version, 2);
    let run = f.origin(&["member", "revoke", "nobody"]);
    assert!(
        !run.ok && run.stderr.contains("\"nobody\""),
        "{}",
        run.stderr
    );
    let revoked = origin::audit::entries(&f.dir.join("audit.log"))
        .unwrap()
        .into_iter()
        .filter(|e| e["action"] == "member revoke")
        .count();
    assert_eq!(revoked, 2);
    assert!(f.origin(&["audit", "verify"]).ok, "{}", f.transcript);
    // No command printed the fleet key's private half.
    for private in f.private_keys() {
        assert!(!f.transcript.contains(&private));
    }
}

/// An origin made before fleet membership gets its fleet key at the first command that needs
/// it, and is told so.
#[test]
fn an_origin_without_a_fleet_key_gets_one_and_is_told() {
    let mut f = Fixture::new();
    assert!(f.origin(&["init"]).ok, "{}", f.transcript);
    let file = f.dir.join("keys/fleet-membership.json");
    std::fs::remove_file(&file).unwrap();
    let run = f.origin(&["member", "key"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("had no fleet key"), "{}", run.stderr);
    assert!(file.exists());
    let again = f.origin(&["member", "key"]);
    assert!(again.ok && again.stderr.is_empty(), "{}", again.stderr);
    assert_eq!(again.stdout, run.stdout);
}

#[test]
fn init_records_the_storage_and_every_command_uses_it() {
    let mut f = Fixture::new();
    let store = f.dir.parent().unwrap().join("shared-store");
    let url = format!("file://{}", store.display());
    // Refused before anything is written: a credential in an option, an unknown option, a
    // scheme that is no store.
    for (args, said) in [
        (
            vec![
                "init",
                "--storage",
                "s3://bucket/p",
                "--storage-option",
                "secret_access_key=x",
            ],
            "holds a credential",
        ),
        (
            vec![
                "init",
                "--storage",
                "s3://bucket/p",
                "--storage-option",
                "colour=blue",
            ],
            "no such S3 option",
        ),
        (vec!["init", "--storage", "ftp://host/x"], "ftp://host/x"),
        (
            vec![
                "init",
                "--storage",
                "s3://bucket/p",
                "--storage-option",
                "novalue",
            ],
            "KEY=VALUE",
        ),
    ] {
        let run = f.origin(&args);
        assert!(
            !run.ok && run.stderr.contains(said),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!f.dir.join("storage.toml").exists(), "{args:?} recorded");
    }

    let run = f.origin(&["init", "--storage", &url]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains(&store.display().to_string()),
        "{}",
        run.stdout
    );
    assert!(store.join("image/metadata/1.root.json").exists());
    assert!(store.join("director/metadata/timestamp.json").exists());
    assert!(
        !f.dir.join("image").exists(),
        "repositories in the origin directory"
    );

    let file = f.write("gw.bin", &[7u8; 70_000]);
    let run = f.origin(&[
        "release",
        file.to_str().unwrap(),
        "--name",
        "ecu/gw-1.bin",
        "--hardware-id",
        "gw-v1",
        "--release-counter",
        "1",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(store.join("image/metadata/2.targets.json").exists());
    let run = f.origin(&["timestamp"]);
    assert!(run.ok, "{}", run.stderr);
    let run = f.origin(&["verify"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    // The roots a depot and a vehicle start from, wherever the repositories are.
    let run = f.origin(&["root", "image"]);
    assert!(run.ok, "{}", run.stderr);
    let root = std::fs::read(store.join("image/metadata/1.root.json")).unwrap();
    assert_eq!(run.stdout.as_bytes(), &root[..]);
    let out = f.dir.parent().unwrap().join("director-root.json");
    let run = f.origin(&["root", "director", "--out", out.to_str().unwrap()]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(store.join("director/metadata/1.root.json")).unwrap()
    );
    let run = f.origin(&["root", "director", "--version", "9"]);
    assert!(
        !run.ok && run.stderr.contains("director/metadata/9.root.json"),
        "{}",
        run.stderr
    );

    // Another storage for the same origin is refused; the recorded one stays.
    let recorded = std::fs::read(f.dir.join("storage.toml")).unwrap();
    let run = f.origin(&["init", "--storage", "file:///elsewhere"]);
    assert!(
        !run.ok && run.stderr.contains("already names another storage"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(f.dir.join("storage.toml")).unwrap(), recorded);
    // A broken storage.toml stops every command, naming the file.
    std::fs::write(f.dir.join("storage.toml"), "url = 3\n").unwrap();
    let run = f.origin(&["verify"]);
    assert!(
        !run.ok && run.stderr.contains("storage.toml"),
        "{}",
        run.stderr
    );
}
