//! The console end to end in headless Chromium, driven by a browser-automation client
//! (puppeteer-core, pinned in `tests/console/package.json` and its lock, installed once with
//! `npm ci` under the target directory; `tests/console/driver.mjs`), against a director whose
//! operators sign in through a real OpenID provider (oidc-provider, `tests/oidc/provider.mjs`)
//! that this test starts: a viewer sees the campaign and no buttons; two approvers each approve
//! by a signature their browser makes with their key file; the campaign starts; the auditor's
//! audit view shows both approvers on the approval.
//!
//! Needs `node` and `npm` on the PATH (the npm registry the first time) and Chromium (installed
//! from Debian's archive when missing). The test ends the provider, the driver and the browser
//! it started, also when it fails.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use node::director_client::ClientTls;
use origin::http::Gate;
use origin::oidc::{OidcConfig, OidcVerifier};
use origin::operators::Role;
use serde_json::{Value, json};

#[path = "common/director_fixture.rs"]
mod director_fixture;
#[path = "common/node_fixtures.rs"]
mod node_fixtures;
#[path = "common/sim_fleet.rs"]
mod sim_fleet;

const AUDIENCE: &str = "urn:depotmesh:director";
const CONSOLE_CLIENT: &str = "depotmesh-console";
/// The longest any one browser step may take.
const STEP: Duration = Duration::from_secs(90);

