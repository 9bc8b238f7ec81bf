//! What an in-place update of a single-bank ECU costs with the remapping bank
//! ([`vehicle_peer::remap`]), on the real release pairs of the delta corpus, next to an A/B
//! install.
//!
//! ```text
//! cargo run --release -p vehicle-peer --example remap_corpus -- \
//!     [--corpus DIR] [--pairs E1,B2] [--block-size 4096] [--work DIR] [--reuse-deltas]
//! ```
//!
//! - `--corpus DIR`: corpus root; `DIR/files` holds the files (default `target/corpus` of the
//!   repository; fetch it with `../shared/corpus/scripts/fetch_corpus.sh DIR`).
//! - `--pairs-file FILE`: the pair list, `NAME OLD NEW` per line, paths under `DIR/files`
//!   (default `../shared/corpus/pairs.txt` beside the repository).
//! - `--pairs LIST`: comma-separated pair names (default: every pair of the list).
//! - `--block-size N`: the bank's block size, the unit of remapping (default 4096).
//! - `--work DIR`: deltas, bank files, boot environments and journals, and the table
//!   `remap-table.md` (default `target/remap-corpus` of the repository).
//! - `--threads N`: delta creation threads (default 2).
//! - `--reuse-deltas`: take `DIR/NAME.delta` from an earlier run instead of creating it again (a
//!   delta that does not rebuild the new file fails the install's hash check).
//!
//! For each pair, through the same code a gateway runs:
//!
//! 1. the delta old → new with `delta::create` (default options: 8 MiB segments, zstd
//!    level 22, LZMA dictionary tries);
//! 2. a file bank whose home area holds `max(old, new)` and whose spare area holds the whole new
//!    image (so every update fits), laid out by [`RemapLayout::fit`]; the old image is written
//!    home and the bank formatted with slots A and B; a redundant U-Boot environment in a file,
//!    provisioned, boots A; the journal is a sled database, as `vehicle-peer install` keeps it;
//! 3. the spare plan ([`flasher::spare_plan`]) of the delta against what A shows;
//! 4. the install: the director's approval through real Uptane partial verification, then
//!    [`Install::begin`] → `write` (delta applied into the spare area, the new map switched and
//!    verified) → `start_trial`; the next power-on boots B, the trial concludes healthy and is
//!    committed; then [`flasher::merge`] copies the remapped blocks home;
//! 5. home is read back and compared with the new file, both maps must be empty, and the next
//!    boot's slot must hold the new image — the program exits non-zero if any pair fails.
//!
//! The table (stdout, and `remap-table.md` in the work directory): sizes, delta size, changed
//! blocks of the new image's blocks, the spare space the update took, the flash bytes the
//! install wrote (spare blocks and map copies), the merge wrote (home blocks and map copies)
//! and both together, against an A/B install (the whole new image written to the other bank),
//! and wall times of plan, install and merge. The install's time includes the plan it makes
//! again itself and hashing the new image twice (through the new map, and before the trial).
//! MiB = 2^20 bytes. Memory: one image at a time (the approval's digests), plus what
//! `delta::create` needs (about 6× the old file).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use clap::Parser;
use delta::{ReadAt, WriteAt};
use ed25519_dalek::SigningKey;
use node::storage::SledIndex;
use proto::BlobId;
use proto::tuf::{Key, RoleKeys, Time, build};
use proto::uptane::{ApprovedImage, EcuState, PartialVerifier};
use serde_json::{Map, json};
use vehicle_peer::bank::{Bank, FileBank};
use vehicle_peer::boot::{EnvLayout, EnvStore, Slot, UbootBoot};
use vehicle_peer::flasher::{self, Ecu, EcuJob, Install, Outcome, Recovered};
use vehicle_peer::remap::{self, FlashWrites, MapCopy, RemapBank, RemapLayout};
use vehicle_peer::slots::Banks;

const SERIAL: &str = "ECU-1";
const HARDWARE: &str = "single-bank-v1";
/// Each copy of the redundant boot environment.
const ENV_SIZE: usize = 0x2000;
/// Reads and writes of whole files in pieces of this size.
const CHUNK: usize = 8 << 20;
const MIB: f64 = (1u64 << 20) as f64;

