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
//!
//! Every certificate ends: the CAs 20 years after init, the director's after 199 days
//! ([`CertificateDays`]), each starting an hour back for clients whose clocks are behind. The
//! director renews its own while it serves ([`ServedCertificate`]: a new key and certificate
//! from the director CA once fewer than 30 days are left, presented from the next handshake on);
//! a certificate given with `--tls-cert` it only reports and warns about.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::keys;
use crate::repo::Origin;

/// The names the director's certificate is always valid for (a director on loopback).
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const DIRECTOR_CA: &str = "depotmesh director CA";
const OPERATOR_CA: &str = "depotmesh operator CA";

const DAY_SECS: i64 = 86_400;

/// How far back a certificate's validity starts: a client whose clock runs up to an hour behind
/// the origin's accepts a certificate the moment it is made.
const CLOCK_SKEW_SECS: i64 = 3_600;

/// How long a new origin's CAs are valid: 20 years, bounded (rcgen's default ends in the year
/// 4096) but longer than any origin is expected to run, because replacing a CA means giving
/// every client a new file.
const CA_DAYS: i64 = 20 * 365 + 5;

/// The director's own certificate is renewed once fewer than this are left (or it has expired),
/// and a certificate given with `--tls-cert` is warned about from then on.
pub const RENEW_WITHIN: Duration = Duration::from_secs(RENEW_WITHIN_DAYS as u64 * 86_400);

const RENEW_WITHIN_DAYS: u32 = 30;

/// A renewal is valid at least this long, so that it is not due again within a month.
const RENEWAL_MIN_DAYS: u16 = 60;

/// How many days a director certificate is valid: 1 to [`CertificateDays::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertificateDays(u16);

/// A number of days a director certificate cannot be valid for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} days: a director certificate is valid for 1 to 398 days")]
#[non_exhaustive]
pub struct DaysOutOfRange(String);

impl CertificateDays {
    /// 199 days: under the 200 days the CA/Browser Forum's Baseline Requirements allow a
    /// publicly trusted TLS server certificate from 15 March 2026 (ballot SC-081v3; 100 days
    /// from March 2027, 47 from March 2029), a day spare for the hour its validity starts back.
    /// The director's CA is private and `origin serve` renews the certificate itself 30 days
    /// before it ends, so a shorter life costs nothing.
    pub const DEFAULT: Self = Self(199);

    /// 398 days: the Baseline Requirements' cap from September 2020 to March 2026, the most a
    /// director certificate may be given.
    pub const MAX: u16 = 398;

    /// `days`, refused outside 1 to [`Self::MAX`].
    pub fn new(days: u32) -> Result<Self, DaysOutOfRange> {
        match u16::try_from(days) {
            Ok(days @ 1..=Self::MAX) => Ok(Self(days)),
            _ => Err(DaysOutOfRange(days.to_string())),
        }
    }

    /// The number of days.
    pub fn get(self) -> u16 {
        self.0
    }

    fn seconds(self) -> i64 {
        i64::from(self.0) * DAY_SECS
    }
}

impl Default for CertificateDays {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::str::FromStr for CertificateDays {
    type Err = DaysOutOfRange;

