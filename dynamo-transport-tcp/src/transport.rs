//! [`TcpTransport`]: binding, serving, calling and shutting down.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::client::{lock, Pool, PoolShared};
use crate::config::TcpConfig;
use crate::server::{accept_loop, ServeOptions};
use crate::tls::PeerTls;

/// Pending connections the kernel queues before `accept`.
const LISTEN_BACKLOG: u32 = 1024;

/// A [`Transport`] over TCP; see the [crate docs](crate) for the wire format
/// and behaviour.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. Dropping it
/// without [`Transport::shutdown`] also stops its listener and connections,
/// but only `shutdown` waits until the listener is closed.
pub struct TcpTransport {
    local_addr: String,
    shared: Arc<PoolShared>,
    pool: Pool,
    /// Bound but not yet accepting; taken by `serve` (or `shutdown`).
    listener: Mutex<Option<TcpListener>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// The TLS server side, when `config.tls` is set.
    acceptor: Option<TlsAcceptor>,
}

impl TcpTransport {
    /// Binds the listener at `config.listen_addr` (with `SO_REUSEADDR`, so a
    /// restarted node gets its port back at once) without accepting yet:
    /// [`Transport::serve`] starts accepting. The advertised address is
    /// known from here on, with port 0 resolved.
    ///
    /// With `config.tls` set, the TLS files are read and checked here (see
    /// [`TlsConfig`](crate::TlsConfig)), and every connection either way
    /// will be mutual TLS.
    ///
    /// # Errors
    /// [`TransportError::Listen`] when the config is invalid, the address
    /// does not resolve, no resolved address can be bound (in use, say), or
    /// the TLS files are unreadable, open to other users, or do not fit
    /// together (the reason names the file).
    pub async fn bind(config: TcpConfig) -> Result<TcpTransport, TransportError> {
        let listen_error =
            |reason: String| TransportError::Listen { addr: config.listen_addr.clone(), reason };
        config.validate().map_err(|e| listen_error(e.to_string()))?;
        let addrs = tokio::net::lookup_host(&config.listen_addr)
            .await
            .map_err(|e| listen_error(format!("cannot resolve: {e}")))?;
        let mut last_error = "resolves to no address".to_owned();
        let mut bound = None;
        for addr in addrs {
            let attempt = (|| {
                let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(LISTEN_BACKLOG)
            })();
            match attempt {
                Ok(listener) => {
                    bound = Some(listener);
                    break;
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        let listener = bound.ok_or_else(|| listen_error(last_error))?;
        let local = listener.local_addr().map_err(|e| listen_error(e.to_string()))?;
        let local_addr = match &config.advertise_addr {
            Some(addr) => addr.clone(),
            None => {
                if local.ip().is_unspecified() {
                    warn!(%local, "listening on a wildcard address without advertise_addr; peers cannot dial it");
                }
                local.to_string()
            }
        };
        let tls = match &config.tls {
            Some(files) => Some(PeerTls::load(files, &local_addr).map_err(|e| listen_error(e.to_string()))?),
            None => None,
        };
        let shared = Arc::new(PoolShared {
            closed: Default::default(),
            cancel: CancellationToken::new(),
            tls: tls.as_ref().map(|t| t.connector.clone()),
            config,
        });
        Ok(TcpTransport {
            local_addr,
            pool: Pool::new(Arc::clone(&shared)),
            shared,
            listener: Mutex::new(Some(listener)),
            accept_task: Mutex::new(None),
            acceptor: tls.map(|t| t.acceptor),
        })
    }

    /// The options this transport was bound with.
    pub fn config(&self) -> &TcpConfig {
        &self.shared.config
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

#[async_trait]
impl Transport for TcpTransport {
    /// The advertised address: `advertise_addr`, or else the bound address.
    fn local_addr(&self) -> &str {
        &self.local_addr
    }

    /// Starts accepting connections in a background task and returns.
    ///
    /// # Errors
    /// [`TransportError::Listen`] when already serving or shut down.
    async fn serve(&self, handler: Arc<dyn FrameHandler>) -> Result<(), TransportError> {
        let mut task = lock(&self.accept_task);
        let Some(listener) = lock(&self.listener).take() else {
            let reason = if self.is_closed() { "transport was shut down" } else { "already serving" };
            return Err(TransportError::Listen { addr: self.local_addr.clone(), reason: reason.into() });
        };
        let options = ServeOptions::new(&self.shared.config, self.acceptor.clone());
        *task = Some(tokio::spawn(accept_loop(listener, handler, options, self.shared.cancel.clone())));
        Ok(())
    }

    /// Sends `frame` to `to` over a pooled connection and waits for the
    /// response, all within `timeout`.
    ///
    /// # Errors
    /// - [`TransportError::FrameTooLarge`] for a frame over `max_frame_bytes`
    ///   (nothing is sent);
    /// - [`TransportError::Refused`] when the connect fails or times out, or
    ///   while the peer is in reconnect backoff (at once): the frame was not
    ///   sent;
    /// - [`TransportError::Unreachable`] when the connection breaks with the
    ///   call in flight (the peer may have executed it), and when the peer's
    ///   response exceeded its frame limit or its handler panicked (the
    ///   server sends a short error frame instead, so this is prompt);
    /// - [`TransportError::Timeout`] when no response came within `timeout`;
    /// - [`TransportError::Closed`] after [`Transport::shutdown`].
    async fn call(&self, to: &str, frame: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        let max = self.shared.config.max_frame_bytes;
        if frame.len() > max {
            return Err(TransportError::FrameTooLarge { size: frame.len(), max });
        }
        self.pool.call(to, frame, timeout).await
    }

    /// Stops accepting and closes every server connection (waiting until the
    /// listener is closed, so the address can be bound again), fails calls in
    /// flight with [`TransportError::Closed`], and makes later calls fail so.
    /// Handlers already running finish, but their responses are dropped.
    /// Idempotent.
    async fn shutdown(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.cancel.cancel();
        self.pool.close_all(&TransportError::Closed);
        drop(lock(&self.listener).take());
        let task = lock(&self.accept_task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.cancel.cancel();
        self.pool.close_all(&TransportError::Closed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Silent;

    #[async_trait]
    impl FrameHandler for Silent {
        async fn handle(&self, _frame: Bytes) -> Bytes {
            std::future::pending().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_that_time_out_or_are_dropped_leave_nothing_pending() {
        let server = TcpTransport::bind(TcpConfig::new("127.0.0.1:0")).await.unwrap();
        server.serve(Arc::new(Silent)).await.unwrap();
        let client = Arc::new(TcpTransport::bind(TcpConfig::new("127.0.0.1:0")).await.unwrap());
        let addr = server.local_addr().to_owned();
        let timeout = Duration::from_millis(50);
        for _ in 0..10 {
            let err = client.call(&addr, Bytes::from_static(b"x"), timeout).await;
            assert_eq!(err, Err(TransportError::Timeout { peer: addr.clone(), timeout }));
        }
        assert_eq!(client.pool.pending_calls(), 0, "timed-out calls are forgotten");

        let caller = Arc::clone(&client);
        let target = addr.clone();
        let dropped = tokio::spawn(async move {
            caller.call(&target, Bytes::from_static(b"x"), Duration::from_secs(60)).await
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.pool.pending_calls() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the call never registered");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        dropped.abort();
        let _ = dropped.await;
        assert_eq!(client.pool.pending_calls(), 0, "a dropped call is forgotten");
        client.shutdown().await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bind_reports_bad_config_and_busy_address() {
        let bad = TcpConfig { connections_per_peer: 0, ..TcpConfig::new("127.0.0.1:0") };
        assert!(matches!(TcpTransport::bind(bad).await, Err(TransportError::Listen { .. })));
        let first = TcpTransport::bind(TcpConfig::new("127.0.0.1:0")).await.unwrap();
        let again = TcpTransport::bind(TcpConfig::new(first.local_addr())).await;
        assert!(matches!(again, Err(TransportError::Listen { .. })), "a listening port is not shared");
        let advertised =
            TcpConfig { advertise_addr: Some("node-a:7000".into()), ..TcpConfig::new("127.0.0.1:0") };
        assert_eq!(TcpTransport::bind(advertised).await.unwrap().local_addr(), "node-a:7000");
    }
}
