//! The mesh protocol between a serving store and a fetching store over an in-memory stream:
//! honest exchanges, a size probe, and peers that lie (bad data, a false size, groups nobody
//! asked for) — which must be caught before anything unverified is stored.

// Test code: small sizes, and a panic is how a test fails.
#![allow(
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::ops::ControlFlow;
use std::sync::Arc;

use futures::{AsyncReadExt, AsyncWriteExt};
use node::protocol::{self, ExchangeError, FetchProgress, Served};
use node::store::LAYOUT;
use proto::bao::{self, VerifyError};
use proto::wire::{ErrorCode, MAX_GROUP, MAX_REQUEST_GROUPS, Message, RangeResponse};
use proto::{BlobId, ChunkGroupRanges};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

mod common;
use common::{Store, new_store};

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 % 241) as u8).collect()
}

fn pipe() -> (
    Compat<tokio::io::DuplexStream>,
    Compat<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(1 << 16);
    (a.compat(), b.compat())
}

/// Runs `fetch` against `serve` on a fresh pipe.
async fn exchange(
    server: &Arc<Store>,
    client: &Arc<Store>,
    blob: BlobId,
    groups: &ChunkGroupRanges,
) -> (Result<ChunkGroupRanges, ExchangeError>, Vec<FetchProgress>) {
    let (near, far) = pipe();
    let mut progress = Vec::new();
    let (served, fetched) = tokio::join!(
        protocol::serve(server, far),
        protocol::fetch(near, client, blob, 1, groups, 1 << 30, |p| progress.push(p)),
    );
    let _ = served;
    (fetched, progress)
}

#[tokio::test]
async fn size_probe_then_the_rest_fetches_the_whole_blob() {
    let data = blob_bytes(10 * 16384 + 500);
    let server = Arc::new(new_store());
    let blob = server.import(&data[..]).unwrap();
    let client = Arc::new(new_store());

    // Size unknown: ask past the end; the peer answers with the last group, proving the size.
    let probe = ChunkGroupRanges::from(MAX_GROUP - 1..MAX_GROUP);
    let (fetched, progress) = exchange(&server, &client, blob, &probe).await;
    assert_eq!(fetched.unwrap(), ChunkGroupRanges::from(10..11));
    assert!(progress.contains(&FetchProgress::SizeProven(data.len() as u64)));
    let info = client.info(&blob).unwrap();
    assert_eq!(info.size, data.len() as u64);

    let rest = LAYOUT.all_groups(info.size).difference(&info.held);
    let (fetched, _) = exchange(&server, &client, blob, &rest).await;
    assert_eq!(fetched.unwrap(), rest);
    client.checkpoint(&blob).unwrap();
    let mut out = Vec::new();
    client.export(&blob, &mut out).unwrap();
    assert!(out == data);
}

#[tokio::test]
async fn a_request_for_a_whole_large_blob_is_answered_with_its_first_groups_only() {
    // A peer that asks for everything at once must not make the server read, hash and buffer
    // the whole blob for it: the answer carries at most MAX_REQUEST_GROUPS groups, and the
    // asker fetches the rest with further requests.
    let groups = MAX_REQUEST_GROUPS + 44;
    let data = blob_bytes(groups as usize * 16384);
    let server = Arc::new(new_store());
    let blob = server.import(&data[..]).unwrap();
    let client = Arc::new(new_store());
    client.create_partial(blob, data.len() as u64).unwrap();
    let all = LAYOUT.all_groups(data.len() as u64);
    let (fetched, _) = exchange(&server, &client, blob, &all).await;
    assert_eq!(
        fetched.unwrap(),
        ChunkGroupRanges::from(0..MAX_REQUEST_GROUPS)
    );
    let (fetched, _) = exchange(
        &server,
        &client,
        blob,
        &all.difference(&(0..MAX_REQUEST_GROUPS).into()),
    )
    .await;
    assert_eq!(
        fetched.unwrap(),
        ChunkGroupRanges::from(MAX_REQUEST_GROUPS..groups)
    );
    client.checkpoint(&blob).unwrap();
    let mut out = Vec::new();
    client.export(&blob, &mut out).unwrap();
    assert!(out == data);
}

