//! The flasher: writes an approved image into an ECU's inactive bank, switches the boot target
//! for one trial, and commits — or rolls back by itself.
//!
//! An install is a typestate (STYLE.md, after rustls' handshake states):
//! [`Install<Verified>`] → [`Install<Written>`] → [`Install<Trial>`] → [`Outcome`] (committed or
//! rolled back). The first exists only from an [`ApprovedImage`] — which only Uptane verification
//! makes — for this ECU's serial and hardware id, and it writes only the bank the ECU is not
//! running. Each step is journaled in the [`Index`] (sled on a vehicle: atomic and durable when
//! a put returns) before or after its effect, so that a restart at any instant finds a state it
//! can finish from ([`recover`]):
//!
//! | journal | boot environment | after a power cut |
//! |---|---|---|
//! | `writing` (n segments) | old slot first | re-verify, [`Install::begin`] again: resumes at segment n |
//! | `written` | old slot first | [`Install::start_trial`] (re-verifies the bank first) |
//! | `trial` | old slot first | the switch was cut: set it again, reboot |
//! | `trial` | new slot first, a try left | reboot into the trial |
//! | `trial` | new slot first, none left, old slot booted | the new software never came up: roll back |
//! | `trial` | new slot booted | run the health check, commit or roll back |
//! | `committed` / `rolled_back` | either | done (a rollback whose switch was cut is redone) |
//!
//! The new slot gets exactly one try, so the bootloader falls back to the old slot by itself when
//! the new software hangs or the power fails during the trial; the old bank is never written.

use std::marker::PhantomData;
use std::time::Duration;

use delta::{ApplyError, Progress, ReadAt, WriteAt};
use node::storage::Index;
use proto::BlobId;
use proto::uptane::ApprovedImage;
use serde::{Deserialize, Serialize};

use crate::bank::BankError;
use crate::boot::{BootError, Slot, UbootBoot};
use crate::slots::{Banks, MergeReport, SparePlan, WriteError};

/// Why an install could not go on. Every variant names what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlashError {
    /// The approval is not for this ECU, or lacks what the flasher needs.
    #[error("not approved for ECU {ecu}: {detail}")]
    NotApproved {
        /// The ECU's serial.
        ecu: String,
        /// Why.
        detail: String,
    },
    /// Another install is in flight on this ECU.
    #[error("ECU {ecu} has an install of {target} at stage {stage}; finish it first")]
    Busy {
        /// The ECU's serial.
        ecu: String,
        /// What it is installing.
        target: String,
        /// Where that install stands.
        stage: String,
    },
    /// The ECU already runs the approved image: nothing to install.
    #[error("ECU {ecu} already runs {target}")]
    AlreadyInstalled {
        /// The ECU's serial.
        ecu: String,
        /// The image.
        target: String,
    },
    /// The running slot is neither of the ECU's banks.
    #[error("ECU {ecu} runs slot {slot}, which is not one of its banks")]
    UnknownSlot {
        /// The ECU's serial.
        ecu: String,
        /// The slot.
        slot: Slot,
    },
    /// The written bank does not hold the target: never switched to.
    #[error("bank {slot} of ECU {ecu} does not hold {target} after writing; not switching to it")]
    BankNotVerified {
        /// The ECU's serial.
        ecu: String,
        /// The bank's slot.
        slot: Slot,
        /// The target id.
        target: BlobId,
    },
    /// Applying the delta failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A bank failed.
    #[error(transparent)]
    Bank(#[from] BankError),
    /// Boot control failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The journal could not be read or written.
    #[error("install journal: {0}")]
    Journal(String),
    /// RAUC, which installs this ECU's slots, failed or refused ([`crate::rauc_client`]).
    #[error("ECU {ecu}: {source}")]
    Rauc {
        /// The ECU's serial.
        ecu: String,
        /// What RAUC said.
        source: crate::rauc_client::RaucError,
    },
}

impl From<WriteError> for FlashError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Apply(error) => Self::Apply(error),
            WriteError::Bank(error) => Self::Bank(error),
        }
    }
}

/// An image as an ECU reports it (Uptane's version report fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledImage {
    /// The target's name in the repositories.
    pub target: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its release counter.
    pub release_counter: u64,
}

/// An ECU the flasher drives: its identity, its banks (two, or one remapped:
/// [`crate::slots::Banks`]) and its boot control.
#[derive(Debug)]
pub struct Ecu<B, M> {
    /// Its serial (as the director names it).
    pub serial: String,
    /// Its hardware id.
    pub hardware_id: String,
    /// Its key, which signs its version reports (registered with the director): any of the
    /// three TUF key types.
    pub key: proto::tuf::signer::KeyPair,
    /// What it ran before any install the journal knows of.
    pub installed: Option<InstalledImage>,
    /// Its banks: a [`crate::bank::BankPair`] or a [`crate::remap::RemapBank`].
    pub banks: B,
    /// Its boot control.
    pub boot: UbootBoot<M>,
}

