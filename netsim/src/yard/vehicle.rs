//! One yard vehicle: its identity, its registration with the director, its ECU and agent
//! configuration on disk, and the thread that runs its agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proto::Vin;
use proto::director_api::{EcuRecord, VehicleRecord};
use proto::tuf::signer::Signer as _;
use serde_json::Value;

use super::options::YardOptions;
use super::release::{FACTORY, Release, V1, is_replaced};

/// What a vehicle thread tells the run.
#[derive(Debug)]
pub(super) struct VehicleEvent {
    pub(super) index: usize,
    /// When the check began.
    pub(super) started: Instant,
    /// When it ended.
    pub(super) at: Instant,
    pub(super) step: Result<String, String>,
    pub(super) status: Value,
}

/// What every yard vehicle's ECU and agent share.
#[derive(Debug)]
pub(super) struct VehicleSetup<'a> {
    /// The image its ECU runs at the start.
    v1: &'a [u8],
    /// The image a replaced gateway's ECU runs at the start (v1's factory build).
    factory: &'a [u8],
    /// Vehicles in the yard, and how many of the last ones had their gateway replaced.
    replaced: (usize, usize),
    /// Each bank's size.
    bank_bytes: u64,
    /// The director's targets key (hex), which its ECU trusts.
    director_key: String,
    /// The depot's full address.
    depot: String,
    /// The image and director repositories' first roots.
    roots: (PathBuf, PathBuf),
    /// The health check its ECU runs after a trial boot.
    health: &'static str,
    /// The director's URL and CA file, for the vehicles that reach it themselves.
    director: (&'a str, &'a Path),
    /// Its agent's download limit.
    download_bytes_per_sec: Option<u64>,
    /// The first this many vehicles have a single-bank ECU.
    single_bank: usize,
    /// The fleet key (hex) its node trusts.
    pub(super) fleet_key: String,
}

impl<'a> VehicleSetup<'a> {
    /// Vehicles that start on `release`'s v1, with banks that hold either release, and reach
    /// the depot at `depot` and (half of them) the director at `director` (URL, CA file).
    pub(super) fn new(
        release: &'a Release,
        director: (&'a str, &'a Path),
        depot: &libp2p::Multiaddr,
        options: &YardOptions,
    ) -> anyhow::Result<Self> {
        let director_key = release.origin.key("director", "targets")?.public_key();
        let (v1, v2) = (&release.v1, &release.v2);
        Ok(Self {
            v1,
            factory: &release.factory,
            replaced: (options.vehicles, options.replaced_parts),
            bank_bytes: (v2.len().max(v1.len()) as u64 + (1 << 20)).next_multiple_of(1 << 20),
            director_key: director_key.public_text(),
            depot: depot.to_string(),
            roots: release.roots(),
            health: if options.failing_canary {
                "exit 1"
            } else {
                "exit 0"
            },
            director,
            download_bytes_per_sec: options.vehicle_down_bytes_per_sec,
            single_bank: options.single_bank,
            fleet_key: origin::fleet::describe_key(&release.origin)?.fleet_key,
        })
    }
}

impl VehicleSetup<'_> {
    /// Whether vehicle `index` had its gateway replaced (it starts on v1's factory build).
    pub(super) fn replaced(&self, index: usize) -> bool {
        let (vehicles, replaced) = self.replaced;
        is_replaced(index, vehicles, replaced)
    }
}

pub(super) fn vin(index: usize) -> Vin {
    // Letters, digits and a dash: always a valid vehicle id.
    Vin::parse(&format!("YARD-{:02}", index + 1)).unwrap_or_else(|_| unreachable!())
}

fn seed_of(index: usize, role: u8) -> [u8; 32] {
    let mut seed = [role; 32];
    seed[..8].copy_from_slice(&(index as u64).to_le_bytes());
    seed
}

fn public_hex(seed: [u8; 32]) -> String {
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .as_bytes(),
    )
}

