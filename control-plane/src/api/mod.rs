//! The REST API (`/api/v1`, JSON, bearer tokens).
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | liveness (no token) |
//! | GET | `/metrics` | Prometheus metrics (no token; `http.metrics`) |
//! | GET | `/api/v1/devices`, `/api/v1/devices/{id}` | devices with their latest status |
//! | GET | `/api/v1/devices/{id}/desired` | the last signed desired state |
//! | POST | `/api/v1/devices/{id}/labels` | set / remove operator labels |
//! | GET, POST | `/api/v1/groups` | list, create |
//! | GET | `/api/v1/groups/{name}` | one group |
//! | POST | `/api/v1/groups/{name}/members` | add explicit members |
//! | POST | `/api/v1/groups/{name}/follow` | follow a channel for an app |
//! | POST | `/api/v1/channels/{channel}/releases` | publish a signed release to a channel |
//! | GET, POST | `/api/v1/releases` | list, add a signed release (verified) |
//! | GET, POST | `/api/v1/rollouts` | list, start |
//! | POST | `/api/v1/rollouts/plan` | waves, excluded and offline devices of a rollout request; nothing kept or sent |
//! | GET | `/api/v1/rollouts/{id}` | one rollout with per-device progress |
//! | POST | `/api/v1/rollouts/{id}/{pause,resume,abort,undo}` | operator actions |
//! | GET | `/api/v1/images/resolve?ref=` | tag → manifest digest |
//! | GET | `/api/v1/events?limit=` | the event log |

pub mod auth;
pub mod types;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

/// The API router; `auth` guards everything under `/api`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/devices", get(devices))
        .route("/devices/{id}", get(device))
        .route("/devices/{id}/desired", get(device_desired))
        .route("/devices/{id}/labels", post(set_labels))
        .route("/groups", get(groups).post(create_group))
        .route("/groups/{name}", get(group))
        .route("/groups/{name}/members", post(add_members))
        .route("/groups/{name}/follow", post(follow))
        .route("/channels/{channel}/releases", post(publish_release))
        .route("/releases", get(releases).post(add_release))
        .route("/rollouts", get(rollouts).post(start_rollout))
        .route("/rollouts/plan", post(plan_rollout))
        .route("/rollouts/{id}", get(rollout))
        .route("/rollouts/{id}/{action}", post(rollout_action))
        .route("/images/resolve", get(resolve))
        .route("/events", get(events))
        .route_layer(axum::middleware::from_fn_with_state(
            state.fleet.store().clone(),
            auth::require_token,
        ))
        .with_state(state);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", api)
}

/// `/metrics`: the Prometheus exposition, without a token (as Prometheus
/// scrapes it; see `control-plane/METRICS.md`).
/// With `deltas`, the layer-delta counters are exposed too.
pub fn metrics_router(fleet: Fleet, deltas: Option<crate::content::Deltas>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((fleet, deltas))
}

async fn metrics(
    State((fleet, deltas)): State<(Fleet, Option<crate::content::Deltas>)>,
) -> Result<Response, ApiError> {
    let mut text = crate::metrics::scrape(&fleet).await?;
    if let Some(d) = deltas {
        text.push_str(&d.render_metrics());
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
