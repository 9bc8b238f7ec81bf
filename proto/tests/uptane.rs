//! Uptane's checks, each a named case: a director and an image repository made here with
//! `proto::tuf::build`, served from memory, verified by the primary (full) or a secondary
//! (partial), and signed version reports checked by the director.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use std::rc::Rc;

use ed25519_dalek::SigningKey;
use proto::tuf::build::{self, DelegationSpec, RoleSpec};
use proto::tuf::signer::{KeyPair, Signer};
use proto::tuf::{
    BlockingUpdater, FetchError, Key, Limits, MemoryStore, Remote, RoleKeys, Time, TufError,
};
use proto::uptane::{
    EcuState, EcuVersionReport, PartialVerifier, UptaneError, sign_ecu_report,
    sign_vehicle_manifest, verify_full, verify_vehicle_manifest,
};
use serde_json::{Map, Value, json};

#[derive(Default, Clone)]
struct MemRemote(BTreeMap<String, Vec<u8>>);

impl Remote for MemRemote {
    fn fetch(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
        match self.0.get(path) {
            None => Err(FetchError::NotFound),
            Some(bytes) if bytes.len() as u64 > max_bytes => Err(FetchError::TooLong),
            Some(bytes) => Ok(bytes.clone()),
        }
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// An ECDSA P-256 key, new each call.
fn ecdsa() -> KeyPair {
    KeyPair::from_pkcs8(&KeyPair::generate_ecdsa_pkcs8().unwrap()).unwrap()
}

/// The RSA test key (ring makes none).
fn rsa() -> KeyPair {
    KeyPair::parse(include_str!("keys/rsa-2048.pem")).unwrap()
}

fn now() -> Time {
    Time::parse("2026-01-01T00:00:00Z").unwrap()
}

fn later(days: i64) -> Time {
    Time::from_unix(now().unix() + days * 86_400)
}

/// A role delegated from targets: its name, its key, the path it may sign for, its targets.
type Delegated<'a> = (&'a str, &'a dyn Signer, &'a str, Map<String, Value>);

/// One TUF repository (image or director) with one key per role.
#[derive(Clone)]
struct Repo {
    root: Rc<KeyPair>,
    targets: Rc<KeyPair>,
    snapshot: Rc<KeyPair>,
    timestamp: Rc<KeyPair>,
    remote: MemRemote,
}

impl Repo {
    /// Every role's key ed25519.
    fn new(seed: u8) -> Self {
        let ed25519 = |seed| Rc::new(KeyPair::Ed25519(key(seed)));
        Self {
            root: ed25519(seed),
            targets: ed25519(seed + 1),
            snapshot: ed25519(seed + 2),
            timestamp: ed25519(seed + 3),
            remote: MemRemote::default(),
        }
    }

    /// The three types mixed: root ECDSA, targets RSA, snapshot ed25519, timestamp ECDSA.
    fn mixed(seed: u8) -> Self {
        Self {
            root: Rc::new(ecdsa()),
            targets: Rc::new(rsa()),
            snapshot: Rc::new(KeyPair::Ed25519(key(seed))),
            timestamp: Rc::new(ecdsa()),
            remote: MemRemote::default(),
        }
    }