/// Where an install stands, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// Segments of the delta (named by the hash of its header) durably in the bank.
    Writing {
        /// Hex BLAKE3 of the delta's header.
        header: String,
        /// Segments written.
        done: usize,
    },
    /// The bank holds the target, verified.
    Written,
    /// The boot target is (being) switched to the new slot for one try.
    Trial,
    /// The new slot is kept.
    Committed,
    /// The old slot is kept, and why.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Self::Writing { .. } => "writing",
            Self::Written => "written",
            Self::Trial => "trial",
            Self::Committed => "committed",
            Self::RolledBack { .. } => "rolled_back",
        }
    }
}

/// One ECU's install, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// The ECU's serial.
    pub ecu: String,
    /// The target's name in the repositories.
    pub target: String,
    /// Its BLAKE3.
    #[serde(with = "blob_id_text")]
    pub blake3: BlobId,
    /// Its length.
    pub length: u64,
    /// The image being installed, as its version report will name it.
    pub image: InstalledImage,
    /// What ran before it.
    pub previous: Option<InstalledImage>,
    /// The slot it was installed from (the one running when it started).
    pub from: String,
    /// The slot it is installed into.
    pub to: String,
    /// Where it stands.
    pub stage: Stage,
}

impl InstallRecord {
    /// A new install of `approved` (with its BLAKE3 and SHA-256, [`approved_for`]) on ECU
    /// `ecu`, which ran `previous`, from slot `from` into slot `to`: nothing written yet.
    pub(crate) fn fresh(
        ecu: &str,
        approved: &ApprovedImage,
        (blake3, sha256): (BlobId, String),
        previous: Option<InstalledImage>,
        (from, to): (String, String),
    ) -> Self {
        Self {
            ecu: ecu.to_string(),
            target: approved.target().to_string(),
            blake3,
            length: approved.file().length,
            image: InstalledImage {
                target: approved.target().to_string(),
                sha256,
                release_counter: approved.release_counter(),
            },
            previous,
            from,
            to,
            stage: Stage::Writing {
                header: String::new(),
                done: 0,
            },
        }
    }
}

/// A [`BlobId`] in the journal as its hex text.
mod blob_id_text {
    use proto::BlobId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &BlobId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BlobId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn journal_key(serial: &str) -> Vec<u8> {
    format!("flasher/{serial}").into_bytes()
}

/// The journaled install of ECU `serial`, if any.
pub fn journaled<J: Index>(journal: &J, serial: &str) -> Result<Option<InstallRecord>, FlashError> {
    load_json(
        journal,
        &journal_key(serial),
        &format!("record of ECU {serial}"),
    )
}

/// The JSON value at `key`, if any; `what` names it in errors.
fn load_json<J: Index, T: serde::de::DeserializeOwned>(
    journal: &J,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, FlashError> {
    let records = journal
        .load()
        .map_err(|e| FlashError::Journal(format!("reading the {what}: {e}")))?;
    records
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| {
            serde_json::from_slice(&value)
                .map_err(|e| FlashError::Journal(format!("the {what} does not parse: {e}")))
        })
        .transpose()
}

/// Journals `record` under its ECU (for installs driven outside this module: RAUC's).
pub(crate) fn store_record<J: Index>(
    journal: &J,
    record: &InstallRecord,
) -> Result<(), FlashError> {
    store(journal, record)
}

/// Journals vehicle install `group`'s decision, before any ECU acts on it.
pub(crate) fn store_decision<J: Index>(
    journal: &J,
    group: &str,
    decision: &GroupDecision,
) -> Result<(), FlashError> {
    let value = serde_json::to_vec(decision).map_err(|e| FlashError::Journal(e.to_string()))?;
    journal
        .put(&group_key(group), &value)
        .map_err(|e| FlashError::Journal(format!("writing the decision of {group}: {e}")))
}

fn store<J: Index>(journal: &J, record: &InstallRecord) -> Result<(), FlashError> {
    let value = serde_json::to_vec(record).map_err(|e| FlashError::Journal(e.to_string()))?;
    journal
        .put(&journal_key(&record.ecu), &value)
        .map_err(|e| FlashError::Journal(format!("writing the record of ECU {}: {e}", record.ecu)))
}

/// A journal write that failed inside a bank write, as the bank write's error.
fn journal_failed(error: FlashError) -> ApplyError {
    ApplyError::Io {
        what: "journaling the install".into(),
        source: std::io::Error::other(error.to_string()),
    }
}

fn slot(name: &str) -> Result<Slot, FlashError> {
    Slot::new(name).map_err(FlashError::from)
}

/// The BLAKE3 and SHA-256 of `approved` when it is for ECU `serial` of `hardware_id` and its
/// signed metadata carries both; else why not.
pub(crate) fn approved_for(
    serial: &str,
    hardware_id: &str,
    approved: &ApprovedImage,
) -> Result<(BlobId, String), FlashError> {
    let refuse = |detail: String| FlashError::NotApproved {
        ecu: serial.to_string(),
        detail,
    };
    if approved.ecu_serial() != serial {
        return Err(refuse(format!(
            "the approval is for ECU {}",
            approved.ecu_serial()
        )));
    }
    if approved.hardware_id() != hardware_id {
        return Err(refuse(format!(
            "the approval is for hardware {}, this ECU is {hardware_id}",
            approved.hardware_id()
        )));
    }
    let Some(blake3) = approved.blake3() else {
        return Err(refuse(format!(
            "{} has no BLAKE3 in its signed metadata",
            approved.target()
        )));
    };
    let Some(sha256) = approved.file().hashes.get("sha256").cloned() else {
        return Err(refuse(format!(
            "{} has no SHA-256 in its signed metadata",
            approved.target()
        )));
    };
    Ok((blake3, sha256))
}

/// Typestate: approved and checked against this ECU; nothing written or being written.
#[derive(Debug)]
pub struct Verified;
/// Typestate: the inactive bank holds the target, verified.
#[derive(Debug)]
pub struct Written;
/// Typestate: the boot target is the new slot for one try.
#[derive(Debug)]
pub struct Trial;

/// An install on one ECU, in stage `S`.
#[derive(Debug)]
pub struct Install<'a, S, B, M, J> {
    ecu: &'a mut Ecu<B, M>,
    journal: &'a J,
    record: InstallRecord,
    stage: PhantomData<S>,
}

