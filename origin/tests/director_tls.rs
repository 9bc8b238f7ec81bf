//! The director's HTTPS certificate has a bounded life and is renewed before it ends
//! (`origin::tls`, `origin::http`): a new one is valid 199 days under a CA valid 20 years; a
//! director whose own certificate has fewer than 30 days left serves a renewed one from its
//! director CA, for the same names, without a restart, and records it in the audit log; a
//! certificate given with `--tls-cert` is served as it is, its end exported and warned about.
//! Clients here are rustls clients trusting only the director CA, as depots and vehicles are.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/director_fixture.rs"]
mod director_fixture;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::director_client::ClientTls;
use origin::Origin;
use origin::http::{Listen, Shared, Transport};
use origin::operators::Role;
use origin::tls::{CertificateDays, TlsFiles};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const DAY: i64 = 86_400;

/// A certificate's validity and names, read with x509-parser (not with the code under test).
#[derive(Debug)]
struct Read {
    not_before: i64,
    not_after: i64,
    names: Vec<String>,
}

fn read(der: &[u8]) -> Read {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let names =
        cert.subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                            4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                                .to_string(),
                            _ => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())
                                .to_string(),
                        },
                        other => panic!("unexpected name {other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default();
    Read {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        names,
    }
}

fn pem_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn now() -> i64 {
    i64::try_from(node::clock::unix_now()).unwrap()
}

/// A new origin under `dir`, on the system clock (its operators' certificates must be valid
/// to a real TLS client).
fn new_origin(dir: &Path) -> Origin {
    let origin = Origin::open(
        dir.join("origin"),
        Some(dir.join("offline").into()),
        node::clock::now(),
    )
    .unwrap();
    origin::init(&origin, None).unwrap();
    origin
}

/// The chain a rustls client that trusts only `ca` is served at `addr` for `localhost`: the
/// handshake succeeds only if the chain verifies under the CA at the system clock.
fn served_chain(addr: &str, ca: &Path) -> Vec<CertificateDer<'static>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_chain(ca) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).unwrap();
    }
    connection.peer_certificates().unwrap().to_vec()
}

/// A director of `origin` served as `how` says on a loopback port.
struct Serving {
    runtime: tokio::runtime::Runtime,
    /// `127.0.0.1:PORT`.
    addr: String,
    transport: Transport,
}

fn serve(origin: &Origin, how: &Listen<'_>) -> Serving {
    let bound = director_fixture::bind();
    let transport = origin::http::transport(origin, how).unwrap();
    let addr = bound.listener.local_addr().unwrap().to_string();
    let director = origin::service::Director::open(origin.clone()).unwrap();
    bound.runtime.spawn(origin::http::serve(
        bound.listener,
        transport.clone(),
        Shared::new(director),
        Duration::from_millis(50),
    ));
    Serving {
        runtime: bound.runtime,
        addr,
        transport,
    }
}

impl Serving {
    /// Its `/metrics`, read by a viewer.
    fn metrics(&self, origin: &Origin, out: &Path) -> String {
        let viewer = director_fixture::add_operator(origin, out, "prometheus", &[Role::Viewer]);
        let agent = ClientTls::trusting(&TlsFiles::of(origin).director_ca)
            .unwrap()
            .with_identity(&viewer.certificate, &viewer.key)
            .unwrap()
            .agent(Duration::from_secs(30));
        agent
            .get(&format!("https://{}/metrics", self.addr))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    }
}

fn expiry_sample(not_after: i64) -> String {
    format!("depotmesh_director_tls_certificate_expires_timestamp_seconds {not_after}\n")
}

/// The audit log's entries of the director's certificate renewed.
fn renewals(origin: &Origin) -> Vec<serde_json::Value> {
    if !origin::audit::log_path(origin).exists() {
        return Vec::new();
    }
    origin::audit::entries_of(origin)
        .unwrap()
        .into_iter()
        .filter(|entry| entry["action"] == "director certificate renew")
        .collect()
}

