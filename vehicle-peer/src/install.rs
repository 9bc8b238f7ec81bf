//! `vehicle-peer install` and `vehicle-peer boot`: one ECU's install driven by hand, against
//! file-backed banks (a simulated ECU) or a gateway's partitions, from an ECU configuration file
//! (TOML; `config/ecu.toml` is a commented example).
//!
//! `install` is run after every boot: the first run verifies the director's targets for this
//! ECU (Uptane partial verification with the director's targets key), writes the delta into
//! the inactive bank and sets the one-try trial; after the reboot the next run checks the new
//! slot (the configured health command) and commits or rolls back. An interrupted run is simply
//! run again. `boot` plays the bootloader for file-backed ECUs: it picks the slot as U-Boot's
//! script would and prints it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use delta::{ApplyError, Progress, ReadAt, WriteAt};
use node::storage::{Index, SledIndex};
use proto::tuf::{Key, RoleKeys, Time};
use proto::uptane::{EcuState, PartialVerifier};
use serde::Deserialize;
use serde_json::json;

use crate::bank::{Bank, BankError, BankPair, FileBank};
use crate::boot::{BootError, EnvLayout, EnvStore, Slot, UbootBoot};
use crate::flasher::{
    CommandCheck, Ecu, EcuJob, IMAGE_PIECE, Install, InstalledImage, Outcome, Recovered, journaled,
    version_report,
};
use crate::remap::{RemapBank, RemapLayout};
use crate::slots::{Banks, MergeReport, SparePlan, WriteError};
use proto::BlobId;

/// An ECU configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcuConfig {
    /// The ECU's serial, as the director names it.
    pub serial: proto::EcuSerial,
    /// Its hardware id.
    pub hardware_id: String,
    /// A file holding the ECU's key, which signs its reports: an ed25519 seed (32 bytes, hex) or
    /// a PKCS #8 PEM of ECDSA P-256 or RSA (ECU HSMs commonly hold P-256 keys).
    pub key_file: PathBuf,
    /// Directory of the install journal (sled).
    pub journal: PathBuf,
    /// The director's targets key, from its root metadata: ed25519 in hex, or a PEM `PUBLIC
    /// KEY` of ECDSA P-256, RSA or Ed25519.
    pub director_targets_key: String,
    /// What the ECU runs now (for the first report and the release counter check).
    pub installed: InstalledConfig,
    /// The two banks.
    pub banks: BanksConfig,
    /// The U-Boot environment (every kind of banks but `rauc`, whose bootloader RAUC drives).
    pub boot_env: Option<BootEnvConfig>,
    /// The health check run in a freshly booted slot.
    pub health: HealthConfig,
}

/// What the ECU runs before any install.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledConfig {
    /// The target's name.
    pub target: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its release counter.
    pub release_counter: u64,
}

/// The banks: two, `file` (simulated ECU) or `block` (partitions); or one, `remap` (a single
/// bank with a spare area, [`crate::remap`]); or `rauc`: slots RAUC installs ([`crate::rauc`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanksConfig {
    /// `file`, `block`, `remap` or `rauc`.
    pub kind: String,
    /// Slot A's file or partition (`file`, `block`).
    #[serde(rename = "A")]
    pub a: Option<PathBuf>,
    /// Slot B's file or partition (`file`, `block`).
    #[serde(rename = "B")]
    pub b: Option<PathBuf>,
    /// `remap`: the one bank's file or partition.
    pub device: Option<PathBuf>,
    /// `remap`: `device` is a partition (default: a file).
    #[serde(default)]
    pub block_device: bool,
    /// `remap`: bytes per block, the unit of remapping (default 4096).
    pub block_size: Option<u32>,
    /// `remap`: bytes of spare area at the end of the device (before the two maps).
    pub spare_bytes: Option<u64>,
    /// `rauc`: the class of RAUC slots that are the ECU's A/B pair (default `rootfs`).
    pub class: Option<String>,
    /// `rauc`: RAUC's system configuration (default: RAUC's own, `/etc/rauc/system.conf`).
    pub rauc_conf: Option<PathBuf>,
    /// `rauc`: the `rauc` client program (default: `rauc` on the PATH).
    pub rauc_program: Option<PathBuf>,
}

