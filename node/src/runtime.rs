//! The tokio glue of a node: the runtime its commands run on, and a node opened from its data
//! directory (store, identity, network) for the one-shot commands. Serving is [`crate::serve`],
//! fetching [`crate::fetch`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::Multiaddr;

use crate::net::{IncomingStreams, NetError, NetEvents, NetHandle};
use crate::store::StoreError;

/// A node opened from its data directory, as the one-shot commands (`get`, `prefetch`) use it:
/// its blob store, and its network started with its own identity.
#[derive(Debug)]
pub struct OpenedNode {
    /// The store in `<data_dir>/store` and `<data_dir>/index`.
    pub store: Arc<crate::store::DiskStore>,
    /// The network.
    pub net: NetHandle,
    /// Its events.
    pub events: NetEvents,
    /// Streams peers open to it (hand them to [`crate::serve::spawn_server`] to serve).
    pub incoming: IncomingStreams,
}

/// Why a node could not be opened ([`open_node`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenNodeError {
    /// The blob store in the data directory.
    #[error("opening the store in {}: {source}", dir.display())]
    Store {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The node's identity in the data directory.
    #[error("loading the identity in {}: {source}", dir.display())]
    Identity {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The network.
    #[error("starting the network: {0}")]
    Network(#[source] NetError),
}

/// Opens the store and identity in `data_dir` and starts the network listening on `listen`
/// (with mDNS when `mdns`), in a fleet's mesh when `membership` is given
/// ([`crate::membership`]), on an open mesh (every peer served) when it is `None`. Errors name
/// the directory and the step. Call from outside `runtime`.
pub fn open_node(
    runtime: &tokio::runtime::Runtime,
    data_dir: &Path,
    listen: Vec<Multiaddr>,
    mdns: bool,
    membership: Option<crate::membership::MeshMembership>,
) -> Result<OpenedNode, OpenNodeError> {
    let dir = || data_dir.to_path_buf();
    let (store, _) = crate::store::open_data_dir(data_dir)
        .map_err(|source| OpenNodeError::Store { dir: dir(), source })?;
    let keypair = crate::identity::load_or_create(data_dir)
        .map_err(|source| OpenNodeError::Identity { dir: dir(), source })?;
    let (net, events, incoming) = runtime
        .block_on(crate::net::start(crate::net::NetConfig {
            keypair: Some(keypair),
            listen,
            mdns,
            membership,
            ..crate::net::NetConfig::default()
        }))
        .map_err(OpenNodeError::Network)?;
    Ok(OpenedNode {
        store: Arc::new(store),
        net,
        events,
        incoming,
    })
}

/// Builds the tokio runtime the node's commands run on: `threads` worker threads, one per CPU
/// core when `None`. One thread gets a current-thread runtime, with no hand-offs between
/// workers at all: on loopback and in a 30-vehicle yard it moved more bytes per CPU-second
/// than two workers (docs/measurements.md).
pub fn build_tokio(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads).max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Runtime::new(),
    }
}
