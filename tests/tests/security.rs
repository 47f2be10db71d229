//! Connecting like production does, on real components: PostgreSQL clusters that require TLS
//! (a CA the test makes, `pg_hba.conf` refusing plain TCP) with every service on
//! `sslmode=verify-full`; certificates that do not verify and plain connections refused with
//! clear errors; secrets from files, never printed.

use std::process::Output;
use std::time::Duration;

use e2e::Stack;
use e2e::cli::{blogctl, verify_replica};
use e2e::stack::Service;
use serde_json::json;

const SYNC_TIMEOUT: Duration = Duration::from_secs(90);

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Waits until the readiness endpoint `path` of the server at `base` answers 503 with a reason
/// containing `wanted`; the error shows its last answer.
async fn not_ready_saying(base: &str, path: &str, wanted: &str) -> anyhow::Result<()> {
    let url = format!("{base}{path}");
    let client = e2e::ApiClient::new(base);
    let last = std::sync::Mutex::new(String::new());
    e2e::wait::until(&format!("{url} to say {wanted:?}"), SYNC_TIMEOUT, || async {
        let Ok((status, body)) = client.request(reqwest::Method::GET, path, None).await else { return Ok(false) };
        let said = format!("{status} {body}");
        *last.lock().expect("not poisoned") = said.clone();
        Ok(status == 503 && said.contains(wanted))
    })
    .await
    .map_err(|error| error.context(format!("last answer: {}", last.lock().expect("not poisoned"))))
}

/// Starts `binary` as `name` with exactly `envs`, logging to `log`.
fn start_service(
    name: &str,
    binary: &str,
    envs: Vec<(String, String)>,
    log: std::path::PathBuf,
) -> anyhow::Result<e2e::process::ManagedProcess> {
    e2e::process::ManagedProcess::start(e2e::process::ProcessSpec {
        name: name.to_owned(),
        program: e2e::process::binary(binary)?,
        args: vec![],
        envs,
        cwd: None,
        run_as: None,
        log,
        stop_signal: "TERM",
    })
}

/// `url` with its `sslmode` and `sslrootcert` replaced.
fn with_tls(url: &str, mode: &str, root_cert: Option<&std::path::Path>) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    match root_cert {
        Some(ca) => format!("{base}?sslmode={mode}&sslrootcert={}", ca.display()),
        None => format!("{base}?sslmode={mode}"),
    }
}