#[test]
fn a_new_director_certificate_is_valid_199_days_under_a_ca_valid_20_years() {
    let dir = tempfile::tempdir().unwrap();
    let before = now();
    let origin = new_origin(dir.path());
    let files = TlsFiles::of(&origin);

    let chain = pem_chain(&files.director_cert);
    assert_eq!(chain.len(), 2);
    let leaf = read(&chain[0]);
    // An hour back for clocks behind the director's, 199 days on: under the CA/Browser Forum's
    // 200.
    assert!(
        (before - 3600 - 60..=now() - 3600).contains(&leaf.not_before),
        "{leaf:?}"
    );
    assert!(
        (before + 199 * DAY..=now() + 199 * DAY).contains(&leaf.not_after),
        "{leaf:?}"
    );
    assert!(leaf.not_after - leaf.not_before < 200 * DAY, "{leaf:?}");
    assert_eq!(leaf.names, ["localhost", "127.0.0.1", "::1"]);

    // The chain carries the very CA certificate clients are given, and both CAs end in 20
    // years, not in the year 4096.
    let director_ca = pem_chain(&files.director_ca);
    assert_eq!(chain[1], director_ca[0]);
    for ca in [&director_ca[0], &pem_chain(&files.operator_ca)[0]] {
        let ca = read(ca);
        let years = (ca.not_after - now()) / (365 * DAY);
        assert_eq!(years, 20, "{ca:?}");
    }

    // Issued again for fewer days and another name: the same CA certificate, unchanged.
    let ca_file = std::fs::read(&files.director_ca).unwrap();
    let days: CertificateDays = "10".parse().unwrap();
    origin::tls::issue_director_cert_valid_for(&origin, &["director.fleet.example".into()], days)
        .unwrap();
    let chain = pem_chain(&files.director_cert);
    let leaf = read(&chain[0]);
    assert!(
        (before + 10 * DAY..=now() + 10 * DAY).contains(&leaf.not_after),
        "{leaf:?}"
    );
    assert_eq!(
        leaf.names,
        ["localhost", "127.0.0.1", "::1", "director.fleet.example"]
    );
    assert_eq!(chain[1], director_ca[0]);
    assert_eq!(std::fs::read(&files.director_ca).unwrap(), ca_file);

    // 1 to 398 days (the CA/Browser Forum's limit from 2020 to 2026): more is refused, naming it.
    for refused in ["0", "399", "-1", "ten"] {
        let error = refused.parse::<CertificateDays>().unwrap_err().to_string();
        assert!(error.contains("1 to 398"), "{refused}: {error}");
    }
    assert_eq!(CertificateDays::new(398).unwrap().get(), 398);
    assert_eq!(CertificateDays::default().get(), 199);
}

#[test]
fn a_director_whose_certificate_ends_within_30_days_serves_a_renewed_one_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let origin = new_origin(dir.path());
    let files = TlsFiles::of(&origin);
    let days = CertificateDays::new(10).unwrap();
    origin::tls::issue_director_cert_valid_for(&origin, &["director.fleet.example".into()], days)
        .unwrap();
    let old = pem_chain(&files.director_cert);
    let old_key = std::fs::read(&files.director_key).unwrap();
    assert!(read(&old[0]).not_after < now() + 11 * DAY);

    let serving = serve(&origin, &Listen::OriginTls);
    let served = served_chain(&serving.addr, &files.director_ca);
    let renewed = read(&served[0]);
    assert_ne!(served[0], old[0]);
    assert!(renewed.not_after > now() + 30 * DAY, "{renewed:?}");
    assert!(
        renewed.not_after - renewed.not_before < 826 * DAY,
        "{renewed:?}"
    );
    assert_eq!(
        renewed.names,
        ["localhost", "127.0.0.1", "::1", "director.fleet.example"]
    );
    assert_eq!(served[1], pem_chain(&files.director_ca)[0]);
    // Written where the next start reads it, with a new key.
    assert_eq!(pem_chain(&files.director_cert), served);
    assert_ne!(std::fs::read(&files.director_key).unwrap(), old_key);

    let entries = renewals(&origin);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["actor"], "director");
    assert_eq!(entry["detail"]["not_after"], renewed.not_after);
    assert_eq!(
        entry["detail"]["previous_not_after"],
        read(&old[0]).not_after
    );
    assert_eq!(
        entry["detail"]["fingerprint"],
        origin::tls::fingerprint(&served[0])
    );
    assert!(origin::audit::verify_origin(&origin, None).is_ok());

    let metrics = serving.metrics(&origin, dir.path());
    assert!(
        metrics.contains(&expiry_sample(renewed.not_after)),
        "{metrics}"
    );
}

