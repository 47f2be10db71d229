//! The HTTP routes and their OpenAPI operations, registered together so the document cannot drift
//! from what is served: writes (each committing one outbox event), reads, and operations.

mod article_id;
mod middleware;
mod operations;
mod read;
mod write;

use std::sync::LazyLock;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::openapi;
use crate::state::AppState;

pub use read::{DEFAULT_PER_PAGE, MAX_PER_PAGE};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every route, behind the token check, the request span and metrics, and the body limit.
pub fn router(state: AppState) -> Router {
    let (router, _) = documented_routes().split_for_parts();
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_token_for_writes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn documented_routes() -> OpenApiRouter<AppState> {
    let api = read::routes().merge(write::routes()).merge(operations::api_routes());
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).nest("/api/v1", api).merge(operations::probes())
}

/// The OpenAPI document of this API, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = documented_routes().split_for_parts().1;
    openapi::finish(&mut document);
    document
}

/// [`openapi`] as JSON, built once.
static OPENAPI_JSON: LazyLock<String> =
    LazyLock::new(|| openapi().to_json().expect("an OpenAPI document always serialises"));
