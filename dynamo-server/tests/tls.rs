//! Secured peer links end to end: certificates from `dynamo-server cert`,
//! a node refusing a key file others can read, and a node of another CA
//! kept out while the cluster serves.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_server::config::ServerConfig;
use dynamo_transport_tcp::certs::ClusterCa;
use support::{certify, eventually, free_port, ProcCluster, CONVERGE};

fn dynamo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dynamo-server")).args(args).output().expect("run dynamo-server")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn cert_makes_a_ca_and_node_certificates_and_never_prints_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let ca = dynamo(&["cert", "ca", "--dir", d]);
    assert!(ca.status.success(), "{}", text(&ca));
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    let again = dynamo(&["cert", "ca", "--dir", d]);
    assert!(!again.status.success() && text(&again).contains("--force"), "{}", text(&again));

    let node = dynamo(&[
        "cert",
        "node",
        "--dir",
        d,
        "--name",
        "node1",
        "--host",
        "127.0.0.1",
        "--host",
        "node1.example",
    ]);
    assert!(node.status.success(), "{}", text(&node));
    assert!(text(&node).contains("[peer.tls]"), "{}", text(&node));
    assert_eq!(mode(&dir.path().join("node1.key")), 0o600);
    for out in [&ca, &node] {
        assert!(!text(out).contains("PRIVATE KEY"), "keys are never printed: {}", text(out));
    }
    let bad_host = dynamo(&["cert", "node", "--dir", d, "--name", "node2", "--host", "not a host"]);
    assert!(!bad_host.status.success(), "{}", text(&bad_host));
    let bad_name = dynamo(&["cert", "node", "--dir", d, "--name", "../x", "--host", "127.0.0.1"]);
    assert!(!bad_name.status.success(), "{}", text(&bad_name));

    // The files it wrote make a working TLS configuration.
    let tls = dynamo_transport_tcp::TlsConfig {
        ca_file: dir.path().join("ca.pem"),
        cert_file: dir.path().join("node1.pem"),
        key_file: dir.path().join("node1.key"),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let config = dynamo_transport_tcp::TcpConfig {
            tls: Some(tls),
            ..dynamo_transport_tcp::TcpConfig::new("127.0.0.1:0")
        };
        dynamo_transport_tcp::TcpTransport::bind(config).await.expect("the issued files load and check out");
    });
}

/// A node whose private key other users may read does not start, and says
/// which file.
#[test]
fn serve_refuses_a_private_key_readable_by_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("t").unwrap();
    let mut c = ServerConfig { data_dir: dir.path().join("data"), ..ServerConfig::default() };
    c.http.listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    c.peer.listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    (c.cluster.n, c.cluster.r, c.cluster.w) = (1, 1, 1);
    let tls = certify(&ca, &dir.path().join("tls"), 1, "127.0.0.1");
    std::fs::set_permissions(&tls.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.peer.tls = Some(tls.clone());
    let path = dir.path().join("dynamo.toml");
    std::fs::write(&path, toml::to_string_pretty(&c).unwrap()).unwrap();
    let out = dynamo(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains(&tls.key_file.display().to_string()) && said.contains("0644"), "{said}");
    assert!(!said.contains("PRIVATE KEY"), "{said}");
}

/// A node with a certificate from another CA, seeded with the cluster's
/// nodes, is refused at the handshake (logged with its address) and never
/// becomes a member, while the cluster goes on serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_ca_is_refused_and_the_cluster_keeps_serving() {
    let mut cluster = ProcCluster::start(3).ready().await;
    let seeds: Vec<String> = (0..3).map(|i| cluster.config(i).peer.listen).collect();
    let other = ClusterCa::generate("intruder").unwrap();
    let host = cluster.host.clone();
    let start = cluster.log(0).len();
    let foreign = cluster.add_node_with(seeds, |c| {
        c.peer.tls = Some(certify(&other, &c.data_dir.join("tls"), c.node_id, &host));
    });
    let intruder = cluster.config(foreign).node_id;

    let deadline = Instant::now() + CONVERGE;
    loop {
        let refused = (0..3).any(|i| {
            let log = cluster.log(i);
            log.get(if i == 0 { start } else { 0 }..)
                .is_some_and(|l| l.contains("peer connection refused: TLS handshake failed"))
        });
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no node logged the refusal; foreign log:\n{}",
            cluster.log(foreign)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cluster.log(foreign).contains("TLS handshake failed"), "{}", cluster.log(foreign));

    // The cluster serves, and none of its nodes lists the intruder.
    for k in 0..50u32 {
        cluster.client(k as usize % 3).put(&format!("k{k}"), Bytes::from("v"), None, Some(2)).await.unwrap();
    }
    for i in 0..3 {
        let members: serde_json::Value =
            reqwest::get(format!("{}/admin/members", cluster.url(i))).await.unwrap().json().await.unwrap();
        let listed = members.to_string();
        assert!(
            !members["members"].as_array().into_iter().flatten().any(|m| m["id"] == intruder),
            "node {} lists the intruder: {listed}",
            i + 1
        );
    }
    eventually("every write readable at R=3", || {
        let client = cluster.client(1);
        async move {
            for k in 0..50u32 {
                let read = client.get(&format!("k{k}"), Some(3)).await.map_err(|e| format!("k{k}: {e:#}"))?;
                if read.values != vec![Bytes::from("v")] {
                    return Err(format!("k{k}: {:?}", read.values));
                }
            }
            Ok(())
        }
    })
    .await;
}
