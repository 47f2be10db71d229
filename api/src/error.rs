//! The API's error type and its one mapping to HTTP: every error becomes a JSON body
//! `{"error": {"code", "message", "field"?}}` with a 4xx/5xx status; internals are logged, never sent.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use service_kit::db::{error_chain, is_transient};
use utoipa::ToSchema;

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
    #[error("the API is handling its limit of {0} requests at once; retry shortly")]
    Overloaded(usize),
    #[error("the database is unavailable")]
    PoolUnavailable(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Database(#[from] tokio_postgres::Error),
    #[error("cannot serialise the event")]
    Serialize(#[source] serde_json::Error),
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
            Self::Starting | Self::Timeout | Self::Overloaded(_) | Self::PoolUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Database(error) if is_transient(error) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Serialize(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::Validation { field, .. } | Self::InvalidParameter { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What went wrong, for a person to read.
    pub message: String,
    /// The body field, path or query parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
}

/// A stable machine-readable code, one per status the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    ServiceUnavailable,
    InternalError,
}

impl ErrorCode {
    fn of(status: StatusCode) -> Self {
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Self::ValidationFailed,
            StatusCode::SERVICE_UNAVAILABLE => Self::ServiceUnavailable,
            _ => Self::InternalError,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A shed request is counted (`http_requests_shed_total`), not logged: an overload would
        // flood the log with one line per refused request.
        let overloaded = matches!(self, Self::Overloaded(_));
        if status.is_server_error() && !overloaded {
            tracing::error!(error = %error_chain(&self), status = status.as_u16(), "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail { code: ErrorCode::of(status), message: self.to_string(), field: self.field() },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if overloaded {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of an oversized body is never read, so the connection cannot carry another
            // request: say so, or a client reusing it races the server's close and fails its next request.
            StatusCode::PAYLOAD_TOO_LARGE => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
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
