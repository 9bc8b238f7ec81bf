//! The public keys TUF metadata lists, of the three types the specification names, and their
//! signatures: `ed25519` (hex public key, the signature over the canonical bytes),
//! `ecdsa-sha2-nistp256` (keytype `ecdsa`, or `ecdsa-sha2-nistp256` in older repositories; the
//! public key as securesystemslib writes it, a PEM `PUBLIC KEY`, or hex of its DER or of the
//! uncompressed point; the signature DER-encoded, over SHA-256) and `rsassa-pss-sha256`
//! (keytype `rsa`; a PEM `PUBLIC KEY`; PSS with MGF1-SHA-256 and a 32-byte salt). Parsing is
//! x509-parser's, verification ring's: nothing here is home-made cryptography. A key of another
//! type still parses and never verifies anything.

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Value, json};
use sha2::Digest as _;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::canonical::to_canonical;

/// A public key as metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": <hex>}}`.
    Ed25519(VerifyingKey),
    /// `ecdsa-sha2-nistp256`: the public point, uncompressed (SEC 1).
    EcdsaP256(Vec<u8>),
    /// `rsassa-pss-sha256`: the public key as PKCS #1 `RSAPublicKey` DER.
    RsaPssSha256(Vec<u8>),
    /// A key type or scheme we do not verify: its signatures never count.
    Unsupported {
        /// Its `keytype`.
        keytype: String,
        /// Its `scheme`.
        scheme: String,
    },
}

/// The three key types, by the `keytype` and `scheme` metadata names them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    EcdsaP256,
    /// `rsassa-pss-sha256`.
    RsaPssSha256,
}

impl KeyType {
    /// The type metadata names with `keytype` and `scheme`, if it is one of the three.
    pub fn of(keytype: &str, scheme: &str) -> Option<Self> {
        match (keytype, scheme) {
            ("ed25519", "ed25519") => Some(Self::Ed25519),
            ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => Some(Self::EcdsaP256),
            ("rsa", "rsassa-pss-sha256") => Some(Self::RsaPssSha256),
            _ => None,
        }
    }

    /// The `keytype` and `scheme` of a key of this type as python-tuf writes it now.
    pub fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::Ed25519 => ("ed25519", "ed25519"),
            Self::EcdsaP256 => ("ecdsa", "ecdsa-sha2-nistp256"),
            Self::RsaPssSha256 => ("rsa", "rsassa-pss-sha256"),
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 => "ecdsa",
            Self::RsaPssSha256 => "rsa",
        })
    }
}

impl std::str::FromStr for KeyType {
    type Err = String;

    /// `ed25519`, `ecdsa` (P-256) or `rsa` (PSS, SHA-256), as on the command line.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ed25519" => Ok(Self::Ed25519),
            "ecdsa" | "ecdsa-sha2-nistp256" => Ok(Self::EcdsaP256),
            "rsa" | "rsassa-pss-sha256" => Ok(Self::RsaPssSha256),
            _ => Err(format!(
                "key type {text:?} is not one of ed25519, ecdsa (P-256), rsa (PSS, SHA-256)"
            )),
        }
    }
}

/// OID 1.2.840.10045.3.1.7, the curve P-256 (`prime256v1`).
const P256: &str = "1.2.840.10045.3.1.7";

impl Key {
    /// Whether `keytype` and `scheme` are one of the three types verified here.
    pub fn is_supported(keytype: &str, scheme: &str) -> bool {
        KeyType::of(keytype, scheme).is_some()
    }

