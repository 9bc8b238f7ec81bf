//! The origin on object storage (issue 27): its repositories and blobs in a real S3-API
//! server (moto, started by the test; [`depotmesh_tests::s3`]), the credentials in the
//! environment as a deployment gives them. `origin init --storage s3://…` records the store;
//! release, assignment, the mesh node (which imports from a local copy of the store), a
//! depot's prefetch and a vehicle's update then work as on a local origin, and the origin
//! directory holds no repository file at all. A second machine with only the keys and
//! `storage.toml` builds a delta from an image it never had, fetched from the store and
//! checked against its signed BLAKE3.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::prefetching_depot;
use depotmesh_tests::director::assign_gateway;
use depotmesh_tests::release::{Release, release};
use depotmesh_tests::s3::{BUCKET, in_s3, options};
use depotmesh_tests::vehicle::{check_once, fleet_gateway, wait_for_image};
use node::policy::Priority;
use origin::Origin;
use origin::storage::{Storage, StorageConfig};

#[test]
fn machines_sharing_a_bucket_write_one_audit_chain_even_when_they_race() {
    let work = tempfile::tempdir().unwrap();
    in_s3(
        "machines_sharing_a_bucket_write_one_audit_chain_even_when_they_race",
        work.path(),
        |endpoint| {
            let w = work.path();
            let first = s3_origin(w, endpoint, "audit");
            origin::audit::key(&first).unwrap();
            let other = w.join("other");
            std::fs::create_dir_all(&other).unwrap();
            std::fs::copy(first.dir.join("storage.toml"), other.join("storage.toml")).unwrap();
            std::fs::create_dir_all(other.join("keys")).unwrap();
            std::fs::copy(
                first.dir.join("keys/audit-log.json"),
                other.join("keys/audit-log.json"),
            )
            .unwrap();
            let second = Origin::open(other, None, first.now).unwrap();
            // Four writers, two per machine, ten entries each, all at once.
            std::thread::scope(|scope| {
                for (n, origin) in [&first, &second, &first, &second].into_iter().enumerate() {
                    scope.spawn(move || {
                        for i in 0..10 {
                            let detail = serde_json::json!({"writer": n, "i": i});
                            origin::audit::append(origin, "racer", "race", detail).unwrap();
                        }
                    });
                }
            });
            assert_eq!(origin::audit::verify_origin(&first, None).unwrap(), 40);
            let log = origin::audit::entries_of(&second).unwrap();
            let mut written: Vec<(u64, u64)> = log
                .iter()
                .map(|e| {
                    (
                        e["detail"]["writer"].as_u64().unwrap(),
                        e["detail"]["i"].as_u64().unwrap(),
                    )
                })
                .collect();
            written.sort_unstable();
            let expected: Vec<(u64, u64)> =
                (0..4).flat_map(|n| (0..10).map(move |i| (n, i))).collect();
            assert_eq!(written, expected, "an entry lost or written twice");
            // An entry edited in the bucket is named by the verification.
            let name = "audit/00000000000000000007.json";
            let bytes = first.storage.read(name).unwrap().unwrap();
            let edited = String::from_utf8(bytes).unwrap().replace("racer", "RACER");
            first.storage.write(name, edited.as_bytes()).unwrap();
            let error = origin::audit::verify_origin(&first, None)
                .unwrap_err()
                .to_string();
            assert!(error.contains("entry 7"), "{error}");
        },
    );
}

