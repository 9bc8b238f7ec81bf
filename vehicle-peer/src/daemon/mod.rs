//! The vehicle daemon (`vehicle-peer --config FILE`): the gateway's update agent, on real
//! nodes, banks and a real director. It decides nothing itself: every decision is the sans-IO
//! [`crate::agent::Agent`]'s (the one `netsim fleet` runs for every simulated vehicle); this
//! module carries its actions out.
//!
//! Every check (each `check_interval_secs`, and at once after a simulated reboot):
//! 0. refreshes the fleet's revocation list from the director, or over the mesh from its depot
//!    ([`revocations`]);
//! 1. asks the link probe which link the vehicle has (yard WiFi, other WiFi, cellular, roaming);
//!    the agent decides whether metadata may move over it;
//! 2. refreshes and verifies the metadata ([`refresh`]) and tells the agent what it assigns and
//!    what the store and the flasher's journal hold;
//! 3. fetches each payload the agent asks for, within its allowance, counting every byte
//!    against the month's budget (persisted) and the install ([`payloads`]);
//! 4. hands the verified payloads to the flasher, which writes the inactive banks, switches all
//!    ECUs to their trial together, and after the reboot commits all or rolls all back;
//! 5. writes the vehicle's signed version manifest once and sends it to the director, directly
//!    or through a depot ([`reports`]).
//!
//! Everything it decided is in `status.json` in the data directory (written durably at every
//! check), which is what a supervisor or a test reads. A power cut at any point resumes from the
//! store (verified pieces), the flasher's journal and the persisted cellular usage.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use node::net::{EventHub, NetHandle};
use node::policy::{Link, LinkPolicy, Usage};
use node::ratelimit::RateLimit;
use node::serve::ServeCounters;
use node::storage::SledIndex;
use node::store::DiskStore;
use proto::uptane::ApprovedImage;
use serde_json::{Value, json};

pub use crate::agent::Step;
use crate::agent::{Action, Agent};
use crate::boot::Slot;
use crate::config::{BootMode, LinkSource, VehicleConfig};
use crate::flasher::{GroupDecision, Outcome, running_image};
use crate::install::{EcuConfig, load_config, open_ecu, open_rauc_ecu};

mod payloads;
mod refresh;
mod renewal;
mod reports;
mod revocations;

/// What the current check learnt, for the actions that follow in it.
#[derive(Debug, Default)]
struct CheckState {
    /// The approved images of the assignment, in the order of the agent's facts.
    approved: Vec<ApprovedImage>,
    /// For each of them, the index of its ECU in [`Daemon::ecus`].
    ecu_of: Vec<usize>,
    /// The downloads of this check (for the status).
    downloads: Vec<Value>,
    /// What the flasher decided in this check, if it did.
    installed: Option<Outcome>,
}

/// SIGTERM (systemd's stop) and SIGINT (Ctrl-C), listened for from the start of a run: one
/// that comes while a check runs waits here for the sleep after it.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Listens for both; within the runtime.
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }
}

/// A running vehicle agent: its node (serving neighbours all the time), ECUs and journal.
pub struct Daemon {
    config: VehicleConfig,
    runtime: tokio::runtime::Runtime,
    store: Arc<DiskStore>,
    net: NetHandle,
    hub: EventHub,
    counters: Arc<ServeCounters>,
    /// `download_bytes_per_sec`: one bucket for every mesh fetch of the agent, so that
    /// fetches in a row (or a delta and an image) share the rate rather than each having it.
    download_limit: Option<Arc<RateLimit>>,
    ecu_configs: Vec<EcuConfig>,
    ecus: Vec<crate::install::ConfiguredEcu>,
    booted: Vec<Slot>,
    /// The vehicle's ECU whose slots RAUC installs, if it has one (then its only ECU).
    rauc: Option<crate::rauc::RaucEcu>,
    journal: SledIndex,
    /// The decisions: [`crate::agent`], with the link policy and the month's usage.
    agent: Agent,
    check_state: CheckState,
    primary_key: proto::tuf::signer::KeyPair,
    status: Value,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("vin", &self.config.vin)
            .finish_non_exhaustive()
    }
}

