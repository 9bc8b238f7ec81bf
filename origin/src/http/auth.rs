//! Who is asking, and whether they may: every request passes here before its route runs.
//!
//! [`ROUTES`] is the one table of what each route needs; a route missing from it is refused
//! (deny by default), and a test checks every route the router serves is in it. The identity
//! comes from a credential only — a client certificate issued under the operator CA and still
//! in the operator registry, or a bearer token a configured OpenID provider signed — never from
//! a field of the request. A refusal answers 401 (no or an unknown credential) or 403 (a role
//! missing) with a JSON body, and is counted for `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::server::Peer;
use super::{Shared, error};
use crate::operators::{OperatorName, Operators, Role};

/// What a route needs of whoever asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: the route is public (the console's page), checks a signature of its own (a
    /// vehicle's manifest, signed with the key the registry holds for it) or answers what its
    /// readers check a signature of (the fleet's revocation list).
    Anyone,
    /// Any authenticated operator.
    Operator,
    /// An operator with this role (any role includes [`Role::Viewer`]).
    Role(Role),
}

/// Every route of the director service and what it needs: method, path as the router writes
/// it, need.
pub const ROUTES: &[(&str, &str, Need)] = &[
    ("GET", "/", Need::Anyone),
    ("GET", "/v1/login", Need::Anyone),
    ("GET", "/metrics", Need::Role(Role::Viewer)),
    ("GET", "/v1/whoami", Need::Operator),
    ("GET", "/v1/campaigns", Need::Role(Role::Viewer)),
    ("POST", "/v1/campaigns", Need::Role(Role::ReleaseManager)),
    (
        "POST",
        "/v1/campaigns/{id}/approve",
        Need::Role(Role::Approver),
    ),
    (
        "POST",
        "/v1/campaigns/{id}/halt",
        Need::Role(Role::Operator),
    ),
    (
        "POST",
        "/v1/campaigns/{id}/resume",
        Need::Role(Role::Approver),
    ),
    (
        "POST",
        "/v1/campaigns/{id}/abort",
        Need::Role(Role::Operator),
    ),
    ("GET", "/v1/vehicles", Need::Role(Role::Viewer)),
    ("POST", "/v1/vehicles", Need::Role(Role::Provisioner)),
    (
        "POST",
        "/v1/vehicles/{vin}/keys",
        Need::Role(Role::Provisioner),
    ),
    ("POST", "/v1/vehicles/{vin}/manifest", Need::Anyone),
    // Signed by the vehicle's enrolled primary key, checked by the director.
    ("POST", "/v1/vehicles/{vin}/membership", Need::Anyone),
    ("GET", "/v1/audit", Need::Role(Role::Auditor)),
    ("GET", "/v1/operators", Need::Role(Role::Admin)),
    // Signed with the fleet key: nodes fetch it with their metadata, and check it.
    ("GET", "/v1/fleet/revocations", Need::Anyone),
    ("POST", "/v1/fleet/revoke", Need::Role(Role::Provisioner)),
];

/// What `method path` needs, if the table lists it.
pub fn need(method: &Method, path: &str) -> Option<Need> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .map(|&(_, _, need)| need)
}

/// How an operator proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A client certificate (its SHA-256, hex).
    Certificate(String),
    /// A bearer token from this OpenID issuer.
    Token(String),
}

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// Their name: who the audit log records.
    pub name: OperatorName,
    /// What they may do.
    pub roles: BTreeSet<Role>,
    /// The credential.
    pub via: Via,
}

impl Principal {
    /// Whether they may do what `need` asks.
    pub fn may(&self, need: Need) -> bool {
        match need {
            Need::Anyone | Need::Operator | Need::Role(Role::Viewer) => true,
            Need::Role(role) => self.roles.contains(&role),
        }
    }
}

/// Checks bearer tokens: the OpenID Connect verifier, when one is configured.
pub trait BearerVerifier: Send + Sync {
    /// The operator `token` proves, at `now` (Unix seconds); or why it proves none.
    fn verify(&self, token: &str, now: u64) -> Result<Principal, String>;

    /// How the console signs an operator in with this provider, if it can.
    fn console_login(&self) -> Option<crate::oidc::ConsoleLogin> {
        None
    }
}

/// Tokens of the configured OpenID provider: the name and roles its claims carry (role names
/// that are none of [`Role`]'s are ignored).
impl BearerVerifier for crate::oidc::OidcVerifier {
    fn verify(&self, token: &str, now: u64) -> Result<Principal, String> {
        let verified =
            crate::oidc::OidcVerifier::verify(self, token, now).map_err(|e| e.to_string())?;
        let name = OperatorName::new(&verified.name)
            .map_err(|e| format!("the token's name claim: {e}"))?;
        Ok(Principal {
            name,
            roles: verified
                .roles
                .iter()
                .filter_map(|r| Role::parse(r))
                .collect(),
            via: Via::Token(verified.issuer),
        })
    }

    fn console_login(&self) -> Option<crate::oidc::ConsoleLogin> {
        crate::oidc::OidcVerifier::console_login(self)
    }
}

