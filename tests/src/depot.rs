//! A depot in the test's own process: `depot_cache::daemon::serve`, the code `depot-cache
//! --config` runs, driven by a thread and runtime of its own as the binary's `main` drives it
//! (`threads` from the configuration); and what the depot's operator commands do to its data
//! directory, through the same library calls.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;

use libp2p::Multiaddr;
use tokio::sync::oneshot;

/// The bytes the depot served its yard, in its `/metrics`.
pub const SERVED: &str = "depotmesh_depot_bytes_total{direction=\"served\",link=\"yard\"}";

/// The configuration lines every test depot starts from: `data_dir`, QUIC on a free loopback
/// port, no mDNS (tests name their peers), `/metrics` and `/status` on a free loopback port.
#[must_use]
pub fn depot_config(data_dir: &Path) -> String {
    format!(
        "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nmesh = {{ open = true }}\nhttp = \"127.0.0.1:0\"\n",
        data_dir.display().to_string()
    )
}

/// A running depot daemon. Dropping it stops it the way SIGTERM stops the binary; [`kill`]
/// stops it the way a power cut does.
///
/// [`kill`]: DepotDaemon::kill
#[derive(Debug)]
pub struct DepotDaemon {
    /// Its QUIC address with `/p2p/`.
    pub addr: Multiaddr,
    /// Where it serves `/metrics` and `/status`, when its configuration says so.
    pub http: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl DepotDaemon {
    /// Writes `config` to `dir/depot.toml` and runs the depot it configures, as `depot-cache
    /// --config dir/depot.toml` does; returns once it listens.
    pub fn start(dir: &Path, config: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("depot.toml");
        std::fs::write(&path, config).unwrap();
        let config = depot_cache::config::load(&path).unwrap();
        let (ready, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (kill, killed) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = node::runtime::build_tokio(Some(config.threads))?;
            runtime.block_on(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                tokio::select! {
                    served = depot_cache::daemon::serve(config, ready, shutdown) => served,
                    // The daemon's future is dropped where it stands, and the runtime with
                    // every task it spawned when this thread ends: nothing of its shutdown runs.
                    _ = killed => Ok(()),
                }
            })
        });
        let Ok(ready) = started.blocking_recv() else {
            panic!("the depot did not start: {:?}", thread.join());
        };
        Self {
            addr: ready
                .addrs
                .first()
                .expect("the depot listens nowhere")
                .clone(),
            http: ready.http,
            stop: Some(stop),
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Serves the cache in `data_dir` to the yard with nothing else (no prefetch, no HTTP), on
    /// loopback without mDNS, as `depot-cache serve --no-mdns --listen
    /// /ip4/127.0.0.1/udp/0/quic-v1` does.
    pub fn serve(data_dir: &Path) -> Self {
        Self::start(
            data_dir,
            &format!(
                "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/udp/0/quic-v1\"]\nmdns = false\nmesh = {{ open = true }}\n",
                data_dir.display().to_string()
            ),
        )
    }

    /// A power cut: the daemon stops between two steps, with no shutdown of its own (no usage
    /// flushed, no peer told); what it wrote durably is all that is left.
    pub fn kill(mut self) {
        let kill = self.kill.take();
        self.end(kill);
    }

    /// Signals the daemon's thread with `signal` and waits for it; a daemon that failed fails
    /// the test (unless it is failing already).
    fn end(&mut self, signal: Option<oneshot::Sender<()>>) {
        if let Some(signal) = signal {
            let _ = signal.send(());
        }
        let ended = self.thread.take().map(JoinHandle::join);
        if !std::thread::panicking() {
            ended.into_iter().for_each(|ended| ended.unwrap().unwrap());
        }
    }

    /// GET `path` from its HTTP endpoint: the status line and the body.
    pub fn get(&self, path: &str) -> (String, String) {
        let http = self.http.expect("the depot serves no HTTP");
        let mut stream = std::net::TcpStream::connect(http).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nhost: depot\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    /// Its `/status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status").1).unwrap()
    }

    /// Waits (up to 60 s) until it has prefetched `runs` times, every run good.
    pub fn wait_prefetched(&self, runs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = self.status();
            assert_eq!(
                status["prefetch"]["runs_failed"].as_u64(),
                Some(0),
                "prefetch failed: {status}"
            );
            if status["prefetch"]["runs_ok"].as_u64() >= Some(runs) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no prefetch in 60 s: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// One series' value from its `/metrics`.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in {body}"))
            .parse()
            .unwrap()
    }
}

impl Drop for DepotDaemon {
    fn drop(&mut self) {
        let stop = self.stop.take();
        self.end(stop);
    }
}

/// A depot daemon in `data_dir` serving `origin`'s image repository and the director
/// repositories of `vins`, as imported now (no prefetch).
pub fn serving_origin(
    data_dir: &Path,
    origin: &origin::repo::Origin,
    vins: &[&str],
) -> DepotDaemon {
    import_repo(data_dir, "image", &origin.dir.join("image"));
    for vin in vins {
        import_repo(
            data_dir,
            &format!("director/{vin}"),
            &origin.dir.join(format!("director/vehicles/{vin}")),
        );
    }
    DepotDaemon::start(data_dir, &depot_config(data_dir))
}

/// Stores the repository directory `repo` in the cache in `data_dir` under `name`, as
/// `depot-cache import-repo --data-dir DATA_DIR --name NAME REPO` does; returns the names it
/// now serves.
pub fn import_repo(data_dir: &Path, name: &str, repo: &Path) -> Vec<String> {
    let (store, _) = node::store::open_data_dir(data_dir).unwrap();
    depot_cache::import::import_repo(&store, name, repo)
        .unwrap()
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

/// Stores `file` in the cache in `data_dir`, as `depot-cache import --data-dir DATA_DIR FILE`
/// does; returns its blob id.
pub fn import(data_dir: &Path, file: &Path) -> proto::BlobId {
    let (store, _) = node::store::open_data_dir(data_dir).unwrap();
    store.import(std::fs::File::open(file).unwrap()).unwrap()
}

/// The blob ids the cache in `data_dir` holds and the ids its names point at, as `depot-cache
/// list --data-dir DATA_DIR` lists them.
pub fn list(data_dir: &Path) -> Vec<proto::BlobId> {
    let (store, _) = node::store::open_data_dir(data_dir).unwrap();
    let mut ids: Vec<_> = store.list().into_iter().map(|info| info.id).collect();
    ids.extend(store.names().into_iter().map(|(_, id)| id));
    ids
}

/// A depot daemon of `origin`'s fleet (enrolled as a depot) in `data_dir`, prefetching every
/// second from `upstream` the image repository (trusting the root file `roots.0`) and the
/// director repository of each of `vins` (trusting `roots.1`).
pub fn prefetching_depot(
    origin: &origin::repo::Origin,
    data_dir: &Path,
    upstream: &str,
    roots: (&Path, &Path),
    vins: &[&str],
) -> DepotDaemon {
    let mesh = crate::release::enrol(origin, data_dir, proto::membership::MemberRole::Depot);
    let config = depot_config(data_dir).replace("mesh = { open = true }\n", "");
    DepotDaemon::start(
        data_dir,
        &format!(
            "{config}{}\n[prefetch]\nupstream = [{upstream:?}]\nroot = {:?}\ndirector_root = {:?}\nvehicles = {vins:?}\ninterval_secs = 1\n",
            mesh.inline_toml(),
            roots.0.display().to_string(),
            roots.1.display().to_string(),
        ),
    )
}
