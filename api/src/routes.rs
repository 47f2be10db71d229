//! HTTP routes. Each write handler owns its transaction: it changes the article, then
//! [`commit_with_event`] adds the outbox row to the same transaction and commits both.

use std::sync::LazyLock;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use shared::ops::ProbeAnswer;
use shared::telemetry::HeaderCarrier;
use shared::{Article, EventType};
use tracing::Instrument as _;
use utoipa::{IntoParams, OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::articles::{self, ListFilter};
use crate::error::ApiError;
use crate::openapi::{self, ArticleIdErrors, BodyErrors, DatabaseErrors, ListErrors, PublishErrors, TokenErrors};
use crate::startup::AppState;
use crate::validation::{ArticleInput, ArticlePatch};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_PER_PAGE: i64 = 20;
pub const MAX_PER_PAGE: i64 = 100;

pub fn router(state: AppState) -> Router {
    let (router, _) = documented_routes().split_for_parts();
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), require_token_for_writes))
        .layer(middleware::from_fn_with_state(state.clone(), observe_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The routes and their OpenAPI operations, registered together so the document cannot drift
/// from what is served.
fn documented_routes() -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::new()
        .routes(routes!(list_articles, create_article))
        .routes(routes!(get_article, replace_article, patch_article, delete_article))
        .routes(routes!(publish_article))
        .routes(routes!(metrics))
        .routes(routes!(openapi_document));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// The OpenAPI document of this API, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().split_for_parts().1
}

/// [`openapi`] as JSON, built once.
static OPENAPI_JSON: LazyLock<String> =
    LazyLock::new(|| openapi().to_json().expect("an OpenAPI document always serialises"));

/// Wraps every request in a server span (continuing the caller's W3C trace context, if any),
/// counts and times it, and answers 503 when it outlives the request timeout.
async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        article.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    shared::telemetry::continue_trace(&span, &HeaderCarrier(request.headers()));
    let response = match tokio::time::timeout(state.request_timeout, next.run(request)).instrument(span.clone()).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let metrics = &state.metrics;
    metrics.requests.with_label_values(&[&method, &route, status.as_str()]).inc();
    metrics.request_duration.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    response
}

/// With `API_TOKEN` set, refuses writes (any method but GET, HEAD, OPTIONS) without
/// `Authorization: Bearer <token>` (compared in constant time).
async fn require_token_for_writes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.api_token else { return next.run(request).await };
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// The `{id}` of `/articles/{id}`: a positive 64-bit integer, else a JSON 400 naming it. Also
/// its OpenAPI description (`params(ArticleId)`).
#[derive(Debug, Clone, Copy, IntoParams)]
#[into_params(parameter_in = Path)]
struct ArticleId {
    /// The article's id.
    #[param(minimum = 1)]
    id: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for ArticleId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = |shown: &str| ApiError::InvalidParameter {
            field: "id",
            message: format!("article id must be a positive 64-bit integer, got {shown}"),
        };
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid("a segment that is not valid percent-encoded UTF-8"))?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self { id }),
            _ => Err(invalid(&format!("{raw:?}"))),
        }
    }
}

/// Writes the event for `article` into the outbox on `transaction`, then commits both.
async fn commit_with_event(
    state: &AppState,
    transaction: Transaction<'_>,
    event_type: EventType,
    article: &Article,
) -> Result<(), ApiError> {
    tracing::Span::current().record("article.id", article.id);
    let event_id = shared::outbox::enqueue(&transaction, event_type, article).await?;
    transaction.commit().await?;
    state.metrics.writes.with_label_values(&[event_type.as_str()]).inc();
    tracing::info!(article_id = article.id, %event_type, %event_id, title = %article.title, "article change committed with its outbox event");
    Ok(())
}

#[utoipa::path(
    post,
    path = "/articles",
    tag = "articles",
    summary = "Create a draft article",
    request_body = ArticleInput,
    security(("api_token" = [])),
    responses(
        (status = CREATED, description = "Created, with its `article.created` event", body = Article),
        BodyErrors, TokenErrors, DatabaseErrors,
    )
)]
async fn create_article(
    State(state): State<AppState>,
    body: Result<Json<ArticleInput>, JsonRejection>,
) -> Result<(StatusCode, Json<Article>), ApiError> {
    let fields = body?.0.validate()?;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = articles::insert(&transaction, &fields).await?;
    commit_with_event(&state, transaction, EventType::Created, &article).await?;
    Ok((StatusCode::CREATED, Json(article)))
}

#[utoipa::path(
    get,
    path = "/articles/{id}",
    tag = "articles",
    summary = "One article",
    params(ArticleId),
    responses((status = OK, description = "The article", body = Article), ArticleIdErrors, DatabaseErrors)
)]
async fn get_article(State(state): State<AppState>, ArticleId { id }: ArticleId) -> Result<Json<Article>, ApiError> {
    let client = state.client().await?;
    articles::find(&client, id).await?.map(Json).ok_or(ApiError::ArticleNotFound(id))
}

#[utoipa::path(
    put,
    path = "/articles/{id}",
    tag = "articles",
    summary = "Replace an article's fields",
    params(ArticleId),
    request_body = ArticleInput,
    security(("api_token" = [])),
    responses(
        (status = OK, description = "Updated, with its `article.updated` event", body = Article),
        ArticleIdErrors, BodyErrors, TokenErrors, DatabaseErrors,
    )
)]
async fn replace_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
    body: Result<Json<ArticleInput>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let fields = body?.0.validate()?;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = articles::update(&transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Updated, &article).await?;
    Ok(Json(article))
}

