//! `vehicle-peer fetch`, the real binary, killed with SIGKILL at random moments and run again:
//! every group it had reported as held is still held after each kill, and the last run resumes
//! and writes the verified blob.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use node::serve::ServeCounters;

mod common;

fn blob_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x1234_5678_9abc_def0u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `vehicle-peer fetch` of `blob` from the depot at `depot` alone, on an open mesh, into
/// `data_dir`, writing it out to `out`.
fn fetch_args(
    data_dir: &std::path::Path,
    out: &std::path::Path,
    depot: &libp2p::Multiaddr,
    blob: &proto::BlobId,
) -> Vec<String> {
    [
        "fetch",
        "--open-mesh",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--peer",
        &depot.to_string(),
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--out",
        out.to_str().unwrap(),
        &blob.to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// When to kill a fetch.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Let it finish.
    Never,
    /// This long after it started.
    At(Duration),
    /// As soon as it reports holding more than this many groups: mid-transfer however fast the
    /// machine is.
    Past(u64),
}

/// Reads `progress N of M groups held` lines until the child exits or is killed as `kill` says;
/// returns the last N seen and whether the child was killed.
fn run_fetch(args: &[String], kill: Kill) -> (u64, bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vehicle-peer"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut held = 0;
    let mut killed = false;
    loop {
        if let Kill::At(kill_at) = kill {
            if started.elapsed() >= kill_at {
                child.kill().unwrap();
                killed = true;
            }
        }
        match receiver.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("progress ") {
                    held = rest.split(' ').next().unwrap().parse().unwrap();
                    if matches!(kill, Kill::Past(past) if held > past) {
                        child.kill().unwrap();
                        killed = true;
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if killed {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "fetch hung");
    }
    let output = child.wait_with_output().unwrap();
    // Lines that arrived after the kill decision still count: they were reported before it.
    while let Ok(line) = receiver.try_recv() {
        if let Some(rest) = line.strip_prefix("progress ") {
            held = rest.split(' ').next().unwrap().parse().unwrap();
        }
    }
    (
        held,
        killed,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn sigkill_then_resume_completes_without_losing_reported_progress() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = blob_bytes(96 << 20);
    let source = dir.path().join("image.bin");
    std::fs::write(&source, &data).unwrap();

    // The depot, in this process.
    let (depot_store, _) = node::store::open_data_dir(&dir.path().join("depot")).unwrap();
    let blob = depot_store.import(&data[..]).unwrap();
    let counters = Arc::new(ServeCounters::default());
    // Paced at 48 MiB/s, about two seconds for the whole image: fast enough for a test, slow
    // enough that a kill after a progress report lands mid-transfer on any machine.
    let (handle, depot_addr) = common::start_paced_depot(
        &runtime,
        depot_store,
        counters.clone(),
        Some(node::ratelimit::RateLimit::new(48 << 20)),
    );

    let vehicle_dir = dir.path().join("vehicle");
    let out = dir.path().join("out.bin");
    let args = fetch_args(&vehicle_dir, &out, &depot_addr, &blob);

    // Kills alternate between a delay from a fixed seed (printed so a failure can be replayed),
    // which may land anywhere from start-up on, and the first progress report beyond what the
    // store already held, which lands mid-transfer however fast the machine is.
    let mut seed = 0x9e37_79b9u64;
    println!("seed {seed:#x}");
    let mut kills = 0;
    let mut summary = String::new();
    let mut held_before = 0;
    for attempt in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill = match attempt {
            10.. => Kill::Never,
            _ if attempt % 3 == 0 => Kill::At(Duration::from_millis(20 + seed % 200)),
            _ => Kill::Past(held_before),
        };
        let (reported, killed, stdout) = run_fetch(&args, kill);
        if !killed {
            summary = stdout;
            break;
        }
        // Everything the killed fetcher reported as held is still held.
        let (store, report) = node::store::open_data_dir(&vehicle_dir).unwrap();
        let held = store.info(&blob).map_or(0, |info| info.held.group_count());
        println!(
            "kill at attempt {attempt}: reported {reported} groups, reopened with {held} ({report:?})"
        );
        assert!(
            held >= reported,
            "reported {reported} held groups, store has {held}"
        );
        let total = node::store::LAYOUT.group_count(data.len() as u64);
        if held < total {
            kills += 1;
        }
        held_before = held;
        drop(store);
    }
    assert!(kills >= 3, "only {kills} kills landed mid-transfer");
    let summary: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    assert!(summary["resumed_groups"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        std::fs::read(&out).unwrap() == data,
        "output differs from the image"
    );
    let served = counters.bytes.load(Ordering::Relaxed);
    println!(
        "{kills} kills; depot served {served} bytes for a {} byte blob ({:.3}x); last run: {summary}",
        data.len(),
        served as f64 / data.len() as f64
    );
    runtime.block_on(handle.shutdown());
}

/// A vehicle killed mid-fetch sends no CONNECTION_CLOSE: its depot learns it is gone only from
/// silence. Within seconds the depot must stop sending to it and free what it held (the
/// connection and its transfer slots), so that a yard's dead vehicles cost their senders nothing.
#[test]
fn a_vehicle_killed_mid_fetch_stops_costing_its_depot_within_seconds() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = blob_bytes(64 << 20);
    let (depot_store, _) = node::store::open_data_dir(&dir.path().join("depot")).unwrap();
    let blob = depot_store.import(&data[..]).unwrap();
    let counters = Arc::new(ServeCounters::default());
    let (handle, depot_addr) = common::start_paced_depot(
        &runtime,
        depot_store,
        counters.clone(),
        Some(node::ratelimit::RateLimit::new(16 << 20)),
    );
    let fetch_args = |name: &str| {
        fetch_args(
            &dir.path().join(name),
            &dir.path().join(format!("{name}.bin")),
            &depot_addr,
            &blob,
        )
    };

    let (held, killed, _) = run_fetch(&fetch_args("killed"), Kill::Past(4));
    assert!(killed, "the fetch ended before it could be killed");
    let total = node::store::LAYOUT.group_count(data.len() as u64);
    assert!(
        held < total,
        "killed after the last group ({held} of {total})"
    );
    let at_kill = handle.transport_stats().udp_tx_bytes;
    let killed_at = Instant::now();

    // The depot notices by itself: nothing is sent to it or received from it.
    let mut first_second = None;
    let gone_after = loop {
        if first_second.is_none() && killed_at.elapsed() >= Duration::from_secs(1) {
            first_second = Some(handle.transport_stats().udp_tx_bytes - at_kill);
        }
        let peers = runtime.block_on(handle.connected_peers());
        if peers.is_empty() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the depot still holds a connection to the killed vehicle: {peers:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let after_kill = handle.transport_stats().udp_tx_bytes - at_kill;
    println!(
        "killed holding {held} of {total} groups; the depot dropped it after {gone_after:?}, \
         having sent {after_kill} bytes since the kill ({first_second:?} in its first second); \
         write timeouts {}",
        counters.write_timeouts.load(Ordering::Relaxed)
    );
    // What was in flight and a few probes, not the rest of the blob at the paced rate.
    assert!(
        after_kill < 8 << 20,
        "the depot sent {after_kill} bytes to a dead vehicle"
    );

    // Its transfer slots are free again: another vehicle fetches the whole blob.
    let (_, killed, stdout) = run_fetch(&fetch_args("next"), Kill::Never);
    assert!(!killed);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["bytes"].as_u64(),
        Some(data.len() as u64),
        "{summary}"
    );
    assert!(std::fs::read(dir.path().join("next.bin")).unwrap() == data);
    runtime.block_on(handle.shutdown());
}