/// The slot class of a `rauc` ECU unless configured.
pub const DEFAULT_RAUC_CLASS: &str = "rootfs";

/// Block size of a remapping bank unless configured.
pub const DEFAULT_REMAP_BLOCK: u32 = 4096;

impl BanksConfig {
    /// The remapping layout of a `remap` bank of `capacity` bytes.
    pub fn remap_layout(&self, capacity: u64) -> anyhow::Result<RemapLayout> {
        let spare = self
            .spare_bytes
            .context("banks.spare_bytes is required with kind = \"remap\"")?;
        RemapLayout::fit(
            capacity,
            self.block_size.unwrap_or(DEFAULT_REMAP_BLOCK),
            spare,
        )
        .map_err(|e| anyhow::anyhow!("banks: {e}"))
    }
}

/// The banks of an ECU opened from its configuration.
#[derive(Debug)]
pub enum EcuBanks {
    /// Two banks (A/B).
    Pair(BankPair<FileBank>),
    /// One bank and a spare area.
    Remap(RemapBank<FileBank>),
}

macro_rules! each {
    ($self:ident, $banks:ident => $e:expr) => {
        match $self {
            EcuBanks::Pair($banks) => $e,
            EcuBanks::Remap($banks) => $e,
        }
    };
}

impl Banks for EcuBanks {
    fn slots(&self) -> [&Slot; 2] {
        each!(self, b => Banks::slots(b))
    }
    fn holds(&self, slot: &Slot, len: u64, expect: BlobId) -> Result<bool, BankError> {
        each!(self, b => b.holds(slot, len, expect))
    }
    fn write_delta<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        delta: &D,
        delta_len: u64,
        expect: BlobId,
        resume: Option<Progress>,
        record: &mut dyn FnMut(Progress, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        each!(self, b => b.write_delta(running, delta, delta_len, expect, resume, record))
    }
    #[allow(clippy::too_many_arguments)]
    fn write_image<D: ReadAt + ?Sized>(
        &mut self,
        running: &Slot,
        image: &D,
        len: u64,
        expect: BlobId,
        piece: usize,
        from_piece: usize,
        record: &mut dyn FnMut(usize, usize) -> Result<(), ApplyError>,
    ) -> Result<(), WriteError> {
        each!(self, b => b.write_image(running, image, len, expect, piece, from_piece, record))
    }
    fn spare_plan<D: ReadAt + ?Sized>(
        &self,
        running: &Slot,
        payload: &D,
        len: u64,
        full_image: bool,
    ) -> Result<Option<SparePlan>, WriteError> {
        each!(self, b => b.spare_plan(running, payload, len, full_image))
    }
    fn discard(&mut self, running: &Slot) -> Result<(), BankError> {
        each!(self, b => b.discard(running))
    }
    fn merge<M, E>(
        &mut self,
        kept: &Slot,
        boot: &mut UbootBoot<M>,
        resume: Option<(u64, usize)>,
        record: &mut dyn FnMut(u64, usize) -> Result<(), E>,
    ) -> Result<MergeReport, E>
    where
        M: WriteAt,
        E: From<BankError> + From<BootError>,
    {
        each!(self, b => b.merge(kept, boot, resume, record))
    }
}

/// An ECU opened from its configuration file.
pub type ConfiguredEcu = Ecu<EcuBanks, std::fs::File>;

/// Where the U-Boot environment lives (as in `/etc/fw_env.config`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootEnvConfig {
    /// The file or device holding it.
    pub path: PathBuf,
    /// Size of one copy in bytes.
    pub size: usize,
    /// Offset of the first copy.
    pub first: u64,
    /// Offset of the second copy (a redundant environment).
    pub second: Option<u64>,
}

