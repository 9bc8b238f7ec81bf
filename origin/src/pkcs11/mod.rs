//! Keys inside a PKCS #11 token (an HSM, a smart card, SoftHSM2 for rehearsals), through
//! `cryptoki`. The origin finds a role's key by its label (`image-root`, …), makes new key pairs
//! inside the token (private half: token object, private, sensitive, not extractable) and asks
//! the token to sign; the private key never leaves it. A key the token would let out
//! (extractable, or not sensitive) is refused.
//!
//! Mechanisms: ECDSA P-256 as `CKM_ECDSA` over a SHA-256 digest made here (every token has it;
//! the raw `r ‖ s` becomes the DER metadata carries), RSA as `CKM_SHA256_RSA_PKCS_PSS` with
//! MGF1-SHA-256 and a 32-byte salt, ed25519 as `CKM_EDDSA`. A key found is checked once, by a
//! signature its public half must verify, so a public object that does not match its private
//! one is caught before anything is signed.

mod uri;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use proto::tuf::Key;
use proto::tuf::keys::{KeyType, rsa_public_der};
use proto::tuf::signer::{SignError, Signer, ecdsa_p256_der};
use sha2::Digest as _;

pub use uri::{PinSource, TokenUri, UriError};

/// What went wrong with the token or a key in it. Names the token (never its PIN) and the key's
/// label.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The PKCS #11 library could not be loaded or started.
    #[error("{uri}: the PKCS #11 module cannot be used: {error}")]
    Module {
        /// The token's URI.
        uri: String,
        /// What cryptoki said.
        error: CkError,
    },
    /// No token, or more than one, matches the URI.
    #[error("{uri}: {found} tokens match (present: {present}); name one by token=, serial=")]
    NoSuchToken {
        /// The token's URI.
        uri: String,
        /// How many matched.
        found: usize,
        /// The labels of the tokens present.
        present: String,
    },
    /// The PIN file cannot be read.
    #[error("{uri}: cannot read the PIN from {}: {error}", .file.display())]
    PinFile {
        /// The token's URI.
        uri: String,
        /// The file.
        file: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// An operation on the token failed.
    #[error("{uri}: {what}: {error}")]
    Operation {
        /// The token's URI.
        uri: String,
        /// What was being done (naming the key).
        what: String,
        /// What cryptoki said.
        error: CkError,
    },
    /// The token holds no key pair, or more than one, by that label.
    #[error("{uri}: holds {found} private keys labelled {label:?}, not one")]
    NoSuchKey {
        /// The token's URI.
        uri: String,
        /// The label.
        label: String,
        /// How many.
        found: usize,
    },
    /// A key this module does not use (type, curve) or would let its private half out.
    #[error("{uri}: key {label:?} {reason}")]
    Refused {
        /// The token's URI.
        uri: String,
        /// The label.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key by that label exists already.
    #[error("{uri}: a key labelled {label:?} exists; refusing to make another")]
    Exists {
        /// The token's URI.
        uri: String,
        /// The label.
        label: String,
    },
}

/// DER of OID 1.2.840.10045.3.1.7 (P-256), as `CKA_EC_PARAMS` holds it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of OID 1.3.101.112 (Ed25519).
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of the PrintableString `edwards25519`, the older `CKA_EC_PARAMS` of Ed25519 keys.
const ED25519_PARAMS_NAMED: &[u8] = b"\x13\x0cedwards25519";
/// RSA keys made in the token.
const RSA_BITS: u64 = 3072;

/// One started PKCS #11 module per library: `C_Initialize` runs once per process.
fn module(path: &PathBuf) -> Result<Pkcs11, CkError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let module = Pkcs11::new(path)?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(error) => return Err(error),
    }
    modules.insert(path.clone(), module.clone());
    Ok(module)
}

/// A logged-in session with the token a [`TokenUri`] names.
pub struct Token {
    uri: TokenUri,
    session: Mutex<Session>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.uri)
    }
}

