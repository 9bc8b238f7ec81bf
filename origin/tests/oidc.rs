//! `origin::oidc` against a real OpenID provider: the npm package `oidc-provider` (pinned in
//! `tests/oidc/package.json` and its lock), installed once with `npm ci` under the target
//! directory and started once per test binary on loopback HTTPS with a certificate from a CA
//! made here (`tests/common/node_fixtures.rs`). Tokens come from it through the
//! client_credentials grant; the forged one is signed here with a key the provider never
//! published.
//!
//! Needs `node` and `npm` on the PATH, and the npm registry the first time.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use origin::oidc::{CLOCK_LEEWAY_SECS, OidcConfig, OidcError, OidcVerifier, Verified};
use serde_json::{Map, Value};

#[path = "common/node_fixtures.rs"]
mod node_fixtures;
use node_fixtures::{Provider, start_provider};

const DIRECTOR: &str = "urn:depotmesh:director";
const TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> &'static Provider {
    static PROVIDER: OnceLock<Provider> = OnceLock::new();
    PROVIDER.get_or_init(|| start_provider(None))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn config(roles_claim: &str) -> OidcConfig {
    let provider = provider();
    OidcConfig {
        issuer: provider.issuer.clone(),
        audience: DIRECTOR.to_owned(),
        roles_claim: roles_claim.to_owned(),
        name_claim: "preferred_username".to_owned(),
        ca: Some(provider.ca.clone()),
        console_client_id: None,
    }
}

fn verifier() -> OidcVerifier {
    OidcVerifier::discover(config("roles"), TIMEOUT).unwrap()
}

/// An access token from `issuer`'s token endpoint for `client`, for the resource server
/// `resource` (which decides the audience and the signing algorithm).
fn token(issuer: &str, client: &str, resource: &str) -> String {
    let ca = fs::read(&provider().ca).unwrap();
    let roots: Vec<_> = ureq::tls::parse_pem(&ca)
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(certificate) => Some(certificate),
            _ => None,
        })
        .collect();
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        )
        .build()
        .new_agent();
    let secret = format!("{client}-secret");
    let answer = agent
        .post(format!("{issuer}/token"))
        .send_form([
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", &secret),
            ("scope", "campaigns"),
            ("resource", resource),
        ])
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

fn director_token(client: &str) -> String {
    token(&provider().issuer, client, DIRECTOR)
}

/// `token` with one character of its `segment` (0 header, 1 payload, 2 signature) changed in
/// the middle, where every bit counts.
fn altered(token: &str, segment: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let middle = parts[segment].len() / 2;
    let replacement = if parts[segment].as_bytes()[middle] == b'A' {
        "B"
    } else {
        "A"
    };
    parts[segment].replace_range(middle..=middle, replacement);
    parts.join(".")
}

#[test]
fn a_provider_token_verifies_with_its_operator_name_and_roles() {
    let token = director_token("alice-console");
    let verified = verifier().verify(&token, now()).unwrap();
    let Verified {
        subject,
        name,
        roles,
        expires_at,
        issuer,
    } = verified;
    assert_eq!(subject, "alice-console");
    assert_eq!(name, "alice");
    assert_eq!(roles, ["approver", "viewer"]);
    assert_eq!(issuer, provider().issuer);
    assert!(expires_at > now() && expires_at <= now() + 600);

    let nested = OidcVerifier::discover(config("realm_access.roles"), TIMEOUT).unwrap();
    assert_eq!(nested.verify(&token, now()).unwrap().roles, ["operator"]);

    // A client the directory gives no name and no roles: named by its subject, allowed nothing.
    let automation = verifier()
        .verify(&director_token("automation"), now())
        .unwrap();
    assert_eq!(automation.name, "automation");
    assert!(automation.roles.is_empty());
}