    /// The key `keyval.public` holds for `keytype` and `scheme`; a type or scheme outside the
    /// three is [`Key::Unsupported`]. An error says what is wrong with a key of a known type.
    pub fn parse(keytype: &str, scheme: &str, public: &str) -> Result<Self, String> {
        match KeyType::of(keytype, scheme) {
            Some(KeyType::Ed25519) => {
                let bytes: [u8; 32] = hex::decode(public)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or("is not 32 bytes of hex")?;
                VerifyingKey::from_bytes(&bytes)
                    .map(Self::Ed25519)
                    .map_err(|_| "is not an ed25519 public key".into())
            }
            Some(KeyType::EcdsaP256) => ecdsa_p256(public),
            Some(KeyType::RsaPssSha256) => rsa(public),
            None => Ok(Self::Unsupported {
                keytype: keytype.to_owned(),
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// A public key given alone, with no `keytype` beside it (as a vehicle registers its ECU
    /// keys): 64 hex digits are an ed25519 key (the form depotmesh has always taken); a PEM
    /// `PUBLIC KEY` is whichever of the three its `SubjectPublicKeyInfo` says (ECDSA on P-256,
    /// RSA, or Ed25519). An error says what is wrong.
    pub fn parse_public(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if !text.starts_with("-----BEGIN") {
            return Self::parse("ed25519", "ed25519", text)
                .map_err(|error| format!("{error} (or give a PEM PUBLIC KEY)"));
        }
        let der = spki_der(text)?;
        let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
            .map_err(|error| format!("is not a public key (SubjectPublicKeyInfo): {error}"))?;
        match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.10045.2.1" => ecdsa_p256(text),
            "1.2.840.113549.1.1.1" => rsa(text),
            "1.3.101.112" => {
                let point = hex::encode(spki.subject_public_key.data.as_ref());
                Self::parse("ed25519", "ed25519", &point)
            }
            other => Err(format!(
                "is a key of algorithm {other}, not ECDSA P-256, RSA or Ed25519"
            )),
        }
    }

    /// Whether `signature` (as decoded from the metadata's hex) is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            ECDSA_P256_SHA256_ASN1, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey,
        };
        match self {
            Self::Ed25519(key) => Signature::from_slice(signature)
                .is_ok_and(|signature| key.verify_strict(message, &signature).is_ok()),
            Self::EcdsaP256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
                .verify(message, signature)
                .is_ok(),
            Self::RsaPssSha256(der) => UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, der)
                .verify(message, signature)
                .is_ok(),
            Self::Unsupported { .. } => false,
        }
    }

    /// The key's type; `None` for [`Key::Unsupported`].
    pub fn key_type(&self) -> Option<KeyType> {
        match self {
            Self::Ed25519(_) => Some(KeyType::Ed25519),
            Self::EcdsaP256(_) => Some(KeyType::EcdsaP256),
            Self::RsaPssSha256(_) => Some(KeyType::RsaPssSha256),
            Self::Unsupported { .. } => None,
        }
    }

    /// The key object metadata lists, as python-tuf writes a key of this type: ed25519 in hex,
    /// the others as a PEM `PUBLIC KEY` (`SubjectPublicKeyInfo`, 64 columns, newline at the
    /// end). A key read in another form (hex ECDSA) is written in this one, so its id changes.
    pub fn to_json(&self) -> Value {
        let (keytype, scheme, public) = match self {
            Self::Ed25519(key) => ("ed25519", "ed25519", hex::encode(key.as_bytes())),
            Self::EcdsaP256(point) => {
                let (keytype, scheme) = KeyType::EcdsaP256.names();
                (keytype, scheme, public_pem(ec_spki(point)))
            }
            Self::RsaPssSha256(pkcs1) => {
                let (keytype, scheme) = KeyType::RsaPssSha256.names();
                (keytype, scheme, public_pem(rsa_spki(pkcs1)))
            }
            Self::Unsupported { keytype, scheme } => {
                return json!({"keytype": keytype, "scheme": scheme, "keyval": {}});
            }
        };
        json!({"keytype": keytype, "scheme": scheme, "keyval": {"public": public}})
    }

