//! Operators behind a company's single sign-on: OpenID Connect / OAuth 2.0 bearer tokens (JWTs)
//! checked against the keys the issuer publishes, for the director's HTTP authentication layer.
//!
//! [`OidcVerifier::discover`] reads the issuer's discovery document and its JWKS once;
//! [`OidcVerifier::verify`] then checks a token's signature with the key its `kid` names (the
//! algorithm must be one that key's type signs with, so an RSA or HMAC confusion cannot pass),
//! and its `iss`, `aud`, `exp`, `nbf` and `iat` against the configuration and the caller's clock.
//! The identity and roles come from the token's claims only, never from the request around it.
//!
//! `verify` does no I/O, except when a token names a key id the verifier has not seen: then it
//! fetches the JWKS again (the provider rotated its keys), at most once per
//! [`JWKS_REFETCH_INTERVAL_SECS`] whatever the tokens say, and that fetch blocks for up to the
//! timeout given to `discover`. Async callers run `verify` on a blocking thread.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// How far the issuer's clock and ours may disagree: `exp` may be this far past, `nbf` and `iat`
/// this far ahead.
pub const CLOCK_LEEWAY_SECS: u64 = 60;
/// The least time between two JWKS fetches caused by unknown key ids, so that tokens with
/// made-up key ids cannot turn the director into a load on the issuer.
pub const JWKS_REFETCH_INTERVAL_SECS: u64 = 60;
/// The longest token accepted; real access tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest discovery document or JWKS read from the issuer.
pub const MAX_DOCUMENT_BYTES: u64 = 512 * 1024;

/// Which issuer to trust and how to read its tokens; a table of the director's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer identifier, exactly as the provider's discovery document and tokens spell it.
    pub issuer: String,
    /// The audience the director's tokens are issued for; a token's `aud` must contain it.
    pub audience: String,
    /// Where the roles are in the claims: a claim name (`roles`), or a dotted path into nested
    /// objects (`realm_access.roles`). A claim whose own name contains dots is found too.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim (or dotted path) naming the operator; `sub` is used when it is absent.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// A PEM bundle of the CAs trusted for the issuer's HTTPS; absent, the webpki roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The client id the provider registered for the console: a public client (no secret)
    /// using the authorization code flow with PKCE, its redirect URI the console's own
    /// address. Absent, the console offers no single sign-on button.
    #[serde(default)]
    pub console_client_id: Option<String>,
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}

fn default_name_claim() -> String {
    "preferred_username".to_owned()
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's `sub`: stable at the issuer, unlike a display name.
    pub subject: String,
    /// The configured name claim, or the subject when the token has none.
    pub name: String,
    /// The configured roles claim; empty when the token has none.
    pub roles: Vec<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// The token's `iss`, equal to the configured issuer.
    pub issuer: String,
}

/// Why discovery failed or a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    #[error("{url}: {reason}")]
    UrlRefused { url: String, reason: &'static str },
    #[error("the CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("fetching {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url} answered a document that does not parse: {reason}")]
    Document { url: String, reason: String },
    #[error("the discovery document at {url} names issuer {found:?}, not {expected:?}")]
    DiscoveredIssuer {
        url: String,
        found: String,
        expected: String,
    },
    #[error("the JWKS at {url} holds no signing key of a type this verifier accepts")]
    NoUsableKeys { url: String },
    #[error("token of {len} bytes refused: more than {max}")]
    TokenTooLarge { len: usize, max: usize },
    #[error("malformed token: {reason}")]
    Malformed { reason: String },
    #[error("token algorithm {alg:?} refused: shared-secret algorithms are never accepted")]
    AlgorithmRefused { alg: Algorithm },
    #[error("token names no key id (kid)")]
    MissingKeyId,
    #[error("token key id {kid:?} is not in the issuer's JWKS")]
    UnknownKeyId { kid: String },
    #[error("token algorithm {alg:?} does not match the type of key {kid:?}")]
    AlgorithmMismatch { alg: Algorithm, kid: String },
    #[error("token signature does not verify with key {kid:?}")]
    BadSignature { kid: String },
    #[error("token issuer {found:?} is not {expected:?}")]
    WrongIssuer { found: String, expected: String },
    #[error("token audience {found:?} does not contain {expected:?}")]
    WrongAudience {
        found: Vec<String>,
        expected: String,
    },
    #[error("token expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("token claim {claim} = {at} is in the future (now {now})")]
    NotYetValid {
        claim: &'static str,
        at: u64,
        now: u64,
    },
    #[error("token claim {claim:?}: {reason}")]
    BadClaim { claim: String, reason: &'static str },
}

/// A JWKS key and the algorithms its type signs with.
#[derive(Debug)]
struct VerifyingKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

type KeySet = BTreeMap<String, VerifyingKey>;

/// Where and how to fetch the JWKS again.
#[derive(Debug)]
struct Refetch {
    agent: ureq::Agent,
    jwks_uri: String,
    /// The `now` of the last refetch.
    last: Mutex<Option<u64>>,
}

/// Checks bearer tokens of one issuer; shared by every request handler (`Send + Sync`).
#[derive(Debug)]
pub struct OidcVerifier {
    config: OidcConfig,
    keys: RwLock<KeySet>,
    refetch: Option<Refetch>,
    endpoints: Option<Endpoints>,
}

/// Where a browser signs in: the provider's endpoints from its discovery document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Endpoints {
    authorization_endpoint: String,
    token_endpoint: String,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    #[serde(flatten)]
    endpoints: Option<Endpoints>,
}

