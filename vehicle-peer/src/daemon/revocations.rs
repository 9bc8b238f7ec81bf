//! The fleet's revocations, refreshed at every check by a vehicle that reaches the director
//! itself: a newer signed list goes to the node (which cuts revoked neighbours off at once) and
//! is kept where `[mesh] revocations` says, for the next start. A failure is logged, never a
//! failed check: the list in force stays.

use std::sync::atomic::Ordering::Relaxed;

use node::director_client::{ClientTls, DirectorClient};

use super::Daemon;

impl Daemon {
    pub(super) fn refresh_revocations(&mut self) {
        let (Some(url), Some(counters)) =
            (&self.config.director_url, self.net.membership_counters())
        else {
            return;
        };
        let fetched = ClientTls::roots(self.config.director_ca.as_deref())
            .map_err(|error| error.to_string())
            .and_then(|tls| {
                DirectorClient::new(url, self.config.metadata_timeout, &tls)
                    .map_err(|error| error.to_string())
            })
            .and_then(|client| client.revocations().map_err(|error| error.to_string()));
        let signed = match fetched {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%error, "fetching the fleet's revocations");
                return;
            }
        };
        let held = counters.revocations_version.load(Relaxed);
        match self
            .runtime
            .block_on(self.net.update_revocations(signed.clone()))
        {
            Ok(revoked) => {
                if !revoked.is_empty() {
                    tracing::warn!(?revoked, "revoked neighbours cut off");
                }
                let keep = self
                    .config
                    .mesh
                    .as_ref()
                    .and_then(|mesh| mesh.revocations.as_ref());
                if signed.revocations.version > held
                    && let Some(path) = keep
                    && let Err(error) = node::mesh_config::keep_revocations(path, &signed)
                {
                    tracing::warn!(%error, path = %path.display(), "keeping the fleet's revocations");
                }
            }
            Err(error) => tracing::warn!(%error, "the director's revocation list was refused"),
        }
    }
}
