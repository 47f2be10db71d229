//! Jaeger itself (v2, built from its Go module by `scripts/setup.sh`): the services export their
//! spans to it over OTLP, and the tests read traces back from its query API
//! (`/api/traces/<trace id>`, `/api/traces?service=…`), the same API its UI uses. Traces are kept
//! in memory: a Jaeger lives as long as its test or local stack.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::api_client::ApiClient;
use crate::process::{ManagedProcess, ProcessSpec, find_program};

/// Where a Jaeger listens.
#[derive(Debug, Clone, Copy)]
pub struct JaegerPorts {
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    /// The query API (and the UI, where the build carries its assets).
    pub query: u16,
    /// The query service's gRPC API (unused here, but Jaeger always opens it).
    pub query_grpc: u16,
}

impl JaegerPorts {
    /// Free ports, for tests running side by side.
    pub fn free() -> Self {
        let free = crate::free_port;
        Self { otlp_grpc: free(), otlp_http: free(), query: free(), query_grpc: free() }
    }

    /// Jaeger's own defaults: OTLP on 4317 (gRPC) and 4318 (HTTP), query and UI on 16686.
    pub fn standard() -> Self {
        Self { otlp_grpc: 4317, otlp_http: 4318, query: 16686, query_grpc: 16685 }
    }
}

/// One span as the tests look at it, read from Jaeger's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub span_id: String,
    /// The span it is a child of (`CHILD_OF` reference), if any.
    pub parent_span_id: Option<String>,
    /// The operation name.
    pub name: String,
    /// `service.name` of the process that exported it.
    pub service: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: String,
    /// Every attribute, its value as text (Jaeger types them; the tests compare text).
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

#[derive(Debug)]
pub struct Jaeger {
    pub ports: JaegerPorts,
    query: ApiClient,
    process: ManagedProcess,
}

impl Jaeger {
    /// Starts Jaeger with its configuration and log in `dir`, and waits until its query API
    /// answers.
    pub async fn start(dir: &Path, ports: JaegerPorts) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("jaeger.yaml");
        std::fs::write(&config, config_yaml(ports))?;
        let process = ManagedProcess::start(ProcessSpec {
            name: "jaeger".to_owned(),
            program: find_program("jaeger")?,
            args: vec![format!("--config={}", config.display())],
            envs: Vec::new(),
            cwd: Some(dir.to_path_buf()),
            run_as: None,
            log: dir.join("jaeger.log"),
            stop_signal: "TERM",
        })?;
        let query = ApiClient::new(&format!("http://127.0.0.1:{}", ports.query));
        crate::wait::until("Jaeger's query API to answer", Duration::from_secs(30), || async {
            Ok(query.request(reqwest::Method::GET, "/api/services", None).await?.0 == 200)
        })
        .await
        .with_context(|| format!("Jaeger did not start; its log:\n{}", process.log_tail(20)))?;
        Ok(Self { ports, query, process })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the gRPC protocol.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_grpc)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the http/protobuf protocol.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_http)
    }

    /// The query API's (and UI's) address.
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.query)
    }

    /// The spans Jaeger holds of trace `trace_id` (none if it holds no span of it).
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Vec<Span>> {
        let (status, body) = self.query.request(reqwest::Method::GET, &format!("/api/traces/{trace_id}"), None).await?;
        match status {
            200 => Ok(body["data"].as_array().into_iter().flatten().flat_map(spans_of).collect()),
            404 => Ok(Vec::new()),
            other => anyhow::bail!("GET /api/traces/{trace_id}: {other} {body}"),
        }
    }

    /// The ids of the traces that hold a span of `service` (the UI's search).
    pub async fn trace_ids(&self, service: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/api/traces?service={service}&limit=1000&lookback=1h");
        let (status, body) = self.query.request(reqwest::Method::GET, &path, None).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|trace| trace["traceID"].as_str().map(str::to_owned))
            .collect())
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart()
    }

    pub async fn stop(&mut self) {
        self.process.stop(Duration::from_secs(10)).await;
    }
}

/// The spans of one trace of Jaeger's JSON, with their services resolved.
fn spans_of(trace: &Value) -> Vec<Span> {
    let services: BTreeMap<&str, &str> = trace["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(id, process)| Some((id.as_str(), process["serviceName"].as_str()?)))
        .collect();
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| {
            let attributes: BTreeMap<String, String> = span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|tag| {
                    let value = match &tag["value"] {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    Some((tag["key"].as_str()?.to_owned(), value))
                })
                .collect();
            let parent_span_id = span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|reference| reference["refType"] == "CHILD_OF")
                .and_then(|reference| reference["spanID"].as_str().map(str::to_owned));
            Span {
                span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                parent_span_id,
                name: span["operationName"].as_str().unwrap_or_default().to_owned(),
                service: span["processID"]
                    .as_str()
                    .and_then(|id| services.get(id))
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
                kind: attributes.get("span.kind").cloned().unwrap_or_else(|| "internal".to_owned()),
                attributes,
            }
        })
        .collect()
}

/// Jaeger's all-in-one pipeline trimmed to what is used: OTLP in, memory storage, the query API;
/// everything on 127.0.0.1, on the given ports, and no other port opened (its own metrics off).
fn config_yaml(ports: JaegerPorts) -> String {
    let JaegerPorts { otlp_grpc, otlp_http, query, query_grpc } = ports;
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
    )
}
