//! The live check: every target of every panel, with its variables filled in
//! from the variables' own queries, must return data from Prometheus.

use std::collections::BTreeMap;

use super::dashboard::{Dashboard, Variable, VariableQuery};
use super::prometheus::Prometheus;
use super::template;

/// At most this many combinations of variable values are tried per query.
const MAX_COMBINATIONS: usize = 64;

#[derive(Default)]
pub struct Report {
    pub checked: usize,
    pub problems: Vec<String>,
    /// One line per query that returned data, with the values that gave it.
    pub passed: Vec<String>,
}

/// The values Grafana would offer for `v` (before "All"/multi handling).
pub async fn variable_values(prom: &Prometheus, v: &Variable) -> Result<Vec<String>, String> {
    let raw = match &v.query {
        VariableQuery::LabelValues { matcher, label } => {
            prom.label_values(label, matcher.as_deref()).await?
        }
        VariableQuery::QueryResult(expr) => prom.query_result(expr).await?,
        VariableQuery::Fixed(values) => values.clone(),
        VariableQuery::Unsupported(what) => return Err(format!("cannot evaluate {what}")),
    };
    apply_regex(&v.regex, raw)
}

/// Grafana's variable `regex` (`/re/flags`): keep matching values, as their
/// first capture group when there is one.
fn apply_regex(regex: &str, values: Vec<String>) -> Result<Vec<String>, String> {
    if regex.is_empty() {
        return Ok(values);
    }
    let body = regex
        .strip_prefix('/')
        .and_then(|r| r.rfind('/').map(|end| &r[..end]))
        .unwrap_or(regex);
    let re = regex::Regex::new(body).map_err(|e| format!("variable regex {regex}: {e}"))?;
    let mut out: Vec<String> = values
        .iter()
        .filter_map(|v| {
            let c = re.captures(v)?;
            Some(c.get(1).or_else(|| c.get(0))?.as_str().to_owned())
        })
        .collect();
    out.dedup();
    Ok(out)
}

pub async fn check(prom: &Prometheus, dashboards: &[Dashboard]) -> Report {
    let mut report = Report::default();
    for d in dashboards {
        // Each variable's candidates: every single value, and for multi-value
        // variables also all of them at once as Grafana sends them.
        let mut candidates: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in &d.variables {
            match variable_values(prom, v).await {
                Ok(values) if values.is_empty() => report
                    .problems
                    .push(format!("{}: variable ${} has no values", d.file, v.name)),
                Ok(mut values) => {
                    if v.multi && values.len() > 1 {
                        values.push(template::join_as_regex(&values));
                    }
                    candidates.insert(v.name.clone(), values);
                }
                Err(e) => report
                    .problems
                    .push(format!("{}: variable ${}: {e}", d.file, v.name)),
            }
        }
        for p in &d.panels {
            for t in &p.targets {
                let Some(expr) = &t.expr else { continue };
                report.checked += 1;
                let at = format!(
                    "{} ({}): {} target {}",
                    d.file,
                    d.title,
                    p.describe(),
                    t.ref_id
                );
                match first_with_data(prom, expr, &candidates).await {
                    Ok(Some(values)) => report.passed.push(format!("{at} {values:?}")),
                    Ok(None) => report.problems.push(format!("{at}: no data: {expr}")),
                    Err(e) => report.problems.push(format!("{at}: {e}: {expr}")),
                }
            }
        }
    }
    report
}

/// The first assignment of the query's variables for which it returns data.
async fn first_with_data(
    prom: &Prometheus,
    expr: &str,
    candidates: &BTreeMap<String, Vec<String>>,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let used = template::variables_used(expr);
    let mut combos = vec![BTreeMap::new()];
    for name in &used {
        let values = candidates
            .get(name)
            .ok_or_else(|| format!("variable ${name} has no values"))?;
        combos = combos
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |v| {
                    let mut c = c.clone();
                    c.insert(name.clone(), v.clone());
                    c
                })
            })
            .take(MAX_COMBINATIONS)
            .collect();
    }
    for values in combos {
        let query = template::substitute(expr, &values)?;
        if prom.count(&query).await? > 0 {
            return Ok(Some(values));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_regex_keeps_matches_as_their_first_group() {
        let values = vec![
            "fleet_x{device=\"cam-01\"} 1".to_owned(),
            "other".to_owned(),
        ];
        assert_eq!(
            apply_regex(r#"/device="([^"]+)"/"#, values).unwrap(),
            ["cam-01"]
        );
        assert_eq!(apply_regex("", vec!["a".into()]).unwrap(), ["a"]);
    }
}
