//! `netsim yard`: the whole system on loopback (see `netsim::yard`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netsim",
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
    /// and writes report.html and summary.json.
    Yard {
        /// Vehicles in the yard (1 to 64).
        #[arg(long, default_value_t = 8)]
        vehicles: usize,
        /// Size of the firmware image in MiB (1 to 1024).
        #[arg(long, default_value_t = 32)]
        image_mib: usize,
        /// Make the release fail its health check: the canary rolls back and the campaign
        /// halts by itself.
        #[arg(long)]
        failing_canary: bool,
        /// Output directory (recreated; only one netsim made, or an empty one).
        #[arg(long, default_value = "target/netsim-yard")]
        out: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Seed of the generated firmware.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
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
        Command::Yard {
            vehicles,
            image_mib,
            failing_canary,
            out,
            timeout_secs,
            seed,
        } => {
            let options = netsim::yard::YardOptions {
                vehicles,
                image_bytes: image_mib.saturating_mul(1 << 20),
                failing_canary,
                out,
                timeout: Duration::from_secs(timeout_secs),
                seed,
                verbose: true,
            };
            match netsim::yard::run(&options) {
                Ok(summary) => {
                    println!("\n{}", netsim::yard::table(&summary));
                    println!("report: {}", summary.report.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("netsim yard: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
