//! What signs metadata: the [`Signer`] trait [`super::build::sign`] takes, whatever holds the
//! private key (a key in memory here, a PKCS #11 token in `origin`), and [`KeyPair`], a private
//! key of any of the three types held in memory. Signatures are ring's; a signature has the form
//! the key's scheme gives it in metadata (ECDSA: DER; RSA-PSS: MGF1-SHA-256, 32-byte salt).

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PSS_SHA256, RsaKeyPair,
};

use super::keys::{Key, KeyType};

/// Holds one private key and signs with it.
pub trait Signer {
    /// The public key, as metadata lists it.
    fn public_key(&self) -> Key;
    /// The signature over `message`, as metadata carries it (before hex).
    ///
    /// # Errors
    /// When whatever holds the key cannot sign (a token gone, a refused operation).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// A key could not sign. Never holds key material.
#[derive(Debug, thiserror::Error)]
#[error("key {keyid} could not sign: {reason}")]
pub struct SignError {
    /// The key's id.
    pub keyid: String,
    /// Why, as whatever holds the key said.
    pub reason: String,
}

impl Signer for ed25519_dalek::SigningKey {
    fn public_key(&self) -> Key {
        Key::Ed25519(self.verifying_key())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(ed25519_dalek::Signer::sign(self, message)
            .to_bytes()
            .to_vec())
    }
}

/// A private key of one of the three types, in memory.
pub enum KeyPair {
    /// ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256(EcdsaKeyPair),
    /// RSA, signing RSASSA-PSS with SHA-256.
    RsaPss(RsaKeyPair),
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The public half only.
        write!(f, "KeyPair({})", self.public_key().id())
    }
}

/// A private key that is not one of the three types, or is malformed.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    /// Not a PKCS #8 ECDSA P-256 or RSA private key.
    #[error(
        "not a PKCS #8 private key of ECDSA on P-256 or of RSA (2048 to 8192 bits); convert others with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    NotPkcs8,
    /// Neither a PEM block nor an ed25519 seed.
    #[error(
        "neither a 32-byte ed25519 seed in hex, a PEM PRIVATE KEY (PKCS #8) nor a key file of `origin keygen`"
    )]
    NotASeed,
    /// JSON, but not a key file with `keyval.private`.
    #[error("JSON but not a key file of `origin keygen` (no keyval.private)")]
    NotAKeyFile,
    /// A key file whose public key is not its private key's.
    #[error("the key file's keyval.public is not the public half of its keyval.private")]
    PublicMismatch,
    /// The random source failed.
    #[error("the system's random source failed")]
    Random,
    /// ring makes ed25519 and ECDSA keys, not RSA ones.
    #[error("RSA keys are made elsewhere (an HSM, `openssl genpkey -algorithm RSA`)")]
    CannotMakeRsa,
}

impl KeyPair {
    /// The private key in PKCS #8 DER `der`: ECDSA P-256 or RSA.
    ///
    /// # Errors
    /// [`KeyPairError::NotPkcs8`] for anything else, without saying more of the bytes.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyPairError> {
        let rng = SystemRandom::new();
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng) {
            return Ok(Self::EcdsaP256(pair));
        }
        RsaKeyPair::from_pkcs8(der)
            .map(Self::RsaPss)
            .map_err(|_| KeyPairError::NotPkcs8)
    }

    /// A private key as a vehicle keeps one in a file: 64 hex digits are an ed25519 seed (the
    /// form depotmesh has always taken); a PEM `PRIVATE KEY` (PKCS #8) is ECDSA P-256 or RSA;
    /// a JSON key file as `origin keygen` writes it holds either in `keyval.private`, and its
    /// `keyval.public` must be that key's.
    ///
    /// # Errors
    /// [`KeyPairError`], without saying more of the text.
    pub fn parse(text: &str) -> Result<Self, KeyPairError> {
        let text = text.trim();
        if text.starts_with('{') {
            let file: serde_json::Value =
                serde_json::from_str(text).map_err(|_| KeyPairError::NotAKeyFile)?;
            let private = file["keyval"]["private"]
                .as_str()
                .filter(|p| !p.trim_start().starts_with('{'))
                .ok_or(KeyPairError::NotAKeyFile)?;
            let pair = Self::parse(private)?;
            if let Some(public) = file["keyval"]["public"].as_str() {
                if pair.public_key().public_text().trim() != public.trim() {
                    return Err(KeyPairError::PublicMismatch);
                }
            }
            return Ok(pair);
        }
        if text.starts_with("-----BEGIN") {
            let block = pem::parse(text).map_err(|_| KeyPairError::NotPkcs8)?;
            if block.tag() != "PRIVATE KEY" {
                return Err(KeyPairError::NotPkcs8);
            }
            return Self::from_pkcs8(block.contents());
        }
        let seed: [u8; 32] = hex::decode(text)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(KeyPairError::NotASeed)?;
        Ok(Self::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A new ECDSA P-256 key, as PKCS #8 DER (to keep; [`KeyPair::from_pkcs8`] reads it).
    ///
    /// # Errors
    /// When the random source fails.
    pub fn generate_ecdsa_pkcs8() -> Result<Vec<u8>, KeyPairError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
            .map(|document| document.as_ref().to_vec())
            .map_err(|_| KeyPairError::Random)
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Ed25519(_) => KeyType::Ed25519,
            Self::EcdsaP256(_) => KeyType::EcdsaP256,
            Self::RsaPss(_) => KeyType::RsaPssSha256,
        }
    }
}

