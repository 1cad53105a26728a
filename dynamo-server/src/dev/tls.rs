//! The throwaway CA of a local cluster: `dev` makes a new one at every
//! start (unless `--plaintext`), and a certificate for each node from it,
//! so the nodes' peer links are mutual TLS, as in production.
//!
//! Files, under the data directory: `tls/ca.pem` and `tls/ca.key` (the CA;
//! the key is mode 0600), and `node-N/tls/node.pem` and `node.key` (node
//! N's certificate for 127.0.0.1 and localhost, and its key, mode 0600).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dynamo_transport_tcp::certs::{write_private, ClusterCa};

use crate::config::{PeerTlsConfig, ServerConfig};

/// A local cluster's CA and where its certificate lives.
pub struct DevCa {
    ca: ClusterCa,
    ca_file: PathBuf,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("ca_file", &self.ca_file).finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA, written to `data_dir/tls/`.
    ///
    /// # Errors
    /// The files cannot be written, naming them.
    pub fn create(data_dir: &Path) -> anyhow::Result<DevCa> {
        let dir = data_dir.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca = ClusterCa::generate("dynamo dev cluster CA")?;
        let ca_file = std::path::absolute(dir.join("ca.pem")).context("resolve the CA path")?;
        std::fs::write(&ca_file, ca.cert_pem())
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
        write_private(&dir.join("ca.key"), &ca.key_pem())?;
        Ok(DevCa { ca, ca_file })
    }

    /// Issues `config`'s node a certificate for 127.0.0.1 and localhost,
    /// writes it under its data directory, and points `config.peer.tls`
    /// at it.
    ///
    /// # Errors
    /// The files cannot be written, naming them.
    pub fn secure(&self, config: &mut ServerConfig) -> anyhow::Result<()> {
        let dir = config.data_dir.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = format!("node-{}", config.node_id);
        let cert = self.ca.issue(&name, &["127.0.0.1".into(), "localhost".into()])?;
        let cert_file = dir.join("node.pem");
        std::fs::write(&cert_file, &cert.cert_pem)
            .with_context(|| format!("cannot write {}", cert_file.display()))?;
        let key_file = dir.join("node.key");
        write_private(&key_file, &cert.key_pem)?;
        config.peer.tls =
            Some(PeerTlsConfig { ca_file: self.ca_file.clone(), cert_file, key_file, crl_file: None });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_own_certificate_from_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let mut configs: Vec<ServerConfig> = (1..=2)
            .map(|id| ServerConfig {
                node_id: id,
                data_dir: dir.path().join(format!("node-{id}")),
                ..ServerConfig::default()
            })
            .collect();
        for c in &mut configs {
            ca.secure(c).unwrap();
        }
        let tls: Vec<_> = configs.iter().map(|c| c.peer.tls.clone().unwrap()).collect();
        assert_eq!(tls[0].ca_file, tls[1].ca_file);
        assert_ne!(std::fs::read(&tls[0].cert_file).unwrap(), std::fs::read(&tls[1].cert_file).unwrap());
        for t in &tls {
            dynamo_transport_tcp::check_key_permissions(&t.key_file).unwrap();
        }
        dynamo_transport_tcp::check_key_permissions(&dir.path().join("tls/ca.key")).unwrap();
    }
}
