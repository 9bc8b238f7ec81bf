//! Prometheus metrics of figures that a role reads from its state when it is scraped (counters
//! its server keeps in atomics, its store, its loops' or its director's state), encoded by
//! `prometheus-client`.
//!
//! A role implements [`prometheus_client::collector::Collector`] over its state, writes each
//! family with [`Families`], and answers with [`render`] and [`CONTENT_TYPE`]. Constant
//! metrics written at scrape time keep one source of truth: nothing is copied into the
//! exposition's own counters to drift from what `/status` says.
//!
//! The encoding is Prometheus text 0.0.4, not OpenMetrics: a counter's `# HELP` and `# TYPE`
//! lines name it with its `_total`, and there is no `# EOF`, as scrapers and dashboards have
//! always read these metrics.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The labels of a sample that has none.
pub const NO_LABELS: [(&str, &str); 0] = [];

/// Encodes every metric of `registry` as Prometheus text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// Writes metric families, each with its samples in the order given, into a collector's
/// encoder.
#[derive(Debug)]
pub struct Families<'a>(DescriptorEncoder<'a>);

impl<'a> Families<'a> {
    /// Families written into `encoder` (the one [`Collector::encode`] is handed).
    ///
    /// [`Collector::encode`]: prometheus_client::collector::Collector::encode
    pub fn new(encoder: DescriptorEncoder<'a>) -> Self {
        Self(encoder)
    }

    /// A counter family. `name` leaves out `_total`: the encoding appends it.
    pub fn counter<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        self.family(name, help, samples, ConstCounter::new)
    }

    /// A gauge family.
    pub fn gauge<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        self.family(name, help, samples, ConstGauge::new)
    }

    /// The QUIC transport's families (`depotmesh_quic_*`), the same in every role.
    pub fn transport(&mut self, stats: &crate::net::TransportStats) -> fmt::Result {
        self.counter(
            "depotmesh_quic_connections",
            "QUIC connections established, both directions.",
            [(NO_LABELS, stats.connections)],
        )?;
        self.counter(
            "depotmesh_quic_udp_bytes",
            "UDP payload bytes (QUIC packets with their headers), by direction.",
            [
                ([("direction", "sent")], stats.udp_tx_bytes),
                ([("direction", "received")], stats.udp_rx_bytes),
            ],
        )?;
        let plain = [
            (
                "depotmesh_quic_datagrams_sent",
                "UDP datagrams sent.",
                stats.udp_tx_datagrams,
            ),
            (
                "depotmesh_quic_packets_lost",
                "QUIC packets declared lost; what they carried is sent again if still wanted.",
                stats.lost_packets,
            ),
            (
                "depotmesh_quic_lost_bytes",
                "Bytes of the QUIC packets declared lost.",
                stats.lost_bytes,
            ),
            (
                "depotmesh_quic_congestion_events",
                "Times a connection's congestion window shrank.",
                stats.congestion_events,
            ),
            (
                "depotmesh_quic_streams_dropped",
                "Streams peers opened that were reset unread: the node's queue for them was full.",
                stats.streams_dropped,
            ),
        ];
        for (name, help, value) in plain {
            self.counter(name, help, [(NO_LABELS, value)])?;
        }
        Ok(())
    }

    fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
        metric: fn(u64) -> M,
    ) -> fmt::Result {
        let mut family = self.0.encode_descriptor(name, help, None, M::TYPE)?;
        for (labels, value) in samples {
            metric(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::collector::Collector;

    use super::*;

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
            let mut families = Families::new(encoder);
            families.counter(
                "x_bytes",
                "Bytes, by \"way\".",
                [([("way", "in")], 1), ([("way", "o\"ut\n")], 2)],
            )?;
            families.gauge("x_peers", "Peers.", [(NO_LABELS, 3)])?;
            families.gauge("x_none", "Nothing yet.", [(NO_LABELS, 0); 0])
        }
    }

    #[test]
    fn families_are_written_as_the_text_format_has_them() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Two));
        assert_eq!(
            render(&registry),
            Ok("# HELP x_bytes_total Bytes, by \"way\".\n\
                # TYPE x_bytes_total counter\n\
                x_bytes_total{way=\"in\"} 1\n\
                x_bytes_total{way=\"o\\\"ut\\n\"} 2\n\
                # HELP x_peers Peers.\n\
                # TYPE x_peers gauge\n\
                x_peers 3\n\
                # HELP x_none Nothing yet.\n\
                # TYPE x_none gauge\n"
                .to_owned())
        );
        assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    }
}
