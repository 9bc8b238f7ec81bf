//! A response's body is verified and stored off the network task.
//!
//! Reading a QUIC stream (decryption, flow control, ACKs) runs on the network task; checking
//! every item against the blob's root (BLAKE3) and writing it to the store (page-cache copies,
//! an occasional sync) runs on a blocking-pool thread fed with chunks of the body. The chunk
//! queue holds one chunk beside the one being verified, so the two halves overlap (double
//! buffering) and memory stays at three chunks per request in flight whatever the blob's size.
//! Chunk buffers are kept for later reads when verified, so the steady state allocates nothing.
//!
//! The worker is the only one that sees the verifier: nothing reaches the store unverified, and
//! the network side never learns more than "these groups were stored" (as [`FetchProgress`]).
//! It stops at the end of the response, so bytes a peer sends beyond it are never read; the
//! reader stops as soon as the worker has finished or failed.

use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt as _, FutureExt as _};
use proto::bao::{RangeVerifier, Verified, VerifyError};
use proto::{BlobId, ChunkGroupRanges};
use tokio::sync::mpsc;

use super::spares::Spares;
use super::{ExchangeError, FetchProgress};
use crate::storage::{Index, Storage};
use crate::store::BlobStore;

/// Bytes of a body handed to the worker at once (at most: a read returns what has arrived).
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;

/// Bytes the reader waits for before it hands a chunk over (unless the stream ends first).
const MIN_HAND_OVER: usize = 64 * 1024;

/// Chunks waiting for the worker beside the one it is verifying.
const QUEUED_CHUNKS: usize = 1;

/// Reads the rest of a response from `stream` and has a worker verify it item by item with
/// `verifier` and write each item to `store`; `progress` hears of stored groups (batched per
/// chunk) and of due checkpoints. Returns the groups stored.
pub(crate) async fn receive<St, S, I>(
    stream: &mut St,
    store: &Arc<BlobStore<S, I>>,
    blob: BlobId,
    verifier: RangeVerifier,
    progress: &mut impl FnMut(FetchProgress),
) -> Result<ChunkGroupRanges, ExchangeError>
where
    St: AsyncRead + Unpin,
    S: Storage,
    I: Index,
{
    let (chunks, queued) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
    let (report_sender, mut reports) = mpsc::unbounded_channel::<FetchProgress>();
    let worker = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            verify_and_store(&store, blob, verifier, queued, &report_sender)
        })
    };
    let reader = async move {
        loop {
            let mut chunk = Chunk::take();
            let ended = chunk.fill(stream).await;
            if chunk.len == 0 {
                chunk.give_back();
            } else if let Err(unsent) = chunks.send(chunk).await {
                // The worker is done (or failed): nothing more to read.
                unsent.0.give_back();
                return Ok(());
            }
            match ended {
                Fill::More => {}
                Fill::End => return Ok(()),
                Fill::Failed(error) => return Err(error),
            }
        }
    };
    let forwarder = async {
        while let Some(report) = reports.recv().await {
            progress(report);
        }
    };
    let reader = std::pin::pin!(reader);
    let forwarder = std::pin::pin!(forwarder);
    // The forwarder ends when the worker does (its report sender drops); the reader ends at the
    // end of the stream, on an error or when the worker stops taking chunks.
    let read: Result<(), std::io::Error> = match futures::future::select(reader, forwarder).await {
        futures::future::Either::Left((read, forwarder)) => {
            forwarder.await;
            read
        }
        futures::future::Either::Right(((), _reader)) => Ok(()),
    };
    let verified = worker.await.map_err(|error| {
        ExchangeError::Io(std::io::Error::other(format!(
            "the verifying worker stopped: {error}"
        )))
    })?;
    match (verified, read) {
        (Ok(stored), _) => Ok(stored),
        // The stream broke: say so, rather than that the response was short.
        (Err(ExchangeError::Verify(VerifyError::Truncated { .. })), Err(error)) => {
            Err(ExchangeError::Io(error))
        }
        (Err(error), _) => Err(error),
    }
}

