//! The vehicle daemon's configuration (`vehicle-peer --config FILE`; the commented example is
//! `config/vehicle.toml`). Every error names the file, the key and its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use node::policy::{LinkClass, PolicyConfig, Window};
use node::text::line_of;
use serde::Deserialize;
use toml::Spanned;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    vin: Spanned<String>,
    data_dir: PathBuf,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    peers: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    mdns: bool,
    #[serde(default = "one")]
    threads: u16,
    image_root: Option<PathBuf>,
    director_root: Option<PathBuf>,
    director_url: Option<Spanned<String>>,
    director_ca: Option<PathBuf>,
    primary_key_file: PathBuf,
    ecus: Spanned<Vec<PathBuf>>,
    #[serde(default = "check_interval_secs")]
    check_interval_secs: u64,
    #[serde(default = "metadata_timeout_secs")]
    metadata_timeout_secs: u64,
    #[serde(default = "stall_timeout_secs")]
    stall_timeout_secs: u64,
    download_bytes_per_sec: Option<Spanned<u64>>,
    link: LinkFile,
    #[serde(default)]
    policy: PolicyFile,
    boot: BootFile,
    mesh: Option<node::mesh_config::MeshSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    class: Option<Spanned<String>>,
    #[serde(default = "full_signal")]
    signal: u8,
    command: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    cellular_windows: Vec<Spanned<String>>,
    #[serde(default)]
    monthly_budget_bytes: u64,
    #[serde(default = "min_signal")]
    min_signal: u8,
    #[serde(default = "fix_deadline_hours")]
    fix_deadline_hours: u64,
    #[serde(default)]
    utc_offset_minutes: i32,
}