/// A vehicle's private key file: an ed25519 seed in hex, or a PKCS #8 PEM of ECDSA P-256 or RSA
/// ([`proto::tuf::signer::KeyPair::parse`]).
pub(crate) fn read_key(path: &Path, what: &str) -> anyhow::Result<proto::tuf::signer::KeyPair> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))?;
    proto::tuf::signer::KeyPair::parse(&text).with_context(|| format!("{what} {}", path.display()))
}

fn usage_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cellular-usage.json")
}

fn load_usage(data_dir: &Path) -> anyhow::Result<Usage> {
    let path = usage_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => {
            let value: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            match (value["month"].as_i64(), value["bytes"].as_u64()) {
                (Some(month), Some(bytes)) => Ok(Usage { month, bytes }),
                _ => bail!("{}: needs integer month and bytes", path.display()),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Usage::default()),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

impl Daemon {
    /// Opens the store, identity, ECUs and journal, starts the node (which serves neighbours
    /// from now on) and, with simulated boots, boots every ECU.
    pub fn open(config: VehicleConfig) -> anyhow::Result<Self> {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
        let ecu_configs = config
            .ecus
            .iter()
            .map(|path| load_config(path))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut serials = std::collections::BTreeSet::new();
        for ecu in &ecu_configs {
            if !serials.insert(ecu.serial.clone()) {
                bail!("ecus: ECU {} is configured twice", ecu.serial);
            }
        }
        let rauc = match ecu_configs.iter().find(|c| c.banks.kind == "rauc") {
            Some(ecu) if ecu_configs.len() > 1 => bail!(
                "ecus: ECU {} is installed by RAUC and must be the vehicle's only ECU: one \
                 install across RAUC's slots and depotmesh's own banks is not all-or-nothing",
                ecu.serial
            ),
            Some(ecu) if config.boot == BootMode::Simulated => bail!(
                "ECU {} is installed by RAUC: it needs boot.mode = \"reboot\" (RAUC's \
                 bootloader integration starts the trial)",
                ecu.serial
            ),
            Some(ecu) => Some(
                open_rauc_ecu(ecu).with_context(|| format!("opening ECU {} (RAUC)", ecu.serial))?,
            ),
            None => None,
        };
        let mut ecus = ecu_configs
            .iter()
            .filter(|ecu| ecu.banks.kind != "rauc")
            .map(|ecu| open_ecu(ecu).with_context(|| format!("opening ECU {}", ecu.serial)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let journal_dir = config.data_dir.join("flasher");
        fs::create_dir_all(&journal_dir)
            .with_context(|| format!("creating {}", journal_dir.display()))?;
        let journal = SledIndex::open(&journal_dir).map_err(|error| {
            // sled locks its directory: another process has it open.
            let busy = error.kind() == std::io::ErrorKind::WouldBlock
                || error.to_string().contains("could not acquire lock");
            let error = anyhow::Error::new(error);
            if busy {
                error.context(format!(
                    "another vehicle-peer runs on {} (the journal {} is locked): stop it first",
                    config.data_dir.display(),
                    journal_dir.display()
                ))
            } else {
                error.context(format!("opening the journal {}", journal_dir.display()))
            }
        })?;
        let booted = match &config.boot {
            BootMode::Simulated => ecus
                .iter_mut()
                .map(|ecu| {
                    ecu.boot
                        .boot()
                        .with_context(|| format!("booting simulated ECU {}", ecu.serial))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            // RAUC says which slot runs, when it is asked (`RaucEcu::pair`).
            BootMode::Reboot(_) if rauc.is_some() => Vec::new(),
            BootMode::Reboot(_) => {
                let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
                vec![crate::bank::running_slot(&cmdline).context(
                    "no rauc.slot= on the kernel command line: the bootloader must say which slot runs",
                )?]
            }
        };
        let primary_key = read_key(&config.primary_key_file, "primary_key_file")?;
        let policy = LinkPolicy::with_usage(config.policy.clone(), load_usage(&config.data_dir)?);
        let runtime = node::runtime::build_tokio(Some(config.threads))
            .context("starting the async runtime")?;
        let node::runtime::OpenedNode {
            store,
            net,
            events,
            incoming,
        } = node::runtime::open_node(
            &runtime,
            &config.data_dir,
            config.listen.clone(),
            config.mdns,
            node::mesh_config::MeshSection::load(config.mesh.as_ref())?.membership(),
        )
        .map_err(anyhow::Error::msg)?;
        let counters = Arc::new(ServeCounters::default());
        let hub = {
            let _context = runtime.enter();
            // Neighbours that ask get the fleet's revocation list in force from it too.
            let roles = node::serve::Roles {
                revocations: net.revocations_in_force(),
                ..node::serve::Roles::default()
            };
            node::serve::spawn_server_with(store.clone(), incoming, counters.clone(), roles);
            EventHub::start(events)
        };
        // What the last run decided (its last install above all) stays until a check replaces it.
        let status = fs::read(config.data_dir.join("status.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let download_limit = config
            .download_bytes_per_sec
            .map(|rate| RateLimit::with_burst(rate, node::ratelimit::LINK_BURST));
        let mut daemon = Self {
            config,
            runtime,
            store,
            net,
            hub,
            counters,
            download_limit,
            ecu_configs,
            ecus,
            booted,
            rauc,
            journal,
            agent: Agent::new(policy),
            check_state: CheckState::default(),
            primary_key,
            status,
        };
        // A merge a power cut interrupted goes on.
        daemon.merge_all();
        daemon.mark_booted_good();
        if let Some(ecu) = &daemon.rauc {
            match crate::rauc::mark_booted_good(ecu, &daemon.journal) {
                Ok(Some(slot)) => tracing::info!(ecu = ecu.serial, %slot, "RAUC slot marked good"),
                Ok(None) => tracing::info!(ecu = ecu.serial, "RAUC trial in progress"),
                Err(error) => {
                    tracing::error!(ecu = ecu.serial, "marking the booted slot good: {error}")
                }
            }
        }
        Ok(daemon)
    }

    /// At start, outside a trial: each ECU's running slot gets back the try its boot spent
    /// ([`crate::flasher::mark_booted_good`]). A failure is logged: the ECU still runs, and
    /// the next start tries again.
    fn mark_booted_good(&mut self) {
        for (ecu, booted) in self.ecus.iter_mut().zip(&self.booted) {
            match crate::flasher::mark_booted_good(ecu, &self.journal, booted) {
                Ok(true) => {
                    tracing::info!(ecu = ecu.serial, slot = %booted, "booted slot marked good")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(ecu = ecu.serial, slot = %booted, "marking the booted slot good: {error}");
                }
            }
        }
    }

    /// After a commit (and at start): remapping banks copy their remapped blocks home
    /// ([`crate::flasher::merge`]); A/B banks have nothing to do. A merge that fails is
    /// reported in the status and tried again at the next start or commit; the ECU keeps
    /// running its committed image meanwhile.
    fn merge_all(&mut self) {
        for ecu in &mut self.ecus {
            let entry = match crate::flasher::merge(ecu, &self.journal) {
                Ok(report) if report.remapped == 0 && report.blocks_copied == 0 => continue,
                Ok(report) => json!(report),
                Err(error) => {
                    tracing::warn!(ecu = %ecu.serial, %error, "merge failed");
                    json!({"error": error.to_string()})
                }
            };
            if !self.status["merges"].is_object() {
                self.status["merges"] = json!({});
            }
            self.status["merges"][ecu.serial.as_str()] = entry;
        }
    }

    /// The node's addresses (with `/p2p/`), once it listens.
    pub fn listen_addrs(&self) -> Vec<libp2p::Multiaddr> {
        self.runtime.block_on(self.net.listen_addrs())
    }

    /// Keeps the node serving its neighbours for `wait`, for a program that drives [`Self::check`]
    /// itself: the node's runtime runs only while the daemon's thread waits in it.
    pub fn serve_for(&self, wait: Duration) {
        self.runtime
            .block_on(async move { tokio::time::sleep(wait).await });
    }

    /// What the daemon last decided (also in `status.json`).
    pub fn status(&self) -> &Value {
        &self.status
    }

    /// Runs checks forever, sleeping between them (the node keeps serving meanwhile), until
    /// SIGTERM or Ctrl-C.
    pub fn run(mut self) -> anyhow::Result<()> {
        // Listening from the start, for the whole run: a signal that comes during a check is
        // kept and ends the next sleep (a listener made at each sleep missed it, and systemd
        // waited its stop timeout out before it killed the agent).
        let mut stop = self.runtime.block_on(async { StopSignals::listen() })?;
        // Simulated reboots in a row; a trial needs one, so more means something keeps asking
        // for one, and the next try waits for the next check.
        let mut reboots = 0;
        loop {
            let now = node::clock::unix_now();
            let step = self.check(now);
            if matches!(step, Ok(Step::Rebooted)) {
                reboots += 1;
                if matches!(self.config.boot, BootMode::Simulated) && reboots <= 4 {
                    continue;
                }
            } else {
                reboots = 0;
            }
            let wait = match step {
                Ok(Step::Waiting { reason, retry_at }) => {
                    tracing::info!(%reason, ?retry_at, "waiting");
                    retry_at.map_or(self.config.check_interval, |at| {
                        Duration::from_secs(at.saturating_sub(now).max(1))
                            .min(self.config.check_interval)
                    })
                }
                Ok(step) => {
                    tracing::info!(?step, "checked");
                    self.config.check_interval
                }
                Err(error) => {
                    // Already in status.json (check writes it).
                    tracing::warn!("check failed: {error:#}");
                    self.config.check_interval
                }
            };
            if self.sleep(wait, &mut stop) {
                tracing::info!("stopping");
                break;
            }
        }
        self.store.flush_usage().ok();
        self.runtime.block_on(self.net.shutdown());
        Ok(())
    }

    /// One check, continued through simulated reboots (at most a few: a trial needs one),
    /// then the node shut down; returns the status.
    pub fn check_once(mut self, now: u64) -> anyhow::Result<Value> {
        let mut result = self.check(now);
        for _ in 0..4 {
            if !matches!(
                (&result, &self.config.boot),
                (Ok(Step::Rebooted), BootMode::Simulated)
            ) {
                break;
            }
            result = self.check(now);
        }
        self.store.flush_usage().ok();
        self.runtime.block_on(self.net.shutdown());
        result?;
        Ok(self.status.clone())
    }

    /// Sleeps `wait` while the node serves; true when asked to stop (now, or since the last
    /// sleep).
    fn sleep(&self, wait: Duration, stop: &mut StopSignals) -> bool {
        self.runtime.block_on(async {
            tokio::select! {
                () = tokio::time::sleep(wait) => false,
                _ = stop.terminate.recv() => true,
                _ = stop.interrupt.recv() => true,
            }
        })
    }

    fn note_error(&mut self, now: u64, error: &anyhow::Error) {
        self.status["checked_at"] = json!(now);
        self.status["step"] = json!("error");
        self.status["error"] = json!(format!("{error:#}"));
        self.write_status();
    }

    fn write_status(&mut self) {
        self.status["vin"] = json!(self.config.vin);
        self.status["served_bytes"] = json!(
            self.counters
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        let policy = self.agent.policy();
        let usage = policy.usage();
        self.status["cellular"] = json!({
            "month": usage.month,
            "bytes": usage.bytes,
            "budget": policy.config().monthly_budget,
        });
        let mut ecus = serde_json::Map::new();
        for (ecu, slot) in self.ecus.iter().zip(&self.booted) {
            let running = running_image(ecu, &self.journal).ok().flatten();
            ecus.insert(ecu.serial.clone(), {
                let mut entry = json!({
                    "slot": slot.as_str(),
                    "image": running.as_ref().map(|r| r.target.clone()),
                    "release_counter": running.as_ref().map(|r| r.release_counter),
                });
                if let crate::install::EcuBanks::Remap(bank) = &ecu.banks {
                    entry["remap"] = bank
                        .status()
                        .unwrap_or_else(|e| json!({"error": e.to_string()}));
                    entry["flash_writes"] = json!(bank.writes());
                }
                entry
            });
        }
        if let Some(ecu) = &self.rauc {
            let running = self.running_image_of_rauc(ecu);
            let pair = ecu.pair();
            ecus.insert(
                ecu.serial.clone(),
                json!({
                    "slot": pair.as_ref().ok().map(|p| p.booted.as_str().to_string()),
                    "image": running.as_ref().map(|r| r.target.clone()),
                    "release_counter": running.as_ref().map(|r| r.release_counter),
                    "rauc": match &pair {
                        Ok(pair) => json!({
                            "primary": pair.primary.as_ref().map(Slot::as_str),
                            "good": pair.good.iter().map(Slot::as_str).collect::<Vec<_>>(),
                        }),
                        Err(error) => json!({"error": error.to_string()}),
                    },
                }),
            );
        }
        self.status["ecus"] = Value::Object(ecus);
        let path = self.config.data_dir.join("status.json");
        if let Err(error) = node::storage::replace_file(&path, self.status.to_string().as_bytes()) {
            tracing::warn!(%error, "writing {}", path.display());
        }
    }

    fn running_image_of_rauc(
        &self,
        ecu: &crate::rauc::RaucEcu,
    ) -> Option<crate::flasher::InstalledImage> {
        crate::flasher::running_image_of(&ecu.serial, ecu.installed.as_ref(), &self.journal)
            .ok()
            .flatten()
    }

    /// The link now, from the configuration or the probe command.
    fn link(&self) -> anyhow::Result<Option<Link>> {
        match &self.config.link {
            LinkSource::Fixed { class, signal } => Ok(Some(Link {
                class: *class,
                signal: *signal,
            })),
            LinkSource::Command(command) => {
                let output = std::process::Command::new(&command[0])
                    .args(&command[1..])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .with_context(|| format!("running the link probe {}", command[0]))?;
                if !output.status.success() {
                    bail!(
                        "the link probe {} exited with {}",
                        command[0],
                        output.status
                    );
                }
                crate::config::parse_link(&String::from_utf8_lossy(&output.stdout))
                    .map_err(|why| anyhow::anyhow!("the link probe {}: {why}", command[0]))
            }
        }
    }

    /// One check, as the module says. `now` is Unix seconds.
    pub fn check(&mut self, now: u64) -> anyhow::Result<Step> {
        let step = self.check_inner(now);
        self.status["checked_at"] = json!(now);
        match &step {
            Ok(step) => {
                self.status["error"] = Value::Null;
                match step {
                    Step::UpToDate => self.status["step"] = json!("up_to_date"),
                    Step::Waiting { reason, retry_at } => {
                        self.status["step"] = json!("waiting");
                        self.status["reason"] = json!(reason);
                        self.status["retry_at"] = json!(retry_at);
                    }
                    Step::Rebooted => self.status["step"] = json!("rebooted"),
                    Step::Ended { .. } => self.status["step"] = json!("ended"),
                    Step::Finished { .. } => self.status["step"] = json!("finished"),
                }
                self.write_status();
            }
            Err(error) => {
                let error = anyhow::anyhow!("{error:#}");
                self.note_error(now, &error);
            }
        }
        step
    }

    /// Persists the month's cellular usage when the agent counted new bytes.
    fn persist_usage(&mut self) -> anyhow::Result<()> {
        let Some(usage) = self.agent.take_usage_change() else {
            return Ok(());
        };
        let path = usage_path(&self.config.data_dir);
        node::storage::replace_file(
            &path,
            json!({"month": usage.month, "bytes": usage.bytes})
                .to_string()
                .as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))
    }

    fn check_inner(&mut self, now: u64) -> anyhow::Result<Step> {
        let link = self.link()?;
        if let Some(link) = link {
            self.status["link"] = json!({"class": link.class.name(), "signal": link.signal});
        }
        self.check_state = CheckState::default();
        self.refresh_revocations();
        self.renew_membership(now);
        self.agent.start_check(now, link);
        let step = self.drive(now);
        let downloads = std::mem::take(&mut self.check_state.downloads);
        if !downloads.is_empty() {
            self.status["downloads"] = json!(downloads);
        }
        step
    }

    /// Carries out the agent's actions until it says the check is done.
    fn drive(&mut self, now: u64) -> anyhow::Result<Step> {
        let mut group = String::new();
        loop {
            match self.agent.poll() {
                Action::Refresh => {
                    let verified = self.refresh(now)?;
                    group = verified.group();
                    self.agent.refreshed(&verified)?;
                }
                Action::Fetch(fetch) => {
                    let end = self.fetch(&fetch, &group, now)?;
                    self.agent.fetch_ended(&end);
                }
                Action::Install { group, payloads } => {
                    let outcome = self.install(&group, &payloads)?;
                    if outcome == Outcome::Reboot {
                        self.reboot()?;
                    }
                    self.agent.installed(&outcome);
                    self.check_state.installed = Some(outcome);
                }
                Action::Conclude { group, decision } => {
                    let already = self.conclude(&group, &decision, now)?;
                    self.after_install(&decision)?;
                    self.agent.concluded(already);
                }
                Action::SendReports => {
                    if let Err(error) = self.send_reports(now) {
                        tracing::warn!("sending reports: {error:#}");
                    }
                    self.agent.reports_sent();
                }
                Action::Done(step) => return Ok(step),
            }
        }
    }

    /// After an install that ended in this check was reported: a commit lets remapping banks
    /// merge; a rollback restarts the ECUs into the slots they came from (until then they run
    /// the image that failed).
    fn after_install(&mut self, decision: &GroupDecision) -> anyhow::Result<()> {
        match (&self.check_state.installed, decision) {
            (Some(Outcome::Committed), GroupDecision::Commit) => self.merge_all(),
            (Some(Outcome::RolledBack { .. }), GroupDecision::RollBack { .. }) => {
                self.reboot()?;
                self.write_status();
            }
            _ => {}
        }
        Ok(())
    }

    /// The reboot the trial needs: simulated, every ECU boots as U-Boot's script would;
    /// otherwise the configured command (the daemon starts again after it).
    fn reboot(&mut self) -> anyhow::Result<()> {
        match &self.config.boot {
            BootMode::Simulated => {
                for (ecu, slot) in self.ecus.iter_mut().zip(self.booted.iter_mut()) {
                    *slot = ecu
                        .boot
                        .boot()
                        .with_context(|| format!("booting simulated ECU {}", ecu.serial))?;
                }
                Ok(())
            }
            BootMode::Reboot(command) => {
                let status = std::process::Command::new(&command[0])
                    .args(&command[1..])
                    .status()
                    .with_context(|| format!("running the reboot command {}", command[0]))?;
                if !status.success() {
                    bail!("the reboot command {} exited with {status}", command[0]);
                }
                Ok(())
            }
        }
    }
}