/// What the console needs to sign an operator in with the provider (OAuth 2.0 authorization
/// code with PKCE, as a public browser client): `GET /v1/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleLogin {
    /// The issuer.
    pub issuer: String,
    /// Where the browser is sent to sign in.
    pub authorization_endpoint: String,
    /// Where the console exchanges the code for an access token.
    pub token_endpoint: String,
    /// The console's client id at the provider.
    pub client_id: String,
    /// The resource indicator (RFC 8707) the token is asked for: the director's audience.
    pub resource: String,
    /// The scopes asked for.
    pub scope: String,
}

/// The scopes the console asks for: the OpenID sign-in and the director's own.
pub const CONSOLE_SCOPE: &str = "openid campaigns";

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

impl OidcVerifier {
    /// Reads `{issuer}/.well-known/openid-configuration` and the JWKS it names, over HTTPS (plain
    /// HTTP only to a loopback host), each request bounded by `timeout`.
    pub fn discover(config: OidcConfig, timeout: Duration) -> Result<Self, OidcError> {
        let agent = http_agent(&config, timeout)?;
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = fetch_json(&agent, &discovery_url)?;
        if discovery.issuer != config.issuer {
            return Err(OidcError::DiscoveredIssuer {
                url: discovery_url,
                found: discovery.issuer,
                expected: config.issuer,
            });
        }
        let keys = fetch_keys(&agent, &discovery.jwks_uri)?;
        Ok(Self {
            config,
            keys: RwLock::new(keys),
            refetch: Some(Refetch {
                agent,
                jwks_uri: discovery.jwks_uri,
                last: Mutex::new(None),
            }),
            endpoints: discovery.endpoints,
        })
    }

    /// A verifier with a fixed JWKS (a JSON document), for an issuer whose keys are handed over
    /// out of band; it never fetches.
    pub fn from_jwks(config: OidcConfig, jwks: &[u8]) -> Result<Self, OidcError> {
        let keys = parse_keys("the given JWKS", jwks)?;
        Ok(Self {
            config,
            keys: RwLock::new(keys),
            refetch: None,
            endpoints: None,
        })
    }

    /// The configuration this verifier checks against.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// How the console signs an operator in, when a console client is configured and the
    /// provider's discovery document named its authorization and token endpoints.
    pub fn console_login(&self) -> Option<ConsoleLogin> {
        let client_id = self.config.console_client_id.clone()?;
        let endpoints = self.endpoints.clone()?;
        Some(ConsoleLogin {
            issuer: self.config.issuer.clone(),
            authorization_endpoint: endpoints.authorization_endpoint,
            token_endpoint: endpoints.token_endpoint,
            client_id,
            resource: self.config.audience.clone(),
            scope: CONSOLE_SCOPE.to_owned(),
        })
    }