/// The health check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Seconds it may take.
    pub timeout_secs: u64,
}

/// Reads and checks an ECU configuration file; errors name the file, the key and the line.
pub fn load_config(path: &Path) -> anyhow::Result<EcuConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: EcuConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let banks = &config.banks;
    let rauc_keys =
        banks.class.is_some() || banks.rauc_conf.is_some() || banks.rauc_program.is_some();
    if banks.kind != "rauc" && rauc_keys {
        bail!(
            "{}: banks.class, banks.rauc_conf and banks.rauc_program are for kind = \"rauc\"",
            path.display()
        );
    }
    if (banks.kind == "rauc") != config.boot_env.is_none() {
        if banks.kind == "rauc" {
            bail!(
                "{}: kind = \"rauc\" has no [boot_env]: RAUC switches the slots through its own \
                 bootloader integration",
                path.display()
            );
        }
        bail!(
            "{}: [boot_env] is required with kind = {:?}",
            path.display(),
            banks.kind
        );
    }
    match banks.kind.as_str() {
        "rauc" => {
            if banks.a.is_some()
                || banks.b.is_some()
                || banks.device.is_some()
                || banks.spare_bytes.is_some()
                || banks.block_size.is_some()
            {
                bail!(
                    "{}: kind = \"rauc\" takes its slots from RAUC's system.conf: only \
                     banks.class, banks.rauc_conf and banks.rauc_program",
                    path.display()
                );
            }
            let class = banks.class.as_deref().unwrap_or(DEFAULT_RAUC_CLASS);
            if class.is_empty()
                || !class
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!(
                    "{}: banks.class = {class:?} is not a RAUC slot class",
                    path.display()
                );
            }
        }
        "file" | "block" => {
            if banks.a.is_none() || banks.b.is_none() {
                bail!(
                    "{}: banks.A and banks.B are required with kind = {:?}",
                    path.display(),
                    banks.kind
                );
            }
            if banks.device.is_some() || banks.spare_bytes.is_some() || banks.block_size.is_some() {
                bail!(
                    "{}: banks.device, banks.spare_bytes and banks.block_size are for kind = \"remap\"",
                    path.display()
                );
            }
        }
        "remap" => {
            if banks.a.is_some() || banks.b.is_some() {
                bail!(
                    "{}: kind = \"remap\" has one bank (banks.device), not banks.A and banks.B",
                    path.display()
                );
            }
            if banks.device.is_none() {
                bail!(
                    "{}: banks.device is required with kind = \"remap\"",
                    path.display()
                );
            }
            banks
                .remap_layout(banks.spare_bytes.unwrap_or(0).saturating_add(1 << 30))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        other => bail!(
            "{}: banks.kind = {other:?}: must be \"file\", \"block\", \"remap\" or \"rauc\"",
            path.display()
        ),
    }
    if config.health.command.is_empty() {
        bail!("{}: health.command is empty", path.display());
    }
    Ok(config)
}

fn slot(name: &str) -> anyhow::Result<Slot> {
    Ok(Slot::new(name)?)
}

