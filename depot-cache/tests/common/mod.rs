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

/// A director service (`origin::http`) on a loopback port, on its own runtime.
pub(crate) struct DirectorService {
    /// The runtime that serves it (kept alive with it).
    pub(crate) runtime: tokio::runtime::Runtime,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// Its state, to serve on another listener too.
    pub(crate) shared: std::sync::Arc<origin::http::Shared>,
}

/// Starts the director of `origin` on a loopback port.
pub(crate) fn director_service(origin: &origin::repo::Origin) -> DirectorService {
    let director = origin::service::Director::open(origin.clone()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shared = origin::http::Shared::new(director);
    runtime.spawn(origin::http::serve(
        listener,
        shared.clone(),
        std::time::Duration::from_secs(10),
    ));
    DirectorService {
        runtime,
        url,
        shared,
    }
}

/// The hex public key of the ed25519 key whose seed is 32 × `seed`.
pub(crate) fn public(seed: u8) -> String {
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .as_bytes(),
    )
}

/// Registers vehicle `vin` with one gateway ECU `serial` (hardware `gw-v1`, running
/// `ecu/gw-1.bin`), primary key seed 8 and ECU key seed 9, over the director's HTTP API.
pub(crate) fn register_vehicle(url: &str, vin: &str, serial: &str) {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let vehicle = serde_json::json!({
        "vin": vin, "region": "eu-north", "vehicle_type": "tractor", "home_depot": "depot-1",
        "primary_key": public(8),
        "ecus": [{"serial": serial, "hardware_id": "gw-v1",
                  "public_key": public(9), "installed": "ecu/gw-1.bin"}],
    });
    let response = http
        .post(&format!("{url}/v1/vehicles"))
        .send(serde_json::json!({"actor": "provisioning", "vehicle": vehicle}).to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}