/// How an install ended, or what it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new slot is kept.
    Committed,
    /// The old slot is kept, and why.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The boot target is the new slot for one try: reboot the ECU.
    Reboot,
}

impl<'a, S, B: Banks, M: WriteAt, J: Index> Install<'a, S, B, M, J> {
    /// The journaled record.
    pub fn record(&self) -> &InstallRecord {
        &self.record
    }

    fn slots(&self) -> Result<(Slot, Slot), FlashError> {
        Ok((slot(&self.record.from)?, slot(&self.record.to)?))
    }

    fn set(&mut self, stage: Stage) -> Result<(), FlashError> {
        self.record.stage = stage;
        store(self.journal, &self.record)
    }

    /// The install `record` says, in stage `S`.
    fn at(ecu: &'a mut Ecu<B, M>, journal: &'a J, record: InstallRecord) -> Self {
        Self {
            ecu,
            journal,
            record,
            stage: PhantomData,
        }
    }

    /// The same install in stage `T` (the caller has journaled it).
    fn advance<T>(self) -> Install<'a, T, B, M, J> {
        Install::at(self.ecu, self.journal, self.record)
    }

    /// Before the other slot is written the bootloader must not fall back to it: the running
    /// slot goes first and the other gets no tries (RAUC marks the slot it writes bad the same
    /// way). One environment save, skipped when it is so already.
    fn disable_other(&mut self) -> Result<(), FlashError> {
        let (from, to) = self.slots()?;
        let state = self.ecu.boot.state()?;
        if state.order.first() != Some(&from) || state.left.get(&to).is_some_and(|n| *n > 0) {
            self.ecu.boot.roll_back(&to, &from)?;
        }
        Ok(())
    }

    /// Hashes the written bank against the target. A bank that does not hold it is never
    /// switched to: the install goes back to writing from the start.
    fn check_written_bank(&mut self) -> Result<(), FlashError> {
        let (_, to) = self.slots()?;
        if self
            .ecu
            .banks
            .holds(&to, self.record.length, self.record.blake3)?
        {
            return Ok(());
        }
        self.set(Stage::Writing {
            header: String::new(),
            done: 0,
        })?;
        Err(FlashError::BankNotVerified {
            ecu: self.ecu.serial.clone(),
            slot: to,
            target: self.record.blake3,
        })
    }
}