/// The configured banks of an ECU; `format` makes a `remap` device a fresh remapping bank
/// whose image is what its home area holds (provisioning).
fn open_banks(config: &EcuConfig, format: bool) -> anyhow::Result<EcuBanks> {
    let banks = &config.banks;
    let slots = [slot("A")?, slot("B")?];
    let open = |path: &Path, block: bool| -> anyhow::Result<FileBank> {
        Ok(if block {
            FileBank::open_block(path)?
        } else {
            FileBank::open(path)?
        })
    };
    if banks.kind == "remap" {
        let device = banks
            .device
            .as_deref()
            .context("banks.device is required with kind = \"remap\"")?;
        let dev = open(device, banks.block_device)?;
        let layout = banks.remap_layout(dev.capacity())?;
        let [a, b] = slots;
        return Ok(EcuBanks::Remap(if format {
            RemapBank::format(dev, layout, [a, b])?
        } else {
            RemapBank::open(dev, layout, [a, b]).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (a new device is formatted by `vehicle-peer boot --provision`)"
                )
            })?
        }));
    }
    let (Some(a), Some(b)) = (&banks.a, &banks.b) else {
        bail!(
            "banks.A and banks.B are required with kind = {:?}",
            banks.kind
        );
    };
    let block = banks.kind == "block";
    let [sa, sb] = slots;
    Ok(EcuBanks::Pair(BankPair::new(
        (sa, open(a, block)?),
        (sb, open(b, block)?),
    )?))
}

/// Opens the ECU a configuration describes.
pub fn open_ecu(config: &EcuConfig) -> anyhow::Result<ConfiguredEcu> {
    open_ecu_with(config, false)
}

fn open_ecu_with(config: &EcuConfig, format: bool) -> anyhow::Result<ConfiguredEcu> {
    let Some(boot_env) = &config.boot_env else {
        bail!(
            "ECU {} is installed by RAUC (banks.kind = \"rauc\"): the agent (`vehicle-peer \
             --config`) drives it",
            config.serial
        );
    };
    let banks = open_banks(config, format)?;
    let env = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&boot_env.path)
        .with_context(|| format!("opening boot_env.path {}", boot_env.path.display()))?;
    let layout = EnvLayout {
        size: boot_env.size,
        first: boot_env.first,
        second: boot_env.second,
    };
    let boot = UbootBoot::new(EnvStore::new(env, layout)?, vec![slot("A")?, slot("B")?]);
    Ok(Ecu {
        serial: config.serial.to_string(),
        hardware_id: config.hardware_id.clone(),
        key: read_ecu_key(config)?,
        installed: Some(installed_image(config)),
        banks,
        boot,
    })
}

fn read_ecu_key(config: &EcuConfig) -> anyhow::Result<proto::tuf::signer::KeyPair> {
    let key = std::fs::read_to_string(&config.key_file)
        .with_context(|| format!("reading key_file {}", config.key_file.display()))?;
    proto::tuf::signer::KeyPair::parse(&key)
        .with_context(|| format!("key_file {}", config.key_file.display()))
}

fn installed_image(config: &EcuConfig) -> InstalledImage {
    InstalledImage {
        target: config.installed.target.clone(),
        sha256: config.installed.sha256.clone(),
        release_counter: config.installed.release_counter,
    }
}

/// Opens an ECU whose slots RAUC installs (`banks.kind = "rauc"`): RAUC must answer `rauc
/// status` with an A/B pair of the configured class.
pub fn open_rauc_ecu(config: &EcuConfig) -> anyhow::Result<crate::rauc::RaucEcu> {
    if config.banks.kind != "rauc" {
        bail!("ECU {} is not installed by RAUC", config.serial);
    }
    let ecu = crate::rauc::RaucEcu {
        serial: config.serial.to_string(),
        hardware_id: config.hardware_id.clone(),
        key: read_ecu_key(config)?,
        installed: Some(installed_image(config)),
        class: config
            .banks
            .class
            .clone()
            .unwrap_or_else(|| DEFAULT_RAUC_CLASS.to_string()),
        rauc: crate::rauc::Rauc {
            program: config
                .banks
                .rauc_program
                .clone()
                .unwrap_or_else(|| crate::rauc::Rauc::default().program),
            conf: config.banks.rauc_conf.clone(),
        },
    };
    ecu.pair()?;
    Ok(ecu)
}