#[test]
fn every_asymmetric_algorithm_the_provider_signs_with_verifies_and_hs256_is_refused() {
    let verifier = verifier();
    let issuer = &provider().issuer;
    for algorithm in ["ps256", "es256", "eddsa"] {
        let token = token(issuer, "alice-console", &format!("{DIRECTOR}:{algorithm}"));
        let verified = verifier.verify(&token, now());
        assert_eq!(verified.unwrap().name, "alice", "{algorithm}");
    }
    let hs256 = token(issuer, "alice-console", &format!("{DIRECTOR}:hs256"));
    assert!(matches!(
        verifier.verify(&hs256, now()),
        Err(OidcError::AlgorithmRefused {
            alg: Algorithm::HS256
        })
    ));
}

#[test]
fn a_token_for_another_audience_is_refused() {
    let other = token(&provider().issuer, "alice-console", "urn:depotmesh:other");
    match verifier().verify(&other, now()) {
        Err(OidcError::WrongAudience { found, expected }) => {
            assert_eq!(found, ["urn:depotmesh:other"]);
            assert_eq!(expected, DIRECTOR);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_token_is_refused() {
    let verifier = verifier();
    let token = director_token("alice-console");
    let expires_at = verifier.verify(&token, now()).unwrap().expires_at;
    let later = expires_at + CLOCK_LEEWAY_SECS;
    assert!(matches!(
        verifier.verify(&token, later),
        Err(OidcError::Expired { expires_at: at, now }) if at == expires_at && now == later
    ));
}

#[test]
fn an_altered_token_is_refused() {
    let verifier = verifier();
    let token = director_token("alice-console");
    for segment in [1, 2] {
        assert!(
            matches!(
                verifier.verify(&altered(&token, segment), now()),
                Err(OidcError::BadSignature { kid }) if kid == "rsa-1"
            ),
            "segment {segment}"
        );
    }
}

#[test]
fn a_token_signed_by_a_key_outside_the_jwks_is_refused() {
    let verifier = verifier();
    let genuine = token(
        &provider().issuer,
        "alice-console",
        &format!("{DIRECTOR}:es256"),
    );
    let claims = jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(&genuine)
        .unwrap()
        .claims;
    let forger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forger = EncodingKey::from_ec_der(&forger.serialize_der());
    let forge = |kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &forger).unwrap()
    };
    // Claiming the provider's own EC key id: the signature gives it away.
    assert!(matches!(
        verifier.verify(&forge("ec-1"), now()),
        Err(OidcError::BadSignature { kid }) if kid == "ec-1"
    ));
    // A key id of its own: not in the JWKS even after the refetch it causes.
    assert!(matches!(
        verifier.verify(&forge("forged"), now()),
        Err(OidcError::UnknownKeyId { kid }) if kid == "forged"
    ));
    assert!(verifier.verify(&genuine, now()).is_ok());
}

#[test]
fn a_token_from_another_issuer_is_refused() {
    let provider = provider();
    // The other issuer signs with the very same keys: only `iss` tells the tokens apart.
    let stranger = token(&provider.other_issuer, "alice-console", DIRECTOR);
    match verifier().verify(&stranger, now()) {
        Err(OidcError::WrongIssuer { found, expected }) => {
            assert_eq!(found, provider.other_issuer);
            assert_eq!(expected, provider.issuer);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn discovery_checks_the_issuer_and_its_certificate() {
    let provider = provider();
    let trailing_slash = OidcConfig {
        issuer: format!("{}/", provider.issuer),
        ..config("roles")
    };
    assert!(matches!(
        OidcVerifier::discover(trailing_slash, TIMEOUT),
        Err(OidcError::DiscoveredIssuer { found, .. }) if found == provider.issuer
    ));
    let webpki_roots = OidcConfig {
        ca: None,
        ..config("roles")
    };
    assert!(matches!(
        OidcVerifier::discover(webpki_roots, TIMEOUT),
        Err(OidcError::Fetch { .. })
    ));
    let plain_http = OidcConfig {
        issuer: provider
            .issuer
            .replace("https://127.0.0.1", "http://127.0.0.1"),
        ..config("roles")
    };
    assert!(OidcVerifier::discover(plain_http, TIMEOUT).is_err());
}
