//! The vehicle daemon (`vehicle-peer --config FILE`): the gateway's update agent.
//!
//! Every check (each `check_interval_secs`, and at once after a simulated reboot):
//! 1. asks the link probe which link the vehicle has (yard WiFi, other WiFi, cellular, roaming)
//!    and the link policy ([`node::policy`]) whether metadata may be fetched over it (metadata
//!    is a few KiB and is how a security fix is learnt of: it counts as security traffic);
//! 2. refreshes the vehicle's director repository (`director/<vin>`) and the image repository
//!    from the depot and its neighbours over the mesh and verifies them the Uptane way
//!    ([`proto::uptane::verify_full`]: both repositories agree, the hardware matches, no
//!    rollback) — the depot relays but cannot forge;
//! 3. for each ECU whose approved image is not what it runs, picks the delta the image
//!    repository lists from what the ECU runs (else the whole image), and asks the policy
//!    whether it may be fetched now, given the update's signed priority class and release time;
//!    on a metered link the fetch stops at the allowance the policy grants, and every byte
//!    received on a metered link is counted against the month's budget (persisted); every
//!    fetch is paced by `download_bytes_per_sec`, when set;
//! 4. hands the verified payloads to the flasher ([`crate::flasher::vehicle_step`]), which writes
//!    the inactive banks, switches all ECUs to their trial together, and after the reboot commits
//!    all or rolls all back;
//! 5. writes the vehicle's signed version manifest (every ECU's signed report) under
//!    `reports/`, for the director.
//!
//! Everything it decided is in `status.json` in the data directory (written durably at every
//! check), which is what a supervisor or a test reads. A power cut at any point resumes from the
//! store (verified pieces), the flasher's journal and the persisted cellular usage.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use node::director_client::{ClientError, DirectorClient, Sender};
use node::fetch::{FetchError, FetchOptions};
use node::net::{EventHub, NetHandle};
use node::policy::{Decision, Link, LinkClass, LinkPolicy, Priority, Usage};
use node::ratelimit::RateLimit;
use node::serve::ServeCounters;
use node::storage::{Index, SledIndex};
use node::store::DiskStore;
use node::tuf_mesh::{MeshRemote, MeshUpdater};
use proto::BlobId;
use proto::custom::{DirectorCustom, ImageCustom};
use proto::director_api::{InstallOutcome, InstallReport};
use proto::tuf::{Role, Time};
use proto::uptane::{ApprovedImage, EcuState};
use serde_json::{Value, json};

use crate::boot::Slot;
use crate::config::{BootMode, LinkSource, VehicleConfig};
use crate::flasher::{
    CommandCheck, EcuJob, GroupDecision, HealthCheck, HealthError, Outcome, group_decision,
    running_image, version_report,
};
use crate::install::{EcuConfig, load_config, open_ecu};

/// Bytes a metered fetch may overshoot its allowance by: requests in flight when it is spent
/// still land (4 requests of 4 groups of 16 KiB with the settings used on metered links).
const METERED_MARGIN: u64 = 4 * 4 * 16 * 1024;

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every ECU runs what the director assigned.
    UpToDate,
    /// The link policy (or the absence of a link) says not now.
    Waiting {
        /// Why.
        reason: String,
        /// When the answer may change without a new link (Unix seconds).
        retry_at: Option<u64>,
    },
    /// The ECUs were switched to their trial and the vehicle rebooted (simulated boots: at
    /// once, check again now).
    Rebooted,
    /// The install of the current assignment ended earlier and was reported; nothing to do
    /// until the director signs a new assignment.
    Ended {
        /// The install's name.
        group: String,
    },
    /// The install ended (and was reported): committed or rolled back.
    Finished {
        /// The install's name (`director-v<version>`).
        group: String,
        /// `committed` or `rolled back: <reason>`.
        outcome: String,
    },
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
    journal: SledIndex,
    policy: LinkPolicy,
    primary_key: ed25519_dalek::SigningKey,
    status: Value,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("vin", &self.config.vin)
            .finish_non_exhaustive()
    }
}

