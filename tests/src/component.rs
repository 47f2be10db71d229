//! The in-process component tier: a service built with its own `Application::build` on port 0,
//! inside the test's process, against a real PostgreSQL and a real broker.
//!
//! `scripts/test.sh` starts one cluster and one broker for the whole run (`E2E_SHARED_POSTGRES`,
//! `E2E_SHARED_BROKER`); each test creates databases and topics of its own in them, so tests run
//! in parallel and a component check costs a `CREATE DATABASE`, not two clusters and a JVM.
//! Without the variables (a plain `cargo nextest run`), [`Fixtures::start`] starts private ones.
//!
//! This tier is for everything that does not need a process to die: routes, settling, read-back,
//! applying. Kills, pauses and the chaos script stay in the multi-process tier ([`crate::Stack`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use outbox::NewEvent;
use service_kit::config::DatabaseUrl;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{Broker, BrokerKind, BrokerOptions};
use crate::postgres::{PgCluster, PgOptions};
use crate::stack::SHARED_BROKER_ENV;

/// The variable naming the shared cluster's admin URL (`postgres://postgres@127.0.0.1:PORT/postgres`).
pub const SHARED_POSTGRES_ENV: &str = "E2E_SHARED_POSTGRES";

/// A PostgreSQL cluster and a broker for one test: the run's shared ones, or private ones.
#[derive(Debug)]
pub struct Fixtures {
    admin_url: DatabaseUrl,
    bootstrap_servers: String,
    /// Private servers and their directory, killed and removed when the fixtures are dropped.
    _private: Option<(PgCluster, Broker, tempfile::TempDir)>,
}

impl Fixtures {
    /// The shared servers when `scripts/test.sh` started them, else private ones.
    pub async fn start() -> anyhow::Result<Self> {
        let shared = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        if let (Some(postgres), Some(bootstrap_servers)) = (shared(SHARED_POSTGRES_ENV), shared(SHARED_BROKER_ENV)) {
            let admin_url = postgres.parse().map_err(anyhow::Error::msg).context(SHARED_POSTGRES_ENV)?;
            return Ok(Self { admin_url, bootstrap_servers, _private: None });
        }
        Self::start_private().await
    }

    /// For a test that deletes topics: on nisshi, a broker of its own, since deleting a topic
    /// there disturbed other topics' transactions (tests running beside it lost records from
    /// view); Apache Kafka deletes a topic alone, so the shared one serves.
    pub async fn start_deleting_topics() -> anyhow::Result<Self> {
        match BrokerKind::from_env()? {
            BrokerKind::Kafka => Self::start().await,
            BrokerKind::Nisshi => Self::start_private().await,
        }
    }

    /// A PostgreSQL cluster and a broker of this test's own.
    async fn start_private() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("blog-component-").tempdir()?;
        let cluster = PgCluster::start(
            "postgres",
            &dir.path().join("postgres"),
            crate::free_port(),
            PgOptions { durable: false, tls: None },
        )
        .await?;
        let kind = BrokerKind::from_env()?;
        let broker = Broker::start(&dir.path().join("broker"), BrokerOptions::plain(kind, crate::free_port())).await?;
        let (admin_url, bootstrap_servers) = (cluster.url("postgres", "postgres"), broker.bootstrap_servers());
        Ok(Self { admin_url, bootstrap_servers, _private: Some((cluster, broker, dir)) })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// A new, empty database of this test's own, e.g. `db1_3f2a9c01`.
    pub async fn database(&self, prefix: &str) -> anyhow::Result<DatabaseUrl> {
        let name = format!("{prefix}_{:08x}", fastrand::u32(..));
        let admin = service_kit::db::connect(&self.admin_url).await?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await?;
        let url = self.admin_url.expose().rsplit_once('/').map(|(server, _)| format!("{server}/{name}"));
        url.context("the admin URL names a database")?.parse().map_err(anyhow::Error::msg)
    }

    /// A topic (or group) name of this test's own, e.g. `articles-3f2a9c01`.
    pub fn unique(prefix: &str) -> String {
        format!("{prefix}-{:08x}", fastrand::u32(..))
    }
}

