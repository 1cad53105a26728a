//! The load generator's HTTP/1.1 client: one keep-alive connection per
//! worker, driven inside the worker's own task (hyper's connection future
//! is polled next to the request), so a request costs no task hand-off
//! and no pool lookup on the generator's side. Request URIs are parsed
//! once per key ahead of the run where the table fits.

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::net::TcpStream;

use super::stats::ErrorKind;
use super::workload::{key_name, push_key_name};
use crate::client::encode_key;

/// A request not answered within this is a `timeout` error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection set-up limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit of the `/health` check and of a `/metrics` scrape.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer body kept (a `/metrics` scrape); a longer one is a
/// transport error, so memory never follows what a node sends.
const MAX_KEPT_BODY: usize = 16 * 1024 * 1024;

/// Where one node's requests go.
#[derive(Debug)]
pub(crate) struct Target {
    /// The node's URL as given (normalized): `http://host:port[/prefix]`.
    pub(crate) base: String,
    /// `host:port` to dial.
    addr: String,
    /// The `Host` header.
    host: HeaderValue,
    /// The `Authorization` header, when the run has a token (sensitive:
    /// never shown by `Debug`).
    authorization: Option<HeaderValue>,
    /// The path prefix, empty or `/prefix`.
    prefix: String,
    /// The URI of each key's `/kv/` path, parsed ahead; empty when there
    /// are too many.
    table: Vec<Uri>,
}

impl Target {
    /// The target at normalized URL `base`, with the URIs of `keys` keys
    /// parsed ahead when `tabulate`; every request carries
    /// `authorization` when given.
    ///
    /// # Errors
    /// A URL without a host, or a path that does not form a URI.
    pub(crate) fn new(
        base: String,
        keys: u64,
        tabulate: bool,
        authorization: Option<HeaderValue>,
    ) -> anyhow::Result<Self> {
        let url = Url::parse(&base).with_context(|| format!("bad node URL {base}"))?;
        let host = url.host_str().with_context(|| format!("node URL {base} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = format!("{host}:{port}");
        let prefix = url.path().trim_end_matches('/').to_string();
        let mut target = Target {
            host: HeaderValue::from_str(&addr).with_context(|| format!("bad host in {base}"))?,
            authorization,
            addr,
            prefix,
            base,
            table: Vec::new(),
        };
        // Key names are URL-safe: if one key's path parses, all do.
        let probe = format!("{}/kv/{}", target.prefix, key_name(0));
        Uri::try_from(probe.as_str())
            .with_context(|| format!("node URL {} gives bad request paths", target.base))?;
        if tabulate {
            target.table.reserve(usize::try_from(keys).unwrap_or(0));
            for i in 0..keys {
                let path = format!("{}/kv/{}", target.prefix, encode_key(&key_name(i)));
                target
                    .table
                    .push(Uri::try_from(path.as_str()).with_context(|| format!("bad request path {path}"))?);
            }
        }
        Ok(target)
    }

    /// The URI of key `index`: a clone of its parsed URI (a reference
    /// count), or without a table one formatted into `scratch`.
    fn key_uri(&self, index: u64, scratch: &mut String) -> Uri {
        if let Some(uri) = usize::try_from(index).ok().and_then(|i| self.table.get(i)) {
            return uri.clone();
        }
        scratch.clear();
        scratch.push_str(&self.prefix);
        scratch.push_str("/kv/");
        push_key_name(scratch, index);
        // `new` checked that the prefix forms request paths.
        Uri::try_from(scratch.as_str()).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// A `GET` (no `value`) or a `PUT` of `value` to key `index`.
    pub(crate) fn kv_request(
        &self,
        index: u64,
        value: Option<Bytes>,
        scratch: &mut String,
    ) -> Request<Full<Bytes>> {
        let method = if value.is_some() { Method::PUT } else { Method::GET };
        self.request(method, self.key_uri(index, scratch), value.unwrap_or_default())
    }

    fn request(&self, method: Method, uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, self.host.clone());
        if let Some(authorization) = &self.authorization {
            req.headers_mut().insert(AUTHORIZATION, authorization.clone());
        }
        req
    }

    /// A `GET` of `path` (below the prefix) on a connection of its own,
    /// with the whole answer's body.
    ///
    /// # Errors
    /// No connection, no answer within the health timeout, a bad path.
    pub(crate) async fn fetch(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let uri = Uri::try_from(format!("{}{path}", self.prefix)).context("bad path")?;
        let req = self.request(Method::GET, uri, Bytes::new());
        let once = async {
            let mut conn = Conn::open(&self.addr).await?;
            conn.exchange(req, true).await
        };
        match tokio::time::timeout(HEALTH_TIMEOUT, once).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(kind)) => anyhow::bail!("{kind}"),
            Err(_) => anyhow::bail!("no answer within {HEALTH_TIMEOUT:?}"),
        }
    }

