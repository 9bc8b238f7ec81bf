//! Bao verified streaming with chunk groups: outboards, encoding of requested ranges, and a
//! sans-IO verifier that checks every chunk group against the blob's root before it is handed on.
//!
//! # Layout
//!
//! A blob's bao tree has BLAKE3's 1 KiB chunks as leaves. Storing and sending every parent pair
//! costs 64 bytes per KiB (6.25 %), so depotmesh groups 16 chunks into a **chunk group** of
//! 16 KiB ([`Layout::MESH`]): only parents above the groups are stored and sent (64 bytes per
//! 16 KiB, 0.39 %), and a group is the smallest unit that can be requested, verified and held.
//! The root is the same at any group size: it is the blob's BLAKE3 hash.
//! [`Layout::BAO_STANDARD`] (1 KiB groups) is the original bao format, kept for interoperability
//! and for checking against bao's official test vectors.
//!
//! # Response format
//!
//! A response to a request for a set of groups is the bao "slice" format: the blob size as an
//! 8-byte little-endian integer, then, in pre-order, each parent pair (64 bytes) on the path to a
//! requested group and the group's bytes. Requests past the end of the blob are answered with the
//! blob's last group, which is what proves the size. For a whole blob this is exactly the standard
//! combined bao encoding.
//!
//! The size in the header is a claim: it is checked against the size the caller expects (from
//! signed metadata, or an upper bound) and is proven only when the response covers the last group.

use std::io::{self, Read, Write};
use std::ops::Range;

use bao_tree::io::sync::{Outboard as BaoOutboard, OutboardMut, truncate_ranges};
use bao_tree::iter::{BaoChunk, ResponseIter};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges, TreeNode};

use crate::{BlobId, ChunkGroup, ChunkGroupRanges, ReadAhead, ReadAt};

/// Bytes in one BLAKE3 chunk, the leaf of every bao tree.
const CHUNK_BYTES: u64 = 1024;
/// Bytes of one parent pair in an outboard or a response.
pub const PARENT_PAIR_BYTES: usize = 64;
/// Bytes of the size header that starts every response.
pub const SIZE_HEADER_BYTES: usize = 8;
/// The largest blob depotmesh handles (4 TiB). Bounds every size claimed by a peer.
pub const MAX_BLOB_SIZE: u64 = 1 << 42;

/// The chunk-group size of a bao tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    block: BlockSize,
}

impl Layout {
    /// 16 KiB chunk groups: what every depotmesh node stores and sends.
    pub const MESH: Self = Self::with_chunk_log(4);
    /// 1 KiB chunk groups: the original bao format.
    pub const BAO_STANDARD: Self = Self::with_chunk_log(0);

    /// A layout with groups of `2^chunk_log` chunks.
    pub const fn with_chunk_log(chunk_log: u8) -> Self {
        Self {
            block: BlockSize::from_chunk_log(chunk_log),
        }
    }

    /// log2 of the number of 1 KiB chunks in a group.
    pub const fn chunk_log(self) -> u8 {
        self.block.chunk_log()
    }

    /// Bytes in a full chunk group.
    pub const fn group_bytes(self) -> u64 {
        CHUNK_BYTES << self.chunk_log()
    }

    /// The number of groups of a blob of `size` bytes. An empty blob has one, empty, group.
    pub const fn group_count(self, size: u64) -> u64 {
        let groups = size.div_ceil(self.group_bytes());
        if groups == 0 { 1 } else { groups }
    }

    /// Every group of a blob of `size` bytes.
    pub fn all_groups(self, size: u64) -> ChunkGroupRanges {
        ChunkGroupRanges::from_range(0..self.group_count(size))
    }

    /// The bytes of the blob that `group` covers, for a blob of `size` bytes.
    pub fn group_byte_range(self, group: ChunkGroup, size: u64) -> Range<u64> {
        let start = group.0.saturating_mul(self.group_bytes()).min(size);
        let end = start.saturating_add(self.group_bytes()).min(size);
        start..end
    }

    /// The groups that hold the bytes `start .. start + len`. A zero-length range still names the
    /// group holding `start`, so a reader can seek to it.
    pub fn groups_for_bytes(self, start: u64, len: u64) -> ChunkGroupRanges {
        let first = start / self.group_bytes();
        let end = start
            .saturating_add(len)
            .div_ceil(self.group_bytes())
            .max(first + 1);
        ChunkGroupRanges::from_range(first..end)
    }

    /// Bytes of the outboard (every stored parent pair, no header) of a blob of `size` bytes.
    pub fn outboard_size(self, size: u64) -> u64 {
        self.tree(size).outboard_size()
    }

