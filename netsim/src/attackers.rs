//! Attackers for `netsim yard --slow-reader --report-flood`: real mesh nodes that are enrolled
//! fleet members (the worst case, a compromised vehicle: membership does not keep them out) and
//! spend what the depot gives any member as fast as they can, while the honest vehicles fetch.
//! What must happen: the depot's fair-share bounds (serving slots per peer, the write deadline,
//! the relay's quotas) keep every honest vehicle updating, at close to the speed it has without
//! them.
//!
//! - [`slow_reader`]: range requests for the release's blobs, as many as the depot lets one
//!   peer hold, on connections whose receive windows are tiny and never read.
//! - [`report_flood`]: reports for the depot to relay, each as large as the wire allows, each
//!   claiming another vehicle, as fast as the depot answers.
//!
//! Each runs on a thread of its own (a single-threaded runtime: an attacker on the yard's
//! machine takes at most one core from the honest nodes) until it is dropped, and counts what
//! it did in atomics the summary reads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::actor::Running;
use node::membership::MeshMembership;
use node::net::{NetConfig, QuicTuning};

pub mod report_flood;
pub mod slow_reader;

/// A running attacker and what it did; it stops when dropped.
#[derive(Debug)]
pub struct Attacker<C> {
    /// Its peer id.
    pub peer: PeerId,
    /// What it did so far.
    pub counts: Arc<C>,
    running: Option<Running>,
}

impl<C> Attacker<C> {
    /// Stops it; its counts stay readable.
    pub fn stop(&mut self) {
        self.running = None;
    }
}

/// An attacker's identity, kept in `dir`, and its peer id.
fn identity(dir: &Path) -> anyhow::Result<(Keypair, PeerId)> {
    std::fs::create_dir_all(dir)?;
    let keypair = node::identity::load_or_create(dir)?;
    let peer = keypair.public().to_peer_id();
    Ok((keypair, peer))
}

/// How an attacker's node starts: its identity and certificate, dial-only, no mDNS, with
/// `quic`'s windows.
fn node_config(keypair: &Keypair, membership: &MeshMembership, quic: QuicTuning) -> NetConfig {
    NetConfig {
        keypair: Some(keypair.clone()),
        membership: Some(membership.clone()),
        listen: Vec::new(),
        mdns: false,
        mdns_auto_dial: false,
        quic,
        ..NetConfig::default()
    }
}

/// Adds one to a counter.
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
