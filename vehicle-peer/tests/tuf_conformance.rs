//! The `tuf-conformance-client` binary, run as the conformance suite runs it, over plain HTTP
//! against a small file server holding each python-tuf fixture's `remote/` directory: every
//! case must end as `expected.json` says (the fixtures expire in 2020 or 2035, so the system
//! clock gives the same answers as the fixtures' reference time).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

fn tuf_dir() -> PathBuf {
    match std::env::var_os("DEPOTMESH_VECTORS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"),
    }
    .join("tuf")
}

/// The paths a [`serve`] server was asked for, in order.
type Asked = Arc<Mutex<Vec<String>>>;

/// Serves files under `root` over HTTP/1.0 (404 for anything else) until the test ends.
fn serve(root: PathBuf) -> String {
    serve_logged(root).0
}

/// [`serve`], noting every path asked for.
fn serve_logged(root: PathBuf) -> (String, Asked) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let asked = Asked::default();
    let log = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let path = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            log.lock().unwrap().push(path.to_owned());
            let file = root.join(path);
            let response = match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let mut response =
                        format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                            .into_bytes();
                    response.extend(body);
                    response
                }
                _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    (format!("http://{address}"), asked)
}

fn client(metadata: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tuf-conformance-client"))
        .arg("--metadata-dir")
        .arg(metadata)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn run_case(case: &Path) -> Vec<String> {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(case.join("expected.json")).unwrap()).unwrap();
    let url = serve(case.join("remote"));
    let (metadata_url, targets_url) = (format!("{url}/metadata/"), format!("{url}/targets/"));
    let work = tempfile::tempdir().unwrap();
    let metadata = work.path().join("metadata");
    let targets = work.path().join("targets");
    let client_dir = case.join("client/metadata");
    // `init` with the trusted root, then the rest of the client's earlier trusted state.
    let (ok, stderr) = client(
        &metadata,
        &["init", client_dir.join("root.json").to_str().unwrap()],
    );
    assert!(ok, "init failed: {stderr}");
    for entry in std::fs::read_dir(&client_dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, metadata.join(path.file_name().unwrap())).unwrap();
    }
    let mut problems = Vec::new();
    let (ok, stderr) = client(&metadata, &["--metadata-url", &metadata_url, "refresh"]);
    let want = expected["refresh"].as_str().unwrap();
    if ok != (want == "accept") {
        problems.push(format!("refresh: exit {ok}, want {want}: {stderr}"));
    }
    for (name, want) in expected["downloads"].as_object().into_iter().flatten() {
        let (ok, stderr) = client(
            &metadata,
            &[
                "--metadata-url",
                &metadata_url,
                "--target-name",
                name,
                "--target-base-url",
                &targets_url,
                "--target-dir",
                targets.to_str().unwrap(),
                "download",
            ],
        );
        let want = want.as_str().unwrap();
        if ok != (want == "accept") {
            problems.push(format!("download {name}: exit {ok}, want {want}: {stderr}"));
        }
        let file = targets.join(vehicle_peer::tuf_files::quote(name));
        if ok && !file.exists() {
            problems.push(format!(
                "download {name} succeeded but wrote no {}",
                file.display()
            ));
        }
        if !ok && file.exists() {
            problems.push(format!(
                "download {name} failed but left {}",
                file.display()
            ));
        }
    }
    for (role, want) in expected["trusted_versions_after_refresh"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let bytes = std::fs::read(metadata.join(format!("{role}.json"))).unwrap_or_default();
        let have = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["signed"]["version"].as_u64());
        if have != want.as_u64() {
            problems.push(format!("trusted {role}: {have:?}, want {want}"));
        }
    }
    problems
}

