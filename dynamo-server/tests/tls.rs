//! Secured links end to end: certificates from `dynamo-server cert`, a
//! node refusing a key file others can read, a node of another CA kept
//! out while the cluster serves, and the HTTP API over TLS.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dynamo_server::config::ServerConfig;
use dynamo_transport_tcp::certs::ClusterCa;
use support::{certify, eventually, free_ports, ProcCluster, CONVERGE};

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
        crl_file: None,
    };
    // Revoking node2 lists it in crl.pem; node1, given the list, still
    // starts, node2 does not.
    let node2 = dynamo(&["cert", "node", "--dir", d, "--name", "node2", "--host", "127.0.0.1"]);
    assert!(node2.status.success(), "{}", text(&node2));
    let revoke = dynamo(&["cert", "revoke", "--dir", d, "--name", "node2"]);
    assert!(revoke.status.success() && text(&revoke).contains("1 certificate(s)"), "{}", text(&revoke));
    let again = dynamo(&["cert", "revoke", "--dir", d, "--name", "node2"]);
    assert!(!again.status.success() && text(&again).contains("already revoked"), "{}", text(&again));
    let unknown = dynamo(&["cert", "revoke", "--dir", d, "--name", "node9"]);
    assert!(!unknown.status.success() && text(&unknown).contains("node9.serial"), "{}", text(&unknown));
    let crl_file = Some(dir.path().join("crl.pem"));
    let node2_tls = dynamo_transport_tcp::TlsConfig {
        cert_file: dir.path().join("node2.pem"),
        key_file: dir.path().join("node2.key"),
        crl_file: crl_file.clone(),
        ..tls.clone()
    };
    let node1_with_crl = dynamo_transport_tcp::TlsConfig { crl_file, ..tls.clone() };

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let bind = |tls| {
            dynamo_transport_tcp::TcpTransport::bind(dynamo_transport_tcp::TcpConfig {
                tls: Some(tls),
                ..dynamo_transport_tcp::TcpConfig::new("127.0.0.1:0")
            })
        };
        bind(node1_with_crl).await.expect("node1 is not revoked");
        let err = bind(node2_tls).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("node2.pem") && err.to_lowercase().contains("revoked"), "{err}");
    });
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
    let [http, peer] = free_ports("127.0.0.1", 2)[..] else { unreachable!("two ports asked for") };
    c.http.listen = format!("127.0.0.1:{http}");
    c.peer.listen = format!("127.0.0.1:{peer}");
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
        c.peer.tls = Some(certify(&other, &c.data_dir.join("foreign-tls"), c.node_id, &host));
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

/// The HTTP API over TLS: the CLI's client reads and writes through it
/// with the CA; without the CA, with another CA, or in plaintext it gets
/// nowhere, and a client that never finishes its handshake is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_https_to_clients_that_trust_its_ca() {
    use dynamo_server::client::ApiClient;
    use dynamo_server::http::{router, AppState};
    use dynamo_server::http_listener::{self, ClientSecurity, HttpLimits};
    use dynamo_server::metrics::ServerMetrics;
    use tokio::io::AsyncReadExt as _;

    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("api").unwrap();
    let tls = certify(&ca, dir.path(), 1, "127.0.0.1");
    let other = ClusterCa::generate("other").unwrap();
    std::fs::write(dir.path().join("other.pem"), other.cert_pem()).unwrap();

    let cluster = dynamo_testkit::Cluster::builder().nodes(1).n(1).r(1).w(1).build().await.unwrap();
    let state =
        std::sync::Arc::new(AppState { node: cluster.node(0).unwrap(), metrics: ServerMetrics::new() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_connections: 64,
        max_header_bytes: 8192,
        drain_timeout: Duration::from_secs(5),
        rate_limit_per_s: 0,
        rate_limit_burst: 0,
    };
    let security = ClientSecurity {
        tokens: None,
        tls: Some(dynamo_transport_tcp::server_config(&tls.cert_file, &tls.key_file).unwrap()),
        ..ClientSecurity::default()
    };
    tokio::spawn(http_listener::serve_secured(
        listener,
        router(state),
        limits,
        security,
        std::future::pending(),
    ));

    let url = format!("https://{addr}");
    let client = ApiClient::connect(&url, None, Some(&tls.ca_file)).unwrap();
    client.put("k", Bytes::from("over tls"), None, None).await.unwrap();
    assert_eq!(client.get("k", None).await.unwrap().values, vec![Bytes::from("over tls")]);

    let err = ApiClient::connect(&url, None, None).expect_err("https without a CA is refused");
    assert!(format!("{err:#}").contains("--ca-file"), "{err:#}");
    let stranger = ApiClient::connect(&url, None, Some(&dir.path().join("other.pem"))).unwrap();
    assert!(stranger.get("k", None).await.is_err(), "a certificate from another CA is not trusted");
    let plaintext = ApiClient::new(&format!("http://{addr}")).unwrap();
    assert!(plaintext.get("k", None).await.is_err(), "plaintext HTTP is not served on a TLS port");

    // A client that connects and never starts its handshake is closed
    // after the header timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed, not answered: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed by the header timeout");
}
