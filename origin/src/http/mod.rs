//! The director service over HTTP (`origin serve`).
//!
//! Routes, what each needs and what each takes are in one table: [`auth::ROUTES`] (the role)
//! and docs/director.md (bodies and answers). Every request passes [`auth`] (who asks, and
//! whether they may) and a per-client rate limit ([`rate`]) before its route runs; the
//! listener (`server`) speaks HTTPS and bounds how long a client may take.
//!
//! Errors answer `{"error": "..."}` naming what was wrong: 400 for a bad request or a refused
//! operator action, 401 for a missing or unknown credential, 403 for a missing role or a
//! refused manifest (malformed, not signed as registered, for another vehicle or a director
//! version never signed), 404 for an unknown vehicle or route, 409 for a replayed manifest or
//! a VIN enrolled with other keys, 413 for a body over [`MAX_BODY`], 429 past the rate limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use proto::director_api::{
    ActionRequest, CampaignAction, CreateCampaign, CreatedAnswer, DecidedAnswer, ErrorAnswer,
    RegisterVehicle, RegisteredAnswer, RenewMembership, RevokeMember, RotateKeys, SignedApproval,
    parse_key, path,
};
use proto::{CampaignId, Vin};

pub use auth::{BearerVerifier, Gate, Need, Principal, ROUTES, Via};
pub use rate::RateLimit;
pub use server::{Peer, Transport, TransportError};

use crate::operators::Operators;
use crate::service::{Director, EnrollError, ManifestError};

pub mod auth;
pub mod console;
pub mod rate;
mod server;

/// The service's shared state: the director and its clock.
pub struct Shared {
    director: Mutex<Director>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    gate: Gate,
    /// TLS handshakes refused (an expired, revoked-by-CA or foreign client certificate, or
    /// no TLS at all).
    handshakes_failed: Arc<std::sync::atomic::AtomicU64>,
    /// Requests per client address.
    limiter: Mutex<rate::Limiter>,
    /// What the limiter's clock counts from.
    started: std::time::Instant,
    /// Told when a call left background work due (a decision opened a wave, or halted one):
    /// the worker ([`work`]) wakes.
    work_due: tokio::sync::Notify,
    /// The certificate served over HTTPS, once [`serve`] serves it: its end is a metric.
    certificate: std::sync::OnceLock<Arc<crate::tls::ServedCertificate>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The director, on the system clock.
    pub fn new(director: Director) -> Arc<Self> {
        Self::with_clock(director, Box::new(node::clock::unix_now))
    }

    /// The director, on `clock` (Unix seconds), its operators those of its origin's registry.
    pub fn with_clock(director: Director, clock: Box<dyn Fn() -> u64 + Send + Sync>) -> Arc<Self> {
        let gate = Gate::new(Operators::path(director.origin()), None);
        Self::with_gate(director, clock, gate)
    }

    /// The director, on `clock`, admitting who `gate` admits, each client at the default
    /// rate.
    pub fn with_gate(
        director: Director,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
        gate: Gate,
    ) -> Arc<Self> {
        Self::with_limit(director, clock, gate, RateLimit::default())
    }

    /// [`Self::with_gate`], each client held to `limit`.
    pub fn with_limit(
        director: Director,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
        gate: Gate,
        limit: RateLimit,
    ) -> Arc<Self> {
        Arc::new(Self {
            director: Mutex::new(director),
            clock,
            gate,
            handshakes_failed: Arc::default(),
            limiter: Mutex::new(rate::Limiter::new(limit)),
            started: std::time::Instant::now(),
            work_due: tokio::sync::Notify::new(),
            certificate: std::sync::OnceLock::new(),
        })
    }

    /// Runs `f` on the director on a blocking thread: it signs, writes files and calls the
    /// registry, whose clients block (PostgreSQL's drives a runtime of its own, which tokio
    /// refuses on an async worker). Every request and the ticker reach the director here.
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Director, u64) -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let now = (shared.clock)();
            let mut director = shared
                .director
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let result = f(&mut director, now);
            if director.work_due() > 0 {
                shared.work_due.notify_one();
            }
            result
        })
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}")))
    }
}

/// A refused request: its status and what was wrong.
#[derive(Debug)]
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&ErrorAnswer { error: self.1 }).unwrap_or_default(),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: &str) -> Refused {
    Refused(status, message.to_string())
}

fn ok_json(value: &impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(value).unwrap_or_default(),
    )
        .into_response()
}

