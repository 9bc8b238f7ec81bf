//! Signing keys on disk: one JSON file per key in TUF's key format with the private half added,
//! readable by its owner only. Keys are never printed or logged: commands print key ids and
//! public keys only.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use proto::tuf::build;
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

/// Reads a key written by [`save`]. Errors name the file and field, never the key material.
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
