//! The admin API of elastic topology (Dynamo §4.9), as Riak's `cluster
//! plan` / `cluster commit` and Garage's `layout apply`: stage joins,
//! leaves and removes on one node, read the plan they imply, commit it as
//! a new ring epoch, and watch the data move.
//!
//! - `GET /admin/cluster`: the ring epoch, every member gossip knows (id,
//!   addresses, status `active`, `joining`, `leaving` or `left`, the
//!   partitions it owns), the changes staged on this node and whether the
//!   last move has settled.
//! - `POST /admin/cluster/join/{id}`, `.../leave/{id}`, `.../remove/{id}`:
//!   stage a change; the answer lists every staged change.
//! - `GET /admin/cluster/plan`: what committing would do (the core's
//!   [`Plan`](dynamo_core::topology::Plan)).
//! - `POST /admin/cluster/commit[?epoch=N]`: apply the staged changes as a
//!   new ring epoch; with `epoch`, only if the plan was computed against
//!   ring epoch N. Answers the plan applied.
//! - `POST /admin/cluster/clear`: drop the staged changes.
//! - `GET /admin/handoff`: the move of data to the current ring as this
//!   node sees it (the core's [`HandoffStatus`]), with counts per state.
//!
//! Errors are the API's JSON errors: a refused change (unknown node, one
//! already in the ring or staged, an address a member uses, fewer than N
//! members left, removing the node asked, a commit while data still moves,
//! a node without gossip) is `400`; a plan computed against another ring
//! epoch is `409` (with `planned` and `current`); a node that has not
//! learned the ring yet is `503`. A refused request changes nothing.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use dynamo_core::handoff::{HandoffStatus, TransferState};
use dynamo_core::member::NodeId;
use dynamo_core::topology::Change;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{ApiError, AppState};

/// The routes of this module, to merge into the API's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/cluster", get(cluster))
        .route("/admin/cluster/join/{id}", post(join))
        .route("/admin/cluster/leave/{id}", post(leave))
        .route("/admin/cluster/remove/{id}", post(remove))
        .route("/admin/cluster/plan", get(plan))
        .route("/admin/cluster/commit", post(commit))
        .route("/admin/cluster/clear", post(clear))
        .route("/admin/handoff", get(handoff))
}

/// Whether every partition's data is where the current ring places it
/// (false before the node knows a ring).
pub fn is_settled(status: &HandoffStatus) -> bool {
    status.partitions > 0 && status.settled_partitions == status.partitions
}

async fn cluster(State(state): State<Arc<AppState>>) -> Json<Value> {
    let node = &state.node;
    let view = node.membership().view();
    let ring = view.ring();
    let members: Vec<Value> = view
        .members()
        .iter()
        .map(|m| {
            json!({
                "id": m.id.0,
                "addr": m.addr,
                "http": m.client_addr,
                "zone": m.zone,
                "capacity": m.capacity,
                "status": m.status,
                "in_ring": ring.is_some_and(|r| r.member(m.id).is_some()),
                "partitions": ring.map_or(0, |r| r.owned_count(m.id)),
                "self": m.id == node.id(),
            })
        })
        .collect();
    let handoff = node.handoff_status();
    Json(json!({
        "node": node.id().0,
        "gossip": node.gossip_state().is_some(),
        "epoch": ring.map(|r| r.epoch()),
        "partitions": ring.map(|r| r.partitions()),
        "n": ring.map(|r| r.replicas()),
        "members": members,
        "staged": node.staged(),
        "settled": is_settled(&handoff),
        "moving_from_epoch": handoff.from_epoch,
        "settled_partitions": handoff.settled_partitions,
    }))
}

/// A node id from the path: `400` when it is not a number.
fn node_id(id: Result<Path<String>, PathRejection>) -> Result<NodeId, ApiError> {
    let Path(id) = id?;
    id.parse::<u64>()
        .map(NodeId)
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a node id: use the number `status` shows")))
}

fn stage(state: &AppState, change: Change) -> Result<Json<Value>, ApiError> {
    let staged = state.node.stage(change)?;
    Ok(Json(json!({ "staged": staged })))
}

async fn join(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    stage(&state, Change::Join(node_id(id)?))
}

async fn leave(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    stage(&state, Change::Leave(node_id(id)?))
}

async fn remove(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    stage(&state, Change::Remove(node_id(id)?))
}

async fn plan(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let plan = state.node.plan()?;
    Ok(Json(serde_json::to_value(plan).unwrap_or(Value::Null)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitParams {
    epoch: Option<u64>,
}

async fn commit(
    State(state): State<Arc<AppState>>,
    params: Result<Query<CommitParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params?;
    let plan = state.node.commit(params.epoch).await?;
    Ok(Json(serde_json::to_value(plan).unwrap_or(Value::Null)))
}

async fn clear(State(state): State<Arc<AppState>>) -> Json<Value> {
    state.node.clear_staged();
    Json(json!({ "staged": state.node.staged() }))
}

/// The handoff status as JSON, with the node, whether the move is
/// settled and the number of transfers in each state.
pub fn handoff_json(node: NodeId, status: &HandoffStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    value["node"] = json!(node.0);
    value["settled"] = json!(is_settled(status));
    value["counts"] = json!({
        "pending": status.count(TransferState::Pending),
        "active": status.count(TransferState::Active),
        "done": status.count(TransferState::Done),
    });
    value
}

async fn handoff(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(handoff_json(state.node.id(), &state.node.handoff_status()))
}
