//! A check's payloads: fetched over the mesh as the agent allows (within its allowance on a
//! metered link, paced by `download_bytes_per_sec`, every byte counted), then handed to the
//! flasher ([`crate::flasher::vehicle_step`]), which writes the inactive banks, switches every
//! ECU of the install to its trial together, and after the reboot commits all or rolls all back.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use anyhow::Context;
use node::fetch::{FetchError, FetchOptions};
use proto::EcuSerial;
use serde_json::json;

use super::Daemon;
use crate::agent::{self, Fetch, FetchEnd, Payload, PayloadKind};
use crate::boot::Slot;
use crate::flasher::{CommandCheck, EcuJob, HealthCheck, HealthError, Outcome};
use crate::install::ConfiguredEcu;

impl Daemon {
    /// Fetches what the agent asked for; counts the bytes against the budget and the install.
    pub(super) fn fetch(
        &mut self,
        fetch: &Fetch,
        group: &str,
        now: u64,
    ) -> anyhow::Result<FetchEnd> {
        let blob = fetch.blob.id;
        let mut options = FetchOptions::new(blob);
        options.size = Some(fetch.blob.length);
        options.peers = self.config.peers.clone();
        options.stall_timeout = self.config.stall_timeout;
        options.max_bytes = fetch.allowance;
        options.rate_limit = self.download_limit.clone();
        if fetch.metered {
            options.transfer.groups_per_request = agent::METERED_GROUPS_PER_REQUEST;
            options.transfer.max_requests_total = agent::METERED_REQUESTS;
            options.transfer.max_requests_per_peer = agent::METERED_REQUESTS;
            // One piece a request whatever the peers: the margin counts pieces.
            options.transfer.max_pieces_per_request = 1;
        }
        tracing::info!(
            group,
            payload = fetch.kind.name(),
            %blob,
            length = fetch.blob.length,
            metered = fetch.metered,
            allowance = fetch.allowance,
            "fetching"
        );
        let mut received = 0u64;
        let mut events = self.hub.subscribe();
        let result = self.runtime.block_on(node::fetch::fetch(
            &self.net,
            &mut events,
            self.store.clone(),
            options,
            |progress| received = progress.bytes,
        ));
        self.agent.record(received, now);
        self.persist_usage()?;
        if let Some(link) = self.agent.link() {
            self.add_install_bytes(group, link.class, received)?;
        }
        match result {
            Ok(report) => {
                tracing::info!(
                    payload = fetch.kind.name(),
                    %blob,
                    bytes = report.bytes_fetched,
                    length = fetch.blob.length,
                    peers = report.bytes_per_peer.len(),
                    seconds = report.seconds,
                    "fetched"
                );
                self.check_state.downloads.push(json!({
                    "blob": blob.to_string(),
                    "payload": fetch.kind.name(),
                    "length": fetch.blob.length,
                    "bytes": report.bytes_fetched,
                    "link": self.agent.link().map(|l| l.class.name()),
                    "seconds": report.seconds,
                    "from_peers": report.bytes_per_peer.len(),
                    "bytes_by_peer": report
                        .bytes_per_peer
                        .iter()
                        .map(|(peer, bytes)| (peer.to_string(), json!(bytes)))
                        .collect::<serde_json::Map<_, _>>(),
                }));
                Ok(FetchEnd::Complete)
            }
            Err(FetchError::Allowance { bytes, .. }) => Ok(FetchEnd::AllowanceSpent { bytes }),
            Err(error) => Err(error).with_context(|| format!("fetching {blob}")),
        }
    }

    /// The payloads out of the store (verified again on the way) into `payloads/`, opened.
    fn payload_files(&self, payloads: &[Payload]) -> anyhow::Result<Vec<fs::File>> {
        self.payload_paths(payloads)?
            .iter()
            .map(|path| fs::File::open(path).with_context(|| format!("opening {}", path.display())))
            .collect()
    }

