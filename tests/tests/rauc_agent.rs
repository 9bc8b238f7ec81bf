//! A vehicle whose gateway RAUC installs (`banks.kind = "rauc"`), end to end on loopback: the
//! origin releases a RAUC bundle as the gateway's image and the director assigns it; a depot
//! daemon serves both repositories; the vehicle agent (`vehicle_peer::daemon`, boot mode
//! `reboot`) fetches the bundle over the mesh, checks it against the Uptane approval and hands
//! it to Debian's real `rauc`. After the reboot into the new slot its health check passes, RAUC
//! is told to keep the slot, and the signed vehicle manifest reports the bundle; at the next
//! start the agent marks the running slot good again (RAUC's bootloader spends a try at every
//! boot). The RAUC system is `vehicle-peer/tests/rauc_system` (private D-Bus, file-backed
//! slots, test keyring, RAUC's U-Boot semantics through its custom bootloader backend); a
//! reboot here is the test's power cycle between two runs of the agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../origin/tests/common/debian.rs"]
mod debian;
#[path = "../../vehicle-peer/tests/rauc_system/mod.rs"]
mod rauc_system;

use std::fs;

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::serving_origin;
use depotmesh_tests::director::{ECU_SEED, PRIMARY_SEED, assign_gateway};
use depotmesh_tests::release::{Release, new_origin, release};
use depotmesh_tests::vehicle::check_once;
use node::policy::Priority;
use proto::tuf::signer::Signer as _;
use rauc_system::{SLOT_BYTES, System};

#[test]
#[allow(clippy::too_many_lines)]
fn a_rauc_gateway_fetches_its_bundle_from_the_depot_and_rauc_installs_it_through_a_trial() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = new_origin(w, node::clock::now());
    let mut system = System::start();

    // What the gateway runs (slot A), and the release: a RAUC bundle signed by the test
    // keyring, released as the gateway's next image.
    let v1 = noise(SLOT_BYTES / 2, 1);
    let v2 = noise(SLOT_BYTES / 2, 2);
    let bundle = system.bundle("v2", "2.0.0", &v2, (&system.cert, &system.key));
    let bundle_bytes = fs::read(&bundle).unwrap();
    release(&origin, &Release::new("ecu/gw-1.bin", &v1, "gw-v1", 1)).unwrap();
    release(
        &origin,
        &Release::new("ecu/gw-2.raucb", &bundle_bytes, "gw-v1", 2),
    )
    .unwrap();
    let (vin, serial) = ("RAUC-0", "GW-RAUC-0");
    assign_gateway(&origin, vin, serial, "ecu/gw-2.raucb", Priority::Fix);

    // The depot serves the image repository and the vehicle's director repository.
    let depot = serving_origin(&w.join("depot"), &origin, &[vin]);

    // The vehicle: one ECU, installed by RAUC.
    let dir = w.join("vehicle");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("ecu.key"), hex::encode([ECU_SEED; 32])).unwrap();
    let rauc = system.rauc();
    let director_key = origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .public_text();
    let ecu_toml = dir.join("ecu.toml");
    fs::write(
        &ecu_toml,
        format!(
            "serial = \"{serial}\"\nhardware_id = \"gw-v1\"\nkey_file = {:?}\njournal = {:?}\n\
             director_targets_key = {}\n\
             [installed]\ntarget = \"ecu/gw-1.bin\"\nsha256 = \"{}\"\nrelease_counter = 1\n\
             [banks]\nkind = \"rauc\"\nclass = \"rootfs\"\nrauc_conf = {:?}\nrauc_program = {:?}\n\
             [health]\ncommand = [\"sh\", \"-c\", \"test \\\"$DEPOTMESH_SLOT\\\" = B\"]\n\
             timeout_secs = 30\n",
            dir.join("ecu.key").display().to_string(),
            dir.join("ecu-journal").display().to_string(),
            serde_json::Value::String(director_key),
            proto::tuf::build::TargetDigests::of(&v1).sha256,
            rauc.conf.as_ref().unwrap().display().to_string(),
            rauc.program.display().to_string(),
        ),
    )
    .unwrap();
    let image_root = origin.dir.join("image/metadata/1.root.json");
    let director_root = origin.dir.join("director/metadata/1.root.json");
    let depot_addr = depot.addr.to_string();
    let config = vehicle_peer::simulated::loopback_vehicle(
        &dir,
        &vehicle_peer::simulated::LoopbackVehicle {
            vin,
            depot: &depot_addr,
            roots: (&image_root, &director_root),
            director: None,
            primary_key: &hex::encode([PRIMARY_SEED; 32]),
            ecus: std::slice::from_ref(&ecu_toml),
            mesh: None,
            extra: "stall_timeout_secs = 20\n[link]\nclass = \"yard-wifi\"",
        },
    )
    .unwrap();
    // A gateway reboots for real: the test power-cycles the RAUC system between two runs.
    let text = fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "mode = \"simulated\"",
        "mode = \"reboot\"\nreboot_command = [\"true\"]",
    );
    fs::write(&config, text).unwrap();

    // First run: the bundle comes from the depot, RAUC writes slot B and boots it next.
    let status = check_once(&config);
    let downloads = status["downloads"].as_array().unwrap();
    assert_eq!(downloads.len(), 1, "{status}");
    assert_eq!(downloads[0]["payload"], "image", "{status}");
    assert_eq!(downloads[0]["length"], bundle_bytes.len(), "{status}");
    assert!(
        system.slot_holds("B", &v2),
        "RAUC wrote the bundle's image into slot B"
    );
    assert!(!system.slot_holds("A", &v2));
    assert_eq!(system.env_var("BOOT_ORDER"), "B A");
    assert_eq!(status["ecus"][serial]["slot"], "A", "{status}");
    assert_eq!(status["ecus"][serial]["image"], "ecu/gw-1.bin", "{status}");
    assert_eq!(status["ecus"][serial]["rauc"]["primary"], "B", "{status}");

    // The reboot: the bootloader starts B (one of its three tries); the agent starts in the
    // trial, runs the health check in B, and RAUC keeps B.
    system.power_on();
    assert_eq!(system.booted, "B");
    let status = check_once(&config);
    assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
    assert_eq!(
        status["ecus"][serial]["image"], "ecu/gw-2.raucb",
        "{status}"
    );
    assert_eq!(status["ecus"][serial]["slot"], "B", "{status}");
    assert_eq!(
        system.env_var("BOOT_B_LEFT"),
        "3",
        "mark-good gave B its tries back"
    );
    // The vehicle manifest the agent signed reports the bundle for the ECU.
    let reports: Vec<_> = fs::read_dir(dir.join("data/reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let manifest = fs::read_to_string(&reports[0]).unwrap();
    assert!(
        manifest.contains("ecu/gw-2.raucb") && manifest.contains(serial),
        "{manifest}"
    );

    // The next boot spends a try of B; the agent's start gives it back (outside a trial).
    system.power_on();
    assert_eq!(system.booted, "B");
    assert_eq!(system.env_var("BOOT_B_LEFT"), "2");
    let status = check_once(&config);
    assert_eq!(system.env_var("BOOT_B_LEFT"), "3");
    assert_eq!(
        status["ecus"][serial]["image"], "ecu/gw-2.raucb",
        "{status}"
    );
    assert_eq!(status["step"], "ended", "{status}");
}
