//! The mesh protocol over one bidirectional byte stream (a QUIC stream in the runtime), for both
//! ends: a server answering from its [`BlobStore`], and a client asking what a peer holds or
//! fetching chunk groups into its own store, verifying every item on the way in.
//!
//! One exchange per stream: the client writes one frame ([`HaveQuery`], [`RangeRequest`] or
//! [`NameQuery`]); the server answers with one frame ([`Have`], [`RangeResponse`] then the bao
//! stream of those groups, [`Named`], or an [`ErrorMessage`]) and closes. Cancelling a request is dropping its stream.
//!
//! A question for the fleet's revocation list ([`wire::RevocationsQuery`]) is answered by a
//! [`wire::RevocationsOffer`] followed by the signed list's bytes, or by the offer alone when
//! the list is not newer than the asker's.
//!
//! A subscription ([`Message::HaveSubscribe`]) is the one long exchange: the server answers with
//! a [`Have`], then writes a [`Message::HaveMore`] with the groups it gained, at most once per
//! [`HAVE_PUSH_INTERVAL`] and only when there are some, until the client closes or drops its
//! side. A yard of `n` vehicles so costs one stream per pair and a few bytes per new piece,
//! instead of `n²` polls every few seconds; and the open stream keeps the connection up while
//! the client still wants the blob (libp2p closes connections with no stream after a while).
//!
//! Written against `futures::io` so that it runs over libp2p streams and in-memory pipes alike.

use std::io;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use proto::bao::{self, ExpectedSize, RangeVerifier, VerifyError};
use proto::membership::{MembershipError, SignedRevocations};
use proto::wire::{
    self, ErrorCode, ErrorMessage, Have, HaveQuery, Message, NameQuery, Named, Peers, PeersQuery,
    RangeRequest, RangeResponse, WireError,
};
use proto::{BlobId, ChunkGroupRanges};

use crate::membership::HeldRevocations;
use crate::storage::{Index, Storage};
use crate::store::{BlobStore, LAYOUT, StoreError};

mod spares;
mod verify_worker;

/// Why an exchange failed, from the client's side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The stream broke or closed early.
    #[error("stream failed: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a malformed frame.
    #[error("peer sent a malformed frame")]
    Wire(#[from] WireError),
    /// The peer answered with a message that does not fit the exchange.
    #[error("peer answered {answer} to {question}")]
    UnexpectedAnswer {
        /// What was asked.
        question: &'static str,
        /// What came back.
        answer: String,
    },
    /// The peer refused.
    #[error("peer refused: {code}: {detail}")]
    Refused {
        /// Its reason.
        code: ErrorCode,
        /// Its words.
        detail: String,
    },
    /// The peer announced groups that were not asked for.
    #[error("peer announced chunk groups {announced} for a request of {requested}")]
    UnaskedGroups {
        /// What it announced.
        announced: ChunkGroupRanges,
        /// What was asked.
        requested: ChunkGroupRanges,
    },
    /// The data failed verification: the peer sent a bad chunk group, proof or size.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Storing verified data failed on our side.
    #[error("storing verified data failed")]
    Store(#[from] StoreError),
    /// A message could not be encoded (a bug on our side).
    #[error("encoding a message failed")]
    Encode(#[from] wire::EncodeError),
    /// The peer offered a revocation list that is not one, or not the one it announced.
    #[error("peer sent a bad revocation list: {0}")]
    BadRevocations(#[from] MembershipError),
}

impl ExchangeError {
    /// True when the peer provably misbehaved (bad data, proof or size, or unasked groups): it
    /// must not be asked again for this blob.
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            Self::Verify(error) => error.is_peer_misbehaviour(),
            // Malformed frames and answers that break the exchange's rules are lies too.
            Self::UnaskedGroups { .. }
            | Self::Wire(_)
            | Self::UnexpectedAnswer { .. }
            | Self::BadRevocations(_) => true,
            _ => false,
        }
    }
}

/// Reads one frame, refusing a length above the protocol's limit before reading it.
pub async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Message, ExchangeError> {
    read_next_message(reader).await?.ok_or_else(|| {
        ExchangeError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended before a message",
        ))
    })
}

