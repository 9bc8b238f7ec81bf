//! What the depot reports about itself: the state its loops keep up to date, the figures read
//! from it once per answer, and the `/status` document.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use node::relay::ReportQueue;
use node::serve::ServeCounters;
use node::store::DiskStore;
use node::tracker::Tracker;

/// What `/status` and `/metrics` report.
pub(crate) struct State {
    pub(crate) started: Instant,
    pub(crate) peer_id: String,
    pub(crate) listen: Vec<String>,
    pub(crate) cap: Option<u64>,
    /// `[serve] upload_bytes_per_sec`.
    pub(crate) upload_limit: Option<u64>,
    pub(crate) counters: Arc<ServeCounters>,
    pub(crate) tracker: Option<Arc<Tracker>>,
    pub(crate) store: Arc<DiskStore>,
    pub(crate) prefetch: Mutex<PrefetchState>,
    pub(crate) relay: Option<(Arc<ReportQueue>, Mutex<RelayState>)>,
    /// The membership gate's counts; `None` on an open mesh.
    pub(crate) membership: Option<Arc<node::membership::MembershipCounters>>,
    /// What the QUIC transport sent and lost.
    pub(crate) transport: node::net::TransportCounters,
}

#[derive(Default)]
pub(crate) struct RelayState {
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
    /// The last refusals (vehicle, status, the director's words), newest last.
    pub(crate) refusals: std::collections::VecDeque<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) last_success_unix: Option<u64>,
}

/// Refusals kept for `/status`.
pub(crate) const REFUSALS_KEPT: usize = 20;

