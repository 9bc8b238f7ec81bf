//! RAUC under the flasher: an ECU whose slots RAUC installs (`banks.kind = "rauc"` in its
//! configuration). depotmesh fetches the RAUC bundle as the approved target and checks it
//! against the Uptane approval (length and BLAKE3); RAUC checks the bundle's own signature
//! against its keyring and writes the inactive slot; the trial boot, the health check and the
//! commit or rollback are depotmesh's, carried out with `rauc status mark-good|mark-bad|
//! mark-active`, so an integrator keeps RAUC's bootloader integration as it is.
//!
//! The RAUC service is driven through its command-line client (`rauc install`, `rauc status
//! --output-format=json`), which talks to the service over D-Bus as RAUC's own tools do.
//!
//! Journal and RAUC, after a power cut at any instant (the same journal records as
//! [`crate::flasher`], so reports and status read them unchanged):
//!
//! | journal | RAUC | next |
//! |---|---|---|
//! | `writing` | anything | `rauc install` again (RAUC marks the target slot bad before writing it) |
//! | `trial` | new slot primary, old slot booted | reboot into the trial |
//! | `trial` | new slot booted | health check, then commit or roll back |
//! | `trial` | old slot booted, new slot not primary or bad | the trial never came up: roll back |
//! | `committed` | new slot booted, not marked good | `mark-good` again |
//! | `rolled_back` | new slot still primary | `mark-bad` it and `mark-active` the old slot again |
//!
//! The decision is journaled before RAUC is told, and telling RAUC again is harmless, so an
//! interrupted commit or rollback is finished the same way after the power returns.

use std::io::Read;
use std::path::Path;

use node::storage::Index;
use proto::BlobId;
use proto::uptane::ApprovedImage;

use crate::boot::Slot;
use crate::flasher::{
    FlashError, GroupDecision, HealthError, InstallRecord, InstalledImage, Outcome, Stage,
    journaled,
};
pub use crate::rauc_client::{Mark, Rauc, RaucError, RaucPair, RaucSlot, RaucStatus};

/// What to do next for a journaled install, from the journal and what RAUC says: the
/// decision without its effects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Hand the bundle to `rauc install`.
    Install,
    /// Installed and switched: reboot into the trial.
    Reboot,
    /// The new slot booted: run its health check.
    Judge,
    /// The trial boot did not come up (the bootloader went back): roll back.
    FellBack,
    /// Finished; tell RAUC again what the journal decided, when it does not show it.
    Done(Vec<(Mark, Slot)>),
}

/// The next step for install `record` on a system whose pair of slots is `pair`.
pub fn next(record: &InstallRecord, pair: &RaucPair) -> Result<Next, FlashError> {
    let (from, to) = (slot(&record.from)?, slot(&record.to)?);
    let good = |s: &Slot| pair.good.contains(s);
    Ok(match &record.stage {
        // RAUC activates a slot only once it is written: a cut between its switch and the
        // journal's leaves the trial booted.
        Stage::Writing { .. } | Stage::Written if pair.booted == to => Next::Judge,
        Stage::Writing { .. } | Stage::Written => Next::Install,
        Stage::Trial if pair.booted == to => Next::Judge,
        Stage::Trial if pair.primary.as_ref() == Some(&to) && good(&to) => Next::Reboot,
        Stage::Trial => Next::FellBack,
        // RAUC's bootloader integrations spend a try at every boot: `mark-good` gives the
        // committed slot its tries back (RAUC's own `mark-good` service does it at each boot).
        Stage::Committed => Next::Done(if pair.booted == to {
            vec![(Mark::Good, to)]
        } else {
            Vec::new()
        }),
        // The new slot is never tried again, even by a bootloader that resets every slot's
        // tries when none has any left; the old one boots next.
        Stage::RolledBack { .. } => {
            let mut marks = vec![(Mark::Bad, to)];
            if pair.primary.as_ref() != Some(&from) {
                marks.push((Mark::Active, from));
            }
            Next::Done(marks)
        }
    })
}

fn slot(name: &str) -> Result<Slot, FlashError> {
    Slot::new(name).map_err(FlashError::from)
}

