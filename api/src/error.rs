//! The API's error type and its one mapping to HTTP: every error becomes a JSON body
//! `{"error": {"code", "message", "field"?}}` with a 4xx/5xx status; internals are logged, never sent.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use shared::db::{error_chain, is_transient};
use shared::outbox::OutboxError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the body breaks a rule (422).
    #[error("{message}")]
    Validation { field: &'static str, message: String },
    /// A path or query parameter is malformed (400).
    #[error("{message}")]
    InvalidParameter { field: &'static str, message: String },
    /// axum refused the request before our code saw it: bad JSON, wrong content type, too large.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("this request needs a valid `Authorization: Bearer <token>` header")]
    Unauthorized,
    #[error("article {0} not found")]
    ArticleNotFound(i64),
    #[error("no route for this path")]
    RouteNotFound,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("article {0} is already published")]
    AlreadyPublished(i64),
    #[error("the service is starting: the database schema is not ready yet")]
    Starting,
    #[error("the request took too long")]
    Timeout,
    #[error("the database is unavailable")]
    PoolUnavailable(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot record the event")]
    Outbox(#[from] OutboxError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidParameter { .. } => StatusCode::BAD_REQUEST,
            Self::Rejected { status, .. } => *status,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ArticleNotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AlreadyPublished(_) => StatusCode::CONFLICT,
            Self::Starting | Self::Timeout | Self::PoolUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(error) | Self::Outbox(OutboxError::Database(error)) if is_transient(error) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Database(_) | Self::Outbox(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::Validation { field, .. } | Self::InvalidParameter { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A stable machine-readable code for each status the API answers with.
fn code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        _ => "internal_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&self), status = status.as_u16(), "request failed");
        }
        let mut body = json!({ "code": code(status), "message": self.to_string() });
        if let Some(field) = self.field() {
            body["field"] = json!(field);
        }
        let mut response = (status, axum::Json(json!({ "error": body }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Rejected { status: rejection.status(), message: rejection.body_text() }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        // axum answers a bad query string 400 already; keep its explanation.
        Self::Rejected { status: StatusCode::BAD_REQUEST, message: rejection.body_text() }
    }
}
