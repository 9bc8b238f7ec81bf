//! What the depot-cache end-to-end tests share: a `depot-cache --config` process and its HTTP
//! endpoint.

// Test code: a panic is how a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use libp2p::Multiaddr;

/// A running `depot-cache --config` process, killed when dropped.
pub(crate) struct DepotProcess {
    child: Child,
    /// Its QUIC address with `/p2p/`.
    pub(crate) addr: Multiaddr,
    /// Its HTTP address (`/metrics`, `/status`).
    pub(crate) http: String,
}

impl Drop for DepotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `depot-cache --config` with `config` written to `dir/depot.toml` (stderr to
/// `dir/stderr.txt`); reads its address and HTTP address from stdout.
pub(crate) fn depot_daemon(dir: &Path, config: &str) -> DepotProcess {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("depot.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_depot-cache"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().parse().unwrap();
    let http = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(http) = line.strip_prefix("http ") {
            break http.to_owned();
        }
    };
    DepotProcess { child, addr, http }
}

/// GET `path` from `http`: the status line and the body.
pub(crate) fn get(http: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: depot\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The bytes the depot served its yard, from `/metrics`.
pub(crate) const SERVED: &str = "depotmesh_depot_bytes_total{direction=\"served\",link=\"yard\"}";

/// One series' value from `/metrics`.
pub(crate) fn metric(http: &str, series: &str) -> u64 {
    let (_, body) = get(http, "/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in {body}"))
        .parse()
        .unwrap()
}
