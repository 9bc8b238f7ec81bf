//! `vehicle-peer provision` (`vehicle_peer::provision`) makes a bench vehicle that works as it
//! is: from the origin's root metadata and the image its ECU runs, the vehicle's keys, banks,
//! configuration and registration file; the registration is what the director's registry reads
//! (`origin vehicle register --file`), and the agent, started from the vehicle.toml made,
//! installs the release the director assigns through a depot daemon.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::serving_origin;
use depotmesh_tests::director::{DirectorService, assign_gateway, register, registry};
use depotmesh_tests::release::{Release, new_origin, release};
use depotmesh_tests::vehicle::{check_once, wait_for_image};
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
    let director = DirectorService::start(&origin);

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
        director: Some((&director.url, Some(&director.ca))),
    };
    let made = provision(&args).unwrap();
    // The director's CA is the vehicle's own copy.
    let config = vehicle_peer::config::load(&dir.join("vehicle.toml")).unwrap();
    assert_eq!(config.director_url.as_deref(), Some(director.url.as_str()));
    assert_eq!(config.director_ca, Some(dir.join("director-ca.pem")));
    assert_eq!(
        fs::read(dir.join("director-ca.pem")).unwrap(),
        fs::read(&director.ca).unwrap()
    );

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

    // Registered as a provisioning system does, from the file made.
    let registration = origin::operator_file::vehicle(&dir.join("registration.toml")).unwrap();
    register(&director, &serde_json::to_value(&registration).unwrap());

    // The agent from the vehicle.toml made: v2 through the depot, committed, and its report
    // sent straight to the director.
    wait_for_image(&dir.join("vehicle.toml"), serial, "ecu/gw-2.bin");
    let registry = registry(&director);
    assert_eq!(
        registry[0]["last_report"]["outcome"], "committed",
        "{registry}"
    );

    // One agent at a time on a data directory: a second is told so.
    let load = || vehicle_peer::config::load(&dir.join("vehicle.toml")).unwrap();
    let first = vehicle_peer::daemon::Daemon::open(load()).unwrap();
    let second = vehicle_peer::daemon::Daemon::open(load()).unwrap_err();
    assert!(
        format!("{second:#}").contains("another vehicle-peer runs on"),
        "{second:#}"
    );
    drop(first);

    // systemd stops the agent with SIGTERM, whatever it is doing: one that comes during a
    // later check (here a link probe that takes 2 s, checks a second apart) ends the agent at
    // the check's end, cleanly.
    let marker = w.join("probing");
    let probe = format!("touch {}; sleep 2; echo yard-wifi", marker.display());
    let toml = fs::read_to_string(dir.join("vehicle.toml")).unwrap();
    let toml = toml
        .replace(
            "[link]\nclass = \"yard-wifi\"",
            &format!("[link]\ncommand = [\"sh\", \"-c\", {probe:?}]"),
        )
        .replacen("\nvin = ", "\ncheck_interval_secs = 1\nvin = ", 1);
    fs::write(dir.join("vehicle.toml"), toml).unwrap();
    stops_on_sigterm_during_a_check(&dir.join("vehicle.toml"), &marker);

    // Every start is a (simulated) boot, which spends one of the running slot's tries as
    // U-Boot's script does; outside a trial the agent gives it back, so the committed slot
    // keeps running however often the agent starts (it fell back to v1 after three).
    let toml = fs::read_to_string(dir.join("vehicle.toml")).unwrap();
    let toml = toml.replace(
        &format!("command = [\"sh\", \"-c\", {probe:?}]"),
        "class = \"yard-wifi\"",
    );
    fs::write(dir.join("vehicle.toml"), toml).unwrap();
    for _ in 0..5 {
        drop(vehicle_peer::daemon::Daemon::open(load()).unwrap());
    }
    let status = check_once(&dir.join("vehicle.toml"));
    assert_eq!(status["ecus"][serial]["slot"], "B", "{status}");
    assert_eq!(status["ecus"][serial]["image"], "ecu/gw-2.bin", "{status}");
    let ecu_config =
        vehicle_peer::install::load_config(&dir.join(format!("ecu-{serial}/ecu.toml"))).unwrap();
    let mut ecu = vehicle_peer::install::open_ecu(&ecu_config).unwrap();
    let boot = ecu.boot.state().unwrap();
    let b = vehicle_peer::boot::Slot::new("B").unwrap();
    assert_eq!(boot.order[0], b, "{boot:?}");
    assert_eq!(boot.left[&b], vehicle_peer::boot::DEFAULT_TRIES, "{boot:?}");

    // Made once: a second run refuses rather than replace the keys; bad input is named.
    let again = provision(&args).unwrap_err().to_string();
    assert!(again.contains("holds a vehicle already"), "{again}");
    let not_root = provision(&ProvisionArgs {
        dir: &w.join("other"),
        image_root: &image_file,
        director: None,
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

/// Runs the `vehicle-peer` binary on `config` (its link probe touches `marker`, then takes a
/// while), sends SIGTERM while the second check's probe runs, and checks that the agent ends cleanly soon
/// after. The binary is the one beside this test (target/debug/, built by `cargo test
/// --workspace`).
fn stops_on_sigterm_during_a_check(config: &std::path::Path, marker: &std::path::Path) {
    use std::time::{Duration, Instant};
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("vehicle-peer");
    assert!(binary.is_file(), "{} is not built", binary.display());
    let mut agent = std::process::Command::new(&binary)
        .arg("--config")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The second check's probe: the agent has slept once since it started.
    for _ in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "the agent never probed its link");
            std::thread::sleep(Duration::from_millis(20));
        }
        fs::remove_file(marker).unwrap();
    }
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // The probe ends 2 s after it began; then the check, then the stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            agent.kill().unwrap();
            panic!("SIGTERM during a check was lost: the agent still runs 20 s later");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
}
