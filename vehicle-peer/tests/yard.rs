//! A yard on loopback: one depot and ten `vehicle-peer fetch` processes (real binaries, real
//! libp2p QUIC) that are told only of the depot and keep serving once done, as parked vehicles
//! do. The depot, as the yard's tracker, tells each vehicle who else holds the blob, and sends
//! each group into the yard about once (super-seeding, `node::seeding`). Every vehicle gets the
//! blob, verified, and the depot's uplink carries at most 1.5 copies (issue 7's bound; 1.01 when
//! measured), even on unshaped loopback where the depot is as fast as any neighbour (before the
//! depot decided, it sent 7.6 to 9.4 copies here).

// Test code: a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use node::serve::ServeCounters;

mod common;

const VEHICLES: usize = 10;

struct Vehicle {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    out: std::path::PathBuf,
}

impl Drop for Vehicle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blob_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn ten_vehicles_in_a_yard_all_get_the_blob() {
    let work = tempfile::tempdir().unwrap();
    let data = blob_bytes(12 << 20);
    // A multi-threaded runtime: the depot must serve while this thread waits on the vehicles.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (store, _) = node::store::open_data_dir(&work.path().join("depot")).unwrap();
    let blob = store.import(&data[..]).unwrap();
    let counters = Arc::new(ServeCounters::default());
    let (depot, depot_addr) = common::start_depot(&runtime, store, counters.clone());

    let vehicles: Vec<Vehicle> = (0..VEHICLES)
        .map(|i| {
            let out = work.path().join(format!("out-{i}.bin"));
            let dir = work.path().join(format!("vehicle-{i}"));
            let args = vec![
                "fetch".to_string(),
                "--open-mesh".into(),
                "--data-dir".into(),
                dir.display().to_string(),
                "--peer".into(),
                depot_addr.to_string(),
                "--no-mdns".into(),
                // Each learns its neighbours' addresses from the depot's tracker.
                "--listen".into(),
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                "--keep-serving".into(),
                "--size".into(),
                data.len().to_string(),
                "--out".into(),
                out.display().to_string(),
                blob.to_string(),
            ];
            let mut child = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(work.path().join(format!("stderr-{i}.txt"))).unwrap())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (sender, lines) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        return;
                    }
                }
            });
            Vehicle { child, lines, out }
        })
        .collect();

    // Each prints its summary once the blob is written, then keeps serving.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut summaries = Vec::new();
    for (i, vehicle) in vehicles.iter().enumerate() {
        let summary = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = vehicle.lines.recv_timeout(left).unwrap_or_else(|_| {
                let stderr = std::fs::read_to_string(work.path().join(format!("stderr-{i}.txt")))
                    .unwrap_or_default();
                panic!("vehicle {i} did not finish: {stderr}")
            });
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                break value;
            }
        };
        assert!(
            std::fs::read(&vehicle.out).unwrap() == data,
            "vehicle {i} wrote other bytes"
        );
        summaries.push(format!(
            "{:.2} s",
            summary["seconds"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    drop(vehicles);
    let served = counters.bytes.load(Ordering::Relaxed);
    runtime.block_on(depot.shutdown());
    let copies = served as f64 / data.len() as f64;
    println!(
        "{VEHICLES} vehicles, {} byte blob: the depot served {served} bytes ({copies:.2} copies); time per vehicle: {summaries:?}",
        data.len()
    );
    assert!(
        served >= data.len() as u64,
        "the depot served less than one copy"
    );
    assert!(
        copies <= 1.5,
        "the depot served {copies:.2} copies to {VEHICLES} vehicles"
    );
}