/// Like [`read_message`], but a stream that ends cleanly where a frame would begin gives
/// `Ok(None)`: the end of a stream of messages, not an error.
pub async fn read_next_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Message>, ExchangeError> {
    let mut prefix = [0u8; wire::LENGTH_PREFIX_BYTES];
    let first = reader.read(&mut prefix[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut prefix[1..]).await?;
    let length = wire::frame_length(prefix)?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(Message::decode_body(&body)?))
}

async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ExchangeError> {
    writer.write_all(&message.encode()?).await?;
    Ok(())
}

/// How often a subscription's server looks for groups gained since its last message.
pub const HAVE_PUSH_INTERVAL: Duration = Duration::from_millis(500);

/// What a server did with one stream, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// Answered a have query.
    Have {
        /// The blob.
        blob: BlobId,
    },
    /// Kept a subscriber up to date until it left or the blob was complete.
    Subscription {
        /// The blob.
        blob: BlobId,
        /// Messages sent ([`Have`] and [`Message::HaveMore`]).
        messages: u64,
    },
    /// Sent groups of a blob.
    Groups {
        /// The blob.
        blob: BlobId,
        /// The groups sent.
        groups: ChunkGroupRanges,
        /// Bytes of the bao stream.
        bytes: u64,
    },
    /// Said which blob it serves under a name.
    Name {
        /// The blob.
        blob: BlobId,
    },
    /// Said which peers of its yard hold a blob (a tracker's answer).
    Peers {
        /// The blob.
        blob: BlobId,
        /// Peers listed.
        listed: usize,
    },
    /// Noted that the asker distrusts a peer for a blob, and said who else holds it.
    Distrust {
        /// The blob.
        blob: BlobId,
        /// Peers listed.
        listed: usize,
    },
    /// Took a vehicle's report to relay (stored durably before the answer).
    Report {
        /// The BLAKE3 hash of the report's bytes.
        report: BlobId,
    },
    /// Answered a question for the fleet's revocation list.
    Revocations {
        /// The version offered (0: none held).
        version: u64,
        /// Bytes of the list sent (0: not newer than the asker's).
        bytes: u64,
    },
    /// Answered with an error.
    Refused {
        /// Why.
        code: ErrorCode,
    },
}

/// Answers the one exchange on `stream` from `store`, then closes the stream.
pub async fn serve<St, S, I>(
    store: &Arc<BlobStore<S, I>>,
    mut stream: St,
) -> Result<Served, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
    I: Index,
{
    match read_question(&mut stream).await? {
        Message::HaveSubscribe(HaveQuery { blob }) => serve_subscription(store, stream, blob).await,
        question => answer(store, stream, question).await,
    }
}

/// Reads the frame that opens an exchange. A malformed one is answered with `BadRequest` (and
/// the stream closed) before the error is returned.
pub async fn read_question<St>(stream: &mut St) -> Result<Message, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    match read_message(stream).await {
        Ok(message) => Ok(message),
        Err(ExchangeError::Wire(error)) => {
            let refusal = ErrorMessage::new(None, ErrorCode::BadRequest, &error.to_string());
            write_message(stream, &Message::Error(refusal)).await?;
            stream.close().await?;
            Err(ExchangeError::Wire(error))
        }
        Err(other) => Err(other),
    }
}

/// Refuses the exchange `question` opened with `code`, then closes the stream.
pub async fn refuse<St>(
    mut stream: St,
    question: &Message,
    code: ErrorCode,
    detail: &str,
) -> Result<Served, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    let request_id = match question {
        Message::Request(request) => Some(request.request_id),
        _ => None,
    };
    let refusal = ErrorMessage::new(request_id, code, detail);
    write_message(&mut stream, &Message::Error(refusal)).await?;
    stream.close().await?;
    Ok(Served::Refused { code })
}

