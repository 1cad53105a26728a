//! The library path `cart_server.rs` takes: `dynamo-server` with the
//! `cart-union` reconciler registered, serving HTTP. Two carts written
//! without seeing each other read back as one merged cart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_examples::cart::{decode, Cart, CartUnion};
use dynamo_server::client::ApiClient;
use dynamo_server::config::ServerConfig;
use dynamo_server::ServerBuilder;

/// A port free now on a loopback address of this test's own (`127.a.b.1`,
/// drawn at random): outgoing connections leave from 127.0.0.1, so none
/// can take the port before the server binds it.
fn free_addr() -> String {
    use std::hash::{BuildHasher, Hasher};
    let draw = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let host = format!("127.{}.{}.1", 1 + draw % 254, (draw >> 8) % 256);
    let port = std::net::TcpListener::bind((host.as_str(), 0)).unwrap().local_addr().unwrap().port();
    format!("{host}:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_cart_reconciler_merges_concurrent_carts_over_http() {
    let plugins = ServerBuilder::new().reconciler(Arc::new(CartUnion)).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        reconciler: "cart-union".into(),
        ..ServerConfig::default()
    };
    (config.cluster.n, config.cluster.r, config.cluster.w) = (1, 1, 1);
    config.http.listen = free_addr();
    config.peer.listen = free_addr();
    let url = format!("http://{}", config.http.listen);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        dynamo_server::serve::serve_until(config, &plugins, false, async {
            let _ = stopped.await;
        })
        .await
    });
    let client = ApiClient::new(&url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.is_healthy().await {
        assert!(!server.is_finished(), "the server exited: {:?}", server.await);
        assert!(Instant::now() < deadline, "the server did not answer at {url}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two writes with no context: concurrent versions of the cart.
    client.put("cart:alice", Bytes::from("milk\n"), None, None).await.unwrap();
    client.put("cart:alice", Bytes::from("eggs\n"), None, None).await.unwrap();
    let read = client.get("cart:alice", None).await.unwrap();
    let expected: Cart = ["eggs", "milk"].map(String::from).into();
    assert_eq!(read.values.len(), 1, "the reconciler answers one merged cart: {read:?}");
    assert_eq!(decode(&read.values[0]), expected);

    // Writing it back with the read's context replaces both versions.
    client.put("cart:alice", read.values[0].clone(), read.context.as_deref(), None).await.unwrap();
    let local = client.json("/admin/local/cart:alice").await.unwrap();
    assert_eq!(local["data"]["siblings"].as_array().map(Vec::len), Some(1), "{local}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
