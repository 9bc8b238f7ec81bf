//! PKCS #11 URIs (RFC 7512) naming the token that holds the origin's keys, e.g.
//! `pkcs11:token=depotmesh;serial=1a2b?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin`.
//!
//! The path names the token: `token` (its label), `manufacturer`, `serial`, `model`, any of
//! which must all match. The query says how to reach it: `module-path` (the PKCS #11 library,
//! required), and the user PIN as `pin-source` (a file, or a `file:` URI, whose first line is the
//! PIN) or `pin-value`. Values are percent-decoded. The origin names each key object itself
//! (`image-root`, …), so a key store's URI names no `object`, `id` or `type`; an attribute this
//! parser does not know is an error, not ignored, so that a misspelt one never widens the match.

use std::fmt;
use std::path::PathBuf;

/// A parsed `pkcs11:` URI naming a token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenUri {
    /// The token's label.
    pub token: Option<String>,
    /// Its manufacturer id.
    pub manufacturer: Option<String>,
    /// Its serial number.
    pub serial: Option<String>,
    /// Its model.
    pub model: Option<String>,
    /// The PKCS #11 library.
    pub module_path: PathBuf,
    /// Where the user PIN is.
    pub pin: PinSource,
}

/// Where the user PIN comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin-source`: a file whose first line is the PIN.
    File(PathBuf),
    /// `pin-value`: the PIN itself (in the URI; for tests and rehearsals).
    Value(String),
}

/// What is wrong with a `pkcs11:` URI; never repeats a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// It does not start with `pkcs11:`.
    #[error("a PKCS #11 URI starts with pkcs11:")]
    Scheme,
    /// An attribute without `=`.
    #[error("PKCS #11 URI attribute {0:?} has no =value")]
    NoValue(String),
    /// Bad percent-encoding or not UTF-8.
    #[error("PKCS #11 URI attribute {0}: bad percent-encoding")]
    Encoding(String),
    /// An attribute given twice.
    #[error("PKCS #11 URI attribute {0} is given twice")]
    Repeated(String),
    /// An attribute the key store does not take.
    #[error(
        "PKCS #11 URI attribute {0} is not taken here: name the token (token, manufacturer, serial, model) and module-path, pin-source or pin-value; the origin names each key object itself"
    )]
    Unknown(String),
    /// No `module-path`.
    #[error("PKCS #11 URI needs module-path=<the PKCS #11 library>")]
    NoModule,
    /// Neither `pin-source` nor `pin-value`, or both.
    #[error("PKCS #11 URI needs exactly one of pin-source=<file> and pin-value=<PIN>")]
    Pin,
}

impl TokenUri {
    /// Parses `text`.
    ///
    /// # Errors
    /// [`UriError`], naming the attribute at fault.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let rest = text.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut uri = Self {
            token: None,
            manufacturer: None,
            serial: None,
            model: None,
            module_path: PathBuf::new(),
            pin: PinSource::Value(String::new()),
        };
        let (mut module, mut pin_file, mut pin_value) = (None, None, None);
        let path_attributes = path.split(';').map(|a| (a, true));
        let query_attributes = query.split('&').map(|a| (a, false));
        for (attribute, in_path) in path_attributes.chain(query_attributes) {
            if attribute.is_empty() {
                continue;
            }
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError::NoValue(attribute.to_owned()))?;
            let value = decode(value).ok_or_else(|| UriError::Encoding(name.to_owned()))?;
            let slot = match (in_path, name) {
                (true, "token") => &mut uri.token,
                (true, "manufacturer") => &mut uri.manufacturer,
                (true, "serial") => &mut uri.serial,
                (true, "model") => &mut uri.model,
                (false, "module-path") => &mut module,
                (false, "pin-source") => &mut pin_file,
                (false, "pin-value") => &mut pin_value,
                _ => return Err(UriError::Unknown(name.to_owned())),
            };
            if slot.replace(value).is_some() {
                return Err(UriError::Repeated(name.to_owned()));
            }
        }
        uri.module_path = module.map(PathBuf::from).ok_or(UriError::NoModule)?;
        uri.pin = match (pin_file, pin_value) {
            (Some(file), None) => {
                let file = file.strip_prefix("file://").unwrap_or(&file);
                let file = file.strip_prefix("file:").unwrap_or(file);
                PinSource::File(PathBuf::from(file))
            }
            (None, Some(value)) => PinSource::Value(value),
            _ => return Err(UriError::Pin),
        };
        Ok(uri)
    }

    /// Whether a token with these fields (as `C_GetTokenInfo` gives them, blank-padded) is the
    /// one named.
    pub fn matches(&self, label: &str, manufacturer: &str, serial: &str, model: &str) -> bool {
        let same = |wanted: &Option<String>, have: &str| {
            wanted
                .as_deref()
                .is_none_or(|wanted| wanted == have.trim_end())
        };
        same(&self.token, label)
            && same(&self.manufacturer, manufacturer)
            && same(&self.serial, serial)
            && same(&self.model, model)
    }
}