fn read_seed(path: &Path, what: &str) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text =
        fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| {
            format!(
                "{what} {}: must hold a 32-byte ed25519 seed in hex",
                path.display()
            )
        })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
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

/// The Unix time now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let mut ecus = ecu_configs
            .iter()
            .map(|ecu| open_ecu(ecu).with_context(|| format!("opening ECU {}", ecu.serial)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let journal_dir = config.data_dir.join("flasher");
        fs::create_dir_all(&journal_dir)
            .with_context(|| format!("creating {}", journal_dir.display()))?;
        let journal = SledIndex::open(&journal_dir)
            .with_context(|| format!("opening the journal {}", journal_dir.display()))?;
        let booted = match &config.boot {
            BootMode::Simulated => ecus
                .iter_mut()
                .map(|ecu| {
                    ecu.boot
                        .boot()
                        .with_context(|| format!("booting simulated ECU {}", ecu.serial))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
            BootMode::Reboot(_) => {
                let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
                vec![crate::bank::running_slot(&cmdline).context(
                    "no rauc.slot= on the kernel command line: the bootloader must say which slot runs",
                )?]
            }
        };
        let primary_key = read_seed(&config.primary_key_file, "primary_key_file")?;
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
        )
        .map_err(anyhow::Error::msg)?;
        let counters = Arc::new(ServeCounters::default());
        let hub = {
            let _context = runtime.enter();
            node::serve::spawn_server(store.clone(), incoming, counters.clone());
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
            journal,
            policy,
            primary_key,
            status,
        };
        // A merge a power cut interrupted goes on.
        daemon.merge_all();
        Ok(daemon)
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
        // Simulated reboots in a row; a trial needs one, so more means something keeps asking
        // for one, and the next try waits for the next check.
        let mut reboots = 0;
        loop {
            let now = unix_now();
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
            if self.sleep(wait)? {
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

    /// Sleeps `wait` while the node serves; true when asked to stop.
    fn sleep(&self, wait: Duration) -> anyhow::Result<bool> {
        self.runtime.block_on(async {
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            Ok(tokio::select! {
                () = tokio::time::sleep(wait) => false,
                _ = tokio::signal::ctrl_c() => true,
                _ = terminate.recv() => true,
            })
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
        let usage = self.policy.usage();
        self.status["cellular"] = json!({
            "month": usage.month,
            "bytes": usage.bytes,
            "budget": self.policy.config().monthly_budget,
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
        self.status["ecus"] = Value::Object(ecus);
        let path = self.config.data_dir.join("status.json");
        if let Err(error) = node::storage::replace_file(&path, self.status.to_string().as_bytes()) {
            tracing::warn!(%error, "writing {}", path.display());
        }
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

    /// Counts `bytes` moved over `class` and persists the month's usage.
    /// Bytes fetched for install `group`, by link class (journaled: an install's downloads may
    /// span several checks and restarts).
    fn install_bytes(&self, group: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let key = format!("daemon-bytes/{group}").into_bytes();
        Ok(self
            .journal
            .load()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, value)| serde_json::from_slice(&value).ok())
            .unwrap_or_default())
    }

    fn add_install_bytes(&self, group: &str, class: LinkClass, bytes: u64) -> anyhow::Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut counts = self.install_bytes(group)?;
        *counts.entry(class.name().to_string()).or_default() += bytes;
        let key = format!("daemon-bytes/{group}");
        self.journal
            .put(key.as_bytes(), &serde_json::to_vec(&counts)?)?;
        Ok(())
    }

    fn record(&mut self, class: LinkClass, bytes: u64, now: u64) -> anyhow::Result<()> {
        if !class.metered() || bytes == 0 {
            return Ok(());
        }
        self.policy.record(class, bytes, now);
        let usage = self.policy.usage();
        let path = usage_path(&self.config.data_dir);
        node::storage::replace_file(
            &path,
            json!({"month": usage.month, "bytes": usage.bytes})
                .to_string()
                .as_bytes(),
        )
        .with_context(|| format!("writing {}", path.display()))
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

    /// Journals that the director answered report `group` for good (not sent again).
    fn note_sent(
        &mut self,
        group: &str,
        now: u64,
        status: u16,
        verdict: &str,
        answer: &str,
    ) -> anyhow::Result<()> {
        self.journal.put(
            format!("daemon-sent/{group}").as_bytes(),
            json!({"at": now, "via": "director", "status": status})
                .to_string()
                .as_bytes(),
        )?;
        self.status["report_sent"] = json!({"group": group, "via": "director",
            "status": status, "verdict": verdict, "answer": answer});
        Ok(())
    }

    /// Sends the reports the director has not acknowledged yet, oldest first: to the director
    /// (`director_url`) when it can be reached, else through the depot (the configured peers,
    /// which store it durably and relay it; they cannot alter it). A report sent directly is
    /// sent until the director answers (accepted, or refused for good: a replay or a bad
    /// manifest is not sent again); one a depot took is the depot's to deliver. Counts the
    /// bytes on a metered link.
    fn send_reports(&mut self, class: LinkClass, now: u64) -> anyhow::Result<()> {
        let relays = self.config.peers.clone();
        let director = match &self.config.director_url {
            Some(url) => Some(DirectorClient::new(url, self.config.metadata_timeout)?),
            None => None,
        };
        if director.is_none() && relays.is_empty() {
            return Ok(());
        }
        let dir = self.config.data_dir.join("reports");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut pending: Vec<(String, std::path::PathBuf)> = Vec::new();
        let journal = self.journal.load()?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(group) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| path.extension().is_some_and(|e| e == "json"))
            else {
                continue;
            };
            let key = format!("daemon-sent/{group}").into_bytes();
            if !journal.iter().any(|(k, _)| *k == key) {
                pending.push((group.to_string(), path.clone()));
            }
        }
        pending.sort();
        for (group, path) in pending {
            let manifest =
                fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            self.record(class, manifest.len() as u64, now)?;
            let mut failures = Vec::new();
            if let Some(director) = &director {
                match director.send_manifest(&self.config.vin, &manifest, Sender::Vehicle) {
                    Ok(accepted) => {
                        tracing::info!(%group, "report accepted by the director");
                        let answer = serde_json::to_string(&accepted)?;
                        self.note_sent(&group, now, 200, "accepted", &answer)?;
                        continue;
                    }
                    Err(ClientError::Refused {
                        status, message, ..
                    }) if proto::director_api::is_final_refusal(status) => {
                        tracing::error!(%group, status, %message, "the director refused the report");
                        self.note_sent(&group, now, status, "refused", &message)?;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%group, "sending the report to the director: {error}");
                        failures.push(format!("director: {error}"));
                    }
                }
            }
            if relays.is_empty() {
                self.status["report_sent"] = json!({"group": group, "error": failures.join("; ")});
                return Ok(());
            }
            let relayed = self.runtime.block_on(node::relay::send_report(
                &self.net,
                &relays,
                &manifest,
                self.config.metadata_timeout,
            ));
            match relayed {
                Ok(depot) => {
                    tracing::info!(%group, %depot, "report handed to the depot to relay");
                    self.journal.put(
                        format!("daemon-sent/{group}").as_bytes(),
                        json!({"at": now, "via": "depot", "depot": depot.to_string()})
                            .to_string()
                            .as_bytes(),
                    )?;
                    self.status["report_sent"] = json!({"group": group, "via": "depot",
                        "depot": depot.to_string(), "verdict": "relayed"});
                }
                Err(error) => {
                    tracing::warn!(%group, "handing the report to a depot: {error}");
                    failures.push(format!("depot: {error}"));
                    self.status["report_sent"] =
                        json!({"group": group, "error": failures.join("; ")});
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_lines)]
    fn check_inner(&mut self, now: u64) -> anyhow::Result<Step> {
        let Some(link) = self.link()? else {
            return Ok(Step::Waiting {
                reason: "no link".into(),
                retry_at: None,
            });
        };
        self.status["link"] = json!({"class": link.class.name(), "signal": link.signal});
        let step = self.check_link(link, now)?;
        // Reports go out on any link the policy lets metadata use (they are as small).
        if let Decision::Allow { .. } = self.policy.decide(link, Priority::Security, now, now) {
            if let Err(error) = self.send_reports(link.class, now) {
                tracing::warn!("sending reports: {error:#}");
            }
        }
        Ok(step)
    }

    /// The files of `repository` over the mesh: from the configured peers, then any connected.
    fn mesh_remote(
        &self,
        repository: &str,
    ) -> MeshRemote<node::storage::DiskStorage, node::storage::SledIndex> {
        MeshRemote::new(
            self.net.clone(),
            self.store.clone(),
            self.config.peers.clone(),
            repository,
            self.config.metadata_timeout,
        )
        .asking(node::named::Ask::ListedThenConnected)
    }

    #[allow(clippy::too_many_lines)]
    fn check_link(&mut self, link: Link, now: u64) -> anyhow::Result<Step> {
        if let Decision::Wait { retry_at, reason } =
            self.policy.decide(link, Priority::Security, now, now)
        {
            return Ok(Step::Waiting {
                reason: format!("metadata check: {reason}"),
                retry_at,
            });
        }
        let time = Time::from_unix(i64::try_from(now).context("the clock")?);
        let vin = self.config.vin.clone();
        let data_dir = self.config.data_dir.clone();
        let director_repository = format!("director/{vin}");

        // 2. Metadata, verified the Uptane way.
        let (approved, director_version, urgency, metadata_bytes, deltas) = {
            let local = node::tuf_mesh::trusted_store(
                &data_dir,
                &director_repository,
                self.config.director_root.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let mut director =
                MeshUpdater::new(self.mesh_remote(&director_repository), local, time)
                    .context("loading the director's trusted root")?;
            let local = node::tuf_mesh::trusted_store(
                &data_dir,
                "image",
                self.config.image_root.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            let mut image = MeshUpdater::new(self.mesh_remote("image"), local, time)
                .context("loading the image repository's trusted root")?;
            let mut states = BTreeMap::new();
            for ecu in &self.ecus {
                let installed = running_image(ecu, &self.journal)?
                    .context("an ECU does not know what it runs")?;
                states.insert(
                    ecu.serial.clone(),
                    EcuState {
                        hardware_id: ecu.hardware_id.clone(),
                        installed_release_counter: installed.release_counter,
                    },
                );
            }
            let verified = self.runtime.block_on(node::tuf_mesh::verify_full(
                &mut director,
                &mut image,
                &states,
            ));
            let metadata_bytes: u64 = director
                .remote()
                .fetched
                .iter()
                .chain(&image.remote().fetched)
                .map(|(_, bytes)| bytes.len() as u64)
                .sum();
            let approved = match verified {
                Ok(approved) => approved,
                Err(error) => {
                    drop((director, image));
                    self.record(link.class, metadata_bytes, now)?;
                    return Err(error).context("verifying the director's and image metadata");
                }
            };
            let director_targets = director
                .trusted()
                .targets("targets")
                .context("no director targets after refresh")?;
            let director_version = director_targets.signed.version();
            // The most urgent signed priority among the assignments, and its release time.
            let mut urgency: Option<(Priority, u64)> = None;
            for (name, file) in &director_targets.signed.targets {
                let custom = DirectorCustom::of(name, file)?;
                let priority = custom.priority();
                let released = custom.released.unwrap_or(now);
                if urgency.is_none_or(|(p, _)| priority < p) {
                    urgency = Some((priority, released));
                }
            }
            // The deltas the image repository lists for each approved image, by source name,
            // each with the source's signed sha256 (a delta applies only to that image).
            let mut deltas: BTreeMap<String, BTreeMap<String, (BlobId, u64, String)>> =
                BTreeMap::new();
            for a in &approved {
                let Some(info) = self.runtime.block_on(image.target_info(a.target()))? else {
                    continue;
                };
                for (from, delta) in ImageCustom::of(a.target(), &info)?.deltas {
                    let source_sha = self
                        .runtime
                        .block_on(image.target_info(&from))?
                        .and_then(|i| i.hashes.get("sha256").cloned());
                    if let Some(sha) = source_sha {
                        deltas
                            .entry(a.target().to_string())
                            .or_default()
                            .insert(from, (delta.blake3, delta.length, sha));
                    }
                }
            }
            (
                approved,
                director_version,
                urgency.unwrap_or((Priority::Feature, now)),
                metadata_bytes,
                deltas,
            )
        };
        self.record(link.class, metadata_bytes, now)?;
        let group = format!("director-v{director_version}");
        self.status["assignment"] = json!({
            "director_version": director_version,
            "priority": urgency.0.name(),
            "released": urgency.1,
            "images": approved.iter().map(|a| json!({"ecu": a.ecu_serial(), "image": a.target()})).collect::<Vec<_>>(),
        });

        // An install of this assignment that already ended: report it once, then rest.
        if let Some(decision) = group_decision(&self.journal, &group)? {
            return self.conclude(&group, &decision, now);
        }

        // 3. What each ECU needs.
        let mut needed: Vec<(usize, &ApprovedImage, BlobId, u64, bool)> = Vec::new();
        for a in &approved {
            let index = self
                .ecus
                .iter()
                .position(|e| e.serial == a.ecu_serial())
                .context("the director names an ECU this vehicle does not have")?;
            let running = running_image(&self.ecus[index], &self.journal)?
                .context("an ECU does not know what it runs")?;
            let wanted_sha = a.file().hashes.get("sha256").cloned().unwrap_or_default();
            let in_flight =
                crate::flasher::journaled(&self.journal, a.ecu_serial())?.is_some_and(|r| {
                    Some(r.blake3) == a.blake3()
                        && !matches!(
                            r.stage,
                            crate::flasher::Stage::Committed
                                | crate::flasher::Stage::RolledBack { .. }
                        )
                });
            if running.sha256.eq_ignore_ascii_case(&wanted_sha) && !in_flight {
                continue;
            }
            let delta = deltas
                .get(a.target())
                .and_then(|d| d.get(&running.target))
                .filter(|(_, _, sha)| sha.eq_ignore_ascii_case(&running.sha256));
            let (blob, length, full) = match delta {
                Some((blob, length, _)) => (*blob, *length, false),
                None => (
                    a.blake3().context(
                        "the approved image has no BLAKE3: it cannot come over the mesh",
                    )?,
                    a.file().length,
                    true,
                ),
            };
            needed.push((index, a, blob, length, full));
        }
        if needed.is_empty() {
            return Ok(Step::UpToDate);
        }

        // Fetch what is missing, as the link policy allows.
        let (priority, released) = urgency;
        let mut downloads = Vec::new();
        for &(_, _, blob, length, _) in &needed {
            if self.store.info(&blob).is_some_and(|i| i.complete) {
                continue;
            }
            let allowance = match self.policy.decide(link, priority, released, now) {
                Decision::Wait { retry_at, reason } => {
                    return Ok(Step::Waiting {
                        reason: format!("{} update: {reason}", priority.name()),
                        retry_at,
                    });
                }
                Decision::Allow { max_bytes, .. } if link.class.metered() => {
                    let allowance = max_bytes.saturating_sub(METERED_MARGIN);
                    if allowance == 0 {
                        return Ok(Step::Waiting {
                            reason: "the cellular budget left is below one request's margin".into(),
                            retry_at: None,
                        });
                    }
                    Some(allowance)
                }
                Decision::Allow { .. } => None,
            };
            let mut options = FetchOptions::new(blob);
            options.size = Some(length);
            options.peers = self.config.peers.clone();
            options.stall_timeout = self.config.stall_timeout;
            options.max_bytes = allowance;
            options.rate_limit = self.download_limit.clone();
            if allowance.is_some() {
                options.transfer.groups_per_request = 4;
                options.transfer.max_requests_total = 4;
                options.transfer.max_requests_per_peer = 4;
            }
            let mut received = 0u64;
            let mut events = self.hub.subscribe();
            let result = self.runtime.block_on(node::fetch::fetch(
                &self.net,
                &mut events,
                self.store.clone(),
                options,
                |progress| received = progress.bytes,
            ));
            self.record(link.class, received, now)?;
            self.add_install_bytes(&group, link.class, received)?;
            match result {
                Ok(report) => downloads.push(json!({
                    "blob": blob.to_string(),
                    "bytes": report.bytes_fetched,
                    "link": link.class.name(),
                    "seconds": report.seconds,
                    "from_peers": report.bytes_per_peer.len(),
                    "bytes_by_peer": report
                        .bytes_per_peer
                        .iter()
                        .map(|(peer, bytes)| (peer.to_string(), json!(bytes)))
                        .collect::<serde_json::Map<_, _>>(),
                })),
                Err(FetchError::Allowance { bytes, .. }) => {
                    return Ok(Step::Waiting {
                        reason: format!(
                            "the cellular allowance was spent after {bytes} bytes of {blob}"
                        ),
                        retry_at: None,
                    });
                }
                Err(error) => return Err(error).with_context(|| format!("fetching {blob}")),
            }
        }
        if !downloads.is_empty() {
            self.status["downloads"] = json!(downloads);
        }

        // 4. The flasher: the payloads out of the store (verified again on the way), then one
        // step of the vehicle install.
        let payloads = data_dir.join("payloads");
        fs::create_dir_all(&payloads)
            .with_context(|| format!("creating {}", payloads.display()))?;
        let mut files = Vec::new();
        for &(_, _, blob, length, _) in &needed {
            let path = payloads.join(blob.to_string());
            let ready = fs::metadata(&path).is_ok_and(|m| m.len() == length);
            if !ready {
                self.store
                    .export_to_file(&blob, &path)
                    .with_context(|| format!("exporting {blob} to {}", path.display()))?;
            }
            files.push(
                fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?,
            );
        }
        let jobs: Vec<EcuJob<'_, fs::File>> = needed
            .iter()
            .zip(&files)
            .map(|(&(_, approval, _, length, full), file)| EcuJob {
                approval,
                delta: file,
                delta_len: length,
                full_image: full,
            })
            .collect();
        let indexes: Vec<usize> = needed.iter().map(|n| n.0).collect();
        let mut checks: BTreeMap<String, CommandCheck> = self
            .ecu_configs
            .iter()
            .map(|c| {
                (
                    c.serial.clone(),
                    CommandCheck {
                        program: c.health.command[0].clone(),
                        args: c.health.command[1..].to_vec(),
                        timeout: Duration::from_secs(c.health.timeout_secs),
                    },
                )
            })
            .collect();
        // vehicle_step takes the ECUs of this install, in job order; they go back after.
        let booted: Vec<Slot> = indexes.iter().map(|&i| self.booted[i].clone()).collect();
        let mut slots: Vec<Option<crate::install::ConfiguredEcu>> = std::mem::take(&mut self.ecus)
            .into_iter()
            .map(Some)
            .collect();
        let mut group_ecus: Vec<crate::install::ConfiguredEcu> = indexes
            .iter()
            .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
            .collect();
        let outcome = if group_ecus.len() == indexes.len() {
            crate::flasher::vehicle_step(
                &group,
                &mut group_ecus,
                &jobs,
                &booted,
                &self.journal,
                &mut |serial: &str, slot: &Slot| match checks.get_mut(serial) {
                    Some(check) => check.check(slot),
                    None => Err(HealthError::NotConfigured(serial.to_string())),
                },
            )
            .map_err(anyhow::Error::from)
        } else {
            Err(anyhow::anyhow!("the director names one ECU twice"))
        };
        for (&i, ecu) in indexes.iter().zip(group_ecus) {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(ecu);
            }
        }
        self.ecus = slots.into_iter().flatten().collect();
        let outcome = outcome.with_context(|| format!("install {group}"))?;
        match outcome {
            Outcome::Reboot => {
                self.reboot()?;
                Ok(Step::Rebooted)
            }
            Outcome::Committed => {
                let step = self.conclude(&group, &GroupDecision::Commit, now)?;
                self.merge_all();
                Ok(step)
            }
            Outcome::RolledBack { reason } => {
                // Reported first (durably), then the ECUs restart into the slots they came
                // from: until then they still run the image that failed.
                let step = self.conclude(&group, &GroupDecision::RollBack { reason }, now)?;
                self.reboot()?;
                self.write_status();
                Ok(step)
            }
        }
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

    /// Reports an ended install once (the signed vehicle manifest under `reports/`) and frees
    /// its payloads.
    fn conclude(
        &mut self,
        group: &str,
        decision: &GroupDecision,
        now: u64,
    ) -> anyhow::Result<Step> {
        let outcome = match decision {
            GroupDecision::Commit => "committed".to_string(),
            GroupDecision::RollBack { reason } => format!("rolled back: {reason}"),
        };
        let reported_key = format!("daemon-reported/{group}").into_bytes();
        let reported = self
            .journal
            .load()?
            .into_iter()
            .any(|(key, _)| key == reported_key);
        if reported {
            return Ok(Step::Ended {
                group: group.to_string(),
            });
        }
        let nonce = format!("{group}@{now}");
        let reports = self
            .ecus
            .iter()
            .map(|ecu| version_report(ecu, &self.journal, &nonce))
            .collect::<Result<Vec<_>, _>>()?;
        let primary = self
            .ecus
            .first()
            .map(|e| e.serial.clone())
            .unwrap_or_default();
        let install = InstallReport {
            group: group.to_string(),
            outcome: match decision {
                GroupDecision::Commit => InstallOutcome::Committed,
                GroupDecision::RollBack { reason } if reason.contains("health check failed") => {
                    InstallOutcome::HealthFailed
                }
                GroupDecision::RollBack { .. } => InstallOutcome::RolledBack,
            },
            reason: match decision {
                GroupDecision::Commit => String::new(),
                GroupDecision::RollBack { reason } => reason.clone(),
            },
            bytes: self.install_bytes(group)?,
        };
        let manifest = proto::uptane::sign_vehicle_manifest(
            self.config.vin.as_str(),
            &primary,
            &reports,
            Some(&serde_json::to_value(&install)?),
            &self.primary_key,
        )
        .map_err(|e| anyhow::anyhow!("signing the vehicle manifest: {e}"))?;
        let dir = self.config.data_dir.join("reports");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{group}.json"));
        node::storage::replace_file(&path, &manifest)
            .with_context(|| format!("writing {}", path.display()))?;
        self.journal
            .put(&reported_key, now.to_string().as_bytes())?;
        let payloads = self.config.data_dir.join("payloads");
        if payloads.exists() {
            fs::remove_dir_all(&payloads).ok();
        }
        tracing::info!(%group, %outcome, report = %path.display(), "install ended");
        self.status["last_install"] = json!({
            "group": group,
            "outcome": outcome,
            "report": path.display().to_string(),
            "nonce": nonce,
            "ended_at": now,
        });
        Ok(Step::Finished {
            group: group.to_string(),
            outcome,
        })
    }
}
