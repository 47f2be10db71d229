//! Whether the replica caught up: DB2 compared with DB1, and the records on a topic. Used by
//! both tiers (multi-process [`crate::Stack`] and in-process [`crate::component::Pipeline`]).

use std::time::Duration;

use events::{Article, article_columns};
use service_kit::config::DatabaseUrl;

/// Every article of a database, in id order, every column.
pub async fn articles(client: &tokio_postgres::Client) -> anyhow::Result<Vec<Article>> {
    let rows = client.query(concat!("SELECT ", article_columns!(), " FROM articles ORDER BY id"), &[]).await?;
    Ok(rows.iter().map(Article::from_row).collect::<Result<_, _>>()?)
}

/// Waits until the outbox is empty and DB2 holds exactly DB1's articles; returns them.
pub async fn wait_for_replica(db1: &DatabaseUrl, db2: &DatabaseUrl, timeout: Duration) -> anyhow::Result<Vec<Article>> {
    let (db1, db2) = (service_kit::db::connect(db1).await?, service_kit::db::connect(db2).await?);
    let last = std::sync::Mutex::new((Vec::new(), Vec::new()));
    let synced = crate::wait::until("DB2 to match DB1", timeout, || {
        let (db1, db2, last) = (&db1, &db2, &last);
        async move {
            let backlog: i64 = db1.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0);
            let primary = articles(db1).await?;
            let replica = articles(db2).await?;
            let equal = backlog == 0 && primary == replica;
            *last.lock().expect("not poisoned") = (primary, replica);
            Ok(equal)
        }
    })
    .await;
    let (primary, replica) = last.into_inner().expect("not poisoned");
    if let Err(error) = synced {
        let missing: Vec<i64> =
            primary.iter().filter(|article| !replica.contains(article)).map(|article| article.id).take(20).collect();
        let extra: Vec<i64> =
            replica.iter().filter(|article| !primary.contains(article)).map(|article| article.id).take(20).collect();
        return Err(error.context(format!(
            "DB1 has {} articles, DB2 {}; differing in DB1: {missing:?}, in DB2: {extra:?}",
            primary.len(),
            replica.len()
        )));
    }
    Ok(primary)
}

/// Every record on the topic, as the pipeline's consumers see it on the test's broker.
pub async fn topic_records(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<blogctl::Record>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    let isolation = crate::broker::BrokerKind::from_env()?.isolation();
    tokio::task::spawn_blocking(move || blogctl::read_all(&bootstrap, &topic, isolation, Duration::from_secs(60)))
        .await?
}