    fn from_str(text: &str) -> Result<Self, DaysOutOfRange> {
        text.trim()
            .parse::<u32>()
            .map_err(|_| DaysOutOfRange(text.to_owned()))
            .and_then(Self::new)
    }
}

impl std::fmt::Display for CertificateDays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

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

/// A CA key, the certificate clients were given for it (`tls/*-ca.pem`, PEM) and an issuer
/// made from them for rcgen.
///
/// rcgen signs under a `Certificate` of its own, so the issuer is made again from the CA's
/// name and key at each issue: what a certificate it signs carries of its issuer (the name, and
/// the signature by that key) is the same as the saved certificate's. The saved certificate —
/// its own validity, serial and signature — is what goes into a chain, so that the chain holds
/// exactly the certificate clients trust.
struct Authority {
    key: KeyPair,
    issuer: rcgen::Certificate,
    cert_pem: String,
}

impl Authority {
    /// A new CA valid from an hour before `now` (Unix seconds) for `CA_DAYS`.
    fn generate(common_name: &str, now: i64) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(common_name)?;
        params.not_before = time_of(now - CLOCK_SKEW_SECS)?;
        params.not_after = time_of(now + CA_DAYS * DAY_SECS)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self {
            key,
            issuer: cert,
            cert_pem,
        })
    }

    /// The CA whose certificate is `cert_file` and key `key_file`; refused when the certificate
    /// is not the key's (a chain through it would not verify).
    fn load(common_name: &str, cert_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let pem = fs::read_to_string(key_file)
            .with_context(|| format!("reading {}", key_file.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM private key", key_file.display()))?;
        let cert_pem = fs::read_to_string(cert_file)
            .with_context(|| format!("reading {}", cert_file.display()))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .with_context(|| format!("{}: not a PEM certificate", cert_file.display()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
            anyhow::anyhow!("{}: not an X.509 certificate: {e}", cert_file.display())
        })?;
        if parsed.public_key().raw != key.public_key_der().as_slice() {
            bail!(
                "{} is not the certificate of the key in {}",
                cert_file.display(),
                key_file.display()
            );
        }
        let issuer = ca_params(common_name)?.self_signed(&key)?;
        Ok(Self {
            key,
            issuer,
            cert_pem,
        })
    }

    fn save(&self, cert_file: &Path, key_file: &Path) -> anyhow::Result<()> {
        keys::write_secret(key_file, self.key.serialize_pem().as_bytes())?;
        write_public(cert_file, self.cert_pem.as_bytes())
    }
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::write_durably(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Unix seconds now, on the system clock: what TLS clients check a certificate against (not a
/// director's campaign clock, which a simulation or a test may run elsewhere).
fn system_now() -> i64 {
    i64::try_from(node::clock::unix_now()).unwrap_or(i64::MAX)
}

/// Makes the director CA and certificate (for `names` besides [`LOOPBACK_NAMES`], valid
/// [`CertificateDays::DEFAULT`]) and the operator CA of a new origin. Refuses to replace
/// existing ones.
pub fn init(origin: &Origin, names: &[String]) -> anyhow::Result<()> {
    init_valid_for(origin, names, CertificateDays::DEFAULT)
}

fn init_valid_for(origin: &Origin, names: &[String], days: CertificateDays) -> anyhow::Result<()> {
    let files = TlsFiles::of(origin);
    for existing in [&files.director_ca, &files.operator_ca] {
        if existing.exists() {
            bail!(
                "{} exists; the origin's TLS is already made",
                existing.display()
            );
        }
    }
    let now = system_now();
    let director = Authority::generate(DIRECTOR_CA, now)?;
    director.save(&files.director_ca, &files.director_ca_key)?;
    issue_director_cert_valid_for(origin, names, days)?;
    Authority::generate(OPERATOR_CA, now)?.save(&files.operator_ca, &files.operator_ca_key)
}

/// Issues the director's server certificate from the director CA, for [`LOOPBACK_NAMES`] and
/// `names`, valid [`CertificateDays::DEFAULT`], replacing the one there (a new name needs no
/// change on any client). An origin made before it had TLS gets its CAs made first.
pub fn issue_director_cert(origin: &Origin, names: &[String]) -> anyhow::Result<()> {
    issue_director_cert_valid_for(origin, names, CertificateDays::DEFAULT)
}

/// [`issue_director_cert`], valid `days` from now (from an hour before, for clients whose
/// clocks are behind). A running `origin serve` renews it for as long once fewer than
/// [`RENEW_WITHIN`] are left (at least 60 days).
pub fn issue_director_cert_valid_for(
    origin: &Origin,
    names: &[String],
    days: CertificateDays,
) -> anyhow::Result<()> {
    for name in names {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            bail!("--name {name:?} is neither a DNS name nor an IP address");
        }
    }
    let files = TlsFiles::of(origin);
    if !files.director_ca_key.exists() && !files.operator_ca.exists() {
        return init_valid_for(origin, names, days);
    }
    issue_director(origin, names, days, system_now()).map(drop)
}

/// A director certificate just issued: its chain and key, as written.
struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Issues the director's certificate for [`LOOPBACK_NAMES`] and `names` (those not among them),
/// valid from an hour before `now` to `days` after it, under a new key; writes the key and the
/// chain (the certificate, then the director CA's certificate as saved).
fn issue_director(
    origin: &Origin,
    names: &[String],
    days: CertificateDays,
    now: i64,
) -> anyhow::Result<Issued> {
    let files = TlsFiles::of(origin);
    let ca = Authority::load(DIRECTOR_CA, &files.director_ca, &files.director_ca_key)?;
    let mut all: Vec<String> = LOOPBACK_NAMES.iter().map(ToString::to_string).collect();
    for name in names {
        if !all.contains(name) {
            all.push(name.clone());
        }
    }
    let mut params = CertificateParams::new(all).context("a director name is not valid")?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "depotmesh director");
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = time_of(now - CLOCK_SKEW_SECS)?;
    params.not_after = time_of(now + days.seconds())?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer, &ca.key)?;
    let chain_pem = format!("{}{}", cert.pem(), ca.cert_pem);
    // Both files are written whole beside their places first, then moved there one after the
    // other: a crash leaves the old pair or the new one, but for the instant between the two
    // renames.
    let key_new = files.director_key.with_extension("key.new");
    fs::remove_file(&key_new).ok();
    keys::write_secret(&key_new, key.serialize_pem().as_bytes())?;
    let cert_new = files.director_cert.with_extension("pem.new");
    write_public(&cert_new, chain_pem.as_bytes())?;
    fs::rename(&key_new, &files.director_key)
        .with_context(|| format!("replacing {}", files.director_key.display()))?;
    fs::rename(&cert_new, &files.director_cert)
        .with_context(|| format!("replacing {}", files.director_cert.display()))?;
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .context("the director CA's certificate")?;
    Ok(Issued {
        chain: vec![cert.der().clone(), ca_der],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    })
}

/// What the director's certificate says of itself: when it ends and which names it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// Not Before, Unix seconds.
    pub not_before: i64,
    /// Not After, Unix seconds.
    pub not_after: i64,
    /// Its DNS names and IP addresses (subjectAltName), in its order.
    pub names: Vec<String>,
}

