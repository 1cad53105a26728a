//! The `dynamo-server` command line, as a library: run a node, a local
//! cluster, or talk to one. [`ServerBuilder`] adds your own reconcilers
//! and store engines to it, so your binary gets the same commands,
//! configuration and HTTP API:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use std::sync::Arc;
//!
//! use dynamo_core::causality::Sibling;
//! use dynamo_core::reconcile::{Reconciler, Resolution};
//!
//! /// The sibling with the longest value wins.
//! struct Longest;
//!
//! impl Reconciler for Longest {
//!     fn name(&self) -> &str {
//!         "longest"
//!     }
//!     fn reconcile(&self, _key: &[u8], siblings: &[Sibling]) -> Resolution {
//!         match siblings.iter().max_by_key(|s| (s.value.as_ref().map(|v| v.len()), s.dot)) {
//!             Some(s) => Resolution::Winner(s.dot),
//!             None => Resolution::Keep,
//!         }
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     // `my-server serve --reconciler longest`, `my-server dev --reconciler longest`, ...
//!     dynamo_server::ServerBuilder::new().reconciler(Arc::new(Longest)).run()
//! }
//! ```

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use dynamo_core::reconcile::Reconciler;
use dynamo_core::store::Store;

use crate::client::{print_read, print_status, ReadFormat};
use crate::client_token::ConnectArgs;
use crate::config::{CliOverrides, ServerConfig};
use crate::plugins::{PluginError, Plugins};
use crate::{dev, serve};

/// A Dynamo-style key-value store.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node from its configuration (defaults < file < DYNAMO_* < flags).
    ///
    /// With no configuration at all: a single node with its store in
    /// ./dynamo-data, HTTP on 127.0.0.1:8000.
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: CliOverrides,
        /// Start even if the store was written under another ring (other
        /// members, partitions or N), and record the new one. No data
        /// moves: keys whose owners changed read as missing until read
        /// repair finds them. Without it, such a start is refused.
        #[arg(long)]
        adopt_ring: bool,
    },
    /// Run a local cluster of child processes on 127.0.0.1 until Ctrl-C,
    /// or control a running one (`dev restart 3`).
    Dev(dev::DevArgs),
    /// Read a key: its value, or its siblings, one per line.
    Get {
        /// The key.
        key: String,
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
        /// Read quorum.
        #[arg(long)]
        r: Option<usize>,
        #[command(flatten)]
        format: ReadFormat,
        #[command(flatten)]
        token: ConnectArgs,
    },
    /// Write a key (VALUE, or `-` to read it from standard input); prints
    /// the new context.
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for standard input.
        value: String,
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
        /// The context of a previous read, to replace what it saw.
        #[arg(long)]
        context: Option<String>,
        /// Write quorum.
        #[arg(long)]
        w: Option<usize>,
        #[command(flatten)]
        token: ConnectArgs,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
        /// The context of a previous read; without it, what a read at R sees.
        #[arg(long)]
        context: Option<String>,
        /// Write quorum.
        #[arg(long)]
        w: Option<usize>,
        #[command(flatten)]
        token: ConnectArgs,
    },
    /// Show a node's health, members, ring and hints.
    Status {
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
        /// One JSON object for scripts instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        token: ConnectArgs,
    },
    /// Grow or shrink the cluster: stage join, leave or remove, see the
    /// plan, commit it, and watch the data move (`cluster status`).
    Cluster(crate::cluster_cmd::ClusterArgs),
    /// Anti-entropy: see its status (exchanges, repairs, trees, tombstone
    /// purge, admission control) or run a round now (`aae run`).
    Aae(crate::aae_cmd::AaeArgs),
    /// Make the cluster's CA and node certificates for `[peer.tls]`.
    #[cfg(feature = "transport-tcp")]
    Cert(crate::cert_cmd::CertArgs),
    /// Load-test a cluster: closed-loop reads and writes, latency percentiles.
    ///
    /// Writes are blind PUTs (no context): run the cluster with a reconciler
    /// that resolves them, e.g. `dev --reconciler last-write-wins`; under
    /// keep-siblings siblings pile up to the limit and writes get 409, which
    /// are counted as errors.
    Bench(crate::bench::BenchArgs),
    /// Manage the client tokens file (`http.tokens_file`): create a token
    /// (shown once), list or revoke them. Nodes read the file at start and at SIGHUP.
    Token(crate::token_cmd::TokenCmdArgs),
    /// The baseline `bench` starts for itself: an unreplicated in-memory
    /// key-value server behind the node's HTTP stack.
    #[command(hide = true)]
    BenchBaseline {
        /// Address to listen on (port 0: any free port, printed on stdout).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

/// Builds a server binary with your own plugins, then runs the
/// `dynamo-server` command line with them (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct ServerBuilder {
    plugins: Plugins,
    problems: Vec<PluginError>,
}

