//! `origin`: keys, the image and director repositories, releases and their checks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node::director_client::{ClientError, DirectorClient};
use origin::{Origin, repo};
use proto::tuf::Time;

/// depotmesh origin: signs releases the TUF/Uptane way and keeps the director's repository.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The origin directory (repositories, online keys, mesh store).
    #[arg(long, global = true, default_value = "origin-data")]
    dir: PathBuf,
    /// Where the offline keys (both roots, image targets) are: needed by init, release, rotate.
    #[arg(long, global = true)]
    offline_keys: Option<PathBuf>,
    /// The time to sign at, as YYYY-MM-DDTHH:MM:SSZ (default: now). For tests and rehearsals.
    #[arg(long, global = true, value_parser = parse_time)]
    now: Option<Time>,
    /// Who is acting, for the audit log (default: $USER).
    #[arg(long, global = true)]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new ed25519 key file (mode 0600); prints its key id and public key.
    Keygen {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new image repository and director with fresh keys: offline keys into
    /// --offline-keys, online keys into DIR/keys.
    Init,
    /// Release an image: store it (and its bao outboard) and sign new targets, snapshot and
    /// timestamp of the image repository.
    Release {
        /// The image file.
        file: PathBuf,
        /// Its target name, e.g. ecu/brake-1.2.0.bin.
        #[arg(long)]
        name: String,
        /// Hardware it runs on. Repeatable.
        #[arg(long = "hardware-id", required = true)]
        hardware_ids: Vec<String>,
        /// Its release counter (vehicles never install a lower one).
        #[arg(long)]
        release_counter: u64,
        /// The targets role that signs it: `targets` (the image repository's own, offline key)
        /// or a role made with `origin delegate` (e.g. a supplier's), whose paths must allow
        /// the name.
        #[arg(long, default_value = "targets")]
        role: String,
        /// Also build a delta from this earlier release (a target name) and list it with the
        /// image, for vehicles running that release. Repeatable.
        #[arg(long = "delta-from")]
        deltas_from: Vec<String>,
        /// Build the deltas without the LZMA-with-source-dictionary pass (faster; see
        /// `origin delta --no-lzma-dict`).
        #[arg(long)]
        no_lzma_dict: bool,
    },
    /// Delegate target names matching --path patterns (e.g. `brake/*`) to a new role of the
    /// image repository with its own key, for a supplier or an ECU family; a vehicle then
    /// trusts images under those names only when that role signs them.
    Delegate {
        /// The new role's name (a-z, 0-9, -, _).
        #[arg(long)]
        name: String,
        /// A target name pattern the role may sign for (`*` matches within one path segment).
        /// Repeatable.
        #[arg(long = "path", required = true)]
        paths: Vec<String>,
        /// The role's key (from `origin keygen`, e.g. made by the supplier); by default a new
        /// one is made. Kept with the offline keys as image-<name>.json.
        #[arg(long)]
        key: Option<PathBuf>,
        /// A vehicle looking up a name this role matches looks no further, even if the role
        /// does not list it.
        #[arg(long)]
        terminating: bool,
    },
    /// Replace a role's key: a new root version signed by the old root key (and the new one
    /// for root), then the role's metadata re-signed.
    Rotate {
        /// `image` or `director`.
        #[arg(long, value_parser = ["image", "director"])]
        repository: String,
        /// `root`, `targets`, `snapshot` or `timestamp`.
        #[arg(long, value_parser = ["root", "targets", "snapshot", "timestamp"])]
        role: String,
        /// The new key (from `origin keygen`).
        #[arg(long)]
        new_key: PathBuf,
    },
    /// Tell one vehicle, through the director, which image each of its ECUs must install: a new
    /// director targets version for that vehicle (online key), checked against the image
    /// repository (the image must be released for the ECU's hardware).
    Assign {
        /// The vehicle's id (VIN).
        #[arg(long)]
        vin: proto::Vin,
        /// SERIAL,HARDWARE_ID,TARGET: install image repository target TARGET on ECU SERIAL.
        /// Repeatable; the assignment replaces the vehicle's previous one.
        #[arg(long = "ecu", required = true)]
        ecus: Vec<origin::director::Assignment>,
        /// The update's priority class, signed with the assignment: `security` may use cellular
        /// at once (within the vehicle's budget), `fix` waits for WiFi or a cellular window
        /// until its deadline, `feature` waits for WiFi.
        #[arg(long, default_value = "feature")]
        priority: node::policy::Priority,
    },
    /// Re-sign every repository's timestamp, each vehicle's director one too (run it hourly:
    /// they expire after a day).
    Timestamp,
    /// Check every repository (image, director, each vehicle's director targets) and list every
    /// problem, each naming its file. Exit 1 if any.
    Verify,
    /// Print the key ids and public keys of every role (never private keys).
    Keys,
    /// The audit log (`audit.log`: append-only, hash-chained, each entry signed).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run the director service: the campaigns' HTTP API, vehicle manifests in, the dashboard at
    /// `/` and Prometheus metrics at `/metrics`. Runs until stopped.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// How often the gates are re-evaluated without a report (soak times, report timeouts).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        tick_secs: u64,
    },
    /// Staged rollouts, through a running `origin serve`.
    Campaign {
        /// The director service's URL.
        #[arg(long, default_value = "http://127.0.0.1:8470")]
        director: String,
        #[command(subcommand)]
        command: CampaignCommand,
    },
    /// The device registry, through a running `origin serve`.
    Vehicle {
        /// The director service's URL.
        #[arg(long, default_value = "http://127.0.0.1:8470")]
        director: String,
        #[command(subcommand)]
        command: VehicleCommand,
    },
    /// Build a delta that rebuilds --to from --from (see the `delta` crate for the format): per
    /// 8 MiB segment, the smallest of zstd patch-from, a bsdiff-class match and an aligned
    /// word diff. Prints a JSON summary. Needs no repository.
    Delta {
        /// The image vehicles have now.
        #[arg(long)]
        from: PathBuf,
        /// The image they should have.
        #[arg(long)]
        to: PathBuf,
        /// The delta file to write (written beside it, fsynced, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Segment size in KiB: a power of two from 16 to 16384. An interrupted apply resumes at
        /// a segment boundary; larger segments compress a little better.
        #[arg(long, default_value_t = 8192)]
        segment_kib: u64,
        /// zstd level of every stream (1..=22).
        #[arg(long, default_value_t = 22, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Worker threads (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Skip the LZMA-with-source-dictionary pass: several times faster on large images,
        /// 5–15 % larger deltas between far releases of compiled code.
        #[arg(long)]
        no_lzma_dict: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Create a campaign from a TOML file (see config/campaign.toml); it waits for approval.
    Create {
        /// The campaign file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Approve a campaign (not by its creator) and start its first wave.
    Approve {
        /// The campaign id.
        id: proto::CampaignId,
    },
    /// Print campaigns' standing (JSON): waves, counts per segment, decisions.
    Status {
        /// Only this campaign.
        id: Option<proto::CampaignId>,
    },
    /// Halt a campaign: no more vehicles get the release; those that have it not installed
    /// have it withdrawn.
    Halt {
        /// The campaign id.
        id: proto::CampaignId,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Resume a halted campaign (your approval is recorded).
    Resume {
        /// The campaign id.
        id: proto::CampaignId,
    },
    /// Call a campaign off for good: vehicles that installed it are sent the fallback release.
    Abort {
        /// The campaign id.
        id: proto::CampaignId,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum VehicleCommand {
    /// Register a vehicle from a TOML file (see config/vehicle-registration.toml).
    Register {
        /// The vehicle file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the registry (JSON).
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the whole chain and every signature; exit 1 naming the first bad entry.
    Verify {
        /// The audit key's public half (hex), as an auditor got it from `origin keys`
        /// (default: this origin's own key).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print every entry (JSON lines): who did what, when: releases, assignments (which
    /// software for which vehicle), approvals and wave decisions.
    Export,
}

/// The image repository, the director, and each vehicle's director repository.
fn all_repositories(origin: &Origin) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<String> = repo::REPOSITORIES
        .iter()
        .map(|r| (*r).to_string())
        .collect();
    for vin in origin::director::vehicles(origin)? {
        all.push(origin::director::vehicle_repository(&vin));
    }
    Ok(all)
}

/// How long the CLI waits for the director.
const DIRECTOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A failed request, as the operator reads it: an unreachable director is explained.
fn explain(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Unreachable { .. } => {
            anyhow::anyhow!("{error} (is `origin serve` running?)")
        }
        other => other.into(),
    }
}

/// The director's answer as the operator sees it: pretty JSON.
fn print_answer<T: serde::Serialize>(answer: Result<T, ClientError>) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&answer.map_err(explain)?)?
    );
    Ok(())
}

fn parse_time(text: &str) -> Result<Time, String> {
    Time::parse(text).map_err(|error| error.to_string())
}

fn system_now() -> Time {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Time::from_unix(seconds)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("origin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let origin = Origin {
        dir: cli.dir,
        offline_keys: cli.offline_keys,
        now: cli.now.unwrap_or_else(system_now),
    };
    let actor = origin::Actor::new(
        cli.actor
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "origin-cli".to_owned()),
    )?;
    match cli.command {
        Command::Keygen { out } => {
            let key = origin::keys::generate();
            origin::keys::save(&key, &out)?;
            let public = key.verifying_key();
            println!(
                "{}  {}",
                proto::tuf::build::key_id(&public),
                hex::encode(public.as_bytes())
            );
        }
        Command::Init => {
            origin::init(&origin)?;
            println!(
                "initialised {} (image and director repositories)",
                origin.dir.display()
            );
        }
        Command::Release {
            file,
            name,
            hardware_ids,
            release_counter,
            role,
            deltas_from,
            no_lzma_dict,
        } => {
            let options = delta::DeltaOptions {
                lzma_dict: !no_lzma_dict,
                ..Default::default()
            };
            let released = origin::Release::new(file, &name, hardware_ids, release_counter)
                .signed_by(&role)
                .with_deltas_from(deltas_from)
                .delta_options(options)
                .sign(&origin, &actor)?;
            println!(
                "{}  {name}  {} bytes  image {role} v{}",
                released.blob, released.length, released.targets_version
            );
        }
        Command::Delegate {
            name,
            paths,
            key,
            terminating,
        } => {
            let key = match key {
                Some(path) => origin::keys::load(&path)?,
                None => origin::keys::generate(),
            };
            let version = origin.delegate(&name, &paths, &key, terminating)?;
            println!(
                "image targets v{version} delegates {} to {name} (key {})",
                paths.join(", "),
                proto::tuf::build::key_id(&key.verifying_key())
            );
        }
        Command::Rotate {
            repository,
            role,
            new_key,
        } => {
            let key = origin::keys::load(&new_key)?;
            let version = origin.rotate(&repository, &role, &key)?;
            if repository == "director" {
                for vin in origin::director::vehicles(&origin)? {
                    origin::director::after_rotation(&origin, &vin, &role)
                        .with_context(|| format!("re-signing the director metadata of {vin}"))?;
                }
            }
            println!("{repository} {role} key rotated: root v{version}");
        }
        Command::Assign {
            vin,
            ecus,
            priority,
        } => {
            let version = origin::director::assign(&origin, &actor, &vin, &ecus, priority)?;
            println!(
                "director targets v{version} for {vin}: {}",
                ecus.iter()
                    .map(|ecu| format!("{} <- {}", ecu.serial, ecu.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Command::Timestamp => {
            for repository in all_repositories(&origin)? {
                origin
                    .refresh_timestamp(&repository)
                    .with_context(|| format!("the {repository} timestamp"))?;
            }
        }
        Command::Verify => {
            let mut problems = Vec::new();
            for repository in all_repositories(&origin)? {
                let dir = origin.dir.join(&repository);
                for problem in
                    origin::verify::verify_repository(&dir, repository == "image", origin.now)
                {
                    problems.push(format!("{repository}: {problem}"));
                }
            }
            for problem in &problems {
                println!("{problem}");
            }
            if !problems.is_empty() {
                eprintln!("origin: {} problem(s)", problems.len());
                return Ok(ExitCode::FAILURE);
            }
            println!("ok: every repository verifies");
        }
        Command::Delta {
            from,
            to,
            out,
            segment_kib,
            level,
            threads,
            no_lzma_dict,
        } => {
            if !segment_kib.is_power_of_two() || !(16..=16384).contains(&segment_kib) {
                anyhow::bail!(
                    "--segment-kib {segment_kib} must be a power of two from 16 to 16384"
                );
            }
            let mut options = delta::DeltaOptions {
                segment_log: u8::try_from(segment_kib.trailing_zeros() + 10)?,
                level,
                lzma_dict: !no_lzma_dict,
                ..Default::default()
            };
            if let Some(threads) = threads {
                options.threads = threads.max(1);
            }
            let summary = delta::create(&from, &to, &out, &options)?;
            let methods: serde_json::Map<String, serde_json::Value> = summary
                .methods
                .iter()
                .map(|(method, n)| (format!("{method:?}"), serde_json::Value::from(*n)))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "delta": out.display().to_string(),
                    "delta_blob": summary.delta.to_string(),
                    "delta_bytes": summary.delta_len,
                    "source": summary.source.0.to_string(),
                    "source_bytes": summary.source.1,
                    "target": summary.target.0.to_string(),
                    "target_bytes": summary.target.1,
                    "percent_of_target": 100.0 * summary.delta_len as f64 / summary.target.1.max(1) as f64,
                    "segments": methods,
                    "lzma_dict_segments": summary.lzma_dict_segments,
                    "seconds": summary.seconds,
                })
            );
        }
        Command::Keys => {
            for key in origin::describe_keys(&origin)? {
                println!("{key}");
            }
            let audit = origin::audit::key(&origin)?.verifying_key();
            println!(
                "{}",
                serde_json::json!({"role": "audit", "public_key": hex::encode(audit.as_bytes())})
            );
        }
        Command::Serve { listen, tick_secs } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let director = origin::service::Director::open(origin)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                let local = listener.local_addr()?;
                println!("director listening on http://{local}");
                tracing::info!(%local, "director listening");
                origin::http::serve(
                    listener,
                    origin::http::Shared::new(director),
                    std::time::Duration::from_secs(tick_secs),
                )
                .await
                .context("serving")
            })?;
        }
        Command::Campaign { director, command } => {
            use proto::director_api::{ActionRequest, CampaignAction, CreateCampaign};
            let client = DirectorClient::new(&director, DIRECTOR_TIMEOUT)?;
            let decide = |id: &proto::CampaignId, action, reason: Option<String>| {
                let request = ActionRequest {
                    by: actor.to_string(),
                    reason,
                };
                print_answer(client.decide(id, action, &request))
            };
            match command {
                CampaignCommand::Create { file } => {
                    let spec: origin::campaign::CampaignSpec = read_toml(&file)?;
                    spec.check()
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    print_answer(client.create_campaign(&CreateCampaign {
                        actor: actor.to_string(),
                        spec,
                    }))?;
                }
                CampaignCommand::Approve { id } => {
                    print_answer(client.approve(&id, actor.as_str()))?
                }
                CampaignCommand::Halt { id, reason } => {
                    decide(&id, CampaignAction::Halt, Some(reason))?;
                }
                CampaignCommand::Resume { id } => decide(&id, CampaignAction::Resume, None)?,
                CampaignCommand::Abort { id, reason } => {
                    decide(&id, CampaignAction::Abort, Some(reason))?;
                }
                CampaignCommand::Status { id: None } => print_answer(client.campaigns())?,
                CampaignCommand::Status { id: Some(id) } => {
                    let all = client.campaigns().map_err(explain)?;
                    let one = all
                        .campaign(&id)
                        .with_context(|| format!("there is no campaign {id}"))?;
                    println!("{}", serde_json::to_string_pretty(one)?);
                }
            }
        }
        Command::Vehicle { director, command } => {
            let client = DirectorClient::new(&director, DIRECTOR_TIMEOUT)?;
            match command {
                VehicleCommand::Register { file } => {
                    let vehicle: origin::registry::VehicleRecord = read_toml(&file)?;
                    vehicle
                        .check()
                        .with_context(|| format!("{}", file.display()))?;
                    print_answer(client.register(&proto::director_api::RegisterVehicle {
                        actor: actor.to_string(),
                        vehicle,
                    }))?;
                }
                VehicleCommand::List => print_answer(client.vehicles())?,
            }
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { public_key } => {
                let key = match public_key {
                    Some(text) => {
                        let bytes: [u8; 32] = hex::decode(text.trim())
                            .ok()
                            .and_then(|b| b.try_into().ok())
                            .context("--public-key must be 32 bytes in hex")?;
                        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                            .context("--public-key is not an ed25519 public key")?
                    }
                    None => origin::audit::key(&origin)?.verifying_key(),
                };
                let entries = origin::audit::verify(&origin::audit::log_path(&origin), &key)?;
                println!("ok: {entries} entries, chain and signatures intact");
            }
            AuditCommand::Export => {
                for entry in origin::audit::entries(&origin::audit::log_path(&origin))? {
                    println!("{entry}");
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads an operator's TOML file (a campaign, a vehicle record); errors name the file.
fn read_toml<T: serde::de::DeserializeOwned>(file: &std::path::Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", file.display()))
}
