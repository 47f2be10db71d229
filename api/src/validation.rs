//! What the API accepts in a request body, and the rules a valid article obeys.
//!
//! Inputs are deserialised with every field optional so that a missing field is reported by name
//! with the rule it breaks (422), rather than as a generic decoding error.

use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Object, ObjectBuilder, SchemaType, Type};

use crate::error::ApiError;
use events::Article;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_AUTHOR_CHARS: usize = 100;
pub const MAX_CATEGORY_CHARS: usize = 100;
pub const MAX_CONTENT_CHARS: usize = 100_000;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_CHARS: usize = 50;

/// Body of `POST /articles` and `PUT /articles/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArticleInput {
    #[schema(schema_with = title_schema, required = true)]
    pub title: Option<String>,
    #[schema(schema_with = content_schema, required = true)]
    pub content: Option<String>,
    #[schema(schema_with = author_schema, required = true)]
    pub author: Option<String>,
    #[schema(schema_with = category_schema)]
    pub category: Option<String>,
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
}

/// Body of `PATCH /articles/{id}`: only the fields present change (`null` leaves a field as it
/// is, except `"category": null`, which clears it).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArticlePatch {
    #[schema(schema_with = optional_title_schema)]
    pub title: Option<String>,
    #[schema(schema_with = optional_content_schema)]
    pub content: Option<String>,
    #[schema(schema_with = optional_author_schema)]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "present_or_null")]
    #[schema(schema_with = category_schema)]
    pub category: Option<Option<String>>,
    #[schema(schema_with = tags_schema)]
    pub tags: Option<Vec<String>>,
}

/// The OpenAPI form of [`clean_text`]'s rules: at most `max` characters, at least one that is not
/// whitespace, no NUL. With `nullable`, `null` is accepted too (it means "absent").
fn text_schema(max: usize, nullable: bool) -> Object {
    let types: SchemaType =
        if nullable { [Type::String, Type::Null].into_iter().collect() } else { Type::String.into() };
    ObjectBuilder::new()
        .schema_type(types)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(r"^[^\x00]*[^\s\x00][^\x00]*$"))
        .description(Some(format!("at most {max} characters, not blank, no NUL; surrounding spaces are trimmed")))
        .build()
}

/// The `schema_with` functions of the text fields: `name => (at most this many characters, nullable)`.
macro_rules! text_schemas {
    ($($name:ident => ($max:expr, $nullable:expr)),+ $(,)?) => {
        $(fn $name() -> Object { text_schema($max, $nullable) })+
    };
}

text_schemas! {
    title_schema => (MAX_TITLE_CHARS, false),
    content_schema => (MAX_CONTENT_CHARS, false),
    author_schema => (MAX_AUTHOR_CHARS, false),
    optional_title_schema => (MAX_TITLE_CHARS, true),
    optional_content_schema => (MAX_CONTENT_CHARS, true),
    optional_author_schema => (MAX_AUTHOR_CHARS, true),
    category_schema => (MAX_CATEGORY_CHARS, true),
}

fn tags_schema() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .schema_type([Type::Array, Type::Null].into_iter().collect::<SchemaType>())
        .items(text_schema(MAX_TAG_CHARS, false))
        .max_items(Some(MAX_TAGS))
        .description(Some(format!("at most {MAX_TAGS} tags")))
        .build()
}

/// Tells a field that is absent (`None`) from one that is `null` (`Some(None)`).
fn present_or_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// The editable fields of a valid article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArticleFields {
    pub title: String,
    pub content: String,
    pub author: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
}

impl ArticleInput {
    /// Checks every rule; the first broken one is reported with its field.
    pub fn validate(self) -> Result<ArticleFields, ApiError> {
        ArticleFields {
            title: required("title", self.title)?,
            content: required("content", self.content)?,
            author: required("author", self.author)?,
            category: self.category,
            tags: self.tags.unwrap_or_default(),
        }
        .validate()
    }
}

impl ArticlePatch {
    /// The current article with this patch applied, validated as a whole.
    pub fn apply_to(self, current: &Article) -> Result<ArticleFields, ApiError> {
        ArticleFields {
            title: self.title.unwrap_or_else(|| current.title.clone()),
            content: self.content.unwrap_or_else(|| current.content.clone()),
            author: self.author.unwrap_or_else(|| current.author.clone()),
            category: self.category.unwrap_or_else(|| current.category.clone()),
            tags: self.tags.unwrap_or_else(|| current.tags.clone()),
        }
        .validate()
    }
}

fn required(field: &'static str, value: Option<String>) -> Result<String, ApiError> {
    value.ok_or_else(|| invalid(field, format!("{field} is required")))
}

fn invalid(field: &'static str, message: String) -> ApiError {
    ApiError::Validation { field, message }
}