impl ServerBuilder {
    /// The built-in reconcilers and the store engines compiled in.
    pub fn new() -> Self {
        ServerBuilder::default()
    }

    /// Adds a reconciler, selected by its [`Reconciler::name`]
    /// (`reconciler = "…"`, `--reconciler …`). A name already taken is
    /// reported when the server runs.
    #[must_use]
    pub fn reconciler(mut self, reconciler: Arc<dyn Reconciler>) -> Self {
        if let Err(e) = self.plugins.register_reconciler(reconciler) {
            self.problems.push(e);
        }
        self
    }

    /// Adds a store engine selected by `store.engine = "<name>"`. `open`
    /// is given the node's configuration, with its `data_dir` created. A
    /// name already taken is reported when the server runs.
    #[must_use]
    pub fn store(
        mut self,
        name: &str,
        open: impl Fn(&ServerConfig) -> anyhow::Result<Arc<dyn Store>> + Send + Sync + 'static,
    ) -> Self {
        if let Err(e) = self.plugins.register_store(name, Arc::new(open)) {
            self.problems.push(e);
        }
        self
    }

    /// The plugins, or the first registration that failed.
    ///
    /// # Errors
    /// A name registered twice.
    pub fn build(self) -> Result<Plugins, PluginError> {
        match self.problems.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(self.plugins),
        }
    }

    /// Parses the process's arguments and runs the command, printing any
    /// error on stderr. Use it as your `main`.
    pub fn run(self) -> ExitCode {
        let cli = Cli::parse();
        let plugins = match self.build() {
            Ok(plugins) => plugins,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The command runs in `block_on`, on this (the main) thread: `dev`
        // starts its nodes from here, and their parent-death signal is tied
        // to the thread that started them.
        match runtime.block_on(run(cli, &plugins)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs one parsed command with `plugins`.
///
/// # Errors
/// What the command failed on, with context.
pub async fn run(cli: Cli, plugins: &Plugins) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, overrides, adopt_ring } => {
            let loaded = ServerConfig::load_explained(config.as_deref(), &overrides)?;
            serve::init_logging(&loaded.config.log);
            for note in &loaded.notes {
                tracing::info!("{note}");
            }
            serve::serve(loaded.config, plugins, adopt_ring).await?;
        }
        Command::Dev(args) => dev::run(args, plugins).await?,
        Command::Get { key, url, r, format, token } => {
            let read = token.client(&url)?.get(&key, r).await?;
            return print_read(&key, &read, &format);
        }
        Command::Put { key, value, url, context, w, token } => {
            let client = token.client(&url)?;
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("read the value from standard input")?;
                Bytes::from(buf)
            } else {
                Bytes::from(value)
            };
            let ctx = client.put(&key, value, context.as_deref(), w).await?;
            println!("{ctx}");
        }
        Command::Delete { key, url, context, w, token } => {
            let client = token.client(&url)?;
            client.delete(&key, context.as_deref(), w).await?;
        }
        Command::Status { url, json, token } => {
            print_status(&token.client(&url)?, json).await?;
        }
        Command::Cluster(args) => crate::cluster_cmd::run(args).await?,
        Command::Aae(args) => crate::aae_cmd::run(args).await?,
        #[cfg(feature = "transport-tcp")]
        Command::Cert(args) => crate::cert_cmd::run(args)?,
        Command::Bench(args) => crate::bench::run(args).await?,
        Command::Token(args) => crate::token_cmd::run(args)?,
        Command::BenchBaseline { listen } => crate::bench::baseline::serve(&listen).await?,
    }
    Ok(ExitCode::SUCCESS)
}