#[utoipa::path(
    patch,
    path = "/articles/{id}",
    tag = "articles",
    summary = "Change some of an article's fields",
    params(ArticleId),
    request_body = ArticlePatch,
    security(("api_token" = [])),
    responses(
        (status = OK, description = "Updated, with its `article.updated` event", body = Article),
        ArticleIdErrors, BodyErrors, TokenErrors, DatabaseErrors,
    )
)]
async fn patch_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
    body: Result<Json<ArticlePatch>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let patch = body?.0;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let current = articles::find_for_update(&transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
    let fields = patch.apply_to(&current)?;
    let article = articles::update(&transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Updated, &article).await?;
    Ok(Json(article))
}

#[utoipa::path(
    post,
    path = "/articles/{id}/publish",
    tag = "articles",
    summary = "Publish a draft",
    params(ArticleId),
    security(("api_token" = [])),
    responses(
        (status = OK, description = "Published, with its `article.published` event", body = Article),
        ArticleIdErrors, PublishErrors, TokenErrors, DatabaseErrors,
    )
)]
async fn publish_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
) -> Result<Json<Article>, ApiError> {
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let Some(article) = articles::publish(&transaction, id).await? else {
        return Err(match articles::find(&transaction, id).await? {
            Some(_) => ApiError::AlreadyPublished(id),
            None => ApiError::ArticleNotFound(id),
        });
    };
    commit_with_event(&state, transaction, EventType::Published, &article).await?;
    Ok(Json(article))
}

#[utoipa::path(
    delete,
    path = "/articles/{id}",
    tag = "articles",
    summary = "Delete an article",
    params(ArticleId),
    security(("api_token" = [])),
    responses(
        (status = NO_CONTENT, description = "Deleted, with its `article.deleted` event"),
        ArticleIdErrors, TokenErrors, DatabaseErrors,
    )
)]
async fn delete_article(State(state): State<AppState>, ArticleId { id }: ArticleId) -> Result<StatusCode, ApiError> {
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = articles::delete(&transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Deleted, &article).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /articles`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Page number, from 1.
    #[param(minimum = 1, maximum = 1_000_000)]
    page: Option<i64>,
    /// Articles per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    per_page: Option<i64>,
    /// Only articles with this status.
    #[param(value_type = Option<shared::ArticleStatus>)]
    status: Option<String>,
    /// Only articles by this author (exact match).
    #[param(pattern = r"^[^\x00]*$")]
    author: Option<String>,
    /// Only articles in this category (exact match).
    #[param(pattern = r"^[^\x00]*$")]
    category: Option<String>,
}

/// Answer of `GET /articles`.
#[derive(Debug, Serialize, ToSchema)]
struct ArticlePage {
    items: Vec<Article>,
    page: i64,
    per_page: i64,
    /// Articles matching the filters, on all pages.
    total: i64,
    pages: i64,
}

#[utoipa::path(
    get,
    path = "/articles",
    tag = "articles",
    summary = "List articles in creation order (ascending id), with filters",
    params(ListParams),
    responses((status = OK, description = "One page of articles", body = ArticlePage), ListErrors, DatabaseErrors)
)]
async fn list_articles(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<ArticlePage>, ApiError> {
    let Query(params) = params?;
    let page = params.page.unwrap_or(1);
    if !(1..=1_000_000).contains(&page) {
        return Err(ApiError::InvalidParameter {
            field: "page",
            message: format!("page must be between 1 and 1000000, got {page}"),
        });
    }
    let per_page = params.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::InvalidParameter {
            field: "per_page",
            message: format!("per_page must be between 1 and {MAX_PER_PAGE}, got {per_page}"),
        });
    }
    if let Some(status) = &params.status
        && shared::ArticleStatus::parse(status).is_none()
    {
        return Err(ApiError::InvalidParameter {
            field: "status",
            message: format!("status must be \"draft\" or \"published\", got {status:?}"),
        });
    }
    for (field, value) in [("author", &params.author), ("category", &params.category)] {
        if value.as_deref().is_some_and(|value| value.contains('\0')) {
            // PostgreSQL cannot even compare text with a NUL in it; no article can match.
            return Err(ApiError::InvalidParameter {
                field,
                message: format!("{field} must not contain NUL characters"),
            });
        }
    }
    let filter = ListFilter { status: params.status, author: params.author, category: params.category };
    let client = state.client().await?;
    let (items, total) = articles::list(&client, &filter, per_page, (page - 1) * per_page).await?;
    Ok(Json(ArticlePage { items, page, per_page, total, pages: (total + per_page - 1) / per_page }))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    responses((status = OK, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    shared::ops::metrics_response(&state.metrics.registry)
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This document",
    responses((status = OK, description = "The OpenAPI document", body = serde_json::Value))
)]
async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON.as_str()).into_response()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = OK, description = "Alive", body = ProbeAnswer))
)]
async fn health() -> Response {
    shared::ops::health().await
}

#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    summary = "Readiness: the schema is applied and DB1 answers",
    responses(
        (status = OK, description = "Ready", body = ProbeAnswer),
        (status = SERVICE_UNAVAILABLE, description = "Not ready; `reason` says why", body = ProbeAnswer),
    )
)]
async fn ready(State(state): State<AppState>) -> Response {
    let result = if state.schema_ready() {
        shared::ops::database_answers(&state.pool).await
    } else {
        Err("database schema not applied yet".to_owned())
    };
    shared::ops::readiness_response(result)
}
