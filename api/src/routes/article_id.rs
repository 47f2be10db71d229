//! The `{id}` path parameter of `/articles/{id}`, checked before any handler runs.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use utoipa::IntoParams;

use crate::error::ApiError;

/// The `{id}` of `/articles/{id}`: a positive 64-bit integer, else a JSON 400 naming it. Also
/// its OpenAPI description (`params(ArticleId)`).
#[derive(Debug, Clone, Copy, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct ArticleId {
    /// The article's id.
    #[param(minimum = 1)]
    pub(super) id: i64,
}

impl<S: Send + Sync> FromRequestParts<S> for ArticleId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| invalid("a segment that is not valid percent-encoded UTF-8"))?;
        parse(&raw).map(|id| Self { id })
    }
}

/// A positive 64-bit integer, else the error naming the parameter and the value.
fn parse(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(invalid(&format!("{raw:?}"))),
    }
}

fn invalid(shown: &str) -> ApiError {
    ApiError::InvalidParameter {
        field: "id",
        message: format!("article id must be a positive 64-bit integer, got {shown}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_positive_64_bit_ids_and_names_anything_else() {
        assert_eq!(parse("1").ok(), Some(1));
        assert_eq!(parse("9223372036854775807").ok(), Some(i64::MAX));
        for bad in ["0", "-3", "9223372036854775808", "12abc", "", " 7"] {
            let error = parse(bad).expect_err(bad);
            assert!(matches!(error, ApiError::InvalidParameter { field: "id", .. }), "{bad}: {error:?}");
            assert!(error.to_string().contains(&format!("{bad:?}")), "{bad}: {error}");
        }
    }
}
