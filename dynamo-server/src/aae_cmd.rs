//! `dynamo-server aae …`: active anti-entropy from the shell, through a
//! node's admin API ([`crate::admin_aae`]):
//!
//! ```sh
//! dynamo-server aae status     # exchanges, repairs, trees, purge, admission
//! dynamo-server aae run        # one exchange round and one purge pass now
//! ```
//!
//! Every command prints text for people, or the API's JSON with `--json`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cluster_cmd::bytes_text;

/// Options of `aae`.
#[derive(Debug, Clone, clap::Args)]
pub struct AaeArgs {
    #[command(subcommand)]
    command: AaeCommand,
    /// Node to ask.
    #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL", global = true)]
    url: String,
    /// Print the API's JSON answer for scripts instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    token: crate::client_token::ConnectArgs,
}

/// An `aae` command.
#[derive(Debug, Clone, clap::Subcommand)]
enum AaeCommand {
    /// Exchanges done and failed, keys repaired, bytes shipped, trees
    /// built, tombstones purged and the admission control of background
    /// work, on the node asked.
    Status,
    /// Run one anti-entropy round (each replicated partition with its
    /// next peer) and one tombstone purge pass now, on the node asked.
    Run,
}

/// Runs an `aae` command and prints its answer.
///
/// # Errors
/// The node does not answer, or refuses (the server's message).
pub async fn run(args: AaeArgs) -> anyhow::Result<()> {
    let client = args.token.client(&args.url)?;
    let text = match args.command {
        AaeCommand::Status => {
            let answer = client.json("/admin/aae").await?;
            if args.json {
                format!("{answer}\n")
            } else {
                status_text(client.base(), &answer, now_unix_ms())
            }
        }
        AaeCommand::Run => {
            let answer = client.post_json("/admin/aae/run").await?;
            if args.json {
                format!("{answer}\n")
            } else {
                run_text(&answer)
            }
        }
    };
    print!("{text}");
    Ok(())
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `status` for a person, from `GET /admin/aae`'s answer; `now_unix_ms`
/// dates the last exchanges.
pub fn status_text(url: &str, status: &Value, now_unix_ms: u64) -> String {
    let mut out = String::new();
    let partitions = status["partitions"].as_array().map_or(&[][..], Vec::as_slice);
    let enabled = status["enabled"].as_bool().unwrap_or(false);
    let _ = writeln!(
        out,
        "node {} at {url}: anti-entropy {}; trees built for {} of {} partitions",
        num(&status["node"]),
        if enabled { "on" } else { "off (anti_entropy = false)" },
        num(&status["trees_ready"]),
        partitions.len()
    );
    let _ = writeln!(
        out,
        "exchanges: {} done, {} failed; keys repaired: {}",
        num(&status["exchanges"]),
        num(&status["exchanges_failed"]),
        num(&status["keys_repaired"])
    );
    let _ = writeln!(
        out,
        "shipped: {} key states; sent {}, received {}",
        num(&status["keys_sent"]),
        bytes_text(num(&status["bytes_sent"])),
        bytes_text(num(&status["bytes_received"]))
    );
    let exchanged: Vec<u64> = partitions.iter().filter_map(|p| p["last_exchange_unix_ms"].as_u64()).collect();
    match exchanged.iter().min() {
        Some(oldest) => {
            let _ = writeln!(
                out,
                "last exchanges: {} of {} partitions exchanged, the least recent {} s ago",
                exchanged.len(),
                partitions.len(),
                now_unix_ms.saturating_sub(*oldest) / 1000
            );
        }
        None => {
            let _ = writeln!(out, "last exchanges: none yet");
        }
    }
    let _ = writeln!(out, "tombstones purged: {}", num(&status["tombstones_purged"]));
    let admission = &status["admission"];
    let p99 = match admission["p99_ms"].as_f64() {
        Some(ms) => format!("foreground p99 {ms:.1} ms over {} requests", num(&admission["window_samples"])),
        None => "no foreground requests in the window".to_string(),
    };
    let _ = writeln!(
        out,
        "admission: {} background slots; {p99}; throttled {} times{}",
        num(&admission["slots"]),
        num(&admission["throttled"]),
        if admission["breached"] == Value::Bool(true) { " (over the target now)" } else { "" }
    );
    out
}

/// `run` for a person, from `POST /admin/aae/run`'s answer.
pub fn run_text(report: &Value) -> String {
    format!(
        "node {}: {} exchanges ({} failed, {} busy), {} keys repaired, {} exchanged; {} tombstones purged\n",
        num(&report["node"]),
        num(&report["exchanges"]),
        num(&report["failed"]),
        num(&report["busy"]),
        num(&report["keys_repaired"]),
        bytes_text(num(&report["bytes"])),
        num(&report["purged"])
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_and_run_read_for_people() {
        let status = json!({
            "node": 3, "enabled": true, "exchanges": 12, "exchanges_failed": 1,
            "keys_repaired": 5000, "keys_sent": 40, "bytes_sent": 2048, "bytes_received": 3 << 20,
            "tombstones_purged": 7, "trees_ready": 2,
            "partitions": [
                { "partition": 0, "tree_ready": true, "last_exchange_unix_ms": 1_000_000, "last_peer": 1, "keys_repaired": 1, "last_exchange_bytes": 10 },
                { "partition": 1, "tree_ready": true, "last_exchange_unix_ms": 1_004_000, "last_peer": 2, "keys_repaired": 0, "last_exchange_bytes": 10 },
                { "partition": 2, "tree_ready": false, "last_exchange_unix_ms": null, "last_peer": null, "keys_repaired": 0, "last_exchange_bytes": 0 },
            ],
            "admission": { "slots": 2, "p99_ms": 12.5, "window_samples": 900, "throttled": 3, "breached": true },
        });
        let text = status_text("http://127.0.0.1:8003", &status, 1_010_000);
        assert!(
            text.starts_with(
                "node 3 at http://127.0.0.1:8003: anti-entropy on; trees built for 2 of 3 partitions\n"
            ),
            "{text}"
        );
        assert!(text.contains("exchanges: 12 done, 1 failed; keys repaired: 5000\n"), "{text}");
        assert!(text.contains("sent 2.0 KiB, received 3.0 MiB"), "{text}");
        assert!(text.contains("2 of 3 partitions exchanged, the least recent 10 s ago"), "{text}");
        assert!(text.contains("tombstones purged: 7"), "{text}");
        assert!(
            text.contains("admission: 2 background slots; foreground p99 12.5 ms over 900 requests; throttled 3 times (over the target now)"),
            "{text}"
        );
        let idle = json!({ "node": 1, "enabled": false, "partitions": [], "admission": { "slots": 4, "p99_ms": null } });
        let text = status_text("u", &idle, 0);
        assert!(text.contains("anti-entropy off") && text.contains("last exchanges: none yet"), "{text}");
        assert!(text.contains("no foreground requests in the window"), "{text}");
        let report = json!({ "node": 2, "exchanges": 86, "failed": 0, "busy": 3, "keys_repaired": 4, "bytes": 4096, "purged": 1 });
        assert_eq!(
            run_text(&report),
            "node 2: 86 exchanges (0 failed, 3 busy), 4 keys repaired, 4.0 KiB exchanged; 1 tombstones purged\n"
        );
    }
}
