//! An in-process transport for tests: every node's groups in one map, links that can be cut.
//! openraft's RPCs become direct calls on the target's `Raft` handle; a cut link answers
//! `Unreachable`, as a dead TCP connection would.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, RwLock};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use super::machine::PartitionSnapshot;
use super::{GroupRaft, NodeAddr, NodeId, TypeConfig};

/// Every node's groups, and which links are cut.
#[derive(Debug, Clone, Default)]
pub struct Router {
    rafts: Arc<RwLock<HashMap<(NodeId, u64), GroupRaft>>>,
    cut: Arc<RwLock<BTreeSet<(NodeId, NodeId)>>>,
}

impl Router {
    /// Registers a node's group.
    pub fn add(&self, node: NodeId, group: u64, raft: GroupRaft) {
        self.rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((node, group), raft);
    }

    /// Unregisters a node's group (the node stopped).
    pub fn remove(&self, node: NodeId, group: u64) -> Option<GroupRaft> {
        self.rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(node, group))
    }

    /// A node's group.
    pub fn get(&self, node: NodeId, group: u64) -> Option<GroupRaft> {
        self.rafts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(node, group))
            .cloned()
    }

    /// Cuts (or heals) both directions between `a` and `b`.
    pub fn set_cut(&self, a: NodeId, b: NodeId, cut: bool) {
        let mut c = self.cut.write().unwrap_or_else(|e| e.into_inner());
        for k in [(a, b), (b, a)] {
            if cut {
                c.insert(k);
            } else {
                c.remove(&k);
            }
        }
    }

    fn target(&self, from: NodeId, to: NodeId, group: u64) -> Result<GroupRaft, Unreachable<TypeConfig>> {
        if self
            .cut
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(from, to))
        {
            return Err(Unreachable::from_string(format!("link {from} -> {to} is cut")));
        }
        self.get(to, group)
            .ok_or_else(|| Unreachable::from_string(format!("node {to} has no group {group:#x}")))
    }

    /// The network factory of `node`'s group `group`.
    pub fn factory(&self, node: NodeId, group: u64) -> RouterFactory {
        RouterFactory {
            router: self.clone(),
            node,
            group,
        }
    }
}

/// Makes clients from one node's group to its peers.
#[derive(Debug, Clone)]
pub struct RouterFactory {
    router: Router,
    node: NodeId,
    group: u64,
}

/// A client from one node's group to one peer.
#[derive(Debug, Clone)]
pub struct RouterClient {
    router: Router,
    from: NodeId,
    to: NodeId,
    group: u64,
}

impl RaftNetworkFactory<TypeConfig> for RouterFactory {
    type Network = RouterClient;

    async fn new_client(&mut self, target: NodeId, _node: &NodeAddr) -> RouterClient {
        RouterClient {
            router: self.router.clone(),
            from: self.node,
            to: target,
            group: self.group,
        }
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> Unreachable<TypeConfig> {
    Unreachable::new(&e)
}

impl RaftNetworkV2<TypeConfig> for RouterClient {
    type SnapshotData = PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.target(self.from, self.to, self.group)?;
        r.append_entries(rpc).await.map_err(|e| unreachable(e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.target(self.from, self.to, self.group)?;
        r.vote(rpc).await.map_err(|e| unreachable(e).into())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.target(self.from, self.to, self.group)?;
        r.pre_vote(rpc).await.map_err(|e| unreachable(e).into())
    }

    async fn transfer_leader(
        &mut self,
        rpc: openraft::raft::TransferLeaderRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.target(self.from, self.to, self.group)?;
        r.handle_transfer_leader(rpc)
            .await
            .map_err(|e| unreachable(e).into())
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, PartitionSnapshot>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _o: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let r = self.router.target(self.from, self.to, self.group)?;
        // What a wire transport does: the batches travel with the snapshot.
        let batches = snapshot.snapshot.batches.load().map_err(unreachable)?;
        let snapshot = SnapshotOf::<TypeConfig, PartitionSnapshot> {
            meta: snapshot.meta,
            snapshot: PartitionSnapshot {
                state: snapshot.snapshot.state,
                batches: super::machine::SnapshotBatches::Carried(batches),
            },
        };
        r.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(unreachable(e)))
    }
}
