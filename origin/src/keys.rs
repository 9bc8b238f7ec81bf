//! Signing keys on disk: one JSON file per key in TUF's key format with the private half added
//! (as securesystemslib wrote them: ed25519's in hex, ECDSA's and RSA's as a PKCS #8 PEM),
//! readable by its owner only; or a PKCS #8 PEM file as `openssl genpkey` writes it. Keys are
//! never printed or logged: commands print key ids and public keys only.
//!
//! The fleet key and the audit log's key are ed25519 ([`load`]); a TUF role's key may be any
//! of the three types ([`load_pair`], [`create_pair`]).

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use proto::tuf::build;
use proto::tuf::keys::{Key, KeyType};
use proto::tuf::signer::{KeyPair, Signer as _};
use rand::RngCore;
use serde_json::{Value, json};

/// A new random ed25519 key.
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// Writes `key` to `path` (mode 0600), refusing to replace an existing key.
pub fn save(key: &SigningKey, path: &Path) -> anyhow::Result<()> {
    let mut public = build::key_json(&key.verifying_key());
    public["keyval"]["private"] = json!(hex::encode(key.to_bytes()));
    write_secret(path, serde_json::to_string_pretty(&public)?.as_bytes())
}

/// Writes secret `bytes` (a private key) to a new file `path`, readable by its owner only,
/// durably; refuses to replace an existing file.
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} exists; refusing to overwrite a key", path.display());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Makes a new key and writes it to `path` (see [`save`]).
pub fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let key = generate();
    save(&key, path)?;
    Ok(key)
}

/// The key in `path` (see [`load`]), or a new one when no path is given.
pub fn load_or_generate(path: Option<&Path>) -> anyhow::Result<SigningKey> {
    path.map_or_else(|| Ok(generate()), load)
}

/// Bits of the RSA keys [`create_pair`] makes.
const RSA_BITS: aws_lc_rs::rsa::KeySize = aws_lc_rs::rsa::KeySize::Rsa3072;

