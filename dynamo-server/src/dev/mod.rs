//! `dynamo-server dev --nodes 3`: the newcomer's cluster.
//!
//! Writes one config file per node under the data directory (absolute
//! paths), starts each node as its own `serve` child process (so one can
//! be killed like a real host), waits until all answer, prints their
//! URLs, PIDs and logs, then supervises them until Ctrl-C:
//!
//! - a node that exits is reported at once (which node, its exit status,
//!   the last lines of its log) and reaped;
//! - `dynamo-server dev restart N` (from any terminal) restarts node N as
//!   `dev`'s child again, and answers once it serves; `stop N` and
//!   `status` too (see [`control`]);
//! - `dynamo-server dev add` starts one more node, with the running nodes
//!   as its gossip seeds and no member list: it joins the cluster as a
//!   member owning nothing, for `cluster join`, `plan` and `commit` to
//!   give it partitions (see [`crate::cluster_cmd`]);
//! - the nodes die with `dev`, even when it is SIGKILLed (see [`process`]);
//! - one `dev` per data directory (see [`lock`]), and ports already in use
//!   are refused by name before anything starts;
//! - node logs are appended across restarts, never truncated;
//! - peer links are mutual TLS, with certificates from a CA made at each
//!   start (see [`tls`]), unless `--plaintext`;
//! - with `--auth`, the HTTP API asks for bearer tokens, and an admin
//!   token is written for the client commands (see [`auth`]).

pub mod auth;
pub mod configs;
pub mod control;
pub mod lock;
pub mod process;
mod supervisor;
#[cfg(feature = "transport-tcp")]
pub mod tls;

use std::path::PathBuf;

use dynamo_core::store::Durability;

pub use configs::dev_configs;
pub use control::Request;

use crate::plugins::Plugins;

/// Options of `dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Talk to the `dev` already running on --data-dir instead of starting one.
    #[command(subcommand)]
    pub command: Option<Request>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory holding each node's config, store and log.
    #[arg(long, default_value = "dynamo-dev", global = true)]
    pub data_dir: PathBuf,
    /// HTTP port of node 1; node i listens on this + i - 1.
    #[arg(long, default_value_t = 8001)]
    pub http_port: u16,
    /// Peer port of node 1; node i listens on this + i - 1.
    #[arg(long, default_value_t = 7001)]
    pub peer_port: u16,
    /// Store durability: fsync or buffered.
    #[arg(long, default_value = "fsync", value_parser = parse_durability)]
    pub durability: Durability,
    /// Reconciler name.
    #[arg(long, default_value = "keep-siblings")]
    pub reconciler: String,
    /// Plaintext, unauthenticated peer links instead of mutual TLS.
    #[arg(long)]
    pub plaintext: bool,
    /// Require bearer tokens on the HTTP API (but /health): writes a
    /// tokens file with one admin token, and the token to
    /// <data-dir>/admin.token for `--token-file`.
    #[arg(long)]
    pub auth: bool,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "buffered" => Ok(Durability::Buffered),
        other => Err(format!("{other:?}: use fsync or buffered")),
    }
}

/// Runs the local cluster until Ctrl-C, or sends a request to the one
/// running on `args.data_dir` when `args.command` is given.
///
/// # Errors
/// A cluster that cannot be configured or started (data directory held by
/// another `dev`, ports in use, a node that exits before it answers); or,
/// for a request, no `dev` running there or its refusal.
pub async fn run(args: DevArgs, plugins: &Plugins) -> anyhow::Result<()> {
    if let Some(request) = args.command {
        let text = control::send(&args.data_dir, request).await?;
        print!("{text}");
        return Ok(());
    }
    supervisor::run(args, plugins).await
}
