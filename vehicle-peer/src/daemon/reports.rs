//! The vehicle's reports to the director: an ended install's signed manifest, written once
//! under `reports/`, and sent until the director answers it for good (directly, or handed to a
//! depot that relays it); the bytes each install fetched, by link class, which the manifest
//! carries.

use std::collections::BTreeMap;
use std::fs;

use anyhow::Context;
use node::director_client::{ClientError, ClientTls, DirectorClient, Sender};
use node::policy::LinkClass;
use node::storage::Index;
use proto::director_api::{CellularMonth, InstallOutcome, InstallReport};
use serde_json::json;

use super::Daemon;
use crate::flasher::{GroupDecision, version_report};

impl Daemon {
    /// Bytes fetched for install `group`, by link class (journaled: an install's downloads may
    /// span several checks and restarts).
    pub(super) fn install_bytes(&self, group: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let key = format!("daemon-bytes/{group}").into_bytes();
        Ok(self
            .journal
            .load()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, value)| serde_json::from_slice(&value).ok())
            .unwrap_or_default())
    }

    pub(super) fn add_install_bytes(
        &self,
        group: &str,
        class: LinkClass,
        bytes: u64,
    ) -> anyhow::Result<()> {
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
    pub(super) fn send_reports(&mut self, now: u64) -> anyhow::Result<()> {
        let relays = self.config.peers.clone();
        let director = match &self.config.director_url {
            Some(url) => {
                let tls = ClientTls::roots(self.config.director_ca.as_deref())?;
                Some(DirectorClient::new(
                    url,
                    self.config.metadata_timeout,
                    &tls,
                )?)
            }
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
            self.agent.record(manifest.len() as u64, now);
            self.persist_usage()?;
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

    /// The month's cellular use against the budget, for the install report; none without a
    /// budget (the vehicle never uses cellular).
    fn cellular_month(&self, now: u64) -> Option<CellularMonth> {
        let policy = self.agent.policy();
        let budget_bytes = policy.config().monthly_budget;
        (budget_bytes > 0).then(|| CellularMonth {
            used_bytes: budget_bytes.saturating_sub(policy.remaining(now)),
            budget_bytes,
        })
    }

    /// Reports an ended install once (the signed vehicle manifest under `reports/`) and frees
    /// its payloads. True when it had been reported at an earlier check.
    pub(super) fn conclude(
        &mut self,
        group: &str,
        decision: &GroupDecision,
        now: u64,
    ) -> anyhow::Result<bool> {
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
            return Ok(true);
        }
        let nonce = format!("{group}@{now}");
        let mut reports = self
            .ecus
            .iter()
            .map(|ecu| version_report(ecu, &self.journal, &nonce))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(ecu) = &self.rauc {
            reports.push(crate::flasher::version_report_of(
                &ecu.serial,
                ecu.installed.as_ref(),
                &ecu.key,
                &self.journal,
                &nonce,
            )?);
        }
        let primary = self
            .ecus
            .first()
            .map(|e| e.serial.clone())
            .or_else(|| self.rauc.as_ref().map(|e| e.serial.clone()))
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
            cellular: self.cellular_month(now),
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
        Ok(false)
    }
}
