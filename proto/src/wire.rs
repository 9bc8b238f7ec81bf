//! The mesh's control messages and their binary codec.
//!
//! # Goals
//! - Let a node ask a peer for chunk groups of a blob ([`RangeRequest`]), learn which groups a peer
//!   holds ([`HaveQuery`], [`Have`]) and hear of the groups it gains as it gains them
//!   ([`Message::HaveSubscribe`], [`Message::HaveMore`]), stop a request ([`Cancel`]) and hear why
//!   something was refused ([`ErrorMessage`]).
//! - Let a node ask which blob a peer holds under a name ([`NameQuery`], [`Named`]): how a
//!   vehicle finds the current `timestamp.json`, whose content, and so whose id, it cannot know
//!   in advance. The answer is a claim like any other; what the vehicle fetches is verified
//!   against the id it was given, and then as signed metadata.
//! - Let a node ask a peer for the fleet's revocation list if the peer holds a newer one than
//!   its own ([`RevocationsQuery`], [`RevocationsOffer`]): how a vehicle that never reaches the
//!   director learns of a revocation from its depot. The list follows the answer on the stream;
//!   it is signed by the fleet key, so the peer only carries it and cannot forge or alter it.
//! - Decode untrusted bytes without panicking, with a hard limit on message size
//!   ([`MAX_MESSAGE_BYTES`]) and on what a decoded message may allocate, and with errors that name
//!   the field and byte offset that were wrong.
//! - One canonical encoding per message, so a decoded message re-encodes to the same bytes.
//!
//! # Non-goals
//! - Carrying blob bytes: a [`RangeRequest`] is answered by a [`RangeResponse`] followed by the bao
//!   stream of [`crate::bao`], whose every chunk group is verified on arrival. These messages are
//!   not authenticated; nothing in them is trusted beyond "this peer says so".
//! - Peer identity, encryption and transport: libp2p's QUIC connection provides them.
//!
//! # Framing
//! Every message is one frame:
//!
//! ```text
//! length  u32 little-endian   bytes that follow, 2 ..= MAX_MESSAGE_BYTES
//! version u8                  WIRE_VERSION (1)
//! kind    u8                  which message
//! body    length - 2 bytes    the message's fields, in order
//! ```
//!
//! Integers in bodies are unsigned LEB128 varints (at most 10 bytes, no redundant trailing zero
//! bytes); a [`BlobId`] is its 32 raw bytes; an optional value is a `0` or `1` byte then the value;
//! text is a varint byte length then UTF-8. A set of chunk groups is a varint count of ranges,
//! then per range the gap from the end of the previous range (from 0 for the first; at least 1
//! after the first, as ranges never touch) and the range's length (at least 1).

use std::fmt;

use crate::{BlobId, ChunkGroupRanges};

/// The protocol id under which nodes speak this protocol (a libp2p stream protocol name).
pub const PROTOCOL_ID: &str = "/depotmesh/mesh/1";
/// The version byte of every frame this code writes and reads.
pub const WIRE_VERSION: u8 = 1;
/// The most bytes a frame may hold after its length prefix.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The most ranges one set of chunk groups may hold on the wire. A decoded set holds at most
/// `2 * MAX_RANGES` boundaries of 8 bytes: exactly [`MAX_MESSAGE_BYTES`].
pub const MAX_RANGES: usize = MAX_MESSAGE_BYTES / 16;
/// The most bytes of an error's human-readable detail.
pub const MAX_DETAIL_BYTES: usize = 256;
/// The most bytes of a name (see [`check_name`]).
pub const MAX_NAME_BYTES: usize = 512;
/// The highest chunk group a set may name: a blob of [`crate::bao::MAX_BLOB_SIZE`] bytes has no
/// group beyond this even at the smallest (1 KiB) group size.
pub const MAX_GROUP: u64 = crate::bao::MAX_BLOB_SIZE / 1024;

/// Chunk groups a server sends in answer to one request at most (4 MiB of 16 KiB groups): a
/// request for more is answered with the first this many it holds, and the asker asks again
/// for the rest. Bounds what one request costs a server to read, check and buffer.
pub const MAX_REQUEST_GROUPS: u64 = 256;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Peers in one [`Peers`] answer at most.
pub const MAX_YARD_PEERS: usize = 64;
/// Bytes of one peer identity at most (a libp2p ed25519 peer id takes 38).
pub const MAX_PEER_ID_BYTES: usize = 64;
/// Addresses of one peer in a [`Peers`] answer at most.
pub const MAX_PEER_ADDRS: usize = 4;
/// Bytes of one address at most (a QUIC multiaddr over IPv6 takes about 30).
pub const MAX_ADDR_BYTES: usize = 128;
/// Bytes of a fleet revocation list that follows a [`RevocationsOffer`] at most.
pub const MAX_REVOCATIONS_BYTES: u64 = crate::membership::MAX_REVOCATIONS_BYTES as u64;
/// Bytes of one relayed vehicle report at most (a signed manifest for a dozen ECUs takes a few
/// KiB); the frame around it stays below [`MAX_MESSAGE_BYTES`].
pub const MAX_REPORT_BYTES: usize = MAX_MESSAGE_BYTES - 64;

/// Asks a peer for the bao encoding of some chunk groups of a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRequest {
    /// Chosen by the requester; echoed in the response, a cancel or an error.
    pub request_id: u64,
    /// The blob.
    pub blob: BlobId,
    /// The groups wanted.
    pub groups: ChunkGroupRanges,
}

/// Announces the groups that follow a request as a bao stream: those of the requested groups
/// the peer holds. The bao stream for exactly these groups comes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// The request answered.
    pub request_id: u64,
    /// The groups that follow.
    pub groups: ChunkGroupRanges,
}

/// Withdraws a request; the peer stops sending its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel {
    /// The request withdrawn.
    pub request_id: u64,
}

/// Asks which groups of a blob a peer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HaveQuery {
    /// The blob.
    pub blob: BlobId,
}

/// The groups of a blob a node holds, verified: the answer to a [`HaveQuery`], or sent unasked
/// when it holds more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Have {
    /// The blob.
    pub blob: BlobId,
    /// The blob's size, when the sender has verified it (it holds the last group, or the size
    /// came from signed metadata).
    pub size: Option<u64>,
    /// The groups held. A node holding more than [`MAX_RANGES`] separate ranges sends the
    /// first ones ([`ChunkGroupRanges::first_ranges`]).
    pub groups: ChunkGroupRanges,
}

/// Asks which blob a peer holds under a name (e.g. `image/metadata/timestamp.json`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameQuery {
    /// The name; see [`check_name`].
    pub name: String,
}

/// The answer to a [`NameQuery`]: the peer holds the whole of `blob`, of `size` bytes, under
/// `name`. A peer that has no such name answers [`ErrorCode::NotFound`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// The name asked for.
    pub name: String,
    /// The blob the peer holds under it.
    pub blob: BlobId,
    /// The blob's size as the peer states it (proven only by the blob's first verified bytes).
    pub size: u64,
}

