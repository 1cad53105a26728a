//! A small HTTP client for the API, behind the `get`, `put`, `delete`,
//! `status`, `cluster` and `aae` commands (and `dev`'s readiness checks),
//! sending the client's bearer token when it has one
//! ([`crate::client_token`]).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::Value;

use crate::client_token::{ClientToken, TOKEN_VARIABLE};
use crate::http::CONTEXT_HEADER;

/// A client of one node's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// Whether requests carry a bearer token.
    authenticated: bool,
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

/// A TLS 1.3 client configuration that trusts the CA certificates in
/// `ca` and nothing else (the TCP transport's TLS loader).
///
/// # Errors
/// The file cannot be read or holds no usable certificate; or a build
/// without the tcp transport.
fn tls_trusting(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    #[cfg(feature = "transport-tcp")]
    return dynamo_transport_tcp::client_config(ca).context("--ca-file");
    #[cfg(not(feature = "transport-tcp"))]
    anyhow::bail!("--ca-file {} needs the transport-tcp feature (its TLS loader)", ca.display())
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

/// The error an answer that is not a success stands for: its status and
/// the server's message; for `401`, what to do about the token.
async fn error_of(resp: reqwest::Response, authenticated: bool) -> anyhow::Error {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let message = error_message(&body);
    auth_error(status, &message, authenticated).unwrap_or_else(|| anyhow::anyhow!("{status}: {message}"))
}

/// What an error answer's body says: its JSON `error`, else the body as
/// text.
pub(crate) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// The CLI's words for a `401` or `403` answer carrying `message`, or
/// `None` for any other status.
pub(crate) fn auth_error(status: StatusCode, message: &str, authenticated: bool) -> Option<anyhow::Error> {
    match status {
        StatusCode::UNAUTHORIZED if !authenticated => Some(anyhow::anyhow!(
            "the node requires a token: set {TOKEN_VARIABLE} or --token-file (401: {message})"
        )),
        StatusCode::UNAUTHORIZED => Some(anyhow::anyhow!(
            "the node refused the token ({message}); check {TOKEN_VARIABLE} or --token-file"
        )),
        // The node's message names the token and the scope it lacks.
        StatusCode::FORBIDDEN => Some(anyhow::anyhow!("{message}")),
        _ => None,
    }
}

impl ApiClient {
    /// A client of the node at `url` (`http://` is assumed when absent),
    /// without a token.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        ApiClient::connect(url, None, None)
    }

    /// A client of the node at `url` that sends `token` (if any) with
    /// every request, as `Authorization: Bearer …` marked sensitive, and
    /// verifies an `https://` node's certificate against the CA
    /// certificate(s) in `ca_file` (PEM; TLS 1.3).
    ///
    /// # Errors
    /// The CA file cannot be read or holds no certificate, an `https://`
    /// URL without a CA file, or the HTTP client cannot be built.
    pub fn connect(url: &str, token: Option<&ClientToken>, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(reqwest::header::AUTHORIZATION, token.header_value());
        }
        let base = base_url(url);
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .default_headers(headers);
        match ca_file {
            Some(ca) => builder = builder.use_preconfigured_tls(tls_trusting(ca)?),
            None if base.starts_with("https://") => anyhow::bail!(
                "{base}: an https:// node needs --ca-file (or DYNAMO_CA_FILE) naming the CA of its certificate"
            ),
            None => {}
        }
        let http = builder.build()?;
        Ok(ApiClient { http, base, authenticated: token.is_some() })
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
            return Err(error_of(resp, self.authenticated).await);
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
            return Err(error_of(resp, self.authenticated).await);
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
            return Err(error_of(resp, self.authenticated).await);
        }
        Ok(resp.json().await?)
    }

    /// `POST` of a JSON admin path with no body, e.g.
    /// `/admin/cluster/join/4`; the JSON answer.
    ///
    /// # Errors
    /// Transport failures and error answers, with the server's message.
    pub async fn post_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?;
        if !resp.status().is_success() {
            return Err(error_of(resp, self.authenticated).await);
        }
        Ok(resp.json().await?)
    }

    /// The base URL requests go to (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether `/health` answers now.
    pub async fn is_healthy(&self) -> bool {
        matches!(self.json("/health").await, Ok(v) if v.get("status").and_then(Value::as_str) == Some("ok"))
    }
}