impl<'a, B: Banks, M: WriteAt, J: Index> Install<'a, Verified, B, M, J> {
    /// Starts the install of `approved` on `ecu`, which runs slot `running` — or resumes the
    /// journaled one of the same image. Refused unless the approval names this ECU's serial and
    /// hardware id and carries the image's BLAKE3, and while another install is in flight.
    pub fn begin(
        ecu: &'a mut Ecu<B, M>,
        journal: &'a J,
        approved: &ApprovedImage,
        running: &Slot,
    ) -> Result<Self, FlashError> {
        let (blake3, sha256) = approved_for(&ecu.serial, &ecu.hardware_id, approved)?;
        let Some(to) = ecu.banks.other(running) else {
            return Err(FlashError::UnknownSlot {
                ecu: ecu.serial.clone(),
                slot: running.clone(),
            });
        };
        let to = to.to_string();
        let previous = running_image(ecu, journal)?;
        if previous.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Err(FlashError::AlreadyInstalled {
                ecu: ecu.serial.clone(),
                target: approved.target().to_string(),
            });
        }
        let fresh = InstallRecord::fresh(
            &ecu.serial,
            approved,
            (blake3, sha256),
            previous,
            (running.to_string(), to),
        );
        let record = match journaled(journal, &ecu.serial)? {
            Some(
                old @ InstallRecord {
                    stage: Stage::Writing { .. },
                    ..
                },
            ) if old.blake3 == fresh.blake3 && old.from == fresh.from => old,
            Some(old)
                if matches!(old.stage, Stage::Written | Stage::Trial)
                    && !(old.blake3 == fresh.blake3 && old.from == fresh.from) =>
            {
                return Err(FlashError::Busy {
                    ecu: ecu.serial.clone(),
                    target: old.target,
                    stage: old.stage.name().into(),
                });
            }
            _ => fresh,
        };
        Ok(Self::at(ecu, journal, record))
    }

    /// Applies `delta` (`delta_len` bytes) from the running bank into the other one, resuming
    /// at the journaled segment; each segment is synced before the journal counts it. Calls
    /// `progress(done, total)` after each segment.
    pub fn write<D: ReadAt + ?Sized>(
        mut self,
        delta: &D,
        delta_len: u64,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Install<'a, Written, B, M, J>, FlashError> {
        let (from, _) = self.slots()?;
        self.disable_other()?;
        let resume = match &self.record.stage {
            Stage::Writing { header, done } => hex::decode(header)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .map(|header_digest| Progress {
                    header_digest,
                    done: *done,
                }),
            _ => None,
        };
        let mut record = self.record.clone();
        let journal = self.journal;
        let applied = self.ecu.banks.write_delta(
            &from,
            delta,
            delta_len,
            self.record.blake3,
            resume,
            &mut |p, total| {
                record.stage = Stage::Writing {
                    header: hex::encode(p.header_digest),
                    done: p.done,
                };
                store(journal, &record).map_err(journal_failed)?;
                progress(p.done, total);
                Ok(())
            },
        );
        self.record = record;
        match applied {
            Ok(()) => {}
            Err(WriteError::Apply(e @ ApplyError::FinalHash { .. })) => {
                // The bank changed under us: start over next time.
                self.set(Stage::Writing {
                    header: String::new(),
                    done: 0,
                })?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        self.set(Stage::Written)?;
        Ok(self.advance())
    }
}

/// A good piece size for [`Install::write_image`]: 8 MiB, as the delta's segments.
pub const IMAGE_PIECE: usize = 8 << 20;
/// What the journal's `header` holds while a full image (not a delta) is written.
const IMAGE_MARK: &str = "image";

impl<'a, B: Banks, M: WriteAt, J: Index> Install<'a, Verified, B, M, J> {
    /// Copies the full image (`len` bytes: the approved length) into the inactive bank, for an
    /// ECU that has no delta from its running image. Pieces of `piece` bytes (e.g.
    /// [`IMAGE_PIECE`]; a multiple of the flash's erase block), each synced before the journal
    /// counts it; a restart resumes at the first piece not counted (with the same piece size).
    /// The bank is then hashed against the approved BLAKE3.
    pub fn write_image<D: ReadAt + ?Sized>(
        mut self,
        image: &D,
        len: u64,
        piece: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Install<'a, Written, B, M, J>, FlashError> {
        if len != self.record.length {
            return Err(FlashError::NotApproved {
                ecu: self.ecu.serial.clone(),
                detail: format!(
                    "the image is {len} bytes, the approval says {}",
                    self.record.length
                ),
            });
        }
        let (from, _) = self.slots()?;
        self.disable_other()?;
        let from_piece = match &self.record.stage {
            Stage::Writing { header, done } if header == IMAGE_MARK => *done,
            _ => 0,
        };
        let mut record = self.record.clone();
        let journal = self.journal;
        let written = self.ecu.banks.write_image(
            &from,
            image,
            len,
            self.record.blake3,
            piece,
            from_piece,
            &mut |done, total| {
                record.stage = Stage::Writing {
                    header: IMAGE_MARK.into(),
                    done,
                };
                store(journal, &record).map_err(journal_failed)?;
                progress(done, total);
                Ok(())
            },
        );
        self.record = record;
        match written {
            Ok(()) => {}
            Err(WriteError::Apply(e @ ApplyError::FinalHash { .. })) => {
                self.set(Stage::Writing {
                    header: String::new(),
                    done: 0,
                })?;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        self.check_written_bank()?;
        self.set(Stage::Written)?;
        Ok(self.advance())
    }
}

impl<'a, B: Banks, M: WriteAt, J: Index> Install<'a, Written, B, M, J> {
    /// Verifies the written bank against the target once more, then makes the new slot the
    /// boot target for one try. Reboot the ECU next ([`Outcome::Reboot`]). A bank that does not
    /// verify is never switched to; the install goes back to writing from the start.
    pub fn start_trial(mut self) -> Result<Install<'a, Trial, B, M, J>, FlashError> {
        let (_, to) = self.slots()?;
        self.check_written_bank()?;
        self.set(Stage::Trial)?;
        self.ecu.boot.start_trial(&to)?;
        Ok(self.advance())
    }
}

/// What a trial showed after a boot (see [`Install::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrialCheck {
    /// The new slot booted and passed its health check.
    Healthy,
    /// The new software failed, and why (its health check, or it never came up).
    Failed(String),
    /// The trial is still to come: reboot the ECU.
    Reboot,
}

impl<B: Banks, M: WriteAt, J: Index> Install<'_, Trial, B, M, J> {
    /// After a boot: `booted` is the slot the ECU came up in. In the new slot, runs `health`;
    /// in the old one, works out from the boot environment whether the trial is still to come
    /// or the new software never came up. Decides nothing: [`Install::commit`] or
    /// [`Install::roll_back`] next (or [`Install::conclude`] for both in one).
    pub fn check(
        &mut self,
        booted: &Slot,
        health: &mut dyn HealthCheck,
    ) -> Result<TrialCheck, FlashError> {
        let (from, to) = self.slots()?;
        if *booted == to {
            return Ok(match health.check(&to) {
                Ok(()) => TrialCheck::Healthy,
                Err(reason) => TrialCheck::Failed(format!("health check failed: {reason}")),
            });
        }
        if *booted != from {
            return Err(FlashError::UnknownSlot {
                ecu: self.ecu.serial.clone(),
                slot: booted.clone(),
            });
        }
        let state = self.ecu.boot.state()?;
        let new_first = state.order.first() == Some(&to);
        let tries = state.left.get(&to).copied().unwrap_or(0);
        if new_first && tries > 0 {
            Ok(TrialCheck::Reboot)
        } else if new_first {
            Ok(TrialCheck::Failed(
                "boot tries exhausted: the new software did not come up".into(),
            ))
        } else {
            // The switch itself was cut short: make it again.
            self.ecu.boot.start_trial(&to)?;
            Ok(TrialCheck::Reboot)
        }
    }

    /// One ECU on its own: [`Install::check`], then commit when healthy, roll back when not.
    pub fn conclude(
        mut self,
        booted: &Slot,
        health: &mut dyn HealthCheck,
    ) -> Result<Outcome, FlashError> {
        match self.check(booted, health)? {
            TrialCheck::Healthy => self.commit(),
            TrialCheck::Failed(reason) => self.roll_back(reason),
            TrialCheck::Reboot => Ok(Outcome::Reboot),
        }
    }

    /// Keeps the new slot: boot control first (the running new software stays the boot
    /// target), then the journal.
    pub fn commit(mut self) -> Result<Outcome, FlashError> {
        let (_, to) = self.slots()?;
        self.ecu.boot.commit(&to)?;
        self.set(Stage::Committed)?;
        Ok(Outcome::Committed)
    }

    /// Goes back to the old slot, for `reason`: the journal first (so a restart cannot commit
    /// what was decided against), then boot control. If the new slot is running, the old one
    /// runs after the next reboot.
    pub fn roll_back(mut self, reason: String) -> Result<Outcome, FlashError> {
        let (from, to) = self.slots()?;
        self.set(Stage::RolledBack {
            reason: reason.clone(),
        })?;
        self.ecu.boot.roll_back(&to, &from)?;
        self.ecu.banks.discard(&from)?;
        Ok(Outcome::RolledBack { reason })
    }
}