#[test]
fn a_running_director_presents_a_renewed_certificate_to_the_next_client_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let origin = new_origin(dir.path());
    let files = TlsFiles::of(&origin);
    let serving = serve(&origin, &Listen::OriginTls);
    let first = served_chain(&serving.addr, &files.director_ca);
    // Not due: nothing renewed at start.
    assert_eq!(pem_chain(&files.director_cert), first);
    assert!(renewals(&origin).is_empty());

    // What the service's hourly check does once fewer than 30 days are left.
    let certificate = serving.transport.certificate().unwrap();
    assert!(certificate.renewable());
    assert!(!certificate.due(now()));
    assert!(certificate.due(certificate.not_after() - 29 * DAY));
    let renewal = certificate.renew(&origin, now()).unwrap();

    let second = served_chain(&serving.addr, &files.director_ca);
    assert_ne!(second[0], first[0]);
    assert_eq!(read(&second[0]).not_after, renewal.not_after);
    assert_eq!(renewal.previous_not_after, read(&first[0]).not_after);
    assert_eq!(certificate.not_after(), renewal.not_after);
    assert_eq!(pem_chain(&files.director_cert), second);
    drop(serving.runtime);
}

#[test]
fn a_company_certificate_is_served_as_given_never_renewed_and_its_end_exported() {
    let dir = tempfile::tempdir().unwrap();
    let origin = new_origin(dir.path());
    let files = TlsFiles::of(&origin);
    let (cert, key) = company_certificate(dir.path(), &origin, &files);
    let given = pem_chain(&cert);
    origin::tls::issue_director_cert(&origin, &[]).unwrap();
    let own = std::fs::read(&files.director_cert).unwrap();

    let how = Listen::Tls {
        cert: &cert,
        key: &key,
    };
    let serving = serve(&origin, &how);
    let served = served_chain(&serving.addr, &files.director_ca);
    assert_eq!(served, given);
    let certificate = serving.transport.certificate().unwrap();
    assert!(!certificate.renewable());
    assert!(certificate.due(now()));
    assert!(certificate.renew(&origin, now()).is_err());
    assert_eq!(served_chain(&serving.addr, &files.director_ca), given);
    assert_eq!(pem_chain(&cert), given);
    assert_eq!(std::fs::read(&files.director_cert).unwrap(), own);
    assert!(renewals(&origin).is_empty());

    let metrics = serving.metrics(&origin, dir.path());
    assert!(
        metrics.contains(&expiry_sample(read(&given[0]).not_after)),
        "{metrics}"
    );
}

/// The company's PKI, played by the origin's director CA: a certificate with 10 days left and
/// its key, copied outside the origin as a company would hand them over.
fn company_certificate(dir: &Path, origin: &Origin, files: &TlsFiles) -> (PathBuf, PathBuf) {
    origin::tls::issue_director_cert_valid_for(origin, &[], CertificateDays::new(10).unwrap())
        .unwrap();
    let (cert, key) = (dir.join("company.pem"), dir.join("company.key"));
    std::fs::copy(&files.director_cert, &cert).unwrap();
    std::fs::copy(&files.director_key, &key).unwrap();
    (cert, key)
}

/// `origin serve` with `args`, until its log has a line containing each of `wanted` (or 20
/// seconds have passed); returns its log.
fn serve_log(origin: &Origin, args: &[&str], wanted: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_origin"))
        .arg("--dir")
        .arg(&origin.dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    while !wanted.iter().all(|w| log.contains(w)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
            }
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    log
}

/// Whether a log line says the certificate issued for 10 days a moment ago ends in 10 days
/// (or 9, a second later).
fn in_10_days(line: &str) -> bool {
    line.contains("expires in 10 days") || line.contains("expires in 9 days")
}

#[test]
fn origin_serve_warns_at_start_of_a_certificate_ending_within_30_days() {
    let dir = tempfile::tempdir().unwrap();
    let origin = new_origin(dir.path());
    let files = TlsFiles::of(&origin);
    let (cert, key) = company_certificate(dir.path(), &origin, &files);

    // The company's: warned about, with what to do.
    let log = serve_log(
        &origin,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &["WARN", "restart"],
    );
    let warning = log.lines().find(|l| l.contains("WARN")).unwrap_or_default();
    assert!(
        in_10_days(warning) && warning.contains("--tls-cert"),
        "{log}"
    );
    assert!(!log.contains("renewed"), "{log}");
    assert_eq!(pem_chain(&cert), pem_chain(&files.director_cert));

    // The origin's own: warned about, then renewed.
    let log = serve_log(&origin, &[], &["WARN", "renewed"]);
    let warning = log.lines().find(|l| l.contains("WARN")).unwrap_or_default();
    assert!(in_10_days(warning), "{log}");
    let renewed = log
        .lines()
        .find(|l| l.contains("renewed"))
        .unwrap_or_default();
    assert!(renewed.contains("INFO"), "{log}");
    assert!(read(&pem_chain(&files.director_cert)[0]).not_after > now() + 30 * DAY);
    assert_eq!(renewals(&origin).len(), 1);
}
