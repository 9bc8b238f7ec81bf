//! The fleet's revocations, refreshed at every check. A vehicle with a route to the director
//! (`director_url`) fetches the signed list there; one without, or whose director cannot be
//! reached this time, asks its depot over the mesh (the configured peers, then the other
//! members it is connected to: [`node::revocations::refresh_from_mesh`]). The director comes
//! first because its list is the newest there is, and asking the depot after it would cost a
//! round trip for nothing; the depot comes next because it refreshes the list through its own
//! relay and hands on what its gate holds, so a vehicle that only ever sees its yard learns of
//! a revocation within one check.
//!
//! Either way the list goes to the node, which checks the fleet key's signature, refuses a
//! version older than the one in force, cuts revoked neighbours off at once and keeps a newer
//! list where `[mesh] revocations` says ([`node::mesh_config::take_revocations`]). The vehicle
//! hands the list in force on to neighbours that ask ([`node::serve::Roles::revocations`]).
//! A failure is logged and shown in the status, never a failed check: the list in force stays.

use std::path::Path;

use node::director_client::{ClientTls, DirectorClient};
use node::revocations::MeshRevocations;
use serde_json::json;

use super::Daemon;

impl Daemon {
    pub(super) fn refresh_revocations(&mut self) {
        if self.net.membership_counters().is_none() {
            return;
        }
        let keep = self
            .config
            .mesh
            .as_ref()
            .and_then(|mesh| mesh.revocations.clone());
        if self.config.director_url.is_some() {
            match self.revocations_from_director(keep.as_deref()) {
                Ok(version) => {
                    self.status["revocations"] = json!({"version": version, "from": "director"});
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        "the fleet's revocations from the director: {error:#}; asking the mesh"
                    );
                }
            }
        }
        let asked = self.runtime.block_on(node::revocations::refresh_from_mesh(
            &self.net,
            &self.config.peers,
            keep.as_deref(),
            self.config.metadata_timeout,
        ));
        self.status["revocations"] = match asked {
            Ok(MeshRevocations::Taken {
                version,
                from,
                revoked,
            }) => {
                if revoked.is_empty() {
                    tracing::info!(version, %from, "a newer revocation list from the mesh");
                } else {
                    tracing::warn!(version, %from, ?revoked, "revoked neighbours cut off");
                }
                json!({"version": version, "from": from.to_string()})
            }
            Ok(MeshRevocations::Current { from, .. }) => json!({
                "version": self.revocations_version(),
                "from": from.to_string(),
            }),
            Err(error) => {
                tracing::warn!(%error, "the fleet's revocations from the mesh");
                json!({"version": self.revocations_version(), "error": error.to_string()})
            }
        };
    }

    /// Fetches the list from the director and hands it to the node; returns the version in
    /// force after.
    fn revocations_from_director(&self, keep: Option<&Path>) -> anyhow::Result<u64> {
        let url = self.config.director_url.as_deref().unwrap_or_default();
        let held = self.revocations_version();
        let fetched = ClientTls::roots(self.config.director_ca.as_deref())
            .and_then(|tls| DirectorClient::new(url, self.config.metadata_timeout, &tls))
            .and_then(|client| client.revocations_newer_than(held))?;
        // The director says the list held is the one in force (304): nothing to take.
        let Some(signed) = fetched else {
            return Ok(held);
        };
        let revoked = self
            .runtime
            .block_on(node::mesh_config::take_revocations(&self.net, signed, keep))?;
        if !revoked.is_empty() {
            tracing::warn!(?revoked, "revoked neighbours cut off");
        }
        Ok(self.revocations_version())
    }

    /// The version of the revocation list in force (0: none).
    fn revocations_version(&self) -> u64 {
        self.net.membership_counters().map_or(0, |counters| {
            counters
                .revocations_version
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }
}