/// Writes `message` as the one answer on `stream` and closes it: for answers composed outside
/// this module (a tracker's [`Peers`]).
pub async fn reply<St>(mut stream: St, message: &Message) -> Result<(), ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    write_message(&mut stream, message).await?;
    stream.close().await?;
    Ok(())
}

/// Answers a one-frame exchange (`question`, as read by [`read_question`]) from `store`, then
/// closes the stream. A subscription is refused here: see [`serve_subscription`].
pub async fn answer<St, S, I>(
    store: &Arc<BlobStore<S, I>>,
    mut stream: St,
    question: Message,
) -> Result<Served, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
    I: Index,
{
    let refuse = |request_id, code, detail: String| {
        (
            Message::Error(ErrorMessage::new(request_id, code, &detail)),
            Served::Refused { code },
        )
    };
    let (answer, served) = match question {
        Message::HaveQuery(HaveQuery { blob }) => match store.info(&blob) {
            Some(info) => (
                Message::Have(Have {
                    blob,
                    // Our size is verified: it came from a verified response or an import.
                    size: Some(info.size),
                    groups: info.held.first_ranges(wire::MAX_RANGES),
                }),
                Served::Have { blob },
            ),
            None => refuse(
                None,
                ErrorCode::NotFound,
                format!("blob {blob} is not here"),
            ),
        },
        Message::NameQuery(NameQuery { name }) => match store.resolve(&name) {
            Some(info) => (
                Message::Named(Named {
                    name,
                    blob: info.id,
                    size: info.size,
                }),
                Served::Name { blob: info.id },
            ),
            None => refuse(
                None,
                ErrorCode::NotFound,
                format!("nothing is named {name:?} here"),
            ),
        },
        Message::Request(RangeRequest {
            request_id,
            blob,
            groups,
        }) => match store
            .servable_groups(&blob, &groups)
            .map(|servable| servable.first_groups(wire::MAX_REQUEST_GROUPS))
        {
            Err(StoreError::NotFound(_)) => refuse(
                Some(request_id),
                ErrorCode::NotFound,
                format!("blob {blob} is not here"),
            ),
            Err(error) => refuse(Some(request_id), ErrorCode::Internal, error.to_string()),
            Ok(servable) if servable.is_empty() => refuse(
                Some(request_id),
                ErrorCode::NotHeld,
                format!("none of chunk groups {groups} of blob {blob} are held here"),
            ),
            Ok(servable) => {
                // Encode before announcing, so a corrupt local copy becomes a refusal rather
                // than a broken stream. One response is at most 4 MiB (MAX_REQUEST_GROUPS).
                // Reading it back and checking every group against the root runs on the
                // blocking pool, so this thread goes on sending what other requests encoded
                // meanwhile.
                let encoded = {
                    let store = store.clone();
                    let mut body = SPARE_BODIES.take().unwrap_or_default();
                    body.clear();
                    tokio::task::spawn_blocking(move || {
                        store
                            .serve_into(&blob, &servable, &mut body)
                            .map(|(sent, bytes)| (sent, bytes, body))
                    })
                    .await
                    .unwrap_or_else(|error| {
                        Err(StoreError::Io {
                            what: format!("encoding a response of blob {blob}"),
                            source: io::Error::other(error.to_string()),
                        })
                    })
                };
                match encoded {
                    Ok((sent, bytes, body)) => {
                        let announce = Message::Response(RangeResponse {
                            request_id,
                            groups: sent.clone(),
                        });
                        write_message(&mut stream, &announce).await?;
                        stream.write_all(body.bytes()).await?;
                        if body.capacity() <= MAX_SPARE_BODY_BYTES {
                            SPARE_BODIES.give_back(body);
                        }
                        stream.close().await?;
                        return Ok(Served::Groups {
                            blob,
                            groups: sent,
                            bytes,
                        });
                    }
                    Err(error) => refuse(Some(request_id), ErrorCode::Internal, error.to_string()),
                }
            }
        },
        other => refuse(
            None,
            ErrorCode::BadRequest,
            format!("{} cannot open an exchange", kind_name(&other)),
        ),
    };
    write_message(&mut stream, &answer).await?;
    stream.close().await?;
    Ok(served)
}

