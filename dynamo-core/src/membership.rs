//! The membership plugin point: who is in the cluster, where to reach
//! them, and the ring they share.
//!
//! A [`Membership`] gives a node its current [`ClusterView`] (the members
//! with their addresses, zone, capacity and status, and the ring with its
//! ownership epoch), tells it when the view changes, and knows which
//! member the node itself is. The request path asks it for the ring on
//! every request. [`StaticMembership`] is today's configured member list,
//! changed only by its owner; a gossip implementation plugs in the same
//! way.
//!
//! ```
//! # use std::sync::Arc;
//! # use dynamo_core::prelude::*;
//! # use dynamo_core::membership::{Membership, StaticMembership};
//! let ring = Ring::new(256, 1, vec![Member::new(NodeId(1), "10.0.0.1:7000")])?;
//! let membership = Arc::new(StaticMembership::new(NodeId(1), ring)?);
//! assert_eq!(membership.view().require_ring()?.partitions(), 256);
//! assert_eq!(membership.local_id(), NodeId(1));
//! # Ok::<(), dynamo_core::Error>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::member::NodeId;
use crate::ring::Ring;
use crate::topology::Handover;

/// Where a member stands in the cluster's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// A full member: it may own partitions and serves requests.
    Active,
    /// Known to the cluster but owning nothing yet (awaiting a topology change).
    Joining,
    /// Handing its partitions off before it leaves.
    Leaving,
    /// No longer in the ring: it owns nothing and its data has moved.
    Left,
}

/// One member as the cluster view knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's id.
    pub id: NodeId,
    /// The address peers reach it at through the transport.
    pub addr: String,
    /// Its client (HTTP) address, if it has one.
    pub client_addr: Option<String>,
    /// Its failure zone, if it declares one.
    pub zone: Option<String>,
    /// Its relative capacity (partitions owned are proportional to it).
    pub capacity: u32,
    /// Where it stands in the cluster's life cycle.
    pub status: MemberStatus,
}

/// A node's view of the cluster: the members and the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// `None` until the node has learned one (a new node with only seeds).
    ring: Option<Arc<Ring>>,
    members: Vec<MemberInfo>,
    /// While data moves from the previous ring to this one.
    handover: Option<Arc<Handover>>,
}

impl ClusterView {
    /// The view of `ring`'s members, all active, with client addresses from
    /// `client_addrs` where given.
    pub fn of_ring(ring: Ring, client_addrs: &BTreeMap<NodeId, String>) -> Self {
        let members = ring
            .members()
            .iter()
            .map(|m| MemberInfo {
                id: m.id,
                addr: m.addr.clone(),
                client_addr: client_addrs.get(&m.id).cloned(),
                zone: m.zone.clone(),
                capacity: m.capacity,
                status: MemberStatus::Active,
            })
            .collect();
        ClusterView { ring: Some(Arc::new(ring)), members, handover: None }
    }

    /// A view of `members` (sorted here by id) and `ring`, if known.
    pub fn from_parts(ring: Option<Arc<Ring>>, mut members: Vec<MemberInfo>) -> Self {
        members.sort_by_key(|m| m.id);
        ClusterView { ring, members, handover: None }
    }

    /// This view with data moving to its ring from a previous one (see
    /// [`crate::topology`]).
    pub fn with_handover(mut self, handover: Option<Arc<Handover>>) -> Self {
        self.handover = handover;
        self
    }

    /// The move of data from the previous ring, while there is one.
    pub fn handover(&self) -> Option<&Arc<Handover>> {
        self.handover.as_ref()
    }

    /// The nodes a read of `partition` asks: its preference list, or the
    /// previous ring's while the partition's data is still moving.
    ///
    /// # Panics
    /// If `partition` is out of range of `ring`.
    pub fn read_owners<'a>(&'a self, ring: &'a Ring, partition: u32) -> &'a [NodeId] {
        match &self.handover {
            Some(h) if !h.is_settled(partition) => h.previous().preference_list(partition),
            _ => ring.preference_list(partition),
        }
    }

    /// Whether `node` holds `partition`'s data under this view: it is
    /// written to (see [`ClusterView::write_owners`]). A node that is not
    /// has dropped (or is dropping) its copy.
    ///
    /// # Panics
    /// If `partition` is out of range of `ring`.
    pub fn replicates(&self, ring: &Ring, node: NodeId, partition: u32) -> bool {
        ring.preference_list(partition).contains(&node)
            || self.handover.as_ref().is_some_and(|h| {
                !h.is_settled(partition) && h.previous().preference_list(partition).contains(&node)
            })
    }

