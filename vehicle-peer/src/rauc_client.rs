//! RAUC's client as depotmesh drives it: `rauc install`, `rauc status --detailed
//! --output-format=json` (parsed into [`RaucStatus`] and an A/B [`RaucPair`] of one slot class)
//! and `rauc status mark-*`. It talks to the RAUC service over D-Bus as RAUC's own tools do. The
//! install built on it is [`crate::rauc`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::boot::Slot;

/// Why RAUC could not do what was asked; each names the command and what it said.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaucError {
    /// The `rauc` program did not start.
    #[error("{command} did not start: {source}")]
    NotStarted {
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// RAUC refused or failed (a bundle it does not trust, not compatible, a slot it cannot
    /// write, no service), with what it printed.
    #[error("{command} exited with {status}: {said}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of what it printed on stderr (or stdout).
        said: String,
    },
    /// `rauc status` printed something this module does not understand.
    #[error("`rauc status` output: {0}")]
    Status(String),
    /// The system's slots do not make an A/B pair of the configured class.
    #[error("RAUC slots of class {class:?}: {detail}")]
    Slots {
        /// The configured slot class.
        class: String,
        /// What is wrong.
        detail: String,
    },
    /// RAUC said an install succeeded but did not make its slot the next to boot.
    #[error("after installing, RAUC boots {primary:?} next, not the installed slot {installed}")]
    NotActivated {
        /// The slot RAUC boots next (slot name), if any.
        primary: Option<String>,
        /// The slot installed (slot name).
        installed: String,
    },
}

/// How much of RAUC's output an error quotes.
const SAID_BYTES: usize = 2048;

/// The RAUC client: the program and, optionally, the system configuration it reads (RAUC's
/// compiled-in `/etc/rauc/system.conf` otherwise).
#[derive(Clone, Debug)]
pub struct Rauc {
    /// The `rauc` program.
    pub program: PathBuf,
    /// `--conf` for every command, when set.
    pub conf: Option<PathBuf>,
}

impl Default for Rauc {
    fn default() -> Self {
        Self {
            program: PathBuf::from("rauc"),
            conf: None,
        }
    }
}

/// One of RAUC's marks (`rauc status mark-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The slot works: keep booting it.
    Good,
    /// The slot must not be booted.
    Bad,
    /// Boot the slot next.
    Active,
}

impl Mark {
    pub(crate) fn command(self) -> &'static str {
        match self {
            Self::Good => "mark-good",
            Self::Bad => "mark-bad",
            Self::Active => "mark-active",
        }
    }
}

impl Rauc {
    fn run(&self, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, RaucError> {
        let mut all: Vec<OsString> = Vec::new();
        if let Some(conf) = &self.conf {
            let mut flag = OsString::from("--conf=");
            flag.push(conf);
            all.push(flag);
        }
        all.extend(args.iter().map(|a| a.to_os_string()));
        let command = std::iter::once(self.program.as_os_str().to_os_string())
            .chain(all.iter().cloned())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let output = Command::new(&self.program)
            .args(&all)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| RaucError::NotStarted {
                command: command.clone(),
                source,
            })?;
        if !output.status.success() {
            let said = if output.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &output.stderr
            } else {
                &output.stdout
            };
            let said = String::from_utf8_lossy(&said[said.len().saturating_sub(SAID_BYTES)..]);
            return Err(RaucError::Failed {
                command,
                status: output.status,
                said: said.trim().to_string(),
            });
        }
        Ok(output.stdout)
    }

    /// What RAUC says of the system (`rauc status --detailed --output-format=json`).
    pub fn status(&self) -> Result<RaucStatus, RaucError> {
        let out = self.run(&[
            "status".as_ref(),
            "--detailed".as_ref(),
            "--output-format=json".as_ref(),
        ])?;
        RaucStatus::parse(&out)
    }

    /// `rauc install BUNDLE`: RAUC checks the bundle's signature and compatible and writes the
    /// slots it is for. Returns when RAUC has finished.
    pub fn install(&self, bundle: &Path) -> Result<(), RaucError> {
        self.run(&["install".as_ref(), bundle.as_os_str()])
            .map(|_| ())
    }

    /// `rauc status mark-* SLOT` (a slot name such as `rootfs.1`, or `booted` / `other`).
    pub fn mark(&self, mark: Mark, slot: &str) -> Result<(), RaucError> {
        self.run(&["status".as_ref(), mark.command().as_ref(), slot.as_ref()])
            .map(|_| ())
    }
}