/// Response bodies kept for the next requests: a server answering a stream of requests fills
/// the same buffers instead of allocating and zeroing one per response. At most 16, each of at
/// most [`MAX_SPARE_BODY_BYTES`] (17 MiB in all), and never more than were in use at once.
static SPARE_BODIES: spares::Spares<bao::ResponseBody> = spares::Spares::new(16);

/// The largest body kept: a 64-group response (1 MiB of data and its pairs). Larger ones (up to
/// [`wire::MAX_REQUEST_GROUPS`]) are rare and freed after use.
const MAX_SPARE_BODY_BYTES: usize = (1 << 20) + 64 * 1024;

fn kind_name(message: &Message) -> &'static str {
    match message {
        Message::Request(_) => "request",
        Message::Response(_) => "response",
        Message::Cancel(_) => "cancel",
        Message::HaveQuery(_) => "have query",
        Message::Have(_) => "have",
        Message::Error(_) => "error",
        Message::HaveSubscribe(_) => "have subscription",
        Message::HaveMore(_) => "have-more",
        Message::NameQuery(_) => "name query",
        Message::Named(_) => "named",
        Message::PeersQuery(_) => "peers query",
        Message::Peers(_) => "peers",
        Message::Report(_) => "report",
        Message::ReportTaken(_) => "report taken",
        Message::Distrust(_) => "distrust",
        Message::RevocationsQuery(_) => "revocations query",
        Message::RevocationsOffer(_) => "revocations offer",
        _ => "unknown message",
    }
}

/// Keeps the subscriber on `stream` told of the groups of `blob` that `store` holds: a [`Have`]
/// now (empty, without a size, when the blob is not here yet), then a [`Message::HaveMore`] with
/// the groups gained, checked every [`HAVE_PUSH_INTERVAL`] until the blob is complete. Ends when
/// the subscriber closes or drops its side.
///
/// Groups the store drops (a copy that failed re-verification, an evicted blob) are not taken
/// back: a later request for them is answered `NotHeld`, which drops them from the asker's view.
pub async fn serve_subscription<St, S, I>(
    store: &BlobStore<S, I>,
    mut stream: St,
    blob: BlobId,
) -> Result<Served, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
    I: Index,
{
    let info = store.info(&blob);
    let mut size = info.as_ref().map(|info| info.size);
    let mut told = info
        .map(|info| info.held.first_ranges(wire::MAX_RANGES))
        .unwrap_or_default();
    let first = Message::Have(Have {
        blob,
        size,
        groups: told.clone(),
    });
    write_message(&mut stream, &first).await?;
    stream.flush().await?;
    let mut messages = 1;
    let mut probe = [0u8; 64];
    loop {
        // The subscriber writes nothing after its subscription, so any read that returns means
        // it closed its side (or broke the rules): either way, the subscription is over.
        if size.is_some_and(|size| told == LAYOUT.all_groups(size)) {
            // Nothing more to tell; the open stream keeps the connection up while it is wanted.
            let _ = stream.read(&mut probe).await;
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(HAVE_PUSH_INTERVAL) => {}
            _ = stream.read(&mut probe) => break,
        }
        let Some(info) = store.info(&blob) else {
            continue;
        };
        let gained = info.held.difference(&told);
        let learned_size = size.is_none();
        if gained.is_empty() && !learned_size {
            continue;
        }
        // Ranges beyond the frame's limit wait for the next message.
        let gained = gained.first_ranges(wire::MAX_RANGES);
        told = told.union(&gained);
        size = Some(info.size);
        let more = Message::HaveMore(Have {
            blob,
            size,
            groups: gained,
        });
        write_message(&mut stream, &more).await?;
        stream.flush().await?;
        messages += 1;
    }
    Ok(Served::Subscription { blob, messages })
}

