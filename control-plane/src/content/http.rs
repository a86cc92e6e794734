//! HTTP: the OCI distribution pull API (`/v2/`) and the import endpoint.

use std::collections::HashMap;
use std::io::SeekFrom;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use fleet_protocol::Digest;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio_util::io::ReaderStream;

use super::delta::{DeltaOptions, Deltas, Lookup, Outcome, parse_bases};
use super::range::{ByteRange, parse_range};
use super::{ContentCode, ContentError, ContentStore, import_archive, validate_repository};

/// The largest upload `POST /api/v1/images/import` accepts.
pub const MAX_IMPORT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

const API_VERSION: &str = "Docker-Distribution-API-Version";
const CONTENT_DIGEST: &str = "Docker-Content-Digest";
const STREAM_CHUNK: usize = 64 * 1024;

#[derive(Clone)]
struct Pull {
    store: ContentStore,
    deltas: Deltas,
}

/// The OCI distribution pull API under `/v2/`: base check, manifests (by tag
/// or digest), blobs (with HTTP Range) and tag lists. Repository names may
/// contain slashes. Pushes are refused (`UNSUPPORTED`).
pub fn router(store: ContentStore) -> Router {
    router_with_deltas(Deltas::new(store, DeltaOptions::default()))
}

/// [`router`] serving layer deltas from `deltas` under
/// `/v2/<name>/deltas/<layer digest>?bases=<diff_id>,...` (protocol/DELTA.md).
pub fn router_with_deltas(deltas: Deltas) -> Router {
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(Pull {
            store: deltas.store().clone(),
            deltas,
        })
}

async fn base() -> Response {
    with_api_version((StatusCode::OK, axum::Json(json!({}))).into_response())
}

fn with_api_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

/// A distribution API error: status, code and message as the spec lists them.
struct ApiError {
    status: StatusCode,
    code: ContentCode,
    message: String,
    detail: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, code: ContentCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            detail: serde_json::Value::Null,
        }
    }

    fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    fn name_unknown(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ContentCode::NameUnknown,
            "repository name not known to registry",
        )
        .detail(json!({ "name": name }))
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "content endpoint failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ContentCode::Unspecified,
            err.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "code": self.code, "message": self.message, "detail": self.detail }]
        });
        (self.status, axum::Json(body)).into_response()
    }
}

async fn dispatch(
    State(state): State<Pull>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let response = match route(&state, &method, &rest, &query, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    with_api_version(response)
}

async fn route(
    state: &Pull,
    method: &Method,
    rest: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let rest = rest.trim_start_matches('/');
    let head = *method == Method::HEAD;
    if *method != Method::GET && !head {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ContentCode::Unsupported,
            "this registry is read-only: import images with `fleetctl image import`",
        ));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        check_name(name)?;
        return tags_list(state, name, query);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        check_name(name)?;
        return manifest(state, name, reference, head).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/deltas/") {
        check_name(name)?;
        return delta(state, name, digest, query, head, headers).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        check_name(name)?;
        return blob(state, name, digest, head, headers).await;
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        ContentCode::Unsupported,
        format!("no such endpoint: /v2/{rest}"),
    ))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    validate_repository(name).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ContentCode::NameInvalid,
            e.to_string(),
        )
        .detail(json!({ "name": name }))
    })
}

fn tags_list(
    state: &Pull,
    name: &str,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let tags = state
        .store
        .tags(name)
        .ok_or_else(|| ApiError::name_unknown(name))?;
    let last = query.get("last");
    let mut tags: Vec<String> = tags
        .into_iter()
        .filter(|t| last.is_none_or(|l| t > l))
        .collect();
    let limit = query.get("n").and_then(|n| n.parse::<usize>().ok());
    let mut response_headers = HeaderMap::new();
    if let Some(n) = limit
        && tags.len() > n
    {
        tags.truncate(n);
        if let Some(last) = tags.last() {
            let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
            if let Ok(v) = HeaderValue::from_str(&link) {
                response_headers.insert(header::LINK, v);
            }
        }
    }
    let body = json!({ "name": name, "tags": tags });
    Ok((response_headers, axum::Json(body)).into_response())
}

