//! The Prometheus adapter of [`GateQuery`]: a PromQL gate's query as an
//! instant query on the HTTP API (`GET /api/v1/query`). The only place
//! that talks to Prometheus.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::fleet::ports::GateQuery;
use crate::fleet::promql::Measurement;

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("prometheus.url {url:?} is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot build the HTTP client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },
    #[error("querying {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Prometheus refused the query ({status}): {error}")]
    Refused { status: u16, error: String },
    #[error(
        "Prometheus answered with a {kind} result; the gate needs an instant vector or a scalar"
    )]
    Unsupported { kind: String },
    #[error("Prometheus answered a value that is not a number: {value:?}")]
    NotANumber { value: String },
}

/// A Prometheus server's query API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    query_url: reqwest::Url,
    http: reqwest::Client,
}

/// `/api/v1/query`'s answer (success or error).
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Series {
    value: (f64, String),
}

impl Prometheus {
    /// A client of the Prometheus at `url` (e.g. `http://127.0.0.1:9090`),
    /// each query bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, PrometheusError> {
        let bad = || PrometheusError::BadUrl {
            url: url.to_owned(),
        };
        let base = reqwest::Url::parse(url).map_err(|_| bad())?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad());
        }
        let query_url = base
            .join(&format!(
                "{}/api/v1/query",
                base.path().trim_end_matches('/')
            ))
            .map_err(|_| bad())?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| PrometheusError::Client { source })?;
        Ok(Self { query_url, http })
    }

    /// The value of each series of the instant query `promql` (a scalar
    /// is one value).
    pub async fn instant(&self, promql: &str) -> Result<Vec<f64>, PrometheusError> {
        let request = |source| PrometheusError::Request {
            url: self.query_url.to_string(),
            source,
        };
        let response = self
            .http
            .get(self.query_url.clone())
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(request)?;
        let status = response.status().as_u16();
        let answer: Answer = response.json().await.map_err(request)?;
        let data = match (answer.status.as_str(), answer.data) {
            ("success", Some(data)) => data,
            _ => {
                return Err(PrometheusError::Refused {
                    status,
                    error: answer
                        .error
                        .unwrap_or_else(|| "no data in the answer".into()),
                });
            }
        };
        let unsupported = || PrometheusError::Unsupported {
            kind: data.result_type.clone(),
        };
        let texts: Vec<String> = match data.result_type.as_str() {
            "vector" => serde_json::from_value::<Vec<Series>>(data.result.clone())
                .map_err(|_| unsupported())?
                .into_iter()
                .map(|s| s.value.1)
                .collect(),
            "scalar" => vec![
                serde_json::from_value::<(f64, String)>(data.result.clone())
                    .map_err(|_| unsupported())?
                    .1,
            ],
            _ => return Err(unsupported()),
        };
        texts
            .into_iter()
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|_| PrometheusError::NotANumber { value: t })
            })
            .collect()
    }
}

#[async_trait]
impl GateQuery for Prometheus {
    async fn query(&self, promql: &str) -> Measurement {
        match self.instant(promql).await {
            Ok(values) => Measurement::Values(values),
            Err(e) => Measurement::Unreachable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_taken_and_the_query_path_keeps_a_prefix() {
        let p = Prometheus::new("http://127.0.0.1:9090", Duration::from_secs(1)).unwrap();
        assert_eq!(p.query_url.as_str(), "http://127.0.0.1:9090/api/v1/query");
        let p = Prometheus::new("http://h/prom/", Duration::from_secs(1)).unwrap();
        assert_eq!(p.query_url.as_str(), "http://h/prom/api/v1/query");
        for bad in ["", "127.0.0.1:9090", "ftp://h"] {
            let e = Prometheus::new(bad, Duration::from_secs(1)).unwrap_err();
            assert!(e.to_string().contains("is not an http://"), "{e}");
        }
    }
}
