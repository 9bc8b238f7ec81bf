//! The vehicle agent's decisions, sans-IO: what the gateway does next in a check, given the link
//! it has, what the verified metadata assigns, what the store holds and what the flasher did.
//!
//! [`Agent`] is fed facts and the time and answers with an [`Action`]; it never touches the
//! network, a file or the clock. The daemon ([`crate::daemon`]) carries the actions out on real
//! nodes, banks and a real director; `netsim fleet` carries them out in its flow model for every
//! simulated vehicle. Both therefore run the same rules:
//!
//! - metadata is a few KiB and is how a security fix is learnt of: it may move on any link the
//!   link policy allows for a security update, and reports go out on the same terms;
//! - for each ECU whose approved image is not what it runs, the delta the image repository lists
//!   from what it runs (matched on the signed SHA-256), else the image compressed when it is
//!   listed and smaller, else the whole image;
//! - a payload the store does not hold yet moves only if the policy allows the update's signed
//!   priority class on this link now; on a metered link within the allowance the policy grants,
//!   less [`METERED_MARGIN`] (requests in flight when it is spent still land), and every byte
//!   counted against the month's budget;
//! - the flasher's verdict: a reboot into the trial, or an ended install to report once.
//!
//! A check runs [`Agent::start_check`], then [`Agent::poll`] for the next action until it
//! answers [`Action::Done`], feeding each action's outcome back in between.

use std::collections::BTreeMap;

use node::policy::{Decision, Link, LinkPolicy, Priority, Usage};
use proto::{BlobId, EcuSerial};

use crate::flasher::{GroupDecision, Outcome};

/// Bytes a metered fetch may overshoot its allowance by: requests in flight when it is spent
/// still land (4 requests of 4 groups of 16 KiB with the settings used on metered links, one
/// piece a request).
pub const METERED_MARGIN: u64 = 4 * 4 * 16 * 1024;

/// On a metered link a fetch keeps this few requests in flight, of this many groups each, so
/// that what lands after the allowance is spent stays within [`METERED_MARGIN`].
pub const METERED_REQUESTS: usize = 4;

/// Groups per request on a metered link (see [`METERED_REQUESTS`]).
pub const METERED_GROUPS_PER_REQUEST: u64 = 4;

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

/// A blob the vehicle may fetch, and whether the store holds it whole already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    /// Its id (its BLAKE3).
    pub id: BlobId,
    /// Its length in bytes, as signed.
    pub length: u64,
    /// The store holds it whole.
    pub held: bool,
}

/// A delta the image repository lists for the approved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaOffer {
    /// The delta.
    pub blob: Blob,
    /// The signed SHA-256 of the image it applies to.
    pub from_sha256: String,
}

/// An image by its target name and signed SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its target name in the image repository.
    pub target: String,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// One ECU the verified metadata names, with what the vehicle knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuFacts {
    /// The ECU.
    pub serial: EcuSerial,
    /// The image the director and the image repository approved for it.
    pub approved: Image,
    /// The approved image as a blob (none: it has no BLAKE3, it cannot come over the mesh).
    pub image: Option<Blob>,
    /// What it runs, as the flasher's journal says.
    pub running: Image,
    /// An install of the approved image is journaled and has not ended.
    pub in_flight: bool,
    /// Deltas to the approved image, by the target name of the image each applies to.
    pub deltas: BTreeMap<String, DeltaOffer>,
    /// The approved image compressed (a delta from nothing), if the image repository lists it.
    pub compressed: Option<Blob>,
}

/// What a refresh verified (the Uptane way) and what the vehicle knows of each ECU it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The director targets version: the install is `director-v<version>`.
    pub director_version: u64,
    /// The most urgent signed priority among the assignments.
    pub priority: Priority,
    /// When that update was released to the vehicle (Unix seconds).
    pub released: u64,
    /// The ECUs the assignment names.
    pub ecus: Vec<EcuFacts>,
    /// How the install of this assignment ended, if it did (the flasher's journal).
    pub ended: Option<GroupDecision>,
}

