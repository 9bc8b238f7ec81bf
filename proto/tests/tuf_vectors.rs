//! The TUF client against python-tuf's fixtures (`../shared/vectors/tuf`): a good consistent-
//! snapshot repository with a delegation, and 21 attack and rotation cases. For each case the
//! client starts from `client/metadata`, refreshes from `remote/`, downloads the listed
//! targets, and must do what `expected.json` says python-tuf's own client does: accept or
//! reject (for the same reason), the same downloads, the same trusted versions afterwards.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use proto::tuf::{
    BlockingUpdater, FetchError, Limits, LocalStore, MemoryStore, Remote, Role, Root, Signed,
    Snapshot, Targets, Time, Timestamp, TufError,
};
use serde_json::Value;

fn tuf_dir() -> PathBuf {
    match std::env::var_os("DEPOTMESH_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    }
    .join("tuf")
}

/// The repository as files under `remote/`, read with the limit enforced.
struct DirRemote {
    root: PathBuf,
    log: Vec<String>,
}

impl Remote for DirRemote {
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        self.log.push(path.to_string());
        let file = self.root.join(path);
        let Ok(metadata) = std::fs::metadata(&file) else {
            return Err(FetchError::NotFound);
        };
        if metadata.len() > max_bytes {
            return Err(FetchError::TooLong);
        }
        std::fs::read(&file).map_err(|error| FetchError::Other(error.to_string()))
    }
}

fn python_class(error: &TufError) -> &'static str {
    match error {
        TufError::Unsigned { .. } => "UnsignedMetadataError",
        TufError::Deserialization { .. } => "DeserializationError",
        TufError::Expired { .. } => "ExpiredMetadataError",
        TufError::BadVersion { .. } => "BadVersionNumberError",
        TufError::LengthOrHashMismatch { .. } => "LengthOrHashMismatchError",
        TufError::DownloadLength { .. } => "DownloadLengthMismatchError",
        _ => "RepositoryError",
    }
}

fn run_case(dir: &Path) -> Vec<String> {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let now = Time::parse(expected["reference_time"].as_str().unwrap()).unwrap();
    assert_eq!(now, Time::parse("2026-01-01T00:00:00Z").unwrap());
    let mut store = MemoryStore::default();
    for entry in std::fs::read_dir(dir.join("client/metadata")).unwrap() {
        let path = entry.unwrap().path();
        let role = path.file_stem().unwrap().to_str().unwrap().to_string();
        store.0.insert(role, std::fs::read(&path).unwrap());
    }
    let remote = DirRemote {
        root: dir.join("remote"),
        log: Vec::new(),
    };
    let mut problems = Vec::new();
    let python_error = expected["python_tuf_error"].as_str();
    let mut updater = BlockingUpdater::new(remote, store, now, Limits::default()).unwrap();
    let refresh = updater.refresh();
    let want_refresh = expected["refresh"].as_str().unwrap();
    match (&refresh, want_refresh) {
        (Ok(()), "accept") => {}
        (Err(error), "reject") => {
            if let Some(class) = python_error {
                if python_class(error) != class {
                    problems.push(format!(
                        "refresh rejected for {} ({error}), python-tuf: {class}",
                        python_class(error)
                    ));
                }
            }
        }
        (got, want) => problems.push(format!("refresh: got {got:?}, want {want}")),
    }
    if let Some(downloads) = expected["downloads"].as_object() {
        for (path, want) in downloads {
            let got = updater.target_info(path).and_then(|info| match info {
                Some(info) => updater.download_target(path, &info).map(|_| ()),
                None => Err(TufError::Repository(format!("{path} is not listed"))),
            });
            match (&got, want.as_str().unwrap()) {
                (Ok(()), "accept") => {}
                (Err(error), "reject") => {
                    if let (Some(class), true) = (python_error, refresh.is_ok()) {
                        if python_class(error) != class {
                            problems.push(format!(
                                "{path}: rejected for {} ({error}), python-tuf: {class}",
                                python_class(error)
                            ));
                        }
                    }
                }
                (got, want) => problems.push(format!("{path}: got {got:?}, want {want}")),
            }
        }
    }
    if let Some(versions) = expected["trusted_versions_after_refresh"].as_object() {
        for (role, want) in versions {
            let stored = updater.local().load(role);
            let have = stored.and_then(|bytes| {
                serde_json::from_slice::<Value>(&bytes).ok()?["signed"]["version"].as_u64()
            });
            if have != want.as_u64() {
                problems.push(format!("trusted {role}: v{have:?}, want v{want}"));
            }
        }
    }
    problems
}