#[derive(Parser, Debug)]
#[command(about = "In-place update cost of a single-bank (remapping) ECU on the delta corpus")]
struct Args {
    /// Corpus root: DIR/files holds the files [default: target/corpus of the repository].
    #[arg(long, value_name = "DIR")]
    corpus: Option<PathBuf>,
    /// Pair list (NAME OLD NEW per line) [default: ../shared/corpus/pairs.txt].
    #[arg(long, value_name = "FILE")]
    pairs_file: Option<PathBuf>,
    /// Comma-separated pair names [default: all].
    #[arg(long, value_name = "LIST")]
    pairs: Option<String>,
    /// The bank's block size in bytes (a power of two, 512 to 16384).
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Work directory [default: target/remap-corpus of the repository].
    #[arg(long, value_name = "DIR")]
    work: Option<PathBuf>,
    /// Delta creation threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Reuse WORK/NAME.delta from an earlier run.
    #[arg(long)]
    reuse_deltas: bool,
}

#[derive(Debug)]
struct Pair {
    name: String,
    old: PathBuf,
    new: PathBuf,
}

#[derive(Debug)]
struct Row {
    name: String,
    old_len: u64,
    new_len: u64,
    delta_len: u64,
    changed: u64,
    image_blocks: u64,
    spare_needed: u64,
    install: FlashWrites,
    merge: FlashWrites,
    plan_s: f64,
    install_s: f64,
    merge_s: f64,
    /// Why the check after the merge failed, if it did.
    failed: Option<String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("remap_corpus: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ok(false): a pair's check failed (after printing the table).
fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the crate has no parent directory")?
        .to_path_buf();
    let corpus = args
        .corpus
        .clone()
        .unwrap_or_else(|| repo.join("target/corpus"));
    let pairs_file = args
        .pairs_file
        .clone()
        .unwrap_or_else(|| repo.join("../shared/corpus/pairs.txt"));
    let work = args
        .work
        .clone()
        .unwrap_or_else(|| repo.join("target/remap-corpus"));
    let pairs = read_pairs(&pairs_file, &corpus, args.pairs.as_deref())?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let mut rows = Vec::new();
    for pair in &pairs {
        eprintln!(
            "{}: {} -> {}",
            pair.name,
            pair.old.display(),
            pair.new.display()
        );
        let row = measure(pair, &args, &work).with_context(|| format!("pair {}", pair.name))?;
        if let Some(why) = &row.failed {
            eprintln!("  {}: CHECK FAILED: {why}", pair.name);
        }
        rows.push(row);
    }

    let table = table(&rows, args.block_size);
    print!("{table}");
    let path = work.join("remap-table.md");
    std::fs::write(&path, &table).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("table written to {}", path.display());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.failed.is_some())
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "remap_corpus: home does not hold the new image after the merge: {}",
            failed.join(", ")
        );
        return Ok(false);
    }
    Ok(true)
}

fn read_pairs(list: &Path, corpus: &Path, select: Option<&str>) -> anyhow::Result<Vec<Pair>> {
    let fetch = "../shared/corpus/scripts/fetch_corpus.sh";
    let text = std::fs::read_to_string(list).with_context(|| {
        format!(
            "no pair list at {} (expected ../shared beside the repository; or pass --pairs-file)",
            list.display()
        )
    })?;
    let files = corpus.join("files");
    if !files.is_dir() {
        bail!(
            "no corpus at {}: fetch it with `{fetch} {}`, or pass --corpus DIR (DIR/files holds the files)",
            files.display(),
            corpus.display()
        );
    }
    let wanted: Option<Vec<&str>> = select.map(|s| s.split(',').map(str::trim).collect());
    let mut pairs = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(old), Some(new)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        if name.starts_with('#') || wanted.as_ref().is_some_and(|w| !w.contains(&name)) {
            continue;
        }
        let pair = Pair {
            name: name.to_string(),
            old: files.join(old),
            new: files.join(new),
        };
        for file in [&pair.old, &pair.new] {
            if !file.is_file() {
                bail!(
                    "pair {name}: missing {} (fetch the corpus with `{fetch} {}`)",
                    file.display(),
                    corpus.display()
                );
            }
        }
        pairs.push(pair);
    }
    if let Some(wanted) = &wanted {
        for w in wanted {
            ensure!(
                pairs.iter().any(|p| p.name == *w),
                "no pair '{w}' in {}",
                list.display()
            );
        }
    }
    ensure!(
        !pairs.is_empty(),
        "no pair selected from {}",
        list.display()
    );
    Ok(pairs)
}

