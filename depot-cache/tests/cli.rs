//! The `depot-cache` binary as an operator and systemd run it: what each command prints and how
//! it fails, and the service (`--config`) surviving a kill. The fixtures need no other role: a
//! repository directory is files (the depot verifies nothing it imports; vehicles do), a
//! vehicle's report is a manifest signed with `proto`, and the client is a `node`. What the
//! depot does with a real origin, director and vehicles is tested end to end in the workspace's
//! `tests/` crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use proto::BlobId;

fn depot_cache(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_depot-cache"));
    command.args(args);
    command
}

/// Runs `depot-cache ARGS` to its end.
fn run(args: &[&str]) -> Output {
    depot_cache(args).output().unwrap()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A `depot-cache` process that serves, killed (SIGKILL) when dropped; with its stdout after
/// the address lines it printed first.
struct Running {
    child: Child,
    addrs: Vec<Multiaddr>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = depot_cache(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout.next().unwrap().unwrap();
        Self {
            child,
            addrs: vec![first.parse().unwrap()],
            stdout,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository directory as `origin` lays one out; the depot stores files, it checks no
/// signature (every file is signed, and vehicles check it).
fn repository(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        (
            "metadata/1.root.json".to_string(),
            b"{\"root\": 1}".to_vec(),
        ),
        (
            "metadata/timestamp.json".to_string(),
            b"{\"ts\": 1}".to_vec(),
        ),
        ("targets/ecu/fw-1.bin".to_string(), vec![7u8; 300_000]),
    ];
    for (path, bytes) in &files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    files
}

/// The built depot allocates with mimalloc, its arenas committing lazily: the build-time default
/// in .cargo/config.toml (docs/measurements.md). mimalloc prints its options when
/// `MIMALLOC_VERBOSE` is set.
#[test]
fn arenas_commit_lazily_without_any_environment() {
    let output = depot_cache(&["--version"])
        .env("MIMALLOC_VERBOSE", "1")
        .env_remove("MIMALLOC_ARENA_EAGER_COMMIT")
        .env_remove("MIMALLOC_EAGER_REGION_COMMIT")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("option 'arena_eager_commit': 0"),
        "mimalloc's options as the binary printed them:\n{stderr}"
    );
}

#[test]
fn the_operator_commands_print_what_they_stored_and_serve_it() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = w.join("depot");
    let data_dir = data.to_str().unwrap();

    // import: `<blob-id>  <file>`.
    let file = w.join("old.bin");
    std::fs::write(&file, vec![3u8; 100_000]).unwrap();
    let printed = succeeded(&run(&[
        "import",
        "--data-dir",
        data_dir,
        file.to_str().unwrap(),
    ]));
    let old = BlobId::of(&[3u8; 100_000]);
    assert_eq!(printed, format!("{old}  {}\n", file.display()));

    // import-repo: `<blob-id>  <name>/<path>` for each file, by default under `image`.
    let repo = w.join("repo");
    let files = repository(&repo);
    let printed = succeeded(&run(&[
        "import-repo",
        "--data-dir",
        data_dir,
        repo.to_str().unwrap(),
    ]));
    for (path, bytes) in &files {
        let line = format!("{}  image/{path}", BlobId::of(bytes));
        assert!(printed.lines().any(|l| l == line), "{line} in {printed}");
    }
    let printed = succeeded(&run(&[
        "import-repo",
        "--data-dir",
        data_dir,
        "--name",
        "director/VIN-1",
        repo.to_str().unwrap(),
    ]));
    assert!(
        printed.contains("  director/VIN-1/metadata/timestamp.json\n"),
        "{printed}"
    );

    // list: every blob, complete, then every name.
    let listed = succeeded(&run(&["list", "--data-dir", data_dir]));
    let target = BlobId::of(&files[2].1);
    for id in [old, target] {
        let complete =
            |line: &str| line.starts_with(&id.to_string()) && line.ends_with("  complete");
        assert!(listed.lines().any(complete), "{id} complete in {listed}");
    }
    assert!(
        listed.contains(&format!("{target}  image/targets/ecu/fw-1.bin\n")),
        "{listed}"
    );

    // serve: refused without saying whom it serves (deny by default, as the service's [mesh]).
    let output = run(&["serve", "--no-mdns", "--data-dir", data_dir]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no mesh given"), "{stderr}");
    let output = run(&[
        "serve",
        "--no-mdns",
        "--data-dir",
        data_dir,
        "--certificate",
        "x",
    ]);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--fleet-key is required"),
        "{output:?}"
    );

    // identity: the peer id the fleet key certifies (made once, then the same).
    let peer = succeeded(&run(&["identity", "--data-dir", data_dir]));
    assert_eq!(peer, succeeded(&run(&["identity", "--data-dir", data_dir])));
    let fleet = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let certify = |peer: &str, path: &Path| certify(&fleet, peer, path);
    let depot_cert = w.join("depot-member.json");
    certify(&peer, &depot_cert);
    let fleet_key = hex::encode(fleet.verifying_key().to_bytes());

    // serve: the first line is the address to give vehicles; a member fetches from it.
    let depot = Running::start(&[
        "serve",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--data-dir",
        data_dir,
        "--fleet-key",
        &fleet_key,
        "--certificate",
        depot_cert.to_str().unwrap(),
    ]);
    let addr = depot.addrs[0].clone();
    assert!(addr.to_string().contains("/p2p/"), "{addr}");
    let runtime = node::runtime::build_tokio(Some(1)).unwrap();
    let vehicle = w.join("vehicle");
    let fetched = runtime.block_on(async {
        let (store, _) = node::store::open_data_dir(&vehicle).unwrap();
        let store = Arc::new(store);
        let (net, mut events, _incoming) = node::net::start(fleet_node(&fleet, &vehicle))
            .await
            .unwrap();
        let mut options = node::fetch::FetchOptions::new(target);
        options.peers = vec![addr.clone()];
        node::fetch::fetch(&net, &mut events, store.clone(), options, |_| {})
            .await
            .unwrap();
        net.shutdown().await;
        let mut bytes = Vec::new();
        store.export(&target, &mut bytes).unwrap();
        bytes
    });
    assert_eq!(fetched, files[2].1);

    // prefetch: a failure exits non-zero, says why on stderr, prefixed with the program.
    let output = run(&[
        "prefetch",
        "--data-dir",
        w.join("fresh").to_str().unwrap(),
        "--upstream",
        &addr.to_string(),
        "--open-mesh",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("depot-cache: ") && stderr.contains("give the first root with --root"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn the_service_in_a_fleet_counts_its_members_and_refusals_on_metrics_and_status() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("depot");
    let fleet = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let peer = succeeded(&run(&["identity", "--data-dir", data.to_str().unwrap()]));
    let cert = certify(&fleet, &peer, &work.path().join("depot-member.json"));
    let config = work.path().join("depot.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nhttp = \"127.0.0.1:0\"\n\
             [mesh]\nfleet_keys = [{:?}]\ncertificate = {:?}\n",
            data.display().to_string(),
            hex::encode(fleet.verifying_key().to_bytes()),
            work.path().join("depot-member.json").display().to_string(),
        ),
    )
    .unwrap();
    let mut depot = Running::start(&["--config", config.to_str().unwrap()]);
    let http = loop {
        let line = depot.stdout.next().unwrap().unwrap();
        if let Some(http) = line.strip_prefix("http ") {
            break format!("http://{http}");
        }
    };
    let addr = depot.addrs[0].clone();

    // A member is admitted; a node of another fleet (its certificate from another key) is not.
    let runtime = node::runtime::build_tokio(Some(1)).unwrap();
    let other_fleet = ed25519_dalek::SigningKey::from_bytes(&[10; 32]);
    runtime.block_on(async {
        let member = fleet_node(&fleet, &work.path().join("member"));
        let (member, _events, _incoming) = node::net::start(member).await.unwrap();
        assert_eq!(
            member.dial(addr.clone()).await.unwrap().to_string(),
            peer.trim()
        );
        let stranger = fleet_node(&other_fleet, &work.path().join("stranger"));
        let (stranger, _events, _incoming) = node::net::start(stranger).await.unwrap();
        let error = stranger.dial(addr.clone()).await.unwrap_err();
        assert!(error.to_string().contains("admitted"), "{error}");
    });

    let metrics = get(&format!("{http}/metrics")).1;
    for sample in [
        "depotmesh_depot_mesh_admitted_total 1\n".to_owned(),
        "depotmesh_depot_mesh_refusals_total{reason=\"stranger\"} 1\n".to_owned(),
        format!(
            "depotmesh_depot_mesh_certificate_expiry_timestamp_seconds {}\n",
            cert.membership.expires
        ),
    ] {
        assert!(metrics.contains(&sample), "{sample} in {metrics}");
    }
    let status = get_json(&format!("{http}/status"));
    let membership = &status["membership"];
    assert_eq!(membership["mode"], "fleet", "{status}");
    assert_eq!(membership["admitted"], 1, "{status}");
    assert_eq!(membership["refused"]["stranger"], 1, "{status}");
    assert_eq!(membership["certificate_expires"], cert.membership.expires);
}

/// The series of the bytes the depot served its yard.
const SERVED: &str = "depotmesh_depot_bytes_total{direction=\"served\",link=\"yard\"}";

#[test]
fn the_service_prints_where_it_listens_and_a_kill_loses_no_queued_report() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("depot");
    std::fs::create_dir_all(&data).unwrap();
    let config = data.join("depot.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nmesh = {{ open = true }}\nhttp = \"127.0.0.1:0\"\n\
             [relay]\ndirector_url = \"http://127.0.0.1:1\"\nretry_secs = 1\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let start = || {
        let mut depot = Running::start(&["--config", config.to_str().unwrap()]);
        // Its addresses, one a line, then where it serves HTTP.
        let http = loop {
            let line = depot.stdout.next().unwrap().unwrap();
            match line.strip_prefix("http ") {
                Some(http) => break format!("http://{http}"),
                None => depot.addrs.push(line.parse().unwrap()),
            }
        };
        (depot, http)
    };
    let (depot, http) = start();
    let status = get_json(&format!("{http}/status"));
    assert_eq!(status["relay"]["queued"], 0, "{status}");
    let (code, metrics) = get(&format!("{http}/metrics"));
    assert_eq!(code, 200);
    assert!(
        metrics.lines().any(|line| line.starts_with(SERVED)),
        "{metrics}"
    );
    // The transport's own counters, the same families in every role.
    for family in [
        "depotmesh_quic_connections_total ",
        "depotmesh_quic_udp_bytes_total{direction=\"sent\"} ",
        "depotmesh_quic_packets_lost_total ",
    ] {
        assert!(
            metrics.lines().any(|line| line.starts_with(family)),
            "{family}: {metrics}"
        );
    }
    assert_eq!(get(&format!("{http}/nope")).0, 404);

    // Two vehicles with no route to the director hand the depot their signed reports.
    let runtime = node::runtime::build_tokio(Some(1)).unwrap();
    runtime.block_on(async {
        let (net, _events, _incoming) = node::net::start(loopback_node()).await.unwrap();
        for vin in ["VIN-1", "VIN-2"] {
            let key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
            let manifest =
                proto::uptane::sign_vehicle_manifest(vin, &format!("GW-{vin}"), &[], None, &key)
                    .unwrap();
            node::relay::send_report(&net, &depot.addrs, &manifest, Duration::from_secs(10))
                .await
                .unwrap();
        }
        net.shutdown().await;
    });
    let queued = |http: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let relay = get_json(&format!("{http}/status"))["relay"].clone();
            if relay["last_error"].is_string() || Instant::now() > deadline {
                return relay;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let relay = queued(&http);
    assert_eq!(relay["queued"], 2, "{relay}");
    assert!(
        relay["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{relay}"
    );

    // A power cut: SIGKILL, then the service starts again on the same data.
    drop(depot);
    let (_depot, http) = start();
    let relay = queued(&http);
    assert_eq!(relay["queued"], 2, "the queue survives the kill: {relay}");
}

/// A depot's address as a vehicle is given it, on a UDP port free now (the test restarts the
/// depot on it).
fn free_loopback_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_depot_killed_mid_fetch_and_restarted_on_its_address_is_dialled_again_and_the_fetch_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("depot");
    std::fs::create_dir_all(&data).unwrap();
    // 6 MiB at 1 MiB/s: the kill after the first MiB lands mid-fetch on any machine.
    let size = 6 << 20;
    let image: Vec<u8> = (0..size)
        .map(|i: usize| u8::try_from(i * 31 % 251).unwrap())
        .collect();
    let file = work.path().join("image.bin");
    std::fs::write(&file, &image).unwrap();
    let data_dir = data.to_str().unwrap();
    succeeded(&run(&[
        "import",
        "--data-dir",
        data_dir,
        file.to_str().unwrap(),
    ]));
    let blob = BlobId::of(&image);
    let port = free_loopback_port();
    let config = data.join("depot.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/{port}/quic-v1\"]\nmdns = false\nmesh = {{ open = true }}\n\
             [serve]\nupload_bytes_per_sec = {}\n",
            data.display().to_string(),
            1 << 20
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let depot = Running::start(&["--config", &config]);
    let addr = depot.addrs[0].clone();

    let runtime = node::runtime::build_tokio(Some(2)).unwrap();
    let vehicle = work.path().join("vehicle");
    let mut depot = Some(depot);
    let mut restarted = None;
    let mut killed_at = None;
    let report = runtime.block_on(async {
        let (store, _) = node::store::open_data_dir(&vehicle).unwrap();
        let store = Arc::new(store);
        let mut client = loopback_node();
        // A killed peer sends no close: the vehicle notices it by the idle timeout, kept short
        // here so the test is quick.
        client.quic.max_idle_timeout = Duration::from_secs(3);
        client.quic.keep_alive_interval = Duration::from_secs(1);
        let (net, mut events, _incoming) = node::net::start(client).await.unwrap();
        let mut options = node::fetch::FetchOptions::new(blob);
        options.size = Some(size as u64);
        options.peers = vec![addr.clone()];
        let report = node::fetch::fetch(&net, &mut events, store.clone(), options, |progress| {
            if progress.bytes >= 1 << 20 {
                if let Some(depot) = depot.take() {
                    killed_at = Some(progress.held_groups);
                    // A power cut: SIGKILL; back on the same address, identity and data 4 s
                    // later.
                    drop(depot);
                    let config = config.clone();
                    restarted = Some(std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(4));
                        Running::start(&["--config", &config])
                    }));
                }
            }
        })
        .await;
        net.shutdown().await;
        let mut bytes = Vec::new();
        if report.is_ok() {
            store.export(&blob, &mut bytes).unwrap();
        }
        (report, bytes)
    });
    let restarted = restarted.expect("the depot was killed").join().unwrap();
    assert_eq!(restarted.addrs[0], addr, "restarted on the same address");
    let (report, bytes) = report;
    let report = report.expect("the fetch goes on once the depot is back");
    let killed_at = killed_at.unwrap();
    let total_groups = (size as u64).div_ceil(16 * 1024);
    assert!(
        killed_at < total_groups,
        "killed mid-fetch: {killed_at} of {total_groups}"
    );
    assert!(bytes == image, "the fetched blob is the image");
    // About one copy: what was verified before the kill was not fetched again.
    assert!(
        report.bytes_fetched < size as u64 + (size as u64) / 8,
        "{report:?}"
    );
    assert_eq!(report.resumed_groups, 0, "one run: {report:?}");
}

/// A node on 127.0.0.1 with mDNS off.
fn loopback_node() -> node::net::NetConfig {
    node::net::NetConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        mdns_auto_dial: false,
        ..node::net::NetConfig::default()
    }
}

