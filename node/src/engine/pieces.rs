//! Piece arithmetic and peer coverage: the numbers behind "rarest first".

use std::ops::Range;

use proto::ChunkGroupRanges;

/// How many eligible peers claim each group: a step function kept up to date claim by claim.
///
/// Counts depend only on peers' claims, not on what is held or in flight. The engine adds a
/// peer's claim when it starts to count and removes exactly what it added when it stops, so an
/// update costs one merge of the step function with the changed groups, not a rebuild from every
/// claim.
#[derive(Debug, Default)]
pub(super) struct Coverage {
    /// `(at, count)`: from group `at` up to the next point, `count` peers claim each group.
    /// Strictly increasing in `at`; neighbouring counts differ; the count before the first point
    /// is 0, and so is the last point's (claims are finite).
    points: Vec<(u64, u32)>,
}

impl Coverage {
    /// The coverage of a set of claims.
    #[cfg(test)]
    pub(super) fn new<'a>(claims: impl Iterator<Item = &'a ChunkGroupRanges>) -> Self {
        let mut coverage = Self::default();
        for claim in claims {
            coverage.add(claim);
        }
        coverage
    }

    /// Counts one more claim on each group of `groups`.
    pub(super) fn add(&mut self, groups: &ChunkGroupRanges) {
        self.apply(groups, true);
    }

    /// Counts one claim less on each group of `groups` (which must have been added).
    pub(super) fn remove(&mut self, groups: &ChunkGroupRanges) {
        self.apply(groups, false);
    }

    fn apply(&mut self, groups: &ChunkGroupRanges, add: bool) {
        let edges = groups.boundaries();
        if edges.is_empty() {
            return;
        }
        // A claim that grew by a few ranges (a peer's have-map every half second) touches a
        // few points of thousands: change those in place. Many ranges at once (a peer's first
        // claim, or one that left) cost one merge of the whole function instead of a shift of
        // its tail per range.
        if edges.len() * IN_PLACE_FACTOR <= self.points.len() {
            for pair in edges.chunks_exact(2) {
                if let [start, end] = *pair {
                    self.apply_range(start, end, add);
                }
            }
        } else {
            self.merge(edges, add);
        }
    }

    /// Counts one claim more (or less) on each group of `start..end` (non-empty), rewriting only
    /// the points from `start` to `end`.
    fn apply_range(&mut self, start: u64, end: u64, add: bool) {
        let first = self.points.partition_point(|&(at, _)| at < start);
        let after = self.points.partition_point(|&(at, _)| at <= end);
        let before = first
            .checked_sub(1)
            .and_then(|index| self.points.get(index))
            .map_or(0, |&(_, count)| count);
        // The count at `end` itself, which the change leaves as it is.
        let at_end = after
            .checked_sub(1)
            .and_then(|index| self.points.get(index))
            .map_or(0, |&(_, count)| count);
        let window = self.points.get(first..after).unwrap_or_default();
        let mut rewritten: Vec<(u64, u32)> = Vec::with_capacity(window.len() + 2);
        let mut last = before;
        let mut push = |at: u64, count: u32| {
            if count != last {
                rewritten.push((at, count));
                last = count;
            }
        };
        let starts_here = window.first().filter(|&&(at, _)| at == start);
        push(
            start,
            adjust(starts_here.map_or(before, |&(_, count)| count), add),
        );
        for &(at, count) in window {
            if at > start && at < end {
                push(at, adjust(count, add));
            }
        }
        push(end, at_end);
        self.points.splice(first..after, rewritten);
    }

    /// Counts one claim more (or less) on each group between `edges` (a range set's
    /// boundaries) in one pass over the whole function.
    fn merge(&mut self, edges: &[u64], add: bool) {
        let mut merged = Vec::with_capacity(self.points.len() + edges.len());
        let (mut point, mut edge) = (0, 0);
        let mut count = 0u32;
        let mut inside = false;
        let mut last = 0u32;
        loop {
            let at = match (self.points.get(point), edges.get(edge)) {
                (None, None) => break,
                (Some(&(at, _)), None) => at,
                (None, Some(&at)) => at,
                (Some(&(a, _)), Some(&b)) => a.min(b),
            };
            while let Some(&(_, value)) = self.points.get(point).filter(|p| p.0 == at) {
                count = value;
                point += 1;
            }
            while edges.get(edge) == Some(&at) {
                inside = !inside;
                edge += 1;
            }
            let value = if inside { adjust(count, add) } else { count };
            if value != last {
                merged.push((at, value));
                last = value;
            }
        }
        self.points = merged;
    }

    /// The fewest peers claiming any one group of `range`; 0 if some group is claimed by none.
    pub(super) fn min_count(&self, range: Range<u64>) -> u32 {
        if range.start >= range.end {
            return u32::MAX;
        }
        let after = self.points.partition_point(|&(at, _)| at <= range.start);
        let mut fewest = after
            .checked_sub(1)
            .and_then(|index| self.points.get(index))
            .map_or(0, |&(_, count)| count);
        for &(at, count) in self.points.get(after..).unwrap_or_default() {
            if at >= range.end {
                break;
            }
            fewest = fewest.min(count);
        }
        fewest
    }

    /// `range` cut where the count changes: each stretch with the number of peers claiming each
    /// of its groups, in order.
    pub(super) fn stretches(&self, range: Range<u64>) -> impl Iterator<Item = (Range<u64>, u32)> {
        let after = self.points.partition_point(|&(at, _)| at <= range.start);
        let mut count = after
            .checked_sub(1)
            .and_then(|index| self.points.get(index))
            .map_or(0, |&(_, count)| count);
        let mut next = after;
        let mut at = range.start;
        std::iter::from_fn(move || {
            if at >= range.end {
                return None;
            }
            // Points after `range.start` are strictly greater than it, so every stretch is
            // non-empty.
            let (end, then) = match self.points.get(next) {
                Some(&(point, then)) if point < range.end => (point, Some(then)),
                _ => (range.end, None),
            };
            let stretch = (at..end, count);
            at = end;
            if let Some(then) = then {
                count = then;
                next += 1;
            }
            Some(stretch)
        })
    }

    /// Every group that at least one eligible peer claims.
    pub(super) fn support(&self) -> ChunkGroupRanges {
        let mut support = Vec::new();
        let mut open = None;
        for &(at, count) in &self.points {
            match (open, count > 0) {
                (None, true) => open = Some(at),
                (Some(start), false) => {
                    support.push(start..at);
                    open = None;
                }
                _ => {}
            }
        }
        support.into_iter().collect()
    }
}

