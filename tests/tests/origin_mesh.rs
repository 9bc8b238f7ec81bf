//! The origin serves the mesh itself (issue 27): its mesh node (`origin serve --mesh-listen`,
//! here `origin::mesh::start` on a runtime of the test's) serves the image repository and each
//! vehicle's director repository as they are signed. A release and an assignment signed after it
//! started, by the library calls `origin release` and `origin assign` make (another process in
//! real life: they reach the node through the publish journal), are prefetched by a depot (a
//! fleet member, as the node serves members only) and installed by a vehicle; then a second
//! assignment reaches the vehicle the same way. Nothing is imported by hand and nothing
//! restarts. Beside it, a vehicle registered with nothing assigned yet: the depot's prefetch of
//! its director repository succeeds and its agent is up to date; and one the director does not
//! know, whose agent says so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use depotmesh_tests::data::noise;
use depotmesh_tests::depot::prefetching_depot;
use depotmesh_tests::director::{assign_gateway, register_with_director};
use depotmesh_tests::release::{Release, new_origin, release};
use depotmesh_tests::vehicle::{check_once, fleet_gateway, wait_for_image};
use node::policy::Priority;

#[test]
fn a_depot_prefetches_what_the_origin_signs_from_its_own_mesh_node() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let origin = new_origin(w, node::clock::now());
    let v1 = noise(200_000, 1);
    let mut v2 = v1.clone();
    v2[100] ^= 1;
    let mut v3 = v2.clone();
    v3[200] ^= 1;
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
    assert!(upstream.contains("/p2p/"), "{upstream}");

    // Signed after the node started.
    release(&origin, &Release::new("ecu/gw-2.bin", &v2, "gw-v1", 2)).unwrap();
    let vin = "MESH-0";
    assign_gateway(&origin, vin, "GW-MESH-0", "ecu/gw-2.bin", Priority::Fix);
    // Registered, nothing assigned: the director signs its repository, with empty targets.
    let idle = "IDLE-0";
    register_with_director(&origin, idle, "GW-IDLE-0");

    // The node publishes them within its journal's poll.
    let published = |name: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while mesh.store.resolve(name).is_none() {
            assert!(Instant::now() < deadline, "{name} not published in 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    published("image/metadata/3.targets.json");
    published(&format!("director/{vin}/metadata/timestamp.json"));
    published(&format!("director/{idle}/metadata/timestamp.json"));

    // The depot, a fleet member, prefetches the repositories from the origin's node, the idle
    // vehicle's too: every run good.
    let image_root = origin.dir.join("image/metadata/1.root.json");
    let director_root = origin.dir.join("director/metadata/1.root.json");
    let depot = prefetching_depot(
        &origin,
        &w.join("depot"),
        &upstream,
        (&image_root, &director_root),
        &[vin, idle],
    );
    depot.wait_prefetched(3);

    // A vehicle of the fleet installs v2 from the depot.
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
        status["ecus"]["GW-MESH-0"]["image"], "ecu/gw-2.bin",
        "{status}"
    );

    // v3, released and assigned while everything runs, reaches the vehicle the same way.
    release(&origin, &Release::new("ecu/gw-3.bin", &v3, "gw-v1", 3)).unwrap();
    assign_gateway(&origin, vin, "GW-MESH-0", "ecu/gw-3.bin", Priority::Fix);
    published("image/metadata/4.targets.json");
    published(&format!("director/{vin}/metadata/2.targets.json"));
    let runs = depot.status()["prefetch"]["runs_ok"].as_u64().unwrap();
    depot.wait_prefetched(runs + 3);
    wait_for_image(&config, "GW-MESH-0", "ecu/gw-3.bin");

    // The idle vehicle is up to date: nothing to install, no error.
    let roots = (image_root.as_path(), director_root.as_path());
    let depot_addr = depot.addr.to_string();
    let config = fleet_gateway(&origin, &w.join(idle), idle, &v1, &depot_addr, roots);
    let status = check_once(&config);
    assert_eq!(status["step"], "up_to_date", "{status}");
    assert_eq!(status["error"], serde_json::Value::Null, "{status}");
    assert_eq!(status["assignment"]["director_version"], 1, "{status}");
    assert_eq!(
        status["assignment"]["images"],
        serde_json::json!([]),
        "{status}"
    );
    assert_eq!(
        status["ecus"]["GW-IDLE-0"]["image"], "ecu/gw-1.bin",
        "{status}"
    );

    // A vehicle the director does not know: its check fails, naming the VIN and why.
    let ghost = "GHOST-0";
    let config = fleet_gateway(&origin, &w.join(ghost), ghost, &v1, &depot_addr, roots);
    let config = vehicle_peer::config::load(&config).unwrap();
    let status_file = config.data_dir.join("status.json");
    let error = vehicle_peer::daemon::Daemon::open(config)
        .unwrap()
        .check_once(node::clock::unix_now())
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("the director has no repository for vehicle GHOST-0")
            && error.contains("not registered"),
        "{error}"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(status_file).unwrap()).unwrap();
    assert_eq!(status["step"], "error", "{status}");

    // Nothing was imported by hand: the node's store names what the origin signed.
    let names: Vec<String> = mesh.store.names().into_iter().map(|(n, _)| n).collect();
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("director/{vin}/metadata/"))
                && n.ends_with(".targets.json")),
        "{names:?}"
    );
    drop(mesh);
}
