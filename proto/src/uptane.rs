//! Uptane on top of TUF: a vehicle installs an image only when two repositories agree.
//!
//! - The **image repository** (offline keys; delegations per supplier or ECU family) lists
//!   every image with its length, hashes and, in `custom`, its BLAKE3 (`blake3`), the hardware
//!   ids it runs on (`hardware_ids`) and its release counter (`release_counter`).
//! - The **director repository** (online key) signs, per vehicle, which image each ECU must
//!   install: a targets role with one entry per image to install, naming in `custom` the ECU
//!   serials it is for and their hardware id (`ecu_identifiers: {serial: {hardware_id}}`) and
//!   the image's `release_counter`. Director targets never delegate.
//!
//! [`FullVerification`] is the primary's full verification (both chains, then director ↔ image
//! match on length, hashes, hardware id and release counter), push-style like the TUF
//! operations it is made of ([`verify_full`] drives it from blocking sources); [`verify_partial`] a
//! secondary's partial verification (director targets only). Both give [`ApprovedImage`]s,
//! which nothing else can make: the flasher asks for one before it writes a bank.
//!
//! Vehicles report what they run with signed [`EcuVersionReport`]s, gathered by the primary
//! into a signed vehicle version manifest carrying the director's nonce
//! ([`sign_vehicle_manifest`], [`verify_vehicle_manifest`]).

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

use crate::BlobId;
use crate::tuf::build::SignError;
use crate::tuf::canonical::CanonicalError;
use crate::tuf::metadata::{Key, RoleKeys, Signed, TargetFile, Targets};
use crate::tuf::signer::Signer;
use crate::tuf::{
    BlockingUpdater, LocalStore, Lookup, Machine, RefreshMachine, Remote, Request, Response, Role,
    Step, Time, TufError, Updater, Walk, build,
};

/// Why an install was not approved or a report not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UptaneError {
    /// The director's or the image repository's metadata failed TUF's checks.
    #[error("{repository} repository: {error}")]
    Tuf {
        /// `director` or `image`.
        repository: &'static str,
        /// What failed.
        error: TufError,
    },
    /// Director targets must list images, not delegate.
    #[error("director targets delegate to other roles; Uptane forbids it")]
    DirectorDelegates,
    /// A director target's `custom` is malformed.
    #[error("director target {target}: {detail}")]
    Malformed {
        /// The target.
        target: String,
        /// What is wrong.
        detail: String,
    },
    /// Two director targets name the same ECU.
    #[error("ECU {serial} is listed by two director targets")]
    EcuListedTwice {
        /// The ECU serial.
        serial: String,
    },
    /// The director names an ECU this vehicle does not have.
    #[error("director names ECU {serial}, which is not in this vehicle")]
    UnknownEcu {
        /// The ECU serial.
        serial: String,
    },
    /// Hardware ids disagree.
    #[error("ECU {serial} is hardware {ecu}; {source_of_claim} says {claimed}")]
    WrongHardware {
        /// The ECU serial.
        serial: String,
        /// The ECU's own hardware id.
        ecu: String,
        /// Who said otherwise (`director`, `image repository`).
        source_of_claim: &'static str,
        /// What they said.
        claimed: String,
    },
    /// The image repository does not list the director's image.
    #[error("director target {target} is not in the image repository")]
    ImageNotFound {
        /// The target.
        target: String,
    },
    /// Director and image repository disagree about the image.
    #[error("director and image repository disagree about {target}: {detail}")]
    ImageMismatch {
        /// The target.
        target: String,
        /// What differs.
        detail: String,
    },
    /// The image is older than what the ECU runs.
    #[error("ECU {serial} runs release {installed}; {target} is release {offered}")]
    ReleaseCounterRollback {
        /// The ECU serial.
        serial: String,
        /// The target offered.
        target: String,
        /// Its release counter.
        offered: u64,
        /// The installed release counter.
        installed: u64,
    },
    /// A signed report or manifest is malformed, unsigned or signed by the wrong key.
    #[error("{what}: {detail}")]
    Report {
        /// Which report (`vehicle manifest`, `ECU <serial> report`).
        what: String,
        /// What is wrong.
        detail: String,
    },
}

