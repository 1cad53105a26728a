//! `dynamo-server cluster …`: topology changes from the shell, through a
//! node's admin API ([`crate::admin_cluster`]), as Riak's `riak admin
//! cluster`:
//!
//! ```sh
//! dynamo-server cluster join 4      # stage: node 4 (known by gossip) takes partitions
//! dynamo-server cluster plan        # what moves: how many, which, from whom to whom
//! dynamo-server cluster commit      # apply as a new ring epoch
//! dynamo-server cluster status      # members, and the move's progress until settled
//! dynamo-server cluster leave 4     # stage: node 4 hands its partitions off
//! dynamo-server cluster clear       # drop what is staged
//! ```
//!
//! Changes are staged on the node asked (`--url`): plan and commit on the
//! same node. Every command prints text for people, or the API's JSON
//! with `--json`.

use std::fmt::Write as _;

use anyhow::Context as _;
use dynamo_core::handoff::{HandoffStatus, TransferState};
use dynamo_core::topology::Plan;
use serde_json::Value;

/// Options of `cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
    /// Node to ask: changes are staged on it, so plan and commit there too.
    #[arg(long, default_value = "http://127.0.0.1:8001", env = "DYNAMO_URL", global = true)]
    url: String,
    /// Print the API's JSON answer for scripts instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    token: crate::client_token::ConnectArgs,
}

/// A `cluster` command.
#[derive(Debug, Clone, clap::Subcommand)]
enum ClusterCommand {
    /// Stage a join: NODE (started with a seed of this cluster, so gossip
    /// knows it) takes its share of partitions at the next commit.
    Join {
        /// The node's id.
        node: u64,
    },
    /// Stage a leave: NODE hands its partitions to the others, then owns
    /// nothing (it keeps running until you stop it).
    Leave {
        /// The node's id.
        node: u64,
    },
    /// Stage a remove: NODE is dead for good; its partitions are rebuilt
    /// from the other replicas, never asked of it.
    Remove {
        /// The node's id.
        node: u64,
    },
    /// Show what committing the staged changes would do.
    Plan,
    /// Apply the staged changes as a new ring epoch.
    Commit {
        /// Commit only if the plan was computed against this ring epoch
        /// (`plan` prints it): refused if the ring moved since.
        #[arg(long)]
        epoch: Option<u64>,
    },
    /// Drop every staged change.
    Clear,
    /// Members, staged changes, and the progress of the data's move.
    Status,
}

/// Runs a `cluster` command and prints its answer.
///
/// # Errors
/// The node does not answer, or refuses (the server's message).
pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let client = args.token.client(&args.url)?;
    let text = match args.command {
        ClusterCommand::Join { node } => {
            staged(&args, client.post_json(&format!("/admin/cluster/join/{node}")).await?)
        }
        ClusterCommand::Leave { node } => {
            staged(&args, client.post_json(&format!("/admin/cluster/leave/{node}")).await?)
        }
        ClusterCommand::Remove { node } => {
            staged(&args, client.post_json(&format!("/admin/cluster/remove/{node}")).await?)
        }
        ClusterCommand::Clear => {
            let answer = client.post_json("/admin/cluster/clear").await?;
            if args.json {
                format!("{answer}\n")
            } else {
                "staged changes cleared\n".to_string()
            }
        }
        ClusterCommand::Plan => {
            let answer = client.json("/admin/cluster/plan").await?;
            if args.json {
                format!("{answer}\n")
            } else {
                plan_text(&serde_json::from_value(answer).context("the node's plan")?)
            }
        }
        ClusterCommand::Commit { epoch } => {
            let path = match epoch {
                Some(e) => format!("/admin/cluster/commit?epoch={e}"),
                None => "/admin/cluster/commit".to_string(),
            };
            let answer = client.post_json(&path).await?;
            if args.json {
                format!("{answer}\n")
            } else {
                commit_text(&serde_json::from_value(answer).context("the node's plan")?)
            }
        }
        ClusterCommand::Status => {
            let cluster = client.json("/admin/cluster").await?;
            let handoff = client.json("/admin/handoff").await?;
            if args.json {
                format!("{}\n", serde_json::json!({ "cluster": cluster, "handoff": handoff }))
            } else {
                let status: HandoffStatus =
                    serde_json::from_value(handoff).context("the node's handoff status")?;
                status_text(client.base(), &cluster, &status)
            }
        }
    };
    print!("{text}");
    Ok(())
}

fn staged(args: &ClusterArgs, answer: Value) -> String {
    if args.json {
        return format!("{answer}\n");
    }
    format!(
        "staged: {}\nnext: `dynamo-server cluster plan` shows what moves, `cluster commit` applies it\n",
        changes_text(&answer["staged"])
    )
}