impl Verified {
    /// The install's name.
    pub fn group(&self) -> String {
        format!("director-v{}", self.director_version)
    }
}

/// What one ECU of an install gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Which ECU (its index in [`Verified::ecus`]).
    pub ecu: usize,
    /// The blob: a delta from what the ECU runs, the image compressed, or the whole image.
    pub blob: Blob,
    /// Which of these it is.
    pub kind: PayloadKind,
}

/// What a payload's blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// A delta from the image the ECU runs.
    Delta,
    /// The image compressed: a delta from nothing (no listed delta applies).
    Compressed,
    /// The whole image (no listed delta applies and no smaller form is listed).
    Image,
}

impl PayloadKind {
    /// Its name in status and logs: `delta`, `compressed`, `image`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Compressed => "compressed",
            Self::Image => "image",
        }
    }
}

/// Why the verified metadata cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No delta applies and the image has no BLAKE3: it cannot come over the mesh.
    #[error(
        "the approved image {target} of ECU {serial} has no BLAKE3: it cannot come over the mesh"
    )]
    NoBlob {
        /// The ECU.
        serial: EcuSerial,
        /// The image.
        target: String,
    },
}

/// What the ECU needs: nothing when it runs the approved image (and no install of it is under
/// way), else the delta from what it runs, else the image compressed if it is listed and
/// smaller than the image, else the whole image.
pub fn payload(index: usize, ecu: &EcuFacts) -> Result<Option<Payload>, PlanError> {
    let runs_it = ecu
        .running
        .sha256
        .eq_ignore_ascii_case(&ecu.approved.sha256);
    if runs_it && !ecu.in_flight {
        return Ok(None);
    }
    let delta = ecu
        .deltas
        .get(&ecu.running.target)
        .filter(|d| d.from_sha256.eq_ignore_ascii_case(&ecu.running.sha256));
    let compressed = ecu
        .compressed
        .filter(|c| ecu.image.is_none_or(|image| c.length < image.length));
    let (blob, kind) = match (delta, compressed, ecu.image) {
        (Some(delta), ..) => (delta.blob, PayloadKind::Delta),
        (None, Some(compressed), _) => (compressed, PayloadKind::Compressed),
        (None, None, Some(image)) => (image, PayloadKind::Image),
        (None, None, None) => {
            return Err(PlanError::NoBlob {
                serial: ecu.serial.clone(),
                target: ecu.approved.target.clone(),
            });
        }
    };
    Ok(Some(Payload {
        ecu: index,
        blob,
        kind,
    }))
}

/// A fetch to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// What to fetch.
    pub blob: Blob,
    /// What it is (for status and logs: why this blob and not another).
    pub kind: PayloadKind,
    /// At most this many bytes (a metered link); `None`: no limit.
    pub allowance: Option<u64>,
    /// The link is metered: keep few requests in flight ([`METERED_REQUESTS`]).
    pub metered: bool,
}

/// How a fetch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEnd {
    /// The store holds the blob whole.
    Complete,
    /// It stopped at its allowance after `bytes`.
    AllowanceSpent {
        /// Bytes received.
        bytes: u64,
    },
    /// It stopped for another reason the driver will report (the link changed, the run was
    /// paused); the next check asks again.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Refresh and verify the director's and the image repository's metadata; answer with
    /// [`Agent::refreshed`].
    Refresh,
    /// Fetch a payload; answer with [`Agent::fetch_ended`] (and [`Agent::record`] for the bytes).
    Fetch(Fetch),
    /// Every payload is held: one step of the vehicle install (write the inactive banks and
    /// switch to the trial, or judge the trial); answer with [`Agent::installed`].
    Install {
        /// The install's name.
        group: String,
        /// What each ECU gets.
        payloads: Vec<Payload>,
    },
    /// The install ended: write its signed report, once; answer with [`Agent::concluded`].
    Conclude {
        /// The install's name.
        group: String,
        /// How it ended.
        decision: GroupDecision,
    },
    /// Send the reports the director has not acknowledged; answer with
    /// [`Agent::reports_sent`].
    SendReports,
    /// The check is over.
    Done(Step),
}

