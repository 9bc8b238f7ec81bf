//! The origin's side of the yard: firmware v1 and its point release v2, generated from the seed,
//! both released with a delta from v1 to v2, and every yard vehicle assigned v1; each release
//! and assignment recorded in the origin's audit log as done by `netsim`, as the CLI records
//! an operator's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use origin::repo::Origin;
use proto::Vin;
use proto::custom::Priority;

use super::options::{Log, YardOptions};

/// Who the yard's releases and assignments are recorded as in the origin's audit log.
const ACTOR: &str = "netsim";

/// The origin with both releases published, and the firmware it published.
#[derive(Debug)]
pub(super) struct Release {
    pub(super) origin: Origin,
    pub(super) v1: Vec<u8>,
    pub(super) v2: Vec<u8>,
    /// Each delta's blob id (its BLAKE3, the file's name) → its size.
    pub(super) delta_sizes: BTreeMap<String, u64>,
}

impl Release {
    /// All deltas together, bytes.
    pub(super) fn delta_bytes(&self) -> u64 {
        self.delta_sizes.values().sum()
    }

    /// The first roots of the image repository and of the director's repositories: what the
    /// depot and every vehicle trust from the start.
    pub(super) fn roots(&self) -> (PathBuf, PathBuf) {
        (
            self.origin.dir.join("image/metadata/1.root.json"),
            self.origin.dir.join("director/metadata/1.root.json"),
        )
    }

    /// Where the origin keeps its deltas, one file per blob id.
    pub(super) fn deltas_dir(&self) -> PathBuf {
        self.origin.dir.join("image/deltas")
    }
}

/// Prepares the origin in `out/origin` (its offline keys in `out/offline-keys`): releases v1
/// and v2 with the delta, and has the director assign v1 to each of `vins`, the state their
/// ECUs start in. Leaves nothing running.
pub(super) fn prepare(
    out: &Path,
    vins: &[Vin],
    options: &YardOptions,
    log: Log,
) -> anyhow::Result<Release> {
    let origin = Origin::new(
        out.join("origin"),
        Some(out.join("offline-keys").into()),
        node::clock::now(),
    );
    origin::init(&origin, None)?;
    log.say(&format!(
        "origin: releasing v1 and v2 ({} MiB) and computing the delta",
        options.image_bytes >> 20
    ));
    let v1 = firmware(options.image_bytes, options.seed);
    let v2 = next_release(&v1, options.seed);
    publish(&origin, out, &v1, &v2)?;
    let release = Release {
        delta_sizes: delta_sizes(&origin)?,
        origin,
        v1,
        v2,
    };
    assign_v1(&release.origin, vins)?;
    log.say(&format!(
        "origin: v1 and v2 released ({} MiB image, {} KiB delta)",
        release.v2.len() >> 20,
        release.delta_bytes() >> 10
    ));
    Ok(release)
}

/// Releases v1, then v2 with a delta from v1.
fn publish(origin: &Origin, out: &Path, v1: &[u8], v2: &[u8]) -> anyhow::Result<()> {
    std::fs::write(out.join("gw-1.bin"), v1)?;
    std::fs::write(out.join("gw-2.bin"), v2)?;
    let hw = ["gw-v1"];
    let actor = origin::Actor::new(ACTOR)?;
    origin::Release::new(out.join("gw-1.bin"), "ecu/gw-1.bin", hw, 1).sign(origin, &actor)?;
    // The origin's own delta options, as a real release uses (6 s for the 32 MiB image on two
    // cores; zstd level 19 without the LZMA pass, which the yard used before, took 24 s).
    origin::Release::new(out.join("gw-2.bin"), "ecu/gw-2.bin", hw, 2)
        .with_deltas_from(["ecu/gw-1.bin"])
        .sign(origin, &actor)?;
    Ok(())
}

/// The deltas the origin stored, by blob id.
fn delta_sizes(origin: &Origin) -> anyhow::Result<BTreeMap<String, u64>> {
    // Deltas are stored under their BLAKE3 (the blob id the vehicles fetch).
    Ok(std::fs::read_dir(origin.dir.join("image/deltas"))?
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
        .collect())
}

/// Has the director assign v1 to every vehicle's gateway ECU.
fn assign_v1(origin: &Origin, vins: &[Vin]) -> anyhow::Result<()> {
    let actor = origin::Actor::new(ACTOR)?;
    for (index, vin) in vins.iter().enumerate() {
        let ecu = origin::director::Assignment {
            serial: format!("GW-{vin}").parse()?,
            hardware_id: "gw-v1".into(),
            target: "ecu/gw-1.bin".into(),
        };
        origin::director::assign(origin, &actor, vin, &[ecu], Priority::Fix)
            .with_context(|| format!("assigning v1 to vehicle {}", index + 1))?;
    }
    Ok(())
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A firmware-like image: code-like noise with repeated tables and zero padding.
fn firmware(len: usize, seed: u64) -> Vec<u8> {
    let mut image = noise(len, seed);
    let table = noise(4096, seed ^ 0xabcd);
    let mut offset = 0;
    while offset + 65_536 <= len {
        // Every 64 KiB: a 4 KiB table repeated and 8 KiB of padding.
        image[offset..offset + 4096].copy_from_slice(&table);
        image[offset + 4096..offset + 12_288].fill(0xff);
        offset += 65_536;
    }
    image
}

/// v2: a few hundred scattered patches, one function grown (bytes inserted) and a new section
/// appended: what a point release of a firmware does.
fn next_release(v1: &[u8], seed: u64) -> Vec<u8> {
    let mut v2 = v1.to_vec();
    let patches = noise(4096, seed ^ 0x5eed);
    for (i, at) in (0..v2.len()).step_by(v1.len() / 300 + 1).enumerate() {
        v2[at] ^= patches[i % patches.len()] | 1;
    }
    let middle = v2.len() / 3;
    let grown = noise(64 << 10, seed ^ 0x9);
    v2.splice(middle..middle, grown);
    v2.extend_from_slice(&noise(256 << 10, seed ^ 0x77));
    v2
}
