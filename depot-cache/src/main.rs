//! `depot-cache`: the depot's cache, as operator commands over the `node` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// depotmesh depot cache: stores releases and serves them to the yard.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// List the blobs in the cache: id, size, groups held, complete or not.
    List {
        /// The cache's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("depot-cache: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