/// Vehicle `index` as the provisioning registers it with the director: its keys and its one
/// gateway ECU running v1 (`replaced`: v1's factory build).
pub(super) fn record(index: usize, vin: &Vin, replaced: bool) -> anyhow::Result<VehicleRecord> {
    let installed = if replaced { FACTORY } else { V1 };
    Ok(VehicleRecord {
        vin: vin.clone(),
        region: "yard".into(),
        vehicle_type: "tractor".into(),
        home_depot: "depot-1".into(),
        primary_key: public_hex(seed_of(index, 8)),
        ecus: vec![EcuRecord {
            serial: format!("GW-{vin}").parse()?,
            hardware_id: "gw-v1".into(),
            public_key: public_hex(seed_of(index, 9)),
            installed: Some(installed.into()),
        }],
        peer: None,
        last_report: None,
    })
}

/// Writes vehicle `index`'s ECU (file banks, boot environment, key) and agent configuration
/// in `dir`; returns the configuration's path.
pub(super) fn write(
    dir: &Path,
    index: usize,
    vin: &Vin,
    setup: &VehicleSetup<'_>,
    mesh: &node::mesh_config::MeshSection,
) -> anyhow::Result<PathBuf> {
    let serial = format!("GW-{vin}");
    let installed = match setup.replaced(index) {
        true => (FACTORY, setup.factory, 1),
        false => (V1, setup.v1, 1),
    };
    let ecu = vehicle_peer::simulated::FileEcu {
        serial: &serial,
        hardware_id: "gw-v1",
        installed,
        bank_bytes: setup.bank_bytes,
        key: &hex::encode(seed_of(index, 9)),
        director_key: &setup.director_key,
        health: setup.health,
        // Spare as large as the bank: any release fits.
        single_bank_spare: (index < setup.single_bank).then_some(setup.bank_bytes),
    };
    let ecu = vehicle_peer::simulated::file_ecu(dir, &ecu)?;
    let mut extra = String::from("metadata_timeout_secs = 10\nstall_timeout_secs = 30\n");
    if let Some(rate) = setup.download_bytes_per_sec {
        extra.push_str(&format!("download_bytes_per_sec = {rate}\n"));
    }
    extra.push_str("[link]\nclass = \"yard-wifi\"");
    let vehicle = vehicle_peer::simulated::LoopbackVehicle {
        vin: vin.as_str(),
        depot: &setup.depot,
        roots: (&setup.roots.0, &setup.roots.1),
        // Odd vehicles reach the director themselves; even ones only through the depot.
        director: (index % 2 == 0).then_some(setup.director),
        primary_key: &hex::encode(seed_of(index, 8)),
        ecus: &[ecu],
        mesh: Some(mesh),
        extra: &extra,
    };
    vehicle_peer::simulated::loopback_vehicle(dir, &vehicle)
}

/// Runs one vehicle agent: a check every second (at once after a simulated reboot) until
/// `stop`, each step sent on `events`.
pub(super) fn drive(
    index: usize,
    config: PathBuf,
    stop: Arc<AtomicBool>,
    events: mpsc::Sender<VehicleEvent>,
) -> anyhow::Result<()> {
    let config = vehicle_peer::config::load(&config)?;
    let mut daemon = vehicle_peer::daemon::Daemon::open(config)?;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let step = daemon.check(node::clock::unix_now());
        let again = matches!(step, Ok(vehicle_peer::daemon::Step::Rebooted));
        let step = match step {
            Ok(vehicle_peer::daemon::Step::UpToDate) => Ok("up to date".to_string()),
            Ok(vehicle_peer::daemon::Step::Waiting { reason, .. }) => {
                Ok(format!("waiting: {reason}"))
            }
            Ok(vehicle_peer::daemon::Step::Rebooted) => Ok("trial boot".to_string()),
            Ok(vehicle_peer::daemon::Step::Ended { .. }) => Ok("done".to_string()),
            Ok(vehicle_peer::daemon::Step::Finished { outcome, .. }) => Ok(outcome),
            Err(error) => Err(format!("{error:#}")),
        };
        let event = VehicleEvent {
            index,
            started,
            at: Instant::now(),
            step,
            status: daemon.status().clone(),
        };
        if events.send(event).is_err() {
            break;
        }
        if !again {
            // Serving the neighbours meanwhile.
            daemon.serve_for(Duration::from_millis(1000));
        }
    }
    Ok(())
}