    /// The nodes a write of `partition` goes to, and how many
    /// acknowledgements it needs beyond W: its preference list and 0, or
    /// while its data is still moving, the old and new lists together and
    /// the number of nodes that gain it (see [`crate::topology`]).
    ///
    /// # Panics
    /// If `partition` is out of range of `ring`.
    pub fn write_owners<'a>(&'a self, ring: &'a Ring, partition: u32) -> (Cow<'a, [NodeId]>, usize) {
        let new = ring.preference_list(partition);
        match &self.handover {
            Some(h) if !h.is_settled(partition) => {
                let mut all: Vec<NodeId> = h.previous().preference_list(partition).to_vec();
                let gained: Vec<NodeId> = new.iter().copied().filter(|n| !all.contains(n)).collect();
                let extra = gained.len();
                all.extend(gained);
                (Cow::Owned(all), extra)
            }
            _ => (Cow::Borrowed(new), 0),
        }
    }

    /// The ring: partitions, owners and preference lists, with its
    /// ownership epoch; `None` until the node has learned one.
    pub fn ring(&self) -> Option<&Arc<Ring>> {
        self.ring.as_ref()
    }

    /// The ring, for a request that needs one.
    ///
    /// # Errors
    /// [`Error::NotReady`] while the node has not learned the ring.
    pub fn require_ring(&self) -> Result<&Arc<Ring>> {
        self.ring.as_ref().ok_or_else(|| {
            Error::NotReady("this node has not learned the cluster's ring yet (no seed answered)".into())
        })
    }

    /// Every member, sorted by id.
    pub fn members(&self) -> &[MemberInfo] {
        &self.members
    }

    /// The member `id`, if it is one.
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// Tells a node who is in the cluster.
///
/// Implementations must be cheap to ask: the request path calls
/// [`view`](Membership::view) on every request.
pub trait Membership: Send + Sync + 'static {
    /// The local node's id.
    fn local_id(&self) -> NodeId;

    /// The current view.
    fn view(&self) -> Arc<ClusterView>;

    /// A receiver that sees every later view (and holds the current one).
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>>;
}

/// A fixed member list, as configured: the view changes only when its
/// owner calls [`StaticMembership::set_ring`].
#[derive(Debug)]
pub struct StaticMembership {
    local: NodeId,
    view: watch::Sender<Arc<ClusterView>>,
}

impl StaticMembership {
    /// The members of `ring`, `local` among them.
    ///
    /// # Errors
    /// [`Error::NotAMember`] when `ring` does not list `local`.
    pub fn new(local: NodeId, ring: Ring) -> Result<Self> {
        StaticMembership::with_client_addrs(local, ring, BTreeMap::new())
    }

    /// As [`new`](StaticMembership::new), with members' client addresses.
    ///
    /// # Errors
    /// [`Error::NotAMember`] when `ring` does not list `local`.
    pub fn with_client_addrs(
        local: NodeId,
        ring: Ring,
        client_addrs: BTreeMap<NodeId, String>,
    ) -> Result<Self> {
        if ring.member(local).is_none() {
            return Err(Error::NotAMember(local));
        }
        let view = ClusterView::of_ring(ring, &client_addrs);
        Ok(StaticMembership { local, view: watch::Sender::new(Arc::new(view)) })
    }

    /// Replaces the ring (same partition count and N, still listing the
    /// local node); subscribers see the new view. Client addresses of
    /// members still present are kept. No data moves.
    ///
    /// # Errors
    /// [`Error::Config`] when Q or N differ, [`Error::NotAMember`].
    pub fn set_ring(&self, ring: Ring) -> Result<()> {
        let current = self.view();
        let old = current.require_ring()?;
        if ring.partitions() != old.partitions() || ring.replicas() != old.replicas() {
            return Err(Error::Config("a new ring must keep the partition count and N".into()));
        }
        if ring.member(self.local).is_none() {
            return Err(Error::NotAMember(self.local));
        }
        let addrs = current.members().iter().filter_map(|m| Some((m.id, m.client_addr.clone()?))).collect();
        self.view.send_replace(Arc::new(ClusterView::of_ring(ring, &addrs)));
        Ok(())
    }
}

impl Membership for StaticMembership {
    fn local_id(&self) -> NodeId {
        self.local
    }

    fn view(&self) -> Arc<ClusterView> {
        Arc::clone(&self.view.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::Member;

    fn ring(members: u64) -> Ring {
        Ring::new(64, 2, (1..=members).map(|i| Member::new(NodeId(i), format!("n{i}"))).collect()).unwrap()
    }

    #[test]
    fn a_static_membership_publishes_ring_changes_and_keeps_client_addresses() {
        let addrs = BTreeMap::from([(NodeId(1), "http://a".to_owned())]);
        let m = StaticMembership::with_client_addrs(NodeId(1), ring(2), addrs).unwrap();
        let mut changes = m.subscribe();
        assert_eq!(m.view().members().len(), 2);
        assert_eq!(m.view().member(NodeId(1)).unwrap().client_addr.as_deref(), Some("http://a"));
        m.set_ring(ring(3)).unwrap();
        assert!(changes.has_changed().unwrap());
        assert_eq!(changes.borrow_and_update().members().len(), 3);
        assert_eq!(m.view().member(NodeId(1)).unwrap().client_addr.as_deref(), Some("http://a"));
        assert!(matches!(StaticMembership::new(NodeId(9), ring(2)), Err(Error::NotAMember(NodeId(9)))));
        let other_q = Ring::new(128, 2, vec![Member::new(NodeId(1), "n1")]).unwrap();
        assert!(matches!(m.set_ring(other_q), Err(Error::Config(_))));
    }
}