/// An ECU as the vehicle knows it: what it is and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuState {
    /// Its hardware id.
    pub hardware_id: String,
    /// Release counter of the image it runs (0 when unknown).
    pub installed_release_counter: u64,
}

/// An image that passed Uptane verification for one ECU. Only a [`FullVerification`] and
/// [`verify_partial`] make these.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovedImage {
    ecu_serial: String,
    hardware_id: String,
    target: String,
    file: TargetFile,
    release_counter: u64,
    blake3: Option<BlobId>,
}

impl ApprovedImage {
    /// The ECU to install on.
    pub fn ecu_serial(&self) -> &str {
        &self.ecu_serial
    }
    /// Its hardware id.
    pub fn hardware_id(&self) -> &str {
        &self.hardware_id
    }
    /// The target's name in both repositories.
    pub fn target(&self) -> &str {
        &self.target
    }
    /// Length and hashes, as signed.
    pub fn file(&self) -> &TargetFile {
        &self.file
    }
    /// The image's release counter.
    pub fn release_counter(&self) -> u64 {
        self.release_counter
    }
    /// The image's BLAKE3 (its blob id in the mesh), when the image repository lists it.
    pub fn blake3(&self) -> Option<BlobId> {
        self.blake3
    }
}

/// What one director target asks: the ECUs it is for, with their hardware ids, and the
/// release counter.
struct DirectorTarget {
    ecus: BTreeMap<String, String>,
    release_counter: Option<u64>,
}

fn director_target(target: &str, file: &TargetFile) -> Result<DirectorTarget, UptaneError> {
    let malformed = |detail: &str| UptaneError::Malformed {
        target: target.to_string(),
        detail: detail.to_string(),
    };
    let custom = file
        .custom
        .as_ref()
        .ok_or_else(|| malformed("has no custom"))?;
    let identifiers = custom["ecu_identifiers"]
        .as_object()
        .ok_or_else(|| malformed("custom.ecu_identifiers must be an object"))?;
    if identifiers.is_empty() {
        return Err(malformed("custom.ecu_identifiers names no ECU"));
    }
    let mut ecus = BTreeMap::new();
    for (serial, value) in identifiers {
        let hardware = value["hardware_id"].as_str().ok_or_else(|| {
            malformed(&format!(
                "custom.ecu_identifiers.{serial}.hardware_id must be a string"
            ))
        })?;
        ecus.insert(serial.clone(), hardware.to_string());
    }
    let release_counter =
        match &custom["release_counter"] {
            Value::Null => None,
            value => Some(value.as_u64().ok_or_else(|| {
                malformed("custom.release_counter must be a non-negative integer")
            })?),
        };
    Ok(DirectorTarget {
        ecus,
        release_counter,
    })
}

/// Checks one director target against an ECU and returns the approval.
fn approve(
    target: &str,
    file: &TargetFile,
    serial: &str,
    director_hardware: &str,
    release_counter: u64,
    ecu: &EcuState,
) -> Result<ApprovedImage, UptaneError> {
    if director_hardware != ecu.hardware_id {
        return Err(UptaneError::WrongHardware {
            serial: serial.to_string(),
            ecu: ecu.hardware_id.clone(),
            source_of_claim: "director",
            claimed: director_hardware.to_string(),
        });
    }
    if release_counter < ecu.installed_release_counter {
        return Err(UptaneError::ReleaseCounterRollback {
            serial: serial.to_string(),
            target: target.to_string(),
            offered: release_counter,
            installed: ecu.installed_release_counter,
        });
    }
    let blake3 = file.blake3();
    Ok(ApprovedImage {
        ecu_serial: serial.to_string(),
        hardware_id: ecu.hardware_id.clone(),
        target: target.to_string(),
        file: file.clone(),
        release_counter,
        blake3,
    })
}

