//! The director's certificates: the origin is its own small PKI for the embedded default.
//!
//! `origin init` makes two certificate authorities, each an ECDSA P-256 key the origin keeps
//! under `keys/` (mode 0600) and a self-signed certificate under `tls/`:
//!
//! - the **director CA** (`tls/director-ca.pem`) issues the director service's server
//!   certificate (`tls/director.pem`, key `keys/director-tls.key`) for its names (`localhost`,
//!   `127.0.0.1`, `::1` and the names given at init). Clients — the origin CLI, depots, vehicles,
//!   netsim — trust this CA and nothing else for the director (`director_ca` in their
//!   configuration, `--director-ca` on the command line): copying one public file pins them to
//!   this origin's director, and the server certificate can be re-issued without touching them.
//! - the **operator CA** (`tls/operator-ca.pem`) issues operators' client certificates
//!   (`origin operator add`); the director asks every client for one and accepts it only under
//!   this CA. Which operator a certificate is, and what that operator may do, the operator
//!   registry says ([`crate::operators`]), so a removed operator is refused at once.
//!
//! A production director takes a certificate and key from the company's PKI instead
//! (`origin serve --tls-cert --tls-key`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::keys;
use crate::repo::Origin;

/// The names the director's certificate is always valid for (a director on loopback).
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const DIRECTOR_CA: &str = "depotmesh director CA";
const OPERATOR_CA: &str = "depotmesh operator CA";

/// Where the origin keeps its TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The director CA's certificate (public: clients trust it).
    pub director_ca: PathBuf,
    /// The director's certificate chain (its certificate, then the CA's).
    pub director_cert: PathBuf,
    /// The director's private key.
    pub director_key: PathBuf,
    /// The operator CA's certificate.
    pub operator_ca: PathBuf,
    /// The operator CA's private key.
    pub operator_ca_key: PathBuf,
    /// The director CA's private key.
    pub director_ca_key: PathBuf,
}

impl TlsFiles {
    /// The files of `origin`.
    pub fn of(origin: &Origin) -> Self {
        let tls = origin.dir.join("tls");
        let keys = origin.dir.join("keys");
        Self {
            director_ca: tls.join("director-ca.pem"),
            director_cert: tls.join("director.pem"),
            director_key: keys.join("director-tls.key"),
            operator_ca: tls.join("operator-ca.pem"),
            operator_ca_key: keys.join("operator-ca.key"),
            director_ca_key: keys.join("director-ca.key"),
        }
    }
}

