//! `vehicle-peer`: the vehicle gateway's update agent, as operator commands over the libraries.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::fetch::{self, FetchOptions};
use node::net::{self, NetConfig};
use node::runtime;
use node::serve::{self, ServeCounters};
use proto::BlobId;

/// depotmesh vehicle peer: fetches verified updates from the depot and neighbouring vehicles.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run the vehicle's update agent from this configuration file (see config/vehicle.toml):
    /// check the director's assignment through the depot, download as the link policy allows,
    /// install with the flasher, report.
    #[arg(long)]
    config: Option<PathBuf>,
    /// With --config: one check (continued through simulated reboots), print the status as
    /// JSON and exit; for a systemd timer instead of the service, and for tests.
    #[arg(long, requires = "config")]
    once: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where a command keeps its data and how it meets peers.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// The peer's data directory (store, identity, trusted metadata under `tuf/`; created if
    /// missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// A peer (the depot first) as a multiaddr with `/p2p/<peer id>`. Repeatable; asked in
    /// order, with peers found by mDNS.
    #[arg(long = "peer", value_parser = net::parse_multiaddr)]
    peers: Vec<libp2p::Multiaddr>,
    /// Address to listen on, so neighbours can fetch from this peer while it fetches.
    #[arg(long, default_value = "/ip4/0.0.0.0/udp/0/quic-v1", value_parser = net::parse_multiaddr)]
    listen: Vec<libp2p::Multiaddr>,
    /// Do not look for peers on the LAN with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// The fleet this peer belongs to (the service's `[mesh]` section).
    #[command(flatten)]
    mesh: node::mesh_config::MeshArgs,
    /// Threads that run the network, verification and storage. One thread moved the most bytes
    /// per second and per CPU-second in every measurement (docs/measurements.md) and leaves the
    /// gateway's other cores to the vehicle.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this gateway's mesh peer id, making its identity in the data directory if it has
    /// none yet: what the vehicle's registration gives as `peer`, so that the director's answer
    /// carries its membership certificate.
    Identity {
        /// The peer's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Fetch a blob from every given peer (and peers found by mDNS) at once, verifying every
    /// 16 KiB chunk group; write it to FILE. Interrupted, it resumes where it stopped. Prints a
    /// one-line JSON summary last.
    Fetch {
        #[command(flatten)]
        node: NodeArgs,
        /// The blob's size in bytes, when known from signed metadata (else it is probed and
        /// proven by the first verified response).
        #[arg(long)]
        size: Option<u64>,
        /// After writing the blob and the summary, keep serving it to neighbours until killed
        /// (as a parked vehicle does for the rest of the yard).
        #[arg(long)]
        keep_serving: bool,
        /// Chunk groups (16 KiB each) per request: the unit of rarest-first scheduling. Larger
        /// requests cost fewer streams; smaller ones spread a swarm faster. At most 256: a
        /// peer answers no more of one request.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=proto::wire::MAX_REQUEST_GROUPS))]
        groups_per_request: u64,
        /// Requests in flight to one peer at most.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
        requests_per_peer: u64,
        /// Requests in flight in all, shared out among the peers (at least one each): with many
        /// peers each gets one, with few each gets up to --requests-per-peer.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
        requests_total: u64,
        /// Milliseconds a request is out before the endgame may ask another peer for its groups
        /// too (default: the engine's, 1000; 0: at once, as before it waited; for measuring).
        #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
        endgame_patience_ms: Option<u64>,
        /// The endgame duplicates a request once it has been out this many times as long as
        /// requests of its size were taking when it was sent (default: the engine's, 1; 0: the
        /// patience alone, as before; for measuring).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        endgame_slowness: Option<u32>,
        /// Give up after this many seconds in which no peer could help (nothing in flight, no
        /// peer claiming a missing group).
        #[arg(long, default_value_t = 20)]
        stall_timeout: u64,
        /// QUIC congestion control of what this peer serves its neighbours: `newreno` (QUIC's
        /// reference, the default) or `cubic`, which overflows shared queues more often.
        #[arg(long, default_value = "newreno")]
        congestion: net::Congestion,
        /// The blob id (64 hex digits).
        blob: BlobId,
        /// Where to write the verified blob.
        #[arg(long)]
        out: PathBuf,
    },
    /// Refresh the signed metadata of a repository from the depot (by name, over the mesh),
    /// look up a target in it, fetch the target from the depot and neighbours, check it against
    /// its signed length, BLAKE3, sha256 and sha512, and write it to FILE. Refuses, saying why,
    /// when the metadata is unsigned, rolled back, expired (a vehicle offline too long, a frozen
    /// depot) or too large. Prints a one-line JSON summary.
    Get {
        #[command(flatten)]
        node: NodeArgs,
        /// The repository's first root.json: needed only while the vehicle trusts none (later
        /// roots arrive by rotation and are kept under the data directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// The repository's name on the mesh.
        #[arg(long, default_value = "image")]
        repository: String,
        /// Check expiry against this time (RFC 3339, e.g. 2026-11-22T00:00:00Z) instead of
        /// the system clock.
        #[arg(long)]
        now: Option<proto::tuf::Time>,
        /// Seconds one metadata file may take to arrive (slow retrieval ends here).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        metadata_timeout: u64,
        /// Give up the target after this many seconds in which no peer could help.
        #[arg(long, default_value_t = 20)]
        stall_timeout: u64,
        /// The target's name in the signed targets metadata.
        target: String,
        /// Where to write the verified target.
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild an image from the one a vehicle has and a delta (`origin delta`), verifying each
    /// segment against the target's hash tree, in bounded memory. Interrupted, the same command
    /// resumes at the first segment not yet written; OUT appears only when complete and verified.
    /// Prints a one-line JSON summary.
    ApplyDelta {
        /// The source image (the one the delta was made from).
        #[arg(long)]
        from: PathBuf,
        /// The delta.
        #[arg(long)]
        delta: PathBuf,
        /// Where to write the target image.
        #[arg(long)]
        out: PathBuf,
        /// Refuse a delta that rebuilds any other image than this BLAKE3.
        #[arg(long)]
        expect: Option<BlobId>,
    },
    /// One step of an ECU install, run after every boot (see docs/flasher.md): with the
    /// director's targets and a delta, verify, write the inactive bank and set the one-try
    /// trial; after the reboot, health-check the new slot and commit or roll back. Interrupted,
    /// run it again. Prints a one-line JSON summary.
    Install {
        /// The ECU configuration (TOML; see config/ecu.toml).
        #[arg(long)]
        ecu_config: PathBuf,
        /// The slot the ECU runs now (default: rauc.slot= from /proc/cmdline).
        #[arg(long)]
        running: Option<vehicle_peer::boot::Slot>,
        /// The director's signed targets metadata for this vehicle.
        #[arg(long)]
        director_targets: Option<PathBuf>,
        /// The delta from the running image to the approved one.
        #[arg(long, requires = "director_targets", conflicts_with = "image")]
        delta: Option<PathBuf>,
        /// The approved image itself, for an ECU with no delta from what it runs.
        #[arg(long, requires = "director_targets")]
        image: Option<PathBuf>,
        /// Time to check metadata expiry against (RFC 3339; default: now).
        #[arg(long)]
        now: Option<proto::tuf::Time>,
        /// Also print the ECU's signed version report answering this nonce.
        #[arg(long)]
        report_nonce: Option<String>,
    },
    /// The bootloader's step for a file-backed (simulated) ECU: pick the slot as U-Boot's script
    /// would, save the environment, print the slot.
    Boot {
        /// The ECU configuration (TOML).
        #[arg(long)]
        ecu_config: PathBuf,
        /// First write a fresh boot state (A then B, three tries each).
        #[arg(long)]
        provision: bool,
    },
    /// Make a bench vehicle in one step in DIR: fresh primary and ECU keys (the format the
    /// configuration reads), file-backed banks with each ECU's image in bank A, the root
    /// metadata copied and checked, vehicle.toml (simulated boots) and registration.toml for
    /// `origin vehicle register --file`. Prints what it made and what to run next.
    Provision {
        /// The directory to make the vehicle in.
        #[arg(long)]
        dir: PathBuf,
        /// The vehicle's VIN.
        #[arg(long)]
        vin: String,
        /// An ECU: SERIAL:HARDWARE_ID:TARGET:IMAGE_FILE[:RELEASE_COUNTER] (what it runs now).
        /// Repeatable; the first is the primary.
        #[arg(long = "ecu", required = true)]
        ecus: Vec<vehicle_peer::provision::EcuSpec>,
        /// The image repository's root metadata (`origin root image --out FILE`).
        #[arg(long)]
        image_root: PathBuf,
        /// The director's root metadata (`origin root director --out FILE`).
        #[arg(long)]
        director_root: PathBuf,
        /// The depot (then other peers) as a multiaddr with `/p2p/<peer id>`. Repeatable.
        #[arg(long = "peer", value_parser = net::parse_multiaddr)]
        peers: Vec<libp2p::Multiaddr>,
        /// Address the vehicle listens on. Repeatable.
        #[arg(long, default_value = "/ip4/0.0.0.0/udp/0/quic-v1", value_parser = net::parse_multiaddr)]
        listen: Vec<libp2p::Multiaddr>,
        /// Do not look for neighbours on the LAN with mDNS.
        #[arg(long)]
        no_mdns: bool,
        /// Bytes of each bank (default: twice the largest image, at least 2 MiB).
        #[arg(long)]
        bank_bytes: Option<u64>,
        /// Region, for the registration.
        #[arg(long, default_value = "bench")]
        region: String,
        /// Vehicle type, for the registration.
        #[arg(long, default_value = "bench")]
        vehicle_type: String,
        /// Home depot, for the registration.
        #[arg(long, default_value = "bench-depot")]
        home_depot: String,
        /// The director service's URL, for reports and certificate renewal (`director_url`;
        /// without it, reports go through the depot).
        #[arg(long)]
        director_url: Option<String>,
        /// The CA certificate (PEM) the director's certificate chains to (`director_ca`:
        /// copied into DIR; the origin's `tls/director-ca.pem`).
        #[arg(long, requires = "director_url")]
        director_ca: Option<PathBuf>,
        /// The fleet the vehicle belongs to (its `[mesh]` section).
        #[command(flatten)]
        mesh: node::mesh_config::MeshArgs,
    },
}

/// mimalloc: the 30-vehicle yard ran ~5 % faster than with glibc's allocator (medians of six
/// alternated runs, docs/measurements.md). Its arenas commit lazily
/// (`MI_DEFAULT_ARENA_EAGER_COMMIT=0`, set at build time in .cargo/config.toml), which keeps a
/// fetcher's peak RSS inside its bound.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // The agent says what it decides (one line each: fetches with their bytes and peers,
    // install steps, reports); a command prints its answer and only warnings. RUST_LOG
    // overrides both.
    let default = if cli.config.is_some() {
        "warn,vehicle_peer=info,node=info"
    } else {
        "warn"
    };
    node::logging::install(default);
    let command = match (cli.command.take(), &cli.config) {
        (Some(_), Some(_)) => {
            eprintln!("vehicle-peer: give either --config FILE or a command, not both");
            return ExitCode::FAILURE;
        }
        (None, None) => {
            eprintln!(
                "vehicle-peer: give --config FILE to run the update agent, or a command (see --help)"
            );
            return ExitCode::FAILURE;
        }
        (None, Some(path)) => return agent(path, cli.once),
        (Some(command), None) => command,
    };
    let threads = match &command {
        Command::Fetch { node, .. } | Command::Get { node, .. } => node.threads,
        _ => 1,
    };
    let cli = Args { threads, command };
    if let Command::ApplyDelta {
        from,
        delta,
        out,
        expect,
    } = &cli.command
    {
        return summary_or_error(vehicle_peer::delta::apply_files(
            from,
            delta,
            out,
            *expect,
            progress_bar(),
        ));
    }
    match &cli.command {
        Command::Install {
            ecu_config,
            running,
            director_targets,
            delta,
            image,
            now,
            report_nonce,
        } => {
            let bar = progress_bar();
            let args = vehicle_peer::install::InstallArgs {
                config: ecu_config,
                running: running.clone(),
                director_targets: director_targets.as_deref(),
                delta: delta.as_deref(),
                image: image.as_deref(),
                now: *now,
                report_nonce: report_nonce.as_deref(),
            };
            return summary_or_error(vehicle_peer::install::install(&args, |done, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            }));
        }
        Command::Boot {
            ecu_config,
            provision,
        } => return summary_or_error(vehicle_peer::install::boot(ecu_config, *provision)),
        Command::Provision {
            dir,
            vin,
            ecus,
            image_root,
            director_root,
            peers,
            listen,
            no_mdns,
            bank_bytes,
            region,
            vehicle_type,
            home_depot,
            director_url,
            director_ca,
            mesh,
        } => {
            let made = mesh
                .section()
                .map_err(anyhow::Error::from)
                .and_then(|mesh| {
                    vehicle_peer::provision::provision(&vehicle_peer::provision::ProvisionArgs {
                        dir,
                        vin,
                        peers,
                        listen,
                        mdns: !*no_mdns,
                        image_root,
                        director_root,
                        ecus,
                        bank_bytes: *bank_bytes,
                        mesh: &mesh,
                        registry: (region, vehicle_type, home_depot),
                        director: director_url
                            .as_deref()
                            .map(|url| (url, director_ca.as_deref())),
                    })
                });
            return summary_or_error(made);
        }
        Command::Identity { data_dir } => {
            return match node::identity::load_or_create(data_dir) {
                Ok(keypair) => {
                    println!("{}", keypair.public().to_peer_id());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "vehicle-peer: loading the identity in {}: {error}",
                        data_dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let runtime = match runtime::build_tokio(Some(cli.threads)) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("vehicle-peer: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Get {
        node:
            NodeArgs {
                data_dir,
                peers,
                listen,
                no_mdns,
                mesh,
                ..
            },
        root,
        repository,
        now,
        metadata_timeout,
        stall_timeout,
        target,
        out,
    } = cli.command
    {
        let membership = match mesh.load() {
            Ok(mesh) => mesh.membership(),
            Err(error) => {
                eprintln!("vehicle-peer: {error}");
                return ExitCode::FAILURE;
            }
        };
        let request = vehicle_peer::mesh::GetRequest {
            data_dir,
            peers,
            listen,
            mdns: !no_mdns,
            membership,
            root,
            repository,
            target,
            out,
            now,
            metadata_timeout: std::time::Duration::from_secs(metadata_timeout),
            stall_timeout: std::time::Duration::from_secs(stall_timeout),
        };
        return summary_or_error(vehicle_peer::mesh::get_target(&runtime, &request));
    }
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vehicle-peer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Args) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fetch {
            node:
                NodeArgs {
                    data_dir,
                    peers,
                    listen,
                    no_mdns,
                    mesh,
                    ..
                },
            size,
            stall_timeout,
            keep_serving,
            groups_per_request,
            requests_per_peer,
            requests_total,
            endgame_patience_ms,
            endgame_slowness,
            congestion,
            blob,
            out,
        } => {
            let membership = mesh.load()?.membership();
            let (store, _) = node::store::open_data_dir(&data_dir)
                .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            let store = Arc::new(store);
            let keypair = node::identity::load_or_create(&data_dir)
                .with_context(|| format!("loading the identity in {}", data_dir.display()))?;
            let (handle, mut events, incoming) = net::start(NetConfig {
                keypair: Some(keypair),
                listen,
                mdns: !no_mdns,
                membership,
                quic: net::QuicTuning {
                    congestion,
                    ..net::QuicTuning::default()
                },
                ..NetConfig::default()
            })
            .await
            .context("starting the network")?;
            // Serve what this peer holds to its neighbours while it fetches.
            let counters = Arc::new(ServeCounters::default());
            let _server = serve::spawn_server(store.clone(), incoming, counters.clone());

            let mut options = FetchOptions::new(blob);
            options.peers = peers;
            options.size = size;
            options.stall_timeout = std::time::Duration::from_secs(stall_timeout);
            options.transfer.groups_per_request = groups_per_request;
            options.transfer.max_requests_per_peer =
                usize::try_from(requests_per_peer).context("--requests-per-peer")?;
            options.transfer.max_requests_total =
                usize::try_from(requests_total).context("--requests-total")?;
            if let Some(ms) = endgame_patience_ms {
                options.transfer.endgame_patience = std::time::Duration::from_millis(ms);
            }
            if let Some(slowness) = endgame_slowness {
                options.transfer.endgame_slowness = slowness;
            }
            let bar = progress_bar();
            // Off a terminal, a line now and then, as curl does: for logs, and so a supervisor
            // can see progress.
            let started = std::time::Instant::now();
            let cpu_before = node::clock::process_cpu();
            let mut last_line = started;
            let report = fetch::fetch(&handle, &mut events, store.clone(), options, |p| {
                if let Some(bar) = &bar {
                    if let Some(total) = p.total_groups {
                        bar.set_length(total);
                    }
                    bar.set_position(p.held_groups);
                    bar.set_message(format!("{} MB, {} peers", p.bytes / 1_000_000, p.peers));
                } else if last_line.elapsed() >= std::time::Duration::from_millis(100) {
                    last_line = std::time::Instant::now();
                    eprintln!(
                        "progress {} of {} groups held, {} bytes fetched, {} peers, {:.1} s",
                        p.held_groups,
                        p.total_groups.map_or("?".to_owned(), |t| t.to_string()),
                        p.bytes,
                        p.peers,
                        started.elapsed().as_secs_f64(),
                    );
                }
            })
            .await;
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let report = report.context("fetching")?;
            // The fetch's own CPU (verification and storage included), before the export below.
            let cpu_seconds = node::clock::process_cpu()
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before).as_secs_f64());

            store
                .export_to_file(&blob, &out)
                .with_context(|| format!("writing {}", out.display()))?;

            let summary = serde_json::json!({
                "blob": blob.to_string(),
                "size": report.size,
                "bytes": report.bytes_fetched,
                "seconds": (report.seconds * 1000.0).round() / 1000.0,
                "cpu_seconds": cpu_seconds,
                "resumed_groups": report.resumed_groups,
                "bytes_per_peer": report
                    .bytes_per_peer
                    .iter()
                    .map(|(peer, bytes)| (peer.to_string(), serde_json::json!(bytes)))
                    .collect::<serde_json::Map<_, _>>(),
                "bad_chunk_groups": report.bad_chunk_groups,
                "banned_peers": report.banned_peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "served_bytes": counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
                "requests": {
                    "sent": report.requests.sent,
                    "duplicates": report.requests.duplicates,
                    "refused": report.requests.refused,
                    "timeouts": report.requests.timeouts,
                    "lost": report.requests.lost,
                    "cancelled": report.requests.cancelled,
                    "redundant_groups": report.requests.redundant_groups,
                    "benched": report.requests.benched,
                },
                "transport": handle.transport_stats(),
            });
            {
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{summary}")?;
                stdout.flush()?;
            }
            if keep_serving {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .context("installing the SIGTERM handler")?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                // What serving cost after the summary line: on stderr, where the log goes.
                let last = serde_json::json!({
                    "served_bytes": counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
                    "transport": handle.transport_stats(),
                });
                eprintln!("stopped {last}");
            }
            handle.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        // `get` drives the runtime itself (its verifier is synchronous) and is run before this.
        Command::Get { .. } => anyhow::bail!("`get` cannot run inside the async runtime"),
        Command::ApplyDelta { .. }
        | Command::Install { .. }
        | Command::Boot { .. }
        | Command::Provision { .. }
        | Command::Identity { .. } => {
            anyhow::bail!("this command runs outside the async runtime")
        }
    }
}

/// A command with the global options taken out.
struct Args {
    threads: u16,
    command: Command,
}

/// `vehicle-peer --config FILE [--once]`.
fn agent(path: &std::path::Path, once: bool) -> ExitCode {
    let result = vehicle_peer::config::load(path).and_then(vehicle_peer::daemon::Daemon::open);
    let daemon = match result {
        Ok(daemon) => daemon,
        Err(error) => {
            eprintln!("vehicle-peer: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if !once {
        return match daemon.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("vehicle-peer: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    summary_or_error(daemon.check_once(node::clock::unix_now()))
}

/// Prints a command's one-line JSON summary, or its error, and the matching exit code.
fn summary_or_error(result: anyhow::Result<impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("vehicle-peer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} groups {msg}",
    )
    .ok()?;
    bar.set_style(style);
    Some(bar)
}
