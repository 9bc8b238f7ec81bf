//! Where a role's key is kept: a directory of key files ([`crate::keys`]) or a PKCS #11 token
//! ([`crate::pkcs11`]), named by a key reference: a path, or a `pkcs11:` URI (RFC 7512). Both
//! hold each key under the same name (`image-root`: the file `image-root.key.json`, or the token
//! object labelled `image-root`), make new keys, and retire a rotated one under
//! `<name>.retired-v<N>` without destroying it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use proto::tuf::Key;
use proto::tuf::keys::KeyType;
use proto::tuf::signer::{KeyPair, SignError, Signer};

use crate::keys;
use crate::pkcs11::{Token, TokenKey, TokenUri};

/// A key store: a directory, or a token (opened on first use, then shared by every clone).
#[derive(Clone)]
pub enum KeyStore {
    /// Key files in a directory.
    Dir(PathBuf),
    /// Keys in a PKCS #11 token.
    Token {
        /// The token.
        uri: TokenUri,
        /// The session, once opened.
        opened: Arc<OnceLock<Arc<Token>>>,
    },
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The directory, or the token's URI without its PIN.
impl fmt::Display for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Token { uri, .. } => write!(f, "{uri}"),
        }
    }
}

impl From<PathBuf> for KeyStore {
    fn from(dir: PathBuf) -> Self {
        Self::Dir(dir)
    }
}

impl FromStr for KeyStore {
    type Err = crate::pkcs11::UriError;

    /// A `pkcs11:` URI names a token; anything else is a directory.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.starts_with("pkcs11:") {
            Ok(Self::Token {
                uri: TokenUri::parse(text)?,
                opened: Arc::default(),
            })
        } else {
            Ok(Self::Dir(PathBuf::from(text)))
        }
    }
}

/// A role's key, wherever it is kept.
#[derive(Debug)]
pub enum RoleKey {
    /// Read from a key file.
    File(KeyPair),
    /// In a token.
    Token(TokenKey),
}

impl Signer for RoleKey {
    fn public_key(&self) -> Key {
        match self {
            Self::File(key) => key.public_key(),
            Self::Token(key) => key.public_key(),
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Self::File(key) => key.sign(message),
            Self::Token(key) => key.sign(message),
        }
    }
}

/// A new key for a role: one to make in the store, or a key file someone else made (a
/// supplier's) to use and keep.
#[derive(Debug, Clone)]
pub enum NewKey {
    /// Make one of this type in the role's store.
    Make(KeyType),
    /// This key file.
    File(PathBuf),
}

/// A [`NewKey`] with its file read.
#[derive(Debug)]
pub enum ReadKey<'a> {
    /// Make one of this type.
    Make(KeyType),
    /// The key in this file.
    File(Box<KeyPair>, &'a Path),
}

impl NewKey {
    /// Reads the key file, if one is given, and checks that `store` can keep it: done before
    /// anything is signed, so bad input stops a command before it changes anything.
    pub fn read(&self, store: &KeyStore) -> anyhow::Result<ReadKey<'_>> {
        match self {
            Self::Make(kind) => Ok(ReadKey::Make(*kind)),
            Self::File(path) => {
                store.takes_files()?;
                Ok(ReadKey::File(Box::new(keys::load_pair(path)?), path))
            }
        }
    }
}

