//! The talking half of fleet membership ([`crate::membership`]): a dialer's introduction and a
//! listener's answer, each one length-prefixed certificate on a [`MEMBER_PROTOCOL`] stream. The
//! tasks here only move bytes, within [`INTRODUCTION_TIMEOUT`] and [`MAX_CERT_BYTES`]; the
//! driver's [`Gate`](crate::membership::Gate) decides.

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

/// Introduces us to `peer` (which we dialled) with `ours`, and reports its answer.
pub(super) fn introduce(
    control: &libp2p_stream::Control,
    peer: PeerId,
    ours: Vec<u8>,
    heard: mpsc::UnboundedSender<Heard>,
) {
    let mut control = control.clone();
    tokio::spawn(async move {
        let exchange = async {
            let mut stream = control
                .open_stream(peer, MEMBER_PROTOCOL)
                .await
                .map_err(|e| format!("it does not take introductions: {e}"))?;
            write_frame(&mut stream, &ours).await?;
            read_frame(&mut stream).await
        };
        let result = tokio::time::timeout(INTRODUCTION_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer to our introduction within {INTRODUCTION_TIMEOUT:?}"
                ))
            });
        let _ = heard.send(Heard::Answer { peer, result });
    });
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

async fn write_frame(stream: &mut Stream, bytes: &[u8]) -> Result<(), String> {
    let length = u16::try_from(bytes.len())
        .ok()
        .filter(|length| usize::from(*length) <= MAX_CERT_BYTES)
        .ok_or_else(|| format!("a certificate of {} bytes", bytes.len()))?;
    let written = async {
        stream.write_all(&length.to_be_bytes()).await?;
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    written
        .await
        .map_err(|e| format!("writing the introduction: {e}"))
}

async fn read_frame(stream: &mut Stream) -> Result<Vec<u8>, String> {
    let mut length = [0u8; 2];
    stream
        .read_exact(&mut length)
        .await
        .map_err(|e| format!("reading an introduction: {e}"))?;
    let length = usize::from(u16::from_be_bytes(length));
    if length > MAX_CERT_BYTES {
        return Err(format!(
            "an introduction of {length} bytes (at most {MAX_CERT_BYTES})"
        ));
    }
    let mut bytes = vec![0u8; length];
    stream
        .read_exact(&mut bytes)
        .await
        .map_err(|e| format!("reading an introduction: {e}"))?;
    Ok(bytes)
}
