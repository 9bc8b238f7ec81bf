//! A vehicle pulls a firmware image from its depot and from a neighbour at once, through the real
//! wire codec and the real bao verifier, and catches the neighbour lying.
//!
//! ```text
//! cargo run --release -p proto --example verified_transfer -- [SIZE_MIB]
//! ```
//!
//! Peers are in-process: every message and stream is encoded to bytes and decoded again exactly
//! as it would be off a QUIC stream, but no network is involved yet (the libp2p runtime is the
//! node crate's job). What it shows: have-maps, range requests split across two peers, each
//! 16 KiB chunk group verified against the image's BLAKE3 root before it is kept, a corrupt group
//! rejected with an error naming it, the liar dropped for this blob and its groups fetched from
//! the depot instead, and the finished image hashing to its id.

use std::collections::BTreeMap;
use std::error::Error;

use proto::bao::{self, ExpectedSize, Layout, Outboard, VerifiedReader};
use proto::wire::{
    self, ErrorCode, ErrorMessage, Have, HaveQuery, Message, RangeRequest, RangeResponse,
};
use proto::{BlobId, ChunkGroupRanges};

const LAYOUT: Layout = Layout::MESH;

/// A peer that holds some groups of one image and answers control frames with bytes.
struct Peer {
    name: &'static str,
    image: Vec<u8>,
    outboard: Outboard,
    holds: ChunkGroupRanges,
    /// A byte this peer flips in what it serves, to play a faulty or hostile neighbour.
    corrupts_byte: Option<usize>,
    bytes_served: u64,
}

impl Peer {
    /// Answers one request frame with the reply bytes: a frame, or a frame then a bao stream.
    fn answer(&mut self, frame: &[u8]) -> Result<Vec<u8>, Box<dyn Error>> {
        let (message, _) = Message::decode_frame(frame)?.ok_or("incomplete frame")?;
        let reply = match message {
            Message::HaveQuery(HaveQuery { blob }) if blob == self.outboard.id() => {
                Message::Have(Have {
                    blob,
                    size: Some(self.outboard.size()),
                    groups: self.holds.first_ranges(wire::MAX_RANGES),
                })
                .encode()?
            }
            Message::Request(request) if request.blob == self.outboard.id() => {
                let groups = request.groups.intersection(&self.holds);
                let mut reply = Message::Response(RangeResponse {
                    request_id: request.request_id,
                    groups: groups.clone(),
                })
                .encode()?;
                let mut served = self.image.clone();
                if let Some(at) = self.corrupts_byte {
                    served[at] ^= 0x20;
                }
                // A lying peer skips its own check; an honest one could not send bad bytes.
                let sent = if self.corrupts_byte.is_some() {
                    let ranges = bao_tree_ranges(&groups);
                    reply.extend_from_slice(&self.outboard.size().to_le_bytes());
                    bao_tree::io::sync::encode_ranges(
                        &served[..],
                        &self.outboard,
                        &ranges,
                        &mut reply,
                    )?;
                    reply.len() as u64
                } else {
                    bao::encode_ranges(&served[..], &self.outboard, &groups, &mut reply)?
                };
                self.bytes_served += sent;
                reply
            }
            other => Message::Error(ErrorMessage::new(
                None,
                ErrorCode::NotFound,
                &format!("{} cannot answer {other:?}", self.name),
            ))
            .encode()?,
        };
        Ok(reply)
    }
}

fn bao_tree_ranges(groups: &ChunkGroupRanges) -> bao_tree::ChunkRanges {
    let shift = u32::from(LAYOUT.chunk_log());
    let mut ranges = bao_tree::ChunkRanges::empty();
    for range in groups.iter() {
        ranges |= bao_tree::ChunkRanges::from(
            bao_tree::ChunkNum(range.start << shift)..bao_tree::ChunkNum(range.end << shift),
        );
    }
    ranges
}