/// One ECU's part in a vehicle install: the approval and the delta to apply.
#[derive(Debug)]
pub struct EcuJob<'a, D: ?Sized> {
    /// The Uptane approval of the image for this ECU.
    pub approval: &'a ApprovedImage,
    /// The delta from the running image (or, with `full_image`, the image itself).
    pub delta: &'a D,
    /// Its length.
    pub delta_len: u64,
    /// `delta` is the whole image (no delta from what the ECU runs was released).
    pub full_image: bool,
}

/// The vehicle's decision for a multi-ECU install, journaled before any ECU acts on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum GroupDecision {
    /// Every ECU keeps its new slot.
    Commit,
    /// Every ECU goes back to its old slot, and why.
    RollBack {
        /// Why (which ECU failed, how).
        reason: String,
    },
}

fn group_key(group: &str) -> Vec<u8> {
    format!("flasher-group/{group}").into_bytes()
}

/// The journaled decision of vehicle install `group`, if it was taken.
pub fn group_decision<J: Index>(
    journal: &J,
    group: &str,
) -> Result<Option<GroupDecision>, FlashError> {
    load_json(
        journal,
        &group_key(group),
        &format!("decision of install {group}"),
    )
}

/// One step of a vehicle install of several ECUs (the gateway as Uptane primary), run after
/// every boot with the slot each ECU came up in: writes whatever is not written, switches all
/// ECUs to their trials together once all are written and verified, and after the trial boot
/// commits all of them only when every one is healthy — otherwise rolls all of them back. The
/// decision is journaled before any ECU acts on it, so a power cut in the middle finishes the
/// same way: never a vehicle with some ECUs on the new release and some on the old.
pub fn vehicle_step<B, M, J, D>(
    group: &str,
    ecus: &mut [Ecu<B, M>],
    jobs: &[EcuJob<'_, D>],
    booted: &[Slot],
    journal: &J,
    health: &mut dyn FnMut(&str, &Slot) -> Result<(), HealthError>,
) -> Result<Outcome, FlashError>
where
    B: Banks,
    M: WriteAt,
    J: Index,
    D: ReadAt + ?Sized,
{
    if ecus.len() != jobs.len() || ecus.len() != booted.len() {
        return Err(FlashError::Journal(format!(
            "{} ECUs, {} jobs and {} booted slots do not match",
            ecus.len(),
            jobs.len(),
            booted.len()
        )));
    }
    // A decision taken before a power cut is carried out, whatever else the ECUs say.
    if let Some(decision) = group_decision(journal, group)? {
        return carry_out(ecus, journal, &decision);
    }
    // A remapping bank without the spare space for its part refuses before any ECU is written.
    for ((ecu, job), running) in ecus.iter().zip(jobs).zip(booted) {
        let writing = journaled(journal, &ecu.serial)?
            .filter(|r| Some(r.blake3) == job.approval.blake3())
            .is_none_or(|r| matches!(r.stage, Stage::Writing { .. }));
        if !writing {
            continue;
        }
        if let Some(plan) = spare_plan(ecu, running, job)?.filter(|p| !p.fits()) {
            return Err(FlashError::Bank(BankError::SpareTooSmall {
                path: std::path::PathBuf::from(&ecu.serial),
                changed: plan.changed.len() as u64,
                block_size: plan.block_size,
                needed: plan.needed_bytes(),
                available: plan.free_bytes(),
            }));
        }
    }
    // Write what is not written; switch nobody until everyone is written.
    for ((ecu, job), running) in ecus.iter_mut().zip(jobs).zip(booted) {
        let stage = journaled(journal, &ecu.serial)?
            .filter(|r| Some(r.blake3) == job.approval.blake3())
            .map(|r| r.stage);
        match stage {
            Some(Stage::Written | Stage::Trial) => {}
            Some(Stage::Committed | Stage::RolledBack { .. }) => {
                return Err(FlashError::Journal(format!(
                    "ECU {} finished on its own, outside install {group}",
                    ecu.serial
                )));
            }
            Some(Stage::Writing { .. }) | None => {
                let install = Install::begin(ecu, journal, job.approval, running)?;
                if job.full_image {
                    install.write_image(job.delta, job.delta_len, IMAGE_PIECE, |_, _| {})?;
                } else {
                    install.write(job.delta, job.delta_len, |_, _| {})?;
                }
            }
        }
    }
    let mut switched = false;
    for ecu in ecus.iter_mut() {
        if let Recovered::Written(written) = recover(ecu, journal)? {
            written.start_trial()?;
            switched = true;
        }
    }
    if switched {
        return Ok(Outcome::Reboot);
    }
    // Every ECU is in its trial: look at each.
    let mut reboot = false;
    let mut failed = None;
    let mut healthy = Vec::new();
    for (i, (ecu, slot)) in ecus.iter_mut().zip(booted).enumerate() {
        let serial = ecu.serial.clone();
        let Recovered::Trial(mut trial) = recover(ecu, journal)? else {
            return Err(FlashError::Journal(format!(
                "ECU {serial} is not in its trial in install {group}"
            )));
        };
        match trial.check(slot, &mut |s: &Slot| health(&serial, s))? {
            TrialCheck::Healthy => healthy.push(i),
            TrialCheck::Reboot => reboot = true,
            TrialCheck::Failed(reason) => {
                failed.get_or_insert(format!("ECU {serial}: {reason}"));
            }
        }
    }
    let decision = match failed {
        Some(reason) => GroupDecision::RollBack { reason },
        None if reboot => {
            // Others still need their trial boot: the healthy ones spent their one try, so they
            // get another, or the bootloader would take them back to the old slot.
            for i in healthy {
                if let Recovered::Trial(trial) = recover(&mut ecus[i], journal)? {
                    let (_, to) = trial.slots()?;
                    trial.ecu.boot.start_trial(&to)?;
                }
            }
            return Ok(Outcome::Reboot);
        }
        None => GroupDecision::Commit,
    };
    store_decision(journal, group, &decision)?;
    carry_out(ecus, journal, &decision)
}

fn carry_out<B: Banks, M: WriteAt, J: Index>(
    ecus: &mut [Ecu<B, M>],
    journal: &J,
    decision: &GroupDecision,
) -> Result<Outcome, FlashError> {
    for ecu in ecus.iter_mut() {
        match recover(ecu, journal)? {
            Recovered::Trial(trial) => {
                match decision {
                    GroupDecision::Commit => trial.commit()?,
                    GroupDecision::RollBack { reason } => trial.roll_back(reason.clone())?,
                };
            }
            Recovered::Written(written) => {
                // Never switched: nothing to undo but the record.
                if let GroupDecision::RollBack { reason } = decision {
                    let mut install = written;
                    install.set(Stage::RolledBack {
                        reason: reason.clone(),
                    })?;
                    let (from, _) = install.slots()?;
                    install.ecu.banks.discard(&from)?;
                }
            }
            Recovered::Idle(_) | Recovered::Writing(_) => {}
        }
    }
    Ok(match decision {
        GroupDecision::Commit => Outcome::Committed,
        GroupDecision::RollBack { reason } => Outcome::RolledBack {
            reason: reason.clone(),
        },
    })
}

/// What [`recover`] found for an ECU.
#[derive(Debug)]
pub enum Recovered<'a, B, M, J> {
    /// Nothing in flight (the last install's record, if any).
    Idle(Option<InstallRecord>),
    /// Writing was interrupted: verify the image's metadata again and call [`Install::begin`];
    /// it resumes at the journaled segment.
    Writing(InstallRecord),
    /// Written and verified: [`Install::start_trial`].
    Written(Install<'a, Written, B, M, J>),
    /// In trial: [`Install::conclude`] with the slot the ECU booted.
    Trial(Install<'a, Trial, B, M, J>),
}

/// After a restart: where ECU `ecu`'s install stands, from its journal. A rollback whose boot
/// switch was cut short is completed here.
pub fn recover<'a, B: Banks, M: WriteAt, J: Index>(
    ecu: &'a mut Ecu<B, M>,
    journal: &'a J,
) -> Result<Recovered<'a, B, M, J>, FlashError> {
    let Some(record) = journaled(journal, &ecu.serial)? else {
        return Ok(Recovered::Idle(None));
    };
    Ok(match record.stage {
        Stage::Writing { .. } => Recovered::Writing(record),
        Stage::Written => Recovered::Written(Install::at(ecu, journal, record)),
        Stage::Trial => Recovered::Trial(Install::at(ecu, journal, record)),
        Stage::RolledBack { .. } => {
            let (from, to) = (slot(&record.from)?, slot(&record.to)?);
            let state = ecu.boot.state()?;
            if state.order.first() == Some(&to) || state.left.get(&to).is_some_and(|n| *n > 0) {
                ecu.boot.roll_back(&to, &from)?;
            }
            ecu.banks.discard(&from)?;
            Recovered::Idle(Some(record))
        }
        Stage::Committed => Recovered::Idle(Some(record)),
    })
}

