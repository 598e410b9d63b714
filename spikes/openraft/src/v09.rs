//! openraft 0.9.25 with its openraft-memstore (a legacy `RaftStorage`, split by `Adaptor`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use mem09::{ClientRequest, MemNodeId, MemStore, TypeConfig};
use or09 as openraft;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::Adaptor;
use openraft::{Config, Raft};

type R = Raft<TypeConfig>;
type Err<E = openraft::error::Infallible> = RPCError<MemNodeId, (), RaftError<MemNodeId, E>>;

#[derive(Clone, Default)]
struct Router {
    rafts: Arc<RwLock<HashMap<(u64, usize), R>>>,
}

impl Router {
    fn get(&self, node: u64, group: usize) -> Option<R> {
        self.rafts.read().unwrap().get(&(node, group)).cloned()
    }
}

fn gone<E: std::error::Error>() -> RPCError<MemNodeId, (), E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other("no such node")))
}

struct Factory {
    router: Router,
    group: usize,
}

struct Net {
    router: Router,
    target: u64,
    group: usize,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Net;
    async fn new_client(&mut self, target: u64, _node: &()) -> Net {
        Net {
            router: self.router.clone(),
            target,
            group: self.group,
        }
    }
}

impl RaftNetwork<TypeConfig> for Net {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<MemNodeId>, Err> {
        let r = self.router.get(self.target, self.group).ok_or_else(gone)?;
        r.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<InstallSnapshotResponse<MemNodeId>, Err<InstallSnapshotError>> {
        let r = self.router.get(self.target, self.group).ok_or_else(gone)?;
        r.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<MemNodeId>, _o: RPCOption) -> Result<VoteResponse<MemNodeId>, Err> {
        let r = self.router.get(self.target, self.group).ok_or_else(gone)?;
        r.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

pub struct Cluster09 {
    router: Router,
    groups: usize,
}

pub async fn start(groups: usize, t: crate::Timing) -> anyhow::Result<Cluster09> {
    let config = Arc::new(
        Config {
            heartbeat_interval: t.heartbeat,
            election_timeout_min: t.election.0,
            election_timeout_max: t.election.1,
            ..Config::default()
        }
        .validate()?,
    );
    let router = Router::default();
    for g in 0..groups {
        for node in 1..=3u64 {
            let (log, sm) = Adaptor::new(Arc::new(MemStore::new()));
            let factory = Factory {
                router: router.clone(),
                group: g,
            };
            let raft = Raft::new(node, config.clone(), factory, log, sm).await?;
            router.rafts.write().unwrap().insert((node, g), raft);
        }
        let first = router.get((g % 3) as u64 + 1, g).unwrap();
        first
            .initialize(BTreeSet::from([1u64, 2, 3]))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(Cluster09 { router, groups })
}

impl crate::Cluster for Cluster09 {
    fn terms(&self) -> Vec<u64> {
        (0..self.groups)
            .map(|g| {
                (1..=3)
                    .filter_map(|n| self.router.get(n, g))
                    .map(|r| r.metrics().borrow().current_term)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn all_led(&self) -> bool {
        (0..self.groups).all(|g| {
            let leaders: Vec<Option<u64>> = (1..=3)
                .filter_map(|n| self.router.get(n, g))
                .map(|r| r.metrics().borrow().current_leader)
                .collect();
            leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
        })
    }

    fn write(&self, g: usize, serial: u64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let Some(leader) = self.router.get(1, g).and_then(|r| r.metrics().borrow().current_leader) else {
                return false;
            };
            let Some(r) = self.router.get(leader, g) else {
                return false;
            };
            let req = ClientRequest {
                client: format!("w{}", serial >> 40),
                serial,
                status: "x".repeat(100),
            };
            r.client_write(req).await.is_ok()
        })
    }
}
