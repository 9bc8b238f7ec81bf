//! The director service over HTTP (`origin serve`).
//!
//! | method and path | body | what |
//! |---|---|---|
//! | `GET /` | | the dashboard (HTML; refreshes itself from `/v1/campaigns`) |
//! | `GET /metrics` | | Prometheus text exposition |
//! | `GET /v1/campaigns` | | every campaign's standing (JSON) |
//! | `POST /v1/campaigns` | `{"actor", "spec"}` | create a campaign (awaits approval) |
//! | `POST /v1/campaigns/{id}/approve` | `{"by"}` | approve and start it |
//! | `POST /v1/campaigns/{id}/halt` | `{"by", "reason"}` | halt it |
//! | `POST /v1/campaigns/{id}/resume` | `{"by"}` | resume a halted one |
//! | `POST /v1/campaigns/{id}/abort` | `{"by", "reason"}` | call it off, vehicles to the fallback |
//! | `GET /v1/vehicles` | | the registry |
//! | `POST /v1/vehicles` | `{"actor", "vehicle"}` | register a vehicle |
//! | `POST /v1/vehicles/{vin}/manifest` | a signed vehicle manifest | a vehicle's report |
//!
//! Errors answer `{"error": "..."}` naming what was wrong: 400 for a bad request or a refused
//! operator action, 403 for a refused manifest (malformed, not signed as registered, for
//! another vehicle or a director version never signed), 404 for an unknown vehicle, 409 for a
//! replayed manifest. The operator endpoints carry no authentication of
//! their own: put the service behind the fleet's authenticating proxy (the `by` it records is
//! what that proxy vouches for).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use proto::director_api::{
    ActionRequest, ApprovedAnswer, CampaignAction, CreateCampaign, CreatedAnswer, DecidedAnswer,
    ErrorAnswer, RegisterVehicle, RegisteredAnswer, path,
};
use proto::{CampaignId, Vin};

pub use server::{Peer, Transport, TransportError};

use crate::service::{Director, ManifestError};

mod server;

/// The dashboard page.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// The service's shared state: the director and its clock.
pub struct Shared {
    director: Mutex<Director>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
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

    /// The director, on `clock` (Unix seconds).
    pub fn with_clock(director: Director, clock: Box<dyn Fn() -> u64 + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            director: Mutex::new(director),
            clock,
        })
    }

    /// Runs `f` on the director (on a blocking thread: it signs and writes files).
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
            f(&mut director, now)
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

/// Refuses an empty or blank name of a person.
fn named(field: &str, value: &str) -> Result<(), Refused> {
    if value.trim().is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("field {field} must be a non-empty string"),
        ));
    }
    Ok(())
}

/// A path segment parsed as an id; a bad one is named.
fn path_id<T: std::str::FromStr<Err = proto::IdError>>(text: &str) -> Result<T, Refused> {
    text.parse()
        .map_err(|e: proto::IdError| error(StatusCode::BAD_REQUEST, &e.to_string()))
}

/// The service's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route(path::METRICS, get(metrics))
        .route(path::CAMPAIGNS, get(campaigns).post(create))
        .route(&format!("{}/{{id}}/{{action}}", path::CAMPAIGNS), post(act))
        .route(path::VEHICLES, get(vehicles).post(register))
        .route(
            &format!("{}/{{vin}}/manifest", path::VEHICLES),
            post(manifest),
        )
        .with_state(shared)
}

/// Serves `shared` on `listener` over `transport`, ticking the campaigns every `tick` (soak
/// times, report timeouts), until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: Transport,
    shared: Arc<Shared>,
    tick: Duration,
) {
    let ticking = Arc::clone(&shared);
    tokio::spawn(async move {
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
    });
    server::serve(listener, transport, router(shared)).await;
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
    /// Opens the director of `origin` and listens on `listen` as `how` says.
    pub fn bind(
        origin: crate::Origin,
        listen: std::net::SocketAddr,
        how: &Listen<'_>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let transport = transport(&origin, how)?;
        transport.check(listen)?;
        let director = Director::open(origin)?;
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
            shared: Shared::new(director),
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
        Listen::OriginTls => Transport::Tls(crate::tls::server_config(origin, None)?),
        Listen::Tls { cert, key } => {
            Transport::Tls(crate::tls::server_config(origin, Some((cert, key)))?)
        }
        Listen::PlainLoopback => Transport::PlainLoopback,
    })
}

async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DASHBOARD,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let text = shared.with(|d, now| d.metrics(now)).await?.map_err(|e| {
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

async fn create(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Result<Response, Refused> {
    let CreateCampaign { actor, spec } = body(&bytes, &["actor", "spec"])?;
    named("actor", &actor)?;
    let id = spec.id.clone();
    let result = shared
        .with(move |d, now| d.create(spec, &actor, now))
        .await?;
    answer(result.map(|()| CreatedAnswer { created: id }))
}

async fn act(
    State(shared): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Response, Refused> {
    let action: CampaignAction =
        action
            .parse()
            .map_err(|e: proto::director_api::UnknownAction| {
                error(StatusCode::NOT_FOUND, &e.to_string())
            })?;
    let id: CampaignId = path_id(&id)?;
    let ActionRequest { by, reason } = body(&bytes, &["by"])?;
    named("by", &by)?;
    let reason = match (action.needs_reason(), reason) {
        (true, Some(reason)) if !reason.trim().is_empty() => reason,
        (true, _) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "field reason must be a non-empty string",
            ));
        }
        (false, _) => String::new(),
    };
    let result = shared
        .with(move |d, now| -> anyhow::Result<Value> {
            let decision = match action {
                CampaignAction::Approve => {
                    d.approve(&id, &by, now)?;
                    return Ok(serde_json::to_value(ApprovedAnswer { approved: id, by })?);
                }
                CampaignAction::Halt => d.halt(&id, &by, &reason, now)?,
                CampaignAction::Resume => d.resume(&id, &by, now)?,
                CampaignAction::Abort => d.abort(&id, &by, &reason, now)?,
            };
            Ok(serde_json::to_value(DecidedAnswer {
                campaign: id,
                decision,
            })?)
        })
        .await?;
    answer(result)
}

async fn vehicles(State(shared): State<Arc<Shared>>) -> Result<Response, Refused> {
    let result = shared.with(|d, _| d.registry().vehicles()).await?;
    answer(result)
}

async fn register(State(shared): State<Arc<Shared>>, bytes: Bytes) -> Result<Response, Refused> {
    let RegisterVehicle { actor, vehicle } = body(&bytes, &["actor", "vehicle"])?;
    named("actor", &actor)?;
    let vin = vehicle.vin.clone();
    let result = shared
        .with(move |d, now| d.register(&vehicle, &actor, now))
        .await?;
    answer(result.map(|()| RegisteredAnswer { registered: vin }))
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