    /// Checks `token` (the bearer token, without `Bearer `) at `now` (Unix seconds).
    ///
    /// Blocks on the network only to refetch the JWKS for an unknown key id, at most once per
    /// [`JWKS_REFETCH_INTERVAL_SECS`].
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::TokenTooLarge {
                len: token.len(),
                max: MAX_TOKEN_BYTES,
            });
        }
        let header = jsonwebtoken::decode_header(token).map_err(|error| OidcError::Malformed {
            reason: format!("header: {error}"),
        })?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(OidcError::AlgorithmRefused { alg: header.alg });
        }
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions marked critical must be understood, and none is.
            return Err(OidcError::Malformed {
                reason: "header: names critical extensions (crit)".to_owned(),
            });
        }
        let kid = header.kid.ok_or(OidcError::MissingKeyId)?;
        if !self.knows_key(&kid) {
            self.refetch_keys(now)?;
        }
        let claims = self.verify_signature(token, header.alg, &kid)?;
        self.check_claims(&claims, now)
    }

    fn knows_key(&self, kid: &str) -> bool {
        read(&self.keys).contains_key(kid)
    }

    /// Fetches the JWKS again unless that was done less than the refetch interval ago; a JWKS
    /// that fails to arrive or holds no usable key leaves the known keys in place.
    fn refetch_keys(&self, now: u64) -> Result<(), OidcError> {
        let Some(refetch) = &self.refetch else {
            return Ok(());
        };
        // Held across the fetch so that concurrent unknown key ids cause one fetch, not many.
        let mut last = refetch.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.abs_diff(now) < JWKS_REFETCH_INTERVAL_SECS) {
            return Ok(());
        }
        *last = Some(now);
        let keys = fetch_keys(&refetch.agent, &refetch.jwks_uri)?;
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
        Ok(())
    }

    fn verify_signature(
        &self,
        token: &str,
        alg: Algorithm,
        kid: &str,
    ) -> Result<Map<String, Value>, OidcError> {
        let keys = read(&self.keys);
        let key = keys.get(kid).ok_or_else(|| OidcError::UnknownKeyId {
            kid: kid.to_owned(),
        })?;
        if !key.algorithms.contains(&alg) {
            return Err(OidcError::AlgorithmMismatch {
                alg,
                kid: kid.to_owned(),
            });
        }
        // The library checks the signature only; the claims are checked below against the
        // caller's clock, which the library's own checks cannot take.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => Err(match error.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => OidcError::BadSignature {
                    kid: kid.to_owned(),
                },
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => OidcError::AlgorithmMismatch {
                    alg,
                    kid: kid.to_owned(),
                },
                _ => OidcError::Malformed {
                    reason: error.to_string(),
                },
            }),
        }
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<Verified, OidcError> {
        let issuer = required_string(claims, "iss")?;
        if issuer != self.config.issuer {
            return Err(OidcError::WrongIssuer {
                found: issuer.to_owned(),
                expected: self.config.issuer.clone(),
            });
        }
        let audience = audience(claims)?;
        if !audience.contains(&self.config.audience) {
            return Err(OidcError::WrongAudience {
                found: audience,
                expected: self.config.audience.clone(),
            });
        }
        let expires_at = seconds(claims, "exp")?.ok_or_else(|| missing("exp"))?;
        if now >= expires_at.saturating_add(CLOCK_LEEWAY_SECS) {
            return Err(OidcError::Expired { expires_at, now });
        }
        for claim in ["nbf", "iat"] {
            if let Some(at) = seconds(claims, claim)? {
                if at > now.saturating_add(CLOCK_LEEWAY_SECS) {
                    return Err(OidcError::NotYetValid { claim, at, now });
                }
            }
        }
        let subject = required_string(claims, "sub")?;
        if subject.is_empty() {
            return Err(bad_claim("sub", "is empty"));
        }
        let name = match claim_at(claims, &self.config.name_claim) {
            None => subject,
            Some(Value::String(name)) if !name.is_empty() => name,
            Some(_) => return Err(bad_claim(&self.config.name_claim, "is not a name")),
        };
        let roles = match claim_at(claims, &self.config.roles_claim) {
            None => Vec::new(),
            Some(value) => string_array(value)
                .ok_or_else(|| bad_claim(&self.config.roles_claim, "is not an array of strings"))?,
        };
        Ok(Verified {
            subject: subject.to_owned(),
            name: name.to_owned(),
            roles,
            expires_at,
            issuer: issuer.to_owned(),
        })
    }
}