    /// `keyval.public` of [`Key::to_json`]: hex for ed25519, a PEM public key otherwise; the
    /// form [`Key::parse_public`] reads and vehicles configure (`director_targets_key`).
    pub fn public_text(&self) -> String {
        self.to_json()["keyval"]["public"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The key's id as python-tuf computes it: the SHA-256 of [`Key::to_json`]'s canonical form.
    pub fn id(&self) -> String {
        // A key object holds strings only, so it always has a canonical form.
        let bytes = to_canonical(&self.to_json()).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

/// The `SubjectPublicKeyInfo` DER of an uncompressed P-256 `point`: the fixed header of an
/// `id-ecPublicKey` on `prime256v1` with a 65-byte BIT STRING, then the point.
fn ec_spki(point: &[u8]) -> Vec<u8> {
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_sequence(|writer| {
                writer.next().write_oid(&oid(&[1, 2, 840, 10045, 2, 1]));
                writer.next().write_oid(&oid(&[1, 2, 840, 10045, 3, 1, 7]));
            });
            writer.next().write_bitvec_bytes(point, point.len() * 8);
        });
    })
}

/// The `SubjectPublicKeyInfo` DER of an RSA key given as PKCS #1 `RSAPublicKey` DER.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_sequence(|writer| {
                writer
                    .next()
                    .write_oid(&oid(&[1, 2, 840, 113_549, 1, 1, 1]));
                writer.next().write_null();
            });
            writer.next().write_bitvec_bytes(pkcs1, pkcs1.len() * 8);
        });
    })
}

/// PKCS #1 `RSAPublicKey` DER of the big-endian `modulus` and `exponent` (as a PKCS #11 token
/// gives them).
pub fn rsa_public_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_bigint_bytes(modulus, true);
            writer.next().write_bigint_bytes(exponent, true);
        });
    })
}

fn oid(components: &[u64]) -> yasna::models::ObjectIdentifier {
    yasna::models::ObjectIdentifier::from_slice(components)
}

fn public_pem(der: Vec<u8>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("PUBLIC KEY", der), config)
}

/// The DER `SubjectPublicKeyInfo` in `public`: a PEM `PUBLIC KEY` block, or hex of the DER.
fn spki_der(public: &str) -> Result<Vec<u8>, String> {
    let text = public.trim();
    if text.starts_with("-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|error| format!("is not PEM: {error}"))?;
        if pem.label != "PUBLIC KEY" {
            return Err(format!("is a PEM {:?}, not a PUBLIC KEY", pem.label));
        }
        return Ok(pem.contents);
    }
    hex::decode(text).map_err(|_| "is neither PEM nor hex".into())
}

fn ecdsa_p256(public: &str) -> Result<Key, String> {
    // Older repositories carry the uncompressed point itself, in hex.
    if let Ok(point) = hex::decode(public.trim())
        && point.len() == 65
        && point[0] == 4
    {
        return Ok(Key::EcdsaP256(point));
    }
    let der = spki_der(public)?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
        .map_err(|error| format!("is not a public key (SubjectPublicKeyInfo): {error}"))?;
    let algorithm = &spki.algorithm;
    let curve = algorithm
        .parameters
        .as_ref()
        .and_then(|parameters| parameters.as_oid().ok())
        .map(|oid| oid.to_id_string());
    if algorithm.algorithm.to_id_string() != "1.2.840.10045.2.1" || curve.as_deref() != Some(P256) {
        return Err("is not an ECDSA key on P-256".into());
    }
    let point = spki.subject_public_key.data.to_vec();
    if point.len() != 65 || point[0] != 4 {
        return Err("is not an uncompressed P-256 point".into());
    }
    Ok(Key::EcdsaP256(point))
}

