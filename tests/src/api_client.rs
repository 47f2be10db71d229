//! Typed requests to the API for tests and tools; each helper checks the status it expects.

use anyhow::{Context as _, bail};
use events::Article;
use reqwest::Method;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    /// `base` is e.g. `http://127.0.0.1:5000`.
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Self { http, base: base.trim_end_matches('/').to_owned() }
    }

    /// Sends a request and returns the status and the JSON body (`Null` when empty).
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        self.request_with_headers(method, path, body, &[]).await
    }

    /// [`ApiClient::request`] with extra headers (e.g. `traceparent`, `authorization`).
    pub async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!("{method} {path} answered {status} with a non-JSON body: {}", String::from_utf8_lossy(&bytes))
            })?
        };
        Ok((status, json))
    }

    async fn expect(&self, method: Method, path: &str, body: Option<&Value>, expected: u16) -> anyhow::Result<Value> {
        let (status, json) = self.request(method.clone(), path, body).await?;
        if status != expected {
            bail!("{method} {path}: expected {expected}, got {status}: {json}");
        }
        Ok(json)
    }

    async fn expect_article(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> anyhow::Result<Article> {
        let json = self.expect(method, path, body, expected).await?;
        serde_json::from_value(json).context("the answer is not an article")
    }

    pub async fn create(&self, body: &Value) -> anyhow::Result<Article> {
        self.expect_article(Method::POST, "/api/v1/articles", Some(body), 201).await
    }

    pub async fn replace(&self, id: i64, body: &Value) -> anyhow::Result<Article> {
        self.expect_article(Method::PUT, &format!("/api/v1/articles/{id}"), Some(body), 200).await
    }

    pub async fn patch(&self, id: i64, body: &Value) -> anyhow::Result<Article> {
        self.expect_article(Method::PATCH, &format!("/api/v1/articles/{id}"), Some(body), 200).await
    }

    pub async fn publish(&self, id: i64) -> anyhow::Result<Article> {
        self.expect_article(Method::POST, &format!("/api/v1/articles/{id}/publish"), None, 200).await
    }

    pub async fn delete(&self, id: i64) -> anyhow::Result<()> {
        self.expect(Method::DELETE, &format!("/api/v1/articles/{id}"), None, 204).await.map(drop)
    }

    pub async fn get(&self, id: i64) -> anyhow::Result<Option<Article>> {
        let (status, json) = self.request(Method::GET, &format!("/api/v1/articles/{id}"), None).await?;
        match status {
            200 => Ok(Some(serde_json::from_value(json)?)),
            404 => Ok(None),
            other => bail!("GET /api/v1/articles/{id}: unexpected {other}: {json}"),
        }
    }

    /// The body of a text endpoint such as `/api/v1/metrics`.
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        Ok(self.http.get(format!("{}{path}", self.base)).send().await?.error_for_status()?.text().await?)
    }
}
