//! Vehicles: one that fetches a signed target over the mesh (`vehicle-peer get`), and vehicle
//! agents in the yard with a file-backed gateway ECU (`vehicle_peer::simulated`, as `netsim
//! yard` runs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use proto::tuf::Time;
use vehicle_peer::mesh::{GetRequest, get_target};

use crate::director::{ECU_SEED, PRIMARY_SEED};

/// A vehicle that fetches targets of the image repository over the mesh, with its own data
/// directory (store, identity, the metadata it trusts).
#[derive(Debug)]
pub struct MeshVehicle {
    /// The runtime its node runs on while it fetches.
    pub runtime: tokio::runtime::Runtime,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The image repository's first root.
    pub root: PathBuf,
}

impl MeshVehicle {
    /// A vehicle with data in `data_dir` that starts out trusting `root`.
    pub fn new(data_dir: PathBuf, root: PathBuf) -> Self {
        Self {
            runtime: node::runtime::build_tokio(Some(1)).unwrap(),
            data_dir,
            root,
        }
    }

    /// Refreshes the metadata from `peers` (loopback, no mDNS) and fetches `target` into `out`,
    /// checking expiry against `now`, waiting at most `metadata_timeout` for one metadata file:
    /// what `vehicle-peer get` does.
    pub fn get(
        &self,
        peers: &[Multiaddr],
        target: &str,
        out: &Path,
        now: Time,
        metadata_timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        get_target(
            &self.runtime,
            &GetRequest {
                data_dir: self.data_dir.clone(),
                peers: peers.to_vec(),
                listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
                mdns: false,
                membership: None,
                root: Some(self.root.clone()),
                repository: "image".into(),
                target: target.into(),
                out: out.to_path_buf(),
                now: Some(now),
                metadata_timeout,
                stall_timeout: Duration::from_secs(10),
            },
        )
    }
}

/// Bytes of each bank of a [`gateway_vehicle`]'s ECU.
pub const GATEWAY_BANK_BYTES: u64 = 2 << 20;

/// A vehicle with one gateway ECU, registered the way [`crate::director::register_vehicle`]
/// registers it.
#[derive(Debug, Clone)]
pub struct GatewayVehicle<'a> {
    /// Its VIN; its ECU's serial is `GW-<vin>`.
    pub vin: &'a str,
    /// What the ECU runs (`ecu/gw-1.bin`, release counter 1), in bank A.
    pub installed: &'a [u8],
    /// The director's targets key (ed25519 in hex, or a PEM public key).
    pub director_key: &'a str,
    /// Its primary's and its ECU's key files' text ([`seed_keys`]: the keys
    /// [`crate::director::register_vehicle`] registers).
    pub keys: (&'a str, &'a str),
    /// Its depot's address (with `/p2p/`).
    pub depot: &'a str,
    /// The image repository's and the director's first roots.
    pub roots: (&'a Path, &'a Path),
    /// Its `[link]` section's lines.
    pub link: &'a str,
    /// The ECU's health check after a trial boot (`exit 0`: healthy).
    pub health: &'a str,
    /// The director service's URL and CA file, if the vehicle has a route to it.
    pub director: Option<(&'a str, &'a Path)>,
    /// Its `[mesh]` section ([`crate::release::enrol`]); `None`: an open mesh.
    pub mesh: Option<&'a node::mesh_config::MeshSection>,
}

/// The key files' text of the primary and ECU keys [`crate::director::register_vehicle`]
/// registers: ed25519 seeds [`PRIMARY_SEED`] and [`ECU_SEED`], in hex.
#[must_use]
pub fn seed_keys() -> (String, String) {
    (hex::encode([PRIMARY_SEED; 32]), hex::encode([ECU_SEED; 32]))
}

/// Writes the vehicle's simulated gateway ECU (booted from bank A) and its agent configuration
/// into `dir`; returns the configuration's path (`dir/vehicle.toml`).
pub fn gateway_vehicle(dir: &Path, vehicle: &GatewayVehicle<'_>) -> PathBuf {
    let serial = format!("GW-{}", vehicle.vin);
    let ecu = vehicle_peer::simulated::FileEcu {
        serial: &serial,
        hardware_id: "gw-v1",
        installed: ("ecu/gw-1.bin", vehicle.installed, 1),
        bank_bytes: GATEWAY_BANK_BYTES,
        key: vehicle.keys.1,
        director_key: vehicle.director_key,
        health: vehicle.health,
        single_bank_spare: None,
    };
    let ecu = vehicle_peer::simulated::file_ecu(dir, &ecu).unwrap();
    let extra = format!(
        "stall_timeout_secs = 20\n[link]\n{}\n[policy]\nmonthly_budget_bytes = 50_000_000\nmin_signal = 30",
        vehicle.link
    );
    let config = vehicle_peer::simulated::LoopbackVehicle {
        vin: vehicle.vin,
        depot: vehicle.depot,
        roots: vehicle.roots,
        director: vehicle.director,
        primary_key: vehicle.keys.0,
        ecus: &[ecu],
        mesh: vehicle.mesh,
        extra: &extra,
    };
    vehicle_peer::simulated::loopback_vehicle(dir, &config).unwrap()
}

/// Checks the vehicle agent of `config` every half second until ECU `ecu` runs `target`
/// (up to 60 s); the install must have committed.
pub fn wait_for_image(config: &Path, ecu: &str, target: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = check_once(config);
        if status["ecus"][ecu]["image"] == target {
            assert_eq!(status["last_install"]["outcome"], "committed", "{status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{target} did not arrive: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Opens the vehicle agent configured by `config` and runs one check (refresh, fetch, install,
/// report, as far as it goes now); returns its status.
pub fn check_once(config: &Path) -> serde_json::Value {
    let config = vehicle_peer::config::load(config).unwrap();
    vehicle_peer::daemon::Daemon::open(config)
        .unwrap()
        .check_once(node::clock::unix_now())
        .unwrap()
}

/// Bytes the last check downloaded, by its status.
pub fn downloaded(status: &serde_json::Value) -> u64 {
    status["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bytes"].as_u64().unwrap())
        .sum()
}

/// A gateway vehicle enrolled in `origin`'s fleet, in `dir` (its node's data in `dir/data`):
/// runs `installed`, fetches from the depot at `depot`, trusts the root files `roots` (image,
/// director), checks director targets with the origin's director key, has no director to
/// report to. Returns its configuration's path.
pub fn fleet_gateway(
    origin: &origin::repo::Origin,
    dir: &Path,
    vin: &str,
    installed: &[u8],
    depot: &str,
    roots: (&Path, &Path),
) -> PathBuf {
    use proto::tuf::signer::Signer as _;
    let mesh = crate::release::enrol(
        origin,
        &dir.join("data"),
        proto::membership::MemberRole::Vehicle,
    );
    let director_key = origin
        .key("director", "targets")
        .unwrap()
        .public_key()
        .public_text();
    let keys = seed_keys();
    gateway_vehicle(
        dir,
        &GatewayVehicle {
            vin,
            installed,
            director_key: &director_key,
            keys: (&keys.0, &keys.1),
            depot,
            roots,
            link: "class = \"yard-wifi\"",
            health: "exit 0",
            director: None,
            mesh: Some(&mesh),
        },
    )
}
