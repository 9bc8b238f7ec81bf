//! A file-backed ECU with simulated boots, as `netsim yard` and the end-to-end tests run one:
//! two bank files, a U-Boot-style environment file, the ECU's key, its configuration
//! (`ecu.toml`, the format of `config/ecu.toml`), provisioned and booted from bank A.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::bank::{Bank as _, FileBank};

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
    /// Seed of the ECU's ed25519 key (signs its version reports).
    pub key_seed: [u8; 32],
    /// The director's targets key (hex), for the ECU's own check of its targets.
    pub director_key: &'a str,
    /// The health check after a trial boot: a shell command (`exit 0`: healthy).
    pub health: &'a str,
}

/// Writes the ECU into `dir` (created) and boots it; returns its `ecu.toml`.
pub fn file_ecu(dir: &Path, ecu: &FileEcu<'_>) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (target, image, release_counter) = ecu.installed;
    let mut a = FileBank::create(&dir.join("bank-a.img"), ecu.bank_bytes)?;
    a.write_all_at(0, image)?;
    a.sync()?;
    FileBank::create(&dir.join("bank-b.img"), ecu.bank_bytes)?;
    std::fs::write(dir.join("env.img"), vec![0u8; 2048])?;
    std::fs::write(dir.join("ecu.key"), hex::encode(ecu.key_seed))?;
    let sha = proto::tuf::build::TargetDigests::of(image).sha256;
    let config = format!(
        r#"serial = "{serial}"
hardware_id = "{hardware_id}"
key_file = "{dir}/ecu.key"
journal = "{dir}/ecu-journal"
director_targets_key = "{director_key}"
[installed]
target = "{target}"
sha256 = "{sha}"
release_counter = {release_counter}
[banks]
kind = "file"
A = "{dir}/bank-a.img"
B = "{dir}/bank-b.img"
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
        director_key = ecu.director_key,
        health = ecu.health,
        dir = dir.display(),
    );
    let path = dir.join("ecu.toml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    crate::install::boot(&path, true)?;
    Ok(path)
}
