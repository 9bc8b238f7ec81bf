//! What the `vehicle-peer` binary tests share: a depot node in the test's own process.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use libp2p::Multiaddr;
use node::net::{self, NetConfig, NetHandle};
use node::seeding::SeedConfig;
use node::serve::{self, ServeCounters};
use node::store::DiskStore;
use node::tracker::Tracker;

/// Serves `store` on a fresh loopback QUIC node without mDNS, counting into `counters`, as a
/// depot does (with a tracker, super-seeding, and the depot's agent string); returns the node
/// (shut it down at the end) and its full address for `--peer`.
pub(crate) fn start_depot(
    runtime: &tokio::runtime::Runtime,
    store: DiskStore,
    counters: Arc<ServeCounters>,
) -> (NetHandle, Multiaddr) {
    runtime.block_on(async {
        let (handle, events, incoming) = net::start(NetConfig {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            mdns: false,
            mdns_auto_dial: false,
            agent_version: format!("{}test", node::engine::DEPOT_AGENT_PREFIX),
            ..NetConfig::default()
        })
        .await
        .unwrap();
        let tracker = Tracker::start(handle.clone(), events, SeedConfig::default());
        serve::spawn_server_with(
            Arc::new(store),
            incoming,
            counters,
            serve::Roles {
                tracker: Some(tracker),
                ..serve::Roles::default()
            },
        );
        let addr = handle.listen_addrs().await.into_iter().next().unwrap();
        (handle, addr)
    })
}