fn answer<T: serde::Serialize>(result: anyhow::Result<T>) -> Result<Response, Refused> {
    match result.and_then(|value| Ok(serde_json::to_value(value)?)) {
        Ok(value) => Ok(ok_json(&value)),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, &format!("{e:#}"))),
    }
}

/// A failure of the director's own (a file it cannot read): 500, with the error's chain.
fn internal(e: &anyhow::Error) -> Refused {
    error(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"))
}

/// Reads a JSON object body as `T`; the error names the field that was wrong. The `required`
/// top-level fields are checked first, in that order, so a request missing who sends it says so
/// before what is wrong deeper in it.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], required: &[&str]) -> Result<T, Refused> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    if let Some(missing) = required.iter().find(|field| value.get(**field).is_none()) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("field {missing} is missing"),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("field {path}: ")
        };
        error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body is not the request this route takes: {at}{}",
                e.inner()
            ),
        )
    })
}

/// A path segment parsed as an id; a bad one is named.
fn path_id<T: std::str::FromStr<Err = proto::IdError>>(text: &str) -> Result<T, Refused> {
    text.parse()
        .map_err(|e: proto::IdError| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// The service's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(console::page))
        .route("/v1/login", get(console::login))
        .route(path::METRICS, get(metrics))
        .route("/v1/whoami", get(whoami))
        .route(path::CAMPAIGNS, get(campaigns).post(create))
        .route("/v1/campaigns/{id}/approve", post(act))
        .route("/v1/campaigns/{id}/halt", post(act))
        .route("/v1/campaigns/{id}/resume", post(act))
        .route("/v1/campaigns/{id}/abort", post(act))
        .route(path::VEHICLES, get(vehicles).post(register))
        .route("/v1/vehicles/{vin}/keys", post(rotate_keys))
        .route("/v1/vehicles/{vin}/manifest", post(manifest))
        .route("/v1/vehicles/{vin}/membership", post(renew_membership))
        .route("/v1/audit", get(audit_log))
        .route("/v1/operators", get(operators))
        .route(path::FLEET_REVOCATIONS, get(revocations))
        .route(path::FLEET_REVOKE, post(revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::authorize,
        ))
        .fallback(no_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            hygiene,
        ))
        .with_state(shared)
}

/// How long the worker leaves the director to others between two batches.
const BETWEEN_BATCHES: Duration = Duration::from_millis(2);

/// How long the worker waits after a batch failed as a whole (the image repository does not
/// verify, the registry refused a write) before it tries again.
const AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How often an idle worker looks for work nobody told it of.
const IDLE: Duration = Duration::from_secs(1);