fn ca_params(common_name: &str) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A CA key and the certificate that signs with it. The certificate is made again from the
/// same name and key each time the CA issues (a certificate it signs names the issuer by its
/// name and key, which are the same as the certificate written at init).
struct Authority {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Authority {
    fn generate(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let cert = ca_params(common_name)?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    fn load(common_name: &str, key_file: &Path) -> anyhow::Result<Self> {
        let pem = fs::read_to_string(key_file)
            .with_context(|| format!("reading {}", key_file.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM private key", key_file.display()))?;
        let cert = ca_params(common_name)?.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    fn save(&self, cert_file: &Path, key_file: &Path) -> anyhow::Result<()> {
        keys::write_secret(key_file, self.key.serialize_pem().as_bytes())?;
        write_public(cert_file, self.cert.pem().as_bytes())
    }
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::write_durably(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Makes the director CA and certificate (for `names` besides [`LOOPBACK_NAMES`]) and the
/// operator CA of a new origin. Refuses to replace existing ones.
pub fn init(origin: &Origin, names: &[String]) -> anyhow::Result<()> {
    let files = TlsFiles::of(origin);
    for existing in [&files.director_ca, &files.operator_ca] {
        if existing.exists() {
            bail!(
                "{} exists; the origin's TLS is already made",
                existing.display()
            );
        }
    }
    let director = Authority::generate(DIRECTOR_CA)?;
    director.save(&files.director_ca, &files.director_ca_key)?;
    issue_director_cert(origin, names)?;
    Authority::generate(OPERATOR_CA)?.save(&files.operator_ca, &files.operator_ca_key)
}

/// Issues the director's server certificate from the director CA, for [`LOOPBACK_NAMES`] and
/// `names`, replacing the one there (a new name needs no change on any client). An origin made
/// before it had TLS gets its CAs made first.
pub fn issue_director_cert(origin: &Origin, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            bail!("--name {name:?} is neither a DNS name nor an IP address");
        }
    }
    let files = TlsFiles::of(origin);
    if !files.director_ca_key.exists() && !files.operator_ca.exists() {
        return init(origin, names);
    }
    let ca = Authority::load(DIRECTOR_CA, &files.director_ca_key)?;
    let mut all: Vec<String> = LOOPBACK_NAMES.iter().map(ToString::to_string).collect();
    all.extend(names.iter().cloned());
    let mut params = CertificateParams::new(all).context("a director name is not valid")?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "depotmesh director");
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    fs::remove_file(&files.director_key).ok();
    keys::write_secret(&files.director_key, key.serialize_pem().as_bytes())?;
    write_public(
        &files.director_cert,
        format!("{}{}", cert.pem(), ca.cert.pem()).as_bytes(),
    )
}

/// An operator's client certificate and key, PEM, and the certificate's SHA-256 (hex): what
/// the operator registry records.
#[derive(Debug, Clone)]
pub struct OperatorCredential {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER, hex.
    pub fingerprint: String,
}

/// Issues a client certificate for operator `name` from the operator CA, valid from
/// `not_before` to `not_after` (Unix seconds).
pub fn issue_operator_cert(
    origin: &Origin,
    name: &str,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<OperatorCredential> {
    let files = TlsFiles::of(origin);
    let ca = Authority::load(OPERATOR_CA, &files.operator_ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = time_of(not_before)?;
    params.not_after = time_of(not_after)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    Ok(OperatorCredential {
        fingerprint: fingerprint(cert.der()),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn time_of(unix: i64) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .with_context(|| format!("{unix} is not a time a certificate can hold"))
}

/// SHA-256 of a certificate's DER, hex: how the registry names a client certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: holds no certificate", path.display());
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("{}: not a PEM private key", path.display()))
}

/// The director's TLS configuration: its certificate chain and key (the origin's, or the
/// given ones), and client certificates asked for and verified under the operator CA (a client
/// without one — a vehicle, an operator with a bearer token — is let through to the
/// authorisation layer, which decides what it may do).
pub fn server_config(
    origin: &Origin,
    cert_and_key: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let files = TlsFiles::of(origin);
    let (cert_file, key_file) = cert_and_key.unwrap_or((&files.director_cert, &files.director_key));
    for needed in [cert_file, &files.operator_ca] {
        if !needed.exists() {
            bail!(
                "{} is missing: an origin made before the director spoke HTTPS; make its \
                 certificates with `origin director-cert --name HOST`",
                needed.display()
            );
        }
    }
    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.operator_ca)? {
        roots
            .add(ca)
            .with_context(|| format!("{}: not a CA certificate", files.operator_ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("building the client certificate verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{}: the key does not match the certificate",
                key_file.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The base64 SHA-256 of the public key (SubjectPublicKeyInfo) of the PEM private key in
/// `key_file`: the pin browsers and HTTP clients take (`--ignore-certificate-errors-spki-list`,
/// HPKP-style pins, curl's `--pinnedpubkey sha256//…`).
pub fn spki_pin(key_file: &Path) -> anyhow::Result<String> {
    use base64::Engine as _;
    use sha2::Digest;
    let pem =
        fs::read_to_string(key_file).with_context(|| format!("reading {}", key_file.display()))?;
    let key = KeyPair::from_pem(&pem)
        .with_context(|| format!("{}: not a PEM private key", key_file.display()))?;
    Ok(
        base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(key.public_key_der())),
    )
}