#[derive(Default)]
pub(crate) struct PrefetchState {
    pub(crate) configured: bool,
    pub(crate) running: bool,
    pub(crate) runs_ok: u64,
    pub(crate) runs_failed: u64,
    pub(crate) backhaul_bytes: u64,
    pub(crate) evictions: u64,
    pub(crate) last_success_unix: Option<u64>,
    pub(crate) next_run_unix: Option<u64>,
    pub(crate) last_error: Option<String>,
    /// Per repository, the last run's summary.
    pub(crate) last: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The lock, even when a thread panicked holding it: the figures stay readable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The figures `/metrics` and `/status` both report, read once per answer so the two agree.
pub(crate) struct Figures {
    pub(crate) served_bytes: u64,
    /// Requests answered with data.
    pub(crate) hits: u64,
    /// Requests and questions for a blob or name not here.
    pub(crate) misses: u64,
    /// Requests and subscriptions refused `Busy` because their peer held its share of the slots.
    pub(crate) over_share: u64,
    /// Exchanges cut because the peer read nothing of the answer for the write deadline.
    pub(crate) write_timeouts: u64,
    /// Other refusals (busy, held back, failed).
    pub(crate) refused: u64,
    pub(crate) peers: Option<usize>,
    pub(crate) seeding: Option<node::seeding::SeedStats>,
    pub(crate) accused: Vec<node::seeding::Accused<libp2p::PeerId>>,
    pub(crate) blobs: usize,
    pub(crate) complete: usize,
    pub(crate) store_bytes: u64,
}

pub(crate) fn figures(state: &State) -> Figures {
    let counters = &state.counters;
    let misses = counters.misses.load(Relaxed);
    let over_share = counters.over_share.load(Relaxed);
    let list = state.store.list();
    Figures {
        served_bytes: counters.bytes.load(Relaxed),
        hits: counters.requests.load(Relaxed),
        misses,
        over_share,
        write_timeouts: counters.write_timeouts.load(Relaxed),
        refused: counters
            .refused
            .load(Relaxed)
            .saturating_sub(misses)
            .saturating_sub(over_share),
        peers: state.tracker.as_ref().map(|t| t.peer_count()),
        seeding: state.tracker.as_ref().map(|t| t.stats()),
        accused: state
            .tracker
            .as_ref()
            .map(|t| t.accused())
            .unwrap_or_default(),
        blobs: list.len(),
        complete: list.iter().filter(|info| info.complete).count(),
        store_bytes: state.store.usage().iter().map(|blob| blob.bytes).sum(),
    }
}

/// The membership part of `/status`: who was admitted and who refused, by kind.
fn membership_json(state: &State) -> serde_json::Value {
    let Some(counters) = &state.membership else {
        return serde_json::json!({ "mode": "open" });
    };
    let refused: serde_json::Map<String, serde_json::Value> = node::membership::RefusalKind::ALL
        .iter()
        .map(|kind| (kind.name().to_owned(), counters.refused(*kind).into()))
        .collect();
    serde_json::json!({
        "mode": "fleet",
        "admitted": counters.admitted.load(Relaxed),
        "refused": refused,
        "streams_refused": counters.streams_refused.load(Relaxed),
        "evicted": counters.evicted.load(Relaxed),
        "revocations_version": counters.revocations_version.load(Relaxed),
        "certificate_expires": counters.certificate_expires.load(Relaxed),
    })
}

/// The `/status` document.
pub(crate) fn status_json(state: &State) -> serde_json::Value {
    let figures = figures(state);
    let prefetch = lock(&state.prefetch);
    serde_json::json!({
        "peer_id": state.peer_id,
        "listen": state.listen,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "peers": figures.peers,
        "served_bytes": figures.served_bytes,
        "upload_bytes_per_sec": state.upload_limit,
        "membership": membership_json(state),
        "requests": {
            "hit": figures.hits,
            "miss": figures.misses,
            "refused": figures.refused,
            "over_share": figures.over_share,
            "write_timeout": figures.write_timeouts,
        },
        "seeding": figures.seeding.map(|s| serde_json::json!({
            "granted": s.granted,
            "deferred": s.deferred,
            "deferral_expired": s.deferral_expired,
            "groups_held_back": s.groups_held_back,
            "distrusts": s.distrusts,
            "accused": figures.accused.iter().map(|a| serde_json::json!({
                "peer": a.peer.to_string(),
                "blob": a.blob.to_string(),
                "accusers": a.accusers,
                "for_everyone": a.for_everyone,
            })).collect::<Vec<_>>(),
        })),
        "store": {
            "blobs": figures.blobs,
            "complete": figures.complete,
            "bytes": figures.store_bytes,
            "cap_bytes": state.cap,
        },
        "relay": state.relay.as_ref().map(|(queue, relay)| {
            let relay = lock(relay);
            serde_json::json!({
                "queued": queue.len(),
                "accepted": relay.accepted,
                "refused": relay.refused,
                "last_refusals": relay.refusals,
                "last_error": relay.last_error,
                "last_success_unix": relay.last_success_unix,
            })
        }),
        "prefetch": if prefetch.configured {
            serde_json::json!({
                "running": prefetch.running,
                "runs_ok": prefetch.runs_ok,
                "runs_failed": prefetch.runs_failed,
                "backhaul_bytes": prefetch.backhaul_bytes,
                "evictions": prefetch.evictions,
                "last_success_unix": prefetch.last_success_unix,
                "next_run_unix": prefetch.next_run_unix,
                "last_error": prefetch.last_error,
                "last": prefetch.last,
            })
        } else {
            serde_json::Value::Null
        },
    })
}

#[cfg(test)]
impl State {
    /// A depot on `store` that has served nothing and is configured for nothing else, for the
    /// tests of what it reports.
    pub(crate) fn idle(store: Arc<DiskStore>) -> Self {
        Self {
            started: Instant::now(),
            peer_id: "12D3KooWALf6rJuUTPioGjgxkqKYXWbjjb7A6y4EcXQPFGERzuRA".to_owned(),
            listen: Vec::new(),
            cap: None,
            upload_limit: None,
            counters: Arc::default(),
            tracker: None,
            store,
            prefetch: Mutex::default(),
            relay: None,
            membership: Some(Arc::default()),
            transport: node::net::TransportCounters::default(),
        }
    }
}
