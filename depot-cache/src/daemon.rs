//! `depot-cache --config FILE`: the depot as a service. It serves the yard (with the tracker and
//! super-seeding unless disabled, at its upload limit), fills itself from upstream on a schedule
//! (inside its backhaul windows, at its rate limit, under its disk cap), and reports on
//! `/metrics` and `/status`.
//!
//! A prefetch run that starts inside a window runs to its end (the rate limit bounds what it
//! takes); a run that fails is retried at the next interval and resumes what it left partial.

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use node::director_client::DirectorClient;
use node::net::{EventHub, NetHandle};
use node::relay::ReportQueue;
use node::serve::ServeCounters;
use node::tracker::Tracker;

use crate::config::{DepotConfig, PrefetchConfig, RelayConfig, backhaul_open, relay_dir};
use crate::prefetch::{PrefetchRequest, prefetch_with};
use crate::status::{PrefetchState, REFUSALS_KEPT, RelayState, State, lock};

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
    let mesh = node::mesh_config::MeshSection::load(config.mesh.as_ref())?;
    if matches!(mesh, node::mesh_config::Mesh::Open) {
        tracing::warn!("mesh.open = true: every peer that connects is served, fleet member or not");
    }
    let (net, events, incoming) = node::net::start(node::net::NetConfig {
        keypair: Some(keypair),
        membership: mesh.membership(),
        listen: config.listen.clone(),
        mdns: config.mdns,
        agent_version: format!(
            "{}{}",
            node::engine::DEPOT_AGENT_PREFIX,
            env!("CARGO_PKG_VERSION")
        ),
        quic: node::net::QuicTuning {
            congestion: config.serve.congestion,
            ..node::net::QuicTuning::default()
        },
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
            // Its CA read (and refused, naming the file) before the depot starts.
            crate::relay::director_client(relay, RELAY_TIMEOUT).context("the relay's director")?;
            let dir = relay_dir(&config.data_dir);
            let queue = ReportQueue::with_quotas(&dir, relay.quotas)
                .with_context(|| format!("opening the report queue in {}", dir.display()))?;
            tracing::info!(queued = queue.len(), director = %relay.director_url, "relaying vehicles' reports");
            Some(Arc::new(queue))
        }
        None => None,
    };
    let counters = Arc::new(ServeCounters::default());
    let server = node::serve::spawn_server_with(
        store.clone(),
        incoming,
        counters.clone(),
        node::serve::Roles {
            tracker: tracker.clone(),
            reports: queue
                .clone()
                .map(|queue| queue as Arc<dyn node::relay::ReportInbox>),
            upload_limit: config.serve.upload_bytes_per_sec.map(|rate| {
                node::ratelimit::RateLimit::with_burst(rate, node::ratelimit::LINK_BURST)
            }),
            // The list its gate holds (kept at `[mesh] revocations`, refreshed through the
            // relay), handed on to the yard's vehicles that ask.
            revocations: net.revocations_in_force(),
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
        membership: net.membership_counters(),
        transport: net.transport_counters(),
    });
    let mut http_addr = None;
    let mut tasks = Vec::new();
    if let Some(http) = config.http {
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("listening for HTTP on {http}"))?;
        http_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(crate::http::serve(listener, state.clone())));
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
    if let Some(relay) = &config.relay {
        let director =
            crate::relay::director_client(relay, RELAY_TIMEOUT).context("the relay's director")?;
        if let node::mesh_config::Mesh::Fleet { revocations, .. } = &mesh {
            // As often as the depot refreshes its metadata.
            let every = config
                .prefetch
                .as_ref()
                .map_or(REVOCATIONS_REFRESH, |prefetch| prefetch.interval);
            tasks.push(tokio::spawn(crate::revocations::refresh_loop(
                director.clone(),
                net.clone(),
                revocations.clone(),
                every,
            )));
        }
        tasks.push(tokio::spawn(relay_loop(
            relay.clone(),
            director,
            state.clone(),
        )));
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
    tracing::info!(
        served_bytes = state.counters.bytes.load(std::sync::atomic::Ordering::Relaxed),
        transport = %serde_json::json!(state.transport.read()),
        "stopped"
    );
    Ok(())
}

async fn prefetch_loop(
    prefetch: PrefetchConfig,
    config: DepotConfig,
    net: NetHandle,
    hub: EventHub,
    state: Arc<State>,
) {
    loop {
        let now = node::clock::unix_now();
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
            let result = prefetch_with(&request, &net, &mut events, &state.store).await;
            state.store.flush_usage().ok();
            let mut status = lock(&state.prefetch);
            match result {
                Ok(summary) => {
                    tracing::info!(%repository, %summary, "prefetch done");
                    status.runs_ok += 1;
                    status.last_success_unix = Some(node::clock::unix_now());
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
            status.next_run_unix = Some(node::clock::unix_now() + next.as_secs());
        }
        tokio::time::sleep(next).await;
    }
}

/// How long the relay waits for the director's answer to one report.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a depot that prefetches nothing asks the director for the fleet's revocations
/// (one that prefetches asks at every prefetch interval).
const REVOCATIONS_REFRESH: Duration = Duration::from_secs(900);

/// Empties the report queue into the director: at once when a report arrives, and every
/// `retry` while reports wait (the director was unreachable).
async fn relay_loop(relay: RelayConfig, director: DirectorClient, state: Arc<State>) {
    let Some((queue, _)) = &state.relay else {
        return;
    };
    let queue = queue.clone();
    loop {
        let round = {
            let (queue, director) = (queue.clone(), director.clone());
            tokio::task::spawn_blocking(move || crate::relay::relay_once(&queue, &director)).await
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
                status.last_success_unix = Some(node::clock::unix_now());
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
