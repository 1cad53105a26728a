//! Mutual TLS on peer links: who gets in, who is refused before a single
//! frame is decoded, and what a bad configuration says at bind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dynamo_core::transport::{FrameHandler, Transport, TransportError};
use dynamo_transport_tcp::certs::{write_private, ClusterCa};
use dynamo_transport_tcp::{TcpConfig, TcpTransport, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(5);

/// Echoes, counting what it was handed.
#[derive(Default)]
struct Counting {
    handled: AtomicUsize,
}

#[async_trait]
impl FrameHandler for Counting {
    async fn handle(&self, frame: Bytes) -> Bytes {
        self.handled.fetch_add(1, Ordering::SeqCst);
        frame
    }
}

/// A CA and the files of one node certificate it issued for `hosts`.
struct Cluster {
    dir: tempfile::TempDir,
    ca: ClusterCa,
}

impl Cluster {
    fn new(name: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate(name).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Cluster { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The TLS files of a node named `name`, certified for `hosts`.
    fn node(&self, name: &str, hosts: &[&str]) -> TlsConfig {
        self.node_with_serial(name, hosts).0
    }

    /// [`node`](Self::node), and its certificate's serial number.
    fn node_with_serial(&self, name: &str, hosts: &[&str]) -> (TlsConfig, Vec<u8>) {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let cert = self.ca.issue(name, &hosts).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), &cert.cert_pem).unwrap();
        write_private(&self.path(&format!("{name}.key")), &cert.key_pem).unwrap();
        let tls = TlsConfig {
            ca_file: self.path("ca.pem"),
            cert_file: self.path(&format!("{name}.pem")),
            key_file: self.path(&format!("{name}.key")),
            crl_file: None,
        };
        (tls, cert.serial)
    }

    /// A revocation list of `serials`, written as `crl.pem`; its path.
    fn revoke(&self, serials: &[Vec<u8>]) -> PathBuf {
        let revoked: Vec<_> = serials.iter().map(|s| (s.clone(), std::time::SystemTime::now())).collect();
        let path = self.path("crl.pem");
        std::fs::write(&path, self.ca.revocation_list(&revoked, 1).unwrap()).unwrap();
        path
    }
}

fn config(tls: Option<TlsConfig>) -> TcpConfig {
    TcpConfig { tls, read_timeout_ms: 500, ..TcpConfig::new("127.0.0.1:0") }
}

async fn serving(tls: Option<TlsConfig>) -> (TcpTransport, Arc<Counting>) {
    let transport = TcpTransport::bind(config(tls)).await.unwrap();
    let handler = Arc::new(Counting::default());
    transport.serve(Arc::clone(&handler) as Arc<dyn FrameHandler>).await.unwrap();
    (transport, handler)
}

async fn client(tls: Option<TlsConfig>) -> TcpTransport {
    TcpTransport::bind(config(tls)).await.unwrap()
}

/// Reads until the peer closes the connection, which must happen within
/// `within`; what arrived before.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open past {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_cluster_talk_over_mutual_tls() {
    let cluster = Cluster::new("c");
    let (server, handled) = serving(Some(cluster.node("a", &["127.0.0.1"]))).await;
    let client = client(Some(cluster.node("b", &["127.0.0.1"]))).await;
    let addr = server.local_addr().to_owned();
    for i in 0..50u32 {
        let frame = Bytes::from(i.to_be_bytes().repeat(1 + i as usize * 300));
        assert_eq!(client.call(&addr, frame.clone(), T).await.unwrap(), frame);
    }
    // A frame several TLS records long, both ways.
    let big = Bytes::from((0..200_000u32).map(|i| i as u8).collect::<Vec<_>>());
    assert_eq!(client.call(&addr, big.clone(), T).await.unwrap(), big);
    assert_eq!(handled.handled.load(Ordering::SeqCst), 51);
    client.shutdown().await;
    server.shutdown().await;
}

/// Nodes of another cluster, with no certificate, or in plaintext get no
/// frame handled, in either direction, while a member keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_nodes_are_refused_and_members_keep_being_served() {
    let cluster = Cluster::new("ours");
    let other = Cluster::new("theirs");
    let (server, handled) = serving(Some(cluster.node("a", &["127.0.0.1"]))).await;
    let addr = server.local_addr().to_owned();
    let member = client(Some(cluster.node("b", &["127.0.0.1"]))).await;
    let foreign = client(Some(other.node("x", &["127.0.0.1"]))).await;
    let plaintext = client(None).await;

    for round in 0..3 {
        for (who, caller) in [("other CA", &foreign), ("plaintext", &plaintext)] {
            let err = caller.call(&addr, Bytes::from_static(b"let me in"), T).await.unwrap_err();
            assert!(
                matches!(err, TransportError::Refused { .. } | TransportError::Unreachable { .. }),
                "{who}, round {round}: {err:?}"
            );
        }
        let echoed = member.call(&addr, Bytes::from_static(b"member"), T).await.unwrap();
        assert_eq!(echoed, "member");
    }
    assert_eq!(handled.handled.load(Ordering::SeqCst), 3, "only the member's frames were handled");

    // The other way round: a member dialling a foreign or plaintext node
    // refuses it before sending anything.
    let (foreign_server, foreign_handled) = serving(Some(other.node("y", &["127.0.0.1"]))).await;
    let (plain_server, plain_handled) = serving(None).await;
    for target in [foreign_server.local_addr(), plain_server.local_addr()] {
        let err = member.call(target, Bytes::from_static(b"secret"), T).await.unwrap_err();
        assert!(
            matches!(err, TransportError::Refused { ref reason, .. } if reason.contains("TLS")),
            "{err:?}"
        );
    }
    assert_eq!(foreign_handled.handled.load(Ordering::SeqCst), 0);
    assert_eq!(plain_handled.handled.load(Ordering::SeqCst), 0);
    for t in [member, foreign, plaintext, server, foreign_server, plain_server] {
        t.shutdown().await;
    }
}