fn main() -> Result<(), Box<dyn Error>> {
    let size_mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);
    if size_mib == 0 {
        return Err("SIZE_MIB must be at least 1".into());
    }
    let image = firmware_like(size_mib << 20);
    let outboard = Outboard::create(&image, LAYOUT);
    let blob = outboard.id();
    let size = image.len() as u64;
    let group_count = LAYOUT.group_count(size);
    println!("image   {blob}  {size} bytes, {group_count} chunk groups of 16 KiB");
    println!(
        "outboard {} bytes ({:.3} % of the image)",
        outboard.data().len(),
        100.0 * outboard.data().len() as f64 / size as f64
    );

    let half = group_count / 2;
    let bad_group = half / 3;
    let mut peers = BTreeMap::from([
        (
            "depot",
            Peer {
                name: "depot",
                image: image.clone(),
                outboard: outboard.clone(),
                holds: LAYOUT.all_groups(size),
                corrupts_byte: None,
                bytes_served: 0,
            },
        ),
        (
            "neighbour",
            Peer {
                name: "neighbour",
                image: image.clone(),
                outboard: outboard.clone(),
                holds: ChunkGroupRanges::from(0..half),
                corrupts_byte: Some(usize::try_from(bad_group * LAYOUT.group_bytes() + 100)?),
                bytes_served: 0,
            },
        ),
    ]);

    // 1. Ask every peer what it holds.
    let mut have_maps = BTreeMap::new();
    for (name, peer) in &mut peers {
        let reply = peer.answer(&Message::HaveQuery(HaveQuery { blob }).encode()?)?;
        if let Some((Message::Have(have), _)) = Message::decode_frame(&reply)? {
            println!(
                "have    {name:<9} holds {} groups {}",
                have.groups.group_count(),
                have.groups
            );
            have_maps.insert(*name, have.groups);
        }
    }

    // 2. Fetch from the neighbour what it has, the rest from the depot; retry what fails.
    let mut assembled = vec![0u8; image.len()];
    let mut held = ChunkGroupRanges::empty();
    let mut banned: Vec<&str> = Vec::new();
    let mut request_id = 0;
    while held != LAYOUT.all_groups(size) {
        let missing = LAYOUT.all_groups(size).difference(&held);
        let from_neighbour = if banned.contains(&"neighbour") {
            ChunkGroupRanges::empty()
        } else {
            missing.intersection(&have_maps["neighbour"])
        };
        let plan = [
            ("neighbour", from_neighbour.clone()),
            ("depot", missing.difference(&from_neighbour)),
        ];
        for (name, groups) in plan {
            if groups.is_empty() {
                continue;
            }
            request_id += 1;
            let request = Message::Request(RangeRequest {
                request_id,
                blob,
                groups: groups.clone(),
            });
            let reply = peers
                .get_mut(name)
                .ok_or("no such peer")?
                .answer(&request.encode()?)?;
            let Some((Message::Response(response), used)) = Message::decode_frame(&reply)? else {
                return Err(format!("{name} did not answer the request").into());
            };
            let reader = VerifiedReader::new(
                blob,
                LAYOUT,
                &response.groups,
                ExpectedSize::Exactly(size),
                &reply[used..],
            )?;
            let mut got = ChunkGroupRanges::empty();
            let result = reader.for_each_group(|offset, bytes| {
                let start = usize::try_from(offset).map_err(std::io::Error::other)?;
                assembled[start..start + bytes.len()].copy_from_slice(bytes);
                let group = offset / LAYOUT.group_bytes();
                got.insert(group..group + 1);
                Ok(())
            });
            held = held.union(&got);
            match result {
                Ok(_) => println!("fetch   {name:<9} {} groups verified", got.group_count()),
                Err(error) => {
                    println!(
                        "fetch   {name:<9} {} groups verified, then REJECTED: {error}",
                        got.group_count()
                    );
                    if error.is_peer_misbehaviour() {
                        println!("ban     {name:<9} is not asked again for this blob");
                        banned.push(name);
                    }
                }
            }
        }
    }

    let result = BlobId::of(&assembled);
    println!(
        "served  depot {} bytes, neighbour {} bytes",
        peers["depot"].bytes_served, peers["neighbour"].bytes_served
    );
    if result != blob {
        return Err(format!("assembled image hashes to {result}, expected {blob}").into());
    }
    println!("done    assembled image hashes to its id: {result}");
    Ok(())
}

/// Bytes that look like firmware to a compressor: code-like repeated blocks, tables and noise.
#[allow(clippy::cast_possible_truncation)] // taking the low bits is the point
fn firmware_like(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        match state % 3 {
            0 => out.extend(std::iter::repeat_n((state >> 8) as u8, 512)),
            1 => out.extend((0..1024u32).map(|i| (i.wrapping_mul(state as u32) >> 13) as u8)),
            _ => out.extend_from_slice(&state.to_le_bytes().repeat(64)),
        }
    }
    out.truncate(len);
    out
}
