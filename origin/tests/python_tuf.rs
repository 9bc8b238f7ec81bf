//! What `origin` signs, python-tuf's own client accepts: the reference implementation of TUF,
//! run as an outside user would run it, over an image repository the `origin` binary made.
//!
//! Each test drives the binary (init, rotations, releases), serves the image repository
//! (`metadata/` and `targets/`, as they are on disk) with Python's `http.server` on loopback,
//! and runs `tests/python_tuf/client.py`: `tuf.ngclient.Updater` trusting the shipped
//! `1.root.json`, refreshing, downloading a target by its consistent-snapshot name and checking
//! its length and hashes. The test compares the downloaded bytes' SHA-256 with the image's, the
//! key types python-tuf read from the root it ends up trusting with the ones asked for, and the
//! file host's log with the names `origin` wrote. Every key type alone (ed25519, ECDSA P-256,
//! RSA-PSS), all mixed with a delegated role, a root rotation followed by a client with state
//! and by a new one (and a forged timestamp and an altered image refused), and keys made and
//! used inside a PKCS #11 token (SoftHSM2).
//!
//! python-tuf (`tests/python_tuf/requirements.txt`, pinned) is installed with pip into a venv
//! under the target directory, once: again only when the requirements change. Needs `python3`
//! (and Debian's `python3-venv`, installed when missing) and PyPI the first time.

#![allow(clippy::unwrap_used)]

#[path = "common/debian.rs"]
mod debian;
#[path = "common/origin_cli.rs"]
mod origin_cli;
#[path = "common/softhsm.rs"]
mod softhsm;
#[path = "common/venv.rs"]
mod venv;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use origin_cli::{OriginCli, image, release_args, sha256};
use serde_json::{Value, json};

/// `tests/python_tuf`: the client, the file server, the pinned requirements.
fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python_tuf")
}

/// The venv's Python, with python-tuf installed.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_python_tuf).clone()
}

fn install_python_tuf() -> PathBuf {
    venv::python_with("python-tuf-venv", &scripts().join("requirements.txt"))
}

/// A directory served over HTTP on loopback by Python's `http.server` (`serve.py`), which
/// logs `<status> <path>` for every request. Dropping it stops it; it also exits when its
/// standard input closes, when the test process ends however it ends.
struct FileServer {
    url: String,
    log: PathBuf,
    process: Child,
}

impl FileServer {
    fn start(dir: &Path, log: PathBuf) -> Self {
        let mut process = Command::new(python())
            .arg(scripts().join("serve.py"))
            .arg(dir)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, port) = mpsc::channel();
        let stdout = process.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let port = port
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let Ok(port) = port.trim().parse::<u16>() else {
            let _ = process.kill();
            let _ = process.wait();
            panic!("serve.py did not start: {port:?}");
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            log,
            process,
        }
    }

    /// Every request so far, as `<status> <path>`.
    fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// One python-tuf client: its own state directory (trusted metadata, downloads), kept between
/// runs as an installed client keeps it.
struct PythonClient {
    state: PathBuf,
}

impl PythonClient {
    fn new(state: PathBuf) -> Self {
        Self { state }
    }

    /// Refreshes from `server` (trusting `root` on the first run) and downloads `target`:
    /// what `client.py` printed, or why python-tuf refused.
    fn download(&self, server: &FileServer, root: &Path, target: &str) -> Result<Value, String> {
        let out = Command::new(python())
            .arg(scripts().join("client.py"))
            .arg("--root")
            .arg(root)
            .arg("--state")
            .arg(&self.state)
            .args(["--url", &server.url, "--target", target])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("{stdout}{stderr}"));
        }
        serde_json::from_str(stdout.trim()).map_err(|error| format!("{error}: {stdout}{stderr}"))
    }
}

/// An origin in `work` with its offline keys in a directory beside it.
fn origin_in(work: &Path) -> OriginCli {
    OriginCli::new(work.join("origin"), work.join("usb-stick"))
}

/// Releases `bytes` as target `name` (signed by `role`).
fn release(origin: &OriginCli, name: &str, bytes: &[u8], counter: u64, role: &str) {
    let file = origin.dir.parent().unwrap().join(name.replace('/', "_"));
    fs::write(&file, bytes).unwrap();
    let mut args = release_args(&file, name, counter);
    args.extend(["--role".to_owned(), role.to_owned()]);
    origin.ok(&args);
}

/// How python-tuf names each key type: `keytype/scheme`.
fn scheme(key_type: &str) -> &'static str {
    match key_type {
        "ed25519" => "ed25519/ed25519",
        "ecdsa" => "ecdsa/ecdsa-sha2-nistp256",
        "rsa" => "rsa/rsassa-pss-sha256",
        other => panic!("no key type {other}"),
    }
}

/// What `client.py` reports of the trusted root for these key types of root, targets,
/// snapshot and timestamp.
fn keys(root: &str, targets: &str, snapshot: &str, timestamp: &str) -> Value {
    json!({
        "root": [scheme(root)],
        "targets": [scheme(targets)],
        "snapshot": [scheme(snapshot)],
        "timestamp": [scheme(timestamp)],
    })
}

