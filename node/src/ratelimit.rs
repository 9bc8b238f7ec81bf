//! A byte-rate limit shared by every stream of a transfer, for a depot's backhaul: a token
//! bucket refilled at the configured rate, holding at most one second of it, and a stream
//! wrapper that reads only what the bucket allows. Throttling the reader is enough: QUIC's flow
//! control then slows the sender, so the link carries no more than the rate on average.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// The smallest read the limit lets through at once, so that a low rate still moves whole
/// frames rather than a few bytes per wake-up.
const MIN_GRANT: u64 = 16 * 1024;

/// A shared token bucket of bytes.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// At most `bytes_per_second` on average (at least 1), with bursts of one second's worth.
    pub fn new(bytes_per_second: u64) -> Arc<Self> {
        let bytes_per_second = bytes_per_second.max(1);
        Arc::new(Self {
            bytes_per_second,
            state: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        })
    }

    /// The configured rate.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    fn capacity(&self) -> f64 {
        self.bytes_per_second.max(MIN_GRANT) as f64
    }

    /// Takes up to `want` bytes: `Ok(granted)`, or `Err(wait)` when the bucket must refill.
    fn take(&self, now: Instant, want: usize) -> Result<usize, Duration> {
        let mut bucket = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.bytes_per_second as f64).min(self.capacity());
        bucket.at = now;
        let least = (want as f64).min(MIN_GRANT as f64).min(self.capacity());
        if bucket.tokens >= least {
            let granted = (want as f64).min(bucket.tokens).floor();
            bucket.tokens -= granted;
            // `granted` <= `want`, a usize.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(granted as usize)
        } else {
            let missing = least - bucket.tokens;
            Err(Duration::from_secs_f64(
                missing / self.bytes_per_second as f64,
            ))
        }
    }

    fn refund(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut bucket = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.tokens = (bucket.tokens + bytes as f64).min(self.capacity());
    }
}

/// A stream whose reads are paced by a [`RateLimit`]; writes pass through.
pub struct Throttled<S> {
    inner: S,
    limit: Arc<RateLimit>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S> Throttled<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limit: Arc<RateLimit>) -> Self {
        Self {
            inner,
            limit,
            sleep: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.limit.take(Instant::now(), buf.len()) {
                Ok(granted) => {
                    let this = &mut *self;
                    let result = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..granted]);
                    let used = match &result {
                        Poll::Ready(Ok(read)) => *read,
                        _ => 0,
                    };
                    this.limit.refund(granted - used);
                    return result;
                }
                Err(wait) => {
                    self.sleep = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::AsyncReadExt as _;

    #[test]
    fn the_bucket_grants_what_has_accrued_and_names_the_wait_otherwise() {
        let limit = RateLimit::new(100_000);
        let t0 = Instant::now();
        // Empty at first: wait for the first 16 KiB.
        let wait = limit.take(t0, 65_536).unwrap_err();
        assert!((wait.as_secs_f64() - 0.16384).abs() < 1e-3, "{wait:?}");
        // Half a second later 50 KB accrued.
        assert_eq!(
            limit.take(t0 + Duration::from_millis(500), 65_536),
            Ok(50_000)
        );
        // Unused bytes come back; a read waits for at least one minimum grant (16 KiB).
        limit.refund(10_000);
        assert!(limit.take(t0 + Duration::from_millis(500), 65_536).is_err());
        limit.refund(10_000);
        assert_eq!(
            limit.take(t0 + Duration::from_millis(500), 65_536),
            Ok(20_000)
        );
        // Never more than a second's worth accrues.
        assert_eq!(
            limit.take(t0 + Duration::from_secs(60), 1 << 20),
            Ok(100_000)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_read_takes_as_long_as_the_rate_says() {
        let data = vec![7u8; 300_000];
        let limit = RateLimit::new(100_000);
        let mut reader = Throttled::new(futures::io::Cursor::new(data.clone()), limit);
        let started = Instant::now();
        // As the fetch path reads: into a large buffer, again and again.
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = reader.read(&mut buf).await.unwrap();
            if read == 0 {
                break;
            }
            out.extend_from_slice(&buf[..read]);
        }
        assert_eq!(out, data);
        // Virtual time: the bytes over the rate, plus at most one minimum grant (the bucket
        // starts empty, so the first read waits for one) and the timer's millisecond rounding.
        let took = started.elapsed().as_secs_f64();
        let most = 3.0 + MIN_GRANT as f64 / 100_000.0 + 0.01;
        assert!(
            (3.0..=most).contains(&took),
            "took {took} s, at most {most}"
        );
    }
}
