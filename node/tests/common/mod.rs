//! Fixtures shared by node's integration tests.

#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a subset

use std::sync::Arc;

use futures::AsyncWriteExt;
use libp2p::Multiaddr;
use node::net::{self, NetConfig, NetHandle};
use node::protocol;
use node::storage::sim::{CrashIndex, CrashStorage};
use node::store::BlobStore;
use proto::wire::{Message, RangeResponse};

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

/// A peer that answers have queries and subscriptions honestly (it holds the whole blob, so a
/// subscription ends with its first answer) but corrupts the last byte of every response it
/// sends (inside the response's last group: the groups before it verify).
pub(crate) fn spawn_liar(store: Arc<Store>, mut incoming: net::IncomingStreams) {
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let store = store.clone();
            tokio::spawn(async move {
                let Ok(message) = protocol::read_message(&mut stream).await else {
                    return;
                };
                let reply = match message {
                    Message::HaveQuery(query) | Message::HaveSubscribe(query) => {
                        let info = store.info(&query.blob).unwrap();
                        let have = Message::Have(proto::wire::Have {
                            blob: query.blob,
                            size: Some(info.size),
                            groups: info.held,
                        });
                        have.encode().unwrap()
                    }
                    Message::Request(request) => {
                        let mut body = Vec::new();
                        let (served, _) = store
                            .serve(&request.blob, &request.groups, &mut body)
                            .unwrap();
                        // The last byte of the stream is inside the last group served.
                        let last = body.len() - 1;
                        body[last] ^= 0x01;
                        let mut reply = Message::Response(RangeResponse {
                            request_id: request.request_id,
                            groups: served,
                        })
                        .encode()
                        .unwrap();
                        reply.extend_from_slice(&body);
                        reply
                    }
                    _ => return,
                };
                let _ = stream.write_all(&reply).await;
                let _ = stream.close().await;
            });
        }
    });
}