impl CertificateFacts {
    /// The facts of the certificate `der`.
    pub fn of(der: &[u8]) -> anyhow::Result<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
        let mut names = Vec::new();
        let alternative = cert
            .subject_alternative_name()
            .map_err(|e| anyhow::anyhow!("its subjectAltName: {e}"))?;
        for name in alternative.iter().flat_map(|san| &san.value.general_names) {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*ip).map(std::net::IpAddr::from).ok(),
                        _ => None,
                    };
                    names.push(
                        ip.context("an IP address in its subjectAltName is not 4 or 16 bytes")?
                            .to_string(),
                    );
                }
                _ => {}
            }
        }
        Ok(Self {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            names,
        })
    }
}

/// The certificate the director serves, which a renewal replaces while it runs: each TLS
/// handshake takes the one current then ([`ResolvesServerCert`]), so a renewed certificate
/// reaches the next client without a restart.
#[derive(Debug)]
pub struct ServedCertificate {
    current: RwLock<Current>,
    /// The origin's own (renewed from its director CA), or given (`--tls-cert`, never renewed).
    own: bool,
    /// Held while a renewal issues and swaps, so that two checks never renew twice.
    renewing: Mutex<()>,
}

#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    facts: CertificateFacts,
}

/// A renewal of the director's own certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// When the certificate it replaced ended (Unix seconds).
    pub previous_not_after: i64,
    /// When the new one ends (Unix seconds).
    pub not_after: i64,
    /// The names it is for: the replaced certificate's.
    pub names: Vec<String>,
    /// Its days of validity.
    pub days: CertificateDays,
    /// The new certificate's SHA-256 ([`fingerprint`]).
    pub fingerprint: String,
}

/// Why the director's certificate was not renewed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// It was given with `--tls-cert`: its issuer is the company's PKI, not the origin.
    #[error("the director's certificate was given with --tls-cert: the company's PKI renews it")]
    Given,
    /// Issuing from the director CA failed (its key or certificate unreadable, `tls/` or
    /// `keys/` not writable).
    #[error("renewing the director's certificate from its CA: {0:#}")]
    Issue(anyhow::Error),
}

