//! openraft 0.10.0-alpha.37 with its openraft-memstore.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use mem10::{ClientRequest, MemLogStore, MemStateMachine, TypeConfig};
use or10 as openraft;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::async_runtime::WatchReceiver;
use openraft::{Config, Raft};

type R = Raft<TypeConfig, Arc<MemStateMachine>>;

#[derive(Clone, Default)]
struct Router {
    rafts: Arc<RwLock<HashMap<(u64, usize), R>>>,
}

impl Router {
    fn get(&self, node: u64, group: usize) -> Result<R, Unreachable<TypeConfig>> {
        self.rafts
            .read()
            .unwrap()
            .get(&(node, group))
            .cloned()
            .ok_or_else(|| Unreachable::from_string("no such node"))
    }
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

impl RaftNetworkV2<TypeConfig> for Net {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.get(self.target, self.group)?;
        r.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.get(self.target, self.group)?;
        r.vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.router.get(self.target, self.group)?;
        r.pre_vote(rpc)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Cursor<Vec<u8>>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _o: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let r = self.router.get(self.target, self.group)?;
        r.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

pub struct Cluster10 {
    router: Router,
    groups: usize,
}

pub async fn start(groups: usize, t: crate::Timing) -> anyhow::Result<Cluster10> {
    let config = Arc::new(
        Config {
            heartbeat_interval: t.heartbeat,
            election_timeout_min: t.election.0,
            election_timeout_max: t.election.1,
            enable_pre_vote: Some(true),
            ..Config::default()
        }
        .validate()?,
    );
    let router = Router::default();
    for g in 0..groups {
        for node in 1..=3u64 {
            let (log, sm) = (Arc::new(MemLogStore::new(Default::default())), Arc::new(MemStateMachine::new(Default::default())));
            let factory = Factory {
                router: router.clone(),
                group: g,
            };
            let raft = Raft::new(node, config.clone(), factory, log, sm).await?;
            router.rafts.write().unwrap().insert((node, g), raft);
        }
        let first = router.get((g % 3) as u64 + 1, g)?;
        first
            .initialize(BTreeSet::from([1u64, 2, 3]))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(Cluster10 { router, groups })
}

impl crate::Cluster for Cluster10 {
    fn terms(&self) -> Vec<u64> {
        (0..self.groups)
            .map(|g| {
                (1..=3)
                    .filter_map(|n| self.router.get(n, g).ok())
                    .map(|r| r.metrics().borrow_watched().current_term)
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    fn all_led(&self) -> bool {
        (0..self.groups).all(|g| {
            let leaders: Vec<Option<u64>> = (1..=3)
                .filter_map(|n| self.router.get(n, g).ok())
                .map(|r| r.metrics().borrow_watched().current_leader)
                .collect();
            leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
        })
    }

    fn write(&self, g: usize, serial: u64) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let Some(leader) = self
                .router
                .get(1, g)
                .ok()
                .and_then(|r| r.metrics().borrow_watched().current_leader)
            else {
                return false;
            };
            let Ok(r) = self.router.get(leader, g) else {
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