/// One slot as `rauc status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaucSlot {
    /// Its name (`rootfs.0`).
    pub name: String,
    /// Its class (`rootfs`).
    pub class: String,
    /// Its name to the bootloader (`A`), for bootable slots.
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: String,
    /// `good` or `bad`, for bootable slots.
    pub boot_status: Option<String>,
    /// The version of the bundle last installed into it, if RAUC recorded one.
    pub bundle_version: Option<String>,
}

/// What `rauc status` says of the system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaucStatus {
    /// The system's compatible string.
    pub compatible: String,
    /// The bootname of the slot the system booted.
    pub booted: Option<String>,
    /// The slot name of the slot the bootloader boots next.
    pub boot_primary: Option<String>,
    /// Every slot.
    pub slots: Vec<RaucSlot>,
}

/// The two bootable slots of one class: what depotmesh calls the ECU's banks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaucPair {
    /// Slot name by bootname, for both.
    pub names: BTreeMap<Slot, String>,
    /// The slot booted.
    pub booted: Slot,
    /// The slot the bootloader boots next (`None`: neither of the pair).
    pub primary: Option<Slot>,
    /// The slots RAUC counts good.
    pub good: Vec<Slot>,
}

impl RaucPair {
    /// The slot of the pair that is not `slot`.
    pub fn other(&self, slot: &Slot) -> Option<&Slot> {
        self.names.keys().find(|s| *s != slot)
    }

