//! The running parts of a yard and how they start and stop: the director service, the origin's
//! cache (with the thread that keeps it serving the director's newest metadata), the depot
//! daemon, the corrupt peer and the vehicle agents' threads. [`Yard`] holds whatever must be
//! stopped and stops it when dropped, so a run that fails half-way leaves nothing running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use libp2p::Multiaddr;
use node::director_client::{ClientTls, DirectorClient};
use node::mesh_config::MeshSection;
use origin::operators::Role;
use origin::repo::Origin;
use proto::Vin;
use proto::membership::MemberRole;
use serde_json::Value;

use super::options::{Log, YardOptions};
use super::release::Release;
use super::vehicle::{self, VehicleEvent, VehicleSetup};

/// What keeps running between the steps of a run. Each `start_*` adds a part; [`Yard::stop`]
/// (or dropping the yard) stops them all: the vehicle agents, then the depot; the corrupt peer, the origin's cache and the runtime (with the director
/// service) go with the yard.
pub(super) struct Yard {
    /// Tells the vehicle agents to stop at their next turn.
    stop: Arc<AtomicBool>,
    vehicles: Vec<JoinHandle<()>>,
    /// The signal that ends the depot daemon, and its task.
    depot: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
    rogue: Option<crate::rogue::Rogue>,
    attackers: Attackers,
    /// The origin's mesh node, held so that it keeps listening and publishing (its server runs
    /// on the runtime).
    cache: Option<origin::mesh::OriginMesh>,
    /// The director service, the origin's cache and the depot share it.
    runtime: tokio::runtime::Runtime,
}

/// The attackers of a yard, when asked for; their counts stay readable after they stopped.
#[derive(Debug, Default)]
pub(super) struct Attackers {
    pub(super) slow_reader: Option<crate::attackers::slow_reader::SlowReader>,
    pub(super) report_flood: Option<crate::attackers::report_flood::ReportFlood>,
}

impl Attackers {
    /// Stops those running.
    fn stop(&mut self) {
        if let Some(reader) = &mut self.slow_reader {
            reader.stop();
        }
        if let Some(flood) = &mut self.report_flood {
            flood.stop();
        }
    }
}

/// The director service, as the operator and the vehicles reach it.
pub(super) struct Director {
    pub(super) url: String,
    /// The CA file its certificate chains to (the origin's `tls/director-ca.pem`).
    pub(super) ca: PathBuf,
    /// As the release manager (creates the campaign, watches it).
    pub(super) api: DirectorClient,
    /// As the provisioning system (enrols the vehicles).
    pub(super) provisioning: DirectorClient,
    /// As the two approvers, each with their approval key.
    pub(super) approvers: Vec<(DirectorClient, ed25519_dalek::SigningKey)>,
}

/// How long the operator's calls wait out the director's rate limit ([`patiently`]).
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(30);