/// Subscribes to what the peer on `stream` holds of `blob`: `on_have` gets the peer's [`Have`]
/// first (with `true`), then each [`Message::HaveMore`] (groups to add to what it said before).
/// Returns when `on_have` answers [`ControlFlow::Break`] (the stream is closed) or the peer closes
/// the stream. Dropping the future ends the subscription too.
pub async fn subscribe_have<St: AsyncRead + AsyncWrite + Unpin>(
    mut stream: St,
    blob: BlobId,
    mut on_have: impl FnMut(Have, bool) -> ControlFlow<()>,
) -> Result<(), ExchangeError> {
    write_message(&mut stream, &Message::HaveSubscribe(HaveQuery { blob })).await?;
    stream.flush().await?;
    let mut flow = match read_message(&mut stream).await? {
        Message::Have(have) if have.blob == blob => on_have(have, true),
        Message::Error(error) => {
            return Err(ExchangeError::Refused {
                code: error.code,
                detail: error.detail,
            });
        }
        other => {
            return Err(ExchangeError::UnexpectedAnswer {
                question: "have subscription",
                answer: kind_name(&other).to_owned(),
            });
        }
    };
    loop {
        if flow.is_break() {
            stream.close().await?;
            return Ok(());
        }
        // A clean end is the peer closing between frames.
        let Some(message) = read_next_message(&mut stream).await? else {
            return Ok(());
        };
        match message {
            Message::HaveMore(have) if have.blob == blob => flow = on_have(have, false),
            other => {
                return Err(ExchangeError::UnexpectedAnswer {
                    question: "have subscription",
                    answer: kind_name(&other).to_owned(),
                });
            }
        }
    }
}

/// Asks the peer on `stream` which groups of `blob` it holds.
pub async fn query_have<St: AsyncRead + AsyncWrite + Unpin>(
    stream: St,
    blob: BlobId,
) -> Result<Have, ExchangeError> {
    let question = Message::HaveQuery(HaveQuery { blob });
    ask(stream, &question, |answer| match answer {
        Message::Have(have) if have.blob == blob => Ok(have),
        other => Err(other),
    })
    .await
}

/// Asks the peer on `stream` which blob it serves under `name`. The answer is the peer's claim:
/// fetching the blob verifies it against the id, not against the name.
pub async fn query_name<St: AsyncRead + AsyncWrite + Unpin>(
    stream: St,
    name: &str,
) -> Result<Named, ExchangeError> {
    let question = Message::NameQuery(NameQuery {
        name: name.to_owned(),
    });
    ask(stream, &question, |answer| match answer {
        Message::Named(named) if named.name == name => Ok(named),
        other => Err(other),
    })
    .await
}

/// Asks the peer on `stream` (an upstream acting as the yard's tracker) which of its other peers
/// hold groups of `blob`. What comes back are claims to dial, not facts.
pub async fn query_peers<St: AsyncRead + AsyncWrite + Unpin>(
    stream: St,
    blob: BlobId,
) -> Result<Peers, ExchangeError> {
    let question = Message::PeersQuery(PeersQuery { blob });
    ask(stream, &question, |answer| match answer {
        Message::Peers(peers) if peers.blob == blob => Ok(peers),
        other => Err(other),
    })
    .await
}

/// Tells the peer on `stream` (an upstream acting as the yard's tracker) that `peer` (its
/// identity's bytes) sent data of `blob` that failed verification; returns the upstream's new
/// answer to who holds `blob`, without that peer. See [`wire::Distrust`].
pub async fn report_distrust<St: AsyncRead + AsyncWrite + Unpin>(
    stream: St,
    blob: BlobId,
    peer: Vec<u8>,
) -> Result<Peers, ExchangeError> {
    let question = Message::Distrust(wire::Distrust { blob, peer });
    ask(stream, &question, |answer| match answer {
        Message::Peers(peers) if peers.blob == blob => Ok(peers),
        other => Err(other),
    })
    .await
}

