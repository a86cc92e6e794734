//! The REST API (`/api/v1`, JSON, bearer tokens with roles).
//!
//! Every API route needs a role (see [`access`]): `viewer` < `operator` <
//! `admin`, each allowed what the ones before it are. Without a valid token
//! the answer is 401; with a token of a lower role, or a device's client
//! certificate, 403 naming the role needed. Every call but GET/HEAD, and
//! every refused one, is kept in the audit log ([`audit`]). The audit log
//! is admin-only: it names every token and the addresses they call from,
//! which is what an attacker maps first; operators see what happened to the
//! fleet in the event log.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/healthz` | none | liveness |
//! | GET | `/metrics` | none | Prometheus metrics (`http.metrics`) |
//! | GET | `/api/v1/devices`, `/api/v1/devices/{id}` | viewer | devices with their latest status |
//! | GET | `/api/v1/devices/{id}/desired` | viewer | the last signed desired state |
//! | POST | `/api/v1/devices/{id}/labels` | operator | set / remove operator labels |
//! | GET | `/api/v1/groups`, `/api/v1/groups/{name}` | viewer | groups |
//! | POST | `/api/v1/groups` | admin | create a group |
//! | POST | `/api/v1/groups/{name}/members` | admin | add explicit members |
//! | POST | `/api/v1/groups/{name}/follow` | admin | follow a channel for an app |
//! | POST | `/api/v1/channels/{channel}/releases` | operator | publish a signed release to a channel |
//! | GET | `/api/v1/releases` | viewer | releases |
//! | POST | `/api/v1/releases` | operator | add a signed release (verified) |
//! | GET | `/api/v1/rollouts`, `/api/v1/rollouts/{id}` | viewer | rollouts, one with per-device progress |
//! | POST | `/api/v1/rollouts` | operator | start a rollout |
//! | POST | `/api/v1/rollouts/plan` | operator | waves, excluded and offline devices of a rollout request; nothing kept or sent |
//! | POST | `/api/v1/rollouts/{id}/{action}` | operator | pause, resume, abort, undo |
//! | GET | `/api/v1/images/resolve?ref=` | viewer | tag → manifest digest |
//! | POST | `/api/v1/images/import` | operator | upload an image (the content module) |
//! | GET | `/api/v1/events?limit=` | viewer | the event log |
//! | GET | `/api/v1/audit?limit=&after=` | admin | the audit log |
//! | GET, POST | `/api/v1/tokens` | admin | list API tokens (never a token or its hash); create one (the answer holds the token, once) |
//! | DELETE | `/api/v1/tokens/{name}` | admin | revoke a token (never the last admin token) |

pub mod access;
pub mod audit;
pub mod auth;
pub mod tokens;
pub mod types;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_protocol::{GroupName, ImageRef};
use serde::Deserialize;

use crate::fleet::ports::ImageResolver;
use crate::fleet::rollout::{Action, UnknownAction};
use crate::fleet::{
    AddMembers, CreateGroup, CreateRollout, DeviceView, ErrorKind, Fleet, FleetError,
    FollowChannel, GroupView, PlanView, PublishView, ReleaseView, RolloutView, SetLabels,
};
use crate::store::{Channel, RolloutId};
use access::{ADMIN, OPERATOR, Routes, VIEWER};
pub use types::ErrorCode;
use types::ResolveView;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub fleet: Fleet,
    pub resolver: Arc<dyn ImageResolver>,
}

/// An API error: HTTP status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let (status, code) = match (&e, e.kind()) {
            (FleetError::Untrusted { source }, _) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::Refused {
                    reason: source.code(),
                },
            ),
            (_, ErrorKind::NotFound) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            (_, ErrorKind::Conflict) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            (_, ErrorKind::Invalid) => (StatusCode::BAD_REQUEST, ErrorCode::Invalid),
            (_, ErrorKind::Untrusted | ErrorKind::Internal) => {
                tracing::error!(error = %e, "request failed");
                let code = match &e {
                    FleetError::Store(_) => ErrorCode::Store,
                    FleetError::Director(_) => ErrorCode::Director,
                    _ => ErrorCode::Internal,
                };
                (StatusCode::INTERNAL_SERVER_ERROR, code)
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(types::ErrorBody {
                code: self.code,
                message: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn parse<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("{what}: {e}"),
        )
    })
}

/// Every API route (under `/api/v1`) with the role it needs: the one
/// place a route is added. Enrollment goes here as [`access::Access::Public`],
/// routes for devices as [`access::Access::Device`].
pub fn routes() -> Routes<ApiState> {
    Routes::new()
        .get("/devices", VIEWER, devices)
        .get("/devices/{id}", VIEWER, device)
        .get("/devices/{id}/desired", VIEWER, device_desired)
        .post("/devices/{id}/labels", OPERATOR, set_labels)
        .get("/groups", VIEWER, groups)
        .post("/groups", ADMIN, create_group)
        .get("/groups/{name}", VIEWER, group)
        .post("/groups/{name}/members", ADMIN, add_members)
        .post("/groups/{name}/follow", ADMIN, follow)
        .post("/channels/{channel}/releases", OPERATOR, publish_release)
        .get("/releases", VIEWER, releases)
        .post("/releases", OPERATOR, add_release)
        .get("/rollouts", VIEWER, rollouts)
        .post("/rollouts", OPERATOR, start_rollout)
        .post("/rollouts/plan", OPERATOR, plan_rollout)
        .get("/rollouts/{id}", VIEWER, rollout)
        .post("/rollouts/{id}/{action}", OPERATOR, rollout_action)
        .get("/images/resolve", VIEWER, resolve)
        .get("/events", VIEWER, events)
        .get("/audit", ADMIN, audit::list)
        .get("/tokens", ADMIN, tokens::list_tokens)
        .post("/tokens", ADMIN, tokens::create_token)
        .delete("/tokens/{name}", ADMIN, tokens::revoke_token)
}

