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
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::article_id::ArticleId;
use crate::articles;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, PublishErrors};
use crate::state::AppState;
use crate::validation::{ArticleFields, ArticleInput, ArticlePatch};

/// A JSON body, or why axum refused it (turned into our JSON error).
type Body<T> = Result<Json<T>, JsonRejection>;
/// An article answered as JSON, or an error answer.
type Answer = Result<Json<Article>, ApiError>;

/// The write routes, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_article))
        .routes(routes!(replace_article, patch_article, delete_article))
        .routes(routes!(publish_article))
}

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
    let article_id = event.data.id.to_string();
    let new_event = NewEvent {
        event_id,
        aggregate_type: ArticleEvent::AGGREGATE_TYPE,
        aggregate_id: &article_id,
        event_type: event_type.as_str(),
        topic: None,
        headers: &[],
        payload: &payload,
        trace_context: &trace_context,
    };
    // Notifying inside the transaction would serialise the commits of concurrent requests.
    outbox::enqueue_without_notify(&transaction, &new_event).await?;
    transaction.commit().await?;
    state.relay_waker.wake();
    state.metrics.writes.with_label_values(&[event_type.as_str()]).inc();
    let article = event.data;
    tracing::info!(
        article_id = article.id, %event_type, %event_id, title = %article.title,
        "article change committed with its outbox event"
    );
    Ok(article)
}

#[utoipa::path(post, path = "/articles", summary = "Create a draft article", request_body = ArticleInput,
    responses((status = CREATED, description = "Created, with its `article.created` event", body = Article),
        BodyErrors))]
async fn create_article(
    State(state): State<AppState>,
    body: Body<ArticleInput>,
) -> Result<(StatusCode, Json<Article>), ApiError> {
    let fields = body?.0.validate()?;
    let article = commit_with_event(&state, EventType::Created, async |transaction| {
        Ok(articles::insert(transaction, &fields).await?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(article)))
}

#[utoipa::path(put, path = "/articles/{id}", summary = "Replace an article's fields", params(ArticleId),
    request_body = ArticleInput,
    responses((status = OK, description = "Updated, with its `article.updated` event", body = Article), BodyErrors))]
async fn replace_article(
    State(state): State<AppState>,
    ArticleId { id }: ArticleId,
    body: Body<ArticleInput>,
) -> Answer {
    let fields = body?.0.validate()?;
    update_article(&state, id, |_current| Ok(fields)).await
}

#[utoipa::path(patch, path = "/articles/{id}", summary = "Change some of an article's fields", params(ArticleId),
    request_body = ArticlePatch,
    responses((status = OK, description = "Updated, with its `article.updated` event", body = Article), BodyErrors))]
async fn patch_article(State(state): State<AppState>, ArticleId { id }: ArticleId, body: Body<ArticlePatch>) -> Answer {
    let patch = body?.0;
    update_article(&state, id, |current| patch.apply_to(current)).await
}

/// `PUT` and `PATCH`: locks the article, computes its new fields from the current ones, and writes
/// them with an `article.updated` event.
async fn update_article(
    state: &AppState,
    id: i64,
    new_fields: impl FnOnce(&Article) -> Result<ArticleFields, ApiError>,
) -> Answer {
    let article = commit_with_event(state, EventType::Updated, async |transaction| {
        let current = articles::find_for_update(transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))?;
        let fields = new_fields(&current)?;
        articles::update(transaction, id, &fields).await?.ok_or(ApiError::ArticleNotFound(id))
    })
    .await?;
    Ok(Json(article))
}

#[utoipa::path(post, path = "/articles/{id}/publish", summary = "Publish a draft", params(ArticleId),
    responses((status = OK, description = "Published, with its `article.published` event", body = Article),
        PublishErrors))]
async fn publish_article(State(state): State<AppState>, ArticleId { id }: ArticleId) -> Answer {
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

#[utoipa::path(delete, path = "/articles/{id}", summary = "Delete an article", params(ArticleId),
    responses((status = NO_CONTENT, description = "Deleted, with its `article.deleted` event")))]
async fn delete_article(State(state): State<AppState>, ArticleId { id }: ArticleId) -> Result<StatusCode, ApiError> {
    commit_with_event(&state, EventType::Deleted, async |transaction| {
        articles::delete(transaction, id).await?.ok_or(ApiError::ArticleNotFound(id))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