/// Hands the peer on `stream` (a depot) a vehicle's signed `manifest` to relay to the director;
/// returns once the peer said it stored exactly these bytes.
pub async fn hand_report<St: AsyncRead + AsyncWrite + Unpin>(
    stream: St,
    manifest: &[u8],
) -> Result<BlobId, ExchangeError> {
    let digest = BlobId::of(manifest);
    let question = Message::Report(wire::Report {
        manifest: manifest.to_vec(),
    });
    ask(stream, &question, |answer| match answer {
        Message::ReportTaken(taken) if taken.report == digest => Ok(digest),
        other => Err(other),
    })
    .await
}

/// Answers a peer that holds revocations version `newer_than` with the list this node `held`
/// ([`crate::membership::offer`]): the offer, then the list's bytes when it is newer; then
/// closes the stream.
pub async fn answer_revocations<St>(
    mut stream: St,
    newer_than: u64,
    held: Option<&HeldRevocations>,
) -> Result<Served, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    let (offer, bytes) = crate::membership::offer(held, newer_than);
    write_message(&mut stream, &Message::RevocationsOffer(offer)).await?;
    if let Some(bytes) = &bytes {
        stream.write_all(bytes).await?;
    }
    stream.close().await?;
    Ok(Served::Revocations {
        version: offer.version,
        bytes: offer.length,
    })
}

/// What a peer answered to a question for the fleet's revocation list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferedRevocations {
    /// It holds nothing newer than the asker: this version (0: none).
    NotNewer {
        /// The version it holds.
        version: u64,
    },
    /// It handed on this list: well-formed, bounded and of the version it announced, but its
    /// signature and whether it is newer than the list in force are for the membership gate to
    /// check ([`crate::net::NetHandle::update_revocations`]).
    List(SignedRevocations),
}

/// Asks the peer on `stream` for the fleet's revocation list if it holds a newer one than
/// version `newer_than` (0: none). Reads at most [`wire::MAX_REVOCATIONS_BYTES`] after the
/// offer.
pub async fn query_revocations<St: AsyncRead + AsyncWrite + Unpin>(
    mut stream: St,
    newer_than: u64,
) -> Result<OfferedRevocations, ExchangeError> {
    let question = Message::RevocationsQuery(wire::RevocationsQuery { newer_than });
    let offer = ask(&mut stream, &question, |answer| match answer {
        Message::RevocationsOffer(offer) => Ok(offer),
        other => Err(other),
    })
    .await?;
    if offer.length == 0 {
        return Ok(OfferedRevocations::NotNewer {
            version: offer.version,
        });
    }
    // The length is bounded by the frame's decoder; the buffer grows with what arrives, not
    // with what was announced.
    let mut bytes = Vec::new();
    (&mut stream)
        .take(offer.length)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 != offer.length {
        return Err(ExchangeError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the revocation list ended after {} of the {} bytes offered",
                bytes.len(),
                offer.length
            ),
        )));
    }
    let mut more = [0u8; 1];
    if stream.read(&mut more).await? != 0 {
        return Err(ExchangeError::BadRevocations(MembershipError::Malformed(
            format!("bytes follow the {} bytes offered", offer.length),
        )));
    }
    let signed = SignedRevocations::decode(&bytes)?;
    if signed.revocations.version != offer.version {
        return Err(ExchangeError::BadRevocations(MembershipError::Malformed(
            format!(
                "version {} was offered, and the list is version {}",
                offer.version, signed.revocations.version
            ),
        )));
    }
    Ok(OfferedRevocations::List(signed))
}

impl ExchangeError {
    /// The peer reset or stopped the stream: a node under a burst of new streams drops those
    /// its queue has no room for, so an exchange that failed this way is worth trying again
    /// shortly.
    pub fn is_reset(&self) -> bool {
        matches!(self, Self::Io(error) if error.kind() == io::ErrorKind::ConnectionReset)
    }
}

/// Closes our side of an exchange whose question was written, and reads the answer. A peer may
/// answer and drop the stream as soon as it has read the question frame, before our close is
/// acknowledged: the close then fails ("stopped by peer") although the answer is there to read.
/// So a failed close is reported only when no answer can be read either.
async fn read_answer<St>(stream: &mut St) -> Result<Message, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    let closed = stream.close().await;
    match read_message(stream).await {
        Ok(answer) => Ok(answer),
        Err(error) => Err(closed.err().map_or(error, ExchangeError::from)),
    }
}

