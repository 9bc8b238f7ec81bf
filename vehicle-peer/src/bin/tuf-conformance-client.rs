//! `tuf-conformance-client`: the client CLI of the TUF conformance suite
//! (theupdateframework/tuf-conformance, CLIENT-CLI.md), over the same verifier the vehicle runs
//! (`proto::tuf::Updater`). Plain HTTP; trusted metadata kept as `root.json`, `timestamp.json`,
//! ... in the metadata directory; the clock is the system's. A target already in the target
//! directory is checked against its trusted length and hashes and, if it matches, not downloaded
//! again. Exit 0 on success, 1 on failure.
//!
//! ```text
//! tuf-conformance-client --metadata-dir D init TRUSTED_ROOT
//! tuf-conformance-client --metadata-dir D --metadata-url URL refresh
//! tuf-conformance-client --metadata-dir D --metadata-url URL --target-name NAME \
//!     [--target-name NAME ...] --target-base-url URL --target-dir T download
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use proto::tuf::{BlockingUpdater, Limits, LocalStore, TrustedSet};
use vehicle_peer::tuf_files::{DirStore, HttpRemote, quote, write_durably};

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "tuf-conformance-client",
    version,
    about = "TUF conformance-suite client over depotmesh's verifier"
)]
struct Cli {
    /// Where trusted metadata is kept.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// A target to download. Repeatable.
    #[arg(long)]
    target_name: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Where downloaded targets go (named by their percent-encoded target path).
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trust ROOT as the first root (it must be signed by its own root keys).
    Init {
        /// The trusted root metadata file.
        root: PathBuf,
    },
    /// Update trusted metadata from the repository.
    Refresh,
    /// Refresh, then download and verify each target (or take it from the target directory
    /// when the copy there matches).
    Download,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tuf-conformance-client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut store = DirStore::open(&cli.metadata_dir)
        .with_context(|| format!("opening {}", cli.metadata_dir.display()))?;
    let metadata_url = || {
        cli.metadata_url
            .as_deref()
            .context("--metadata-url is required")
    };
    match cli.command {
        Command::Init { root } => {
            let bytes =
                std::fs::read(&root).with_context(|| format!("reading {}", root.display()))?;
            TrustedSet::new(&bytes, node::clock::now()).context("the trusted root")?;
            store
                .store("root", &bytes)
                .map_err(anyhow::Error::msg)
                .context("storing root.json")?;
        }
        Command::Refresh => {
            let remote = HttpRemote::new(metadata_url()?, None, REQUEST_TIMEOUT);
            let mut updater =
                BlockingUpdater::new(remote, store, node::clock::now(), Limits::default())?;
            updater.refresh()?;
        }
        Command::Download => {
            if cli.target_name.is_empty() {
                anyhow::bail!("--target-name is required (repeatable)");
            }
            let base = cli
                .target_base_url
                .as_deref()
                .context("--target-base-url is required")?;
            let dir = cli
                .target_dir
                .as_ref()
                .context("--target-dir is required")?;
            let remote = HttpRemote::new(metadata_url()?, Some(base), REQUEST_TIMEOUT);
            let mut updater =
                BlockingUpdater::new(remote, store, node::clock::now(), Limits::default())?;
            updater.refresh()?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for name in &cli.target_name {
                let info = updater
                    .target_info(name)?
                    .with_context(|| format!("no trusted role lists target {name}"))?;
                let path = dir.join(quote(name));
                // The local copy, if it matches what the trusted metadata says (its length
                // first, so that a large stray file is not read).
                let same_length =
                    std::fs::metadata(&path).is_ok_and(|meta| meta.len() == info.length);
                if same_length
                    && std::fs::read(&path).is_ok_and(|held| info.verify(name, &held).is_ok())
                {
                    continue;
                }
                let bytes = updater.download_target(name, &info)?;
                write_durably(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
