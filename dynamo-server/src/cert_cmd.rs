//! `dynamo-server cert`: make the cluster's CA and its nodes' certificates
//! for `[peer.tls]`, without openssl.
//!
//! ```text
//! dynamo-server cert ca --dir certs
//! dynamo-server cert node --dir certs --name node1 --host 10.0.0.1 --host node1.example
//! ```
//!
//! `ca` writes `ca.pem` (copy it to every node) and `ca.key` (keep it off
//! the nodes: whoever holds it can admit a node); `node` writes
//! `NAME.pem` and `NAME.key` (that node's, mode 0600) and prints the
//! `[peer.tls]` section for it. Keys are never printed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use dynamo_transport_tcp::certs::{write_private, ClusterCa, CA_VALID_DAYS, NODE_VALID_DAYS};

/// Options of `cert`.
#[derive(Debug, clap::Args)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CertCommand {
    /// Make a new cluster CA: DIR/ca.pem (for every node) and DIR/ca.key
    /// (keep it safe and off the nodes).
    Ca {
        /// Directory for the files (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA certificate's common name.
        #[arg(long, default_value = "dynamo cluster CA")]
        name: String,
        /// Replace a CA already in DIR (every node certificate it issued
        /// stops being accepted by nodes given the new ca.pem).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate from the CA in DIR: DIR/NAME.pem and
    /// DIR/NAME.key.
    Node {
        /// Directory holding ca.pem and ca.key; the node's files go there.
        #[arg(long)]
        dir: PathBuf,
        /// The node's name: the files' names and the certificate's common name.
        #[arg(long)]
        name: String,
        /// A host peers dial this node at (its `peer.advertise` host): a
        /// DNS name or an IP address. Repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

/// Runs a `cert` command.
///
/// # Errors
/// Files that cannot be read or written, an existing CA without
/// `--force`, a name that is not a plain file name, or a host that is
/// neither a DNS name nor an IP address.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        CertCommand::Ca { dir, name, force } => {
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            if !force && (cert.exists() || key.exists()) {
                bail!("{} already holds a CA; --force replaces it", dir.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let ca = ClusterCa::generate(&name)?;
            write_private(&key, &ca.key_pem())?;
            std::fs::write(&cert, ca.cert_pem())
                .with_context(|| format!("cannot write {}", cert.display()))?;
            println!(
                "wrote {} (copy to every node) and {} (mode 0600; keep it off the nodes)",
                cert.display(),
                key.display()
            );
            println!(
                "valid {CA_VALID_DAYS} days; next: dynamo-server cert node --dir {} --name NAME --host HOST",
                dir.display()
            );
        }
        CertCommand::Node { dir, name, hosts } => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name == "ca" {
                bail!("--name {name:?}: use a plain file name (not \"ca\")");
            }
            let ca = read_ca(&dir)?;
            let issued = ca.issue(&name, &hosts).with_context(|| format!("hosts {hosts:?}"))?;
            let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert, &issued.cert_pem)
                .with_context(|| format!("cannot write {}", cert.display()))?;
            write_private(&key, &issued.key_pem)?;
            println!(
                "wrote {} and {} (mode 0600), valid {NODE_VALID_DAYS} days for {}",
                cert.display(),
                key.display(),
                hosts.join(", ")
            );
            println!("copy them and ca.pem to the node, and add to its configuration:\n");
            println!(
                "[peer.tls]\nca_file = \"ca.pem\"\ncert_file = \"{name}.pem\"\nkey_file = \"{name}.key\""
            );
        }
    }
    Ok(())
}

fn read_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (make a CA with `cert ca`)", path.display()))
    };
    let (cert, key) = (read("ca.pem")?, read("ca.key")?);
    ClusterCa::from_pem(&cert, &key).with_context(|| format!("the CA in {}", dir.display()))
}
