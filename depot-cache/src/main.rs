//! `depot-cache`: the depot's cache, as operator commands over the `node` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// depotmesh depot cache: stores releases and serves them to the yard.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run the depot as a service from this configuration file (see config/depot.toml): serve
    /// the yard, prefetch on schedule, report on /metrics and /status.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store files in the cache; prints `<blob-id>  <file>` for each.
    Import {
        /// The cache's data directory (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Files to store.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Store a repository directory (as `origin` writes it: `metadata/` and `targets/`) in the
    /// cache and serve each file under `<NAME>/<path>` (e.g. `image/metadata/timestamp.json`),
    /// so that vehicles can refresh their metadata from the depot. Names that already exist
    /// move to the new content (a new `timestamp.json`); nothing is verified here, as every file
    /// is signed and vehicles check it.
    ImportRepo {
        /// The cache's data directory (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The repository's name on the mesh.
        #[arg(long, default_value = "image")]
        name: String,
        /// The repository directory.
        repo: PathBuf,
    },
    /// Serve the cache to the yard over QUIC. The first line printed is the full multiaddr to
    /// give to vehicles (with `/p2p/<peer id>`).
    Serve {
        /// The cache's data directory (store and identity; created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// Threads that serve the yard. One thread served one vehicle 20 % faster on loopback
        /// than two, at less CPU per byte, and moves ~300 MB/s: more than a yard's WiFi. More
        /// threads spread encryption over more cores for a depot with many vehicles on a faster
        /// network.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: u16,
        /// Address to listen on. Repeatable.
        #[arg(long, default_value = "/ip4/0.0.0.0/udp/0/quic-v1", value_parser = node::net::parse_multiaddr)]
        listen: Vec<libp2p::Multiaddr>,
        /// Do not announce the cache on the LAN with mDNS.
        #[arg(long)]
        no_mdns: bool,
        /// Whom the cache serves (the service's `[mesh]` section).
        #[command(flatten)]
        mesh: node::mesh_config::MeshArgs,
        /// QUIC congestion control: `newreno` (QUIC's reference, the default) or `cubic`,
        /// which overflows shared queues more often (the service's `[serve] congestion`).
        #[arg(long, default_value = "newreno")]
        congestion: node::net::Congestion,
    },
    /// Bring a repository's current release into the cache from upstream: refresh and check
    /// its TUF metadata over the mesh (as a vehicle would), serve what was accepted under the
    /// same names, and fetch every signed target not yet held (resuming partial ones). Prints a
    /// one-line JSON summary.
    Prefetch {
        /// The cache's data directory (created if missing).
        #[arg(long)]
        data_dir: PathBuf,
        /// The upstream cache (origin's or a regional depot), with `/p2p/<peer id>`. Repeatable.
        #[arg(long, required = true)]
        upstream: Vec<libp2p::Multiaddr>,
        /// The repository's name on the mesh.
        #[arg(long, default_value = "image")]
        repository: String,
        /// The repository's first root metadata (only needed the first time).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Disk cap in bytes: least recently used blobs the current release does not list are
        /// forgotten to make room.
        #[arg(long)]
        cap: Option<u64>,
        /// Time to check metadata expiry against (RFC 3339; default: now).
        #[arg(long)]
        now: Option<proto::tuf::Time>,
        /// Give up a target after this many seconds without progress.
        #[arg(long, default_value_t = 60)]
        stall_timeout: u64,
        /// Backhaul limit for targets, in bytes per second (default: none).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate_limit: Option<u64>,
        /// The fleet the cache and its upstream belong to (the service's `[mesh]` section).
        #[command(flatten)]
        mesh: node::mesh_config::MeshArgs,
    },
    /// Print the cache's mesh peer id, making its identity in the data directory if it has none
    /// yet: what `origin member issue --peer` certifies.
    Identity {
        /// The cache's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// List the blobs in the cache (id, size, groups held, complete or not), then the names it
    /// serves (id, name).
    List {
        /// The cache's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// mimalloc: the 30-vehicle yard ran ~5 % faster than with glibc's allocator (medians of six
/// alternated runs, docs/measurements.md). Its arenas commit lazily
/// (`MI_DEFAULT_ARENA_EAGER_COMMIT=0`, set at build time in .cargo/config.toml), which keeps a
/// fetcher's peak RSS inside its bound.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service says what it decides (one line each: prefetch runs, relays, peers); a command
    // prints its answer and only warnings. RUST_LOG overrides both.
    let default = if cli.config.is_some() {
        "warn,depot_cache=info,node=info"
    } else {
        "warn"
    };
    node::logging::install(default);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("depot-cache: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match (cli.command, cli.config) {
        (Some(_), Some(_)) => anyhow::bail!("give either --config FILE or a command, not both"),
        (None, None) => {
            anyhow::bail!("give --config FILE to run the depot service, or a command (see --help)")
        }
        (None, Some(path)) => {
            let config = depot_cache::config::load(&path)?;
            let runtime = node::runtime::build_tokio(Some(config.threads))
                .context("starting the async runtime")?;
            runtime.block_on(depot_cache::daemon::run(config))?;
            return Ok(ExitCode::SUCCESS);
        }
        (Some(command), None) => command,
    };
    match command {
        Command::Prefetch {
            data_dir,
            upstream,
            repository,
            root,
            cap,
            now,
            stall_timeout,
            rate_limit,
            mesh,
        } => {
            let membership = mesh.load()?.membership();
            let runtime = node::runtime::build_tokio(Some(1))?;
            let request = depot_cache::prefetch::PrefetchRequest {
                data_dir,
                upstream,
                repository,
                root,
                cap,
                now,
                metadata_timeout: std::time::Duration::from_secs(30),
                stall_timeout: std::time::Duration::from_secs(stall_timeout),
                rate_limit,
            };
            let summary = depot_cache::prefetch::prefetch(&runtime, &request, membership)?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { data_dir, files } => {
            let (store, _) = node::store::open_data_dir(&data_dir)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            for path in files {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let id = store
                    .import(std::io::BufReader::with_capacity(1 << 20, file))
                    .with_context(|| format!("importing {}", path.display()))?;
                println!("{id}  {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportRepo {
            data_dir,
            name,
            repo,
        } => {
            let (store, _) = node::store::open_data_dir(&data_dir)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            for (id, mesh_name) in depot_cache::import::import_repo(&store, &name, &repo)? {
                println!("{id}  {mesh_name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            data_dir,
            threads,
            listen,
            no_mdns,
            mesh,
            congestion,
        } => {
            // Checked here so that a mistake names the flag; the daemon reads the section.
            mesh.load()?;
            // The service without prefetch or HTTP: one code path serves the yard.
            let config = depot_cache::config::DepotConfig {
                data_dir,
                listen,
                mdns: !no_mdns,
                threads,
                cap_bytes: None,
                http: None,
                seeding: Some(node::seeding::SeedConfig::default()),
                serve: depot_cache::config::ServeConfig {
                    congestion,
                    ..depot_cache::config::ServeConfig::default()
                },
                prefetch: None,
                relay: None,
                mesh: Some(mesh.section()?),
            };
            let runtime =
                node::runtime::build_tokio(Some(threads)).context("starting the async runtime")?;
            runtime.block_on(depot_cache::daemon::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Identity { data_dir } => {
            let keypair = node::identity::load_or_create(&data_dir)
                .with_context(|| format!("loading the identity in {}", data_dir.display()))?;
            println!("{}", keypair.public().to_peer_id());
            Ok(ExitCode::SUCCESS)
        }
        Command::List { data_dir } => {
            let (store, _) = node::store::open_data_dir(&data_dir)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            for info in store.list() {
                let total = node::store::LAYOUT.group_count(info.size);
                let state = if info.complete { "complete" } else { "partial" };
                println!(
                    "{}  {:>12}  {:>8}/{total} groups  {state}",
                    info.id,
                    info.size,
                    info.held.group_count()
                );
            }
            for (name, id) in store.names() {
                println!("{id}  {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