impl Token {
    /// Opens the token `uri` names and logs in as its user.
    ///
    /// # Errors
    /// [`TokenError`]: the module, no single matching token, the PIN, the login.
    pub fn open(uri: &TokenUri) -> Result<Arc<Self>, TokenError> {
        let module_error = |error| TokenError::Module {
            uri: uri.to_string(),
            error,
        };
        let operation = |what: &str| {
            let what = what.to_owned();
            move |error| TokenError::Operation {
                uri: uri.to_string(),
                what,
                error,
            }
        };
        let module = module(&uri.module_path).map_err(module_error)?;
        let mut matching = Vec::new();
        let mut present = Vec::new();
        for slot in module.get_slots_with_token().map_err(module_error)? {
            let info = module
                .get_token_info(slot)
                .map_err(operation("reading token information"))?;
            // A token not yet initialised (SoftHSM2 always offers one, its label blank) holds no
            // keys and takes no login: it neither matches nor is worth naming.
            if !info.token_initialized() {
                continue;
            }
            present.push(info.label().trim_end().to_owned());
            if uri.matches(
                info.label(),
                info.manufacturer_id(),
                info.serial_number(),
                info.model(),
            ) {
                matching.push(slot);
            }
        }
        let [slot] = matching[..] else {
            return Err(TokenError::NoSuchToken {
                uri: uri.to_string(),
                found: matching.len(),
                present: if present.is_empty() {
                    "none".to_owned()
                } else {
                    present.join(", ")
                },
            });
        };
        let pin = match &uri.pin {
            PinSource::Value(pin) => pin.clone(),
            PinSource::File(file) => std::fs::read_to_string(file)
                .map_err(|error| TokenError::PinFile {
                    uri: uri.to_string(),
                    file: file.clone(),
                    error,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        let session = module
            .open_rw_session(slot)
            .map_err(operation("opening a session"))?;
        // Login is per application: another session of this process may have logged in.
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(error) => return Err(operation("logging in")(error)),
        }
        Ok(Arc::new(Self {
            uri: uri.clone(),
            session: Mutex::new(session),
        }))
    }

    /// The token's URI.
    pub fn uri(&self) -> &TokenUri {
        &self.uri
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, what: String) -> impl FnOnce(CkError) -> TokenError + '_ {
        move |error| TokenError::Operation {
            uri: self.uri.to_string(),
            what,
            error,
        }
    }

    fn refused(&self, label: &str, reason: impl Into<String>) -> TokenError {
        TokenError::Refused {
            uri: self.uri.to_string(),
            label: label.to_owned(),
            reason: reason.into(),
        }
    }

    /// The objects of `class` labelled `label`.
    fn objects(&self, class: ObjectClass, label: &str) -> Result<Vec<ObjectHandle>, TokenError> {
        self.session()
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(self.failed(format!("finding {label:?}")))
    }

    /// Whether a private key labelled `label` is in the token.
    ///
    /// # Errors
    /// When the token cannot be searched.
    pub fn contains(&self, label: &str) -> Result<bool, TokenError> {
        Ok(!self.objects(ObjectClass::PRIVATE_KEY, label)?.is_empty())
    }

    /// The key pair labelled `label`, checked (see the module's documentation).
    ///
    /// # Errors
    /// [`TokenError::NoSuchKey`] unless exactly one private key has the label; [`TokenError::Refused`]
    /// for a key of another type, one that can leave the token, or a public half that does not
    /// match.
    pub fn key(self: &Arc<Self>, label: &str) -> Result<TokenKey, TokenError> {
        let private = self.objects(ObjectClass::PRIVATE_KEY, label)?;
        let [private] = private[..] else {
            return Err(TokenError::NoSuchKey {
                uri: self.uri.to_string(),
                label: label.to_owned(),
                found: private.len(),
            });
        };
        let attributes = self
            .session()
            .get_attributes(
                private,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Sign,
                ],
            )
            .map_err(self.failed(format!("reading {label:?}")))?;
        for attribute in &attributes {
            match attribute {
                Attribute::Extractable(true) => {
                    return Err(
                        self.refused(label, "is extractable: its private key can leave the token")
                    );
                }
                Attribute::Sensitive(false) => {
                    return Err(
                        self.refused(label, "is not sensitive: its private key can be read")
                    );
                }
                Attribute::Sign(false) => return Err(self.refused(label, "may not sign")),
                _ => {}
            }
        }
        let public = self.objects(ObjectClass::PUBLIC_KEY, label)?;
        let [public] = public[..] else {
            return Err(self.refused(
                label,
                format!(
                    "has {} public key objects by its label, not one",
                    public.len()
                ),
            ));
        };
        let key = TokenKey {
            token: Arc::clone(self),
            label: label.to_owned(),
            private,
            public: self.public_key(label, public)?,
        };
        let probe = b"depotmesh: does this token key's public half match its private one?";
        let signature = key.sign_raw(probe)?;
        if !key.public.verify(probe, &signature) {
            return Err(self.refused(label, "does not verify with its public key object"));
        }
        Ok(key)
    }

