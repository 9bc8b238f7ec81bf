//! The fleet's revocations, kept fresh: the depot asks the director for the signed list as
//! often as it refreshes its metadata and hands it to its node, which cuts the revoked members
//! off at once and keeps a newer list on disk for the next start
//! ([`node::mesh_config::take_revocations`]). The list in force is what the depot hands on to
//! the vehicles of its yard that ask over the mesh ([`node::serve::Roles::revocations`]), so
//! those that never reach the director learn of a revocation within one check.

use std::path::PathBuf;
use std::time::Duration;

use node::director_client::DirectorClient;
use node::net::NetHandle;

/// Until the depot stops: fetch, take, then wait `every`.
pub(crate) async fn refresh_loop(
    director: DirectorClient,
    net: NetHandle,
    keep: Option<PathBuf>,
    every: Duration,
) {
    loop {
        refresh_once(&director, &net, keep.as_deref()).await;
        tokio::time::sleep(every).await;
    }
}

async fn refresh_once(director: &DirectorClient, net: &NetHandle, keep: Option<&std::path::Path>) {
    let client = director.clone();
    let held = net.membership_counters().map_or(0, |counters| {
        counters
            .revocations_version
            .load(std::sync::atomic::Ordering::Relaxed)
    });
    let newer = move || client.revocations_newer_than(held);
    let fetched = match tokio::task::spawn_blocking(newer).await {
        // The list held is the one in force (the director answered 304).
        Ok(Ok(None)) => return,
        Ok(Ok(Some(signed))) => signed,
        Ok(Err(error)) => {
            tracing::warn!(%error, "fetching the fleet's revocations");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "fetching the fleet's revocations");
            return;
        }
    };
    match node::mesh_config::take_revocations(net, fetched, keep).await {
        Ok(revoked) if !revoked.is_empty() => {
            tracing::warn!(?revoked, "revoked members cut off");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "the fleet's revocations"),
    }
}