/// The name `origin` stores target `name` under and python-tuf asks for: its SHA-256, a dot,
/// its base name, in its directory.
fn consistent_name(name: &str, bytes: &[u8]) -> String {
    let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
    let dir = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    format!("{dir}{}.{base}", sha256(bytes))
}

/// `origin init --key-type KEY_TYPE`, one release, and python-tuf downloads it.
fn one_key_type(key_type: &str) {
    let work = tempfile::tempdir().unwrap();
    let origin = origin_in(work.path());
    origin.ok(&["init", "--key-type", key_type]);
    let bytes = image(100_000, 1);
    let name = "ecu/brake-1.0.0.bin";
    release(&origin, name, &bytes, 1, "targets");

    let repository = origin.image_repository();
    let server = FileServer::start(&repository, work.path().join("http.log"));
    let client = PythonClient::new(work.path().join("python-client"));
    let root = repository.join("metadata/1.root.json");
    let got = client.download(&server, &root, name).unwrap();
    assert_eq!(got["sha256"], sha256(&bytes).as_str(), "{got}");
    assert_eq!(got["root_version"], 1, "{got}");
    assert_eq!(
        got["keys"],
        keys(key_type, key_type, key_type, key_type),
        "{got}"
    );
    // python-tuf found the image under the consistent-snapshot name `origin` wrote.
    let requests = server.requests();
    let wanted = format!("200 /targets/{}", consistent_name(name, &bytes));
    assert!(requests.contains(&wanted), "{requests:?}");
}

#[test]
fn python_tuf_accepts_an_ed25519_repository() {
    one_key_type("ed25519");
}

#[test]
fn python_tuf_accepts_an_ecdsa_repository() {
    one_key_type("ecdsa");
}

#[test]
fn python_tuf_accepts_an_rsa_repository() {
    one_key_type("rsa");
}

/// Every key type in one repository: ECDSA roots, an RSA targets key, ed25519 snapshot and
/// timestamp keys (rotated to), and a role delegated to with its own key, signing its own
/// image. python-tuf follows the delegation to that image.
#[test]
fn python_tuf_accepts_mixed_key_types_and_a_delegation() {
    let work = tempfile::tempdir().unwrap();
    let origin = origin_in(work.path());
    origin.ok(&["init", "--key-type", "ecdsa"]);
    for (role, key_type) in [
        ("targets", "rsa"),
        ("snapshot", "ed25519"),
        ("timestamp", "ed25519"),
    ] {
        origin.ok(&[
            "rotate",
            "--repository",
            "image",
            "--role",
            role,
            "--key-type",
            key_type,
        ]);
    }
    origin.ok(&[
        "delegate",
        "--name",
        "brake-supplier",
        "--path",
        "supplier/*",
        "--key-type",
        "ed25519",
    ]);
    let own = image(100_000, 2);
    let supplied = image(70_000, 3);
    release(&origin, "ecu/brake-1.0.0.bin", &own, 1, "targets");
    release(
        &origin,
        "supplier/brake-2.0.0.bin",
        &supplied,
        2,
        "brake-supplier",
    );
    origin.ok(&["verify"]);

    let repository = origin.image_repository();
    let server = FileServer::start(&repository, work.path().join("http.log"));
    let client = PythonClient::new(work.path().join("python-client"));
    let root = repository.join("metadata/1.root.json");
    let got = client
        .download(&server, &root, "ecu/brake-1.0.0.bin")
        .unwrap();
    assert_eq!(got["sha256"], sha256(&own).as_str(), "{got}");
    assert_eq!(got["root_version"], 4, "three rotations: {got}");
    assert_eq!(got["keys"], keys("ecdsa", "rsa", "ed25519", "ed25519"));
    let got = client
        .download(&server, &root, "supplier/brake-2.0.0.bin")
        .unwrap();
    assert_eq!(got["sha256"], sha256(&supplied).as_str(), "{got}");
    let requests = server.requests();
    for wanted in [
        // Version 1 is the empty one `delegate` signs; the release signs 2.
        "200 /metadata/2.brake-supplier.json".to_owned(),
        format!(
            "200 /targets/{}",
            consistent_name("supplier/brake-2.0.0.bin", &supplied)
        ),
    ] {
        assert!(requests.contains(&wanted), "{wanted}: {requests:?}");
    }
}

