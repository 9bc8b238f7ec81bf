//! An S3-API server on loopback (moto in server mode, from PyPI, pinned in
//! `tests/s3/requirements.txt`) for the origin's object storage, and a way to run a test with
//! the credentials a real deployment gives in its environment.
//!
//! The workspace forbids `unsafe`, so a test cannot set `AWS_ACCESS_KEY_ID` for itself:
//! [`in_s3`] starts the server, then runs the test again in a child process with the
//! credentials and the endpoint in its environment, as `origin` runs under systemd with an
//! `EnvironmentFile`. moto accepts any credentials; the requests are signed all the same.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

#[path = "../../origin/tests/common/debian.rs"]
mod debian;

/// The bucket the server makes.
pub const BUCKET: &str = "fleet-origin";
/// Set in the child: the server's endpoint URL.
const ENDPOINT: &str = "DEPOTMESH_TEST_S3_ENDPOINT";

/// The venv's Python, with moto installed.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_moto).clone()
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("s3")
}

fn make_venv(venv: &Path) -> bool {
    let _ = std::fs::remove_dir_all(venv);
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .is_ok_and(|out| out.status.success())
}

fn install_moto() -> PathBuf {
    let requirements_file = scripts().join("requirements.txt");
    let requirements = std::fs::read(&requirements_file).unwrap();
    // Beside the test binaries (`target/<profile>/`), kept between runs.
    let exe = std::env::current_exe().unwrap();
    let venv = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("moto-venv");
    let python = venv.join("bin").join("python");
    let installed = venv.join("installed-requirements.txt");
    if python.exists() && std::fs::read(&installed).ok().as_ref() == Some(&requirements) {
        return python;
    }
    debian::install_unless(|| make_venv(&venv), "python3 python3-venv");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "-r",
        ])
        .arg(&requirements_file)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "pip install -r {} into {} failed (PyPI must be reachable the first time)",
        requirements_file.display(),
        venv.display()
    );
    std::fs::write(&installed, &requirements).unwrap();
    python
}

/// A running S3 server with [`BUCKET`]. It stops when dropped, or when the test process ends
/// (its standard input closes).
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    process: Child,
}

impl S3Server {
    /// Starts one, its request log in `log`.
    pub fn start(log: &Path) -> Self {
        let mut process = Command::new(python())
            .arg(scripts().join("moto_server.py"))
            .arg(BUCKET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("http://127.0.0.1:"),
            "moto did not start: {line:?}; see {}",
            log.display()
        );
        Self {
            endpoint: line.trim().to_owned(),
            process,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs test `name` (this function's caller, by its full name) with an S3 server: in the
/// child, calls `body` with the server's endpoint, with `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` set; in the parent, starts the server (its log in
/// `work`) and checks the child passed.
pub fn in_s3(name: &str, work: &Path, body: impl FnOnce(&str)) {
    if let Some(endpoint) = std::env::var_os(ENDPOINT) {
        body(&endpoint.to_string_lossy());
        return;
    }
    let server = S3Server::start(&work.join("moto.log"));
    crate::child::rerun_with_env(
        name,
        &[
            (ENDPOINT, server.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "depotmesh-test"),
            ("AWS_SECRET_ACCESS_KEY", "depotmesh-test-secret"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
}

/// The storage options for the server at `endpoint` (plain HTTP on loopback).
pub fn options(endpoint: &str) -> Vec<String> {
    vec![format!("endpoint={endpoint}"), "allow_http=true".to_owned()]
}