/// The worker: verifies the body's items as its chunks arrive and writes each to the store.
fn verify_and_store<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    blob: BlobId,
    mut verifier: RangeVerifier,
    mut chunks: mpsc::Receiver<Chunk>,
    reports: &mpsc::UnboundedSender<FetchProgress>,
) -> Result<ChunkGroupRanges, ExchangeError> {
    let mut stored = ChunkGroupRanges::empty();
    let mut batch = Batch::default();
    // An item split across chunks is put together here; whole items are verified in place.
    let mut carry: Vec<u8> = Vec::new();
    let Some(mut need) = verifier.next_item_len() else {
        return Ok(stored);
    };
    while let Some(full) = chunks.blocking_recv() {
        let chunk = full.filled();
        let mut at = 0;
        let mut finished = false;
        if !carry.is_empty() {
            let take = (need - carry.len()).min(chunk.len());
            carry.extend_from_slice(chunk.get(..take).unwrap_or_default());
            at = take;
            if carry.len() == need {
                let item = verifier.verify_next(&carry)?;
                store_items(store, &blob, &[item], &mut stored, &mut batch, reports)?;
                carry.clear();
                match verifier.next_item_len() {
                    Some(next) => need = next,
                    None => finished = true,
                }
            }
        }
        // The whole items in the chunk are verified in place, then written together (a
        // stretch of consecutive groups in one system call). Those before a bad item are
        // stored all the same.
        let mut items = Vec::new();
        let mut failed = None;
        while !finished && let Some(bytes) = chunk.get(at..at + need) {
            match verifier.verify_next(bytes) {
                Ok(item) => items.push(item),
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
            at += need;
            match verifier.next_item_len() {
                Some(next) => need = next,
                None => finished = true,
            }
        }
        store_items(store, &blob, &items, &mut stored, &mut batch, reports)?;
        if let Some(error) = failed {
            batch.flush(reports);
            return Err(error.into());
        }
        if !finished {
            carry.extend_from_slice(chunk.get(at..).unwrap_or_default());
        }
        batch.flush(reports);
        full.give_back();
        if finished {
            return Ok(stored);
        }
    }
    Err(ExchangeError::Verify(match verifier.missing() {
        Some(missing) => VerifyError::Truncated { blob, missing },
        None => return Ok(stored),
    }))
}

/// Verified chunks' buffers kept for the next reads, of any request: a fetch with many requests
/// in flight reuses them instead of allocating (and zeroing) two or three per request. At most
/// 48 (12 MiB): the three a request holds at once (one being read, one queued, one being
/// verified) for each of the 16 requests a fetch keeps in flight, so keeping them never holds
/// more than those requests had in use together.
static SPARE_CHUNKS: Spares<Vec<u8>> = Spares::new(48);

/// A buffer of [`CHUNK_BYTES`] and how much of it a read filled. The buffer is zeroed once,
/// when made; a recycled one is read into as it is.
struct Chunk {
    bytes: Vec<u8>,
    len: usize,
}

/// How filling a chunk ended.
enum Fill {
    /// The stream may have more.
    More,
    /// The stream ended.
    End,
    /// Reading failed; the chunk holds what came before.
    Failed(std::io::Error),
}

impl Chunk {
    /// A spare buffer, or a new one.
    fn take() -> Self {
        Self {
            bytes: SPARE_CHUNKS.take().unwrap_or_else(|| vec![0; CHUNK_BYTES]),
            len: 0,
        }
    }

    /// Keeps the buffer for another read, unless enough are kept already.
    fn give_back(self) {
        SPARE_CHUNKS.give_back(self.bytes);
    }

    fn filled(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    /// Waits for at least [`MIN_HAND_OVER`] bytes (or the end of the stream), then takes
    /// whatever else has already arrived, up to the chunk's size: one hand-over to the worker
    /// (two thread wake-ups) per burst of packets, not per packet.
    async fn fill<St: AsyncRead + Unpin>(&mut self, stream: &mut St) -> Fill {
        self.len = 0;
        while let Some(room) = self
            .bytes
            .get_mut(self.len..)
            .filter(|room| !room.is_empty())
        {
            let read = if self.len < MIN_HAND_OVER {
                stream.read(room).await
            } else {
                match stream.read(room).now_or_never() {
                    None => break,
                    Some(read) => read,
                }
            };
            match read {
                Ok(0) => return Fill::End,
                Ok(read) => self.len += read,
                Err(error) => return Fill::Failed(error),
            }
        }
        Fill::More
    }
}

/// Groups stored since the last report.
#[derive(Default)]
struct Batch {
    groups: ChunkGroupRanges,
    bytes: u64,
}

impl Batch {
    fn flush(&mut self, reports: &mpsc::UnboundedSender<FetchProgress>) {
        if !self.groups.is_empty() {
            let _ = reports.send(FetchProgress::Groups {
                groups: std::mem::take(&mut self.groups),
                bytes: std::mem::take(&mut self.bytes),
            });
        }
    }
}

/// Writes verified items to the store; notes the stored groups, and reports a due checkpoint
/// at once.
fn store_items<S: Storage, I: Index>(
    store: &BlobStore<S, I>,
    blob: &BlobId,
    items: &[Verified<'_>],
    stored: &mut ChunkGroupRanges,
    batch: &mut Batch,
    reports: &mpsc::UnboundedSender<FetchProgress>,
) -> Result<(), ExchangeError> {
    if items.is_empty() {
        return Ok(());
    }
    if store.write_all_deferred(blob, items)? {
        let _ = reports.send(FetchProgress::CheckpointDue);
    }
    for item in items {
        if let Verified::Group(group) = item {
            let index = group.group().0;
            stored.insert(index..index + 1);
            batch.groups.insert(index..index + 1);
            batch.bytes += group.data().len() as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proto::bao::VerifyError;

    use super::*;
    use crate::storage::sim::{CrashIndex, CrashStorage};
    use crate::store::LAYOUT;

    type Store = BlobStore<CrashStorage, CrashIndex>;

    fn new_store() -> Arc<Store> {
        let storage = CrashStorage::new();
        Arc::new(BlobStore::open(storage.clone(), storage.index()).unwrap().0)
    }

    /// Hands out `bytes` a few at a time, in sizes that cycle through `sizes`; with `pause`,
    /// each read is followed by one that is not ready yet (as when the next packet is still on
    /// its way), so a chunk ends as soon as it holds [`MIN_HAND_OVER`] bytes.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
        pause: bool,
        paused: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            if this.pause && !this.paused {
                this.paused = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.paused = false;
            let size = this.sizes[this.turn % this.sizes.len()];
            this.turn += 1;
            let n = size.min(buf.len()).min(this.bytes.len() - this.at);
            buf[..n].copy_from_slice(&this.bytes[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    /// A blob of `len` bytes in a source store, and the body of a response for all its groups
    /// (the size header cut off).
    fn blob_and_body(len: usize) -> (Vec<u8>, BlobId, ChunkGroupRanges, Vec<u8>) {
        let data: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let source = new_store();
        let id = source.import(&data[..]).unwrap();
        let mut response = Vec::new();
        let (served, _) = source
            .serve(&id, &LAYOUT.all_groups(len as u64), &mut response)
            .unwrap();
        let body = response.split_off(proto::bao::SIZE_HEADER_BYTES);
        (data, id, served, body)
    }

    async fn run(
        id: BlobId,
        len: usize,
        served: &ChunkGroupRanges,
        body: Vec<u8>,
        sizes: Vec<usize>,
        pause: bool,
    ) -> (
        Arc<Store>,
        Result<ChunkGroupRanges, ExchangeError>,
        Vec<FetchProgress>,
    ) {
        let sink = new_store();
        sink.create_partial(id, len as u64).unwrap();
        let verifier = RangeVerifier::new(id, LAYOUT, len as u64, served);
        let mut stream = Trickle {
            bytes: body,
            at: 0,
            sizes,
            turn: 0,
            pause,
            paused: false,
        };
        let mut reports = Vec::new();
        let result = receive(&mut stream, &sink, id, verifier, &mut |p| reports.push(p)).await;
        (sink, result, reports)
    }

    #[tokio::test]
    async fn items_split_anywhere_across_reads_are_put_together_verified_and_stored() {
        let len = 5 * 16 * 1024 + 1234;
        let (data, id, served, body) = blob_and_body(len);
        for sizes in [
            vec![1],
            vec![63, 64, 65],
            vec![16 * 1024 - 1, 3],
            vec![CHUNK_BYTES],
            vec![7, 100_000, 13],
        ] {
            let (sink, result, reports) =
                run(id, len, &served, body.clone(), sizes.clone(), true).await;
            assert_eq!(result.unwrap(), served, "reads of {sizes:?}");
            let reported = reports
                .iter()
                .filter_map(|report| match report {
                    FetchProgress::Groups { groups, .. } => Some(groups.clone()),
                    _ => None,
                })
                .fold(ChunkGroupRanges::empty(), |all, groups| all.union(&groups));
            assert_eq!(reported, served, "reads of {sizes:?}");
            assert!(sink.checkpoint(&id).unwrap().complete);
            let mut out = Vec::new();
            sink.export(&id, &mut out).unwrap();
            assert!(out == data, "reads of {sizes:?}: the stored blob differs");
        }
    }

    #[tokio::test]
    async fn a_short_body_is_truncated_and_a_bad_byte_stops_the_store_at_that_group() {
        let len = 4 * 16 * 1024;
        let (_, id, served, body) = blob_and_body(len);
        let short = body[..body.len() - 100].to_vec();
        let (_, result, _) = run(id, len, &served, short, vec![4096], true).await;
        assert!(
            matches!(
                result,
                Err(ExchangeError::Verify(VerifyError::Truncated { .. }))
            ),
            "{result:?}"
        );

        let mut bad = body.clone();
        let last = bad.len() - 10;
        bad[last] ^= 1;
        let (sink, result, _) = run(id, len, &served, bad, vec![5000], true).await;
        assert!(
            matches!(result, Err(ExchangeError::Verify(_))),
            "{result:?}"
        );
        let held = sink.info(&id).unwrap().held;
        assert!(
            !held.contains(proto::ChunkGroup(3)),
            "the bad group was stored"
        );
        assert_eq!(held, ChunkGroupRanges::from(0..3));
    }

    #[tokio::test]
    async fn bytes_that_have_arrived_go_to_the_worker_together() {
        let len = 5 * 16 * 1024 + 1234;
        let (_, id, served, body) = blob_and_body(len);
        let groups_reports = |reports: &[FetchProgress]| {
            reports
                .iter()
                .filter(|report| matches!(report, FetchProgress::Groups { .. }))
                .count()
        };
        // Every 4 KiB read ready at once: one chunk, one report for all six groups.
        let (_, result, reports) = run(id, len, &served, body.clone(), vec![4096], false).await;
        assert_eq!(result.unwrap(), served);
        assert_eq!(groups_reports(&reports), 1, "{reports:?}");
        // A pause after every read: a chunk per MIN_HAND_OVER bytes, a report for each.
        let (_, result, reports) = run(id, len, &served, body, vec![4096], true).await;
        assert_eq!(result.unwrap(), served);
        assert!(groups_reports(&reports) > 1, "{reports:?}");
    }
}
