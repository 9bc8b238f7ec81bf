//! The one client of the director's HTTP API ([`proto::director_api`]): the vehicle agent and
//! the depot's relay send manifests through it, the origin CLI and netsim act on campaigns and
//! the registry. Blocking (ureq), every request bounded by the timeout it was made with, every
//! answer read up to a limit and parsed into its type.
//!
//! Errors say whether trying again can help: [`ClientError::is_final`] is true when the director
//! answered and refused the request for good (400, 403, 404, 409); anything else (unreachable, a
//! 5xx, an answer that is not what the API promises) may pass later.

use std::time::Duration;

use proto::director_api::{
    self, ActionRequest, ApprovedAnswer, CampaignAction, CampaignsAnswer, CreateCampaign,
    CreatedAnswer, DecidedAnswer, ErrorAnswer, ManifestAccepted, RegisterVehicle, RegisteredAnswer,
    VehicleRecord, path,
};
use proto::{CampaignId, Vin};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of an answer read at most: the registry of a large fleet is the largest answer, and a
/// director (or something posing as one) must not make a vehicle or depot read without end.
pub const MAX_ANSWER_BYTES: u64 = 256 << 20;

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
    /// The director URL is not `http://` or `https://`.
    #[error("director URL {0:?} must start with http:// or https://")]
    BadUrl(String),
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

/// A client of one director.
#[derive(Debug, Clone)]
pub struct DirectorClient {
    base: String,
    agent: ureq::Agent,
}

impl DirectorClient {
    /// A client of the director at `base_url` (`http://host:port`), each request within
    /// `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::BadUrl(base_url.to_string()));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
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
        let mut response = response.map_err(|error| ClientError::Unreachable {
            url: url.to_string(),
            detail: error.to_string(),
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
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

    /// Approves campaign `id`.
    pub fn approve(&self, id: &CampaignId, by: &str) -> Result<ApprovedAnswer, ClientError> {
        let request = ActionRequest {
            by: by.to_string(),
            reason: None,
        };
        self.post(
            &path::campaign_action(id, CampaignAction::Approve),
            &request,
        )
    }

    /// Halts, resumes or aborts campaign `id` (`reason`: why, for a halt or an abort).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_and_final_refusals() {
        assert!(matches!(
            DirectorClient::new("ftp://x", Duration::from_secs(1)),
            Err(ClientError::BadUrl(_))
        ));
        let client = DirectorClient::new("http://127.0.0.1:9/", Duration::from_secs(1)).unwrap();
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
