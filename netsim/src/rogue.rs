//! A corrupt peer for `netsim yard --corrupt-peer`: a real mesh node on the yard that holds the
//! release's delta, says so (honest have-maps, so the depot's tracker points vehicles at it),
//! and answers every range request with the right announcement and a body whose first item is
//! corrupt. What must happen: each vehicle that asks it finds the bad item against the blob's
//! BLAKE3 root, keeps nothing from it, bans it and gets those groups elsewhere.
//!
//! It is built from the node's own parts (transport, store, protocol), lying in one place only.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use futures::AsyncWriteExt as _;
use libp2p::{Multiaddr, PeerId};
use node::net::{self, NetConfig};
use node::protocol;
use node::store::DiskStore;

use crate::actor::Running;
use proto::BlobId;
use proto::wire::{Message, RangeResponse};

/// The running corrupt peer.
#[derive(Debug)]
pub struct Rogue {
    /// Its peer id.
    pub peer: PeerId,
    /// The blob it lies about.
    pub blob: BlobId,
    /// Range requests it answered with a corrupt body.
    pub lies: Arc<AtomicU64>,
    _running: Running,
}

impl Rogue {
    /// Lies told so far.
    pub fn lies(&self) -> u64 {
        self.lies.load(Ordering::Relaxed)
    }
}

/// Starts a corrupt peer in `dir` holding `file`, connected to the depot at `depot`, and makes
/// the depot's tracker follow it (it asks the depot who holds the blob, which subscribes to its
/// have-map). It joins the mesh with `membership` (an insider), or as a stranger without.
pub fn start(
    dir: &Path,
    file: &Path,
    depot: &Multiaddr,
    membership: Option<node::membership::MeshMembership>,
) -> anyhow::Result<Rogue> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keypair = node::identity::load_or_create(dir).context("the corrupt peer's identity")?;
    let (store, _) = node::store::open_data_dir(dir).context("the corrupt peer's store")?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let blob = store
        .import(bytes.as_slice())
        .context("importing the delta into the corrupt peer")?;
    let store = Arc::new(store);
    let lies = Arc::new(AtomicU64::new(0));
    let peer = keypair.public().to_peer_id();
    let depot = depot.clone();
    let counter = lies.clone();
    let running = Running::start("corrupt peer", move |started| async move {
        let (handle, mut events, mut incoming) = net::start(NetConfig {
            keypair: Some(keypair),
            membership,
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
            mdns: false,
            ..NetConfig::default()
        })
        .await?;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let depot_peer = handle.dial(depot).await?;
        let serving = store.clone();
        tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                let (store, lies) = (serving.clone(), counter.clone());
                tokio::spawn(async move {
                    if let Err(error) = answer(&store, stream, &lies).await {
                        tracing::debug!("corrupt peer: {error}");
                    }
                });
            }
        });
        // Ask the depot who holds the blob, as a vehicle joining the swarm does: its tracker
        // then follows what we hold and points the yard at us.
        let stream = handle.open_stream(depot_peer).await?;
        let _ = protocol::query_peers(stream, blob).await;
        started.now();
        // Until dropped (the handle keeps the node up).
        std::future::pending::<()>().await;
        drop(handle);
        Ok(())
    })?;
    Ok(Rogue {
        peer,
        blob,
        lies,
        _running: running,
    })
}

/// One exchange: honest about what it holds, corrupt in every range it sends.
async fn answer(
    store: &Arc<DiskStore>,
    mut stream: libp2p::Stream,
    lies: &AtomicU64,
) -> anyhow::Result<()> {
    let question = protocol::read_question(&mut stream).await?;
    let request = match question {
        Message::Request(request) => request,
        Message::HaveSubscribe(query) => {
            protocol::serve_subscription(store, stream, query.blob).await?;
            return Ok(());
        }
        other => {
            protocol::answer(store, stream, other).await?;
            return Ok(());
        }
    };
    let servable = store.servable_groups(&request.blob, &request.groups)?;
    let mut body = Vec::new();
    let (sent, _) = store.serve(&request.blob, &servable, &mut body)?;
    // The first item after the 8-byte size (a parent pair or the first group's bytes) is
    // wrong: nothing in this response verifies.
    if let Some(byte) = body.get_mut(8) {
        *byte ^= 0xff;
    }
    let announce = Message::Response(RangeResponse {
        request_id: request.request_id,
        groups: sent,
    });
    stream.write_all(&announce.encode()?).await?;
    stream.write_all(&body).await?;
    stream.close().await?;
    lies.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
