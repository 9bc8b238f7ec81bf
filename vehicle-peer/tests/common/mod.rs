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
#[allow(dead_code)] // Not every test binary that shares this module starts an unpaced depot.
pub(crate) fn start_depot(
    runtime: &tokio::runtime::Runtime,
    store: DiskStore,
    counters: Arc<ServeCounters>,
) -> (NetHandle, Multiaddr) {
    start_paced_depot(runtime, store, counters, None)
}

/// [`start_depot`], sending at most `upload_limit` bytes a second when given: for tests that
/// must catch a transfer in the middle however fast the machine moves bytes.
#[allow(dead_code)] // Not every test binary that shares this module paces its depot.
pub(crate) fn start_paced_depot(
    runtime: &tokio::runtime::Runtime,
    store: DiskStore,
    counters: Arc<ServeCounters>,
    upload_limit: Option<Arc<node::ratelimit::RateLimit>>,
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
                upload_limit,
                ..serve::Roles::default()
            },
        );
        let addr = handle.listen_addrs().await.into_iter().next().unwrap();
        (handle, addr)
    })
}