impl KeyStore {
    /// The directory, for a store of files.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Self::Dir(dir) => Some(dir),
            Self::Token { .. } => None,
        }
    }

    /// The type of key a store makes when not told: ed25519 in files, ECDSA P-256 (the key every
    /// HSM has) in a token.
    pub fn default_key_type(&self) -> KeyType {
        match self {
            Self::Dir(_) => KeyType::Ed25519,
            Self::Token { .. } => KeyType::EcdsaP256,
        }
    }

    fn token(&self) -> anyhow::Result<Option<&Arc<Token>>> {
        let Self::Token { uri, opened } = self else {
            return Ok(None);
        };
        if let Some(token) = opened.get() {
            return Ok(Some(token));
        }
        let token = Token::open(uri)?;
        Ok(Some(opened.get_or_init(|| token)))
    }

    /// The file of key `name`: `<name>.key.json`, so that a root key on the offline stick is never
    /// taken for the root metadata depots and vehicles start from (`image-root.json`); a store
    /// made before keeps its `<name>.json` files, read and renamed as they are.
    fn file(dir: &Path, name: &str) -> PathBuf {
        let file = dir.join(format!("{name}.key.json"));
        let before = dir.join(format!("{name}.json"));
        if !file.exists() && before.exists() {
            before
        } else {
            file
        }
    }

    /// Whether the store holds a key `name`.
    pub fn contains(&self, name: &str) -> anyhow::Result<bool> {
        match (self, self.token()?) {
            (_, Some(token)) => Ok(token.contains(name)?),
            (Self::Dir(dir), None) => Ok(Self::file(dir, name).exists()),
            (Self::Token { .. }, None) => Ok(false),
        }
    }

    /// The key `name`.
    pub fn load(&self, name: &str) -> anyhow::Result<RoleKey> {
        match (self, self.token()?) {
            (_, Some(token)) => Ok(RoleKey::Token(token.key(name)?)),
            (Self::Dir(dir), None) => keys::load_pair(&Self::file(dir, name)).map(RoleKey::File),
            (Self::Token { uri, .. }, None) => bail!("{uri}: not opened"),
        }
    }

    /// Makes a new key `name` of `kind`; refuses when one exists.
    pub fn create(&self, name: &str, kind: KeyType) -> anyhow::Result<RoleKey> {
        match (self, self.token()?) {
            (_, Some(token)) => Ok(RoleKey::Token(token.generate(name, kind)?)),
            (Self::Dir(dir), None) => {
                keys::create_pair(&Self::file(dir, name), kind).map(RoleKey::File)
            }
            (Self::Token { uri, .. }, None) => bail!("{uri}: not opened"),
        }
    }

    /// Keeps the key file `source` (made elsewhere) as `name`. A token takes no key from outside:
    /// its keys are made inside it.
    pub fn keep_file(&self, name: &str, source: &Path) -> anyhow::Result<()> {
        self.takes_files()?;
        let dir = self.dir().unwrap_or(Path::new("."));
        let bytes =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        keys::write_secret(&Self::file(dir, name), &bytes)
    }

    /// Refuses unless the store can keep a key file ([`Self::keep_file`]).
    pub fn takes_files(&self) -> anyhow::Result<()> {
        match self {
            Self::Dir(_) => Ok(()),
            Self::Token { uri, .. } => bail!(
                "the keys are in {uri}, which takes no key from a file: make the new key inside it (leave out the key file)"
            ),
        }
    }

    /// Renames the key `name` to `new_name`.
    pub fn rename(&self, name: &str, new_name: &str) -> anyhow::Result<()> {
        match (self, self.token()?) {
            (_, Some(token)) => Ok(token.relabel(name, new_name)?),
            (Self::Dir(dir), None) => {
                let to = dir.join(format!("{new_name}.key.json"));
                let from = Self::file(dir, name);
                if to.exists() {
                    bail!("{} exists; refusing to overwrite a key", to.display());
                }
                std::fs::rename(&from, &to)
                    .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
            }
            (Self::Token { uri, .. }, None) => bail!("{uri}: not opened"),
        }
    }

    /// Retires the key `name`, replaced by a root of `version` + 1: it stays as
    /// `<name>.retired-v<version>`.
    pub fn retire(&self, name: &str, version: u64) -> anyhow::Result<()> {
        self.rename(name, &format!("{name}.retired-v{version}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn key_files_are_named_apart_from_metadata_and_older_names_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::Dir(dir.path().to_path_buf());
        store.create("image-root", KeyType::Ed25519).unwrap();
        assert!(dir.path().join("image-root.key.json").exists());
        assert!(!dir.path().join("image-root.json").exists());
        // A store made before: `<name>.json`, loaded, and retired under the new name.
        keys::create_pair(&dir.path().join("director-root.json"), KeyType::Ed25519).unwrap();
        assert!(store.contains("director-root").unwrap());
        store.load("director-root").unwrap();
        assert!(store.create("director-root", KeyType::Ed25519).is_err());
        store.retire("director-root", 1).unwrap();
        assert!(
            dir.path()
                .join("director-root.retired-v1.key.json")
                .exists()
        );
        assert!(!store.contains("director-root").unwrap());
    }
}