impl Default for PolicyFile {
    fn default() -> Self {
        Self {
            cellular_windows: Vec::new(),
            monthly_budget_bytes: 0,
            min_signal: min_signal(),
            fix_deadline_hours: fix_deadline_hours(),
            utc_offset_minutes: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootFile {
    mode: Spanned<String>,
    reboot_command: Option<Spanned<Vec<String>>>,
}

fn yes() -> bool {
    true
}
fn one() -> u16 {
    1
}
fn full_signal() -> u8 {
    100
}
fn min_signal() -> u8 {
    20
}
fn fix_deadline_hours() -> u64 {
    72
}
fn check_interval_secs() -> u64 {
    300
}
fn metadata_timeout_secs() -> u64 {
    30
}
fn stall_timeout_secs() -> u64 {
    60
}

/// How the daemon learns the link it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSource {
    /// Always this link (a gateway that only ever sees the yard WiFi; tests).
    Fixed {
        /// The class.
        class: LinkClass,
        /// Its signal quality.
        signal: u8,
    },
    /// Run this command before each check; it prints the class and, for cellular, the signal
    /// quality 0–100 (`cellular 63`), or `none` when there is no link.
    Command(Vec<String>),
}

/// What the vehicle's ECUs boot from, and how a reboot happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMode {
    /// The gateway's own ECU: the running slot is `rauc.slot=` on the kernel command line; a
    /// reboot runs this command (the daemon starts again after it, from the journal).
    Reboot(Vec<String>),
    /// File-backed ECUs (a bench or netsim): the daemon plays U-Boot's script for every ECU at
    /// start and whenever the install asks for a reboot.
    Simulated,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct VehicleConfig {
    /// The vehicle's id: its director repository is `director/<vin>`.
    pub vin: proto::Vin,
    /// Store, identity, trusted metadata, journal, cellular usage, reports.
    pub data_dir: PathBuf,
    /// Addresses to listen on (neighbours fetch from this vehicle).
    pub listen: Vec<Multiaddr>,
    /// Peers to ask first (the depot), with `/p2p/<peer id>`.
    pub peers: Vec<Multiaddr>,
    /// Find the depot and neighbours on the LAN.
    pub mdns: bool,
    /// Runtime threads.
    pub threads: u16,
    /// The image repository's first root (until one is trusted).
    pub image_root: Option<PathBuf>,
    /// The director's first root (until one is trusted).
    pub director_root: Option<PathBuf>,
    /// The director service (`origin serve`) that takes the vehicle's signed manifests, e.g.
    /// `https://director.fleet.example`; none: reports stay under `reports/`.
    pub director_url: Option<String>,
    /// The CA certificates (PEM) the director's certificate must chain to: the origin's
    /// `tls/director-ca.pem`. None: the system's web PKI roots.
    pub director_ca: Option<PathBuf>,
    /// The primary's ed25519 seed (hex), which signs the vehicle's version manifests.
    pub primary_key_file: PathBuf,
    /// ECU configuration files (`config/ecu.toml`).
    pub ecus: Vec<PathBuf>,
    /// Time between checks.
    pub check_interval: Duration,
    /// Most time one metadata file may take.
    pub metadata_timeout: Duration,
    /// Give up a download when nothing moved this long (the next check resumes it).
    pub stall_timeout: Duration,
    /// Bytes per second the vehicle downloads over the mesh at most, over all its peers (the
    /// depot and neighbours) at once; `None`: no limit.
    pub download_bytes_per_sec: Option<u64>,
    /// The link.
    pub link: LinkSource,
    /// Cellular rules.
    pub policy: PolicyConfig,
    /// Boot control.
    pub boot: BootMode,
    /// The `[mesh]` section: the fleet the vehicle belongs to (its files are read when the
    /// daemon opens); `None`, no section, is refused then ([`node::mesh_config`]).
    pub mesh: Option<node::mesh_config::MeshSection>,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> anyhow::Result<VehicleConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// A configuration that does not hold: every error names its key (and its line, where the
/// value is written).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, a key unknown or missing, or a value of the wrong type (toml names the line).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value that does not parse or is refused, where it is written.
    #[error("{key} (line {line}): {why}")]
    At {
        /// The key.
        key: &'static str,
        /// Its line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A key's value refused, or keys that do not go together (`detail` follows the key).
    #[error("{key}{detail}")]
    Key {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

fn refused(key: &'static str, detail: String) -> ConfigError {
    ConfigError::Key { key, detail }
}

/// Checks the text of a configuration file; errors name the key and its line.
pub fn parse(text: &str) -> Result<VehicleConfig, ConfigError> {
    let file: File = toml::from_str(text)?;
    let at = |key: &'static str, span: std::ops::Range<usize>, why: String| ConfigError::At {
        key,
        line: line_of(text, span.start),
        why,
    };
    let vin = file.vin.get_ref();
    let vin = proto::Vin::parse(vin).map_err(|why| at("vin", file.vin.span(), why.to_string()))?;
    let addrs =
        |key: &'static str, values: &[Spanned<String>]| -> Result<Vec<Multiaddr>, ConfigError> {
            values
                .iter()
                .map(|value| {
                    node::net::parse_multiaddr(value.get_ref())
                        .map_err(|error| at(key, value.span(), error.to_string()))
                })
                .collect()
        };
    let mut listen = addrs("listen", &file.listen)?;
    if listen.is_empty() {
        // Every interface, any UDP port, QUIC.
        listen.push(
            Multiaddr::empty()
                .with(libp2p::multiaddr::Protocol::Ip4(
                    std::net::Ipv4Addr::UNSPECIFIED,
                ))
                .with(libp2p::multiaddr::Protocol::Udp(0))
                .with(libp2p::multiaddr::Protocol::QuicV1),
        );
    }
    let peers = addrs("peers", &file.peers)?;
    if let Some((value, _)) = file.peers.iter().zip(&peers).find(|(_, a)| {
        !a.iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
    }) {
        return Err(at(
            "peers",
            value.span(),
            format!(
                "{} has no /p2p/<peer id>: the vehicle must know whom it dials",
                value.get_ref()
            ),
        ));
    }
    if peers.is_empty() && !file.mdns {
        return Err(refused(
            "peers",
            " is empty and mdns = false: the vehicle could never find its depot".into(),
        ));
    }
    if !(1..=256).contains(&file.threads) {
        return Err(refused(
            "threads",
            format!(" = {}: must be 1 to 256", file.threads),
        ));
    }
    if file.ecus.get_ref().is_empty() {
        return Err(at(
            "ecus",
            file.ecus.span(),
            "names no ECU configuration file".into(),
        ));
    }
    if file.check_interval_secs == 0 {
        return Err(refused(
            "check_interval_secs",
            " = 0: must be at least 1".into(),
        ));
    }
    if let Some(rate) = file
        .download_bytes_per_sec
        .as_ref()
        .filter(|r| *r.get_ref() == 0)
    {
        return Err(at(
            "download_bytes_per_sec",
            rate.span(),
            "0: leave it out for no limit".into(),
        ));
    }
    let link = match (&file.link.class, &file.link.command) {
        (Some(class), None) => LinkSource::Fixed {
            class: class
                .get_ref()
                .parse()
                .map_err(|why: node::policy::ParseLinkClassError| {
                    at("link.class", class.span(), why.to_string())
                })?,
            signal: file.link.signal.min(100),
        },
        (None, Some(command)) if !command.get_ref().is_empty() => {
            LinkSource::Command(command.get_ref().clone())
        }
        (None, Some(command)) => {
            return Err(at("link.command", command.span(), "is empty".into()));
        }
        _ => {
            return Err(refused(
                "link",
                ": give exactly one of class and command".into(),
            ));
        }
    };
    let cellular_windows = file
        .policy
        .cellular_windows
        .iter()
        .map(|value| {
            Window::parse(value.get_ref())
                .map_err(|why| at("policy.cellular_windows", value.span(), why.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(-14 * 60..=14 * 60).contains(&file.policy.utc_offset_minutes) {
        return Err(refused(
            "policy.utc_offset_minutes",
            format!(
                " = {}: must be within -840..=840",
                file.policy.utc_offset_minutes
            ),
        ));
    }
    if file.policy.min_signal > 100 {
        return Err(refused(
            "policy.min_signal",
            format!(" = {}: must be 0 to 100", file.policy.min_signal),
        ));
    }
    let boot = match file.boot.mode.get_ref().as_str() {
        "simulated" => {
            if let Some(command) = &file.boot.reboot_command {
                return Err(at(
                    "boot.reboot_command",
                    command.span(),
                    "is for mode = \"reboot\"; a simulated boot needs none".into(),
                ));
            }
            BootMode::Simulated
        }
        "reboot" => {
            let command = file.boot.reboot_command.as_ref().ok_or_else(|| {
                at(
                    "boot.mode",
                    file.boot.mode.span(),
                    "\"reboot\" needs boot.reboot_command (e.g. [\"systemctl\", \"reboot\"])"
                        .into(),
                )
            })?;
            if command.get_ref().is_empty() {
                return Err(at("boot.reboot_command", command.span(), "is empty".into()));
            }
            if file.ecus.get_ref().len() != 1 {
                return Err(at(
                    "ecus",
                    file.ecus.span(),
                    "mode = \"reboot\" drives the gateway's own ECU, whose slot is on the kernel \
                     command line: give exactly one (secondary ECUs need a slot source of their \
                     own, not built yet)"
                        .into(),
                ));
            }
            BootMode::Reboot(command.get_ref().clone())
        }
        other => {
            return Err(at(
                "boot.mode",
                file.boot.mode.span(),
                format!("{other:?} must be \"reboot\" or \"simulated\""),
            ));
        }
    };
    let director_url = match &file.director_url {
        Some(url) => {
            let text = url.get_ref().trim_end_matches('/');
            node::director_client::check_url(text)
                .map_err(|why| at("director_url", url.span(), why.to_string()))?;
            Some(text.to_string())
        }
        None => None,
    };
    if file.director_ca.is_some() && director_url.is_none() {
        return Err(refused(
            "director_ca",
            " is set without director_url".into(),
        ));
    }
    Ok(VehicleConfig {
        vin,
        director_url,
        director_ca: file.director_ca,
        data_dir: file.data_dir,
        listen,
        peers,
        mdns: file.mdns,
        threads: file.threads,
        image_root: file.image_root,
        director_root: file.director_root,
        primary_key_file: file.primary_key_file,
        ecus: file.ecus.into_inner(),
        check_interval: Duration::from_secs(file.check_interval_secs),
        metadata_timeout: Duration::from_secs(file.metadata_timeout_secs.max(1)),
        stall_timeout: Duration::from_secs(file.stall_timeout_secs.max(1)),
        download_bytes_per_sec: file.download_bytes_per_sec.map(Spanned::into_inner),
        link,
        policy: PolicyConfig {
            cellular_windows,
            monthly_budget: file.policy.monthly_budget_bytes,
            min_signal: file.policy.min_signal,
            fix_deadline_secs: file.policy.fix_deadline_hours.saturating_mul(3600),
            utc_offset_minutes: file.policy.utc_offset_minutes,
        },
        boot,
        mesh: file.mesh,
    })
}

/// What a link probe printed that is not a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkProbeError {
    /// Nothing.
    #[error("printed nothing (expected e.g. \"yard-wifi\" or \"cellular 63\")")]
    Empty,
    /// Not a link class.
    #[error(transparent)]
    Class(#[from] node::policy::ParseLinkClassError),
    /// A metered link without its signal quality.
    #[error("{0} needs a signal quality 0-100 after it")]
    NoSignal(&'static str),
    /// A signal quality outside 0–100.
    #[error("signal quality {0:?} must be 0 to 100")]
    Signal(String),
    /// More words than a class and a signal.
    #[error("unexpected {0:?} after the signal quality")]
    Extra(String),
}

/// Parses what a link command printed: `yard-wifi`, `other-wifi`, `cellular 63`,
/// `cellular-roaming 40`, or `none`. `Ok(None)`: no link now.
pub fn parse_link(output: &str) -> Result<Option<node::policy::Link>, LinkProbeError> {
    let mut words = output.split_whitespace();
    let class = words.next().ok_or(LinkProbeError::Empty)?;
    if class == "none" {
        return Ok(None);
    }
    let class: LinkClass = class.parse()?;
    let signal = match words.next() {
        None if !class.metered() => 100,
        None => return Err(LinkProbeError::NoSignal(class.name())),
        Some(word) => word
            .parse::<u8>()
            .ok()
            .filter(|s| *s <= 100)
            .ok_or_else(|| LinkProbeError::Signal(word.to_string()))?,
    };
    if let Some(extra) = words.next() {
        return Err(LinkProbeError::Extra(extra.to_string()));
    }
    Ok(Some(node::policy::Link { class, signal }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWALf6rJuUTPioGjgxkqKYXWbjjb7A6y4EcXQPFGERzuRA";

    fn minimal() -> String {
        format!(
            "vin = \"V1\"\ndata_dir = \"/d\"\nprimary_key_file = \"/k\"\necus = [\"/e.toml\"]\n\
             peers = [\"/ip4/10.0.0.1/udp/4433/quic-v1/p2p/{PEER}\"]\n\
             [link]\nclass = \"yard-wifi\"\n[boot]\nmode = \"simulated\"\n"
        )
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/vehicle.toml"
        ))
        .unwrap();
        let config = parse(&text).unwrap();
        assert_eq!(config.policy.cellular_windows.len(), 1);
        assert_eq!(config.policy.fix_deadline_secs, 72 * 3600);
        assert!(matches!(config.link, LinkSource::Command(_)));
        assert!(matches!(config.boot, BootMode::Reboot(_)));
        assert_eq!(config.download_bytes_per_sec, Some(2_500_000));
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = parse(&minimal()).unwrap();
        assert_eq!(config.check_interval, Duration::from_secs(300));
        assert_eq!(config.policy.monthly_budget, 0);
        assert_eq!(config.policy.min_signal, 20);
        assert!(config.mdns);
        assert_eq!(config.download_bytes_per_sec, None);
        assert_eq!(
            config.link,
            LinkSource::Fixed {
                class: LinkClass::YardWifi,
                signal: 100
            }
        );
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let base = minimal();
        let cases = [
            (
                base.replace("vin = \"V1\"", "vin = \"../x\""),
                "vin (line 1)",
            ),
            (base.replace(&format!("/p2p/{PEER}"), ""), "peers (line 5)"),
            (
                base.replace("class = \"yard-wifi\"", "class = \"wifi\""),
                "link.class (line 7)",
            ),
            (
                base.replace("mode = \"simulated\"", "mode = \"kexec\""),
                "boot.mode (line 9)",
            ),
            (
                base.replace("mode = \"simulated\"", "mode = \"reboot\""),
                "needs boot.reboot_command",
            ),
            (
                format!("{base}[policy]\ncellular_windows = [\"1-5\"]\n"),
                "policy.cellular_windows (line 11)",
            ),
            (format!("colour = 1\n{base}"), "line 1"),
            (
                format!("{base}\n").replace("[link]", "download_bytes_per_sec = 0\n[link]"),
                "download_bytes_per_sec (line 6): 0: leave it out",
            ),
            (
                base.replace("ecus = [\"/e.toml\"]", "ecus = []"),
                "ecus (line 4)",
            ),
            (
                base.replace(
                    "class = \"yard-wifi\"",
                    "command = [\"probe\"]\nclass = \"yard-wifi\"",
                ),
                "exactly one of class and command",
            ),
        ];
        for (text, expected) in &cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn link_probe_output() {
        use node::policy::Link;
        assert_eq!(
            parse_link("yard-wifi\n"),
            Ok(Some(Link {
                class: LinkClass::YardWifi,
                signal: 100
            }))
        );
        assert_eq!(
            parse_link("cellular 63"),
            Ok(Some(Link {
                class: LinkClass::Cellular,
                signal: 63
            }))
        );
        assert_eq!(parse_link("none"), Ok(None));
        for bad in [
            "",
            "cellular",
            "cellular 101",
            "lte 50",
            "cellular 50 extra",
        ] {
            assert!(parse_link(bad).is_err(), "{bad:?}");
        }
    }
}