impl Signer for KeyPair {
    fn public_key(&self) -> Key {
        match self {
            Self::Ed25519(key) => key.public_key(),
            Self::EcdsaP256(pair) => Key::EcdsaP256(pair.public_key().as_ref().to_vec()),
            Self::RsaPss(pair) => Key::RsaPssSha256(pair.public().as_ref().to_vec()),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        let failed = |reason: &str| SignError {
            keyid: self.public_key().id(),
            reason: reason.to_owned(),
        };
        match self {
            Self::Ed25519(key) => Signer::sign(key, message),
            Self::EcdsaP256(pair) => pair
                .sign(&rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| failed("ECDSA signing failed")),
            Self::RsaPss(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PSS_SHA256, &rng, message, &mut signature)
                    .map_err(|_| failed("RSA-PSS signing failed"))?;
                Ok(signature)
            }
        }
    }
}

/// The DER `ECDSA-Sig-Value` (SEQUENCE of INTEGER r, INTEGER s) of a raw `r ‖ s` signature, as
/// a PKCS #11 token returns it, in the form metadata carries; `None` if `raw` is not 64 bytes.
pub fn ecdsa_p256_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let (r, s) = raw.split_at(32);
    Some(yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_bigint_bytes(r, true);
            writer.next().write_bigint_bytes(s, true);
        });
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_signs_what_its_public_key_verifies() {
        let ecdsa = KeyPair::from_pkcs8(&KeyPair::generate_ecdsa_pkcs8().unwrap()).unwrap();
        let ed25519 = KeyPair::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
        for pair in [ecdsa, ed25519] {
            let signature = pair.sign(b"metadata").unwrap();
            let public = pair.public_key();
            assert!(public.verify(b"metadata", &signature), "{pair:?}");
            assert!(!public.verify(b"other", &signature), "{pair:?}");
            // The key object parses back to the same key, with the same id.
            let json = public.to_json();
            let parsed = Key::parse(
                json["keytype"].as_str().unwrap(),
                json["scheme"].as_str().unwrap(),
                json["keyval"]["public"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(parsed, public);
            assert_eq!(parsed.id(), public.id());
        }
        assert!(matches!(
            KeyPair::from_pkcs8(b"not a key"),
            Err(KeyPairError::NotPkcs8)
        ));
    }

    #[test]
    fn key_files_of_origin_keygen_parse_when_their_halves_match() {
        let seed = hex::encode([9u8; 32]);
        let pair = KeyPair::parse(&seed).unwrap();
        let mut file = pair.public_key().to_json();
        file["keyval"]["private"] = serde_json::json!(seed);
        let parsed = KeyPair::parse(&file.to_string()).unwrap();
        assert_eq!(parsed.public_key(), pair.public_key());
        // An ECDSA key file holds a PEM.
        let der = KeyPair::generate_ecdsa_pkcs8().unwrap();
        let ecdsa = KeyPair::from_pkcs8(&der).unwrap();
        let mut ecdsa_file = ecdsa.public_key().to_json();
        ecdsa_file["keyval"]["private"] =
            serde_json::json!(pem::encode(&pem::Pem::new("PRIVATE KEY", der)));
        assert_eq!(
            KeyPair::parse(&ecdsa_file.to_string())
                .unwrap()
                .public_key(),
            ecdsa.public_key()
        );
        // A public half that is another key's, no private half, a nested file, not JSON.
        let mut other = file.clone();
        other["keyval"]["public"] = serde_json::json!(hex::encode([1u8; 32]));
        assert!(matches!(
            KeyPair::parse(&other.to_string()),
            Err(KeyPairError::PublicMismatch)
        ));
        let mut public_only = file.clone();
        public_only["keyval"]
            .as_object_mut()
            .unwrap()
            .remove("private");
        let mut nested = file.clone();
        nested["keyval"]["private"] = serde_json::json!(file.to_string());
        for bad in [
            public_only.to_string(),
            nested.to_string(),
            "{not json".into(),
        ] {
            assert!(
                matches!(KeyPair::parse(&bad), Err(KeyPairError::NotAKeyFile)),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_raw_ecdsa_signature_becomes_the_der_one_ring_verifies() {
        let pkcs8 = KeyPair::generate_ecdsa_pkcs8().unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .unwrap();
        let public = Key::EcdsaP256(pair.public_key().as_ref().to_vec());
        // Fixed signatures are r ‖ s, as PKCS #11 gives them; try until r or s has a high bit,
        // so the zero byte DER adds is covered too.
        for _ in 0..8 {
            let raw = pair.sign(&SystemRandom::new(), b"root").unwrap();
            let der = ecdsa_p256_der(raw.as_ref()).unwrap();
            assert!(public.verify(b"root", &der));
        }
        assert_eq!(ecdsa_p256_der(&[1; 63]), None);
    }
}