/// Asks an upstream (the depot, acting as the yard's tracker) which peers of its yard hold groups
/// of a blob, so the asker can fetch them there instead of from the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeersQuery {
    /// The blob.
    pub blob: BlobId,
}

/// One peer in a [`Peers`] answer. Identities and addresses are opaque bytes here (a libp2p
/// peer id and multiaddrs in the runtime) and unverified claims: the asker dials them and the
/// connection proves the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YardPeer {
    /// The peer's identity, at most [`MAX_PEER_ID_BYTES`].
    pub peer: Vec<u8>,
    /// Where it listens: at most [`MAX_PEER_ADDRS`] addresses of at most [`MAX_ADDR_BYTES`].
    pub addrs: Vec<Vec<u8>>,
    /// Groups of the blob it announced to the tracker.
    pub groups: u64,
}

/// The answer to a [`PeersQuery`]: at most [`MAX_YARD_PEERS`] peers, those holding most first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    /// The blob asked about.
    pub blob: BlobId,
    /// Peers holding groups of it, the asker excluded.
    pub peers: Vec<YardPeer>,
}

/// Tells an upstream (the depot, as the yard's tracker) that `peer` sent the asker data of `blob`
/// that failed verification, so the asker banned it. The upstream stops holding groups back from
/// the asker for that peer's claims and leaves it out of its answers to the asker; when enough
/// peers say the same, for everyone. It cannot check the claim, so it only ever makes the
/// upstream serve more itself, never refuse. Answered by [`Peers`]: the yard without that peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Distrust {
    /// The blob whose data failed.
    pub blob: BlobId,
    /// The peer that sent it: its identity, 1 to [`MAX_PEER_ID_BYTES`] bytes.
    pub peer: Vec<u8>,
}

/// Hands a peer (the vehicle's depot) a vehicle's signed version manifest to pass on to the
/// director. The relay cannot forge or alter it unnoticed: the director checks the vehicle's
/// and its ECUs' signatures and the nonce it signed for that vehicle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The signed manifest as the vehicle wrote it, 1 to [`MAX_REPORT_BYTES`] bytes.
    pub manifest: Vec<u8>,
}

/// The answer to a [`Report`]: the peer has stored it durably and will pass it on, however often
/// it restarts. A peer that relays no reports answers [`ErrorCode::NotFound`]; one whose queue is
/// full answers [`ErrorCode::Busy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportTaken {
    /// The BLAKE3 hash of the manifest's bytes, so the sender knows which bytes were taken.
    pub report: BlobId,
}

/// Asks a peer for the fleet's signed revocation list if it holds a newer one than
/// `newer_than`. Answered by a [`RevocationsOffer`]; a peer that hands on no list (an open mesh)
/// answers [`ErrorCode::NotFound`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevocationsQuery {
    /// The version of the list the asker holds (0: none).
    pub newer_than: u64,
}

/// The answer to a [`RevocationsQuery`]: the version of the list the peer holds, and the bytes
/// of that list (a [`SignedRevocations`](crate::membership::SignedRevocations) as JSON) that
/// follow this frame on the stream. `length` is 0, and nothing follows, when the peer holds no
/// newer list than the asker's ("not newer"). What follows is a claim until the fleet key's
/// signature verifies, and is refused if older than what the asker holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevocationsOffer {
    /// The version of the list the peer holds (0: none).
    pub version: u64,
    /// Bytes of the list that follow, at most [`MAX_REVOCATIONS_BYTES`]; 0 when not newer.
    pub length: u64,
}

/// Checks that `name` may be used as a name: 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 without
/// control characters (names appear in logs and error messages). Returns what is wrong.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a name may not be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("a name may hold at most 512 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("a name may not hold control characters");
    }
    Ok(())
}

/// Why a peer refused or failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// The peer does not know the blob.
    NotFound,
    /// The peer holds none of the groups asked for.
    NotHeld,
    /// The peer serves too many requests now; ask again later or elsewhere.
    Busy,
    /// The request was malformed or broke a limit.
    BadRequest,
    /// The peer failed on its side (e.g. its copy failed verification).
    Internal,
    /// The peer (a depot seeding its yard) holds the groups but leaves them to the asker's
    /// neighbours, which hold them or will shortly: ask them, and this peer for other groups.
    /// Added after the first release of version 1; an older peer reads it as an unknown code.
    HeldBack,
    /// A code this version does not know, kept so it can be logged.
    Unknown(u16),
}

impl ErrorCode {
    fn to_wire(self) -> u64 {
        match self {
            Self::NotFound => 1,
            Self::NotHeld => 2,
            Self::Busy => 3,
            Self::BadRequest => 4,
            Self::Internal => 5,
            Self::HeldBack => 6,
            Self::Unknown(code) => u64::from(code),
        }
    }

    fn from_wire(code: u16) -> Self {
        match code {
            1 => Self::NotFound,
            2 => Self::NotHeld,
            3 => Self::Busy,
            4 => Self::BadRequest,
            5 => Self::Internal,
            6 => Self::HeldBack,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found"),
            Self::NotHeld => f.write_str("not held"),
            Self::Busy => f.write_str("busy"),
            Self::BadRequest => f.write_str("bad request"),
            Self::Internal => f.write_str("internal error"),
            Self::HeldBack => f.write_str("held back for the neighbours"),
            Self::Unknown(code) => write!(f, "unknown error code {code}"),
        }
    }
}

/// A refusal or failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// The request it answers, if any.
    pub request_id: Option<u64>,
    /// What went wrong.
    pub code: ErrorCode,
    /// Words for a log, at most [`MAX_DETAIL_BYTES`] bytes.
    pub detail: String,
}