/// One image the director assigns to one ECU.
#[derive(Debug)]
struct Assignment {
    target: String,
    file: TargetFile,
    serial: String,
    hardware: String,
    release_counter: Option<u64>,
}

/// Every assignment in director targets, each ECU named once. Director targets may not
/// delegate.
fn director_assignments(targets: &Targets) -> Result<Vec<Assignment>, UptaneError> {
    if targets
        .delegations
        .as_ref()
        .is_some_and(|delegations| !delegations.roles.is_empty())
    {
        return Err(UptaneError::DirectorDelegates);
    }
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (name, file) in &targets.targets {
        let wanted = director_target(name, file)?;
        for (serial, hardware) in wanted.ecus {
            if seen.insert(serial.clone(), ()).is_some() {
                return Err(UptaneError::EcuListedTwice { serial });
            }
            out.push(Assignment {
                target: name.clone(),
                file: file.clone(),
                serial,
                hardware,
                release_counter: wanted.release_counter,
            });
        }
    }
    Ok(out)
}

/// Which repository a [`FullVerification`] needs a file from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repository {
    /// The director's (this vehicle's) repository.
    Director,
    /// The image repository.
    Image,
}

impl Repository {
    fn name(self) -> &'static str {
        match self {
            Self::Director => "director",
            Self::Image => "image",
        }
    }
}

/// What a [`FullVerification`] needs next, or what it approved.
#[derive(Debug, Clone, PartialEq)]
pub enum FullStep {
    /// This file of this repository, handed over with [`FullVerification::handle_response`].
    Fetch {
        /// The repository.
        repository: Repository,
        /// The file.
        request: Request,
    },
    /// Every director target checked; the approved images.
    Done(Vec<ApprovedImage>),
}

/// Where a full verification is.
#[derive(Debug)]
enum Phase {
    /// Refreshing the director's repository.
    Director(RefreshMachine),
    /// Refreshing the image repository.
    Image(RefreshMachine),
    /// Looking up each assignment's image in the image repository, in turn.
    Match {
        assignments: VecDeque<Assignment>,
        /// The assignment whose image is being looked up (boxed: a walk is large).
        lookup: Option<Box<(Assignment, Walk<Lookup>)>>,
        approved: Vec<ApprovedImage>,
    },
}

/// Full verification on the primary (Uptane 2.0 §5.4.4.2), push-style: refreshes the director
/// and the image repository, then approves each director target for its ECU only if the image
/// repository lists the same image (same length, the director's hashes all equal to the image
/// repository's), for that ECU's hardware id, with a release counter that is the image
/// repository's and not below what the ECU runs. Like a TUF [`crate::tuf::Operation`], it says
/// which file it needs next (and of which repository) and checks what it is handed.
#[derive(Debug)]
pub struct FullVerification<'a, LD, LI> {
    director: &'a mut Updater<LD>,
    image: &'a mut Updater<LI>,
    ecus: &'a BTreeMap<String, EcuState>,
    phase: Phase,
}

fn tuf(repository: Repository) -> impl Fn(TufError) -> UptaneError {
    move |error| UptaneError::Tuf {
        repository: repository.name(),
        error,
    }
}

impl<'a, LD: LocalStore, LI: LocalStore> FullVerification<'a, LD, LI> {
    /// A full verification of `ecus` (by serial) against both repositories.
    pub fn new(
        director: &'a mut Updater<LD>,
        image: &'a mut Updater<LI>,
        ecus: &'a BTreeMap<String, EcuState>,
    ) -> Self {
        Self {
            director,
            image,
            ecus,
            phase: Phase::Director(RefreshMachine::new()),
        }
    }