    /// The RAUC slot name of `slot`.
    pub fn name(&self, slot: &Slot) -> Option<&str> {
        self.names.get(slot).map(String::as_str)
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl RaucStatus {
    /// Parses `rauc status --detailed --output-format=json`.
    pub fn parse(json: &[u8]) -> Result<Self, RaucError> {
        let bad = |detail: &str| RaucError::Status(detail.to_string());
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| RaucError::Status(format!("not JSON: {e}")))?;
        let compatible = text(&value, "compatible").ok_or_else(|| bad("no \"compatible\""))?;
        let list = value
            .get("slots")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"slots\" list"))?;
        let mut slots = Vec::with_capacity(list.len());
        for entry in list {
            // Each entry is an object of one slot name.
            let Some((name, slot)) = entry
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.iter().next())
            else {
                return Err(bad("a \"slots\" entry is not an object of one slot"));
            };
            let class = text(slot, "class")
                .ok_or_else(|| RaucError::Status(format!("slot {name} has no class")))?;
            let state = text(slot, "state")
                .ok_or_else(|| RaucError::Status(format!("slot {name} has no state")))?;
            slots.push(RaucSlot {
                name: name.clone(),
                class,
                bootname: text(slot, "bootname"),
                state,
                boot_status: text(slot, "boot_status"),
                bundle_version: slot
                    .pointer("/slot_status/bundle/version")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        Ok(Self {
            compatible,
            booted: text(&value, "booted"),
            boot_primary: text(&value, "boot_primary"),
            slots,
        })
    }

    /// The A/B pair of slots of `class`: exactly two with bootnames that are depotmesh slot
    /// names, one of them booted.
    pub fn pair(&self, class: &str) -> Result<RaucPair, RaucError> {
        let refuse = |detail: String| RaucError::Slots {
            class: class.to_string(),
            detail,
        };
        let of_class: Vec<&RaucSlot> = self.slots.iter().filter(|s| s.class == class).collect();
        if of_class.len() != 2 {
            return Err(refuse(format!(
                "{} slots of this class, not two (RAUC lists {})",
                of_class.len(),
                self.slots
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut names = BTreeMap::new();
        let mut good = Vec::new();
        let mut primary = None;
        for slot in of_class {
            let bootname = slot
                .bootname
                .as_deref()
                .ok_or_else(|| refuse(format!("slot {} has no bootname", slot.name)))?;
            let id = Slot::new(bootname).map_err(|e| refuse(format!("slot {}: {e}", slot.name)))?;
            if slot.boot_status.as_deref() == Some("good") {
                good.push(id.clone());
            }
            if self.boot_primary.as_deref() == Some(slot.name.as_str()) {
                primary = Some(id.clone());
            }
            names.insert(id, slot.name.clone());
        }
        let booted = self
            .booted
            .as_deref()
            .and_then(|b| names.keys().find(|s| s.as_str() == b))
            .cloned()
            .ok_or_else(|| {
                refuse(format!(
                    "the system booted {:?}, which is neither of them",
                    self.booted
                ))
            })?;
        Ok(RaucPair {
            names,
            booted,
            primary,
            good,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STATUS: &str = r#"{"compatible":"c","variant":"","booted":"A","boot_primary":"rootfs.1",
      "slots":[{"rootfs.1":{"class":"rootfs","device":"/b","type":"raw","bootname":"B",
        "state":"inactive","boot_status":"good","slot_status":{"bundle":{"version":"2"}}}},
       {"rootfs.0":{"class":"rootfs","device":"/a","type":"raw","bootname":"A",
        "state":"booted","boot_status":"good"}},
       {"appfs.0":{"class":"appfs","device":"/c","type":"raw","state":"inactive"}}]}"#;

    fn slot(name: &str) -> Slot {
        Slot::new(name).unwrap()
    }

    #[test]
    fn status_parses_into_the_pair_of_a_class() {
        let status = RaucStatus::parse(STATUS.as_bytes()).unwrap();
        assert_eq!(status.slots.len(), 3);
        assert_eq!(status.slots[0].bundle_version.as_deref(), Some("2"));
        let pair = status.pair("rootfs").unwrap();
        assert_eq!(pair.booted, slot("A"));
        assert_eq!(pair.primary, Some(slot("B")));
        assert_eq!(pair.good, vec![slot("B"), slot("A")]);
        assert_eq!(pair.name(&slot("B")), Some("rootfs.1"));
        assert_eq!(pair.other(&slot("A")), Some(&slot("B")));
        // A class with one slot, or none, is no pair; the error names the slots there are.
        let error = status.pair("appfs").unwrap_err().to_string();
        assert!(
            error.contains("1 slots") && error.contains("rootfs.0"),
            "{error}"
        );
        assert!(status.pair("kernel").is_err());
    }

    #[test]
    fn bad_status_output_is_an_error_naming_what_is_wrong() {
        for (json, expect) in [
            ("not json", "not JSON"),
            (r#"{"slots":[]}"#, "compatible"),
            (r#"{"compatible":"c"}"#, "slots"),
            (
                r#"{"compatible":"c","slots":[{"a":{},"b":{}}]}"#,
                "one slot",
            ),
            (
                r#"{"compatible":"c","slots":[{"a":{"state":"x"}}]}"#,
                "no class",
            ),
        ] {
            let error = RaucStatus::parse(json.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(expect), "{json}: {error}");
        }
        let booted_elsewhere = STATUS.replace(r#""booted":"A""#, r#""booted":"C""#);
        let error = RaucStatus::parse(booted_elsewhere.as_bytes())
            .unwrap()
            .pair("rootfs")
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither"), "{error}");
        let bad_bootname = STATUS.replace(r#""bootname":"B""#, r#""bootname":"B-1""#);
        assert!(
            RaucStatus::parse(bad_bootname.as_bytes())
                .unwrap()
                .pair("rootfs")
                .is_err()
        );
    }
}
