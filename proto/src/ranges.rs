//! Chunk groups and sets of them: the unit in which blobs are requested, verified and held.

use std::fmt;
use std::ops::Range;

use range_collections::{RangeSet2, range_set::RangeSetRange};

/// The index of a chunk group within a blob: group `n` covers bytes
/// `n * group_bytes .. (n + 1) * group_bytes` (the last group of a blob may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkGroup(pub u64);

impl fmt::Display for ChunkGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk group {}", self.0)
    }
}

/// A set of chunk groups, kept as sorted, disjoint, non-adjacent half-open ranges.
///
/// Every range is finite: a set names exactly the groups it holds, so it can be sent, stored and
/// compared without knowing the blob's size.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChunkGroupRanges(RangeSet2<u64>);

impl ChunkGroupRanges {
    /// The empty set.
    pub fn empty() -> Self {
        Self(RangeSet2::empty())
    }

    /// All groups in `range`; empty when the range is empty.
    pub fn from_range(range: Range<u64>) -> Self {
        if range.start >= range.end {
            return Self::empty();
        }
        Self(RangeSet2::from(range))
    }

    /// The set from its boundaries `[start0, end0, start1, end1, …]`, or `None` when they are not
    /// strictly increasing or their number is odd.
    pub fn from_boundaries(boundaries: &[u64]) -> Option<Self> {
        if boundaries.len() % 2 != 0 {
            return None;
        }
        let set = RangeSet2::new(boundaries.iter().copied().collect())?;
        Some(Self(set))
    }

    /// The boundaries `[start0, end0, start1, end1, …]`, strictly increasing, even in number.
    pub fn boundaries(&self) -> &[u64] {
        self.0.boundaries()
    }

    /// True when the set holds no group.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when the set holds `group`.
    pub fn contains(&self, group: ChunkGroup) -> bool {
        self.0.contains(&group.0)
    }

    /// True when every group of `self` is in `other`.
    pub fn is_subset(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }

    /// True when `self` and `other` share at least one group.
    pub fn intersects(&self, other: &Self) -> bool {
        !self.0.is_disjoint(&other.0)
    }

    /// The ranges, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.0.iter().filter_map(|range| match range {
            RangeSetRange::Range(range) => Some(*range.start..*range.end),
            // Unreachable by construction (every constructor keeps the set finite), but a
            // silently dropped open range is still better than a panic in a peer-facing type.
            RangeSetRange::RangeFrom(_) => None,
        })
    }

    /// The set's groups within `range`, as ranges in increasing order: a binary search for the
    /// first, so the cost is the ranges returned, not the size of the set.
    pub fn clipped(&self, range: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let boundaries = self.boundaries();
        // The first boundary past `range.start` is the end of the range holding it, or the
        // start of the first range after it: either way, that range comes first.
        let first = boundaries.partition_point(|&at| at <= range.start) / 2;
        boundaries
            .get(first * 2..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map_while(move |pair| match *pair {
                [start, end] if start < range.end => {
                    Some(start.max(range.start)..end.min(range.end))
                }
                _ => None,
            })
            // Only an empty or reversed `range` clips a range to nothing.
            .filter(|clip| clip.start < clip.end)
    }

    /// The set's groups within `range` ([`Self::clipped`], as a set).
    pub fn within(&self, range: Range<u64>) -> Self {
        self.clipped(range).collect()
    }

    /// The number of groups in the set.
    pub fn group_count(&self) -> u64 {
        self.iter().map(|range| range.end - range.start).sum()
    }

    /// The highest group in the set plus one, or 0 for the empty set.
    pub fn end(&self) -> u64 {
        self.boundaries().last().copied().unwrap_or(0)
    }

    /// Adds every group of `range`.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.start < range.end {
            self.0 |= RangeSet2::from(range);
        }
    }

    /// The groups in `self` or `other`.
    pub fn union(&self, other: &Self) -> Self {
        Self(&self.0 | &other.0)
    }

    /// The groups in both `self` and `other`.
    pub fn intersection(&self, other: &Self) -> Self {
        Self(&self.0 & &other.0)
    }

    /// The groups in `self` that are not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        Self(&self.0 - &other.0)
    }

    /// The first `count` ranges of the set.
    pub fn first_ranges(&self, count: usize) -> Self {
        self.iter().take(count).collect()
    }

    /// The first `count` groups of the set, in increasing order.
    pub fn first_groups(&self, count: u64) -> Self {
        let mut left = count;
        let mut taken = Self::empty();
        for range in self.iter() {
            if left == 0 {
                break;
            }
            let len = (range.end - range.start).min(left);
            taken.insert(range.start..range.start + len);
            left -= len;
        }
        taken
    }
}

