//! A typed HTTP client of the REST API (used by `fleetctl` and tests).

use fleet_protocol::dsse::Envelope;
use fleet_protocol::{DeviceId, GroupName};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::{
    AddMembers, CreateGroup, CreateRollout, CreateToken, CreatedToken, DeviceView, ErrorBody,
    ErrorCode, FollowChannel, GroupView, PlanView, PublishView, ReleaseView, ResolveView,
    RolloutView, SetLabels, TokenView,
};
use crate::fleet::rollout::Action;
use crate::store::{AuditRecord, Channel, EventRecord, RolloutId, TokenRole};

mod enroll;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the server refused the token ({message}); log in again: fleetctl login --server URL --token TOKEN"
    )]
    Unauthorized { message: String },
    #[error("{message} (HTTP {status}{})", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    Api {
        status: StatusCode,
        /// `None` when the answer was not an API error body.
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("unexpected answer from {url}: {source}")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (e.g. `https://127.0.0.1:8080`),
    /// trusting the public web roots for `https://`.
    pub fn new(base: &str, token: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Self::builder().build().unwrap_or_default(),
        }
    }

    /// A client of the server at `base` trusting only the fleet CA in
    /// `ca_pem` (what `fleet-server` made: `<data>/pki/ca.crt`).
    pub fn with_ca(
        base: &str,
        token: Option<String>,
        ca_pem: &str,
    ) -> Result<Client, fleet_agent::link::tls::TlsError> {
        let tls = fleet_agent::link::tls::client_config(ca_pem, false, None)?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Self::builder()
                .use_preconfigured_tls((*tls).clone())
                .build()
                .unwrap_or_default(),
        })
    }

    fn builder() -> reqwest::ClientBuilder {
        // A server that does not answer the connect is "unreachable" after
        // this long, not after the kernel's SYN retries (~2 min).
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10))
    }

    /// The HTTP client (with the server's trust), for requests outside the
    /// API such as the content endpoint.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The API token this client sends.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|source| ClientError::Connect {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json()
                .await
                .map_err(|source| ClientError::Decode { url, source });
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => (Some(e.code), e.message),
            Err(_) => (None, text),
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { message });
        }
        Err(ClientError::Api {
            status,
            code,
            message,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.send(Method::POST, path, Some(bytes)).await
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        self.get("/devices").await
    }

    pub async fn device(&self, id: &DeviceId) -> Result<DeviceView, ClientError> {
        self.get(&format!("/devices/{id}")).await
    }

    /// The device's last signed desired state (DSSE envelope JSON).
    pub async fn device_desired(&self, id: &DeviceId) -> Result<Envelope, ClientError> {
        self.get(&format!("/devices/{id}/desired")).await
    }

    pub async fn set_labels(
        &self,
        id: &DeviceId,
        req: &SetLabels,
    ) -> Result<DeviceView, ClientError> {
        self.post(&format!("/devices/{id}/labels"), req).await
    }

    pub async fn groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.get("/groups").await
    }

    pub async fn group(&self, name: &GroupName) -> Result<GroupView, ClientError> {
        self.get(&format!("/groups/{name}")).await
    }

    pub async fn create_group(&self, req: &CreateGroup) -> Result<GroupView, ClientError> {
        self.post("/groups", req).await
    }

    pub async fn add_members(
        &self,
        name: &GroupName,
        req: &AddMembers,
    ) -> Result<GroupView, ClientError> {
        self.post(&format!("/groups/{name}/members"), req).await
    }

    pub async fn releases(&self) -> Result<Vec<ReleaseView>, ClientError> {
        self.get("/releases").await
    }

    /// Posts a signed release envelope (JSON bytes as signed).
    pub async fn add_release(&self, envelope_json: Vec<u8>) -> Result<ReleaseView, ClientError> {
        self.send(Method::POST, "/releases", Some(envelope_json))
            .await
    }

    /// Publishes a signed release envelope to `channel`.
    pub async fn publish_release(
        &self,
        channel: &Channel,
        envelope_json: Vec<u8>,
    ) -> Result<PublishView, ClientError> {
        self.send(
            Method::POST,
            &format!("/channels/{channel}/releases"),
            Some(envelope_json),
        )
        .await
    }

    pub async fn follow(
        &self,
        name: &GroupName,
        req: &FollowChannel,
    ) -> Result<GroupView, ClientError> {
        self.post(&format!("/groups/{name}/follow"), req).await
    }

    /// What a rollout request would do; nothing is kept or sent.
    pub async fn plan_rollout(&self, req: &CreateRollout) -> Result<PlanView, ClientError> {
        self.post("/rollouts/plan", req).await
    }

    pub async fn start_rollout(&self, req: &CreateRollout) -> Result<RolloutView, ClientError> {
        self.post("/rollouts", req).await
    }

    pub async fn rollouts(&self) -> Result<Vec<RolloutView>, ClientError> {
        self.get("/rollouts").await
    }

    pub async fn rollout(&self, id: RolloutId) -> Result<RolloutView, ClientError> {
        self.get(&format!("/rollouts/{id}")).await
    }

    pub async fn rollout_action(
        &self,
        id: RolloutId,
        action: Action,
    ) -> Result<RolloutView, ClientError> {
        self.send(
            Method::POST,
            &format!("/rollouts/{id}/{}", action.as_str()),
            None,
        )
        .await
    }

    pub async fn resolve(&self, image: &str) -> Result<ResolveView, ClientError> {
        let q: String = url_encode(image);
        self.get(&format!("/images/resolve?ref={q}")).await
    }

    pub async fn events(&self, limit: usize) -> Result<Vec<EventRecord>, ClientError> {
        self.get(&format!("/events?limit={limit}")).await
    }

    /// The audit log: the newest `limit` records, or the first `limit`
    /// after sequence number `after`; oldest first (admin).
    pub async fn audit(
        &self,
        limit: usize,
        after: Option<u64>,
    ) -> Result<Vec<AuditRecord>, ClientError> {
        let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
        self.get(&format!("/audit?limit={limit}{after}")).await
    }

    /// The API tokens (names and roles; admin).
    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        self.get("/tokens").await
    }

    /// Creates an API token; the answer holds it, the only time (admin).
    pub async fn create_token(
        &self,
        name: &str,
        role: TokenRole,
    ) -> Result<CreatedToken, ClientError> {
        let req = CreateToken {
            name: name.to_owned(),
            role,
        };
        self.post("/tokens", &req).await
    }

    /// Revokes the API token `name` (admin).
    pub async fn revoke_token(&self, name: &str) -> Result<TokenView, ClientError> {
        self.send(
            Method::DELETE,
            &format!("/tokens/{}", url_encode(name)),
            None,
        )
        .await
    }
}

/// Percent-encodes a query value.
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
