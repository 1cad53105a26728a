//! The shared transport conformance suite, run against TCP on loopback.

use std::sync::Arc;

use async_trait::async_trait;
use dynamo_core::transport::Transport;
use dynamo_testkit::conformance::{transport_suite, TransportFixture};
use dynamo_transport_tcp::{TcpConfig, TcpTransport};

/// Binds transports on 127.0.0.1 with a 4 MiB frame limit (the default
/// 16 MiB works the same, only slower in a debug build).
struct Tcp;

const MAX_FRAME: usize = 4 * 1024 * 1024;

fn config(addr: &str) -> TcpConfig {
    TcpConfig { max_frame_bytes: MAX_FRAME, ..TcpConfig::new(addr) }
}

#[async_trait]
impl TransportFixture for Tcp {
    async fn bind(&self) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::bind(config("127.0.0.1:0")).await.expect("bind a fresh port"))
    }

    async fn bind_at(&self, addr: &str) -> Arc<dyn Transport> {
        Arc::new(TcpTransport::bind(config(addr)).await.expect("bind the restarted peer's address"))
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
    transport_suite(Tcp).await;
}
