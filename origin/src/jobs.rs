//! The director's background work on campaign vehicles' director targets: signing the release
//! for the members of a wave that opened (approval, advance, resume) and withdrawing it after
//! a halt or abort. (Also, once no campaign has work due, the empty director targets of
//! vehicles registered before the director signed them at registration, found at its start:
//! `Director::work`.)
//!
//! Signing one vehicle's targets costs a few milliseconds (three signatures and their durable
//! writes), so a wave of 45,000 vehicles took minutes inside the request that opened it. Here
//! a decision only says what is due; [`crate::service::Director::work`] then does it a bounded
//! batch at a time, each batch under the director's lock and the lock released between
//! batches, so that reports and operators' requests interleave with it.
//!
//! Nothing is stored for the work itself: which vehicles are due follows from the campaign
//! record (`CampaignRecord::targets_due`): a member of an open wave that has neither got the release nor reported is
//! due a signing; after a halt, a member that got it, has not reported and still holds it is
//! due a withdrawal. The due set is derived once per decision and at the director's start, then
//! kept in step (a batch takes vehicles out, a report takes its vehicle out), never recomputed
//! per batch: at 200K vehicles that filter alone would cost more than a batch.
//!
//! What a batch does must survive a stop between its signing and the next snapshot of the
//! record, and must never be done twice: a vehicle signed twice gets a second targets version
//! it never needed. Each batch therefore writes two entries in the campaign's log (the one that
//! holds its reports): [`BatchEntry::Begun`], before anything is signed, naming each vehicle and
//! the targets version it is to get, then [`BatchEntry::Done`] with what was signed. At start
//! a batch begun and not done is settled from the vehicles' repositories: a vehicle whose
//! targets reached the planned version was signed, the others are still due.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::director_api::{TargetsJob, TargetsWork};
use proto::{EcuSerial, Vin};
use serde::{Deserialize, Serialize};

/// How much one batch of background work may do while it holds the director.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Vehicles at most.
    pub vehicles: usize,
    /// About how long it may take: the number of vehicles follows from what a vehicle took in
    /// the batches before (`Duration::MAX`: always [`Batch::vehicles`], for reproducible runs).
    pub time: Duration,
}

impl Default for Batch {
    /// 500 vehicles or about 100 ms, whichever comes first: a report waits at most about that
    /// long for the lock.
    fn default() -> Self {
        Self {
            vehicles: 500,
            time: Duration::from_millis(100),
        }
    }
}

impl Batch {
    /// Vehicles the first batch takes, before a vehicle's cost is known.
    const FIRST: usize = 16;

    /// How many vehicles to take, a vehicle having cost `per_vehicle` so far (none: not
    /// measured yet).
    pub(crate) fn size(&self, per_vehicle: Option<Duration>) -> usize {
        let most = self.vehicles.max(1);
        if self.time == Duration::MAX {
            return most;
        }
        match per_vehicle {
            None => Self::FIRST.min(most),
            Some(each) if each.is_zero() => most,
            Some(each) => {
                let fit = self.time.as_nanos() / each.as_nanos().max(1);
                usize::try_from(fit).unwrap_or(usize::MAX).clamp(1, most)
            }
        }
    }
}

/// What one call of [`crate::service::Director::work`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worked {
    /// Vehicles done (signed, withdrawn, or found to need nothing any more).
    pub vehicles: usize,
    /// Vehicles that failed (left out until the next decision or restart).
    pub failed: usize,
    /// Vehicles still due, over every campaign, and registered vehicles still due their first
    /// (empty) director targets.
    pub due: u64,
}

/// One campaign's background work, in memory: derived from its record, never stored.
#[derive(Clone, Debug)]
pub(crate) struct Queue {
    /// What it does.
    pub(crate) work: TargetsWork,
    /// The vehicles still to do, in VIN order (a run is reproducible).
    pub(crate) due: BTreeSet<Vin>,
    /// Done since the work was set.
    pub(crate) done: u64,
    /// Vehicles that failed, with why.
    pub(crate) failed: BTreeMap<Vin, String>,
    /// The last error, of a vehicle or of a whole batch.
    pub(crate) last_error: Option<String>,
}

impl Queue {
    /// The work `work` over `due`, following `before` (the campaign's previous work): the
    /// count done carries over when the work is the same; failed vehicles are due again.
    pub(crate) fn follow(work: TargetsWork, due: BTreeSet<Vin>, before: Option<&Self>) -> Self {
        let done = before.filter(|b| b.work == work).map_or(0, |b| b.done);
        Self {
            work,
            due,
            done,
            failed: BTreeMap::new(),
            last_error: None,
        }
    }

    /// Its progress, when there is any to show.
    pub(crate) fn progress(&self) -> Option<TargetsJob> {
        if self.due.is_empty() && self.done == 0 && self.failed.is_empty() {
            return None;
        }
        Some(TargetsJob {
            work: self.work,
            due: self.due.len() as u64,
            done: self.done,
            failed: self.failed.len() as u64,
            last_error: self.last_error.clone(),
        })
    }
}

/// A vehicle of a batch, as planned before anything is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Planned {
    /// The vehicle.
    pub(crate) vin: Vin,
    /// The director targets version it is to get.
    pub(crate) version: u64,
    /// For a signing: ECU serial → the target it ran before (the campaign's `before`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) before: BTreeMap<EcuSerial, String>,
}

/// A batch's entry in its campaign's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "batch", rename_all = "snake_case")]
pub(crate) enum BatchEntry {
    /// Written before any vehicle of the batch is signed.
    Begun {
        /// What the batch does.
        work: TargetsWork,
        /// Its vehicles.
        vehicles: Vec<Planned>,
    },
    /// Written once every vehicle of the batch was tried: those signed, with their version
    /// (the others failed, and are due again at the next decision or restart).
    Done {
        /// The vehicles signed.
        signed: Vec<(Vin, u64)>,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_fits_its_time_from_what_a_vehicle_took() {
        let batch = Batch {
            vehicles: 500,
            time: Duration::from_millis(100),
        };
        assert_eq!(batch.size(None), Batch::FIRST);
        assert_eq!(batch.size(Some(Duration::from_millis(4))), 25);
        assert_eq!(batch.size(Some(Duration::from_secs(1))), 1);
        assert_eq!(batch.size(Some(Duration::from_micros(1))), 500);
        let fixed = Batch {
            vehicles: 4,
            time: Duration::MAX,
        };
        assert_eq!(fixed.size(Some(Duration::from_secs(1))), 4);
    }

    #[test]
    fn batch_entries_read_back_as_written_and_are_told_apart_from_reports() {
        let vin = Vin::parse("VIN-1").unwrap();
        let begun = BatchEntry::Begun {
            work: TargetsWork::Sign,
            vehicles: vec![Planned {
                vin: vin.clone(),
                version: 3,
                before: BTreeMap::from([(EcuSerial::parse("GW-1").unwrap(), "gw/1.0".into())]),
            }],
        };
        let done = BatchEntry::Done {
            signed: vec![(vin, 3)],
        };
        for entry in [begun, done] {
            let bytes = serde_json::to_vec(&entry).unwrap();
            assert_eq!(serde_json::from_slice::<BatchEntry>(&bytes).unwrap(), entry);
        }
        // A counted report has no `batch` field: never read as a batch.
        let report = br#"{"vin":"VIN-1","outcome":"committed","at":5,"region":"eu","bytes":{}}"#;
        assert!(serde_json::from_slice::<BatchEntry>(report).is_err());
    }
}
