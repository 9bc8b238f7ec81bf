//! A stream whose writes fail once the peer has taken nothing for a while: a server must not
//! hold a slot, a task and an encoded answer for a peer that asked and stopped reading.
//!
//! The deadline runs only while a write is blocked, and starts again whenever the peer takes a
//! byte: a slow but reading peer (a paced answer, a busy Wi-Fi) is never cut, only one that does
//! not read at all. Reads pass through untouched.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;

/// The peer took no byte of an answer for `after`.
#[derive(Debug, thiserror::Error)]
#[error("the peer read nothing of the answer for {after:?}")]
pub struct WriteStalled {
    /// The deadline that passed.
    pub after: Duration,
}

/// True when `error` is a [`WriteDeadline`]'s [`WriteStalled`].
pub fn is_write_stall(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<WriteStalled>())
}

/// `inner`, whose writes (flush and close included) fail with [`WriteStalled`] when blocked for
/// longer than the deadline.
#[derive(Debug)]
pub struct WriteDeadline<S> {
    inner: S,
    deadline: Duration,
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    /// `inner` with writes cut after `deadline` without progress.
    pub fn new(inner: S, deadline: Duration) -> Self {
        Self {
            inner,
            deadline,
            blocked: None,
        }
    }

    /// Passes on what the inner write gave, or, while it is blocked, runs the deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        inner: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if inner.is_ready() {
            self.blocked = None;
            return inner;
        }
        let deadline = self.deadline;
        let blocked = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        match blocked.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteStalled { after: deadline },
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let inner = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, inner)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, inner)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = Pin::new(&mut self.inner).poll_close(cx);
        self.watch(cx, inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncWriteExt;

    /// A pipe with room for 16 bytes, its writer seen through `futures::io` as a stream is.
    fn pipe() -> (
        tokio::io::DuplexStream,
        tokio_util::compat::Compat<tokio::io::DuplexStream>,
    ) {
        use tokio_util::compat::TokioAsyncWriteCompatExt;
        let (reader, writer) = tokio::io::duplex(16);
        (reader, writer.compat_write())
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_is_cut_at_the_deadline() {
        let (_reader, writer) = pipe();
        let mut stream = WriteDeadline::new(writer, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let error = stream.write_all(&[7; 64]).await.unwrap_err();
        assert!(is_write_stall(&error), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(!is_write_stall(&io::Error::from(io::ErrorKind::TimedOut)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        use tokio::io::AsyncReadExt;
        let (mut reader, writer) = pipe();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            // One byte every 4 s: each within the deadline, the whole far beyond it.
            while reader.read(&mut byte).await.is_ok_and(|n| n > 0) {
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        });
        let mut stream = WriteDeadline::new(writer, Duration::from_secs(5));
        stream.write_all(&[7; 32]).await.unwrap();
        stream.close().await.unwrap();
    }
}
