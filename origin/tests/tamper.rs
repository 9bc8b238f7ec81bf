//! Someone who can write the origin directory but holds no key edits metadata (a backdoor
//! target added to a targets file, a snapshot changed, a root swapped); every operation that
//! signs on top of that metadata (release, assign, timestamp, delegate, rotate) refuses, names
//! the file, and writes nothing: the repositories, the keys and the audit log stay byte for
//! byte as they were.

#![allow(clippy::unwrap_used)]

use origin::keystore::NewKey;
use proto::tuf::keys::KeyType;
use proto::tuf::signer::Signer as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use origin::director::Assignment;
use origin::{Actor, Origin, Release};
use proto::Vin;
use proto::custom::Priority;
use proto::tuf::Time;
use serde_json::{Value, json};

const NOW: &str = "2026-01-01T00:00:00Z";
const VIN: &str = "VIN-1";

/// An origin with one release (`ecu/fw-1.bin`) and one vehicle (`VIN-1`) assigned it: every
/// repository, the keys and the audit log exist.
struct Fixture {
    work: tempfile::TempDir,
    origin: Origin,
}

impl Fixture {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let origin = Origin::new(
            work.path().join("origin"),
            Some(work.path().join("usb").into()),
            Time::parse(NOW).unwrap(),
        );
        origin::init(&origin, None).unwrap();
        let fixture = Self { work, origin };
        fixture.release("ecu/fw-1.bin", 1).unwrap();
        fixture.assign("ecu/fw-1.bin").unwrap();
        fixture
    }

    fn actor() -> Actor {
        Actor::new("alice@release-eng").unwrap()
    }

    fn release(&self, name: &str, counter: u64) -> Result<origin::Released, String> {
        let file = self.work.path().join(name.replace('/', "_"));
        std::fs::write(&file, format!("image {name}")).unwrap();
        Release::new(&file, name, ["brake-v2"], counter)
            .sign(&self.origin, &Self::actor())
            .map_err(|error| format!("{error:#}"))
    }

    fn assign(&self, target: &str) -> Result<u64, String> {
        let ecu = Assignment {
            serial: "BRK-1".parse().unwrap(),
            hardware_id: "brake-v2".into(),
            target: target.into(),
        };
        let vin = Vin::parse(VIN).unwrap();
        origin::director::assign(&self.origin, &Self::actor(), &vin, &[ecu], Priority::Fix)
            .map_err(|error| format!("{error:#}"))
    }

    fn metadata(&self, repository: &str) -> PathBuf {
        self.origin.dir.join(repository).join("metadata")
    }

    fn vehicle(&self) -> String {
        format!("director/vehicles/{VIN}")
    }

    /// Every file of the origin directory and of the offline key directory, with its bytes.
    fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        collect(&self.origin.dir, &mut files);
        collect(
            self.origin.offline_keys.as_ref().unwrap().dir().unwrap(),
            &mut files,
        );
        files
    }

    /// The `origin` binary, run on this origin.
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_origin"))
            .arg("--dir")
            .arg(&self.origin.dir)
            .arg("--offline-keys")
            .arg(self.origin.offline_keys.as_ref().unwrap().dir().unwrap())
            .args(["--now", NOW, "--actor", "alice"])
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn collect(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec(value).unwrap()).unwrap();
}

/// A target no key holder signed, listed in a targets file whose signatures are left alone.
fn backdoor(targets: &mut Value) {
    targets["signed"]["targets"]["ecu/backdoor.bin"] = json!({
        "length": 4,
        "hashes": {"sha256": "00".repeat(32)},
        "custom": {"hardware_ids": ["brake-v2"], "release_counter": 99},
    });
}

/// Adds the backdoor to `file` in place.
fn backdoor_in_place(file: &Path) {
    let mut targets = read_json(file);
    backdoor(&mut targets);
    write_json(file, &targets);
}

/// Asserts that `refusal` names `file` (relative to the origin directory) and says why it
/// refuses, and that nothing changed.
fn assert_refused(f: &Fixture, before: &BTreeMap<PathBuf, Vec<u8>>, refusal: &str, file: &str) {
    assert_refused_in(f, before, refusal, file, f.work.path());
}

/// [`assert_refused`], with nothing changed under `scope`.
fn assert_refused_in(
    f: &Fixture,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    refusal: &str,
    file: &str,
    scope: &Path,
) {
    assert!(refusal.contains(file), "does not name {file}: {refusal}");
    assert!(
        refusal.contains("refusing to sign on top of it"),
        "{refusal}"
    );
    let after = f.files();
    let changed: Vec<_> = after
        .iter()
        .filter(|(path, bytes)| before.get(*path) != Some(bytes))
        .map(|(path, _)| path)
        .chain(before.keys().filter(|path| !after.contains_key(*path)))
        .filter(|path| path.starts_with(scope))
        .collect();
    assert!(
        changed.is_empty(),
        "changed by a refused signing: {changed:?}"
    );
}

