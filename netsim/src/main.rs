//! `netsim yard`: the whole system on loopback (see `netsim::yard`); `netsim fleet`: a campaign
//! across a whole fleet in simulated time (see `netsim::fleet`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netsim",
    version,
    about = "Runs depotmesh in a simulated yard on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An origin, a depot and N vehicle agents as real libp2p QUIC nodes on loopback; a
    /// campaign rolls firmware v2 out (canary, then the rest); prints progress and a summary,
    /// and writes report.html and summary.json. Exits 0 when the campaign ended as expected
    /// (see --expect), 3 when it ended otherwise, 1 when the run failed.
    Yard {
        /// Vehicles in the yard (1 to 64).
        #[arg(long, default_value_t = 8)]
        vehicles: usize,
        /// Size of the firmware image in MiB (1 to 1024).
        #[arg(long, default_value_t = 32)]
        image_mib: usize,
        /// Make the release fail its health check: the canary rolls back and the campaign
        /// halts by itself (which is then what the run expects).
        #[arg(long)]
        failing_canary: bool,
        /// How the campaign must end for the run to succeed [default: halted with
        /// --failing-canary, completed otherwise]; otherwise it exits 3.
        #[arg(long, value_enum)]
        expect: Option<netsim::yard::Expected>,
        /// Output directory (recreated; only one netsim made, or an empty one).
        #[arg(long, default_value = "target/netsim-yard")]
        out: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Seed of the generated firmware.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Every vehicle downloads at most this many KiB/s, from the depot and neighbours
        /// together (the agent's download_bytes_per_sec); no limit when left out.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        vehicle_down_kibps: Option<u64>,
        /// The depot sends the yard at most this many KiB/s, to all vehicles together (its
        /// [serve] upload_bytes_per_sec); no limit when left out.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        depot_up_kibps: Option<u64>,
        /// Add a corrupt peer to the yard: it claims the delta and corrupts every piece it
        /// sends; vehicles must find out, keep nothing from it and finish elsewhere.
        #[arg(long)]
        corrupt_peer: bool,
        /// Add a slow reader to the yard: a fleet member that asks the depot for as many
        /// ranges of the release as it lets one peer hold, on tiny receive windows, and reads
        /// none of them; started before the campaign.
        #[arg(long)]
        slow_reader: bool,
        /// Add a report flooder to the yard: a fleet member that hands the depot's relay
        /// reports (each as large as allowed, each claiming another vehicle) as fast as it
        /// answers; started before the campaign.
        #[arg(long)]
        report_flood: bool,
        /// This many of the vehicles have a single-bank ECU (one bank with a spare area,
        /// updated in place through a remapping block map, then merged home) instead of A/B
        /// banks.
        #[arg(long, default_value_t = 0)]
        single_bank: usize,
        /// The last this many vehicles had their gateway replaced: it runs v1's factory build,
        /// which no delta starts from, so they install v2 from the image compressed (which the
        /// origin then builds: 82 % of the noise-like image, 6.7 s for 32 MiB).
        #[arg(long, default_value_t = 0)]
        replaced_parts: usize,
    },
    /// A campaign across a whole fleet in simulated time (flow-level model driven by the real
    /// link policy and campaign gates); prints the outcome and writes summary.json, SVG charts
    /// and report.html.
    Fleet {
        /// The scenario (TOML; see config/scenarios/).
        #[arg(long)]
        scenario: PathBuf,
        /// Seed in place of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Output directory (created; its summary.json, *.svg and report.html are replaced).
        #[arg(long, default_value = "target/netsim-fleet")]
        out: PathBuf,
    },
}

fn fleet(scenario: &std::path::Path, seed: Option<u64>, out: &std::path::Path) -> ExitCode {
    let begun = std::time::Instant::now();
    let mut said = begun;
    // A run of more than a few seconds says how far it has come (on standard error: the
    // outcome on standard output stays the same).
    let mut progress = |p: netsim::fleet::RunProgress| {
        if said.elapsed() >= Duration::from_secs(2) {
            said = std::time::Instant::now();
            eprintln!(
                "[{:>6.1} s] simulated {:.0} h of {:.0} after approval, {} events; {:.1} % of the fleet committed",
                begun.elapsed().as_secs_f64(),
                p.hours,
                p.end_hours,
                p.events,
                p.committed * 100.0
            );
        }
    };
    let result = netsim::fleet::Scenario::load(scenario).and_then(|checked| {
        let summary = netsim::fleet::run_with_progress(&checked, seed, &mut progress)?;
        netsim::fleet::write(&summary, out)?;
        Ok(summary)
    });
    match result {
        Ok(summary) => {
            println!("{}", netsim::fleet::table(&summary));
            println!("report: {}", out.join("report.html").display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("netsim fleet: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Fleet {
            scenario,
            seed,
            out,
        } => fleet(&scenario, seed, &out),
        Command::Yard {
            vehicles,
            image_mib,
            failing_canary,
            expect,
            out,
            timeout_secs,
            seed,
            vehicle_down_kibps,
            depot_up_kibps,
            corrupt_peer,
            slow_reader,
            report_flood,
            single_bank,
            replaced_parts,
        } => {
            let options = netsim::yard::YardOptions {
                vehicles,
                image_bytes: image_mib.saturating_mul(1 << 20),
                failing_canary,
                out,
                timeout: Duration::from_secs(timeout_secs),
                seed,
                vehicle_down_bytes_per_sec: vehicle_down_kibps.map(|k| k.saturating_mul(1024)),
                depot_up_bytes_per_sec: depot_up_kibps.map(|k| k.saturating_mul(1024)),
                corrupt_peer,
                slow_reader,
                report_flood,
                single_bank,
                replaced_parts,
                expect,
                verbose: true,
            };
            match netsim::yard::run(&options) {
                Ok(summary) => {
                    println!("\n{}", netsim::yard::table(&summary));
                    match netsim::compare::compare(&summary) {
                        Ok(c) => println!(
                            "fleet model of this yard (netsim fleet, same vehicles, delta, limits and waves): {} (yard: {}){}",
                            c.model_end
                                .as_ref()
                                .map_or("did not end".into(), |(state, s)| format!(
                                    "{state} after {s:.1} s"
                                )),
                            summary
                                .ended_after_secs
                                .map_or("did not end".into(), |s| format!(
                                    "{} after {s:.1} s",
                                    summary.state
                                )),
                            match summary.replaced_parts {
                                0 => String::new(),
                                n => format!(
                                    "; the model gives every vehicle the delta, where {n} of the yard's fetched the compressed image"
                                ),
                            },
                        ),
                        Err(error) => eprintln!("fleet model of this yard: {error:#}"),
                    }
                    println!("report: {}", summary.report.display());
                    match summary
                        .expected
                        .judge(&summary.state, summary.reason.as_deref())
                    {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(unexpected) => {
                            eprintln!("netsim yard: {unexpected}");
                            ExitCode::from(netsim::yard::UNEXPECTED_EXIT)
                        }
                    }
                }
                Err(error) => {
                    eprintln!("netsim yard: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
