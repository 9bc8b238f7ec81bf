//! A depot's disk cap on the real store: a workload larger than the cap stays under it, pinned
//! blobs are never evicted, the least recently served go first, and that order survives a
//! restart.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeSet;

use node::cache::footprint;
use node::store::{StoreError, open_data_dir};
use proto::BlobId;
use proto::ChunkGroupRanges;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed * 2 + 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 29) as u8
        })
        .collect()
}

fn used(store: &node::store::DiskStore) -> u64 {
    store.usage().iter().map(|b| b.bytes).sum()
}

#[test]
fn a_workload_larger_than_the_cap_stays_under_it_and_keeps_pinned_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_data_dir(dir.path()).unwrap();
    let size = 200_000usize;
    let cap = 5 * footprint(size as u64) + 1000;
    let mut pinned = BTreeSet::new();
    let mut ids = Vec::new();
    let mut evicted_all = Vec::new();
    for i in 0..20u64 {
        let blob = bytes(size, i + 1);
        let evicted = store
            .make_room(footprint(size as u64), cap, &pinned)
            .unwrap();
        evicted_all.extend(evicted.iter().copied());
        let id = store.import(&blob[..]).unwrap();
        ids.push(id);
        // The store's real footprint is what the cap planned with.
        let real = store
            .usage()
            .into_iter()
            .find(|b| b.id == id)
            .unwrap()
            .bytes;
        assert_eq!(real, footprint(size as u64));
        assert!(
            used(&store) <= cap,
            "after blob {i}: {} > {cap}",
            used(&store)
        );
        // The first two are an active campaign's: pinned.
        if i < 2 {
            pinned.insert(id);
        }
        // Vehicles keep asking for blob 5: it stays warm.
        if i >= 5 {
            let mut sink = Vec::new();
            store
                .serve(&ids[5], &ChunkGroupRanges::from(0..1u64), &mut sink)
                .unwrap();
        }
        for p in &pinned {
            assert!(store.info(p).is_some(), "pinned blob {p} evicted");
        }
    }
    assert!(evicted_all.len() >= 14, "{} evicted", evicted_all.len());
    assert!(store.info(&ids[5]).is_some(), "the warm blob was evicted");
    assert!(!evicted_all.contains(&ids[0]) && !evicted_all.contains(&ids[1]));
    // Evicted blobs are gone from disk, not just from the index.
    let files = std::fs::read_dir(dir.path().join("store/blobs"))
        .unwrap()
        .count();
    assert_eq!(files, 2 * store.list().len());

    // Pinned blobs and the incoming one alone over the cap: refused, nothing evicted.
    let before = store.list().len();
    let error = store.make_room(cap, cap, &pinned).unwrap_err();
    assert!(matches!(error, StoreError::CapFull(_)), "{error}");
    assert!(error.to_string().contains("pinned"), "{error}");
    assert_eq!(store.list().len(), before);
}

#[test]
fn least_recent_use_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let size = 50_000usize;
    let ids: Vec<BlobId> = {
        let (store, _) = open_data_dir(dir.path()).unwrap();
        let ids: Vec<BlobId> = (0..4)
            .map(|i| store.import(&bytes(size, i + 10)[..]).unwrap())
            .collect();
        // Serve the oldest: now blob 1 is the least recently used.
        let mut sink = Vec::new();
        store
            .serve(&ids[0], &ChunkGroupRanges::from(0..1u64), &mut sink)
            .unwrap();
        store.flush_usage().unwrap();
        ids
    };
    let (store, report) = open_data_dir(dir.path()).unwrap();
    assert_eq!(report.dropped_records, 0);
    let cap = 4 * footprint(size as u64);
    let evicted = store
        .make_room(footprint(size as u64), cap, &BTreeSet::new())
        .unwrap();
    assert_eq!(evicted, vec![ids[1]]);
    // A blob imported after the restart is newer than every one before it.
    let fresh = store.import(&bytes(size, 99)[..]).unwrap();
    let evicted = store
        .make_room(2 * footprint(size as u64), cap, &BTreeSet::new())
        .unwrap();
    assert_eq!(evicted, vec![ids[2], ids[3]]);
    assert!(store.info(&fresh).is_some() && store.info(&ids[0]).is_some());
}
