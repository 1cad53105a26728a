//! `dynamo-server`: run a node, a local cluster, or talk to one.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use dynamo_server::client::{print_read, print_status, ApiClient};
use dynamo_server::config::{CliOverrides, ServerConfig};
use dynamo_server::{dev, serve};

/// mimalloc instead of the system allocator: the request path allocates
/// many small, short-lived buffers across threads, where glibc malloc
/// spent ~15% of a node's CPU (measured with perf under `bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Dynamo-style key-value store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node from its configuration (defaults < file < DYNAMO_* < flags).
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
    /// Run a local cluster of child processes on 127.0.0.1 until Ctrl-C.
    Dev(dev::DevArgs),
    /// Read a key.
    Get {
        /// The key.
        key: String,
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
        /// Read quorum.
        #[arg(long)]
        r: Option<usize>,
    },
    /// Write a key (VALUE, or `-` to read it from standard input).
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
    },
    /// Show a node's health, members, ring and hints.
    Status {
        /// Node to ask.
        #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL")]
        url: String,
    },
    /// Load-test a cluster: closed-loop reads and writes, latency percentiles.
    ///
    /// Writes are blind PUTs (no context): run the cluster with a reconciler
    /// that resolves them, e.g. `dev --reconciler last-write-wins`; under
    /// keep-siblings siblings pile up to the limit and writes get 409, which
    /// are counted as errors.
    Bench(dynamo_server::bench::BenchArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, overrides, adopt_ring } => {
            let config = ServerConfig::load(config.as_deref(), &overrides)?;
            serve::init_logging(&config.log);
            serve::serve(config, adopt_ring).await
        }
        Command::Dev(args) => dev::run(args).await,
        Command::Get { key, url, r } => {
            let read = ApiClient::new(&url)?.get(&key, r).await?;
            print_read(&key, &read)
        }
        Command::Put { key, value, url, context, w } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).context("read the value from standard input")?;
                Bytes::from(buf)
            } else {
                Bytes::from(value)
            };
            let ctx = ApiClient::new(&url)?.put(&key, value, context.as_deref(), w).await?;
            println!("{ctx}");
            Ok(())
        }
        Command::Delete { key, url, context, w } => {
            ApiClient::new(&url)?.delete(&key, context.as_deref(), w).await?;
            Ok(())
        }
        Command::Status { url } => print_status(&ApiClient::new(&url)?).await,
        Command::Bench(args) => dynamo_server::bench::run(args).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