impl ErrorMessage {
    /// An error whose detail is cut (at a character boundary) to [`MAX_DETAIL_BYTES`].
    pub fn new(request_id: Option<u64>, code: ErrorCode, detail: &str) -> Self {
        let mut end = detail.len().min(MAX_DETAIL_BYTES);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            request_id,
            code,
            detail: detail[..end].to_owned(),
        }
    }
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// See [`RangeRequest`].
    Request(RangeRequest),
    /// See [`RangeResponse`].
    Response(RangeResponse),
    /// See [`Cancel`].
    Cancel(Cancel),
    /// See [`HaveQuery`].
    HaveQuery(HaveQuery),
    /// See [`Have`].
    Have(Have),
    /// See [`ErrorMessage`].
    Error(ErrorMessage),
    /// Like [`Message::HaveQuery`], and more: answered with a [`Message::Have`], then, on the
    /// same stream, a [`Message::HaveMore`] whenever the peer gains groups, until it holds the
    /// whole blob (it then closes the stream) or the asker closes it. Added after the first
    /// release of version 1: a peer that does not know it answers `BadRequest`.
    HaveSubscribe(HaveQuery),
    /// Groups the sender gained since its last [`Message::Have`] or `HaveMore` on this stream (and
    /// the blob's size, once known): an addition to what it said, not a replacement.
    HaveMore(Have),
    /// See [`NameQuery`]. Added after the first release of version 1: a peer that does not know
    /// it answers `BadRequest`.
    NameQuery(NameQuery),
    /// See [`Named`].
    Named(Named),
    /// See [`PeersQuery`]. Added after the first release of version 1: a peer that does not
    /// know it answers `BadRequest`.
    PeersQuery(PeersQuery),
    /// See [`Peers`].
    Peers(Peers),
    /// See [`Report`]. Added after the first release of version 1: a peer that does not know it
    /// answers `BadRequest`.
    Report(Report),
    /// See [`ReportTaken`].
    ReportTaken(ReportTaken),
    /// See [`Distrust`]. Added after the first release of version 1: a peer that does not know
    /// it answers `BadRequest`.
    Distrust(Distrust),
    /// See [`RevocationsQuery`]. Added after the first release of version 1: a peer that does
    /// not know it answers `BadRequest`.
    RevocationsQuery(RevocationsQuery),
    /// See [`RevocationsOffer`].
    RevocationsOffer(RevocationsOffer),
}

mod kind {
    pub(super) const REQUEST: u8 = 1;
    pub(super) const RESPONSE: u8 = 2;
    pub(super) const CANCEL: u8 = 3;
    pub(super) const HAVE_QUERY: u8 = 4;
    pub(super) const HAVE: u8 = 5;
    pub(super) const ERROR: u8 = 6;
    pub(super) const HAVE_SUBSCRIBE: u8 = 7;
    pub(super) const HAVE_MORE: u8 = 8;
    pub(super) const NAME_QUERY: u8 = 9;
    pub(super) const NAMED: u8 = 10;
    pub(super) const PEERS_QUERY: u8 = 11;
    pub(super) const PEERS: u8 = 12;
    pub(super) const REPORT: u8 = 13;
    pub(super) const REPORT_TAKEN: u8 = 14;
    pub(super) const DISTRUST: u8 = 15;
    pub(super) const REVOCATIONS_QUERY: u8 = 16;
    pub(super) const REVOCATIONS_OFFER: u8 = 17;
}

/// Why bytes from a peer are not a valid message. Offsets count from the start of the frame,
/// length prefix included.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length prefix announces more than [`MAX_MESSAGE_BYTES`].
    #[error("frame of {length} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    FrameTooLarge {
        /// The announced length.
        length: u64,
    },
    /// The length prefix announces less than a version and a kind byte.
    #[error("frame of {length} bytes is too short for a version and a kind")]
    FrameTooShort {
        /// The announced length.
        length: u64,
    },
    /// The frame has a version this code does not speak.
    #[error("frame version {found} is not supported (this node speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// The kind byte names no known message.
    #[error("unknown message kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The frame ended inside a field.
    #[error("frame ends inside field `{field}` at byte {offset}")]
    Truncated {
        /// The field.
        field: &'static str,
        /// Where it started.
        offset: usize,
    },
    /// A varint is longer than 10 bytes, overflows 64 bits or is not minimal.
    #[error("field `{field}` at byte {offset} is not a valid varint")]
    BadVarint {
        /// The field.
        field: &'static str,
        /// Where it started.
        offset: usize,
    },
    /// A field holds a value outside its allowed range.
    #[error("field `{field}` at byte {offset} has invalid value {value}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Where it started.
        offset: usize,
        /// The value found.
        value: u64,
    },
    /// A set of chunk groups holds more than [`MAX_RANGES`] ranges.
    #[error("field `{field}` at byte {offset} holds {count} ranges, more than {MAX_RANGES}")]
    TooManyRanges {
        /// The field.
        field: &'static str,
        /// Where it started.
        offset: usize,
        /// The count found.
        count: u64,
    },
    /// A text field is not UTF-8 or is longer than allowed.
    #[error("field `{field}` at byte {offset} is not UTF-8 text of at most {max} bytes")]
    BadText {
        /// The field.
        field: &'static str,
        /// Where it started.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes are left after the last field.
    #[error("{count} unexpected bytes after the message, at byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        count: usize,
    },
}

/// Why a message cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A set of chunk groups holds more ranges than a message may carry.
    #[error("set of chunk groups holds {count} ranges, more than {MAX_RANGES}")]
    TooManyRanges {
        /// How many ranges.
        count: usize,
    },
    /// A chunk group lies above [`MAX_GROUP`].
    #[error("chunk group {group} lies above the limit of {MAX_GROUP}")]
    GroupTooHigh {
        /// The group boundary.
        group: u64,
    },
    /// The message would exceed [`MAX_MESSAGE_BYTES`].
    #[error("message of {length} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge {
        /// Its length.
        length: usize,
    },
    /// An error detail is longer than [`MAX_DETAIL_BYTES`].
    #[error("error detail of {length} bytes exceeds {MAX_DETAIL_BYTES}")]
    DetailTooLong {
        /// Its length.
        length: usize,
    },
    /// A name breaks [`check_name`].
    #[error("invalid name: {reason}")]
    BadName {
        /// What is wrong.
        reason: &'static str,
    },
    /// A [`Peers`] answer lists more than [`MAX_YARD_PEERS`] peers.
    #[error("{count} peers in one answer, more than {MAX_YARD_PEERS}")]
    TooManyPeers {
        /// How many.
        count: usize,
    },
    /// A peer in a [`Peers`] answer breaks a limit.
    #[error("invalid peer entry: {reason}")]
    BadPeer {
        /// What is wrong.
        reason: &'static str,
    },
    /// A relayed report is empty or longer than [`MAX_REPORT_BYTES`].
    #[error("a report of {length} bytes cannot be relayed (1 to {MAX_REPORT_BYTES} bytes)")]
    BadReport {
        /// Its length.
        length: usize,
    },
    /// A revocation list longer than [`MAX_REVOCATIONS_BYTES`] cannot be offered.
    #[error(
        "a revocation list of {length} bytes cannot be offered (at most {MAX_REVOCATIONS_BYTES})"
    )]
    RevocationsTooLong {
        /// Its length.
        length: u64,
    },
}

/// Checks a frame's length prefix before anything else is read, so a peer cannot make us buffer
/// more than [`MAX_MESSAGE_BYTES`]. Returns the number of bytes that follow it.
pub fn frame_length(prefix: [u8; LENGTH_PREFIX_BYTES]) -> Result<usize, WireError> {
    let length = u64::from(u32::from_le_bytes(prefix));
    if length > MAX_MESSAGE_BYTES as u64 {
        return Err(WireError::FrameTooLarge { length });
    }
    if length < 2 {
        return Err(WireError::FrameTooShort { length });
    }
    usize::try_from(length).map_err(|_| WireError::FrameTooLarge { length })
}