fn slot(name: &str) -> anyhow::Result<Slot> {
    Ok(Slot::new(name)?)
}

fn measure(pair: &Pair, args: &Args, work: &Path) -> anyhow::Result<Row> {
    let old_len = std::fs::metadata(&pair.old)?.len();
    let new_len = std::fs::metadata(&pair.new)?.len();

    // 1. The delta.
    let delta_path = work.join(format!("{}.delta", pair.name));
    if args.reuse_deltas && delta_path.is_file() {
        eprintln!("  delta: reusing {}", delta_path.display());
    } else {
        let options = delta::DeltaOptions {
            threads: args.threads.max(1),
            ..Default::default()
        };
        let summary = delta::create(&pair.old, &pair.new, &delta_path, &options)
            .context("creating the delta")?;
        eprintln!(
            "  delta: {} bytes in {:.1} s ({:?})",
            summary.delta_len, summary.seconds, summary.methods
        );
    }
    let delta = File::open(&delta_path).with_context(|| format!("{}", delta_path.display()))?;
    let delta_len = delta.metadata()?.len();

    // 2. The single-bank ECU: home holds the old image, spare fits the whole new one.
    let (a, b) = (slot("A")?, slot("B")?);
    let bs = u64::from(args.block_size);
    let home_blocks = old_len.max(new_len).div_ceil(bs);
    let spare_bytes = new_len.div_ceil(bs) * bs;
    let probe = RemapLayout {
        block_size: args.block_size,
        logical_blocks: 0,
        spare_blocks: u32::try_from(new_len.div_ceil(bs)).context("too many spare blocks")?,
    };
    let capacity = home_blocks * bs + probe.spare_len() + 2 * probe.map_len();
    let layout =
        RemapLayout::fit(capacity, args.block_size, spare_bytes).map_err(|e| anyhow!(e))?;
    ensure!(
        u64::from(layout.logical_blocks) == home_blocks,
        "layout {layout:?} does not have the {home_blocks} home blocks wanted"
    );
    let bank_path = work.join(format!("{}.bank", pair.name));
    let mut dev = FileBank::create(&bank_path, layout.physical_len())?;
    copy_into(&pair.old, &mut dev)?;
    dev.sync()
        .with_context(|| format!("syncing {}", bank_path.display()))?;
    RemapBank::format(dev, layout, [a.clone(), b.clone()])?;
    // Opened again as the gateway does: its write counters start here.
    let banks = remap::open_file(&bank_path, false, layout, [a.clone(), b.clone()])?;

    let env_path = work.join(format!("{}.env", pair.name));
    let env = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&env_path)
        .with_context(|| format!("creating {}", env_path.display()))?;
    env.set_len(2 * ENV_SIZE as u64)?;
    let env_layout = EnvLayout {
        size: ENV_SIZE,
        first: 0,
        second: Some(ENV_SIZE as u64),
    };
    let boot = UbootBoot::new(EnvStore::new(env, env_layout)?, vec![a.clone(), b.clone()]);
    let mut ecu = Ecu {
        serial: SERIAL.into(),
        hardware_id: HARDWARE.into(),
        key: proto::tuf::signer::KeyPair::Ed25519(SigningKey::from_bytes(&[1; 32])),
        installed: None,
        banks,
        boot,
    };
    ecu.boot.provision()?;
    let journal_path = work.join(format!("{}.journal", pair.name));
    if journal_path.exists() {
        std::fs::remove_dir_all(&journal_path)
            .with_context(|| format!("removing {}", journal_path.display()))?;
    }
    let journal = SledIndex::open(&journal_path)
        .with_context(|| format!("opening journal {}", journal_path.display()))?;
    let booted = ecu.boot.boot()?;
    ensure!(booted == a, "the fresh ECU booted {booted}, not A");

    let approval = approve(&pair.new)?;
    let expect = approval
        .blake3()
        .context("the approval carries no BLAKE3")?;

    // 3. The spare plan.
    let job = EcuJob {
        approval: &approval,
        delta: &delta,
        delta_len,
        full_image: false,
    };
    let started = Instant::now();
    let plan = flasher::spare_plan(&ecu, &a, &job)?.context("a remapping bank gave no plan")?;
    let plan_s = started.elapsed().as_secs_f64();
    ensure!(
        plan.fits(),
        "the plan does not fit: {} bytes needed, {} free",
        plan.needed_bytes(),
        plan.free_bytes()
    );
    eprintln!(
        "  plan: {} of {} blocks change ({:.2} s)",
        plan.changed.len(),
        plan.image_blocks,
        plan_s
    );

    // 4. The install, the trial boot, the commit and the merge.
    let before = ecu.banks.writes();
    let started = Instant::now();
    Install::begin(&mut ecu, &journal, &approval, &a)?
        .write(&delta, delta_len, |_, _| {})?
        .start_trial()?;
    let install_s = started.elapsed().as_secs_f64();
    let after_install = ecu.banks.writes();
    eprintln!("  install: {install_s:.2} s; rebooting into the trial");

    let booted = ecu.boot.boot()?;
    ensure!(booted == b, "the trial boot came up in {booted}, not B");
    let outcome = match flasher::recover(&mut ecu, &journal)? {
        Recovered::Trial(trial) => trial.conclude(&booted, &mut |_: &Slot| Ok(()))?,
        other => bail!("after the trial boot the journal says {other:?}"),
    };
    ensure!(outcome == Outcome::Committed, "the trial ended {outcome:?}");

    let started = Instant::now();
    let merged = flasher::merge(&mut ecu, &journal)?;
    let merge_s = started.elapsed().as_secs_f64();
    let after_merge = ecu.banks.writes();
    eprintln!(
        "  merge: {} blocks home in {merge_s:.2} s",
        merged.blocks_copied
    );

    // 5. Home holds the new image, no block is remapped, and the next boot shows it.
    let mut failed = None;
    if let Some(why) = differs(&ecu.banks.device(), &pair.new, new_len)? {
        failed = Some(why);
    }
    for copy in 0..2 {
        match ecu.banks.copy(copy)? {
            MapCopy::Valid(map) if map.entries.is_empty() => {}
            MapCopy::Valid(map) => {
                failed.get_or_insert(format!(
                    "map copy {copy} still remaps {} blocks",
                    map.entries.len()
                ));
            }
            MapCopy::Invalid(why) => {
                failed.get_or_insert(format!("map copy {copy} does not check: {why}"));
            }
        }
    }
    let next = ecu.boot.boot()?;
    if !ecu.banks.holds(&next, new_len, expect)? {
        failed.get_or_insert(format!(
            "the next boot ({next}) does not show the new image"
        ));
    }
    if merged.blocks_copied != plan.changed.len() as u64 {
        failed.get_or_insert(format!(
            "the merge copied {} blocks, the plan changed {}",
            merged.blocks_copied,
            plan.changed.len()
        ));
    }

    Ok(Row {
        name: pair.name.clone(),
        old_len,
        new_len,
        delta_len,
        changed: plan.changed.len() as u64,
        image_blocks: plan.image_blocks,
        spare_needed: plan.needed_bytes(),
        install: minus(after_install, before),
        merge: minus(after_merge, after_install),
        plan_s,
        install_s,
        merge_s,
        failed,
    })
}

