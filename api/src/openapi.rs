//! The frame of the OpenAPI document served at `/api/v1/openapi.json`: title, tags, the bearer
//! token scheme and the error answers operations share. The operations themselves come from the
//! `#[utoipa::path]` annotations on the handlers in [`crate::routes`], registered with the routes
//! they describe, so the document is generated from the code and cannot drift from it. What every
//! operation of a kind shares — its tag, and for writes the token and its 401 — is added here by
//! [`finish`], from the same rule the token middleware applies, rather than repeated per route.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

use crate::error::ErrorBody;

/// The name of the security scheme write operations require (`Authorization: Bearer <API_TOKEN>`).
pub const BEARER_TOKEN: &str = "api_token";

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Blog articles API",
        description = "Articles CRUD and publication. Every change is committed with one outbox event \
                       (`article.created`, `article.updated`, `article.published`, `article.deleted`) \
                       that the outbox relay publishes to the Kafka topic `articles`. Errors are JSON: \
                       `{\"error\": {\"code\", \"message\", \"field\"?}}`. When the server has `API_TOKEN` set, \
                       writes need `Authorization: Bearer <token>`; reads stay open."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "articles", description = "Articles and their publication"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Completes the document once every route is in: registers the bearer scheme; tags each
/// operation (`articles` under `/api/v1/articles`, `operations` elsewhere); gives every article
/// operation the answers of reaching DB1 and, under `{id}`, of a bad or unknown id; and gives
/// every write (any method but GET, HEAD, OPTIONS — what `require_token_for_writes` guards) the
/// token requirement and its 401. An answer a route documents itself is kept.
pub fn finish(openapi: &mut utoipa::openapi::OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER_TOKEN,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for (path, item) in &mut openapi.paths.paths {
        let articles = path.starts_with("/api/v1/articles");
        let tag = if articles { "articles" } else { "operations" };
        let mut shared = BTreeMap::new();
        if articles {
            shared.extend(<DatabaseErrors as utoipa::IntoResponses>::responses());
        }
        if path.contains("{id}") {
            shared.extend(<ArticleIdErrors as utoipa::IntoResponses>::responses());
        }
        let reads = [&mut item.get, &mut item.head, &mut item.options]
            .into_iter()
            .flatten()
            .map(|operation| (operation, false));
        let writes = [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete]
            .into_iter()
            .flatten()
            .map(|operation| (operation, true));
        for (operation, write) in reads.chain(writes) {
            operation.tags = Some(vec![tag.to_owned()]);
            let mut answers = shared.clone();
            if write {
                operation.security = Some(vec![SecurityRequirement::new(BEARER_TOKEN, Vec::<String>::new())]);
                answers.extend(<TokenErrors as utoipa::IntoResponses>::responses());
            }
            for (status, answer) in answers {
                operation.responses.responses.entry(status).or_insert(answer);
            }
        }
    }
}

/// `status → JSON error body` responses with the given descriptions.
fn error_responses(statuses: &[(StatusCode, &str)]) -> BTreeMap<String, RefOr<Response>> {
    statuses
        .iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let response =
                ResponseBuilder::new().description(*description).content("application/json", content).build();
            (status.as_str().to_owned(), RefOr::T(response))
        })
        .collect()
}

/// Declares unit types standing for a group of error answers, for `responses(...)` in
/// `#[utoipa::path]`.
macro_rules! error_response_groups {
    ($($(#[$doc:meta])* $group:ident { $($status:ident => $description:literal),+ $(,)? })+) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $group;

            impl utoipa::IntoResponses for $group {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    error_responses(&[$((StatusCode::$status, $description)),+])
                }
            }
        )+
    };
}

error_response_groups! {
    /// Any operation that reads or writes DB1.
    DatabaseErrors {
        SERVICE_UNAVAILABLE => "DB1 is unreachable, the schema is not applied yet, or the request timed out",
    }
    /// Operations on `/articles/{id}`.
    ArticleIdErrors {
        BAD_REQUEST => "The id is not a positive 64-bit integer",
        NOT_FOUND => "No article has this id",
    }
    /// Operations that take a JSON body.
    BodyErrors {
        BAD_REQUEST => "The body is not valid JSON (or, under `/articles/{id}`, the id is not a positive 64-bit integer)",
        PAYLOAD_TOO_LARGE => "The body is over 1 MiB",
        UNSUPPORTED_MEDIA_TYPE => "The body is not `application/json`",
        UNPROCESSABLE_ENTITY => "A field is missing, unknown, of the wrong type or breaks a rule (`field` names it)",
    }
    /// Writes, when the server has `API_TOKEN` set.
    TokenErrors {
        UNAUTHORIZED => "`Authorization: Bearer <token>` is missing or wrong",
    }
    /// `GET /articles` with a bad query.
    ListErrors {
        BAD_REQUEST => "A query parameter is malformed or out of range (`field` names it)",
    }
    /// Publishing twice.
    PublishErrors {
        CONFLICT => "The article is already published",
    }
}
