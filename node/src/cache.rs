//! A cache's disk cap, sans-IO: which blobs to forget so that an incoming one fits. Least
//! recently used first; pinned blobs (those of active campaigns) never. The store supplies the
//! footprint and last use of each blob ([`crate::store::BlobStore::usage`]) and carries out the
//! plan ([`crate::store::BlobStore::make_room`]).

use std::collections::BTreeSet;

use proto::BlobId;

/// One blob as the cap sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedBlob {
    /// The blob.
    pub id: BlobId,
    /// Bytes it takes on disk (data and outboard).
    pub bytes: u64,
    /// When it was last written or served, on the store's use clock (larger: more recent).
    pub last_used: u64,
}

/// The cap cannot be met without evicting pinned blobs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "disk cap of {cap} bytes: {incoming} more bytes do not fit beside {pinned} bytes of pinned blobs (active campaigns)"
)]
pub struct CapFull {
    /// The cap.
    pub cap: u64,
    /// Bytes asked for.
    pub incoming: u64,
    /// Bytes pinned blobs take.
    pub pinned: u64,
}

/// Bytes a blob of `size` bytes takes in a store: its data and its outboard (one 64-byte hash
/// pair per chunk group after the first, at 16 KiB chunk groups).
pub fn footprint(size: u64) -> u64 {
    size + size.div_ceil(16 * 1024).saturating_sub(1) * 64
}

/// The blobs to forget, least recently used first (ties by id), so that what stays plus
/// `incoming` fits in `cap`; pinned blobs are never chosen.
pub fn plan_eviction(
    blobs: &[CachedBlob],
    pinned: &BTreeSet<BlobId>,
    incoming: u64,
    cap: u64,
) -> Result<Vec<BlobId>, CapFull> {
    let used: u64 = blobs.iter().map(|b| b.bytes).sum();
    let pinned_bytes: u64 = blobs
        .iter()
        .filter(|b| pinned.contains(&b.id))
        .map(|b| b.bytes)
        .sum();
    if pinned_bytes.saturating_add(incoming) > cap {
        return Err(CapFull {
            cap,
            incoming,
            pinned: pinned_bytes,
        });
    }
    let mut candidates: Vec<&CachedBlob> =
        blobs.iter().filter(|b| !pinned.contains(&b.id)).collect();
    candidates.sort_by_key(|b| (b.last_used, b.id));
    let mut remaining = used;
    let mut plan = Vec::new();
    for blob in candidates {
        if remaining.saturating_add(incoming) <= cap {
            break;
        }
        remaining -= blob.bytes;
        plan.push(blob.id);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn blob(n: u8, bytes: u64, last_used: u64) -> CachedBlob {
        CachedBlob {
            id: BlobId::from_bytes([n; 32]),
            bytes,
            last_used,
        }
    }

    #[test]
    fn least_recently_used_go_first_and_pinned_never() {
        let blobs = [
            blob(1, 100, 5),
            blob(2, 100, 1),
            blob(3, 100, 3),
            blob(4, 100, 2),
        ];
        let pinned = BTreeSet::from([BlobId::from_bytes([2; 32])]);
        // 400 used, cap 450, 150 incoming: 100 must go — the oldest unpinned is 4 (used at 2).
        assert_eq!(
            plan_eviction(&blobs, &pinned, 150, 450).unwrap(),
            vec![BlobId::from_bytes([4; 32])]
        );
        // Fits already: nothing goes.
        assert!(plan_eviction(&blobs, &pinned, 50, 450).unwrap().is_empty());
        // 300 must go: 4, 3, 1 (2 is pinned).
        assert_eq!(
            plan_eviction(&blobs, &pinned, 250, 350).unwrap(),
            vec![
                BlobId::from_bytes([4; 32]),
                BlobId::from_bytes([3; 32]),
                BlobId::from_bytes([1; 32])
            ]
        );
        // The pinned blob and the incoming one alone exceed the cap.
        assert_eq!(
            plan_eviction(&blobs, &pinned, 301, 400),
            Err(CapFull {
                cap: 400,
                incoming: 301,
                pinned: 100
            })
        );
    }
}
