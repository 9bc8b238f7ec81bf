//! The depot's Prometheus exposition for `/metrics`.

use crate::status::{State, figures, lock};

/// The text exposition of what the depot reports.
pub(crate) fn metrics(state: &State) -> String {
    let figures = figures(state);
    let prefetch = lock(&state.prefetch);
    let seeding = figures.seeding.unwrap_or_default();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    };
    metric(
        "depotmesh_depot_bytes_total",
        "counter",
        "Bytes moved, by direction and link class.",
        &[
            ("direction=\"served\",link=\"yard\"", figures.served_bytes),
            (
                "direction=\"fetched\",link=\"backhaul\"",
                prefetch.backhaul_bytes,
            ),
        ],
    );
    metric(
        "depotmesh_depot_requests_total",
        "counter",
        "Exchanges answered: hit (data sent), miss (blob or name not here), refused (busy, held back by super-seeding, failed).",
        &[
            ("result=\"hit\"", figures.hits),
            ("result=\"miss\"", figures.misses),
            ("result=\"refused\"", figures.refused),
        ],
    );
    metric(
        "depotmesh_depot_peers",
        "gauge",
        "Peers connected (as the tracker counts them).",
        &[("", figures.peers.unwrap_or(0) as u64)],
    );
    metric(
        "depotmesh_depot_seeding_requests_total",
        "counter",
        "Range requests by super-seeding decision.",
        &[
            ("decision=\"granted\"", seeding.granted),
            ("decision=\"deferred\"", seeding.deferred),
            ("decision=\"deferral_expired\"", seeding.deferral_expired),
        ],
    );
    metric(
        "depotmesh_depot_seeding_groups_held_back_total",
        "counter",
        "16 KiB groups left to the asker's neighbours.",
        &[("", seeding.groups_held_back)],
    );
    metric(
        "depotmesh_depot_seeding_distrusts_total",
        "counter",
        "Yard peers reported by a vehicle for sending data that failed verification (per reporter, peer and blob).",
        &[("", seeding.distrusts)],
    );
    metric(
        "depotmesh_depot_seeding_accused_peers",
        "gauge",
        "Connected vehicles' reports standing now: (peer, blob) pairs some vehicle distrusts.",
        &[("", figures.accused.len() as u64)],
    );
    metric(
        "depotmesh_depot_store_bytes",
        "gauge",
        "Disk bytes of the store (data and outboards).",
        &[("", figures.store_bytes)],
    );
    metric(
        "depotmesh_depot_store_blobs",
        "gauge",
        "Blobs in the store, by state.",
        &[
            ("state=\"complete\"", figures.complete as u64),
            (
                "state=\"partial\"",
                (figures.blobs - figures.complete) as u64,
            ),
        ],
    );
    if let Some(cap) = state.cap {
        metric(
            "depotmesh_depot_cap_bytes",
            "gauge",
            "The configured disk cap.",
            &[("", cap)],
        );
    }
    metric(
        "depotmesh_depot_evictions_total",
        "counter",
        "Blobs forgotten to stay under the cap.",
        &[("", prefetch.evictions)],
    );
    metric(
        "depotmesh_depot_prefetch_runs_total",
        "counter",
        "Prefetch runs (one per repository per interval) by result.",
        &[
            ("result=\"ok\"", prefetch.runs_ok),
            ("result=\"failed\"", prefetch.runs_failed),
        ],
    );
    metric(
        "depotmesh_depot_prefetch_running",
        "gauge",
        "1 while a prefetch runs.",
        &[("", u64::from(prefetch.running))],
    );
    let (targets, fetched): (u64, u64) = prefetch.last.values().fold((0, 0), |(t, f), s| {
        (
            t + s["targets"].as_u64().unwrap_or(0),
            f + s["fetched"].as_array().map_or(0, Vec::len) as u64,
        )
    });
    metric(
        "depotmesh_depot_prefetch_targets",
        "gauge",
        "Targets the last runs' metadata listed, and how many of them those runs fetched.",
        &[
            ("state=\"listed\"", targets),
            ("state=\"fetched\"", fetched),
        ],
    );
    if let Some(at) = prefetch.last_success_unix {
        metric(
            "depotmesh_depot_prefetch_last_success_timestamp_seconds",
            "gauge",
            "When a prefetch run last succeeded.",
            &[("", at)],
        );
    }
    if let Some((queue, relay)) = &state.relay {
        let relay = lock(relay);
        metric(
            "depotmesh_depot_reports_queued",
            "gauge",
            "Vehicles' reports stored and waiting to be relayed to the director.",
            &[("", queue.len() as u64)],
        );
        metric(
            "depotmesh_depot_reports_relayed_total",
            "counter",
            "Vehicles' reports the director answered, by answer.",
            &[
                ("result=\"accepted\"", relay.accepted),
                ("result=\"refused\"", relay.refused),
            ],
        );
    }
    metric(
        "depotmesh_depot_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        &[("", state.started.elapsed().as_secs())],
    );
    out
}