    /// Bytes of a response to a request for `groups` of a blob of `size` bytes, header included.
    pub fn response_size(self, size: u64, groups: &ChunkGroupRanges) -> u64 {
        let items = ResponseIter::new(self.tree(size), self.chunk_ranges(groups, size));
        let body: u64 = items
            .map(|item| match item {
                BaoChunk::Parent { .. } => PARENT_PAIR_BYTES as u64,
                BaoChunk::Leaf { size, .. } => size as u64,
            })
            .sum();
        SIZE_HEADER_BYTES as u64 + body
    }

    fn tree(self, size: u64) -> BaoTree {
        BaoTree::new(size, self.block)
    }

    /// Group ranges as bao-tree chunk ranges, truncated to the blob the way both ends of a
    /// transfer must agree on: anything past the end becomes the last group.
    fn chunk_ranges(self, groups: &ChunkGroupRanges, size: u64) -> ChunkRanges {
        let shift = u32::from(self.chunk_log());
        let boundaries: Vec<ChunkNum> = groups
            .boundaries()
            .iter()
            .map(|&group| ChunkNum(group.checked_shl(shift).unwrap_or(u64::MAX)))
            .collect();
        let Some(ranges) = ChunkRanges::new(boundaries.iter().copied().collect()) else {
            // Shifting keeps boundaries increasing unless they saturate at u64::MAX; such a
            // range is past the end of any blob anyway, so ask for "the end".
            return ChunkRanges::from(ChunkNum(u64::MAX - 1)..ChunkNum(u64::MAX));
        };
        let truncated = truncate_ranges(&ranges, size);
        ChunkRanges::new(truncated.boundaries().iter().copied().collect()).unwrap_or_default()
    }

    /// Where `node`'s parent pair sits in the pre-order outboard of a blob of `size` bytes, in
    /// bytes; `None` for pairs inside a chunk group, which outboards do not keep.
    fn pair_offset(self, size: u64, node: TreeNode) -> Option<u64> {
        self.tree(size)
            .pre_order_offset(node)
            .map(|slot| slot * PARENT_PAIR_BYTES as u64)
    }

    /// The group that the chunk `chunk` lies in.
    fn group_of_chunk(self, chunk: ChunkNum) -> ChunkGroup {
        ChunkGroup(chunk.0 >> self.chunk_log())
    }

    /// The groups below `node`, clipped to the blob.
    fn groups_below(self, node: TreeNode, size: u64) -> Range<u64> {
        // bao-tree numbers nodes in units of chunk groups, so the node's "chunk" range is a
        // range of groups.
        let range = node.chunk_range();
        let count = self.group_count(size);
        range.start.0.min(count)..range.end.0.min(count)
    }
}

/// A blob's outboard: its size, its root, and the parent pairs above its chunk groups, in
/// pre-order (bao's outboard layout without bao's 8-byte size prefix).
///
/// `D` is where the pairs live: a `Vec<u8>` in memory, or a file for large blobs.
#[derive(Clone, Debug)]
pub struct Outboard<D = Vec<u8>> {
    id: BlobId,
    size: u64,
    layout: Layout,
    data: D,
}

/// Why an outboard could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboardError {
    /// The blob is larger than [`MAX_BLOB_SIZE`].
    #[error("blob of {size} bytes is larger than the limit of {MAX_BLOB_SIZE} bytes")]
    TooLarge {
        /// The size given.
        size: u64,
    },
    /// Reading the blob failed, or it ended before `size` bytes.
    #[error("reading the blob failed")]
    Io(#[from] io::Error),
}

impl Outboard<Vec<u8>> {
    /// The outboard of `data`, built in memory.
    pub fn create(data: &[u8], layout: Layout) -> Self {
        let size = data.len() as u64;
        let mut pairs = PairsInMemory::new(layout.tree(size));
        // Reading from a slice cannot fail and `data.len()` bytes are there, so the only
        // possible error would be a broken invariant of bao-tree.
        #[allow(clippy::expect_used)]
        let root = bao_tree::io::sync::outboard(data, layout.tree(size), &mut pairs)
            .expect("hashing an in-memory slice of the stated length cannot fail");
        Self::from_parts(root.into(), size, layout, pairs.bytes)
    }

    /// The outboard of the `size` bytes that `reader` yields, reading them once, sequentially.
    /// Memory use is the outboard (0.39 % of `size` at 16 KiB groups) plus one group.
    pub fn create_from_reader(
        reader: impl Read,
        size: u64,
        layout: Layout,
    ) -> Result<Self, OutboardError> {
        if size > MAX_BLOB_SIZE {
            return Err(OutboardError::TooLarge { size });
        }
        let mut pairs = PairsInMemory::new(layout.tree(size));
        let root = bao_tree::io::sync::outboard(reader, layout.tree(size), &mut pairs)?;
        Ok(Self::from_parts(root.into(), size, layout, pairs.bytes))
    }
}

impl<D> Outboard<D> {
    /// An outboard from its parts, e.g. pairs read back from a file. The pairs are not checked
    /// here; encoding from them checks every pair it sends.
    pub const fn from_parts(id: BlobId, size: u64, layout: Layout, data: D) -> Self {
        Self {
            id,
            size,
            layout,
            data,
        }
    }