fn read(keys: &RwLock<KeySet>) -> std::sync::RwLockReadGuard<'_, KeySet> {
    keys.read().unwrap_or_else(PoisonError::into_inner)
}

/// The claim at `path`: a top-level claim of that exact name, else the dotted path through
/// nested objects (`realm_access.roles`).
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut segments = path.split('.');
    let mut value = claims.get(segments.next()?)?;
    for segment in segments {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

fn string_array(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_owned))
        .collect()
}

fn required_string<'a>(claims: &'a Map<String, Value>, claim: &str) -> Result<&'a str, OidcError> {
    match claims.get(claim) {
        None => Err(missing(claim)),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(bad_claim(claim, "is not a string")),
    }
}

/// `aud` is one string or an array of strings (RFC 7519 §4.1.3).
fn audience(claims: &Map<String, Value>) -> Result<Vec<String>, OidcError> {
    match claims.get("aud") {
        None => Err(missing("aud")),
        Some(Value::String(audience)) => Ok(vec![audience.clone()]),
        Some(value) => {
            string_array(value).ok_or_else(|| bad_claim("aud", "is not a string or strings"))
        }
    }
}

fn seconds(claims: &Map<String, Value>, claim: &str) -> Result<Option<u64>, OidcError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_claim(claim, "is not a whole number of seconds")),
    }
}

fn missing(claim: &str) -> OidcError {
    bad_claim(claim, "is missing")
}

fn bad_claim(claim: &str, reason: &'static str) -> OidcError {
    OidcError::BadClaim {
        claim: claim.to_owned(),
        reason,
    }
}