/// The registry as last read, re-read when the file changes.
#[derive(Debug)]
struct Cached {
    modified: Option<SystemTime>,
    length: u64,
    operators: Operators,
}

/// The credentials the director accepts, and the refusals it made.
pub struct Gate {
    registry: PathBuf,
    cached: Mutex<Option<Cached>>,
    bearer: Option<Arc<dyn BearerVerifier>>,
    refusals: Mutex<BTreeMap<(String, u16), u64>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("registry", &self.registry)
            .field("bearer", &self.bearer.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a request proves no operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential at all.
    #[error(
        "this route needs an operator's credential: a client certificate from `origin operator add`, or a bearer token from the single sign-on"
    )]
    Missing,
    /// A certificate under the operator CA that the registry no longer lists.
    #[error("the client certificate {0} belongs to no operator (removed, or never added)")]
    UnknownCertificate(String),
    /// A bearer token that does not verify.
    #[error("the bearer token is refused: {0}")]
    Token(String),
    /// The registry cannot be read.
    #[error("the operator registry cannot be read: {0}")]
    Registry(String),
}

impl Gate {
    /// Operators from the registry file `registry`, bearer tokens checked by `bearer`.
    pub fn new(registry: PathBuf, bearer: Option<Arc<dyn BearerVerifier>>) -> Self {
        Self {
            registry,
            cached: Mutex::new(None),
            bearer,
            refusals: Mutex::new(BTreeMap::new()),
        }
    }

    /// How the console signs an operator in with the single sign-on, if one is configured for
    /// it.
    pub fn console_login(&self) -> Option<crate::oidc::ConsoleLogin> {
        self.bearer.as_ref()?.console_login()
    }

    /// The registry, read again if the file changed since.
    pub fn operators(&self) -> Result<Operators, AuthError> {
        let meta = std::fs::metadata(&self.registry).ok();
        let stamp = (
            meta.as_ref().and_then(|m| m.modified().ok()),
            meta.as_ref().map_or(0, std::fs::Metadata::len),
        );
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| (c.modified, c.length) == stamp) {
            return Ok(c.operators.clone());
        }
        let operators =
            Operators::load(&self.registry).map_err(|e| AuthError::Registry(e.to_string()))?;
        *cached = Some(Cached {
            modified: stamp.0,
            length: stamp.1,
            operators: operators.clone(),
        });
        Ok(operators)
    }

    /// The operator the request's credentials prove, if it carries any.
    pub fn authenticate(
        &self,
        peer: Option<&Peer>,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<Principal, AuthError> {
        if let Some(fingerprint) = peer.and_then(|p| p.client_cert.as_deref()) {
            let operators = self.operators()?;
            let (name, operator) = operators
                .by_certificate(fingerprint)
                .ok_or_else(|| AuthError::UnknownCertificate(fingerprint.to_string()))?;
            return Ok(Principal {
                name: name.clone(),
                roles: operator.roles.clone(),
                via: Via::Certificate(fingerprint.to_string()),
            });
        }
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match (token, &self.bearer) {
            (Some(token), Some(bearer)) => bearer.verify(token, now).map_err(AuthError::Token),
            (Some(_), None) => Err(AuthError::Token(
                "this director is configured with no OpenID provider".into(),
            )),
            (None, _) => Err(AuthError::Missing),
        }
    }

    /// Counts a refusal of `route` with `status`.
    pub(super) fn count(&self, route: &str, status: StatusCode) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        *refusals
            .entry((route.to_string(), status.as_u16()))
            .or_default() += 1;
    }

    /// Refusals so far: (route, status) → count.
    pub fn refusals(&self) -> BTreeMap<(String, u16), u64> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The middleware: finds what the route needs, authenticates, authorises; the route runs with
/// the [`Principal`] in the request's extensions, or the request is refused and counted.
pub(super) async fn authorize(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(route) = route else {
        // No route matched: the router answers 404 itself.
        return next.run(request).await;
    };
    let gate = &shared.gate;
    let refuse = |status: StatusCode, message: &str| {
        gate.count(&route, status);
        tracing::info!(%route, status = status.as_u16(), "refused: {message}");
        error(status, message).into_response()
    };
    let Some(need) = need(request.method(), &route) else {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "{} {route} declares no role: refused",
                request.method().as_str()
            ),
        );
    };
    if need == Need::Anyone {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let peer = request.extensions().get::<Peer>().cloned();
    let now = (shared.clock)();
    // On a blocking thread: a token with a new key id makes the verifier fetch the JWKS.
    let checking = Arc::clone(&shared);
    let proved = tokio::task::spawn_blocking(move || {
        checking
            .gate
            .authenticate(peer.as_ref(), authorization.as_deref(), now)
    })
    .await
    .unwrap_or_else(|e| Err(AuthError::Registry(e.to_string())));
    let principal = match proved {
        Ok(principal) => principal,
        Err(AuthError::Registry(e)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the operator registry cannot be read: {e}"),
            );
        }
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    };
    if let (false, Need::Role(role)) = (principal.may(need), need) {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "{} may not: {} {route} needs the {role} role",
                principal.name,
                request.method().as_str()
            ),
        );
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}
