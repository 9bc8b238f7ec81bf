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

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use node::policy::Priority;
use origin::director::Assignment;
use origin::repo::Origin;
use proto::tuf::build::TargetDigests;
use serde_json::Value;
use vehicle_peer::daemon::Daemon;

mod common;
use common::{SERVED, depot_daemon, director_service, get, metric, register_vehicle};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

const BANK: u64 = 2 << 20;

/// One simulated ECU (banks, a provisioned U-Boot environment, a key) and its vehicle's
/// agent configuration; returns the agent configuration's path.
#[allow(clippy::too_many_arguments)]
fn vehicle(
    dir: &Path,
    vin: &str,
    old: &[u8],
    director_key: &str,
    depot: &str,
    roots: (&Path, &Path),
    link: &str,
    health: &str,
    director_url: Option<&str>,
) -> PathBuf {
    let serial = format!("GW-{vin}");
    let ecu = vehicle_peer::simulated::FileEcu {
        serial: &serial,
        hardware_id: "gw-v1",
        installed: ("ecu/gw-1.bin", old, 1),
        bank_bytes: BANK,
        key_seed: [9; 32],
        director_key,
        health,
        single_bank_spare: None,
    };
    let ecu = vehicle_peer::simulated::file_ecu(dir, &ecu).unwrap();
    let extra = format!(
        "stall_timeout_secs = 20\n[link]\n{link}\n[policy]\nmonthly_budget_bytes = 50_000_000\nmin_signal = 30"
    );
    let vehicle = vehicle_peer::simulated::LoopbackVehicle {
        vin,
        depot,
        roots,
        director_url,
        primary_seed: [8; 32],
        ecus: &[ecu],
        extra: &extra,
    };
    vehicle_peer::simulated::loopback_vehicle(dir, &vehicle).unwrap()
}

/// Bytes the last check downloaded, by its status.
fn downloaded(status: &Value) -> u64 {
    status["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes"].as_u64().unwrap())
        .sum()
}

fn check_once(config: &Path) -> Value {
    let config = vehicle_peer::config::load(config).unwrap();
    Daemon::open(config)
        .unwrap()
        .check_once(node::clock::unix_now())
        .unwrap()
}