/// HTTPS, or plain HTTP to this machine only (a provider run beside the director, or a test's).
fn check_url(url: &str) -> Result<(), OidcError> {
    let refused = |reason| OidcError::UrlRefused {
        url: url.to_owned(),
        reason,
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| refused("is not a URL"))?;
    let host = uri.host().ok_or_else(|| refused("names no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(refused("plain http is allowed to a loopback host only")),
        _ => Err(refused("is neither https nor http")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn http_agent(config: &OidcConfig, timeout: Duration) -> Result<ureq::Agent, OidcError> {
    let roots = match &config.ca {
        None => RootCerts::WebPki,
        Some(path) => RootCerts::new_with_certs(&ca_certificates(path)?),
    };
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // The issuer's documents are at the URLs it names; a redirect elsewhere is refused.
        .max_redirects(0)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .new_agent())
}

fn ca_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, OidcError> {
    let ca_error = |reason: String| OidcError::CaBundle {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A private key beside the certificates is not ours to use: ignored, not trusted.
        if let PemItem::Certificate(certificate) =
            item.map_err(|error| ca_error(error.to_string()))?
        {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        return Err(ca_error("holds no certificate".to_owned()));
    }
    Ok(certificates)
}

fn fetch_json<T: serde::de::DeserializeOwned>(
    agent: &ureq::Agent,
    url: &str,
) -> Result<T, OidcError> {
    serde_json::from_slice(&fetch(agent, url)?).map_err(|error| OidcError::Document {
        url: url.to_owned(),
        reason: error.to_string(),
    })
}

fn fetch(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, OidcError> {
    check_url(url)?;
    let fetch_error = |source| OidcError::Fetch {
        url: url.to_owned(),
        source,
    };
    let mut response = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(fetch_error)?;
    if response.status() != 200 {
        return Err(OidcError::HttpStatus {
            url: url.to_owned(),
            status: response.status().as_u16(),
        });
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_vec()
        .map_err(fetch_error)
}

fn fetch_keys(agent: &ureq::Agent, jwks_uri: &str) -> Result<KeySet, OidcError> {
    parse_keys(jwks_uri, &fetch(agent, jwks_uri)?)
}

/// The signing keys of a JWKS by key id. Keys of other uses or types, without a key id, or
/// whose stated algorithm contradicts their type are left out rather than failing the set: a
/// provider may publish encryption keys or newer types beside the ones in use.
fn parse_keys(source: &str, jwks: &[u8]) -> Result<KeySet, OidcError> {
    let document: JwksDocument =
        serde_json::from_slice(jwks).map_err(|error| OidcError::Document {
            url: source.to_owned(),
            reason: error.to_string(),
        })?;
    let mut keys = KeySet::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref key_use) if *key_use != PublicKeyUse::Signature)
        {
            continue;
        }
        let Some(algorithms) = algorithms_for(&jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.entry(kid).or_insert(VerifyingKey { key, algorithms });
    }
    if keys.is_empty() {
        return Err(OidcError::NoUsableKeys {
            url: source.to_owned(),
        });
    }
    Ok(keys)
}

/// The algorithms a key of this type signs with, narrowed to the one its `alg` states; `None`
/// for symmetric keys (never accepted) and types or curves not supported.
fn algorithms_for(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) => match params.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type.to_vec()),
        Some(stated) => {
            let stated: Algorithm = stated.to_string().parse().ok()?;
            by_type.contains(&stated).then(|| vec![stated])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const ISSUER: &str = "https://sso.example.com/realms/fleet";
    const AUDIENCE: &str = "urn:depotmesh:director";
    const NOW: u64 = 1_800_000_000;

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            roles_claim: "realm_access.roles".to_owned(),
            name_claim: default_name_claim(),
            ca: None,
            console_client_id: None,
        }
    }

    /// An ES256 key of our own, its JWKS entry named `ec-key`, and a verifier trusting it.
    struct Issuer {
        signing: EncodingKey,
        verifier: OidcVerifier,
    }

    fn issuer() -> Issuer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_der(&pair.serialize_der());
        let jwks = json!({ "keys": [
            { "kty": "oct", "kid": "shared", "k": "c2VjcmV0" },
            public_jwk(&signing, "ec-key"),
        ] });
        let verifier = OidcVerifier::from_jwks(config(), jwks.to_string().as_bytes()).unwrap();
        Issuer { signing, verifier }
    }

    fn public_jwk(signing: &EncodingKey, kid: &str) -> Jwk {
        let mut public = Jwk::from_encoding_key(signing, Algorithm::ES256).unwrap();
        public.common.key_id = Some(kid.to_owned());
        public
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": ["account", AUDIENCE],
            "sub": "f81d4fae",
            "preferred_username": "alice",
            "realm_access": { "roles": ["approver", "viewer"] },
            "iat": NOW - 10,
            "exp": NOW + 300,
        })
    }

    impl Issuer {
        fn token(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("ec-key".to_owned());
            jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
        }

        fn verify(&self, claims: &Value) -> Result<Verified, OidcError> {
            self.verifier.verify(&self.token(claims), NOW)
        }
    }

    fn with(mut claims: Value, claim: &str, value: Value) -> Value {
        claims[claim] = value;
        claims
    }

    fn without(mut claims: Value, claim: &str) -> Value {
        claims.as_object_mut().unwrap().remove(claim);
        claims
    }

    #[test]
    fn a_valid_token_names_its_operator_and_roles() {
        let verified = issuer().verify(&claims()).unwrap();
        assert_eq!(
            verified,
            Verified {
                subject: "f81d4fae".to_owned(),
                name: "alice".to_owned(),
                roles: vec!["approver".to_owned(), "viewer".to_owned()],
                expires_at: NOW + 300,
                issuer: ISSUER.to_owned(),
            }
        );
    }

    #[test]
    fn claim_paths_find_nested_and_dotted_claims() {
        let claims = json!({
            "roles": ["viewer"],
            "realm_access": { "roles": ["admin"], "deep": { "er": "x" } },
            "https://example.com/roles": ["auditor"],
            "flat": "value",
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(claim_at(claims, "roles"), Some(&json!(["viewer"])));
        assert_eq!(
            claim_at(claims, "realm_access.roles"),
            Some(&json!(["admin"]))
        );
        assert_eq!(claim_at(claims, "realm_access.deep.er"), Some(&json!("x")));
        assert_eq!(
            claim_at(claims, "https://example.com/roles"),
            Some(&json!(["auditor"]))
        );
        for absent in [
            "",
            ".",
            "missing",
            "realm_access.missing",
            "flat.below",
            "roles.0",
        ] {
            assert_eq!(claim_at(claims, absent), None, "{absent}");
        }
    }

    #[test]
    fn names_fall_back_to_the_subject_and_roles_default_to_none() {
        let issuer = issuer();
        let verified = issuer
            .verify(&without(
                without(claims(), "preferred_username"),
                "realm_access",
            ))
            .unwrap();
        assert_eq!(verified.name, "f81d4fae");
        assert!(verified.roles.is_empty());
        let one_audience = with(claims(), "aud", json!(AUDIENCE));
        assert!(issuer.verify(&one_audience).is_ok());
    }

    #[test]
    fn claims_of_the_wrong_shape_are_named() {
        let issuer = issuer();
        let cases = [
            (
                with(claims(), "realm_access", json!({ "roles": "admin" })),
                "realm_access.roles",
            ),
            (
                with(claims(), "realm_access", json!({ "roles": [1] })),
                "realm_access.roles",
            ),
            (
                with(claims(), "preferred_username", json!(7)),
                "preferred_username",
            ),
            (with(claims(), "exp", json!("soon")), "exp"),
            (with(claims(), "exp", json!(-1)), "exp"),
            (with(claims(), "iat", json!(1.5)), "iat"),
            (with(claims(), "aud", json!([AUDIENCE, 3])), "aud"),
            (with(claims(), "sub", json!("")), "sub"),
            (without(claims(), "sub"), "sub"),
            (without(claims(), "exp"), "exp"),
            (without(claims(), "aud"), "aud"),
            (without(claims(), "iss"), "iss"),
        ];
        for (claims, named) in cases {
            match issuer.verify(&claims) {
                Err(OidcError::BadClaim { claim, .. }) => assert_eq!(claim, named),
                other => panic!("{named}: {other:?}"),
            }
        }
    }

    #[test]
    fn time_claims_are_checked_against_the_callers_clock_with_leeway() {
        let issuer = issuer();
        let token = issuer.token(&claims());
        let exp = NOW + 300;
        assert!(
            issuer
                .verifier
                .verify(&token, exp + CLOCK_LEEWAY_SECS - 1)
                .is_ok()
        );
        assert!(matches!(
            issuer.verifier.verify(&token, exp + CLOCK_LEEWAY_SECS),
            Err(OidcError::Expired { expires_at, .. }) if expires_at == exp
        ));
        let early = NOW - 10 - CLOCK_LEEWAY_SECS - 1;
        assert!(matches!(
            issuer.verifier.verify(&token, early),
            Err(OidcError::NotYetValid { claim: "iat", .. })
        ));
        let later = with(claims(), "nbf", json!(NOW + CLOCK_LEEWAY_SECS + 1));
        assert!(matches!(
            issuer.verify(&later),
            Err(OidcError::NotYetValid { claim: "nbf", .. })
        ));
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let issuer = issuer();
        assert!(matches!(
            issuer.verify(&with(claims(), "iss", json!(format!("{ISSUER}/")))),
            Err(OidcError::WrongIssuer { .. })
        ));
        assert!(matches!(
            issuer.verify(&with(claims(), "aud", json!(["account"]))),
            Err(OidcError::WrongAudience { .. })
        ));
    }

    #[test]
    fn shared_secret_and_unsigned_tokens_are_refused() {
        let issuer = issuer();
        // Signed with the bytes of the JWKS's own symmetric key: the classic confusion.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("shared".to_owned());
        let hs256 =
            jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
        assert!(matches!(
            issuer.verifier.verify(&hs256, NOW),
            Err(OidcError::AlgorithmRefused {
                alg: Algorithm::HS256
            })
        ));
        let payload = issuer.token(&claims());
        let payload = payload.split('.').nth(1).unwrap();
        // {"alg":"none","typ":"JWT"}
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(matches!(
            issuer.verifier.verify(&none, NOW),
            Err(OidcError::Malformed { .. })
        ));
        // {"alg":"RS256","typ":"JWT","kid":"ec-key"}: an RSA algorithm against an EC key.
        let rs256 =
            format!("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLWtleSJ9.{payload}.AAAA");
        assert!(matches!(
            issuer.verifier.verify(&rs256, NOW),
            Err(OidcError::AlgorithmMismatch {
                alg: Algorithm::RS256,
                ..
            })
        ));
        // {"alg":"ES256","kid":"ec-key","crit":["x"]}
        let crit =
            format!("eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWtleSIsImNyaXQiOlsieCJdfQ.{payload}.AAAA");
        assert!(matches!(
            issuer.verifier.verify(&crit, NOW),
            Err(OidcError::Malformed { .. })
        ));
    }

    #[test]
    fn key_ids_must_be_present_and_known() {
        let issuer = issuer();
        let header = Header::new(Algorithm::ES256);
        let no_kid = jsonwebtoken::encode(&header, &claims(), &issuer.signing).unwrap();
        assert!(matches!(
            issuer.verifier.verify(&no_kid, NOW),
            Err(OidcError::MissingKeyId)
        ));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("rotated-away".to_owned());
        let unknown = jsonwebtoken::encode(&header, &claims(), &issuer.signing).unwrap();
        assert!(matches!(
            issuer.verifier.verify(&unknown, NOW),
            Err(OidcError::UnknownKeyId { kid }) if kid == "rotated-away"
        ));
    }

    #[test]
    fn garbage_and_huge_tokens_are_errors_not_panics() {
        let issuer = issuer();
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            issuer.verifier.verify(&huge, NOW),
            Err(OidcError::TokenTooLarge { .. })
        ));
        let payload = issuer.token(&claims());
        let payload = payload.split('.').nth(1).unwrap().to_owned();
        let garbage = [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            "a.b.c".to_owned(),
            "Bearer x".to_owned(),
            "é.ü.ß".to_owned(),
            "\u{0}.\u{0}.\u{0}".to_owned(),
            // {"alg":"ES256","kid":"ec-key"}, payloads `[]` and `{"sub":"x"}` unsigned.
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWtleSJ9.W10.AAAA".to_owned(),
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWtleSJ9.eyJzdWIiOiJ4In0.".to_owned(),
            format!("eyJhbGciOiJFUzI1NiIsImtpZCI6ImVjLWtleSJ9.{payload}.!!!!"),
            format!("W10.{payload}.AAAA"),
        ];
        for token in &garbage {
            assert!(issuer.verifier.verify(token, NOW).is_err(), "{token:?}");
        }
    }

    #[test]
    fn every_truncation_and_altered_character_is_refused_without_panic() {
        let issuer = issuer();
        let token = issuer.token(&claims());
        for end in 0..token.len() {
            assert!(issuer.verifier.verify(&token[..end], NOW).is_err(), "{end}");
        }
        let signature_start = token.rfind('.').unwrap() + 1;
        for at in 0..token.len() {
            let mut altered = token.clone().into_bytes();
            altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            let result = issuer.verifier.verify(&altered, NOW);
            // The last character of a base64 segment carries padding bits a change may leave
            // the decoded bytes unchanged; everywhere else, any change must be refused.
            if at != signature_start - 2 && at != token.len() - 1 {
                assert!(result.is_err(), "altered at {at}");
            }
        }
    }

    #[test]
    fn jwks_keep_only_signing_keys_of_known_types() {
        let oct = json!({ "keys": [{ "kty": "oct", "kid": "s", "k": "c2VjcmV0" }] });
        assert!(matches!(
            OidcVerifier::from_jwks(config(), oct.to_string().as_bytes()),
            Err(OidcError::NoUsableKeys { .. })
        ));
        for bad in [&b"{"[..], b"[]", b"{\"keys\":{}}"] {
            assert!(matches!(
                OidcVerifier::from_jwks(config(), bad),
                Err(OidcError::Document { .. })
            ));
        }
        let public = json!({ "kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uE9Pl6Fc", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" });
        let keys = json!({ "keys": [
            with(public.clone(), "use", json!("enc")),
            public.clone(),
            with(with(public.clone(), "kid", json!("says-rs256")), "alg", json!("RS256")),
            with(with(public.clone(), "kid", json!("es256")), "alg", json!("ES256")),
            { "kty": "weird", "kid": "new" },
        ] });
        let keys = parse_keys("test", keys.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["es256"]);
        // The symmetric key beside it in `issuer()`'s JWKS is left out too.
        assert!(!issuer().verifier.knows_key("shared"));
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        for allowed in [
            "https://sso.example.com/realms/fleet/.well-known/openid-configuration",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            assert!(check_url(allowed).is_ok(), "{allowed}");
        }
        for refused in [
            "http://sso.example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://localhost.example.com/jwks",
            "ftp://127.0.0.1/jwks",
            "file:///etc/passwd",
            "/jwks",
            "not a url",
            "",
        ] {
            assert!(
                matches!(check_url(refused), Err(OidcError::UrlRefused { .. })),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_configuration_reads_from_toml_with_defaults_and_refuses_unknown_keys() {
        let config: OidcConfig =
            toml::from_str("issuer = \"https://sso.example.com\"\naudience = \"director\"\n")
                .unwrap();
        assert_eq!(config.roles_claim, "roles");
        assert_eq!(config.name_claim, "preferred_username");
        assert_eq!(config.ca, None);
        let typo = "issuer = \"https://sso.example.com\"\naudience = \"d\"\nrole_claim = \"x\"\n";
        assert!(toml::from_str::<OidcConfig>(typo).is_err());
    }

    /// A plain-HTTP issuer on loopback whose JWKS the test replaces; counts JWKS fetches.
    struct LoopbackIssuer {
        url: String,
        jwks: std::sync::Arc<Mutex<String>>,
        jwks_fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    fn loopback_issuer(jwks: String) -> LoopbackIssuer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = LoopbackIssuer {
            url: url.clone(),
            jwks: std::sync::Arc::new(Mutex::new(jwks)),
            jwks_fetches: Default::default(),
        };
        let (jwks, jwks_fetches) = (issuer.jwks.clone(), issuer.jwks_fetches.clone());
        // Serves until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut request_line = String::new();
                let mut reader = BufReader::new(&stream);
                reader.read_line(&mut request_line).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let body = if request_line.starts_with("GET /jwks ") {
                    jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    jwks.lock().unwrap().clone()
                } else {
                    json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") }).to_string()
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        issuer
    }

    #[test]
    fn an_unknown_key_id_refetches_the_jwks_at_most_once_a_minute() {
        use std::sync::atomic::Ordering;
        let old = issuer();
        let old_jwks = json!({ "keys": [public_jwk(&old.signing, "ec-key")] });
        let provider = loopback_issuer(old_jwks.to_string());
        let config = OidcConfig {
            issuer: provider.url.clone(),
            ..config()
        };
        let verifier = OidcVerifier::discover(config, Duration::from_secs(5)).unwrap();
        let fetches = || provider.jwks_fetches.load(Ordering::SeqCst);
        assert_eq!(fetches(), 1);
        let claims = with(claims(), "iss", json!(provider.url));
        assert!(verifier.verify(&old.token(&claims), NOW).is_ok());

        // The provider rotates to a new key: its first token causes one refetch and verifies.
        let new = issuer();
        *provider.jwks.lock().unwrap() =
            json!({ "keys": [public_jwk(&new.signing, "ec-key-2")] }).to_string();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-key-2".to_owned());
        let rotated = jsonwebtoken::encode(&header, &claims, &new.signing).unwrap();
        assert!(verifier.verify(&rotated, NOW).is_ok());
        assert_eq!(fetches(), 2);

        // Made-up key ids within the minute fetch nothing; after it, one fetch again.
        header.kid = Some("made-up".to_owned());
        let made_up = jsonwebtoken::encode(&header, &claims, &new.signing).unwrap();
        for _ in 0..5 {
            assert!(matches!(
                verifier.verify(&made_up, NOW + 1),
                Err(OidcError::UnknownKeyId { .. })
            ));
        }
        assert_eq!(fetches(), 2);
        let minute_later = NOW + JWKS_REFETCH_INTERVAL_SECS;
        assert!(verifier.verify(&made_up, minute_later).is_err());
        assert_eq!(fetches(), 3);
        // The rotated-out key went with the refetch.
        assert!(matches!(
            verifier.verify(&old.token(&claims), minute_later + 1),
            Err(OidcError::UnknownKeyId { .. })
        ));
        assert_eq!(fetches(), 3);
    }

    #[test]
    fn verifiers_are_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<OidcVerifier>();
    }
}