impl ServedCertificate {
    /// The certificate and key in `cert_and_key` (given: never renewed), or the origin's own
    /// (`tls/director.pem`, `keys/director-tls.key`).
    pub fn load(origin: &Origin, cert_and_key: Option<(&Path, &Path)>) -> anyhow::Result<Self> {
        let files = TlsFiles::of(origin);
        let (cert_file, key_file) =
            cert_and_key.unwrap_or((&files.director_cert, &files.director_key));
        if !cert_file.exists() {
            bail!(
                "{} is missing: an origin made before the director spoke HTTPS; make its \
                 certificates with `origin director-cert --name HOST`",
                cert_file.display()
            );
        }
        let chain = read_certs(cert_file)?;
        let key = read_key(key_file)?;
        let current = Current::new(chain, key).with_context(|| {
            format!(
                "{} with the key in {}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        Ok(Self {
            current: RwLock::new(current),
            own: cert_and_key.is_none(),
            renewing: Mutex::new(()),
        })
    }

    fn current(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When the certificate served now ends (Not After, Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.current().facts.not_after
    }

    /// What the certificate served now says of itself.
    pub fn facts(&self) -> CertificateFacts {
        self.current().facts
    }

    /// Whether it is the origin's own, which [`Self::renew`] renews (else it was given with
    /// `--tls-cert`).
    pub fn renewable(&self) -> bool {
        self.own
    }

    /// Whether it is valid longer than [`CertificateDays::MAX`]: one an origin issued before
    /// certificates' lives were bounded (rcgen's default ends in the year 4096).
    pub fn unbounded(&self) -> bool {
        let facts = self.facts();
        facts.not_after - facts.not_before
            > i64::from(CertificateDays::MAX) * DAY_SECS + CLOCK_SKEW_SECS
    }

    /// Whether fewer than [`RENEW_WITHIN`] are left at `now` (Unix seconds, the system clock),
    /// or it has ended: the origin's own is then renewed, a given one warned about.
    pub fn due(&self, now: i64) -> bool {
        self.not_after().saturating_sub(now) < i64::from(RENEW_WITHIN_DAYS) * DAY_SECS
    }

    /// Issues the origin's own certificate again from its director CA, at `now` (Unix seconds,
    /// the system clock), for the same names and as many days as the one it replaces had (at
    /// least 60, so that it is not due again within a month; at most
    /// [`CertificateDays::MAX`]), writes it where the next start reads it, and serves it from
    /// the next handshake on. It is renewed whether due or not: see [`Self::renew_if_due`].
    pub fn renew(&self, origin: &Origin, now: i64) -> Result<Renewal, RenewError> {
        if !self.own {
            return Err(RenewError::Given);
        }
        let _one_at_a_time = self.renewing.lock().unwrap_or_else(PoisonError::into_inner);
        self.renew_held(origin, now)
    }

    /// [`Self::renew`] if it is [`Self::due`] at `now` (`None` if not, as when another check
    /// has just renewed it).
    pub fn renew_if_due(&self, origin: &Origin, now: i64) -> Result<Option<Renewal>, RenewError> {
        if !self.own {
            return Err(RenewError::Given);
        }
        let _one_at_a_time = self.renewing.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.due(now) {
            return Ok(None);
        }
        self.renew_held(origin, now).map(Some)
    }

    /// [`Self::renew`], `renewing` held.
    fn renew_held(&self, origin: &Origin, now: i64) -> Result<Renewal, RenewError> {
        let previous = self.current().facts;
        let lived = (previous.not_after - previous.not_before - CLOCK_SKEW_SECS) / DAY_SECS;
        let days = u16::try_from(lived)
            .unwrap_or(CertificateDays::MAX)
            .clamp(RENEWAL_MIN_DAYS, CertificateDays::MAX);
        let days = CertificateDays(days);
        let issued =
            issue_director(origin, &previous.names, days, now).map_err(RenewError::Issue)?;
        let fingerprint = issued
            .chain
            .first()
            .map(|leaf| fingerprint(leaf))
            .unwrap_or_default();
        let current = Current::new(issued.chain, issued.key).map_err(RenewError::Issue)?;
        let renewal = Renewal {
            previous_not_after: previous.not_after,
            not_after: current.facts.not_after,
            names: current.facts.names.clone(),
            days,
            fingerprint,
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = current;
        Ok(renewal)
    }
}

impl Current {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Self> {
        let leaf = chain.first().context("holds no certificate")?;
        let facts = CertificateFacts::of(leaf)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider)
            .context("the key does not match the certificate")?;
        Ok(Self {
            key: Arc::new(key),
            facts,
        })
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        ))
    }
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
    let ca = Authority::load(OPERATOR_CA, &files.operator_ca, &files.operator_ca_key)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    params.distinguished_name = subject;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = time_of(not_before)?;
    params.not_after = time_of(not_after)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer, &ca.key)?;
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

/// The director's TLS configuration: `certificate` (the origin's, or the given one, swapped
/// when renewed), and client certificates asked for and verified under the operator CA (a
/// client without one — a vehicle, an operator with a bearer token — is let through to the
/// authorisation layer, which decides what it may do).
pub fn server_config(
    origin: &Origin,
    certificate: Arc<ServedCertificate>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let files = TlsFiles::of(origin);
    if !files.operator_ca.exists() {
        bail!(
            "{} is missing: an origin made before the director spoke HTTPS; make its \
             certificates with `origin director-cert --name HOST`",
            files.operator_ca.display()
        );
    }
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
        .with_cert_resolver(certificate);
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
