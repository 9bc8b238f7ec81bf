//! `depot-cache --config FILE`: the depot as a service. It serves the yard (with the tracker and
//! super-seeding unless disabled, at its upload limit), fills itself from upstream on a schedule
//! (inside its backhaul windows, at its rate limit, under its disk cap), and reports on
//! `/metrics` and `/status`.
//!
//! A prefetch run that starts inside a window runs to its end (the rate limit bounds what it
//! takes); a run that fails is retried at the next interval and resumes what it left partial.

use std::io::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use node::net::{EventHub, NetHandle};
use node::relay::ReportQueue;
use node::runtime::ServeCounters;
use node::store::DiskStore;
use node::tracker::Tracker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{DepotConfig, PrefetchConfig, RelayConfig, backhaul_open, relay_dir};
use crate::prefetch::{PrefetchRequest, prefetch_with};

/// What `/status` and `/metrics` report.
struct State {
    started: Instant,
    peer_id: String,
    listen: Vec<String>,
    cap: Option<u64>,
    /// `[serve] upload_bytes_per_sec`.
    upload_limit: Option<u64>,
    counters: Arc<ServeCounters>,
    tracker: Option<Arc<Tracker>>,
    store: Arc<DiskStore>,
    prefetch: Mutex<PrefetchState>,
    relay: Option<(Arc<ReportQueue>, Mutex<RelayState>)>,
}

#[derive(Default)]
struct RelayState {
    accepted: u64,
    refused: u64,
    /// The last refusals (vehicle, status, the director's words), newest last.
    refusals: std::collections::VecDeque<String>,
    last_error: Option<String>,
    last_success_unix: Option<u64>,
}

/// Refusals kept for `/status`.
const REFUSALS_KEPT: usize = 20;

#[derive(Default)]
struct PrefetchState {
    configured: bool,
    running: bool,
    runs_ok: u64,
    runs_failed: u64,
    backhaul_bytes: u64,
    evictions: u64,
    last_success_unix: Option<u64>,
    next_run_unix: Option<u64>,
    last_error: Option<String>,
    /// Per repository, the last run's summary.
    last: std::collections::BTreeMap<String, serde_json::Value>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a started daemon can be reached.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The node's full addresses (with `/p2p/<peer id>`).
    pub addrs: Vec<libp2p::Multiaddr>,
    /// Where `/metrics` and `/status` are served, when they are.
    pub http: Option<std::net::SocketAddr>,
}

/// Runs the daemon until SIGINT or SIGTERM. The first lines printed on stdout are the node's
/// full addresses (with `/p2p/<peer id>`), then `http <addr>` when it serves HTTP.
pub async fn run(config: DepotConfig) -> anyhow::Result<()> {
    let (ready, addresses) = tokio::sync::oneshot::channel::<Ready>();
    let printer = tokio::spawn(async move {
        let Ok(ready) = addresses.await else {
            return Ok(());
        };
        let mut printed = String::new();
        for addr in &ready.addrs {
            printed.push_str(&format!("{addr}\n"));
        }
        if let Some(http) = ready.http {
            printed.push_str(&format!("http {http}\n"));
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(printed.as_bytes())?;
        stdout.flush()
    });
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let signals = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    };
    let served = serve(config, ready, signals).await;
    printer.await.ok();
    served
}