/// The director's background work ([`crate::jobs`]), until the task is dropped: one batch of at
/// most `batch` at a time, each under the director's lock, the lock left to requests between
/// batches; idle while nothing is due, woken by the call that made something due.
pub async fn work(shared: Arc<Shared>, batch: crate::jobs::Batch) {
    loop {
        let pause = match shared.with(move |d, now| d.work(now, &batch)).await {
            Ok(Ok(worked)) if worked.due > 0 => BETWEEN_BATCHES,
            Ok(Ok(_)) => {
                tokio::select! {
                    () = shared.work_due.notified() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!("background work on vehicles' targets: {e:#}");
                AFTER_FAILURE
            }
            Err(_) => {
                tracing::error!("background work: the director task failed");
                AFTER_FAILURE
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// How often a director serving HTTPS looks at its certificate's end (`look_after`).
pub const CERTIFICATE_CHECK: Duration = Duration::from_secs(3600);

/// Looks at the end of the certificate `certificate` served (on the system clock, which TLS
/// clients judge it by): once fewer than [`crate::tls::RENEW_WITHIN`] are left, the origin's own
/// is renewed from its director CA and served from the next handshake on (logged at info, and
/// recorded in the audit log as done by the director), and a certificate given with
/// `--tls-cert` is warned about, with what to do. `at_start`: a due certificate is warned
/// about before it is renewed too.
async fn look_after(
    shared: &Arc<Shared>,
    certificate: &Arc<crate::tls::ServedCertificate>,
    at_start: bool,
) {
    let now = i64::try_from(node::clock::unix_now()).unwrap_or(i64::MAX);
    if at_start && certificate.renewable() && certificate.unbounded() {
        tracing::warn!(
            not_after = certificate.not_after(),
            "the director's TLS certificate was made before certificates' lives were bounded \
             and is valid until {}: issue a new one with `origin director-cert --name HOST` \
             (clients trust the CA and need nothing)",
            proto::tuf::Time::from_unix(certificate.not_after()),
        );
    }
    if !certificate.due(now) {
        return;
    }
    let not_after = certificate.not_after();
    let ends = ends(not_after, now);
    if !certificate.renewable() {
        tracing::warn!(
            not_after,
            "the director's TLS certificate (--tls-cert) {ends}: get a new one from the \
             company's PKI, put it in place and restart `origin serve`"
        );
        return;
    }
    if at_start {
        tracing::warn!(
            not_after,
            "the director's TLS certificate {ends}: renewing it from the director CA"
        );
    }
    let renewing = Arc::clone(certificate);
    let renewed = shared
        .with(move |director, clock| {
            let renewal = renewing.renew_if_due(director.origin(), now)?;
            if let Some(renewal) = &renewal {
                let mut origin = director.origin().clone();
                origin.now = proto::tuf::Time::from_unix(i64::try_from(clock).unwrap_or(i64::MAX));
                let detail = serde_json::json!({
                    "names": renewal.names,
                    "previous_not_after": renewal.previous_not_after,
                    "not_after": renewal.not_after,
                    "days": renewal.days.get(),
                    "fingerprint": renewal.fingerprint,
                });
                if let Err(e) = crate::audit::append(
                    &origin,
                    crate::service::DIRECTOR,
                    "director certificate renew",
                    detail,
                ) {
                    tracing::error!(
                        "the director's TLS certificate was renewed, but the audit log did not \
                         take its entry: {e:#}"
                    );
                }
            }
            Ok::<_, crate::tls::RenewError>(renewal)
        })
        .await;
    match renewed {
        Ok(Ok(Some(renewal))) => tracing::info!(
            not_after = renewal.not_after,
            names = ?renewal.names,
            fingerprint = %renewal.fingerprint,
            "the director's TLS certificate renewed from the director CA, valid {} days until {}",
            renewal.days,
            proto::tuf::Time::from_unix(renewal.not_after),
        ),
        // Another check renewed it first.
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(
            not_after,
            "the director's TLS certificate {ends} and could not be renewed: {e} \
             (clients refuse the director once it has ended)"
        ),
        Err(_) => tracing::error!("renewing the director's TLS certificate: the task failed"),
    }
}

/// When a certificate that ends at `not_after` ends, said from `now` (Unix seconds).
fn ends(not_after: i64, now: i64) -> String {
    let day = 86_400;
    let when = proto::tuf::Time::from_unix(not_after);
    if not_after > now {
        format!("expires in {} days ({when})", (not_after - now) / day)
    } else {
        format!("expired {} days ago ({when})", (now - not_after) / day)
    }
}

/// Serves `shared` on `listener` over `transport`, ticking the campaigns every `tick` (soak
/// times, report timeouts) and doing the director's background work ([`work`]), until the task
/// is dropped. Over HTTPS, the certificate's end is looked at before the first connection is
/// taken and every [`CERTIFICATE_CHECK`] after (`look_after`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    tick: Duration,
) {
    let _worker = AbortOnDrop(tokio::spawn(work(
        Arc::clone(&shared),
        crate::jobs::Batch::default(),
    )));
    let ticking = Arc::clone(&shared);
    let _ticker = AbortOnDrop(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match ticking.with(|d, now| d.tick(now)).await {
                Ok(Ok(decisions)) => {
                    for (id, decision) in decisions {
                        tracing::info!(campaign = %id, ?decision, "gate decision");
                    }
                }
                Ok(Err(e)) => tracing::error!("tick: {e:#}"),
                Err(_) => tracing::error!("tick: the director task failed"),
            }
        }
    }));
    let _certificate = match transport.certificate() {
        Some(certificate) => {
            // A second listener of the same service (`serve` again) serves the same one.
            let _ = shared.certificate.set(Arc::clone(certificate));
            look_after(&shared, certificate, true).await;
            let (shared, certificate) = (Arc::clone(&shared), Arc::clone(certificate));
            Some(AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CERTIFICATE_CHECK).await;
                    look_after(&shared, &certificate, false).await;
                }
            })))
        }
        None => None,
    };
    let failed = Arc::clone(&shared.handshakes_failed);
    server::serve(listener, transport, router(shared), failed).await;
}