#[test]
fn release_and_delegate_refuse_a_targets_file_edited_without_its_key() {
    let f = Fixture::new();
    backdoor_in_place(&f.metadata("image").join("2.targets.json"));
    let before = f.files();
    let refusal = f.release("ecu/fw-2.bin", 2).unwrap_err();
    assert_refused(&f, &before, &refusal, "image/metadata/2.targets.json");
    assert!(
        refusal.contains("targets: 0 valid signature(s) from its keys, threshold 1"),
        "{refusal}"
    );
    let supplier = NewKey::Make(KeyType::Ed25519);
    let refusal = f
        .origin
        .delegate("brake-supplier", &["supplier/*".into()], &supplier, false)
        .map_err(|error| format!("{error:#}"))
        .unwrap_err();
    assert_refused(&f, &before, &refusal, "image/metadata/2.targets.json");
}

#[test]
fn release_refuses_a_newer_targets_version_no_key_signed() {
    // The next release builds on the newest targets file, which no snapshot pins yet: one
    // written by hand with a backdoor and the old signatures is refused.
    let f = Fixture::new();
    let metadata = f.metadata("image");
    let mut forged = read_json(&metadata.join("2.targets.json"));
    backdoor(&mut forged);
    forged["signed"]["version"] = json!(3);
    write_json(&metadata.join("3.targets.json"), &forged);
    let before = f.files();
    let refusal = f.release("ecu/fw-2.bin", 2).unwrap_err();
    assert_refused(&f, &before, &refusal, "image/metadata/3.targets.json");
}

#[test]
fn a_targets_version_signed_with_its_key_but_not_yet_published_is_built_on() {
    // A signing cut short after its targets were written: the next release publishes them.
    let f = Fixture::new();
    let metadata = f.metadata("image");
    let mut next = read_json(&metadata.join("2.targets.json"))["signed"].clone();
    next["version"] = json!(3);
    let key = origin::keys::load(&f.work.path().join("usb/image-targets.key.json")).unwrap();
    let bytes = proto::tuf::build::sign(&next, &[&key]).unwrap();
    std::fs::write(metadata.join("3.targets.json"), bytes).unwrap();
    let released = f.release("ecu/fw-2.bin", 2).unwrap();
    assert_eq!(released.targets_version, 4);
    let problems = origin::admin::verify(&f.origin).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn release_by_a_delegated_role_refuses_its_edited_targets() {
    let f = Fixture::new();
    let supplier = NewKey::Make(KeyType::Ed25519);
    f.origin
        .delegate("brake-supplier", &["supplier/*".into()], &supplier, false)
        .unwrap();
    backdoor_in_place(&f.metadata("image").join("1.brake-supplier.json"));
    let before = f.files();
    let file = f.work.path().join("supplier.bin");
    std::fs::write(&file, b"supplier image").unwrap();
    let refusal = Release::new(&file, "supplier/fw.bin", ["brake-v2"], 2)
        .signed_by("brake-supplier")
        .sign(&f.origin, &Fixture::actor())
        .map(|_| ())
        .map_err(|error| format!("{error:#}"))
        .unwrap_err();
    assert_refused(
        &f,
        &before,
        &refusal,
        "image/metadata/1.brake-supplier.json",
    );
}

#[test]
fn release_refuses_a_repository_swapped_for_one_made_with_other_keys() {
    // The whole image repository replaced by a sound one of the attacker's: it verifies on its
    // own, but its root does not list the origin's keys, so they never sign on top of it.
    let f = Fixture::new();
    let other = Origin::new(
        f.work.path().join("attacker"),
        Some(f.work.path().join("attacker-usb").into()),
        f.origin.now,
    );
    origin::init(&other, None).unwrap();
    let metadata = f.metadata("image");
    std::fs::remove_dir_all(&metadata).unwrap();
    std::fs::rename(other.dir.join("image").join("metadata"), &metadata).unwrap();
    std::fs::remove_dir_all(&other.dir).unwrap();
    std::fs::remove_dir_all(other.offline_keys.as_ref().unwrap().dir().unwrap()).unwrap();
    let before = f.files();
    let refusal = f.release("ecu/fw-2.bin", 2).unwrap_err();
    assert_refused(&f, &before, &refusal, "image/metadata/1.root.json");
    assert!(refusal.contains("targets"), "{refusal}");
}

/// How a file is changed by someone without its key.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// A backdoor target added to a targets file.
    Backdoor,
    /// A snapshot that pins another targets version.
    Snapshot,
    /// A root whose expiry is moved (the chain breaks at it).
    Root,
}

