//! Issue 7's end-to-end test, on loopback: origin → upstream cache → depot daemon (prefetch on
//! its own, from its configuration) → ten vehicles in the yard.
//!
//! The upstream (the origin's cache) and the depot are real depot daemons (the code
//! `depot-cache --config` runs, in this test's process); the ten vehicles are real libp2p QUIC
//! nodes, each with its own store, identity and server, told only of the depot and serving their
//! neighbours as parked vehicles do. Both caches' uplinks are read from their `/metrics`: the
//! upstream sent the release once, and the depot at most 1.5 copies to ten vehicles (the tracker
//! points them at each other and the depot seeds each piece about once).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use depotmesh_tests::data::pseudo_random;
use depotmesh_tests::depot::{DepotDaemon, SERVED, depot_config, import_repo};
use depotmesh_tests::release::{Release, new_origin, release};
use node::fetch::{self, FetchOptions};
use node::net::{self, NetConfig};
use node::serve::{self, ServeCounters};

const VEHICLES: usize = 10;

#[test]
fn origin_to_depot_to_ten_vehicles_with_one_backhaul_copy_and_at_most_one_and_a_half_from_the_depot()
 {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();

    // The origin signs a release now (the daemons check expiry against the clock).
    let origin = new_origin(w, node::clock::now());
    let firmware = pseudo_random(8 << 20, 0x2545_f491_4f6c_dd1d);
    release(
        &origin,
        &Release::new("ecu/fw-2.bin", &firmware, "brake-v2", 2),
    )
    .unwrap();
    let image = origin.dir.join("image");
    let blob = proto::BlobId::of(&firmware);

    // The origin's cache: the repository imported, served by the daemon.
    let upstream_dir = w.join("upstream");
    import_repo(&upstream_dir, "image", &image);
    let upstream = DepotDaemon::start(&upstream_dir, &depot_config(&upstream_dir));

    // The depot: prefetches on its own as soon as it starts (no windows: any time).
    let depot_dir = w.join("depot");
    let depot = DepotDaemon::start(
        &depot_dir,
        &format!(
            "{}[prefetch]\nupstream = [\"{}\"]\nroot = {:?}\ninterval_secs = 3600\nrate_limit_bytes_per_sec = 50_000_000\n",
            depot_config(&depot_dir),
            upstream.addr,
            image.join("metadata/1.root.json").display().to_string(),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = depot.status();
        if status["prefetch"]["runs_ok"].as_u64() == Some(1) {
            assert!(
                status["store"]["complete"].as_u64().unwrap() >= 1,
                "{status}"
            );
            break;
        }
        assert!(
            status["prefetch"]["runs_failed"].as_u64() == Some(0),
            "prefetch failed: {status}"
        );
        assert!(Instant::now() < deadline, "no prefetch in 120 s: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let size = firmware.len() as u64;
    let backhaul = upstream.metric(SERVED);
    // One copy plus the metadata files and bao proofs (well under 5 %).
    assert!(
        backhaul >= size && backhaul < size + size / 20,
        "the upstream sent {backhaul} bytes for an {size}-byte release"
    );
    drop(upstream);

    // Ten vehicles, told only of the depot; each keeps serving once done.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..VEHICLES {
            let dir = w.join(format!("vehicle-{i}"));
            let depot_addr = depot.addr.clone();
            tasks.push(tokio::spawn(async move {
                let (store, _) = node::store::open_data_dir(&dir).unwrap();
                let store = Arc::new(store);
                let (handle, mut events, incoming) = net::start(NetConfig {
                    keypair: Some(node::identity::load_or_create(&dir).unwrap()),
                    listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                    mdns: false,
                    mdns_auto_dial: false,
                    ..NetConfig::default()
                })
                .await
                .unwrap();
                serve::spawn_server(store.clone(), incoming, Arc::new(ServeCounters::default()));
                let mut options = FetchOptions::new(blob);
                options.size = Some(size);
                options.peers = vec![depot_addr];

                let report = fetch::fetch(&handle, &mut events, store.clone(), options, |_| {})
                    .await
                    .unwrap();
                (handle, store, report)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    for (i, (_, store, report)) in results.iter().enumerate() {
        let mut bytes = Vec::new();
        store.export(&blob, &mut bytes).unwrap();
        assert!(bytes == firmware, "vehicle {i} holds other bytes");
        println!("vehicle {i}: {:.2} s", report.seconds);
    }
    let served = depot.metric(SERVED);
    let copies = served as f64 / size as f64;
    println!(
        "{VEHICLES} vehicles, {size}-byte release: the upstream sent {backhaul} bytes, the depot {served} ({copies:.2} copies)"
    );
    assert!(copies <= 1.5, "the depot sent {copies:.2} copies");
    assert!(served >= size, "the depot sent less than one copy");

    // The endpoints answer what they do not serve clearly.
    assert!(depot.get("/nope").0.contains("404"));
    let seeding = depot.metric("depotmesh_depot_seeding_requests_total{decision=\"granted\"}");
    assert!(seeding > 0);
    runtime.block_on(async {
        for (handle, _, _) in &results {
            handle.shutdown().await;
        }
    });
}
