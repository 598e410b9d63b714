//! Retention on the partitions a node hosts: the leader proposes the cut, every replica
//! snapshots and purges its own Raft log below it.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tracing::{debug, warn};

use super::{Hosted, Node};
use crate::raft::GroupId;

impl Node {
    /// One retention pass at `now_ms` over every partition this node hosts (see the module docs).
    pub async fn maintain(&self, now_ms: i64) {
        let meta = self.metadata();
        let hosted: Vec<(u64, Hosted)> = self
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, h)| (*k, h.clone()))
            .collect();
        for (key, h) in hosted {
            let Some(GroupId::Partition { topic, .. }) = GroupId::from_key(key) else {
                continue;
            };
            let Some(config) = meta
                .topics
                .values()
                .find(|t| t.id == topic)
                .map(|t| t.config.clone())
            else {
                continue;
            };
            if self.leads(&h.raft) {
                let store = self.store.clone();
                let code = h
                    .sequencer
                    .maintain(move |tip| {
                        let raw = match store.batches(
                            key,
                            tip.head.log_start,
                            tip.head.next_offset,
                            usize::MAX,
                        ) {
                            Ok(raw) => raw,
                            Err(e) => {
                                warn!(group = key, error = %e, "reading batch headers for retention failed");
                                return None;
                            }
                        };
                        let headers = crate::batch::iter(&raw).map(|(h, _)| Ok::<_, ()>(h));
                        tip.retention(&config, now_ms, headers).ok().flatten()
                    })
                    .await;
                if code != crate::errors::Code::None {
                    debug!(group = key, ?code, "no retention cut this pass");
                }
            }
            if let Err(e) = self.purge(key, &h).await {
                warn!(group = key, error = %e, "purging a partition's log failed");
            }
        }
    }

    /// Snapshots and purges a partition's log up to the last entry wholly below its applied
    /// log start, when that moved past the last purge.
    async fn purge(&self, key: u64, h: &Hosted) -> Result<(), String> {
        let log_start = h.view.log_start.load(std::sync::atomic::Ordering::SeqCst);
        let Some(upto) = self
            .store
            .purge_point(key, log_start)
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        let m = h.raft.metrics().borrow_watched().clone();
        if m.purged.is_some_and(|p| p.index >= upto) || m.last_applied.is_none_or(|a| a.index < upto) {
            return Ok(());
        }
        if m.snapshot.is_none_or(|s| s.index < upto) {
            h.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
            h.raft
                .wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.snapshot.is_some_and(|s| s.index >= upto), "the snapshot")
                .await
                .map_err(|e| e.to_string())?;
        }
        h.raft.trigger().purge_log(upto).await.map_err(|e| e.to_string())
    }
}
