//! What each connected peer says it holds, for one fetch: have subscriptions, and polls of
//! peers that cannot subscribe.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;
use proto::wire::{ErrorCode, Have};
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::tasks::TaskMessage;
use crate::net::NetHandle;
use crate::protocol::{self, ExchangeError};
use crate::store::LAYOUT;

/// What each connected peer says it holds, kept up to date by have subscriptions (or, for a
/// peer that cannot subscribe, by a query every refresh).
#[derive(Default)]
pub(super) struct Haves {
    /// Per peer: the size it claims and every group it said it holds.
    claims: BTreeMap<PeerId, (Option<u64>, ChunkGroupRanges)>,
    /// Open subscriptions.
    subscriptions: BTreeMap<PeerId, JoinHandle<()>>,
    /// Peers whose subscription failed: subscribed again at the next refresh.
    retry: BTreeSet<PeerId>,
    /// Peers that do not know subscriptions: asked at every refresh until complete.
    pollers: BTreeSet<PeerId>,
    /// Peers with a have query in flight.
    pub(super) polls: BTreeSet<PeerId>,
}

impl Haves {
    pub(super) fn subscribe(
        &mut self,
        net: &NetHandle,
        sender: &mpsc::UnboundedSender<TaskMessage>,
        peer: PeerId,
        blob: BlobId,
    ) {
        if self.subscriptions.contains_key(&peer) {
            return;
        }
        self.retry.remove(&peer);
        let net = net.clone();
        let sender = sender.clone();
        let task = tokio::spawn(async move {
            let result = match net.open_stream(peer).await {
                Ok(stream) => {
                    protocol::subscribe_have(stream, blob, |have, first| {
                        let _ = sender.send(TaskMessage::HaveUpdate { peer, have, first });
                        // Kept open until the fetch ends: the stream also keeps the connection.
                        std::ops::ControlFlow::Continue(())
                    })
                    .await
                }
                Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
            };
            let _ = sender.send(TaskMessage::HaveEnded { peer, result });
        });
        self.subscriptions.insert(peer, task);
    }

    /// Folds one message into `peer`'s claim; returns the claim to hand the engine, or `None`
    /// when it did not change.
    pub(super) fn update(
        &mut self,
        peer: PeerId,
        have: Have,
        first: bool,
    ) -> Option<(Option<u64>, ChunkGroupRanges)> {
        let claim = self.claims.entry(peer).or_default();
        let groups = if first {
            have.groups
        } else {
            claim.1.union(&have.groups)
        };
        let size = have.size.or(if first { None } else { claim.0 });
        if !first && groups == claim.1 && size == claim.0 {
            return None;
        }
        *claim = (size, groups);
        Some(claim.clone())
    }

    pub(super) fn ended(
        &mut self,
        peer: PeerId,
        result: Result<(), ExchangeError>,
        said: &mut BTreeMap<PeerId, String>,
    ) {
        if self.subscriptions.remove(&peer).is_none() {
            // Ended after it was forgotten (disconnect, ban): nothing to do.
            return;
        }
        match result {
            // The peer closed its side: it will say no more, but what it said stands.
            Ok(()) => {}
            Err(ExchangeError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }) => {
                tracing::debug!(%peer, "peer cannot subscribe; polling it");
                self.pollers.insert(peer);
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "have subscription ended");
                said.insert(peer, error.to_string());
                self.retry.insert(peer);
            }
        }
    }

    /// Subscribes again to the `usable` peers whose subscription failed, and asks those that
    /// cannot subscribe and have not claimed the whole blob yet.
    pub(super) fn refresh(
        &mut self,
        net: &NetHandle,
        sender: &mpsc::UnboundedSender<TaskMessage>,
        usable: impl Fn(&PeerId) -> bool,
        blob: BlobId,
    ) {
        for peer in std::mem::take(&mut self.retry) {
            if usable(&peer) {
                self.subscribe(net, sender, peer, blob);
            }
        }
        let complete = |claim: Option<&(Option<u64>, ChunkGroupRanges)>| {
            claim.is_some_and(|(size, groups)| {
                size.is_some_and(|size| *groups == LAYOUT.all_groups(size))
            })
        };
        let pollers: Vec<PeerId> = self.pollers.iter().copied().collect();
        for peer in pollers {
            if usable(&peer) && !complete(self.claims.get(&peer)) && self.polls.insert(peer) {
                let net = net.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let result = match net.open_stream(peer).await {
                        Ok(stream) => protocol::query_have(stream, blob).await,
                        Err(error) => Err(ExchangeError::Io(std::io::Error::other(error))),
                    };
                    let _ = sender.send(TaskMessage::Have { peer, result });
                });
            }
        }
    }

    /// Stops listening to `peer` (gone, or banned) and forgets what it said.
    pub(super) fn forget(&mut self, peer: &PeerId) {
        if let Some(task) = self.subscriptions.remove(peer) {
            task.abort();
        }
        self.claims.remove(peer);
        self.retry.remove(peer);
        self.pollers.remove(peer);
        self.polls.remove(peer);
    }

    pub(super) fn end_all(&mut self) {
        for (_, task) in std::mem::take(&mut self.subscriptions) {
            task.abort();
        }
    }
}

impl Drop for Haves {
    /// A fetch dropped midway (cancelled by its caller) leaves no subscription running.
    fn drop(&mut self) {
        self.end_all();
    }
}
