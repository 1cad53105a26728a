//! The node protocol at a node's door: frames from a peer of another
//! protocol version, or malformed ones, are refused with a clear error and
//! change nothing.

use std::time::Duration;

use bytes::Bytes;
use dynamo_core::prelude::*;
use dynamo_core::transport::protocol::{Request, Response, PROTOCOL_VERSION};
use dynamo_testkit::Cluster;

#[tokio::test(start_paused = true)]
async fn a_peer_speaking_another_protocol_version_is_refused_by_name() {
    let cluster = Cluster::builder().nodes(3).build().await.unwrap();
    let probe = cluster.net().endpoint("probe");
    let addr = cluster.ring().member(NodeId(1)).unwrap().addr.clone();
    let mut frame = Request::Ping.encode().to_vec();
    frame[..2].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    let answer = probe.call(&addr, Bytes::from(frame), Duration::from_secs(1)).await.unwrap();
    let Response::Error(e) = Response::decode(&answer).unwrap() else { panic!("not refused") };
    let e = e.into_error();
    let text = e.to_string();
    assert!(matches!(e, Error::Protocol(_)), "{e:?}");
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 1))
            && text.contains(&PROTOCOL_VERSION.to_string()),
        "{text}"
    );
    // Garbage after a right version is refused too, and the node serves on.
    let mut garbage = PROTOCOL_VERSION.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 9]);
    let answer = probe.call(&addr, Bytes::from(garbage), Duration::from_secs(1)).await.unwrap();
    assert!(matches!(Response::decode(&answer).unwrap(), Response::Error(_)));
    let ping = probe.call(&addr, Request::Ping.encode(), Duration::from_secs(1)).await.unwrap();
    assert_eq!(Response::decode(&ping).unwrap(), Response::Pong);
}
