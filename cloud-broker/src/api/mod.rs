//! One handler per Kafka API. [`handle`] dispatches a decoded request.

pub mod admin;
pub mod authz;
pub mod backend;
pub mod configs;
pub mod data;
pub mod groups;
pub mod peers;
pub mod stats;
pub mod txn;

use std::sync::Arc;

use kafka_protocol::messages::{
    HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, RequestKind, ResponseKind, SyncGroupResponse,
};

use crate::config::Config;
use crate::errors::Code;
use crate::protocol::Request;
use crate::state::Catalog;
use crate::storage::{OffsetTable, Storage};
use backend::Backend;

/// Everything a handler needs.
#[derive(Debug)]
pub struct Broker {
    /// Settings.
    pub cfg: Config,
    /// The engine: one node's writer, or a cluster node.
    pub backend: Backend,
    /// Topics and watermarks.
    pub catalog: Catalog,
    /// Committed group offsets (kept current by the writer).
    pub offsets: OffsetTable,
    /// Group offsets pending in transactions.
    pub pending: crate::storage::PendingTable,
    /// Consumer groups.
    pub groups: groups::Coordinator,
    /// Cluster id given in Metadata.
    pub cluster_id: String,
    /// The first damaged stored data a read ran into (see [`Broker::read`]).
    pub damage: std::sync::Mutex<Option<String>>,
    /// Request figures for `/metrics`.
    pub stats: Arc<stats::Stats>,
    /// Logins and rights.
    pub guard: crate::security::Guard,
}

impl Broker {
    /// Starts the writer over `storage` and builds the broker.
    pub fn start(cfg: Config, storage: Arc<dyn Storage>) -> anyhow::Result<Arc<Self>> {
        let cluster_id = cluster_id(&*storage)?;
        let guard = crate::security::Guard::from_config(cfg.security.as_ref(), &cfg.data_dir)?;
        let (writer, catalog, offsets, pending) = crate::state::start(storage.clone())?;
        Ok(Arc::new(Broker {
            guard,
            cfg,
            backend: Backend::Single { writer, storage },
            catalog,
            offsets,
            pending,
            groups: groups::Coordinator::default(),
            damage: std::sync::Mutex::new(None),
            stats: Arc::default(),
            cluster_id,
        }))
    }
}

impl Broker {
    /// The broker of a cluster node; the cluster id is the cluster's name.
    pub fn start_cluster(
        cfg: Config,
        node: Arc<crate::raft::node::Node>,
        cluster_id: String,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Broker {
            guard: crate::security::Guard::from_config(cfg.security.as_ref(), &cfg.data_dir)?,
            cfg,
            catalog: node.catalog.clone(),
            offsets: node.offsets.clone(),
            pending: node.pending.clone(),
            backend: Backend::Cluster(node),
            groups: groups::Coordinator::default(),
            damage: std::sync::Mutex::new(None),
            stats: Arc::default(),
            cluster_id,
        }))
    }

    /// The single writer, on one node.
    pub fn writer(&self) -> Option<&crate::state::Writer> {
        match &self.backend {
            Backend::Single { writer, .. } => Some(writer),
            Backend::Cluster(_) => None,
        }
    }
}

/// The cluster id, made on first start and kept in storage: clients (librdkafka) take a new
/// cluster id after a restart for a different cluster. Called before the writer starts, so the
/// write does not race it.
fn cluster_id(storage: &dyn Storage) -> Result<String, crate::storage::StoreError> {
    const KEY: &str = "cluster_id";
    if let Some(id) = storage.load()?.meta.get(KEY) {
        return Ok(String::from_utf8_lossy(id).into_owned());
    }
    let id = format!("appliance-{:016x}", foundation::ids::random_u64());
    let w = crate::storage::WriteSet {
        meta: vec![(KEY.into(), id.clone().into_bytes())],
        ..Default::default()
    };
    storage.apply(&w)?;
    Ok(id)
}

/// A request on its way: produce requests are handed to the writer at once, in the order they
/// arrived on their connection; everything else is served by [`Started::finish`].
#[derive(Debug)]
pub enum Started {
    /// A produce already submitted to the writer.
    Produce(data::PendingProduce, authz::Patch, Arc<str>),
    /// Any other request.
    Other(Box<Request>, authz::Patch),
    /// Refused whole for want of rights: this is the answer.
    Refused(Box<ResponseKind>),
}

/// Starts serving a request, after checking it against its principal's rights. Call in
/// request order per connection.
pub fn start(b: &Broker, req: Request) -> Started {
    let (req, patch) = match authz::check(b, Box::new(req)) {
        authz::Verdict::Refused(resp) => return Started::Refused(resp),
        authz::Verdict::Serve(req, patch) => (req, patch),
    };
    let req = *req;
    match req.body {
        RequestKind::Produce(r) => Started::Produce(data::produce_submit(b, r), patch, req.principal),
        body => Started::Other(Box::new(Request { body, ..req }), patch),
    }
}

