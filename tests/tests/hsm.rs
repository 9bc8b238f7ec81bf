//! The origin's offline keys in a PKCS #11 token (SoftHSM2), end to end: `origin init` makes
//! both roots and the image targets key inside the token (ECDSA P-256, the type every HSM has),
//! a rotation moves the image targets key to RSA and the director's root to ed25519, both made
//! in the token; no private key of theirs is ever on disk, and the token will not give one out.
//! The director's online targets key is rotated to ECDSA too. A release and a director
//! assignment signed that way are then installed by a vehicle agent that verifies everything
//! over the mesh from a depot (TUF metadata of all three key types, Uptane's full verification,
//! its ECU's partial verification with the director's ECDSA key); the vehicle's primary key is
//! ECDSA P-256 and its ECU's RSA, and the director accepts the manifest they sign.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::{DepotDaemon, import_repo};
use depotmesh_tests::director::{
    DirectorService, assign_gateway, register_vehicle_with_keys, registry,
};
use depotmesh_tests::hsm::{in_softhsm, token};
use depotmesh_tests::release::{Release, release};
use depotmesh_tests::vehicle::{GatewayVehicle, check_once, gateway_vehicle};
use node::policy::Priority;
use origin::Origin;
use origin::keystore::{KeyStore, NewKey};
use proto::tuf::keys::KeyType;
use proto::tuf::signer::Signer as _;

#[test]
fn keys_made_in_a_token_sign_what_a_vehicle_installs_over_the_mesh() {
    let work = tempfile::tempdir().unwrap();
    in_softhsm(
        "keys_made_in_a_token_sign_what_a_vehicle_installs_over_the_mesh",
        work.path(),
        || in_token(work.path()),
    );
}

/// The key types `repository`'s latest root lists for each role.
fn root_key_types(origin: &Origin, repository: &str) -> Vec<(String, String)> {
    let (_, root) = origin.latest(repository, "root").unwrap();
    ["root", "targets", "snapshot", "timestamp"]
        .iter()
        .map(|role| {
            let keyid = root["roles"][role]["keyids"][0].as_str().unwrap();
            let keytype = root["keys"][keyid]["keytype"].as_str().unwrap().to_owned();
            ((*role).to_owned(), keytype)
        })
        .collect()
}