    /// Publishes version 1 of everything: `targets` (and delegated roles, each with its key and
    /// its targets), timestamp expiring at `timestamp_expires`.
    fn publish(
        &mut self,
        targets: Map<String, Value>,
        delegated: &[Delegated<'_>],
        timestamp_expires: Time,
    ) {
        let expires = later(365);
        let public = |key: &dyn Signer| [key.public_key()];
        let (rk, tk, sk, xk) = (
            public(&*self.root),
            public(&*self.targets),
            public(&*self.snapshot),
            public(&*self.timestamp),
        );
        let root = build::root(
            1,
            expires,
            true,
            &[
                RoleSpec {
                    name: "root",
                    keys: &rk,
                    threshold: 1,
                },
                RoleSpec {
                    name: "targets",
                    keys: &tk,
                    threshold: 1,
                },
                RoleSpec {
                    name: "snapshot",
                    keys: &sk,
                    threshold: 1,
                },
                RoleSpec {
                    name: "timestamp",
                    keys: &xk,
                    threshold: 1,
                },
            ],
        );
        let delegated_keys: Vec<[proto::tuf::Key; 1]> = delegated
            .iter()
            .map(|(_, key, _, _)| public(*key))
            .collect();
        let patterns: Vec<[&str; 1]> = delegated.iter().map(|(_, _, path, _)| [*path]).collect();
        let delegations: Vec<DelegationSpec<'_>> = delegated
            .iter()
            .zip(&delegated_keys)
            .zip(&patterns)
            .map(|(((name, _, _, _), keys), paths)| DelegationSpec {
                role: RoleSpec {
                    name,
                    keys,
                    threshold: 1,
                },
                paths,
                terminating: true,
            })
            .collect();
        let top = build::targets(1, expires, targets, &delegations);
        let mut roles = vec![("targets", 1)];
        let files = &mut self.remote.0;
        files.insert(
            "metadata/1.root.json".into(),
            build::sign(&root, &[&*self.root]).unwrap(),
        );
        files.insert(
            "metadata/1.targets.json".into(),
            build::sign(&top, &[&*self.targets]).unwrap(),
        );
        for (name, key, _, role_targets) in delegated {
            let signed = build::targets(1, expires, role_targets.clone(), &[]);
            // Served under the quoted name, as a TUF client asks for it.
            files.insert(
                format!("metadata/1.{}.json", proto::tuf::quote(name)),
                build::sign(&signed, &[*key]).unwrap(),
            );
            roles.push((name, 1));
        }
        let snapshot =
            build::sign(&build::snapshot(1, expires, &roles), &[&*self.snapshot]).unwrap();
        let timestamp = build::timestamp(1, timestamp_expires, 1, &snapshot);
        files.insert("metadata/1.snapshot.json".into(), snapshot);
        files.insert(
            "metadata/timestamp.json".into(),
            build::sign(&timestamp, &[&*self.timestamp]).unwrap(),
        );
    }

    fn updater(&self) -> BlockingUpdater<MemRemote, MemoryStore> {
        let mut store = MemoryStore::default();
        store
            .0
            .insert("root".into(), self.remote.0["metadata/1.root.json"].clone());
        BlockingUpdater::new(self.remote.clone(), store, now(), Limits::default()).unwrap()
    }
}

const IMAGE: &[u8] = b"brake controller firmware 1.2.0 .................................";
const TARGET: &str = "ecu/brake-1.2.0.bin";

fn image_entry(bytes: &[u8], hardware: &[&str], release: u64) -> Value {
    build::target_file(
        bytes,
        json!({"hardware_ids": hardware, "release_counter": release}),
    )
}

fn director_entry(bytes: &[u8], ecus: &[(&str, &str)], release: u64) -> Value {
    let ids: Map<String, Value> = ecus
        .iter()
        .map(|(serial, hardware)| (serial.to_string(), json!({"hardware_id": hardware})))
        .collect();
    build::target_file(
        bytes,
        json!({"ecu_identifiers": ids, "release_counter": release}),
    )
}

fn one(name: &str, entry: Value) -> Map<String, Value> {
    Map::from_iter([(name.to_string(), entry)])
}

/// An image repository listing IMAGE for `brake-v2` at release 5, delegated to a supplier role.
fn image_repo() -> Repo {
    image_repo_of(Repo::new(10), &key(20))
}

/// [`image_repo`] with these role keys and this supplier's key.
fn image_repo_of(mut repo: Repo, supplier: &dyn Signer) -> Repo {
    repo.publish(
        Map::new(),
        &[(
            "brake-supplier",
            supplier,
            "ecu/*",
            one(TARGET, image_entry(IMAGE, &["brake-v2"], 5)),
        )],
        later(1),
    );
    repo
}

/// A delegated role whose name holds URL-reserved characters and path segments is asked for as
/// one quoted file of `metadata/` (`1...%2F..%2Fx%3Fa%23b.json`), never outside it.
#[test]
fn a_delegated_role_name_is_quoted_in_what_the_client_asks_for() {
    let mut repo = Repo::new(30);
    let supplier = key(31);
    let name = "../../x?a#b";
    repo.publish(
        Map::new(),
        &[(
            name,
            &supplier,
            "ecu/*",
            one(TARGET, image_entry(IMAGE, &["brake-v2"], 5)),
        )],
        later(1),
    );
    assert!(
        repo.remote
            .0
            .contains_key("metadata/1...%2F..%2Fx%3Fa%23b.json")
    );
    let mut updater = repo.updater();
    let info = updater.target_info(TARGET).unwrap();
    assert!(
        info.is_some(),
        "the target listed by {name:?} was not found"
    );
    // The raw name is not asked for: served there alone, the role is not found.
    let mut raw = repo.clone();
    let bytes = raw
        .remote
        .0
        .remove("metadata/1...%2F..%2Fx%3Fa%23b.json")
        .unwrap();
    raw.remote
        .0
        .insert(format!("metadata/1.{name}.json"), bytes);
    assert!(raw.updater().target_info(TARGET).is_err());
}

fn director_repo(targets: Map<String, Value>) -> Repo {
    let mut repo = Repo::new(30);
    repo.publish(targets, &[], later(1));
    repo
}

fn vehicle(installed: u64) -> BTreeMap<String, EcuState> {
    BTreeMap::from([
        (
            "BRK-1".to_string(),
            EcuState {
                hardware_id: "brake-v2".into(),
                installed_release_counter: installed,
            },
        ),
        (
            "GW-1".to_string(),
            EcuState {
                hardware_id: "gateway-v1".into(),
                installed_release_counter: 1,
            },
        ),
    ])
}

fn full(
    director: &Repo,
    image: &Repo,
    installed: u64,
) -> Result<Vec<proto::uptane::ApprovedImage>, UptaneError> {
    verify_full(
        &mut director.updater(),
        &mut image.updater(),
        &vehicle(installed),
    )
}

#[test]
fn both_repositories_agree_and_the_image_is_approved() {
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5),
    ));
    let approved = full(&director, &image_repo(), 4).unwrap();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].ecu_serial(), "BRK-1");
    assert_eq!(approved[0].target(), TARGET);
    assert_eq!(approved[0].release_counter(), 5);
    assert_eq!(
        approved[0].blake3().unwrap().as_bytes(),
        blake3::hash(IMAGE).as_bytes()
    );
    // The same release again is not a rollback.
    assert!(full(&director, &image_repo(), 5).is_ok());
}