    /// The blob's id (its root hash).
    pub const fn id(&self) -> BlobId {
        self.id
    }

    /// The blob's size in bytes.
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The chunk-group layout.
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    /// The parent pairs, in pre-order.
    pub const fn data(&self) -> &D {
        &self.data
    }

    /// The parent pairs, giving up the rest.
    pub fn into_data(self) -> D {
        self.data
    }
}

impl<D: ReadAt> BaoOutboard for Outboard<D> {
    fn root(&self) -> blake3::Hash {
        self.id.to_hash()
    }

    fn tree(&self) -> BaoTree {
        self.layout.tree(self.size)
    }

    fn load(&self, node: TreeNode) -> io::Result<Option<(blake3::Hash, blake3::Hash)>> {
        let Some(offset) = self.layout.tree(self.size).pre_order_offset(node) else {
            return Ok(None);
        };
        let mut pair = [0u8; PARENT_PAIR_BYTES];
        self.data
            .read_exact_at(offset * PARENT_PAIR_BYTES as u64, &mut pair)?;
        Ok(Some(split_pair(&pair)))
    }
}

/// Collects the pairs bao-tree computes while hashing a blob, each at its pre-order slot.
struct PairsInMemory {
    tree: BaoTree,
    bytes: Vec<u8>,
}

impl PairsInMemory {
    fn new(tree: BaoTree) -> Self {
        let len = usize::try_from(tree.outboard_size()).unwrap_or(0);
        Self {
            tree,
            bytes: vec![0; len],
        }
    }
}

