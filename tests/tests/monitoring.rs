//! The operator's monitoring, `config/monitoring/`: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), the dashboards' queries parse as PromQL, and
//! every metric the dashboards, the rules and the rules' tests name is one the code exports,
//! with the labels they use. The exported families are read from the `/metrics` of a real
//! director (`origin::http`, a campaign under way, a vehicle's report counted) and a real depot
//! daemon (prefetching from the origin's mesh node, relaying to that director, with a disk cap
//! and fleet membership, so that every family it can write is written): no list of names is
//! kept here to drift from the code.
//!
//! promtool comes from Debian's `prometheus` package, installed when missing (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../origin/tests/common/debian.rs"]
mod debian;
#[path = "../../origin/tests/common/sim_fleet.rs"]
mod sim_fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use depotmesh_tests::depot::{DepotDaemon, depot_config};
use depotmesh_tests::director::DirectorService;
use node::director_client::ClientTls;
use proto::membership::MemberRole;
use serde_json::{Value, json};

/// Labels every scraped series has besides its own: Prometheus adds them.
const SCRAPE_LABELS: [&str; 2] = ["job", "instance"];

/// The Grafana data source every panel and query names: the dashboards' `DS_PROMETHEUS`
/// variable (and import input).
const DATA_SOURCE: &str = "${DS_PROMETHEUS}";

/// Words of PromQL that are not metric names: operators, modifiers, aggregations.
const KEYWORDS: [&str; 25] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
];

/// Clauses whose parenthesised list names labels.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/monitoring")
}

