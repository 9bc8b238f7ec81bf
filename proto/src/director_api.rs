//! The director's HTTP API as types: its paths, and the bodies of every request and answer.
//! The service (`origin::http`) and every client (`node::director_client`: the vehicle agent,
//! the depot's relay, the origin CLI, netsim) use these, so a field is spelt once and a body
//! either parses whole or is refused naming what was wrong.
//!
//! | method and path | request | answer |
//! |---|---|---|
//! | `GET /v1/campaigns` | | [`CampaignsAnswer`] |
//! | `POST /v1/campaigns` | [`CreateCampaign`] | [`CreatedAnswer`] |
//! | `POST /v1/campaigns/{id}/{action}` | [`ActionRequest`] | [`ApprovedAnswer`] or [`DecidedAnswer`] |
//! | `GET /v1/vehicles` | | a list of [`VehicleRecord`] |
//! | `POST /v1/vehicles` | [`RegisterVehicle`] | [`RegisteredAnswer`] |
//! | `POST /v1/vehicles/{vin}/keys` | [`RotateKeys`] | [`RegisteredAnswer`] |
//! | `POST /v1/vehicles/{vin}/manifest` | a signed vehicle manifest ([`crate::uptane`]) | [`ManifestAccepted`] |
//! | `GET /v1/fleet/revocations` | | [`SignedRevocations`] |
//! | `POST /v1/fleet/revoke` | [`RevokeMember`] | [`SignedRevocations`] |
//!
//! A refusal answers [`ErrorAnswer`] with a status that says whether sending again can help:
//! 400, 403, 404 and 409 are final for that body ([`is_final_refusal`]); 5xx is not.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::campaign::{CampaignSpec, Decision, Outcome, Progress, State, Wave};
use crate::custom::Priority;
use crate::ids::{CampaignId, EcuSerial, Vin};
use crate::membership::MembershipCert;
#[cfg(doc)]
use crate::membership::SignedRevocations;

/// The paths of the API.
pub mod path {
    use super::{CampaignAction, CampaignId, Vin};

    /// Every campaign (`GET`), or a new one (`POST`).
    pub const CAMPAIGNS: &str = "/v1/campaigns";
    /// The registry (`GET`), or a vehicle to register (`POST`).
    pub const VEHICLES: &str = "/v1/vehicles";
    /// The Prometheus exposition.
    pub const METRICS: &str = "/metrics";
    /// The fleet's signed revocation list (`GET`, public: nodes check its signature).
    pub const FLEET_REVOCATIONS: &str = "/v1/fleet/revocations";
    /// A mesh peer to throw out of the fleet (`POST`).
    pub const FLEET_REVOKE: &str = "/v1/fleet/revoke";

    /// An operator's action on campaign `id`.
    pub fn campaign_action(id: &CampaignId, action: CampaignAction) -> String {
        format!("{CAMPAIGNS}/{id}/{}", action.name())
    }

    /// Where vehicle `vin` sends its manifests.
    pub fn manifest(vin: &Vin) -> String {
        format!("{VEHICLES}/{vin}/manifest")
    }

    /// Where vehicle `vin` asks for a fresh membership certificate.
    pub fn membership(vin: &Vin) -> String {
        format!("{VEHICLES}/{vin}/membership")
    }
}

/// Whether an HTTP status refuses a request for good: the same body sent again would be
/// refused again (400 malformed, 403 not signed as registered, 404 unknown, 409 a replay).
pub fn is_final_refusal(status: u16) -> bool {
    matches!(status, 400 | 403 | 404 | 409)
}

/// What an operator does to a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignAction {
    /// Approve a created campaign and start it (someone other than its creator).
    Approve,
    /// Stop handing out the release.
    Halt,
    /// Resume a halted campaign.
    Resume,
    /// Call it off; vehicles that installed it go to the fallback.
    Abort,
}

/// An action that is none of approve, halt, resume, abort.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no action {0:?}: approve, halt, resume or abort")]
pub struct UnknownAction(pub String);

impl CampaignAction {
    /// Every action.
    pub const ALL: [Self; 4] = [Self::Approve, Self::Halt, Self::Resume, Self::Abort];