#[test]
fn releases_racing_on_two_machines_leave_a_repository_that_verifies() {
    let work = tempfile::tempdir().unwrap();
    in_s3(
        "releases_racing_on_two_machines_leave_a_repository_that_verifies",
        work.path(),
        |endpoint| {
            let w = work.path();
            let first = s3_origin(w, endpoint, "race");
            origin::init(&first, None).unwrap();
            let other = w.join("other");
            std::fs::create_dir_all(&other).unwrap();
            for file in ["storage.toml", "keys"] {
                let status = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(first.dir.join(file))
                    .arg(&other)
                    .status()
                    .unwrap();
                assert!(status.success(), "copying {file}");
            }
            let second = Origin::open(other, first.offline_keys.clone(), first.now).unwrap();
            // Each machine releases three images at once with the other; a version taken
            // by one is refused to the other, which says so and signs nothing on top.
            let results: Vec<(String, Result<(), String>)> = std::thread::scope(|scope| {
                let runs: Vec<_> = [("a", &first), ("b", &second)]
                    .into_iter()
                    .map(|(machine, origin)| {
                        scope.spawn(move || {
                            (1..=3u8)
                                .map(|n| {
                                    let name = format!("ecu/{machine}-{n}.bin");
                                    let image = noise(20_000, u64::from(n) + 10);
                                    let signed = release(
                                        origin,
                                        &Release::new(&name, &image, "gw-v1", u64::from(n)),
                                    );
                                    (name, signed.map(|_| ()).map_err(|e| format!("{e:#}")))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                runs.into_iter()
                    .flat_map(|run| run.join().unwrap())
                    .collect()
            });
            let refused = results.iter().filter(|(_, r)| r.is_err()).count();
            println!("racing releases: {refused} of 6 refused as taken");
            for (name, result) in &results {
                if let Err(error) = result {
                    assert!(
                        error.contains("versions are never rewritten"),
                        "{name}: {error}"
                    );
                }
            }
            assert!(
                origin::admin::verify(&first).unwrap().is_empty(),
                "{:?}",
                origin::admin::verify(&first)
            );
            let (_, targets) = first.latest("image", "targets").unwrap();
            for (name, result) in &results {
                if result.is_ok() {
                    assert!(targets["targets"].get(name).is_some(), "{name} not listed");
                }
            }
            origin::audit::verify_origin(&first, None).unwrap();

            // A third machine without the origin's audit key may not start a chain of its own
            // in the middle of the shared one.
            let third = w.join("third");
            std::fs::create_dir_all(&third).unwrap();
            std::fs::copy(first.dir.join("storage.toml"), third.join("storage.toml")).unwrap();
            let third = Origin::open(third, None, first.now).unwrap();
            let error = origin::audit::append(&third, "mallory", "release", serde_json::json!({}))
                .unwrap_err()
                .to_string();
            assert!(error.contains("copy keys/"), "{error}");
            origin::audit::verify_origin(&first, None).unwrap();
        },
    );
}

/// An origin in `work/origin` whose repositories are in the bucket under `prefix`.
fn s3_origin(work: &Path, endpoint: &str, prefix: &str) -> Origin {
    let dir = work.join("origin");
    let config =
        StorageConfig::from_flags(&format!("s3://{BUCKET}/{prefix}"), &options(endpoint)).unwrap();
    origin::storage::record(&dir, &config).unwrap();
    let origin = Origin::open(dir, Some(work.join("usb").into()), node::clock::now()).unwrap();
    assert!(origin.storage.local_dir().is_none(), "{:?}", origin.storage);
    origin
}

#[test]
fn storage_on_s3_reads_writes_lists_and_streams_large_objects() {
    let work = tempfile::tempdir().unwrap();
    in_s3(
        "storage_on_s3_reads_writes_lists_and_streams_large_objects",
        work.path(),
        |endpoint| {
            let config =
                StorageConfig::from_flags(&format!("s3://{BUCKET}/unit"), &options(endpoint))
                    .unwrap();
            let storage = Storage::open(&config, "test").unwrap();
            assert_eq!(storage.read("image/metadata/1.root.json").unwrap(), None);
            assert!(!storage.exists("image/metadata/1.root.json").unwrap());
            storage
                .write("image/metadata/1.root.json", b"root")
                .unwrap();
            storage
                .write("image/metadata/timestamp.json", b"t1")
                .unwrap();
            assert!(storage.exists("image/metadata/1.root.json").unwrap());
            assert_eq!(
                storage
                    .read("image/metadata/1.root.json")
                    .unwrap()
                    .as_deref(),
                Some(&b"root"[..])
            );
            // Rewritten in place: another version.
            let (_, first) = storage
                .read_versioned("image/metadata/timestamp.json")
                .unwrap()
                .unwrap();
            storage
                .write("image/metadata/timestamp.json", b"t2")
                .unwrap();
            let (bytes, second) = storage
                .read_versioned("image/metadata/timestamp.json")
                .unwrap()
                .unwrap();
            assert_eq!(bytes, b"t2");
            assert_ne!(first, second);

            // 40 MiB: uploaded in parts, downloaded streamed, byte for byte.
            let big = noise(40 << 20, 7);
            let file = work.path().join("big.bin");
            std::fs::write(&file, &big).unwrap();
            storage
                .upload("image/targets/gw/abc.big.bin", &file)
                .unwrap();
            let back = work.path().join("back/big.bin");
            assert!(
                storage
                    .download("image/targets/gw/abc.big.bin", &back)
                    .unwrap()
            );
            assert!(std::fs::read(&back).unwrap() == big, "the download differs");
            assert!(!storage.download("image/targets/none", &back).unwrap());

            assert_eq!(storage.list("image").unwrap(), ["metadata", "targets"]);
            assert_eq!(
                storage.list("image/metadata").unwrap(),
                ["1.root.json", "timestamp.json"]
            );
            let all: Vec<(String, u64)> = storage
                .list_all("image")
                .unwrap()
                .into_iter()
                .map(|listed| (listed.key, listed.size))
                .collect();
            assert_eq!(
                all,
                [
                    ("image/metadata/1.root.json".to_owned(), 4),
                    ("image/metadata/timestamp.json".to_owned(), 2),
                    ("image/targets/gw/abc.big.bin".to_owned(), 40 << 20),
                ]
            );
            assert!(storage.list("director").unwrap().is_empty());

            // A bucket that does not exist: the error names the object's URL.
            let missing =
                StorageConfig::from_flags("s3://no-such-bucket/x", &options(endpoint)).unwrap();
            let error = Storage::open(&missing, "test")
                .unwrap()
                .write("image/metadata/1.root.json", b"x")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("s3://no-such-bucket/x/image/metadata/1.root.json"),
                "{error}"
            );
            // Plain HTTP only when the options say so.
            let plain = StorageConfig::from_flags(
                &format!("s3://{BUCKET}/unit"),
                &[format!("endpoint={endpoint}")],
            )
            .unwrap();
            let refused = Storage::open(&plain, "test")
                .and_then(|storage| storage.read("image/metadata/1.root.json"));
            assert!(refused.is_err(), "plain HTTP was used without allow_http");
        },
    );
}

#[test]
fn an_origin_on_s3_releases_assigns_and_a_vehicle_updates_through_a_depot() {
    let work = tempfile::tempdir().unwrap();
    in_s3(
        "an_origin_on_s3_releases_assigns_and_a_vehicle_updates_through_a_depot",
        work.path(),
        |endpoint| {
            let w = work.path();
            let origin = s3_origin(w, endpoint, "prod");
            origin::init(&origin, None).unwrap();
            // Initialising twice is refused: the store already holds the repositories.
            let again = origin::init(&origin, None).unwrap_err().to_string();
            assert!(again.contains("already initialised"), "{again}");
            let v1 = noise(300_000, 1);
            let mut v2 = v1.clone();
            v2[1000] ^= 1;
            let mut v3 = v2.clone();
            v3[2000] ^= 1;
            release(&origin, &Release::new("ecu/gw-1.bin", &v1, "gw-v1", 1)).unwrap();

            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let mesh = runtime
                .block_on(origin::mesh::start(
                    &origin,
                    vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                ))
                .unwrap();
            let upstream = mesh.addrs.first().unwrap().to_string();

            // Signed after the node started: v2 with a delta from v1.
            release(
                &origin,
                &Release {
                    deltas_from: &["ecu/gw-1.bin"],
                    ..Release::new("ecu/gw-2.bin", &v2, "gw-v1", 2)
                },
            )
            .unwrap();
            let vin = "S3-0";
            assign_gateway(&origin, vin, "GW-S3-0", "ecu/gw-2.bin", Priority::Fix);
            let published = |name: &str| {
                let deadline = Instant::now() + Duration::from_secs(30);
                while mesh.store.resolve(name).is_none() {
                    assert!(Instant::now() < deadline, "{name} not published in 30 s");
                    std::thread::sleep(Duration::from_millis(50));
                }
            };
            published("image/metadata/3.targets.json");
            published(&format!("director/{vin}/metadata/timestamp.json"));

            // Nothing of the repositories is in the origin directory: all of it is in the
            // bucket.
            for local in ["image", "director"] {
                assert!(!origin.dir.join(local).exists(), "{local}/ on local disk");
            }
            let stored = origin.storage.list_all("image/targets").unwrap();
            assert!(stored.len() >= 4, "{stored:?}");
            assert_eq!(origin.storage.list_all("image/deltas").unwrap().len(), 1);
            assert!(origin::admin::verify(&origin).unwrap().is_empty());

            // Roots reach the depot and the vehicle as an operator copies them.
            let image_root = w.join("image-root.json");
            let director_root = w.join("director-root.json");
            assert!(
                origin
                    .storage
                    .download("image/metadata/1.root.json", &image_root)
                    .unwrap()
            );
            assert!(
                origin
                    .storage
                    .download("director/metadata/1.root.json", &director_root)
                    .unwrap()
            );
            let depot = prefetching_depot(
                &origin,
                &w.join("depot"),
                &upstream,
                (&image_root, &director_root),
                &[vin],
            );
            depot.wait_prefetched(2);

            let config = fleet_gateway(
                &origin,
                &w.join(vin),
                vin,
                &v1,
                &depot.addr.to_string(),
                (&image_root, &director_root),
            );
            let status = check_once(&config);
            assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
            assert_eq!(
                status["ecus"]["GW-S3-0"]["image"], "ecu/gw-2.bin",
                "{status}"
            );

            // Another machine (the keys and storage.toml, no work store): v3 with a delta
            // from v2, which it never held, fetched from the bucket and checked.
            let other = w.join("other");
            std::fs::create_dir_all(&other).unwrap();
            for file in ["storage.toml", "keys"] {
                let status = std::process::Command::new("cp")
                    .args(["-a"])
                    .arg(origin.dir.join(file))
                    .arg(&other)
                    .status()
                    .unwrap();
                assert!(status.success(), "copying {file}");
            }
            let second = Origin::open(other, origin.offline_keys.clone(), origin.now).unwrap();
            release(
                &second,
                &Release {
                    deltas_from: &["ecu/gw-2.bin"],
                    ..Release::new("ecu/gw-3.bin", &v3, "gw-v1", 3)
                },
            )
            .unwrap();
            // Noted in the other machine's journal only: the node finds it by its poll of
            // the image repository in the store. The director, here, assigns it.
            assign_gateway(&origin, vin, "GW-S3-0", "ecu/gw-3.bin", Priority::Fix);
            published("image/metadata/4.targets.json");
            published(&format!("director/{vin}/metadata/2.targets.json"));
            let runs = depot.status()["prefetch"]["runs_ok"].as_u64().unwrap();
            depot.wait_prefetched(runs + 2);
            wait_for_image(&config, "GW-S3-0", "ecu/gw-3.bin");

            // One audit chain for both machines, in the bucket; no log on either's disk.
            let entries = origin::audit::verify_origin(&second, None).unwrap();
            let log = origin::audit::entries_of(&origin).unwrap();
            assert_eq!(log.len() as u64, entries);
            let releases: Vec<&str> = log
                .iter()
                .filter(|entry| entry["action"] == "release")
                .filter_map(|entry| entry["detail"]["target"].as_str())
                .collect();
            assert_eq!(
                releases,
                ["ecu/gw-1.bin", "ecu/gw-2.bin", "ecu/gw-3.bin"],
                "{log:?}"
            );
            assert!(!origin.dir.join("audit.log").exists());
            assert!(!second.dir.join("audit.log").exists());
            drop(mesh);
        },
    );
}