/// A task that stops with what spawned it (the ticker, the worker and the certificate's check
/// stop with [`serve`]).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How `origin serve` is reached.
#[derive(Debug, Clone)]
pub enum Listen<'a> {
    /// HTTPS with the origin's own certificate (`tls/director.pem`, from its director CA).
    OriginTls,
    /// HTTPS with this certificate chain and key (PEM files), e.g. from the company's PKI.
    Tls {
        /// The certificate chain.
        cert: &'a std::path::Path,
        /// Its private key.
        key: &'a std::path::Path,
    },
    /// Plain HTTP, refused unless the address is a loopback one.
    PlainLoopback,
}

/// The director service of an origin bound to its address, on a runtime of its own: `origin
/// serve`.
#[derive(Debug)]
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the director of `origin` on the device registry at `registry` and listens on
    /// `listen` as `how` says; operators are those of the origin's operator registry, and
    /// those whose bearer tokens `bearer` accepts; each client address is held to `limit`.
    ///
    /// The director is opened here, before the runtime exists, and afterwards reached only
    /// through `spawn_blocking` ([`Shared`]): a registry's blocking client never runs on an
    /// async task. A `standby` waits here, not listening, until the director that holds the
    /// registry ends, then takes over ([`Director::open_standby`]).
    pub fn bind(
        origin: crate::Origin,
        registry: &crate::registry::Location,
        standby: bool,
        listen: std::net::SocketAddr,
        how: &Listen<'_>,
        bearer: Option<Arc<dyn BearerVerifier>>,
        limit: RateLimit,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let transport = transport(&origin, how)?;
        transport.check(listen)?;
        let origin_dir = origin.clone();
        let director = if standby {
            Director::open_standby(origin, registry)?
        } else {
            Director::open_at(origin, registry)?
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .with_context(|| format!("listening on {listen}"))?;
        Ok(Self {
            runtime,
            listener,
            transport,
            shared: Shared::with_limit(
                director,
                Box::new(node::clock::unix_now),
                Gate::new(Operators::path(&origin_dir), bearer),
                limit,
            ),
        })
    }

    /// Where it listens, as a URL.
    pub fn url(&self) -> std::io::Result<String> {
        Ok(format!(
            "{}://{}",
            self.transport.scheme(),
            self.listener.local_addr()?
        ))
    }

    /// Runs `future` on the service's runtime (to start what runs beside it: the origin's mesh
    /// node).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Serves until stopped, re-evaluating the gates every `tick`.
    pub fn run(self, tick: Duration) {
        if let Ok(local) = self.listener.local_addr() {
            tracing::info!(%local, scheme = self.transport.scheme(), "director listening");
        }
        self.runtime
            .block_on(serve(self.listener, self.transport, self.shared, tick));
    }
}

/// The transport `how` names for `origin`'s director.
pub fn transport(origin: &crate::Origin, how: &Listen<'_>) -> anyhow::Result<Transport> {
    Ok(match how {
        Listen::OriginTls => tls(origin, None)?,
        Listen::Tls { cert, key } => tls(origin, Some((cert, key)))?,
        Listen::PlainLoopback => Transport::PlainLoopback,
    })
}

fn tls(
    origin: &crate::Origin,
    cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<Transport> {
    let certificate = Arc::new(crate::tls::ServedCertificate::load(origin, cert_and_key)?);
    let config = crate::tls::server_config(origin, Arc::clone(&certificate))?;
    Ok(Transport::Tls {
        config,
        certificate,
    })
}

/// Bytes a request body may hold: the largest is a campaign spec or a vehicle with many ECUs,
/// a few KiB; a manifest of a vehicle with dozens of ECUs, tens of KiB.
pub const MAX_BODY: usize = 256 * 1024;

/// How long a client may take to send a request's body once its head arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Around every request: a client over its rate is refused (429, `Retry-After`) before
/// anything else; a refusal the framework wrote as text (a body over [`MAX_BODY`]: 413) is
/// written again as the JSON every refusal is.
async fn hygiene(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.addr)
        .map(|a| a.ip());
    if let Some(client) = client {
        let now = shared.started.elapsed().as_secs_f64();
        let taken = shared
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(client, now);
        if let Err(wait) = taken {
            shared
                .gate
                .count("rate limit", StatusCode::TOO_MANY_REQUESTS);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("too many requests from {client}: try again in {wait:.1} s"),
            )
            .into_response();
            let seconds = wait.ceil().max(1.0).to_string();
            if let Ok(value) = header::HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status().is_client_error() && !json {
        let status = response.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is over the {MAX_BODY} bytes a request may hold")
            }
            StatusCode::REQUEST_TIMEOUT => format!(
                "the body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
            _ => status.canonical_reason().unwrap_or("refused").to_string(),
        };
        return error(status, &message).into_response();
    }
    response
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Refused {
    error(
        StatusCode::NOT_FOUND,
        &format!("no route {method} {}", uri.path()),
    )
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let mut refusals = shared.gate.refusals();
    let handshakes = shared
        .handshakes_failed
        .load(std::sync::atomic::Ordering::Relaxed);
    if handshakes > 0 {
        refusals.insert(("TLS handshake".to_string(), 0), handshakes);
    }
    let certificate = shared.certificate.get().map(|c| c.not_after());
    let text = shared
        .with(move |d, now| {
            let mut text = d.metrics(now, &refusals)?;
            text.push_str(&crate::metrics::TlsFigures { certificate }.render()?);
            Ok::<_, std::fmt::Error>(text)
        })
        .await?
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("encoding the metrics: {e}"),
            )
        })?;
    Ok(([(header::CONTENT_TYPE, node::metrics::CONTENT_TYPE)], text).into_response())
}

