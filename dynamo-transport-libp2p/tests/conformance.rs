//! The shared transport conformance suite, run against libp2p on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dynamo_core::transport::Transport;
use dynamo_testkit::conformance::{transport_suite, TransportFixture};
use dynamo_transport_libp2p::{Libp2pConfig, Libp2pTransport};

/// Frame limit of the fixture's transports: 1 MiB (the default 16 MiB
/// works the same, only slower through a debug build's Noise encryption).
const MAX_FRAME: usize = 1024 * 1024;

/// Binds transports on 127.0.0.1, each with a fresh identity seed, and
/// remembers the seed of every address it hands out so `bind_at` can bring
/// the same node back: same port, same peer id.
#[derive(Default)]
struct Libp2p {
    seeds: Mutex<HashMap<String, String>>,
}

fn config(listen: String, seed: String) -> Libp2pConfig {
    Libp2pConfig { max_frame_bytes: MAX_FRAME, identity_seed_hex: Some(seed), ..Libp2pConfig::new(listen) }
}

/// `/ip4/127.0.0.1/tcp/<port>` of a full peer address.
fn listen_part(addr: &str) -> String {
    let (listen, _peer) = addr.split_once("/p2p/").expect("a peer address ends in /p2p/<peer id>");
    listen.to_owned()
}

#[async_trait]
impl TransportFixture for Libp2p {
    async fn bind(&self) -> Arc<dyn Transport> {
        let seed = Libp2pConfig::generate_identity_seed_hex();
        let t = Libp2pTransport::bind(config("/ip4/127.0.0.1/tcp/0".into(), seed.clone()))
            .await
            .expect("bind a fresh port");
        self.seeds.lock().unwrap().insert(t.local_addr().to_owned(), seed);
        Arc::new(t)
    }

    async fn bind_at(&self, addr: &str) -> Arc<dyn Transport> {
        let seed = self.seeds.lock().unwrap().get(addr).cloned().expect("an address this fixture handed out");
        let t = Libp2pTransport::bind(config(listen_part(addr), seed))
            .await
            .expect("bind the restarted peer's address");
        assert_eq!(t.local_addr(), addr, "the restarted peer has the same address");
        Arc::new(t)
    }

    fn unused_addr(&self) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        let port = listener.local_addr().expect("probe address").port();
        drop(listener);
        let peer = Libp2pConfig::default()
            .with_identity_seed(&[0x5a; 32])
            .peer_id()
            .expect("a valid seed")
            .expect("a seeded identity");
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_passes_the_transport_suite() {
    transport_suite(Libp2p::default()).await;
}