/// The whole pipeline on two clusters that accept TLS only, every service verifying the server
/// (`sslmode=verify-full` against the test's CA): the seed's lifecycle reaches DB2, the start-up
/// logs say how each service connects. Then what must fail fails, with a reason a user can act on:
/// a CA that did not sign the server's certificate, and plain text. `require` (encrypted, not
/// verified) connects with any CA, as in libpq.
#[tokio::test(flavor = "multi_thread")]
async fn every_service_works_over_verified_tls_and_what_does_not_verify_is_refused_clearly() -> anyhow::Result<()> {
    let stack = Stack::start_for_test_configured(|options| options.postgres_tls = true).await?;
    let (db1, db2) = (stack.db1_url().expose().to_owned(), stack.db2_url().expose().to_owned());
    assert!(db1.contains("sslmode=verify-full"), "{db1}");
    let api = stack.api();
    let article = api.create(&json!({"title": "over TLS", "content": "c", "author": "ops"})).await?;
    api.patch(article.id, &json!({"content": "changed over TLS"})).await?;
    api.publish(article.id).await?;
    let gone = api.create(&json!({"title": "deleted over TLS", "content": "c", "author": "ops"})).await?;
    api.delete(gone.id).await?;
    let replica = stack.wait_for_replica(SYNC_TIMEOUT).await?;
    assert_eq!(replica.len(), 1);
    assert_eq!(replica[0].content, "changed over TLS");
    for service in [Service::Api, Service::Relay, Service::Sink] {
        let log = std::fs::read_to_string(stack.root().join("logs").join(format!("{}.log", service.binary_name())))?;
        assert!(
            log.contains("database_security") && log.contains("sslmode=verify-full sslrootcert="),
            "{} says how it connects: {log}",
            service.binary_name()
        );
    }
    let status = blogctl(
        &["status"],
        &[
            ("DATABASE_URL", db1.clone()),
            ("REPLICA_DATABASE_URL", db2.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", stack.bootstrap_servers()),
            ("KAFKA_TOPIC", stack.topic().to_owned()),
            ("KAFKA_GROUP_ID", stack.group().to_owned()),
        ],
        "",
    )
    .await?;
    assert!(text(&status).contains("DB2 replica     1 articles"), "blogctl over TLS too: {}", text(&status));
    let verified = verify_replica(&db1, &db2).await?;
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("verdict: IDENTICAL"), "{}", text(&verified));

    let other_ca = e2e::certs::certificate_authority(&stack.root().join("other-ca"), "not-the-servers-ca")?.0;
    let wrong_ca = verify_replica(&with_tls(&db1, "verify-full", Some(&other_ca)), &db2).await?;
    assert!(!wrong_ca.status.success(), "a certificate the CA did not sign: {}", text(&wrong_ca));
    let said = text(&wrong_ca);
    assert!(said.contains("certificate verify failed"), "the reason: {said}");
    assert!(said.contains("127.0.0.1"), "the host: {said}");
    assert!(!said.contains("panicked"), "{said}");
    let wrong_ca_unverified = verify_replica(&with_tls(&db1, "verify-ca", Some(&other_ca)), &db2).await?;
    assert!(!wrong_ca_unverified.status.success(), "verify-ca checks the chain too: {}", text(&wrong_ca_unverified));

    // A service started with a CA that does not verify the server keeps running, its /ready
    // saying why it cannot reach its database.
    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let mut api_wrong_ca = start_service(
        "api-wrong-ca",
        "api",
        vec![
            ("DATABASE_URL".to_owned(), with_tls(&db1, "verify-full", Some(&other_ca))),
            ("LISTEN_ADDR".to_owned(), listen.clone()),
        ],
        stack.root().join("logs").join("api-wrong-ca.log"),
    )?;
    not_ready_saying(&format!("http://{listen}"), "/ready", "certificate verify failed").await?;
    assert!(api_wrong_ca.is_running());
    assert_eq!(api_wrong_ca.stop(Duration::from_secs(20)).await, Some(0));

    let plain = verify_replica(&with_tls(&db1, "disable", None), &db2).await?;
    assert!(!plain.status.success(), "plain text is refused by the server: {}", text(&plain));
    assert!(text(&plain).contains("no encryption"), "pg_hba.conf's reason: {}", text(&plain));

    let encrypted_only =
        verify_replica(&with_tls(&db1, "require", Some(&other_ca)), &with_tls(&db2, "prefer", None)).await?;
    assert!(encrypted_only.status.success(), "require and prefer do not verify: {}", text(&encrypted_only));

    let unknown_mode = verify_replica(&with_tls(&db1, "allow", None), &db2).await?;
    assert!(!unknown_mode.status.success());
    assert!(text(&unknown_mode).contains("sslmode \"allow\" is not one of"), "{}", text(&unknown_mode));
    Ok(())
}

/// Secrets from files (`<ENV>_FILE`, the container-secrets convention): a service reads its
/// database URL from a file, and the password in it never reaches its log, `--help` or
/// `/metrics`; both the variable and its file set at once is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_come_from_files_and_never_print() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let admin = stack.db1_client().await?;
    admin.batch_execute("ALTER ROLE bloguser PASSWORD 'file-s3cret-pw'").await?;
    let dir = tempfile::tempdir()?;
    let secret_url = stack.db1_url().expose().replacen("bloguser@", "bloguser:file-s3cret-pw@", 1);
    let secret_file = dir.path().join("db1-url");
    std::fs::write(&secret_file, format!("{secret_url}\n"))?;

    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let mut relay = start_service(
        "relay-with-file-secret",
        "outbox-relay",
        vec![
            ("DATABASE_URL_FILE".to_owned(), secret_file.display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), stack.bootstrap_servers()),
            ("KAFKA_TOPIC".to_owned(), stack.topic().to_owned()),
            ("KAFKA_ISOLATION_LEVEL".to_owned(), stack.options.broker.isolation().as_str().to_owned()),
            ("LISTEN_ADDR".to_owned(), listen.clone()),
            ("RELAY_INSTANCE_ID".to_owned(), "relay-with-file-secret".to_owned()),
        ],
        dir.path().join("relay.log"),
    )?;
    let ops = e2e::ApiClient::new(&format!("http://{listen}"));
    e2e::wait::until("the relay reading its URL from a file to be ready", SYNC_TIMEOUT, || async {
        Ok(ops.request(reqwest::Method::GET, "/ready", None).await.is_ok_and(|(status, _)| status == 200))
    })
    .await?;
    let metrics = ops.text("/metrics").await?;
    assert!(!metrics.contains("file-s3cret-pw"), "the secret is not in /metrics");
    let log = std::fs::read_to_string(dir.path().join("relay.log"))?;
    assert!(log.contains("outbox relay starting"), "{log}");
    assert!(!log.contains("file-s3cret-pw"), "the secret is not in the log: {log}");
    assert_eq!(relay.stop(Duration::from_secs(20)).await, Some(0));

    let help = tokio::process::Command::new(e2e::process::binary("outbox-relay")?)
        .arg("--help")
        .env("DATABASE_URL_FILE", &secret_file)
        .output()
        .await?;
    assert!(help.status.success());
    assert!(!text(&help).contains("file-s3cret-pw"), "{}", text(&help));
    let both = tokio::process::Command::new(e2e::process::binary("api")?)
        .env("DATABASE_URL", &secret_url)
        .env("DATABASE_URL_FILE", &secret_file)
        .output()
        .await?;
    assert_eq!(both.status.code(), Some(2));
    assert!(text(&both).contains("both DATABASE_URL and DATABASE_URL_FILE are set"), "{}", text(&both));
    assert!(!text(&both).contains("file-s3cret-pw"), "{}", text(&both));
    Ok(())
}

