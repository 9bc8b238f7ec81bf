//! `vehicle-peer provision`: a bench vehicle in one step. Makes, in one directory, the vehicle's
//! primary key and each ECU's key (fresh ed25519 seeds, in the format the configuration reads),
//! each ECU's file-backed banks with the image it runs in bank A, the image repository's and the
//! director's root metadata copied from the files given (checked as roots), the ECUs' director
//! targets key taken from the director's root, `vehicle.toml` (simulated boots), and
//! `registration.toml`: what `origin vehicle register --file` takes, with the public keys and
//! the gateway's mesh peer id.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use proto::tuf::TrustedSet;
use proto::tuf::signer::{KeyPair, Signer as _};
use serde_json::json;

use crate::simulated::{FileEcu, file_ecu};

/// One ECU to make: `SERIAL:HARDWARE_ID:TARGET:IMAGE_FILE[:RELEASE_COUNTER]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcuSpec {
    /// Its serial, as the director will name it.
    pub serial: String,
    /// Its hardware id.
    pub hardware_id: String,
    /// The target it runs, as the image repository names it.
    pub target: String,
    /// The image it runs (written to bank A).
    pub image: PathBuf,
    /// That image's release counter (default 1).
    pub release_counter: u64,
}

impl FromStr for EcuSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.splitn(5, ':').collect();
        let usage =
            || format!("{text:?}: expected SERIAL:HARDWARE_ID:TARGET:IMAGE_FILE[:RELEASE_COUNTER]");
        let [serial, hardware_id, target, image, rest @ ..] = parts.as_slice() else {
            return Err(usage());
        };
        if [serial, hardware_id, target, image]
            .iter()
            .any(|p| p.is_empty())
        {
            return Err(usage());
        }
        let safe = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !safe(serial) || !safe(hardware_id) {
            return Err(format!(
                "{text:?}: the serial and hardware id are letters, digits, '-', '_' and '.'"
            ));
        }
        let release_counter = match rest {
            [] => 1,
            [counter] => counter
                .parse()
                .map_err(|_| format!("{text:?}: the release counter {counter:?} is no number"))?,
            _ => return Err(usage()),
        };
        Ok(Self {
            serial: (*serial).to_string(),
            hardware_id: (*hardware_id).to_string(),
            target: (*target).to_string(),
            image: PathBuf::from(image),
            release_counter,
        })
    }
}

/// What `provision` is given.
#[derive(Debug)]
pub struct ProvisionArgs<'a> {
    /// The directory to make the vehicle in (must not hold one already).
    pub dir: &'a Path,
    /// The vehicle's VIN.
    pub vin: &'a str,
    /// Its depot (and other peers): multiaddrs with `/p2p/`.
    pub peers: &'a [libp2p::Multiaddr],
    /// Addresses its node listens on.
    pub listen: &'a [libp2p::Multiaddr],
    /// Look for neighbours on the LAN with mDNS.
    pub mdns: bool,
    /// The image repository's root metadata to trust first.
    pub image_root: &'a Path,
    /// The director's root metadata to trust first.
    pub director_root: &'a Path,
    /// Its ECUs; the first is the primary.
    pub ecus: &'a [EcuSpec],
    /// Bytes of each bank (default: the larger of 2 MiB and twice the largest image).
    pub bank_bytes: Option<u64>,
    /// Its `[mesh]` section.
    pub mesh: &'a node::mesh_config::MeshSection,
    /// `region`, `vehicle_type` and `home_depot` for its registration.
    pub registry: (&'a str, &'a str, &'a str),
    /// The director service the vehicle sends its reports to and renews its membership
    /// certificate from, and the CA (PEM) its certificate chains to: `director_url` and
    /// `director_ca` (copied into the vehicle's directory). None: reports go through the depot.
    pub director: Option<(&'a str, Option<&'a Path>)>,
}

/// A fresh ed25519 key, as the hex seed key files hold.
fn fresh_key() -> anyhow::Result<(String, String)> {
    let seed: [u8; 32] = rand::random();
    let text = hex::encode(seed);
    let public = KeyPair::parse(&text)
        .context("a fresh key")?
        .public_key()
        .public_text();
    Ok((text, public))
}