    /// The file needed next, or the approved images.
    pub fn next_step(&mut self) -> Result<FullStep, UptaneError> {
        loop {
            match &mut self.phase {
                Phase::Director(refresh) => {
                    match refresh
                        .step(self.director)
                        .map_err(tuf(Repository::Director))?
                    {
                        Step::Fetch(request) => return Ok(fetch(Repository::Director, request)),
                        Step::Done(()) => self.phase = Phase::Image(RefreshMachine::new()),
                    }
                }
                Phase::Image(refresh) => {
                    match refresh.step(self.image).map_err(tuf(Repository::Image))? {
                        Step::Fetch(request) => return Ok(fetch(Repository::Image, request)),
                        Step::Done(()) => self.phase = self.assignments()?,
                    }
                }
                Phase::Match {
                    assignments,
                    lookup,
                    approved,
                } => {
                    let Some(current) = lookup else {
                        let Some(next) = assignments.pop_front() else {
                            return Ok(FullStep::Done(std::mem::take(approved)));
                        };
                        let walk = Walk::new(self.image, Lookup::new(&next.target));
                        *lookup = Some(Box::new((next, walk)));
                        continue;
                    };
                    let (assignment, walk) = &mut **current;
                    let found = match walk.step(self.image).map_err(tuf(Repository::Image))? {
                        Step::Fetch(request) => return Ok(fetch(Repository::Image, request)),
                        Step::Done(found) => found,
                    };
                    let image_file = found.ok_or_else(|| UptaneError::ImageNotFound {
                        target: assignment.target.clone(),
                    })?;
                    approved.push(check_assignment(assignment, &image_file, self.ecus)?);
                    *lookup = None;
                }
            }
        }
    }

    /// Checks what came for the file [`Self::next_step`] asked for.
    pub fn handle_response(&mut self, response: Response) -> Result<(), UptaneError> {
        match &mut self.phase {
            Phase::Director(refresh) => refresh
                .handle(self.director, response)
                .map_err(tuf(Repository::Director)),
            Phase::Image(refresh) => refresh
                .handle(self.image, response)
                .map_err(tuf(Repository::Image)),
            Phase::Match {
                lookup: Some(current),
                ..
            } => current
                .1
                .handle(self.image, response)
                .map_err(tuf(Repository::Image)),
            Phase::Match { lookup: None, .. } => Err(tuf(Repository::Image)(TufError::NotAsked)),
        }
    }

    /// Both repositories are fresh: what the director assigns, each ECU known to the vehicle.
    fn assignments(&self) -> Result<Phase, UptaneError> {
        let Some(director_targets) = self.director.trusted().targets("targets") else {
            return Err(tuf(Repository::Director)(TufError::Repository(
                "no targets after refresh".into(),
            )));
        };
        let assignments = director_assignments(&director_targets.signed)?;
        if let Some(unknown) = assignments
            .iter()
            .find(|a| !self.ecus.contains_key(&a.serial))
        {
            return Err(UptaneError::UnknownEcu {
                serial: unknown.serial.clone(),
            });
        }
        Ok(Phase::Match {
            assignments: assignments.into(),
            lookup: None,
            approved: Vec::new(),
        })
    }
}

fn fetch(repository: Repository, request: Request) -> FullStep {
    FullStep::Fetch {
        repository,
        request,
    }
}

