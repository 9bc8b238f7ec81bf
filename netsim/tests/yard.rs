//! `netsim yard` end to end on a small yard: real origin, director service, origin's cache,
//! depot daemon and vehicle agents on loopback. A good release walks the canary and the rest and
//! every vehicle commits it; a release that fails its health check halts the campaign in its
//! canary, whose vehicles roll back, and nobody else gets it. The good run's links are shaped
//! (each vehicle's download limit, the depot's upload limit) well above what the small delta
//! needs: the options reach the agents and the depot, and the summary records them. One
//! vehicle of the good run had its gateway replaced (it runs a build no delta starts from): it
//! installs from the image compressed, fetching fewer bytes than the image. Every report draws a
//! timeline row per vehicle; `netsim yard` itself exits non-zero when the campaign did not end
//! as expected.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use netsim::yard::{YardOptions, run, table};

fn options(out: &std::path::Path, failing_canary: bool) -> YardOptions {
    YardOptions {
        vehicles: 4,
        image_bytes: 2 << 20,
        failing_canary,
        out: out.to_path_buf(),
        timeout: Duration::from_secs(180),
        seed: 7,
        vehicle_down_bytes_per_sec: None,
        depot_up_bytes_per_sec: None,
        corrupt_peer: false,
        slow_reader: false,
        report_flood: false,
        single_bank: 2,
        replaced_parts: 0,
        expect: None,
        verbose: true,
    }
}