fn merge_key(serial: &str) -> Vec<u8> {
    format!("flasher-merge/{serial}").into_bytes()
}

/// At every start of the agent outside a trial: `booted`, the slot `ecu` runs, is marked good
/// ([`UbootBoot::mark_good`]), as RAUC's `mark-good` service does on a RAUC system. During a
/// trial nothing is marked: the health check decides, and a trial slot that did not come up
/// must be left to run out of tries. Returns whether a spent try was given back.
pub fn mark_booted_good<B: Banks, M: WriteAt, J: Index>(
    ecu: &mut Ecu<B, M>,
    journal: &J,
    booted: &Slot,
) -> Result<bool, FlashError> {
    let in_trial = journaled(journal, &ecu.serial)?.is_some_and(|record| {
        matches!(record.stage, Stage::Trial)
            || (matches!(record.stage, Stage::Writing { .. }) && record.to == booted.as_str())
    });
    if in_trial {
        return Ok(false);
    }
    Ok(ecu.boot.mark_good(booted)?)
}

/// After a commit, in the background: finishes what keeping the new image leaves to the banks
/// — for a remapping bank ([`crate::remap`]), copying the remapped blocks home and freeing the
/// spare area, resumed from its journaled progress after a power cut. Nothing to do unless the
/// journaled install of `ecu` is committed (a rollback needs no merge: home was never written),
/// and nothing for A/B banks. Run it again after every boot until it reports nothing copied.
pub fn merge<B: Banks, M: WriteAt, J: Index>(
    ecu: &mut Ecu<B, M>,
    journal: &J,
) -> Result<MergeReport, FlashError> {
    let Some(record) = journaled(journal, &ecu.serial)? else {
        return Ok(MergeReport::default());
    };
    if record.stage != Stage::Committed {
        return Ok(MergeReport::default());
    }
    let kept = slot(&record.to)?;
    let key = merge_key(&ecu.serial);
    let resume: Option<(u64, usize)> = load_json(
        journal,
        &key,
        &format!("merge progress of ECU {}", ecu.serial),
    )?;
    let serial = ecu.serial.clone();
    ecu.banks
        .merge(&kept, &mut ecu.boot, resume, &mut |generation, done| {
            let value = serde_json::to_vec(&(generation, done))
                .map_err(|e| FlashError::Journal(e.to_string()))?;
            journal.put(&key, &value).map_err(|e| {
                FlashError::Journal(format!("writing the merge progress of ECU {serial}: {e}"))
            })
        })
}

