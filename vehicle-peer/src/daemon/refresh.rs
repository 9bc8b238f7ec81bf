//! A check's refresh: the vehicle's director repository (`director/<vin>`) and the image
//! repository from the depot and its neighbours over the mesh, verified the Uptane way
//! ([`node::tuf_mesh::verify_full`]: both repositories agree, the hardware matches, no rollback
//! — the depot relays but cannot forge), turned into the facts the agent decides on: each
//! approved image, what its ECU runs, the deltas listed for it and what the store holds.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use node::policy::Priority;
use node::tuf_mesh::{MeshRemote, MeshUpdater};
use proto::custom::{DirectorCustom, ImageCustom};
use proto::tuf::{Role, Time};
use proto::uptane::{ApprovedImage, EcuState, UptaneError};
use serde_json::json;

use super::Daemon;
use crate::agent::{Blob, DeltaOffer, EcuFacts, Image, Verified};
use crate::flasher::{Stage, group_decision, journaled, running_image, running_image_of};

/// `error`, or, when no peer serves the vehicle's director repository at all, what that means:
/// the director has none for this VIN (it signs one, empty, at registration), or the depot
/// does not relay it yet. A registered vehicle with nothing assigned is not this: it reads
/// empty director targets and is up to date.
fn explain_missing_director(repository: &str, error: UptaneError) -> anyhow::Error {
    let missing = match &error {
        UptaneError::Tuf {
            repository: "director",
            error,
        } => node::tuf_mesh::director_repository_missing(repository, error),
        _ => None,
    };
    match missing {
        Some(vin) => anyhow::anyhow!(
            "no peer serves {repository}/metadata/timestamp.json: the director has no repository \
             for vehicle {vin} (it is not registered: `origin vehicle register`; or it was \
             registered before the director signed an empty repository at registration: \
             restarting `origin serve` signs one), or the depot does not prefetch {repository} \
             (yet: its [prefetch] vehicles)"
        ),
        None => error.into(),
    }
}

/// The image repository's deltas to one approved image: source target name → the delta and
/// the source's signed SHA-256.
type Deltas = BTreeMap<String, (proto::BlobId, u64, String)>;

impl Daemon {
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

    /// What each ECU runs, for the Uptane checks (hardware, no rollback).
    fn ecu_states(&self) -> anyhow::Result<BTreeMap<String, EcuState>> {
        let mut states = BTreeMap::new();
        for ecu in &self.ecus {
            let installed =
                running_image(ecu, &self.journal)?.context("an ECU does not know what it runs")?;
            states.insert(
                ecu.serial.clone(),
                EcuState {
                    hardware_id: ecu.hardware_id.clone(),
                    installed_release_counter: installed.release_counter,
                },
            );
        }
        if let Some(ecu) = &self.rauc {
            let installed = running_image_of(&ecu.serial, ecu.installed.as_ref(), &self.journal)?
                .context("an ECU does not know what it runs")?;
            states.insert(
                ecu.serial.clone(),
                EcuState {
                    hardware_id: ecu.hardware_id.clone(),
                    installed_release_counter: installed.release_counter,
                },
            );
        }
        Ok(states)
    }