#[test]
fn a_good_release_reaches_every_vehicle_and_a_bad_one_halts_in_the_canary() {
    let work = tempfile::tempdir().unwrap();

    // The last vehicle's gateway was replaced: it runs v1's factory build, which no delta
    // starts from.
    let good = run(&YardOptions {
        vehicle_down_bytes_per_sec: Some(2 << 20),
        depot_up_bytes_per_sec: Some(1 << 20),
        replaced_parts: 1,
        ..options(&work.path().join("good"), false)
    })
    .unwrap();
    let replaced = &good.results.last().unwrap().vin;
    let compressed = good.compressed_bytes.unwrap();
    assert!(compressed < good.image_bytes, "{good:?}");
    println!("{}", table(&good));
    assert_eq!(good.state, "completed", "{good:?}");
    let canary = good.results.iter().filter(|r| r.wave == 1).count();
    assert!(canary >= 1 && canary < good.results.len(), "{good:?}");
    for vehicle in &good.results {
        assert_eq!(vehicle.outcome.as_deref(), Some("committed"), "{vehicle:?}");
        for (image, slot) in vehicle.ecus.values() {
            assert_eq!(
                (image.as_str(), slot.as_str()),
                ("ecu/gw-2.bin", "B"),
                "{vehicle:?}"
            );
        }
        let fetched = vehicle.bytes_from_depot + vehicle.bytes_from_peers;
        if &vehicle.vin == replaced {
            // No delta applies: the image compressed came, fewer bytes than the image.
            assert!(
                fetched >= compressed && fetched < good.image_bytes,
                "{vehicle:?}"
            );
            assert_eq!(vehicle.compressed_bytes, Some(compressed), "{vehicle:?}");
            assert_eq!(vehicle.delta_bytes, None, "{vehicle:?}");
            assert_eq!(vehicle.payloads, ["compressed"], "{vehicle:?}");
        } else {
            // The delta came, not the image: from the depot or from neighbours.
            assert!(
                fetched >= good.delta_bytes && fetched < good.image_bytes / 2,
                "{vehicle:?}"
            );
            assert_eq!(vehicle.delta_bytes, Some(good.delta_bytes), "{vehicle:?}");
            assert_eq!(vehicle.compressed_bytes, None, "{vehicle:?}");
            assert_eq!(vehicle.payloads, ["delta"], "{vehicle:?}");
        }
        assert!(vehicle.report_via.is_some(), "{vehicle:?}");
        assert!(vehicle.reported_after_secs.is_some(), "{vehicle:?}");
        // Single-bank ECUs wrote only changed blocks to spare, then merged them home.
        if let Some(single) = &vehicle.single_bank {
            assert_eq!(single["merged"], true, "{vehicle:?}");
            let spare = single["flash_writes"]["spare_bytes"].as_u64().unwrap();
            assert!(spare > 0 && spare < good.image_bytes, "{vehicle:?}");
            assert_eq!(single["flash_writes"]["home_bytes"], spare, "{vehicle:?}");
            assert_eq!(
                single["merge"]["blocks_copied"],
                spare / 4096,
                "{vehicle:?}"
            );
        }
    }
    assert_eq!(
        good.results.iter().filter(|r| r.banks == "single").count(),
        2,
        "{good:?}"
    );
    assert!(good.completed_after_secs.is_some(), "{good:?}");
    // Half the vehicles have no route to the director: their reports went through the depot.
    assert!(
        good.results
            .iter()
            .any(|r| r.report_via.as_deref() == Some("depot"))
    );
    assert!(good.as_expected, "{good:?}");
    for vehicle in &good.results {
        // Its timeline, in the order things happen.
        let (fetch, trial, done) = (
            vehicle.fetch_started_after_secs.unwrap(),
            vehicle.trial_boot_after_secs.unwrap(),
            vehicle.finished_after_secs.unwrap(),
        );
        assert!(fetch <= trial && trial <= done, "{vehicle:?}");
        // What arrived, by sender, adds up; what went beyond the payload came twice.
        let [download] = vehicle.downloads.as_slice() else {
            panic!("one fetch: {vehicle:?}")
        };
        assert_eq!(download.from.values().sum::<u64>(), download.received);
        assert_eq!(
            download.received,
            vehicle.bytes_from_depot + vehicle.bytes_from_peers
        );
        assert_eq!(download.twice(), download.received - download.length);
        for sender in download.from.keys() {
            assert!(
                sender == "depot" || good.results.iter().any(|r| &r.vin == sender),
                "a sender is named by what it is: {sender}"
            );
        }
    }
    let html = std::fs::read_to_string(&good.report).unwrap();
    assert!(html.contains("id=\"state\">completed<"), "{html}");
    assert!(html.contains("id=\"verdict\">as expected<"), "{html}");
    // The director's time to update in words, not JSON.
    assert!(html.contains(
        "Time to update (the director's, from a vehicle's wave opening to its commit): p50 "
    ));
    // Each vehicle's timeline, with its download, install and trial boot.
    assert_timeline(&html, &good);
    assert_eq!(html.matches("download, ").count(), 4, "{html}");
    // Reports at the director: a step per report, one line per wave.
    assert!(html.contains("Reports at the director"), "{html}");
    assert_eq!(html.matches("<polyline").count(), 2, "{html}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("good/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["results"].as_array().unwrap().len(), 4);
    assert_eq!(summary["vehicle_down_bytes_per_sec"], 2 << 20);
    assert_eq!(summary["depot_up_bytes_per_sec"], 1 << 20);
    assert!(summary["completed_after_secs"].is_f64(), "{summary}");
    assert_eq!(summary["compressed_bytes"], compressed);
    for vehicle in summary["results"].as_array().unwrap() {
        assert!(vehicle["reported_after_secs"].is_f64(), "{vehicle}");
        if vehicle["vin"] == replaced.as_str() {
            assert_eq!(vehicle["compressed_bytes"], compressed, "{vehicle}");
        } else {
            assert_eq!(vehicle["delta_bytes"], good.delta_bytes, "{vehicle}");
        }
    }
    // The origin's audit log verifies and records, as the CLI would, who released v1, its
    // factory build and v2, and assigned v1 (or the factory build) to each vehicle.
    let origin = origin::Origin::new(
        work.path().join("good/origin"),
        None,
        proto::tuf::Time::from_unix(0),
    );
    let log = origin::audit::log_path(&origin);
    let key = origin::audit::key(&origin).unwrap().verifying_key();
    origin::audit::verify(&log, &key).unwrap();
    let entries = origin::audit::entries(&log).unwrap();
    let by_netsim = |action: &str| {
        entries
            .iter()
            .filter(|e| e["actor"] == "netsim" && e["action"] == action)
            .count()
    };
    assert_eq!(
        (by_netsim("release"), by_netsim("assign")),
        (3, 4),
        "{entries:?}"
    );

    let bad = run(&options(&work.path().join("bad"), true)).unwrap();
    println!("{}", table(&bad));
    assert_eq!(bad.state, "halted", "{bad:?}");
    assert!(
        bad.reason
            .as_deref()
            .unwrap()
            .contains("failed health checks in wave 1"),
        "{bad:?}"
    );
    for vehicle in &bad.results {
        for (image, slot) in vehicle.ecus.values() {
            assert_eq!(
                (image.as_str(), slot.as_str()),
                ("ecu/gw-1.bin", "A"),
                "{vehicle:?}"
            );
        }
        if let Some(single) = &vehicle.single_bank {
            // A rollback drops the new map: home is never written.
            assert_eq!(single["flash_writes"]["home_bytes"], 0, "{vehicle:?}");
        }
        if vehicle.wave == 1 {
            let outcome = vehicle.outcome.as_deref().unwrap();
            assert!(outcome.starts_with("rolled back"), "{vehicle:?}");
        } else {
            assert_eq!(vehicle.outcome, None, "{vehicle:?}");
            assert_eq!(vehicle.bytes_from_depot + vehicle.bytes_from_peers, 0);
            assert_eq!(vehicle.delta_bytes, None, "{vehicle:?}");
        }
    }
    // A failing release is expected to halt: it did, as expected.
    assert!(bad.as_expected, "{bad:?}");
    let html = std::fs::read_to_string(&bad.report).unwrap();
    assert!(html.contains("id=\"state\">halted<"), "{html}");
    assert!(html.contains("id=\"verdict\">as expected<"), "{html}");
    assert_timeline(&html, &bad);

    // The output directory is netsim's own: a directory holding anything else is refused.
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"mine").unwrap();
    let error = run(&options(&other, false)).unwrap_err();
    assert!(
        error.to_string().contains("was not made by netsim yard"),
        "{error}"
    );
    assert!(other.join("keep.txt").exists());
}