/// An ECU whose slots RAUC installs.
#[derive(Debug)]
pub struct RaucEcu {
    /// Its serial (as the director names it).
    pub serial: String,
    /// Its hardware id.
    pub hardware_id: String,
    /// Its key, which signs its version reports.
    pub key: proto::tuf::signer::KeyPair,
    /// What it ran before any install the journal knows of.
    pub installed: Option<InstalledImage>,
    /// The class of RAUC slots that are its A/B banks (`rootfs`); a bundle may write other
    /// classes along with it, as RAUC's slot groups do.
    pub class: String,
    /// The RAUC client.
    pub rauc: Rauc,
}

impl RaucEcu {
    /// RAUC's pair of slots of this ECU's class, as RAUC sees them now.
    pub fn pair(&self) -> Result<RaucPair, FlashError> {
        self.rauc
            .status()
            .and_then(|status| status.pair(&self.class))
            .map_err(|e| self.rauc_failed(e))
    }

    fn rauc_failed(&self, error: RaucError) -> FlashError {
        FlashError::Rauc {
            ecu: self.serial.clone(),
            source: error,
        }
    }

    fn mark(&self, pair: &RaucPair, mark: Mark, slot: &Slot) -> Result<(), FlashError> {
        let name = pair
            .name(slot)
            .ok_or_else(|| FlashError::Journal(format!("RAUC has no slot booted as {slot}")))?;
        tracing::info!(ecu = self.serial, slot = %slot, rauc_slot = name, "rauc status {}", mark.command());
        self.rauc.mark(mark, name).map_err(|e| self.rauc_failed(e))
    }
}

/// Whether the file `path` is `len` bytes hashing to `expect` (BLAKE3, read 1 MiB at a time).
fn file_holds(path: &Path, len: u64, expect: BlobId) -> Result<bool, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.len() != len {
        return Ok(false);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(BlobId::from_bytes(*hasher.finalize().as_bytes()) == expect)
}

fn store<J: Index>(journal: &J, record: &InstallRecord) -> Result<(), FlashError> {
    crate::flasher::store_record(journal, record)
}

/// The fresh record of installing `approved` on `ecu`, which boots `pair.booted`; refused
/// unless the approval names this ECU's serial and hardware id with a BLAKE3 and a SHA-256.
fn begin<J: Index>(
    ecu: &RaucEcu,
    journal: &J,
    approved: &ApprovedImage,
    pair: &RaucPair,
) -> Result<InstallRecord, FlashError> {
    let (blake3, sha256) = crate::flasher::approved_for(&ecu.serial, &ecu.hardware_id, approved)?;
    let previous = crate::flasher::running_image_of(&ecu.serial, ecu.installed.as_ref(), journal)?;
    if previous.as_ref().is_some_and(|p| p.sha256 == sha256) {
        return Err(FlashError::AlreadyInstalled {
            ecu: ecu.serial.clone(),
            target: approved.target().to_string(),
        });
    }
    let to = pair
        .other(&pair.booted)
        .ok_or_else(|| FlashError::UnknownSlot {
            ecu: ecu.serial.clone(),
            slot: pair.booted.clone(),
        })?;
    Ok(InstallRecord::fresh(
        &ecu.serial,
        approved,
        (blake3, sha256),
        previous,
        (pair.booted.to_string(), to.to_string()),
    ))
}

