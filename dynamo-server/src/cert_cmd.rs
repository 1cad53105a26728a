//! `dynamo-server cert`: make the cluster's CA and its nodes' certificates
//! for `[peer.tls]`, without openssl.
//!
//! ```text
//! dynamo-server cert ca --dir certs
//! dynamo-server cert node --dir certs --name node1 --host 10.0.0.1 --host node1.example
//! dynamo-server cert revoke --dir certs --name node1
//! ```
//!
//! `ca` writes `ca.pem` (copy it to every node) and `ca.key` (keep it off
//! the nodes: whoever holds it can admit a node); `node` writes
//! `NAME.pem` and `NAME.key` (that node's, mode 0600) and `NAME.serial`
//! (its serial number, for `revoke`), and prints the `[peer.tls]` section
//! for it. `revoke` adds the node's certificate to `revoked.txt` and
//! writes `crl.pem`, the CA's signed list of every certificate revoked so
//! far, for every node's `peer.tls.crl_file`. Keys are never printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Revoke the certificate `cert node` issued to NAME: DIR/crl.pem then
    /// lists it (with every one revoked before), for every node's
    /// peer.tls.crl_file.
    Revoke {
        /// Directory holding ca.pem, ca.key and NAME.serial.
        #[arg(long)]
        dir: PathBuf,
        /// The node whose certificate to revoke.
        #[arg(long)]
        name: String,
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
            check_name(&name)?;
            let ca = read_ca(&dir)?;
            let issued = ca.issue(&name, &hosts).with_context(|| format!("hosts {hosts:?}"))?;
            let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
            std::fs::write(&cert, &issued.cert_pem)
                .with_context(|| format!("cannot write {}", cert.display()))?;
            write_private(&key, &issued.key_pem)?;
            let serial = dir.join(format!("{name}.serial"));
            std::fs::write(&serial, format!("{}\n", hex::encode(&issued.serial)))
                .with_context(|| format!("cannot write {}", serial.display()))?;
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
        CertCommand::Revoke { dir, name } => revoke(&dir, &name)?,
    }
    Ok(())
}

/// Adds `name`'s certificate to `dir/revoked.txt` and writes `dir/crl.pem`
/// listing every certificate revoked so far, its number the count.
fn revoke(dir: &Path, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let ca = read_ca(dir)?;
    let serial_file = dir.join(format!("{name}.serial"));
    let serial = std::fs::read_to_string(&serial_file).with_context(|| {
        format!(
            "cannot read {} (revoke knows the certificates `cert node` made; with another CA, make the list with it, e.g. `openssl ca -gencrl`)",
            serial_file.display()
        )
    })?;
    let serial = serial.trim();
    hex::decode(serial).with_context(|| format!("{}: not a serial number", serial_file.display()))?;
    let list = dir.join("revoked.txt");
    let mut lines: Vec<String> = match std::fs::read_to_string(&list) {
        Ok(text) => text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", list.display())),
    };
    if lines.iter().any(|l| l.split_whitespace().next() == Some(serial)) {
        bail!("{name}'s certificate ({serial}) is already revoked (see {})", list.display());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    lines.push(format!("{serial} {now} {name}"));
    let mut revoked = Vec::with_capacity(lines.len());
    for line in &lines {
        let bad = || format!("{}: bad line {line:?}", list.display());
        let mut fields = line.split_whitespace();
        let (Some(serial), Some(at)) = (fields.next(), fields.next()) else {
            bail!(bad());
        };
        let at: u64 = at.parse().with_context(bad)?;
        revoked.push((hex::decode(serial).with_context(bad)?, UNIX_EPOCH + Duration::from_secs(at)));
    }
    let crl = ca.revocation_list(&revoked, lines.len() as u64)?;
    let crl_file = dir.join("crl.pem");
    std::fs::write(&crl_file, crl).with_context(|| format!("cannot write {}", crl_file.display()))?;
    std::fs::write(&list, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", list.display()))?;
    println!("revoked {name} ({serial}); {} lists {} certificate(s)", crl_file.display(), lines.len());
    println!("copy it to every node, set [peer.tls] crl_file to it, and restart the nodes");
    Ok(())
}

/// Refuses a node name that is not a plain file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name == "ca" || name == "crl"
    {
        bail!("--name {name:?}: use a plain file name (not \"ca\" or \"crl\")");
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
