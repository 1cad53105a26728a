//! Mutual TLS for peer links: every node holds a certificate signed by the
//! cluster's CA, and a connection carries frames only once both ends have
//! proved they hold one.
//!
//! TLS 1.3 only (rustls with the ring provider), both directions
//! authenticated: the server requires a client certificate chaining to the
//! CA, and the caller checks the server's certificate against the CA and
//! against the host it dialled (the host part of the peer's address, a DNS
//! name or an IP address, must be among the certificate's subject
//! alternative names). Session resumption and 0-RTT are off: links are
//! long-lived, so a full handshake per connection costs nothing that
//! matters, and every connection proves its certificate afresh (a
//! recorded handshake replayed to a node gets nowhere, because the node's
//! own random values differ each time).
//!
//! [`PeerTls::load`] reads the PEM files named by [`TlsConfig`] and checks
//! them before the node starts: the private key file must not be open to
//! other users, and the node's own certificate must chain to the CA and
//! name the host it advertises (nor be revoked), so a mistake shows at
//! start, not as refused connections later. With a `crl_file`, a peer
//! whose certificate the CA revoked is refused like a stranger.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The PEM files of a node's mutual TLS: `[peer.tls]` in the server's
/// configuration.
///
/// ```
/// use dynamo_transport_tcp::TlsConfig;
///
/// let tls: TlsConfig = serde_json::from_str(
///     r#"{ "ca_file": "ca.pem", "cert_file": "node1.pem", "key_file": "node1.key" }"#,
/// ).unwrap();
/// assert_eq!(tls.key_file.to_str(), Some("node1.key"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA's certificate(s), PEM: a peer must present a
    /// certificate chaining to one of them.
    pub ca_file: PathBuf,
    /// This node's certificate chain, PEM, leaf first. Its subject
    /// alternative names must include the host of the node's advertised
    /// address (DNS name or IP address), which peers check when they dial.
    pub cert_file: PathBuf,
    /// This node's private key, PEM (PKCS#8, PKCS#1 or SEC1). Must not be
    /// readable or writable by other users (mode 0600 or 0640 with no group
    /// write), or the node refuses to start.
    pub key_file: PathBuf,
    /// Certificate revocation lists from the CA, PEM (`dynamo-server cert
    /// revoke` writes one): a peer whose certificate is listed is refused
    /// at the handshake, either way. `None`: nothing is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
}

impl fmt::Debug for TlsConfig {
    /// Paths only; nothing read from the files.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("crl_file", &self.crl_file)
            .finish()
    }
}

/// Why the TLS files could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file holds no usable PEM section of the kind needed.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key file is open to other users.
    #[error(
        "private key file {} is accessible to other users (mode {mode:04o}); \
         allow only its owner (chmod 600) or at most group read (chmod 640)",
        path.display()
    )]
    KeyExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The files do not fit together, or rustls refused them.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The node's own certificate would be refused by its peers.
    #[error("certificate {} would be refused by peers: {reason}", path.display())]
    OwnCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A node's TLS client and server configurations, ready for connections.
#[derive(Clone)]
pub(crate) struct PeerTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerTls { .. }")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup(e: impl fmt::Display) -> TlsError {
    TlsError::Setup(e.to_string())
}

impl PeerTls {
    /// Reads and checks the files of `config` and builds both sides' TLS
    /// configurations; `advertised` is the address peers dial this node at,
    /// whose host the node's certificate must name.
    ///
    /// # Errors
    /// [`TlsError`]: a file unreadable or without the PEM it should hold,
    /// the key file open to other users, a key that does not match the
    /// certificate, or a certificate that does not chain to the CA or does
    /// not name `advertised`'s host.
    pub(crate) fn load(config: &TlsConfig, advertised: &str) -> Result<PeerTls, TlsError> {
        check_key_permissions(&config.key_file)?;
        let chain = read_certificates(&config.cert_file)?;
        let key = read_key(&config.key_file)?;
        let roots = Arc::new(root_store(&config.ca_file)?);
        let provider = provider();
        let crls = match &config.crl_file {
            Some(path) => read_crls(path)?,
            None => Vec::new(),
        };

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .with_crls(crls.clone())
                .build()
                .map_err(setup)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .with_crls(crls)
                .build()
                .map_err(setup)?;
        check_own_certificate(config, &chain, advertised, &*client_verifier, &*server_verifier)?;

        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| mismatch(&config.cert_file, &config.key_file, e))?;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.max_early_data_size = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| mismatch(&config.cert_file, &config.key_file, e))?;
        client.resumption = rustls::client::Resumption::disabled();
        client.enable_early_data = false;

        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// A TLS 1.3 server configuration for a plain (not mutual) TLS listener,