impl Tamper {
    fn apply(self, file: &Path) {
        let mut value = read_json(file);
        match self {
            Self::Backdoor => backdoor(&mut value),
            Self::Snapshot => value["signed"]["meta"]["targets.json"]["version"] = json!(7),
            Self::Root => value["signed"]["expires"] = json!("2099-01-01T00:00:00Z"),
        }
        write_json(file, &value);
    }
}

#[test]
fn release_assign_and_timestamp_refuse_any_file_changed_without_its_key() {
    // (repository, file, change, whether `release` builds on it): `assign` builds on all three
    // repositories (it reads the image's targets and copies the director's roots), `timestamp`
    // on each it refreshes, `release` on the image repository only.
    let cases = [
        ("image", "2.targets.json", Tamper::Backdoor, true),
        ("image", "2.snapshot.json", Tamper::Snapshot, true),
        ("image", "1.root.json", Tamper::Root, true),
        ("director", "1.snapshot.json", Tamper::Snapshot, false),
        ("director", "1.root.json", Tamper::Root, false),
        (
            "director/vehicles/VIN-1",
            "1.targets.json",
            Tamper::Backdoor,
            false,
        ),
        (
            "director/vehicles/VIN-1",
            "1.snapshot.json",
            Tamper::Snapshot,
            false,
        ),
        (
            "director/vehicles/VIN-1",
            "1.root.json",
            Tamper::Root,
            false,
        ),
    ];
    for (repository, file, tamper, release_reads_it) in cases {
        let f = Fixture::new();
        tamper.apply(&f.metadata(repository).join(file));
        let named = format!("{repository}/metadata/{file}");
        let image = f.work.path().join("fw-2.bin");
        std::fs::write(&image, b"image 2").unwrap();
        let image = image.to_str().unwrap();
        let mut refusing = vec![
            vec![
                "assign",
                "--vin",
                VIN,
                "--ecu",
                "BRK-1,brake-v2,ecu/fw-1.bin",
            ],
            vec!["timestamp"],
        ];
        if release_reads_it {
            refusing.push(vec![
                "release",
                image,
                "--name",
                "ecu/fw-2.bin",
                "--hardware-id",
                "brake-v2",
                "--release-counter",
                "2",
            ]);
        }
        for args in refusing {
            let before = f.files();
            let (ok, stderr) = f.cli(&args);
            assert!(!ok, "{args:?} after {tamper:?} of {named}");
            // `timestamp` goes on with the repositories that verify: only the one refused
            // stays as it was.
            let scope = match args[0] {
                "timestamp" => f.origin.dir.join(repository),
                _ => f.work.path().to_path_buf(),
            };
            assert_refused_in(&f, &before, &stderr, &named, &scope);
        }
    }
}