/// Where a check is.
#[derive(Debug, Clone)]
enum Phase {
    Idle,
    Refreshing,
    Fetching {
        group: String,
        priority: Priority,
        released: u64,
        payloads: Vec<Payload>,
    },
    Installing {
        group: String,
        payloads: Vec<Payload>,
    },
    Concluding {
        group: String,
        decision: GroupDecision,
    },
    Reporting(Step),
    Done(Step),
}

/// The agent of one vehicle: its link policy (with the month's usage) and where its check is.
#[derive(Debug, Clone)]
pub struct Agent {
    policy: LinkPolicy,
    link: Option<Link>,
    now: u64,
    phase: Phase,
    usage_changed: bool,
}

impl Agent {
    /// An agent under `policy` (resuming with the usage it persisted).
    pub fn new(policy: LinkPolicy) -> Self {
        Self {
            policy,
            link: None,
            now: 0,
            phase: Phase::Idle,
            usage_changed: false,
        }
    }

    /// The link policy.
    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// The link of the current check.
    pub fn link(&self) -> Option<Link> {
        self.link
    }

    /// The cellular usage, when it changed since last asked (to persist).
    pub fn take_usage_change(&mut self) -> Option<Usage> {
        std::mem::take(&mut self.usage_changed).then(|| self.policy.usage())
    }

    /// Counts `bytes` that moved over the current link at `now` (the budget counts the metered
    /// ones).
    pub fn record(&mut self, bytes: u64, now: u64) {
        let Some(link) = self.link else { return };
        if link.class.metered() && bytes > 0 {
            self.policy.record(link.class, bytes, now);
            self.usage_changed = true;
        }
    }

    /// May metadata (and reports, as small) move on the current link now?
    fn metadata_allowed(&self) -> Result<(), (String, Option<u64>)> {
        let Some(link) = self.link else {
            return Err(("no link".into(), None));
        };
        match self
            .policy
            .decide(link, Priority::Security, self.now, self.now)
        {
            Decision::Allow { .. } => Ok(()),
            Decision::Wait { retry_at, reason } => Err((reason.to_string(), retry_at)),
        }
    }

    /// Starts a check at `now` with `link` (none: the probe found no link).
    pub fn start_check(&mut self, now: u64, link: Option<Link>) {
        self.now = now;
        self.link = link;
        self.phase = match self.metadata_allowed() {
            Ok(()) => Phase::Refreshing,
            Err((reason, retry_at)) => Phase::Done(Step::Waiting {
                reason: if link.is_some() {
                    format!("metadata check: {reason}")
                } else {
                    reason
                },
                retry_at,
            }),
        };
    }

