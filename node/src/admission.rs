//! Who may take one more of a server's slots: a bounded pool shared by every peer, of which no
//! one peer may hold more than its share. Without the share, one peer that asks and never reads
//! holds the whole pool and every other peer is refused `Busy` for as long as it stays.
//!
//! Sans-IO: the driver ([`crate::serve`]) admits, and releases when the exchange ends.

use std::collections::BTreeMap;

/// Why a slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot of the pool is held.
    Full,
    /// The pool has room, but this peer already holds its share of it.
    PeerShare,
}

/// Slots held, in all and per peer, against their two bounds.
#[derive(Clone, Debug)]
pub struct Admission<P> {
    capacity: usize,
    per_peer: usize,
    held: usize,
    by_peer: BTreeMap<P, usize>,
}

impl<P: Ord + Clone> Admission<P> {
    /// A pool of `capacity` slots, at most `per_peer` of them held by any one peer.
    pub fn new(capacity: usize, per_peer: usize) -> Self {
        Self {
            capacity,
            per_peer,
            held: 0,
            by_peer: BTreeMap::new(),
        }
    }

    /// Takes a slot for `peer`, or says why not. A peer at its share is told so even when the
    /// pool is full too: its own share is what it can wait for.
    pub fn admit(&mut self, peer: &P) -> Result<(), Refusal> {
        let holds = self.holds(peer);
        if holds >= self.per_peer {
            return Err(Refusal::PeerShare);
        }
        if self.held >= self.capacity {
            return Err(Refusal::Full);
        }
        self.held += 1;
        self.by_peer.insert(peer.clone(), holds + 1);
        Ok(())
    }

    /// Gives back a slot `peer` took. Releasing one it does not hold changes nothing.
    pub fn release(&mut self, peer: &P) {
        let Some(holds) = self.by_peer.get_mut(peer) else {
            return;
        };
        *holds -= 1;
        if *holds == 0 {
            self.by_peer.remove(peer);
        }
        self.held -= 1;
    }

    /// Slots `peer` holds.
    pub fn holds(&self, peer: &P) -> usize {
        self.by_peer.get(peer).copied().unwrap_or(0)
    }

    /// Slots held by everyone.
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_stops_at_its_share_while_others_are_admitted() {
        let mut pool = Admission::new(10, 3);
        for _ in 0..3 {
            assert_eq!(pool.admit(&'a'), Ok(()));
        }
        assert_eq!(pool.admit(&'a'), Err(Refusal::PeerShare));
        assert_eq!(pool.admit(&'b'), Ok(()));
        assert_eq!((pool.holds(&'a'), pool.holds(&'b'), pool.held()), (3, 1, 4));
        pool.release(&'a');
        assert_eq!(pool.admit(&'a'), Ok(()));
    }

    #[test]
    fn the_pool_bounds_everyone_together() {
        let mut pool = Admission::new(4, 2);
        for peer in ['a', 'a', 'b', 'b'] {
            assert_eq!(pool.admit(&peer), Ok(()));
        }
        assert_eq!(pool.admit(&'c'), Err(Refusal::Full));
        // A peer at its share hears that, not that the pool is full.
        assert_eq!(pool.admit(&'a'), Err(Refusal::PeerShare));
        pool.release(&'b');
        assert_eq!(pool.admit(&'c'), Ok(()));
        assert_eq!(pool.held(), 4);
    }

    #[test]
    fn releasing_what_was_not_held_changes_nothing_and_peers_leave_no_trace() {
        let mut pool = Admission::new(2, 2);
        pool.release(&'z');
        assert_eq!(pool.held(), 0);
        pool.admit(&'a').unwrap();
        pool.release(&'a');
        pool.release(&'a');
        assert_eq!(pool.held(), 0);
        assert!(pool.by_peer.is_empty());
        assert_eq!(pool.admit(&'b'), Ok(()));
        assert_eq!(pool.admit(&'b'), Ok(()));
        assert_eq!(pool.admit(&'c'), Err(Refusal::Full));
    }
}
