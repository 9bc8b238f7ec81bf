//! The one client of the director's HTTP API ([`proto::director_api`]): the vehicle agent and
//! the depot's relay send manifests through it, the origin CLI and netsim act on campaigns and
//! the registry. Blocking (ureq), every request bounded by the timeout it was made with, every
//! answer read up to a limit and parsed into its type.
//!
//! Errors say whether trying again can help: [`ClientError::is_final`] is true when the director
//! answered and refused the request for good (400, 403, 404, 409); anything else (unreachable, a
//! 5xx, an answer that is not what the API promises) may pass later.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proto::director_api::{
    self, ActionRequest, ApprovedAnswer, CampaignAction, CampaignsAnswer, CreateCampaign,
    CreatedAnswer, DecidedAnswer, ErrorAnswer, ManifestAccepted, RegisterVehicle, RegisteredAnswer,
    RotateKeys, SignedApproval, VehicleRecord, path, spec_digest,
};
use proto::membership::SignedRevocations;
use proto::{CampaignId, Vin};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig, parse_pem};

/// Bytes of an answer read at most: the registry of a large fleet is the largest answer, and a
/// director (or something posing as one) must not make a vehicle or depot read without end.
pub const MAX_ANSWER_BYTES: u64 = 256 << 20;

/// Bytes of the fleet's revocation list read at most
/// ([`proto::membership::MAX_REVOCATIONS_BYTES`], the same bound a peer's copy is held to). A
/// vehicle fetches it at every metadata refresh, so it is bounded far below
/// [`MAX_ANSWER_BYTES`].
pub const MAX_REVOCATIONS_BYTES: u64 = proto::membership::MAX_REVOCATIONS_BYTES as u64;

/// Why a request did not get the answer it asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The director was not reached, or the connection failed (try again later).
    #[error("reaching the director at {url}: {detail}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The director answered with an error status.
    #[error("the director refused {url} (HTTP {status}): {message}")]
    Refused {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The director's words ([`ErrorAnswer`]), or the body as it came.
        message: String,
    },
    /// The answer is not what the API promises.
    #[error("{url} answered HTTP {status} with a body that is not the API's answer: {detail}")]
    BadAnswer {
        /// The request's URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
    /// The director URL is not `https://`, or `http://` to a loopback address.
    #[error(
        "director URL {0:?} must start with https:// (plain http:// only to localhost, 127.0.0.1 or [::1])"
    )]
    BadUrl(String),
    /// A certificate or key for the TLS connection does not read.
    #[error("{what}: {detail}")]
    Tls {
        /// Which file or item.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

impl ClientError {
    /// Whether the director refused the request for good: sending it again would be refused
    /// again (see [`director_api::is_final_refusal`]).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if director_api::is_final_refusal(*status))
    }
}

/// Who hands a manifest to the director: the vehicle itself, or a depot relaying it (a header
/// for the director's logs; the manifest's signatures are what the director trusts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The vehicle that signed it.
    Vehicle,
    /// A depot that queued it for the vehicle.
    DepotRelay,
}

/// What a client trusts and who it is on an `https://` director: the certificates of the
/// CAs the director's certificate must chain to (none: the public web PKI's roots), and an
/// operator's client certificate and key, presented when the director asks.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    roots: Option<Vec<Certificate<'static>>>,
    identity: Option<ClientCert>,
}

fn tls_error(what: &str, detail: impl std::fmt::Display) -> ClientError {
    ClientError::Tls {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| tls_error(&path.display().to_string(), e))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, ClientError> {
    let mut certs = Vec::new();
    for item in parse_pem(pem) {
        if let PemItem::Certificate(cert) = item.map_err(|e| tls_error(what, e))? {
            certs.push(cert);
        }
    }
    if certs.is_empty() {
        return Err(tls_error(what, "holds no PEM certificate"));
    }
    Ok(certs)
}

impl ClientTls {
    /// Trusting the CA certificates (PEM) in `path` for the director, and nothing else: the
    /// origin's `tls/director-ca.pem` pins a client to that origin's director.
    pub fn trusting(path: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            roots: Some(certificates(&read(path)?, &path.display().to_string())?),
            identity: None,
        })
    }

    /// Trusting the CA certificates in `ca` ([`Self::trusting`]), or the public web PKI's
    /// roots when none is given.
    pub fn roots(ca: Option<&Path>) -> Result<Self, ClientError> {
        ca.map_or_else(|| Ok(Self::default()), Self::trusting)
    }

    /// Also presenting the client certificate chain and key (PEM files) an operator was
    /// issued (`origin operator add`).
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let chain = certificates(&read(cert)?, &cert.display().to_string())?;
        let key_pem = read(key)?;
        let key =
            PrivateKey::from_pem(&key_pem).map_err(|e| tls_error(&key.display().to_string(), e))?;
        self.identity = Some(ClientCert::new_with_certs(&chain, key));
        Ok(self)
    }

    /// An HTTP agent that trusts and presents what this says, reads error statuses as
    /// answers, and gives up on a request after `timeout`.
    pub fn agent(&self, timeout: Duration) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(self.config())
            .build()
            .into()
    }

    fn config(&self) -> TlsConfig {
        let builder = TlsConfig::builder().client_cert(self.identity.clone());
        match &self.roots {
            Some(roots) => builder
                .root_certs(RootCerts::Specific(Arc::new(roots.clone())))
                .build(),
            None => builder.build(),
        }
    }
}

