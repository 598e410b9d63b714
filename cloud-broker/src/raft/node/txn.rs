//! The transaction coordinator of a cluster node: for the transactional ids whose offsets
//! log this node leads. Decisions follow [`crate::sm::txn`] against the log's applied state
//! (read after `ensure_linearizable`, one decision at a time on this node); each new state is
//! logged before anything else happens. Ending a transaction logs the prepared state, writes a
//! marker to every partition in it (through each partition's leader, whose sequencer gives
//! the marker its offset), ends the pending offsets in every group's log, and logs the
//! completed state. A node that becomes the leader of an offsets log finishes the transactions
//! its predecessor prepared; every second it also aborts those open past their timeout.

use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use tracing::{info, warn};

use super::Node;
use crate::errors::Code;
use crate::raft::net::MarkerRpc;
use crate::raft::{Command, GroupId, NodeId};
use crate::sm::offsets::{self, Commit, OffsetsCommand, OFFSETS_PARTITIONS};
use crate::sm::txn::{self as rules, Caller, End, Init, Status, TxnState};

/// How long a marker or an offsets end may take to be written before the request fails (the
/// prepared state stays logged: the next request, or the coordinator's sweep, finishes it).
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

impl Node {
    /// The applied state of transactional id `id`, read on the leader of its offsets log
    /// (`NOT_COORDINATOR` elsewhere).
    async fn txn_read(&self, id: &str) -> Result<Option<TxnState>, Code> {
        let n = offsets::partition_for(id);
        let raft = self
            .offsets_rafts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .cloned()
            .ok_or(Code::NotCoordinator)?;
        if !self.leads(&raft) {
            return Err(Code::NotCoordinator);
        }
        raft.ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|_| Code::NotCoordinator)?;
        let machine = self
            .offsets_machines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .cloned()
            .ok_or(Code::NotCoordinator)?;
        Ok(machine.offsets_read(|o| o.txns.get(id).cloned()).await)
    }

    /// Logs `state` as transactional id `id`'s.
    async fn txn_put(&self, id: &str, state: TxnState) -> Result<(), Code> {
        let cmd = Command::Offsets(OffsetsCommand::PutTxn {
            id: id.to_string(),
            state: Some(state),
        });
        let log = GroupId::Offsets(offsets::partition_for(id));
        self.propose(log, cmd, Duration::from_secs(10))
            .await
            .map(drop)
            .map_err(|e| {
                warn!(transactional_id = id, error = %e, "logging a transaction state failed");
                Code::NotCoordinator
            })
    }

    /// InitProducerId with a transactional id: `(producer id, epoch)`.
    pub async fn txn_init(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<Caller>,
    ) -> Result<(i64, i16), Code> {
        let _one = self.txn_lock.lock().await;
        for _ in 0..2 {
            let state = self.txn_read(id).await?;
            let needs_id = state.as_ref().is_none_or(|s| s.epoch >= i16::MAX - 1);
            let fresh = if needs_id {
                Some(self.producer_id().await?)
            } else {
                None
            };
            match rules::init(state.as_ref(), timeout_ms, expected, || {
                fresh.ok_or(Code::KafkaStorageError)
            })? {
                Init::Ready(s) => {
                    let answer = (s.producer_id, s.epoch);
                    self.txn_put(id, s).await?;
                    return Ok(answer);
                }
                Init::EndFirst(prepared) => {
                    if prepared.status != state.as_ref().map_or(Status::Empty, |s| s.status) {
                        self.txn_put(id, prepared.clone()).await?;
                    }
                    self.txn_finish(id, &prepared).await?;
                }
            }
        }
        Err(Code::ConcurrentTransactions)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn.
    pub async fn txn_add(
        &self,
        id: &str,
        caller: Caller,
        partitions: Vec<(String, u32)>,
        groups: Vec<String>,
        now_ms: i64,
    ) -> Code {
        let _one = self.txn_lock.lock().await;
        let state = match self.txn_read(id).await {
            Ok(s) => s,
            Err(c) => return c,
        };
        match rules::add(state.as_ref(), caller, &partitions, &groups, now_ms) {
            Ok(Some(next)) => self.txn_put(id, next).await.err().unwrap_or(Code::None),
            Ok(None) => Code::None,
            Err(c) => c,
        }
    }

    /// EndTxn.
    pub async fn txn_end(&self, id: &str, caller: Caller, commit: bool, now_ms: i64) -> Code {
        let _ = now_ms;
        let _one = self.txn_lock.lock().await;
        let state = match self.txn_read(id).await {
            Ok(s) => s,
            Err(c) => return c,
        };
        let prepared = match rules::end(state.as_ref(), caller, commit) {
            Ok(End::Prepare(p)) => {
                if let Err(c) = self.txn_put(id, p.clone()).await {
                    return c;
                }
                p
            }
            Ok(End::Resume(p)) => p,
            Ok(End::Done) => return Code::None,
            Err(c) => return c,
        };
        self.txn_finish(id, &prepared).await.err().unwrap_or(Code::None)
    }

    /// TxnOffsetCommit: offsets pending in producer `producer_id`'s transaction, in the
    /// group's log.
    pub async fn txn_offsets(&self, group: &str, producer_id: i64, offsets: Vec<Commit>) -> Code {
        let cmd = Command::Offsets(OffsetsCommand::TxnOffsets {
            group: group.to_string(),
            producer_id,
            offsets,
        });
        let log = GroupId::Offsets(offsets::partition_for(group));
        match self.propose(log, cmd, Duration::from_secs(10)).await {
            Ok(_) => Code::None,
            Err(_) => Code::NotCoordinator,
        }
    }

    /// Writes a prepared transaction's markers and ends its groups' offsets, then logs it
    /// completed.
    async fn txn_finish(&self, id: &str, prepared: &TxnState) -> Result<(), Code> {
        let commit = prepared.status == Status::PrepareCommit;
        let now_ms = foundation::time::now_ms();
        let meta = self.metadata();
        for (topic, partition) in &prepared.partitions {
            let Some(t) = meta.topics.get(topic) else {
                continue; // deleted since: nothing to mark
            };
            let replicas = t.replicas.get(*partition as usize).cloned().unwrap_or_default();
            let m = MarkerRpc {
                producer_id: prepared.producer_id,
                epoch: prepared.epoch,
                commit,
                timestamp: now_ms,
            };
            self.write_marker(t.id, *partition, &replicas, m)
                .await
                .inspect_err(|c| {
                    warn!(
                        transactional_id = id,
                        topic,
                        partition,
                        ?c,
                        "a transaction marker was not written"
                    )
                })?;
        }
        for group in &prepared.groups {
            let cmd = Command::Offsets(OffsetsCommand::EndTxnOffsets {
                producer_id: prepared.producer_id,
                commit,
            });
            let log = GroupId::Offsets(offsets::partition_for(group));
            self.propose(log, cmd, WRITE_DEADLINE).await.map_err(|e| {
                warn!(transactional_id = id, group, error = %e, "ending a transaction's offsets failed");
                Code::CoordinatorNotAvailable
            })?;
        }
        self.txn_put(id, rules::complete(prepared)).await
    }

    /// Writes marker `m` to a partition through its leader: this node's sequencer when it
    /// leads, else each replica's in turn until the leader answers.
    async fn write_marker(
        &self,
        topic: u32,
        partition: u32,
        replicas: &[NodeId],
        m: MarkerRpc,
    ) -> Result<(), Code> {
        let key = GroupId::Partition { topic, partition }.key();
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut last = Code::NotLeaderOrFollower;
        while Instant::now() < deadline {
            // The leader this node knows first, then every replica.
            let mut order: Vec<NodeId> = self
                .partition(topic, partition)
                .and_then(|h| self.partition_leader(&h.raft))
                .into_iter()
                .collect();
            for r in replicas {
                if !order.contains(r) {
                    order.push(*r);
                }
            }
            for node in order {
                let code = if node == self.cfg.id {
                    match self.partition(topic, partition) {
                        Some(h) => h.sequencer.marker(m).await,
                        None => continue,
                    }
                } else {
                    let addr = self.members([node]).into_iter().next().map(|(_, a)| a.raft);
                    let Some(addr) = addr.filter(|a| !a.is_empty()) else {
                        continue;
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .net
                        .marker(node, &addr, key, &m, left.min(Duration::from_secs(10)))
                        .await
                    {
                        Ok(c) => c,
                        Err(_) => continue,
                    }
                };
                match code {
                    Code::None => return Ok(()),
                    Code::NotLeaderOrFollower | Code::RequestTimedOut => last = code,
                    other => return Err(other),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// Every transactional id this node coordinates (those of the offsets logs it leads),
    /// with its state.
    pub async fn txn_list(&self) -> Vec<(String, TxnState)> {
        let mut out = Vec::new();
        for n in 0..OFFSETS_PARTITIONS {
            let leads = self
                .offsets_rafts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&n)
                .is_some_and(|r| self.leads(r));
            let machine = self
                .offsets_machines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&n)
                .cloned();
            if let (true, Some(m)) = (leads, machine) {
                out.extend(
                    m.offsets_read(|o| {
                        o.txns
                            .iter()
                            .map(|(id, s)| (id.clone(), s.clone()))
                            .collect::<Vec<_>>()
                    })
                    .await,
                );
            }
        }
        out
    }

    /// One sweep over the offsets logs this node leads: transactions a predecessor prepared
    /// are finished, and those open past their timeout aborted (their producer fenced).
    pub async fn txn_sweep(&self, now_ms: i64) {
        let logs: Vec<u32> = (0..OFFSETS_PARTITIONS)
            .filter(|n| {
                self.offsets_rafts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(n)
                    .is_some_and(|r| self.leads(r))
            })
            .collect();
        for n in logs {
            let Some(machine) = self
                .offsets_machines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&n)
                .cloned()
            else {
                continue;
            };
            let due: Vec<(String, TxnState)> = machine
                .offsets_read(|o| {
                    o.txns
                        .iter()
                        .filter(|(_, s)| s.status.preparing() || rules::expired(s, now_ms).is_some())
                        .map(|(id, s)| (id.clone(), s.clone()))
                        .collect()
                })
                .await;
            for (id, _) in due {
                let _one = self.txn_lock.lock().await;
                // Decided again on the state read now (another request may have moved it).
                let Ok(Some(s)) = self.txn_read(&id).await else {
                    continue;
                };
                let prepared = if s.status.preparing() {
                    s
                } else if let Some(x) = rules::expired(&s, now_ms) {
                    info!(transactional_id = %id, "transaction timed out: aborted, its producer fenced");
                    if self.txn_put(&id, x.clone()).await.is_err() {
                        continue;
                    }
                    x
                } else {
                    continue;
                };
                if let Err(c) = self.txn_finish(&id, &prepared).await {
                    warn!(transactional_id = %id, ?c, "finishing a transaction failed; retried at the next sweep");
                }
            }
        }
    }
}