fn in_token(w: &Path) {
    let uri = token("depotmesh-origin");
    let store: KeyStore = uri.parse().unwrap();
    let origin = Origin::new(w.join("origin"), Some(store.clone()), node::clock::now());
    origin::init(&origin, None).unwrap();
    // Offline keys in the token are ECDSA P-256; the online ones, files in the origin's
    // `keys/`, ed25519.
    let types = |repository| root_key_types(&origin, repository);
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        types("image"),
        pairs(&[
            ("root", "ecdsa"),
            ("targets", "ecdsa"),
            ("snapshot", "ed25519"),
            ("timestamp", "ed25519")
        ])
    );
    assert_eq!(
        types("director")[0],
        ("root".to_owned(), "ecdsa".to_owned())
    );

    // Rotations make their new keys in the token too, of the type asked for.
    origin::admin::rotate(
        &origin,
        &actor(),
        "image",
        "targets",
        &NewKey::Make(KeyType::RsaPssSha256),
    )
    .unwrap();
    origin::admin::rotate(
        &origin,
        &actor(),
        "director",
        "root",
        &NewKey::Make(KeyType::Ed25519),
    )
    .unwrap();
    // And the director's online targets key, a file, to ECDSA: Uptane's director keys may be
    // any type.
    origin::admin::rotate(
        &origin,
        &actor(),
        "director",
        "targets",
        &NewKey::Make(KeyType::EcdsaP256),
    )
    .unwrap();
    assert_eq!(types("image")[1], ("targets".to_owned(), "rsa".to_owned()));
    assert_eq!(
        types("director")[0],
        ("root".to_owned(), "ed25519".to_owned())
    );
    assert_eq!(
        types("director")[1],
        ("targets".to_owned(), "ecdsa".to_owned())
    );
    // A key file is refused for a key kept in a token, before anything is signed.
    let file = w.join("supplier.json");
    origin::keys::create(&file).unwrap();
    let before = origin.latest("image", "root").unwrap().0;
    let refused = origin::admin::rotate(&origin, &actor(), "image", "root", &NewKey::File(file))
        .map_err(|error| format!("{error:#}"))
        .unwrap_err();
    assert!(refused.contains("takes no key from a file"), "{refused}");
    assert_eq!(origin.latest("image", "root").unwrap().0, before);

    // No offline key is on disk: the origin directory holds the online keys only.
    let mut names: Vec<String> = std::fs::read_dir(origin.dir.join("keys"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names
            .iter()
            .all(|name| !name.contains("root") && !name.starts_with("image-targets")),
        "{names:?}"
    );
    // The token holds them, and the retired ones, and lets none out.
    for label in [
        "image-root",
        "image-targets",
        "image-targets.retired-v1",
        "director-root",
        "director-root.retired-v1",
    ] {
        let key = store.load(label).unwrap();
        assert!(!key.public_key().id().is_empty(), "{label}");
    }
    let error = format!("{:#}", store.load("image-snapshot").unwrap_err());
    assert!(error.contains("holds 0 private keys labelled"), "{error}");

    // A release and an assignment, signed with the token's keys.
    let v1 = noise(300_000, 1);
    let mut v2 = v1.clone();
    v2[1000] ^= 1;
    release(&origin, &Release::new("ecu/gw-1.bin", &v1, "gw-v1", 1)).unwrap();
    release(&origin, &Release::new("ecu/gw-2.bin", &v2, "gw-v1", 2)).unwrap();
    let vin = "HSM-0";
    assign_gateway(&origin, vin, "GW-HSM-0", "ecu/gw-2.bin", Priority::Fix);
    assert!(origin::admin::verify(&origin).unwrap().is_empty());

    // A depot serves both repositories; the vehicle verifies and installs over the mesh.
    let depot_dir = w.join("depot");
    import_repo(&depot_dir, "image", &origin.dir.join("image"));
    import_repo(
        &depot_dir,
        &format!("director/{vin}"),
        &origin.dir.join(format!("director/vehicles/{vin}")),
    );
    let depot = DepotDaemon::serve(&depot_dir);
    // The ECU checks the director's targets itself, with the director's ECDSA targets key.
    let director_key = origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .public_text();
    // The vehicle's primary key is ECDSA P-256, its ECU's RSA: registered as PEM public keys,
    // kept by the vehicle as PKCS #8 PEM files.
    let (primary_private, primary_public) = pem_pair(w, "primary", KeyType::EcdsaP256);
    let (ecu_private, ecu_public) = pem_pair(w, "ecu", KeyType::RsaPssSha256);
    let director = DirectorService::start(&origin);
    register_vehicle_with_keys(&director, vin, "GW-HSM-0", (&primary_public, &ecu_public));
    let image_root = origin.dir.join("image/metadata/1.root.json");
    let director_root = origin.dir.join("director/metadata/1.root.json");
    let config = gateway_vehicle(
        &w.join(vin),
        &GatewayVehicle {
            vin,
            installed: &v1,
            director_key: &director_key,
            keys: (&primary_private, &ecu_private),
            depot: &depot.addr.to_string(),
            roots: (&image_root, &director_root),
            link: "class = \"yard-wifi\"",
            health: "exit 0",
            director: Some((&director.url, &director.ca)),
            mesh: None,
        },
    );
    let status = check_once(&config);
    assert_eq!(status["step"], "finished", "{status}");
    assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
    assert_eq!(
        status["ecus"]["GW-HSM-0"]["image"], "ecu/gw-2.bin",
        "{status}"
    );
    // The director checked the manifest against the registered ECDSA and RSA keys.
    assert_eq!(status["report_sent"]["via"], "director", "{status}");
    assert_eq!(status["report_sent"]["verdict"], "accepted", "{status}");
    let registry = registry(&director);
    let record = registry
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vin"] == vin)
        .unwrap();
    assert_eq!(record["ecus"][0]["installed"], "ecu/gw-2.bin", "{record}");
}

/// A new key of `kind`: its private half as a PKCS #8 PEM and its public half as a PEM public
/// key (made by `origin keygen`'s code, read from the key file it writes).
fn pem_pair(w: &Path, name: &str, kind: KeyType) -> (String, String) {
    let path = w.join(format!("{name}.json"));
    origin::keys::create_pair(&path, kind).unwrap();
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let pem = |half: &str| file["keyval"][half].as_str().unwrap().to_owned();
    (pem("private"), pem("public"))
}

/// Who the test acts as, for the audit log.
fn actor() -> origin::Actor {
    origin::Actor::new("test").unwrap()
}