/// Trims `value` and checks it is non-empty, at most `max` characters and free of NUL bytes
/// (PostgreSQL cannot store them in text).
fn clean_text(field: &'static str, value: &str, max: usize, trim: bool) -> Result<String, ApiError> {
    let value = if trim { value.trim() } else { value };
    if value.trim().is_empty() {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if value.contains('\0') {
        return Err(invalid(field, format!("{field} must not contain NUL characters")));
    }
    let length = value.chars().count();
    if length > max {
        return Err(invalid(field, format!("{field} must be at most {max} characters (got {length})")));
    }
    Ok(value.to_owned())
}

impl ArticleFields {
    fn validate(self) -> Result<Self, ApiError> {
        if self.tags.len() > MAX_TAGS {
            return Err(invalid("tags", format!("at most {MAX_TAGS} tags are allowed (got {})", self.tags.len())));
        }
        Ok(Self {
            title: clean_text("title", &self.title, MAX_TITLE_CHARS, true)?,
            content: clean_text("content", &self.content, MAX_CONTENT_CHARS, false)?,
            author: clean_text("author", &self.author, MAX_AUTHOR_CHARS, true)?,
            category: self
                .category
                .map(|category| clean_text("category", &category, MAX_CATEGORY_CHARS, true))
                .transpose()?,
            tags: self.tags.iter().map(|tag| clean_text("tags", tag, MAX_TAG_CHARS, true)).collect::<Result<_, _>>()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(title: Option<&str>) -> ArticleInput {
        ArticleInput {
            title: title.map(str::to_owned),
            content: Some("body".into()),
            author: Some(" Ann ".into()),
            category: None,
            tags: Some(vec![" rust ".into()]),
        }
    }

    fn field_of(error: ApiError) -> &'static str {
        match error {
            ApiError::Validation { field, .. } => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn trims_names_and_tags() {
        let fields = input(Some("  Hello ")).validate().expect("valid");
        assert_eq!(fields.title, "Hello");
        assert_eq!(fields.author, "Ann");
        assert_eq!(fields.tags, vec!["rust"]);
    }

    #[test]
    fn names_the_broken_field() {
        assert_eq!(field_of(input(None).validate().expect_err("missing")), "title");
        assert_eq!(field_of(input(Some("   ")).validate().expect_err("blank")), "title");
        assert_eq!(field_of(input(Some("a\0b")).validate().expect_err("nul")), "title");
        let long = "x".repeat(MAX_TITLE_CHARS + 1);
        assert_eq!(field_of(input(Some(&long)).validate().expect_err("long")), "title");
        let mut many_tags = input(Some("ok"));
        many_tags.tags = Some(vec!["t".into(); MAX_TAGS + 1]);
        assert_eq!(field_of(many_tags.validate().expect_err("tags")), "tags");
    }

    #[test]
    fn patch_null_clears_category_and_absent_keeps_it() {
        let clear: ArticlePatch = serde_json::from_str(r#"{"category": null}"#).expect("json");
        assert_eq!(clear.category, Some(None));
        let keep: ArticlePatch = serde_json::from_str(r#"{"title": "t"}"#).expect("json");
        assert_eq!(keep.category, None);
    }

    /// Every article the API accepts must be publishable: its largest event envelope (every text
    /// field at its limit, in the character JSON escapes longest), with room for the key and the
    /// headers, fits in the record size the relay sends by default.
    #[test]
    fn the_largest_event_the_api_can_write_fits_the_relays_record_limit() {
        let longest = |chars: usize| "\u{1}".repeat(chars);
        let at = chrono::Utc::now();
        let article = Article {
            id: i64::MAX,
            title: longest(MAX_TITLE_CHARS),
            content: longest(MAX_CONTENT_CHARS),
            author: longest(MAX_AUTHOR_CHARS),
            category: Some(longest(MAX_CATEGORY_CHARS)),
            tags: vec![longest(MAX_TAG_CHARS); MAX_TAGS],
            status: events::ArticleStatus::Published,
            views_count: i64::MAX,
            created_at: at,
            updated_at: at,
            published_at: Some(at),
            version: i64::MAX,
        };
        let event = events::ArticleEvent {
            event_id: Some(uuid::Uuid::new_v4().to_string()),
            event_type: events::EventType::Deleted,
            timestamp: at,
            data: article,
        };
        let envelope = serde_json::to_string(&event).expect("an article serialises");
        assert!(envelope.len() > 6 * MAX_CONTENT_CHARS, "control characters are escaped as \\u0001");
        const KEY_AND_HEADERS: usize = 4096;
        assert!(
            envelope.len() + KEY_AND_HEADERS <= outbox::DEFAULT_MAX_RECORD_BYTES,
            "{} bytes do not fit {}",
            envelope.len(),
            outbox::DEFAULT_MAX_RECORD_BYTES
        );
    }
}