    /// Whether the node answers `/health` with a success, and a read of
    /// the first key with anything but `401`/`403` (a node that requires
    /// a token the run lacks, or refuses the one it has).
    ///
    /// # Errors
    /// What went wrong, naming the node.
    pub(crate) async fn check_health(&self) -> anyhow::Result<()> {
        let result = match self.fetch("/health").await {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, _)) => Err(anyhow::anyhow!("/health answered {status}")),
            Err(e) => Err(e),
        };
        result.map_err(|e| anyhow::anyhow!("node {} is unreachable: {e:#}", self.base))?;
        let path = format!("/kv/{}", key_name(0));
        let (status, body) =
            self.fetch(&path).await.map_err(|e| anyhow::anyhow!("node {}: {e:#}", self.base))?;
        let message = crate::client::error_message(&body);
        match crate::client::auth_error(status, &message, self.authorization.is_some()) {
            Some(refused) => Err(refused.context(format!("node {}", self.base))),
            None => Ok(()),
        }
    }

    /// The node's CPU seconds so far (`dynamo_process_cpu_seconds_total`
    /// on its `/metrics`); `None` if it does not tell.
    pub(crate) async fn cpu_seconds(&self) -> Option<f64> {
        let (status, body) = self.fetch("/metrics").await.ok()?;
        if !status.is_success() {
            return None;
        }
        cpu_seconds_in(std::str::from_utf8(&body).ok()?)
    }
}

/// The value of `dynamo_process_cpu_seconds_total` in a Prometheus text
/// exposition.
pub(crate) fn cpu_seconds_in(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("dynamo_process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// One keep-alive HTTP/1.1 connection, driven by whoever sends on it.
pub(crate) struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
}

impl Conn {
    /// Dials `addr` (`host:port`) and sets `TCP_NODELAY`.
    async fn open(addr: &str) -> Result<Conn, ErrorKind> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            _ => return Err(ErrorKind::Connect),
        };
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Ok(Conn { sender, driver: Box::pin(driver) })
    }

    /// Sends `req` and reads the whole answer, keeping its body when
    /// `keep_body` (else discarding it chunk by chunk). The connection
    /// is polled meanwhile; its end is a transport error.
    async fn exchange(
        &mut self,
        req: Request<Full<Bytes>>,
        keep_body: bool,
    ) -> Result<(StatusCode, Bytes), ErrorKind> {
        let Conn { sender, driver } = self;
        let work = async {
            poll_fn(|cx| sender.poll_ready(cx)).await.map_err(|_| ErrorKind::Transport)?;
            let resp = sender.send_request(req).await.map_err(|_| ErrorKind::Transport)?;
            let status = resp.status();
            let mut body = resp.into_body();
            if keep_body {
                let limited = http_body_util::Limited::new(body, MAX_KEPT_BODY);
                let all = limited.collect().await.map_err(|_| ErrorKind::Transport)?;
                return Ok((status, all.to_bytes()));
            }
            while let Some(frame) = body.frame().await {
                frame.map_err(|_| ErrorKind::Transport)?;
            }
            Ok((status, Bytes::new()))
        };
        tokio::select! {
            biased;
            answer = work => answer,
            _ = driver.as_mut() => Err(ErrorKind::Transport),
        }
    }
}

/// A worker's connection to its node, opened on first use and again after
/// any failure.
#[derive(Default)]
pub(crate) struct Link {
    conn: Option<Conn>,
}

impl Link {
    /// Sends `req` to `target` and returns the answer's status; the body is
    /// read and dropped so the connection can carry the next request.
    ///
    /// # Errors
    /// No connection, no answer within [`REQUEST_TIMEOUT`], a broken one.
    pub(crate) async fn send(
        &mut self,
        target: &Target,
        req: Request<Full<Bytes>>,
    ) -> Result<StatusCode, ErrorKind> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(Conn::open(&target.addr).await?),
        };
        let result = match tokio::time::timeout(REQUEST_TIMEOUT, conn.exchange(req, false)).await {
            Ok(answer) => answer.map(|(status, _)| status),
            Err(_) => Err(ErrorKind::Timeout),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_uris_from_the_table_and_formatted_agree() {
        let with = Target::new("http://127.0.0.1:8001".into(), 50, true, None).unwrap();
        let without = Target::new(
            "http://127.0.0.1:8001".into(),
            50,
            false,
            Some(HeaderValue::from_static("Bearer t")),
        )
        .unwrap();
        assert_eq!(with.table.len(), 50);
        assert!(without.table.is_empty());
        assert_eq!(with.addr, "127.0.0.1:8001");
        let mut scratch = String::new();
        for k in [0, 7, 49, 50_000] {
            let a = with.kv_request(k, None, &mut scratch);
            let b = without.kv_request(k, Some(Bytes::from_static(b"v")), &mut scratch);
            assert_eq!(a.uri().to_string(), format!("/kv/{}", key_name(k)));
            assert_eq!(a.uri(), b.uri());
            assert_eq!((a.method(), b.method()), (&Method::GET, &Method::PUT));
            assert_eq!(a.headers()[HOST], "127.0.0.1:8001");
            assert!(a.headers().get(AUTHORIZATION).is_none());
            assert_eq!(b.headers()[AUTHORIZATION], "Bearer t", "the token goes with every request");
        }
        let prefixed = Target::new("http://h:1/prefix".into(), 1, true, None).unwrap();
        assert_eq!(prefixed.kv_request(0, None, &mut scratch).uri(), "/prefix/kv/user0000000000");
        assert_eq!(Target::new("http://h".into(), 0, false, None).unwrap().addr, "h:80");
    }

    #[test]
    fn cpu_seconds_are_read_from_a_scrape() {
        let text = "# HELP dynamo_process_cpu_seconds CPU\n# TYPE dynamo_process_cpu_seconds counter\n\
                    dynamo_process_cpu_seconds_total 12.5\ndynamo_puts_total 3\n";
        assert_eq!(cpu_seconds_in(text), Some(12.5));
        assert_eq!(cpu_seconds_in("dynamo_puts_total 3\n"), None);
    }
}
