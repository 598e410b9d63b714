//! The single node's transaction coordinator: every transactional id's requests, decided by
//! [`crate::sm::txn`] and carried out within the writer's group commit.

use tokio::sync::oneshot;
use tracing::warn;

use super::{s_new_producer_id, Reply, Staged};
use crate::errors::Code;
use crate::sm::offsets::{self, OffsetsCommand};

/// What a transaction coordinator is asked (see [`crate::sm::txn`]).
#[derive(Debug)]
pub enum TxnOp {
    /// InitProducerId with a transactional id: `(code, producer id, epoch)`.
    Init {
        /// The transactional id.
        id: String,
        /// Its transaction timeout.
        timeout_ms: i32,
        /// The producer id and epoch the producer already had (KIP-360), if any.
        expected: Option<crate::sm::txn::Caller>,
        /// Result.
        reply: oneshot::Sender<(Code, i64, i16)>,
    },
    /// AddPartitionsToTxn / AddOffsetsToTxn.
    Add {
        /// The transactional id.
        id: String,
        /// Who asks.
        caller: crate::sm::txn::Caller,
        /// Partitions written.
        partitions: Vec<(String, u32)>,
        /// Groups whose offsets the transaction commits.
        groups: Vec<String>,
        /// Now.
        now_ms: i64,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// EndTxn.
    End {
        /// The transactional id.
        id: String,
        /// Who asks.
        caller: crate::sm::txn::Caller,
        /// Commit, or abort.
        commit: bool,
        /// Now (the markers' timestamp).
        now_ms: i64,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// TxnOffsetCommit: offsets pending in a transaction.
    Offsets {
        /// Group.
        group: String,
        /// The transaction's producer id.
        producer_id: i64,
        /// The offsets.
        offsets: Vec<offsets::Commit>,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// Every transactional id's state (durable ones: what the last group commit wrote).
    List {
        /// Result.
        reply: oneshot::Sender<Vec<(String, crate::sm::txn::TxnState)>>,
    },
    /// Abort every transaction open longer than its timeout.
    Expire {
        /// Now.
        now_ms: i64,
    },
}

/// A transaction coordinator request, decided and carried out within one group commit: an
/// EndTxn logs its prepared state, its markers and its groups' offsets, and the completed
/// state in the same durable write.
pub(super) fn txn(s: &mut Staged<'_>, op: TxnOp) {
    use crate::sm::txn::{self as rules, End, Init};
    let state = |s: &Staged<'_>, id: &str| -> Option<rules::TxnState> {
        let log = offsets::partition_for(id);
        match s.ch.offsets.get(&log) {
            Some(o) => o.txns.get(id).cloned(),
            None => s.base.offsets.get(&log).and_then(|o| o.txns.get(id).cloned()),
        }
    };
    let put = |s: &mut Staged<'_>, id: &str, st: rules::TxnState| {
        let cmd = OffsetsCommand::PutTxn {
            id: id.to_string(),
            state: Some(st),
        };
        s.apply_offsets(offsets::partition_for(id), &cmd);
    };
    match op {
        TxnOp::Init {
            id,
            timeout_ms,
            expected,
            reply,
        } => {
            let mut current = state(s, &id);
            // At most two rounds: end what is open, then bump the epoch.
            let mut answer = (Code::KafkaStorageError, -1, -1);
            for _ in 0..2 {
                let decided = rules::init(current.as_ref(), timeout_ms, expected, || {
                    s_new_producer_id(s).ok_or(Code::KafkaStorageError)
                });
                match decided {
                    Err(c) => {
                        answer = (c, -1, -1);
                        break;
                    }
                    Ok(Init::EndFirst(prepared)) => {
                        put(s, &id, prepared.clone());
                        let done = finish(s, &prepared, foundation::time::now_ms());
                        put(s, &id, done.clone());
                        current = Some(done);
                    }
                    Ok(Init::Ready(st)) => {
                        answer = (Code::None, st.producer_id, st.epoch);
                        put(s, &id, st);
                        break;
                    }
                }
            }
            s.ch.replies.push(Reply::Pid(reply, answer));
        }
        TxnOp::Add {
            id,
            caller,
            partitions,
            groups,
            now_ms,
            reply,
        } => {
            let code = match rules::add(state(s, &id).as_ref(), caller, &partitions, &groups, now_ms) {
                Ok(Some(st)) => {
                    put(s, &id, st);
                    Code::None
                }
                Ok(None) => Code::None,
                Err(c) => c,
            };
            s.ch.replies.push(Reply::Code(reply, code));
        }
        TxnOp::End {
            id,
            caller,
            commit,
            now_ms,
            reply,
        } => {
            let code = match rules::end(state(s, &id).as_ref(), caller, commit) {
                Ok(End::Prepare(prepared)) | Ok(End::Resume(prepared)) => {
                    put(s, &id, prepared.clone());
                    let done = finish(s, &prepared, now_ms);
                    put(s, &id, done);
                    Code::None
                }
                Ok(End::Done) => Code::None,
                Err(c) => c,
            };
            s.ch.replies.push(Reply::Code(reply, code));
        }
        TxnOp::Offsets {
            group,
            producer_id,
            offsets,
            reply,
        } => {
            let log = offsets::partition_for(&group);
            s.apply_offsets(
                log,
                &OffsetsCommand::TxnOffsets {
                    group,
                    producer_id,
                    offsets,
                },
            );
            s.ch.replies.push(Reply::Code(reply, Code::None));
        }
        TxnOp::List { reply } => {
            let all = s
                .base
                .offsets
                .values()
                .flat_map(|o| o.txns.iter().map(|(id, st)| (id.clone(), st.clone())))
                .collect();
            let _ = reply.send(all);
        }
        TxnOp::Expire { now_ms } => {
            let mut expired: Vec<(String, rules::TxnState)> = Vec::new();
            for log in 0..offsets::OFFSETS_PARTITIONS {
                let Some(o) = s.ch.offsets.get(&log).or_else(|| s.base.offsets.get(&log)) else {
                    continue;
                };
                expired.extend(
                    o.txns
                        .iter()
                        .filter_map(|(id, st)| rules::expired(st, now_ms).map(|x| (id.clone(), x))),
                );
            }
            for (id, prepared) in expired {
                tracing::info!(transactional_id = %id, "transaction timed out: aborted, its producer fenced");
                put(s, &id, prepared.clone());
                let done = finish(s, &prepared, now_ms);
                put(s, &id, done);
            }
        }
    }
}

/// Writes a prepared transaction's markers and ends its groups' pending offsets; returns the
/// completed state.
fn finish(s: &mut Staged<'_>, prepared: &crate::sm::txn::TxnState, now_ms: i64) -> crate::sm::txn::TxnState {
    let commit = prepared.status == crate::sm::txn::Status::PrepareCommit;
    for (topic, partition) in &prepared.partitions {
        let Some(id) = s.meta().topics.get(topic).map(|t| t.id) else {
            continue; // deleted since: nothing to mark
        };
        let key = (id, *partition);
        let part = s.partition(key).cloned().unwrap_or_default();
        match part.prepare_marker(prepared.producer_id, prepared.epoch, commit, 0, now_ms) {
            Ok(Some(cmd)) => {
                if let Err(e) = s.apply_partition(key, cmd) {
                    warn!(topic, partition, error = %e, "a transaction marker did not apply");
                }
            }
            Ok(None) => {}
            Err(code) => warn!(topic, partition, ?code, "a transaction marker was refused"),
        }
    }
    for group in &prepared.groups {
        s.apply_offsets(
            offsets::partition_for(group),
            &OffsetsCommand::EndTxnOffsets {
                producer_id: prepared.producer_id,
                commit,
            },
        );
    }
    crate::sm::txn::complete(prepared)
}