    /// Its name in the path.
    pub fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Halt => "halt",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }

    /// Whether the action needs a reason (a halt or an abort is explained).
    pub fn needs_reason(self) -> bool {
        matches!(self, Self::Halt | Self::Abort)
    }
}

impl FromStr for CampaignAction {
    type Err = UnknownAction;

    fn from_str(text: &str) -> Result<Self, UnknownAction> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == text)
            .ok_or_else(|| UnknownAction(text.to_string()))
    }
}

impl fmt::Display for CampaignAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `POST /v1/campaigns`: a campaign to create; it waits for others' approvals. Who creates it
/// is whoever the request's credential proves, never a field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// What it is.
    pub spec: CampaignSpec,
}

/// `POST /v1/campaigns/{id}/halt` and `…/abort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Why (a halt and an abort need one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/campaigns/{id}/approve` and `…/resume`: the approver's signature (ed25519, hex)
/// over the [`ApprovalStatement`] the campaign's status shows as pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedApproval {
    /// The signature, hex.
    pub signature: String,
}

/// What an approver signs: this campaign, with exactly this spec, may start (`approve`) or go
/// on after its `round`-th halt (`resume`). The round keeps a signature for one resume from
/// being replayed for a later one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalStatement {
    /// The campaign.
    pub campaign: CampaignId,
    /// `approve` or `resume`.
    pub action: String,
    /// 0 for the approval; the number of halts so far for a resume.
    pub round: u64,
    /// [`spec_digest`] of the campaign's spec.
    pub spec_sha256: String,
}

impl ApprovalStatement {
    /// The bytes signed: a fixed, domain-separated text (the key signs nothing else).
    pub fn bytes(&self) -> Vec<u8> {
        format!(
            "depotmesh campaign approval v1\ncampaign: {}\naction: {}\nround: {}\nspec-sha256: {}\n",
            self.campaign, self.action, self.round, self.spec_sha256
        )
        .into_bytes()
    }

    /// Signs it with an approver's key; the signature as [`SignedApproval`] carries it.
    pub fn sign(&self, key: &ed25519_dalek::SigningKey) -> String {
        use ed25519_dalek::Signer;
        hex::encode(key.sign(&self.bytes()).to_bytes())
    }

    /// Whether `signature` (hex) is `key`'s over it.
    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey, signature: &str) -> bool {
        verify_hex(key, &self.bytes(), signature)
    }
}

/// Whether `signature` (hex) is `key`'s ed25519 signature over `message` (strict: no malleable
/// or small-order forms).
fn verify_hex(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &str) -> bool {
    let Some(bytes) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
    else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

/// The SHA-256 (hex) of a campaign spec's JSON, as both the director and an approver's
/// client compute it from the spec they hold.
pub fn spec_digest(spec: &CampaignSpec) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(
        serde_json::to_vec(spec).unwrap_or_default(),
    ))
}

/// Approvals a campaign waits for before it starts or resumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// What the approvers sign.
    pub statement: ApprovalStatement,
    /// Who has signed it so far.
    pub signed_by: Vec<String>,
    /// How many distinct approvers, none the campaign's creator, must sign.
    pub needed: usize,
}

/// `POST /v1/vehicles`: a vehicle to enrol. Who enrols it is whoever the request's credential
/// proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterVehicle {
    /// The vehicle.
    pub vehicle: VehicleRecord,
}

/// `POST /v1/vehicles/{vin}/keys`: new keys for an enrolled vehicle (a replaced gateway or
/// ECU, a key rotation): the primary's, and each named ECU's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeys {
    /// The primary's new public key (ed25519, hex), if it changes.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// ECU serial → its new public key (hex).
    #[serde(default)]
    pub ecus: BTreeMap<EcuSerial, String>,
    /// The vehicle's new mesh peer id (a replaced gateway), if it changes: the answer carries
    /// its membership certificate, and the old peer is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// `POST /v1/fleet/revoke`: a mesh peer to throw out of the fleet before its membership
/// certificate expires. Who revokes is whoever the request's credential proves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeMember {
    /// The peer id, as text (`12D3Koo…`).
    pub peer: String,
}

