//! Calling other nodes: one request, one answer, within a deadline,
//! teaching the failure detector about the outcome.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::failure::FailureDetector;
use crate::fault_point::{Fault, FaultPoint, Faults};
use crate::member::NodeId;
use crate::membership::Membership;
use crate::transport::protocol::{frame_version, Response, PROTOCOL_VERSION};
use crate::transport::{Transport, TransportError};

/// A node's way to its peers.
pub(crate) struct Peers {
    pub(crate) membership: Arc<dyn Membership>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) detector: Arc<dyn FailureDetector>,
    pub(crate) faults: Faults,
}

impl Peers {
    /// Sends `frame` to `node` and decodes its answer; the failure
    /// detector learns whether the peer answered.
    ///
    /// # Errors
    /// [`Error::NotAMember`] for a node the view does not list (nothing is
    /// sent), [`Error::Transport`] when the call failed (see
    /// [`TransportError`] for whether the request may have arrived),
    /// [`Error::Protocol`] for an answer that does not decode.
    pub(crate) async fn call(&self, node: NodeId, frame: Bytes, timeout: Duration) -> Result<Response> {
        self.call_sized(node, frame, timeout).await.map(|(response, _)| response)
    }

    /// [`call`](Peers::call), also returning the answer's size in bytes.
    ///
    /// # Errors
    /// As [`call`](Peers::call).
    pub(crate) async fn call_sized(
        &self,
        node: NodeId,
        frame: Bytes,
        timeout: Duration,
    ) -> Result<(Response, usize)> {
        let addr = match self.membership.view().member(node) {
            Some(m) => m.addr.clone(),
            None => return Err(Error::NotAMember(node)),
        };
        match self.faults.at(FaultPoint::BeforeSend) {
            Some(Fault::Fail) => {
                self.detector.record_failure(node);
                let reason = "injected: connection refused".into();
                return Err(Error::Transport(TransportError::Refused { peer: addr, reason }));
            }
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        match self.transport.call(&addr, frame, timeout).await {
            Ok(_) if self.faults.at(FaultPoint::AfterSend) == Some(Fault::Fail) => {
                self.detector.record_failure(node);
                let reason = "injected: connection lost after the request was sent".into();
                Err(Error::Transport(TransportError::Unreachable { peer: addr, reason }))
            }
            Ok(bytes) => {
                self.detector.record_success(node);
                if let Some(v) = frame_version(&bytes).filter(|v| *v != PROTOCOL_VERSION) {
                    tracing::warn!(peer = %node, peer_version = v, version = PROTOCOL_VERSION, "a peer answers in another protocol version");
                }
                Response::decode(&bytes).map(|r| (r, bytes.len()))
            }
            Err(e) => {
                self.detector.record_failure(node);
                Err(Error::Transport(e))
            }
        }
    }
}