    /// Refreshes and verifies both repositories; the metadata bytes count against the budget
    /// whether or not they verify. Remembers the approved images for the install.
    pub(super) fn refresh(&mut self, now: u64) -> anyhow::Result<Verified> {
        let time = Time::from_unix(i64::try_from(now).context("the clock")?);
        let data_dir = self.config.data_dir.clone();
        let director_repository = format!("director/{}", self.config.vin);
        let local = node::tuf_mesh::trusted_store(
            &data_dir,
            &director_repository,
            self.config.director_root.as_deref(),
        )?;
        let mut director = MeshUpdater::new(self.mesh_remote(&director_repository), local, time)
            .context("loading the director's trusted root")?;
        let local =
            node::tuf_mesh::trusted_store(&data_dir, "image", self.config.image_root.as_deref())?;
        let mut image = MeshUpdater::new(self.mesh_remote("image"), local, time)
            .context("loading the image repository's trusted root")?;
        let states = self.ecu_states()?;
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
        self.agent.record(metadata_bytes, now);
        self.persist_usage()?;
        let approved = verified
            .map_err(|error| explain_missing_director(&director_repository, error))
            .context("verifying the director's and image metadata")?;
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
        let (priority, released) = urgency.unwrap_or((Priority::Feature, now));
        let mut ecus = Vec::new();
        let mut ecu_of = Vec::new();
        for a in &approved {
            // The deltas listed for the image, each with the source's signed SHA-256 (a delta
            // applies only to that image).
            let info = self.runtime.block_on(image.target_info(a.target()))?;
            let custom = match &info {
                Some(info) => ImageCustom::of(a.target(), info)?,
                None => ImageCustom::default(),
            };
            let mut deltas = Deltas::new();
            for (from, delta) in custom.deltas {
                let source_sha = self
                    .runtime
                    .block_on(image.target_info(&from))?
                    .and_then(|i| i.hashes.get("sha256").cloned());
                if let Some(sha) = source_sha {
                    deltas.insert(from, (delta.blake3, delta.length, sha));
                }
            }
            let compressed = custom.compressed.map(|c| (c.blake3, c.length));
            let (index, facts) = self.facts(a, &deltas, compressed)?;
            ecus.push(facts);
            ecu_of.push(index);
        }
        let verified = Verified {
            director_version,
            priority,
            released,
            ecus,
            ended: group_decision(&self.journal, &format!("director-v{director_version}"))?,
        };
        self.status["assignment"] = json!({
            "director_version": director_version,
            "priority": priority.name(),
            "released": released,
            "images": approved.iter().map(|a| json!({"ecu": a.ecu_serial(), "image": a.target()})).collect::<Vec<_>>(),
        });
        self.check_state.approved = approved;
        self.check_state.ecu_of = ecu_of;
        Ok(verified)
    }

    /// What the agent needs to know of one approved image's ECU: what it runs, whether an
    /// install of the image is under way, the deltas and compressed image listed for it, and
    /// what the store holds. Also the ECU's index.
    fn facts(
        &self,
        a: &ApprovedImage,
        deltas: &Deltas,
        compressed: Option<(proto::BlobId, u64)>,
    ) -> anyhow::Result<(usize, EcuFacts)> {
        let rauc = self.rauc.as_ref().filter(|e| e.serial == a.ecu_serial());
        let (index, running) = match (
            self.ecus.iter().position(|e| e.serial == a.ecu_serial()),
            rauc,
        ) {
            (Some(index), _) => (index, running_image(&self.ecus[index], &self.journal)?),
            // RAUC's ECU is no index of `ecus`; the install takes it by itself.
            (None, Some(ecu)) => (
                self.ecus.len(),
                running_image_of(&ecu.serial, ecu.installed.as_ref(), &self.journal)?,
            ),
            (None, None) => bail!("the director names an ECU this vehicle does not have"),
        };
        let running = running.context("an ECU does not know what it runs")?;
        // A RAUC bundle is installed whole: RAUC reads it, not a delta of it.
        let (deltas, compressed) = if rauc.is_some() {
            (&Deltas::new(), None)
        } else {
            (deltas, compressed)
        };
        let in_flight = journaled(&self.journal, a.ecu_serial())?.is_some_and(|r| {
            Some(r.blake3) == a.blake3()
                && !matches!(r.stage, Stage::Committed | Stage::RolledBack { .. })
        });
        let held = |id| self.store.info(&id).is_some_and(|i| i.complete);
        let blob = |id, length| Blob {
            id,
            length,
            held: held(id),
        };
        let facts = EcuFacts {
            serial: a.ecu_serial().parse()?,
            approved: Image {
                target: a.target().to_string(),
                sha256: a.file().hashes.get("sha256").cloned().unwrap_or_default(),
            },
            image: a.blake3().map(|id| blob(id, a.file().length)),
            running: Image {
                target: running.target,
                sha256: running.sha256,
            },
            in_flight,
            deltas: deltas
                .iter()
                .map(|(from, &(id, length, ref sha))| {
                    (
                        from.clone(),
                        DeltaOffer {
                            blob: blob(id, length),
                            from_sha256: sha.clone(),
                        },
                    )
                })
                .collect(),
            compressed: compressed.map(|(id, length)| blob(id, length)),
        };
        Ok((index, facts))
    }
}