    /// The TUF public key of the public key object `public`.
    fn public_key(&self, label: &str, public: ObjectHandle) -> Result<Key, TokenError> {
        let attributes = self
            .session()
            .get_attributes(
                public,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(self.failed(format!("reading the public key {label:?}")))?;
        let (mut kind, mut params, mut point, mut modulus, mut exponent) =
            (None, None, None, None, None);
        for attribute in attributes {
            match attribute {
                Attribute::KeyType(value) => kind = Some(value),
                Attribute::EcParams(value) => params = Some(value),
                Attribute::EcPoint(value) => point = Some(value),
                Attribute::Modulus(value) => modulus = Some(value),
                Attribute::PublicExponent(value) => exponent = Some(value),
                _ => {}
            }
        }
        match (kind, params.as_deref(), point, modulus, exponent) {
            (Some(CkKeyType::EC), Some(params), Some(point), _, _) if params == P256_PARAMS => {
                Ok(Key::EcdsaP256(unwrap_octets(point, 65)))
            }
            (Some(CkKeyType::EC_EDWARDS), Some(params), Some(point), _, _)
                if params == ED25519_PARAMS || params == ED25519_PARAMS_NAMED =>
            {
                let point: [u8; 32] = unwrap_octets(point, 32)
                    .try_into()
                    .map_err(|_| self.refused(label, "has an Ed25519 point of the wrong length"))?;
                ed25519_dalek::VerifyingKey::from_bytes(&point)
                    .map(Key::Ed25519)
                    .map_err(|_| self.refused(label, "has an invalid Ed25519 point"))
            }
            (Some(CkKeyType::RSA), _, _, Some(modulus), Some(exponent)) => {
                Ok(Key::RsaPssSha256(rsa_public_der(&modulus, &exponent)))
            }
            (kind, ..) => Err(self.refused(
                label,
                format!(
                    "is a {} key; TUF metadata takes ECDSA on P-256, RSA and Ed25519",
                    kind.map_or_else(|| "typeless".to_owned(), |kind| kind.to_string())
                ),
            )),
        }
    }

    /// Makes a new key pair of `kind` labelled `label` inside the token.
    ///
    /// # Errors
    /// [`TokenError::Exists`] when the label is taken; the token's refusal otherwise (a token
    /// without the mechanism says so).
    pub fn generate(self: &Arc<Self>, label: &str, kind: KeyType) -> Result<TokenKey, TokenError> {
        if !self.objects(ObjectClass::PRIVATE_KEY, label)?.is_empty()
            || !self.objects(ObjectClass::PUBLIC_KEY, label)?.is_empty()
        {
            return Err(TokenError::Exists {
                uri: self.uri.to_string(),
                label: label.to_owned(),
            });
        }
        let name = Attribute::Label(label.as_bytes().to_vec());
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            name.clone(),
        ];
        let private = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            name,
        ];
        let mechanism = match kind {
            KeyType::EcdsaP256 => {
                public.push(Attribute::EcParams(P256_PARAMS.to_vec()));
                Mechanism::EccKeyPairGen
            }
            KeyType::Ed25519 => {
                public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                Mechanism::EccEdwardsKeyPairGen
            }
            KeyType::RsaPssSha256 => {
                public.push(Attribute::ModulusBits(RSA_BITS.into()));
                public.push(Attribute::PublicExponent(vec![1, 0, 1]));
                Mechanism::RsaPkcsKeyPairGen
            }
        };
        self.session()
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(self.failed(format!("making {kind} key {label:?}")))?;
        self.key(label)
    }

    /// Relabels the key pair `label` as `new_label` (a retired key stays in the token, unused).
    ///
    /// # Errors
    /// When the key is missing, `new_label` is taken, or the token refuses.
    pub fn relabel(&self, label: &str, new_label: &str) -> Result<(), TokenError> {
        if self.contains(new_label)? {
            return Err(TokenError::Exists {
                uri: self.uri.to_string(),
                label: new_label.to_owned(),
            });
        }
        let private = self.objects(ObjectClass::PRIVATE_KEY, label)?;
        if private.len() != 1 {
            return Err(TokenError::NoSuchKey {
                uri: self.uri.to_string(),
                label: label.to_owned(),
                found: private.len(),
            });
        }
        let public = self.objects(ObjectClass::PUBLIC_KEY, label)?;
        for object in private.into_iter().chain(public) {
            self.session()
                .update_attributes(object, &[Attribute::Label(new_label.as_bytes().to_vec())])
                .map_err(self.failed(format!("relabelling {label:?}")))?;
        }
        Ok(())
    }
}