/// A one-frame exchange: writes `question`, closes our side, reads one answer and hands it to
/// `accept`. An error frame is a refusal; any answer `accept` gives back is unexpected.
async fn ask<St, T>(
    mut stream: St,
    question: &Message,
    accept: impl FnOnce(Message) -> Result<T, Message>,
) -> Result<T, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
{
    write_message(&mut stream, question).await?;
    let answer = read_answer(&mut stream).await?;
    match accept(answer) {
        Ok(answer) => Ok(answer),
        Err(Message::Error(error)) => Err(ExchangeError::Refused {
            code: error.code,
            detail: error.detail,
        }),
        Err(other) => Err(ExchangeError::UnexpectedAnswer {
            question: kind_name(question),
            answer: format!("{other:?}"),
        }),
    }
}

/// Progress of a fetch, reported as verified groups are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchProgress {
    /// The response's size header was read and, if the size was unknown, bounded.
    Size(u64),
    /// These groups were verified and written.
    Groups {
        /// The groups.
        groups: ChunkGroupRanges,
        /// Their bytes.
        bytes: u64,
    },
    /// The response covered the blob's last group, so its size is proven.
    SizeProven(u64),
    /// A checkpoint of the blob is due ([`BlobStore::write_deferred`]): the receiver runs
    /// [`BlobStore::checkpoint`] off the network task.
    CheckpointDue,
}

/// Bytes read from a stream at once while fetching.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// The most groups a size probe may return: its response is held in memory until it proves the
/// size, so it must stay small.
pub const MAX_PROBE_GROUPS: u64 = 16;

/// Fetches `groups` of `blob` from the peer on `stream` into `store`, verifying every item
/// before it is written.
///
/// When the store already has the blob, its recorded (proven) size is what the response must
/// claim. Otherwise `size_limit` bounds the claim, the request must reach the blob's last group
/// (a *size probe*: ask past the end, the peer answers with the last group), and nothing is
/// stored until the whole response has verified, proving the size; then the blob is created and
/// the groups written.
///
/// `progress` is called after every stored group. Returns the groups fetched.
#[allow(clippy::too_many_arguments)]
pub async fn fetch<St, S, I>(
    stream: St,
    store: &Arc<BlobStore<S, I>>,
    blob: BlobId,
    request_id: u64,
    groups: &ChunkGroupRanges,
    size_limit: u64,
    mut progress: impl FnMut(FetchProgress),
) -> Result<ChunkGroupRanges, ExchangeError>
where
    St: AsyncRead + AsyncWrite + Unpin,
    S: Storage,
    I: Index,
{
    // Items are 64-byte pairs and 16 KiB groups; reading each straight off the QUIC stream
    // costs a poll of the connection per item. One buffered read takes many at once.
    let mut stream = futures::io::BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let known_size = store.info(&blob).map(|info| info.size);
    let expected = match known_size {
        Some(size) => ExpectedSize::Exactly(size),
        None => ExpectedSize::AtMost(size_limit),
    };
    let request = Message::Request(RangeRequest {
        request_id,
        blob,
        groups: groups.clone(),
    });
    write_message(&mut stream, &request).await?;
    let announced = match read_answer(&mut stream).await? {
        Message::Response(response) if response.request_id == request_id => response.groups,
        Message::Error(error) => {
            return Err(ExchangeError::Refused {
                code: error.code,
                detail: error.detail,
            });
        }
        other => {
            return Err(ExchangeError::UnexpectedAnswer {
                question: "range request",
                answer: format!("{other:?}"),
            });
        }
    };
    let mut header = [0u8; bao::SIZE_HEADER_BYTES];
    stream.read_exact(&mut header).await.map_err(|error| {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            ExchangeError::Verify(VerifyError::Truncated {
                blob,
                missing: bao::Missing::SizeHeader,
            })
        } else {
            ExchangeError::Io(error)
        }
    })?;
    let claimed = bao::check_size_header(blob, header, expected)?;
    // What the peer may send: the groups asked for that exist, plus the last group when the
    // request reached past the end.
    let count = LAYOUT.group_count(claimed);
    let last = count - 1;
    let mut allowed = groups.intersection(&LAYOUT.all_groups(claimed));
    if groups.end() > count {
        allowed.insert(last..count);
    }
    if !announced.is_subset(&allowed) {
        return Err(ExchangeError::UnaskedGroups {
            announced,
            requested: groups.clone(),
        });
    }
    let probing = known_size.is_none();
    if probing
        && (!announced.contains(proto::ChunkGroup(last))
            || announced.group_count() > MAX_PROBE_GROUPS)
    {
        return Err(ExchangeError::UnexpectedAnswer {
            question: "size probe",
            answer: format!("chunk groups {announced} of a {claimed}-byte blob"),
        });
    }
    progress(FetchProgress::Size(claimed));

    let verifier = RangeVerifier::new(blob, LAYOUT, claimed, &announced);
    let fetched = if probing {
        probe(
            &mut stream,
            store,
            blob,
            claimed,
            &announced,
            verifier,
            &mut progress,
        )
        .await?
    } else {
        verify_worker::receive(&mut stream, store, blob, verifier, &mut progress).await?
    };
    if fetched.contains(proto::ChunkGroup(last)) {
        progress(FetchProgress::SizeProven(claimed));
    }
    Ok(fetched)
}

