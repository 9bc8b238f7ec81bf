//! The one error type of the transport layer.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId, StreamProtocol};

/// What went wrong in the transport layer. Every variant names the address, peer or protocol it
/// concerns, because the caller (the transfer engine, a log line) must be able to act on it
/// without guessing which of many concurrent operations failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A multiaddr string could not be parsed.
    #[error("malformed multiaddr {input:?}: {reason}")]
    InvalidMultiaddr {
        /// The text that was given.
        input: String,
        /// Why the parser refused it.
        reason: String,
    },

    /// The address does not name a transport this node speaks (only `/quic-v1` over UDP).
    #[error("unsupported address {addr}: only /ip4|/ip6/…/udp/…/quic-v1 is spoken")]
    UnsupportedAddress {
        /// The address that was given.
        addr: Multiaddr,
    },

    /// A configuration value is out of range.
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig {
        /// The `NetConfig` field that was wrong.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The swarm could not be built (for instance the mDNS interface watcher failed to start).
    #[error("could not start the network: {reason}")]
    Start {
        /// What failed.
        reason: String,
    },

    /// Listening on an address failed (port in use, address not local, unsupported transport).
    #[error("could not listen on {addr}: {reason}")]
    Listen {
        /// The address that was asked for.
        addr: Multiaddr,
        /// Why it failed, with the underlying error chain.
        reason: String,
    },

    /// A fleet membership change was refused (a revocation list that does not verify or is
    /// older than the one in force), or asked of a node on an open mesh.
    #[error("membership: {reason}")]
    Membership {
        /// Why.
        reason: String,
    },

    /// A dial finished without a connection.
    #[error("dial of {addr} failed: {reason}")]
    Dial {
        /// The address that was dialled; it names the expected peer if it ends in `/p2p/…`.
        addr: Multiaddr,
        /// Why it failed, with the underlying error chain.
        reason: String,
    },

    /// A dial produced neither a connection nor an error in time.
    #[error("dial of {addr} did not complete within {after:?}")]
    DialTimeout {
        /// The address that was dialled.
        addr: Multiaddr,
        /// How long we waited.
        after: Duration,
    },

    /// A stream was asked for on a peer we hold no connection to (never connected, or gone).
    #[error("peer {peer} is not connected")]
    PeerNotConnected {
        /// The peer.
        peer: PeerId,
    },

    /// The peer does not accept streams of this protocol.
    #[error("peer {peer} does not support protocol {protocol}")]
    UnsupportedProtocol {
        /// The peer.
        peer: PeerId,
        /// The protocol that was asked for.
        protocol: StreamProtocol,
    },

    /// Opening a stream failed on the wire (connection reset, peer went away mid-negotiation).
    #[error("opening a {protocol} stream to {peer} failed: {source}")]
    StreamOpen {
        /// The peer.
        peer: PeerId,
        /// The protocol that was asked for.
        protocol: StreamProtocol,
        /// The I/O error of the negotiation.
        #[source]
        source: std::io::Error,
    },

    /// Opening a stream neither succeeded nor failed in time.
    #[error("opening a {protocol} stream to {peer} did not complete within {after:?}")]
    StreamOpenTimeout {
        /// The peer.
        peer: PeerId,
        /// The protocol that was asked for.
        protocol: StreamProtocol,
        /// How long we waited.
        after: Duration,
    },

    /// The node has been shut down (or its task ended); no further operation is possible.
    #[error("the network node has shut down")]
    Shutdown,
}

/// Formats an error with its whole `source()` chain, because libp2p's errors often say only
/// "transport error" at the top while the cause (handshake timeout, connection refused) is
/// several levels down.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let text = current.to_string();
        // Some layers print nothing of their own (libp2p's `TransportError::Other`) and some
        // repeat their source's message; neither helps the reader.
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = current.source();
    }
    parts.join(": ")
}