#[test]
fn director_image_hash_mismatch() {
    let mut other = IMAGE.to_vec();
    other[0] ^= 1;
    let director = director_repo(one(
        TARGET,
        director_entry(&other, &[("BRK-1", "brake-v2")], 5),
    ));
    let error = full(&director, &image_repo(), 4).unwrap_err();
    assert!(
        matches!(&error, UptaneError::ImageMismatch { detail, .. } if detail.contains("sha256")),
        "{error}"
    );
}

#[test]
fn wrong_hardware_id() {
    // The director names other hardware than the ECU's.
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("BRK-1", "brake-v3")], 5),
    ));
    let error = full(&director, &image_repo(), 4).unwrap_err();
    assert!(
        matches!(
            &error,
            UptaneError::WrongHardware {
                source_of_claim: "director",
                ..
            }
        ),
        "{error}"
    );
    // The director agrees with the ECU, but the image repository built it for other hardware.
    let mut image = Repo::new(10);
    image.publish(
        one(TARGET, image_entry(IMAGE, &["brake-v1"], 5)),
        &[],
        later(1),
    );
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5),
    ));
    let error = full(&director, &image, 4).unwrap_err();
    assert!(
        matches!(
            &error,
            UptaneError::WrongHardware {
                source_of_claim: "image repository",
                ..
            }
        ),
        "{error}"
    );
}

/// Uptane with every key type: both repositories' roles mixed (ECDSA P-256, RSA-PSS, ed25519),
/// the image repository delegating to a supplier's ECDSA key; the primary's full verification
/// approves the image, a secondary's partial verification with the director's RSA targets key
/// too, and a targets file signed by another key is refused.
#[test]
fn full_and_partial_verification_with_every_key_type() {
    let image = image_repo_of(Repo::mixed(10), &ecdsa());
    let mut director = Repo::mixed(30);
    let targets = one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5));
    director.publish(targets.clone(), &[], later(1));
    let approved = full(&director, &image, 4).unwrap();
    assert_eq!(approved.len(), 1);
    assert_eq!(approved[0].target(), TARGET);

    let signed = director_targets(2, later(1), targets.clone(), &*director.targets);
    let approved = partial_verifier(&director)
        .verify(&signed, now())
        .unwrap()
        .unwrap();
    assert_eq!(approved.release_counter(), 5);
    // Signed by a key the director's root does not list for targets.
    let forged = director_targets(3, later(1), targets, &ecdsa());
    let error = partial_verifier(&director)
        .verify(&forged, now())
        .unwrap_err();
    assert!(error.to_string().contains("signature"), "{error}");
}