/// A client that trusted root v1 and downloaded the first release follows the root through a
/// rotation of the root key (to RSA) and of the timestamp key (to ECDSA) to the next release; a
/// new client starting from the shipped 1.root.json does too. A timestamp or an image altered on
/// the file host is refused.
#[test]
fn python_tuf_follows_root_rotations() {
    let work = tempfile::tempdir().unwrap();
    let origin = origin_in(work.path());
    origin.ok(&["init"]);
    let first = image(60_000, 4);
    release(&origin, "ecu/brake-1.0.0.bin", &first, 1, "targets");
    let repository = origin.image_repository();
    let server = FileServer::start(&repository, work.path().join("http.log"));
    let root = repository.join("metadata/1.root.json");
    let installed = PythonClient::new(work.path().join("installed-client"));
    let got = installed
        .download(&server, &root, "ecu/brake-1.0.0.bin")
        .unwrap();
    assert_eq!(got["sha256"], sha256(&first).as_str(), "{got}");
    assert_eq!(got["root_version"], 1, "{got}");

    for (role, key_type) in [("root", "rsa"), ("timestamp", "ecdsa")] {
        origin.ok(&[
            "rotate",
            "--repository",
            "image",
            "--role",
            role,
            "--key-type",
            key_type,
        ]);
    }
    let second = image(60_000, 5);
    let name = "ecu/brake-2.0.0.bin";
    release(&origin, name, &second, 2, "targets");
    let rotated = keys("rsa", "ed25519", "ed25519", "ecdsa");
    for client in [
        &installed,
        &PythonClient::new(work.path().join("new-client")),
    ] {
        let got = client.download(&server, &root, name).unwrap();
        assert_eq!(got["sha256"], sha256(&second).as_str(), "{got}");
        assert_eq!(got["root_version"], 3, "{got}");
        assert_eq!(got["keys"], rotated, "{got}");
    }
    let requests = server.requests();
    for wanted in [
        "200 /metadata/2.root.json",
        "200 /metadata/3.root.json",
        "404 /metadata/4.root.json",
    ] {
        assert!(
            requests.iter().any(|r| r == wanted),
            "{wanted}: {requests:?}"
        );
    }

    // The file host extends the timestamp's expiry: its signature no longer verifies, and
    // python-tuf refuses it (so what it accepted above, it had checked).
    let timestamp = repository.join("metadata/timestamp.json");
    let genuine = fs::read(&timestamp).unwrap();
    let mut forged: Value = serde_json::from_slice(&genuine).unwrap();
    forged["signed"]["expires"] = json!("2099-01-01T00:00:00Z");
    fs::write(&timestamp, serde_json::to_vec(&forged).unwrap()).unwrap();
    let refused = PythonClient::new(work.path().join("forged-timestamp-client"))
        .download(&server, &root, name)
        .unwrap_err();
    assert!(refused.contains("UnsignedMetadataError"), "{refused}");
    fs::write(&timestamp, genuine).unwrap();

    // The file host's copy of the image is altered (same length): python-tuf refuses it.
    let mut altered = second.clone();
    altered[12_345] ^= 1;
    let served = repository
        .join("targets")
        .join(consistent_name(name, &second));
    fs::write(&served, &altered).unwrap();
    let refused = PythonClient::new(work.path().join("altered-image-client"))
        .download(&server, &root, name)
        .unwrap_err();
    assert!(refused.contains("LengthOrHashMismatchError"), "{refused}");
}

/// Keys made and used inside a PKCS #11 token (SoftHSM2): ECDSA roots and image targets at
/// init, the targets key rotated to RSA-PSS and the root to ed25519 inside the token. Every
/// signature the token made (ECDSA turned into DER, RSA-PSS, EdDSA) verifies in python-tuf
/// along the root chain.
#[test]
fn python_tuf_accepts_what_keys_in_a_token_sign() {
    let work = tempfile::tempdir().unwrap();
    let hsm = softhsm::SoftHsm::new(work.path());
    hsm.init_token("python-tuf");
    let pin = work.path().join("pin");
    fs::write(&pin, format!("{}\n", softhsm::PIN)).unwrap();
    let origin = OriginCli::new(work.path().join("origin"), hsm.uri("python-tuf", &pin))
        .with_env("SOFTHSM2_CONF", &hsm.conf);
    origin.ok(&["init"]);
    for (role, key_type) in [("targets", "rsa"), ("root", "ed25519")] {
        origin.ok(&[
            "rotate",
            "--repository",
            "image",
            "--role",
            role,
            "--key-type",
            key_type,
        ]);
    }
    let bytes = image(80_000, 6);
    let name = "ecu/brake-1.0.0.bin";
    release(&origin, name, &bytes, 1, "targets");

    let repository = origin.image_repository();
    let server = FileServer::start(&repository, work.path().join("http.log"));
    let got = PythonClient::new(work.path().join("python-client"))
        .download(&server, &repository.join("metadata/1.root.json"), name)
        .unwrap();
    assert_eq!(got["sha256"], sha256(&bytes).as_str(), "{got}");
    assert_eq!(got["root_version"], 3, "{got}");
    assert_eq!(got["keys"], keys("ed25519", "rsa", "ed25519", "ed25519"));
    // The first root, which python-tuf trusted to start with, was the token's ECDSA key's.
    let first: Value =
        serde_json::from_slice(&fs::read(repository.join("metadata/1.root.json")).unwrap())
            .unwrap();
    let keyid = first["signed"]["roles"]["root"]["keyids"][0]
        .as_str()
        .unwrap();
    assert_eq!(first["signed"]["keys"][keyid]["keytype"], "ecdsa");
}
