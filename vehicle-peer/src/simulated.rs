//! A file-backed ECU with simulated boots, as `netsim yard` and the end-to-end tests run one:
//! two bank files, a U-Boot-style environment file, the ECU's key, its configuration
//! (`ecu.toml`, the format of `config/ecu.toml`), provisioned and booted from bank A.

use std::path::{Path, PathBuf};

use anyhow::Context;
use delta::WriteAt as _;

use crate::bank::FileBank;

/// What the ECU runs and how it is set up.
#[derive(Clone, Debug)]
pub struct FileEcu<'a> {
    /// Its serial.
    pub serial: &'a str,
    /// Its hardware id.
    pub hardware_id: &'a str,
    /// The target it runs, its bytes (written to bank A) and its release counter.
    pub installed: (&'a str, &'a [u8], u64),
    /// Bytes of each bank.
    pub bank_bytes: u64,
    /// The ECU's key file (signs its version reports): an ed25519 seed in hex, or a PKCS #8 PEM
    /// of ECDSA P-256 or RSA.
    pub key: &'a str,
    /// The director's targets key (ed25519 in hex, or a PEM public key), for the ECU's own
    /// check of its targets.
    pub director_key: &'a str,
    /// The health check after a trial boot: a shell command (`exit 0`: healthy).
    pub health: &'a str,
    /// A single-bank ECU with this many bytes of spare area ([`crate::remap`], blocks of
    /// 4 KiB) instead of two banks.
    pub single_bank_spare: Option<u64>,
}

/// Writes the ECU into `dir` (created) and boots it; returns its `ecu.toml`.
pub fn file_ecu(dir: &Path, ecu: &FileEcu<'_>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (target, image, release_counter) = ecu.installed;
    let banks = match ecu.single_bank_spare {
        None => {
            let mut a = FileBank::create(&dir.join("bank-a.img"), ecu.bank_bytes)?;
            a.write_all_at(0, image)?;
            a.sync()?;
            FileBank::create(&dir.join("bank-b.img"), ecu.bank_bytes)?;
            format!(
                "kind = \"file\"\nA = \"{dir}/bank-a.img\"\nB = \"{dir}/bank-b.img\"",
                dir = dir.display()
            )
        }
        Some(spare) => {
            let block = crate::install::DEFAULT_REMAP_BLOCK;
            let layout = crate::remap::RemapLayout {
                block_size: block,
                logical_blocks: u32::try_from(ecu.bank_bytes.div_ceil(u64::from(block)))?,
                spare_blocks: u32::try_from(spare.div_ceil(u64::from(block)).max(1))?,
            };
            let mut dev = FileBank::create(&dir.join("bank.img"), layout.physical_len())?;
            dev.write_all_at(0, image)?;
            dev.sync()?;
            format!(
                "kind = \"remap\"\ndevice = \"{dir}/bank.img\"\nblock_size = {block}\nspare_bytes = {spare}",
                dir = dir.display(),
                spare = layout.spare_len(),
            )
        }
    };
    std::fs::write(dir.join("env.img"), vec![0u8; 2048])?;
    std::fs::write(dir.join("ecu.key"), ecu.key)?;
    let sha = proto::tuf::build::TargetDigests::of(image).sha256;
    let config = format!(
        r#"serial = "{serial}"
hardware_id = "{hardware_id}"
key_file = "{dir}/ecu.key"
journal = "{dir}/ecu-journal"
director_targets_key = {director_key}
[installed]
target = "{target}"
sha256 = "{sha}"
release_counter = {release_counter}
[banks]
{banks}
[boot_env]
path = "{dir}/env.img"
size = 1024
first = 0
second = 1024
[health]
command = ["sh", "-c", "{health}"]
timeout_secs = 10
"#,
        serial = ecu.serial,
        hardware_id = ecu.hardware_id,
        director_key = toml_string(ecu.director_key),
        health = ecu.health,
        dir = dir.display(),
    );
    let path = dir.join("ecu.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    crate::install::boot(&path, true)?;
    Ok(path)
}

/// A vehicle agent on loopback, as `netsim yard` and the end-to-end tests run one.
#[derive(Clone, Debug)]
pub struct LoopbackVehicle<'a> {
    /// Its VIN.
    pub vin: &'a str,
    /// Its depot's address (with `/p2p/`).
    pub depot: &'a str,
    /// The image repository's and the director's first roots.
    pub roots: (&'a Path, &'a Path),
    /// The director service's URL and the CA file its certificate chains to, if the vehicle
    /// has a route to it.
    pub director: Option<(&'a str, &'a Path)>,
    /// The primary's key file (signs the vehicle manifest): an ed25519 seed in hex, or a
    /// PKCS #8 PEM of ECDSA P-256 or RSA.
    pub primary_key: &'a str,
    /// Its ECUs' configurations.
    pub ecus: &'a [PathBuf],
    /// Its `[mesh]` section; `None`: an open mesh (`mesh.open = true`).
    pub mesh: Option<&'a node::mesh_config::MeshSection>,
    /// More lines for `vehicle.toml`: top-level keys first, then its `[link]` (required) and
    /// other sections.
    pub extra: &'a str,
}

/// Writes the vehicle's primary key and `vehicle.toml` (the format of `config/vehicle.toml`,
/// data in `dir/data`, simulated boots) into `dir`; returns the configuration's path.
pub fn loopback_vehicle(dir: &Path, vehicle: &LoopbackVehicle<'_>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("primary.key"), vehicle.primary_key)?;
    let ecus: Vec<String> = vehicle
        .ecus
        .iter()
        .map(|path| format!("{:?}", path.display().to_string()))
        .collect();
    let config = format!(
        r#"vin = "{vin}"
data_dir = "{dir}/data"
listen = ["/ip4/127.0.0.1/udp/0/quic-v1"]
peers = ["{depot}"]
mdns = false
image_root = "{image_root}"
director_root = "{director_root}"
primary_key_file = "{dir}/primary.key"
ecus = [{ecus}]
{mesh}
{director_url}
{extra}
[boot]
mode = "simulated"
"#,
        vin = vehicle.vin,
        depot = vehicle.depot,
        dir = dir.display(),
        image_root = vehicle.roots.0.display(),
        director_root = vehicle.roots.1.display(),
        ecus = ecus.join(", "),
        mesh = vehicle.mesh.map_or_else(
            || "mesh = { open = true }".to_owned(),
            node::mesh_config::MeshSection::inline_toml
        ),
        director_url = vehicle.director.map_or(String::new(), |(url, ca)| {
            format!(
                "director_url = {url:?}\ndirector_ca = {:?}",
                ca.display().to_string()
            )
        }),
        extra = vehicle.extra,
    );
    let path = dir.join("vehicle.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `text` as a TOML basic string (a PEM key's newlines escaped): JSON's string escapes
/// (`\n`, `\"`, `\\`, `\uXXXX`) are all TOML's too.
fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}