/// `join 4, leave 2`, or `none`.
fn changes_text(changes: &Value) -> String {
    let list: Vec<String> = changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {}", c["action"].as_str().unwrap_or("?"), c["node"]))
        .collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

fn plan_changes(plan: &Plan) -> String {
    let changes: Vec<Value> = plan.changes.iter().filter_map(|c| serde_json::to_value(c).ok()).collect();
    changes_text(&Value::Array(changes))
}

fn nodes(ids: &[dynamo_core::member::NodeId]) -> String {
    ids.iter().map(|n| n.0.to_string()).collect::<Vec<_>>().join(",")
}

/// `plan` for a person: the changes, how many partitions change owner,
/// every transfer (partition, from → to), and each node's share before
/// → after.
pub fn plan_text(plan: &Plan) -> String {
    let partitions: usize = plan.shares.iter().map(|s| s.owned_after).sum();
    let mut out = String::new();
    let _ = writeln!(out, "plan: ring epoch {} → {} ({})", plan.base_epoch, plan.epoch, plan_changes(plan));
    let _ =
        writeln!(out, "ownership moves: {} of {partitions} partitions change owner", plan.ownership_moves);
    let mut per_target = std::collections::BTreeMap::<u64, usize>::new();
    for t in &plan.transfers {
        *per_target.entry(t.to.0).or_default() += 1;
    }
    let targets: Vec<String> = per_target.iter().map(|(n, c)| format!("{c} to node {n}")).collect();
    let _ = writeln!(
        out,
        "transfers: {} partition copies ({})",
        plan.transfers.len(),
        if targets.is_empty() { "none".to_string() } else { targets.join(", ") }
    );
    for t in &plan.transfers {
        let _ = writeln!(out, "  partition {:>4}: {} → {}", t.partition, nodes(&t.from), t.to.0);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(vec!["NODE", "OWNED BEFORE → AFTER", "REPLICAS BEFORE → AFTER"]);
    for s in &plan.shares {
        table.add_row(vec![
            s.node.0.to_string(),
            format!("{} → {}", s.owned_before, s.owned_after),
            format!("{} → {}", s.replicas_before, s.replicas_after),
        ]);
    }
    let _ =
        writeln!(out, "\npartitions per node (owned: first in the preference list; replicas: any of the N):");
    let _ = writeln!(out, "{}\n", table.trim_fmt());
    let _ = writeln!(out, "apply it: dynamo-server cluster commit --epoch {}", plan.base_epoch);
    out
}

/// `commit` for a person.
pub fn commit_text(plan: &Plan) -> String {
    format!(
        "committed: ring epoch {} → {} ({}): {} ownership moves, {} partition copies\nwatch the data move: dynamo-server cluster status\n",
        plan.base_epoch,
        plan.epoch,
        plan_changes(plan),
        plan.ownership_moves,
        plan.transfers.len()
    )
}

/// A byte count for people: `512 B`, `34.1 KiB`, `2.0 MiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `status` for a person: the ring, the move's progress (settled
/// partitions, transfers per state, keys and bytes this node received and
/// sent, the copies under way), staged changes and the members.
pub fn status_text(url: &str, cluster: &Value, handoff: &HandoffStatus) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let me = cluster["node"].as_u64().unwrap_or(0);
    let mut out = String::new();
    if cluster["epoch"].is_null() {
        let _ =
            writeln!(out, "node {me} at {url}: no ring yet (it learns the ring from its seeds by gossip)");
    } else {
        let _ = writeln!(
            out,
            "node {me} at {url}: ring epoch {}, {} partitions, N={}",
            text(&cluster["epoch"]),
            text(&cluster["partitions"]),
            text(&cluster["n"])
        );
    }
    let (pending, active, done) = (
        handoff.count(TransferState::Pending),
        handoff.count(TransferState::Active),
        handoff.count(TransferState::Done),
    );
    let settled = handoff.partitions > 0 && handoff.settled_partitions == handoff.partitions;
    match (handoff.from_epoch, settled) {
        (_, _) if handoff.partitions == 0 => {}
        (Some(from), false) => {
            let _ = writeln!(
                out,
                "moving from epoch {from}: {} of {} partitions settled; transfers: {pending} pending, {active} active, {done} done",
                handoff.settled_partitions, handoff.partitions
            );
        }
        (Some(from), true) => {
            let _ = writeln!(
                out,
                "settled: the move from epoch {from} is complete ({} of {} partitions settled; transfers: {done} done)",
                handoff.settled_partitions, handoff.partitions
            );
        }
        (None, _) => {
            let _ = writeln!(out, "settled: every partition is where ring epoch {} places it", handoff.epoch);
        }
    }
    let (mut received, mut sent) = ((0u64, 0u64), (0u64, 0u64));
    for t in &handoff.transfers {
        let side = if t.to.0 == me { &mut received } else { &mut sent };
        side.0 += t.keys;
        side.1 += t.bytes;
    }
    if !handoff.transfers.is_empty() {
        let _ = writeln!(
            out,
            "this node: received {} keys ({}), sent {} keys ({})",
            received.0,
            bytes_text(received.1),
            sent.0,
            bytes_text(sent.1)
        );
    }
    const SHOWN: usize = 10;
    let copying: Vec<_> = handoff.transfers.iter().filter(|t| t.state == TransferState::Active).collect();
    for t in copying.iter().take(SHOWN) {
        let _ = writeln!(
            out,
            "  copying partition {}: {} → {} ({} keys, {} here)",
            t.partition,
            nodes(&t.from),
            t.to.0,
            t.keys,
            bytes_text(t.bytes)
        );
    }
    if copying.len() > SHOWN {
        let _ = writeln!(out, "  … and {} more", copying.len() - SHOWN);
    }
    let _ = writeln!(out, "staged on this node: {}", changes_text(&cluster["staged"]));
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(vec!["NODE", "MEMBERSHIP", "PARTITIONS", "PEER", "HTTP"]);
    for m in cluster["members"].as_array().into_iter().flatten() {
        let id =
            if m["self"] == Value::Bool(true) { format!("{} *", text(&m["id"])) } else { text(&m["id"]) };
        table.add_row(vec![
            id,
            text(&m["status"]),
            text(&m["partitions"]),
            text(&m["addr"]),
            text(&m["http"]),
        ]);
    }
    let _ = writeln!(out, "\n{}", table.trim_fmt());
    out
}

#[cfg(test)]
mod tests {
    use dynamo_core::handoff::TransferStatus;
    use dynamo_core::member::NodeId;
    use dynamo_core::topology::{Change, Share, Transfer};

    use super::*;

    fn plan() -> Plan {
        Plan {
            base_epoch: 1,
            epoch: 2,
            changes: vec![Change::Join(NodeId(4))],
            ownership_moves: 2,
            transfers: vec![
                Transfer { partition: 0, from: vec![NodeId(1)], to: NodeId(4) },
                Transfer { partition: 5, from: vec![NodeId(2), NodeId(3)], to: NodeId(4) },
            ],
            shares: vec![
                Share {
                    node: NodeId(1),
                    owned_before: 4,
                    owned_after: 3,
                    replicas_before: 8,
                    replicas_after: 6,
                },
                Share {
                    node: NodeId(4),
                    owned_before: 0,
                    owned_after: 1,
                    replicas_before: 0,
                    replicas_after: 2,
                },
            ],
        }
    }

    #[test]
    fn a_plan_shows_moves_transfers_and_shares() {
        let text = plan_text(&plan());
        assert!(text.starts_with("plan: ring epoch 1 → 2 (join 4)\n"), "{text}");
        assert!(text.contains("ownership moves: 2 of 4 partitions change owner"), "{text}");
        assert!(text.contains("transfers: 2 partition copies (2 to node 4)"), "{text}");
        assert!(text.contains("partition    0: 1 → 4\n"), "{text}");
        assert!(text.contains("partition    5: 2,3 → 4\n"), "{text}");
        let row = text.lines().find(|l| l.trim_start().starts_with("4 ")).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["4", "0", "→", "1", "0", "→", "2"], "{text}");
        assert!(text.contains("cluster commit --epoch 1"), "{text}");
        assert!(
            commit_text(&plan()).contains("ring epoch 1 → 2 (join 4): 2 ownership moves, 2 partition copies")
        );
    }

    #[test]
    fn status_shows_the_moves_progress() {
        let cluster = serde_json::json!({
            "node": 4, "epoch": 2, "partitions": 8, "n": 3,
            "staged": [{ "action": "leave", "node": 2 }],
            "members": [
                { "id": 1, "status": "active", "partitions": 3, "addr": "127.0.0.1:7001", "http": "http://127.0.0.1:8001", "self": false },
                { "id": 4, "status": "active", "partitions": 1, "addr": "127.0.0.1:7004", "http": null, "self": true },
            ],
        });
        let transfer = |partition, state, keys| TransferStatus {
            partition,
            from: vec![NodeId(1)],
            to: NodeId(4),
            state,
            keys,
            bytes: keys * 100,
        };
        let status = HandoffStatus {
            epoch: 2,
            from_epoch: Some(1),
            settled_partitions: 6,
            partitions: 8,
            transfers: vec![transfer(0, TransferState::Done, 20), transfer(5, TransferState::Active, 15)],
        };
        let text = status_text("http://127.0.0.1:8004", &cluster, &status);
        assert!(
            text.starts_with("node 4 at http://127.0.0.1:8004: ring epoch 2, 8 partitions, N=3\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "moving from epoch 1: 6 of 8 partitions settled; transfers: 0 pending, 1 active, 1 done"
            ),
            "{text}"
        );
        assert!(text.contains("this node: received 35 keys (3.4 KiB), sent 0 keys (0 B)"), "{text}");
        assert!(text.contains("copying partition 5: 1 → 4 (15 keys, 1.5 KiB here)"), "{text}");
        assert!(text.contains("staged on this node: leave 2"), "{text}");
        assert!(text.lines().any(|l| l.trim_start().starts_with("4 *")), "{text}");
        let settled = HandoffStatus { settled_partitions: 8, transfers: vec![], ..status };
        let text = status_text("u", &cluster, &settled);
        assert!(text.contains("settled: the move from epoch 1 is complete"), "{text}");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
    }
}