/// `/healthz` and the API routes; the server puts its whole router behind
/// [`audit::guarded`], which identifies callers and writes the audit log.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", routes().into_router().with_state(state))
}

/// `/metrics`: the Prometheus exposition, without a token (as Prometheus
/// scrapes it; see `control-plane/METRICS.md`).
/// With `deltas`, the layer-delta counters are exposed too.
/// With `ca_not_after`, the fleet CA's expiry too.
pub fn metrics_router(
    fleet: Fleet,
    deltas: Option<crate::content::Deltas>,
    ca_not_after: Option<u64>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((fleet, deltas, ca_not_after))
}

type MetricsState = (Fleet, Option<crate::content::Deltas>, Option<u64>);

async fn metrics(
    State((fleet, deltas, ca_not_after)): State<MetricsState>,
) -> Result<Response, ApiError> {
    let mut text = crate::metrics::scrape(&fleet).await?;
    if let Some(d) = deltas {
        text.push_str(&d.render_metrics());
    }
    if let Some(not_after) = ca_not_after {
        text.push_str(&format!(
            "# HELP fleet_ca_expiry_timestamp_seconds When the fleet CA expires (unix seconds).\n\
             # TYPE fleet_ca_expiry_timestamp_seconds gauge\n\
             fleet_ca_expiry_timestamp_seconds {not_after}\n"
        ));
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}

async fn devices(State(s): State<ApiState>) -> ApiResult<Vec<DeviceView>> {
    Ok(Json(s.fleet.devices().await?))
}

async fn device(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<DeviceView> {
    Ok(Json(s.fleet.device(parse("device id", &id)?).await?))
}

async fn device_desired(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let bytes = s.fleet.device_desired(parse("device id", &id)?).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

async fn set_labels(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(req): Json<SetLabels>,
) -> ApiResult<DeviceView> {
    Ok(Json(
        s.fleet.set_labels(parse("device id", &id)?, req).await?,
    ))
}

async fn groups(State(s): State<ApiState>) -> ApiResult<Vec<GroupView>> {
    Ok(Json(s.fleet.groups().await?))
}

async fn group(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult<GroupView> {
    Ok(Json(
        s.fleet
            .group(parse::<GroupName>("group name", &name)?)
            .await?,
    ))
}

async fn create_group(
    State(s): State<ApiState>,
    Json(req): Json<CreateGroup>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.fleet.create_group(req).await?)))
}

async fn add_members(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Json(req): Json<AddMembers>,
) -> ApiResult<GroupView> {
    Ok(Json(
        s.fleet
            .add_members(parse("group name", &name)?, req)
            .await?,
    ))
}

async fn follow(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Json(req): Json<FollowChannel>,
) -> ApiResult<GroupView> {
    Ok(Json(
        s.fleet.follow(parse("group name", &name)?, req).await?,
    ))
}

async fn publish_release(
    State(s): State<ApiState>,
    Path(channel): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<PublishView>), ApiError> {
    let channel = parse::<Channel>("channel", &channel)?;
    Ok((
        StatusCode::CREATED,
        Json(s.fleet.publish_release(channel, body.to_vec()).await?),
    ))
}

async fn releases(State(s): State<ApiState>) -> ApiResult<Vec<ReleaseView>> {
    Ok(Json(s.fleet.releases().await?))
}

async fn add_release(
    State(s): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.fleet.add_release(body.to_vec()).await?),
    ))
}

async fn rollouts(State(s): State<ApiState>) -> ApiResult<Vec<RolloutView>> {
    Ok(Json(s.fleet.rollouts().await?))
}

async fn start_rollout(
    State(s): State<ApiState>,
    Json(req): Json<CreateRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.fleet.start_rollout(req).await?)))
}

async fn plan_rollout(
    State(s): State<ApiState>,
    Json(req): Json<CreateRollout>,
) -> ApiResult<PlanView> {
    Ok(Json(s.fleet.plan_rollout(req).await?))
}

async fn rollout(State(s): State<ApiState>, Path(id): Path<String>) -> ApiResult<RolloutView> {
    Ok(Json(
        s.fleet
            .rollout(parse::<RolloutId>("rollout id", &id)?)
            .await?,
    ))
}

async fn rollout_action(
    State(s): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<RolloutView> {
    let id: RolloutId = parse("rollout id", &id)?;
    let action: Action = action.parse().map_err(|e: UnknownAction| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, e.to_string())
    })?;
    Ok(Json(s.fleet.rollout_action(id, action).await?))
}

#[derive(Deserialize)]
struct ResolveQuery {
    #[serde(rename = "ref")]
    reference: String,
}

async fn resolve(
    State(s): State<ApiState>,
    Query(q): Query<ResolveQuery>,
) -> ApiResult<ResolveView> {
    let image = ImageRef::parse(&q.reference).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("image reference {:?}: {e}", q.reference),
        )
    })?;
    let digest = s.resolver.resolve(&image).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unresolved,
            fleet_protocol::report(&e),
        )
    })?;
    Ok(Json(ResolveView {
        image: image.to_string(),
        repository: image.name(),
        digest,
    }))
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn events(
    State(s): State<ApiState>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Vec<crate::store::EventRecord>> {
    Ok(Json(
        s.fleet.events(q.limit.unwrap_or(100).min(10_000)).await?,
    ))
}
