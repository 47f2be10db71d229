//! Migration sets (component tier, a database of its own per test): each set records its versions
//! in its own history table, a relay creates only the outbox contract's tables, and a DB1 created
//! before the sets were split takes them as no-ops and keeps its rows.

use e2e::component::Fixtures;

async fn tables(client: &tokio_postgres::Client) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &[])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

async fn versions(client: &tokio_postgres::Client, history_table: &str) -> anyhow::Result<Vec<i32>> {
    let rows = client.query(&format!("SELECT version FROM {history_table} ORDER BY version"), &[]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A relay beside any service creates the outbox, its own two tables and their history, and
/// nothing of the service's; the API adds its `articles` under a history table of its own.
#[tokio::test(flavor = "multi_thread")]
async fn each_binary_applies_only_its_sets_each_with_its_own_history() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let db1 = fixtures.database("sets").await?;
    service_kit::db::migrate(&db1, outbox_relay::MIGRATIONS).await?;
    let client = service_kit::db::connect(&db1).await?;
    assert_eq!(
        tables(&client).await?,
        ["outbox", "outbox_dead_letters", "outbox_schema_history", "relay_checkpoints", "relay_leader"]
    );
    assert_eq!(versions(&client, outbox::HISTORY_TABLE).await?, [1, 2, 3, 4, 5]);

    service_kit::db::migrate(&db1, api::MIGRATIONS).await?;
    service_kit::db::migrate(&db1, outbox_relay::MIGRATIONS).await?; // again: nothing to do
    assert_eq!(
        tables(&client).await?,
        [
            "api_schema_history",
            "articles",
            "outbox",
            "outbox_dead_letters",
            "outbox_schema_history",
            "relay_checkpoints",
            "relay_leader"
        ]
    );
    assert_eq!(versions(&client, "api_schema_history").await?, [1], "the sets never see each other's versions");
    assert_eq!(versions(&client, outbox::HISTORY_TABLE).await?, [1, 2, 3, 4, 5]);

    let db2 = fixtures.database("replica").await?;
    service_kit::db::migrate(&db2, replica_sink::MIGRATIONS).await?;
    let replica = service_kit::db::connect(&db2).await?;
    assert_eq!(
        tables(&replica).await?,
        ["article_tombstones", "articles", "processed_events", "replica_schema_history"]
    );
    Ok(())
}

/// The runner the services had before the split: DB1's three versions in refinery's default
/// history table, V1 creating `articles` and `outbox` together. Built from today's statements,
/// which differ from those only by `IF NOT EXISTS`.
fn pre_split_migrations() -> anyhow::Result<refinery::Runner> {
    let statements = |runner: refinery::Runner| -> Vec<String> {
        runner.get_migrations().iter().map(|migration| migration.sql().unwrap_or_default().to_owned()).collect()
    };
    let (articles, outbox) = (statements((api::MIGRATIONS[1].embedded)()), statements(outbox::migrations()));
    let migrations = [
        refinery::Migration::unapplied("V1__articles_and_outbox", &format!("{}\n{}", articles[0], outbox[0]))?,
        refinery::Migration::unapplied("V2__relay_leadership_and_checkpoints", &outbox[1])?,
        refinery::Migration::unapplied("V3__outbox_trace_context", &outbox[2])?,
    ];
    Ok(refinery::Runner::new(&migrations))
}

/// A DB1 as the services created it before the split (one history for everything): the new sets
/// apply as no-ops over the existing tables, and its articles, waiting outbox rows and relay epoch
/// stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_from_before_the_split_keeps_its_rows() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let db1 = fixtures.database("upgrade").await?;
    let mut client = service_kit::db::connect(&db1).await?;
    pre_split_migrations()?.run_async(&mut client).await?;
    client
        .batch_execute(
            "INSERT INTO articles (title, content, author) VALUES ('kept', 'c', 'a'); \
             INSERT INTO outbox (event_id, article_id, event_type, payload, trace_context) \
             VALUES (gen_random_uuid(), 1, 'article.created', '{}', NULL); \
             UPDATE relay_leader SET epoch = 7",
        )
        .await?;

    service_kit::db::migrate(&db1, api::MIGRATIONS).await?;
    service_kit::db::migrate(&db1, outbox_relay::MIGRATIONS).await?;

    let count = |sql: &'static str| {
        let client = &client;
        async move { anyhow::Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0)) }
    };
    assert_eq!(count("SELECT count(*) FROM articles WHERE title = 'kept'").await?, 1);
    assert_eq!(count("SELECT count(*) FROM outbox").await?, 1, "the waiting row is still there to publish");
    assert_eq!(count("SELECT epoch FROM relay_leader").await?, 7, "the fencing epoch is not reset");
    assert_eq!(versions(&client, "api_schema_history").await?, [1]);
    assert_eq!(versions(&client, outbox::HISTORY_TABLE).await?, [1, 2, 3, 4, 5]);
    let kept: (String, String) = {
        let row = client.query_one("SELECT aggregate_type, aggregate_id FROM outbox", &[]).await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(kept, ("article".to_owned(), "1".to_owned()), "the waiting row keeps its article as its aggregate");
    assert_eq!(versions(&client, "refinery_schema_history").await?, [1, 2, 3], "the old history is left as it was");
    Ok(())
}
