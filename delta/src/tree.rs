//! Segment chaining values: the nodes of the target's BLAKE3 (and so bao) tree at the level of
//! one delta segment.
//!
//! Segments are a power of two of BLAKE3 chunks long and aligned, so each one is a whole subtree
//! of the target's tree, and the tree above them splits exactly where BLAKE3 splits its input:
//! the left part of `n` segments is the largest power of two below `n`. The header's chaining
//! values therefore merge up to the target id, and each finished segment is checked against its
//! own value without the rest of the target.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

/// The chaining value of the segment of `bytes` at `offset` in a target of `segment_count`
/// segments. A target of one segment has no parent nodes: its value is the root hash itself.
pub(crate) fn segment_cv(segment_count: usize, offset: u64, bytes: &[u8]) -> ChainingValue {
    if segment_count <= 1 {
        return *blake3::hash(bytes).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// The root hash the segments' chaining values merge to.
pub(crate) fn root_of(cvs: &[ChainingValue]) -> [u8; 32] {
    match cvs {
        [] => *blake3::hash(&[]).as_bytes(),
        [single] => *single,
        _ => {
            let (left, right) = cvs.split_at(left_len(cvs.len()));
            *merge_subtrees_root(&merge(left), &merge(right), Mode::Hash).as_bytes()
        }
    }
}

fn merge(cvs: &[ChainingValue]) -> ChainingValue {
    match cvs {
        [single] => *single,
        _ => {
            let (left, right) = cvs.split_at(left_len(cvs.len()));
            merge_subtrees_non_root(&merge(left), &merge(right), Mode::Hash)
        }
    }
}

/// The largest power of two strictly below `n` (n ≥ 2): how many segments BLAKE3 puts left.
fn left_len(n: usize) -> usize {
    let mut left = 1;
    while left * 2 < n {
        left *= 2;
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_values_merge_to_the_blake3_root() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for segment in [1024usize, 16384, 65536] {
            for len in [
                0,
                1,
                1024,
                1025,
                segment,
                segment + 1,
                3 * segment + 5,
                300_000,
            ] {
                let target = &data[..len];
                let cvs: Vec<_> = target
                    .chunks(segment)
                    .enumerate()
                    .map(|(i, bytes)| {
                        let count = target.len().div_ceil(segment);
                        segment_cv(count, (i * segment) as u64, bytes)
                    })
                    .collect();
                assert_eq!(root_of(&cvs), *blake3::hash(target).as_bytes(), "len {len}");
            }
        }
    }
}
