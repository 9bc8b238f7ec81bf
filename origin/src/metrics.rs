//! The director's Prometheus metrics for `/metrics`: the manifest counters and each campaign's
//! standing, read under the director's lock into [`Figures`] and encoded from that snapshot
//! (see `node::metrics` for why they are not kept in metrics of their own); and the HTTPS
//! listener's certificate ([`TlsFigures`]), which the service, not the director, holds.

use std::collections::BTreeMap;
use std::fmt;

use node::metrics::Families;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::campaign::{Progress, State};

/// What `/metrics` reports, as the director stood at one instant.
#[derive(Debug)]
pub(crate) struct Figures {
    /// Requests refused before their route ran (no credential, a role missing), by route
    /// and status.
    pub(crate) refusals: Vec<(String, String, u64)>,
    /// Vehicle manifests received, by result.
    pub(crate) manifests: [(&'static str, u64); 5],
    /// Every campaign, in id order.
    pub(crate) campaigns: Vec<CampaignFigures>,
}

/// One campaign's part of [`Figures`].
#[derive(Debug)]
pub(crate) struct CampaignFigures {
    pub(crate) id: proto::CampaignId,
    /// `None` while it awaits approval.
    pub(crate) progress: Option<Progress>,
    /// Region → link class → bytes its vehicles fetched.
    pub(crate) bytes: BTreeMap<String, BTreeMap<String, u64>>,
    /// Share of the month's cellular budget → its reporting vehicles that had used at least
    /// that much ([`crate::service::CELLULAR_BUDGET_SHARES`]).
    pub(crate) cellular_budget_used: [(&'static str, u64); 4],
    /// Its vehicles' targets being signed or withdrawn in the background, if any.
    pub(crate) targets_job: Option<proto::director_api::TargetsJob>,
}

impl Figures {
    /// The Prometheus text of these figures.
    pub(crate) fn render(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        node::metrics::render(&registry)
    }

    /// The approved campaigns with their standing and bytes.
    fn approved(
        &self,
    ) -> impl Iterator<Item = (&str, &Progress, &BTreeMap<String, BTreeMap<String, u64>>)> {
        self.campaigns.iter().filter_map(|campaign| {
            let progress = campaign.progress.as_ref()?;
            Some((campaign.id.as_str(), progress, &campaign.bytes))
        })
    }
}

impl Collector for Figures {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut out = Families::new(encoder);
        out.counter(
            "depotmesh_director_refusals",
            "Requests refused for want of a credential or a role, by route and status.",
            self.refusals.iter().map(|(route, status, count)| {
                (
                    [("route", route.as_str()), ("status", status.as_str())],
                    *count,
                )
            }),
        )?;
        out.counter(
            "depotmesh_director_manifests",
            "Vehicle manifests received, by result.",
            self.manifests
                .iter()
                .map(|&(result, count)| ([("result", result)], count)),
        )?;
        out.gauge(
            "depotmesh_campaign_vehicles",
            "Vehicles of a campaign's open waves, by status.",
            self.approved().flat_map(|(id, progress, _)| {
                let e = &progress.eligible;
                [
                    ("assigned", e.assigned),
                    ("committed", e.committed),
                    ("rolled_back", e.rolled_back),
                    ("health_failed", e.health_failed),
                    ("overdue", e.overdue),
                ]
                .map(|(status, count)| ([("campaign", id), ("status", status)], count))
            }),
        )?;
        out.gauge(
            "depotmesh_campaign_state",
            "1 for the campaign's current state.",
            self.campaigns.iter().map(|campaign| {
                let state = match campaign.progress.as_ref().map(|p| &p.state) {
                    None => "awaiting_approval",
                    Some(State::Running { .. }) => "running",
                    Some(State::Halted { .. }) => "halted",
                    Some(State::Completed) => "completed",
                    Some(State::Aborted { .. }) => "aborted",
                };
                ([("campaign", campaign.id.as_str()), ("state", state)], 1)
            }),
        )?;
        out.gauge(
            "depotmesh_campaign_open_wave",
            "The campaign's last open wave (1-based).",
            self.approved()
                .map(|(id, progress, _)| ([("campaign", id)], progress.open_wave as u64 + 1)),
        )?;
        out.gauge(
            "depotmesh_campaign_bytes",
            "Bytes vehicles fetched for a campaign, by region and link class.",
            self.approved().flat_map(|(id, _, bytes)| {
                bytes.iter().flat_map(move |(region, links)| {
                    links.iter().map(move |(link, &count)| {
                        let labels = [("campaign", id), ("region", region), ("link", link)];
                        (labels, count)
                    })
                })
            }),
        )?;
        out.gauge(
            "depotmesh_campaign_vehicles_cellular_budget_used",
            "Vehicles of a campaign whose install report said they had used at least the share \
             at_least of their month's cellular budget when the install ended (vehicles without \
             a budget, or too old to say, are not counted).",
            self.campaigns
                .iter()
                .filter(|campaign| campaign.progress.is_some())
                .flat_map(|campaign| {
                    let id = campaign.id.as_str();
                    campaign
                        .cellular_budget_used
                        .map(|(share, count)| ([("campaign", id), ("at_least", share)], count))
                }),
        )?;
        out.gauge(
            "depotmesh_campaign_targets_job_vehicles",
            "Vehicles whose director targets the campaign's background work signs (work=sign) or \
             withdraws (work=withdraw), by status: due (waiting), done, failed.",
            self.campaigns.iter().flat_map(|campaign| {
                let id = campaign.id.as_str();
                campaign.targets_job.iter().flat_map(move |job| {
                    let work = match job.work {
                        proto::director_api::TargetsWork::Sign => "sign",
                        proto::director_api::TargetsWork::Withdraw => "withdraw",
                    };
                    [("due", job.due), ("done", job.done), ("failed", job.failed)].map(
                        |(status, count)| {
                            (
                                [("campaign", id), ("work", work), ("status", status)],
                                count,
                            )
                        },
                    )
                })
            }),
        )?;
        out.gauge(
            "depotmesh_campaign_time_to_update_seconds",
            "From a vehicle's wave opening to its commit report.",
            self.approved().flat_map(|(id, progress, _)| {
                ["0.5", "0.9", "0.99"]
                    .into_iter()
                    .zip(progress.time_to_update_secs)
                    .filter_map(move |(quantile, seconds)| {
                        Some(([("campaign", id), ("quantile", quantile)], seconds?))
                    })
            }),
        )
    }
}

/// What `/metrics` reports of the director's HTTPS listener, written after [`Figures`].
#[derive(Debug)]
pub(crate) struct TlsFigures {
    /// When the certificate served now ends (Not After, Unix seconds); `None` over plain HTTP.
    pub(crate) certificate: Option<i64>,
}

impl TlsFigures {
    /// The Prometheus text of these figures (nothing over plain HTTP).
    pub(crate) fn render(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        node::metrics::render(&registry)
    }
}

impl Collector for TlsFigures {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(not_after) = self.certificate else {
            return Ok(());
        };
        Families::new(encoder).gauge(
            "depotmesh_director_tls_certificate_expires_timestamp_seconds",
            "When the certificate the director serves over HTTPS ends (Not After), Unix seconds. \
             The origin's own is renewed 30 days before; one given with --tls-cert is the \
             operator's to replace.",
            [(
                node::metrics::NO_LABELS,
                u64::try_from(not_after).unwrap_or(0),
            )],
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::campaign::Counts;

    fn campaign(id: &str, state: Option<State>) -> CampaignFigures {
        CampaignFigures {
            id: id.parse().unwrap(),
            progress: state.map(|state| Progress {
                state,
                open_wave: 1,
                opened_at: vec![100, 200],
                population: 10,
                eligible: Counts {
                    assigned: 4,
                    committed: 2,
                    ..Counts::default()
                },
                segments: BTreeMap::new(),
                time_to_update_secs: [Some(60), Some(90), None],
            }),
            bytes: BTreeMap::from([(
                "eu \"north\"".to_owned(),
                BTreeMap::from([("cellular".to_owned(), 4096), ("yard-wifi".to_owned(), 1)]),
            )]),
            cellular_budget_used: [("0.5", 3), ("0.8", 2), ("0.9", 1), ("1", 0)],
            targets_job: (id == "b-running").then_some(proto::director_api::TargetsJob {
                work: proto::director_api::TargetsWork::Sign,
                due: 3,
                done: 1,
                failed: 0,
                last_error: None,
            }),
        }
    }

    #[test]
    fn the_whole_exposition_parses_with_every_family_named_and_typed_as_dashboards_expect() {
        let figures = Figures {
            refusals: vec![("/v1/vehicles".into(), "401".into(), 3)],
            manifests: [
                ("accepted", 5),
                ("duplicate", 0),
                ("rejected", 1),
                ("replayed", 0),
                ("unknown_vehicle", 2),
            ],
            campaigns: vec![
                campaign("a-waiting", None),
                campaign("b-running", Some(State::Running { open: 1 })),
                campaign(
                    "c-halted",
                    Some(State::Halted {
                        open: 1,
                        reason: "gate".to_owned(),
                    }),
                ),
                campaign("d-completed", Some(State::Completed)),
                campaign(
                    "e-aborted",
                    Some(State::Aborted {
                        open: 1,
                        reason: "recall".to_owned(),
                    }),
                ),
            ],
        };
        let text = figures.render().unwrap();

        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|error| panic!("{error}:\n{text}"));
        let expected: [(&str, &str, &[&str], usize); 9] = [
            (
                "depotmesh_director_refusals_total",
                "counter",
                &["route", "status"],
                1,
            ),
            (
                "depotmesh_director_manifests_total",
                "counter",
                &["result"],
                5,
            ),
            (
                "depotmesh_campaign_vehicles",
                "gauge",
                &["campaign", "status"],
                20,
            ),
            (
                "depotmesh_campaign_state",
                "gauge",
                &["campaign", "state"],
                5,
            ),
            ("depotmesh_campaign_open_wave", "gauge", &["campaign"], 4),
            // The parser lists label names sorted; the text keeps campaign, region, link.
            (
                "depotmesh_campaign_bytes",
                "gauge",
                &["campaign", "link", "region"],
                8,
            ),
            (
                "depotmesh_campaign_time_to_update_seconds",
                "gauge",
                &["campaign", "quantile"],
                8,
            ),
            (
                "depotmesh_campaign_targets_job_vehicles",
                "gauge",
                &["campaign", "status", "work"],
                3,
            ),
            (
                "depotmesh_campaign_vehicles_cellular_budget_used",
                "gauge",
                &["at_least", "campaign"],
                16,
            ),
        ];
        assert_eq!(parsed.families.len(), expected.len(), "{text}");
        for (name, kind, labels, samples) in expected {
            let family = &parsed.families[name];
            assert_eq!(family.family_type.to_string(), kind, "{name}");
            assert_eq!(family.get_label_names(), labels, "{name}");
            assert_eq!(family.iter_samples().count(), samples, "{name}");
        }
        for sample in [
            "depotmesh_director_manifests_total{result=\"unknown_vehicle\"} 2\n",
            "depotmesh_campaign_state{campaign=\"a-waiting\",state=\"awaiting_approval\"} 1\n",
            "depotmesh_campaign_state{campaign=\"d-completed\",state=\"completed\"} 1\n",
            "depotmesh_campaign_vehicles{campaign=\"c-halted\",status=\"committed\"} 2\n",
            "depotmesh_campaign_open_wave{campaign=\"e-aborted\"} 2\n",
            "depotmesh_campaign_bytes{campaign=\"b-running\",region=\"eu \\\"north\\\"\",link=\"cellular\"} 4096\n",
            "depotmesh_campaign_time_to_update_seconds{campaign=\"b-running\",quantile=\"0.9\"} 90\n",
            "depotmesh_campaign_targets_job_vehicles{campaign=\"b-running\",work=\"sign\",status=\"due\"} 3\n",
            "depotmesh_campaign_vehicles_cellular_budget_used{campaign=\"c-halted\",at_least=\"0.9\"} 1\n",
        ] {
            assert!(text.contains(sample), "{sample} in {text}");
        }
    }

    #[test]
    fn the_served_certificate_s_end_is_a_gauge_without_labels_and_absent_over_plain_http() {
        let text = TlsFigures {
            certificate: Some(1_830_000_000),
        }
        .render()
        .unwrap();
        let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|error| panic!("{error}:\n{text}"));
        let name = "depotmesh_director_tls_certificate_expires_timestamp_seconds";
        assert_eq!(parsed.families.len(), 1, "{text}");
        assert_eq!(parsed.families[name].family_type.to_string(), "gauge");
        assert!(text.contains(&format!("{name} 1830000000\n")), "{text}");
        assert_eq!(TlsFigures { certificate: None }.render().unwrap(), "");
    }
}