/// A certificate from the cluster's CA that does not name the host dialled
/// is refused by the caller: a member cannot pose as another's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_must_name_the_host_dialled() {
    let cluster = Cluster::new("c");
    let (server, handled) = serving(Some(cluster.node("a", &["127.0.0.1"]))).await;
    let port = server.local_addr().rsplit_once(':').unwrap().1.to_owned();
    let member = client(Some(cluster.node("b", &["127.0.0.1"]))).await;
    let err = member.call(&format!("localhost:{port}"), Bytes::from_static(b"x"), T).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Refused { ref reason, .. } if reason.contains("TLS") && reason.contains("not valid for name")),
        "{err:?}"
    );
    assert_eq!(handled.handled.load(Ordering::SeqCst), 0);
    member.shutdown().await;
    server.shutdown().await;
}

/// A client that opens a connection and sends half a handshake, or none,
/// is dropped after the read timeout without a frame decoded; one that
/// replays a recorded member's handshake gets nowhere either (the server's
/// random values differ, so the recorded Finished does not verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_replayed_handshakes_get_nowhere() {
    let cluster = Cluster::new("c");
    let (server, handled) = serving(Some(cluster.node("a", &["127.0.0.1"]))).await;
    let target = server.local_addr().to_owned();

    // Record what a member sends through a proxy, for one whole call.
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let tape = Arc::clone(&recorded);
    let upstream = target.clone();
    tokio::spawn(async move {
        let (mut inbound, _) = proxy.accept().await.unwrap();
        let mut outbound = TcpStream::connect(&upstream).await.unwrap();
        let (mut in_read, mut in_write) = inbound.split();
        let (mut out_read, mut out_write) = outbound.split();
        let to_server = async {
            let mut buf = [0u8; 4096];
            loop {
                let n = in_read.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                tape.lock().unwrap().extend_from_slice(&buf[..n]);
                if out_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let to_client = tokio::io::copy(&mut out_read, &mut in_write);
        let _ = tokio::join!(to_server, to_client);
    });
    let member = client(Some(cluster.node("b", &["127.0.0.1"]))).await;
    assert_eq!(member.call(&proxy_addr, Bytes::from_static(b"once"), T).await.unwrap(), "once");
    member.shutdown().await;
    let recorded = recorded.lock().unwrap().clone();
    assert!(recorded.len() > 500, "a handshake and a frame were recorded: {} bytes", recorded.len());
    assert_eq!(handled.handled.load(Ordering::SeqCst), 1);

    // Replayed whole: the server answers nothing usable and closes.
    let mut replay = TcpStream::connect(&target).await.unwrap();
    replay.write_all(&recorded).await.unwrap();
    read_until_closed(&mut replay, T).await;

    // Truncated: the first half of the client's hello, then silence; and a
    // connection that sends nothing at all.
    let mut truncated = TcpStream::connect(&target).await.unwrap();
    truncated.write_all(&recorded[..recorded.len().min(100)]).await.unwrap();
    let mut silent = TcpStream::connect(&target).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut truncated, T).await;
    read_until_closed(&mut silent, T).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "closed by the read timeout, not at once");

    assert_eq!(handled.handled.load(Ordering::SeqCst), 1, "no replayed or partial frame was handled");
    // And the node still serves members.
    let member = client(Some(cluster.node("c", &["127.0.0.1"]))).await;
    assert_eq!(member.call(&target, Bytes::from_static(b"after"), T).await.unwrap(), "after");
    member.shutdown().await;
    server.shutdown().await;
}

