//! What the QUIC transport put on the wire and lost, summed over every connection a node held.
//!
//! The figures a yard needs to explain its bytes: datagrams and bytes sent (everything, headers
//! and acknowledgements included), packets and bytes declared lost (and so sent again),
//! congestion events, and how many frames of each costly kind went out. Read from quinn's own
//! per-connection counters: live connections are read when asked, closed ones were added up
//! when they ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Transport counters of a node, summed over its connections (open and closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportStats {
    /// Connections established, both directions.
    pub connections: u64,
    /// UDP datagrams sent.
    pub udp_tx_datagrams: u64,
    /// UDP payload bytes sent: QUIC headers, frames and AEAD tags, without IP and UDP headers.
    pub udp_tx_bytes: u64,
    /// Send system calls (one may carry several datagrams with GSO).
    pub udp_tx_ios: u64,
    /// UDP payload bytes received.
    pub udp_rx_bytes: u64,
    /// QUIC packets sent.
    pub sent_packets: u64,
    /// QUIC packets declared lost (their frames are sent again if still wanted).
    pub lost_packets: u64,
    /// Bytes of the packets declared lost.
    pub lost_bytes: u64,
    /// Times the congestion window shrank.
    pub congestion_events: u64,
    /// ACK frames sent.
    pub ack_frames_sent: u64,
    /// STREAM frames sent.
    pub stream_frames_sent: u64,
    /// RESET_STREAM frames sent (a writer gave up on a stream).
    pub reset_stream_sent: u64,
    /// STOP_SENDING frames sent (a reader asked the writer to stop).
    pub stop_sending_sent: u64,
    /// Streams peers opened that were reset unread because the node's queue for them was full.
    pub streams_dropped: u64,
}

impl TransportStats {
    fn of(stats: &quinn::ConnectionStats) -> Self {
        Self {
            connections: 1,
            udp_tx_datagrams: stats.udp_tx.datagrams,
            udp_tx_bytes: stats.udp_tx.bytes,
            udp_tx_ios: stats.udp_tx.ios,
            udp_rx_bytes: stats.udp_rx.bytes,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            lost_bytes: stats.path.lost_bytes,
            congestion_events: stats.path.congestion_events,
            ack_frames_sent: stats.frame_tx.acks,
            stream_frames_sent: stats.frame_tx.stream,
            reset_stream_sent: stats.frame_tx.reset_stream,
            stop_sending_sent: stats.frame_tx.stop_sending,
            streams_dropped: 0,
        }
    }

    fn add(&mut self, other: &Self) {
        let Self {
            connections,
            udp_tx_datagrams,
            udp_tx_bytes,
            udp_tx_ios,
            udp_rx_bytes,
            sent_packets,
            lost_packets,
            lost_bytes,
            congestion_events,
            ack_frames_sent,
            stream_frames_sent,
            reset_stream_sent,
            stop_sending_sent,
            streams_dropped,
        } = self;
        *connections += other.connections;
        *udp_tx_datagrams += other.udp_tx_datagrams;
        *udp_tx_bytes += other.udp_tx_bytes;
        *udp_tx_ios += other.udp_tx_ios;
        *udp_rx_bytes += other.udp_rx_bytes;
        *sent_packets += other.sent_packets;
        *lost_packets += other.lost_packets;
        *lost_bytes += other.lost_bytes;
        *congestion_events += other.congestion_events;
        *ack_frames_sent += other.ack_frames_sent;
        *stream_frames_sent += other.stream_frames_sent;
        *reset_stream_sent += other.reset_stream_sent;
        *stop_sending_sent += other.stop_sending_sent;
        *streams_dropped += other.streams_dropped;
    }
}

#[derive(Default)]
struct Book {
    /// Sums of the connections that ended.
    closed: TransportStats,
    /// The open ones, by quinn's stable id.
    open: HashMap<usize, quinn::Connection>,
}

/// The running sums, shared by the transport (which registers connections) and whoever reads
/// them ([`super::NetHandle::transport_counters`]). Cheap to clone; holding one does not keep
/// the node running.
#[derive(Clone, Default)]
pub struct TransportCounters(Arc<Mutex<Book>>);

impl std::fmt::Debug for TransportCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCounters")
            .field("open", &self.lock().open.len())
            .finish_non_exhaustive()
    }
}

impl TransportCounters {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // The book holds plain sums: one a panicking holder left behind is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts counting `connection`; its figures move to the closed sums when the returned
    /// entry is dropped.
    pub(super) fn open(&self, connection: &quinn::Connection) -> Entry {
        let id = connection.stable_id();
        self.lock().open.insert(id, connection.clone());
        Entry {
            book: self.clone(),
            id,
        }
    }

    /// Counts an inbound stream reset unread because its queue was full.
    pub(super) fn stream_dropped(&self) {
        self.lock().closed.streams_dropped += 1;
    }

    /// The sums now: closed connections plus each open one as it stands.
    pub fn read(&self) -> TransportStats {
        let book = self.lock();
        let mut sums = book.closed;
        for connection in book.open.values() {
            sums.add(&TransportStats::of(&connection.stats()));
        }
        sums
    }
}

/// One connection's place in the [`TransportCounters`]; dropping it files the connection as closed.
pub(super) struct Entry {
    book: TransportCounters,
    id: usize,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut book = self.book.lock();
        if let Some(connection) = book.open.remove(&self.id) {
            let last = TransportStats::of(&connection.stats());
            book.closed.add(&last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_field_by_field() {
        let one = TransportStats {
            connections: 1,
            udp_tx_datagrams: 2,
            udp_tx_bytes: 3,
            udp_tx_ios: 4,
            udp_rx_bytes: 5,
            sent_packets: 6,
            lost_packets: 7,
            lost_bytes: 8,
            congestion_events: 9,
            ack_frames_sent: 10,
            stream_frames_sent: 11,
            reset_stream_sent: 12,
            stop_sending_sent: 13,
            streams_dropped: 14,
        };
        let mut sum = one;
        sum.add(&one);
        assert_eq!(sum.connections, 2);
        assert_eq!(sum.udp_tx_bytes, 6);
        assert_eq!(sum.lost_bytes, 16);
        assert_eq!(sum.stop_sending_sent, 26);
        assert_eq!(sum.streams_dropped, 28);
        assert_eq!(
            TransportCounters::default().read(),
            TransportStats::default()
        );
    }
}
