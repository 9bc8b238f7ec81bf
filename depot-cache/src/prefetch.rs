//! `depot-cache prefetch`: bring a repository's current release into the cache over the backhaul
//! before the vehicles ask. The depot refreshes its own trusted copy of the repository's TUF
//! metadata from its upstream (the origin's cache or a regional depot) over the mesh, checked
//! as a vehicle checks it; then it fetches every signed target it does not hold yet, by its
//! signed BLAKE3, resuming what an earlier run left partial, so that no byte of a release crosses
//! the backhaul twice. The metadata it accepted is served under the same names, so the yard's
//! vehicles refresh from the depot. With a disk cap, room is made first by forgetting the least
//! recently used blobs that the current metadata does not list; the current release's blobs are
//! pinned.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use node::cache::footprint;
use node::tuf_mesh::{MeshRemote, MeshUpdater, trusted_store};
use proto::tuf::{Role, Time};

/// One prefetch.
#[derive(Debug, Clone)]
pub struct PrefetchRequest {
    /// The cache's data directory (store, identity, trusted metadata under `tuf/`).
    pub data_dir: PathBuf,
    /// Where to fetch from, with `/p2p/<peer id>`.
    pub upstream: Vec<Multiaddr>,
    /// The repository's name on the mesh (`image`).
    pub repository: String,
    /// The repository's first root, used only when the cache trusts none yet.
    pub root: Option<PathBuf>,
    /// Disk cap in bytes (store data and outboards).
    pub cap: Option<u64>,
    /// The time metadata must be valid at (the system clock when `None`).
    pub now: Option<Time>,
    /// The most time one metadata file may take.
    pub metadata_timeout: Duration,
    /// Give up a target when nothing moved for this long.
    pub stall_timeout: Duration,
    /// Backhaul bytes per second at most for targets; `None`: unlimited.
    pub rate_limit: Option<u64>,
}

/// Refreshes, relays and fetches, as the module says, with a node of its own in `membership`'s
/// fleet (`None`: an open mesh); returns a JSON summary. Call from outside `runtime`.
pub fn prefetch(
    runtime: &tokio::runtime::Runtime,
    request: &PrefetchRequest,
    membership: Option<node::membership::MeshMembership>,
) -> anyhow::Result<serde_json::Value> {
    if request.upstream.is_empty() {
        bail!("no upstream to prefetch from: give --upstream");
    }
    let node::runtime::OpenedNode {
        store,
        net,
        mut events,
        ..
    } = node::runtime::open_node(runtime, &request.data_dir, Vec::new(), false, membership)
        .map_err(anyhow::Error::msg)?;
    let result = runtime.block_on(prefetch_with(request, &net, &mut events, &store));
    store.flush_usage().ok();
    runtime.block_on(net.shutdown());
    result
}