#[tokio::test]
async fn have_query_and_refusals() {
    let data = blob_bytes(5 * 16384);
    let server = Arc::new(new_store());
    let blob = server.import(&data[..]).unwrap();

    let (near, far) = pipe();
    let (served, have) = tokio::join!(
        protocol::serve(&server, far),
        protocol::query_have(near, blob)
    );
    assert_eq!(served.unwrap(), Served::Have { blob });
    let have = have.unwrap();
    assert_eq!(
        (have.size, have.groups),
        (
            Some(data.len() as u64),
            LAYOUT.all_groups(data.len() as u64)
        )
    );

    let unknown = BlobId::of(b"nothing");
    let (near, far) = pipe();
    let (served, have) = tokio::join!(
        protocol::serve(&server, far),
        protocol::query_have(near, unknown)
    );
    assert_eq!(
        served.unwrap(),
        Served::Refused {
            code: ErrorCode::NotFound
        }
    );
    assert!(matches!(
        have,
        Err(ExchangeError::Refused {
            code: ErrorCode::NotFound,
            ..
        })
    ));

    // A partial holder refuses groups it lacks.
    let partial = Arc::new(new_store());
    let (fetched, _) = exchange(
        &server,
        &partial,
        blob,
        &ChunkGroupRanges::from(MAX_GROUP - 1..MAX_GROUP),
    )
    .await;
    fetched.unwrap();
    let client = Arc::new(new_store());
    client.create_partial(blob, data.len() as u64).unwrap();
    let (fetched, _) = exchange(&partial, &client, blob, &ChunkGroupRanges::from(0..2)).await;
    assert!(
        matches!(
            fetched,
            Err(ExchangeError::Refused {
                code: ErrorCode::NotHeld,
                ..
            })
        ),
        "{fetched:?}"
    );
}

