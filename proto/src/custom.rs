//! What depotmesh signs in a target's `custom` object, as types.
//!
//! TUF leaves `custom` to the application and signs it with the rest of the target entry. The
//! image repository says there what an image is for and how to get it cheaply
//! ([`ImageCustom`]); the director says which ECUs are to install it and how urgently
//! ([`DirectorCustom`]). The origin writes these types and every reader parses them, so a key
//! is spelt in one place and a malformed value is refused with its path (`custom.deltas.<name>
//! .length`) rather than read as absent.
//!
//! Keys another tool adds to `custom` are ignored when reading (a repository may carry more
//! than depotmesh reads); nothing read here is signed again.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BlobId;
use crate::ids::EcuSerial;
use crate::tuf::metadata::TargetFile;

/// How urgent an update is: a campaign's priority class, signed by the director for each
/// vehicle (the vehicle's link policy reads it: may it use cellular?).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Priority {
    /// A security fix.
    Security,
    /// A bug fix.
    Fix,
    /// A feature release.
    Feature,
}

/// A priority that is none of `security`, `fix`, `feature`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority {0:?} must be security, fix or feature")]
pub struct PriorityError(pub String);

impl Priority {
    /// All classes, most urgent first.
    pub const ALL: [Self; 3] = [Self::Security, Self::Fix, Self::Feature];

    /// Its name in configuration and signed metadata: `security`, `fix`, `feature`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Security => "security",
            Self::Fix => "fix",
            Self::Feature => "feature",
        }
    }
}

impl FromStr for Priority {
    type Err = PriorityError;

    fn from_str(text: &str) -> Result<Self, PriorityError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| PriorityError(text.to_string()))
    }
}

impl TryFrom<String> for Priority {
    type Error = PriorityError;

    fn try_from(text: String) -> Result<Self, PriorityError> {
        text.parse()
    }
}

impl From<Priority> for &'static str {
    fn from(priority: Priority) -> Self {
        priority.name()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A target's `custom` that does not read as depotmesh's: where, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target {target}: custom.{path}: {detail}")]
pub struct CustomError {
    /// The target.
    pub target: String,
    /// Where in `custom` (`deltas.app-1.0.bin.length`); empty for `custom` itself.
    pub path: String,
    /// What was wrong.
    pub detail: String,
}

/// Reads `custom` of `target` as `T`; the error names the path of the bad value.
fn read<T: DeserializeOwned>(target: &str, custom: Option<&Value>) -> Result<T, CustomError> {
    let empty = Value::Object(serde_json::Map::new());
    let value = match custom {
        Some(Value::Object(_)) => custom.unwrap_or(&empty),
        None => &empty,
        Some(_) => {
            return Err(CustomError {
                target: target.to_string(),
                path: String::new(),
                detail: "must be an object".into(),
            });
        }
    };
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        CustomError {
            target: target.to_string(),
            path: if path == "." { String::new() } else { path },
            detail: error.into_inner().to_string(),
        }
    })
}

/// One delta the image repository offers for an image: from the image named by its key in
/// [`ImageCustom::deltas`] (a target name of an earlier release) to this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRef {
    /// The delta's BLAKE3: its blob id on the mesh.
    pub blake3: BlobId,
    /// Its length in bytes.
    pub length: u64,
    /// The BLAKE3 of the image it applies to.
    pub from_blake3: BlobId,
}

/// The image compressed: a delta (depotmesh's format) from the empty image, for a vehicle that
/// runs nothing a listed delta applies to (a new ECU, a replaced part, a jump across
/// releases). It rebuilds the image in the same bounded memory as any delta, and the flasher
/// checks what it rebuilds against the target's BLAKE3 like any delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedRef {
    /// Its BLAKE3: its blob id on the mesh.
    pub blake3: BlobId,
    /// Its length in bytes.
    pub length: u64,
}

/// An image repository target's `custom`: what the image is for and how to get it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCustom {
    /// The image's BLAKE3: its blob id on the mesh, and the root its pieces verify against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<BlobId>,
    /// The hardware ids the image runs on.
    #[serde(default)]
    pub hardware_ids: Vec<String>,
    /// Its release counter (Uptane: an ECU never installs a lower one than it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_counter: Option<u64>,
    /// Deltas to this image, by the target name of the image each applies to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deltas: BTreeMap<String, DeltaRef>,
    /// The image compressed, when the origin found it worth listing (smaller than the image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<CompressedRef>,
}

impl ImageCustom {
    /// Reads the `custom` of image repository target `name`.
    pub fn of(name: &str, file: &TargetFile) -> Result<Self, CustomError> {
        read(name, file.custom.as_ref())
    }

    /// As JSON, for a target entry.
    pub fn to_value(&self) -> Value {
        // Only strings, integers, lists and maps with string keys: serialising cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Whether the image is released for `hardware_id`.
    pub fn fits(&self, hardware_id: &str) -> bool {
        self.hardware_ids.iter().any(|id| id == hardware_id)
    }
}

/// One ECU a director target is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcuIdentifier {
    /// The ECU's hardware id.
    pub hardware_id: String,
}