/// Reads a size probe's response: its items wait in memory until the whole response has proven
/// the size (a probe is a handful of groups), then are verified once more and stored.
async fn probe<St, S, I>(
    stream: &mut St,
    store: &BlobStore<S, I>,
    blob: BlobId,
    claimed: u64,
    announced: &ChunkGroupRanges,
    mut verifier: RangeVerifier,
    progress: &mut impl FnMut(FetchProgress),
) -> Result<ChunkGroupRanges, ExchangeError>
where
    St: AsyncRead + Unpin,
    S: Storage,
    I: Index,
{
    let mut buffer = Vec::with_capacity(usize::try_from(LAYOUT.group_bytes()).unwrap_or(0));
    let mut probe_items = Vec::new();
    while let Some(len) = verifier.next_item_len() {
        buffer.resize(len, 0);
        if let Err(error) = stream.read_exact(&mut buffer).await {
            return Err(match (error.kind(), verifier.missing()) {
                (io::ErrorKind::UnexpectedEof, Some(missing)) => {
                    ExchangeError::Verify(VerifyError::Truncated { blob, missing })
                }
                _ => ExchangeError::Io(error),
            });
        }
        verifier.verify_next(&buffer)?;
        probe_items.extend_from_slice(&buffer);
    }
    // Verified through the last group: the size is proven. Store the items by verifying them
    // once more from memory.
    store.create_partial(blob, claimed)?;
    let mut fetched = ChunkGroupRanges::empty();
    let mut again = RangeVerifier::new(blob, LAYOUT, claimed, announced);
    let mut at = 0;
    while let Some(len) = again.next_item_len() {
        let bytes = probe_items.get(at..at + len).unwrap_or_default();
        let item = again.verify_next(bytes)?;
        store_item(store, &blob, &item, &mut fetched, progress)?;
        at += len;
    }
    Ok(fetched)
}

/// Writes one verified item to the store and reports a stored group.
fn store_item<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    blob: &BlobId,
    item: &bao::Verified<'_>,
    fetched: &mut ChunkGroupRanges,
    progress: &mut impl FnMut(FetchProgress),
) -> Result<(), ExchangeError> {
    if store.write_deferred(blob, item)? {
        progress(FetchProgress::CheckpointDue);
    }
    if let bao::Verified::Group(group) = item {
        let index = group.group().0;
        fetched.insert(index..index + 1);
        progress(FetchProgress::Groups {
            groups: ChunkGroupRanges::from(index..index + 1),
            bytes: group.data().len() as u64,
        });
    }
    Ok(())
}
