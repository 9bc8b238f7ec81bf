//! Fixtures shared by node's integration tests.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset

use libp2p::Multiaddr;
use node::net::{self, NetConfig, NetHandle};
use node::storage::sim::{CrashIndex, CrashStorage};
use node::store::BlobStore;

/// A store on a fresh simulated disk.
pub(crate) type Store = BlobStore<CrashStorage, CrashIndex>;

/// A store on a fresh simulated disk.
pub(crate) fn new_store() -> Store {
    let storage = CrashStorage::new();
    BlobStore::open(storage.clone(), storage.index()).unwrap().0
}

/// A node on 127.0.0.1 with mDNS off: tests name their peers.
pub(crate) fn loopback_config() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        mdns: false,
        mdns_auto_dial: false,
        ..NetConfig::default()
    }
}

/// A started loopback node: its handle, events, inbound streams and full address.
pub(crate) type Node = (NetHandle, net::NetEvents, net::IncomingStreams, Multiaddr);

/// Starts a node on [`loopback_config`].
pub(crate) async fn start_node() -> Node {
    let (handle, events, incoming) = net::start(loopback_config()).await.unwrap();
    let addr = handle.listen_addrs().await.into_iter().next().unwrap();
    (handle, events, incoming, addr)
}