/// Approves `assignment` if the image repository's `image_file` is the same image, for the
/// ECU's hardware, at a release counter both agree on.
fn check_assignment(
    assignment: &Assignment,
    image_file: &TargetFile,
    ecus: &BTreeMap<String, EcuState>,
) -> Result<ApprovedImage, UptaneError> {
    let Assignment {
        target,
        file,
        serial,
        hardware,
        release_counter: counter,
    } = assignment;
    let mismatch = |detail: String| UptaneError::ImageMismatch {
        target: target.to_string(),
        detail,
    };
    if file.length != image_file.length {
        return Err(mismatch(format!(
            "length {} in the director, {} in the image repository",
            file.length, image_file.length
        )));
    }
    for (algorithm, digest) in &file.hashes {
        match image_file.hashes.get(algorithm) {
            Some(other) if other.eq_ignore_ascii_case(digest) => {}
            Some(other) => {
                return Err(mismatch(format!(
                    "{algorithm} {digest} in the director, {other} in the image repository"
                )));
            }
            None => {
                return Err(mismatch(format!(
                    "the image repository has no {algorithm} hash"
                )));
            }
        }
    }
    let image_custom = image_file.custom.clone().unwrap_or(Value::Null);
    let hardware_ids: Vec<&str> = image_custom["hardware_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(ecu) = ecus.get(serial) else {
        return Err(UptaneError::UnknownEcu {
            serial: serial.clone(),
        });
    };
    if !hardware_ids.contains(&ecu.hardware_id.as_str()) {
        return Err(UptaneError::WrongHardware {
            serial: serial.clone(),
            ecu: ecu.hardware_id.clone(),
            source_of_claim: "image repository",
            claimed: hardware_ids.join(", "),
        });
    }
    let Some(image_counter) = image_custom["release_counter"].as_u64() else {
        return Err(mismatch(
            "the image repository gives no custom.release_counter".into(),
        ));
    };
    if counter.is_some_and(|counter| counter != image_counter) {
        return Err(mismatch(format!(
            "release counter {counter:?} in the director, {image_counter} in the image repository"
        )));
    }
    // The image repository's entry is the one approved: it carries the BLAKE3.
    approve(target, image_file, serial, hardware, image_counter, ecu)
}

/// [`FullVerification`] with both repositories fetched from blocking [`Remote`]s.
pub fn verify_full<RD, LD, RI, LI>(
    director: &mut BlockingUpdater<RD, LD>,
    image: &mut BlockingUpdater<RI, LI>,
    ecus: &BTreeMap<String, EcuState>,
) -> Result<Vec<ApprovedImage>, UptaneError>
where
    RD: Remote,
    LD: LocalStore,
    RI: Remote,
    LI: LocalStore,
{
    let (director, director_remote) = director.parts_mut();
    let (image, image_remote) = image.parts_mut();
    let mut verification = FullVerification::new(director, image, ecus);
    loop {
        match verification.next_step()? {
            FullStep::Fetch {
                repository,
                request,
            } => {
                let response = match repository {
                    Repository::Director => director_remote.fetch(&request.path, request.max_bytes),
                    Repository::Image => image_remote.fetch(&request.path, request.max_bytes),
                };
                verification.handle_response(response)?;
            }
            FullStep::Done(approved) => return Ok(approved),
        }
    }
}

/// What a secondary keeps for partial verification: the director's targets keys (from the
/// director root it was provisioned with) and the last director targets version it accepted.
#[derive(Debug, Clone)]
pub struct PartialVerifier {
    /// Key id → key of the director's targets role.
    pub keys: BTreeMap<String, Key>,
    /// The role's key ids and threshold.
    pub role: RoleKeys,
    /// The last accepted director targets version (0 at first).
    pub last_version: u64,
    /// This ECU's serial.
    pub serial: String,
    /// This ECU's state.
    pub ecu: EcuState,
}

