//! Passing vehicles' reports on to the director: the queue ([`node::relay::ReportQueue`]) is
//! emptied oldest first, each report POSTed to `<director>/v1/vehicles/<vin>/manifest` as the
//! vehicle would have sent it.
//!
//! A report leaves the queue only when the director has answered it for good: taken (200,
//! also for a report it already had) or refused (400, 403, 404, 409: not signed right, an
//! unknown vehicle, a replay; sending it again would change nothing, and the refusal is logged
//! and counted). When the director cannot be reached or fails (5xx), the round stops and the
//! report is tried again later, in the same order.

use std::time::Duration;

use node::director_client::{ClientError, ClientTls, DirectorClient, Sender};
use node::relay::ReportQueue;

/// What one round of relaying did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RelayRound {
    /// Reports the director took.
    pub accepted: u64,
    /// Reports the director refused for good (dropped, logged).
    pub refused: u64,
    /// Per refused report, the vehicle, the status and the director's words.
    pub refusals: Vec<String>,
    /// Why the round stopped early (the director unreachable or failing); the reports left are
    /// tried again.
    pub stopped: Option<String>,
}

/// Sends every queued report to the director.
pub fn relay_once(queue: &ReportQueue, director: &DirectorClient) -> RelayRound {
    let mut round = RelayRound::default();
    let pending = match queue.pending() {
        Ok(pending) => pending,
        Err(error) => {
            round.stopped = Some(format!("reading the queue: {error}"));
            return round;
        }
    };
    if pending.is_empty() {
        return round;
    }
    for report in pending {
        match director.send_manifest(&report.vin, &report.manifest, Sender::DepotRelay) {
            Ok(_) => {
                tracing::info!(vin = %report.vin, report = %report.digest, "relayed a report to the director");
                round.accepted += 1;
            }
            Err(error) if error.is_final() => {
                tracing::error!(vin = %report.vin, report = %report.digest, %error, "the director refused a relayed report; dropped");
                round.refused += 1;
                let detail = match &error {
                    ClientError::Refused {
                        status, message, ..
                    } => format!("{status} {message}"),
                    other => other.to_string(),
                };
                round.refusals.push(format!(
                    "{} ({}): {detail}",
                    report.vin,
                    report.digest.short()
                ));
            }
            Err(error) => {
                round.stopped = Some(error.to_string());
                return round;
            }
        }
        if let Err(error) = queue.remove(&report.digest) {
            round.stopped = Some(format!("removing a relayed report from the queue: {error}"));
            return round;
        }
    }
    round
}

/// The client of the director `relay` names, trusting its CA.
pub fn director_client(
    relay: &crate::config::RelayConfig,
    timeout: Duration,
) -> Result<DirectorClient, ClientError> {
    let tls = ClientTls::roots(relay.director_ca.as_deref())?;
    DirectorClient::new(&relay.director_url, timeout, &tls)
}
