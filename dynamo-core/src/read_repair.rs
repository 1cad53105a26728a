//! Read repair (Dynamo §5): once every replica asked by a read has
//! answered, the ones that answered with less than the merge of all the
//! answers get the merge.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::causality::SiblingSet;
use crate::error::Error;
use crate::member::NodeId;
use crate::metrics::{bump, Metrics};
use crate::peers::Peers;
use crate::replica::{Admit, Replica, Slot};
use crate::sloppy_quorum::Target;
use crate::transport::protocol::{Request, Response};

/// Brings the replicas a read found stale up to date.
pub(crate) struct ReadRepair {
    pub(crate) id: NodeId,
    pub(crate) replica: Arc<Replica>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) replica_timeout: Duration,
}

impl ReadRepair {
    /// Pushes the merge of every answer to each owner that answered with
    /// less (fallbacks' hints are left to hinted handoff).
    pub(crate) async fn repair(
        &self,
        key: Bytes,
        partition: u32,
        hash: u64,
        answers: Vec<(Target, Option<SiblingSet>)>,
    ) {
        let mut merged = SiblingSet::new();
        for (_, state) in &answers {
            if let Some(s) = state {
                merged.merge(s);
            }
        }
        if merged.is_empty() {
            return;
        }
        let stale: Vec<NodeId> = answers
            .iter()
            .filter(|(t, state)| !t.is_stand_in() && state.as_ref() != Some(&merged))
            .map(|(t, _)| t.node)
            .collect();
        if stale.is_empty() {
            return;
        }
        let frame = Request::Replicate {
            key: key.clone(),
            state: Bytes::from(merged.encode()),
            sibling_limit: None,
            epoch: 0,
        }
        .encode();
        for node in stale {
            let result = if node == self.id {
                self.replica
                    .merge(Slot::Data, partition, &key, hash, &merged, Admit::default())
                    .await
                    .map(|_| ())
            } else {
                match self.peers.call(node, frame.clone(), self.replica_timeout).await {
                    Ok(Response::Ack) => Ok(()),
                    Ok(Response::Error(e)) => Err(e.into_error()),
                    Ok(other) => Err(Error::Protocol(format!("unexpected answer to a repair: {other:?}"))),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => bump(&self.metrics.read_repairs),
                Err(e) => tracing::debug!(peer = %node, error = %e, "read repair failed"),
            }
        }
    }
}
