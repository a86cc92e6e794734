//! The few calls of the Prometheus HTTP API the checker makes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

pub struct Prometheus {
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    pub fn new(base: &str) -> Prometheus {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Prometheus {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("GET {url}: {status}: {e}"))?;
        if body.get("status").and_then(Value::as_str) != Some("success") {
            let error = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error text");
            return Err(format!("{status}: {error}"));
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }

    /// An instant query: the result as JSON (`resultType`, `result`).
    pub async fn query(&self, expr: &str) -> Result<Value, String> {
        self.get("/api/v1/query", &[("query", expr)]).await
    }

    /// How many series (or 1 for a scalar or string) `expr` returns now.
    pub async fn count(&self, expr: &str) -> Result<usize, String> {
        let data = self.query(expr).await?;
        Ok(match data.get("result") {
            Some(Value::Array(items))
                if data["resultType"] != "scalar" && data["resultType"] != "string" =>
            {
                items.len()
            }
            Some(_) => 1,
            None => 0,
        })
    }

    /// The values of `label` over the series `matcher` selects (all series without one).
    pub async fn label_values(
        &self,
        label: &str,
        matcher: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let path = format!("/api/v1/label/{label}/values");
        let params: Vec<(&str, &str)> = matcher.map(|m| ("match[]", m)).into_iter().collect();
        let data = self.get(&path, &params).await?;
        Ok(strings(&data))
    }

    /// The `fleet_` metric names Prometheus has scraped: the server's actual catalogue.
    pub async fn fleet_metric_names(&self) -> Result<BTreeSet<String>, String> {
        Ok(self
            .label_values("__name__", Some(r#"{__name__=~"fleet_.+"}"#))
            .await?
            .into_iter()
            .collect())
    }

    /// `query_result(expr)`: each series of the result as Grafana shows it,
    /// `name{labels} value timestamp` (the checker uses them as values as-is).
    pub async fn query_result(&self, expr: &str) -> Result<Vec<String>, String> {
        let data = self.query(expr).await?;
        Ok(data
            .get("result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .collect())
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}
