//! Inbound streams out of libp2p-stream's one-slot channel, into a queue of our own.
//!
//! libp2p-stream hands each protocol's inbound streams over a channel of one slot and drops
//! (resets) a stream that finds it full. Connections deliver their streams from their own
//! tasks, while the node's driver reads the slot between swarm events: on the 30-vehicle
//! testbed ~530 membership introductions a run were reset unread, every vehicle's first one to
//! the depot among them, and each cost a disconnection (how many requests met the same fate
//! was not measured). [`forward`] empties the slot from a task of its own as soon as it fills,
//! into a bounded queue the driver reads.

use futures::StreamExt as _;
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::Stream;

/// Moves `incoming`'s streams into a queue of `capacity`, from a task of its own. A stream that
/// finds the queue full is dropped (reset) as libp2p-stream would drop it; the task ends when
/// the receiver is gone.
pub(super) fn forward(
    mut incoming: libp2p_stream::IncomingStreams,
    capacity: usize,
) -> mpsc::Receiver<(PeerId, Stream)> {
    let (sender, receiver) = mpsc::channel(capacity);
    tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            match sender.try_send(stream) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full((peer, _))) => {
                    tracing::debug!(%peer, "inbound stream refused: the queue is full");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    receiver
}