/// GET `url`: the status code and the body.
fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().unwrap();
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), body)
}

/// `peer` certified by `fleet` for an hour (the role matters to no check), written to `path`.
fn certify(
    fleet: &ed25519_dalek::SigningKey,
    peer: &str,
    path: &Path,
) -> proto::membership::MembershipCert {
    let now = node::clock::unix_now();
    let cert = proto::membership::MembershipCert::issue(
        fleet,
        proto::membership::Membership {
            peer: peer.trim().to_owned(),
            role: proto::membership::MemberRole::Depot,
            issued: now - 60,
            expires: now + 3600,
        },
    )
    .unwrap();
    std::fs::write(path, cert.encode()).unwrap();
    cert
}

/// A loopback node in the fleet of `fleet`, its identity and certificate made in `dir`.
fn fleet_node(fleet: &ed25519_dalek::SigningKey, dir: &Path) -> node::net::NetConfig {
    let keypair = node::identity::load_or_create(dir).unwrap();
    let cert = certify(
        fleet,
        &keypair.public().to_peer_id().to_string(),
        &dir.join("member.json"),
    );
    node::net::NetConfig {
        keypair: Some(keypair),
        membership: Some(node::membership::MeshMembership {
            certificate: cert,
            keys: proto::membership::FleetKeys::new([fleet.verifying_key()]),
            revocations: None,
        }),
        ..loopback_node()
    }
}

fn get_json(url: &str) -> serde_json::Value {
    let (code, body) = get(url);
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}
