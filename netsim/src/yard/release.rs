//! The origin's side of the yard: firmware v1 and its point release v2, generated from the seed,
//! both released with a delta from v1 to v2, and every yard vehicle assigned v1; each release
//! and assignment recorded in the origin's audit log as done by `netsim`, as the CLI records
//! an operator's. With replaced parts, also v1's factory build, which the replaced gateways run
//! and no delta starts from: v2 is released compressed for them.

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
    /// v1's factory build: what a replaced gateway runs (no delta starts from it).
    pub(super) factory: Vec<u8>,
    /// Each delta's blob id (its BLAKE3, the file's name) → its size.
    pub(super) delta_sizes: BTreeMap<String, u64>,
    /// v2 compressed, when it was listed: its blob id and size.
    pub(super) compressed: Option<(String, u64)>,
}

/// v1's target name.
pub(super) const V1: &str = "ecu/gw-1.bin";
/// v1's factory build's target name.
pub(super) const FACTORY: &str = "ecu/gw-1-factory.bin";
/// v2's target name.
pub(super) const V2: &str = "ecu/gw-2.bin";

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
    let factory = factory_build(&v1);
    let replaced = options.replaced_parts > 0;
    let what = match replaced {
        true => "origin: computing the delta and the compressed image",
        false => "origin: computing the delta",
    };
    let compressed = log.during(what, || {
        publish(&origin, out, [&v1, &factory, &v2], replaced)
    })?;
    let compressed = compressed.map(|c| (c.blake3.to_string(), c.length));
    let release = Release {
        delta_sizes: delta_sizes(&origin, compressed.as_ref().map(|c| c.0.as_str()))?,
        compressed,
        origin,
        v1,
        v2,
        factory,
    };
    assign_v1(&release.origin, vins, options.replaced_parts)?;
    let compressed = match &release.compressed {
        Some((_, size)) => format!(", v2 compressed {} KiB", size >> 10),
        None => String::new(),
    };
    log.say(&format!(
        "origin: v1 and v2 released ({} MiB image, {} KiB delta{compressed})",
        release.v2.len() >> 20,
        release.delta_bytes() >> 10
    ));
    Ok(release)
}

/// Releases v1 (and, for `replaced` parts, its factory build), then v2 with a delta from v1
/// and, for the replaced parts, compressed: what was listed compressed.
fn publish(
    origin: &Origin,
    out: &Path,
    [v1, factory, v2]: [&[u8]; 3],
    replaced: bool,
) -> anyhow::Result<Option<proto::custom::CompressedRef>> {
    let hw = ["gw-v1"];
    let actor = origin::Actor::new(ACTOR)?;
    let file = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let path = out.join(name.replace('/', "_"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    };
    // Nothing in the yard installs v1 or the factory build: they are not built compressed.
    origin::Release::new(file(V1, v1)?, V1, hw, 1)
        .compressed(false)
        .sign(origin, &actor)?;
    if replaced {
        origin::Release::new(file(FACTORY, factory)?, FACTORY, hw, 1)
            .compressed(false)
            .sign(origin, &actor)?;
    }
    // The origin's own delta options, as a real release uses (3 s for the 32 MiB image on two
    // cores; zstd level 19 without the LZMA pass, which the yard used before, took 24 s). v2
    // compressed only when a replaced part will take it: the yard's noise-like firmware
    // compresses little and slowly (82 % in 6.7 s for 32 MiB).
    let released = origin::Release::new(file(V2, v2)?, V2, hw, 2)
        .with_deltas_from([V1])
        .compressed(replaced)
        .sign(origin, &actor)?;
    Ok(released.compressed)
}

/// The deltas the origin stored, by blob id, but for the image `compressed`.
fn delta_sizes(origin: &Origin, compressed: Option<&str>) -> anyhow::Result<BTreeMap<String, u64>> {
    // Deltas are stored under their BLAKE3 (the blob id the vehicles fetch).
    Ok(std::fs::read_dir(origin.dir.join("image/deltas"))?
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
        .filter(|(name, _)| Some(name.as_str()) != compressed)
        .collect())
}

/// Whether vehicle `index` of `vehicles` had its gateway replaced: the last `replaced` do.
pub(super) fn is_replaced(index: usize, vehicles: usize, replaced: usize) -> bool {
    index + replaced >= vehicles
}

/// Has the director assign v1 to every vehicle's gateway ECU (the factory build to the last
/// `replaced` vehicles).
fn assign_v1(origin: &Origin, vins: &[Vin], replaced: usize) -> anyhow::Result<()> {
    let actor = origin::Actor::new(ACTOR)?;
    for (index, vin) in vins.iter().enumerate() {
        let target = match is_replaced(index, vins.len(), replaced) {
            true => FACTORY,
            false => V1,
        };
        let ecu = origin::director::Assignment {
            serial: format!("GW-{vin}").parse()?,
            hardware_id: "gw-v1".into(),
            target: target.into(),
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

/// v1's factory build: the same firmware with another build stamp (its first 32 bytes), so
/// that no delta from v1 applies to it.
fn factory_build(v1: &[u8]) -> Vec<u8> {
    let mut factory = v1.to_vec();
    let stamp = noise(32, 0xfac7);
    let n = stamp.len().min(factory.len());
    factory[..n].copy_from_slice(&stamp[..n]);
    factory
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