/// The good repository and every attack case under `base`, in order.
fn cases(base: &Path) -> Vec<PathBuf> {
    let mut cases = vec![base.join("repo")];
    let mut attacks: Vec<PathBuf> = std::fs::read_dir(base.join("attacks"))
        .unwrap_or_else(|error| {
            panic!(
                "TUF vectors are required at {} ({error}); set DEPOTMESH_VECTORS",
                base.display()
            )
        })
        .map(|entry| entry.unwrap().path())
        .collect();
    attacks.sort();
    cases.extend(attacks);
    cases
}

/// Runs every case; the problems, each named by its case.
fn failures(cases: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        for problem in run_case(case) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    failures
}

#[test]
fn every_python_tuf_case_behaves_as_the_reference_client() {
    let cases = cases(&tuf_dir());
    assert_eq!(cases.len(), 22, "the good repository and 21 attack cases");
    let failures = failures(&cases);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same repository and attacks made by python-tuf with ECDSA P-256 keys, RSA-PSS keys and a
/// mix of all three types (`tests/vectors/keytypes/gen.py`, which checked each case with
/// python-tuf's client): every case ends as with ed25519, refusals with the same error class.
#[test]
fn every_key_type_the_specification_names_verifies_and_refuses_alike() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/keytypes");
    for kind in ["ecdsa", "rsa", "mixed"] {
        let cases = cases(&base.join(kind));
        assert_eq!(
            cases.len(),
            21,
            "{kind}: the good repository and 20 attack cases"
        );
        let failures = failures(&cases);
        assert!(failures.is_empty(), "{kind}:\n{}", failures.join("\n"));
    }
}

type Canonicalise = fn(&Path) -> Vec<u8>;

fn canonical_of<T: Role>(file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(file).unwrap();
    Signed::<T>::from_bytes(&bytes, &file.display().to_string())
        .unwrap()
        .canonical_bytes()
        .to_vec()
}

#[test]
fn canonical_bytes_match_securesystemslib() {
    let repo = tuf_dir().join("repo");
    let metadata = repo.join("remote/metadata");
    let cases: [(&str, Canonicalise, &str); 5] = [
        ("1.root.json", canonical_of::<Root>, "root"),
        ("timestamp.json", canonical_of::<Timestamp>, "timestamp"),
        ("1.snapshot.json", canonical_of::<Snapshot>, "snapshot"),
        ("1.targets.json", canonical_of::<Targets>, "targets"),
        (
            "1.ecu-firmware.json",
            canonical_of::<Targets>,
            "ecu-firmware",
        ),
    ];
    for (file, canonical, role) in cases {
        let want = std::fs::read(repo.join(format!("canonical/{role}.signed.canonical.json")));
        assert_eq!(canonical(&metadata.join(file)), want.unwrap(), "{file}");
    }
}

/// The good repository: a client that trusts its first root, and the remote.
fn good_repository() -> (MemoryStore, DirRemote) {
    let dir = tuf_dir().join("repo");
    let mut store = MemoryStore::default();
    store.0.insert(
        "root".into(),
        std::fs::read(dir.join("client/metadata/root.json")).unwrap(),
    );
    let remote = DirRemote {
        root: dir.join("remote"),
        log: Vec::new(),
    };
    (store, remote)
}

