//! What the tests run under Node.js: npm packages pinned under `tests/` (a `package.json` and
//! its lock), installed once with `npm ci` under the target directory; and the real OpenID
//! provider (`tests/oidc/provider.mjs`, oidc-provider) on loopback HTTPS with a certificate
//! from a CA made here. Shared by `tests/oidc.rs` and `tests/console.rs` (through `#[path]`).
//!
//! Needs `node` and `npm` on the PATH, and the npm registry the first time.

#![allow(dead_code, clippy::unwrap_used)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// `tests/{package}` installed under the target directory as `{into}`; `npm ci` runs again
/// only when the lock file changed. The package's `.mjs` files are copied in beside
/// `node_modules`, so that they find it.
pub(crate) fn npm_ci(package: &str, into: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(package);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(into);
    let lock = fs::read(source.join("package-lock.json")).unwrap();
    let installed = dir.join("installed-package-lock.json");
    fs::create_dir_all(&dir).unwrap();
    if fs::read(&installed).ok().as_ref() != Some(&lock) {
        fs::copy(source.join("package.json"), dir.join("package.json")).unwrap();
        fs::write(dir.join("package-lock.json"), &lock).unwrap();
        let status = Command::new("npm")
            .args([
                "ci",
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                "--prefix",
            ])
            .arg(&dir)
            .status()
            .expect("npm (with node) must be on the PATH to install the tests' npm packages");
        assert!(status.success(), "npm ci in {} failed", dir.display());
        fs::write(&installed, &lock).unwrap();
    }
    for entry in fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "mjs") {
            fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Reads the first line a child prints on `stdout`, waiting up to `within`; what it prints
/// later is read and dropped (a closed pipe would end the child at its next write).
pub(crate) fn first_line(stdout: impl std::io::Read + Send + 'static, within: Duration) -> String {
    let (ready, started) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        let _ = stdout.read_line(&mut line);
        let _ = ready.send(line);
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    started.recv_timeout(within).unwrap_or_default()
}

/// The running provider: two issuers sharing one key set, and the CA their HTTPS chains to.
/// Dropping it stops it; it also exits when its standard input closes, that is when the test
/// process ends however it ends (a static is never dropped, a killed test runs no destructor).
pub(crate) struct Provider {
    pub(crate) issuer: String,
    pub(crate) other_issuer: String,
    pub(crate) ca: PathBuf,
    /// The key of its HTTPS certificate (for a browser's SPKI pin).
    pub(crate) key: PathBuf,
    process: Child,
    _certificates: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            let log = self._certificates.path().join("provider.log");
            eprintln!(
                "the OpenID provider's log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// Starts the provider; with `console_redirect`, it also registers the console's public
/// client (`depotmesh-console`) redirecting there, and signs people in by login name.
pub(crate) fn start_provider(console_redirect: Option<&str>) -> Provider {
    let dir = npm_ci("oidc", "oidc-provider");
    let certificates = tempfile::tempdir().unwrap();
    let ca = write_certificates(certificates.path());
    let log = certificates.path().join("provider.log");
    let mut child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .arg(certificates.path().join("server.pem"))
        .arg(certificates.path().join("server.key"))
        .args(console_redirect)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("node must be on the PATH");
    let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(60));
    let Ok(addresses) = serde_json::from_str::<Value>(&line) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the OpenID provider did not start: {line:?}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    };
    Provider {
        issuer: addresses["issuer"].as_str().unwrap().to_owned(),
        other_issuer: addresses["other_issuer"].as_str().unwrap().to_owned(),
        ca,
        key: certificates.path().join("server.key"),
        process: child,
        _certificates: certificates,
    }
}

/// A test CA and the provider's certificate for 127.0.0.1; returns the CA's PEM path.
fn write_certificates(dir: &Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "depotmesh test CA");
    let ca_certificate = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_certificate = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca_certificate, &ca_key)
        .unwrap();
    fs::write(dir.join("server.pem"), server_certificate.pem()).unwrap();
    fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    let ca = dir.join("ca.pem");
    fs::write(&ca, ca_certificate.pem()).unwrap();
    ca
}