fn minus(after: FlashWrites, before: FlashWrites) -> FlashWrites {
    FlashWrites {
        spare_bytes: after.spare_bytes - before.spare_bytes,
        home_bytes: after.home_bytes - before.home_bytes,
        map_bytes: after.map_bytes - before.map_bytes,
        syncs: after.syncs - before.syncs,
    }
}

fn written(w: &FlashWrites) -> u64 {
    w.spare_bytes + w.home_bytes + w.map_bytes
}

/// Copies the file at `path` to the start of `dev`, a piece at a time.
fn copy_into(path: &Path, dev: &mut FileBank) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(CHUNK as u64))?;
        file.read_exact_at(at, &mut buf[..n])
            .with_context(|| format!("reading {}", path.display()))?;
        dev.write_all_at(at, &buf[..n])
            .with_context(|| format!("writing {}", dev.path().display()))?;
        at += n as u64;
    }
    Ok(())
}

/// Where the first `len` bytes of `dev` differ from the file at `path`, if they do.
fn differs(dev: &FileBank, path: &Path, len: u64) -> anyhow::Result<Option<String>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut want, mut got) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from((len - at).min(CHUNK as u64))?;
        file.read_exact_at(at, &mut want[..n])?;
        dev.read_exact_at(at, &mut got[..n])?;
        if let Some(i) = want[..n].iter().zip(&got[..n]).position(|(w, g)| w != g) {
            return Ok(Some(format!(
                "home differs from {} at byte {}",
                path.display(),
                at + i as u64
            )));
        }
        at += n as u64;
    }
    Ok(None)
}