/// `POST /v1/vehicles/{vin}/membership`: an enrolled vehicle asks for a fresh membership
/// certificate for its mesh peer before its own expires. No operator credential: the vehicle's
/// primary key signs the [`RenewalStatement`], which the director checks against the key it
/// enrolled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewMembership {
    /// The peer id the vehicle was enrolled with, as text.
    pub peer: String,
    /// When the vehicle asked (unix seconds): the director takes a statement only while it is
    /// fresh.
    pub at: u64,
    /// The primary key's ed25519 signature over the [`RenewalStatement`], hex.
    pub signature: String,
}

/// What a vehicle's primary key signs to renew its membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenewalStatement<'a> {
    /// The vehicle.
    pub vin: &'a Vin,
    /// Its mesh peer id.
    pub peer: &'a str,
    /// When (unix seconds).
    pub at: u64,
}

impl RenewalStatement<'_> {
    /// The bytes signed: a fixed, domain-separated text (no other statement reads the same).
    pub fn bytes(&self) -> Vec<u8> {
        format!(
            "depotmesh membership renewal v1\nvin: {}\npeer: {}\nat: {}\n",
            self.vin, self.peer, self.at
        )
        .into_bytes()
    }

    /// The request the vehicle sends, signed with its primary key (of any type).
    ///
    /// # Errors
    /// When the key cannot sign.
    pub fn sign(
        &self,
        key: &dyn crate::tuf::signer::Signer,
    ) -> Result<RenewMembership, crate::tuf::signer::SignError> {
        Ok(RenewMembership {
            peer: self.peer.to_owned(),
            at: self.at,
            signature: hex::encode(key.sign(&self.bytes())?),
        })
    }

    /// Whether `signature` (hex) is `key`'s over it (the vehicle's registered primary key).
    pub fn verify(&self, key: &crate::tuf::Key, signature: &str) -> bool {
        hex::decode(signature).is_ok_and(|signature| key.verify(&self.bytes(), &signature))
    }
}

/// The answer to a created campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAnswer {
    /// Its id.
    pub created: CampaignId,
}

/// The answer to an approval or a resume's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovedAnswer {
    /// The campaign.
    pub approved: CampaignId,
    /// Who signed.
    pub by: String,
    /// Signatures still needed (0: it started, or resumed).
    pub still_needed: usize,
    /// The decision taken when the last signature came (a resume's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// The answer to a halt, resume or abort.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedAnswer {
    /// The campaign.
    pub campaign: CampaignId,
    /// What was decided.
    pub decision: Decision,
}

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredAnswer {
    /// The vehicle.
    pub registered: Vin,
    /// The vehicle's fleet membership certificate, when the request named its mesh peer id:
    /// what the vehicle's node presents to its peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipCert>,
}

/// Every refusal's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What was wrong.
    pub error: String,
}

/// What an accepted manifest did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestAccepted {
    /// The vehicle.
    pub vin: Vin,
    /// The same manifest was accepted before; nothing was counted again.
    pub duplicate: bool,
    /// Campaign → the outcome counted for it.
    pub outcomes: BTreeMap<CampaignId, Outcome>,
    /// Campaign → decisions the report caused.
    pub decisions: Vec<(CampaignId, Decision)>,
}

/// Where a campaign stands: waiting for approval, or started (then its core's state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Created, not approved yet.
    AwaitingApproval,
    /// Approved: the core's state.
    Started(State),
}

/// The JSON of [`Standing::AwaitingApproval`]: `{"state": "awaiting_approval"}`, beside the
/// core's states (`{"state": "running", "open": 0}`, ...).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum AwaitingTag {
    AwaitingApproval,
}

#[derive(Serialize, Deserialize)]
struct Awaiting {
    state: AwaitingTag,
}

impl Serialize for Standing {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::AwaitingApproval => Awaiting {
                state: AwaitingTag::AwaitingApproval,
            }
            .serialize(serializer),
            Self::Started(state) => state.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Standing {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value["state"] == "awaiting_approval" {
            return Ok(Self::AwaitingApproval);
        }
        State::deserialize(value)
            .map(Self::Started)
            .map_err(serde::de::Error::custom)
    }
}

/// A decision and when it was made (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionAt {
    /// When.
    pub at: u64,
    /// What.
    pub decision: Decision,
}

/// What the director's background work does to a campaign's vehicles' director targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetsWork {
    /// Signs the release for the members of the open waves (a wave opened, or the campaign
    /// resumed).
    Sign,
    /// Takes the release back from members that got it and have not reported (a halt or an
    /// abort).
    Withdraw,
}