async fn campaigns(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    Ok(ok_json(&shared.with(|d, now| d.status(now)).await?))
}

async fn whoami(Extension(who): Extension<Principal>) -> Response {
    ok_json(&who)
}

async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let CreateCampaign { spec } = body(&bytes, &["spec"])?;
    let id = spec.id.clone();
    let result = shared
        .with(move |d, now| d.create(spec, who.name.as_str(), now))
        .await?;
    answer(result.map(|()| CreatedAnswer { created: id }))
}

/// `POST /v1/campaigns/{id}/{approve,resume,halt,abort}`: each a route of its own (the access
/// table names each), the action read from the route that matched.
async fn act(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    route: axum::extract::MatchedPath,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let action: CampaignAction = route
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e: proto::director_api::UnknownAction| {
            error(StatusCode::NOT_FOUND, &e.to_string())
        })?;
    match action {
        CampaignAction::Approve | CampaignAction::Resume => {
            sign(shared, who, &id, action, &bytes).await
        }
        CampaignAction::Halt | CampaignAction::Abort => {
            decide(shared, who, &id, action, &bytes).await
        }
    }
}

/// `approve` and `resume`: the authenticated approver's signature, checked under the approval
/// key the operator registry holds for them.
async fn sign(
    shared: Arc<Shared>,
    who: Principal,
    id: &str,
    action: CampaignAction,
    bytes: &[u8],
) -> Result<Response, Refused> {
    let id: CampaignId = path_id(id)?;
    let SignedApproval { signature } = body(bytes, &["signature"])?;
    let operators = shared
        .gate
        .operators()
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let key = operators
        .operators
        .get(&who.name)
        .and_then(|o| o.approval_key.as_deref())
        .ok_or_else(|| {
            error(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} has no approval key in the operator registry: an approval is a signature",
                    who.name
                ),
            )
        })?;
    let key = parse_key(key).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{}'s approval key: {e}", who.name),
        )
    })?;
    let result = shared
        .with(move |d, now| d.sign(&id, action, who.name.as_str(), &key, &signature, now))
        .await?;
    answer(result)
}

/// `halt` and `abort`: by the authenticated operator, for a reason.
async fn decide(
    shared: Arc<Shared>,
    who: Principal,
    id: &str,
    action: CampaignAction,
    bytes: &[u8],
) -> Result<Response, Refused> {
    let id: CampaignId = path_id(id)?;
    let ActionRequest { reason } = body(bytes, &["reason"])?;
    let reason = reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "field reason must be a non-empty string",
        )
    })?;
    let result = shared
        .with(move |d, now| -> anyhow::Result<DecidedAnswer> {
            let by = who.name.as_str();
            let decision = match action {
                CampaignAction::Abort => d.abort(&id, by, &reason, now)?,
                _ => d.halt(&id, by, &reason, now)?,
            };
            Ok(DecidedAnswer {
                campaign: id,
                decision,
            })
        })
        .await?;
    answer(result)
}

async fn vehicles(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let result = shared.with(|d, _| d.registry().vehicles()).await?;
    answer(result)
}