#[test]
#[allow(clippy::too_many_lines)]
fn agents_download_deltas_from_the_yard_install_commit_or_roll_back_and_obey_the_link_policy() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = Origin {
        dir: w.join("origin"),
        offline_keys: Some(w.join("usb")),
        now: node::clock::now(),
    };
    origin::init(&origin).unwrap();
    let actor = origin::Actor::new("test").unwrap();

    // v1 and v2: 1.5 MiB, v2 changes a few hundred scattered bytes and appends 20 KiB.
    let v1 = noise(3 << 19, 1);
    let mut v2 = v1.clone();
    for i in (0..v2.len()).step_by(4099) {
        v2[i] ^= 0x5a;
    }
    v2.extend_from_slice(&noise(20_000, 2));
    std::fs::write(w.join("v1.bin"), &v1).unwrap();
    std::fs::write(w.join("v2.bin"), &v2).unwrap();
    let hw = ["gw-v1".to_string()];
    origin::Release::new(w.join("v1.bin"), "ecu/gw-1.bin", &hw, 1)
        .sign(&origin, &actor)
        .unwrap();
    let options = delta::DeltaOptions {
        lzma_dict: false,
        threads: 1,
        ..Default::default()
    };
    origin::Release::new(w.join("v2.bin"), "ecu/gw-2.bin", &hw, 2)
        .with_deltas_from(["ecu/gw-1.bin"])
        .delta_options(options)
        .sign(&origin, &actor)
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
        let ecu = Assignment {
            serial: format!("GW-{vin}").parse().unwrap(),
            hardware_id: "gw-v1".into(),
            target: "ecu/gw-2.bin".into(),
        };
        origin::director::assign(&origin, &actor, &vin.parse().unwrap(), &[ecu], priority).unwrap();
    }

    // The origin's cache: the image repository (targets and deltas) and each vehicle's
    // director repository, served by a depot-cache daemon.
    let upstream_dir = w.join("upstream");
    let import = |name: &str, dir: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_depot-cache"))
            .args(["import-repo", "--data-dir"])
            .arg(&upstream_dir)
            .args(["--name", name])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    import("image", &origin.dir.join("image"));
    for vin in &vins {
        import(
            &format!("director/{vin}"),
            &origin.dir.join(format!("director/vehicles/{vin}")),
        );
    }
    let upstream = depot_daemon(
        &upstream_dir,
        &format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nhttp = \"127.0.0.1:0\"\n",
            upstream_dir.display().to_string()
        ),
    );

    let director_key = hex::encode(
        origin
            .key("director", "targets")
            .unwrap()
            .verifying_key()
            .as_bytes(),
    );
    // The director service: the vehicles are registered and send it their signed manifests,
    // directly or through the depot. The depot's relay address is not served yet: what the
    // depot takes waits in its queue, across a kill, until it is.
    let director = director_service(&origin);
    let (director_url, shared) = (director.url.clone(), director.shared.clone());
    let runtime = &director.runtime;
    for vin in &vins {
        register_vehicle(&director_url, vin, &format!("GW-{vin}"));
    }
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let relay_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    // The depot prefetches on its own: the image repository with its delta, and its home
    // vehicles' director repositories.
    let image_root = origin.dir.join("image/metadata/1.root.json");
    let director_root = origin.dir.join("director/metadata/1.root.json");
    let depot_dir = w.join("depot");
    let depot_config = format!(
        "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nhttp = \"127.0.0.1:0\"\n\
         [prefetch]\nupstream = [\"{}\"]\nroot = {:?}\ndirector_root = {:?}\nvehicles = {:?}\ninterval_secs = 3600\n\
         [relay]\ndirector_url = \"http://{relay_addr}\"\nretry_secs = 1\n",
        depot_dir.display().to_string(),
        upstream.addr,
        image_root.display().to_string(),
        director_root.display().to_string(),
        vins,
    );
    let depot = depot_daemon(&depot_dir, &depot_config);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: Value = serde_json::from_str(&get(&depot.http, "/status").1).unwrap();
        // One run per repository: the image repository and each vehicle's.
        if status["prefetch"]["runs_ok"].as_u64() == Some(vins.len() as u64 + 1) {
            break;
        }
        assert_eq!(
            status["prefetch"]["runs_failed"].as_u64(),
            Some(0),
            "prefetch failed: {status}; {}",
            std::fs::read_to_string(depot_dir.join("stderr.txt")).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no prefetch in 120 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The vehicles never reach the origin's cache.
    drop(upstream);

    let roots = (image_root.as_path(), director_root.as_path());
    let make = |vin: &str, depot: &str, link: &str, health: &str, director: Option<&str>| {
        vehicle(
            &w.join(vin),
            vin,
            &v1,
            &director_key,
            depot,
            roots,
            link,
            health,
            director,
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
        let primary = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let ecu_key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
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
    let registry = || -> Value {
        serde_json::from_str(
            &http
                .get(&format!("{director_url}/v1/vehicles"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap()
    };
    let record = |vin: &str| {
        registry()
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
    let relay = &serde_json::from_str::<Value>(&get(&depot.http, "/status").1).unwrap()["relay"];
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

    let served = metric(&depot.http, SERVED);
    // A power cut at the depot: killed, started again on the same data.
    drop(depot);
    let depot = depot_daemon(&depot_dir, &depot_config);
    let relay = &serde_json::from_str::<Value>(&get(&depot.http, "/status").1).unwrap()["relay"];
    assert_eq!(relay["queued"], 2, "the queue survives the kill: {relay}");
    // The director's address the depot relays to comes up; the depot delivers within its retry.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(relay_addr))
        .unwrap();
    runtime.spawn(origin::http::serve(
        listener,
        shared.clone(),
        std::time::Duration::from_secs(10),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while yard
        .iter()
        .any(|vin| record(vin)["last_report"]["outcome"] != "committed")
    {
        assert!(
            Instant::now() < deadline,
            "relayed reports did not arrive: {}",
            get(&depot.http, "/status").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let relay = &serde_json::from_str::<Value>(&get(&depot.http, "/status").1).unwrap()["relay"];
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
