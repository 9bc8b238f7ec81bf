//! When to dial again the addresses the caller configured (a vehicle's depot, a depot's
//! upstreams). Such a peer is the fetch's surest source: when its connection closes, or a dial
//! of it fails, it is dialled again after a back-off that doubles up to [`REDIAL_MAX`], for as
//! long as the fetch runs. A depot restarted on its address (a power cut, an upgrade) is so
//! found again within seconds of its return. Peers found otherwise (mDNS, an upstream's
//! answer) are not kept here: others will be found.
//!
//! Sans-IO and deterministic (no jitter): the [`Swarm`](super::Swarm) feeds it dial outcomes
//! and closes and asks it which address is due; the driver only dials.

use std::time::{Duration, Instant};

/// The first redial after a configured peer's connection closed. Short: a restarted depot is
/// often back within seconds, and by the time a dead connection is noticed (QUIC's idle
/// timeout) it has been gone for several already; one QUIC handshake attempt costs little.
pub const REDIAL_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two dials of a configured address: a depot that comes back is
/// dialled within this (plus one dial) of its return, at the cost of one handshake attempt
/// per address this often while it is away.
pub const REDIAL_MAX: Duration = Duration::from_secs(4);

/// The wait before the next dial after `failures` failed dials in a row since the address was
/// last connected: [`REDIAL_FIRST`] doubled per failure, at most [`REDIAL_MAX`].
pub fn redial_backoff(failures: u32) -> Duration {
    let doubled = 1u32.checked_shl(failures).unwrap_or(u32::MAX);
    REDIAL_FIRST.saturating_mul(doubled).min(REDIAL_MAX)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State<P> {
    /// A dial is under way; `first` when the address was never dialled before.
    Dialling {
        first: bool,
    },
    Connected(P),
    /// Dialled again at this instant.
    Waiting(Instant),
    /// Its peer was banned: never dialled again.
    Abandoned,
}

#[derive(Clone, Debug)]
struct Address<P> {
    state: State<P>,
    /// The peer it reached last, once it did.
    peer: Option<P>,
    /// Failed dials since it was last connected.
    failures: u32,
}

/// The configured addresses of one fetch, by their index in the caller's list. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct Redial<P> {
    addresses: Vec<Address<P>>,
}

impl<P: Clone + PartialEq> Redial<P> {
    /// `count` addresses, each being dialled for the first time.
    pub fn new(count: usize) -> Self {
        let address = Address {
            state: State::Dialling { first: true },
            peer: None,
            failures: 0,
        };
        Self {
            addresses: vec![address; count],
        }
    }

    /// A dial of address `index` ended: `Some` with the peer it reached. An index out of range
    /// is ignored.
    pub fn dialled(&mut self, now: Instant, index: usize, peer: Option<P>) {
        let Some(address) = self.addresses.get_mut(index) else {
            return;
        };
        if address.state == State::Abandoned {
            return;
        }
        match peer {
            Some(peer) => {
                address.failures = 0;
                address.peer = Some(peer.clone());
                address.state = State::Connected(peer);
            }
            None => {
                address.state = State::Waiting(now + redial_backoff(address.failures));
                address.failures = address.failures.saturating_add(1);
            }
        }
    }

    /// `peer`'s last connection closed: the addresses it was reached at are dialled again.
    pub fn closed(&mut self, now: Instant, peer: &P) {
        for address in &mut self.addresses {
            if address.state == State::Connected(peer.clone()) {
                address.state = State::Waiting(now + redial_backoff(0));
            }
        }
    }

    /// `peer` connected by some other route (it dialled us, or mDNS found it): addresses
    /// waiting to reach it need no dial.
    pub fn connected(&mut self, peer: &P) {
        for address in &mut self.addresses {
            if matches!(address.state, State::Waiting(_)) && address.peer.as_ref() == Some(peer) {
                address.failures = 0;
                address.state = State::Connected(peer.clone());
            }
        }
    }

