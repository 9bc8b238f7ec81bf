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

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use libp2p::identity::Keypair;
use node::membership::MeshMembership;
use node::net::{NetConfig, QuicTuning};

pub mod report_flood;
pub mod slow_reader;

/// How long an attacker may take to make its first connection to the depot.
const START_WAIT: Duration = Duration::from_secs(30);

/// An attacker's thread, stopped and joined when dropped.
#[derive(Debug)]
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Runs `work` on a thread of its own until the returned handle is dropped. `work` is given
    /// a [`Started`] to call once it is at work (connected to the depot); this returns then, or
    /// with `work`'s error if it ended before.
    fn start<F, Fut>(name: &str, work: F) -> anyhow::Result<Self>
    where
        F: FnOnce(Started) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = std::sync::mpsc::channel();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(anyhow::anyhow!("runtime: {error}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let errors = ready.clone();
                    tokio::select! {
                        ended = work(Started(ready)) => {
                            if let Err(error) = ended {
                                tracing::warn!(attacker = thread_name, "stopped: {error:#}");
                                let _ = errors.send(Err(error));
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })
            .with_context(|| format!("starting the {name}'s thread"))?;
        let running = Self {
            stop: Some(stop),
            thread: Some(thread),
        };
        match started.recv_timeout(START_WAIT) {
            Ok(Ok(())) => Ok(running),
            Ok(Err(error)) => Err(error.context(format!("starting the {name}"))),
            Err(_) => anyhow::bail!("the {name} did not reach the depot in {START_WAIT:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Handed to an attacker's work: says, once, that it is at work.
struct Started(std::sync::mpsc::Sender<anyhow::Result<()>>);

impl Started {
    fn now(&self) {
        let _ = self.0.send(Ok(()));
    }
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