/// A refusal for an enrolment the director refused: 409 when the VIN holds other keys, 404
/// for an unknown VIN, 500 when the director could not sign the vehicle's repository (sending
/// again may help), 400 otherwise.
fn enrol_refusal(e: &anyhow::Error) -> Refused {
    let status = match e.downcast_ref::<EnrollError>() {
        Some(EnrollError::KeysDiffer { .. }) => StatusCode::CONFLICT,
        Some(EnrollError::Unknown(_)) => StatusCode::NOT_FOUND,
        Some(EnrollError::Unsigned { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, &format!("{e:#}"))
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let RegisterVehicle { vehicle } = body(&bytes, &["vehicle"])?;
    let vin = vehicle.vin.clone();
    let result = shared
        .with(move |d, now| d.register(&vehicle, who.name.as_str(), now))
        .await?;
    let membership = result.map_err(|e| enrol_refusal(&e))?;
    Ok(ok_json(&RegisteredAnswer {
        registered: vin,
        membership,
    }))
}

async fn rotate_keys(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    Path(vin): Path<String>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let vin: Vin = path_id(&vin)?;
    let keys: RotateKeys = body(&bytes, &[])?;
    let registered = vin.clone();
    let result = shared
        .with(move |d, now| d.rotate_keys(&vin, &keys, who.name.as_str(), now))
        .await?;
    let membership = result.map_err(|e| enrol_refusal(&e))?;
    Ok(ok_json(&RegisteredAnswer {
        registered,
        membership,
    }))
}

/// `GET /v1/fleet/revocations`: public, nodes check the fleet key's signature. Its `ETag` is
/// the list's version: a node that sends it back in `If-None-Match` hears `304 Not Modified`
/// while its list is the one in force, not the whole list again.
async fn revocations(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let result = shared.with(|d, now| d.served_revocations(now)).await?;
    let served = result.map_err(|e| internal(&e))?;
    let etag = format!("\"{}\"", served.version);
    let held = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok());
    if held == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, etag),
        ],
        Bytes::clone(&served.body),
    )
        .into_response())
}

/// `POST /v1/fleet/revoke`: by the authenticated provisioner.
async fn revoke(
    State(shared): State<Arc<Shared>>,
    Extension(who): Extension<Principal>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let RevokeMember { peer } = body(&bytes, &["peer"])?;
    let result = shared
        .with(move |d, now| d.revoke_member(&peer, who.name.as_str(), now))
        .await?;
    answer(result)
}

/// Audit entries the console shows at most (the newest).
const AUDIT_VIEW: usize = 500;

async fn audit_log(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let result = shared
        .with(|d, _| crate::audit::entries_of(d.origin()))
        .await?;
    let mut entries = result.map_err(|e| internal(&e))?;
    let skip = entries.len().saturating_sub(AUDIT_VIEW);
    entries.drain(..skip);
    Ok(ok_json(&serde_json::json!({ "entries": entries })))
}

async fn operators(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let registry = shared
        .gate
        .operators()
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    Ok(ok_json(&registry))
}

/// `POST /v1/vehicles/{vin}/membership`: a vehicle renews its mesh membership, proving itself
/// by its primary key's signature (no operator credential).
async fn renew_membership(
    State(shared): State<Arc<Shared>>,
    Path(vin): Path<String>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    use crate::service::RenewError;
    let vin: Vin = path_id(&vin)?;
    let request: RenewMembership = body(&bytes, &["peer", "at", "signature"])?;
    let result = shared
        .with(move |d, now| d.renew_membership(&vin, &request, now))
        .await?;
    match result {
        Ok(cert) => Ok(ok_json(&cert)),
        Err(e) => {
            let status = match &e {
                RenewError::UnknownVehicle(_) => StatusCode::NOT_FOUND,
                RenewError::OtherPeer { .. } => StatusCode::CONFLICT,
                RenewError::Refused { .. } => StatusCode::FORBIDDEN,
                RenewError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!("{e}");
            Err(error(status, &e.to_string()))
        }
    }
}

async fn manifest(
    State(shared): State<Arc<Shared>>,
    Path(vin): Path<String>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let vin: Vin = path_id(&vin)?;
    let result = shared
        .with(move |d, now| d.accept_manifest(&vin, &bytes, now))
        .await?;
    match result {
        Ok(accepted) => Ok(ok_json(&accepted)),
        Err(e) => {
            let status = match &e {
                ManifestError::UnknownVehicle(_) => StatusCode::NOT_FOUND,
                ManifestError::Rejected { .. } => StatusCode::FORBIDDEN,
                ManifestError::Replayed { .. } => StatusCode::CONFLICT,
                ManifestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!("{e}");
            Err(error(status, &e.to_string()))
        }
    }
}
