//! The write routes. Each one changes the article on a fresh transaction inside
//! [`commit_with_event`], which adds the change's outbox event to the same transaction and commits
//! both: a change is never visible without its event, nor an event without its change.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use chrono::Utc;
use deadpool_postgres::Transaction;
use events::{Article, ArticleEvent, EventType};
use outbox::NewEvent;
use uuid::Uuid;

use super::article_id::ArticleId;
use crate::articles;
use crate::error::ApiError;
use crate::openapi::{ArticleIdErrors, BodyErrors, DatabaseErrors, PublishErrors, TokenErrors};
use crate::state::AppState;
use crate::validation::{ArticleInput, ArticlePatch};

/// Runs `change` on a new transaction, writes the `event_type` event of the article it returns to
/// the outbox on the same transaction, and commits both.
async fn commit_with_event(
    state: &AppState,
    event_type: EventType,
    change: impl AsyncFnOnce(&Transaction<'_>) -> Result<Article, ApiError>,
) -> Result<Article, ApiError> {
    let mut client = state.client().await?;
    let transaction = client.transaction().await?;
    let article = change(&transaction).await?;
    tracing::Span::current().record("article.id", article.id);
    let event_id = Uuid::new_v4();
    let event = ArticleEvent { event_id: Some(event_id.to_string()), event_type, timestamp: Utc::now(), data: article };
    let payload = serde_json::to_string(&event).map_err(ApiError::Serialize)?;
    let trace_context: HashMap<String, String> = service_kit::telemetry::context_of(&tracing::Span::current());
    let new_event = NewEvent {
        event_id,
        article_id: event.data.id,
        event_type: event_type.as_str(),
        payload: &payload,
        trace_context: &trace_context,
    };
    outbox::enqueue(&transaction, &new_event).await?;
    transaction.commit().await?;
    state.metrics.writes.with_label_values(&[event_type.as_str()]).inc();
    let article = event.data;
    tracing::info!(article_id = article.id, %event_type, %event_id, title = %article.title, "article change committed with its outbox event");
    Ok(article)
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
pub(super) async fn create_article(
    State(state): State<AppState>,
    body: Result<Json<ArticleInput>, JsonRejection>,
) -> Result<(StatusCode, Json<Article>), ApiError> {
    let fields = body?.0.validate()?;
    let article = commit_with_event(&state, EventType::Created, async |transaction| {
        Ok(articles::insert(transaction, &fields).await?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(article)))
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
pub(super) async fn replace_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
    body: Result<Json<ArticleInput>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let fields = body?.0.validate()?;
    let article = commit_with_event(&state, EventType::Updated, async |transaction| {
        articles::update(transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))
    })
    .await?;
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
pub(super) async fn patch_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
    body: Result<Json<ArticlePatch>, JsonRejection>,
) -> Result<Json<Article>, ApiError> {
    let patch = body?.0;
    let article = commit_with_event(&state, EventType::Updated, async |transaction| {
        let current = articles::find_for_update(transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
        let fields = patch.apply_to(&current)?;
        articles::update(transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))
    })
    .await?;
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
pub(super) async fn publish_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
) -> Result<Json<Article>, ApiError> {
    let article = commit_with_event(&state, EventType::Published, async |transaction| {
        match articles::publish(transaction, id).await? {
            Some(article) => Ok(article),
            None if articles::find(transaction, id).await?.is_some() => Err(ApiError::AlreadyPublished(id)),
            None => Err(ApiError::ArticleNotFound(id)),
        }
    })
    .await?;
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
pub(super) async fn delete_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
) -> Result<StatusCode, ApiError> {
    commit_with_event(&state, EventType::Deleted, async |transaction| {
        articles::delete(transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