/// The spare space `job` needs on `ecu`, which runs `running`, and the space it has — before
/// anything is written. `None` for A/B banks (the other bank is written whole).
pub fn spare_plan<B: Banks, M, D: ReadAt + ?Sized>(
    ecu: &Ecu<B, M>,
    running: &Slot,
    job: &EcuJob<'_, D>,
) -> Result<Option<SparePlan>, FlashError> {
    Ok(ecu
        .banks
        .spare_plan(running, job.delta, job.delta_len, job.full_image)?)
}

/// Why a freshly booted slot is not healthy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The software in the slot reported itself unhealthy, and why.
    #[error("{0}")]
    Unhealthy(String),
    /// No health check is configured for the ECU.
    #[error("no health check configured for ECU {0}")]
    NotConfigured(String),
    /// The check command did not start.
    #[error("{program} did not start: {source}")]
    NotStarted {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The check command failed.
    #[error("{program} exited with {status}")]
    Exited {
        /// The program.
        program: String,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The check command took too long (it was killed).
    #[error("{program} did not finish within {timeout:?}")]
    TimedOut {
        /// The program.
        program: String,
        /// How long it had.
        timeout: Duration,
    },
    /// Waiting for the check command failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The health check of a freshly booted slot.
pub trait HealthCheck {
    /// `Ok` when the software in `slot` works; else why not.
    fn check(&mut self, slot: &Slot) -> Result<(), HealthError>;
}

impl<F: FnMut(&Slot) -> Result<(), HealthError>> HealthCheck for F {
    fn check(&mut self, slot: &Slot) -> Result<(), HealthError> {
        self(slot)
    }
}

/// A health check that runs a command (with the slot in `DEPOTMESH_SLOT`) and passes when it
/// exits 0 within the timeout; it is killed when it does not.
#[derive(Clone, Debug)]
pub struct CommandCheck {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long it may take.
    pub timeout: Duration,
}

impl HealthCheck for CommandCheck {
    fn check(&mut self, slot: &Slot) -> Result<(), HealthError> {
        let program = || self.program.clone();
        let mut child = std::process::Command::new(&self.program)
            .args(&self.args)
            .env("DEPOTMESH_SLOT", slot.as_str())
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|source| HealthError::NotStarted {
                program: program(),
                source,
            })?;
        let started = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(HealthError::Exited {
                        program: program(),
                        status,
                    });
                }
                Ok(None) if started.elapsed() >= self.timeout => {
                    child.kill().ok();
                    child.wait().ok();
                    return Err(HealthError::TimedOut {
                        program: program(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(HealthError::Wait {
                        program: program(),
                        source,
                    });
                }
            }
        }
    }
}

/// What ECU `ecu` runs, per its journal: the new image once committed, else the one before it.
pub fn running_image<B, M, J: Index>(
    ecu: &Ecu<B, M>,
    journal: &J,
) -> Result<Option<InstalledImage>, FlashError> {
    running_image_of(&ecu.serial, ecu.installed.as_ref(), journal)
}

/// What ECU `serial` runs, per its journal, having run `installed` before any install the
/// journal knows of.
pub fn running_image_of<J: Index>(
    serial: &str,
    installed: Option<&InstalledImage>,
    journal: &J,
) -> Result<Option<InstalledImage>, FlashError> {
    Ok(match journaled(journal, serial)? {
        Some(InstallRecord {
            stage: Stage::Committed,
            image,
            ..
        }) => Some(image),
        Some(record) => record.previous,
        None => installed.cloned(),
    })
}

/// The ECU's signed version report (Uptane) answering the director's `nonce`: what it runs —
/// the new image after a commit, the previous one after a rollback, which is how the director
/// sees an install's result.
pub fn version_report<B, M, J: Index>(
    ecu: &Ecu<B, M>,
    journal: &J,
    nonce: &str,
) -> Result<serde_json::Value, FlashError> {
    version_report_of(
        &ecu.serial,
        ecu.installed.as_ref(),
        &ecu.key,
        journal,
        nonce,
    )
}

/// [`version_report`] of ECU `serial` with key `key`, having run `installed` before any
/// install the journal knows of.
pub fn version_report_of<J: Index>(
    serial: &str,
    installed: Option<&InstalledImage>,
    key: &proto::tuf::signer::KeyPair,
    journal: &J,
    nonce: &str,
) -> Result<serde_json::Value, FlashError> {
    let running = running_image_of(serial, installed, journal)?
        .ok_or_else(|| FlashError::Journal(format!("ECU {serial} does not know what it runs")))?;
    let report = proto::uptane::EcuVersionReport {
        ecu_serial: serial.to_string(),
        installed_image: running.target,
        sha256: running.sha256,
        release_counter: running.release_counter,
        nonce: nonce.to_string(),
        attacks_detected: String::new(),
    };
    proto::uptane::sign_ecu_report(&report, key)
        .map_err(|e| FlashError::Journal(format!("signing the report of {serial}: {e}")))
}