impl From<Range<u64>> for ChunkGroupRanges {
    fn from(range: Range<u64>) -> Self {
        Self::from_range(range)
    }
}

impl FromIterator<Range<u64>> for ChunkGroupRanges {
    /// The union of the ranges, in any order: one sort and one sweep, not a merge per range.
    fn from_iter<I: IntoIterator<Item = Range<u64>>>(iter: I) -> Self {
        let mut ranges: Vec<Range<u64>> = iter
            .into_iter()
            .filter(|range| range.start < range.end)
            .collect();
        // Ranges taken from a set come sorted and apart already.
        if !ranges.windows(2).all(|pair| pair[0].end < pair[1].start) {
            ranges.sort_unstable_by_key(|range| range.start);
        }
        let mut boundaries: Vec<u64> = Vec::with_capacity(ranges.len() * 2);
        for range in &ranges {
            match boundaries.last_mut() {
                Some(end) if range.start <= *end => *end = (*end).max(range.end),
                _ => boundaries.extend([range.start, range.end]),
            }
        }
        match RangeSet2::new(boundaries.into_iter().collect()) {
            Some(set) => Self(set),
            // Unreachable (the sweep leaves the boundaries strictly increasing), but a merge per
            // range is the right answer anyway.
            None => {
                let mut set = Self::empty();
                for range in ranges {
                    set.insert(range);
                }
                set
            }
        }
    }
}

impl fmt::Debug for ChunkGroupRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for ChunkGroupRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (index, range) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}..{}", range.start, range.end)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_operations() {
        let a: ChunkGroupRanges = [0..4, 10..12].into_iter().collect();
        let b = ChunkGroupRanges::from(2..11);
        assert_eq!(a.union(&b).boundaries(), &[0, 12]);
        assert_eq!(a.intersection(&b).boundaries(), &[2, 4, 10, 11]);
        assert_eq!(a.difference(&b).boundaries(), &[0, 2, 11, 12]);
        assert_eq!(a.group_count(), 6);
        assert!(a.contains(ChunkGroup(11)) && !a.contains(ChunkGroup(12)));
        assert_eq!(a.first_groups(5).boundaries(), &[0, 4, 10, 11]);
        assert_eq!(a.to_string(), "{0..4, 10..12}");
        assert!(ChunkGroupRanges::from(5..5).is_empty());
    }

    #[test]
    fn boundaries_are_validated() {
        assert!(ChunkGroupRanges::from_boundaries(&[1, 3, 5, 9]).is_some());
        assert!(ChunkGroupRanges::from_boundaries(&[1, 3, 5]).is_none());
        assert!(ChunkGroupRanges::from_boundaries(&[1, 3, 3, 9]).is_none());
        assert!(ChunkGroupRanges::from_boundaries(&[4, 3]).is_none());
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_integers(
            a in proptest::collection::vec((0u64..200, 0u64..20), 0..8),
            b in proptest::collection::vec((0u64..200, 0u64..20), 0..8),
        ) {
            let to_set = |pairs: &[(u64, u64)]| -> (ChunkGroupRanges, std::collections::BTreeSet<u64>) {
                let ranges: ChunkGroupRanges = pairs.iter().map(|&(s, l)| s..s + l).collect();
                let model = pairs.iter().flat_map(|&(s, l)| s..s + l).collect();
                (ranges, model)
            };
            let (ra, ma) = to_set(&a);
            let (rb, mb) = to_set(&b);
            let flatten = |r: &ChunkGroupRanges| r.iter().flatten().collect::<std::collections::BTreeSet<_>>();
            prop_assert_eq!(flatten(&ra), ma.clone());
            for &(start, len) in &b {
                let window = ChunkGroupRanges::from(start..start + len);
                prop_assert_eq!(ra.within(start..start + len), ra.intersection(&window));
            }
            let (high, low) = (7, 3);
            prop_assert!(ra.within(high..low).is_empty());
            prop_assert_eq!(flatten(&ra.union(&rb)), ma.union(&mb).copied().collect());
            prop_assert_eq!(flatten(&ra.intersection(&rb)), ma.intersection(&mb).copied().collect());
            prop_assert_eq!(flatten(&ra.difference(&rb)), ma.difference(&mb).copied().collect());
            prop_assert_eq!(ra.group_count(), ma.len() as u64);
            prop_assert_eq!(ra.intersects(&rb), !ma.is_disjoint(&mb));
            prop_assert_eq!(ChunkGroupRanges::from_boundaries(ra.boundaries()), Some(ra));
        }
    }
}
