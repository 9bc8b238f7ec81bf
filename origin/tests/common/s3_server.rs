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
#[path = "venv.rs"]
mod venv;

/// The bucket the server makes.
pub const BUCKET: &str = "fleet-origin";
/// The venv's Python, with moto installed.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| venv::python_with("moto-venv", &scripts().join("requirements.txt")))
        .clone()
}

fn scripts() -> PathBuf {
    // From origin's tests and from the tests crate alike.
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../origin/tests/s3")).to_path_buf()
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
