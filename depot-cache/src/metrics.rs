//! The depot's Prometheus metrics for `/metrics`: a collector that reads the depot's state at
//! each scrape (see `node::metrics` for why the figures are not kept in metrics of their own).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use node::metrics::{Families, NO_LABELS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::status::{State, figures, lock};

/// The registry `/metrics` encodes: the depot's figures, read from `state` when scraped.
pub(crate) fn registry(state: Arc<State>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Depot(state)));
    registry
}

struct Depot(Arc<State>);

impl fmt::Debug for Depot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Depot").finish_non_exhaustive()
    }
}

impl Collector for Depot {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let state = &self.0;
        let figures = figures(state);
        let prefetch = lock(&state.prefetch);
        let seeding = figures.seeding.unwrap_or_default();
        let mut out = Families::new(encoder);
        out.counter(
            "depotmesh_depot_bytes",
            "Bytes moved, by direction and link class.",
            [
                (
                    [("direction", "served"), ("link", "yard")],
                    figures.served_bytes,
                ),
                (
                    [("direction", "fetched"), ("link", "backhaul")],
                    prefetch.backhaul_bytes,
                ),
            ],
        )?;
        out.counter(
            "depotmesh_depot_requests",
            "Exchanges answered: hit (data sent), miss (blob or name not here), over_share (busy for a peer holding its share of the slots), write_timeout (cut: the peer read nothing of the answer for the write deadline), refused (busy, held back by super-seeding, failed).",
            [
                ([("result", "hit")], figures.hits),
                ([("result", "miss")], figures.misses),
                ([("result", "over_share")], figures.over_share),
                ([("result", "write_timeout")], figures.write_timeouts),
                ([("result", "refused")], figures.refused),
            ],
        )?;
        out.transport(&state.transport.read())?;
        if let Some(members) = &state.membership {
            use node::membership::RefusalKind;
            out.counter(
                "depotmesh_depot_mesh_admitted",
                "Peers admitted to the mesh on a valid fleet membership certificate.",
                [(NO_LABELS, members.admitted.load(Relaxed))],
            )?;
            out.counter(
                "depotmesh_depot_mesh_refusals",
                "Peers refused and disconnected: silent (no certificate in time), stranger (not the fleet's, not its own, altered), expired, revoked; stream (a stream opened before or without admission, reset unread).",
                RefusalKind::ALL
                    .map(|kind| ([("reason", kind.name())], members.refused(kind)))
                    .into_iter()
                    .chain([(
                        [("reason", "stream")],
                        members.streams_refused.load(Relaxed),
                    )]),
            )?;
            out.counter(
                "depotmesh_depot_mesh_evictions",
                "Admitted peers disconnected when revoked or when their certificate expired.",
                [(NO_LABELS, members.evicted.load(Relaxed))],
            )?;
            out.gauge(
                "depotmesh_depot_mesh_revocations_version",
                "Version of the fleet revocation list in force (0: none).",
                [(NO_LABELS, members.revocations_version.load(Relaxed))],
            )?;
            out.gauge(
                "depotmesh_depot_mesh_certificate_expiry_timestamp_seconds",
                "When the depot's own fleet membership certificate expires (unix seconds): peers refuse it from then on; renew it before with `origin member issue`.",
                [(NO_LABELS, members.certificate_expires.load(Relaxed))],
            )?;
        }
        out.gauge(
            "depotmesh_depot_peers",
            "Peers connected (as the tracker counts them).",
            [(NO_LABELS, figures.peers.unwrap_or(0) as u64)],
        )?;
        out.counter(
            "depotmesh_depot_seeding_requests",
            "Range requests by super-seeding decision.",
            [
                ([("decision", "granted")], seeding.granted),
                ([("decision", "deferred")], seeding.deferred),
                ([("decision", "deferral_expired")], seeding.deferral_expired),
            ],
        )?;
        out.counter(
            "depotmesh_depot_seeding_groups_held_back",
            "16 KiB groups left to the asker's neighbours.",
            [(NO_LABELS, seeding.groups_held_back)],
        )?;
        out.counter(
            "depotmesh_depot_seeding_distrusts",
            "Yard peers reported by a vehicle for sending data that failed verification (per reporter, peer and blob).",
            [(NO_LABELS, seeding.distrusts)],
        )?;
        out.gauge(
            "depotmesh_depot_seeding_accused_peers",
            "Connected vehicles' reports standing now: (peer, blob) pairs some vehicle distrusts.",
            [(NO_LABELS, figures.accused.len() as u64)],
        )?;
        out.gauge(
            "depotmesh_depot_store_bytes",
            "Disk bytes of the store (data and outboards).",
            [(NO_LABELS, figures.store_bytes)],
        )?;
        out.gauge(
            "depotmesh_depot_store_blobs",
            "Blobs in the store, by state.",
            [
                ([("state", "complete")], figures.complete as u64),
                (
                    [("state", "partial")],
                    (figures.blobs - figures.complete) as u64,
                ),
            ],
        )?;
        if let Some(cap) = state.cap {
            out.gauge(
                "depotmesh_depot_cap_bytes",
                "The configured disk cap.",
                [(NO_LABELS, cap)],
            )?;
        }
        out.counter(
            "depotmesh_depot_evictions",
            "Blobs forgotten to stay under the cap.",
            [(NO_LABELS, prefetch.evictions)],
        )?;
        out.counter(
            "depotmesh_depot_prefetch_runs",
            "Prefetch runs (one per repository per interval) by result.",
            [
                ([("result", "ok")], prefetch.runs_ok),
                ([("result", "failed")], prefetch.runs_failed),
            ],
        )?;
        out.gauge(
            "depotmesh_depot_prefetch_running",
            "1 while a prefetch runs.",
            [(NO_LABELS, u64::from(prefetch.running))],
        )?;
        let (targets, fetched): (u64, u64) = prefetch.last.values().fold((0, 0), |(t, f), s| {
            (
                t + s["targets"].as_u64().unwrap_or(0),
                f + s["fetched"].as_array().map_or(0, Vec::len) as u64,
            )
        });
        out.gauge(
            "depotmesh_depot_prefetch_targets",
            "Targets the last runs' metadata listed, and how many of them those runs fetched.",
            [
                ([("state", "listed")], targets),
                ([("state", "fetched")], fetched),
            ],
        )?;
        if let Some(at) = prefetch.last_success_unix {
            out.gauge(
                "depotmesh_depot_prefetch_last_success_timestamp_seconds",
                "When a prefetch run last succeeded.",
                [(NO_LABELS, at)],
            )?;
        }
        if let Some((queue, relay)) = &state.relay {
            let relay = lock(relay);
            out.gauge(
                "depotmesh_depot_reports_queued",
                "Vehicles' reports stored and waiting to be relayed to the director.",
                [(NO_LABELS, queue.len() as u64)],
            )?;
            out.counter(
                "depotmesh_depot_reports_relayed",
                "Vehicles' reports the director answered, by answer.",
                [
                    ([("result", "accepted")], relay.accepted),
                    ([("result", "refused")], relay.refused),
                ],
            )?;
        }
        out.gauge(
            "depotmesh_depot_uptime_seconds",
            "Seconds since the daemon started.",
            [(NO_LABELS, state.started.elapsed().as_secs())],
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_exposition_parses_with_every_family_named_and_typed_as_dashboards_expect() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = node::store::open_data_dir(dir.path()).unwrap();
        let queue = node::relay::ReportQueue::open(&dir.path().join("reports"), 10).unwrap();
        let mut state = State::idle(Arc::new(store));
        // Every family that is written only when configured or once something happened.
        state.cap = Some(1 << 30);
        state.relay = Some((Arc::new(queue), Default::default()));
        lock(&state.prefetch).last_success_unix = Some(1_800_000_000);
        let text = node::metrics::render(&registry(Arc::new(state))).unwrap();

        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|error| panic!("{error}:\n{text}"));
        let mut families: Vec<String> = parsed
            .families
            .values()
            .map(|f| {
                format!(
                    "{} {} {:?}",
                    f.family_name,
                    f.family_type,
                    f.get_label_names()
                )
            })
            .collect();
        families.sort();
        assert_eq!(
            families,
            [
                r#"depotmesh_depot_bytes_total counter ["direction", "link"]"#,
                r#"depotmesh_depot_cap_bytes gauge []"#,
                r#"depotmesh_depot_evictions_total counter []"#,
                r#"depotmesh_depot_mesh_admitted_total counter []"#,
                r#"depotmesh_depot_mesh_certificate_expiry_timestamp_seconds gauge []"#,
                r#"depotmesh_depot_mesh_evictions_total counter []"#,
                r#"depotmesh_depot_mesh_refusals_total counter ["reason"]"#,
                r#"depotmesh_depot_mesh_revocations_version gauge []"#,
                r#"depotmesh_depot_peers gauge []"#,
                r#"depotmesh_depot_prefetch_last_success_timestamp_seconds gauge []"#,
                r#"depotmesh_depot_prefetch_running gauge []"#,
                r#"depotmesh_depot_prefetch_runs_total counter ["result"]"#,
                r#"depotmesh_depot_prefetch_targets gauge ["state"]"#,
                r#"depotmesh_depot_reports_queued gauge []"#,
                r#"depotmesh_depot_reports_relayed_total counter ["result"]"#,
                r#"depotmesh_depot_requests_total counter ["result"]"#,
                r#"depotmesh_depot_seeding_accused_peers gauge []"#,
                r#"depotmesh_depot_seeding_distrusts_total counter []"#,
                r#"depotmesh_depot_seeding_groups_held_back_total counter []"#,
                r#"depotmesh_depot_seeding_requests_total counter ["decision"]"#,
                r#"depotmesh_depot_store_blobs gauge ["state"]"#,
                r#"depotmesh_depot_store_bytes gauge []"#,
                r#"depotmesh_depot_uptime_seconds gauge []"#,
                r#"depotmesh_quic_congestion_events_total counter []"#,
                r#"depotmesh_quic_connections_total counter []"#,
                r#"depotmesh_quic_datagrams_sent_total counter []"#,
                r#"depotmesh_quic_lost_bytes_total counter []"#,
                r#"depotmesh_quic_packets_lost_total counter []"#,
                r#"depotmesh_quic_streams_dropped_total counter []"#,
                r#"depotmesh_quic_udp_bytes_total counter ["direction"]"#,
            ],
            "{text}"
        );
        for sample in [
            "depotmesh_depot_bytes_total{direction=\"served\",link=\"yard\"} 0\n",
            "depotmesh_depot_store_blobs{state=\"partial\"} 0\n",
            "depotmesh_depot_requests_total{result=\"over_share\"} 0\n",
            "depotmesh_depot_mesh_refusals_total{reason=\"stranger\"} 0\n",
            "depotmesh_depot_mesh_refusals_total{reason=\"stream\"} 0\n",
            "depotmesh_depot_mesh_revocations_version 0\n",
            "depotmesh_depot_requests_total{result=\"write_timeout\"} 0\n",
            "depotmesh_depot_prefetch_last_success_timestamp_seconds 1800000000\n",
            "depotmesh_quic_udp_bytes_total{direction=\"received\"} 0\n",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
    }
}