/// A campaign's background work on its vehicles' director targets: approve, advance and
/// resume (or halt) return at once, and the vehicles get (or lose) their targets as this work
/// reaches them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsJob {
    /// What it does.
    pub work: TargetsWork,
    /// Vehicles still to do.
    pub due: u64,
    /// Vehicles done since this work was set (at the decision that set it, or at the
    /// director's start).
    pub done: u64,
    /// Vehicles it could not do (each with its error in the director's log); tried again at
    /// the next decision or restart.
    pub failed: u64,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One campaign's standing, as `GET /v1/campaigns` gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignStatus {
    /// Its id.
    pub id: CampaignId,
    /// Hardware id → target.
    pub release: BTreeMap<String, String>,
    /// Its priority class.
    pub priority: Priority,
    /// Who created it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: u64,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Its spec, as the approvers sign it.
    pub spec: CampaignSpec,
    /// The approvals it waits for, if it waits (created, or halted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<PendingApproval>,
    /// Where it stands.
    pub state: Standing,
    /// Its waves.
    pub waves: Vec<Wave>,
    /// Its progress, once started.
    pub progress: Option<Progress>,
    /// Region → link class → bytes the vehicles fetched for it.
    pub bytes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Its last decisions, newest first.
    pub decisions: Vec<DecisionAt>,
    /// Its vehicles' director targets being signed or withdrawn in the background, if any
    /// are due or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_job: Option<TargetsJob>,
}

/// `GET /v1/campaigns`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CampaignsAnswer {
    /// The director's time (Unix seconds).
    pub now: u64,
    /// Every campaign, by id.
    pub campaigns: Vec<CampaignStatus>,
}

impl CampaignsAnswer {
    /// Campaign `id`, if there is one.
    pub fn campaign(&self, id: &CampaignId) -> Option<&CampaignStatus> {
        self.campaigns.iter().find(|c| &c.id == id)
    }
}

/// One ECU of a vehicle, as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuRecord {
    /// The ECU's serial.
    pub serial: EcuSerial,
    /// Its hardware id (which images fit it).
    pub hardware_id: String,
    /// The public half of the key it signs its version reports with (hex).
    pub public_key: String,
    /// The image repository target it runs, as last reported (or registered).
    #[serde(default)]
    pub installed: Option<String>,
}

/// The last vehicle manifest the director accepted from a vehicle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReport {
    /// When it was accepted (Unix seconds).
    pub at: u64,
    /// The nonce it answered.
    pub nonce: String,
    /// BLAKE3 of the manifest's bytes (a resend of the same manifest is not a replay).
    pub manifest: String,
    /// The install outcome it reported, if it ended one.
    #[serde(default)]
    pub outcome: Option<InstallOutcome>,
    /// Why that install rolled back, as the vehicle said (empty after a commit).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A vehicle in the director's registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VehicleRecord {
    /// Its id (VIN).
    pub vin: Vin,
    /// Its region.
    pub region: String,
    /// Its vehicle type (model).
    pub vehicle_type: String,
    /// Its home depot.
    pub home_depot: String,
    /// The public half of its primary's key, which signs its vehicle manifests (hex).
    pub primary_key: String,
    /// Its ECUs; the first is the primary.
    pub ecus: Vec<EcuRecord>,
    /// Its gateway's libp2p peer id on the mesh (`12D3Koo…`), if enrolled in the fleet's mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The last manifest accepted.
    #[serde(default)]
    pub last_report: Option<LastReport>,
}

/// A vehicle record that does not hold together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("vehicle {vin}: {detail}")]
pub struct RecordError {
    /// The vehicle.
    pub vin: Vin,
    /// What is wrong, naming the field.
    pub detail: String,
}

/// A hex ed25519 public key that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not hex.
    #[error("not hex")]
    NotHex,
    /// Not 32 bytes.
    #[error("an ed25519 public key is 32 bytes")]
    Length,
    /// Not a point of the curve.
    #[error("not an ed25519 public key")]
    NotAKey,
    /// Not a public key of a type Uptane keys may have.
    #[error("{0}")]
    Public(String),
}

