//! Fault points (FoundationDB's BUGGIFY): places on the request path where
//! a real system can fail or stall, at which a simulation can make it do
//! so.
//!
//! With the `simulation` feature, `NodeBuilder::fault_injector` installs a
//! [`FaultInjector`] that core consults at each [`FaultPoint`]. Without the
//! feature (production builds) the hooks compile to nothing: the check is
//! a constant `None` on a zero-sized type.

use std::sync::Arc;
use std::time::Duration;

use crate::member::NodeId;

/// A place in core where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultPoint {
    /// A group-committed store write, before it reaches the store: a
    /// failure fails every write of the batch with nothing stored (a disk
    /// error); a delay stalls the batch (a slow fsync).
    StoreWrite,
    /// A call to a peer, before the frame is sent: a failure is a refused
    /// connection (the peer never sees the request).
    BeforeSend,
    /// A call to a peer, after its answer arrived: a failure is a
    /// connection lost mid-call, although the peer executed the request.
    AfterSend,
}

/// What an injector makes happen at a fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail as the point describes.
    Fail,
    /// Carry on after waiting this long (on tokio's clock).
    Delay(Duration),
}

/// Decides, at each fault point a node passes, whether to inject a fault.
/// Implementations in a simulation draw from its seed.
pub trait FaultInjector: Send + Sync + 'static {
    /// The fault to inject at `point` on node `node`, if any.
    fn fault(&self, node: NodeId, point: FaultPoint) -> Option<Fault>;
}

/// A node's connection to its fault injector, if any.
#[derive(Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "simulation")]
    injector: Option<(NodeId, Arc<dyn FaultInjector>)>,
}

impl Faults {
    /// Faults drawn by `injector` for `node`.
    #[cfg(feature = "simulation")]
    pub(crate) fn new(node: NodeId, injector: Option<Arc<dyn FaultInjector>>) -> Self {
        Faults { injector: injector.map(|i| (node, i)) }
    }

    /// No faults (a production node, or a simulation without an injector).
    #[cfg(not(feature = "simulation"))]
    pub(crate) fn new(_node: NodeId, _injector: Option<Arc<dyn FaultInjector>>) -> Self {
        Faults {}
    }

    /// The fault to inject at `point`, if any.
    #[inline(always)]
    pub(crate) fn at(&self, _point: FaultPoint) -> Option<Fault> {
        #[cfg(feature = "simulation")]
        if let Some((node, injector)) = &self.injector {
            return injector.fault(*node, _point);
        }
        None
    }
}
