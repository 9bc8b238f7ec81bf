//! `vehicle-peer provision` (`vehicle_peer::provision`) makes a bench vehicle that works as it
//! is: from the origin's root metadata and the image its ECU runs, the vehicle's keys, banks,
//! configuration and registration file; the registration is what the director's registry reads
//! (`origin vehicle register --file`), and the agent, started from the vehicle.toml made,
//! installs the release the director assigns through a depot daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::serving_origin;
use depotmesh_tests::director::assign_gateway;
use depotmesh_tests::release::{Release, new_origin, release};
use depotmesh_tests::vehicle::wait_for_image;
use node::policy::Priority;
use proto::tuf::signer::Signer as _;
use vehicle_peer::provision::{EcuSpec, ProvisionArgs, provision};

#[test]
fn a_provisioned_bench_vehicle_registers_and_installs_what_the_director_assigns() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = new_origin(w, node::clock::now());
    let v1 = noise(1 << 20, 1);
    let mut v2 = v1.clone();
    v2[1000..2000].fill(7);
    release(&origin, &Release::new("ecu/gw-1.bin", &v1, "gw-v1", 1)).unwrap();
    release(&origin, &Release::new("ecu/gw-2.bin", &v2, "gw-v1", 2)).unwrap();
    let (vin, serial) = ("BENCH-1", "GW-BENCH-1");
    assign_gateway(&origin, vin, serial, "ecu/gw-2.bin", Priority::Fix);
    let depot = serving_origin(&w.join("depot"), &origin, &[vin]);

    let image_file = w.join("gw-1.bin");
    fs::write(&image_file, &v1).unwrap();
    let dir = w.join("bench");
    let ecus = [EcuSpec {
        serial: serial.into(),
        hardware_id: "gw-v1".into(),
        target: "ecu/gw-1.bin".into(),
        image: image_file.clone(),
        release_counter: 1,
    }];
    let mesh = node::mesh_config::MeshSection {
        open: true,
        ..Default::default()
    };
    let args = ProvisionArgs {
        dir: &dir,
        vin,
        peers: std::slice::from_ref(&depot.addr),
        listen: &["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        image_root: &origin.dir.join("image/metadata/1.root.json"),
        director_root: &origin.dir.join("director/metadata/1.root.json"),
        ecus: &ecus,
        bank_bytes: None,
        mesh: &mesh,
        registry: ("eu-north", "tractor", "depot-1"),
    };
    let made = provision(&args).unwrap();

    // The registration is what the registry reads, with the keys the vehicle signs with.
    let registration = origin::operator_file::vehicle(&dir.join("registration.toml")).unwrap();
    let registration = serde_json::to_value(&registration).unwrap();
    assert_eq!(registration["vin"], vin, "{registration}");
    assert_eq!(
        registration["primary_key"], made["primary_key"],
        "{registration}"
    );
    assert_eq!(registration["ecus"][0]["serial"], serial, "{registration}");
    assert_eq!(
        registration["ecus"][0]["public_key"], made["ecu_keys"][serial],
        "{registration}"
    );
    assert_eq!(registration["peer"], made["peer"], "{registration}");
    // The ECU checks director targets with the director's targets key, from its root.
    let ecu_toml = fs::read_to_string(dir.join(format!("ecu-{serial}/ecu.toml"))).unwrap();
    let director_key = origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .public_text();
    assert!(ecu_toml.contains(&director_key), "{ecu_toml}");
    // Keys are readable by their owner only.
    use std::os::unix::fs::PermissionsExt as _;
    for key in [
        dir.join("primary.key"),
        dir.join(format!("ecu-{serial}/ecu.key")),
    ] {
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }

    // The agent from the vehicle.toml made: v2 through the depot, committed.
    wait_for_image(&dir.join("vehicle.toml"), serial, "ecu/gw-2.bin");

    // One agent at a time on a data directory: a second is told so.
    let load = || vehicle_peer::config::load(&dir.join("vehicle.toml")).unwrap();
    let first = vehicle_peer::daemon::Daemon::open(load()).unwrap();
    let second = vehicle_peer::daemon::Daemon::open(load()).unwrap_err();
    assert!(
        format!("{second:#}").contains("another vehicle-peer runs on"),
        "{second:#}"
    );
    drop(first);

    // Made once: a second run refuses rather than replace the keys; bad input is named.
    let again = provision(&args).unwrap_err().to_string();
    assert!(again.contains("holds a vehicle already"), "{again}");
    let not_root = provision(&ProvisionArgs {
        dir: &w.join("other"),
        image_root: &image_file,
        ..args
    })
    .unwrap_err()
    .to_string();
    assert!(
        not_root.contains("--image-root") && not_root.contains("not a usable root"),
        "{not_root}"
    );
    assert!(!w.join("other/vehicle.toml").exists());
}
