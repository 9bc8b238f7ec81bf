//! Issue 7's vehicle agent end to end, on loopback: the origin releases v1 and v2 (with a delta
//! from v1) and the director assigns v2 to each vehicle with a signed priority; the origin's
//! cache serves the repositories; the depot daemon prefetches the image repository, the deltas
//! and its home vehicles' director repositories on its own; then vehicle agents
//! (`vehicle_peer::daemon`, real libp2p QUIC nodes, file-backed ECUs with U-Boot environments)
//! check in:
//! - three on the yard WiFi download the delta (not the image) from the depot and each other,
//!   install it through the flasher's trial boot and commit, and sign a version manifest that
//!   the director's check accepts;
//! - one whose new image fails its health check rolls back, reports it, and does not try again;
//! - on cellular, a feature update waits for WiFi (only metadata counted against the budget);
//!   while roaming, a security update installs, every byte counted against the month's budget.
//!
//! The origin's cache, the depot and the director service run in this test's process, through
//! the library calls their binaries make.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::{DepotDaemon, SERVED, depot_config, import_repo};
use depotmesh_tests::director::{
    DirectorService, ECU_SEED, PRIMARY_SEED, assign_gateway, register_vehicle, registry,
};
use depotmesh_tests::release::{Release, new_origin, release};
use depotmesh_tests::vehicle::{
    GatewayVehicle, check_once, downloaded, gateway_vehicle, seed_keys,
};
use node::policy::Priority;
use proto::tuf::build::TargetDigests;
use proto::tuf::signer::Signer as _;
use serde_json::Value;