    /// Moves the clock of the current check on (a long fetch, a simulated vehicle's later
    /// event).
    pub fn advance(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// The link changed during the check (a long install; a simulated vehicle that drove off):
    /// what is left of the check (its reports) goes by the new one.
    pub fn link_changed(&mut self, link: Option<Link>) {
        self.link = link;
    }

    /// The metadata verified: plans the install (or its report, if it ended).
    pub fn refreshed(&mut self, verified: &Verified) -> Result<(), PlanError> {
        let group = verified.group();
        if let Some(decision) = &verified.ended {
            self.phase = Phase::Concluding {
                group,
                decision: decision.clone(),
            };
            return Ok(());
        }
        let mut payloads = Vec::new();
        for (index, ecu) in verified.ecus.iter().enumerate() {
            payloads.extend(payload(index, ecu)?);
        }
        self.phase = if payloads.is_empty() {
            self.finishing(Step::UpToDate)
        } else {
            Phase::Fetching {
                group,
                priority: verified.priority,
                released: verified.released,
                payloads,
            }
        };
        Ok(())
    }

    /// The fetch asked for ended.
    pub fn fetch_ended(&mut self, end: &FetchEnd) {
        let Phase::Fetching { payloads, .. } = &mut self.phase else {
            return;
        };
        let Some(current) = payloads.iter_mut().find(|p| !p.blob.held) else {
            return;
        };
        match end {
            FetchEnd::Complete => current.blob.held = true,
            FetchEnd::AllowanceSpent { bytes } => {
                let step = Step::Waiting {
                    reason: format!(
                        "the cellular allowance was spent after {bytes} bytes of {}",
                        current.blob.id
                    ),
                    retry_at: None,
                };
                self.phase = self.finishing(step);
            }
            FetchEnd::Stopped { reason } => {
                let step = Step::Waiting {
                    reason: reason.clone(),
                    retry_at: None,
                };
                self.phase = self.finishing(step);
            }
        }
    }

    /// The flasher's step of the install.
    pub fn installed(&mut self, outcome: &Outcome) {
        let Phase::Installing { group, .. } = &self.phase else {
            return;
        };
        let group = group.clone();
        self.phase = match outcome {
            Outcome::Reboot => self.finishing(Step::Rebooted),
            Outcome::Committed => Phase::Concluding {
                group,
                decision: GroupDecision::Commit,
            },
            Outcome::RolledBack { reason } => Phase::Concluding {
                group,
                decision: GroupDecision::RollBack {
                    reason: reason.clone(),
                },
            },
        };
    }

    /// The ended install's report is written (`already`: it had been, at an earlier check).
    pub fn concluded(&mut self, already: bool) {
        let Phase::Concluding { group, decision } = &self.phase else {
            return;
        };
        let step = if already {
            Step::Ended {
                group: group.clone(),
            }
        } else {
            Step::Finished {
                group: group.clone(),
                outcome: match decision {
                    GroupDecision::Commit => "committed".to_string(),
                    GroupDecision::RollBack { reason } => format!("rolled back: {reason}"),
                },
            }
        };
        self.phase = self.finishing(step);
    }

    /// The reports went out (or could not, which the next check tries again).
    pub fn reports_sent(&mut self) {
        if let Phase::Reporting(step) = &self.phase {
            self.phase = Phase::Done(step.clone());
        }
    }

    /// The check ends with `step`, after sending the reports if the link allows them.
    fn finishing(&self, step: Step) -> Phase {
        match self.metadata_allowed() {
            Ok(()) => Phase::Reporting(step),
            Err(_) => Phase::Done(step),
        }
    }

    /// What to do next.
    pub fn poll(&mut self) -> Action {
        loop {
            match &self.phase {
                Phase::Idle => {
                    return Action::Done(Step::Waiting {
                        reason: "no check under way".into(),
                        retry_at: None,
                    });
                }
                Phase::Refreshing => return Action::Refresh,
                Phase::Fetching {
                    group,
                    priority,
                    released,
                    payloads,
                } => {
                    let Some(next) = payloads.iter().find(|p| !p.blob.held) else {
                        self.phase = Phase::Installing {
                            group: group.clone(),
                            payloads: payloads.clone(),
                        };
                        continue;
                    };
                    match self.fetch_of(next.blob, next.kind, *priority, *released) {
                        Ok(fetch) => return Action::Fetch(fetch),
                        Err(step) => self.phase = self.finishing(step),
                    }
                }
                Phase::Installing { group, payloads } => {
                    return Action::Install {
                        group: group.clone(),
                        payloads: payloads.clone(),
                    };
                }
                Phase::Concluding { group, decision } => {
                    return Action::Conclude {
                        group: group.clone(),
                        decision: decision.clone(),
                    };
                }
                Phase::Reporting(_) => return Action::SendReports,
                Phase::Done(step) => return Action::Done(step.clone()),
            }
        }
    }

    /// May `blob` of an update of `priority`, released at `released`, be fetched on the
    /// current link now, and within what?
    fn fetch_of(
        &self,
        blob: Blob,
        kind: PayloadKind,
        priority: Priority,
        released: u64,
    ) -> Result<Fetch, Step> {
        let Some(link) = self.link else {
            return Err(Step::Waiting {
                reason: "no link".into(),
                retry_at: None,
            });
        };
        match self.policy.decide(link, priority, released, self.now) {
            Decision::Wait { retry_at, reason } => Err(Step::Waiting {
                reason: format!("{} update: {reason}", priority.name()),
                retry_at,
            }),
            Decision::Allow { max_bytes, .. } if link.class.metered() => {
                let allowance = max_bytes.saturating_sub(METERED_MARGIN);
                if allowance == 0 {
                    return Err(Step::Waiting {
                        reason: "the cellular budget left is below one request's margin".into(),
                        retry_at: Some(self.policy.next_month_start(self.now)),
                    });
                }
                Ok(Fetch {
                    blob,
                    kind,
                    allowance: Some(allowance),
                    metered: true,
                })
            }
            Decision::Allow { .. } => Ok(Fetch {
                blob,
                kind,
                allowance: None,
                metered: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::policy::{LinkClass, PolicyConfig, Window};

    /// 2026-03-02 12:00 UTC, a Monday.
    const NOON: u64 = 1_772_452_800;
    const MIB: u64 = 1 << 20;

    fn policy(budget: u64) -> LinkPolicy {
        LinkPolicy::new(PolicyConfig {
            cellular_windows: vec![Window::parse("01:00-05:00").unwrap()],
            monthly_budget: budget,
            min_signal: 30,
            fix_deadline_secs: 72 * 3600,
            utc_offset_minutes: 0,
        })
    }

    fn link(class: LinkClass) -> Option<Link> {
        Some(Link { class, signal: 80 })
    }

    fn blob(n: u8, length: u64, held: bool) -> Blob {
        Blob {
            id: BlobId::from_bytes([n; 32]),
            length,
            held,
        }
    }

    fn image(target: &str, sha: &str) -> Image {
        Image {
            target: target.into(),
            sha256: sha.into(),
        }
    }

    /// One gateway ECU running gw-1 (sha "aa"), approved gw-2 (sha "bb", 100 MiB) with a 2 MiB
    /// delta from gw-1.
    fn verified(priority: Priority, held: bool) -> Verified {
        Verified {
            director_version: 7,
            priority,
            released: NOON - 3600,
            ecus: vec![EcuFacts {
                serial: "GW-1".parse().unwrap(),
                approved: image("gw-2", "bb"),
                image: Some(blob(2, 100 * MIB, false)),
                running: image("gw-1", "AA"),
                in_flight: false,
                deltas: BTreeMap::from([(
                    "gw-1".to_string(),
                    DeltaOffer {
                        blob: blob(9, 2 * MIB, held),
                        from_sha256: "aa".into(),
                    },
                )]),
                compressed: None,
            }],
            ended: None,
        }
    }

    /// Runs a check to its first action that is not a refresh.
    fn after_refresh(agent: &mut Agent, class: LinkClass, verified: &Verified) -> Action {
        agent.start_check(NOON, link(class));
        assert_eq!(agent.poll(), Action::Refresh);
        agent.refreshed(verified).unwrap();
        agent.poll()
    }

    #[test]
    fn the_payload_is_the_delta_from_what_runs_else_the_image_compressed_else_the_image() {
        let mut facts = verified(Priority::Fix, false).ecus.remove(0);
        facts.compressed = Some(blob(5, 40 * MIB, false));
        let delta = payload(0, &facts).unwrap().unwrap();
        assert_eq!(
            (delta.blob.id, delta.kind),
            (blob(9, 0, false).id, PayloadKind::Delta)
        );
        // The delta applies to another build of gw-1: the image compressed.
        let mut other = facts.clone();
        other.running.sha256 = "cc".into();
        let compressed = payload(0, &other).unwrap().unwrap();
        assert_eq!(
            (compressed.blob.length, compressed.kind),
            (40 * MIB, PayloadKind::Compressed)
        );
        // Listed but not smaller than the image (signed, yet nothing to gain): the image.
        other.compressed = Some(blob(5, 100 * MIB, false));
        let full = payload(0, &other).unwrap().unwrap();
        assert_eq!(
            (full.blob.length, full.kind),
            (100 * MIB, PayloadKind::Image)
        );
        // Not listed: the whole image.
        other.compressed = None;
        let full = payload(0, &other).unwrap().unwrap();
        assert_eq!(
            (full.blob.length, full.kind),
            (100 * MIB, PayloadKind::Image)
        );
        let facts = &facts;
        // Already running it: nothing, unless an install of it is under way.
        let mut done = facts.clone();
        done.running = image("gw-2", "BB");
        assert_eq!(payload(0, &done).unwrap(), None);
        done.in_flight = true;
        assert!(payload(0, &done).unwrap().is_some());
        // No delta and no BLAKE3: cannot come over the mesh.
        other.image = None;
        assert!(matches!(payload(0, &other), Err(PlanError::NoBlob { .. })));
    }

    #[test]
    fn no_link_or_no_metadata_allowance_ends_the_check_without_reports() {
        let mut agent = Agent::new(policy(500 * MIB));
        agent.start_check(NOON, None);
        assert_eq!(
            agent.poll(),
            Action::Done(Step::Waiting {
                reason: "no link".into(),
                retry_at: None
            })
        );
        // Weak signal: not even metadata.
        agent.start_check(
            NOON,
            Some(Link {
                class: LinkClass::Cellular,
                signal: 10,
            }),
        );
        assert!(matches!(
            agent.poll(),
            Action::Done(Step::Waiting { reason, .. }) if reason.starts_with("metadata check: ")
        ));
    }

    /// Every priority on every link, the payload not held: what the check asks for.
    #[test]
    fn the_link_policy_decides_each_fetch_within_the_margin() {
        for class in LinkClass::ALL {
            for priority in Priority::ALL {
                let mut agent = Agent::new(policy(500 * MIB));
                let action = after_refresh(&mut agent, class, &verified(priority, false));
                let metered = class.metered();
                let allowed = match (class, priority) {
                    (LinkClass::YardWifi | LinkClass::OtherWifi, _) => true,
                    (_, Priority::Security) => true,
                    // Noon is outside the fix's night window, before its deadline.
                    (_, Priority::Fix | Priority::Feature) => false,
                };
                if allowed {
                    let expected = Fetch {
                        blob: blob(9, 2 * MIB, false),
                        kind: PayloadKind::Delta,
                        allowance: metered.then_some(500 * MIB - METERED_MARGIN),
                        metered,
                    };
                    assert_eq!(action, Action::Fetch(expected), "{class:?} {priority:?}");
                } else {
                    // Waiting, and the reports go out first (metadata is allowed here).
                    assert_eq!(action, Action::SendReports, "{class:?} {priority:?}");
                    agent.reports_sent();
                    assert!(matches!(
                        agent.poll(),
                        Action::Done(Step::Waiting { reason, .. })
                            if reason.starts_with(&format!("{} update: ", priority.name()))
                    ));
                }
            }
        }
    }

    #[test]
    fn a_budget_below_the_margin_waits_and_a_spent_allowance_is_counted() {
        let mut agent = Agent::new(policy(METERED_MARGIN));
        let action = after_refresh(
            &mut agent,
            LinkClass::Cellular,
            &verified(Priority::Security, false),
        );
        assert_eq!(action, Action::SendReports);
        agent.reports_sent();
        assert!(matches!(
            agent.poll(),
            Action::Done(Step::Waiting { reason, .. }) if reason.contains("below one request's margin")
        ));

        let mut agent = Agent::new(policy(MIB + METERED_MARGIN));
        let action = after_refresh(
            &mut agent,
            LinkClass::Cellular,
            &verified(Priority::Security, false),
        );
        assert!(matches!(action, Action::Fetch(Fetch { allowance: Some(a), .. }) if a == MIB));
        agent.record(MIB + 5, NOON);
        agent.fetch_ended(&FetchEnd::AllowanceSpent { bytes: MIB + 5 });
        assert_eq!(agent.poll(), Action::SendReports);
        agent.reports_sent();
        assert!(matches!(
            agent.poll(),
            Action::Done(Step::Waiting { reason, retry_at: None }) if reason.contains("spent after 1048581 bytes")
        ));
        assert_eq!(agent.take_usage_change().unwrap().bytes, MIB + 5);
        assert_eq!(agent.take_usage_change(), None);
        // WiFi bytes are free.
        agent.start_check(NOON, link(LinkClass::YardWifi));
        agent.record(10 * MIB, NOON);
        assert_eq!(agent.take_usage_change(), None);
    }

    #[test]
    fn held_payloads_install_then_the_trial_is_judged_and_reported_once() {
        let mut agent = Agent::new(policy(0));
        // Held already: no link decision needed even where fixes may not fetch.
        let action = after_refresh(
            &mut agent,
            LinkClass::YardWifi,
            &verified(Priority::Feature, true),
        );
        let Action::Install { group, payloads } = action else {
            panic!("{action:?}")
        };
        assert_eq!((group.as_str(), payloads.len()), ("director-v7", 1));
        agent.installed(&Outcome::Reboot);
        assert_eq!(agent.poll(), Action::SendReports);
        agent.reports_sent();
        assert_eq!(agent.poll(), Action::Done(Step::Rebooted));

        // After the reboot the trial is judged: rolled back, reported.
        let action = after_refresh(
            &mut agent,
            LinkClass::YardWifi,
            &verified(Priority::Feature, true),
        );
        assert!(matches!(action, Action::Install { .. }));
        agent.installed(&Outcome::RolledBack {
            reason: "health check failed".into(),
        });
        assert_eq!(
            agent.poll(),
            Action::Conclude {
                group: "director-v7".into(),
                decision: GroupDecision::RollBack {
                    reason: "health check failed".into()
                }
            }
        );
        agent.concluded(false);
        assert_eq!(agent.poll(), Action::SendReports);
        agent.reports_sent();
        assert_eq!(
            agent.poll(),
            Action::Done(Step::Finished {
                group: "director-v7".into(),
                outcome: "rolled back: health check failed".into()
            })
        );

        // The next check finds the install ended: no fetch, no install, the report stands.
        let mut ended = verified(Priority::Feature, false);
        ended.ended = Some(GroupDecision::Commit);
        let action = after_refresh(&mut agent, LinkClass::YardWifi, &ended);
        assert!(matches!(action, Action::Conclude { .. }), "{action:?}");
        agent.concluded(true);
        agent.reports_sent();
        assert_eq!(
            agent.poll(),
            Action::Done(Step::Ended {
                group: "director-v7".into()
            })
        );
    }

    #[test]
    fn up_to_date_when_every_ecu_runs_its_image() {
        let mut agent = Agent::new(policy(0));
        let mut current = verified(Priority::Security, false);
        current.ecus[0].running = image("gw-2", "bb");
        let action = after_refresh(&mut agent, LinkClass::OtherWifi, &current);
        assert_eq!(action, Action::SendReports);
        agent.reports_sent();
        assert_eq!(agent.poll(), Action::Done(Step::UpToDate));
    }
}