/// A director target's `custom`: which ECUs of the vehicle install it, and how urgently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorCustom {
    /// The ECUs to install it on, with their hardware ids.
    pub ecu_identifiers: BTreeMap<EcuSerial, EcuIdentifier>,
    /// The image's release counter, as the image repository gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_counter: Option<u64>,
    /// The update's priority class (absent: a feature, the least urgent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// When the update was released to the vehicle (Unix seconds): a fix's cellular deadline
    /// runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u64>,
    /// The image's BLAKE3, copied from the image repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<BlobId>,
}

impl DirectorCustom {
    /// Reads the `custom` of director target `name`.
    pub fn of(name: &str, file: &TargetFile) -> Result<Self, CustomError> {
        if file.custom.is_none() {
            return Err(CustomError {
                target: name.to_string(),
                path: String::new(),
                detail: "director targets must have a custom object".into(),
            });
        }
        read(name, file.custom.as_ref())
    }

    /// As JSON, for a target entry.
    pub fn to_value(&self) -> Value {
        // Only strings, integers and maps with string keys: serialising cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The priority, a feature when the director gave none.
    pub fn priority(&self) -> Priority {
        self.priority.unwrap_or(Priority::Feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(custom: Value) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: BTreeMap::new(),
            custom: Some(custom),
        }
    }

    const B: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn image_custom_round_trips_as_the_origin_writes_it() {
        let written = json!({
            "blake3": B,
            "hardware_ids": ["gw-v1"],
            "release_counter": 2,
            "deltas": {"app-1.bin": {"blake3": B, "length": 21, "from_blake3": B}},
            "compressed": {"blake3": B, "length": 40},
            "vendor": "someone else's key",
        });
        let custom = ImageCustom::of("app-2.bin", &file(written.clone())).unwrap();
        assert_eq!(custom.release_counter, Some(2));
        assert_eq!(custom.compressed.as_ref().map(|c| c.length), Some(40));
        assert!(custom.fits("gw-v1") && !custom.fits("gw-v2"));
        assert_eq!(custom.deltas["app-1.bin"].length, 21);
        let mut expected = written;
        expected.as_object_mut().unwrap().remove("vendor");
        assert_eq!(custom.to_value(), expected);
        // A bare image of another tool: nothing depotmesh needs, nothing wrong.
        let bare = TargetFile {
            custom: None,
            ..file(Value::Null)
        };
        assert_eq!(ImageCustom::of("x", &bare).unwrap(), ImageCustom::default());
    }

    #[test]
    fn a_malformed_value_is_named_by_its_path() {
        let error = ImageCustom::of(
            "app-2.bin",
            &file(
                json!({"deltas": {"app-1.bin": {"blake3": B, "length": "21", "from_blake3": B}}}),
            ),
        )
        .unwrap_err();
        assert_eq!(error.path, "deltas.app-1.bin.length", "{error}");
        assert!(
            error
                .to_string()
                .starts_with("target app-2.bin: custom.deltas"),
            "{error}"
        );
        let error = ImageCustom::of("a", &file(json!({"compressed": {"blake3": B}}))).unwrap_err();
        assert_eq!(error.path, "compressed", "{error}");
        assert!(
            error.to_string().contains("missing field `length`"),
            "{error}"
        );
        let error = ImageCustom::of("a", &file(json!({"blake3": "zz"}))).unwrap_err();
        assert_eq!(error.path, "blake3", "{error}");
        let error = ImageCustom::of("a", &file(json!([1]))).unwrap_err();
        assert!(error.to_string().contains("must be an object"), "{error}");
        let error = DirectorCustom::of(
            "a",
            &file(json!({"ecu_identifiers": {"GW 1": {"hardware_id": "x"}}})),
        )
        .unwrap_err();
        assert!(error.to_string().contains("ECU serial \"GW 1\""), "{error}");
        let error = DirectorCustom::of(
            "a",
            &file(json!({"ecu_identifiers": {}, "priority": "urgent"})),
        )
        .unwrap_err();
        assert_eq!(error.path, "priority", "{error}");
    }

    #[test]
    fn director_custom_defaults_to_the_least_urgent() {
        let custom = DirectorCustom::of(
            "a",
            &file(json!({"ecu_identifiers": {"GW-1": {"hardware_id": "gw-v1"}}})),
        )
        .unwrap();
        assert_eq!(custom.priority(), Priority::Feature);
        assert_eq!(custom.released, None);
        let signed = DirectorCustom {
            priority: Some(Priority::Security),
            released: Some(7),
            ..custom
        };
        assert_eq!(
            signed.to_value(),
            json!({"ecu_identifiers": {"GW-1": {"hardware_id": "gw-v1"}}, "priority": "security", "released": 7})
        );
        assert_eq!("fix".parse::<Priority>().unwrap(), Priority::Fix);
        assert!(
            "urgent"
                .parse::<Priority>()
                .unwrap_err()
                .to_string()
                .contains("security, fix or feature")
        );
    }
}
