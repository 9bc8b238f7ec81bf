//! What the `vehicle-peer` binary tests share: a depot node in the test's own process.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use libp2p::Multiaddr;
use node::net::{self, NetConfig, NetHandle};
use node::runtime::{self, ServeCounters};
use node::store::DiskStore;

/// Serves `store` on a fresh loopback QUIC node without mDNS, counting into `counters`; returns
/// the node (shut it down at the end) and its full address for `--peer`.
pub(crate) fn start_depot(
    runtime: &tokio::runtime::Runtime,
    store: DiskStore,
    counters: Arc<ServeCounters>,
) -> (NetHandle, Multiaddr) {
    runtime.block_on(async {
        let (handle, _events, incoming) = net::start(NetConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            mdns: false,
            mdns_auto_dial: false,
            ..NetConfig::default()
        })
        .await
        .unwrap();
        runtime::spawn_server(Arc::new(store), incoming, counters);
        let addr = handle.listen_addrs().await.into_iter().next().unwrap();
        (handle, addr)
    })
}