/// How `get` prints a read.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReadFormat {
    /// Print the context first, on a line of its own, then the values:
    /// what a script needs to write a resolved value back from one read.
    #[arg(long)]
    pub context: bool,
    /// Print one JSON object, `{"key","context","values":[base64…]}`,
    /// as the HTTP API's JSON form.
    #[arg(long, conflicts_with_all = ["context", "null"])]
    pub json: bool,
    /// End each line (context and values) with NUL instead of a newline,
    /// for values that hold newlines (`xargs -0`, `read -d ''`).
    #[arg(long, short = '0')]
    pub null: bool,
}

/// Prints a read on stdout: each value (a sibling each) raw, one per
/// line, after the context line with `--context`; or the JSON form. A
/// missing or deleted key is exit status 1, with a note on stderr.
///
/// # Errors
/// Writing to stdout failed.
pub fn print_read(key: &str, read: &Read, format: &ReadFormat) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    write_read(&mut out, key, read, format)?;
    out.flush()?;
    if read.values.is_empty() {
        eprintln!("{key}: not found");
        return Ok(ExitCode::from(1));
    }
    if read.values.len() > 1 && std::io::IsTerminal::is_terminal(&std::io::stderr()) && !format.json {
        eprintln!(
            "{key}: {} siblings; write the resolved value back with the context (`get --context`)",
            read.values.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes what [`print_read`] prints.
///
/// # Errors
/// Writing to `out` failed.
pub fn write_read(out: &mut impl Write, key: &str, read: &Read, format: &ReadFormat) -> std::io::Result<()> {
    if format.json {
        let body = serde_json::json!({
            "key": key,
            "context": read.context.as_deref().unwrap_or_default(),
            "values": read.values.iter().map(|v| STANDARD.encode(v)).collect::<Vec<_>>(),
        });
        return writeln!(out, "{body}");
    }
    let end: &[u8] = if format.null { b"\0" } else { b"\n" };
    if format.context {
        out.write_all(read.context.as_deref().unwrap_or_default().as_bytes())?;
        out.write_all(end)?;
    }
    for value in &read.values {
        out.write_all(value)?;
        out.write_all(end)?;
    }
    Ok(())
}

/// Prints what `status` shows: health, the ring, and a table of members
/// (or, with `json`, one JSON object of the same).
///
/// # Errors
/// The node does not answer.
pub async fn print_status(client: &ApiClient, json: bool) -> anyhow::Result<()> {
    let status = fetch_status(client).await?;
    if json {
        println!("{status}");
    } else {
        print!("{}", status_table(&status));
    }
    Ok(())
}

/// Health, ring, members (with the partitions each owns and the hints
/// this node holds for it) and hint counts, as one JSON object.
///
/// # Errors
/// The node does not answer.
pub async fn fetch_status(client: &ApiClient) -> anyhow::Result<Value> {
    let health = client.json("/health").await?;
    let members = client.json("/admin/members").await?;
    let ring = client.json("/admin/ring").await?;
    let hints = client.json("/admin/hints").await?;
    let find = |list: &Value, field: &str, id: &Value| -> Value {
        list.as_array()
            .and_then(|items| items.iter().find(|item| item[field] == *id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let members: Vec<Value> = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut m = m.clone();
            let id = m["id"].clone();
            m["partitions"] = find(&ring["members"], "id", &id)["partitions"].clone();
            m["hints_pending"] = find(&hints["pending"], "owner", &id)["count"].clone();
            if m["hints_pending"].is_null() {
                m["hints_pending"] = Value::from(0);
            }
            m
        })
        .collect();
    Ok(serde_json::json!({
        "url": client.base,
        "node": health["node"],
        "status": health["status"],
        "ring": { "partitions": ring["partitions"], "n": ring["n"], "epoch": ring["epoch"] },
        "members": members,
        "hints": { "stored": hints["stored"], "delivered": hints["delivered"] },
    }))
}

/// `status` for a person: a summary and a table of members.
pub fn status_table(status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(vec!["NODE", "STATUS", "PHI", "PEER", "HTTP", "ZONE", "PARTITIONS", "HINTS HELD"]);
    for m in status["members"].as_array().into_iter().flatten() {
        let id =
            if m["self"] == Value::Bool(true) { format!("{} *", text(&m["id"])) } else { text(&m["id"]) };
        table.add_row(vec![
            id,
            text(&m["status"]),
            text(&m["phi"]),
            text(&m["addr"]),
            text(&m["http"]),
            text(&m["zone"]),
            text(&m["partitions"]),
            text(&m["hints_pending"]),
        ]);
    }
    let ring = &status["ring"];
    let hints = &status["hints"];
    format!(
        "node {} at {}: {}\nring: {} partitions, N={}, epoch {}\n\n{}\n\n* = the node that answered; hints held = writes it keeps for that node until it is back\nhints: {} stored, {} delivered since start\n",
        text(&status["node"]),
        text(&status["url"]),
        text(&status["status"]),
        text(&ring["partitions"]),
        text(&ring["n"]),
        text(&ring["epoch"]),
        table.trim_fmt(),
        text(&hints["stored"]),
        text(&hints["delivered"]),
    )
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

    fn printed(read: &Read, format: ReadFormat) -> String {
        let mut out = Vec::new();
        write_read(&mut out, "cart", read, &format).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Siblings print one per line, raw, after the context line with
    /// `--context`: a shell reads the context with `head -n1` and the
    /// values with `tail -n +2`, never from stderr.
    #[test]
    fn reads_print_in_a_form_the_shell_can_use() {
        let read = Read {
            values: vec![Bytes::from_static(b"milk"), Bytes::from_static(b"eggs")],
            context: Some("CTX".into()),
        };
        assert_eq!(printed(&read, ReadFormat::default()), "milk\neggs\n");
        assert_eq!(printed(&read, ReadFormat { context: true, ..Default::default() }), "CTX\nmilk\neggs\n");
        assert_eq!(
            printed(&read, ReadFormat { context: true, null: true, ..Default::default() }),
            "CTX\0milk\0eggs\0"
        );
        let json: Value =
            serde_json::from_str(&printed(&read, ReadFormat { json: true, ..Default::default() })).unwrap();
        assert_eq!(json["context"], "CTX");
        assert_eq!(json["values"][1], STANDARD.encode("eggs"));
        let missing = Read { values: vec![], context: None };
        assert_eq!(printed(&missing, ReadFormat { context: true, ..Default::default() }), "\n");
    }

    #[test]
    fn auth_refusals_say_what_to_do() {
        let missing =
            auth_error(StatusCode::UNAUTHORIZED, "this node requires a bearer token", false).unwrap();
        assert!(
            missing.to_string().starts_with("the node requires a token: set DYNAMO_TOKEN or --token-file"),
            "{missing}"
        );
        let refused = auth_error(StatusCode::UNAUTHORIZED, "token 'ci' has expired", true).unwrap();
        assert!(refused.to_string().contains("refused the token (token 'ci' has expired)"), "{refused}");
        let forbidden =
            auth_error(StatusCode::FORBIDDEN, "token 'x' lacks scope admin, which GET /admin/… needs", true)
                .unwrap();
        assert!(forbidden.to_string().starts_with("token 'x' lacks scope admin"), "{forbidden}");
        assert!(auth_error(StatusCode::NOT_FOUND, "not found", true).is_none());
    }

    #[test]
    fn status_is_a_table_for_people() {
        let status = serde_json::json!({
            "url": "http://127.0.0.1:8001", "node": 1, "status": "ok",
            "ring": { "partitions": 256, "n": 3, "epoch": 0 },
            "members": [
                { "id": 1, "addr": "127.0.0.1:7001", "http": "http://127.0.0.1:8001", "zone": null, "partitions": 86, "hints_pending": 0, "self": true },
                { "id": 2, "addr": "127.0.0.1:7002", "http": null, "zone": "b", "partitions": 85, "hints_pending": 4, "self": false, "status": "down", "phi": 9.5 },
            ],
            "hints": { "stored": 4, "delivered": 0 },
        });
        let text = status_table(&status);
        assert!(
            text.starts_with("node 1 at http://127.0.0.1:8001: ok\nring: 256 partitions, N=3, epoch 0\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.trim_start().starts_with("2 ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["2", "down", "9.5", "127.0.0.1:7002", "-", "b", "85", "4"], "{text}");
        assert!(text.lines().any(|l| l.trim_start().starts_with("1 *")), "{text}");
        assert!(!text.contains("Number(") && !text.contains("Object {"), "{text}");
    }
}
