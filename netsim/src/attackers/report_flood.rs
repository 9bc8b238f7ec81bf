//! The report flooder: a member that hands the depot reports to relay to the director, as fast
//! as the depot answers ([`IN_FLIGHT`] at a time), each as large as the wire allows
//! ([`proto::wire::MAX_REPORT_BYTES`]) and each claiming another vehicle, so that the relay's
//! per-vehicle quota never stops it: only the per-peer quota and the queue's bounds do.
//!
//! Its reports are well-formed enough to be queued (they name a vehicle) and signed by nobody:
//! the director refuses each the depot passes on, which frees its place in the queue for the
//! next. What it costs the honest vehicles is the depot's work (a durable write per report
//! taken, a relay to the director) and their reports' wait in the queue behind its own.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use node::membership::MeshMembership;
use node::net::{self, NetHandle, QuicTuning};
use node::protocol::ExchangeError;
use proto::wire::{ErrorCode, MAX_REPORT_BYTES};

use super::{Attacker, count, identity, node_config};
use crate::actor::Running;

/// Reports handed over at once.
pub const IN_FLIGHT: usize = 8;

/// What the report flooder did.
#[derive(Debug, Default)]
pub struct ReportFloodCounts {
    /// Reports it handed over.
    pub sent: AtomicU64,
    /// Of those, the ones the depot took (stored to relay).
    pub taken: AtomicU64,
    /// Of those, the ones the depot refused (its relay queue's quotas: `Busy`).
    pub refused: AtomicU64,
    /// Of those, the ones whose exchange failed (a stream reset or cut, no answer).
    pub failed: AtomicU64,
}

/// The running report flooder; stops when dropped.
pub type ReportFlood = Attacker<ReportFloodCounts>;

/// Starts the report flooder in `dir` (its identity), a member by `membership`, handing its
/// reports to the depot at `depot`. Returns once it is connected.
pub fn start(
    dir: &Path,
    depot: &Multiaddr,
    membership: MeshMembership,
) -> anyhow::Result<ReportFlood> {
    let (keypair, peer) = identity(dir)?;
    let counts = Arc::new(ReportFloodCounts::default());
    let config = node_config(&keypair, &membership, QuicTuning::default());
    let (depot, counting) = (depot.clone(), counts.clone());
    let running = Running::start("report flooder", move |started| async move {
        let (handle, mut events, _incoming) = net::start(config).await?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let depot_peer = handle.dial(depot.clone()).await?;
        started.now();
        let mut next = 0u64;
        let mut handing = tokio::task::JoinSet::new();
        loop {
            while handing.len() < IN_FLIGHT {
                let manifest = forged_manifest(next);
                next += 1;
                count(&counting.sent);
                handing.spawn(hand(handle.clone(), depot_peer, manifest));
            }
            let Some(handed) = handing.join_next().await else {
                continue;
            };
            match handed {
                Ok(Ok(_)) => count(&counting.taken),
                Ok(Err(ExchangeError::Refused { .. })) => count(&counting.refused),
                Ok(Err(_)) | Err(_) => count(&counting.failed),
            }
            if !handle.is_connected(depot_peer).await.unwrap_or(false) {
                // Connected again, as a vehicle would; a depot that is gone ends the flood.
                tokio::time::sleep(Duration::from_millis(100)).await;
                handle.dial(depot.clone()).await?;
            }
        }
    })?;
    Ok(Attacker {
        peer,
        counts,
        running: Some(running),
    })
}

/// Hands one report over on a stream of its own.
async fn hand(
    handle: NetHandle,
    depot: PeerId,
    manifest: Vec<u8>,
) -> Result<proto::BlobId, ExchangeError> {
    let stream = handle
        .open_stream(depot)
        .await
        .map_err(|error| ExchangeError::Io(std::io::Error::other(error)))?;
    let handed = node::protocol::hand_report(stream, &manifest).await;
    if let Err(ExchangeError::Refused { code, detail }) = &handed
        && *code != ErrorCode::Busy
    {
        tracing::debug!(%code, detail, "report flooder: refused");
    }
    handed
}

/// Report `n`: a manifest naming vehicle `FLOOD-<n>`, signed by nobody, padded to
/// [`MAX_REPORT_BYTES`].
pub fn forged_manifest(n: u64) -> Vec<u8> {
    let head = format!(r#"{{"signatures":[],"signed":{{"vin":"FLOOD-{n:08}","pad":""#);
    let tail = r#""}}"#;
    let pad = MAX_REPORT_BYTES.saturating_sub(head.len() + tail.len());
    let mut manifest = Vec::with_capacity(MAX_REPORT_BYTES);
    manifest.extend_from_slice(head.as_bytes());
    manifest.resize(head.len() + pad, b'x');
    manifest.extend_from_slice(tail.as_bytes());
    manifest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_forged_report_is_as_large_as_allowed_and_names_its_own_vehicle() {
        let manifest = forged_manifest(42);
        assert_eq!(manifest.len(), MAX_REPORT_BYTES);
        let vin = node::relay::vehicle_of(&manifest).unwrap();
        assert_eq!(vin.as_str(), "FLOOD-00000042");
        assert_ne!(forged_manifest(43), manifest);
        // The frame around it is within the wire's limit.
        let frame = proto::wire::Message::Report(proto::wire::Report { manifest })
            .encode()
            .unwrap();
        assert!(frame.len() <= proto::wire::MAX_MESSAGE_BYTES);
    }
}
