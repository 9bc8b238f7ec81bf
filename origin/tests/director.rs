//! The director service end to end over HTTP: hundreds of simulated vehicles (each with its own
//! primary and ECU keys, reading its signed director targets from disk and answering with a
//! signed vehicle manifest) against `origin::http` on loopback, on a virtual clock; and the
//! dashboard rendered in headless Chromium.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use node::director_client::ClientTls;
use origin::Origin;
use origin::campaign::{CampaignSpec, Filters, Gates, Wave};
use origin::http::{Gate, Need, RateLimit};
use origin::operators::Role;
use serde_json::{Value, json};

#[path = "common/director_fixture.rs"]
mod director_fixture;
#[path = "common/sim_fleet.rs"]
mod sim_fleet;

const START: u64 = sim_fleet::START;
const CYCLE: u64 = 600;

/// The director targets version a vehicle's registration signs: empty, nothing assigned.
const REGISTERED: u64 = 1;

struct Harness {
    _dir: tempfile::TempDir,
    origin: Origin,
    url: String,
    clock: Arc<AtomicU64>,
    /// With no credential: what a vehicle (or a stranger) is.
    agent: ureq::Agent,
    /// Each operator's client (presenting their certificate) and approval key.
    operators: BTreeMap<&'static str, (ureq::Agent, Option<SigningKey>)>,
    sso: Sso,
    ca: std::path::PathBuf,
    _runtime: tokio::runtime::Runtime,
}

/// The company's single sign-on as far as the director sees it: an issuer, an audience, and
/// the ES256 key it signs tokens with.
struct Sso {
    signing: jsonwebtoken::EncodingKey,
    jwk: jsonwebtoken::jwk::Jwk,
}

const ISSUER: &str = "https://sso.fleet.example/realms/ops";
const AUDIENCE: &str = "urn:depotmesh:director";

impl Sso {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&signing, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        jwk.common.key_id = Some("sso-1".into());
        Self { signing, jwk }
    }

    fn verifier(&self) -> origin::oidc::OidcVerifier {
        let config = origin::oidc::OidcConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            roles_claim: "roles".into(),
            name_claim: "preferred_username".into(),
            ca: None,
            console_client_id: None,
        };
        let jwks = json!({"keys": [self.jwk]}).to_string();
        origin::oidc::OidcVerifier::from_jwks(config, jwks.as_bytes()).unwrap()
    }

    /// A token for `name` with `roles`, signed by `key` (the SSO's own, or a forger's),
    /// for `audience`, valid until `exp`.
    fn token(
        key: &jsonwebtoken::EncodingKey,
        name: &str,
        roles: &[&str],
        audience: &str,
        now: u64,
        exp: u64,
    ) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("sso-1".into());
        let claims = json!({"iss": ISSUER, "aud": audience, "sub": format!("id-{name}"),
            "preferred_username": name, "roles": roles, "iat": now - 10, "exp": exp});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }
}

/// The operators of the harness and their roles.
const OPERATORS: [(&str, &[Role]); 7] = [
    ("provisioning", &[Role::Provisioner]),
    ("alice@fleet-ops", &[Role::ReleaseManager, Role::Approver]),
    ("bob@safety", &[Role::Approver]),
    ("carol@safety", &[Role::Approver, Role::Operator]),
    ("dave@ops", &[Role::Operator]),
    ("victor", &[Role::Viewer]),
    ("audrey", &[Role::Auditor]),
];

struct Vehicle {
    vin: String,
    region: String,
    primary: SigningKey,
    ecu: SigningKey,
}

impl Vehicle {
    fn new(i: usize) -> Self {
        let seed = |kind: u8| {
            let mut bytes = [kind; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(&bytes)
        };
        Self {
            vin: format!("VIN{i:05}"),
            region: format!("region-{}", i % 4),
            primary: seed(1),
            ecu: seed(2),
        }
    }

    fn serial(&self) -> String {
        format!("GW-{}", self.vin)
    }

    fn record(&self) -> Value {
        json!({
            "vin": self.vin,
            "region": self.region,
            "vehicle_type": if self.vin.ends_with(['0', '2', '4', '6', '8']) { "tractor" } else { "van" },
            "home_depot": "depot-1",
            "primary_key": hex::encode(self.primary.verifying_key().as_bytes()),
            "ecus": [{
                "serial": self.serial(),
                "hardware_id": "gateway-v1",
                "public_key": hex::encode(self.ecu.verifying_key().as_bytes()),
                "installed": "gw/1.0.bin",
            }],
        })
    }

    /// The signed vehicle manifest after an install of director targets `version`.
    fn manifest(&self, version: u64, now: u64, installed: &str, outcome: &str) -> Vec<u8> {
        self.manifest_signed(version, now, installed, outcome, &self.primary)
    }

    fn manifest_signed(
        &self,
        version: u64,
        now: u64,
        installed: &str,
        outcome: &str,
        primary: &SigningKey,
    ) -> Vec<u8> {
        let nonce = format!("director-v{version}@{now}");
        let report = proto::uptane::sign_ecu_report(
            &proto::uptane::EcuVersionReport {
                ecu_serial: self.serial(),
                installed_image: installed.into(),
                sha256: "00".repeat(32),
                release_counter: 1,
                nonce,
                attacks_detected: String::new(),
            },
            &self.ecu,
        )
        .unwrap();
        let install = json!({
            "group": format!("director-v{version}"),
            "outcome": outcome,
            "reason": if outcome == "health_failed" { "health check failed: exit 1" } else { "" },
            "bytes": {"yard-wifi": 21_499, "cellular": if self.region == "region-3" { 4_096 } else { 0 }},
        });
        proto::uptane::sign_vehicle_manifest(
            &self.vin,
            &self.serial(),
            &[report],
            Some(&install),
            primary,
        )
        .unwrap()
    }
}

impl Harness {
    fn new() -> Self {
        Self::limited(RateLimit::default())
    }

    /// A harness whose director holds each client to `limit`.
    fn limited(limit: RateLimit) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let origin = sim_fleet::origin_with_releases_at(dir.path(), START);
        let clock = Arc::new(AtomicU64::new(START));
        let ticking = Arc::clone(&clock);
        // Bearer tokens of a single sign-on whose keys the test holds (the provider itself is
        // exercised against a real OpenID provider in tests/oidc.rs and tests/console.rs).
        let sso = Sso::new();
        let gate = Gate::new(
            origin::operators::Operators::path(&origin),
            Some(Arc::new(sso.verifier())),
        );
        let bound = director_fixture::bind();
        let url = bound.url.clone();
        let runtime = bound.serve(
            &origin,
            gate,
            Box::new(move || ticking.load(Ordering::SeqCst)),
            limit,
        );
        let ca = origin::tls::TlsFiles::of(&origin).director_ca;
        let timeout = std::time::Duration::from_secs(60);
        let agent = ClientTls::trusting(&ca).unwrap().agent(timeout);
        let mut operators = BTreeMap::new();
        for (name, roles) in OPERATORS {
            let added =
                director_fixture::add_operator(&origin, &dir.path().join("operators"), name, roles);
            let tls = ClientTls::trusting(&ca)
                .unwrap()
                .with_identity(&added.certificate, &added.key)
                .unwrap();
            let key = added
                .approval_key
                .map(|k| origin::operators::load_approval_key(&k).unwrap());
            operators.insert(name, (tls.agent(timeout), key));
        }
        Self {
            _dir: dir,
            origin,
            url,
            clock,
            agent,
            operators,
            sso,
            ca,
            _runtime: runtime,
        }
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, seconds: u64) {
        self.clock.fetch_add(seconds, Ordering::SeqCst);
    }

