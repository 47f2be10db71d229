//! The read routes: one article, and a filtered page of them.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use events::{Article, ArticleStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::article_id::ArticleId;
use crate::articles::{self, ListFilter};
use crate::error::ApiError;
use crate::openapi::ListErrors;
use crate::state::AppState;

/// The read routes, each with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_articles)).routes(routes!(get_article))
}

/// Articles per page when the query does not say.
pub const DEFAULT_PER_PAGE: i64 = 20;
/// Most articles one page may hold.
pub const MAX_PER_PAGE: i64 = 100;

#[utoipa::path(get, path = "/articles/{id}", summary = "One article", params(ArticleId),
    responses((status = OK, description = "The article", body = Article)))]
async fn get_article(State(state): State<AppState>, ArticleId { id }: ArticleId) -> Result<Json<Article>, ApiError> {
    let client = state.client().await?;
    articles::find(&client, id).await?.map(Json).ok_or(ApiError::ArticleNotFound(id))
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
    #[param(value_type = Option<ArticleStatus>)]
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

#[utoipa::path(get, path = "/articles", summary = "List articles in creation order (ascending id), with filters",
    params(ListParams),
    responses((status = OK, description = "One page of articles", body = ArticlePage), ListErrors))]
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
        && ArticleStatus::parse(status).is_none()
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