#[tokio::test]
async fn malformed_request_is_answered_with_bad_request() {
    let server = Arc::new(new_store());
    let (mut near, far) = pipe();
    let (served, answer) = tokio::join!(protocol::serve(&server, far), async {
        near.write_all(&[3, 0, 0, 0, 1, 99, 0]).await.unwrap();
        near.close().await.unwrap();
        protocol::read_message(&mut near).await
    });
    assert!(served.is_err());
    match answer.unwrap() {
        Message::Error(error) => {
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(
                error.detail.contains("unknown message kind 99"),
                "{}",
                error.detail
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A peer that answers every request with `announce` and then `body` (a bao stream it made up).
async fn lying_peer(
    mut stream: Compat<tokio::io::DuplexStream>,
    announce: ChunkGroupRanges,
    body: Vec<u8>,
) {
    let request = protocol::read_message(&mut stream).await.unwrap();
    let Message::Request(request) = request else {
        panic!("{request:?}")
    };
    let frame = Message::Response(RangeResponse {
        request_id: request.request_id,
        groups: announce,
    })
    .encode()
    .unwrap();
    let _ = stream.write_all(&frame).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.close().await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn a_corrupt_group_is_rejected_and_never_stored() {
    let data = blob_bytes(6 * 16384);
    let honest = Arc::new(new_store());
    let blob = honest.import(&data[..]).unwrap();
    let groups = LAYOUT.all_groups(data.len() as u64);
    let mut body = Vec::new();
    honest.serve(&blob, &groups, &mut body).unwrap();
    // Flip one byte in the middle of group 3's data: find it through the item layout.
    let mut verifier = bao::RangeVerifier::new(blob, LAYOUT, data.len() as u64, &groups);
    let mut at = bao::SIZE_HEADER_BYTES;
    let mut target = None;
    while let Some(owed) = verifier.owed() {
        let len = verifier.next_item_len().unwrap();
        if let bao::Owed::Group { group, .. } = owed {
            if group.0 == 3 {
                target = Some(at + len / 2);
            }
        }
        verifier.verify_next(&body[at..at + len]).unwrap();
        at += len;
    }
    body[target.unwrap()] ^= 0x40;

    let client = Arc::new(new_store());
    client.create_partial(blob, data.len() as u64).unwrap();
    let (near, far) = pipe();
    let (_, fetched) = tokio::join!(
        lying_peer(far, groups.clone(), body),
        protocol::fetch(near, &client, blob, 1, &groups, 1 << 30, |_| {}),
    );
    let error = fetched.unwrap_err();
    assert!(error.is_misbehaviour(), "{error}");
    assert!(
        matches!(&error, ExchangeError::Verify(VerifyError::ChunkGroupMismatch { group, .. }) if group.0 == 3),
        "{error}"
    );
    // Groups before the bad one were verified and kept; the bad one and after were not.
    assert_eq!(
        client.info(&blob).unwrap().held,
        ChunkGroupRanges::from(0..3)
    );
    let mut response = Vec::new();
    client
        .serve(&blob, &ChunkGroupRanges::from(0..3), &mut response)
        .unwrap();
}

#[tokio::test]
async fn a_false_size_on_a_probe_stores_nothing() {
    let data = blob_bytes(4 * 16384 + 10);
    let honest = Arc::new(new_store());
    let blob = honest.import(&data[..]).unwrap();
    let last = ChunkGroupRanges::from(4..5);
    let mut honest_body = Vec::new();
    honest.serve(&blob, &last, &mut honest_body).unwrap();
    let probe = ChunkGroupRanges::from(MAX_GROUP - 1..MAX_GROUP);
    for (claimed, provable) in [
        (data.len() as u64 - 1, true),
        (data.len() as u64 + 1, false),
    ] {
        let mut body = honest_body.clone();
        body[..8].copy_from_slice(&claimed.to_le_bytes());
        let client = Arc::new(new_store());
        let (near, far) = pipe();
        let (_, fetched) = tokio::join!(
            lying_peer(far, last.clone(), body),
            protocol::fetch(near, &client, blob, 1, &probe, 1 << 30, |_| {}),
        );
        let error = fetched.unwrap_err();
        // A shorter claim fails the hash of the last group: a provable lie. A longer one leaves
        // the stream short, which a broken connection could also do: no ban, but no storage.
        assert_eq!(
            error.is_misbehaviour(),
            provable,
            "claimed {claimed}: {error}"
        );
        assert!(
            client.info(&blob).is_none(),
            "a blob was created from an unproven size"
        );
    }
}

#[tokio::test]
async fn groups_nobody_asked_for_are_refused() {
    let data = blob_bytes(6 * 16384);
    let honest = Arc::new(new_store());
    let blob = honest.import(&data[..]).unwrap();
    let mut body = Vec::new();
    honest
        .serve(&blob, &ChunkGroupRanges::from(0..6), &mut body)
        .unwrap();
    let client = Arc::new(new_store());
    client.create_partial(blob, data.len() as u64).unwrap();
    let (near, far) = pipe();
    let asked = ChunkGroupRanges::from(0..2);
    let (_, fetched) = tokio::join!(
        lying_peer(far, ChunkGroupRanges::from(0..6), body),
        protocol::fetch(near, &client, blob, 1, &asked, 1 << 30, |_| {}),
    );
    assert!(
        matches!(fetched, Err(ExchangeError::UnaskedGroups { .. })),
        "{fetched:?}"
    );
    assert!(client.info(&blob).unwrap().held.is_empty());
}

#[tokio::test]
async fn a_subscription_hears_of_groups_as_they_arrive_until_the_subscriber_leaves() {
    let data = blob_bytes(40 * 16384 + 77);
    let origin = Arc::new(new_store());
    let blob = origin.import(&data[..]).unwrap();
    let all = LAYOUT.all_groups(data.len() as u64);
    // The subscribed-to peer starts with the tail (which proves the size) and fills up while
    // the subscriber listens.
    let filling = Arc::new(new_store());
    let (tail, _) = exchange(&origin, &filling, blob, &(30..41).into()).await;
    assert_eq!(tail.unwrap(), (30..41).into());

    let (near, far) = pipe();
    let mut heard: Vec<(proto::wire::Have, bool)> = Vec::new();
    let mut union = ChunkGroupRanges::empty();
    let feed = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        exchange(&origin, &filling, blob, &(0..15).into())
            .await
            .0
            .unwrap();
        tokio::time::sleep(protocol::HAVE_PUSH_INTERVAL * 2).await;
        exchange(&origin, &filling, blob, &(15..30).into())
            .await
            .0
            .unwrap();
    };
    let (served, subscribed, ()) = tokio::join!(
        protocol::serve(&filling, far),
        protocol::subscribe_have(near, blob, |have, first| {
            union = union.union(&have.groups);
            heard.push((have, first));
            // Leave once everything was heard of: the server keeps a complete subscription open
            // for as long as the subscriber wants it.
            if union == all {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }),
        feed,
    );
    subscribed.unwrap();
    let Served::Subscription { messages, .. } = served.unwrap() else {
        panic!("not served as a subscription");
    };
    assert_eq!(messages as usize, heard.len());
    // First the whole map, then only additions, which together make the blob.
    assert_eq!(heard[0].0.groups, (30..41).into());
    assert_eq!(heard[0].0.size, Some(data.len() as u64));
    assert!(heard[0].1 && heard[1..].iter().all(|(_, first)| !first));
    assert!(
        heard.len() >= 3,
        "additions came in {} messages",
        heard.len() - 1
    );
    let mut union = ChunkGroupRanges::empty();
    for (have, _) in &heard {
        assert!(
            !have.groups.intersects(&union),
            "a group was announced twice"
        );
        union = union.union(&have.groups);
    }
    assert_eq!(union, all);
}

#[tokio::test]
async fn a_subscription_to_an_unknown_blob_waits_and_ends_when_the_subscriber_leaves() {
    let server = Arc::new(new_store());
    let unknown = BlobId::of(b"not yet");
    let (near, far) = pipe();
    let mut heard = Vec::new();
    let listen = async {
        let wait = protocol::HAVE_PUSH_INTERVAL * 3;
        let outcome = tokio::time::timeout(
            wait,
            protocol::subscribe_have(near, unknown, |have, first| {
                heard.push((have, first));
                ControlFlow::Continue(())
            }),
        )
        .await;
        assert!(
            outcome.is_err(),
            "the subscription ended by itself: {outcome:?}"
        );
        // `near` is dropped here: the subscriber leaves.
    };
    let (served, ()) = tokio::join!(protocol::serve(&server, far), listen);
    assert_eq!(
        served.unwrap(),
        Served::Subscription {
            blob: unknown,
            messages: 1
        }
    );
    assert_eq!(heard.len(), 1);
    assert_eq!(heard[0].0.size, None);
    assert!(heard[0].0.groups.is_empty() && heard[0].1);
}

#[tokio::test]
async fn a_subscription_refuses_messages_that_do_not_belong_to_it() {
    let blob = BlobId::of(b"image");
    let (near, mut far) = pipe();
    let liar = async {
        let question = protocol::read_message(&mut far).await.unwrap();
        assert_eq!(
            question,
            Message::HaveSubscribe(proto::wire::HaveQuery { blob })
        );
        let first = Message::Have(proto::wire::Have {
            blob,
            size: None,
            groups: (0..2).into(),
        });
        // A "have-more" for another blob breaks the subscription's rules.
        let stray = Message::HaveMore(proto::wire::Have {
            blob: BlobId::of(b"other"),
            size: None,
            groups: (2..3).into(),
        });
        far.write_all(&first.encode().unwrap()).await.unwrap();
        far.write_all(&stray.encode().unwrap()).await.unwrap();
        far.close().await.unwrap();
    };
    let mut heard = 0;
    let (outcome, ()) = tokio::join!(
        protocol::subscribe_have(near, blob, |_, _| {
            heard += 1;
            ControlFlow::Continue(())
        }),
        liar
    );
    let error = outcome.unwrap_err();
    assert!(error.is_misbehaviour(), "{error}");
    assert!(error.to_string().contains("have-more"), "{error}");
    assert_eq!(heard, 1);
}