    fn client(&self, who: &str) -> &ureq::Agent {
        &self.operators[who].0
    }

    /// POSTs `body` with no credential (as a vehicle does): status and JSON answer.
    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        post_with(&self.agent, &format!("{}{path}", self.url), body)
    }

    /// POSTs `body` as operator `who`.
    fn post_raw_as(&self, who: &str, path: &str, body: &[u8]) -> (u16, Value) {
        post_with(self.client(who), &format!("{}{path}", self.url), body)
    }

    fn post_as(&self, who: &str, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post_raw_as(who, path, body.to_string().as_bytes());
        assert_eq!(status, 200, "{path}: {answer}");
        answer
    }

    /// GETs `path` as the viewer.
    fn get(&self, path: &str) -> String {
        self.client("victor")
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }

    /// Approver `who` signs campaign `id`'s pending statement (approve or resume) with their
    /// approval key, as `origin campaign approve` does: status and answer.
    fn sign(&self, who: &str, id: &proto::CampaignId) -> (u16, Value) {
        let status = self.status(id);
        let statement: proto::director_api::ApprovalStatement =
            serde_json::from_value(status["pending_approval"]["statement"].clone())
                .unwrap_or_else(|e| panic!("{id} awaits no approval ({e}): {status:#}"));
        let key = self.operators[who].1.as_ref().unwrap();
        let body = json!({"signature": statement.sign(key)});
        self.post_raw_as(
            who,
            &format!("/v1/campaigns/{id}/{}", statement.action),
            body.to_string().as_bytes(),
        )
    }

    /// Waits until no campaign has vehicles whose targets are due to be signed or withdrawn:
    /// the director does that in the background after a decision, and tests read the targets
    /// as a vehicle would once they are signed. Returns the campaigns as they then stand.
    fn settled(&self) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let all: Value = serde_json::from_str(&self.get("/v1/campaigns")).unwrap();
            let due: u64 = all["campaigns"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c["targets_job"]["due"].as_u64())
                .sum();
            if due == 0 {
                return all;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the director's background work never ended: {all:#}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn status(&self, id: &proto::CampaignId) -> Value {
        let all: Value = serde_json::from_str(&self.get("/v1/campaigns")).unwrap();
        all["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id.as_str())
            .cloned()
            .unwrap()
    }

    /// Whether a campaign signed `vin` director targets after those of its registration.
    fn offered(&self, vin: &str) -> bool {
        self.targets(vin)
            .is_some_and(|(version, _)| version > REGISTERED)
    }

    /// The director targets of `vin` as signed on disk: (version, targets listed).
    fn targets(&self, vin: &str) -> Option<(u64, Vec<String>)> {
        let (version, signed) = self
            .origin
            .latest(
                &origin::director::vehicle_repository(&vin.parse().unwrap()),
                "targets",
            )
            .ok()?;
        Some((
            version,
            signed["targets"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect(),
        ))
    }

    fn audit(&self) -> Vec<Value> {
        origin::audit::entries(&origin::audit::log_path(&self.origin)).unwrap()
    }

    fn fleet(&self, n: usize) -> Vec<Vehicle> {
        let vehicles: Vec<Vehicle> = (0..n).map(Vehicle::new).collect();
        for v in &vehicles {
            self.post_as(
                "provisioning",
                "/v1/vehicles",
                &json!({"vehicle": v.record()}),
            );
        }
        vehicles
    }

    /// One report cycle: every vehicle that holds an assignment of gw/2.0.bin it has not
    /// answered installs it and reports (a vehicle in `fails` fails its health check and
    /// keeps 1.0). Returns how many reported.
    fn cycle(
        &self,
        vehicles: &[Vehicle],
        answered: &mut BTreeMap<String, u64>,
        fails: &dyn Fn(&Vehicle) -> bool,
    ) -> usize {
        // Waves the last cycle (or the ticker) opened are signed first.
        self.settled();
        self.advance(CYCLE);
        let mut reported = 0;
        for v in vehicles {
            let Some((version, targets)) = self.targets(&v.vin) else {
                continue;
            };
            if answered.get(&v.vin) == Some(&version) || !targets.contains(&"gw/2.0.bin".into()) {
                continue;
            }
            let (installed, outcome) = if fails(v) {
                ("gw/1.0.bin", "health_failed")
            } else {
                ("gw/2.0.bin", "committed")
            };
            let manifest = v.manifest(version, self.now(), installed, outcome);
            let (status, answer) =
                self.post_raw(&format!("/v1/vehicles/{}/manifest", v.vin), &manifest);
            // After a halt, a vehicle whose assignment was withdrawn in the same cycle answers
            // an old version: refused as a replay, as it should be.
            assert!(
                status == 200 || status == 409,
                "{}: {status} {answer}",
                v.vin
            );
            // A decision this report caused (a halt's withdrawals, a wave's signing) reaches
            // the vehicles before the next one looks, as when it was done in the request.
            if answer["decisions"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
            {
                self.settled();
            }
            answered.insert(v.vin.clone(), version);
            reported += 1;
        }
        // A halt the reports caused withdraws in the background.
        self.settled();
        reported
    }
}

fn spec(id: &str, waves: &[f64]) -> CampaignSpec {
    CampaignSpec {
        id: id.parse().unwrap(),
        release: BTreeMap::from([("gateway-v1".to_string(), "gw/2.0.bin".to_string())]),
        fallback: BTreeMap::from([("gateway-v1".to_string(), "gw/1.0.bin".to_string())]),
        priority: proto::custom::Priority::Fix,
        filters: Filters::default(),
        waves: waves
            .iter()
            .map(|&percent| Wave {
                percent,
                min_soak_secs: 3600,
            })
            .collect(),
        gates: Gates {
            min_success: 0.9,
            max_rollback: 0.05,
            max_failed_health: 0,
            report_timeout_secs: 6 * 3600,
            min_reports: 5,
        },
    }
}

fn post_with(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Value) {
    let mut response = agent.post(url).send(body).unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn create_and_approve(h: &Harness, spec: &CampaignSpec) {
    h.post_as("alice@fleet-ops", "/v1/campaigns", &json!({"spec": spec}));
    // Four eyes: the creator may not approve, even with a valid signature of her own key.
    let (status, answer) = h.sign("alice@fleet-ops", &spec.id);
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("someone else"));
    // One approver is not enough; the second one starts it.
    let (status, answer) = h.sign("bob@safety", &spec.id);
    assert_eq!(
        (status, answer["still_needed"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    assert_eq!(h.status(&spec.id)["state"]["state"], "awaiting_approval");
    let (status, answer) = h.sign("carol@safety", &spec.id);
    assert_eq!(
        (status, answer["still_needed"].as_u64()),
        (200, Some(0)),
        "{answer}"
    );
    // The first wave's targets are signed in the background.
    h.settled();
}

/// A tenth of the fleet (a bad sensor batch) fails the new release's health check.
fn bad_batch(v: &Vehicle) -> bool {
    v.vin.ends_with('3')
}

#[test]
fn ten_percent_failing_health_halts_at_the_canary_within_one_report_cycle() {
    let h = Harness::new();
    let vehicles = h.fleet(400);
    let spec = spec("gw-2.0-canary", &[5.0, 25.0, 100.0]);
    let canary: Vec<&Vehicle> = vehicles
        .iter()
        .filter(|v| spec.plan().wave_of(&v.vin) == 0)
        .collect();
    assert!(
        canary.iter().any(|v| bad_batch(v)),
        "precondition: the canary holds a failing vehicle"
    );
    create_and_approve(&h, &spec);
    let offered: Vec<&Vehicle> = vehicles.iter().filter(|v| h.offered(&v.vin)).collect();
    assert_eq!(offered.len(), canary.len(), "only the canary is offered");

    let mut answered = BTreeMap::new();
    let first_cycle_end = h.now() + CYCLE;
    h.cycle(&vehicles, &mut answered, &bad_batch);
    let status = h.status(&spec.id);
    assert_eq!(status["state"]["state"], "halted", "{status:#}");
    let reason = status["state"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("failed health checks"), "{reason}");
    assert!(reason.contains("wave 1"), "{reason}");
    assert_eq!(status["progress"]["open_wave"], 0);
    let halted_at = status["decisions"][0]["at"].as_u64().unwrap();
    assert!(halted_at <= first_cycle_end, "halted after the first cycle");
    eprintln!(
        "400 vehicles, canary {} ({} in the failing batch): halted {} s after approval, after {} reports: {reason}",
        canary.len(),
        canary.iter().filter(|v| bad_batch(v)).count(),
        halted_at - START,
        answered.len()
    );

    // The reason is in the audit log, decided by the gates.
    let audit = h.audit();
    let halt = audit
        .iter()
        .find(|e| e["action"] == "campaign halt")
        .expect("a halt entry");
    assert_eq!(halt["actor"], "director-gates");
    assert_eq!(halt["detail"]["decision"]["reason"], reason);
    // Each install result is there too, signed by the vehicle's id as actor.
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "vehicle install" && e["detail"]["outcome"] == "health_failed")
    );
    let key = origin::audit::key(&h.origin).unwrap().verifying_key();
    origin::audit::verify(&origin::audit::log_path(&h.origin), &key).unwrap();

    // Nobody outside the canary was ever offered the release; canary vehicles that had not
    // installed it when the campaign halted had it withdrawn (empty director targets).
    for v in &vehicles {
        let (_, targets) = h.targets(&v.vin).unwrap();
        if h.offered(&v.vin) {
            assert_eq!(spec.plan().wave_of(&v.vin), 0, "{}", v.vin);
            let installed_or_failed = answered.contains_key(&v.vin);
            assert!(installed_or_failed || targets.is_empty(), "{}", v.vin);
        } else {
            assert_ne!(spec.plan().wave_of(&v.vin), 0, "{}", v.vin);
            assert!(targets.is_empty(), "{}", v.vin);
        }
    }

    // Time and more cycles do not resume it.
    for _ in 0..6 {
        h.cycle(&vehicles, &mut answered, &|_| false);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(h.status(&spec.id)["state"]["state"], "halted");
    // An approval does.
    // Two approvers' signatures do: the approval's signatures do not count again.
    assert_eq!(h.sign("carol@safety", &spec.id).0, 200);
    assert_eq!(h.status(&spec.id)["state"]["state"], "halted");
    let (status, resumed) = h.sign("bob@safety", &spec.id);
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["decision"]["by"], "carol@safety and bob@safety");
    assert_eq!(h.status(&spec.id)["state"]["state"], "running");
    // `origin audit verify` checks both decisions' signatures again, from the log alone;
    // whoever can write the director's database or log but holds no approver's key cannot
    // make one up.
    let log = h.audit();
    assert_eq!(origin::approvals::audit(&log), Ok(2));
    let approve = log
        .iter()
        .position(|e| e["action"] == "campaign approve")
        .unwrap();
    for (tamper, needle) in [
        ("one approver twice", "1 distinct approver(s), 2 needed"),
        ("the creator", "approved their own campaign"),
        ("another signature", "does not verify"),
        ("another key", "not an approval key the log recorded"),
    ] {
        let mut forged = log.clone();
        let approvals = &mut forged[approve]["detail"]["approvals"];
        match tamper {
            "one approver twice" => approvals[1] = approvals[0].clone(),
            "the creator" => approvals[0]["by"] = json!("alice@fleet-ops"),
            "another signature" => approvals[0]["signature"] = approvals[1]["signature"].clone(),
            _ => approvals[0]["key"] = json!(hex::encode([7u8; 32])),
        }
        let error = origin::approvals::audit(&forged).unwrap_err().to_string();
        assert!(error.contains(needle), "{tamper}: {error}");
    }
    assert!(h.audit().iter().any(|e| e["action"] == "campaign resume"
        && e["actor"] == "carol@safety and bob@safety"
        && e["detail"]["approvals"].as_array().map(Vec::len) == Some(2)));

    // The metrics say what the page shows.
    let metrics = h.get("/metrics");
    assert!(
        metrics.contains(
            "depotmesh_campaign_vehicles{campaign=\"gw-2.0-canary\",status=\"health_failed\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("depotmesh_director_manifests_total{result=\"accepted\"}"));
}

#[test]
fn a_good_release_walks_through_every_wave_and_every_vehicle_reports_it() {
    let h = Harness::new();
    let vehicles = h.fleet(200);
    let spec = spec("gw-2.0-good", &[1.0, 5.0, 25.0, 100.0]);
    create_and_approve(&h, &spec);
    let mut answered = BTreeMap::new();
    let mut cycles = 0;
    while h.status(&spec.id)["state"]["state"] == "running" {
        h.cycle(&vehicles, &mut answered, &|_| false);
        // Let the service's ticker see the new time (soak times pass without reports).
        std::thread::sleep(std::time::Duration::from_millis(120));
        cycles += 1;
        assert!(cycles < 100, "{:#}", h.status(&spec.id));
    }
    let status = h.status(&spec.id);
    assert_eq!(status["state"]["state"], "completed", "{status:#}");
    let decisions: Vec<String> = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| d["decision"]["decision"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(decisions, ["advance", "advance", "advance", "complete"]);
    assert_eq!(status["progress"]["eligible"]["committed"], 200);
    let p50 = status["progress"]["time_to_update_secs"][0]
        .as_u64()
        .unwrap();
    assert!(p50 >= CYCLE, "{p50}");
    // Bytes by region and link class, from the signed manifests.
    let cellular = status["bytes"]["region-3"]["cellular"].as_u64().unwrap();
    assert!(cellular > 0 && cellular % 4096 == 0, "{cellular}");
    assert!(status["bytes"]["region-0"]["yard-wifi"].as_u64().unwrap() > 0);
    // The registry knows what each vehicle runs.
    let registry: Value = serde_json::from_str(&h.get("/v1/vehicles")).unwrap();
    assert!(
        registry
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["ecus"][0]["installed"] == "gw/2.0.bin")
    );
    let key = origin::audit::key(&h.origin).unwrap().verifying_key();
    let entries = origin::audit::verify(&origin::audit::log_path(&h.origin), &key).unwrap();
    assert!(entries > 400, "{entries}");
}

#[test]
fn unsigned_replayed_mismatched_and_unknown_manifests_are_refused() {
    let h = Harness::new();
    let vehicles = h.fleet(40);
    let mut spec = spec("gw-2.0-all", &[100.0]);
    spec.gates.max_failed_health = 100;
    spec.gates.max_rollback = 1.0;
    create_and_approve(&h, &spec);
    let v = &vehicles[0];
    let (version, _) = h.targets(&v.vin).unwrap();
    let path = format!("/v1/vehicles/{}/manifest", v.vin);
    let now = h.now();

    // Signed by another key than the registered primary.
    let forged = v.manifest_signed(
        version,
        now,
        "gw/2.0.bin",
        "committed",
        &vehicles[1].primary,
    );
    let (status, answer) = h.post_raw(&path, &forged);
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("not signed by the registered key")
    );
    // For another vehicle.
    let (status, answer) = h.post_raw(
        &format!("/v1/vehicles/{}/manifest", vehicles[1].vin),
        &v.manifest(version, now, "gw/2.0.bin", "committed"),
    );
    assert_eq!(status, 403, "{answer}");
    // Not JSON; a version never signed; an unknown vehicle.
    assert_eq!(h.post_raw(&path, b"{not json").0, 403);
    let (status, answer) = h.post_raw(
        &path,
        &v.manifest(version + 5, now, "gw/2.0.bin", "committed"),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("never signed"));
    assert_eq!(
        h.post_raw(
            "/v1/vehicles/NOPE/manifest",
            &v.manifest(version, now, "x", "committed")
        )
        .0,
        404
    );

    // The real one is accepted; sent again (a lost answer) it is acknowledged, not counted.
    let good = v.manifest(version, now, "gw/2.0.bin", "committed");
    let (status, answer) = h.post_raw(&path, &good);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcomes"]["gw-2.0-all"], "committed");
    let (status, answer) = h.post_raw(&path, &good);
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    // Another manifest for the same nonce: a replay.
    h.advance(1);
    let other = v.manifest(version, now, "gw/1.0.bin", "rolled_back");
    let (status, answer) = h.post_raw(&path, &other);
    assert_eq!(status, 409, "{answer}");
    // After an abort the vehicle is sent the fallback; it installs it and answers the new
    // version; the manifest of the old one is then a replay.
    h.post_as(
        "dave@ops",
        "/v1/campaigns/gw-2.0-all/abort",
        &json!({"reason": "supplier recall"}),
    );
    h.settled();
    let (new_version, targets) = h.targets(&v.vin).unwrap();
    assert!(new_version > version);
    assert_eq!(
        targets,
        ["gw/1.0.bin"],
        "the fallback for a vehicle that installed"
    );
    let back = v.manifest(new_version, h.now(), "gw/1.0.bin", "committed");
    assert_eq!(h.post_raw(&path, &back).0, 200);
    let (status, answer) = h.post_raw(&path, &good);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("answered already")
    );
    assert_eq!(
        h.status(&"gw-2.0-all".parse().unwrap())["state"]["state"],
        "aborted"
    );
    let metrics = h.get("/metrics");
    for line in [
        "result=\"accepted\"} 2",
        "result=\"duplicate\"} 1",
        "result=\"replayed\"} 2",
        "result=\"unknown_vehicle\"} 1",
        "result=\"rejected\"} 4",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[test]
fn bad_requests_are_refused_by_name() {
    let h = Harness::new();
    h.fleet(3);
    for (hardware, target, needle) in [
        ("brake-v9", "gw/2.0.bin", "brake-v9"),
        ("gateway-v1", "gw/9.9.bin", "does not list gw/9.9.bin"),
    ] {
        let mut bad = spec("gw-bad", &[50.0, 100.0]);
        bad.release.insert(hardware.into(), target.into());
        let request = json!({"spec": bad}).to_string();
        let (status, answer) =
            h.post_raw_as("alice@fleet-ops", "/v1/campaigns", request.as_bytes());
        assert_eq!(status, 400);
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(needle), "{error}");
    }
    for (who, path, body, needle) in [
        ("alice@fleet-ops", "/v1/campaigns", "[]", "JSON object"),
        (
            "alice@fleet-ops",
            "/v1/campaigns",
            "{\"spec\": {}}",
            "field spec",
        ),
        // Who acts is never a field of the request.
        (
            "alice@fleet-ops",
            "/v1/campaigns",
            "{\"actor\": \"bob\", \"spec\": {}}",
            "unknown field `actor`",
        ),
        (
            "bob@safety",
            "/v1/campaigns/none/approve",
            "{\"signature\": \"00\"}",
            "no campaign none",
        ),
        ("dave@ops", "/v1/campaigns/none/halt", "{}", "field reason"),
        (
            "provisioning",
            "/v1/vehicles",
            "{\"vehicle\": {\"vin\": \"V\"}}",
            "field vehicle",
        ),
    ] {
        let (status, answer) = h.post_raw_as(who, path, body.as_bytes());
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{path}: {answer}"
        );
    }
}

#[test]
fn the_dashboard_renders_real_campaigns_in_headless_chromium() {
    let browser = director_fixture::chromium();
    let h = Harness::new();
    let vehicles = h.fleet(400);
    // One campaign halts in its canary (a bad batch in regions 0 and 1); another, for regions
    // 2 and 3, runs a good release through its first waves.
    let mut bad = spec("gw-2.0-north", &[5.0, 25.0, 100.0]);
    bad.filters.regions = vec!["region-0".into(), "region-1".into()];
    let mut good = spec("gw-2.0-south", &[10.0, 50.0, 100.0]);
    good.filters.regions = vec!["region-2".into(), "region-3".into()];
    good.waves.iter_mut().for_each(|w| w.min_soak_secs = 1200);
    create_and_approve(&h, &bad);
    create_and_approve(&h, &good);
    let mut answered = BTreeMap::new();
    let fails = |v: &Vehicle| (v.region == "region-0" || v.region == "region-1") && bad_batch(v);
    for _ in 0..3 {
        h.cycle(&vehicles, &mut answered, &fails);
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let north = h.status(&"gw-2.0-north".parse().unwrap());
    let south = h.status(&"gw-2.0-south".parse().unwrap());
    assert_eq!(north["state"]["state"], "halted", "{north:#}");
    assert_eq!(south["state"]["state"], "running", "{south:#}");
    assert!(
        south["progress"]["open_wave"].as_u64().unwrap() >= 1,
        "{south:#}"
    );

    let out = director_fixture::output_dir("director-dashboard");
    let screenshot = out.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    // A viewer signed in with the single sign-on's token.
    let viewer = Sso::token(
        &h.sso.signing,
        "victor",
        &["viewer"],
        AUDIENCE,
        h.now(),
        h.now() + 3600,
    );
    let url = format!("{}/#access_token={viewer}", h.url);
    // Chromium trusts the director's key by its SPKI hash: the pin an operator's browser
    // policy would carry for the embedded default.
    let pin = format!(
        "--ignore-certificate-errors-spki-list={}",
        director_fixture::director_pin(&h.origin)
    );
    let common = [
        pin.as_str(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1400,1600",
        "--virtual-time-budget=5000",
    ];
    let dom = std::process::Command::new(&browser)
        .args(common)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    std::fs::write(out.join("dashboard.html"), &dom).unwrap();
    let reason = north["state"]["reason"].as_str().unwrap();
    for needle in [
        "gw-2.0-north",
        "gw-2.0-south",
        "halted",
        "running",
        "approved by bob@safety",
        "region:region-0",
        "yard-wifi",
        "time to update p50",
    ] {
        assert!(
            dom.contains(needle),
            "the rendered page lacks {needle:?}: {dom}"
        );
    }
    assert!(
        dom.contains(&reason.replace('>', "&gt;").replace('<', "&lt;")),
        "the halt reason {reason:?} is not on the page"
    );

    let shot = std::process::Command::new(&browser)
        .args(common)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        screenshot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    // The screenshot shows the halted campaign's red (badge, reason, failed-health bar) and
    // the committed vehicles' green bars.
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&screenshot).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let count = |rgb: [u8; 3]| {
        pixels[..info.buffer_size()]
            .chunks(channels)
            .filter(|p| p[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 6))
            .count()
    };
    let red = count([0xc6, 0x28, 0x28]);
    let green = count([0x2e, 0x7d, 0x32]);
    eprintln!(
        "dashboard screenshot {} ({}x{}): {red} halted-red pixels, {green} committed-green pixels",
        screenshot.display(),
        info.width,
        info.height
    );
    assert!(red > 5_000, "too little halted red: {red}");
    assert!(green > 2_000, "too little committed green: {green}");
}

/// What one credential is, for the access table.
enum Credential {
    /// No certificate, no token.
    None,
    /// An operator's certificate.
    Operator(&'static str),
    /// A bearer token, and the roles it gives if it verifies (None: it must not).
    Token(String, Option<Vec<Role>>),
    /// A client certificate the TLS handshake must refuse (expired, or not from the operator
    /// CA), as (certificate, key) files.
    Refused(std::path::PathBuf, std::path::PathBuf),
    /// A certificate from the operator CA of an operator since removed.
    Removed(std::path::PathBuf, std::path::PathBuf),
}

/// Writes a client certificate for `name` signed by a CA of the attacker's own (same names as
/// the origin's operator CA), or by the origin's operator CA but expired; returns the files.
fn bad_certificate(
    h: &Harness,
    name: &str,
    expired: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = h._dir.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = if expired {
        let now = h.now() as i64;
        let c = origin::tls::issue_operator_cert(&h.origin, name, now - 3 * 86_400, now - 86_400)
            .unwrap();
        // Registered, so only its expiry is wrong.
        let path = origin::operators::Operators::path(&h.origin);
        let mut registry = origin::operators::Operators::load(&path).unwrap();
        let op = registry.operators.get_mut(&name.parse().unwrap()).unwrap();
        op.certificates.insert(c.fingerprint.clone());
        registry.save(&path).unwrap();
        (c.cert_pem, c.key_pem)
    } else {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "depotmesh operator CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, name);
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let tag = if expired { "expired" } else { "forged" };
    let (c, k) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    (c, k)
}

/// Everything an operator can change or read that a refused request must leave as it was.
fn state(h: &Harness) -> (String, String, usize, String) {
    let operators = std::fs::read_to_string(origin::operators::Operators::path(&h.origin)).unwrap();
    (
        h.get("/v1/campaigns"),
        h.get("/v1/vehicles"),
        h.audit().len(),
        operators,
    )
}

#[test]
fn every_route_times_every_role_and_credential_is_allowed_or_refused_and_counted() {
    let h = Harness::new();
    let vehicles = h.fleet(2);
    h.post_as(
        "alice@fleet-ops",
        "/v1/campaigns",
        &json!({"spec": spec("gw-acl", &[50.0, 100.0])}),
    );
    let now = h.now();
    let forger = jsonwebtoken::EncodingKey::from_ec_der(
        &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_der(),
    );
    let token =
        |key, roles: &[&str], audience, exp| Sso::token(key, "tess", roles, audience, now, exp);
    // An operator added, then removed: their certificate still chains to the operator CA.
    let removed = origin::operators::add(
        &h.origin,
        &origin::Actor::new("admin").unwrap(),
        &"mallory".parse().unwrap(),
        &[Role::Admin].into_iter().collect(),
        30,
        &h._dir.path().join("operators"),
    )
    .unwrap();
    origin::operators::remove(
        &h.origin,
        &origin::Actor::new("admin").unwrap(),
        &"mallory".parse().unwrap(),
    )
    .unwrap();
    let mut credentials: Vec<(String, Credential)> = vec![("none".into(), Credential::None)];
    for (name, _) in OPERATORS {
        credentials.push((name.into(), Credential::Operator(name)));
    }
    credentials.extend([
        (
            "token: approver".into(),
            Credential::Token(
                token(&h.sso.signing, &["approver"], AUDIENCE, now + 600),
                Some(vec![Role::Approver]),
            ),
        ),
        (
            "token: expired".into(),
            Credential::Token(token(&h.sso.signing, &["admin"], AUDIENCE, now - 120), None),
        ),
        (
            "token: wrong audience".into(),
            Credential::Token(
                token(&h.sso.signing, &["admin"], "urn:other", now + 600),
                None,
            ),
        ),
        (
            "token: forged".into(),
            Credential::Token(token(&forger, &["admin"], AUDIENCE, now + 600), None),
        ),
        (
            "token: garbage".into(),
            Credential::Token("not.a.token".into(), None),
        ),
        (
            "certificate: removed operator".into(),
            Credential::Removed(removed.certificate.clone(), removed.key.clone()),
        ),
        ("certificate: expired".into(), {
            let (c, k) = bad_certificate(&h, "bob@safety", true);
            Credential::Refused(c, k)
        }),
        ("certificate: another CA".into(), {
            let (c, k) = bad_certificate(&h, "alice@fleet-ops", false);
            Credential::Refused(c, k)
        }),
    ]);
    let before = state(&h);
    let timeout = std::time::Duration::from_secs(30);
    let mut refused_http: BTreeMap<(String, u16), u64> = BTreeMap::new();
    let mut handshakes_refused = 0;
    let mut checked = 0;
    for &(method, route, need) in origin::http::ROUTES {
        if need == Need::Anyone {
            continue;
        }
        let path = route
            .replace("{id}", "gw-acl")
            .replace("{vin}", &vehicles[0].vin);
        let url = format!("{}{path}", h.url);
        for (label, credential) in &credentials {
            let (agent, bearer, roles): (ureq::Agent, Option<&str>, Option<Vec<Role>>) =
                match credential {
                    Credential::None => (h.agent.clone(), None, None),
                    Credential::Operator(name) => (
                        h.client(name).clone(),
                        None,
                        Some(
                            OPERATORS
                                .iter()
                                .find(|(n, _)| n == name)
                                .unwrap()
                                .1
                                .to_vec(),
                        ),
                    ),
                    Credential::Token(token, roles) => {
                        (h.agent.clone(), Some(token.as_str()), roles.clone())
                    }
                    Credential::Refused(cert, key) | Credential::Removed(cert, key) => {
                        let tls = ClientTls::trusting(&h.ca)
                            .unwrap()
                            .with_identity(cert, key)
                            .unwrap();
                        (tls.agent(timeout), None, None)
                    }
                };
            let result = match (method, bearer) {
                ("GET", None) => agent.get(&url).call(),
                ("GET", Some(t)) => agent
                    .get(&url)
                    .header("authorization", &format!("Bearer {t}"))
                    .call(),
                (_, None) => agent.post(&url).send("{}"),
                (_, Some(t)) => agent
                    .post(&url)
                    .header("authorization", &format!("Bearer {t}"))
                    .send("{}"),
            };
            let may = roles.as_ref().is_some_and(|roles| match need {
                Need::Role(Role::Viewer) | Need::Operator | Need::Anyone => true,
                Need::Role(role) => roles.contains(&role),
            });
            checked += 1;
            match (credential, result) {
                (Credential::Refused(..), Err(_)) => handshakes_refused += 1,
                (Credential::Refused(..), Ok(r)) => {
                    panic!(
                        "{label}: {method} {route} passed the handshake: {}",
                        r.status()
                    )
                }
                (_, Err(e)) => panic!("{label}: {method} {route}: {e}"),
                (_, Ok(mut response)) => {
                    let status = response.status().as_u16();
                    let body = response.body_mut().read_to_string().unwrap();
                    if may {
                        assert!(
                            ![401, 403, 404].contains(&status),
                            "{label} may {method} {route}: {status} {body}"
                        );
                    } else {
                        let expected = if roles.is_some() { 403 } else { 401 };
                        assert_eq!(status, expected, "{label} may not {method} {route}: {body}");
                        let answer: Value = serde_json::from_str(&body).unwrap();
                        assert!(answer["error"].is_string(), "{body}");
                        *refused_http.entry((route.to_string(), status)).or_default() += 1;
                    }
                }
            }
        }
    }
    // The public routes a client reads answer anyone, with no credential at all.
    for &(method, route, need) in origin::http::ROUTES {
        if need == Need::Anyone && method == "GET" {
            let mut response = h.agent.get(&format!("{}{route}", h.url)).call().unwrap();
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap();
            assert_eq!(status, 200, "GET {route}: {body}");
        }
    }
    assert!(checked > 200, "{checked}");
    let guarded = origin::http::ROUTES
        .iter()
        .filter(|&&(_, _, need)| need != Need::Anyone)
        .count();
    assert_eq!(handshakes_refused, 2 * guarded);
    // Nothing any refused request asked for happened (the allowed ones sent `{}`, which no
    // route takes: they changed nothing either).
    assert_eq!(state(&h), before);
    // Every refusal is counted, by route and status.
    let metrics = h.get("/metrics");
    for ((route, status), count) in &refused_http {
        let line = format!(
            "depotmesh_director_refusals_total{{route=\"{route}\",status=\"{status}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let handshakes = metrics
        .lines()
        .find(|l| l.starts_with("depotmesh_director_refusals_total{route=\"TLS handshake\""))
        .unwrap_or_else(|| panic!("no TLS refusals in {metrics}"));
    let counted: usize = handshakes.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= handshakes_refused, "{handshakes}");
}

#[test]
fn a_vehicle_cannot_be_taken_over_by_registering_it_again() {
    let h = Harness::new();
    let vehicles = h.fleet(1);
    let v = &vehicles[0];
    // The attacker's own keys for the victim's VIN.
    let attacker = Vehicle {
        vin: v.vin.clone(),
        region: v.region.clone(),
        primary: SigningKey::from_bytes(&[0xa7; 32]),
        ecu: SigningKey::from_bytes(&[0xa8; 32]),
    };
    let body = json!({"vehicle": attacker.record()}).to_string();
    // With no credential: refused before anything is read.
    assert_eq!(h.post_raw("/v1/vehicles", body.as_bytes()).0, 401);
    // With an operator's certificate but not the provisioner role: refused.
    assert_eq!(
        h.post_raw_as("carol@safety", "/v1/vehicles", body.as_bytes())
            .0,
        403
    );
    // Even the provisioner cannot replace keys by registering again.
    let (status, answer) = h.post_raw_as("provisioning", "/v1/vehicles", body.as_bytes());
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("rotate them"),
        "{answer}"
    );
    let registry: Value = serde_json::from_str(&h.get("/v1/vehicles")).unwrap();
    assert_eq!(
        registry[0]["primary_key"],
        hex::encode(v.primary.verifying_key().as_bytes())
    );
    // So the attacker's signed "health failed" report is refused as not the vehicle's.
    let forged = attacker.manifest(1, h.now(), "gw/1.0.bin", "health_failed");
    let (status, _) = h.post_raw(&format!("/v1/vehicles/{}/manifest", v.vin), &forged);
    assert_eq!(status, 403);
    // A rotation is explicit, by a provisioner, and audited with the old and new keys.
    let new = SigningKey::from_bytes(&[0x55; 32]);
    let rotate = json!({"primary_key": hex::encode(new.verifying_key().as_bytes())}).to_string();
    assert_eq!(
        h.post_raw_as(
            "dave@ops",
            &format!("/v1/vehicles/{}/keys", v.vin),
            rotate.as_bytes()
        )
        .0,
        403
    );
    let (status, answer) = h.post_raw_as(
        "provisioning",
        &format!("/v1/vehicles/{}/keys", v.vin),
        rotate.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    let entry = h
        .audit()
        .into_iter()
        .find(|e| e["action"] == "vehicle rotate keys")
        .unwrap();
    assert_eq!(entry["actor"], "provisioning");
    assert_eq!(
        entry["detail"]["changes"][0]["old"],
        hex::encode(v.primary.verifying_key().as_bytes())
    );
    // Registering the same keys again (a metadata update) is fine.
    let mut same = v.record();
    same["primary_key"] = json!(hex::encode(new.verifying_key().as_bytes()));
    same["region"] = json!("region-9");
    let (status, answer) = h.post_raw_as(
        "provisioning",
        "/v1/vehicles",
        json!({"vehicle": same}).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
}

/// A TLS connection to the harness's director, trusting its CA, as a raw byte stream.
fn raw_tls(h: &Harness) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in origin::tls::read_certs(&h.ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(h.url.trim_start_matches("https://")).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// Reads until the server closes the stream (or errors); returns what it sent and how long
/// that took.
fn until_closed(stream: &mut impl std::io::Read) -> (String, std::time::Duration) {
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn requests_are_bounded_in_size_time_and_rate() {
    use std::io::Write;
    let h = Harness::limited(RateLimit {
        per_sec: 1.0,
        burst: 20.0,
    });
    // A body over the limit: 413, as JSON, and nothing registered.
    let big = format!("{{\"vehicle\": \"{}\"}}", "x".repeat(300 * 1024));
    let (status, answer) = h.post_raw_as("provisioning", "/v1/vehicles", big.as_bytes());
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("262144 bytes"),
        "{answer}"
    );
    // A connection that never starts TLS, one that stops halfway through a request head and
    // one that sends half its body are all dropped within seconds (not held for ever).
    let mut silent = std::net::TcpStream::connect(h.url.trim_start_matches("https://")).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut half_head = raw_tls(&h);
    half_head
        .write_all(b"GET /v1/campaigns HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    half_head.flush().unwrap();
    let mut half_body = raw_tls(&h);
    half_body
        .write_all(
            b"POST /v1/vehicles/V-1/manifest HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"signed\"",
        )
        .unwrap();
    half_body.flush().unwrap();
    let (_, silent_for) = until_closed(&mut silent);
    let (_, head_for) = until_closed(&mut half_head);
    let (answer, body_for) = until_closed(&mut half_body);
    for (what, took) in [
        ("silent", silent_for),
        ("half a head", head_for),
        ("half a body", body_for),
    ] {
        assert!(
            took < std::time::Duration::from_secs(25),
            "{what}: held {took:?}"
        );
    }
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(answer.contains("{\"error\""), "{answer}");
    // Past its burst a client is refused 429, with when to try again; counted.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let response = h
            .client("victor")
            .get(&format!("{}/v1/campaigns", h.url))
            .call()
            .unwrap();
        statuses.push((
            response.status().as_u16(),
            response.headers().get("retry-after").is_some(),
        ));
    }
    assert!(statuses.contains(&(429, true)), "{statuses:?}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let metrics = h.get("/metrics");
    assert!(
        metrics.contains("depotmesh_director_refusals_total{route=\"rate limit\",status=\"429\"}"),
        "{metrics}"
    );
}

/// A libp2p peer id, as a vehicle's node has one.
fn peer_id() -> String {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string()
}

/// The fleet keys nodes are configured with: this origin's fleet key.
fn fleet_keys(h: &Harness) -> proto::membership::FleetKeys {
    origin::fleet::fleet_keys(&h.origin).unwrap()
}

#[test]
fn a_vehicle_enrolled_with_its_mesh_peer_gets_a_membership_and_cannot_be_moved_to_another() {
    let h = Harness::new();
    let v = Vehicle::new(7);
    let (peer, intruder) = (peer_id(), peer_id());
    let mut record = v.record();
    record["peer"] = json!(peer);
    let answer = h.post_as("provisioning", "/v1/vehicles", &json!({"vehicle": record}));
    assert_eq!(answer["registered"], v.vin.as_str());
    let cert: proto::membership::MembershipCert =
        serde_json::from_value(answer["membership"].clone()).unwrap();
    let keys = fleet_keys(&h);
    let membership = keys.verify_cert(&cert, &peer, h.now()).unwrap();
    assert_eq!(membership.role, proto::membership::MemberRole::Vehicle);
    assert_eq!(membership.expires, h.now() + 365 * 86_400);
    assert!(keys.verify_cert(&cert, &intruder, h.now()).is_err());
    let issued = h
        .audit()
        .into_iter()
        .find(|e| e["action"] == "member issue")
        .unwrap();
    assert_eq!(issued["actor"], "provisioning");
    assert_eq!(issued["detail"]["peer"], peer.as_str());

    // The same VIN registered again with another peer id is refused; the registry keeps the
    // first, and no certificate is issued for the other.
    let mut other = v.record();
    other["peer"] = json!(intruder);
    let (status, answer) = h.post_raw_as(
        "provisioning",
        "/v1/vehicles",
        json!({"vehicle": other}).to_string().as_bytes(),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("peer"),
        "{answer}"
    );
    let registry: Value = serde_json::from_str(&h.get("/v1/vehicles")).unwrap();
    assert_eq!(registry[0]["peer"], peer.as_str());
    let issued = h
        .audit()
        .into_iter()
        .filter(|e| e["action"] == "member issue")
        .count();
    assert_eq!(issued, 1);
    // Registered again without a peer id (an older tool): it keeps its peer, gets no new
    // certificate.
    let answer = h.post_as(
        "provisioning",
        "/v1/vehicles",
        &json!({"vehicle": v.record()}),
    );
    assert!(answer.get("membership").is_none(), "{answer}");
    let registry: Value = serde_json::from_str(&h.get("/v1/vehicles")).unwrap();
    assert_eq!(registry[0]["peer"], peer.as_str());
    // A peer id that is not one is refused, naming it.
    let mut bad = v.record();
    bad["peer"] = json!("12D3KooW");
    let (status, answer) = h.post_raw_as(
        "provisioning",
        "/v1/vehicles",
        json!({"vehicle": bad}).to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("12D3KooW"),
        "{answer}"
    );

    // A replaced gateway: the provisioner changes the peer id explicitly; the new one gets
    // its certificate, the old one is revoked.
    let (status, answer) = h.post_raw_as(
        "provisioning",
        &format!("/v1/vehicles/{}/keys", v.vin),
        json!({"peer": intruder}).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    let cert: proto::membership::MembershipCert =
        serde_json::from_value(answer["membership"].clone()).unwrap();
    assert!(keys.verify_cert(&cert, &intruder, h.now()).is_ok());
    let registry: Value = serde_json::from_str(&h.get("/v1/vehicles")).unwrap();
    assert_eq!(registry[0]["peer"], intruder.as_str());
    let list: proto::membership::SignedRevocations =
        serde_json::from_str(&get_anonymous(&h, "/v1/fleet/revocations")).unwrap();
    let list = keys.verify_revocations(&list, 0).unwrap();
    assert!(list.revokes(&peer) && !list.revokes(&intruder));
    let rotated = h
        .audit()
        .into_iter()
        .find(|e| e["action"] == "vehicle rotate keys")
        .unwrap();
    assert_eq!(rotated["detail"]["changes"][0]["old"], peer.as_str());
}

#[test]
fn a_vehicle_renews_its_membership_with_its_primary_key_and_nobody_else_can() {
    let h = Harness::new();
    let v = Vehicle::new(8);
    let (peer, other) = (peer_id(), peer_id());
    let mut record = v.record();
    record["peer"] = json!(peer);
    h.post_as("provisioning", "/v1/vehicles", &json!({"vehicle": record}));
    let keys = fleet_keys(&h);
    let vin: proto::Vin = v.vin.parse().unwrap();
    let path = format!("/v1/vehicles/{}/membership", v.vin);
    let renewal = |peer: &str, at: u64, key: &SigningKey| {
        proto::director_api::RenewalStatement {
            vin: &vin,
            peer,
            at,
        }
        .sign(key)
        .unwrap()
    };
    let ask = |request: &proto::director_api::RenewMembership| {
        h.post_raw(&path, serde_json::to_string(request).unwrap().as_bytes())
    };

    // Eleven months on, the vehicle asks with no credential but its primary key's signature.
    h.advance(330 * 86_400);
    let (status, answer) = ask(&renewal(&peer, h.now(), &v.primary));
    assert_eq!(status, 200, "{answer}");
    let cert: proto::membership::MembershipCert = serde_json::from_value(answer).unwrap();
    let renewed = keys.verify_cert(&cert, &peer, h.now()).unwrap();
    assert_eq!(renewed.expires, h.now() + 365 * 86_400);
    let issued = h
        .audit()
        .into_iter()
        .rev()
        .find(|e| e["action"] == "member issue")
        .unwrap();
    assert_eq!(issued["actor"], format!("vehicle {}", v.vin));

    // Refused: another key, another peer, a stale or future statement, an unknown VIN, a
    // malformed body; each says why, and nothing more is issued.
    let before = h.audit().len();
    let cases = [
        (renewal(&peer, h.now(), &v.ecu), 403, "primary key"),
        (
            renewal(&other, h.now(), &v.primary),
            409,
            "not enrolled with peer",
        ),
        (renewal(&peer, h.now() - 600, &v.primary), 403, "apart"),
        (renewal(&peer, h.now() + 600, &v.primary), 403, "apart"),
    ];
    for (request, code, words) in cases {
        let (status, answer) = ask(&request);
        assert_eq!(status, code, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{answer}"
        );
    }
    let (status, _) = h.post_raw(
        "/v1/vehicles/NOBODY-1/membership",
        serde_json::to_string(&renewal(&peer, h.now(), &v.primary))
            .unwrap()
            .as_bytes(),
    );
    assert_eq!(status, 404);
    let (status, answer) = h.post_raw(&path, br#"{"peer": "x"}"#);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        h.audit().len(),
        before,
        "a refused renewal issued something"
    );

    // A revoked peer is never renewed.
    h.post_as("provisioning", "/v1/fleet/revoke", &json!({"peer": peer}));
    let (status, answer) = ask(&renewal(&peer, h.now(), &v.primary));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("revoked"),
        "{answer}"
    );
}

/// GET `path` with no credential, as a vehicle or depot does.
fn get_anonymous(h: &Harness, path: &str) -> String {
    let mut response = h.agent.get(&format!("{}{path}", h.url)).call().unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.body_mut().read_to_string().unwrap()
}

#[test]
fn revocations_are_public_signed_and_changed_by_provisioners_only() {
    let h = Harness::new();
    let keys = fleet_keys(&h);
    // With no credential at all, through the client nodes use.
    let tls = ClientTls::trusting(&h.ca).unwrap();
    let client = node::director_client::DirectorClient::new(
        &h.url,
        std::time::Duration::from_secs(30),
        &tls,
    )
    .unwrap();
    let first = client.revocations().unwrap();
    assert_eq!(keys.verify_revocations(&first, 0).unwrap().version, 0);
    // A node holding the list in force hears 304, not the list again.
    assert_eq!(client.revocations_newer_than(0).unwrap(), None);
    assert_eq!(
        client.revocations_newer_than(7).unwrap(),
        Some(first.clone())
    );

    let peer = peer_id();
    let body = json!({"peer": peer}).to_string();
    // A viewer, an operator without the role, and nobody at all are refused; nothing changes.
    assert_eq!(
        h.post_raw_as("victor", "/v1/fleet/revoke", body.as_bytes())
            .0,
        403
    );
    assert_eq!(
        h.post_raw_as("dave@ops", "/v1/fleet/revoke", body.as_bytes())
            .0,
        403
    );
    assert_eq!(h.post_raw("/v1/fleet/revoke", body.as_bytes()).0, 401);
    assert_eq!(client.revocations().unwrap(), first);

    let answer = h.post_as("provisioning", "/v1/fleet/revoke", &json!({"peer": peer}));
    let list: proto::membership::SignedRevocations = serde_json::from_value(answer).unwrap();
    let verified = keys.verify_revocations(&list, 0).unwrap();
    assert!(verified.version == 1 && verified.revokes(&peer));
    assert_eq!(client.revocations().unwrap(), list);
    let entry = h
        .audit()
        .into_iter()
        .find(|e| e["action"] == "member revoke")
        .unwrap();
    assert_eq!(entry["actor"], "provisioning");
    assert_eq!(entry["detail"]["peer"], peer.as_str());
    assert_eq!(entry["detail"]["version"], 1);
    // The same peer again: the list stays as it is.
    let again = h.post_as("provisioning", "/v1/fleet/revoke", &json!({"peer": peer}));
    assert_eq!(
        serde_json::from_value::<proto::membership::SignedRevocations>(again).unwrap(),
        list
    );
    // A body without a peer id, or with one that is not one, is refused naming it.
    let (status, answer) = h.post_raw_as("provisioning", "/v1/fleet/revoke", b"{}");
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("peer"),
        "{answer}"
    );
    let (status, answer) =
        h.post_raw_as("provisioning", "/v1/fleet/revoke", br#"{"peer": "nobody"}"#);
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("\"nobody\""),
        "{answer}"
    );
    assert_eq!(client.revocations().unwrap().revocations.version, 1);
    assert_eq!(client.revocations_newer_than(0).unwrap(), Some(list));
    assert_eq!(client.revocations_newer_than(1).unwrap(), None);

    // `origin member revoke` run beside the service (another process, the same file): the
    // service serves the new list at once, not the one it read before.
    let other = peer_id();
    origin::fleet::revoke(&h.origin, &origin::Actor::new("admin").unwrap(), &other).unwrap();
    let served = client.revocations_newer_than(1).unwrap().unwrap();
    assert_eq!(served.revocations.version, 2);
    assert!(served.revocations.revokes(&other));
}

#[test]
fn the_service_signs_a_wave_and_withdraws_after_a_halt_in_the_background_and_shows_it() {
    let h = Harness::new();
    let vehicles = h.fleet(120);
    let mut spec = spec("gw-2.0-background", &[100.0]);
    spec.gates.max_failed_health = 100;
    // Approved: the service's worker signs every vehicle's targets after the request.
    create_and_approve(&h, &spec);
    let status = h.status(&spec.id);
    assert_eq!(
        status["targets_job"],
        json!({"work": "sign", "due": 0, "done": 120, "failed": 0}),
        "{status:#}"
    );
    for v in &vehicles {
        assert_eq!(
            h.targets(&v.vin),
            Some((REGISTERED + 1, vec!["gw/2.0.bin".to_string()])),
            "{}",
            v.vin
        );
    }
    let metrics = h.get("/metrics");
    assert!(
        metrics.contains(
            "depotmesh_campaign_targets_job_vehicles{campaign=\"gw-2.0-background\",work=\"sign\",status=\"done\"} 120"
        ),
        "{metrics}"
    );
    // Halted: it withdraws the release from each of them, once.
    h.post_as(
        "dave@ops",
        "/v1/campaigns/gw-2.0-background/halt",
        &json!({"reason": "brakes pulsing"}),
    );
    h.settled();
    let status = h.status(&spec.id);
    assert_eq!(
        status["targets_job"],
        json!({"work": "withdraw", "due": 0, "done": 120, "failed": 0}),
        "{status:#}"
    );
    for v in &vehicles {
        assert_eq!(
            h.targets(&v.vin),
            Some((REGISTERED + 2, Vec::new())),
            "{}",
            v.vin
        );
    }
}