impl Message {
    /// The frame for this message, length prefix included.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![0u8; LENGTH_PREFIX_BYTES];
        out.push(WIRE_VERSION);
        match self {
            Self::Request(request) => {
                out.push(kind::REQUEST);
                put_varint(&mut out, request.request_id);
                out.extend_from_slice(request.blob.as_bytes());
                put_groups(&mut out, &request.groups)?;
            }
            Self::Response(response) => {
                out.push(kind::RESPONSE);
                put_varint(&mut out, response.request_id);
                put_groups(&mut out, &response.groups)?;
            }
            Self::Cancel(cancel) => {
                out.push(kind::CANCEL);
                put_varint(&mut out, cancel.request_id);
            }
            Self::HaveQuery(query) | Self::HaveSubscribe(query) => {
                out.push(if matches!(self, Self::HaveQuery(_)) {
                    kind::HAVE_QUERY
                } else {
                    kind::HAVE_SUBSCRIBE
                });
                out.extend_from_slice(query.blob.as_bytes());
            }
            Self::Have(have) | Self::HaveMore(have) => {
                out.push(if matches!(self, Self::Have(_)) {
                    kind::HAVE
                } else {
                    kind::HAVE_MORE
                });
                out.extend_from_slice(have.blob.as_bytes());
                put_optional_varint(&mut out, have.size);
                put_groups(&mut out, &have.groups)?;
            }
            Self::Error(error) => {
                out.push(kind::ERROR);
                put_optional_varint(&mut out, error.request_id);
                put_varint(&mut out, error.code.to_wire());
                if error.detail.len() > MAX_DETAIL_BYTES {
                    return Err(EncodeError::DetailTooLong {
                        length: error.detail.len(),
                    });
                }
                put_varint(&mut out, error.detail.len() as u64);
                out.extend_from_slice(error.detail.as_bytes());
            }
            Self::NameQuery(query) => {
                out.push(kind::NAME_QUERY);
                put_name(&mut out, &query.name)?;
            }
            Self::Named(named) => {
                out.push(kind::NAMED);
                put_name(&mut out, &named.name)?;
                out.extend_from_slice(named.blob.as_bytes());
                put_varint(&mut out, named.size);
            }
            Self::PeersQuery(query) => {
                out.push(kind::PEERS_QUERY);
                out.extend_from_slice(query.blob.as_bytes());
            }
            Self::Peers(peers) => {
                out.push(kind::PEERS);
                out.extend_from_slice(peers.blob.as_bytes());
                put_peers(&mut out, &peers.peers)?;
            }
            Self::Report(report) => {
                out.push(kind::REPORT);
                let length = report.manifest.len();
                if length == 0 || length > MAX_REPORT_BYTES {
                    return Err(EncodeError::BadReport { length });
                }
                put_varint(&mut out, length as u64);
                out.extend_from_slice(&report.manifest);
            }
            Self::ReportTaken(taken) => {
                out.push(kind::REPORT_TAKEN);
                out.extend_from_slice(taken.report.as_bytes());
            }
            Self::Distrust(distrust) => {
                out.push(kind::DISTRUST);
                out.extend_from_slice(distrust.blob.as_bytes());
                if distrust.peer.is_empty() || distrust.peer.len() > MAX_PEER_ID_BYTES {
                    return Err(EncodeError::BadPeer {
                        reason: "identity of 0 bytes or more than MAX_PEER_ID_BYTES",
                    });
                }
                put_varint(&mut out, distrust.peer.len() as u64);
                out.extend_from_slice(&distrust.peer);
            }
            Self::RevocationsQuery(query) => {
                out.push(kind::REVOCATIONS_QUERY);
                put_varint(&mut out, query.newer_than);
            }
            Self::RevocationsOffer(offer) => {
                out.push(kind::REVOCATIONS_OFFER);
                if offer.length > MAX_REVOCATIONS_BYTES {
                    return Err(EncodeError::RevocationsTooLong {
                        length: offer.length,
                    });
                }
                put_varint(&mut out, offer.version);
                put_varint(&mut out, offer.length);
            }
        }
        // Groups stay below 2^32 (5-byte varints), so MAX_RANGES ranges take at most 40 KiB and
        // every message fits; the check keeps that true if a field is ever added.
        let length = out.len() - LENGTH_PREFIX_BYTES;
        let prefix = u32::try_from(length)
            .ok()
            .filter(|_| length <= MAX_MESSAGE_BYTES)
            .ok_or(EncodeError::TooLarge { length })?;
        out[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_le_bytes());
        Ok(out)
    }

    /// Decodes the first frame in `bytes`: `Ok(None)` when `bytes` holds only part of it (read
    /// more), else the message and the number of bytes it took.
    pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Self, usize)>, WireError> {
        let Some(prefix) = bytes.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length = frame_length(*prefix)?;
        let end = LENGTH_PREFIX_BYTES + length;
        let Some(body) = bytes.get(LENGTH_PREFIX_BYTES..end) else {
            return Ok(None);
        };
        Ok(Some((Self::decode_body(body)?, end)))
    }

    /// Decodes the bytes after a frame's length prefix (as checked by [`frame_length`]).
    pub fn decode_body(body: &[u8]) -> Result<Self, WireError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(WireError::FrameTooLarge {
                length: body.len() as u64,
            });
        }
        let mut reader = Reader {
            bytes: body,
            position: 0,
        };
        let version = reader.byte("version")?;
        if version != WIRE_VERSION {
            return Err(WireError::UnsupportedVersion { found: version });
        }
        let kind = reader.byte("kind")?;
        let message = match kind {
            kind::REQUEST => Self::Request(RangeRequest {
                request_id: reader.varint("request_id")?,
                blob: reader.blob_id("blob")?,
                groups: reader.groups("groups")?,
            }),
            kind::RESPONSE => Self::Response(RangeResponse {
                request_id: reader.varint("request_id")?,
                groups: reader.groups("groups")?,
            }),
            kind::CANCEL => Self::Cancel(Cancel {
                request_id: reader.varint("request_id")?,
            }),
            kind::HAVE_QUERY => Self::HaveQuery(HaveQuery {
                blob: reader.blob_id("blob")?,
            }),
            kind::HAVE => Self::Have(Have {
                blob: reader.blob_id("blob")?,
                size: reader.optional_varint("size")?,
                groups: reader.groups("groups")?,
            }),
            kind::HAVE_SUBSCRIBE => Self::HaveSubscribe(HaveQuery {
                blob: reader.blob_id("blob")?,
            }),
            kind::HAVE_MORE => Self::HaveMore(Have {
                blob: reader.blob_id("blob")?,
                size: reader.optional_varint("size")?,
                groups: reader.groups("groups")?,
            }),
            kind::ERROR => {
                let request_id = reader.optional_varint("request_id")?;
                let offset = reader.offset();
                let code = reader.varint("code")?;
                let code = u16::try_from(code).map_err(|_| WireError::InvalidValue {
                    field: "code",
                    offset,
                    value: code,
                })?;
                Self::Error(ErrorMessage {
                    request_id,
                    code: ErrorCode::from_wire(code),
                    detail: reader.text("detail", MAX_DETAIL_BYTES)?,
                })
            }
            kind::NAME_QUERY => Self::NameQuery(NameQuery {
                name: reader.name("name")?,
            }),
            kind::NAMED => Self::Named(Named {
                name: reader.name("name")?,
                blob: reader.blob_id("blob")?,
                size: reader.varint("size")?,
            }),
            kind::PEERS_QUERY => Self::PeersQuery(PeersQuery {
                blob: reader.blob_id("blob")?,
            }),
            kind::PEERS => Self::Peers(Peers {
                blob: reader.blob_id("blob")?,
                peers: reader.peers("peers")?,
            }),
            kind::REPORT => Self::Report(Report {
                manifest: reader.bytes("manifest", MAX_REPORT_BYTES)?,
            }),
            kind::REPORT_TAKEN => Self::ReportTaken(ReportTaken {
                report: reader.blob_id("report")?,
            }),
            kind::DISTRUST => Self::Distrust(Distrust {
                blob: reader.blob_id("blob")?,
                peer: reader.bytes("peer", MAX_PEER_ID_BYTES)?,
            }),
            kind::REVOCATIONS_QUERY => Self::RevocationsQuery(RevocationsQuery {
                newer_than: reader.varint("newer_than")?,
            }),
            kind::REVOCATIONS_OFFER => {
                let version = reader.varint("version")?;
                let offset = reader.offset();
                let length = reader.varint("length")?;
                if length > MAX_REVOCATIONS_BYTES {
                    return Err(WireError::InvalidValue {
                        field: "length",
                        offset,
                        value: length,
                    });
                }
                Self::RevocationsOffer(RevocationsOffer { version, length })
            }
            kind => return Err(WireError::UnknownKind { kind }),
        };
        let left = reader.bytes.len() - reader.position;
        if left > 0 {
            return Err(WireError::TrailingBytes {
                offset: reader.offset(),
                count: left,
            });
        }
        Ok(message)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_optional_varint(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put_varint(out, value);
        }
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> Result<(), EncodeError> {
    check_name(name).map_err(|reason| EncodeError::BadName { reason })?;
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_groups(out: &mut Vec<u8>, groups: &ChunkGroupRanges) -> Result<(), EncodeError> {
    let count = groups.boundaries().len() / 2;
    if count > MAX_RANGES {
        return Err(EncodeError::TooManyRanges { count });
    }
    if groups.end() > MAX_GROUP {
        return Err(EncodeError::GroupTooHigh {
            group: groups.end(),
        });
    }
    put_varint(out, count as u64);
    let mut previous_end = 0;
    for range in groups.iter() {
        put_varint(out, range.start - previous_end);
        put_varint(out, range.end - range.start);
        previous_end = range.end;
    }
    Ok(())
}

fn put_peers(out: &mut Vec<u8>, peers: &[YardPeer]) -> Result<(), EncodeError> {
    if peers.len() > MAX_YARD_PEERS {
        return Err(EncodeError::TooManyPeers { count: peers.len() });
    }
    put_varint(out, peers.len() as u64);
    for peer in peers {
        if peer.peer.is_empty() || peer.peer.len() > MAX_PEER_ID_BYTES {
            return Err(EncodeError::BadPeer {
                reason: "identity of 0 bytes or more than MAX_PEER_ID_BYTES",
            });
        }
        if peer.addrs.len() > MAX_PEER_ADDRS {
            return Err(EncodeError::BadPeer {
                reason: "more than MAX_PEER_ADDRS addresses",
            });
        }
        put_varint(out, peer.peer.len() as u64);
        out.extend_from_slice(&peer.peer);
        put_varint(out, peer.addrs.len() as u64);
        for addr in &peer.addrs {
            if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
                return Err(EncodeError::BadPeer {
                    reason: "address of 0 bytes or more than MAX_ADDR_BYTES",
                });
            }
            put_varint(out, addr.len() as u64);
            out.extend_from_slice(addr);
        }
        put_varint(out, peer.groups);
    }
    Ok(())
}