fn promtool(args: &[&str], dir: &Path) -> Result<String, String> {
    debian::install_unless(|| debian::on_path("promtool"), "prometheus");
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("`promtool {}` failed:\n{text}", args.join(" ")))
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_the_dashboards_queries_parse() {
    let dir = monitoring_dir();
    promtool(&["check", "rules", "alerts.yml"], &dir).unwrap_or_else(|e| panic!("{e}"));
    let tested =
        promtool(&["test", "rules", "alerts.test.yml"], &dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every dashboard query as a recording rule of a file of their own: promtool parses each
    // (template variables sit inside label values, where any string parses).
    let rules: Vec<Value> = dashboards()
        .iter()
        .flat_map(|(file, dashboard)| queries(file, dashboard))
        .enumerate()
        .map(|(n, query)| json!({"record": format!("dashboard:query_{n}"), "expr": query.expr}))
        .collect();
    assert!(rules.len() > 40, "{} queries", rules.len());
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("dashboard-queries.yml");
    // JSON is YAML.
    std::fs::write(
        &file,
        json!({"groups": [{"name": "dashboards", "rules": rules}]}).to_string(),
    )
    .unwrap();
    promtool(&["check", "rules", "dashboard-queries.yml"], work.path())
        .unwrap_or_else(|e| panic!("a dashboard query does not parse: {e}"));
}

#[test]
fn every_metric_the_dashboards_and_alerts_name_is_exported_with_its_labels() {
    let work = tempfile::tempdir().unwrap();
    let exported = exported_families(work.path());

    let mut problems = Vec::new();
    for (file, dashboard) in dashboards() {
        problems.extend(check_dashboard(&file, &dashboard, &exported));
    }
    let dir = monitoring_dir();
    for file in ["alerts.yml", "alerts.test.yml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for name in depotmesh_names(&text) {
            if !exported.knows(&name) {
                problems.push(format!("{file}: {name} is not a metric the code exports"));
            }
        }
        let exprs = if file == "alerts.yml" {
            rule_exprs(&text)
        } else {
            test_series(&text)
        };
        assert!(!exprs.is_empty(), "{file}: no expressions found");
        for expr in exprs {
            let problems_before = problems.len();
            problems.extend(exported.check_expr(&expr, &[]));
            for problem in &mut problems[problems_before..] {
                *problem = format!("{file}: {problem}");
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nexported: {:#?}",
        problems.join("\n"),
        exported.families
    );

    // The check itself finds a name the code does not export, and a label it does not write.
    assert_eq!(
        exported.check_expr(
            "sum(rate(depotmesh_depot_bytez_total[5m]))",
            &["{{instance}}"]
        ),
        [
            "depotmesh_depot_bytez_total is not a metric the code exports (in sum(rate(depotmesh_depot_bytez_total[5m])))"
        ]
    );
    assert_eq!(
        exported
            .check_expr(
                "sum by (vin) (depotmesh_campaign_vehicles{statu=\"overdue\"})",
                &["{{region}}"]
            )
            .len(),
        3
    );
}

/// Each metric family the code exports: its type and its samples' label names.
#[derive(Debug, Default)]
struct Exported {
    families: BTreeMap<String, (String, BTreeSet<String>)>,
}

impl Exported {
    /// Adds the families of one `/metrics` answer; every family must have samples, so that its
    /// labels are known.
    fn add(&mut self, role: &str, text: &str) {
        let parsed = openmetrics_parser::prometheus::parse_prometheus(text)
            .unwrap_or_else(|error| panic!("{role}'s /metrics: {error}:\n{text}"));
        for (name, family) in parsed.families {
            assert!(
                family.iter_samples().count() > 0,
                "{role} wrote no sample of {name}, so its labels are unknown: give the test state \
                 that makes it write one:\n{text}"
            );
            let labels = family.get_label_names().iter().cloned().collect();
            self.families
                .insert(name, (family.family_type.to_string(), labels));
        }
    }

    /// The family a series name belongs to: itself, or a histogram's or summary's whose
    /// `_bucket`, `_sum` or `_count` it is.
    fn family(&self, name: &str) -> Option<&(String, BTreeSet<String>)> {
        self.families.get(name).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = self.families.get(name.strip_suffix(suffix)?)?;
                ["histogram", "summary"]
                    .contains(&family.0.as_str())
                    .then_some(family)
            })
        })
    }

    fn knows(&self, name: &str) -> bool {
        self.family(name).is_some()
    }

    /// What is wrong with PromQL `expr` and the legends shown for it: a metric the code does not
    /// export, a label matcher its family does not have, a grouping label or `{{label}}` none of
    /// the expression's metrics has.
    fn check_expr(&self, expr: &str, legends: &[&str]) -> Vec<String> {
        let named = promql_names(expr);
        let mut problems = Vec::new();
        let mut labels: BTreeSet<&str> = SCRAPE_LABELS.into_iter().collect();
        for (metric, matchers) in &named.selectors {
            let Some((_, own)) = self.family(metric) else {
                problems.push(format!(
                    "{metric} is not a metric the code exports (in {expr})"
                ));
                continue;
            };
            labels.extend(own.iter().map(String::as_str));
            for label in matchers {
                if !own.contains(label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{metric} has no label {label:?} (its labels: {own:?}; in {expr})"
                    ));
                }
            }
        }
        let legend_labels = legends.iter().flat_map(|legend| template_labels(legend));
        for label in named.grouping.iter().cloned().chain(legend_labels) {
            if !labels.contains(label.as_str()) {
                problems.push(format!(
                    "no metric of {expr} has the label {label:?} it groups or shows by"
                ));
            }
        }
        problems
    }
}

