//! The director service (`origin::http`) on a loopback port, and vehicles registered with it
//! over its HTTP API, as a provisioning system registers them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use node::director_client::ClientTls;

/// How often the director service runs its campaign gates in tests.
const TICK: Duration = Duration::from_secs(10);

/// The seed (32 × it) of a registered vehicle's primary key, which signs its manifests.
pub const PRIMARY_SEED: u8 = 8;

/// The seed (32 × it) of a registered vehicle's ECU key, which signs the ECU's version reports.
pub const ECU_SEED: u8 = 9;

/// A director service on a loopback port, on its own runtime; it stops when dropped.
pub struct DirectorService {
    /// The runtime that serves it (kept alive with it).
    pub runtime: tokio::runtime::Runtime,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The CA file its certificate chains to (the origin's `tls/director-ca.pem`).
    pub ca: PathBuf,
    /// The provisioning system's credential (an operator with the provisioner role):
    /// certificate and key.
    pub provisioning: (PathBuf, PathBuf),
    /// Its state, to serve on another listener too.
    pub shared: Arc<origin::http::Shared>,
    transport: origin::http::Transport,
}

impl std::fmt::Debug for DirectorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorService")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl DirectorService {
    /// Starts the director of `origin` on a loopback port, over HTTPS with the origin's own
    /// certificate.
    pub fn start(origin: &origin::repo::Origin) -> Self {
        let director = origin::service::Director::open(origin.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let transport = origin::http::transport(origin, &origin::http::Listen::OriginTls).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let shared = origin::http::Shared::new(director);
        runtime.spawn(origin::http::serve(
            listener,
            transport.clone(),
            shared.clone(),
            TICK,
        ));
        let added = origin::operators::add(
            origin,
            &crate::release::actor(),
            &"provisioning".parse().unwrap(),
            &std::collections::BTreeSet::from([origin::operators::Role::Provisioner]),
            30,
            &origin.dir.join("../operators"),
        )
        .unwrap();
        Self {
            runtime,
            url,
            ca: origin::tls::TlsFiles::of(origin).director_ca,
            provisioning: (added.certificate, added.key),
            shared,
            transport,
        }
    }

    /// An HTTP client that trusts the director's CA, presents the provisioning system's
    /// certificate and reads error statuses as answers.
    #[must_use]
    pub fn agent(&self) -> ureq::Agent {
        ClientTls::trusting(&self.ca)
            .unwrap()
            .with_identity(&self.provisioning.0, &self.provisioning.1)
            .unwrap()
            .agent(Duration::from_secs(30))
    }

    /// Serves the same director on `addr` too, from now on: a route to it that comes up.
    pub fn serve_also(&self, addr: SocketAddr) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap();
        self.runtime.spawn(origin::http::serve(
            listener,
            self.transport.clone(),
            self.shared.clone(),
            TICK,
        ));
    }
}

/// The hex public key of the ed25519 key whose seed is 32 × `seed`.
#[must_use]
pub fn public(seed: u8) -> String {
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .verifying_key()
            .as_bytes(),
    )
}

/// Registers vehicle `vin` with one gateway ECU `serial` (hardware `gw-v1`, running
/// `ecu/gw-1.bin`), primary key seed [`PRIMARY_SEED`] and ECU key seed [`ECU_SEED`], over the
/// director's HTTP API.
pub fn register_vehicle(director: &DirectorService, vin: &str, serial: &str) {
    register_vehicle_with_keys(
        director,
        vin,
        serial,
        (&public(PRIMARY_SEED), &public(ECU_SEED)),
    );
}

/// [`register_vehicle`] with these public keys of its primary and its ECU (ed25519 in hex, or
/// PEM public keys of any type).
pub fn register_vehicle_with_keys(
    director: &DirectorService,
    vin: &str,
    serial: &str,
    keys: (&str, &str),
) {
    let vehicle = gateway_record(vin, serial, keys);
    register(director, &vehicle);
}

/// Registers `vehicle` (a registration record, as `origin vehicle register --file` sends it)
/// over the director's HTTP API, as the provisioning system.
pub fn register(director: &DirectorService, vehicle: &serde_json::Value) {
    let response = director
        .agent()
        .post(&format!("{}/v1/vehicles", director.url))
        .send(serde_json::json!({ "vehicle": vehicle }).to_string())
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// The registry record of vehicle `vin` with one gateway ECU `serial` (hardware `gw-v1`,
/// running `ecu/gw-1.bin`) and these public keys of its primary and its ECU.
fn gateway_record(vin: &str, serial: &str, (primary, ecu): (&str, &str)) -> serde_json::Value {
    serde_json::json!({
        "vin": vin, "region": "eu-north", "vehicle_type": "tractor", "home_depot": "depot-1",
        "primary_key": primary,
        "ecus": [{"serial": serial, "hardware_id": "gw-v1",
                  "public_key": ecu, "installed": "ecu/gw-1.bin"}],
    })
}

/// [`register_vehicle`] with no service running: the director of `origin` (its embedded
/// registry) opened for the call the HTTP handler makes, and closed again.
pub fn register_with_director(origin: &origin::repo::Origin, vin: &str, serial: &str) {
    let record = gateway_record(vin, serial, (&public(PRIMARY_SEED), &public(ECU_SEED)));
    let mut director = origin::service::Director::open(origin.clone()).unwrap();
    director
        .register(
            &serde_json::from_value(record).unwrap(),
            "provisioning",
            node::clock::unix_now(),
        )
        .unwrap();
}

/// The director's registry (`GET /v1/vehicles`).
pub fn registry(director: &DirectorService) -> serde_json::Value {
    let text = director
        .agent()
        .get(&format!("{}/v1/vehicles", director.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Has the director assign `target` to vehicle `vin`'s gateway ECU `serial` (hardware
/// `gw-v1`), at `priority`: it signs the vehicle's director targets.
pub fn assign_gateway(
    origin: &origin::repo::Origin,
    vin: &str,
    serial: &str,
    target: &str,
    priority: node::policy::Priority,
) {
    let ecu = origin::director::Assignment {
        serial: serial.parse().unwrap(),
        hardware_id: "gw-v1".into(),
        target: target.into(),
    };
    origin::director::assign(
        origin,
        &crate::release::actor(),
        &vin.parse().unwrap(),
        &[ecu],
        priority,
    )
    .unwrap();
}