#[test]
fn conformance_client_over_http_matches_python_tuf_on_every_fixture() {
    let base = tuf_dir();
    let mut cases = vec![base.join("repo")];
    let mut attacks: Vec<PathBuf> = std::fs::read_dir(base.join("attacks"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    attacks.sort();
    cases.extend(attacks);
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        failures.extend(
            run_case(case)
                .into_iter()
                .map(|problem| format!("{name}: {problem}")),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same, over the sets python-tuf made with ECDSA P-256, RSA-PSS and mixed keys
/// (`proto/tests/vectors/keytypes`).
#[test]
fn conformance_client_matches_python_tuf_with_every_key_type() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/keytypes");
    let mut failures = Vec::new();
    for kind in ["ecdsa", "rsa", "mixed"] {
        let mut cases = vec![base.join(kind).join("repo")];
        let mut attacks: Vec<PathBuf> = std::fs::read_dir(base.join(kind).join("attacks"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        attacks.sort();
        cases.extend(attacks);
        for case in &cases {
            let name = case.file_name().unwrap().to_string_lossy().into_owned();
            failures.extend(
                run_case(case)
                    .into_iter()
                    .map(|problem| format!("{kind}/{name}: {problem}")),
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_arguments_and_a_bad_root_fail_clearly() {
    let work = tempfile::tempdir().unwrap();
    let metadata = work.path().join("metadata");
    let (ok, stderr) = client(&metadata, &["refresh"]);
    assert!(!ok && stderr.contains("--metadata-url"), "{stderr}");
    let bogus = work.path().join("root.json");
    std::fs::write(&bogus, b"{\"signed\": 1}").unwrap();
    let (ok, stderr) = client(&metadata, &["init", bogus.to_str().unwrap()]);
    assert!(!ok && stderr.contains("root.json"), "{stderr}");
    let (ok, stderr) = client(
        &metadata,
        &["--metadata-url", "http://127.0.0.1:9/", "refresh"],
    );
    assert!(
        !ok && stderr.contains("root"),
        "no trusted root yet: {stderr}"
    );
}

#[test]
fn several_targets_at_once_and_a_verified_local_copy_is_not_downloaded_again() {
    let case = tuf_dir().join("repo");
    let (url, asked) = serve_logged(case.join("remote"));
    let work = tempfile::tempdir().unwrap();
    let metadata = work.path().join("metadata");
    let targets = work.path().join("targets");
    let root = case.join("client/metadata/root.json");
    let (ok, stderr) = client(&metadata, &["init", root.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let names = ["depot/manifest.txt", "ecu/brake-ecu-1.2.0.bin"];
    let download = || {
        let (metadata_url, targets_url) = (format!("{url}/metadata/"), format!("{url}/targets/"));
        let mut args = vec!["--metadata-url", &metadata_url];
        for name in names {
            args.extend(["--target-name", name]);
        }
        let targets_dir = targets.to_str().unwrap();
        args.extend([
            "--target-base-url",
            &targets_url,
            "--target-dir",
            targets_dir,
            "download",
        ]);
        let (ok, stderr) = client(&metadata, &args);
        assert!(ok, "{stderr}");
    };
    let target_requests = || {
        asked
            .lock()
            .unwrap()
            .iter()
            .filter(|path| path.starts_with("targets/"))
            .count()
    };
    // Both, in one run.
    download();
    assert_eq!(target_requests(), 2, "{:?}", asked.lock().unwrap());
    let copy = |name: &str| targets.join(vehicle_peer::tuf_files::quote(name));
    let good = std::fs::read(copy(names[1])).unwrap();
    // Again: both copies match their trusted hashes; nothing is downloaded.
    download();
    assert_eq!(target_requests(), 2, "{:?}", asked.lock().unwrap());
    // A damaged copy is not taken: it is downloaded again, and right again.
    std::fs::write(copy(names[1]), b"not the brake firmware").unwrap();
    download();
    assert_eq!(target_requests(), 3, "{:?}", asked.lock().unwrap());
    assert_eq!(std::fs::read(copy(names[1])).unwrap(), good);
}

#[test]
fn the_client_names_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_tuf-conformance-client"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("tuf-conformance-client "), "{text}");
    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = client(
        &work.path().join("metadata"),
        &["--metadata-url", "http://127.0.0.1:9/", "download"],
    );
    assert!(
        !ok && stderr.starts_with("tuf-conformance-client: "),
        "{stderr}"
    );
    assert!(stderr.contains("--target-name"), "{stderr}");
}