/// Runs the daemon until `shutdown` completes (or its server ends); sends where it can be
/// reached on `ready` once it listens. For programs that run a depot inside them (netsim).
pub async fn serve(
    config: DepotConfig,
    ready: tokio::sync::oneshot::Sender<Ready>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (store, report) = node::store::open_data_dir(&config.data_dir)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    tracing::info!(?report, "store opened");
    let store = Arc::new(store);
    let keypair = node::identity::load_or_create(&config.data_dir)
        .with_context(|| format!("loading the identity in {}", config.data_dir.display()))?;
    let (net, events, incoming) = node::net::start(node::net::NetConfig {
        keypair: Some(keypair),
        listen: config.listen.clone(),
        mdns: config.mdns,
        agent_version: format!(
            "{}{}",
            node::runtime::DEPOT_AGENT_PREFIX,
            env!("CARGO_PKG_VERSION")
        ),
        ..node::net::NetConfig::default()
    })
    .await
    .context("starting the network")?;
    let hub = EventHub::start(events);
    let addrs = net.listen_addrs().await;
    if addrs.is_empty() {
        anyhow::bail!("listening on no address");
    }
    let tracker = config
        .seeding
        .map(|seeding| Tracker::start(net.clone(), hub.subscribe(), seeding));
    let queue = match &config.relay {
        Some(relay) => {
            let dir = relay_dir(&config.data_dir);
            let queue = ReportQueue::open(&dir, relay.max_reports)
                .with_context(|| format!("opening the report queue in {}", dir.display()))?;
            tracing::info!(queued = queue.len(), director = %relay.director_url, "relaying vehicles' reports");
            Some(Arc::new(queue))
        }
        None => None,
    };
    let counters = Arc::new(ServeCounters::default());
    let server = node::runtime::spawn_server_with(
        store.clone(),
        incoming,
        counters.clone(),
        node::runtime::Roles {
            tracker: tracker.clone(),
            reports: queue
                .clone()
                .map(|queue| queue as Arc<dyn node::relay::ReportInbox>),
            upload_limit: config.serve.upload_bytes_per_sec.map(|rate| {
                node::ratelimit::RateLimit::with_burst(rate, node::ratelimit::LINK_BURST)
            }),
        },
    );
    let state = Arc::new(State {
        started: Instant::now(),
        peer_id: net.peer_id().to_string(),
        listen: addrs.iter().map(ToString::to_string).collect(),
        cap: config.cap_bytes,
        upload_limit: config.serve.upload_bytes_per_sec,
        counters,
        tracker,
        store: store.clone(),
        prefetch: Mutex::new(PrefetchState {
            configured: config.prefetch.is_some(),
            ..PrefetchState::default()
        }),
        relay: queue.map(|queue| (queue, Mutex::new(RelayState::default()))),
    });
    let mut http_addr = None;
    let mut tasks = Vec::new();
    if let Some(http) = config.http {
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("listening for HTTP on {http}"))?;
        http_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(serve_http(listener, state.clone())));
    }
    let _ = ready.send(Ready {
        addrs: addrs.clone(),
        http: http_addr,
    });
    if let Some(prefetch) = config.prefetch.clone() {
        tasks.push(tokio::spawn(prefetch_loop(
            prefetch,
            config.clone(),
            net.clone(),
            hub.clone(),
            state.clone(),
        )));
    }
    if let Some(relay) = config.relay.clone() {
        tasks.push(tokio::spawn(relay_loop(relay, state.clone())));
    }
    let server_abort = server.abort_handle();
    tokio::select! {
        () = shutdown => {}
        _ = server => {}
    }
    server_abort.abort();
    for task in tasks {
        task.abort();
    }
    store.flush_usage().ok();
    net.shutdown().await;
    Ok(())
}

async fn prefetch_loop(
    prefetch: PrefetchConfig,
    config: DepotConfig,
    net: NetHandle,
    hub: EventHub,
    state: Arc<State>,
) {
    let handle = tokio::runtime::Handle::current();
    loop {
        let now = unix_now();
        if let Err(opens) = backhaul_open(&prefetch, now) {
            lock(&state.prefetch).next_run_unix = Some(opens);
            tracing::info!(opens, "backhaul window closed; prefetch waits");
            tokio::time::sleep(Duration::from_secs(opens.saturating_sub(now).max(1))).await;
            continue;
        }
        let started = Instant::now();
        lock(&state.prefetch).running = true;
        for repository in &prefetch.repositories {
            let request = PrefetchRequest {
                data_dir: config.data_dir.clone(),
                upstream: prefetch.upstream.clone(),
                repository: repository.clone(),
                root: prefetch.root_for(repository),
                cap: config.cap_bytes,
                now: None,
                metadata_timeout: Duration::from_secs(30),
                stall_timeout: prefetch.stall_timeout,
                rate_limit: prefetch.rate_limit,
            };
            let mut events = hub.subscribe();
            let (net, store, handle) = (net.clone(), state.store.clone(), handle.clone());
            let result = tokio::task::spawn_blocking(move || {
                // The main thread drives the runtime; this blocking thread waits through it.
                prefetch_with(
                    node::runtime::BlockOn::Handle(&handle),
                    &request,
                    &net,
                    &mut events,
                    &store,
                )
            })
            .await
            .map_err(|error| anyhow::anyhow!("the prefetch task failed: {error}"))
            .and_then(|result| result);
            state.store.flush_usage().ok();
            let mut status = lock(&state.prefetch);
            match result {
                Ok(summary) => {
                    tracing::info!(%repository, %summary, "prefetch done");
                    status.runs_ok += 1;
                    status.last_success_unix = Some(unix_now());
                    status.backhaul_bytes += summary["upstream_bytes"].as_u64().unwrap_or(0);
                    status.evictions += summary["evicted"].as_array().map_or(0, Vec::len) as u64;
                    status.last_error = None;
                    status.last.insert(repository.clone(), summary);
                }
                Err(error) => {
                    tracing::warn!(%repository, error = format!("{error:#}"), "prefetch failed");
                    status.runs_failed += 1;
                    status.last_error = Some(format!("{repository}: {error:#}"));
                }
            }
        }
        let next = prefetch.interval.saturating_sub(started.elapsed());
        {
            let mut status = lock(&state.prefetch);
            status.running = false;
            status.next_run_unix = Some(unix_now() + next.as_secs());
        }
        tokio::time::sleep(next).await;
    }
}