#[test]
#[allow(clippy::too_many_lines)]
fn agents_download_deltas_from_the_yard_install_commit_or_roll_back_and_obey_the_link_policy() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = new_origin(w, node::clock::now());

    // v1 and v2: 1.5 MiB, v2 changes a few hundred scattered bytes and appends 20 KiB.
    let v1 = noise(3 << 19, 1);
    let mut v2 = v1.clone();
    for i in (0..v2.len()).step_by(4099) {
        v2[i] ^= 0x5a;
    }
    v2.extend_from_slice(&noise(20_000, 2));
    release(&origin, &Release::new("ecu/gw-1.bin", &v1, "gw-v1", 1)).unwrap();
    let options = delta::DeltaOptions {
        lzma_dict: false,
        threads: 1,
        ..Default::default()
    };
    release(
        &origin,
        &Release {
            deltas_from: &["ecu/gw-1.bin"],
            delta_options: options,
            ..Release::new("ecu/gw-2.bin", &v2, "gw-v1", 2)
        },
    )
    .unwrap();
    let deltas: Vec<_> = std::fs::read_dir(origin.dir.join("image/deltas"))
        .unwrap()
        .collect();
    assert_eq!(deltas.len(), 1);
    let delta_len = deltas[0].as_ref().unwrap().metadata().unwrap().len();
    assert!(delta_len < v2.len() as u64 / 10, "delta {delta_len} bytes");

    let yard = ["YARD-0", "YARD-1", "YARD-2"];
    let (sick, cellular, roaming) = ("SICK-0", "CELL-0", "ROAM-0");
    let mut vins: Vec<&str> = yard.to_vec();
    vins.extend([sick, cellular, roaming]);
    for vin in &vins {
        let priority = match *vin {
            v if v == cellular => Priority::Feature,
            v if v == roaming => Priority::Security,
            _ => Priority::Fix,
        };
        assign_gateway(&origin, vin, &format!("GW-{vin}"), "ecu/gw-2.bin", priority);
    }

    // The origin's cache: the image repository (targets and deltas) and each vehicle's
    // director repository, served by a depot-cache daemon.
    let upstream_dir = w.join("upstream");
    import_repo(&upstream_dir, "image", &origin.dir.join("image"));
    for vin in &vins {
        import_repo(
            &upstream_dir,
            &format!("director/{vin}"),
            &origin.dir.join(format!("director/vehicles/{vin}")),
        );
    }
    let upstream = DepotDaemon::start(&upstream_dir, &depot_config(&upstream_dir));

    let director_key = origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .public_text();
    // The director service: the vehicles are registered and send it their signed manifests,
    // directly or through the depot. The depot's relay address is not served yet: what the
    // depot takes waits in its queue, across a kill, until it is.
    let director = DirectorService::start(&origin);
    let director_url = director.url.clone();
    let director_ca = director.ca.clone();
    for vin in &vins {
        register_vehicle(&director, vin, &format!("GW-{vin}"));
    }
    let relay_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    // The depot prefetches on its own: the image repository with its delta, and its home
    // vehicles' director repositories.
    let image_root = origin.dir.join("image/metadata/1.root.json");
    let director_root = origin.dir.join("director/metadata/1.root.json");
    let depot_dir = w.join("depot");
    let depot_toml = format!(
        "{}[prefetch]\nupstream = [\"{}\"]\nroot = {:?}\ndirector_root = {:?}\nvehicles = {:?}\ninterval_secs = 3600\n\
         [relay]\ndirector_url = \"https://{relay_addr}\"\ndirector_ca = {:?}\nretry_secs = 1\n",
        depot_config(&depot_dir),
        upstream.addr,
        image_root.display().to_string(),
        director_root.display().to_string(),
        vins,
        director.ca.display().to_string(),
    );
    let depot = DepotDaemon::start(&depot_dir, &depot_toml);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = depot.status();
        // One run per repository: the image repository and each vehicle's.
        if status["prefetch"]["runs_ok"].as_u64() == Some(vins.len() as u64 + 1) {
            break;
        }
        assert_eq!(
            status["prefetch"]["runs_failed"].as_u64(),
            Some(0),
            "prefetch failed: {status}"
        );
        assert!(Instant::now() < deadline, "no prefetch in 120 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The vehicles never reach the origin's cache.
    drop(upstream);

    let roots = (image_root.as_path(), director_root.as_path());
    let seed_keys = seed_keys();
    let make = |vin: &str, depot: &str, link: &str, health: &str, director: Option<&str>| {
        gateway_vehicle(
            &w.join(vin),
            &GatewayVehicle {
                vin,
                installed: &v1,
                director_key: &director_key,
                keys: (&seed_keys.0, &seed_keys.1),
                depot,
                roots,
                link,
                health,
                director: director.map(|url| (url, director_ca.as_path())),
                mesh: None,
            },
        )
    };

    // Three on the yard WiFi at once, and one whose new image is unhealthy. YARD-0's route to
    // the director is down and YARD-1 has none: their reports go through the depot.
    let mut threads = Vec::new();
    for vin in yard.iter().chain([&sick]) {
        let health = if *vin == sick { "exit 1" } else { "exit 0" };
        let route = match *vin {
            "YARD-0" => Some("http://127.0.0.1:1"),
            "YARD-1" => None,
            _ => Some(director_url.as_str()),
        };
        let config = make(
            vin,
            &depot.addr.to_string(),
            "class = \"yard-wifi\"",
            health,
            route,
        );
        threads.push((*vin, std::thread::spawn(move || check_once(&config))));
    }
    let mut statuses = BTreeMap::new();
    for (vin, thread) in threads {
        statuses.insert(vin, thread.join().unwrap());
    }
    let new_sha = TargetDigests::of(&v2).sha256;
    for vin in yard {
        let status = &statuses[vin];
        eprintln!("{vin}: {status}");
        assert_eq!(status["step"], "finished", "{vin}: {status}");
        assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
        let ecu = &status["ecus"][format!("GW-{vin}")];
        assert_eq!(ecu["image"], "ecu/gw-2.bin", "{status}");
        assert_eq!(ecu["slot"], "B", "{status}");
        assert_eq!(status["cellular"]["bytes"], 0, "{status}");
        // The delta came, not the image.
        let fetched = downloaded(status);
        assert!(
            fetched < delta_len + delta_len / 5,
            "{vin} fetched {fetched} bytes for a {delta_len}-byte delta"
        );
        let bank = std::fs::read(w.join(vin).join("bank-b.img")).unwrap();
        assert_eq!(&bank[..v2.len()], &v2[..], "{vin}: bank B is not v2");
        // The signed version manifest passes the director's check.
        let manifest = std::fs::read(status["last_install"]["report"].as_str().unwrap()).unwrap();
        let ed25519 = |seed| {
            proto::tuf::Key::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key(),
            )
        };
        let (primary, ecu_key) = (ed25519(PRIMARY_SEED), ed25519(ECU_SEED));
        let verified = proto::uptane::verify_vehicle_manifest(
            &manifest,
            vin,
            &primary,
            &BTreeMap::from([(format!("GW-{vin}"), ecu_key)]),
            status["last_install"]["nonce"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(verified.reports[&format!("GW-{vin}")].sha256, new_sha);
    }
    // The director took the signed manifests sent to it: it knows what those vehicles run.
    let record = |vin: &str| {
        registry(&director)
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vin"] == vin)
            .cloned()
            .unwrap()
    };
    assert_eq!(statuses[yard[2]]["report_sent"]["verdict"], "accepted");
    assert_eq!(statuses[yard[2]]["report_sent"]["via"], "director");
    // The depot took the other two; they wait in its queue while the director is out of reach.
    for vin in &yard[..2] {
        let sent = &statuses[vin]["report_sent"];
        assert_eq!(sent["via"], "depot", "{vin}: {sent}");
        assert_eq!(sent["verdict"], "relayed", "{vin}: {sent}");
        assert_eq!(record(vin)["ecus"][0]["installed"], "ecu/gw-1.bin", "{vin}");
    }
    let relay = &depot.status()["relay"];
    assert_eq!(relay["queued"], 2, "{relay}");
    assert!(
        relay["last_error"]
            .as_str()
            .unwrap()
            .contains(&relay_addr.to_string()),
        "{relay}"
    );
    assert_eq!(record(sick)["ecus"][0]["installed"], "ecu/gw-1.bin");
    assert_eq!(record(sick)["last_report"]["outcome"], "health_failed");

    let status = &statuses[sick];
    assert_eq!(status["step"], "finished", "{status}");
    let outcome = status["last_install"]["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("rolled back"), "{status}");
    assert_eq!(
        status["ecus"][format!("GW-{sick}")]["image"],
        "ecu/gw-1.bin"
    );
    assert_eq!(status["ecus"][format!("GW-{sick}")]["slot"], "A");
    // Checked again, it does not retry the release that failed on it.
    let again = check_once(&w.join(sick).join("vehicle.toml"));
    assert_eq!(again["step"], "ended", "{again}");
    assert_eq!(again["ecus"][format!("GW-{sick}")]["slot"], "A");
    // Checked again, a committed vehicle is up to date.
    let again = check_once(&w.join(yard[0]).join("vehicle.toml"));
    assert_eq!(again["step"], "ended", "{again}");

    let served = depot.metric(SERVED);
    // A power cut at the depot: killed, started again on the same data.
    depot.kill();
    let depot = DepotDaemon::start(&depot_dir, &depot_toml);
    let relay = &depot.status()["relay"];
    assert_eq!(relay["queued"], 2, "the queue survives the kill: {relay}");
    // The director's address the depot relays to comes up; the depot delivers within its retry.
    director.serve_also(relay_addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while yard
        .iter()
        .any(|vin| record(vin)["last_report"]["outcome"] != "committed")
    {
        assert!(
            Instant::now() < deadline,
            "relayed reports did not arrive: {}",
            depot.get("/status").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let relay = &depot.status()["relay"];
    assert_eq!(
        (relay["queued"].as_u64(), relay["accepted"].as_u64()),
        (Some(0), Some(2)),
        "{relay}"
    );
    for vin in yard {
        assert_eq!(record(vin)["ecus"][0]["installed"], "ecu/gw-2.bin", "{vin}");
        assert_eq!(record(vin)["last_report"]["outcome"], "committed", "{vin}");
    }
    eprintln!(
        "depot served {served} bytes to 4 vehicles for a {delta_len}-byte delta ({:.2} deltas, metadata included)",
        served as f64 / delta_len as f64
    );

    // On cellular, a feature update waits for WiFi; the metadata check is counted.
    let here = depot.addr.to_string();
    let direct = Some(director_url.as_str());
    let config = make(
        cellular,
        &here,
        "class = \"cellular\"\nsignal = 80",
        "exit 0",
        direct,
    );
    let status = check_once(&config);
    assert_eq!(status["step"], "waiting", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .unwrap()
            .contains("feature updates wait for WiFi"),
        "{status}"
    );
    let metadata = status["cellular"]["bytes"].as_u64().unwrap();
    assert!(metadata > 0 && metadata < 100_000, "{status}");
    assert_eq!(
        status["ecus"][format!("GW-{cellular}")]["image"],
        "ecu/gw-1.bin"
    );

    // Roaming, a security update installs, and every byte counts against the budget.
    let config = make(
        roaming,
        &here,
        "class = \"cellular-roaming\"\nsignal = 80",
        "exit 0",
        direct,
    );
    let status = check_once(&config);
    assert_eq!(status["step"], "finished", "{status}");
    assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
    let fetched = downloaded(&status);
    let counted = status["cellular"]["bytes"].as_u64().unwrap();
    assert!(counted > fetched && fetched >= delta_len, "{status}");
    let persisted: Value = serde_json::from_slice(
        &std::fs::read(w.join(roaming).join("data/cellular-usage.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(persisted["bytes"].as_u64(), Some(counted));
}
