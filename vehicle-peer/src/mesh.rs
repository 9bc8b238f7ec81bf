//! TUF over the mesh: a vehicle refreshes its trusted metadata from the depot cache (or any peer)
//! by name, then fetches a signed target as a blob from the depot and its neighbours at once.
//!
//! A depot relays but cannot forge: every metadata file it hands over is checked by
//! [`proto::tuf::Updater`] (signatures, versions, expiry, lengths) exactly as if it came from
//! the origin, and the target's bytes are verified against the BLAKE3 the signed targets
//! metadata gives, then against its sha256/sha512. Every metadata fetch is bounded by the
//! updater's length limit and by a time limit ([`node::named`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use node::net::NetHandle;
use node::storage::{Index, Storage};
use node::store::BlobStore;
use proto::tuf::{self, Freshness, LocalStore, Role, Time, TufError};

use crate::tuf_files::DirStore;

pub use node::tuf_mesh::{MeshRemote, MeshUpdater};

/// Starts a vehicle's trusted metadata for `repository` in `data_dir` from `root` when it has
/// none (a vehicle ships with its first root; later roots come by rotation). Returns the store.
pub fn trusted_store(
    data_dir: &Path,
    repository: &str,
    root: Option<&Path>,
) -> anyhow::Result<DirStore> {
    node::tuf_mesh::trusted_store(data_dir, repository, root).map_err(anyhow::Error::msg)
}

pub use node::tuf_mesh::metadata_dir;

/// Explains a failed refresh the way an operator needs to hear it: a vehicle whose trusted
/// timestamp has expired has been offline too long (or is being fed stale metadata) and will
/// not install until it gets a fresh one.
pub fn explain_refresh_failure(
    error: TufError,
    local: &impl LocalStore,
    now: Time,
) -> anyhow::Error {
    if let TufError::Expired { role, expires, .. } = &error {
        if role == "timestamp" {
            return anyhow::anyhow!(
                "refusing to install: the newest timestamp the peers offer expired at {expires} \
                 ({} ago); the depot is not being refreshed from the origin, or is withholding \
                 updates. The vehicle will try again at the next depot or cellular window",
                ago(*expires, now)
            );
        }
    }
    match tuf::freshness(local, now) {
        Freshness::Expired(expired) => anyhow::anyhow!(
            "refusing to install: offline too long. The newest timestamp this vehicle trusts \
             expired at {expired} ({} ago), and no fresh one could be fetched: {error}",
            ago(expired, now)
        ),
        Freshness::NeverRefreshed => anyhow::anyhow!(
            "refusing to install: this vehicle has never fetched a timestamp, and could not now: {error}"
        ),
        Freshness::Fresh(_) => {
            anyhow::anyhow!(
                "refusing to install: the repository's metadata did not verify: {error}"
            )
        }
    }
}