/// The whole pipeline through Apache Kafka's SASL_SSL listener (SCRAM-SHA-256 credentials
/// created by the test, TLS verified against the test's CA): the relay publishes, the sink
/// applies, `blogctl` lists, consumes and produces; start-up logs name the security protocol and
/// mask the password. A relay with a wrong password keeps running and retrying, its `/ready`
/// saying the broker refused the authentication; `blogctl` says so too.
#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_runs_over_sasl_ssl_and_a_wrong_password_is_a_clear_retried_error() -> anyhow::Result<()> {
    if e2e::broker::BrokerKind::from_env()? != e2e::broker::BrokerKind::Kafka {
        eprintln!("SASL_SSL needs Apache Kafka (nisshi has no TLS): not run on this broker");
        return Ok(());
    }
    let stack = Stack::start_for_test_configured(|options| {
        options.shared_broker = None;
        options.kafka_sasl = true;
    })
    .await?;
    let client_env = stack.kafka_client_env();
    let password_file = client_env
        .iter()
        .find(|(name, _)| name == "RDKAFKA_SASL_PASSWORD_FILE")
        .map(|(_, path)| path.clone())
        .unwrap_or_default();
    let password = std::fs::read_to_string(&password_file)?.trim().to_owned();
    let api = stack.api();
    let article = api.create(&json!({"title": "over SASL_SSL", "content": "c", "author": "ops"})).await?;
    api.publish(article.id).await?;
    stack.wait_for_replica(SYNC_TIMEOUT).await?;
    for service in [Service::Relay, Service::Sink] {
        let log = std::fs::read_to_string(stack.root().join("logs").join(format!("{}.log", service.binary_name())))?;
        assert!(log.contains("security.protocol=SASL_SSL"), "{}: {log}", service.binary_name());
        assert!(log.contains("sasl.password=***"), "{}: {log}", service.binary_name());
        assert!(!log.contains(&password), "{} never logs the password", service.binary_name());
    }
    let relay_metrics = e2e::ApiClient::new(&stack.url(Service::Relay)).text("/metrics").await?;
    assert!(!relay_metrics.contains(&password));

    let mut env = client_env.clone();
    env.push(("KAFKA_TOPIC".to_owned(), stack.topic().to_owned()));
    let listed = blogctl(&["topics", "list"], &env, "").await?;
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(stack.topic()), "{}", text(&listed));
    let consumed = blogctl(&["consume", "--from-beginning", "--until-caught-up"], &env, "").await?;
    assert!(consumed.status.success(), "{}", text(&consumed));
    assert!(text(&consumed).contains("Processed a total of 2 messages"), "{}", text(&consumed));

    let seed_event = format!("{}\n", events::SEED_HAND_WRITTEN_EVENT);
    let produced = blogctl(&["produce", "--key", "999"], &env, &seed_event).await?;
    assert!(produced.status.success(), "blogctl produces through SASL_SSL: {}", text(&produced));
    e2e::wait::until("the sink to apply the produced event", SYNC_TIMEOUT, || async {
        let db2 = stack.db2_client().await?;
        Ok(db2.query_one("SELECT count(*) FROM articles WHERE id = 999", &[]).await?.get::<_, i64>(0) == 1)
    })
    .await?;

    // The other mechanisms the listener offers, set from a properties file this time.
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let properties = stack.root().join(format!("{mechanism}.properties"));
        std::fs::write(&properties, format!("# managed Kafka\nsasl.mechanisms={mechanism}\n"))?;
        let mut by_file: Vec<(String, String)> =
            env.iter().filter(|(name, _)| name != "RDKAFKA_SASL_MECHANISMS").cloned().collect();
        by_file.push(("KAFKA_PROPERTIES_FILE".to_owned(), properties.display().to_string()));
        let listed = blogctl(&["topics", "describe"], &by_file, "").await?;
        assert!(listed.status.success(), "{mechanism}: {}", text(&listed));
    }

    let wrong = stack.root().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n")?;
    let mut wrong_env: Vec<(String, String)> =
        client_env.iter().filter(|(name, _)| name != "RDKAFKA_SASL_PASSWORD_FILE").cloned().collect();
    wrong_env.push(("RDKAFKA_SASL_PASSWORD_FILE".to_owned(), wrong.display().to_string()));
    let refused = blogctl(&["topics", "list"], &wrong_env, "").await?;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("SASL authentication error"), "the reason: {}", text(&refused));

    let listen = format!("127.0.0.1:{}", e2e::free_port());
    let mut envs = wrong_env.clone();
    envs.extend([
        ("DATABASE_URL".to_owned(), stack.db1_url().expose().to_owned()),
        ("KAFKA_TOPIC".to_owned(), stack.topic().to_owned()),
        ("LISTEN_ADDR".to_owned(), listen.clone()),
        ("RELAY_INSTANCE_ID".to_owned(), "relay-wrong-password".to_owned()),
    ]);
    let log = stack.root().join("logs").join("relay-wrong-password.log");
    let mut relay = start_service("relay-wrong-password", "outbox-relay", envs, log.clone())?;
    not_ready_saying(&format!("http://{listen}"), "/ready", "SASL authentication error").await?;
    // Still running and retrying: a wrong secret is not a crash loop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(relay.is_running(), "the relay keeps running: {}", relay.log_tail(20));
    let errors = std::fs::read_to_string(&log)?.matches("SASL authentication error").count();
    assert!((1..200).contains(&errors), "retried with back-off, not in a tight loop: {errors} errors logged");
    assert!(!std::fs::read_to_string(&log)?.contains(&password));
    assert_eq!(relay.stop(Duration::from_secs(20)).await, Some(0), "it stops cleanly on SIGTERM");
    Ok(())
}