/// `vehicle-peer boot`: the bootloader's step on a file-backed ECU (with `provision`, first a
/// fresh boot state: A then B, three tries each).
pub fn boot(config_path: &Path, provision: bool) -> anyhow::Result<serde_json::Value> {
    let config = load_config(config_path)?;
    let mut ecu = open_ecu_with(&config, provision)?;
    if provision {
        ecu.boot.provision()?;
    }
    let booted = ecu.boot.boot()?;
    Ok(json!({"ecu": config.serial, "booted": booted.as_str()}))
}

/// What `vehicle-peer install` was given.
#[derive(Debug)]
pub struct InstallArgs<'a> {
    /// The ECU configuration file.
    pub config: &'a Path,
    /// The slot the ECU runs (else `rauc.slot=` from `/proc/cmdline`).
    pub running: Option<Slot>,
    /// The director's targets metadata naming this ECU's image.
    pub director_targets: Option<&'a Path>,
    /// The delta from the running image.
    pub delta: Option<&'a Path>,
    /// Or the full image.
    pub image: Option<&'a Path>,
    /// The time for the metadata's expiry (else the system clock).
    pub now: Option<Time>,
    /// Print the ECU's signed version report answering this nonce.
    pub report_nonce: Option<&'a str>,
}

/// `vehicle-peer install`: one step of the install, as the journal says; returns the summary.
pub fn install(
    args: &InstallArgs<'_>,
    progress: impl FnMut(usize, usize),
) -> anyhow::Result<serde_json::Value> {
    let config = load_config(args.config)?;
    let mut ecu = open_ecu(&config)?;
    std::fs::create_dir_all(&config.journal)
        .with_context(|| format!("creating journal {}", config.journal.display()))?;
    let journal = SledIndex::open(&config.journal)
        .with_context(|| format!("opening journal {}", config.journal.display()))?;
    let running = match &args.running {
        Some(slot) => slot.clone(),
        None => {
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            crate::bank::running_slot(&cmdline).context(
                "no rauc.slot= on the kernel command line: pass --running A or --running B",
            )?
        }
    };
    let mut health = CommandCheck {
        program: config.health.command[0].clone(),
        args: config.health.command[1..].to_vec(),
        timeout: Duration::from_secs(config.health.timeout_secs),
    };
    let mut summary = match recover(&mut ecu, &journal)? {
        Step::Trial => {
            let Recovered::Trial(trial) = crate::flasher::recover(&mut ecu, &journal)? else {
                bail!("the journal changed under us");
            };
            describe(trial.conclude(&running, &mut health)?)
        }
        Step::Written => {
            let Recovered::Written(written) = crate::flasher::recover(&mut ecu, &journal)? else {
                bail!("the journal changed under us");
            };
            let trial = written.start_trial()?;
            json!({"stage": "trial", "reboot_into": trial.record().to})
        }
        Step::Start => match (args.director_targets, args.delta.or(args.image)) {
            (Some(targets), Some(path)) => 'start: {
                let installed = crate::flasher::running_image(&ecu, &journal)?
                    .map_or(config.installed.release_counter, |i| i.release_counter);
                let approved = approve(&config, &journal, targets, args.now, installed)?;
                let file = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let len = file.metadata()?.len();
                let job = EcuJob {
                    approval: &approved,
                    delta: &file,
                    delta_len: len,
                    full_image: args.delta.is_none(),
                };
                // Before anything is written: the spare space it needs (remapping banks).
                let plan = crate::flasher::spare_plan(&ecu, &running, &job)?;
                let install = match Install::begin(&mut ecu, &journal, &approved, &running) {
                    Err(crate::flasher::FlashError::AlreadyInstalled { target, .. }) => {
                        break 'start json!({"stage": "up_to_date", "image": target});
                    }
                    other => other?,
                };
                let written = if args.delta.is_some() {
                    install.write(&file, len, progress)?
                } else {
                    install.write_image(&file, len, IMAGE_PIECE, progress)?
                };
                let trial = written.start_trial()?;
                let mut summary = json!({"stage": "trial", "reboot_into": trial.record().to});
                if let Some(plan) = plan {
                    summary["spare"] = spare_summary(&plan);
                }
                summary
            }
            _ => {
                let record = journaled(&journal, config.serial.as_str())?;
                json!({"stage": record.map_or("idle".to_string(), |r| {
                    serde_json::to_value(&r.stage).ok()
                        .and_then(|v| v["stage"].as_str().map(str::to_string))
                        .unwrap_or_default()
                }), "note": "nothing to do without --director-targets and --delta or --image"})
            }
        },
    };
    // After a commit: the remapped blocks go home (resumed after a power cut).
    let merged = crate::flasher::merge(&mut ecu, &journal)?;
    if merged.remapped > 0 || merged.blocks_copied > 0 {
        summary["merge"] = serde_json::to_value(merged)?;
    }
    if let EcuBanks::Remap(bank) = &ecu.banks {
        summary["remap"] = bank.status()?;
        summary["flash_writes"] = serde_json::to_value(bank.writes())?;
    }
    summary["ecu"] = json!(config.serial);
    summary["running"] = json!(running.as_str());
    if let Some(nonce) = args.report_nonce {
        summary["report"] = version_report(&ecu, &journal, nonce)?;
    }
    Ok(summary)
}