/// Above this many points per range boundary an update rewrites points in place
/// ([`Coverage::apply_range`]); below it, it merges the whole function ([`Coverage::merge`]).
const IN_PLACE_FACTOR: usize = 16;

/// `count` with one claim more, or one less. Saturating: removing what was never added is the
/// engine's bug, not a reason to panic or wrap.
fn adjust(count: u32, add: bool) -> u32 {
    if add {
        count.saturating_add(1)
    } else {
        count.saturating_sub(1)
    }
}

/// The groups of piece `piece`: `groups_per_piece` aligned groups (the last piece of a blob is
/// cut by the caller's intersection with the blob).
pub(super) fn piece_groups(piece: u64, groups_per_piece: u64) -> Range<u64> {
    let start = piece.saturating_mul(groups_per_piece);
    start..start.saturating_add(groups_per_piece)
}

/// The piece a transfer with `seed` starts from among `pieces` pieces (at least one): vehicles
/// with different seeds start at different places, so a yard fetching from one depot holds
/// different pieces early and can trade them.
pub(super) fn start_piece(seed: u64, pieces: u64) -> u64 {
    mix(seed) % pieces.max(1)
}

/// Where `piece` comes in a transfer's order among equally rare pieces: from `origin` to the
/// last piece, then from the first.
pub(super) fn piece_rank(origin: u64, piece: u64, pieces: u64) -> u64 {
    if piece >= origin {
        piece - origin
    } else {
        piece + (pieces - origin)
    }
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
    use proptest::prelude::*;

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
    fn coverage_updates_match_a_rebuild() {
        let claims: Vec<ChunkGroupRanges> = vec![
            [0..4, 10..12].into_iter().collect(),
            ChunkGroupRanges::from(2..11),
            [3..5, 11..20].into_iter().collect(),
            ChunkGroupRanges::from(0..20),
        ];
        let mut coverage = Coverage::default();
        for claim in &claims {
            coverage.add(claim);
        }
        coverage.remove(&claims[1]);
        coverage.remove(&claims[3]);
        let rebuilt = Coverage::new([&claims[0], &claims[2]].into_iter());
        assert_eq!(coverage.points, rebuilt.points);
        for start in 0..22 {
            for end in start + 1..23 {
                let direct = (start..end)
                    .map(|group| {
                        let count = [&claims[0], &claims[2]]
                            .iter()
                            .filter(|claim| claim.contains(proto::ChunkGroup(group)))
                            .count();
                        u32::try_from(count).unwrap()
                    })
                    .min()
                    .unwrap_or(u32::MAX);
                assert_eq!(coverage.min_count(start..end), direct, "{start}..{end}");
            }
        }
        coverage.remove(&claims[0]);
        coverage.remove(&claims[2]);
        assert!(coverage.points.is_empty());
        assert!(coverage.support().is_empty());
    }

    /// Claims of up to 8 ranges within groups 0..64.
    fn claim() -> impl Strategy<Value = ChunkGroupRanges> {
        proptest::collection::vec((0u64..64, 1u64..12), 0..8).prop_map(|ranges| {
            ranges
                .into_iter()
                .map(|(start, len)| start..start + len)
                .collect()
        })
    }

    proptest! {
        /// Rewriting points range by range leaves the same function as merging the whole claim,
        /// and both count what a group-by-group count of the claims gives.
        #[test]
        fn in_place_updates_match_merges(
            claims in proptest::collection::vec(claim(), 1..12),
            removals in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let (mut in_place, mut merged) = (Coverage::default(), Coverage::default());
            let mut counted = Vec::new();
            for (claim, remove) in claims.iter().zip(&removals) {
                for (coverage, by_range) in [(&mut in_place, true), (&mut merged, false)] {
                    if by_range {
                        for pair in claim.boundaries().chunks_exact(2) {
                            coverage.apply_range(pair[0], pair[1], true);
                        }
                    } else {
                        coverage.merge(claim.boundaries(), true);
                    }
                }
                counted.push(claim.clone());
                prop_assert_eq!(&in_place.points, &merged.points);
                if *remove {
                    let gone = counted.remove(0);
                    for pair in gone.boundaries().chunks_exact(2) {
                        in_place.apply_range(pair[0], pair[1], false);
                    }
                    merged.merge(gone.boundaries(), false);
                    prop_assert_eq!(&in_place.points, &merged.points);
                }
                for group in 0..80u64 {
                    let direct = counted
                        .iter()
                        .filter(|claim| claim.contains(proto::ChunkGroup(group)))
                        .count();
                    prop_assert_eq!(
                        in_place.min_count(group..group + 1),
                        u32::try_from(direct).unwrap_or(u32::MAX)
                    );
                }
            }
        }
    }

    #[test]
    fn stretches_cut_a_range_where_the_count_changes() {
        let a = ChunkGroupRanges::from(0..10);
        let b = ChunkGroupRanges::from(5..20);
        let coverage = Coverage::new([&a, &b].into_iter());
        let stretches: Vec<_> = coverage.stretches(3..25).collect();
        assert_eq!(
            stretches,
            vec![(3..5, 1), (5..10, 2), (10..20, 1), (20..25, 0)]
        );
        assert_eq!(
            coverage.stretches(6..8).collect::<Vec<_>>(),
            vec![(6..8, 2)]
        );
        assert_eq!(coverage.stretches(7..7).count(), 0);
        assert_eq!(
            Coverage::default().stretches(0..4).collect::<Vec<_>>(),
            vec![(0..4, 0)]
        );
    }

    #[test]
    fn the_order_runs_from_the_start_piece_and_wraps() {
        let ranks: Vec<u64> = (0..5).map(|piece| piece_rank(3, piece, 5)).collect();
        assert_eq!(ranks, vec![2, 3, 4, 0, 1]);
        assert!(start_piece(7, 5) < 5);
        assert_eq!(start_piece(7, 0), 0);
    }

    #[test]
    fn pieces_do_not_overflow() {
        assert_eq!(piece_groups(3, 16), 48..64);
        assert_eq!(piece_groups(2, u64::MAX), u64::MAX..u64::MAX);
        assert_ne!(tie_break(1, 0), tie_break(2, 0));
    }
}