#[test]
fn timestamp_renews_snapshots_that_expire_so_an_unchanged_repository_stays_fresh() {
    let f = Fixture::new();
    // A week on, nobody has released or assigned anything: every snapshot has expired. The
    // hourly refresh signs them again with the online snapshot key, over the same targets.
    let week_on = Origin {
        now: Time::parse("2026-01-09T00:00:00Z").unwrap(),
        ..f.origin.clone()
    };
    assert!(!origin::admin::verify(&week_on).unwrap().is_empty());
    origin::admin::refresh_timestamps(&week_on).unwrap();
    assert_eq!(
        origin::admin::verify(&week_on).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn timestamp_refuses_an_edited_snapshot_but_not_an_expired_timestamp() {
    let f = Fixture::new();
    // Two days on, every timestamp has expired: refreshing them is what mends that.
    let later = Origin {
        now: Time::parse("2026-01-03T00:00:00Z").unwrap(),
        ..f.origin.clone()
    };
    origin::admin::refresh_timestamps(&later).unwrap();
    assert!(origin::admin::verify(&later).unwrap().is_empty());

    // Each refusal names the image repository's snapshot and leaves that repository as it was.
    let refused = |at: &Origin| {
        let before = f.files();
        let refusal = format!("{:#}", origin::admin::refresh_timestamps(at).unwrap_err());
        let scope = f.origin.dir.join("image");
        let file = "image/metadata/2.snapshot.json";
        assert_refused_in(&f, &before, &refusal, file, &scope);
        refusal
    };
    Tamper::Snapshot.apply(&f.metadata("image").join("2.snapshot.json"));
    assert!(refused(&later).contains("(pinned by timestamp.json)"));
    // The director's repositories are sound, and still get their timestamps.
    let problems = origin::admin::verify(&later).unwrap();
    assert!(
        problems.iter().all(|p| p.starts_with("image: ")),
        "{problems:?}"
    );
}

#[test]
fn rotate_refuses_a_swapped_root_and_an_edited_vehicle_repository() {
    let f = Fixture::new();
    // Root 1 of the image repository swapped for one signed by another key.
    let root_file = f.metadata("image").join("1.root.json");
    let pristine = std::fs::read(&root_file).unwrap();
    let mut root = read_json(&root_file);
    let other = origin::keys::generate();
    let swapped = proto::tuf::build::sign(&root["signed"], &[&other]).unwrap();
    std::fs::write(&root_file, swapped).unwrap();
    let before = f.files();
    let new_key = NewKey::Make(KeyType::Ed25519);
    let refusal =
        origin::admin::rotate(&f.origin, &Fixture::actor(), "image", "timestamp", &new_key)
            .unwrap_err();
    assert_refused(
        &f,
        &before,
        &format!("{refusal:#}"),
        "image/metadata/1.root.json",
    );
    // Its signatures kept, but a field changed.
    root["signed"]["consistent_snapshot"] = json!(false);
    write_json(&root_file, &root);
    let before = f.files();
    let refusal =
        origin::admin::rotate(&f.origin, &Fixture::actor(), "image", "root", &new_key).unwrap_err();
    assert_refused(
        &f,
        &before,
        &format!("{refusal:#}"),
        "image/metadata/1.root.json",
    );
    std::fs::write(&root_file, pristine).unwrap();

    // A director rotation re-signs every vehicle's targets with the new key: one vehicle's
    // edited targets stop it before anything is signed.
    backdoor_in_place(&f.metadata(&f.vehicle()).join("1.targets.json"));
    let before = f.files();
    let refusal = origin::admin::rotate(
        &f.origin,
        &Fixture::actor(),
        "director",
        "targets",
        &new_key,
    )
    .unwrap_err();
    assert_refused(
        &f,
        &before,
        &format!("{refusal:#}"),
        &format!("{}/metadata/1.targets.json", f.vehicle()),
    );
    let key = f.work.path().join("new-director-targets.json");
    origin::keys::create(&key).unwrap();
    let (ok, stderr) = f.cli(&[
        "rotate",
        "--repository",
        "director",
        "--role",
        "targets",
        "--new-key",
        key.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_refused(
        &f,
        &before,
        &stderr,
        &format!("{}/metadata/1.targets.json", f.vehicle()),
    );
}

#[test]
fn a_director_rotation_cut_short_is_finished_by_the_timestamp_refresh_on_a_verified_chain() {
    let f = Fixture::new();
    let vehicle = f.vehicle();
    let (director_root, _) = f.origin.latest("director", "root").unwrap();
    // `origin rotate director targets` stopped after the director's new root, before any
    // vehicle: the vehicle's repository still holds the old root and old-key targets.
    f.origin
        .rotate("director", "targets", &NewKey::Make(KeyType::Ed25519))
        .unwrap();
    let new_key = f
        .origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .id();
    assert_eq!(f.origin.latest(&vehicle, "root").unwrap().0, director_root);

    // The hourly refresh brings it up: the director's newest root, targets signed anew with
    // the new key, and the whole repository verifies.
    origin::admin::refresh_timestamps(&f.origin).unwrap();
    assert_eq!(
        f.origin.latest(&vehicle, "root").unwrap().0,
        director_root + 1
    );
    let (version, _) = f.origin.latest(&vehicle, "targets").unwrap();
    let targets: Value = serde_json::from_slice(
        &std::fs::read(f.metadata(&vehicle).join(format!("{version}.targets.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(targets["signatures"][0]["keyid"], new_key.as_str());
    assert!(origin::admin::verify(&f.origin).unwrap().is_empty());
    // Done once: the next refresh only refreshes.
    origin::admin::refresh_timestamps(&f.origin).unwrap();
    assert_eq!(f.origin.latest(&vehicle, "targets").unwrap().0, version);

    // Cut short again, and the lagging vehicle's targets edited meanwhile by someone with no
    // key: the refresh refuses it, naming the file, and signs nothing on top.
    f.origin
        .rotate("director", "targets", &NewKey::Make(KeyType::Ed25519))
        .unwrap();
    let edited = f.metadata(&vehicle).join(format!("{version}.targets.json"));
    let text = std::fs::read_to_string(&edited).unwrap();
    std::fs::write(&edited, text.replace("ecu/fw-1.bin", "ecu/evil.bin")).unwrap();
    let before = f.files();
    let error = origin::admin::refresh_timestamps(&f.origin)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("{version}.targets.json")),
        "{error}"
    );
    let after = f.files();
    let changed: Vec<&PathBuf> = after
        .keys()
        .filter(|path| before.get(*path) != after.get(*path))
        .filter(|path| path.starts_with(f.origin.dir.join(&vehicle)))
        .collect();
    assert!(
        changed.is_empty(),
        "signed on top of an edited file: {changed:?}"
    );
}