enum Step {
    Start,
    Written,
    Trial,
}

fn recover<B: Banks, M: WriteAt, J: Index>(
    ecu: &mut Ecu<B, M>,
    journal: &J,
) -> anyhow::Result<Step> {
    Ok(match crate::flasher::recover(ecu, journal)? {
        Recovered::Idle(_) | Recovered::Writing(_) => Step::Start,
        Recovered::Written(_) => Step::Written,
        Recovered::Trial(_) => Step::Trial,
    })
}

/// A spare plan as the install summary shows it.
pub fn spare_summary(plan: &SparePlan) -> serde_json::Value {
    json!({
        "block_size": plan.block_size,
        "image_blocks": plan.image_blocks,
        "changed_blocks": plan.changed.len(),
        "needed_bytes": plan.needed_bytes(),
        "free_bytes": plan.free_bytes(),
        "fits": plan.fits(),
    })
}

fn describe(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Committed => json!({"stage": "committed"}),
        Outcome::RolledBack { reason } => json!({"stage": "rolled_back", "reason": reason}),
        Outcome::Reboot => json!({"stage": "trial", "note": "reboot the ECU into its trial"}),
    }
}

/// Partial verification of the director's targets for this ECU, remembering the version.
fn approve(
    config: &EcuConfig,
    journal: &SledIndex,
    targets: &Path,
    now: Option<Time>,
    installed_release_counter: u64,
) -> anyhow::Result<proto::uptane::ApprovedImage> {
    let bytes = std::fs::read(targets)
        .with_context(|| format!("reading director targets {}", targets.display()))?;
    let public = Key::parse_public(&config.director_targets_key)
        .map_err(|error| anyhow::anyhow!("director_targets_key: {error}"))?;
    let keyid = public.id();
    let version_key = format!("director-version/{}", config.serial).into_bytes();
    let last_version = journal
        .load()?
        .into_iter()
        .find(|(k, _)| *k == version_key)
        .and_then(|(_, v)| v.try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0);
    let mut verifier = PartialVerifier {
        keys: [(keyid.clone(), public)].into_iter().collect(),
        role: RoleKeys {
            keyids: vec![keyid],
            threshold: 1,
        },
        last_version,
        serial: config.serial.to_string(),
        ecu: EcuState {
            hardware_id: config.hardware_id.clone(),
            installed_release_counter,
        },
    };
    let now = now.unwrap_or_else(node::clock::now);
    let approved = verifier.verify(&bytes, now)?.with_context(|| {
        format!(
            "the director's targets name nothing for ECU {}",
            config.serial
        )
    })?;
    journal.put(&version_key, &verifier.last_version.to_le_bytes())?;
    Ok(approved)
}