/// The metric families of a real director's and a real depot's `/metrics`, in states where each
/// writes every family it has.
fn exported_families(work: &Path) -> Exported {
    let now = node::clock::unix_now();
    let origin = sim_fleet::origin_with_releases_at(work, now);

    // The director, driven through its library as `netsim` drives it: four vehicles in two
    // regions, a campaign in waves of 50 and 100 %, approved by two approvers; the first wave's
    // targets signed, and each of its vehicles reports a commit, with the cellular month its
    // agent writes into the report. Its gates then open the second wave, whose targets are left
    // for the service to sign in the background.
    let campaign = "gw-2.0";
    let id: proto::CampaignId = campaign.parse().unwrap();
    let first_wave = {
        let mut director = origin::service::Director::open(origin.clone()).unwrap();
        for i in 0..4 {
            director
                .register(&sim_fleet::vehicle_record(i, 2, 1), "provisioning", now)
                .unwrap();
        }
        let spec = sim_fleet::gateway_campaign(campaign, &[50.0, 100.0], 0.5, 0.5, 1);
        director.create(spec, "alice", now).unwrap();
        sim_fleet::approve_as_two(&mut director, campaign, now);
        director.work_until_idle(now).unwrap();
        let assigned = director.campaigns()[&id].assigned.clone();
        assert!(!assigned.is_empty() && assigned.len() < 4, "{assigned:?}");
        for (vin, version) in &assigned {
            let i: usize = vin.as_str().trim_start_matches("VIN").parse().unwrap();
            let manifest = manifest_with_cellular(i, *version, now);
            director.accept_manifest(vin, &manifest, now).unwrap();
        }
        director.tick(now).unwrap();
        assigned.len()
    };

    // The same director served over HTTPS; a request without a credential is refused (and
    // counted).
    let service = DirectorService::start(&origin);
    let anonymous = ClientTls::trusting(&service.ca)
        .unwrap()
        .agent(Duration::from_secs(30));
    let refused = anonymous
        .get(&format!("{}/metrics", service.url))
        .call()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let director_metrics = service
        .agent()
        .get(&format!("{}/metrics", service.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    // The vehicle's report counted where the fleet-cellular dashboard reads it.
    assert!(
        director_metrics.contains(&format!(
            "depotmesh_campaign_vehicles_cellular_budget_used{{campaign=\"{campaign}\",at_least=\"0.9\"}} {first_wave}\n"
        )),
        "{director_metrics}"
    );

    // The depot: a fleet member with a disk cap, prefetching the image repository from the
    // origin's mesh node every second, relaying reports to the director.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mesh = runtime
        .block_on(origin::mesh::start(
            &origin,
            vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
        ))
        .unwrap();
    let depot_dir = work.join("depot");
    let membership = depotmesh_tests::release::enrol(&origin, &depot_dir, MemberRole::Depot);
    let config = format!(
        "{}cap_bytes = 1_000_000_000\n{}\n\
         [prefetch]\nupstream = [{:?}]\nroot = {:?}\ninterval_secs = 1\n\
         [relay]\ndirector_url = {:?}\ndirector_ca = {:?}\nretry_secs = 1\n",
        depot_config(&depot_dir).replace("mesh = { open = true }\n", ""),
        membership.inline_toml(),
        mesh.addrs.first().unwrap().to_string(),
        origin
            .dir
            .join("image/metadata/1.root.json")
            .display()
            .to_string(),
        service.url,
        service.ca.display().to_string(),
    );
    let depot = DepotDaemon::start(&depot_dir, &config);
    depot.wait_prefetched(1);
    let (status, depot_metrics) = depot.get("/metrics");
    assert!(status.contains("200"), "{status}");

    let mut exported = Exported::default();
    exported.add("the director", &director_metrics);
    exported.add("the depot", &depot_metrics);
    drop(depot);
    drop(mesh);
    exported
}

/// Vehicle `i`'s signed manifest committing director targets `version`, with the bytes it
/// fetched by link class and its month's cellular use, as `vehicle-peer` writes it.
fn manifest_with_cellular(i: usize, version: u64, now: u64) -> Vec<u8> {
    let serial = format!("GW-{}", sim_fleet::vin(i));
    let report = proto::uptane::sign_ecu_report(
        &proto::uptane::EcuVersionReport {
            ecu_serial: serial.clone(),
            installed_image: "gw/2.0.bin".into(),
            sha256: "00".repeat(32),
            release_counter: 2,
            nonce: format!("director-v{version}@{now}"),
            attacks_detected: String::new(),
        },
        &sim_fleet::key(2, i),
    )
    .unwrap();
    let install = proto::director_api::InstallReport {
        group: format!("director-v{version}"),
        outcome: proto::director_api::InstallOutcome::Committed,
        reason: String::new(),
        bytes: BTreeMap::from([
            ("yard-wifi".to_owned(), 9_000),
            ("cellular".to_owned(), 1_000),
        ]),
        cellular: Some(proto::director_api::CellularMonth {
            used_bytes: 95 << 20,
            budget_bytes: 100 << 20,
        }),
    };
    proto::uptane::sign_vehicle_manifest(
        sim_fleet::vin(i).as_str(),
        &serial,
        &[report],
        Some(&serde_json::to_value(&install).unwrap()),
        &sim_fleet::key(1, i),
    )
    .unwrap()
}

/// Every dashboard under `config/monitoring/grafana/`, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = monitoring_dir().join("grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["depots.json", "director.json", "fleet-cellular.json"]
    );
    files
        .into_iter()
        .zip(names)
        .map(|(path, name)| {
            let text = std::fs::read_to_string(&path).unwrap();
            let dashboard = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, dashboard)
        })
        .collect()
}

