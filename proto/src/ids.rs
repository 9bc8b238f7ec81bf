//! The fleet's names for things: vehicles, ECUs and campaigns. Each is parsed once, where it
//! enters (a request, a configuration file, signed metadata), into a type that can only hold a
//! valid value; past that edge nobody checks a name again, and a name that reaches a path, a
//! repository name or a log line is known to be safe there.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A name that failed its rules: which kind of name, what it was, and the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} must be {rule}")]
pub struct IdError {
    /// `vehicle id`, `ECU serial`, `campaign id`.
    pub kind: &'static str,
    /// The text that was refused.
    pub value: String,
    /// What it must be.
    pub rule: &'static str,
}

/// Whether `text` is 1 to 64 ASCII letters, digits or one of `extra`.
fn is_name(text: &str, extra: &[u8]) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $rule:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What the name must be, in words.
            pub const RULE: &'static str = $rule;

            /// Parses `text`; the error names the kind of name and the rule it broke.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if is_name(text, $extra) {
                    Ok(Self(text.to_string()))
                } else {
                    Err(IdError {
                        kind: $kind,
                        value: text.to_string(),
                        rule: $rule,
                    })
                }
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name's bytes (a storage key).
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// A vehicle's id (its VIN): safe as a path segment and in a repository name
    /// (`director/<vin>`).
    Vin,
    "vehicle id",
    "1 to 64 of A-Z, a-z, 0-9, - and _",
    b"-_"
);

name_type!(
    /// An ECU's serial, unique within its vehicle: a key of signed metadata
    /// (`custom.ecu_identifiers`), of the flasher's journal and of the director's registry.
    EcuSerial,
    "ECU serial",
    "1 to 64 of A-Z, a-z, 0-9, - _ . and :",
    b"-_.:"
);

name_type!(
    /// A campaign's id: part of the wave hash, a label value and a URL path segment.
    CampaignId,
    "campaign id",
    "1 to 64 of A-Z, a-z, 0-9, - _ and .",
    b"-_."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_where_they_are_parsed() {
        assert_eq!(
            Vin::parse("WDB9634031L123456").unwrap(),
            "WDB9634031L123456"
        );
        for bad in ["", "../x", "a b", "a.b", &"x".repeat(65)] {
            let error = Vin::parse(bad).unwrap_err();
            assert_eq!(error.kind, "vehicle id");
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        assert!(EcuSerial::parse("BRK-1.2:a_b").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(EcuSerial::parse(bad).is_err(), "{bad:?}");
        }
        assert!(CampaignId::parse("fleet-2026.03_a").is_ok());
        for bad in ["", "a:b", "a/b", &"x".repeat(65)] {
            assert!(CampaignId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_refuses_what_parse_refuses() {
        let vin: Vin = serde_json::from_str("\"VIN-1\"").unwrap();
        assert_eq!(serde_json::to_string(&vin).unwrap(), "\"VIN-1\"");
        let error = serde_json::from_str::<Vin>("\"../etc\"").unwrap_err();
        assert!(
            error.to_string().contains("vehicle id \"../etc\""),
            "{error}"
        );
        let error = serde_json::from_str::<CampaignId>("\"a b\"").unwrap_err();
        assert!(error.to_string().contains("campaign id"), "{error}");
    }
}
