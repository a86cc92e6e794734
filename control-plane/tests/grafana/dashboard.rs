//! The parts of a Grafana dashboard JSON file the checker needs: panels
//! (with the panels nested in collapsed rows), their targets, the template
//! variables, and every datasource reference.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use super::template;

pub struct Dashboard {
    pub file: String,
    pub uid: String,
    pub title: String,
    pub panels: Vec<Panel>,
    pub variables: Vec<Variable>,
    /// Every `datasource` value anywhere in the file, with where it is.
    pub datasources: Vec<(String, Value)>,
    pub schema_version: u64,
}

pub struct Panel {
    pub id: Option<u64>,
    pub title: String,
    pub kind: String,
    pub targets: Vec<Target>,
}

pub struct Target {
    pub ref_id: String,
    pub expr: Option<String>,
}

pub struct Variable {
    pub name: String,
    pub query: VariableQuery,
    /// Multi-value or "All": Grafana also sends the values joined as a regex.
    pub multi: bool,
    /// Grafana's `/regex/` filter on the values (first capture group kept).
    pub regex: String,
}

#[derive(Debug, PartialEq)]
pub enum VariableQuery {
    /// `label_values(metric_or_selector, label)` or `label_values(label)`.
    LabelValues {
        matcher: Option<String>,
        label: String,
    },
    /// `query_result(expr)`: the values are the result's series as text.
    QueryResult(String),
    /// A `custom` variable's comma-separated values or a `constant`.
    Fixed(Vec<String>),
    Unsupported(String),
}

impl Panel {
    pub fn describe(&self) -> String {
        match self.id {
            Some(id) => format!("panel {id} '{}'", self.title),
            None => format!("panel '{}'", self.title),
        }
    }
}

/// Every `*.json` file of `dir`, parsed, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Dashboard>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no dashboards in {}", dir.display()));
    }
    files.iter().map(|f| load(f)).collect()
}

pub fn load(path: &Path) -> Result<Dashboard, String> {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("{file}: not valid JSON: {e}"))?;
    parse(file, &json)
}

pub fn parse(file: String, json: &Value) -> Result<Dashboard, String> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut panels = Vec::new();
    walk_panels(json.get("panels"), &mut panels);
    let variables = json
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(variable).collect())
        .unwrap_or_default();
    let mut datasources = Vec::new();
    collect_datasources(json, "", &mut datasources);
    if json.get("panels").and_then(Value::as_array).is_none() {
        return Err(format!("{file}: no \"panels\" array"));
    }
    Ok(Dashboard {
        uid: text(json, "uid"),
        title: text(json, "title"),
        schema_version: json
            .get("schemaVersion")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        file,
        panels,
        variables,
        datasources,
    })
}

/// Panels in order, a row's nested panels right after the row.
fn walk_panels(list: Option<&Value>, out: &mut Vec<Panel>) {
    for p in list.and_then(Value::as_array).into_iter().flatten() {
        let targets = p
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| Target {
                ref_id: t
                    .get("refId")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
                expr: t.get("expr").and_then(Value::as_str).map(str::to_owned),
            })
            .collect();
        out.push(Panel {
            id: p.get("id").and_then(Value::as_u64),
            title: p
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            kind: p
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            targets,
        });
        walk_panels(p.get("panels"), out);
    }
}