impl OutboardMut for &mut PairsInMemory {
    fn save(&mut self, node: TreeNode, pair: &(blake3::Hash, blake3::Hash)) -> io::Result<()> {
        // Nodes inside a chunk group have no slot in the outboard; they are dropped by design.
        let Some(slot) = self.tree.pre_order_offset(node) else {
            return Ok(());
        };
        let start = usize::try_from(slot)
            .ok()
            .and_then(|slot| slot.checked_mul(PARENT_PAIR_BYTES))
            .filter(|start| start + PARENT_PAIR_BYTES <= self.bytes.len())
            .ok_or_else(|| io::Error::other(format!("outboard has no slot for node {node:?}")))?;
        self.bytes[start..start + 32].copy_from_slice(pair.0.as_bytes());
        self.bytes[start + 32..start + PARENT_PAIR_BYTES].copy_from_slice(pair.1.as_bytes());
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn split_pair(pair: &[u8; PARENT_PAIR_BYTES]) -> (blake3::Hash, blake3::Hash) {
    let mut left = [0u8; 32];
    let mut right = [0u8; 32];
    left.copy_from_slice(&pair[..32]);
    right.copy_from_slice(&pair[32..]);
    (blake3::Hash::from(left), blake3::Hash::from(right))
}

/// Why a response could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Our own copy of the blob does not match its root: it is not sent. The store must drop
    /// these groups and fetch them again.
    #[error("local copy of blob {blob} is corrupt in chunk groups {}..{} and was not sent", .groups.start, .groups.end)]
    LocalCorruption {
        /// The blob.
        blob: BlobId,
        /// The groups whose data or proof failed.
        groups: Range<u64>,
    },
    /// Reading the local copy or writing the response failed.
    #[error("encoding a response for blob {blob} failed")]
    Io {
        /// The blob.
        blob: BlobId,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// Writes the response for `groups` of a blob: the size header, then every parent pair and group
/// on the way, each checked against the root before it is written, so a corrupt local copy is
/// never sent. Returns the number of bytes written.
///
/// `data` must hold the requested groups and `outboard` the pairs above them; a partial blob can
/// serve the groups it holds. A server builds responses with [`encode_ranges_into`] instead,
/// which reads straight into a reused buffer.
pub fn encode_ranges<D: ReadAt, O: ReadAt, W: Write>(
    data: D,
    outboard: &Outboard<O>,
    groups: &ChunkGroupRanges,
    mut out: W,
) -> Result<u64, EncodeError> {
    let mut body = ResponseBody::default();
    let written = encode_ranges_into(data, outboard, groups, &mut body)?;
    out.write_all(body.bytes())
        .map_err(|source| EncodeError::Io {
            blob: outboard.id(),
            source,
        })?;
    Ok(written)
}

/// Appends the response for `groups` of a blob to `body`, as [`encode_ranges`] writes it: each
/// item is read from `data` or `outboard` straight into its place in the body and checked there
/// with the same [`RangeVerifier`] a receiver runs, so nothing is copied twice and a corrupt
/// local copy is never sent. On an error the body is left as it was. Returns the bytes appended.
pub fn encode_ranges_into<D: ReadAt, O: ReadAt>(
    data: D,
    outboard: &Outboard<O>,
    groups: &ChunkGroupRanges,
    body: &mut ResponseBody,
) -> Result<u64, EncodeError> {
    let blob = outboard.id();
    let layout = outboard.layout();
    let size = outboard.size();
    let before = body.len;
    // The pairs of a run of groups lie together in the pre-order outboard, after their
    // ancestors': read it a few pages at a time. Groups are read one at a time, into place.
    let pairs = ReadAhead::new(
        &outboard.data,
        layout.outboard_size(size),
        OUTBOARD_READ_AHEAD,
    );
    let mut verifier = RangeVerifier::new(blob, layout, size, groups);
    body.reserve(usize::try_from(layout.response_size(size, groups)).unwrap_or(0));
    body.append(SIZE_HEADER_BYTES)
        .copy_from_slice(&size.to_le_bytes());
    let encoded = (|| {
        while let Some(owed) = verifier.owed() {
            let at = body.len;
            match owed {
                Owed::Proof {
                    outboard_offset: Some(offset),
                    ..
                } => pairs.read_exact_at(offset, body.append(PARENT_PAIR_BYTES)),
                Owed::Proof {
                    outboard_offset: None,
                    groups,
                } => Err(io::Error::other(format!(
                    "the outboard keeps no pair for chunk groups {}..{}",
                    groups.start, groups.end
                ))),
                Owed::Group { offset, len, .. } => data.read_exact_at(offset, body.append(len)),
            }
            .map_err(|source| EncodeError::Io { blob, source })?;
            let item = body.bytes.get(at..body.len).unwrap_or_default();
            verifier
                .verify_next(item)
                .map_err(|error| match error.failed_groups() {
                    Some(groups) => EncodeError::LocalCorruption { blob, groups },
                    None => EncodeError::Io {
                        blob,
                        source: io::Error::other(error.to_string()),
                    },
                })?;
        }
        Ok(())
    })();
    match encoded {
        Ok(()) => Ok((body.len - before) as u64),
        Err(error) => {
            body.len = before;
            Err(error)
        }
    }
}

/// A response body being built, kept from one response to the next: its buffer grows to the
/// largest response and is then filled in place, never zeroed or moved again.
#[derive(Debug, Default)]
pub struct ResponseBody {
    bytes: Vec<u8>,
    len: usize,
}

impl ResponseBody {
    /// The body so far.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// Empties the body, keeping its buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Bytes the buffer has room for, used or not.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Makes room for `additional` more bytes at once, so that filling them moves nothing.
    fn reserve(&mut self, additional: usize) {
        let wanted = self.len.saturating_add(additional);
        if let Some(more) = wanted.checked_sub(self.bytes.len()) {
            self.bytes.reserve_exact(more);
        }
    }

    /// The next `n` bytes of the body, to be filled by the caller.
    fn append(&mut self, n: usize) -> &mut [u8] {
        let end = self.len.saturating_add(n);
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        let start = self.len;
        self.len = end;
        self.bytes.get_mut(start..end).unwrap_or_default()
    }
}

/// How much of an outboard [`encode_ranges_into`] reads at once: the pairs of a run of groups lie
/// together in the pre-order outboard, after their ancestors'.
const OUTBOARD_READ_AHEAD: usize = 4096;

/// What the caller knows of a blob's size before a response arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedSize {
    /// The size is known from signed metadata: the response must claim exactly this.
    Exactly(u64),
    /// The size is not known; the response may claim any size up to this bound. The claim is
    /// proven only if the response covers the blob's last group.
    AtMost(u64),
}

/// Why a response failed verification. Every variant names where it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A group's bytes do not hash to what the tree says.
    #[error("{group} (bytes {offset}..) of blob {blob} does not match its bao tree")]
    ChunkGroupMismatch {
        /// The blob.
        blob: BlobId,
        /// The group that failed.
        group: ChunkGroup,
        /// Its first byte in the blob.
        offset: u64,
    },
    /// A parent pair does not hash to its parent: the proof for these groups is wrong.
    #[error("proof for chunk groups {}..{} of blob {blob} does not match its root (tree level {level})", .groups.start, .groups.end)]
    ProofMismatch {
        /// The blob.
        blob: BlobId,
        /// The groups that this pair proves.
        groups: Range<u64>,
        /// The pair's level in the tree (0 just above the groups).
        level: u32,
    },
    /// The response ended before an item it owed.
    #[error("response for blob {blob} ended before {missing}")]
    Truncated {
        /// The blob.
        blob: BlobId,
        /// What was still owed: a group or a proof.
        missing: Missing,
    },
    /// The response claims a size other than the one signed metadata gives.
    #[error("response for blob {blob} claims {claimed} bytes, metadata says {expected}")]
    SizeMismatch {
        /// The blob.
        blob: BlobId,
        /// The size the caller knows.
        expected: u64,
        /// The size in the response header.
        claimed: u64,
    },
    /// The response claims a size above the caller's bound.
    #[error("response for blob {blob} claims {claimed} bytes, above the limit of {limit}")]
    SizeTooLarge {
        /// The blob.
        blob: BlobId,
        /// The size in the response header.
        claimed: u64,
        /// The bound.
        limit: u64,
    },
    /// An item was handed over with the wrong length (a bug in the caller, not the peer).
    #[error("item for blob {blob} has {got} bytes, {expected} were expected")]
    ItemLength {
        /// The blob.
        blob: BlobId,
        /// The length the verifier asked for.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Nothing more is owed: the response is complete, or it already failed.
    #[error("response for blob {blob} has no further item")]
    Finished {
        /// The blob.
        blob: BlobId,
    },
    /// Reading the response failed.
    #[error("reading the response for blob {blob} failed")]
    Io {
        /// The blob.
        blob: BlobId,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

impl VerifyError {
    /// The groups this failure condemns, when it is the peer's data or proof that was wrong.
    pub fn failed_groups(&self) -> Option<Range<u64>> {
        match self {
            Self::ChunkGroupMismatch { group, .. } => Some(group.0..group.0 + 1),
            Self::ProofMismatch { groups, .. } => Some(groups.clone()),
            _ => None,
        }
    }

    /// True when the peer sent something provably wrong (as opposed to stopping early or a local
    /// failure): the peer must not be asked again for this blob.
    pub fn is_peer_misbehaviour(&self) -> bool {
        matches!(
            self,
            Self::ChunkGroupMismatch { .. }
                | Self::ProofMismatch { .. }
                | Self::SizeMismatch { .. }
                | Self::SizeTooLarge { .. }
        )
    }
}

/// An item owed by a response that had not arrived when it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Missing {
    /// The size header.
    SizeHeader,
    /// The proof for these groups.
    Proof(Range<u64>),
    /// This group's bytes.
    Group(ChunkGroup),
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SizeHeader => f.write_str("the size header"),
            Self::Proof(groups) => write!(
                f,
                "the proof for chunk groups {}..{}",
                groups.start, groups.end
            ),
            Self::Group(group) => write!(f, "{group}"),
        }
    }
}

/// The next item a [`RangeVerifier`] expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owed {
    /// A parent pair proving these groups, kept at this byte offset of the outboard (`None`
    /// for pairs inside a chunk group, which outboards do not keep).
    Proof {
        /// The groups the pair proves.
        groups: Range<u64>,
        /// Where the pair sits in the blob's pre-order outboard.
        outboard_offset: Option<u64>,
    },
    /// A group's bytes.
    Group {
        /// The group.
        group: ChunkGroup,
        /// Its first byte in the blob.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

/// Reads the size header of a response and checks it against what the caller expects.
pub fn check_size_header(
    blob: BlobId,
    header: [u8; SIZE_HEADER_BYTES],
    expected: ExpectedSize,
) -> Result<u64, VerifyError> {
    let claimed = u64::from_le_bytes(header);
    match expected {
        ExpectedSize::Exactly(expected) if claimed != expected => Err(VerifyError::SizeMismatch {
            blob,
            expected,
            claimed,
        }),
        ExpectedSize::AtMost(limit) if claimed > limit.min(MAX_BLOB_SIZE) => {
            Err(VerifyError::SizeTooLarge {
                blob,
                claimed,
                limit: limit.min(MAX_BLOB_SIZE),
            })
        }
        _ => Ok(claimed),
    }
}

/// An item of a response that has been checked against the root. Only [`RangeVerifier`] makes
/// these, so code that takes one (a store writing a group, say) knows it was verified.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified<'a> {
    /// A parent pair on the path to requested groups; stores keep it in the blob's outboard.
    Proof(VerifiedProof),
    /// A chunk group's bytes.
    Group(VerifiedGroup<'a>),
}

/// A parent pair that hashed to its verified parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    node: TreeNode,
    pair: (blake3::Hash, blake3::Hash),
    outboard_offset: Option<u64>,
}

impl VerifiedProof {
    /// The tree node the pair belongs to.
    pub fn node(&self) -> TreeNode {
        self.node
    }