impl Started {
    /// Finishes serving. `Ok(None)`: no response (produce with acks=0).
    pub async fn finish(self, b: &Arc<Broker>) -> anyhow::Result<Option<ResponseKind>> {
        match self {
            Started::Produce(p, patch, who) => {
                let mut resp = data::produce_finish(p).await.map(ResponseKind::Produce);
                if let Some(r) = &mut resp {
                    patch.apply(b, &who, r);
                }
                Ok(resp)
            }
            Started::Other(req, patch) => {
                let who = req.principal.clone();
                let mut resp = handle(b, *req).await?;
                if let Some(r) = &mut resp {
                    patch.apply(b, &who, r);
                }
                Ok(resp)
            }
            Started::Refused(resp) => Ok(Some(*resp)),
        }
    }
}

/// Serves one request. `Ok(None)`: no response (produce with acks=0).
pub async fn handle(b: &Arc<Broker>, req: Request) -> anyhow::Result<Option<ResponseKind>> {
    tracing::trace!(api = ?req.header.request_api_key, version = req.header.request_api_version, "request");
    let v = req.version;
    let client = groups::Client {
        id: req.header.client_id.as_deref().unwrap_or_default().to_string(),
        host: req.peer.map(|ip| format!("/{ip}")).unwrap_or_default(),
    };
    Ok(Some(match req.body {
        RequestKind::ApiVersions(_) => {
            ResponseKind::ApiVersions(crate::protocol::api_versions(crate::errors::Code::None))
        }
        RequestKind::Metadata(r) => ResponseKind::Metadata(admin::metadata(b, r, v, &req.listener).await),
        RequestKind::Produce(r) => match data::produce_finish(data::produce_submit(b, r)).await {
            Some(resp) => ResponseKind::Produce(resp),
            None => return Ok(None),
        },
        RequestKind::Fetch(r) => ResponseKind::Fetch(data::fetch(b, r, v).await?),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(data::list_offsets(b, r, v).await?),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(admin::create_topics(b, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(admin::delete_topics(b, r).await),
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(admin::init_producer_id(b, r, v).await)
        }
        RequestKind::AddPartitionsToTxn(r) => {
            ResponseKind::AddPartitionsToTxn(txn::add_partitions(b, r, v).await)
        }
        RequestKind::AddOffsetsToTxn(r) => ResponseKind::AddOffsetsToTxn(txn::add_offsets(b, r, v).await),
        RequestKind::EndTxn(r) => ResponseKind::EndTxn(txn::end(b, r, v).await),
        RequestKind::TxnOffsetCommit(r) => ResponseKind::TxnOffsetCommit(txn::offset_commit(b, r, v).await),
        RequestKind::ListTransactions(r) => ResponseKind::ListTransactions(txn::list(b, r).await),
        RequestKind::DescribeTransactions(r) => ResponseKind::DescribeTransactions(txn::describe(b, r).await),
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(configs::describe(b, r, v)),
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(configs::alter(b, r).await),
        RequestKind::IncrementalAlterConfigs(r) => {
            ResponseKind::IncrementalAlterConfigs(configs::alter_incremental(b, r).await)
        }
        RequestKind::CreatePartitions(r) => {
            ResponseKind::CreatePartitions(admin::create_partitions(b, r).await)
        }
        RequestKind::DeleteRecords(r) => ResponseKind::DeleteRecords(data::delete_records(b, r).await),
        RequestKind::DescribeLogDirs(r) => ResponseKind::DescribeLogDirs(admin::describe_log_dirs(b, r, v)),
        RequestKind::OffsetDelete(r) => ResponseKind::OffsetDelete(groups::offset_delete(b, r).await),
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(b, r, v, &req.listener))
        }
        // On a cluster a group is served by the node leading its offsets log; clients that ask
        // another are sent back to FindCoordinator.
        RequestKind::JoinGroup(r) if !b.coordinates(r.group_id.as_str()) => ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(Code::NotCoordinator.code())
                .with_generation_id(-1)
                .with_protocol_name(Some(Default::default())),
        ),
        RequestKind::SyncGroup(r) if !b.coordinates(r.group_id.as_str()) => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(Code::NotCoordinator.code()))
        }
        RequestKind::Heartbeat(r) if !b.coordinates(r.group_id.as_str()) => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(Code::NotCoordinator.code()))
        }
        RequestKind::LeaveGroup(r) if !b.coordinates(r.group_id.as_str()) => ResponseKind::LeaveGroup(
            LeaveGroupResponse::default().with_error_code(Code::NotCoordinator.code()),
        ),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(groups::join(b, r, v, &client).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync(b, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(b, r)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups::leave(b, r, v)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(groups::offset_commit(b, r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(groups::offset_fetch(b, r, v)),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups::list_groups(b, r, v)),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(groups::describe_groups(b, r, v)),
        RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(groups::delete_groups(b, r).await),
        other => anyhow::bail!("no handler for {other:?}"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemStorage;

    /// Regression: the cluster id was new on every start, and librdkafka warned after each
    /// restart that the broker "reports different ClusterId ... than previously known".
    #[test]
    fn the_cluster_id_survives_a_restart() {
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
        let first = cluster_id(&*storage).unwrap();
        assert!(first.starts_with("appliance-"), "{first}");
        assert_eq!(cluster_id(&*storage).unwrap(), first);
        assert_ne!(cluster_id(&MemStorage::new()).unwrap(), first);
    }
}