/// Writes a secret file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A root metadata file, checked (self-signed, not expired) before it is copied.
fn read_root(path: &Path, what: &str) -> anyhow::Result<(Vec<u8>, TrustedSet)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let trusted = TrustedSet::new(&bytes, node::clock::now())
        .map_err(|e| anyhow::anyhow!("{what} {} is not a usable root: {e}", path.display()))?;
    Ok((bytes, trusted))
}

fn toml_text(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Makes the bench vehicle; returns a summary (files, peer id, public keys).
pub fn provision(args: &ProvisionArgs<'_>) -> anyhow::Result<serde_json::Value> {
    let dir = args.dir;
    if args.ecus.is_empty() {
        bail!("give at least one --ecu");
    }
    let mut serials = std::collections::BTreeSet::new();
    for ecu in args.ecus {
        if !serials.insert(&ecu.serial) {
            bail!("ECU {} is given twice", ecu.serial);
        }
    }
    if dir.join("vehicle.toml").exists() {
        bail!("{} holds a vehicle already", dir.display());
    }
    let (image_root, _) = read_root(args.image_root, "--image-root")?;
    let (director_root, director) = read_root(args.director_root, "--director-root")?;
    let root = &director.root().signed;
    let targets = root
        .roles
        .get("targets")
        .context("--director-root names no targets role")?;
    let [keyid] = targets.keyids.as_slice() else {
        bail!(
            "--director-root: the director's targets role has {} keys; an ECU checks one",
            targets.keyids.len()
        );
    };
    let director_key = root
        .keys
        .get(keyid)
        .with_context(|| format!("--director-root: no key {keyid}"))?
        .public_text();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("image-root.json"), &image_root)?;
    std::fs::write(dir.join("director-root.json"), &director_root)?;

    let images = args
        .ecus
        .iter()
        .map(|ecu| {
            std::fs::read(&ecu.image).with_context(|| {
                format!(
                    "reading the image of {} {}",
                    ecu.serial,
                    ecu.image.display()
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let largest = images.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let bank_bytes = args
        .bank_bytes
        .unwrap_or_else(|| (2 << 20).max(largest.saturating_mul(2)));
    if largest > bank_bytes {
        bail!("an image of {largest} bytes does not fit banks of {bank_bytes} bytes");
    }

    let (primary_key, primary_public) = fresh_key()?;
    write_secret(&dir.join("primary.key"), &primary_key)?;
    let mut ecu_files = Vec::new();
    let mut registration_ecus = String::new();
    let mut ecu_keys = serde_json::Map::new();
    for (ecu, image) in args.ecus.iter().zip(&images) {
        let (key, public) = fresh_key()?;
        let ecu_dir = dir.join(format!("ecu-{}", ecu.serial));
        let config = file_ecu(
            &ecu_dir,
            &FileEcu {
                serial: &ecu.serial,
                hardware_id: &ecu.hardware_id,
                installed: (&ecu.target, image, ecu.release_counter),
                bank_bytes,
                key: &key,
                director_key: &director_key,
                health: "exit 0",
                single_bank_spare: None,
            },
        )?;
        // The key file the simulated ECU writes, readable by its owner only.
        std::fs::set_permissions(
            ecu_dir.join("ecu.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        write!(
            registration_ecus,
            "\n[[ecus]]\nserial = {}\nhardware_id = {}\npublic_key = {}\ninstalled = {}\n",
            toml_text(&ecu.serial),
            toml_text(&ecu.hardware_id),
            toml_text(&public),
            toml_text(&ecu.target),
        )?;
        ecu_keys.insert(ecu.serial.clone(), json!(public));
        ecu_files.push(config);
    }

    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let peer = node::identity::load_or_create(&data_dir)
        .with_context(|| format!("making the identity in {}", data_dir.display()))?
        .public()
        .to_peer_id();
    let director = match args.director {
        None => String::new(),
        Some((url, ca)) => {
            let mut lines = format!("director_url = {}\n", toml_text(url));
            if let Some(ca) = ca {
                let pem = std::fs::read_to_string(ca)
                    .with_context(|| format!("reading --director-ca {}", ca.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    bail!("--director-ca {}: no PEM certificate in it", ca.display());
                }
                let copy = dir.join("director-ca.pem");
                std::fs::write(&copy, pem)?;
                lines.push_str(&format!(
                    "director_ca = {}\n",
                    toml_text(&copy.display().to_string())
                ));
            }
            lines
        }
    };
    let list = |items: &mut dyn Iterator<Item = String>| {
        items.map(|s| toml_text(&s)).collect::<Vec<_>>().join(", ")
    };
    let vehicle = format!(
        "# A bench vehicle made by `vehicle-peer provision` (config/vehicle.toml explains each key).\n\
         vin = {vin}\ndata_dir = {data}\nlisten = [{listen}]\npeers = [{peers}]\nmdns = {mdns}\n\
         image_root = {image_root}\ndirector_root = {director_root}\nprimary_key_file = {primary}\n\
         {director}ecus = [{ecus}]\n{mesh}\n\n[link]\nclass = \"yard-wifi\"\n\n[boot]\nmode = \"simulated\"\n",
        vin = toml_text(args.vin),
        data = toml_text(&data_dir.display().to_string()),
        listen = list(&mut args.listen.iter().map(ToString::to_string)),
        peers = list(&mut args.peers.iter().map(ToString::to_string)),
        mdns = args.mdns,
        image_root = toml_text(&dir.join("image-root.json").display().to_string()),
        director_root = toml_text(&dir.join("director-root.json").display().to_string()),
        primary = toml_text(&dir.join("primary.key").display().to_string()),
        ecus = list(&mut ecu_files.iter().map(|p| p.display().to_string())),
        mesh = args.mesh.inline_toml(),
    );
    let vehicle_toml = dir.join("vehicle.toml");
    std::fs::write(&vehicle_toml, vehicle)?;
    crate::config::load(&vehicle_toml).context("the vehicle.toml just written")?;

    let (region, vehicle_type, home_depot) = args.registry;
    let registration = format!(
        "# `origin vehicle register --file` this file: the vehicle's public keys and mesh peer id.\n\
         vin = {}\nregion = {}\nvehicle_type = {}\nhome_depot = {}\nprimary_key = {}\npeer = {}\n{registration_ecus}",
        toml_text(args.vin),
        toml_text(region),
        toml_text(vehicle_type),
        toml_text(home_depot),
        toml_text(&primary_public),
        toml_text(&peer.to_string()),
    );
    let registration_toml = dir.join("registration.toml");
    std::fs::write(&registration_toml, registration)?;
    Ok(json!({
        "vehicle": vehicle_toml,
        "registration": registration_toml,
        "peer": peer.to_string(),
        "primary_key": primary_public,
        "ecu_keys": ecu_keys,
        "bank_bytes": bank_bytes,
        "next": next_steps(&registration_toml, args.mesh.certificate.as_deref(), &vehicle_toml),
    }))
}

/// What to do next, as commands: register the vehicle (an operator's credential and the
/// director), its membership certificate written where `[mesh] certificate` reads it; then start
/// the agent.
fn next_steps(registration: &Path, certificate: Option<&Path>, vehicle: &Path) -> String {
    let membership = certificate
        .map(|file| format!(" --membership-out {}", file.display()))
        .unwrap_or_default();
    format!(
        "origin vehicle register --director URL --director-ca CA.pem --cert YOU.pem --key YOU.key \
         --file {}{membership}; then vehicle-peer --config {} (or copy it to \
         /etc/depotmesh/vehicle.toml for the packaged unit)",
        registration.display(),
        vehicle.display()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ecu_specs_parse_or_say_what_is_wrong() {
        let spec: EcuSpec = "GW-1:gw-v1:ecu/gw-1.bin:/tmp/gw.bin".parse().unwrap();
        assert_eq!(spec.serial, "GW-1");
        assert_eq!(spec.release_counter, 1);
        assert_eq!(spec.image, PathBuf::from("/tmp/gw.bin"));
        let spec: EcuSpec = "GW-1:gw-v1:ecu/gw-1.bin:/tmp/gw.bin:7".parse().unwrap();
        assert_eq!(spec.release_counter, 7);
        for bad in [
            "GW-1",
            "GW-1:gw-v1:ecu/gw-1.bin",
            "GW-1::t:/f",
            "GW 1:gw:t:/f",
            "GW-1:gw:t:/f:seven",
            "GW-1:gw\":t:/f",
        ] {
            let error = bad.parse::<EcuSpec>().unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }
}