#[test]
fn the_good_repository_fetches_consistent_snapshot_names_and_checks_custom_blake3() {
    let (store, remote) = good_repository();
    let now = Time::parse("2026-01-01T00:00:00Z").unwrap();
    let mut updater = BlockingUpdater::new(remote, store, now, Limits::default()).unwrap();
    updater.refresh().unwrap();
    let info = updater
        .target_info("ecu/brake-ecu-1.2.0.bin")
        .unwrap()
        .unwrap();
    let data = updater
        .download_target("ecu/brake-ecu-1.2.0.bin", &info)
        .unwrap();
    let blake3 = info.custom.as_ref().unwrap()["blake3"].as_str().unwrap();
    assert_eq!(blake3::hash(&data).to_hex().as_str(), blake3);
    assert!(updater.target_info("ecu/unknown.bin").unwrap().is_none());
    // A path outside every delegation is not searched for in the delegated role.
    assert!(updater.target_info("other/x.bin").unwrap().is_none());
    // After the expiry (2035), the same trusted root refuses to go on: a frozen repository.
    let (store, remote) = good_repository();
    let later = Time::parse("2035-01-01T00:00:00Z").unwrap();
    let mut updater = BlockingUpdater::new(remote, store, later, Limits::default()).unwrap();
    assert!(matches!(updater.refresh(), Err(TufError::Expired { .. })));
}

#[test]
fn the_push_style_updater_asks_for_each_file_in_the_workflow_order_and_checks_what_it_is_handed() {
    use proto::tuf::{Operation, Request, Step, Updater};
    let (store, mut remote) = good_repository();
    let now = Time::parse("2026-01-01T00:00:00Z").unwrap();
    let mut updater = Updater::new(store, now, Limits::default()).unwrap();
    // Handed a response before it asked for anything, it refuses it.
    let mut lookup = updater.target_info("ecu/brake-ecu-1.2.0.bin");
    assert_eq!(
        lookup.handle_response(Ok(Vec::new())),
        Err(TufError::NotAsked)
    );
    // A lookup before any refresh refreshes first, asking for one file at a time and the same
    // file again until it is handed over.
    let mut asked: Vec<Request> = Vec::new();
    let info = loop {
        match lookup.next_step().unwrap() {
            Step::Fetch(request) => {
                assert_eq!(lookup.next_step().unwrap(), Step::Fetch(request.clone()));
                let response = remote.fetch(&request.path, request.max_bytes);
                lookup.handle_response(response).unwrap();
                asked.push(request);
            }
            Step::Done(info) => break info.unwrap(),
        }
    };
    let paths: Vec<&str> = asked.iter().map(|request| request.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "metadata/2.root.json",
            "metadata/timestamp.json",
            "metadata/1.snapshot.json",
            "metadata/1.targets.json",
            "metadata/1.ecu-firmware.json",
        ]
    );
    assert_eq!(asked[0].max_bytes, Limits::default().root_bytes);
    assert_eq!(asked[1].max_bytes, Limits::default().timestamp_bytes);
    // A download asks for the consistent-snapshot name and refuses bytes that are not the target.
    let mut download = updater.download_target("ecu/brake-ecu-1.2.0.bin", &info);
    let Step::Fetch(request) = download.next_step().unwrap() else {
        panic!("a download asks for the target");
    };
    assert!(request.path.starts_with("targets/ecu/"), "{}", request.path);
    assert_eq!(request.max_bytes, info.length);
    let wrong = vec![0u8; usize::try_from(info.length).unwrap()];
    assert!(matches!(
        download.handle_response(Ok(wrong)),
        Err(TufError::LengthOrHashMismatch { .. })
    ));
    let too_long = vec![0u8; usize::try_from(info.length + 1).unwrap()];
    assert!(matches!(
        download.handle_response(Ok(too_long)),
        Err(TufError::DownloadLength { .. })
    ));
    let right = remote.fetch(&request.path, request.max_bytes);
    download.handle_response(right).unwrap();
    let Step::Done(data) = download.next_step().unwrap() else {
        panic!("a checked download is done");
    };
    assert_eq!(data.len() as u64, info.length);
}