/// One step of installing the approved RAUC bundle `bundle` on `ecu` as vehicle install
/// `group`, run after every boot (as [`crate::flasher::vehicle_step`] is): hands the bundle to
/// RAUC and switches to the trial ([`Outcome::Reboot`]); after the trial boot runs `health` in
/// the new slot and commits or rolls back; after a rollback the caller reboots into the old
/// slot. The bundle is checked against the approval's length and BLAKE3 before RAUC sees it.
pub fn step<J: Index>(
    group: &str,
    ecu: &RaucEcu,
    approved: &ApprovedImage,
    bundle: &Path,
    journal: &J,
    health: &mut dyn FnMut(&Slot) -> Result<(), HealthError>,
) -> Result<Outcome, FlashError> {
    let pair = ecu.pair()?;
    let record = match journaled(journal, &ecu.serial)? {
        Some(record) if Some(record.blake3) == approved.blake3() => record,
        Some(record) if matches!(record.stage, Stage::Trial) => {
            return Err(FlashError::Busy {
                ecu: ecu.serial.clone(),
                target: record.target,
                stage: "trial".into(),
            });
        }
        _ => begin(ecu, journal, approved, &pair)?,
    };
    match next(&record, &pair)? {
        Next::Install => install(ecu, journal, record, bundle, &pair),
        Next::Reboot => Ok(Outcome::Reboot),
        Next::Judge => {
            let to = slot(&record.to)?;
            match health(&to) {
                Ok(()) => conclude(group, ecu, journal, record, GroupDecision::Commit),
                Err(reason) => {
                    let reason = format!("ECU {}: health check failed: {reason}", ecu.serial);
                    conclude(
                        group,
                        ecu,
                        journal,
                        record,
                        GroupDecision::RollBack { reason },
                    )
                }
            }
        }
        Next::FellBack => {
            let reason = format!(
                "ECU {}: boot tries exhausted: the new software did not come up (RAUC booted {} \
                 again, not {})",
                ecu.serial, pair.booted, record.to
            );
            conclude(
                group,
                ecu,
                journal,
                record,
                GroupDecision::RollBack { reason },
            )
        }
        Next::Done(marks) => {
            for (mark, slot) in &marks {
                ecu.mark(&pair, *mark, slot)?;
            }
            Ok(match record.stage {
                Stage::RolledBack { reason } => Outcome::RolledBack { reason },
                _ => Outcome::Committed,
            })
        }
    }
}

/// At every start of the agent outside a trial: the slot that runs is marked good, as RAUC's
/// own `mark-good` service would (RAUC's bootloader integrations spend a try at every boot).
/// During a trial nothing is marked: the health check decides. Returns the slot marked.
pub fn mark_booted_good<J: Index>(ecu: &RaucEcu, journal: &J) -> Result<Option<Slot>, FlashError> {
    let pair = ecu.pair()?;
    let in_trial = journaled(journal, &ecu.serial)?.is_some_and(|record| {
        matches!(record.stage, Stage::Trial)
            || (matches!(record.stage, Stage::Writing { .. }) && record.to == pair.booted.as_str())
    });
    if in_trial {
        return Ok(None);
    }
    ecu.mark(&pair, Mark::Good, &pair.booted)?;
    Ok(Some(pair.booted))
}

/// Checks the bundle, hands it to RAUC, makes sure RAUC boots the new slot next, journals the
/// trial.
fn install<J: Index>(
    ecu: &RaucEcu,
    journal: &J,
    mut record: InstallRecord,
    bundle: &Path,
    pair: &RaucPair,
) -> Result<Outcome, FlashError> {
    let holds = file_holds(bundle, record.length, record.blake3).map_err(|e| {
        FlashError::Journal(format!("reading the bundle {}: {e}", bundle.display()))
    })?;
    if !holds {
        return Err(FlashError::NotApproved {
            ecu: ecu.serial.clone(),
            detail: format!(
                "{} is not the approved bundle {} ({} bytes, BLAKE3 {})",
                bundle.display(),
                record.target,
                record.length,
                record.blake3
            ),
        });
    }
    store(journal, &record)?;
    tracing::info!(
        ecu = ecu.serial,
        target = record.target,
        from = record.from,
        to = record.to,
        "rauc install"
    );
    ecu.rauc.install(bundle).map_err(|e| ecu.rauc_failed(e))?;
    let after = ecu.pair()?;
    let to = slot(&record.to)?;
    if after.primary.as_ref() != Some(&to) || !after.good.contains(&to) {
        // RAUC configured with `activate-installed=false` leaves the switch to us.
        ecu.mark(&after, Mark::Active, &to)?;
        let activated = ecu.pair()?;
        if activated.primary.as_ref() != Some(&to) {
            return Err(ecu.rauc_failed(RaucError::NotActivated {
                primary: activated
                    .primary
                    .as_ref()
                    .and_then(|p| activated.names.get(p).cloned()),
                installed: pair.name(&to).unwrap_or_default().to_string(),
            }));
        }
    }
    record.stage = Stage::Trial;
    store(journal, &record)?;
    Ok(Outcome::Reboot)
}

