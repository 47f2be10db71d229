//! The OpenAPI document: served at `/api/v1/openapi.json`, complete, and true. A property-based
//! fuzzer (schemathesis, installed by `scripts/setup.sh`) generates valid and invalid requests
//! from it against the real API with `API_TOKEN` set, and fails on any 5xx or any answer the
//! document does not describe. The fuzzed writes then have to reach DB2 unchanged. In-process
//! tier: the services run inside the test on the run's shared cluster and broker.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use e2e::component::{self, Fixtures, Pipeline};
use e2e::process::find_program;
use serde_json::Value;

const TOKEN: &str = "fuzz-token";
/// Fixed so a CI failure can be replayed; set `FUZZ_SEED` to explore other inputs.
const DEFAULT_SEED: &str = "20261122";
/// Cases per operation and phase; set `FUZZ_EXAMPLES` for a longer run.
const DEFAULT_EXAMPLES: &str = "100";

fn operations(document: &Value) -> BTreeSet<String> {
    let paths = document["paths"].as_object().into_iter().flatten();
    paths
        .flat_map(|(path, item)| {
            item.as_object().into_iter().flatten().map(move |(method, _)| format!("{} {path}", method.to_uppercase()))
        })
        .collect()
}

/// The document lists every route the API serves, with the error answers and the token the
/// tests elsewhere rely on.
#[tokio::test(flavor = "multi_thread")]
async fn the_document_describes_every_route() -> anyhow::Result<()> {
    let fixtures = Fixtures::start().await?;
    let api = component::api(&fixtures.database("db1").await?, &[]).await?;
    let (status, document) =
        e2e::ApiClient::new(&api.url()).request(reqwest::Method::GET, "/api/v1/openapi.json", None).await?;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")), "{document}");
    let expected: BTreeSet<String> = [
        "GET /api/v1/articles",
        "POST /api/v1/articles",
        "GET /api/v1/articles/{id}",
        "PUT /api/v1/articles/{id}",
        "PATCH /api/v1/articles/{id}",
        "DELETE /api/v1/articles/{id}",
        "POST /api/v1/articles/{id}/publish",
        "GET /api/v1/metrics",
        "GET /api/v1/openapi.json",
        "GET /health",
        "GET /ready",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(operations(&document), expected);
    let scheme = &document["components"]["securitySchemes"]["api_token"];
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let create = &document["paths"]["/api/v1/articles"]["post"];
    assert_eq!(create["security"][0]["api_token"], serde_json::json!([]));
    let statuses: BTreeSet<&str> =
        create["responses"].as_object().context("responses")?.keys().map(String::as_str).collect();
    assert_eq!(statuses, BTreeSet::from(["201", "400", "401", "413", "415", "422", "503"]));
    let input = &document["components"]["schemas"]["ArticleInput"];
    assert_eq!(input["additionalProperties"], false, "unknown fields are refused: {input}");
    assert_eq!(input["properties"]["title"]["maxLength"], 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzing_from_the_document_finds_no_server_error_and_no_undocumented_answer() -> anyhow::Result<()> {
    let schemathesis = find_program("schemathesis")?;
    let pipeline = Pipeline::start(&[("api-token", TOKEN)]).await?;
    let (_, document) = pipeline.api_client().request(reqwest::Method::GET, "/api/v1/openapi.json", None).await?;
    // Schemathesis leaves out the operation serving the document it was given.
    let operation_count = operations(&document).len() - 1;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/schemathesis.toml");
    let seed = std::env::var("FUZZ_SEED").unwrap_or_else(|_| DEFAULT_SEED.to_owned());
    let examples = std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| DEFAULT_EXAMPLES.to_owned());
    let work_dir = tempfile::Builder::new().prefix("schemathesis-").tempdir()?;
    let run = tokio::process::Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", pipeline.api.url()))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--seed", &seed, "--max-examples", &examples, "--workers", "1"])
        .current_dir(work_dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .context("schemathesis ran for over 10 minutes")?
        .with_context(|| format!("cannot run {}", schemathesis.display()))?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "schemathesis found failures (seed {seed}):\n{report}");
    assert!(
        report.contains(&format!("Tested: {operation_count}")),
        "every one of the {operation_count} documented operations must be fuzzed:\n{report}"
    );
    // Whatever the fuzzer managed to write went through the outbox to DB2 unchanged.
    let replica = pipeline.wait_for_replica(Duration::from_secs(120)).await?;
    println!("{} fuzzed articles replicated to DB2", replica.len());
    Ok(())
}