/// The token and module, for messages: never the PIN.
impl fmt::Display for TokenUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("serial", &self.serial),
            ("model", &self.model),
        ];
        let path: Vec<String> = named
            .iter()
            .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={value}")))
            .collect();
        write!(
            f,
            "pkcs11:{}?module-path={}",
            path.join(";"),
            self.module_path.display()
        )
    }
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(file) => write!(f, "File({})", file.display()),
            Self::Value(_) => f.write_str("Value(..)"),
        }
    }
}

impl fmt::Debug for TokenUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Percent-decodes `text` (RFC 3986), refusing a bad escape and bytes that are not UTF-8.
fn decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail.get(..2)?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_uri_parses_with_its_pin_source() {
        let uri = TokenUri::parse(
            "pkcs11:token=depot%20mesh;serial=1a2b?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("depot mesh"));
        assert_eq!(uri.serial.as_deref(), Some("1a2b"));
        assert_eq!(uri.pin, PinSource::File("/run/pin".into()));
        assert!(uri.matches("depot mesh    ", "SoftHSM", "1a2b", "SoftHSM v2"));
        assert!(!uri.matches("depot", "SoftHSM", "1a2b", "SoftHSM v2"));
        let with_value =
            TokenUri::parse("pkcs11:token=t?pin-value=12%3B34&module-path=/m.so").unwrap();
        assert_eq!(with_value.pin, PinSource::Value("12;34".into()));
        // Messages never carry the PIN.
        assert_eq!(with_value.to_string(), "pkcs11:token=t?module-path=/m.so");
        assert!(!format!("{with_value:?}").contains("12"));
    }

    #[test]
    fn a_bad_uri_names_what_is_wrong() {
        let cases = [
            ("file:/keys", UriError::Scheme),
            (
                "pkcs11:token=t;object=image-root?module-path=/m&pin-value=1",
                UriError::Unknown("object".into()),
            ),
            (
                "pkcs11:token=t?module-path=/m&pin-value=1&pin-valeu=2",
                UriError::Unknown("pin-valeu".into()),
            ),
            ("pkcs11:token=t?pin-value=1", UriError::NoModule),
            ("pkcs11:token=t?module-path=/m", UriError::Pin),
            (
                "pkcs11:token=t?module-path=/m&pin-value=1&pin-source=/p",
                UriError::Pin,
            ),
            (
                "pkcs11:token=t;token=u?module-path=/m&pin-value=1",
                UriError::Repeated("token".into()),
            ),
            (
                "pkcs11:token=%zz?module-path=/m&pin-value=1",
                UriError::Encoding("token".into()),
            ),
            (
                "pkcs11:token=%ff?module-path=/m&pin-value=1",
                UriError::Encoding("token".into()),
            ),
            (
                "pkcs11:token?module-path=/m",
                UriError::NoValue("token".into()),
            ),
        ];
        for (text, error) in cases {
            assert_eq!(TokenUri::parse(text), Err(error), "{text}");
        }
    }
}
