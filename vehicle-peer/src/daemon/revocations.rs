//! The fleet's revocations, refreshed at every check by a vehicle that reaches the director
//! itself: the signed list goes to the node, which cuts revoked neighbours off at once and keeps
//! a newer list where `[mesh] revocations` says ([`node::mesh_config::take_revocations`]). A
//! failure is logged, never a failed check: the list in force stays.

use node::director_client::{ClientTls, DirectorClient};

use super::Daemon;

impl Daemon {
    pub(super) fn refresh_revocations(&mut self) {
        let Some(url) = &self.config.director_url else {
            return;
        };
        if self.net.membership_counters().is_none() {
            return;
        }
        let fetched = ClientTls::roots(self.config.director_ca.as_deref())
            .and_then(|tls| DirectorClient::new(url, self.config.metadata_timeout, &tls))
            .and_then(|client| client.revocations());
        let signed = match fetched {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%error, "fetching the fleet's revocations");
                return;
            }
        };
        let keep = self
            .config
            .mesh
            .as_ref()
            .and_then(|mesh| mesh.revocations.as_deref());
        let taken = self
            .runtime
            .block_on(node::mesh_config::take_revocations(&self.net, signed, keep));
        match taken {
            Ok(revoked) if !revoked.is_empty() => {
                tracing::warn!(?revoked, "revoked neighbours cut off");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "the fleet's revocations"),
        }
    }
}