/// Calls the director with `call` until it is not refused for its rate (429, which a report
/// flood relayed by the depot can cause: every yard client shares the loopback address), for
/// up to [`RATE_LIMIT_PATIENCE`]; any other answer is returned as it came.
pub(super) fn patiently<T>(
    mut call: impl FnMut() -> Result<T, node::director_client::ClientError>,
) -> Result<T, node::director_client::ClientError> {
    let until = Instant::now() + RATE_LIMIT_PATIENCE;
    loop {
        match call() {
            Err(node::director_client::ClientError::Refused { status: 429, .. })
                if Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The operators netsim acts as, each with the roles of that job.
const OPERATORS: [(&str, Role); 4] = [
    ("release-manager", Role::ReleaseManager),
    ("provisioning", Role::Provisioner),
    ("fleet-safety", Role::Approver),
    ("fleet-quality", Role::Approver),
];

/// The running depot, as the vehicles and the run reach it.
pub(super) struct Depot {
    /// Its full address (with `/p2p/<peer id>`).
    pub(super) addr: Multiaddr,
    /// Its peer id, as the vehicles' download counters name it.
    pub(super) peer: String,
    /// Where it serves `/status`.
    http_url: String,
    http: ureq::Agent,
    /// The repositories it prefetches.
    repositories: usize,
}

impl Depot {
    /// The depot's `/status`.
    pub(super) fn status(&self) -> anyhow::Result<Value> {
        let url = format!("{}/status", self.http_url);
        let mut response = self
            .http
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let text = response.body_mut().read_to_string()?;
        serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
    }

    /// Waits until the depot has filled itself from the origin's cache: every repository
    /// prefetched once.
    pub(super) fn wait_for_prefetch(&self, log: Log) -> anyhow::Result<()> {
        let begun = Instant::now();
        let deadline = begun + Duration::from_secs(120);
        let mut said = begun;
        loop {
            let status = self.status()?;
            let runs = status["prefetch"]["runs_ok"].as_u64().unwrap_or(0);
            if runs >= self.repositories as u64 {
                break;
            }
            if Instant::now() > deadline {
                bail!("the depot did not fill itself from the origin's cache in 120 s: {status}");
            }
            if said.elapsed() >= super::options::HEARTBEAT {
                said = Instant::now();
                #[allow(clippy::cast_precision_loss)]
                let mib =
                    status["prefetch"]["backhaul_bytes"].as_u64().unwrap_or(0) as f64 / 1_048_576.0;
                log.say(&format!(
                    "depot: prefetching for {:.0} s: {runs} of {} repositories, {mib:.1} MiB over its backhaul so far",
                    begun.elapsed().as_secs_f64(),
                    self.repositories
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        log.say(&format!(
            "depot: prefetched the releases and what is listed with them ({} repositories)",
            self.repositories
        ));
        Ok(())
    }
}

impl Yard {
    /// A yard with nothing running yet but the runtime its services will share.
    pub(super) fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Self {
            stop: Arc::new(AtomicBool::new(false)),
            vehicles: Vec::new(),
            depot: None,
            rogue: None,
            attackers: Attackers::default(),
            cache: None,
            runtime,
        })
    }

    /// Starts the director's HTTP service for `origin` on a loopback port, for a yard of
    /// `vehicles`; it runs until the yard is dropped.
    pub(super) fn start_director(
        &mut self,
        out: &Path,
        origin: &Origin,
        vehicles: usize,
    ) -> anyhow::Result<Director> {
        let director = origin::service::Director::open(origin.clone())?;
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        // HTTPS with the origin's own certificate, as `origin serve` runs by default.
        let transport = origin::http::transport(origin, &origin::http::Listen::OriginTls)?;
        let url = format!("{}://{}", transport.scheme(), listener.local_addr()?);
        // Every client of the yard's director shares one loopback address, where each would
        // have its own on a real yard (the operator, the depot's relay, each vehicle): each is
        // given the director's default rate per client.
        let limit = origin::http::RateLimit::default();
        #[allow(clippy::cast_precision_loss)]
        let clients = (vehicles + 2) as f64;
        let gate = origin::http::Gate::new(origin::operators::Operators::path(origin), None);
        let shared = origin::http::Shared::with_limit(
            director,
            Box::new(node::clock::unix_now),
            gate,
            origin::http::RateLimit {
                per_sec: limit.per_sec * clients,
                burst: limit.burst * clients,
            },
        );
        self.runtime.spawn(origin::http::serve(
            listener,
            transport,
            shared,
            Duration::from_secs(1),
        ));
        let ca = origin::tls::TlsFiles::of(origin).director_ca;
        // Each job's operator, with a certificate from the origin's operator CA, as `origin
        // operator add` makes them.
        let mut clients = Vec::new();
        for (name, role) in OPERATORS {
            let added = origin::operators::add(
                origin,
                &origin::Actor::new("netsim")?,
                &name.parse()?,
                &std::collections::BTreeSet::from([role]),
                1,
                &out.join("operators"),
            )?;
            let tls = ClientTls::trusting(&ca)?.with_identity(&added.certificate, &added.key)?;
            let key = added
                .approval_key
                .as_deref()
                .map(origin::operators::load_approval_key)
                .transpose()?;
            clients.push((
                DirectorClient::new(&url, Duration::from_secs(30), &tls)?,
                key,
            ));
        }
        let mut clients = clients.into_iter();
        let mut next = || clients.next().context("an operator is missing");
        let (api, _) = next()?;
        let (provisioning, _) = next()?;
        let approvers = [next()?, next()?]
            .into_iter()
            .map(|(client, key)| Ok((client, key.context("an approver has no key")?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Director {
            url,
            ca,
            api,
            provisioning,
            approvers,
        })
    }

    /// Starts the origin's mesh node ([`origin::mesh`], what `origin serve --mesh-listen`
    /// runs): it serves the origin's image repository and every vehicle's director repository,
    /// live as the director signs them. Returns its address; it runs until the yard stops.
    pub(super) fn start_origin_cache(&mut self, origin: &Origin) -> anyhow::Result<Multiaddr> {
        let mesh = self
            .runtime
            .block_on(origin::mesh::start(origin, vec![loopback()?]))?;
        let addr = mesh
            .addrs
            .first()
            .cloned()
            .context("the origin's mesh node listens nowhere");
        self.cache = Some(mesh);
        addr
    }

    /// Starts the depot daemon configured by `config` (see [`depot_config`]); it runs until
    /// the yard stops.
    pub(super) fn start_depot(
        &mut self,
        config: depot_cache::config::DepotConfig,
    ) -> anyhow::Result<Depot> {
        let repositories = config
            .prefetch
            .as_ref()
            .map_or(0, |prefetch| prefetch.repositories.len());
        let (ready, depot_ready) = tokio::sync::oneshot::channel();
        let (depot_stop, depot_stopped) = tokio::sync::oneshot::channel::<()>();
        let task = self
            .runtime
            .spawn(depot_cache::daemon::serve(config, ready, async move {
                let _ = depot_stopped.await;
            }));
        self.depot = Some((depot_stop, task));
        let depot = self
            .runtime
            .block_on(depot_ready)
            .context("the depot did not start")?;
        let addr = depot
            .addrs
            .first()
            .context("the depot listens nowhere")?
            .clone();
        let http_url = format!("http://{}", depot.http.context("the depot serves no HTTP")?);
        let peer = addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::P2p(peer) => Some(peer.to_string()),
                _ => None,
            })
            .context("the depot's address has no peer id")?;
        Ok(Depot {
            addr,
            peer,
            http_url,
            http: http_agent(),
            repositories,
        })
    }

    /// Starts the corrupt peer beside the depot, holding the release's delta; it runs until
    /// the yard is dropped.
    pub(super) fn start_rogue(
        &mut self,
        out: &Path,
        release: &Release,
        depot: &Depot,
        log: Log,
    ) -> anyhow::Result<()> {
        let name = release
            .delta_sizes
            .keys()
            .next()
            .context("the release has no delta")?;
        // An insider: a vehicle of the fleet that went bad, enrolled like the others.
        let dir = out.join("corrupt-peer");
        let mesh = enrol(&release.origin, &dir, MemberRole::Vehicle)?;
        let rogue = crate::rogue::start(
            &dir,
            &release.deltas_dir().join(name),
            &depot.addr,
            MeshSection::load(Some(&mesh))?.membership(),
        )?;
        log.say(&format!(
            "corrupt peer {} joins the yard: it claims the delta and corrupts whatever it sends",
            rogue.peer
        ));
        self.rogue = Some(rogue);
        Ok(())
    }

    /// The corrupt peer, if one was started.
    pub(super) fn rogue(&self) -> Option<&crate::rogue::Rogue> {
        self.rogue.as_ref()
    }

    /// Starts the attackers `options` asks for, each enrolled as a vehicle of the fleet (a
    /// compromised one): the slow reader asks for the release's delta and v2 image, the
    /// report flooder hands reports to the depot's relay. They run until the campaign ends.
    pub(super) fn start_attackers(
        &mut self,
        out: &Path,
        release: &Release,
        depot: &Depot,
        options: &YardOptions,
        log: Log,
    ) -> anyhow::Result<()> {
        if options.slow_reader {
            let dir = out.join("slow-reader");
            let mesh = enrol(&release.origin, &dir, MemberRole::Vehicle)?;
            let membership = MeshSection::load(Some(&mesh))?
                .membership()
                .context("the slow reader's [mesh] names no certificate")?;
            let mut targets = Vec::new();
            for (name, size) in &release.delta_sizes {
                let blob = name
                    .parse()
                    .with_context(|| format!("the delta {name} is not named by its blob id"))?;
                targets.push(crate::attackers::slow_reader::Target::new(blob, *size));
            }
            targets.push(crate::attackers::slow_reader::Target::new(
                proto::BlobId::of(&release.v2),
                release.v2.len() as u64,
            ));
            let reader =
                crate::attackers::slow_reader::start(&dir, &depot.addr, membership, targets)?;
            log.say(&format!(
                "slow reader {} joins the yard: it asks the depot for as many ranges as it may and reads none",
                reader.peer
            ));
            self.attackers.slow_reader = Some(reader);
        }
        if options.report_flood {
            let dir = out.join("report-flooder");
            let mesh = enrol(&release.origin, &dir, MemberRole::Vehicle)?;
            let membership = MeshSection::load(Some(&mesh))?
                .membership()
                .context("the report flooder's [mesh] names no certificate")?;
            let flood = crate::attackers::report_flood::start(&dir, &depot.addr, membership)?;
            log.say(&format!(
                "report flooder {} joins the yard: it hands the depot's relay reports as fast as it answers",
                flood.peer
            ));
            self.attackers.report_flood = Some(flood);
        }
        Ok(())
    }

    /// The attackers started, running or stopped.
    pub(super) fn attackers(&self) -> &Attackers {
        &self.attackers
    }

    /// Registers each of `vins` with the director, writes its ECU and configuration under
    /// `out/vehicles` and starts its agent on a thread of its own. The agents run until the
    /// yard stops; what they do arrives on the returned channel. Also returns each vehicle's
    /// peer id, as its neighbours' download counters name it.
    pub(super) fn start_vehicles(
        &mut self,
        out: &Path,
        vins: &[Vin],
        setup: &VehicleSetup<'_>,
        director: &Director,
    ) -> anyhow::Result<(mpsc::Receiver<VehicleEvent>, Vec<String>)> {
        let (sender, events) = mpsc::channel();
        let mut peers = Vec::new();
        for (index, vin) in vins.iter().enumerate() {
            // Enrolment as a factory does it: the gateway's mesh identity is made, registered
            // with the vehicle, and the director's answer carries its membership certificate.
            let dir = out.join("vehicles").join(vin.as_str());
            let data = dir.join("data");
            std::fs::create_dir_all(&data)?;
            let peer = node::identity::load_or_create(&data)?.public().to_peer_id();
            let mut record = vehicle::record(index, vin, setup.replaced(index))?;
            record.peer = Some(peer.to_string());
            peers.push(peer.to_string());
            let answer = director
                .provisioning
                .register(&proto::director_api::RegisterVehicle { vehicle: record })?;
            let certificate = answer
                .membership
                .context("the director issued no membership certificate")?;
            let mesh = mesh_section(&data, &certificate, &setup.fleet_key)?;
            let config = vehicle::write(&dir, index, vin, setup, &mesh)?;
            let (stop, sender) = (self.stop.clone(), sender.clone());
            self.vehicles.push(std::thread::spawn(move || {
                if let Err(error) = vehicle::drive(index, config, stop, sender) {
                    tracing::error!(index, "vehicle agent failed: {error:#}");
                }
            }));
        }
        Ok((events, peers))
    }

    /// Gives the depot a moment to relay the reports it holds, reads its `/status`, then
    /// stops the vehicle agents and the depot, in that order, and
    /// returns the status. The director service, the origin's cache and the corrupt peer stay
    /// up until the yard is dropped: the summary still reads the corrupt peer's count.
    pub(super) fn stop(&mut self, depot: &Depot) -> anyhow::Result<Value> {
        self.attackers.stop();
        std::thread::sleep(Duration::from_millis(500));
        let status = depot.status()?;
        self.shut_down();
        Ok(status)
    }

    /// Stops the vehicle agents and the depot, and waits for each.
    fn shut_down(&mut self) {
        self.attackers.stop();
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.vehicles.drain(..) {
            let _ = thread.join();
        }
        if let Some((stop, task)) = self.depot.take() {
            let _ = stop.send(());
            let _ = self.runtime.block_on(task);
        }
    }
}

impl Drop for Yard {
    fn drop(&mut self) {
        // A run that ended early (an error, a timeout) still stops its nodes and threads.
        self.shut_down();
    }
}

/// Enrols the node whose data lives in `dir` in `role`, as an operator does with `origin
/// member issue`: its identity made if new, its certificate issued by the origin's fleet key
/// for 30 days. Returns the `[mesh]` section it runs with.
pub(super) fn enrol(origin: &Origin, dir: &Path, role: MemberRole) -> anyhow::Result<MeshSection> {
    std::fs::create_dir_all(dir)?;
    let peer = node::identity::load_or_create(dir)?.public().to_peer_id();
    let actor = origin::Actor::new("netsim")?;
    let certificate = origin::fleet::issue(origin, &actor, &peer.to_string(), role, 30)?;
    let fleet_key = origin::fleet::describe_key(origin)?.fleet_key;
    mesh_section(dir, &certificate, &fleet_key)
}

/// Writes `certificate` in `dir` and returns the `[mesh]` section that names it, trusting
/// `fleet_key`, with the revocation list kept beside it.
fn mesh_section(
    dir: &Path,
    certificate: &proto::membership::MembershipCert,
    fleet_key: &str,
) -> anyhow::Result<MeshSection> {
    let path = dir.join("member.json");
    std::fs::write(&path, certificate.encode())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(MeshSection {
        open: false,
        fleet_keys: vec![fleet_key.to_owned()],
        certificate: Some(path),
        revocations: Some(dir.join("revocations.json")),
    })
}

fn loopback() -> anyhow::Result<Multiaddr> {
    Ok("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)
}

/// The depot's configuration: listening on loopback, prefetching the image repository and
/// every vehicle's director repository from the origin's cache at `cache`, relaying reports
/// to the director.
pub(super) fn depot_config(
    out: &Path,
    release: &Release,
    vins: &[Vin],
    cache: Multiaddr,
    director: &Director,
    options: &YardOptions,
) -> anyhow::Result<depot_cache::config::DepotConfig> {
    let (image_root, director_root) = release.roots();
    let mut repositories = vec!["image".to_string()];
    repositories.extend(vins.iter().map(|vin| format!("director/{vin}")));
    Ok(depot_cache::config::DepotConfig {
        data_dir: out.join("depot"),
        listen: vec![loopback()?],
        mdns: false,
        threads: 1,
        cap_bytes: None,
        http: Some("127.0.0.1:0".parse()?),
        seeding: Some(node::seeding::SeedConfig::default()),
        serve: depot_cache::config::ServeConfig {
            upload_bytes_per_sec: options.depot_up_bytes_per_sec,
            ..depot_cache::config::ServeConfig::default()
        },
        prefetch: Some(depot_cache::config::PrefetchConfig {
            upstream: vec![cache],
            repositories,
            root: Some(image_root),
            director_root: Some(director_root),
            interval: Duration::from_secs(2),
            windows: Vec::new(),
            utc_offset_minutes: 0,
            rate_limit: None,
            stall_timeout: Duration::from_secs(60),
        }),
        relay: Some(depot_cache::config::RelayConfig {
            director_url: director.url.clone(),
            director_ca: Some(director.ca.clone()),
            retry: Duration::from_secs(1),
            quotas: node::relay::Quotas::reports(10_000),
        }),
        mesh: Some(enrol(
            &release.origin,
            &out.join("depot"),
            MemberRole::Depot,
        )?),
    })
}

/// An HTTP client that reads error statuses as answers.
fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}