/// Journals `decision` (the vehicle's and this ECU's), then tells RAUC.
fn conclude<J: Index>(
    group: &str,
    ecu: &RaucEcu,
    journal: &J,
    mut record: InstallRecord,
    decision: GroupDecision,
) -> Result<Outcome, FlashError> {
    crate::flasher::store_decision(journal, group, &decision)?;
    record.stage = match &decision {
        GroupDecision::Commit => Stage::Committed,
        GroupDecision::RollBack { reason } => Stage::RolledBack {
            reason: reason.clone(),
        },
    };
    store(journal, &record)?;
    tracing::info!(ecu = ecu.serial, target = record.target, stage = ?record.stage, "rauc install concluded");
    let pair = ecu.pair()?;
    match next(&record, &pair)? {
        Next::Done(marks) => {
            for (mark, slot) in &marks {
                ecu.mark(&pair, *mark, slot)?;
            }
        }
        other => {
            return Err(FlashError::Journal(format!(
                "ECU {}: a concluded install asks for {other:?}",
                ecu.serial
            )));
        }
    }
    Ok(match decision {
        GroupDecision::Commit => Outcome::Committed,
        GroupDecision::RollBack { reason } => Outcome::RolledBack { reason },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    fn record(stage: Stage) -> InstallRecord {
        let image = InstalledImage {
            target: "t".into(),
            sha256: "00".into(),
            release_counter: 2,
        };
        InstallRecord {
            ecu: "GW-1".into(),
            target: "t".into(),
            blake3: BlobId::from_bytes([7; 32]),
            length: 1,
            image: image.clone(),
            previous: Some(image),
            from: "A".into(),
            to: "B".into(),
            stage,
        }
    }

    fn slot(name: &str) -> Slot {
        Slot::new(name).unwrap()
    }

    fn pair(booted: &str, primary: Option<&str>, good: &[&str]) -> RaucPair {
        RaucPair {
            names: BTreeMap::from([
                (slot("A"), "rootfs.0".into()),
                (slot("B"), "rootfs.1".into()),
            ]),
            booted: slot(booted),
            primary: primary.map(slot),
            good: good.iter().map(|s| slot(s)).collect(),
        }
    }

    #[test]
    fn the_next_step_follows_the_journal_and_what_rauc_says() {
        let writing = record(Stage::Writing {
            header: String::new(),
            done: 0,
        });
        assert_eq!(
            next(&writing, &pair("A", Some("B"), &["A", "B"])).unwrap(),
            Next::Install
        );
        // Installed and switched, cut before the journal said so, rebooted: the trial runs.
        assert_eq!(
            next(&writing, &pair("B", Some("B"), &["A", "B"])).unwrap(),
            Next::Judge
        );
        let trial = record(Stage::Trial);
        // Switched, not rebooted yet.
        assert_eq!(
            next(&trial, &pair("A", Some("B"), &["A", "B"])).unwrap(),
            Next::Reboot
        );
        // The new slot came up.
        assert_eq!(
            next(&trial, &pair("B", Some("B"), &["A", "B"])).unwrap(),
            Next::Judge
        );
        // The bootloader spent the try and went back.
        assert_eq!(
            next(&trial, &pair("A", Some("A"), &["A"])).unwrap(),
            Next::FellBack
        );
        assert_eq!(
            next(&trial, &pair("A", Some("B"), &["A"])).unwrap(),
            Next::FellBack
        );
        // A commit is told to RAUC whenever the new slot runs (its tries back); a cut before
        // RAUC was told is told again.
        let committed = record(Stage::Committed);
        for good in [&["A"][..], &["A", "B"]] {
            assert_eq!(
                next(&committed, &pair("B", Some("B"), good)).unwrap(),
                Next::Done(vec![(Mark::Good, slot("B"))])
            );
        }
        assert_eq!(
            next(&committed, &pair("A", Some("A"), &["A"])).unwrap(),
            Next::Done(vec![])
        );
        // A rollback: the new slot bad and the old one next, whatever was cut.
        let rolled = record(Stage::RolledBack { reason: "r".into() });
        assert_eq!(
            next(&rolled, &pair("B", Some("B"), &["A", "B"])).unwrap(),
            Next::Done(vec![(Mark::Bad, slot("B")), (Mark::Active, slot("A"))])
        );
        assert_eq!(
            next(&rolled, &pair("B", Some("A"), &["A"])).unwrap(),
            Next::Done(vec![(Mark::Bad, slot("B"))])
        );
    }
}
