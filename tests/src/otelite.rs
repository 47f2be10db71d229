//! otelite, a real OTLP trace store with a query API (see `../shared/notes/toolchain.md`): the
//! services export to it, the tests read the traces back.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::api_client::ApiClient;
use crate::process::{ManagedProcess, ProcessSpec, find_program};

#[derive(Debug)]
pub struct Otelite {
    pub grpc_port: u16,
    pub http_port: u16,
    query: ApiClient,
    _process: ManagedProcess,
}

impl Otelite {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("store"))?;
        let (grpc_port, http_port, query_port) = (crate::free_port(), crate::free_port(), crate::free_port());
        let process = ManagedProcess::start(ProcessSpec {
            name: "otelite".to_owned(),
            program: find_program("otelite")?,
            args: vec![
                "serve".to_owned(),
                "--addr".to_owned(),
                format!("127.0.0.1:{query_port}"),
                "--storage-path".to_owned(),
                dir.join("store").to_string_lossy().into_owned(),
            ],
            envs: vec![
                ("HOME".to_owned(), dir.to_string_lossy().into_owned()),
                ("OTELITE_OTLP_GRPC_PORT".to_owned(), grpc_port.to_string()),
                ("OTELITE_OTLP_HTTP_PORT".to_owned(), http_port.to_string()),
            ],
            cwd: Some(dir.to_path_buf()),
            run_as: None,
            log: dir.join("otelite.log"),
            stop_signal: "TERM",
        })?;
        let query = ApiClient::new(&format!("http://127.0.0.1:{query_port}"));
        crate::wait::until("otelite to answer", Duration::from_secs(30), || async {
            Ok(query.request(reqwest::Method::GET, "/api/traces?service=none", None).await?.0 == 200)
        })
        .await
        .with_context(|| format!("otelite did not start; its log:\n{}", process.log_tail(20)))?;
        Ok(Self { grpc_port, http_port, query, _process: process })
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the gRPC protocol.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for the http/protobuf protocol.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Summaries of the stored traces (`trace_id`, `root_span_name`, …). otelite's `?service=`
    /// filter matches the service of whichever span of a trace arrived first, so none is used.
    pub async fn traces(&self) -> anyhow::Result<Vec<Value>> {
        let (_, body) = self.query.request(reqwest::Method::GET, "/api/traces", None).await?;
        Ok(body["traces"].as_array().cloned().unwrap_or_default())
    }

    /// One trace with its spans, or `None` if the store has no span of it.
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self.query.request(reqwest::Method::GET, &format!("/api/traces/{trace_id}"), None).await?;
        Ok((status == 200).then_some(body))
    }
}