    /// The pair: left and right child hashes.
    pub fn pair(&self) -> (blake3::Hash, blake3::Hash) {
        self.pair
    }

    /// The pair as the 64 bytes an outboard stores.
    pub fn pair_bytes(&self) -> [u8; PARENT_PAIR_BYTES] {
        let mut bytes = [0u8; PARENT_PAIR_BYTES];
        bytes[..32].copy_from_slice(self.pair.0.as_bytes());
        bytes[32..].copy_from_slice(self.pair.1.as_bytes());
        bytes
    }

    /// Where the pair goes in the blob's pre-order outboard, in bytes; `None` for a pair inside
    /// a chunk group, which outboards do not keep.
    pub fn outboard_offset(&self) -> Option<u64> {
        self.outboard_offset
    }
}

/// A chunk group's bytes that hashed to what the tree says.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedGroup<'a> {
    group: ChunkGroup,
    offset: u64,
    data: &'a [u8],
}

impl<'a> VerifiedGroup<'a> {
    /// The group.
    pub fn group(&self) -> ChunkGroup {
        self.group
    }

    /// Its first byte in the blob.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Its bytes (a full group, or the tail of the blob).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

/// The sans-IO verifier of one response: it says how many bytes the next item takes
/// ([`next_item_len`](Self::next_item_len)) and checks each item against the root
/// ([`verify_next`](Self::verify_next)) before the caller may keep it. After the first failure it
/// owes nothing more.
#[derive(Debug)]
pub struct RangeVerifier {
    blob: BlobId,
    layout: Layout,
    size: u64,
    items: ResponseIter,
    /// Hashes still to be matched, innermost last: pushed when a parent is verified, popped by
    /// the item below it.
    pending_hashes: Vec<blake3::Hash>,
    next: Option<BaoChunk>,
    done: bool,
}

impl RangeVerifier {
    /// A verifier for the response to a request for `groups` of `blob`, whose size header
    /// (already checked with [`check_size_header`]) said `size`.
    pub fn new(blob: BlobId, layout: Layout, size: u64, groups: &ChunkGroupRanges) -> Self {
        let ranges = layout.chunk_ranges(groups, size);
        let mut items = ResponseIter::new(layout.tree(size), ranges);
        let next = items.next();
        Self {
            blob,
            layout,
            size,
            items,
            pending_hashes: vec![blob.to_hash()],
            done: next.is_none(),
            next,
        }
    }