#[test]
fn release_counter_rollback() {
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5),
    ));
    let error = full(&director, &image_repo(), 6).unwrap_err();
    assert_eq!(
        error,
        UptaneError::ReleaseCounterRollback {
            serial: "BRK-1".into(),
            target: TARGET.into(),
            offered: 5,
            installed: 6
        }
    );
    // A director that claims a newer counter than the image repository signed is caught too.
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("BRK-1", "brake-v2")], 9),
    ));
    assert!(matches!(
        full(&director, &image_repo(), 6),
        Err(UptaneError::ImageMismatch { .. })
    ));
}

#[test]
fn director_targets_delegating() {
    let mut director = Repo::new(30);
    let extra = key(40);
    director.publish(
        one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5)),
        &[("more", &extra, "*", Map::new())],
        later(1),
    );
    assert_eq!(
        full(&director, &image_repo(), 4).unwrap_err(),
        UptaneError::DirectorDelegates
    );
}

#[test]
fn ecu_serial_listed_twice() {
    let mut targets = one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5));
    targets.insert(
        "ecu/other.bin".into(),
        director_entry(b"other", &[("BRK-1", "brake-v2")], 5),
    );
    let director = director_repo(targets);
    assert_eq!(
        full(&director, &image_repo(), 4).unwrap_err(),
        UptaneError::EcuListedTwice {
            serial: "BRK-1".into()
        }
    );
}

#[test]
fn unknown_ecu_and_unlisted_image_are_refused() {
    let director = director_repo(one(
        TARGET,
        director_entry(IMAGE, &[("XYZ-9", "brake-v2")], 5),
    ));
    assert_eq!(
        full(&director, &image_repo(), 4).unwrap_err(),
        UptaneError::UnknownEcu {
            serial: "XYZ-9".into()
        }
    );
    let director = director_repo(one(
        "ecu/unsigned.bin",
        director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5),
    ));
    assert!(matches!(
        full(&director, &image_repo(), 4),
        Err(UptaneError::ImageNotFound { .. })
    ));
}

#[test]
fn expired_director_timestamp() {
    let mut director = Repo::new(30);
    director.publish(
        one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5)),
        &[],
        Time::parse("2025-12-31T23:59:59Z").unwrap(),
    );
    let error = full(&director, &image_repo(), 4).unwrap_err();
    assert!(
        matches!(&error, UptaneError::Tuf { repository: "director", error: TufError::Expired { role, .. } } if role == "timestamp"),
        "{error}"
    );
}

fn partial_verifier(director: &Repo) -> PartialVerifier {
    let public = director.targets.public_key();
    let keyid = public.id();
    PartialVerifier {
        keys: BTreeMap::from([(keyid.clone(), public)]),
        role: RoleKeys {
            keyids: vec![keyid],
            threshold: 1,
        },
        last_version: 0,
        serial: "BRK-1".into(),
        ecu: EcuState {
            hardware_id: "brake-v2".into(),
            installed_release_counter: 4,
        },
    }
}

fn director_targets(
    version: u64,
    expires: Time,
    targets: Map<String, Value>,
    signer: &dyn Signer,
) -> Vec<u8> {
    build::sign(&build::targets(version, expires, targets, &[]), &[signer]).unwrap()
}

#[test]
fn secondary_partial_verification_accepting_and_rejecting() {
    let director = director_repo(Map::new());
    let mut verifier = partial_verifier(&director);
    let mut targets = one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 5));
    targets.insert(
        "gw.bin".into(),
        director_entry(b"gw", &[("GW-1", "gateway-v1")], 2),
    );
    // Accepted: signed by the director's targets key, naming this ECU.
    let good = director_targets(3, later(1), targets.clone(), &*director.targets);
    let approved = verifier.verify(&good, now()).unwrap().unwrap();
    assert_eq!(
        (approved.ecu_serial(), approved.target()),
        ("BRK-1", TARGET)
    );
    assert_eq!(verifier.last_version, 3);
    // Nothing for this ECU: accepted, no image.
    let other = one(
        "gw.bin",
        director_entry(b"gw", &[("GW-1", "gateway-v1")], 2),
    );
    assert_eq!(
        verifier
            .verify(
                &director_targets(3, later(1), other, &*director.targets),
                now()
            )
            .unwrap(),
        None
    );
    // Rejected: signed by another key.
    let forged = director_targets(4, later(1), targets.clone(), &key(99));
    assert!(matches!(
        verifier.verify(&forged, now()),
        Err(UptaneError::Tuf {
            error: TufError::Unsigned { .. },
            ..
        })
    ));
    // Rejected: older than what was accepted.
    let old = director_targets(2, later(1), targets.clone(), &*director.targets);
    assert!(matches!(
        verifier.verify(&old, now()),
        Err(UptaneError::Tuf {
            error: TufError::BadVersion { .. },
            ..
        })
    ));
    // Rejected: expired.
    let stale = director_targets(5, now(), targets.clone(), &*director.targets);
    assert!(matches!(
        verifier.verify(&stale, now()),
        Err(UptaneError::Tuf {
            error: TufError::Expired { .. },
            ..
        })
    ));
    // Rejected: wrong hardware for this ECU; and a release older than installed.
    let wrong = one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v9")], 5));
    assert!(matches!(
        verifier.verify(
            &director_targets(6, later(1), wrong, &*director.targets),
            now()
        ),
        Err(UptaneError::WrongHardware { .. })
    ));
    let rollback = one(TARGET, director_entry(IMAGE, &[("BRK-1", "brake-v2")], 3));
    assert!(matches!(
        verifier.verify(
            &director_targets(6, later(1), rollback, &*director.targets),
            now()
        ),
        Err(UptaneError::ReleaseCounterRollback { .. })
    ));
    // Rejected versions were not remembered.
    assert_eq!(verifier.last_version, 3);
}

