//! The tokio glue of a node: the runtime its commands run on, and a node opened from its data
//! directory (store, identity, network) for the one-shot commands. Serving is [`crate::serve`],
//! fetching [`crate::fetch`].

use std::sync::Arc;

use libp2p::Multiaddr;

use crate::net::{IncomingStreams, NetEvents, NetHandle};

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

/// Opens the store and identity in `data_dir` and starts the network listening on `listen`
/// (with mDNS when `mdns`). Errors name the directory and the step. Call from outside
/// `runtime`.
pub fn open_node(
    runtime: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    listen: Vec<Multiaddr>,
    mdns: bool,
) -> Result<OpenedNode, String> {
    let (store, _) = crate::store::open_data_dir(data_dir)
        .map_err(|e| format!("opening the store in {}: {e}", data_dir.display()))?;
    let keypair = crate::identity::load_or_create(data_dir)
        .map_err(|e| format!("loading the identity in {}: {e}", data_dir.display()))?;
    let (net, events, incoming) = runtime
        .block_on(crate::net::start(crate::net::NetConfig {
            keypair: Some(keypair),
            listen,
            mdns,
            ..crate::net::NetConfig::default()
        }))
        .map_err(|e| format!("starting the network: {e}"))?;
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