/// One prefetch with a node that is already running (the daemon's, which keeps serving the
/// yard meanwhile): `events` must be a feed of its network events of its own.
pub async fn prefetch_with<S: node::storage::Storage, I: node::storage::Index>(
    request: &PrefetchRequest,
    net: &node::net::NetHandle,
    events: &mut node::net::NetEvents,
    store: &Arc<node::store::BlobStore<S, I>>,
) -> anyhow::Result<serde_json::Value> {
    if request.upstream.is_empty() {
        bail!("no upstream to prefetch from");
    }
    let local = trusted_store(
        &request.data_dir,
        &request.repository,
        request.root.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let rate_limit = request.rate_limit.map(node::ratelimit::RateLimit::new);
    let now = match request.now {
        Some(now) => now,
        None => node::clock::now(),
    };
    let remote = MeshRemote::new(
        net.clone(),
        store.clone(),
        request.upstream.clone(),
        &request.repository,
        request.metadata_timeout,
    )
    // The upstream only: the depot's other peers are its vehicles.
    .asking(node::named::Ask::ListedOnly);
    let mut updater = MeshUpdater::new(remote, local, now).context("loading the trusted root")?;
    updater
        .refresh()
        .await
        .map_err(|error| {
            match node::tuf_mesh::director_repository_missing(&request.repository, &error) {
                // A registered vehicle has one (empty targets until something is assigned).
                Some(vin) => anyhow::anyhow!(
                    "the upstream serves no {}/metadata/timestamp.json: the director has no \
                     repository for vehicle {vin} (it is not registered, or it was registered \
                     before the director signed an empty repository at registration: \
                     restarting `origin serve` signs one), or the upstream does not relay it",
                    request.repository
                ),
                None => error.into(),
            }
        })
        .with_context(|| format!("refreshing {:?} from upstream", request.repository))?;
    // Every role's targets (delegations included), each checked against the delegations' paths.
    let mut targets = Vec::new();
    for name in updater.target_names().await? {
        if let Some(info) = updater.target_info(&name).await? {
            let Some(blob) = info.blake3() else {
                tracing::warn!(target = %name, "no BLAKE3 in its signed metadata: not prefetched");
                continue;
            };
            // The deltas released with it, for vehicles running an earlier image, and the image
            // compressed, for vehicles no delta applies to: signed with the target, fetched
            // and served like it.
            match proto::custom::ImageCustom::of(&name, &info) {
                Ok(custom) => {
                    for (from, delta) in custom.deltas {
                        targets.push((
                            format!("{name} (delta from {from})"),
                            delta.blake3,
                            delta.length,
                        ));
                    }
                    if let Some(compressed) = custom.compressed {
                        targets.push((
                            format!("{name} (compressed)"),
                            compressed.blake3,
                            compressed.length,
                        ));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "its signed custom metadata does not read: its deltas are not prefetched");
                }
            }
            targets.push((name, blob, info.length));
        }
    }
    // The metadata the updater accepted, served under the names it came by.
    let mut relayed = 0;
    for (name, bytes) in &updater.remote().fetched {
        let id = store
            .import(&bytes[..])
            .with_context(|| format!("storing {name}"))?;
        store
            .set_name(name, &id)
            .with_context(|| format!("serving {name}"))?;
        relayed += 1;
    }
    let pinned: BTreeSet<_> = targets.iter().map(|(_, blob, _)| *blob).collect();
    let mut evicted = Vec::new();
    let mut fetched = Vec::new();
    let mut upstream_bytes = 0u64;
    for (name, blob, length) in &targets {
        if store.info(blob).is_some_and(|info| info.complete) {
            continue;
        }
        if let Some(cap) = request.cap {
            let held = store.info(blob).map_or(0, |_| footprint(*length));
            let more = footprint(*length).saturating_sub(held);
            evicted.extend(
                store
                    .make_room(more, cap, &pinned)
                    .with_context(|| format!("making room for {name}"))?,
            );
        }
        let mut options = node::fetch::FetchOptions::new(*blob);
        options.size = Some(*length);
        options.peers = request.upstream.clone();
        options.stall_timeout = request.stall_timeout;
        options.rate_limit = rate_limit.clone();
        let report = node::fetch::fetch(net, events, store.clone(), options, |_| {})
            .await
            .with_context(|| format!("fetching target {name:?} ({blob})"))?;
        upstream_bytes += report.bytes_fetched;
        fetched.push(serde_json::json!({"target": name, "blob": blob.to_string(), "length": length, "bytes": report.bytes_fetched}));
    }
    let trusted = updater.trusted();
    Ok(serde_json::json!({
        "repository": request.repository,
        "metadata_versions": {
            "root": trusted.root().signed.version(),
            "timestamp": trusted.timestamp().map(|t| t.signed.version()),
            "snapshot": trusted.snapshot().map(|s| s.signed.version()),
            "targets": trusted.targets("targets").map(|t| t.signed.version()),
        },
        "metadata_relayed": relayed,
        "targets": targets.len(),
        "fetched": fetched,
        "upstream_bytes": upstream_bytes,
        "evicted": evicted.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
}