impl PartialVerifier {
    /// Partial verification (Uptane 2.0 §5.4.4.1): director targets signed by the threshold,
    /// not expired, not older than the last accepted, not delegating, naming this ECU at most
    /// once with its hardware id and a release counter not below what it runs. `Ok(None)`:
    /// nothing for this ECU. On success the version is remembered.
    pub fn verify(
        &mut self,
        director_targets: &[u8],
        now: Time,
    ) -> Result<Option<ApprovedImage>, UptaneError> {
        let tuf = |error| UptaneError::Tuf {
            repository: "director",
            error,
        };
        let signed =
            Signed::<Targets>::from_bytes(director_targets, "targets.json").map_err(tuf)?;
        signed
            .verify("targets", &self.keys, &self.role)
            .map_err(tuf)?;
        if now >= signed.signed.expires() {
            return Err(tuf(TufError::Expired {
                role: "targets".into(),
                expires: signed.signed.expires(),
                now,
            }));
        }
        if signed.signed.version() < self.last_version {
            return Err(tuf(TufError::BadVersion {
                role: "targets".into(),
                detail: format!(
                    "version {} is older than the accepted {}",
                    signed.signed.version(),
                    self.last_version
                ),
            }));
        }
        // Other ECUs of the vehicle are named too; only ours matters here.
        let mut mine = None;
        for assignment in director_assignments(&signed.signed)? {
            if assignment.serial == self.serial {
                mine = Some(approve(
                    &assignment.target,
                    &assignment.file,
                    &assignment.serial,
                    &assignment.hardware,
                    assignment.release_counter.unwrap_or(0),
                    &self.ecu,
                )?);
            }
        }
        self.last_version = signed.signed.version();
        Ok(mine)
    }
}

/// What an ECU reports it runs, signed with its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcuVersionReport {
    /// The ECU serial.
    pub ecu_serial: String,
    /// The target it runs.
    pub installed_image: String,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// Its release counter.
    pub release_counter: u64,
    /// The director's nonce this report answers.
    pub nonce: String,
    /// Attacks the ECU detected, in words (empty: none).
    pub attacks_detected: String,
}

fn report_json(report: &EcuVersionReport) -> Value {
    json!({
        "ecu_serial": report.ecu_serial,
        "installed_image": report.installed_image,
        "sha256": report.sha256,
        "release_counter": report.release_counter,
        "nonce": report.nonce,
        "attacks_detected": report.attacks_detected,
    })
}

/// Signs an ECU's version report with the ECU's key.
pub fn sign_ecu_report(report: &EcuVersionReport, key: &dyn Signer) -> Result<Value, SignError> {
    signed_value(&report_json(report), key)
}

fn signed_value(signed: &Value, key: &dyn Signer) -> Result<Value, SignError> {
    let bytes = build::sign(signed, &[key])?;
    // `build::sign` writes JSON that serde_json made; reading it back cannot fail.
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Signs the vehicle version manifest: the VIN, the primary's serial, each ECU's signed report
/// and, after an install, what the primary saw of it (`install`: e.g. its outcome, reason and
/// bytes per link class), with the primary's key.
pub fn sign_vehicle_manifest(
    vin: &str,
    primary_serial: &str,
    reports: &[Value],
    install: Option<&Value>,
    key: &dyn Signer,
) -> Result<Vec<u8>, SignError> {
    let reports: serde_json::Map<String, Value> = reports
        .iter()
        .map(|report| {
            let serial = report["signed"]["ecu_serial"].as_str().unwrap_or_default();
            (serial.to_string(), report.clone())
        })
        .collect();
    let mut signed = json!({
        "vin": vin,
        "primary_ecu_serial": primary_serial,
        "ecu_version_reports": reports,
    });
    if let Some(install) = install {
        signed["install"] = install.clone();
    }
    build::sign(&signed, &[key])
}

/// A vehicle manifest whose every signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    /// The vehicle.
    pub vin: String,
    /// Each ECU's report, by serial.
    pub reports: BTreeMap<String, EcuVersionReport>,
    /// What the primary said of the install this manifest ends, if it ends one.
    pub install: Option<Value>,
}