/// A key pair in a token: signs there.
pub struct TokenKey {
    token: Arc<Token>,
    label: String,
    private: ObjectHandle,
    public: Key,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({} {})", self.label, self.public.id())
    }
}

impl TokenKey {
    /// The key's label in the token.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The signature metadata carries, made by the token.
    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let session = self.token.session();
        let failed = |error| TokenError::Operation {
            uri: self.token.uri.to_string(),
            what: format!("signing with {:?}", self.label),
            error,
        };
        match self.public {
            Key::EcdsaP256(_) => {
                let digest = sha2::Sha256::digest(message);
                let raw = session
                    .sign(&Mechanism::Ecdsa, self.private, &digest)
                    .map_err(failed)?;
                ecdsa_p256_der(&raw).ok_or_else(|| {
                    self.token
                        .refused(&self.label, "gave an ECDSA signature that is not 64 bytes")
                })
            }
            Key::RsaPssSha256(_) => {
                let params = PkcsPssParams {
                    hash_alg: MechanismType::SHA256,
                    mgf: PkcsMgfType::MGF1_SHA256,
                    s_len: 32_u64.into(),
                };
                session
                    .sign(&Mechanism::Sha256RsaPkcsPss(params), self.private, message)
                    .map_err(failed)
            }
            Key::Ed25519(_) => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    self.private,
                    message,
                )
                .map_err(failed),
            Key::Unsupported { .. } => Err(self.token.refused(&self.label, "has no usable type")),
        }
    }
}

impl Signer for TokenKey {
    fn public_key(&self) -> Key {
        self.public.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_raw(message).map_err(|error| SignError {
            keyid: self.public.id(),
            reason: error.to_string(),
        })
    }
}

/// The content of a DER OCTET STRING holding `length` bytes (as tokens give `CKA_EC_POINT`),
/// or `bytes` as they are when they are not one (some tokens give the raw point).
fn unwrap_octets(bytes: Vec<u8>, length: usize) -> Vec<u8> {
    let header = match u8::try_from(length) {
        Ok(short) if short < 128 => vec![0x04, short],
        Ok(long) => vec![0x04, 0x81, long],
        Err(_) => return bytes,
    };
    if bytes.len() == header.len() + length && bytes.starts_with(&header) {
        bytes[header.len()..].to_vec()
    } else {
        bytes
    }
}