/// A cursor over a frame body that turns every shortfall into an error naming the field.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    /// The position as an offset in the whole frame.
    fn offset(&self) -> usize {
        self.position + LENGTH_PREFIX_BYTES
    }

    fn take(&mut self, field: &'static str, len: usize) -> Result<&[u8], WireError> {
        let offset = self.offset();
        let end = self
            .position
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(WireError::Truncated { field, offset })?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(field, 1)?[0])
    }

    fn blob_id(&mut self, field: &'static str) -> Result<BlobId, WireError> {
        let mut id = [0u8; BlobId::LEN];
        id.copy_from_slice(self.take(field, BlobId::LEN)?);
        Ok(BlobId::from_bytes(id))
    }

    fn varint(&mut self, field: &'static str) -> Result<u64, WireError> {
        let offset = self.offset();
        let mut value = 0u64;
        for index in 0..10 {
            let byte = self.byte(field)?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the 64th bit.
            if index == 9 && bits > 1 {
                return Err(WireError::BadVarint { field, offset });
            }
            value |= bits << (7 * index);
            if byte & 0x80 == 0 {
                // A final zero byte after the first adds nothing: not minimal, so not canonical.
                if index > 0 && byte == 0 {
                    return Err(WireError::BadVarint { field, offset });
                }
                return Ok(value);
            }
        }
        Err(WireError::BadVarint { field, offset })
    }

    fn optional_varint(&mut self, field: &'static str) -> Result<Option<u64>, WireError> {
        let offset = self.offset();
        match self.byte(field)? {
            0 => Ok(None),
            1 => Ok(Some(self.varint(field)?)),
            tag => Err(WireError::InvalidValue {
                field,
                offset,
                value: u64::from(tag),
            }),
        }
    }

    fn text(&mut self, field: &'static str, max: usize) -> Result<String, WireError> {
        let offset = self.offset();
        let len = self.varint(field)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= max)
            .ok_or(WireError::BadText { field, offset, max })?;
        let bytes = self.take(field, len)?;
        let text =
            std::str::from_utf8(bytes).map_err(|_| WireError::BadText { field, offset, max })?;
        Ok(text.to_owned())
    }

    fn name(&mut self, field: &'static str) -> Result<String, WireError> {
        let offset = self.offset();
        let name = self.text(field, MAX_NAME_BYTES)?;
        check_name(&name).map_err(|_| WireError::BadText {
            field,
            offset,
            max: MAX_NAME_BYTES,
        })?;
        Ok(name)
    }

    /// A length-prefixed byte string of 1 to `max` bytes.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, WireError> {
        let offset = self.offset();
        let len = self.varint(field)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| (1..=max).contains(&len))
            .ok_or(WireError::InvalidValue {
                field,
                offset,
                value: len,
            })?;
        Ok(self.take(field, len)?.to_vec())
    }

    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, WireError> {
        let offset = self.offset();
        let count = self.varint(field)?;
        usize::try_from(count)
            .ok()
            .filter(|&count| count <= max)
            .ok_or(WireError::InvalidValue {
                field,
                offset,
                value: count,
            })
    }

    fn peers(&mut self, field: &'static str) -> Result<Vec<YardPeer>, WireError> {
        let count = self.count(field, MAX_YARD_PEERS)?;
        let mut peers = Vec::with_capacity(count);
        for _ in 0..count {
            let peer = self.bytes(field, MAX_PEER_ID_BYTES)?;
            let addr_count = self.count(field, MAX_PEER_ADDRS)?;
            let mut addrs = Vec::with_capacity(addr_count);
            for _ in 0..addr_count {
                addrs.push(self.bytes(field, MAX_ADDR_BYTES)?);
            }
            let groups = self.varint(field)?;
            peers.push(YardPeer {
                peer,
                addrs,
                groups,
            });
        }
        Ok(peers)
    }

    fn groups(&mut self, field: &'static str) -> Result<ChunkGroupRanges, WireError> {
        let offset = self.offset();
        let claimed = self.varint(field)?;
        let count = usize::try_from(claimed)
            .ok()
            .filter(|&count| count <= MAX_RANGES)
            .ok_or(WireError::TooManyRanges {
                field,
                offset,
                count: claimed,
            })?;
        // Each range takes at least 2 bytes, so the allocation is also bounded by what the
        // frame actually holds.
        let left = self.bytes.len() - self.position;
        let mut boundaries = Vec::with_capacity(2 * count.min(left / 2));
        let mut previous_end = 0u64;
        for index in 0..count {
            let gap_offset = self.offset();
            let gap = self.varint(field)?;
            if index > 0 && gap == 0 {
                // Touching ranges would have been one range: not canonical.
                return Err(WireError::InvalidValue {
                    field,
                    offset: gap_offset,
                    value: gap,
                });
            }
            let len_offset = self.offset();
            let len = self.varint(field)?;
            if len == 0 {
                return Err(WireError::InvalidValue {
                    field,
                    offset: len_offset,
                    value: len,
                });
            }
            let start = previous_end.checked_add(gap).filter(|&s| s < MAX_GROUP);
            let end = start
                .and_then(|start| start.checked_add(len))
                .filter(|&e| e <= MAX_GROUP);
            let (Some(start), Some(end)) = (start, end) else {
                return Err(WireError::InvalidValue {
                    field,
                    offset: gap_offset,
                    value: previous_end.saturating_add(gap).saturating_add(len),
                });
            };
            boundaries.push(start);
            boundaries.push(end);
            previous_end = end;
        }
        // Gaps >= 1 and lengths >= 1 make the boundaries strictly increasing and even in number.
        ChunkGroupRanges::from_boundaries(&boundaries).ok_or(WireError::InvalidValue {
            field,
            offset,
            value: claimed,
        })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob() -> BlobId {
        BlobId::of(b"image")
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Report(Report {
                manifest: b"{\"signed\":{}}".to_vec(),
            }),
            Message::Report(Report {
                manifest: vec![0xff; MAX_REPORT_BYTES],
            }),
            Message::ReportTaken(ReportTaken { report: blob() }),
            Message::RevocationsQuery(RevocationsQuery { newer_than: 0 }),
            Message::RevocationsQuery(RevocationsQuery {
                newer_than: u64::MAX,
            }),
            Message::RevocationsOffer(RevocationsOffer {
                version: 0,
                length: 0,
            }),
            Message::RevocationsOffer(RevocationsOffer {
                version: 12,
                length: MAX_REVOCATIONS_BYTES,
            }),
            Message::Distrust(Distrust {
                blob: blob(),
                peer: vec![7; MAX_PEER_ID_BYTES],
            }),
            Message::PeersQuery(PeersQuery { blob: blob() }),
            Message::Peers(Peers {
                blob: blob(),
                peers: vec![],
            }),
            Message::Peers(Peers {
                blob: blob(),
                peers: (0..MAX_YARD_PEERS)
                    .map(|i| YardPeer {
                        peer: vec![i as u8; MAX_PEER_ID_BYTES],
                        addrs: vec![vec![0xab; MAX_ADDR_BYTES]; MAX_PEER_ADDRS],
                        groups: u64::MAX - i as u64,
                    })
                    .collect(),
            }),
            Message::Request(RangeRequest {
                request_id: 7,
                blob: blob(),
                groups: [0..4, 9..12].into_iter().collect(),
            }),
            Message::Response(RangeResponse {
                request_id: u64::MAX,
                groups: (0..1).into(),
            }),
            Message::Cancel(Cancel { request_id: 0 }),
            Message::HaveQuery(HaveQuery { blob: blob() }),
            Message::Have(Have {
                blob: blob(),
                size: Some(123_456_789),
                groups: ChunkGroupRanges::empty(),
            }),
            Message::Have(Have {
                blob: blob(),
                size: None,
                groups: (0..MAX_GROUP).into(),
            }),
            Message::HaveSubscribe(HaveQuery { blob: blob() }),
            Message::HaveMore(Have {
                blob: blob(),
                size: Some(1),
                groups: [5..6, 70..90].into_iter().collect(),
            }),
            Message::Error(ErrorMessage::new(Some(3), ErrorCode::NotHeld, "évicted")),
            Message::Error(ErrorMessage::new(None, ErrorCode::Unknown(999), "")),
            Message::NameQuery(NameQuery {
                name: "image/metadata/timestamp.json".into(),
            }),
            Message::Named(Named {
                name: "director/VIN 1/metadata/timestamp.json".into(),
                blob: blob(),
                size: 1234,
            }),
            Message::NameQuery(NameQuery {
                name: "é".repeat(MAX_NAME_BYTES / 2),
            }),
        ]
    }

    #[test]
    fn names_are_checked_both_ways() {
        for bad in [String::new(), "a\nb".into(), "x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(check_name(&bad).is_err(), "{bad:?}");
            assert!(matches!(
                Message::NameQuery(NameQuery { name: bad }).encode(),
                Err(EncodeError::BadName { .. })
            ));
        }
        // A name with a control character from a peer is refused at its field.
        let mut frame = vec![
            0,
            0,
            0,
            0,
            WIRE_VERSION,
            kind::NAME_QUERY,
            3,
            b'a',
            0x07,
            b'b',
        ];
        frame[0] = (frame.len() - LENGTH_PREFIX_BYTES) as u8;
        assert_eq!(
            Message::decode_frame(&frame),
            Err(WireError::BadText {
                field: "name",
                offset: 6,
                max: MAX_NAME_BYTES
            })
        );
        // An empty one too.
        let frame = [3, 0, 0, 0, WIRE_VERSION, kind::NAME_QUERY, 0];
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::BadText { field: "name", .. })
        ));
    }

    #[test]
    fn a_distrust_names_one_peer_of_1_to_64_bytes() {
        for length in [0, MAX_PEER_ID_BYTES + 1] {
            let message = Message::Distrust(Distrust {
                blob: BlobId::of(b"x"),
                peer: vec![1; length],
            });
            assert!(matches!(message.encode(), Err(EncodeError::BadPeer { .. })));
        }
        // A frame naming an empty identity is refused by field name.
        let mut frame = Message::Distrust(Distrust {
            blob: BlobId::of(b"x"),
            peer: vec![1],
        })
        .encode()
        .unwrap();
        let at = frame.len() - 2;
        frame[at] = 0;
        frame.pop();
        let length = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES).unwrap();
        frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::InvalidValue {
                field: "peer",
                value: 0,
                ..
            })
        ));
    }

    #[test]
    fn reports_over_the_limits_are_refused_both_ways() {
        for length in [0, MAX_REPORT_BYTES + 1] {
            let message = Message::Report(Report {
                manifest: vec![b'x'; length],
            });
            assert!(matches!(
                message.encode(),
                Err(EncodeError::BadReport { length: l }) if l == length
            ));
        }
        // A frame claiming one byte more than allowed is refused by name, before the bytes.
        let mut frame = Message::Report(Report {
            manifest: vec![b'x'; 100],
        })
        .encode()
        .unwrap();
        let body = LENGTH_PREFIX_BYTES + 2;
        assert_eq!(frame[body], 100);
        let mut claim = Vec::new();
        put_varint(&mut claim, MAX_REPORT_BYTES as u64 + 1);
        frame.splice(body..=body, claim);
        let length = u32::try_from(frame.len() - LENGTH_PREFIX_BYTES).unwrap();
        frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
        let error = Message::decode_frame(&frame).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::InvalidValue {
                    field: "manifest",
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_revocations_offer_over_the_limit_is_refused_both_ways() {
        let over = Message::RevocationsOffer(RevocationsOffer {
            version: 3,
            length: MAX_REVOCATIONS_BYTES + 1,
        });
        assert_eq!(
            over.encode(),
            Err(EncodeError::RevocationsTooLong {
                length: MAX_REVOCATIONS_BYTES + 1
            })
        );
        // A frame announcing one byte more than allowed is refused at its `length` field.
        let mut frame = vec![0, 0, 0, 0, WIRE_VERSION, kind::REVOCATIONS_OFFER, 3];
        put_varint(&mut frame, MAX_REVOCATIONS_BYTES + 1);
        frame[0] = (frame.len() - LENGTH_PREFIX_BYTES) as u8;
        let error = Message::decode_frame(&frame).unwrap_err();
        assert_eq!(
            error,
            WireError::InvalidValue {
                field: "length",
                offset: 7,
                value: MAX_REVOCATIONS_BYTES + 1
            }
        );
        assert!(error.to_string().contains("`length` at byte 7"), "{error}");
    }

    #[test]
    fn peers_answers_over_the_limits_are_refused_both_ways() {
        let entry = YardPeer {
            peer: vec![1; 38],
            addrs: vec![vec![2; 20]],
            groups: 5,
        };
        let too_many = Message::Peers(Peers {
            blob: blob(),
            peers: vec![entry.clone(); MAX_YARD_PEERS + 1],
        });
        assert!(matches!(
            too_many.encode(),
            Err(EncodeError::TooManyPeers { .. })
        ));
        for bad in [
            YardPeer {
                peer: vec![],
                ..entry.clone()
            },
            YardPeer {
                addrs: vec![vec![2; MAX_ADDR_BYTES + 1]],
                ..entry.clone()
            },
            YardPeer {
                addrs: vec![vec![2; 4]; MAX_PEER_ADDRS + 1],
                ..entry.clone()
            },
        ] {
            let message = Message::Peers(Peers {
                blob: blob(),
                peers: vec![bad],
            });
            assert!(matches!(message.encode(), Err(EncodeError::BadPeer { .. })));
        }
        // A frame claiming 65 peers is refused before anything is allocated for them.
        let mut frame = Message::Peers(Peers {
            blob: blob(),
            peers: vec![],
        })
        .encode()
        .unwrap();
        let last = frame.len() - 1;
        frame[last] = (MAX_YARD_PEERS + 1) as u8;
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::InvalidValue { field: "peers", .. })
        ));
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let frame = message.encode().unwrap();
            let (decoded, used) = Message::decode_frame(&frame).unwrap().unwrap();
            assert_eq!(decoded, message);
            assert_eq!(used, frame.len());
            // Every proper prefix is "read more", never an error or a panic.
            for cut in 0..frame.len() {
                assert_eq!(Message::decode_frame(&frame[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn errors_name_the_field_and_offset() {
        let frame = Message::Request(RangeRequest {
            request_id: 1,
            blob: blob(),
            groups: (2..5).into(),
        })
        .encode()
        .unwrap();
        // Shorten the length prefix by one so the frame ends inside the groups.
        let mut short = frame.clone();
        short[0] -= 1;
        assert_eq!(
            Message::decode_frame(&short[..frame.len() - 1]),
            Err(WireError::Truncated {
                field: "groups",
                offset: frame.len() - 1
            })
        );
        let mut bad_version = frame.clone();
        bad_version[4] = 2;
        assert_eq!(
            Message::decode_frame(&bad_version),
            Err(WireError::UnsupportedVersion { found: 2 })
        );
        let mut bad_kind = frame.clone();
        bad_kind[5] = 99;
        assert_eq!(
            Message::decode_frame(&bad_kind),
            Err(WireError::UnknownKind { kind: 99 })
        );
        let mut too_large = frame.clone();
        too_large[..4].copy_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_le_bytes());
        assert!(matches!(
            Message::decode_frame(&too_large),
            Err(WireError::FrameTooLarge { .. })
        ));
        let mut trailing = frame.clone();
        trailing.push(0);
        trailing[0] += 1;
        assert_eq!(
            Message::decode_frame(&trailing),
            Err(WireError::TrailingBytes {
                offset: frame.len(),
                count: 1
            })
        );
        assert!(
            WireError::Truncated {
                field: "groups",
                offset: 44
            }
            .to_string()
            .contains("`groups` at byte 44")
        );
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        // Request id 1 written as the two-byte varint 0x81 0x00.
        let mut frame = vec![0, 0, 0, 0, WIRE_VERSION, kind::CANCEL, 0x81, 0x00];
        frame[0] = 4;
        assert_eq!(
            Message::decode_frame(&frame),
            Err(WireError::BadVarint {
                field: "request_id",
                offset: 6
            })
        );
        // Two touching ranges (gap 0) in a response.
        let frame = [8, 0, 0, 0, WIRE_VERSION, kind::RESPONSE, 1, 2, 0, 1, 0, 1];
        assert_eq!(
            Message::decode_frame(&frame),
            Err(WireError::InvalidValue {
                field: "groups",
                offset: 10,
                value: 0
            })
        );
        // An eleven-byte varint.
        let mut frame = vec![13, 0, 0, 0, WIRE_VERSION, kind::CANCEL];
        frame.extend([0xff; 10]);
        frame.push(0x01);
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::BadVarint { .. })
        ));
    }

    #[test]
    fn limits_hold_on_encode_and_decode() {
        let many: ChunkGroupRanges = (0..=MAX_RANGES as u64).map(|i| 2 * i..2 * i + 1).collect();
        let have = Message::Have(Have {
            blob: blob(),
            size: None,
            groups: many.clone(),
        });
        assert_eq!(
            have.encode(),
            Err(EncodeError::TooManyRanges {
                count: MAX_RANGES + 1
            })
        );
        // The most fragmented set allowed fits in one frame.
        let most: ChunkGroupRanges = many.iter().take(MAX_RANGES).collect();
        let frame = Message::Have(Have {
            blob: blob(),
            size: Some(u64::MAX),
            groups: most,
        })
        .encode()
        .unwrap();
        assert!(frame.len() - LENGTH_PREFIX_BYTES <= MAX_MESSAGE_BYTES);
        assert!(Message::decode_frame(&frame).unwrap().is_some());
        // A count above the limit is refused before anything is read or allocated.
        let mut frame = vec![0, 0, 0, 0, WIRE_VERSION, kind::RESPONSE, 0];
        put_varint(&mut frame, u64::MAX >> 1);
        frame[0] = (frame.len() - 4) as u8;
        assert!(matches!(
            Message::decode_frame(&frame),
            Err(WireError::TooManyRanges { .. })
        ));
        assert_eq!(
            Message::Error(ErrorMessage {
                request_id: None,
                code: ErrorCode::Busy,
                detail: "x".repeat(MAX_DETAIL_BYTES + 1)
            })
            .encode(),
            Err(EncodeError::DetailTooLong {
                length: MAX_DETAIL_BYTES + 1
            })
        );
        assert_eq!(
            ErrorMessage::new(None, ErrorCode::Busy, &"é".repeat(200))
                .detail
                .len(),
            256
        );
        assert_eq!(
            Message::Response(RangeResponse {
                request_id: 0,
                groups: (0..MAX_GROUP + 1).into()
            })
            .encode(),
            Err(EncodeError::GroupTooHigh {
                group: MAX_GROUP + 1
            })
        );
    }

    fn groups_strategy() -> impl Strategy<Value = ChunkGroupRanges> {
        proptest::collection::vec((0u64..MAX_GROUP, 1u64..1000), 0..50).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(s, l)| s..(s + l).min(MAX_GROUP))
                .collect()
        })
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        let blob = any::<[u8; 32]>().prop_map(BlobId::from_bytes);
        prop_oneof![
            (any::<u64>(), blob.clone(), groups_strategy()).prop_map(
                |(request_id, blob, groups)| {
                    Message::Request(RangeRequest {
                        request_id,
                        blob,
                        groups,
                    })
                }
            ),
            (any::<u64>(), groups_strategy()).prop_map(|(request_id, groups)| Message::Response(
                RangeResponse { request_id, groups }
            )),
            any::<u64>().prop_map(|request_id| Message::Cancel(Cancel { request_id })),
            blob.clone()
                .prop_map(|blob| Message::HaveQuery(HaveQuery { blob })),
            blob.clone()
                .prop_map(|blob| Message::HaveSubscribe(HaveQuery { blob })),
            (blob.clone(), any::<Option<u64>>(), groups_strategy())
                .prop_map(|(blob, size, groups)| Message::Have(Have { blob, size, groups })),
            (blob.clone(), any::<Option<u64>>(), groups_strategy())
                .prop_map(|(blob, size, groups)| Message::HaveMore(Have { blob, size, groups })),
            "[a-z/.0-9]{1,80}".prop_map(|name| Message::NameQuery(NameQuery { name })),
            blob.clone()
                .prop_map(|blob| Message::PeersQuery(PeersQuery { blob })),
            proptest::collection::vec(any::<u8>(), 1..2048)
                .prop_map(|manifest| Message::Report(Report { manifest })),
            blob.clone()
                .prop_map(|report| Message::ReportTaken(ReportTaken { report })),
            any::<u64>()
                .prop_map(|newer_than| Message::RevocationsQuery(RevocationsQuery { newer_than })),
            (any::<u64>(), 0..=MAX_REVOCATIONS_BYTES).prop_map(|(version, length)| {
                Message::RevocationsOffer(RevocationsOffer { version, length })
            }),
            (
                blob.clone(),
                proptest::collection::vec(any::<u8>(), 1..=MAX_PEER_ID_BYTES)
            )
                .prop_map(|(blob, peer)| Message::Distrust(Distrust { blob, peer })),
            (
                blob.clone(),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(any::<u8>(), 1..=MAX_PEER_ID_BYTES),
                        proptest::collection::vec(
                            proptest::collection::vec(any::<u8>(), 1..=MAX_ADDR_BYTES),
                            0..=MAX_PEER_ADDRS
                        ),
                        any::<u64>()
                    ),
                    0..6
                )
            )
                .prop_map(|(blob, peers)| Message::Peers(Peers {
                    blob,
                    peers: peers
                        .into_iter()
                        .map(|(peer, addrs, groups)| YardPeer {
                            peer,
                            addrs,
                            groups
                        })
                        .collect(),
                })),
            ("[^\\p{Cc}]{1,80}", any::<[u8; 32]>(), any::<u64>()).prop_map(|(name, blob, size)| {
                Message::Named(Named {
                    name,
                    blob: BlobId::from_bytes(blob),
                    size,
                })
            }),
            (any::<Option<u64>>(), any::<u16>(), ".{0,80}").prop_map(
                |(request_id, code, detail)| {
                    Message::Error(ErrorMessage::new(
                        request_id,
                        ErrorCode::from_wire(code),
                        &detail,
                    ))
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_messages_round_trip(message in message_strategy()) {
            let frame = message.encode().unwrap();
            let (decoded, used) = Message::decode_frame(&frame).unwrap().unwrap();
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(decoded, message);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_valid_ones_are_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(Some((message, used))) = Message::decode_frame(&bytes) {
                prop_assert_eq!(message.encode().unwrap(), bytes[..used].to_vec());
            }
        }
    }
}