/// One query of a dashboard: the panel (or variable) it belongs to, the PromQL, its legend.
#[derive(Debug)]
struct Query {
    place: String,
    expr: String,
    legend: String,
}

/// Every panel of a dashboard, rows' panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        all.push(panel);
    }
    all
}

/// Every panel target's query of a dashboard.
fn queries(file: &str, dashboard: &Value) -> Vec<Query> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| Query {
                    place: format!("{file}: panel {title:?} target {}", target["refId"]),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                    legend: target["legendFormat"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
        })
        .collect()
}

/// What is wrong with one dashboard: Grafana's import needs (a uid, a schema version, the
/// data-source variable every panel and query uses) and every query checked against the
/// exported families, its template variables' queries too.
fn check_dashboard(file: &str, dashboard: &Value, exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |problem: String| problems.push(format!("{file}: {problem}"));
    if dashboard["uid"].as_str().is_none_or(str::is_empty) {
        fail("no uid".into());
    }
    if dashboard["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
        fail(format!(
            "schemaVersion {} (Grafana 9 and later write 36 and up)",
            dashboard["schemaVersion"]
        ));
    }
    if dashboard["title"].as_str().is_none_or(str::is_empty) {
        fail("no title".into());
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let data_source = variables.iter().any(|v| {
        v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "DS_PROMETHEUS"
    });
    if !data_source {
        fail("no Prometheus data-source variable DS_PROMETHEUS".into());
    }
    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        if !ids.insert(panel["id"].as_u64()) {
            fail(format!(
                "panel {title:?}: its id {} is not unique",
                panel["id"]
            ));
        }
        if !panel["gridPos"]["w"].is_u64() || !panel["gridPos"]["h"].is_u64() {
            fail(format!("panel {title:?} has no gridPos"));
        }
        match panel["type"].as_str() {
            Some("row") => continue,
            Some("timeseries" | "stat") => {}
            other => fail(format!("panel {title:?} is of type {other:?}")),
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            fail(format!("panel {title:?} has no query"));
        }
        for source in
            std::iter::once(&panel["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
        {
            if source["uid"] != DATA_SOURCE || source["type"] != "prometheus" {
                fail(format!(
                    "panel {title:?} reads {source} instead of the {DATA_SOURCE} variable"
                ));
            }
        }
    }
    for query in queries(file, dashboard) {
        if query.expr.trim().is_empty() {
            problems.push(format!("{}: no expr", query.place));
        }
        for problem in exported.check_expr(&query.expr, &[query.legend.as_str()]) {
            problems.push(format!("{}: {problem}", query.place));
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let name = variable["name"].as_str().unwrap_or("?");
        let definition = variable["query"]["query"]
            .as_str()
            .or(variable["query"].as_str())
            .unwrap_or_default();
        let place = format!("{file}: variable {name}");
        if variable["datasource"]["uid"] != DATA_SOURCE {
            problems.push(format!("{place} does not read the {DATA_SOURCE} variable"));
        }
        // label_values(SELECTOR, LABEL): LABEL must be one of SELECTOR's metric's labels.
        let Some((selector, label)) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|inner| inner.rsplit_once(','))
        else {
            problems.push(format!(
                "{place}: {definition:?} is not label_values(METRIC, LABEL)"
            ));
            continue;
        };
        let legend = format!("{{{{{}}}}}", label.trim());
        for problem in exported.check_expr(selector, &[legend.as_str()]) {
            problems.push(format!("{place}: {problem}"));
        }
    }
    problems
}

/// The label names a Grafana legend (`{{campaign}} {{status}}`) or an alert template shows.
fn template_labels(template: &str) -> Vec<String> {
    template
        .split("{{")
        .skip(1)
        .filter_map(|rest| Some(rest.split_once("}}")?.0.trim().to_owned()))
        .collect()
}

/// Every `depotmesh_…` name in a text.
fn depotmesh_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("depotmesh_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The `expr:` of each rule of a Prometheus rules file, inline or as a YAML block scalar (the
/// lines indented under it, folded into one).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if ["|", "|-", ">", ">-"].contains(&value) {
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|next| next.trim().is_empty() || indent(next) > indent(line))
                .map(|next| next.trim())
                .collect();
            exprs.push(block.join(" "));
        } else {
            exprs.push(value.trim_matches(|c| c == '\'' || c == '"').to_owned());
        }
    }
    exprs
}

