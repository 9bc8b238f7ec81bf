//! A byte-rate limit shared by many streams: a token bucket refilled at the configured rate,
//! holding at most one second of it (or a shorter burst, [`LINK_BURST`], for a limit that
//! stands for a link's capacity), and a stream wrapper that moves only what the bucket allows,
//! in one direction.
//!
//! - Reads, for what a node downloads (a depot's backhaul, a vehicle's download limit): QUIC's
//!   flow control then slows the sender, so the link carries no more than the rate on average.
//! - Writes, for what a server uploads (a depot's share of the yard WiFi): the bytes handed to
//!   QUIC are paced, and QUIC sends them on at once, so the link carries no more than the rate
//!   on average, in bursts of at most the bucket's size.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

/// The smallest read or write the limit lets through at once, so that a low rate still moves
/// whole frames rather than a few bytes per wake-up.
const MIN_GRANT: u64 = 16 * 1024;

/// The largest write granted at once: a writer hands QUIC a whole response (a few hundred
/// KiB), and without a cap the first stream to ask would take the whole bucket while the
/// others sharing the limit wait; with it, streams take turns in slices of this size.
const MAX_WRITE_GRANT: usize = 64 * 1024;

/// The burst of a limit that stands for a link's capacity (a vehicle's download limit, a
/// depot's share of the yard WiFi): short, so that a transfer takes its size over the rate,
/// as on a link of that capacity, even after the link was idle. (With one second's burst, a
/// 300 KiB delta at 256 KiB/s would arrive in a third of a second.)
pub const LINK_BURST: Duration = Duration::from_millis(100);

/// A shared token bucket of bytes.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: u64,
    /// Tokens held at most: the burst.
    capacity: f64,
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
        Self::with_burst(bytes_per_second, Duration::from_secs(1))
    }

    /// At most `bytes_per_second` on average (at least 1), with bursts of `burst`'s worth (but
    /// at least 16 KiB, the smallest grant). The bucket starts empty.
    pub fn with_burst(bytes_per_second: u64, burst: Duration) -> Arc<Self> {
        let bytes_per_second = bytes_per_second.max(1);
        let capacity = (bytes_per_second as f64 * burst.as_secs_f64()).max(MIN_GRANT as f64);
        Arc::new(Self {
            bytes_per_second,
            capacity,
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
        self.capacity
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

/// Which direction of a [`Throttled`] stream the limit paces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paced {
    Reads,
    Writes,
}

/// A stream whose reads (or, made with [`Throttled::writes`], writes) are paced by a
/// [`RateLimit`]; the other direction passes through.
pub struct Throttled<S> {
    inner: S,
    limit: Arc<RateLimit>,
    paced: Paced,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> std::fmt::Debug for Throttled<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttled")
            .field("limit", &self.limit)
            .field("paced", &self.paced)
            .finish_non_exhaustive()
    }
}

impl<S> Throttled<S> {
    /// Wraps `inner`, pacing its reads (a download).
    pub fn new(inner: S, limit: Arc<RateLimit>) -> Self {
        Self {
            inner,
            limit,
            paced: Paced::Reads,
            sleep: None,
        }
    }

    /// Wraps `inner`, pacing its writes (what a server uploads).
    pub fn writes(inner: S, limit: Arc<RateLimit>) -> Self {
        Self {
            paced: Paced::Writes,
            ..Self::new(inner, limit)
        }
    }

    /// Waits until the bucket grants some of `want` (> 0) bytes; returns how many (at least
    /// one), taken from the bucket: the caller refunds what it does not use.
    fn poll_grant(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        loop {
            if let Some(sleep) = self.sleep.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
            }
            match self.limit.take(Instant::now(), want) {
                Ok(granted) => return Poll::Ready(granted),
                Err(wait) => self.sleep = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.paced != Paced::Reads {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Poll::Ready(granted) = self.poll_grant(cx, buf.len()) else {
            return Poll::Pending;
        };
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..granted]);
        let used = match &result {
            Poll::Ready(Ok(read)) => *read,
            _ => 0,
        };
        this.limit.refund(granted - used);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.paced != Paced::Writes {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Poll::Ready(granted) = self.poll_grant(cx, buf.len().min(MAX_WRITE_GRANT)) else {
            return Poll::Pending;
        };
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, &buf[..granted]);
        let used = match &result {
            Poll::Ready(Ok(written)) => *written,
            _ => 0,
        };
        this.limit.refund(granted - used);
        result
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
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};

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
        // A link's limit bursts less: a tenth of a second's worth, never less than 16 KiB.
        let link = RateLimit::with_burst(1_000_000, LINK_BURST);
        let t0 = Instant::now();
        assert_eq!(
            link.take(t0 + Duration::from_secs(60), 1 << 20),
            Ok(100_000)
        );
        let slow = RateLimit::with_burst(10_000, LINK_BURST);
        assert_eq!(slow.take(t0 + Duration::from_secs(60), 1 << 20), Ok(16_384));
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

    #[tokio::test(start_paused = true)]
    async fn a_throttled_write_takes_as_long_as_the_rate_says() {
        let data = vec![7u8; 300_000];
        let limit = RateLimit::new(100_000);
        let mut writer = Throttled::writes(futures::io::Cursor::new(Vec::new()), limit);
        let started = Instant::now();
        // As a server answers: the whole response at once.
        writer.write_all(&data).await.unwrap();
        writer.flush().await.unwrap();
        assert_eq!(writer.inner.get_ref(), &data);
        // Virtual time, as for reads.
        let took = started.elapsed().as_secs_f64();
        let most = 3.0 + MIN_GRANT as f64 / 100_000.0 + 0.01;
        assert!(
            (3.0..=most).contains(&took),
            "took {took} s, at most {most}"
        );
        // Reads of a write-paced stream are not paced.
        let mut reader =
            Throttled::writes(futures::io::Cursor::new(data.clone()), RateLimit::new(1));
        let mut out = Vec::new();
        let started = Instant::now();
        reader.read_to_end(&mut out).await.unwrap();
        assert_eq!((out.len(), started.elapsed()), (data.len(), Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_sharing_a_limit_share_its_rate_and_take_turns() {
        let limit = RateLimit::new(100_000);
        let started = Instant::now();
        let write = |bytes: usize| {
            let limit = limit.clone();
            async move {
                let mut writer = Throttled::writes(futures::io::Cursor::new(Vec::new()), limit);
                writer.write_all(&vec![1u8; bytes]).await.unwrap();
                started.elapsed().as_secs_f64()
            }
        };
        let (first, second) = tokio::join!(write(200_000), write(200_000));
        // Together no faster than the rate: 400 KB at 100 KB/s.
        assert!(first.max(second) >= 4.0, "{first} s and {second} s");
        // Neither waits for the other to finish: slices of at most 64 KiB alternate.
        assert!(first.min(second) >= 3.0, "{first} s and {second} s");
    }
}
