//! The talking half of fleet membership ([`crate::membership`]): a dialer's introduction and a
//! listener's answer, each one length-prefixed certificate on a [`MEMBER_PROTOCOL`] stream. The
//! tasks here only move bytes, within [`INTRODUCTION_TIMEOUT`] and [`MAX_CERT_BYTES`]; the
//! driver's [`Gate`](crate::membership::Gate) decides.
//!
//! An introduction can still be dropped unread by the listener (a full queue, see
//! [`super::inbound`]); a dropped one used to make its writer refuse the listener as silent and
//! disconnect (every vehicle's first dial of the depot failed that way on the 30-vehicle
//! testbed, and ~500 introductions between vehicles). So the introducer tries again, up to
//! [`ATTEMPTS`] times within the one [`INTRODUCTION_TIMEOUT`], when its stream was stopped or
//! ended before any answer.

use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use proto::membership::MAX_CERT_BYTES;
use tokio::sync::{mpsc, oneshot};

use super::Stream;
use crate::membership::{INTRODUCTION_TIMEOUT, MEMBER_PROTOCOL};

/// What an introduction task tells the driver.
pub(super) enum Heard {
    /// A dialer got the listener's answer (its certificate), or nothing usable.
    Answer {
        peer: PeerId,
        result: Result<Vec<u8>, String>,
    },
    /// A peer that connected to us introduced itself with these bytes; the driver replies with
    /// our certificate when it admits the peer, `None` when not.
    Introduced {
        peer: PeerId,
        certificate: Vec<u8>,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// A peer that connected to us has had its time to introduce itself.
    Deadline { peer: PeerId },
}

/// Tries of one introduction whose stream the listener dropped unanswered.
const ATTEMPTS: u32 = 3;
/// Pause before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Introduces us to `peer` (which we dialled) with `ours`, and reports its answer.
pub(super) fn introduce(
    control: &super::streams::Control,
    peer: PeerId,
    ours: Vec<u8>,
    heard: mpsc::UnboundedSender<Heard>,
) {
    let control = control.clone();
    tokio::spawn(async move {
        let tries = async {
            let mut attempt = 1;
            loop {
                match exchange(&control, peer, &ours).await {
                    Err(Attempt::Dropped(reason)) if attempt < ATTEMPTS => {
                        tracing::debug!(%peer, attempt, %reason, "introduction dropped; again");
                        attempt += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(Attempt::Dropped(reason) | Attempt::Failed(reason)) => break Err(reason),
                    Ok(answer) => break Ok(answer),
                }
            }
        };
        let result = tokio::time::timeout(INTRODUCTION_TIMEOUT, tries)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer to our introduction within {INTRODUCTION_TIMEOUT:?}"
                ))
            });
        let _ = heard.send(Heard::Answer { peer, result });
    });
}

/// How one try of an introduction failed.
enum Attempt {
    /// The listener dropped the stream before answering anything (as a node does with a
    /// stream its queue has no room for): worth another try.
    Dropped(String),
    /// Anything else: the answer was bad, or the connection is gone.
    Failed(String),
}

/// One try: open a stream, write our certificate, read the answer.
async fn exchange(
    control: &super::streams::Control,
    peer: PeerId,
    ours: &[u8],
) -> Result<Vec<u8>, Attempt> {
    let mut stream = control
        .open_stream(peer, MEMBER_PROTOCOL)
        .await
        .map_err(|e| Attempt::Failed(format!("it does not take introductions: {e}")))?;
    write_frame(&mut stream, ours)
        .await
        .map_err(|(reason, kind)| attempt_error(reason, kind))?;
    read_frame(&mut stream)
        .await
        .map_err(|(reason, kind)| attempt_error(reason, kind))
}

/// A stream stopped or reset by the listener (QUIC STOP_SENDING or RESET_STREAM, which quinn
/// reports as `ConnectionReset`) was dropped unanswered; a lost connection or a bad frame is
/// final.
fn attempt_error(reason: String, kind: Option<std::io::ErrorKind>) -> Attempt {
    match kind {
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof) => {
            Attempt::Dropped(reason)
        }
        _ => Attempt::Failed(reason),
    }
}

/// Hears a connected peer's introduction on `stream`, and answers it as the driver decides.
pub(super) fn hear(peer: PeerId, mut stream: Stream, heard: mpsc::UnboundedSender<Heard>) {
    tokio::spawn(async move {
        let exchange = async {
            let certificate = read_frame(&mut stream).await.ok()?;
            let (reply, answer) = oneshot::channel();
            heard
                .send(Heard::Introduced {
                    peer,
                    certificate,
                    reply,
                })
                .ok()?;
            let ours = answer.await.ok()??;
            write_frame(&mut stream, &ours).await.ok()?;
            stream.close().await.ok()
        };
        // A peer that says nothing is the deadline's; this only frees the task.
        let _ = tokio::time::timeout(INTRODUCTION_TIMEOUT, exchange).await;
    });
}

/// Tells the driver when `peer`'s time to introduce itself is up.
pub(super) fn deadline(peer: PeerId, heard: mpsc::UnboundedSender<Heard>) {
    tokio::spawn(async move {
        tokio::time::sleep(INTRODUCTION_TIMEOUT).await;
        let _ = heard.send(Heard::Deadline { peer });
    });
}

/// Why a frame could not be moved, and the I/O error's kind if it was one.
type FrameError = (String, Option<std::io::ErrorKind>);

async fn write_frame(stream: &mut Stream, bytes: &[u8]) -> Result<(), FrameError> {
    let length = u16::try_from(bytes.len())
        .ok()
        .filter(|length| usize::from(*length) <= MAX_CERT_BYTES)
        .ok_or_else(|| (format!("a certificate of {} bytes", bytes.len()), None))?;
    let written = async {
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    written
        .await
        .map_err(|e| (format!("writing the introduction: {e}"), Some(e.kind())))
}

async fn read_frame(stream: &mut Stream) -> Result<Vec<u8>, FrameError> {
    let io = |e: std::io::Error| (format!("reading an introduction: {e}"), Some(e.kind()));
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.map_err(io)?;
    let length = usize::from(u16::from_be_bytes(length));
    if length > MAX_CERT_BYTES {
        return Err((
            format!("an introduction of {length} bytes (at most {MAX_CERT_BYTES})"),
            None,
        ));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).await.map_err(io)?;
    Ok(bytes)
}