fn listen_error(result: Result<TcpTransport, TransportError>) -> String {
    match result {
        Err(TransportError::Listen { reason, .. }) => reason,
        Err(e) => panic!("not a listen error: {e:?}"),
        Ok(_) => panic!("bound with bad TLS files"),
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_bind_naming_the_file() {
    let cluster = Cluster::new("c");
    let other = Cluster::new("other");
    let good = cluster.node("a", &["127.0.0.1"]);

    chmod(&good.key_file, 0o644);
    let reason = listen_error(TcpTransport::bind(config(Some(good.clone()))).await);
    assert!(reason.contains("a.key") && reason.contains("0644"), "{reason}");
    chmod(&good.key_file, 0o640);
    TcpTransport::bind(config(Some(good.clone()))).await.expect("group read is allowed");
    chmod(&good.key_file, 0o600);

    let missing = TlsConfig { ca_file: cluster.path("nope.pem"), ..good.clone() };
    let reason = listen_error(TcpTransport::bind(config(Some(missing))).await);
    assert!(reason.contains("nope.pem"), "{reason}");

    let not_pem = TlsConfig { cert_file: good.key_file.clone(), ..good.clone() };
    let reason = listen_error(TcpTransport::bind(config(Some(not_pem))).await);
    assert!(reason.contains("a.key") && reason.contains("CERTIFICATE"), "{reason}");
    assert!(!reason.contains("BEGIN"), "key material is never quoted: {reason}");

    let wrong_ca = TlsConfig { ca_file: other.path("ca.pem"), ..good.clone() };
    let reason = listen_error(TcpTransport::bind(config(Some(wrong_ca))).await);
    assert!(reason.contains("a.pem") && reason.contains("refused by peers"), "{reason}");

    let wrong_host = cluster.node("b", &["10.9.9.9"]);
    let reason = listen_error(TcpTransport::bind(config(Some(wrong_host))).await);
    assert!(reason.contains("b.pem") && reason.contains("127.0.0.1"), "{reason}");

    let b = cluster.node("b", &["127.0.0.1"]);
    let mismatched = TlsConfig { key_file: b.key_file, ..good };
    let reason = listen_error(TcpTransport::bind(config(Some(mismatched))).await);
    assert!(reason.contains("a.pem") && reason.contains("b.key"), "{reason}");
}

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The server logs a refused handshake with the address it came from (on
/// one thread, so the test's subscriber sees the accept task's events).
#[tokio::test(flavor = "current_thread")]
async fn a_refused_handshake_is_logged_with_its_address() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cluster = Cluster::new("c");
    let (server, handled) = serving(Some(cluster.node("a", &["127.0.0.1"]))).await;
    let mut plaintext = TcpStream::connect(server.local_addr()).await.unwrap();
    let from = plaintext.local_addr().unwrap().to_string();
    plaintext.write_all(b"\0\0\0\x0c\0\0\0\0\0\0\0\x01hello").await.unwrap();
    read_until_closed(&mut plaintext, T).await;
    let deadline = Instant::now() + T;
    loop {
        let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        if log.contains("TLS handshake failed") {
            assert!(log.contains("WARN") && log.contains(&from), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged: {log}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handled.handled.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

/// A node whose certificate the CA revoked is refused by members given
/// the revocation list, as a caller and as a server, and cannot start with
/// its own certificate listed; the members not listed go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_both_ways() {
    let cluster = Cluster::new("c");
    let (revoked, serial) = cluster.node_with_serial("gone", &["127.0.0.1"]);
    let crl = cluster.revoke(&[serial]);
    let with_crl = |tls: TlsConfig| TlsConfig { crl_file: Some(crl.clone()), ..tls };

    let (server, handled) = serving(Some(with_crl(cluster.node("a", &["127.0.0.1"])))).await;
    let addr = server.local_addr().to_owned();
    let member = client(Some(with_crl(cluster.node("b", &["127.0.0.1"])))).await;
    assert_eq!(member.call(&addr, Bytes::from_static(b"ok"), T).await.unwrap(), "ok");

    // As a caller (it does not know it is revoked).
    let gone = client(Some(revoked.clone())).await;
    let err = gone.call(&addr, Bytes::from_static(b"let me in"), T).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { .. } | TransportError::Unreachable { .. }), "{err:?}");
    assert_eq!(handled.handled.load(Ordering::SeqCst), 1, "the revoked node's frame was not handled");

    // As a server: a member given the list does not talk to it.
    let (gone_server, gone_handled) = serving(Some(revoked.clone())).await;
    let err = member.call(gone_server.local_addr(), Bytes::from_static(b"secret"), T).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { ref reason, .. } if reason.contains("TLS")), "{err:?}");
    assert_eq!(gone_handled.handled.load(Ordering::SeqCst), 0);

    // Given the list itself, it refuses to start, saying why.
    let reason = listen_error(TcpTransport::bind(config(Some(with_crl(revoked)))).await);
    assert!(reason.contains("gone.pem") && reason.to_lowercase().contains("revoked"), "{reason}");

    // A file without a CRL is refused, naming it.
    let not_crl = TlsConfig { crl_file: Some(cluster.path("ca.pem")), ..cluster.node("d", &["127.0.0.1"]) };
    let reason = listen_error(TcpTransport::bind(config(Some(not_crl))).await);
    assert!(reason.contains("ca.pem") && reason.contains("CRL"), "{reason}");
    for t in [member, gone, server, gone_server] {
        t.shutdown().await;
    }
}