/// Makes a new key of `kind` and writes it to `path` (mode 0600, never replacing a file).
pub fn create_pair(path: &Path, kind: KeyType) -> anyhow::Result<KeyPair> {
    let pkcs8 = match kind {
        KeyType::Ed25519 => return Ok(KeyPair::Ed25519(create(path)?)),
        KeyType::EcdsaP256 => KeyPair::generate_ecdsa_pkcs8()?,
        KeyType::RsaPssSha256 => {
            use aws_lc_rs::encoding::AsDer as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(RSA_BITS)
                .map_err(|_| anyhow::anyhow!("making an RSA key failed"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair
                .as_der()
                .map_err(|_| anyhow::anyhow!("encoding an RSA key failed"))?;
            der.as_ref().to_vec()
        }
    };
    let pair = KeyPair::from_pkcs8(&pkcs8)?;
    let mut file = pair.public_key().to_json();
    let pem_config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    file["keyval"]["private"] = json!(pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", pkcs8),
        pem_config
    ));
    write_secret(path, serde_json::to_string_pretty(&file)?.as_bytes())?;
    Ok(pair)
}

/// Reads a key of any of the three types: a JSON key file ([`save`], [`create_pair`], or
/// securesystemslib's), or a PKCS #8 PEM file. Errors name the file and field, never the key
/// material.
pub fn load_pair(path: &Path) -> anyhow::Result<KeyPair> {
    let text = fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    if text.starts_with(b"-----BEGIN") {
        return pkcs8_pem(&text).with_context(|| format!("{}", path.display()));
    }
    let value: Value = serde_json::from_slice(&text)
        .map_err(|_| anyhow::anyhow!("{}: not a JSON key file or a PEM file", path.display()))?;
    let (keytype, scheme) = (
        value["keytype"].as_str().unwrap_or_default(),
        value["scheme"].as_str().unwrap_or_default(),
    );
    let kind = KeyType::of(keytype, scheme).with_context(|| {
        format!(
            "{}: field keytype/scheme: {keytype}/{scheme} is not ed25519, ecdsa/ecdsa-sha2-nistp256 or rsa/rsassa-pss-sha256",
            path.display()
        )
    })?;
    if kind == KeyType::Ed25519 {
        return load(path).map(KeyPair::Ed25519);
    }
    let private = value["keyval"]["private"]
        .as_str()
        .with_context(|| format!("{}: field keyval.private is missing", path.display()))?;
    let pair = pkcs8_pem(private.as_bytes())
        .with_context(|| format!("{}: field keyval.private", path.display()))?;
    let listed = value["keyval"]["public"]
        .as_str()
        .map(|public| Key::parse(keytype, scheme, public));
    if pair.key_type() != kind || listed != Some(Ok(pair.public_key())) {
        bail!(
            "{}: field keyval.public does not match the private key",
            path.display()
        );
    }
    Ok(pair)
}

/// The ECDSA P-256 or RSA key in a PEM `PRIVATE KEY` (PKCS #8).
fn pkcs8_pem(text: &[u8]) -> anyhow::Result<KeyPair> {
    let block = pem::parse(text).map_err(|_| anyhow::anyhow!("not a PEM block"))?;
    if block.tag() != "PRIVATE KEY" {
        bail!(
            "is a PEM {:?}, not a PRIVATE KEY (PKCS #8; convert with `openssl pkcs8 -topk8 -nocrypt`)",
            block.tag()
        );
    }
    Ok(KeyPair::from_pkcs8(block.contents())?)
}

/// Reads an ed25519 key written by [`save`]. Errors name the file and field, never the key
/// material.
pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|_| anyhow::anyhow!("{}: not a JSON key file", path.display()))?;
    if value["keytype"] != "ed25519" || value["scheme"] != "ed25519" {
        bail!(
            "{}: field keytype/scheme: only ed25519 keys are supported",
            path.display()
        );
    }
    let private: [u8; 32] = value["keyval"]["private"]
        .as_str()
        .and_then(|text| hex::decode(text).ok())
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| {
            format!(
                "{}: field keyval.private: not 32 bytes of hex",
                path.display()
            )
        })?;
    let key = SigningKey::from_bytes(&private);
    let public = hex::encode(key.verifying_key().as_bytes());
    if value["keyval"]["public"].as_str() != Some(public.as_str()) {
        bail!(
            "{}: field keyval.public does not match the private key",
            path.display()
        );
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_of_each_type_load_as_made_and_a_mismatch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [KeyType::Ed25519, KeyType::EcdsaP256, KeyType::RsaPssSha256] {
            let path = dir.path().join(format!("{kind}.json"));
            let made = create_pair(&path, kind).unwrap();
            let loaded = load_pair(&path).unwrap();
            assert_eq!(loaded.key_type(), kind);
            assert_eq!(loaded.public_key(), made.public_key());
            let signature = loaded.sign(b"signed").unwrap();
            assert!(made.public_key().verify(b"signed", &signature), "{kind}");
            // Never replaced.
            assert!(create_pair(&path, kind).is_err());
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{kind}");
            }
        }
        // A PKCS #8 PEM file as openssl writes it.
        let json: Value =
            serde_json::from_slice(&fs::read(dir.path().join("ecdsa.json")).unwrap()).unwrap();
        let pem_file = dir.path().join("openssl.pem");
        fs::write(&pem_file, json["keyval"]["private"].as_str().unwrap()).unwrap();
        assert_eq!(load_pair(&pem_file).unwrap().key_type(), KeyType::EcdsaP256);
        // A public key that is not the private key's, a wrong PEM, an unknown type.
        let mut swapped = json.clone();
        let rsa: Value =
            serde_json::from_slice(&fs::read(dir.path().join("rsa.json")).unwrap()).unwrap();
        swapped["keyval"]["public"] = rsa["keyval"]["public"].clone();
        let mut wrong_pem = json.clone();
        wrong_pem["keyval"]["private"] = json!(json["keyval"]["public"]);
        let mut unknown = json.clone();
        unknown["scheme"] = json!("ecdsa-sha2-nistp384");
        for (name, value, words) in [
            ("swapped", swapped, "keyval.public does not match"),
            ("wrong-pem", wrong_pem, "not a PRIVATE KEY"),
            ("unknown", unknown, "keytype/scheme"),
        ] {
            let path = dir.path().join(format!("{name}.json"));
            fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
            let error = format!("{:#}", load_pair(&path).unwrap_err());
            assert!(error.contains(words), "{name}: {error}");
            assert!(error.contains(&format!("{name}.json")), "{name}: {error}");
            assert!(!error.contains("PRIVATE KEY-----"), "{name}: {error}");
        }
    }
}
