//! DB1's `articles` table: all of its SQL. Writes take the caller's transaction so that the
//! handler can add the outbox row to the same transaction before committing.

use deadpool_postgres::{GenericClient, Transaction};
use events::{Article, article_columns};

use crate::validation::ArticleFields;

/// Filters and paging of `GET /articles`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub author: Option<String>,
    pub category: Option<String>,
}

fn articles(rows: &[tokio_postgres::Row]) -> Result<Vec<Article>, tokio_postgres::Error> {
    rows.iter().map(Article::from_row).collect()
}

fn first(rows: &[tokio_postgres::Row]) -> Result<Option<Article>, tokio_postgres::Error> {
    rows.first().map(Article::from_row).transpose()
}

pub async fn insert(transaction: &Transaction<'_>, fields: &ArticleFields) -> Result<Article, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(concat!(
            "INSERT INTO articles (title, content, author, category, tags) VALUES ($1, $2, $3, $4, $5) RETURNING ",
            article_columns!()
        ))
        .await?;
    let row = transaction
        .query_one(&statement, &[&fields.title, &fields.content, &fields.author, &fields.category, &fields.tags])
        .await?;
    Article::from_row(&row)
}

pub async fn find(client: &impl GenericClient, id: i64) -> Result<Option<Article>, tokio_postgres::Error> {
    let statement =
        client.prepare_cached(concat!("SELECT ", article_columns!(), " FROM articles WHERE id = $1")).await?;
    first(&client.query(&statement, &[&id]).await?)
}

/// Reads the article and locks its row until the transaction ends (for read-modify-write).
pub async fn find_for_update(transaction: &Transaction<'_>, id: i64) -> Result<Option<Article>, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(concat!("SELECT ", article_columns!(), " FROM articles WHERE id = $1 FOR UPDATE"))
        .await?;
    first(&transaction.query(&statement, &[&id]).await?)
}

/// Replaces the editable fields and bumps the version; `None` when there is no such article.
pub async fn update(
    transaction: &Transaction<'_>,
    id: i64,
    fields: &ArticleFields,
) -> Result<Option<Article>, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(concat!(
            "UPDATE articles SET title = $2, content = $3, author = $4, category = $5, tags = $6, ",
            "updated_at = now(), version = version + 1 WHERE id = $1 RETURNING ",
            article_columns!()
        ))
        .await?;
    let rows = transaction
        .query(&statement, &[&id, &fields.title, &fields.content, &fields.author, &fields.category, &fields.tags])
        .await?;
    first(&rows)
}

/// Publishes a draft; `None` when the article is missing or already published.
pub async fn publish(transaction: &Transaction<'_>, id: i64) -> Result<Option<Article>, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(concat!(
            "UPDATE articles SET status = 'published', published_at = now(), updated_at = now(), ",
            "version = version + 1 WHERE id = $1 AND status = 'draft' RETURNING ",
            article_columns!()
        ))
        .await?;
    first(&transaction.query(&statement, &[&id]).await?)
}

/// Deletes the article and returns its last state, with the version a deletion takes (one more
/// than the last change), so that the replica orders the deletion after every earlier event.
pub async fn delete(transaction: &Transaction<'_>, id: i64) -> Result<Option<Article>, tokio_postgres::Error> {
    let statement = transaction
        .prepare_cached(concat!("DELETE FROM articles WHERE id = $1 RETURNING ", article_columns!()))
        .await?;
    let deleted = first(&transaction.query(&statement, &[&id]).await?)?;
    Ok(deleted.map(|article| Article { version: article.version + 1, ..article }))
}

/// One page of articles in id order, and how many match the filter in all.
pub async fn list(
    client: &impl GenericClient,
    filter: &ListFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Article>, i64), tokio_postgres::Error> {
    const WHERE: &str = "WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR author = $2) \
                         AND ($3::text IS NULL OR category = $3)";
    let page = client
        .prepare_cached(&format!("SELECT {} FROM articles {WHERE} ORDER BY id LIMIT $4 OFFSET $5", article_columns!()))
        .await?;
    let count = client.prepare_cached(&format!("SELECT count(*) FROM articles {WHERE}")).await?;
    let filters: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&filter.status, &filter.author, &filter.category];
    let rows = client.query(&page, &[filters[0], filters[1], filters[2], &limit, &offset]).await?;
    let total: i64 = client.query_one(&count, &filters).await?.try_get(0)?;
    Ok((articles(&rows)?, total))
}
