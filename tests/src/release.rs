//! The origin side: an initialised origin with its keys, and releases signed by it.
//!
//! [`release`] is the one place the fixtures call origin's release API, so that a change to
//! that API changes one function here.

use std::path::{Path, PathBuf};

use origin::repo::Origin;
use proto::tuf::Time;

/// An origin initialised under `work` (`origin/`, its offline keys apart in `usb/`), signing at
/// `now`.
pub fn new_origin(work: &Path, now: Time) -> Origin {
    let origin = Origin::new(work.join("origin"), Some(work.join("usb").into()), now);
    origin::init(&origin, None).unwrap();
    origin
}

/// One image to release.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    /// Its target name.
    pub name: &'a str,
    /// Its bytes.
    pub image: &'a [u8],
    /// The role that signs it: `targets`, or a role delegated to.
    pub role: &'a str,
    /// The hardware it is for.
    pub hardware_id: &'a str,
    /// Its release counter.
    pub release_counter: u64,
    /// Earlier target names to build a delta from.
    pub deltas_from: &'a [&'a str],
    /// How the deltas are built.
    pub delta_options: delta::DeltaOptions,
    /// Build the image compressed (listed when worth it), as `origin release` does by default.
    pub compressed: bool,
}

impl<'a> Release<'a> {
    /// `image` as `name` for `hardware_id`, signed by the top-level targets role, no deltas,
    /// compressed as by default.
    #[must_use]
    pub fn new(name: &'a str, image: &'a [u8], hardware_id: &'a str, release_counter: u64) -> Self {
        Self {
            name,
            image,
            role: "targets",
            hardware_id,
            release_counter,
            deltas_from: &[],
            delta_options: delta::DeltaOptions::default(),
            compressed: true,
        }
    }
}

/// Releases `release` from `origin`: the image file is written beside the origin directory,
/// then signed, stored and published as `origin release` does.
pub fn release(origin: &Origin, release: &Release<'_>) -> anyhow::Result<origin::Released> {
    let file = image_file(origin, release.name);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, release.image).unwrap();
    let signed = origin::Release::new(
        &file,
        release.name,
        [release.hardware_id],
        release.release_counter,
    )
    .signed_by(release.role)
    .with_deltas_from(release.deltas_from.iter().copied())
    .delta_options(release.delta_options.clone())
    .compressed(release.compressed)
    .sign(origin, &actor())?;
    Ok(signed)
}

/// Who the fixtures act as, in the origin's audit log.
pub fn actor() -> origin::Actor {
    origin::Actor::new("test").unwrap()
}

/// Where [`release`] writes the image it releases as `name`: outside the origin directory, as
/// an engineer's build output is.
fn image_file(origin: &Origin, name: &str) -> PathBuf {
    origin
        .dir
        .with_file_name("release-images")
        .join(name.replace('/', "_"))
}

/// When the brake releases are signed.
pub const SIGNED_AT: &str = "2026-01-01T00:00:00Z";

/// The brake ECU's hardware id.
pub const BRAKE_HARDWARE: &str = "brake-v2";

/// The brake supplier's role, delegated `ecu/fw-*`.
pub const BRAKE_SUPPLIER: &str = "brake-supplier";

/// The brake ECU's firmware 1 (700,000 bytes) and 2 (900,000 bytes).
#[must_use]
pub fn brake_firmware() -> (Vec<u8>, Vec<u8>) {
    let fw1 = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let fw2 = (0..900_000u32).map(|i| (i * 17 % 241) as u8).collect();
    (fw1, fw2)
}

/// Enrols the node whose data directory is `data_dir` (its identity made there if new) in
/// `origin`'s fleet as `role`, for a day: writes its certificate to `data_dir/member.json` and
/// returns the `[mesh]` section that names it, trusting the origin's fleet key.
pub fn enrol(
    origin: &Origin,
    data_dir: &Path,
    role: proto::membership::MemberRole,
) -> node::mesh_config::MeshSection {
    std::fs::create_dir_all(data_dir).unwrap();
    let peer = node::identity::load_or_create(data_dir)
        .unwrap()
        .public()
        .to_peer_id();
    let cert = origin::fleet::issue(origin, &actor(), &peer.to_string(), role, 1).unwrap();
    let path = data_dir.join("member.json");
    std::fs::write(&path, cert.encode()).unwrap();
    node::mesh_config::MeshSection {
        open: false,
        fleet_keys: vec![origin::fleet::describe_key(origin).unwrap().fleet_key],
        certificate: Some(path),
        revocations: Some(data_dir.join("revocations.json")),
    }
}

/// Delegates `ecu/fw-*` to the brake supplier's new key.
pub fn delegate_to_brake_supplier(origin: &Origin) {
    let supplier = origin::keystore::NewKey::Make(proto::tuf::keys::KeyType::Ed25519);
    origin
        .delegate(BRAKE_SUPPLIER, &["ecu/fw-*".into()], &supplier, false)
        .unwrap();
}

/// The brake releases, as an origin under `work` signs them at [`SIGNED_AT`]: release 1
/// (`ecu/fw-1.bin`) by the top-level targets role, release 2 (`ecu/fw-2.bin`) by the brake
/// supplier's delegated role. Returns the image repository's directory and both firmwares.
pub fn brake_releases(work: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let origin = new_origin(work, Time::parse(SIGNED_AT).unwrap());
    let (fw1, fw2) = brake_firmware();
    release(
        &origin,
        &Release::new("ecu/fw-1.bin", &fw1, BRAKE_HARDWARE, 1),
    )
    .unwrap();
    delegate_to_brake_supplier(&origin);
    release(
        &origin,
        &Release {
            role: BRAKE_SUPPLIER,
            ..Release::new("ecu/fw-2.bin", &fw2, BRAKE_HARDWARE, 2)
        },
    )
    .unwrap();
    (origin.dir.join("image"), fw1, fw2)
}
