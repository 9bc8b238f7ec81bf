//! The depot daemon's configuration (`depot-cache --config FILE`; the commented example is
//! `config/depot.toml`). Every error names the file, the key and its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use node::policy::Window;
use node::seeding::SeedConfig;
use node::text::line_of;
use proto::Vin;
use serde::Deserialize;
use toml::Spanned;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    data_dir: PathBuf,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    mdns: bool,
    #[serde(default = "one")]
    threads: u16,
    cap_bytes: Option<u64>,
    http: Option<Spanned<String>>,
    #[serde(default)]
    seeding: SeedingFile,
    #[serde(default)]
    serve: ServeFile,
    prefetch: Option<PrefetchFile>,
    relay: Option<RelayFile>,
    mesh: Option<node::mesh_config::MeshSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    upload_bytes_per_sec: Option<Spanned<u64>>,
    congestion: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    director_url: Spanned<String>,
    director_ca: Option<PathBuf>,
    #[serde(default = "retry_secs")]
    retry_secs: u64,
    #[serde(default = "max_reports")]
    max_reports: usize,
    #[serde(default = "max_queue_bytes")]
    max_queue_bytes: u64,
    #[serde(default = "per_vehicle")]
    max_per_vehicle: usize,
    #[serde(default = "per_peer")]
    max_per_peer: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedingFile {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "grace_ms")]
    propagation_grace_ms: u64,
    #[serde(default = "max_defer_secs")]
    max_defer_secs: u64,
    #[serde(default = "distrust_quorum")]
    distrust_quorum: usize,
}