/// Empties the report queue into the director: at once when a report arrives, and every
/// `retry` while reports wait (the director was unreachable).
async fn relay_loop(relay: RelayConfig, state: Arc<State>) {
    let Some((queue, _)) = &state.relay else {
        return;
    };
    let queue = queue.clone();
    loop {
        let round = {
            let (queue, url) = (queue.clone(), relay.director_url.clone());
            tokio::task::spawn_blocking(move || {
                crate::relay::relay_once(&queue, &url, Duration::from_secs(30))
            })
            .await
        };
        if let (Ok(round), Some((_, status))) = (round, &state.relay) {
            let mut status = lock(status);
            status.accepted += round.accepted;
            status.refused += round.refused;
            for refusal in round.refusals {
                if status.refusals.len() == REFUSALS_KEPT {
                    status.refusals.pop_front();
                }
                status.refusals.push_back(refusal);
            }
            if let Some(error) = &round.stopped {
                tracing::warn!(%error, queued = queue.len(), "relaying reports stopped; trying again later");
            } else if round.accepted + round.refused > 0 {
                status.last_success_unix = Some(unix_now());
            }
            status.last_error = round.stopped;
        }
        if queue.is_empty() {
            queue.arrival().await;
        } else {
            tokio::select! {
                () = queue.arrival() => {}
                () = tokio::time::sleep(relay.retry) => {}
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The longest request head the HTTP endpoint reads.
const MAX_REQUEST_HEAD: usize = 8 * 1024;

async fn serve_http(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(5), answer_http(stream, &state)).await;
            if let Ok(Err(error)) = answer {
                tracing::debug!(%error, "HTTP exchange failed");
            }
        });
    }
}

async fn answer_http(mut stream: tokio::net::TcpStream, state: &State) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
        if head.len() > MAX_REQUEST_HEAD {
            break;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics(state)),
        ("GET", "/status") => ("200 OK", "application/json", status_json(state).to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /status\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The figures `/metrics` and `/status` both report, read once per answer so the two agree.
struct Figures {
    served_bytes: u64,
    /// Requests answered with data.
    hits: u64,
    /// Requests and questions for a blob or name not here.
    misses: u64,
    /// Other refusals (busy, held back, failed).
    refused: u64,
    peers: Option<usize>,
    seeding: Option<node::seeding::SeedStats>,
    accused: Vec<node::seeding::Accused<libp2p::PeerId>>,
    blobs: usize,
    complete: usize,
    store_bytes: u64,
}

fn figures(state: &State) -> Figures {
    let counters = &state.counters;
    let misses = counters.misses.load(Relaxed);
    let list = state.store.list();
    Figures {
        served_bytes: counters.bytes.load(Relaxed),
        hits: counters.requests.load(Relaxed),
        misses,
        refused: counters.refused.load(Relaxed).saturating_sub(misses),
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

fn metrics(state: &State) -> String {
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

fn status_json(state: &State) -> serde_json::Value {
    let figures = figures(state);
    let prefetch = lock(&state.prefetch);
    serde_json::json!({
        "peer_id": state.peer_id,
        "listen": state.listen,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "peers": figures.peers,
        "served_bytes": figures.served_bytes,
        "upload_bytes_per_sec": state.upload_limit,
        "requests": {
            "hit": figures.hits,
            "miss": figures.misses,
            "refused": figures.refused,
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
