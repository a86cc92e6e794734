//! The Grafana dashboards in `grafana/dashboards/`.
//!
//! Always: the JSON, panel ids, datasource uids, template syntax and metric
//! names (against control-plane/METRICS.md) are checked. With
//! `FLEET_PROMETHEUS_URL` set — `scripts/fleet-local.sh --check` sets it to a
//! Prometheus scraping the local fleet after its rollouts — every panel query
//! must return data, and every metric it names must be one the server exposes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod grafana;

use std::collections::BTreeSet;

use grafana::dashboard::{self, Dashboard};
use grafana::prometheus::Prometheus;
use grafana::{grafana_dir, live, template};

const DATASOURCE_UID: &str = "fleet-prometheus";

fn dashboards() -> Vec<Dashboard> {
    dashboard::load_dir(&grafana_dir().join("dashboards")).unwrap()
}

/// `key: value` lines of a provisioning file (enough for our own YAML).
fn yaml_values(file: &str, key: &str) -> Vec<String> {
    let path = grafana_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}:"))
        })
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
}

/// The metric names control-plane/METRICS.md documents.
fn documented_metrics() -> BTreeSet<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("METRICS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let re = regex::Regex::new(r"\bfleet_[a-z0-9_]+").unwrap();
    let names: BTreeSet<String> = re.find_iter(&text).map(|m| m.as_str().to_owned()).collect();
    assert!(
        names.len() > 10,
        "{} documents only {names:?}",
        path.display()
    );
    names
}

#[test]
fn provisioning_matches_the_dashboards() {
    assert_eq!(
        yaml_values("provisioning/datasources/fleet.yml", "uid"),
        [DATASOURCE_UID]
    );
    assert_eq!(
        yaml_values("provisioning/datasources/fleet.yml", "type"),
        ["prometheus"]
    );
    let path = yaml_values("provisioning/dashboards/fleet.yml", "path");
    assert_eq!(path.len(), 1, "one dashboards provider path: {path:?}");
    // compose.yml mounts the dashboards where the provider reads them.
    let mount = format!("./dashboards:{}:ro", path[0]);
    let compose = std::fs::read_to_string(grafana_dir().join("compose.yml")).unwrap();
    assert!(
        compose.contains(&mount),
        "compose.yml does not mount {mount}"
    );
}

#[test]
fn dashboards_are_well_formed() {
    let dashboards = dashboards();
    let names: Vec<&str> = dashboards.iter().map(|d| d.uid.as_str()).collect();
    assert!(names.len() >= 4, "dashboards: {names:?}");
    let problems =
        dashboard::structural_problems(&dashboards, DATASOURCE_UID, &documented_metrics());
    assert!(
        problems.is_empty(),
        "dashboard problems:\n  {}",
        problems.join("\n  ")
    );
    let queries: usize = dashboards
        .iter()
        .flat_map(|d| &d.panels)
        .map(|p| p.targets.len())
        .sum();
    eprintln!(
        "dashboards: {} dashboards, {queries} queries well formed",
        dashboards.len()
    );
    if std::env::var_os("FLEET_PROMETHEUS_URL").is_none() {
        eprintln!(
            "dashboards: the live check (every query returns data) runs from \
             `scripts/fleet-local.sh --check`, which sets FLEET_PROMETHEUS_URL"
        );
    }
}

#[test]
fn the_checker_finds_nested_panels_duplicate_ids_and_foreign_datasources() {
    let json = serde_json::json!({
        "uid": "t", "title": "t", "schemaVersion": 39,
        "panels": [
            {"id": 1, "type": "row", "title": "r", "panels": [
                {"id": 1, "type": "timeseries", "title": "nested",
                 "datasource": {"type": "prometheus", "uid": "other"},
                 "targets": [{"refId": "A", "expr": "rate(fleet_nope[$__rate_interval]) + $missing"}]}
            ]}
        ]
    });
    let d = dashboard::parse("t.json".into(), &json).unwrap();
    assert_eq!(d.panels.len(), 2);
    let catalogue = BTreeSet::from(["fleet_yes".to_owned()]);
    let problems = dashboard::structural_problems(&[d], DATASOURCE_UID, &catalogue).join("\n");
    for want in [
        "panel id 1 is not unique",
        "uid\":\"other",
        "unknown template variable $missing",
        "fleet_nope",
    ] {
        assert!(problems.contains(want), "{want:?} not in:\n{problems}");
    }
}

#[test]
fn variable_queries_parse() {
    use dashboard::VariableQuery::*;
    assert_eq!(
        dashboard::parse_variable_query("label_values(fleet_device_online, device)"),
        LabelValues {
            matcher: Some("fleet_device_online".into()),
            label: "device".into()
        }
    );
    assert_eq!(
        dashboard::parse_variable_query("label_values(group)"),
        LabelValues {
            matcher: None,
            label: "group".into()
        }
    );
    assert_eq!(
        dashboard::parse_variable_query("query_result(topk(3, fleet_x))"),
        QueryResult("topk(3, fleet_x)".into())
    );
    assert!(matches!(
        dashboard::parse_variable_query("metrics(fleet_.*)"),
        Unsupported(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_panel_query_returns_data_from_prometheus() {
    let Ok(url) = std::env::var("FLEET_PROMETHEUS_URL") else {
        eprintln!(
            "SKIPPED: live dashboard check: FLEET_PROMETHEUS_URL is not set \
             (`scripts/fleet-local.sh --check` runs it against the local fleet)"
        );
        return;
    };
    let prom = Prometheus::new(&url);
    let dashboards = dashboards();
    let mut problems = Vec::new();

    // The server's actual catalogue: what Prometheus scraped from it.
    let exposed = prom.fleet_metric_names().await.unwrap();
    assert!(
        !exposed.is_empty(),
        "{}: no fleet_ metrics scraped",
        prom.base()
    );
    for d in &dashboards {
        for p in &d.panels {
            for expr in p.targets.iter().filter_map(|t| t.expr.as_deref()) {
                for m in template::metric_names(expr) {
                    if !template::in_catalogue(&m, &exposed) {
                        problems.push(format!(
                            "{}: {}: {m} is not exposed by the server",
                            d.file,
                            p.describe()
                        ));
                    }
                }
            }
        }
    }

    let report = live::check(&prom, &dashboards).await;
    for line in &report.passed {
        eprintln!("ok   {line}");
    }
    problems.extend(report.problems);
    eprintln!(
        "dashboards: {} queries against {}, {} without data or failing",
        report.checked,
        prom.base(),
        problems.len()
    );
    assert!(report.checked > 0);
    assert!(
        problems.is_empty(),
        "dashboard queries failing:\n  {}",
        problems.join("\n  ")
    );
}