/// The report draws a timeline row for every vehicle.
fn assert_timeline(html: &str, summary: &netsim::yard::YardSummary) {
    assert!(html.contains("id=\"timeline\""), "{html}");
    for vehicle in &summary.results {
        assert!(
            html.contains(&format!(
                "<g class=\"vehicle\" data-vin=\"{}\">",
                vehicle.vin
            )),
            "{} has no timeline row",
            vehicle.vin
        );
    }
    assert_eq!(
        html.matches("<g class=\"vehicle\"").count(),
        summary.results.len()
    );
}

/// `netsim yard` itself: a campaign that halts where it was expected to complete is a failure
/// (exit code 3), with its summary and report written all the same; with `--failing-canary` a
/// halt is what is expected (exit code 0).
#[test]
fn the_exit_code_says_whether_the_campaign_ended_as_expected() {
    let work = tempfile::tempdir().unwrap();
    let yard = |out: &str, extra: &[&str]| {
        let out = work.path().join(out);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_netsim"))
            .args([
                "yard",
                "--vehicles",
                "2",
                "--image-mib",
                "1",
                "--failing-canary",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        println!("{stdout}{stderr}");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        (output.status.code(), stdout, stderr, summary, html)
    };

    let (code, stdout, stderr, summary, html) = yard("halt-expected", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary["state"], "halted");
    assert_eq!(
        (&summary["expected"], &summary["as_expected"]),
        (&"halted".into(), &true.into())
    );
    assert!(stdout.contains("halted"), "{stdout}");
    // Nobody reads "up to date" while still on v1, and the end of the canary's install is
    // said once, by the director having its report.
    assert!(!stdout.contains(": up to date"), "{stdout}");
    assert!(
        stdout.contains("no update assigned to it yet (runs ecu/gw-1.bin)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the director has its report (rolled back"),
        "{stdout}"
    );
    assert!(!stdout.contains(": done"), "{stdout}");
    assert!(
        stdout.contains(
            "time to update (the director's, from a vehicle's wave opening to its commit): none"
        ),
        "{stdout}"
    );
    assert_eq!(html.matches("<g class=\"vehicle\"").count(), 2, "{html}");

    let (code, _, stderr, summary, html) = yard("complete-expected", &["--expect", "completed"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the campaign was expected to complete; it halted"),
        "{stderr}"
    );
    assert_eq!(summary["as_expected"], false);
    assert!(html.contains("id=\"verdict\">not as expected<"), "{html}");
    assert_eq!(html.matches("<g class=\"vehicle\"").count(), 2, "{html}");
}

/// A corrupt peer joins the yard: it holds the delta, says so (the depot's tracker follows it
/// and points vehicles at it) and corrupts every piece it sends. Every vehicle still commits
/// v2, nothing it sent was kept, and it was asked (so it was really in the way); the vehicles
/// that caught it reported it to the depot, which then stopped deferring to its claims.
#[test]
fn a_corrupt_peer_is_caught_and_everyone_still_updates() {
    let work = tempfile::tempdir().unwrap();
    let summary = run(&YardOptions {
        corrupt_peer: true,
        ..options(&work.path().join("corrupt"), false)
    })
    .unwrap();
    println!("{}", table(&summary));
    assert_eq!(summary.state, "completed", "{summary:?}");
    let rogue = summary.corrupt_peer.clone().unwrap();
    assert!(rogue.lies >= 1, "{rogue:?}");
    assert_eq!(rogue.bytes_kept, 0, "{rogue:?}");
    // Whoever caught it told the depot, so the depot never waited out a deferral for its claims.
    assert!(rogue.reported_by >= 1, "{rogue:?}");
    assert_eq!(rogue.depot_deferrals_expired, 0, "{rogue:?}");
    for vehicle in &summary.results {
        assert_eq!(vehicle.outcome.as_deref(), Some("committed"), "{vehicle:?}");
        assert!(
            vehicle.bytes_from_depot + vehicle.bytes_from_peers >= summary.delta_bytes,
            "{vehicle:?}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("corrupt/summary.json")).unwrap())
            .unwrap();
    assert_eq!(json["corrupt_peer"]["bytes_kept"], 0);
}

/// Two compromised vehicles join the yard before the campaign, both enrolled members: a slow
/// reader that asks the depot for as many ranges of the release as it lets one peer hold and
/// reads none of them, and a report flooder that hands the depot's relay reports as fast as it
/// answers. Every honest vehicle still commits v2 (through the depot's relay too, for those
/// without a route to the director); the depot refused the slow reader's requests over its
/// share or cut its unread answers, and refused the flood past its quotas, relaying what it
/// took to a director that refused it.
#[test]
fn a_slow_reader_and_a_report_flood_do_not_keep_anyone_from_updating() {
    let work = tempfile::tempdir().unwrap();
    let summary = run(&YardOptions {
        slow_reader: true,
        report_flood: true,
        ..options(&work.path().join("attacked"), false)
    })
    .unwrap();
    println!("{}", table(&summary));
    assert_eq!(summary.state, "completed", "{summary:?}");
    for vehicle in &summary.results {
        assert_eq!(vehicle.outcome.as_deref(), Some("committed"), "{vehicle:?}");
        for (image, slot) in vehicle.ecus.values() {
            assert_eq!(
                (image.as_str(), slot.as_str()),
                ("ecu/gw-2.bin", "B"),
                "{vehicle:?}"
            );
        }
        assert!(vehicle.fetch_secs.is_some(), "{vehicle:?}");
        assert!(vehicle.reported_after_secs.is_some(), "{vehicle:?}");
    }
    assert!(
        summary
            .results
            .iter()
            .any(|r| r.report_via.as_deref() == Some("depot")),
        "{summary:?}"
    );

    let reader = summary.slow_reader.clone().unwrap();
    assert!(reader.connections >= 1, "{reader:?}");
    assert!(
        reader.requests > node::serve::MAX_SERVES_PER_PEER as u64,
        "{reader:?}"
    );
    assert!(
        reader.depot_over_share + reader.depot_write_timeouts > 0,
        "{reader:?}"
    );

    let flood = summary.report_flood.clone().unwrap();
    assert!(flood.taken >= 1, "{flood:?}");
    assert!(flood.refused >= 1, "{flood:?}");
    // Every report it handed over was answered, but those in flight when it stopped.
    let answered = flood.taken + flood.refused + flood.failed;
    assert!(
        answered <= flood.sent
            && flood.sent - answered <= netsim::attackers::report_flood::IN_FLIGHT as u64,
        "{flood:?}"
    );
    assert!(flood.depot_relay_refused >= 1, "{flood:?}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("attacked/summary.json")).unwrap())
            .unwrap();
    assert_eq!(json["slow_reader"]["requests"], reader.requests);
    assert_eq!(json["report_flood"]["refused"], flood.refused);
}