    /// The payloads out of the store (verified again on the way) into `payloads/`.
    fn payload_paths(&self, payloads: &[Payload]) -> anyhow::Result<Vec<std::path::PathBuf>> {
        let dir = self.config.data_dir.join("payloads");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut paths = Vec::new();
        for payload in payloads {
            let blob = payload.blob.id;
            let path = dir.join(blob.to_string());
            let ready = fs::metadata(&path).is_ok_and(|m| m.len() == payload.blob.length);
            if !ready {
                self.store
                    .export_to_file(&blob, &path)
                    .with_context(|| format!("exporting {blob} to {}", path.display()))?;
            }
            paths.push(path);
        }
        Ok(paths)
    }

    /// One step of installing the bundle of the vehicle's RAUC ECU ([`crate::rauc::step`]),
    /// with the ECU's configured health check.
    fn install_rauc(
        &self,
        ecu: &crate::rauc::RaucEcu,
        group: &str,
        payloads: &[Payload],
    ) -> anyhow::Result<Outcome> {
        let [payload] = payloads else {
            anyhow::bail!(
                "install {group}: {} payloads for the one RAUC ECU",
                payloads.len()
            );
        };
        let approved = self
            .check_state
            .approved
            .get(payload.ecu)
            .context("a payload names an ECU the refresh did not approve")?;
        let config = self
            .ecu_configs
            .iter()
            .find(|c| c.serial.as_str() == ecu.serial)
            .context("the RAUC ECU has no configuration")?;
        let mut check = CommandCheck {
            program: config.health.command[0].clone(),
            args: config.health.command[1..].to_vec(),
            timeout: Duration::from_secs(config.health.timeout_secs),
        };
        let bundle = self.payload_paths(payloads)?.remove(0);
        crate::rauc::step(
            group,
            ecu,
            approved,
            &bundle,
            &self.journal,
            &mut |slot: &Slot| check.check(slot),
        )
        .with_context(|| format!("install {group}"))
    }

    /// One step of the vehicle install `group` with `payloads`: the flasher's verdict.
    pub(super) fn install(&mut self, group: &str, payloads: &[Payload]) -> anyhow::Result<Outcome> {
        for payload in payloads {
            tracing::info!(
                group,
                ecu = payload.ecu,
                payload = payload.kind.name(),
                blob = %payload.blob.id,
                bytes = payload.blob.length,
                "install step started"
            );
        }
        let outcome = if let Some(ecu) = &self.rauc {
            self.install_rauc(ecu, group, payloads)
        } else {
            self.install_flashed(group, payloads)
        };
        match &outcome {
            Ok(Outcome::Reboot) => {
                tracing::info!(group, "install step ended: trial set, rebooting")
            }
            Ok(Outcome::Committed) => tracing::info!(group, "install step ended: committed"),
            Ok(Outcome::RolledBack { reason }) => {
                tracing::info!(group, reason, "install step ended: rolled back");
            }
            Err(error) => tracing::warn!(group, "install step failed: {error:#}"),
        }
        outcome
    }

    /// [`Self::install`] on ECUs whose banks depotmesh writes ([`crate::flasher::vehicle_step`]).
    fn install_flashed(&mut self, group: &str, payloads: &[Payload]) -> anyhow::Result<Outcome> {
        let files = self.payload_files(payloads)?;
        let approved = &self.check_state.approved;
        let jobs = payloads
            .iter()
            .zip(&files)
            .map(|(payload, file)| {
                Ok(EcuJob {
                    approval: approved
                        .get(payload.ecu)
                        .context("a payload names an ECU the refresh did not approve")?,
                    delta: file,
                    delta_len: payload.blob.length,
                    full_image: payload.kind == PayloadKind::Image,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let indexes: Vec<usize> = payloads
            .iter()
            .filter_map(|p| self.check_state.ecu_of.get(p.ecu).copied())
            .collect();
        let mut checks: BTreeMap<EcuSerial, CommandCheck> = self
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
        let mut slots: Vec<Option<ConfiguredEcu>> = std::mem::take(&mut self.ecus)
            .into_iter()
            .map(Some)
            .collect();
        let mut group_ecus: Vec<ConfiguredEcu> = indexes
            .iter()
            .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
            .collect();
        let outcome = if group_ecus.len() == jobs.len() {
            crate::flasher::vehicle_step(
                group,
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
        outcome.with_context(|| format!("install {group}"))
    }
}
