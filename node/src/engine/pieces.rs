//! Piece arithmetic and peer coverage: the numbers behind "rarest first".

use std::ops::Range;

use proto::ChunkGroupRanges;

/// How many eligible peers claim each group, as sorted, disjoint segments of constant count.
///
/// Counts depend only on peers' claims, not on what is held or in flight, so one `Coverage`
/// serves every choice of a scheduling pass.
#[derive(Debug, Default)]
pub(super) struct Coverage {
    /// `(start, end, count)` with `count >= 1`, sorted by `start`, disjoint.
    segments: Vec<(u64, u64, u32)>,
}

impl Coverage {
    /// The coverage of a set of claims.
    pub(super) fn new<'a>(claims: impl Iterator<Item = &'a ChunkGroupRanges>) -> Self {
        let mut edges: Vec<(u64, i64)> = Vec::new();
        for claim in claims {
            for range in claim.iter() {
                edges.push((range.start, 1));
                edges.push((range.end, -1));
            }
        }
        edges.sort_unstable();
        let mut segments = Vec::new();
        let mut count: i64 = 0;
        let mut position = 0;
        for (at, delta) in edges {
            if at > position && count > 0 {
                // A claim adds at most 1, so the count never exceeds the number of peers.
                let count = u32::try_from(count).unwrap_or(u32::MAX);
                segments.push((position, at, count));
            }
            position = at;
            count += delta;
        }
        Self { segments }
    }

    /// The fewest peers claiming any one group of `range`; 0 if some group is claimed by none.
    pub(super) fn min_count(&self, range: Range<u64>) -> u32 {
        let first = self
            .segments
            .partition_point(|&(_, end, _)| end <= range.start);
        let mut covered_to = range.start;
        let mut fewest = u32::MAX;
        for &(start, end, count) in &self.segments[first..] {
            if start >= range.end {
                break;
            }
            if start > covered_to {
                return 0;
            }
            fewest = fewest.min(count);
            covered_to = end;
        }
        if covered_to < range.end { 0 } else { fewest }
    }

    /// Every group that at least one eligible peer claims.
    pub(super) fn support(&self) -> ChunkGroupRanges {
        self.segments
            .iter()
            .map(|&(start, end, _)| start..end)
            .collect()
    }
}

/// The groups of piece `piece`: `groups_per_piece` aligned groups (the last piece of a blob is
/// cut by the caller's intersection with the blob).
pub(super) fn piece_groups(piece: u64, groups_per_piece: u64) -> Range<u64> {
    let start = piece.saturating_mul(groups_per_piece);
    start..start.saturating_add(groups_per_piece)
}

/// A reproducible pseudo-random rank for a piece, so that vehicles with different seeds start on
/// different pieces among equally rare ones and the yard as a whole spreads its copies.
pub(super) fn tie_break(seed: u64, piece: u64) -> u64 {
    mix(seed ^ mix(piece))
}

/// SplitMix64's finaliser: cheap, and every input bit affects every output bit.
fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_overlapping_claims() {
        let a: ChunkGroupRanges = ChunkGroupRanges::from(0..10);
        let b: ChunkGroupRanges = ChunkGroupRanges::from(5..20);
        let c: ChunkGroupRanges = ChunkGroupRanges::from(25..30);
        let coverage = Coverage::new([&a, &b, &c].into_iter());
        assert_eq!(coverage.min_count(0..5), 1);
        assert_eq!(coverage.min_count(5..10), 2);
        assert_eq!(coverage.min_count(4..6), 1);
        assert_eq!(coverage.min_count(18..22), 0);
        assert_eq!(coverage.min_count(20..25), 0);
        assert_eq!(coverage.min_count(26..27), 1);
        assert_eq!(coverage.support().boundaries(), &[0, 20, 25, 30]);
        assert_eq!(Coverage::new(std::iter::empty()).min_count(0..1), 0);
    }

    #[test]
    fn pieces_do_not_overflow() {
        assert_eq!(piece_groups(3, 16), 48..64);
        assert_eq!(piece_groups(2, u64::MAX), u64::MAX..u64::MAX);
        assert_ne!(tie_break(1, 0), tie_break(2, 0));
    }
}