fn variable(v: &Value) -> Variable {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    // Grafana 10 stores a Prometheus variable's query as an object; older
    // dashboards as a string.
    let query = match v.get("query") {
        Some(Value::String(s)) => s.clone(),
        Some(q) => q
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        None => String::new(),
    };
    let query = match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "query" => parse_variable_query(&query),
        "custom" => VariableQuery::Fixed(
            query
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        "constant" => VariableQuery::Fixed(vec![query]),
        other => VariableQuery::Unsupported(format!("variable type '{other}'")),
    };
    let flag = |key: &str| v.get(key).and_then(Value::as_bool).unwrap_or(false);
    Variable {
        name,
        query,
        multi: flag("multi") || flag("includeAll"),
        regex: v
            .get("regex")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

pub fn parse_variable_query(query: &str) -> VariableQuery {
    let q = query.trim();
    let inner = |prefix: &str| {
        q.strip_prefix(prefix)
            .and_then(|r| r.trim_start().strip_prefix('('))
            .and_then(|r| r.strip_suffix(')'))
            .map(str::trim)
    };
    if let Some(args) = inner("label_values") {
        // The label is after the last comma outside braces and quotes.
        return match template::split_last_arg(args) {
            Some((matcher, label)) => VariableQuery::LabelValues {
                matcher: Some(matcher.trim().to_owned()),
                label: label.trim().to_owned(),
            },
            None => VariableQuery::LabelValues {
                matcher: None,
                label: args.to_owned(),
            },
        };
    }
    if let Some(expr) = inner("query_result") {
        return VariableQuery::QueryResult(expr.to_owned());
    }
    VariableQuery::Unsupported(format!("query '{q}'"))
}

fn collect_datasources(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{at}/{k}");
                if k == "datasource" {
                    out.push((here.clone(), child.clone()));
                }
                collect_datasources(child, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                collect_datasources(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Problems that need no Prometheus: panel ids, datasource uids, variables,
/// template syntax, and metric names against `catalogue`.
pub fn structural_problems(
    dashboards: &[Dashboard],
    datasource_uid: &str,
    catalogue: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for d in dashboards {
        let mut bad = |what: String| problems.push(format!("{}: {what}", d.file));
        if d.uid.is_empty() || d.title.is_empty() {
            bad("no uid or no title".into());
        } else if !uids.insert(d.uid.clone()) {
            bad(format!("uid '{}' used by another dashboard", d.uid));
        }
        if d.schema_version < 36 {
            bad(format!(
                "schemaVersion {} is older than Grafana 10's",
                d.schema_version
            ));
        }
        let mut ids = BTreeSet::new();
        for p in &d.panels {
            match p.id {
                None => bad(format!("{} has no id", p.describe())),
                Some(id) if !ids.insert(id) => bad(format!("panel id {id} is not unique")),
                Some(_) => {}
            }
            if p.kind != "row" && p.kind != "text" && p.targets.is_empty() {
                bad(format!("{} has no query", p.describe()));
            }
        }
        for (at, ds) in &d.datasources {
            let uid = ds.get("uid").and_then(Value::as_str);
            let kind = ds.get("type").and_then(Value::as_str);
            if uid != Some(datasource_uid) || kind != Some("prometheus") {
                bad(format!(
                    "datasource at {at} is {ds}, not {{type: prometheus, uid: {datasource_uid}}}"
                ));
            }
        }
        let names: Vec<&str> = d.variables.iter().map(|v| v.name.as_str()).collect();
        for v in &d.variables {
            if let VariableQuery::Unsupported(what) = &v.query {
                bad(format!(
                    "variable ${}: the checker cannot evaluate {what}",
                    v.name
                ));
            }
        }
        for p in &d.panels {
            for t in &p.targets {
                let Some(expr) = &t.expr else {
                    bad(format!("{} target {} has no expr", p.describe(), t.ref_id));
                    continue;
                };
                let fill = template::sample_values(&names);
                if let Err(e) = template::substitute(expr, &fill) {
                    bad(format!("{} target {}: {e}", p.describe(), t.ref_id));
                }
                for m in template::metric_names(expr) {
                    if !template::in_catalogue(&m, catalogue) {
                        bad(format!(
                            "{} target {}: metric {m} is not in the catalogue",
                            p.describe(),
                            t.ref_id
                        ));
                    }
                }
            }
        }
        for v in &d.variables {
            let expr = match &v.query {
                VariableQuery::LabelValues {
                    matcher: Some(m), ..
                } => m,
                VariableQuery::QueryResult(e) => e,
                _ => continue,
            };
            if expr.contains('$') {
                bad(format!(
                    "variable ${} depends on another variable (not supported)",
                    v.name
                ));
            }
            for m in template::metric_names(expr) {
                if !template::in_catalogue(&m, catalogue) {
                    bad(format!(
                        "variable ${}: metric {m} is not in the catalogue",
                        v.name
                    ));
                }
            }
        }
    }
    problems
}