fn ago(then: Time, now: Time) -> String {
    let seconds = now.unix().saturating_sub(then.unix()).max(0);
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

/// One signed target to fetch over the mesh: what `vehicle-peer get` does.
#[derive(Debug, Clone)]
pub struct GetRequest {
    /// The vehicle's data directory: blob store, identity, trusted metadata under `tuf/`.
    pub data_dir: PathBuf,
    /// Peers to ask first (the depot), with `/p2p/<peer id>`.
    pub peers: Vec<Multiaddr>,
    /// Addresses to listen on, so neighbours can fetch from this vehicle meanwhile.
    pub listen: Vec<Multiaddr>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// The fleet's mesh this vehicle is a member of; `None`: an open mesh.
    pub membership: Option<node::membership::MeshMembership>,
    /// The first root, used only when the vehicle trusts none yet.
    pub root: Option<PathBuf>,
    /// The repository's name on the mesh (`image`).
    pub repository: String,
    /// The target's name in the signed targets metadata.
    pub target: String,
    /// Where to write it.
    pub out: PathBuf,
    /// The time metadata must be valid at (the system clock when `None`).
    pub now: Option<Time>,
    /// The most time one metadata file may take to arrive.
    pub metadata_timeout: Duration,
    /// Give up the target when nothing moved for this long.
    pub stall_timeout: Duration,
}

/// Refreshes `request.repository`'s metadata over the mesh, looks up the target, fetches it from
/// the depot and neighbours, checks it against the signed length, BLAKE3, sha256 and sha512, and
/// writes it durably to `request.out`. Returns a JSON summary. Call from outside `runtime`.
pub fn get_target(
    runtime: &tokio::runtime::Runtime,
    request: &GetRequest,
) -> anyhow::Result<serde_json::Value> {
    let local = trusted_store(
        &request.data_dir,
        &request.repository,
        request.root.as_deref(),
    )?;
    let node::runtime::OpenedNode {
        store,
        net,
        mut events,
        incoming,
    } = node::runtime::open_node(
        runtime,
        &request.data_dir,
        request.listen.clone(),
        request.mdns,
        request.membership.clone(),
    )
    .map_err(anyhow::Error::msg)?;
    let counters = Arc::new(node::serve::ServeCounters::default());
    let server = {
        let _context = runtime.enter();
        node::serve::spawn_server(store.clone(), incoming, counters)
    };
    let result = refresh_and_fetch(runtime, request, &net, &mut events, &store, local);
    server.abort();
    runtime.block_on(net.shutdown());
    result
}

fn refresh_and_fetch<S: Storage, I: Index>(
    runtime: &tokio::runtime::Runtime,
    request: &GetRequest,
    net: &NetHandle,
    events: &mut node::net::NetEvents,
    store: &Arc<BlobStore<S, I>>,
    local: DirStore,
) -> anyhow::Result<serde_json::Value> {
    let now = match request.now {
        Some(now) => now,
        None => node::clock::now(),
    };
    let remote = MeshRemote::new(
        net.clone(),
        store.clone(),
        request.peers.clone(),
        &request.repository,
        request.metadata_timeout,
    )
    .asking(node::named::Ask::ListedThenConnected);
    let mut updater = MeshUpdater::new(remote, local, now).context("loading the trusted root")?;
    if let Err(error) = runtime.block_on(updater.refresh()) {
        return Err(explain_refresh_failure(error, updater.local(), now));
    }
    let trusted = updater.trusted();
    let versions = serde_json::json!({
        "root": trusted.root().signed.version(),
        "timestamp": trusted.timestamp().map(|t| t.signed.version()),
        "snapshot": trusted.snapshot().map(|s| s.signed.version()),
        "targets": trusted.targets("targets").map(|t| t.signed.version()),
    });
    let info = runtime
        .block_on(updater.target_info(&request.target))
        .with_context(|| format!("looking up target {:?}", request.target))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no role trusted for {:?} signs a target of that name in repository {:?}",
                request.target,
                request.repository
            )
        })?;
    let blob = info.blake3().ok_or_else(|| {
        anyhow::anyhow!(
            "target {:?} has no BLAKE3 (custom.blake3) in its signed metadata: it cannot be fetched over the mesh",
            request.target
        )
    })?;

    let mut options = node::fetch::FetchOptions::new(blob);
    options.size = Some(info.length);
    options.peers = request.peers.clone();
    options.stall_timeout = request.stall_timeout;
    let report = runtime
        .block_on(node::fetch::fetch(
            net,
            events,
            store.clone(),
            options,
            |_| {},
        ))
        .with_context(|| format!("fetching target {:?} ({blob})", request.target))?;

    // The blob's id is the signed BLAKE3, so its bytes are the signed target; the signed length
    // and sha256/sha512 are checked too, on the way to the file, as defence in depth.
    let out = &request.out;
    let part = out.with_extension("part");
    let file =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut check = tuf::metadata::HashCheck::new(&request.target, &info.hashes)?;
    let mut writer = CheckingWriter {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        check: &mut check,
    };
    store
        .export(&blob, &mut writer)
        .with_context(|| format!("writing {}", part.display()))?;
    let file = writer
        .inner
        .into_inner()
        .map_err(std::io::IntoInnerError::into_error)
        .with_context(|| format!("writing {}", part.display()))?;
    if let Err(error) = check.finish(Some(info.length)) {
        drop(std::fs::remove_file(&part));
        return Err(error).context("the fetched target does not match its signed hashes");
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    std::fs::rename(&part, out)
        .with_context(|| format!("renaming {} to {}", part.display(), out.display()))?;

    Ok(serde_json::json!({
        "target": request.target,
        "length": info.length,
        "blob": blob.to_string(),
        "metadata_versions": versions,
        "bytes": report.bytes_fetched,
        "seconds": (report.seconds * 1000.0).round() / 1000.0,
        "bytes_per_peer": report
            .bytes_per_peer
            .iter()
            .map(|(peer, bytes)| (peer.to_string(), serde_json::json!(bytes)))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// A writer that feeds what it writes to a [`tuf::metadata::HashCheck`].
struct CheckingWriter<'a, 'b, W> {
    inner: W,
    check: &'a mut tuf::metadata::HashCheck<'b>,
}

impl<W: std::io::Write> std::io::Write for CheckingWriter<'_, '_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.check.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
