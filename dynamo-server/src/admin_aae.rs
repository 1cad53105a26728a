//! The admin API of active anti-entropy (Dynamo §4.7), tombstone purge
//! and admission control of background work:
//!
//! - `GET /admin/aae`: this node's anti-entropy status (the core's
//!   [`AaeStatus`]: whether it runs, exchanges done and failed, keys
//!   repaired, keys and bytes shipped, tombstones purged, trees built, and
//!   one entry per partition it replicates), with the `node` id and the
//!   `admission` controller's state (`slots`, `p99_ms`, `window_samples`,
//!   `throttled`, `breached`).
//! - `POST /admin/aae/run`: one exchange round now ([`Node::aae_pass`]),
//!   then one tombstone purge pass ([`Node::purge_pass`]), as the timers
//!   would; answers the round's [`AaeReport`] with the purge's count in
//!   `purged`. It takes no parameters: any query parameter is `400`.
//!
//! Errors are the API's JSON errors: a wrong method is `405` (with
//! `Allow`), an unknown parameter `400`.
//!
//! [`Node::aae_pass`]: dynamo_core::node::Node::aae_pass
//! [`Node::purge_pass`]: dynamo_core::node::Node::purge_pass

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use dynamo_core::admission::AdmissionStats;
use dynamo_core::antientropy::{AaeReport, AaeStatus};
use dynamo_core::member::NodeId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{ApiError, AppState};

/// The routes of this module, to merge into the API's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/admin/aae", get(status)).route("/admin/aae/run", post(run))
}

/// The admission controller's state as JSON: `p99_ms` is the window's
/// foreground p99 in milliseconds, `null` while the window is empty.
pub fn admission_json(stats: &AdmissionStats) -> Value {
    json!({
        "slots": stats.slots,
        "p99_ms": stats.p99.map(|d| d.as_secs_f64() * 1000.0),
        "window_samples": stats.window_samples,
        "throttled": stats.throttled,
        "breached": stats.breached,
    })
}

/// What `GET /admin/aae` answers: the status's fields, with the node's id
/// and the admission controller's state under `admission`.
pub fn status_json(node: NodeId, status: &AaeStatus, admission: &AdmissionStats) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    value["node"] = json!(node.0);
    value["admission"] = admission_json(admission);
    value
}

/// What `POST /admin/aae/run` answers: the report, with the node's id.
pub fn report_json(node: NodeId, report: &AaeReport) -> Value {
    let mut value = serde_json::to_value(report).unwrap_or_else(|_| json!({}));
    value["node"] = json!(node.0);
    value
}

async fn status(State(state): State<Arc<AppState>>) -> Json<Value> {
    let node = &state.node;
    Json(status_json(node.id(), &node.aae_status(), &node.admission()))
}

/// `/admin/aae/run` takes no parameters; this refuses any.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunParams {}

async fn run(
    State(state): State<Arc<AppState>>,
    params: Result<Query<RunParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(RunParams {}) = params?;
    let node = &state.node;
    let mut report = node.aae_pass().await;
    let purged = node.purge_pass().await;
    report.purged = report.purged.saturating_add(purged);
    Ok(Json(report_json(node.id(), &report)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dynamo_core::antientropy::PartitionAae;

    use super::*;

    #[test]
    fn status_shows_the_core_status_the_node_and_admission() {
        let status = AaeStatus {
            enabled: true,
            exchanges: 4,
            exchanges_failed: 1,
            keys_repaired: 17,
            keys_sent: 9,
            bytes_sent: 1_000,
            bytes_received: 2_000,
            tombstones_purged: 2,
            trees_ready: 1,
            partitions: vec![PartitionAae {
                partition: 7,
                tree_ready: true,
                last_exchange_unix_ms: Some(1_700_000_000_000),
                last_peer: Some(NodeId(2)),
                keys_repaired: 17,
                last_exchange_bytes: 3_000,
            }],
        };
        let admission = AdmissionStats {
            slots: 2,
            p99: Some(Duration::from_micros(12_500)),
            window_samples: 900,
            throttled: 3,
            breached: false,
        };
        let json = status_json(NodeId(3), &status, &admission);
        assert_eq!(json["node"], 3);
        assert_eq!(json["keys_repaired"], 17);
        assert_eq!(json["trees_ready"], 1);
        assert_eq!(json["partitions"][0]["partition"], 7);
        assert_eq!(json["admission"]["slots"], 2);
        assert_eq!(json["admission"]["p99_ms"], 12.5);
        assert_eq!(json["admission"]["window_samples"], 900);
        assert_eq!(json["admission"]["throttled"], 3);
        assert_eq!(json["admission"]["breached"], false);
        let idle = AdmissionStats { p99: None, ..admission };
        assert!(admission_json(&idle)["p99_ms"].is_null());
        let report = AaeReport { exchanges: 2, failed: 0, busy: 4, keys_repaired: 5, bytes: 64, purged: 1 };
        let json = report_json(NodeId(1), &report);
        assert_eq!(json["busy"], 4);
        assert_eq!((json["node"].as_u64(), json["keys_repaired"].as_u64()), (Some(1), Some(5)));
        assert_eq!(json["purged"], 1);
    }
}