    /// The blob's size, as claimed by the header.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of the next item, or `None` when the response is complete or has failed.
    pub fn next_item_len(&self) -> Option<usize> {
        Some(match self.owed()? {
            Owed::Proof { .. } => PARENT_PAIR_BYTES,
            Owed::Group { len, .. } => len,
        })
    }

    /// What the next item is and where a store finds it, for a caller that feeds the verifier
    /// from its own files (recovery after a crash re-verifies groups this way).
    pub fn owed(&self) -> Option<Owed> {
        if self.done {
            return None;
        }
        Some(match self.next? {
            BaoChunk::Parent { node, .. } => Owed::Proof {
                groups: self.layout.groups_below(node, self.size),
                outboard_offset: self.layout.pair_offset(self.size, node),
            },
            BaoChunk::Leaf {
                start_chunk, size, ..
            } => Owed::Group {
                group: self.layout.group_of_chunk(start_chunk),
                offset: start_chunk.to_bytes(),
                len: size,
            },
        })
    }

    /// What the next item is, for an error when the stream ends before it.
    pub fn missing(&self) -> Option<Missing> {
        Some(match self.owed()? {
            Owed::Proof { groups, .. } => Missing::Proof(groups),
            Owed::Group { group, .. } => Missing::Group(group),
        })
    }

    /// True when every owed item has been verified.
    pub fn is_complete(&self) -> bool {
        self.done && self.next.is_none()
    }

    /// Checks the next item, `bytes` long as [`next_item_len`](Self::next_item_len) said.
    pub fn verify_next<'a>(&mut self, bytes: &'a [u8]) -> Result<Verified<'a>, VerifyError> {
        let blob = self.blob;
        let Some(item) = self.next.filter(|_| !self.done) else {
            return Err(VerifyError::Finished { blob });
        };
        let result = self.verify_item(item, bytes);
        match &result {
            Ok(_) => {
                self.next = self.items.next();
                self.done = self.next.is_none();
            }
            // A mismatch ends the response: nothing after a bad item can be trusted.
            Err(VerifyError::ItemLength { .. }) => {}
            Err(_) => self.done = true,
        }
        result
    }

    fn verify_item<'a>(
        &mut self,
        item: BaoChunk,
        bytes: &'a [u8],
    ) -> Result<Verified<'a>, VerifyError> {
        let blob = self.blob;
        let expected_len = match item {
            BaoChunk::Parent { .. } => PARENT_PAIR_BYTES,
            BaoChunk::Leaf { size, .. } => size,
        };
        if bytes.len() != expected_len {
            return Err(VerifyError::ItemLength {
                blob,
                expected: expected_len,
                got: bytes.len(),
            });
        }
        // The response iterator pushes exactly one hash per child it will visit, so a pending
        // hash is always there; an empty stack would be a bao-tree bug, reported not panicked.
        let Some(expected) = self.pending_hashes.pop() else {
            return Err(VerifyError::Finished { blob });
        };
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let mut pair_bytes = [0u8; PARENT_PAIR_BYTES];
                pair_bytes.copy_from_slice(bytes);
                let pair = split_pair(&pair_bytes);
                if parent_hash(&pair, is_root) != expected {
                    return Err(VerifyError::ProofMismatch {
                        blob,
                        groups: self.layout.groups_below(node, self.size),
                        level: node.level(),
                    });
                }
                if right {
                    self.pending_hashes.push(pair.1);
                }
                if left {
                    self.pending_hashes.push(pair.0);
                }
                Ok(Verified::Proof(VerifiedProof {
                    node,
                    pair,
                    outboard_offset: self.layout.pair_offset(self.size, node),
                }))
            }
            BaoChunk::Leaf {
                start_chunk,
                is_root,
                ..
            } => {
                let group = self.layout.group_of_chunk(start_chunk);
                let offset = start_chunk.to_bytes();
                if subtree_hash(start_chunk, bytes, is_root) != expected {
                    return Err(VerifyError::ChunkGroupMismatch {
                        blob,
                        group,
                        offset,
                    });
                }
                Ok(Verified::Group(VerifiedGroup {
                    group,
                    offset,
                    data: bytes,
                }))
            }
        }
    }
}

