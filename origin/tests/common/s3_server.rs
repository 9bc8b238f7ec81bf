//! An S3-API server on loopback for the origin's object storage: moto in server mode, from
//! PyPI (pinned in `origin/tests/s3/requirements.txt`), installed into a venv beside the test
//! binaries the first time. Shared through `#[path]` by origin's tests and the tests crate.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

#[path = "debian.rs"]
mod debian;

/// The bucket the server makes.
pub const BUCKET: &str = "fleet-origin";
/// The venv's Python, with moto installed.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(install_moto).clone()
}

fn scripts() -> PathBuf {
    // From origin's tests and from the tests crate alike.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../origin/tests/s3")).to_path_buf()
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

/// The storage options for the server at `endpoint` (plain HTTP on loopback).
pub fn options(endpoint: &str) -> Vec<String> {
    vec![format!("endpoint={endpoint}"), "allow_http=true".to_owned()]
}

/// The environment a process using the server needs: credentials as a deployment gives them
/// (moto accepts any; the requests are signed all the same).
pub const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "depotmesh-test"),
    ("AWS_SECRET_ACCESS_KEY", "depotmesh-test-secret"),
    ("AWS_REGION", "us-east-1"),
];
