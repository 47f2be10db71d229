//! HTTP routes. Each write handler owns its transaction: it changes the article, then
//! [`commit_with_event`] adds the outbox row to the same transaction and commits both.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deadpool_postgres::Transaction;
use serde::{Deserialize, Serialize};
use shared::telemetry::HeaderCarrier;
use shared::{Article, EventType};
use tracing::Instrument as _;

use crate::articles::{self, ListFilter};
use crate::error::ApiError;
use crate::startup::AppState;
use crate::validation::{ArticleInput, ArticlePatch};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_PER_PAGE: i64 = 20;
pub const MAX_PER_PAGE: i64 = 100;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/articles", get(list_articles).post(create_article))
        .route("/articles/{id}", get(get_article).put(replace_article).patch(patch_article).delete(delete_article))
        .route("/articles/{id}/publish", post(publish_article))
        .route("/metrics", get(metrics));
    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(shared::ops::health))
        .route("/ready", get(ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), require_token_for_writes))
        .layer(middleware::from_fn_with_state(state.clone(), observe_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

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

/// Parses `{id}`: a positive 64-bit integer, else 400.
fn article_id(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::InvalidParameter {
            field: "id",
            message: format!("article id must be a positive 64-bit integer, got {raw:?}"),
        }),
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

async fn get_article(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Article>, ApiError> {
    let id = article_id(&id)?;
    let client = state.client().await?;
    articles::find(&client, id).await?.map(Json).ok_or(ApiError::ArticleNotFound(id))
}

async fn replace_article(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ArticleInput>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let id = article_id(&id)?;
    let fields = body?.0.validate()?;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = articles::update(&transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Updated, &article).await?;
    Ok(Json(article))
}

async fn patch_article(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ArticlePatch>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let id = article_id(&id)?;
    let patch = body?.0;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let current = articles::find_for_update(&transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
    let fields = patch.apply_to(&current)?;
    let article = articles::update(&transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Updated, &article).await?;
    Ok(Json(article))
}

async fn publish_article(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Article>, ApiError> {
    let id = article_id(&id)?;
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

async fn delete_article(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = article_id(&id)?;
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = articles::delete(&transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
    commit_with_event(&state, transaction, EventType::Deleted, &article).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /articles`.
#[derive(Debug, Deserialize)]
struct ListParams {
    page: Option<i64>,
    per_page: Option<i64>,
    status: Option<String>,
    author: Option<String>,
    category: Option<String>,
}

/// Answer of `GET /articles`.
#[derive(Debug, Serialize)]
struct ArticlePage {
    items: Vec<Article>,
    page: i64,
    per_page: i64,
    total: i64,
    pages: i64,
}

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
    let filter = ListFilter { status: params.status, author: params.author, category: params.category };
    let client = state.client().await?;
    let (items, total) = articles::list(&client, &filter, per_page, (page - 1) * per_page).await?;
    Ok(Json(ArticlePage { items, page, per_page, total, pages: (total + per_page - 1) / per_page }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    shared::ops::metrics_response(&state.metrics.registry)
}

async fn ready(State(state): State<AppState>) -> Response {
    let result = if state.schema_ready() {
        shared::ops::database_answers(&state.pool).await
    } else {
        Err("database schema not applied yet".to_owned())
    };
    shared::ops::readiness_response(result)
}