/// A service running inside the test's process; stopped (gracefully) by [`Running::stop`] or
/// cancelled when dropped.
#[derive(Debug)]
pub struct Running {
    pub port: u16,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Starts `run(shutdown)` on the runtime: the service's `run_until_stopped`.
    pub fn spawn<F>(port: u16, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self { port, shutdown, task: Some(task) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Asks the service to stop and waits for it to finish (at most 30 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().context("already stopped")?;
        tokio::time::timeout(Duration::from_secs(30), task).await.context("the service did not stop within 30 s")??
    }
}

impl Running {
    /// Ends the service like a crash does: its task is dropped where it stands, no shutdown code
    /// runs (its connections close, as a dead process's do).
    pub async fn crash(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Parses a service's command line the way its binary does, so defaults come from one place.
pub fn parse<P: clap::Parser>(binary: &str, args: &[(&str, &str)]) -> anyhow::Result<P> {
    let mut argv = vec![binary.to_owned()];
    for (flag, value) in args {
        argv.push(format!("--{flag}"));
        argv.push((*value).to_owned());
    }
    Ok(P::try_parse_from(argv)?)
}

/// The API on DB1 `database`, with extra flags (e.g. `("api-token", …)`), ready once `/ready` says so.
pub async fn api(database: &DatabaseUrl, extra: &[(&str, &str)]) -> anyhow::Result<Running> {
    let mut args = vec![("database-url", database.expose()), ("listen-addr", "127.0.0.1:0")];
    args.extend_from_slice(extra);
    let cli: api::config::Cli = parse("api", &args)?;
    let application = api::startup::Application::build(cli.config).await?;
    let running = Running::spawn(application.port(), |shutdown| application.run_until_stopped(shutdown));
    wait_ready(&running).await?;
    Ok(running)
}

/// The relay on DB1 `database`, publishing to `topic`.
pub async fn relay(
    database: &DatabaseUrl,
    bootstrap_servers: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Running> {
    let isolation = BrokerKind::from_env()?.isolation().to_string();
    let mut args = vec![
        ("database-url", database.expose()),
        ("listen-addr", "127.0.0.1:0"),
        ("kafka-bootstrap-servers", bootstrap_servers),
        ("kafka-topic", topic),
        ("kafka-isolation-level", &isolation),
    ];
    args.extend_from_slice(extra);
    let cli: outbox_relay::config::Cli = parse("outbox-relay", &args)?;
    let application = outbox_relay::startup::Application::build(cli.config).await?;
    Ok(Running::spawn(application.port(), |shutdown| application.run_until_stopped(shutdown)))
}

/// The sink on DB2 `database`, consuming `topic` as `group`, with extra flags.
pub async fn sink(
    database: &DatabaseUrl,
    bootstrap_servers: &str,
    topic: &str,
    group: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Running> {
    let isolation = BrokerKind::from_env()?.isolation().to_string();
    let mut args = vec![
        ("replica-database-url", database.expose()),
        ("listen-addr", "127.0.0.1:0"),
        ("kafka-bootstrap-servers", bootstrap_servers),
        ("kafka-topic", topic),
        ("kafka-group-id", group),
        ("kafka-isolation-level", &isolation),
    ];
    args.extend_from_slice(extra);
    let cli: replica_sink::config::Cli = parse("replica-sink", &args)?;
    let application = replica_sink::startup::Application::build(cli.config).await?;
    Ok(Running::spawn(application.port(), |shutdown| application.run_until_stopped(shutdown)))
}

/// The notifier on its own `database`, consuming `topic` as `group`, writing its outbox rows for
/// `notifications_topic`.
pub async fn notifier(
    database: &DatabaseUrl,
    bootstrap_servers: &str,
    topic: &str,
    group: &str,
    notifications_topic: &str,
) -> anyhow::Result<Running> {
    let isolation = BrokerKind::from_env()?.isolation().to_string();
    let args = [
        ("database-url", database.expose()),
        ("listen-addr", "127.0.0.1:0"),
        ("kafka-bootstrap-servers", bootstrap_servers),
        ("kafka-topic", topic),
        ("kafka-group-id", group),
        ("notifications-topic", notifications_topic),
        ("kafka-isolation-level", &isolation),
    ];
    let cli: notifier::config::Cli = parse("notifier", &args)?;
    let application = notifier::startup::Application::build(cli.config).await?;
    Ok(Running::spawn(application.port(), |shutdown| application.run_until_stopped(shutdown)))
}

/// Waits until the service's `/ready` answers 200 (its schema is in and its dependencies answer).
pub async fn wait_ready(running: &Running) -> anyhow::Result<()> {
    let client = crate::ApiClient::new(&running.url());
    crate::wait::until("the service to be ready", Duration::from_secs(60), || async {
        Ok(client.request(reqwest::Method::GET, "/ready", None).await.is_ok_and(|(status, _)| status == 200))
    })
    .await
}

/// The three services in-process on two databases of their own and a topic and group of their
/// own: the whole pipeline, for checks that need no process to die.
#[derive(Debug)]
pub struct Pipeline {
    pub db1: DatabaseUrl,
    pub db2: DatabaseUrl,
    pub topic: String,
    pub group: String,
    pub api: Running,
    pub relay: Running,
    pub sink: Running,
    pub fixtures: Fixtures,
}

impl Pipeline {
    /// Starts the pipeline; `api_extra` are extra flags of the API (e.g. its token).
    pub async fn start(api_extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let fixtures = Fixtures::start().await?;
        let (db1, db2) = (fixtures.database("db1").await?, fixtures.database("db2").await?);
        let (topic, group) = (Fixtures::unique("articles"), Fixtures::unique("blog-sync-group"));
        let bootstrap = fixtures.bootstrap_servers().to_owned();
        let api = api(&db1, api_extra).await?;
        let relay = relay(&db1, &bootstrap, &topic, &[]).await?;
        let sink = sink(&db2, &bootstrap, &topic, &group, &[]).await?;
        Ok(Self { db1, db2, topic, group, api, relay, sink, fixtures })
    }

    pub fn api_client(&self) -> crate::ApiClient {
        crate::ApiClient::new(&self.api.url())
    }

    /// Waits until the outbox is empty and DB2 holds exactly DB1's articles; returns them.
    pub async fn wait_for_replica(&self, timeout: Duration) -> anyhow::Result<Vec<events::Article>> {
        crate::replica::wait_for_replica(&self.db1, &self.db2, timeout).await
    }
}

/// What a relay test works on: a DB1 with the outbox contract's tables, a pool to write rows the
/// way any writer does, and a topic of its own.
#[derive(Debug)]
pub struct Outbox {
    pub fixtures: Fixtures,
    pub db1: DatabaseUrl,
    pub pool: deadpool_postgres::Pool,
    pub topic: String,
}

impl Outbox {
    pub async fn start() -> anyhow::Result<Self> {
        Self::on(Fixtures::start().await?).await
    }

    /// An outbox whose test deletes its topic (see [`Fixtures::start_deleting_topics`]).
    pub async fn start_deleting_topics() -> anyhow::Result<Self> {
        Self::on(Fixtures::start_deleting_topics().await?).await
    }

    async fn on(fixtures: Fixtures) -> anyhow::Result<Self> {
        let db1 = fixtures.database("relay").await?;
        service_kit::db::migrate(&db1, outbox_relay::MIGRATIONS).await?;
        let pool = service_kit::db::pool(&db1, 2)?;
        Ok(Self { fixtures, db1, pool, topic: Fixtures::unique("articles") })
    }

    /// A relay on this outbox and topic, with extra flags.
    pub async fn relay(&self, extra: &[(&str, &str)]) -> anyhow::Result<Running> {
        relay(&self.db1, self.fixtures.bootstrap_servers(), &self.topic, extra).await
    }

    /// Waits until the outbox holds `rows` rows.
    pub async fn wait_for_rows(&self, rows: i64) -> anyhow::Result<()> {
        let what = format!("the outbox to hold {rows} rows");
        crate::wait::until(&what, Duration::from_secs(60), || async { Ok(outbox_rows(&self.pool).await? == rows) })
            .await
    }
}

/// `count` events spread over articles 1 to `articles`, in order.
pub fn events(count: i64, articles: i64) -> Vec<(i64, Uuid)> {
    (0..count).map(|index| (index % articles + 1, Uuid::new_v4())).collect()
}

/// Writes one outbox row per `(article id, event id)`, in order, each in its own transaction,
/// with a small JSON payload naming both.
pub async fn enqueue(pool: &deadpool_postgres::Pool, events: &[(i64, Uuid)]) -> anyhow::Result<()> {
    for (article_id, event_id) in events {
        let payload = serde_json::json!({"event_id": event_id, "article_id": article_id}).to_string();
        enqueue_payload(pool, *article_id, *event_id, &payload).await?;
    }
    Ok(())
}

/// Writes one outbox row with `payload`, the way any writer does.
pub async fn enqueue_payload(
    pool: &deadpool_postgres::Pool,
    article_id: i64,
    event_id: Uuid,
    payload: &str,
) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let aggregate_id = article_id.to_string();
    let event = NewEvent {
        event_id,
        aggregate_type: "article",
        aggregate_id: &aggregate_id,
        event_type: "article.updated",
        topic: None,
        headers: &[],
        payload,
        trace_context: &std::collections::HashMap::new(),
    };
    outbox::enqueue(&transaction, &event).await?;
    transaction.commit().await?;
    Ok(())
}

pub async fn outbox_rows(pool: &deadpool_postgres::Pool) -> anyhow::Result<i64> {
    Ok(pool.get().await?.query_one("SELECT count(*) FROM outbox", &[]).await?.get(0))
}

/// Per partition, the checkpoint the relay recorded.
pub async fn checkpoints(pool: &deadpool_postgres::Pool, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let client = pool.get().await?;
    let rows = client.query("SELECT partition, next_offset FROM relay_checkpoints WHERE topic = $1", &[&topic]).await?;
    Ok(rows.iter().map(|row| (row.get("partition"), row.get("next_offset"))).collect())
}