    /// `peer` sent bad data: the addresses it was reached at are not dialled again.
    pub fn abandon(&mut self, peer: &P) {
        for address in &mut self.addresses {
            if address.peer.as_ref() == Some(peer) {
                address.state = State::Abandoned;
            }
        }
    }

    /// The index of an address due for a dial now, marked as being dialled.
    pub fn poll_dial(&mut self, now: Instant) -> Option<usize> {
        let index = self
            .addresses
            .iter()
            .position(|address| matches!(address.state, State::Waiting(at) if at <= now))?;
        self.addresses[index].state = State::Dialling { first: false };
        Some(index)
    }

    /// When the next address is due, if any is waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.addresses
            .iter()
            .filter_map(|address| match address.state {
                State::Waiting(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Whether a first dial of some address is still under way. Only first dials hold off a
    /// stall: redials go on for as long as the fetch runs, so counting them would keep a fetch
    /// from a peer that never returns alive for ever.
    pub fn first_dials_pending(&self) -> bool {
        self.addresses
            .iter()
            .any(|address| address.state == State::Dialling { first: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let waits: Vec<Duration> = (0..7).map(redial_backoff).collect();
        let expected = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0].map(seconds);
        assert_eq!(waits, expected);
        assert_eq!(redial_backoff(u32::MAX), REDIAL_MAX);
    }

    #[test]
    fn a_configured_peer_is_dialled_again_after_a_close_and_after_every_failure() {
        let start = Instant::now();
        let mut redial = Redial::new(2);
        assert!(redial.first_dials_pending());
        redial.dialled(start, 0, Some(7u32));
        redial.dialled(start, 1, None);
        assert!(!redial.first_dials_pending(), "both first dials ended");
        // Address 1 failed once: due after the first wait.
        assert_eq!(redial.poll_timeout(), Some(start + REDIAL_FIRST));
        assert_eq!(redial.poll_dial(start), None);
        assert_eq!(redial.poll_dial(start + REDIAL_FIRST), Some(1));
        assert_eq!(
            redial.poll_dial(start + REDIAL_FIRST),
            None,
            "dial under way"
        );
        assert!(!redial.first_dials_pending(), "a redial holds no stall off");

        // Peer 7 (address 0) goes away and stays away: dialled at growing gaps, never dropped.
        let closed = start + seconds(10.0);
        redial.closed(closed, &7);
        let mut at = closed;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let due = redial.poll_timeout().unwrap();
            gaps.push(due - at);
            assert_eq!(redial.poll_dial(due), Some(0));
            redial.dialled(due, 0, None);
            at = due;
        }
        assert_eq!(gaps, [0.5, 0.5, 1.0, 2.0, 4.0, 4.0].map(seconds));

        // It returns: connected, nothing waiting, and the back-off starts over at the next close.
        let due = redial.poll_timeout().unwrap();
        assert_eq!(redial.poll_dial(due), Some(0));
        redial.dialled(due, 0, Some(7));
        assert_eq!(redial.poll_timeout(), None);
        redial.closed(due, &7);
        assert_eq!(redial.poll_timeout(), Some(due + REDIAL_FIRST));
    }

    #[test]
    fn a_peer_back_by_another_route_is_not_dialled_and_a_banned_one_never_again() {
        let start = Instant::now();
        let mut redial = Redial::new(1);
        redial.dialled(start, 0, Some(7u32));
        redial.closed(start, &7);
        redial.connected(&7);
        assert_eq!(redial.poll_timeout(), None);
        redial.closed(start, &7);
        redial.abandon(&7);
        assert_eq!(redial.poll_timeout(), None);
        redial.dialled(start, 0, Some(7));
        assert_eq!(redial.poll_dial(start + REDIAL_MAX), None);
        // Events about unknown addresses and peers change nothing.
        redial.dialled(start, 5, None);
        redial.closed(start, &8);
        assert_eq!(redial.poll_timeout(), None);
    }
}