/// The director's approval of the image at `path` for this ECU, through the secondary's real
/// partial verification (as the flasher's tests build it). The image is in memory only while it
/// is hashed.
fn approve(path: &Path) -> anyhow::Result<ApprovedImage> {
    let digests = {
        let image = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        build::TargetDigests::of(&image)
    };
    let key = SigningKey::from_bytes(&[42; 32]);
    let entry = build::target_entry(
        &digests,
        json!({"ecu_identifiers": {SERIAL: {"hardware_id": HARDWARE}}, "release_counter": 2}),
    );
    let now = Time::parse("2026-06-01T00:00:00Z")?;
    let expires = Time::from_unix(now.unix() + 86_400);
    let targets = Map::from_iter([("ecu/firmware.bin".to_string(), entry)]);
    let signed = build::sign(&build::targets(1, expires, targets, &[]), &[&key])?;
    let public = key.verifying_key();
    let keyid = build::key_id(&public);
    let mut verifier = PartialVerifier {
        keys: BTreeMap::from([(keyid.clone(), Key::Ed25519(public))]),
        role: RoleKeys {
            keyids: vec![keyid],
            threshold: 1,
        },
        last_version: 0,
        serial: SERIAL.into(),
        ecu: EcuState {
            hardware_id: HARDWARE.into(),
            installed_release_counter: 1,
        },
    };
    let approved = verifier
        .verify(&signed, now)?
        .context("the director's targets name no image for this ECU")?;
    ensure!(
        approved.blake3() == Some(BlobId::from_bytes(hex_32(&digests.blake3)?)),
        "the approval's BLAKE3 is not the image's"
    );
    Ok(approved)
}

fn hex_32(text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text)?
        .try_into()
        .map_err(|_| anyhow!("{text} is not 32 bytes of hex"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn table(rows: &[Row], block_size: u32) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "In-place update of a single-bank ECU (remapping bank, blocks of {block_size} bytes) vs an A/B install, per corpus pair. MiB = 2^20 bytes."
    ));
    line(
        "Install = spare blocks + map copies written before the trial; merge = remapped blocks copied home + map copies; A/B = the new image written whole to the other bank."
            .into(),
    );
    line(String::new());
    line("| pair | old MiB | new MiB | delta MiB | changed / image blocks | spare used MiB | install writes MiB | merge writes MiB | total MiB | A/B MiB | total / A/B | plan s | install s | merge s | home = new |".into());
    line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into());
    for r in rows {
        let total = written(&r.install) + written(&r.merge);
        line(format!(
            "| {} | {:.2} | {:.2} | {:.2} | {} / {} ({:.1} %) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.name,
            mib(r.old_len),
            mib(r.new_len),
            mib(r.delta_len),
            r.changed,
            r.image_blocks,
            100.0 * r.changed as f64 / r.image_blocks.max(1) as f64,
            mib(r.spare_needed),
            mib(written(&r.install)),
            mib(written(&r.merge)),
            mib(total),
            mib(r.new_len),
            total as f64 / r.new_len.max(1) as f64,
            r.plan_s,
            r.install_s,
            r.merge_s,
            if r.failed.is_some() { "**NO**" } else { "yes" },
        ));
    }
    line(String::new());
    let detail: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: install {} spare + {} map bytes, {} syncs; merge {} home + {} map bytes, {} syncs",
                r.name,
                r.install.spare_bytes,
                r.install.map_bytes,
                r.install.syncs,
                r.merge.home_bytes,
                r.merge.map_bytes,
                r.merge.syncs
            )
        })
        .collect();
    line(format!("Flash writes in bytes — {}.", detail.join("; ")));
    out
}