/// The chaining value of a subtree of whole chunks starting at `start_chunk`, or the root hash.
fn subtree_hash(start_chunk: ChunkNum, data: &[u8], is_root: bool) -> blake3::Hash {
    use blake3::hazmat::HasherExt;
    if is_root {
        return blake3::hash(data);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(start_chunk.to_bytes());
    hasher.update(data);
    blake3::Hash::from(hasher.finalize_non_root())
}

/// The chaining value of a parent from its children, or the root hash.
fn parent_hash(pair: &(blake3::Hash, blake3::Hash), is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{Mode, merge_subtrees_non_root, merge_subtrees_root};
    let left = *pair.0.as_bytes();
    let right = *pair.1.as_bytes();
    if is_root {
        merge_subtrees_root(&left, &right, Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(&left, &right, Mode::Hash))
    }
}

/// A response read from a [`Read`] and verified item by item.
///
/// Memory use is one chunk group, whatever the blob's size.
#[derive(Debug)]
pub struct VerifiedReader<R> {
    reader: R,
    verifier: RangeVerifier,
    buffer: Vec<u8>,
}

impl<R: Read> VerifiedReader<R> {
    /// Reads and checks the size header, then is ready to verify the items for `groups`.
    pub fn new(
        blob: BlobId,
        layout: Layout,
        groups: &ChunkGroupRanges,
        expected: ExpectedSize,
        mut reader: R,
    ) -> Result<Self, VerifyError> {
        let mut header = [0u8; SIZE_HEADER_BYTES];
        reader
            .read_exact(&mut header)
            .map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => VerifyError::Truncated {
                    blob,
                    missing: Missing::SizeHeader,
                },
                _ => VerifyError::Io { blob, source },
            })?;
        let size = check_size_header(blob, header, expected)?;
        let buffer_len = usize::try_from(layout.group_bytes()).unwrap_or(usize::MAX);
        Ok(Self {
            reader,
            verifier: RangeVerifier::new(blob, layout, size, groups),
            buffer: Vec::with_capacity(buffer_len),
        })
    }

    /// The blob's size, as claimed by the header.
    pub fn size(&self) -> u64 {
        self.verifier.size()
    }

    /// The next verified item, `None` at the end of the response, or the first failure.
    pub fn next_item(&mut self) -> Option<Result<Verified<'_>, VerifyError>> {
        let len = self.verifier.next_item_len()?;
        let blob = self.verifier.blob;
        self.buffer.resize(len, 0);
        if let Err(source) = self.reader.read_exact(&mut self.buffer) {
            let missing = self.verifier.missing().unwrap_or(Missing::SizeHeader);
            self.verifier.done = true;
            return Some(Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => VerifyError::Truncated { blob, missing },
                _ => VerifyError::Io { blob, source },
            }));
        }
        Some(self.verifier.verify_next(&self.buffer))
    }

    /// Verifies the whole response, handing each verified group to `sink(offset, bytes)`.
    /// Returns the blob's size.
    pub fn for_each_group(
        mut self,
        mut sink: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<u64, VerifyError> {
        let blob = self.verifier.blob;
        while let Some(item) = self.next_item() {
            if let Verified::Group(group) = item? {
                sink(group.offset(), group.data())
                    .map_err(|source| VerifyError::Io { blob, source })?;
            }
        }
        Ok(self.size())
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data sizes are small
mod tests {
    use super::*;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn outboard_overhead_at_16_kib_groups_is_below_half_a_percent() {
        let size = 256u64 << 20;
        let overhead = Layout::MESH.outboard_size(size) as f64 / size as f64;
        assert!(overhead <= 0.005, "outboard overhead {overhead}");
        let wire = Layout::MESH.response_size(size, &Layout::MESH.all_groups(size)) - size;
        assert!(wire as f64 / size as f64 <= 0.005, "wire overhead {wire}");
    }

    #[test]
    fn group_arithmetic() {
        let layout = Layout::MESH;
        assert_eq!(layout.group_bytes(), 16384);
        assert_eq!(layout.group_count(0), 1);
        assert_eq!(layout.group_count(16384), 1);
        assert_eq!(layout.group_count(16385), 2);
        assert_eq!(layout.group_byte_range(ChunkGroup(1), 20000), 16384..20000);
        assert_eq!(layout.groups_for_bytes(16383, 0).boundaries(), &[0, 1]);
        assert_eq!(layout.groups_for_bytes(16383, 2).boundaries(), &[0, 2]);
    }

    #[test]
    fn whole_blob_round_trip() {
        let data = blob(100_000);
        let outboard = Outboard::create(&data, Layout::MESH);
        assert_eq!(outboard.id(), BlobId::of(&data));
        let groups = Layout::MESH.all_groups(data.len() as u64);
        let mut encoded = Vec::new();
        let written = encode_ranges(&data[..], &outboard, &groups, &mut encoded).unwrap();
        assert_eq!(written, encoded.len() as u64);
        assert_eq!(
            written,
            Layout::MESH.response_size(data.len() as u64, &groups)
        );
        let mut decoded = vec![0u8; data.len()];
        let reader = VerifiedReader::new(
            outboard.id(),
            Layout::MESH,
            &groups,
            ExpectedSize::Exactly(data.len() as u64),
            &encoded[..],
        )
        .unwrap();
        reader
            .for_each_group(|offset, bytes| {
                let offset = offset as usize;
                decoded[offset..offset + bytes.len()].copy_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        assert_eq!(decoded, data);
    }

    #[test]
    fn encoder_refuses_to_send_corrupt_local_data() {
        let mut data = blob(100_000);
        let outboard = Outboard::create(&data, Layout::MESH);
        data[40_000] ^= 1;
        let err = encode_ranges(
            &data[..],
            &outboard,
            &Layout::MESH.all_groups(100_000),
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            matches!(err, EncodeError::LocalCorruption { ref groups, .. } if *groups == (2..3)),
            "{err}"
        );
    }

    #[test]
    fn a_reused_body_encodes_the_same_bytes_and_a_failure_leaves_it_as_it_was() {
        let data = blob(300_000);
        let outboard = Outboard::create(&data, Layout::MESH);
        let mut expected = Vec::new();
        let groups = ChunkGroupRanges::from_range(3..9);
        encode_ranges(&data[..], &outboard, &groups, &mut expected).unwrap();

        let mut body = ResponseBody::default();
        // A larger response first, so the second fills a buffer that holds older bytes.
        encode_ranges_into(
            &data[..],
            &outboard,
            &Layout::MESH.all_groups(300_000),
            &mut body,
        )
        .unwrap();
        let capacity = body.capacity();
        body.clear();
        let written = encode_ranges_into(&data[..], &outboard, &groups, &mut body).unwrap();
        assert_eq!(body.bytes(), &expected[..]);
        assert_eq!(written, expected.len() as u64);
        assert_eq!(body.capacity(), capacity, "the buffer was not reallocated");

        // A corrupt pair in the outboard: refused, naming the groups it proves; body unchanged.
        let mut pairs = outboard.data().clone();
        pairs[0] ^= 1;
        let corrupt = Outboard::from_parts(outboard.id(), 300_000, Layout::MESH, pairs);
        let err = encode_ranges_into(&data[..], &corrupt, &groups, &mut body).unwrap_err();
        assert!(
            matches!(err, EncodeError::LocalCorruption { ref groups, .. } if groups.start == 0),
            "{err}"
        );
        assert_eq!(body.bytes(), &expected[..]);

        // Data shorter than the groups asked for (a partial copy): an I/O error, body unchanged.
        let err = encode_ranges_into(&data[..100_000], &outboard, &groups, &mut body).unwrap_err();
        assert!(matches!(err, EncodeError::Io { .. }), "{err}");
        assert_eq!(body.bytes(), &expected[..]);
    }

    #[test]
    fn size_header_is_checked() {
        let id = BlobId::of(b"");
        let header = 5u64.to_le_bytes();
        assert!(check_size_header(id, header, ExpectedSize::Exactly(5)).is_ok());
        assert!(matches!(
            check_size_header(id, header, ExpectedSize::Exactly(4)),
            Err(VerifyError::SizeMismatch {
                expected: 4,
                claimed: 5,
                ..
            })
        ));
        assert!(matches!(
            check_size_header(id, header, ExpectedSize::AtMost(4)),
            Err(VerifyError::SizeTooLarge { .. })
        ));
        assert!(matches!(
            check_size_header(id, u64::MAX.to_le_bytes(), ExpectedSize::AtMost(u64::MAX)),
            Err(VerifyError::SizeTooLarge {
                limit: MAX_BLOB_SIZE,
                ..
            })
        ));
    }
}