fn rsa(public: &str) -> Result<Key, String> {
    let der = spki_der(public)?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der)
        .map_err(|error| format!("is not a public key (SubjectPublicKeyInfo): {error}"))?;
    if spki.algorithm.algorithm.to_id_string() != "1.2.840.113549.1.1.1" {
        return Err("is not an RSA key".into());
    }
    Ok(Key::RsaPssSha256(spki.subject_public_key.data.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A public key of `keytype` from the python-tuf-made vectors.
    fn public_of(keytype: &str) -> String {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/keytypes/mixed/repo/client/metadata/root.json"
        );
        let root: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        root["signed"]["keys"]
            .as_object()
            .unwrap()
            .values()
            .find(|key| key["keytype"] == keytype)
            .unwrap()["keyval"]["public"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn a_public_key_alone_is_read_by_its_form() {
        let ecdsa = public_of("ecdsa");
        let rsa = public_of("rsa");
        assert!(matches!(Key::parse_public(&ecdsa), Ok(Key::EcdsaP256(_))));
        assert!(matches!(Key::parse_public(&rsa), Ok(Key::RsaPssSha256(_))));
        let ed = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let hex_form = hex::encode(ed.as_bytes());
        assert_eq!(Key::parse_public(&hex_form), Ok(Key::Ed25519(ed)));
        // An Ed25519 SubjectPublicKeyInfo (RFC 8410), as `openssl pkey -pubout` writes it.
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        der.extend_from_slice(ed.as_bytes());
        let pem_form = public_pem(der);
        assert_eq!(Key::parse_public(&pem_form), Ok(Key::Ed25519(ed)));
        for (text, words) in [
            ("abcd", "32 bytes"),
            ("-----BEGIN PUBLIC KEY-----\nzz", "not PEM"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "not a PUBLIC KEY",
            ),
        ] {
            let error = Key::parse_public(text).unwrap_err();
            assert!(error.contains(words), "{text}: {error}");
        }
    }

    #[test]
    fn key_objects_and_ids_are_what_python_tuf_writes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/keytypes/mixed/repo/client/metadata/root.json"
        );
        let root: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let keys = root["signed"]["keys"].as_object().unwrap();
        assert!(keys.len() >= 3);
        for (keyid, object) in keys {
            let key = Key::parse(
                object["keytype"].as_str().unwrap(),
                object["scheme"].as_str().unwrap(),
                object["keyval"]["public"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(&key.to_json(), object, "{keyid}");
            assert_eq!(&key.id(), keyid);
        }
    }

    #[test]
    fn each_type_parses_and_a_wrong_one_is_named() {
        let ecdsa = public_of("ecdsa");
        let rsa = public_of("rsa");
        assert!(matches!(
            Key::parse("ecdsa", "ecdsa-sha2-nistp256", &ecdsa),
            Ok(Key::EcdsaP256(_))
        ));
        assert!(matches!(
            Key::parse("rsa", "rsassa-pss-sha256", &rsa),
            Ok(Key::RsaPssSha256(_))
        ));
        // The hex forms older repositories carry: the DER, and the point itself.
        let Ok(Key::EcdsaP256(point)) = Key::parse("ecdsa", "ecdsa-sha2-nistp256", &ecdsa) else {
            panic!()
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(ecdsa.as_bytes()).unwrap();
        for hex_form in [hex::encode(&pem.contents), hex::encode(&point)] {
            assert_eq!(
                Key::parse("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256", &hex_form),
                Ok(Key::EcdsaP256(point.clone()))
            );
        }
        let cases = [
            (
                "ecdsa",
                "ecdsa-sha2-nistp256",
                rsa.as_str(),
                "not an ECDSA key on P-256",
            ),
            ("rsa", "rsassa-pss-sha256", ecdsa.as_str(), "not an RSA key"),
            (
                "rsa",
                "rsassa-pss-sha256",
                "-----BEGIN PUBLIC KEY-----\nzz",
                "not PEM",
            ),
            (
                "rsa",
                "rsassa-pss-sha256",
                "not a key",
                "neither PEM nor hex",
            ),
            ("ed25519", "ed25519", "abcd", "32 bytes"),
        ];
        for (keytype, scheme, public, words) in cases {
            let error = Key::parse(keytype, scheme, public).unwrap_err();
            assert!(error.contains(words), "{keytype}: {error}");
        }
        // Another type or scheme parses, and verifies nothing.
        let other = Key::parse("rsa", "rsassa-pkcs1v15-sha256", &rsa).unwrap();
        assert!(matches!(other, Key::Unsupported { .. }));
        assert!(!other.verify(b"message", &[0; 64]));
    }
}
