//! Making a cluster CA and node certificates for [`TlsConfig`](crate::TlsConfig)
//! (with rcgen): what `dynamo-server cert` and `dynamo-server dev` use, and
//! what tests use to build secured clusters.
//!
//! Keys are ECDSA P-256. A CA certificate is valid for ten years, a node
//! certificate for one; a node certificate names its hosts as subject
//! alternative names and may serve as both TLS server and TLS client, as a
//! peer link needs.
//!
//! ```
//! use dynamo_transport_tcp::certs::ClusterCa;
//!
//! let ca = ClusterCa::generate("example cluster").unwrap();
//! let node = ca.issue("node1", &["127.0.0.1".into(), "node1.example".into()]).unwrap();
//! assert!(node.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(node.key_pem.contains("PRIVATE KEY"));
//! ```

use std::io::Write as _;
use std::path::Path;

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};

/// Days a CA certificate is valid.
pub const CA_VALID_DAYS: i64 = 3650;
/// Days a node certificate is valid.
pub const NODE_VALID_DAYS: i64 = 365;

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A host that is neither a DNS name nor an IP address.
    #[error("{0:?} is neither a DNS name nor an IP address")]
    Host(String),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number (16 random bytes, big-endian, top bit clear):
    /// what a revocation list names it by ([`ClusterCa::revocation_list`]).
    pub serial: Vec<u8>,
    /// Its private key, PEM (PKCS#8). Keep it in a file only its owner
    /// can read ([`write_private`]).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A cluster's certificate authority: signs node certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks running behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl ClusterCa {
    /// A new CA with a fresh key, its certificate's common name `name`.
    ///
    /// # Errors
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(name: &str) -> Result<ClusterCa, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALID_DAYS);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { issuer: Issuer::new(params, key), cert_pem: cert.pem() })
    }

    /// The CA read back from its certificate and key (as written by
    /// [`ClusterCa::generate`] and [`ClusterCa::key_pem`], or any CA
    /// certificate with its key), to issue more node certificates.
    ///
    /// # Errors
    /// [`CertError::Generate`] when either PEM does not parse.
    #[cfg(feature = "ca-from-pem")]
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(ClusterCa { issuer, cert_pem: cert_pem.to_owned() })
    }

    /// The CA's certificate, PEM: every node's `ca_file`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM. Whoever holds it can admit nodes to the
    /// cluster: keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A node certificate for `hosts` (DNS names or IP addresses: every
    /// host peers may dial the node at), with common name `name` and a
    /// fresh key, valid as TLS server and client.
    ///
    /// # Errors
    /// [`CertError::Host`] for a host that is neither an IP address nor a
    /// DNS name (peers could never dial it by that name).
    pub fn issue(&self, name: &str, hosts: &[String]) -> Result<IssuedCert, CertError> {
        if let Some(bad) = hosts.iter().find(|h| rustls_pki_types::ServerName::try_from(h.as_str()).is_err())
        {
            return Err(CertError::Host(bad.clone()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial: [u8; 16] = rand::random();
        // Positive, and 16 bytes long in DER.
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        validity(&mut params, NODE_VALID_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), serial: serial.to_vec(), key_pem: key.serialize_pem() })
    }

    /// A certificate revocation list, PEM, signed by this CA, listing the
    /// certificates with the serial numbers in `revoked`, each with when
    /// it was revoked; `number` is the list's sequence number (RFC 5280:
    /// increasing with each new list). Peers given it refuse those
    /// certificates (`TlsConfig::crl_file`).
    ///
    /// # Errors
    /// [`CertError::Generate`] if rcgen fails.
    pub fn revocation_list(
        &self,
        revoked: &[(Vec<u8>, SystemTime)],
        number: u64,
    ) -> Result<String, CertError> {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(NODE_VALID_DAYS),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: time::OffsetDateTime::from(*at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// Writes `contents` to a new file at `path` that only its owner can read
/// and write (mode 0600 on Unix), replacing any file there.
///
/// # Errors
/// [`CertError::Write`] naming the file.
pub fn write_private(path: &Path, contents: &str) -> Result<(), CertError> {
    let error = |source| CertError::Write { path: path.display().to_string(), source };
    // Removed first: an existing file would keep its (maybe wider) mode.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_are_written_for_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate("t").unwrap();
        let node = ca.issue("n", &["localhost".into()]).unwrap();
        let path = dir.path().join("n.key");
        std::fs::write(&path, "old").unwrap();
        write_private(&path, &node.key_pem).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), node.key_pem);
        crate::check_key_permissions(&path).unwrap();
        assert!(!format!("{node:?}").contains("PRIVATE"), "Debug never shows the key");
        assert!(ca.issue("n", &["bad host".into()]).is_err());
    }
}