async fn manifest(
    state: &Pull,
    name: &str,
    reference: &str,
    head: bool,
) -> Result<Response, ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ContentCode::ManifestUnknown,
            "manifest unknown to registry",
        )
        .detail(json!({ "name": name, "reference": reference }))
    };
    let lookup = |store: &ContentStore| -> Option<(Digest, super::ManifestEntry)> {
        let digest = if reference.contains(':') {
            Digest::new(reference).ok()?
        } else {
            store.resolve(name, reference)?
        };
        let entry = store.manifest(name, &digest)?;
        Some((digest, entry))
    };
    let Some((digest, entry)) = lookup(&state.store) else {
        return Err(if state.store.has_repository(name) {
            unknown()
        } else {
            ApiError::name_unknown(name)
        });
    };
    let mut headers = HeaderMap::new();
    insert(&mut headers, header::CONTENT_TYPE, &entry.media_type);
    insert(&mut headers, CONTENT_DIGEST, digest.as_str());
    insert(&mut headers, header::ETAG, &format!("\"{digest}\""));
    insert(
        &mut headers,
        header::CONTENT_LENGTH,
        &entry.size.to_string(),
    );
    if head {
        return Ok((headers, Body::empty()).into_response());
    }
    let path = state.store.blob_path(&digest);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(ContentError::io("read", path, e)))?;
    Ok((headers, bytes).into_response())
}

fn insert(headers: &mut HeaderMap, name: impl header::IntoHeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

async fn blob(
    state: &Pull,
    name: &str,
    digest: &str,
    head: bool,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let digest = Digest::new(digest).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ContentCode::DigestInvalid,
            e.to_string(),
        )
        .detail(json!({ "digest": digest }))
    })?;
    let size = state.store.blob_size(&digest);
    if !state.store.has_repository(name) {
        return Err(ApiError::name_unknown(name));
    }
    let Some(len) = size else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ContentCode::BlobUnknown,
            "blob unknown to registry",
        )
        .detail(json!({ "name": name, "digest": digest })));
    };

    serve_blob(
        &state.store,
        &digest,
        len,
        head,
        request_headers,
        HeaderMap::new(),
    )
    .await
}

/// Answers a GET/HEAD of stored blob `digest` (`len` bytes), honouring a
/// single `Range`; `headers` go into the answer too.
async fn serve_blob(
    store: &ContentStore,
    digest: &Digest,
    len: u64,
    head: bool,
    request_headers: &HeaderMap,
    mut headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = parse_range(
        request_headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok()),
        len,
    );
    insert(
        &mut headers,
        header::CONTENT_TYPE,
        "application/octet-stream",
    );
    insert(&mut headers, CONTENT_DIGEST, digest.as_str());
    insert(&mut headers, header::ETAG, &format!("\"{digest}\""));
    insert(&mut headers, header::ACCEPT_RANGES, "bytes");
    let (status, start, count) = match range {
        ByteRange::Full => (StatusCode::OK, 0, len),
        ByteRange::Partial { start, end } => {
            insert(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes {start}-{end}/{len}"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        ByteRange::Unsatisfiable => {
            insert(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes */{len}"),
            );
            let err = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ContentCode::RangeInvalid,
                format!("range not satisfiable for a blob of {len} bytes"),
            );
            return Ok((headers, err).into_response());
        }
    };
    insert(&mut headers, header::CONTENT_LENGTH, &count.to_string());
    if head {
        return Ok((status, headers, Body::empty()).into_response());
    }
    let path = store.blob_path(digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(ContentError::io("open", &path, e)))?;
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::internal(ContentError::io("seek", &path, e)))?;
    }
    let stream = ReaderStream::with_capacity(file.take(count), STREAM_CHUNK);
    Ok((status, headers, Body::from_stream(stream)).into_response())
}

/// Header naming the diff_id a delta rebuilds.
pub const DELTA_TARGET: &str = fleet_protocol::delta::TARGET_HEADER;
/// Header with the size of the whole layer blob a delta replaces.
pub const DELTA_LAYER_SIZE: &str = fleet_protocol::delta::LAYER_SIZE_HEADER;
/// Seconds a device waits before asking again for a delta being computed.
pub const DELTA_RETRY_SECS: u64 = 2;

