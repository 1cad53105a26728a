//! A small HTTP client for the API, behind the `get`, `put`, `delete` and
//! `status` commands (and `dev`'s readiness checks).

use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::Value;

use crate::http::CONTEXT_HEADER;

/// A client of one node's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The values: one, several siblings, or none (missing or deleted).
    pub values: Vec<Bytes>,
    /// The opaque context to write back with.
    pub context: Option<String>,
}

fn base_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Percent-encodes a key as one path segment.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn error_of(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or(text);
    anyhow::anyhow!("{status}: {message}")
}

impl ApiClient {
    /// A client of the node at `url` (`http://` is assumed when absent).
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).tcp_nodelay(true).build()?;
        Ok(ApiClient { http, base: base_url(url) })
    }

    fn kv(&self, key: &str) -> String {
        format!("{}/kv/{}", self.base, encode_key(key))
    }

    /// `GET /kv/{key}` in its JSON form.
    ///
    /// # Errors
    /// Transport failures and error answers, with the server's message.
    pub async fn get(&self, key: &str, r: Option<usize>) -> anyhow::Result<Read> {
        let mut req = self.http.get(self.kv(key)).header("accept", "application/json");
        if let Some(r) = r {
            req = req.query(&[("r", r)]);
        }
        let resp = req.send().await.with_context(|| format!("GET {}", self.base))?;
        if !matches!(resp.status(), StatusCode::OK | StatusCode::NOT_FOUND) {
            return Err(error_of(resp).await);
        }
        let body: Value = resp.json().await?;
        let context =
            body.get("context").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
        let values = body
            .get("values")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|s| STANDARD.decode(s).ok())
                    .map(Bytes::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Read { values, context })
    }

    async fn write(
        &self,
        req: reqwest::RequestBuilder,
        context: Option<&str>,
        w: Option<usize>,
    ) -> anyhow::Result<String> {
        let mut req = req;
        if let Some(c) = context {
            req = req.header(CONTEXT_HEADER, c);
        }
        if let Some(w) = w {
            req = req.query(&[("w", w)]);
        }
        let resp = req.send().await.with_context(|| format!("write to {}", self.base))?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Err(error_of(resp).await);
        }
        Ok(resp.headers().get(CONTEXT_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string())
    }

    /// `PUT /kv/{key}`; returns the new context.
    ///
    /// # Errors
    /// Transport failures and error answers.
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        context: Option<&str>,
        w: Option<usize>,
    ) -> anyhow::Result<String> {
        self.write(self.http.put(self.kv(key)).body(value), context, w).await
    }

    /// `DELETE /kv/{key}`; returns the tombstone's context.
    ///
    /// # Errors
    /// Transport failures and error answers.
    pub async fn delete(&self, key: &str, context: Option<&str>, w: Option<usize>) -> anyhow::Result<String> {
        self.write(self.http.delete(self.kv(key)), context, w).await
    }

    /// `GET` of a JSON admin or health path, e.g. `/health`.
    ///
    /// # Errors
    /// Transport failures and error answers.
    pub async fn json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {}{path}", self.base))?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        Ok(resp.json().await?)
    }

    /// Whether `/health` answers now.
    pub async fn is_healthy(&self) -> bool {
        matches!(self.json("/health").await, Ok(v) if v.get("status").and_then(Value::as_str) == Some("ok"))
    }
}

/// Prints a read for a person: the value, or each sibling, and the context.
pub fn print_read(key: &str, read: &Read) -> anyhow::Result<()> {
    match read.values.len() {
        0 => bail!("{key}: not found"),
        1 => println!("{}", String::from_utf8_lossy(&read.values[0])),
        n => {
            println!("{n} siblings:");
            for v in &read.values {
                println!("  {}", String::from_utf8_lossy(v));
            }
        }
    }
    if let Some(c) = &read.context {
        eprintln!("context: {c}");
    }
    Ok(())
}

/// Prints what `status` shows: health, members and the ring summary.
///
/// # Errors
/// The node does not answer.
pub async fn print_status(client: &ApiClient) -> anyhow::Result<()> {
    let health = client.json("/health").await?;
    let members = client.json("/admin/members").await?;
    let ring = client.json("/admin/ring").await?;
    let hints = client.json("/admin/hints").await?;
    println!("node {} at {}: {}", health["node"], client.base, health["status"]);
    println!("ring: {} partitions, N = {}, epoch {}", ring["partitions"], ring["n"], ring["epoch"]);
    for m in members["members"].as_array().into_iter().flatten() {
        let owned = ring["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|r| r["id"] == m["id"]))
            .map(|r| r["partitions"].clone())
            .unwrap_or(Value::Null);
        println!(
            "  node {:<3} peer {:<22} http {:<22} partitions {}{}",
            m["id"],
            m["addr"].as_str().unwrap_or("-"),
            m["http"].as_str().unwrap_or("-"),
            owned,
            if m["self"] == Value::Bool(true) { "  (this node)" } else { "" }
        );
    }
    println!(
        "hints: pending {:?}, stored {}, delivered {}",
        hints["pending"], hints["stored"], hints["delivered"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_one_segment() {
        assert_eq!(encode_key("cart:alice"), "cart%3Aalice");
        assert_eq!(encode_key("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key("plain-key_1.x~"), "plain-key_1.x~");
        assert_eq!(base_url("127.0.0.1:8001/"), "http://127.0.0.1:8001");
    }
}
