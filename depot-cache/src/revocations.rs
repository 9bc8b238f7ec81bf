//! The fleet's revocations, kept fresh: the depot asks the director for the signed list as
//! often as it refreshes its metadata, hands a newer one to its node (which cuts the revoked
//! members off at once, [`NetHandle::update_revocations`]) and keeps it on disk, so a restart
//! starts with it even when the director is out of reach.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use node::director_client::DirectorClient;
use node::net::NetHandle;

/// Until the depot stops: fetch, apply, keep, then wait `every`.
pub(crate) async fn refresh_loop(
    director: DirectorClient,
    net: NetHandle,
    keep: Option<PathBuf>,
    every: Duration,
) {
    loop {
        refresh_once(&director, &net, keep.as_ref()).await;
        tokio::time::sleep(every).await;
    }
}

async fn refresh_once(director: &DirectorClient, net: &NetHandle, keep: Option<&PathBuf>) {
    let Some(counters) = net.membership_counters() else {
        return;
    };
    let client = director.clone();
    let fetched = match tokio::task::spawn_blocking(move || client.revocations()).await {
        Ok(Ok(signed)) => signed,
        Ok(Err(error)) => {
            tracing::warn!(%error, "fetching the fleet's revocations");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "fetching the fleet's revocations");
            return;
        }
    };
    let held = counters.revocations_version.load(Relaxed);
    match net.update_revocations(fetched.clone()).await {
        Ok(revoked) => {
            if !revoked.is_empty() {
                tracing::warn!(?revoked, "revoked members cut off");
            }
            if fetched.revocations.version > held {
                tracing::info!(
                    version = fetched.revocations.version,
                    "fleet revocations updated"
                );
                if let Some(path) = keep
                    && let Err(error) = node::mesh_config::keep_revocations(path, &fetched)
                {
                    tracing::warn!(%error, path = %path.display(), "keeping the fleet's revocations");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "the director's revocation list was refused"),
    }
}