/// Parses a vehicle's primary or ECU public key as registered: an ed25519 key in hex, or a PEM
/// `PUBLIC KEY` of ECDSA P-256, RSA or Ed25519 ([`crate::tuf::Key::parse_public`]).
pub fn parse_uptane_key(text: &str) -> Result<crate::tuf::Key, KeyError> {
    crate::tuf::Key::parse_public(text).map_err(KeyError::Public)
}

/// Parses a hex ed25519 public key (fleet, approval and audit keys, which are ed25519).
pub fn parse_key(hex_key: &str) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
    let bytes = hex::decode(hex_key).map_err(|_| KeyError::NotHex)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Length)?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAKey)
}

impl VehicleRecord {
    /// Checks what the types do not: field lengths, keys, ECUs; the error names the field.
    pub fn check(&self) -> Result<(), RecordError> {
        let fail = |detail: String| {
            Err(RecordError {
                vin: self.vin.clone(),
                detail,
            })
        };
        for (field, value) in [
            ("region", &self.region),
            ("vehicle_type", &self.vehicle_type),
            ("home_depot", &self.home_depot),
        ] {
            if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
                return fail(format!(
                    "{field} {value:?} must be 1 to 64 printable characters"
                ));
            }
        }
        if let Err(error) = parse_uptane_key(&self.primary_key) {
            return fail(format!("primary_key: {error}"));
        }
        if let Some(Err(error)) = self.peer.as_deref().map(crate::membership::check_peer_text) {
            return fail(format!("peer: {error}"));
        }
        if self.ecus.is_empty() {
            return fail("it has no ECU".into());
        }
        let mut serials = std::collections::BTreeSet::new();
        for ecu in &self.ecus {
            if ecu.hardware_id.is_empty() {
                return fail(format!("ECU {} has an empty hardware id", ecu.serial));
            }
            if !serials.insert(&ecu.serial) {
                return fail(format!("ECU {} is listed twice", ecu.serial));
            }
            if let Err(error) = parse_uptane_key(&ecu.public_key) {
                return fail(format!("ECU {} public_key: {error}", ecu.serial));
            }
        }
        Ok(())
    }
}

/// What a vehicle's install ended as, in its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallOutcome {
    /// Every ECU committed the new image.
    Committed,
    /// Rolled back: a boot failed, a trial ran out, or anything but the health check.
    RolledBack,
    /// Rolled back because a health check failed.
    HealthFailed,
}

/// What the vehicle's primary saw of an install, signed in the manifest that ends it
/// (`install`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallReport {
    /// The install's name (`director-v<N>`).
    pub group: String,
    /// How it ended.
    pub outcome: InstallOutcome,
    /// Why it rolled back (empty after a commit).
    #[serde(default)]
    pub reason: String,
    /// Link class → bytes fetched for it.
    #[serde(default)]
    pub bytes: BTreeMap<String, u64>,
    /// The vehicle's cellular month when the install ended, if it has a cellular budget: the
    /// fleet sees from it which vehicles an update left with little cellular to spare (a
    /// vehicle keeps its usage to itself otherwise). Absent in manifests of older vehicles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cellular: Option<CellularMonth>,
}

/// A vehicle's cellular use this month against its budget (`monthly_budget_bytes`), as its
/// link policy counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellularMonth {
    /// Bytes used this month (at most the budget: the policy stops there).
    pub used_bytes: u64,
    /// The month's budget, never 0 (a vehicle without one reports none).
    pub budget_bytes: u64,
}

