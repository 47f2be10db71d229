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

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every route, behind the token check, the load shedding, the request span and metrics, and the
/// body limit.
pub fn router(state: AppState) -> Router {
    let (router, _) = documented_routes().split_for_parts();
    router
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_token_for_writes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::shed_load))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every write, and only writes, needs the registered token scheme and documents its 401.
    #[test]
    fn every_write_and_no_read_requires_the_registered_scheme() {
        let document = serde_json::to_value(openapi()).expect("serialises");
        assert_eq!(document["components"]["securitySchemes"][openapi::BEARER_TOKEN]["scheme"], "bearer");
        let mut secured = 0;
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let requirements = operation["security"].as_array().cloned().unwrap_or_default();
                assert_eq!(requirements.is_empty(), method == "get", "{method} {path}");
                for requirement in &requirements {
                    let names: Vec<&String> = requirement.as_object().expect("requirement").keys().collect();
                    assert_eq!(names, [openapi::BEARER_TOKEN], "{method} {path}");
                    assert!(operation["responses"]["401"].is_object(), "{method} {path}");
                    secured += 1;
                }
                assert!(operation["tags"][0].is_string(), "{method} {path} has a tag");
            }
        }
        assert_eq!(secured, 5, "the five writes need the token");
    }
}
