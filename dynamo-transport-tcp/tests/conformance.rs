//! The shared transport conformance suite, run against TCP on loopback,
//! in plaintext and with mutual TLS.

use std::sync::Arc;

use async_trait::async_trait;
use dynamo_core::transport::Transport;
use dynamo_testkit::conformance::{transport_suite, TransportFixture};
use dynamo_transport_tcp::certs::{write_private, ClusterCa};
use dynamo_transport_tcp::{TcpConfig, TcpTransport, TlsConfig};

/// Binds transports on 127.0.0.1 with a 4 MiB frame limit (the default
/// 16 MiB works the same, only slower in a debug build), with mutual TLS
/// when `tls` is set (one certificate for 127.0.0.1 serves every node).
struct Tcp {
    tls: Option<(TlsConfig, tempfile::TempDir)>,
}

impl Tcp {
    fn plaintext() -> Self {
        Tcp { tls: None }
    }

    fn secured() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = ClusterCa::generate("conformance").expect("CA");
        let node = ca.issue("node", &["127.0.0.1".into()]).expect("node certificate");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.cert_pem()).expect("write CA");
        std::fs::write(path("node.pem"), &node.cert_pem).expect("write certificate");
        write_private(&path("node.key"), &node.key_pem).expect("write key");
        let tls = TlsConfig {
            ca_file: path("ca.pem"),
            cert_file: path("node.pem"),
            key_file: path("node.key"),
            crl_file: None,
        };
        Tcp { tls: Some((tls, dir)) }
    }

    fn config(&self, addr: &str) -> TcpConfig {
        let tls = self.tls.as_ref().map(|(tls, _)| tls.clone());
        TcpConfig { max_frame_bytes: MAX_FRAME, tls, ..TcpConfig::new(addr) }
    }
}

const MAX_FRAME: usize = 4 * 1024 * 1024;

#[async_trait]
impl TransportFixture for Tcp {
    async fn bind(&self) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::bind(self.config("127.0.0.1:0")).await.expect("bind a fresh port"))
    }

    async fn bind_at(&self, addr: &str) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::bind(self.config(addr)).await.expect("bind the restarted peer's address"))
    }

    fn unused_addr(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let addr = listener.local_addr().expect("probe address").to_string();
        drop(listener);
        addr
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passes_the_transport_suite() {
    transport_suite(Tcp::plaintext()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_with_mutual_tls_passes_the_transport_suite() {
    transport_suite(Tcp::secured()).await;
}