impl CellularMonth {
    /// Whether at least `numerator / denominator` of the budget is used.
    #[must_use]
    pub fn used_at_least(&self, numerator: u64, denominator: u64) -> bool {
        u128::from(self.used_bytes) * u128::from(denominator)
            >= u128::from(self.budget_bytes) * u128::from(numerator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_standing_reads_as_it_is_written() {
        for (standing, text) in [
            (
                Standing::AwaitingApproval,
                json!({"state": "awaiting_approval"}),
            ),
            (
                Standing::Started(State::Halted {
                    open: 1,
                    reason: "gate".into(),
                }),
                json!({"state": "halted", "open": 1, "reason": "gate"}),
            ),
        ] {
            assert_eq!(serde_json::to_value(&standing).unwrap(), text);
            assert_eq!(serde_json::from_value::<Standing>(text).unwrap(), standing);
        }
        assert!(serde_json::from_value::<Standing>(json!({"state": "sleeping"})).is_err());
    }

    #[test]
    fn an_install_report_carries_the_cellular_month_only_when_there_is_a_budget() {
        let older = json!({"group": "director-v2", "outcome": "committed"});
        let report: InstallReport = serde_json::from_value(older.clone()).unwrap();
        assert_eq!(report.cellular, None);
        assert!(!serde_json::to_value(&report).unwrap()["cellular"].is_object());
        let month = CellularMonth {
            used_bytes: 90,
            budget_bytes: 100,
        };
        let mut newer = older;
        newer["cellular"] = json!({"used_bytes": 90, "budget_bytes": 100});
        let report: InstallReport = serde_json::from_value(newer.clone()).unwrap();
        assert_eq!(report.cellular, Some(month));
        assert_eq!(
            serde_json::to_value(&report).unwrap()["cellular"],
            newer["cellular"]
        );
        assert!(month.used_at_least(9, 10) && month.used_at_least(4, 5));
        assert!(!month.used_at_least(1, 1));
        let spent = CellularMonth {
            used_bytes: u64::MAX,
            budget_bytes: u64::MAX,
        };
        assert!(spent.used_at_least(1, 1));
    }

    #[test]
    fn paths_and_actions() {
        let id = CampaignId::parse("c-1").unwrap();
        assert_eq!(
            path::campaign_action(&id, CampaignAction::Approve),
            "/v1/campaigns/c-1/approve"
        );
        assert_eq!(
            path::manifest(&Vin::parse("VIN-1").unwrap()),
            "/v1/vehicles/VIN-1/manifest"
        );
        for action in CampaignAction::ALL {
            assert_eq!(action.name().parse::<CampaignAction>().unwrap(), action);
        }
        assert!("delete".parse::<CampaignAction>().is_err());
        assert!(is_final_refusal(409) && !is_final_refusal(503) && !is_final_refusal(200));
    }

    #[test]
    fn a_vehicle_record_names_its_bad_field() {
        let key = hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&[7; 32])
                .verifying_key()
                .as_bytes(),
        );
        let good = VehicleRecord {
            vin: Vin::parse("VIN-1").unwrap(),
            region: "eu".into(),
            vehicle_type: "tractor".into(),
            home_depot: "d1".into(),
            primary_key: key.clone(),
            ecus: vec![EcuRecord {
                serial: EcuSerial::parse("GW-1").unwrap(),
                hardware_id: "gw".into(),
                public_key: key.clone(),
                installed: None,
            }],
            peer: Some("12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf".into()),
            last_report: None,
        };
        good.check().unwrap();
        let mut bad = good.clone();
        bad.peer = Some("12D3Koo\npeer: other".into());
        assert!(bad.check().unwrap_err().to_string().contains("peer"));
        let mut bad = good.clone();
        bad.region = "a\nb".into();
        assert!(bad.check().unwrap_err().to_string().contains("region"));
        let mut bad = good.clone();
        bad.ecus.push(bad.ecus[0].clone());
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let mut bad = good.clone();
        bad.primary_key = "zz".into();
        let error = bad.check().unwrap_err().to_string();
        assert!(
            error.contains("primary_key: is not 32 bytes of hex (or give a PEM PUBLIC KEY)"),
            "{error}"
        );
        // A PEM key of another type (ECDSA P-256) is taken; a PEM that is not a public key is
        // named.
        let mut other = good.clone();
        use crate::tuf::signer::Signer as _;
        let ecdsa = crate::tuf::signer::KeyPair::generate_ecdsa_pkcs8().unwrap();
        other.ecus[0].public_key = crate::tuf::signer::KeyPair::from_pkcs8(&ecdsa)
            .unwrap()
            .public_key()
            .public_text();
        assert!(
            other.ecus[0]
                .public_key
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        assert!(other.check().is_ok());
        let mut bad = good;
        bad.ecus[0].public_key =
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
        let error = bad.check().unwrap_err().to_string();
        assert!(error.contains("public_key: is a PEM"), "{error}");
        let error = serde_json::from_value::<EcuRecord>(json!({
            "serial": "", "hardware_id": "gw", "public_key": key
        }))
        .unwrap_err();
        assert!(error.to_string().contains("ECU serial"), "{error}");
    }
}