/// such as the HTTP API's: the certificate chain in `cert_file` and the
/// private key in `key_file`, both PEM, checked as [`PeerTls`] checks a
/// node's (the key file must not be open to other users).
///
/// # Errors
/// [`TlsError`] naming the file: unreadable, without the PEM it should
/// hold, the key open to others, or a key that does not match.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    check_key_permissions(key_file)?;
    let chain = read_certificates(cert_file)?;
    let key = read_key(key_file)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| mismatch(cert_file, key_file, e))?;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client configuration that trusts the certificates in the PEM
/// file `ca_file` and nothing else, and presents none of its own: for a
/// client of a plain TLS listener such as the HTTPS API.
///
/// # Errors
/// [`TlsError`] naming the file: unreadable, no certificate in it, or one
/// that is not a usable CA certificate.
pub fn client_config(ca_file: &Path) -> Result<ClientConfig, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    Ok(config)
}

/// The CA certificates in the PEM file `ca_file`, as trust anchors.
fn root_store(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: ca_file.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn mismatch(cert_file: &Path, key_file: &Path, e: rustls::Error) -> TlsError {
    TlsError::Setup(format!("{} and {}: {e}", cert_file.display(), key_file.display()))
}

/// The name a caller checks the server's certificate against: the host
/// part of `addr` (`host:port`, `[v6]:port`, or a bare host).
///
/// # Errors
/// A host that is neither an IP address nor a valid DNS name.
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a host name for TLS: {e}"))
}

/// Refuses a private key file that other users may read or write (any
/// permission for others, or group write). Unix only; elsewhere nothing
/// is checked.
///
/// # Errors
/// [`TlsError::KeyExposed`] naming the file and its mode, or
/// [`TlsError::Read`] when its metadata cannot be read.
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o027 != 0 {
            return Err(TlsError::KeyExposed { path: path.to_owned(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Every certificate in the PEM file at `path`, in order.
///
/// # Errors
/// Unreadable, malformed PEM, or no certificate in it.
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_all_pem(path, "CERTIFICATE")
}

/// Every certificate revocation list in the PEM file at `path`.
///
/// # Errors
/// Unreadable, malformed PEM, or no CRL in it.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    read_all_pem(path, "X509 CRL")
}

/// Every PEM section of type `T` (labelled `label`) in the file at `path`,
/// in order; at least one.
fn read_all_pem<T: PemObject>(path: &Path, label: &str) -> Result<Vec<T>, TlsError> {
    let pem = read_file(path)?;
    let items = T::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_owned(), reason: format!("bad PEM: {e}") })?;
    if items.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), reason: format!("holds no {label} section") });
    }
    Ok(items)
}

/// The private key in the PEM file at `path`. Errors never quote the file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            rustls_pki_types::pem::Error::NoItemsFound => "holds no PRIVATE KEY section".to_owned(),
            _ => "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        };
        TlsError::Pem { path: path.to_owned(), reason }
    })
}

/// Checks that peers would accept this node's certificate both as a
/// client (it chains to the CA and may authenticate clients) and as a
/// server reached at `advertised`.
fn check_own_certificate(
    config: &TlsConfig,
    chain: &[CertificateDer<'static>],
    advertised: &str,
    as_client: &dyn ClientCertVerifier,
    as_server: &dyn rustls::client::danger::ServerCertVerifier,
) -> Result<(), TlsError> {
    let own = |reason: String| TlsError::OwnCertificate { path: config.cert_file.clone(), reason };
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| own("no certificate".into()))?;
    let now = UnixTime::now();
    as_client
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| own(format!("as a client, against {}: {e}", config.ca_file.display())))?;
    let name = server_name(advertised).map_err(own)?;
    as_server
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map_err(|e| own(format!("as the server at {advertised}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_of_the_address() {
        assert_eq!(server_name("127.0.0.1:7000").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(server_name("[::1]:7000").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(
            server_name("node-a.example:7000").unwrap(),
            ServerName::try_from("node-a.example").unwrap()
        );
        assert_eq!(server_name("node-a").unwrap(), ServerName::try_from("node-a").unwrap());
        assert!(server_name("bad host:7000").is_err());
    }
}
