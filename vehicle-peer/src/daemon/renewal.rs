//! The vehicle's own membership certificate, renewed before it expires. A certificate from the
//! enrolment holds a year; from [`RENEW_BEFORE`] ahead of its expiry, a vehicle that reaches the
//! director (`director_url`) asks at each check for a fresh one for its enrolled peer id,
//! proving itself by its primary key's signature (`POST /v1/vehicles/{vin}/membership`). The
//! node takes it only if it is this node's, signed by a fleet key and later than the one held
//! ([`node::net::NetHandle::renew_certificate`]); it is kept where `[mesh] certificate` says
//! (replaced durably) for the next start. Peers see it from their next connection. A failure
//! is logged and shown in the status, never a failed check: the certificate held stays.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context as _;
use node::director_client::{ClientTls, DirectorClient};
use serde_json::json;

use super::Daemon;

/// How long before its certificate expires a vehicle starts asking for a new one: a month, so a
/// vehicle that reaches the director only now and then still renews in time.
pub(super) const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Whether a certificate expiring at `expires` is to be renewed at `now` (unix seconds): within
/// [`RENEW_BEFORE`] of its expiry, or after.
fn renewal_due(expires: u64, now: u64) -> bool {
    now.saturating_add(RENEW_BEFORE.as_secs()) >= expires
}

impl Daemon {
    pub(super) fn renew_membership(&mut self, now: u64) {
        let Some(counters) = self.net.membership_counters() else {
            return;
        };
        let expires = counters.certificate_expires.load(Relaxed);
        if self.config.director_url.is_none() || !renewal_due(expires, now) {
            return;
        }
        self.status["membership"] = match self.renewed_certificate(now) {
            Ok(expires) => {
                tracing::info!(expires, "membership certificate renewed");
                json!({"expires": expires, "renewed_at": now})
            }
            Err(error) => {
                tracing::warn!("renewing the membership certificate: {error:#}");
                json!({"expires": expires, "error": format!("{error:#}")})
            }
        };
    }

    /// Asks the director for a fresh certificate, hands it to the node and keeps it; returns its
    /// expiry.
    fn renewed_certificate(&self, now: u64) -> anyhow::Result<u64> {
        let url = self.config.director_url.as_deref().unwrap_or_default();
        let path = self
            .config
            .mesh
            .as_ref()
            .and_then(|mesh| mesh.certificate.clone())
            .context("[mesh] names no certificate file")?;
        let peer = self.net.peer_id().to_string();
        let request = proto::director_api::RenewalStatement {
            vin: &self.config.vin,
            peer: &peer,
            at: now,
        }
        .sign(&self.primary_key)?;
        let certificate = ClientTls::roots(self.config.director_ca.as_deref())
            .and_then(|tls| DirectorClient::new(url, self.config.metadata_timeout, &tls))
            .and_then(|client| client.renew_membership(&self.config.vin, &request))?;
        self.runtime
            .block_on(self.net.renew_certificate(certificate.clone()))?;
        node::storage::replace_file(&path, &certificate.encode())
            .with_context(|| format!("keeping the renewed certificate in {}", path.display()))?;
        Ok(certificate.membership.expires)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_a_month_before_expiry() {
        let month = RENEW_BEFORE.as_secs();
        assert!(!renewal_due(1_000_000 + month + 1, 1_000_000));
        assert!(renewal_due(1_000_000 + month, 1_000_000));
        assert!(renewal_due(1_000_000, 2_000_000));
        assert!(renewal_due(0, u64::MAX));
    }
}