/// Whether `base_url` may be used: `https://`, or `http://` to a loopback host only (a test, a
/// director behind a TLS terminator on the same machine).
pub fn check_url(base_url: &str) -> Result<(), ClientError> {
    if base_url.starts_with("https://") {
        return Ok(());
    }
    let host = base_url
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .map(|authority| {
            authority
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty() && !authority.ends_with(']'))
                .map_or(authority, |(host, _)| host)
        });
    match host {
        Some("localhost" | "[::1]") => Ok(()),
        Some(host)
            if host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        _ => Err(ClientError::BadUrl(base_url.to_string())),
    }
}

/// A client of one director.
#[derive(Debug, Clone)]
pub struct DirectorClient {
    base: String,
    agent: ureq::Agent,
}

impl DirectorClient {
    /// A client of the director at `base_url` (`https://host:port`; `http://` to a loopback
    /// host only), trusting and presenting what `tls` says, each request within `timeout`.
    pub fn new(base_url: &str, timeout: Duration, tls: &ClientTls) -> Result<Self, ClientError> {
        check_url(base_url)?;
        let agent = tls.agent(timeout);
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            agent,
        })
    }

    /// The director's URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Reads an answer: `T` on 200, the director's refusal otherwise.
    fn read<T: DeserializeOwned>(
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        Self::read_at_most(url, response, MAX_ANSWER_BYTES)
    }

    /// [`Self::read`], of an answer of at most `limit` bytes.
    fn read_at_most<T: DeserializeOwned>(
        url: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        limit: u64,
    ) -> Result<T, ClientError> {
        let mut response = response.map_err(|error| ClientError::Unreachable {
            url: url.to_string(),
            detail: error.to_string(),
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|error| ClientError::Unreachable {
                url: url.to_string(),
                detail: format!("reading the answer: {error}"),
            })?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorAnswer>(&bytes).map_or_else(
                |_| String::from_utf8_lossy(&bytes).trim().to_string(),
                |answer| answer.error,
            );
            return Err(ClientError::Refused {
                url: url.to_string(),
                status,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|error| ClientError::BadAnswer {
            url: url.to_string(),
            status,
            detail: error.to_string(),
        })
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        Self::read(&url, self.agent.get(&url).call())
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let bytes = serde_json::to_vec(body).map_err(|error| ClientError::BadAnswer {
            url: url.clone(),
            status: 0,
            detail: format!("the request does not serialise: {error}"),
        })?;
        Self::read(
            &url,
            self.agent
                .post(&url)
                .header("content-type", "application/json")
                .send(&bytes[..]),
        )
    }

    /// Hands vehicle `vin`'s signed manifest to the director.
    pub fn send_manifest(
        &self,
        vin: &Vin,
        manifest: &[u8],
        sender: Sender,
    ) -> Result<ManifestAccepted, ClientError> {
        let url = self.url(&path::manifest(vin));
        let mut request = self
            .agent
            .post(&url)
            .header("content-type", "application/json");
        if sender == Sender::DepotRelay {
            request = request.header("x-depotmesh-relayed", "depot");
        }
        Self::read(&url, request.send(manifest))
    }

    /// Every campaign's standing.
    pub fn campaigns(&self) -> Result<CampaignsAnswer, ClientError> {
        self.get(path::CAMPAIGNS)
    }

    /// Creates a campaign (it then waits for someone else's approval).
    pub fn create_campaign(&self, request: &CreateCampaign) -> Result<CreatedAnswer, ClientError> {
        self.post(path::CAMPAIGNS, request)
    }

    /// Signs campaign `id`'s pending `action` (approve, or resume after a halt) with the
    /// approver's `key`: over the statement the director shows, after checking that its spec
    /// digest is the digest of the spec it shows (what the approver reviews is what they sign).
    pub fn sign_approval(
        &self,
        id: &CampaignId,
        action: CampaignAction,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<ApprovedAnswer, ClientError> {
        let url = self.url(path::CAMPAIGNS);
        let bad = |detail: String| ClientError::BadAnswer {
            url: url.clone(),
            status: 200,
            detail,
        };
        let all = self.campaigns()?;
        let campaign = all
            .campaign(id)
            .ok_or_else(|| bad(format!("the director lists no campaign {id}")))?;
        let pending = campaign
            .pending_approval
            .as_ref()
            .ok_or_else(|| bad(format!("campaign {id} awaits no approval")))?;
        let statement = &pending.statement;
        if statement.action != action.name() {
            return Err(bad(format!(
                "campaign {id} awaits signatures to {}, not to {action}",
                statement.action
            )));
        }
        let digest = spec_digest(&campaign.spec);
        if statement.campaign != *id || statement.spec_sha256 != digest {
            return Err(bad(format!(
                "the statement to sign names spec {} but the spec shown hashes to {digest}",
                statement.spec_sha256
            )));
        }
        let request = SignedApproval {
            signature: statement.sign(key),
        };
        self.post(&path::campaign_action(id, action), &request)
    }

    /// Halts or aborts campaign `id` (`reason`: why).
    pub fn decide(
        &self,
        id: &CampaignId,
        action: CampaignAction,
        request: &ActionRequest,
    ) -> Result<DecidedAnswer, ClientError> {
        self.post(&path::campaign_action(id, action), request)
    }

    /// The registry.
    pub fn vehicles(&self) -> Result<Vec<VehicleRecord>, ClientError> {
        self.get(path::VEHICLES)
    }

    /// Registers a vehicle.
    pub fn register(&self, request: &RegisterVehicle) -> Result<RegisteredAnswer, ClientError> {
        self.post(path::VEHICLES, request)
    }

    /// A fresh membership certificate for vehicle `vin`'s mesh peer, on `request` (signed with
    /// its primary key: [`proto::director_api::RenewalStatement::sign`]). The caller checks the
    /// certificate against its fleet keys before using it.
    pub fn renew_membership(
        &self,
        vin: &Vin,
        request: &proto::director_api::RenewMembership,
    ) -> Result<proto::membership::MembershipCert, ClientError> {
        self.post(&path::membership(vin), request)
    }

    /// Gives enrolled vehicle `vin` new keys.
    pub fn rotate_keys(
        &self,
        vin: &Vin,
        request: &RotateKeys,
    ) -> Result<RegisteredAnswer, ClientError> {
        self.post(&format!("{}/{vin}/keys", path::VEHICLES), request)
    }

    /// The fleet's revocation list (`GET /v1/fleet/revocations`, at most
    /// [`MAX_REVOCATIONS_BYTES`]), as the director serves it: the caller checks its signature
    /// and version against the fleet keys and the list it holds
    /// ([`proto::membership::FleetKeys::verify_revocations`]).
    pub fn revocations(&self) -> Result<SignedRevocations, ClientError> {
        let url = self.url(path::FLEET_REVOCATIONS);
        Self::read_at_most(&url, self.agent.get(&url).call(), MAX_REVOCATIONS_BYTES)
    }

    /// [`Self::revocations`] unless the list in force is version `held` (the one the caller
    /// holds): then `None`, and the director sends no list (`If-None-Match`, `304`).
    pub fn revocations_newer_than(
        &self,
        held: u64,
    ) -> Result<Option<SignedRevocations>, ClientError> {
        let url = self.url(path::FLEET_REVOCATIONS);
        let response = self
            .agent
            .get(&url)
            .header("If-None-Match", format!("\"{held}\""))
            .call();
        if let Ok(answer) = &response
            && answer.status() == 304
        {
            return Ok(None);
        }
        Self::read_at_most(&url, response, MAX_REVOCATIONS_BYTES).map(Some)
    }

    /// Who the director takes this client for (`GET /v1/whoami`).
    pub fn whoami(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/whoami")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_or_loopback_only_and_final_refusals() {
        let none = ClientTls::default();
        for bad in [
            "ftp://x",
            "http://director.example:8470",
            "http://10.0.0.1:8470",
            "http://127.0.0.1.example:80",
            "http://localhost.example",
        ] {
            assert!(
                matches!(
                    DirectorClient::new(bad, Duration::from_secs(1), &none),
                    Err(ClientError::BadUrl(_))
                ),
                "{bad}"
            );
        }
        for good in [
            "https://director.example:8470",
            "http://localhost:8470",
            "http://127.0.0.1",
            "http://[::1]:8470/",
        ] {
            assert!(
                DirectorClient::new(good, Duration::from_secs(1), &none).is_ok(),
                "{good}"
            );
        }
        let client =
            DirectorClient::new("http://127.0.0.1:9/", Duration::from_secs(1), &none).unwrap();
        assert_eq!(client.base_url(), "http://127.0.0.1:9");
        let refused = |status| ClientError::Refused {
            url: String::new(),
            status,
            message: String::new(),
        };
        assert!(refused(409).is_final());
        assert!(!refused(503).is_final());
        // Nothing listens on the discard port: unreachable, worth trying again.
        let error = client.campaigns().unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
        assert!(!error.is_final());
    }
}