/// A property the pipeline's guarantees rest on cannot be overridden by accident: the relay and
/// the sink refuse to start, naming the variable and what to set instead.
#[tokio::test(flavor = "multi_thread")]
async fn guarantee_critical_kafka_properties_are_refused_at_start() -> anyhow::Result<()> {
    let cases = [
        ("outbox-relay", "RDKAFKA_ENABLE_IDEMPOTENCE", "enable.idempotence", "DATABASE_URL"),
        ("outbox-relay", "RDKAFKA_PRODUCER_ACKS", "acks", "DATABASE_URL"),
        ("replica-sink", "RDKAFKA_CONSUMER_ISOLATION_LEVEL", "isolation.level", "REPLICA_DATABASE_URL"),
        ("replica-sink", "RDKAFKA_ENABLE_AUTO_OFFSET_STORE", "enable.auto.offset.store", "REPLICA_DATABASE_URL"),
    ];
    for (binary, variable, property, database) in cases {
        let said = refused_at_start(binary, (variable, "false"), database).await?;
        assert!(
            said.contains(&format!("{variable} sets {property}, which the pipeline's guarantees depend on")),
            "{said}"
        );
    }
    // The relay places records on partitions itself: a partitioner that keeps no key on one
    // partition is refused, naming it and the ones that work.
    let said = refused_at_start("outbox-relay", ("RDKAFKA_PRODUCER_PARTITIONER", "random"), "DATABASE_URL").await?;
    assert!(said.contains("partitioner \"random\" is not supported") && said.contains("murmur2_random"), "{said}");
    Ok(())
}

/// Starts `binary` with `setting` (its database variable `database` pointing nowhere), checks
/// that it exits with an error and returns what it said.
async fn refused_at_start(binary: &str, setting: (&str, &str), database: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(e2e::process::binary(binary)?)
        .env(setting.0, setting.1)
        .env(database, "postgres://u@127.0.0.1:1/db")
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", e2e::free_port()))
        .env("RUST_BACKTRACE", "0")
        .output()
        .await?;
    let said = text(&output);
    anyhow::ensure!(!output.status.success(), "{binary} with {}={} started: {said}", setting.0, setting.1);
    Ok(said)
}