impl Default for SeedingFile {
    fn default() -> Self {
        Self {
            enabled: true,
            propagation_grace_ms: grace_ms(),
            max_defer_secs: max_defer_secs(),
            distrust_quorum: distrust_quorum(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrefetchFile {
    upstream: Vec<Spanned<String>>,
    #[serde(default = "image")]
    repositories: Vec<String>,
    root: Option<PathBuf>,
    #[serde(default)]
    vehicles: Vec<Spanned<String>>,
    director_root: Option<PathBuf>,
    #[serde(default = "interval_secs")]
    interval_secs: u64,
    #[serde(default)]
    windows: Vec<Spanned<String>>,
    #[serde(default)]
    utc_offset_minutes: i32,
    rate_limit_bytes_per_sec: Option<u64>,
    #[serde(default = "stall_timeout_secs")]
    stall_timeout_secs: u64,
}

fn yes() -> bool {
    true
}
fn one() -> u16 {
    1
}
fn grace_ms() -> u64 {
    3000
}
fn max_defer_secs() -> u64 {
    15
}
fn distrust_quorum() -> usize {
    2
}
fn image() -> Vec<String> {
    vec!["image".to_owned()]
}
fn interval_secs() -> u64 {
    900
}
fn stall_timeout_secs() -> u64 {
    120
}
fn retry_secs() -> u64 {
    30
}
fn max_reports() -> usize {
    node::relay::Quotas::default().max_reports
}
fn max_queue_bytes() -> u64 {
    node::relay::Quotas::default().max_bytes
}
fn per_vehicle() -> usize {
    node::relay::Quotas::default().per_vehicle
}
fn per_peer() -> usize {
    node::relay::Quotas::default().per_peer
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct DepotConfig {
    /// Store, identity and trusted metadata.
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Announce on the LAN with mDNS.
    pub mdns: bool,
    /// Runtime worker threads.
    pub threads: u16,
    /// Disk cap in bytes.
    pub cap_bytes: Option<u64>,
    /// Where `/metrics` and `/status` are served.
    pub http: Option<SocketAddr>,
    /// Super-seeding and tracker; `None` when disabled.
    pub seeding: Option<SeedConfig>,
    /// How the depot serves the yard.
    pub serve: ServeConfig,
    /// Periodic prefetch from upstream.
    pub prefetch: Option<PrefetchConfig>,
    /// Vehicles' reports relayed to the director; `None`: refused.
    pub relay: Option<RelayConfig>,
    /// The `[mesh]` section: the fleet the depot serves (its files are read when the daemon
    /// starts); `None`, no section, is refused then ([`node::mesh_config`]).
    pub mesh: Option<node::mesh_config::MeshSection>,
}

/// How the depot serves the yard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeConfig {
    /// Bytes per second the depot sends to the yard at most, over all the vehicles it serves
    /// (its share of the yard WiFi); `None`: no limit.
    pub upload_bytes_per_sec: Option<u64>,
    /// The QUIC congestion controller (`newreno`, the default, or `cubic`).
    pub congestion: node::net::Congestion,
}

/// Where and how the depot passes vehicles' reports on.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The director's base URL (`https://…`; `http://` to a loopback address only).
    pub director_url: String,
    /// The CA certificates (PEM) the director's certificate must chain to: the origin's
    /// `tls/director-ca.pem`. None: the public web PKI's roots.
    pub director_ca: Option<PathBuf>,
    /// How long to wait before trying again when the director cannot be reached.
    pub retry: Duration,
    /// What the queue holds at most, in all and from one vehicle or peer; more is refused
    /// `Busy` (the vehicle keeps its report).
    pub quotas: node::relay::Quotas,
}

/// The directory of the queue of reports to relay.
pub fn relay_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("reports")
}

impl PrefetchConfig {
    /// The first root for `repository`: the director's for `director/<vin>`, else the image
    /// repository's.
    pub fn root_for(&self, repository: &str) -> Option<PathBuf> {
        if repository.starts_with("director/") {
            self.director_root.clone()
        } else {
            self.root.clone()
        }
    }
}

/// When and how the depot fills itself from upstream.
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    /// Upstream caches, with `/p2p/<peer id>`.
    pub upstream: Vec<Multiaddr>,
    /// Repositories to prefetch (`image`).
    pub repositories: Vec<String>,
    /// The first root metadata, for a depot that trusts none yet.
    pub root: Option<PathBuf>,
    /// The director's first root metadata, for the `director/<vin>` repositories.
    pub director_root: Option<PathBuf>,
    /// Time between the starts of two runs.
    pub interval: Duration,
    /// Backhaul windows (local time); empty: any time.
    pub windows: Vec<Window>,
    /// Local time's offset from UTC.
    pub utc_offset_minutes: i32,
    /// Backhaul bytes per second at most.
    pub rate_limit: Option<u64>,
    /// A target with no progress for this long fails the run (resumed by the next).
    pub stall_timeout: Duration,
}

/// What is wrong with a depot configuration: each names the key, and its line where the
/// value has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not TOML, a key unknown or missing, or a value of the wrong type (toml names the line).
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value that does not parse or is refused.
    #[error("{key} (line {line}): {why}")]
    At {
        key: &'static str,
        line: usize,
        why: String,
    },
    /// A number outside what its key allows.
    #[error("{key} = {value}: {allowed}")]
    OutOfRange {
        key: &'static str,
        value: i64,
        allowed: &'static str,
    },
    /// A list that must name at least one entry.
    #[error("{key} is empty: {need}")]
    Empty {
        key: &'static str,
        need: &'static str,
    },
    /// An upstream named without the peer id that says whom the depot trusts.
    #[error(
        "prefetch.upstream: {0} has no /p2p/<peer id>: the depot must know whom it trusts to be its upstream"
    )]
    UpstreamWithoutPeer(Multiaddr),
    /// `relay.retry_secs` or `relay.max_reports` is 0.
    #[error(
        "relay.retry_secs, relay.max_reports, relay.max_queue_bytes, relay.max_per_vehicle and relay.max_per_peer must each be at least 1"
    )]
    RelayLimits,
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> anyhow::Result<DepotConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// Checks the text of a configuration file; errors name the key and its line.
pub fn parse(text: &str) -> Result<DepotConfig, ConfigError> {
    let file: File = toml::from_str(text)?;
    let at = |key: &'static str, span: std::ops::Range<usize>, why: &dyn std::fmt::Display| {
        ConfigError::At {
            key,
            line: line_of(text, span.start),
            why: why.to_string(),
        }
    };
    let addr = |key: &'static str, value: &Spanned<String>| -> Result<Multiaddr, ConfigError> {
        node::net::parse_multiaddr(value.get_ref()).map_err(|error| at(key, value.span(), &error))
    };
    let mut listen = file
        .listen
        .iter()
        .map(|value| addr("listen", value))
        .collect::<Result<Vec<_>, _>>()?;
    if listen.is_empty() {
        listen.push(
            Multiaddr::empty()
                .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                .with(Protocol::Udp(4433))
                .with(Protocol::QuicV1),
        );
    }
    if !(1..=256).contains(&file.threads) {
        return Err(ConfigError::OutOfRange {
            key: "threads",
            value: i64::from(file.threads),
            allowed: "must be 1 to 256",
        });
    }
    let http = file
        .http
        .as_ref()
        .map(|value| {
            value.get_ref().parse::<SocketAddr>().map_err(|error| {
                at(
                    "http",
                    value.span(),
                    &format!("{:?}: {error}", value.get_ref()),
                )
            })
        })
        .transpose()?;
    let seeding = file.seeding.enabled.then(|| SeedConfig {
        propagation_grace: Duration::from_millis(file.seeding.propagation_grace_ms),
        max_defer: Duration::from_secs(file.seeding.max_defer_secs),
        distrust_quorum: file.seeding.distrust_quorum,
        ..SeedConfig::default()
    });
    let upload = file.serve.upload_bytes_per_sec;
    if let Some(rate) = upload.as_ref().filter(|r| *r.get_ref() == 0) {
        return Err(at(
            "serve.upload_bytes_per_sec",
            rate.span(),
            &"0: leave it out for no limit",
        ));
    }
    let congestion = match &file.serve.congestion {
        None => node::net::Congestion::default(),
        Some(name) => name
            .get_ref()
            .parse()
            .map_err(|error| at("serve.congestion", name.span(), &error))?,
    };
    let serve = ServeConfig {
        upload_bytes_per_sec: upload.map(Spanned::into_inner),
        congestion,
    };
    let prefetch = match file.prefetch {
        None => None,
        Some(prefetch) => {
            if prefetch.upstream.is_empty() {
                return Err(ConfigError::Empty {
                    key: "prefetch.upstream",
                    need: "name at least one upstream cache",
                });
            }
            let upstream = prefetch
                .upstream
                .iter()
                .map(|value| addr("prefetch.upstream", value))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(bad) = upstream
                .iter()
                .find(|a| !a.iter().any(|p| matches!(p, Protocol::P2p(_))))
            {
                return Err(ConfigError::UpstreamWithoutPeer(bad.clone()));
            }
            let windows = prefetch
                .windows
                .iter()
                .map(|value| {
                    Window::parse(value.get_ref())
                        .map_err(|why| at("prefetch.windows", value.span(), &why))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if prefetch.interval_secs == 0 {
                return Err(ConfigError::OutOfRange {
                    key: "prefetch.interval_secs",
                    value: 0,
                    allowed: "must be at least 1",
                });
            }
            if prefetch.repositories.is_empty() {
                return Err(ConfigError::Empty {
                    key: "prefetch.repositories",
                    need: "name at least one repository",
                });
            }
            let mut repositories = prefetch.repositories;
            for vin in &prefetch.vehicles {
                let text = vin.get_ref();
                Vin::parse(text).map_err(|why| at("prefetch.vehicles", vin.span(), &why))?;
                repositories.push(format!("director/{text}"));
            }
            if !(-14 * 60..=14 * 60).contains(&prefetch.utc_offset_minutes) {
                return Err(ConfigError::OutOfRange {
                    key: "prefetch.utc_offset_minutes",
                    value: i64::from(prefetch.utc_offset_minutes),
                    allowed: "must be within -840..=840",
                });
            }
            if prefetch.rate_limit_bytes_per_sec == Some(0) {
                return Err(ConfigError::OutOfRange {
                    key: "prefetch.rate_limit_bytes_per_sec",
                    value: 0,
                    allowed: "leave it out for no limit",
                });
            }
            Some(PrefetchConfig {
                upstream,
                repositories,
                root: prefetch.root,
                director_root: prefetch.director_root,
                interval: Duration::from_secs(prefetch.interval_secs),
                windows,
                utc_offset_minutes: prefetch.utc_offset_minutes,
                rate_limit: prefetch.rate_limit_bytes_per_sec,
                stall_timeout: Duration::from_secs(prefetch.stall_timeout_secs.max(1)),
            })
        }
    };
    let relay = match file.relay {
        None => None,
        Some(relay) => {
            let url = relay.director_url.get_ref().trim_end_matches('/');
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if host.is_none_or(str::is_empty) {
                return Err(at(
                    "relay.director_url",
                    relay.director_url.span(),
                    &format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            node::director_client::check_url(url)
                .map_err(|why| at("relay.director_url", relay.director_url.span(), &why))?;
            if relay.retry_secs == 0
                || relay.max_reports == 0
                || relay.max_queue_bytes == 0
                || relay.max_per_vehicle == 0
                || relay.max_per_peer == 0
            {
                return Err(ConfigError::RelayLimits);
            }
            Some(RelayConfig {
                director_url: url.to_string(),
                director_ca: relay.director_ca,
                retry: Duration::from_secs(relay.retry_secs),
                quotas: node::relay::Quotas {
                    max_reports: relay.max_reports,
                    max_bytes: relay.max_queue_bytes,
                    per_vehicle: relay.max_per_vehicle,
                    per_peer: relay.max_per_peer,
                },
            })
        }
    };
    Ok(DepotConfig {
        data_dir: file.data_dir,
        relay,
        listen,
        mdns: file.mdns,
        threads: file.threads,
        cap_bytes: file.cap_bytes,
        http,
        seeding,
        serve,
        prefetch,
        mesh: file.mesh,
    })
}

/// Whether a prefetch may start at `now` (Unix seconds), and if not, when it may.
pub fn backhaul_open(prefetch: &PrefetchConfig, now: u64) -> Result<(), u64> {
    if prefetch.windows.is_empty() {
        return Ok(());
    }
    let schedule = node::policy::Schedule {
        windows: &prefetch.windows,
        utc_offset_minutes: prefetch.utc_offset_minutes,
    };
    if schedule.is_open(now) {
        Ok(())
    } else {
        Err(schedule.next_open(now).unwrap_or(now + 3600))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWALf6rJuUTPioGjgxkqKYXWbjjb7A6y4EcXQPFGERzuRA";

    #[test]
    fn the_shipped_example_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/depot.toml"))
                .unwrap();
        let config = parse(&text).unwrap();
        assert!(config.seeding.is_some());
        assert_eq!(config.serve.upload_bytes_per_sec, Some(5_000_000));
        assert_eq!(config.serve.congestion, node::net::Congestion::NewReno);
        let relay = config.relay.unwrap();
        assert_eq!(relay.director_url, "https://director.example.net");
        assert_eq!(relay.retry, Duration::from_secs(30));
        let prefetch = config.prefetch.unwrap();
        assert_eq!(prefetch.windows.len(), 1);
        assert_eq!(
            prefetch.repositories,
            [
                "image",
                "director/WDB9634031L123456",
                "director/WDB9634031L123457"
            ]
        );
        assert_eq!(
            prefetch.root_for("director/WDB9634031L123456"),
            Some("/etc/depotmesh/director-root.json".into())
        );
        assert_eq!(
            prefetch.root_for("image"),
            Some("/etc/depotmesh/image-root.json".into())
        );
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = parse("data_dir = \"/tmp/d\"\n").unwrap();
        assert_eq!(config.listen.len(), 1);
        assert_eq!(
            config.listen[0].to_string(),
            "/ip4/0.0.0.0/udp/4433/quic-v1"
        );
        assert!(config.mdns);
        assert_eq!(config.seeding, Some(SeedConfig::default()));
        assert!(config.prefetch.is_none());
        assert!(config.http.is_none());
        assert_eq!(config.serve, ServeConfig::default());
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases = [
            (
                "data_dir = \"/d\"\nlisten = [\"not an address\"]\n",
                "listen (line 2)",
            ),
            (
                "data_dir = \"/d\"\n\nhttp = \"localhost\"\n",
                "http (line 3)",
            ),
            (
                &format!(
                    "data_dir = \"/d\"\n[prefetch]\nupstream = [\"/ip4/1.2.3.4/udp/1/quic-v1/p2p/{PEER}\"]\nwindows = [\"25:00-03:00\"]\n"
                ),
                "prefetch.windows (line 4)",
            ),
            ("data_dir = \"/d\"\ncolour = \"red\"\n", "line 2"),
            ("data_dir = \"/d\"\nthreads = \"two\"\n", "line 2"),
            (
                "data_dir = \"/d\"\n[prefetch]\nupstream = [\"/ip4/1.2.3.4/udp/1/quic-v1\"]\n",
                "has no /p2p/",
            ),
            (
                &format!(
                    "data_dir = \"/d\"\n[prefetch]\nupstream = [\"/ip4/1.2.3.4/udp/1/quic-v1/p2p/{PEER}\"]\nrate_limit_bytes_per_sec = 0\n"
                ),
                "rate_limit_bytes_per_sec = 0",
            ),
            ("listen = []\n", "data_dir"),
            (
                "data_dir = \"/d\"\n[serve]\nupload_bytes_per_sec = 0\n",
                "serve.upload_bytes_per_sec (line 3): 0: leave it out",
            ),
            (
                "data_dir = \"/d\"\n[serve]\nupload_bytes_per_sec = 1\ndownload = 2\n",
                "line 4",
            ),
            (
                "data_dir = \"/d\"\n[serve]\ncongestion = \"bbr\"\n",
                "serve.congestion (line 3): \"bbr\" is not a congestion controller: give newreno or cubic",
            ),
            (
                "data_dir = \"/d\"\n[relay]\ndirector_url = \"director:8470\"\n",
                "relay.director_url (line 3)",
            ),
            (
                "data_dir = \"/d\"\n[relay]\ndirector_url = \"https://d\"\nmax_reports = 0\n",
                "relay.max_reports",
            ),
            (
                "data_dir = \"/d\"\n[relay]\ndirector_url = \"http://director.example\"\n",
                "relay.director_url (line 3): director URL \"http://director.example\" must start with https://",
            ),
            (
                &format!(
                    "data_dir = \"/d\"\n[prefetch]\nupstream = [\"/ip4/1.2.3.4/udp/1/quic-v1/p2p/{PEER}\"]\nvehicles = [\"ok-1\", \"../etc\"]\n"
                ),
                "prefetch.vehicles (line 4)",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_backhaul_opens_in_its_window_only() {
        let mut config = parse(&format!(
            "data_dir = \"/d\"\n[prefetch]\nupstream = [\"/ip4/1.2.3.4/udp/1/quic-v1/p2p/{PEER}\"]\nwindows = [\"01:00-05:00\"]\n"
        ))
        .unwrap()
        .prefetch
        .unwrap();
        let day = 20_000 * 86_400;
        assert_eq!(backhaul_open(&config, day + 2 * 3600), Ok(()));
        assert_eq!(
            backhaul_open(&config, day + 6 * 3600),
            Err(day + 86_400 + 3600)
        );
        config.windows.clear();
        assert_eq!(backhaul_open(&config, day + 6 * 3600), Ok(()));
    }
}