/// `GET|HEAD /v2/<name>/deltas/<layer digest>?bases=<diff_id>,...`: the
/// delta rebuilding that layer's tar from the named base layers (200/206,
/// Range honoured like a blob), 202 `DELTA_PENDING` with `Retry-After`
/// while it is computed, or 404 `DELTA_UNAVAILABLE` (pull the layer).
async fn delta(
    state: &Pull,
    name: &str,
    digest: &str,
    query: &HashMap<String, String>,
    head: bool,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let target = Digest::new(digest).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ContentCode::DigestInvalid,
            e.to_string(),
        )
        .detail(json!({ "digest": digest }))
    })?;
    let bases = parse_bases(query.get("bases").map(String::as_str)).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ContentCode::DeltaBasesInvalid,
            "bases= must list 1 to 128 comma-separated diff_ids (sha256:<hex>)",
        )
    })?;
    if !state.store.has_repository(name) {
        return Err(ApiError::name_unknown(name));
    }
    let unavailable = |reason: String| {
        ApiError::new(StatusCode::NOT_FOUND, ContentCode::DeltaUnavailable, reason)
            .detail(json!({ "name": name, "digest": target }))
    };
    match state.deltas.lookup(&target, &bases) {
        Lookup::Pending => {
            let mut headers = HeaderMap::new();
            insert(
                &mut headers,
                header::RETRY_AFTER,
                &DELTA_RETRY_SECS.to_string(),
            );
            let err = ApiError::new(
                StatusCode::ACCEPTED,
                ContentCode::DeltaPending,
                "the delta is being computed: ask again after Retry-After seconds",
            );
            Ok((headers, err).into_response())
        }
        Lookup::Done(Outcome::NotWorth {
            delta_bytes,
            layer_bytes,
        }) => Err(unavailable(format!(
            "a delta of {delta_bytes} bytes is not clearly smaller than the {layer_bytes}-byte layer"
        ))),
        Lookup::Done(Outcome::Failed { reason }) => Err(unavailable(reason)),
        Lookup::Done(Outcome::Ready {
            delta,
            delta_bytes,
            layer_bytes,
            target: diff_id,
        }) => {
            let mut headers = HeaderMap::new();
            insert(&mut headers, DELTA_TARGET, diff_id.as_str());
            insert(&mut headers, DELTA_LAYER_SIZE, &layer_bytes.to_string());
            let response = serve_blob(
                &state.store,
                &delta,
                delta_bytes,
                head,
                request_headers,
                headers,
            )
            .await?;
            if !head && response.status().is_success() {
                state.deltas.count_served(&response, layer_bytes);
            }
            Ok(response)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ImportParams {
    repository: Option<String>,
    tag: Option<String>,
}

/// `POST /api/v1/images/import?repository=R&tag=T`: the request body is an
/// OCI archive or a `docker save` tar, streamed to a temporary file and
/// imported. Answers the [`super::ImportSummary`] as JSON, or
/// `{"code", "message"}` with 400 (bad archive), 413 (too large) or 500.
/// Mount it behind authentication.
pub fn import_router(store: ContentStore) -> Router {
    Router::new()
        .route("/api/v1/images/import", post(import))
        .layer(DefaultBodyLimit::disable())
        .with_state(store)
}

async fn import(
    State(store): State<ContentStore>,
    Query(params): Query<ImportParams>,
    body: Body,
) -> Response {
    match receive_and_import(&store, params, body).await {
        Ok(summary) => (StatusCode::OK, axum::Json(summary)).into_response(),
        Err(e) => {
            let status = match &e {
                ContentError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                e if e.is_client_error() => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(error = %e, "image import refused");
            let body = json!({ "code": e.code(), "message": e.to_string() });
            (status, axum::Json(body)).into_response()
        }
    }
}

async fn receive_and_import(
    store: &ContentStore,
    params: ImportParams,
    mut body: Body,
) -> Result<super::ImportSummary, ContentError> {
    let tmp_dir = store.tmp_dir().to_owned();
    let tmp = tokio::task::spawn_blocking(move || {
        tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(|e| ContentError::io("create", &tmp_dir, e))
    })
    .await??;
    let path = tmp.path().to_owned();
    let std_file = tmp
        .reopen()
        .map_err(|e| ContentError::io("open", &path, e))?;
    let mut file = tokio::fs::File::from_std(std_file);
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ContentError::io("receive upload into", &path, std::io::Error::other(e))
        })?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            if received > MAX_IMPORT_BYTES {
                return Err(ContentError::TooLarge {
                    limit: MAX_IMPORT_BYTES,
                });
            }
            file.write_all(&data)
                .await
                .map_err(|e| ContentError::io("write", &path, e))?;
        }
    }
    file.flush()
        .await
        .map_err(|e| ContentError::io("write", &path, e))?;
    drop(file);
    tracing::info!(bytes = received, repository = ?params.repository, tag = ?params.tag, "importing uploaded image");
    let summary = import_archive(
        store,
        &path,
        params.repository.as_deref(),
        params.tag.as_deref(),
    )
    .await;
    // The upload is removed when `tmp` drops, whatever the outcome.
    drop(tmp);
    summary
}