/// The director's check of a vehicle manifest: signed by the vehicle's registered primary key;
/// every report signed by its ECU's registered key, for an ECU of this vehicle, answering
/// `nonce`. Keys may be of any of the three types, each its own.
pub fn verify_vehicle_manifest(
    bytes: &[u8],
    vin: &str,
    primary_key: &Key,
    ecu_keys: &BTreeMap<String, Key>,
    nonce: &str,
) -> Result<VerifiedManifest, UptaneError> {
    let report_error = |what: &str, detail: String| UptaneError::Report {
        what: what.to_string(),
        detail,
    };
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|error| report_error("vehicle manifest", format!("not JSON: {error}")))?;
    check_signed_by(&value, primary_key)
        .map_err(|error| report_error("vehicle manifest", error.to_string()))?;
    let signed = &value["signed"];
    if signed["vin"].as_str() != Some(vin) {
        return Err(report_error(
            "vehicle manifest",
            format!("is for VIN {}, expected {vin}", signed["vin"]),
        ));
    }
    let Some(reports) = signed["ecu_version_reports"].as_object() else {
        return Err(report_error(
            "vehicle manifest",
            "field signed.ecu_version_reports must be an object".into(),
        ));
    };
    let mut verified = BTreeMap::new();
    for (serial, report) in reports {
        let what = format!("ECU {serial} report");
        let Some(key) = ecu_keys.get(serial) else {
            return Err(report_error(&what, "not an ECU of this vehicle".into()));
        };
        check_signed_by(report, key).map_err(|error| report_error(&what, error.to_string()))?;
        let fields = &report["signed"];
        let text = |field: &str| {
            fields[field].as_str().map(str::to_string).ok_or_else(|| {
                report_error(&what, format!("field signed.{field} must be a string"))
            })
        };
        let parsed = EcuVersionReport {
            ecu_serial: text("ecu_serial")?,
            installed_image: text("installed_image")?,
            sha256: text("sha256")?,
            release_counter: fields["release_counter"].as_u64().ok_or_else(|| {
                report_error(
                    &what,
                    "field signed.release_counter must be an integer".into(),
                )
            })?,
            nonce: text("nonce")?,
            attacks_detected: text("attacks_detected")?,
        };
        if parsed.ecu_serial != *serial {
            return Err(report_error(
                &what,
                format!("is signed for ECU {}", parsed.ecu_serial),
            ));
        }
        if parsed.nonce != nonce {
            return Err(report_error(
                &what,
                format!("answers nonce {:?}, not the current one", parsed.nonce),
            ));
        }
        verified.insert(serial.clone(), parsed);
    }
    Ok(VerifiedManifest {
        vin: vin.to_string(),
        reports: verified,
        install: signed.get("install").filter(|v| !v.is_null()).cloned(),
    })
}

/// Why an envelope is not signed by the key it must be signed by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// `signed` has no canonical form.
    #[error("{0}")]
    Canonical(#[from] CanonicalError),
    /// `signed` is not an object.
    #[error("field signed must be an object")]
    SignedNotObject,
    /// `signatures` is not an array.
    #[error("field signatures must be an array")]
    SignaturesNotArray,
    /// The key's signature is there but does not verify.
    #[error("the signature by key {0} is not valid")]
    BadSignature(String),
    /// No signature by the key.
    #[error("not signed by the registered key {0}")]
    NotSigned(String),
}

/// Checks that `value` (`{"signatures": [...], "signed": {...}}`) carries a valid signature by
/// `key` (of any of the three types) over the canonical `signed`.
pub fn check_signed_by(value: &Value, key: &Key) -> Result<(), EnvelopeError> {
    let canonical = crate::tuf::canonical::to_canonical(&value["signed"])?;
    if !value["signed"].is_object() {
        return Err(EnvelopeError::SignedNotObject);
    }
    let keyid = key.id();
    let signatures = value["signatures"]
        .as_array()
        .ok_or(EnvelopeError::SignaturesNotArray)?;
    for signature in signatures {
        if signature["keyid"].as_str() != Some(keyid.as_str()) {
            continue;
        }
        let valid = signature["sig"]
            .as_str()
            .and_then(|sig| hex::decode(sig).ok())
            .is_some_and(|sig| key.verify(&canonical, &sig));
        if valid {
            return Ok(());
        }
        return Err(EnvelopeError::BadSignature(keyid));
    }
    Err(EnvelopeError::NotSigned(keyid))
}