fn report(serial: &str, nonce: &str) -> EcuVersionReport {
    EcuVersionReport {
        ecu_serial: serial.into(),
        installed_image: TARGET.into(),
        sha256: "00".repeat(32),
        release_counter: 5,
        nonce: nonce.into(),
        attacks_detected: String::new(),
    }
}

#[test]
fn signed_version_reports_and_an_unsigned_one_rejected_by_the_director() {
    // Each key of another type: the primary's ECDSA P-256 (what ECU HSMs hold), the brake's
    // RSA, the gateway's ed25519.
    let (primary, brake, gateway) = (ecdsa(), rsa(), key(52));
    let ecu_keys = BTreeMap::from([
        ("BRK-1".to_string(), brake.public_key()),
        ("GW-1".to_string(), Key::Ed25519(gateway.verifying_key())),
    ]);
    let reports = [
        sign_ecu_report(&report("BRK-1", "n-42"), &brake).unwrap(),
        sign_ecu_report(&report("GW-1", "n-42"), &gateway).unwrap(),
    ];
    let manifest = sign_vehicle_manifest("VIN0001", "GW-1", &reports, None, &primary).unwrap();
    let verified = verify_vehicle_manifest(
        &manifest,
        "VIN0001",
        &primary.public_key(),
        &ecu_keys,
        "n-42",
    )
    .unwrap();
    assert_eq!(verified.reports["BRK-1"], report("BRK-1", "n-42"));

    let check = |manifest: &[u8], nonce: &str| {
        verify_vehicle_manifest(manifest, "VIN0001", &primary.public_key(), &ecu_keys, nonce)
    };
    // An ECU report signed by a key that is not the ECU's.
    let forged = [sign_ecu_report(&report("BRK-1", "n-42"), &key(77)).unwrap()];
    let error = check(
        &sign_vehicle_manifest("VIN0001", "GW-1", &forged, None, &primary).unwrap(),
        "n-42",
    )
    .unwrap_err();
    assert!(
        matches!(&error, UptaneError::Report { what, .. } if what == "ECU BRK-1 report"),
        "{error}"
    );
    // An ECU report with no signature at all.
    let mut unsigned = sign_ecu_report(&report("BRK-1", "n-42"), &brake).unwrap();
    unsigned["signatures"] = json!([]);
    let error = check(
        &sign_vehicle_manifest("VIN0001", "GW-1", &[unsigned], None, &primary).unwrap(),
        "n-42",
    )
    .unwrap_err();
    assert!(error.to_string().contains("not signed"), "{error}");
    // A manifest signed by another primary, and one replayed with an old nonce.
    assert!(
        check(
            &sign_vehicle_manifest("VIN0001", "GW-1", &reports, None, &key(78)).unwrap(),
            "n-42"
        )
        .is_err()
    );
    let error = check(&manifest, "n-43").unwrap_err();
    assert!(error.to_string().contains("nonce"), "{error}");
    // Altered after signing.
    let mut altered: Value = serde_json::from_slice(&manifest).unwrap();
    altered["signed"]["vin"] = json!("VIN0002");
    assert!(
        verify_vehicle_manifest(
            &serde_json::to_vec(&altered).unwrap(),
            "VIN0002",
            &primary.public_key(),
            &ecu_keys,
            "n-42"
        )
        .is_err()
    );
    // Not JSON.
    assert!(check(b"{", "n-42").is_err());
}
