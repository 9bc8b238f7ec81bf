//! Requests per client: a token bucket per client address, so that one client (a script gone
//! wrong, someone probing the API) cannot take the director's time from every other. Sans-IO:
//! the caller passes the time.
//!
//! A depot relays its whole yard's reports from one address, so the default allows bursts;
//! the table of clients is bounded, the least recently seen forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;

/// How many requests a client may make: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_sec: f64,
    /// Requests at once (the bucket's size).
    pub burst: f64,
}

impl Default for RateLimit {
    /// 50 requests a second, bursts of 500: a depot relaying a yard's backlog, an operator's
    /// console refreshing, a scraper, each well inside; a flood not.
    fn default() -> Self {
        Self {
            per_sec: 50.0,
            burst: 500.0,
        }
    }
}

/// Clients remembered at most.
const MAX_CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

/// The buckets of every client seen.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    /// Clients limited to `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes one request of `client` at `now` (seconds): `Ok`, or the seconds until it may
    /// ask again.
    pub fn take(&mut self, client: IpAddr, now: f64) -> Result<(), f64> {
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(&client) {
            self.forget_full(now);
        }
        let limit = self.limit;
        let bucket = self.buckets.entry(client).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + (now - bucket.at).max(0.0) * limit.per_sec).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - bucket.tokens) / limit.per_sec)
        }
    }

    /// Forgets the clients whose buckets have refilled (they lose nothing), or, if none has,
    /// the longest unseen half.
    fn forget_full(&mut self, now: f64) {
        let limit = self.limit;
        self.buckets
            .retain(|_, b| b.tokens + (now - b.at) * limit.per_sec < limit.burst);
        if self.buckets.len() >= MAX_CLIENTS {
            let mut ages: Vec<f64> = self.buckets.values().map(|b| b.at).collect();
            ages.sort_by(f64::total_cmp);
            let cut = ages[ages.len() / 2];
            self.buckets.retain(|_, b| b.at > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_client() {
        let mut limiter = Limiter::new(RateLimit {
            per_sec: 2.0,
            burst: 3.0,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(limiter.take(a, 0.0), Ok(()));
        }
        let wait = limiter.take(a, 0.0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        // Another client is not held back by the first.
        assert_eq!(limiter.take(b, 0.0), Ok(()));
        // Half a second later one more; a minute later a full burst, not more.
        assert_eq!(limiter.take(a, 0.5), Ok(()));
        assert!(limiter.take(a, 0.5).is_err());
        for _ in 0..3 {
            assert_eq!(limiter.take(a, 60.0), Ok(()));
        }
        assert!(limiter.take(a, 60.0).is_err());
    }

    #[test]
    fn the_table_of_clients_stays_bounded() {
        let mut limiter = Limiter::new(RateLimit::default());
        for i in 0..u32::try_from(MAX_CLIENTS + 10).unwrap() {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            limiter.take(ip, f64::from(i) * 1e-6).unwrap();
        }
        assert!(limiter.buckets.len() <= MAX_CLIENTS);
    }
}