/// Chromium with its DevTools endpoint, and the driver connected to it; both ended on drop.
struct Browser {
    chromium: Child,
    driver: Child,
    commands: Option<ChildStdin>,
    answers: mpsc::Receiver<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium trusting the HTTPS keys `pins` (SPKI SHA-256, base64) and the driver
    /// for the console at `console`.
    fn start(pins: &[String], console: &str) -> Self {
        let chromium = director_fixture::chromium();
        let driver_dir = node_fixtures::npm_ci("console", "console-driver");
        let profile = tempfile::tempdir().unwrap();
        let mut chromium = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--window-size=1400,1200",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!(
                "--ignore-certificate-errors-spki-list={}",
                pins.join(",")
            ))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = chromium.stderr.take().unwrap();
        let (found, endpoint) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                    let _ = found.send(ws.trim().to_owned());
                }
            }
        });
        let Ok(endpoint) = endpoint.recv_timeout(Duration::from_secs(60)) else {
            let _ = chromium.kill();
            let _ = chromium.wait();
            panic!("Chromium did not open its DevTools endpoint");
        };
        let mut driver = match Command::new("node")
            .arg(driver_dir.join("driver.mjs"))
            .arg(&endpoint)
            .arg(console)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
        {
            Ok(driver) => driver,
            Err(e) => {
                let _ = chromium.kill();
                let _ = chromium.wait();
                panic!("node must be on the PATH: {e}");
            }
        };
        let stdout = driver.stdout.take().unwrap();
        let (answer, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if answer.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            chromium,
            commands: driver.stdin.take(),
            driver,
            answers,
            _profile: profile,
        }
    }

    /// Sends `command` to the driver and returns its answer; a failed step fails the test.
    fn run(&mut self, command: &Value) -> Value {
        let started = Instant::now();
        let stdin = self.commands.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let line = self
            .answers
            .recv_timeout(STEP)
            .unwrap_or_else(|e| panic!("{command}: no answer from the driver ({e})"));
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert!(
            answer.get("error").is_none(),
            "{command}: {}",
            answer["error"]
        );
        eprintln!(
            "browser: {} in {:.1} s",
            command["op"],
            started.elapsed().as_secs_f64()
        );
        answer
    }

    /// `login` signs in through the provider in a browser context of their own: the page's
    /// number and who the console says is signed in.
    fn sign_in(&mut self, login: &str) -> (u64, String) {
        let answer = self.run(&json!({"op": "sign_in", "login": login}));
        (
            answer["page"].as_u64().unwrap(),
            answer["whoami"].as_str().unwrap().to_owned(),
        )
    }

    fn look(&mut self, page: u64, view: &str, wait_for: &str) -> Value {
        self.run(&json!({"op": "look", "page": page, "view": view, "wait_for": wait_for}))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver exits when its input closes; the browser is ours to end.
        drop(self.commands.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.driver.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for child in [&mut self.driver, &mut self.chromium] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client presenting operator `name`'s certificate.
fn operator_client(origin: &origin::Origin, added: &origin::operators::Added) -> ureq::Agent {
    let ca = origin::tls::TlsFiles::of(origin).director_ca;
    ClientTls::trusting(&ca)
        .unwrap()
        .with_identity(&added.certificate, &added.key)
        .unwrap()
        .agent(Duration::from_secs(30))
}

fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Value {
    let mut response = agent.post(url).send(body.to_string()).unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(response.status().as_u16(), 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn campaign(agent: &ureq::Agent, url: &str, id: &str) -> Value {
    let text = agent
        .get(format!("{url}/v1/campaigns"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    all["campaigns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap()
}

/// Asserts that the text of a view `seen` shows each of `needles`.
fn assert_shows(seen: &Value, needles: &[&str]) {
    let text = seen["text"].as_str().unwrap();
    for needle in needles {
        assert!(text.contains(needle), "the page lacks {needle:?}: {text}");
    }
}

#[test]
fn viewers_see_approvers_sign_and_auditors_read_through_single_sign_on_in_chromium() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // On the real clock: the provider's tokens carry real times.
    let now = node::clock::unix_now();
    let origin = sim_fleet::origin_with_releases_at(dir.path(), now);
    let bound = director_fixture::bind();
    let url = bound.url.clone();
    let provider = node_fixtures::start_provider(Some(&format!("{url}/")));
    let verifier = OidcVerifier::discover(
        OidcConfig {
            issuer: provider.issuer.clone(),
            audience: AUDIENCE.into(),
            roles_claim: "roles".into(),
            name_claim: "preferred_username".into(),
            ca: Some(provider.ca.clone()),
            console_client_id: Some(CONSOLE_CLIENT.into()),
        },
        Duration::from_secs(10),
    )
    .unwrap();
    let gate = Gate::new(
        origin::operators::Operators::path(&origin),
        Some(Arc::new(verifier)),
    );
    let _director = bound.serve(
        &origin,
        gate,
        Box::new(node::clock::unix_now),
        origin::http::RateLimit::default(),
    );

    // The people: certificates for automation and the release manager; the approvers also
    // hold approval keys (files), and sign in to the console through the single sign-on.
    let keys = dir.path().join("operators");
    let add =
        |name: &str, roles: &[Role]| director_fixture::add_operator(&origin, &keys, name, roles);
    let provisioning = operator_client(&origin, &add("provisioning", &[Role::Provisioner]));
    let alice = operator_client(&origin, &add("alice@fleet-ops", &[Role::ReleaseManager]));
    let bob_key = add("bob@safety", &[Role::Approver]).approval_key.unwrap();
    let carol_key = add("carol@safety", &[Role::Approver]).approval_key.unwrap();
    let dave = operator_client(&origin, &add("dave@ops", &[Role::Operator]));
    for i in 0..12 {
        let record = sim_fleet::vehicle_record(i, 2, 1);
        post(
            &provisioning,
            &format!("{url}/v1/vehicles"),
            &json!({"vehicle": record}),
        );
    }
    // Its canary, 5 % of 12 vehicles, is less than one: a wave that offers no vehicle.
    let spec = sim_fleet::gateway_campaign("gw-2.0-console", &[5.0, 50.0, 100.0], 0.9, 0.05, 3);
    post(
        &alice,
        &format!("{url}/v1/campaigns"),
        &json!({"spec": spec}),
    );

    // The login page's public address answers what the console needs.
    let login: Value = serde_json::from_str(
        &alice
            .get(format!("{url}/v1/login"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(login["sso"]["client_id"], CONSOLE_CLIENT, "{login}");
    assert_eq!(login["sso"]["resource"], AUDIENCE, "{login}");

    let pins = [
        director_fixture::director_pin(&origin),
        origin::tls::spki_pin(&provider.key).unwrap(),
    ];
    let mut browser = Browser::start(&pins, &format!("{url}/"));

    // A viewer: the campaign and its warning, and no button at all.
    let (vera, who) = browser.sign_in("vera");
    assert!(who.contains("vera") && who.contains("viewer"), "{who}");
    let seen = browser.look(vera, "campaigns", "gw-2.0-console");
    assert_shows(
        &seen,
        &[
            "gw-2.0-console",
            "awaiting approval",
            "created by alice@fleet-ops",
            "awaits 2 signatures to approve; none yet",
        ],
    );
    assert_eq!(
        seen["buttons"],
        json!([]),
        "a viewer sees no buttons: {seen}"
    );
    let vehicles = browser.look(vera, "vehicles", "VIN0000011");
    assert!(
        vehicles["text"].as_str().unwrap().contains("VIN0000011"),
        "{vehicles}"
    );
    assert_eq!(vehicles["buttons"], json!([]), "{vehicles}");

    // Two approvers, each signing the pending statement with their own key file.
    let (bob, who) = browser.sign_in("bob@safety");
    assert!(
        who.contains("bob@safety") && who.contains("approver"),
        "{who}"
    );
    let seen = browser.look(bob, "campaigns", "gw-2.0-console");
    assert_eq!(seen["buttons"], json!(["Approve"]), "{seen}");
    assert!(
        seen["text"]
            .as_str()
            .unwrap()
            .contains("depotmesh campaign approval v1\ncampaign: gw-2.0-console\naction: approve"),
        "{seen}"
    );
    let signed = browser.run(
        &json!({"op": "sign", "page": bob, "campaign": "gw-2.0-console",
        "key": bob_key}),
    );
    assert_eq!(signed["failed"], false, "{signed}");
    assert!(
        signed["message"]
            .as_str()
            .unwrap()
            .contains("1 more signature"),
        "{signed}"
    );
    assert_eq!(
        campaign(&alice, &url, "gw-2.0-console")["state"]["state"],
        "awaiting_approval"
    );
    let seen = browser.look(bob, "campaigns", "You signed");
    assert_eq!(seen["buttons"], json!([]), "bob signed already: {seen}");

    let (carol, _) = browser.sign_in("carol@safety");
    let signed = browser.run(
        &json!({"op": "sign", "page": carol, "campaign": "gw-2.0-console",
        "key": carol_key}),
    );
    assert_eq!(signed["failed"], false, "{signed}");
    let status = campaign(&alice, &url, "gw-2.0-console");
    assert_eq!(status["state"]["state"], "running", "{status:#}");
    assert_eq!(
        status["approved_by"], "bob@safety and carol@safety",
        "{status:#}"
    );
    let seen = browser.look(carol, "campaigns", "approved by");
    assert_shows(
        &seen,
        &[
            "running",
            "approved by bob@safety and carol@safety",
            // Its canary is 5 % of 12 vehicles: less than one.
            "wave 1 (5 %) offers no vehicle",
        ],
    );
    assert_eq!(
        seen["buttons"],
        json!([]),
        "nothing left to approve: {seen}"
    );

    // A halt whose reason is markup: the console shows it as text.
    let reason = "<img src=x onerror=\"document.title='owned'\"> brakes <b>pulsing</b>";
    post(
        &dave,
        &format!("{url}/v1/campaigns/gw-2.0-console/halt"),
        &json!({"reason": reason}),
    );
    let seen = browser.look(vera, "campaigns", "pulsing");
    assert!(seen["text"].as_str().unwrap().contains(reason), "{seen}");
    let html = seen["html"].as_str().unwrap();
    assert!(!html.contains("<img") && !html.contains("<b>"), "{html}");
    assert_eq!(
        seen["buttons"],
        json!([]),
        "a viewer sees no buttons: {seen}"
    );

    // The auditor: the approval in the audit log names both approvers.
    let (audrey, _) = browser.sign_in("audrey");
    let audit = browser.look(audrey, "audit", "carol@safety");
    let rows = audit["rows"].as_array().unwrap();
    let approval = rows
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .find(|row| row.contains("campaign approve"))
        .unwrap_or_else(|| panic!("no approval in the audit view: {audit}"));
    for name in ["bob@safety", "carol@safety"] {
        assert!(
            approval.contains(name),
            "{name} not on the approval: {approval}"
        );
    }
    let signs = rows
        .iter()
        .filter(|row| row.to_string().contains("campaign sign"))
        .count();
    assert_eq!(signs, 2, "{audit}");

    let screenshot = director_fixture::output_dir("console").join("console-audit.png");
    browser.run(&json!({"op": "screenshot", "page": audrey, "path": screenshot}));
    let campaigns = director_fixture::output_dir("console").join("console-viewer.png");
    browser.look(vera, "campaigns", "pulsing");
    browser.run(&json!({"op": "screenshot", "page": vera, "path": campaigns}));
    assert!(screenshot.exists() && campaigns.exists());
    eprintln!(
        "console screenshots {} and {}; the whole test took {:.1} s",
        screenshot.display(),
        campaigns.display(),
        started.elapsed().as_secs_f64()
    );
}