/// The input series of a promtool test file (`series: '…'`).
fn test_series(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|line| line.trim_start().strip_prefix("- series:"))
        .map(|value| {
            value
                .trim()
                .trim_matches(|c| c == '\'' || c == '"')
                .to_owned()
        })
        .collect()
}

/// What a PromQL expression names: each metric selector with the label names of its matchers,
/// and the label names of its `by`, `without`, `on`, `ignoring` and `group_*` lists.
#[derive(Debug, Default, PartialEq)]
struct PromqlNames {
    selectors: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// Reads what `expr` names with a small scanner of PromQL's tokens: strings, numbers and
/// durations are skipped, an identifier followed by `(` is a function (or an aggregation),
/// keywords are not names, and any other identifier is a metric.
fn promql_names(expr: &str) -> PromqlNames {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = PromqlNames::default();
    let skip_spaces = |mut i: usize| {
        while chars.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        i
    };
    let identifier_end = |mut i: usize| {
        while chars
            .get(i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            i += 1;
        }
        i
    };
    let string_end = |i: usize| {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' && quote != '`' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = string_end(i);
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 1e9, 0.9).
            while chars
                .get(i)
                .is_some_and(|&c| c.is_ascii_alphanumeric() || c == '.')
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = identifier_end(i);
            let word: String = chars[i..end].iter().collect();
            let next = skip_spaces(end);
            i = end;
            if LABEL_LISTS.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                let mut j = next + 1;
                loop {
                    j = skip_spaces(j);
                    match chars.get(j) {
                        None | Some(')') => break,
                        Some(_) => {
                            let stop = identifier_end(j);
                            if stop == j {
                                // A comma.
                                j += 1;
                            } else {
                                names.grouping.push(chars[j..stop].iter().collect());
                                j = stop;
                            }
                        }
                    }
                }
                i = j + 1;
            } else if chars.get(next) == Some(&'(') || KEYWORDS.contains(&word.as_str()) {
                // A function or an aggregation; a keyword.
            } else if chars.get(next) == Some(&'{') {
                // Label matchers: name, operator, quoted value, commas between.
                let mut labels = Vec::new();
                let mut j = next + 1;
                loop {
                    j = skip_spaces(j);
                    match chars.get(j) {
                        None | Some('}') => break,
                        Some(',') => j += 1,
                        Some('"' | '\'' | '`') => j = string_end(j),
                        Some('=' | '!' | '~') => j += 1,
                        Some(_) => {
                            let stop = identifier_end(j);
                            if stop == j {
                                j += 1;
                            } else {
                                labels.push(chars[j..stop].iter().collect());
                                j = stop;
                            }
                        }
                    }
                }
                names.selectors.push((word, labels));
                i = j + 1;
            } else {
                names.selectors.push((word, Vec::new()));
            }
        } else if c == '{' {
            // A selector without a metric name; none is written here.
            names.selectors.push(("{…}".to_owned(), Vec::new()));
            i += 1;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metrics_matchers_and_grouping_labels() {
    let names = promql_names(
        "sum by (campaign, status) (rate(depotmesh_x_total{job=~\"$job\", status!=\"a,b}\"}[5m] offset 1h)) \
         / on(campaign) group_left() max without (instance) (depotmesh_y) > 0.9 and 1e3 < bool depotmesh_z",
    );
    assert_eq!(
        names,
        PromqlNames {
            selectors: vec![
                (
                    "depotmesh_x_total".into(),
                    vec!["job".into(), "status".into()]
                ),
                ("depotmesh_y".into(), vec![]),
                ("depotmesh_z".into(), vec![]),
            ],
            grouping: vec![
                "campaign".into(),
                "status".into(),
                "campaign".into(),
                "instance".into()
            ],
        }
    );
    assert_eq!(
        rule_exprs(
            "  - alert: A\n    expr: >-\n      a > 0\n      and b\n    for: 1m\n  - alert: B\n    expr: c == 1\n"
        ),
        ["a > 0 and b", "c == 1"]
    );
    assert_eq!(
        depotmesh_names("x depotmesh_a_total{y} not_depotmesh_b depotmesh_c:d"),
        BTreeSet::from(["depotmesh_a_total".into(), "depotmesh_c:d".into()])
    );
}
