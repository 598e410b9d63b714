//! The leader's side of a partition: produce requests in, one `Append` entry per Raft round
//! trip out.
//!
//! One task per partition group takes the requests in arrival order, decides each against the
//! leader's *tip* (the applied partition plus what this task proposed since), and proposes all
//! that waited during the previous round trip as one entry (group commit per partition). It
//! answers once the entry is committed and applied, with the offsets the tip gave.
//!
//! # Leader changes
//! The tip is valid only while this node leads the term it was taken in. On becoming leader
//! (and after any failed proposal) the task first waits until everything committed before its
//! term is applied (`ensure_linearizable`), then takes the applied partition as the tip. A node
//! that does not lead answers `NOT_LEADER_OR_FOLLOWER`; clients refresh metadata and retry.
//! A proposal whose fate is unknown (the leader lost its term before the entry committed) is
//! answered `NOT_LEADER_OR_FOLLOWER` too, and one that waits longer than `PROPOSAL_TIMEOUT`
//! (a leader cut off from its followers) `REQUEST_TIMED_OUT`: an idempotent producer's retry is
//! then recognised as a duplicate if the entry did commit, as in Kafka. A timed-out entry stays
//! in the tip, since it may still commit in this term; only a new term retakes the tip.
//!
//! Every answer follows from committed state: a duplicate is answered with its original offset
//! only after that original is committed (the task has at most one proposal in flight, so what
//! the tip holds is committed by the time the next requests are decided).

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::machine::GroupMachine;
use super::{Command, GroupRaft, NodeId};
use crate::errors::Code;
use crate::sm::partition::{Partition, PartitionCommand};
use crate::state::ProduceResult;

/// Most record bytes proposed in one entry.
const MAX_ENTRY_BYTES: usize = 16 << 20;
/// How long a proposal may wait for its commit before its producers are answered
/// `REQUEST_TIMED_OUT` (a leader cut off from its followers commits nothing).
const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides a maintenance command from the tip.
type Decide = Box<dyn FnOnce(&Partition) -> Option<PartitionCommand> + Send>;

/// What the sequencer is asked.
enum Job {
    Produce {
        records: Vec<u8>,
        /// `None`: acks=0, nobody waits.
        reply: Option<oneshot::Sender<ProduceResult>>,
    },
    /// A maintenance command (retention, compaction) decided from the tip by `decide`.
    Maintain {
        decide: Decide,
        reply: oneshot::Sender<Code>,
    },
}

/// Handle to a partition's sequencer task.
///
/// The queue is unbounded: what bounds it is the Kafka connections feeding it, each with at
/// most `[limits] max_in_flight` requests outstanding.
#[derive(Debug, Clone)]
pub struct Sequencer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Sequencer {
    /// Starts the task of one partition group on node `me`.
    /// It proposes only while this node leads with a quorum's backing within `lease` (see
    /// [`super::leading_term`]).
    pub fn start(me: NodeId, raft: GroupRaft, machine: GroupMachine, lease: Duration) -> Sequencer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(me, raft, machine, lease, rx));
        Sequencer { tx }
    }

    /// Appends a record set; answers once it is committed (or why not).
    pub async fn produce(&self, records: Vec<u8>) -> ProduceResult {
        let (reply, rx) = oneshot::channel();
        self.submit(records, Some(reply));
        rx.await
            .unwrap_or(ProduceResult::failed(Code::NotLeaderOrFollower))
    }

    /// Queues a record set at once (requests are decided in the order they are queued); the
    /// result goes to `reply`.
    pub fn submit(&self, records: Vec<u8>, reply: Option<oneshot::Sender<ProduceResult>>) {
        if let Err(mpsc::error::SendError(Job::Produce { reply: Some(r), .. })) =
            self.tx.send(Job::Produce { records, reply })
        {
            let _ = r.send(ProduceResult::failed(Code::NotLeaderOrFollower));
        }
    }

    /// Proposes what `decide` makes of the tip (nothing when it gives `None`).
    pub async fn maintain(
        &self,
        decide: impl FnOnce(&Partition) -> Option<PartitionCommand> + Send + 'static,
    ) -> Code {
        let (reply, rx) = oneshot::channel();
        let job = Job::Maintain {
            decide: Box::new(decide),
            reply,
        };
        if self.tx.send(job).is_err() {
            return Code::NotLeaderOrFollower;
        }
        rx.await.unwrap_or(Code::NotLeaderOrFollower)
    }
}

impl Sequencer {
    /// Writes a transaction marker (see
    /// [`crate::sm::partition::Partition::prepare_marker`]): the code is
    /// `NOT_LEADER_OR_FOLLOWER` on a node that does not lead, or why the marker was refused.
    pub async fn marker(&self, m: crate::raft::net::MarkerRpc) -> Code {
        let refused = Arc::new(std::sync::Mutex::new(Code::None));
        let r = refused.clone();
        let code = self
            .maintain(
                move |tip| match tip.prepare_marker(m.producer_id, m.epoch, m.commit, 0, m.timestamp) {
                    Ok(cmd) => cmd,
                    Err(c) => {
                        *r.lock().unwrap_or_else(|e| e.into_inner()) = c;
                        None
                    }
                },
            )
            .await;
        let refused = *refused.lock().unwrap_or_else(|e| e.into_inner());
        if code == Code::None {
            refused
        } else {
            code
        }
    }
}

/// The tip and the term it belongs to.
struct Tip {
    term: u64,
    partition: Partition,
}

async fn run(
    me: NodeId,
    raft: GroupRaft,
    machine: GroupMachine,
    lease: Duration,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let mut tip: Option<Tip> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut bytes = 0;
        while bytes < MAX_ENTRY_BYTES {
            match rx.try_recv() {
                Ok(j) => {
                    if let Job::Produce { records, .. } = &j {
                        bytes += records.len();
                    }
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        // Without the quorum's backing (or not leading at all) nothing is proposed. The tip
        // stays: in the same term it still describes this node's log (entries a leader logged
        // in its term are never taken back while that term lasts), and a new term retakes it.
        let Some(term) = super::leading_term(me, &raft.metrics().borrow_watched(), lease) else {
            refuse(jobs, Code::NotLeaderOrFollower);
            continue;
        };
        if tip.as_ref().is_none_or(|t| t.term != term) {
            if let Err(e) = raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                debug!(error = %e, "not ready to lead");
                refuse(jobs, Code::NotLeaderOrFollower);
                continue;
            }
            // The tip is taken from the applied state only once everything in this node's log
            // is applied: an entry it logged earlier in this term and whose proposer stopped
            // waiting is still to come, and a tip without it would hand out its offsets again.
            if !applied_all(me, &raft, lease).await {
                refuse(jobs, Code::NotLeaderOrFollower);
                continue;
            }
            tip = Some(Tip {
                term,
                partition: machine.partition().await,
            });
        }
        let Some(t) = tip.as_mut() else {
            continue;
        };
        let round = decide(&mut t.partition, jobs);
        if round.commands.is_empty() {
            // Only duplicates (and refusals): a duplicate's first copy may still be waiting
            // for its commit (its producer gave up waiting and retried), and a duplicate is
            // acknowledged only once its first copy is committed, as Kafka does.
            if applied_all(me, &raft, lease).await {
                round.answer(&t.partition, Ok(()));
            } else {
                round.answer(&t.partition, Err(Code::NotLeaderOrFollower));
            }
            continue;
        }
        let mut outcome = Outcome::Committed;
        for cmd in &round.commands {
            // The write runs to its end even when nobody waits for it any more: once handed
            // to openraft it may be logged, and the tip counts on knowing it was.
            let mut write = tokio::spawn({
                let (raft, cmd) = (raft.clone(), Command::Partition(cmd.clone()));
                async move {
                    raft.client_write(cmd)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            });
            let lapsed = lease_lapsed(me, &raft, lease);
            tokio::select! {
                r = tokio::time::timeout(PROPOSAL_TIMEOUT, &mut write) => match r {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        debug!(error = %e, "proposal failed; answering NOT_LEADER_OR_FOLLOWER");
                        outcome = Outcome::Refused;
                        break;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "a proposal's task ended without an answer");
                        outcome = Outcome::Pending(Code::NotLeaderOrFollower);
                        break;
                    }
                    Err(_) => {
                        outcome = Outcome::Pending(Code::RequestTimedOut);
                        break;
                    }
                },
                () = lapsed => {
                    debug!("the quorum stopped answering; answering NOT_LEADER_OR_FOLLOWER");
                    outcome = Outcome::Pending(Code::NotLeaderOrFollower);
                    break;
                }
            }
        }
        match outcome {
            Outcome::Committed => round.answer(&t.partition, Ok(())),
            // The entry was refused before it was logged, or this node stopped leading: the
            // tip is retaken from the applied state of the next term.
            Outcome::Refused => {
                tip = None;
                round.answer(&Partition::default(), Err(Code::NotLeaderOrFollower));
            }
            // Still logged in this term and may yet commit: the tip keeps it, so that nothing
            // proposed after it can take its offsets. A retry is then a duplicate or next.
            Outcome::Pending(code) => round.answer(&t.partition, Err(code)),
        }
    }
}

/// How a round's proposals ended.
enum Outcome {
    /// All committed.
    Committed,
    /// One was refused before it was logged (this node no longer leads).
    Refused,
    /// One is logged in this term and may yet commit, but its producers are answered `code`
    /// now: the quorum stopped answering (a cut-off leader need not keep clients waiting for
    /// a commit the majority's new leader has made impossible), or the wait timed out.
    Pending(Code),
}

/// Waits until everything in this node's log is applied; false if this node stops leading
/// with a quorum's backing first, or [`PROPOSAL_TIMEOUT`] passes.
async fn applied_all(me: NodeId, raft: &GroupRaft, lease: Duration) -> bool {
    let last = raft.metrics().borrow_watched().last_log_index;
    let wait = raft.wait(Some(PROPOSAL_TIMEOUT));
    let applied = wait.applied_index_at_least(last, "the log applied");
    tokio::select! {
        r = applied => r.is_ok(),
        () = lease_lapsed(me, raft, lease) => false,
    }
}

/// Completes once node `me` no longer leads `raft`'s group with a quorum's backing
/// (checked every 100 ms).
async fn lease_lapsed(me: NodeId, raft: &GroupRaft, lease: Duration) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        if super::leading_term(me, &raft.metrics().borrow_watched(), lease).is_none() {
            return;
        }
    }
}

fn refuse(jobs: Vec<Job>, code: Code) {
    for j in jobs {
        match j {
            Job::Produce { reply, .. } => {
                if let Some(r) = reply {
                    let _ = r.send(ProduceResult::failed(code));
                }
            }
            Job::Maintain { reply, .. } => {
                let _ = reply.send(code);
            }
        }
    }
}

/// One round: the commands to propose, in order, and whom to answer what.
struct Round {
    commands: Vec<PartitionCommand>,
    answers: Vec<Answer>,
}

enum Answer {
    Produce(Option<oneshot::Sender<ProduceResult>>, Result<i64, Code>),
    Maintain(oneshot::Sender<Code>, Code),
}

impl Round {
    /// Answers everyone: what the round decided if its commands committed, otherwise the
    /// error for whatever depended on them.
    fn answer(self, tip: &Partition, committed: Result<(), Code>) {
        for a in self.answers {
            match a {
                Answer::Produce(None, _) => {}
                Answer::Produce(Some(tx), Ok(base)) => {
                    let _ = tx.send(match committed {
                        Ok(()) => ProduceResult {
                            code: Code::None,
                            base_offset: base,
                            log_start: tip.head.log_start,
                        },
                        Err(code) => ProduceResult::failed(code),
                    });
                }
                Answer::Produce(Some(tx), Err(code)) => {
                    let _ = tx.send(ProduceResult::failed(code));
                }
                Answer::Maintain(tx, code) => {
                    let _ = tx.send(committed.map_or_else(|e| e, |()| code));
                }
            }
        }
    }
}

/// Decides a round against the tip, moving the tip. Consecutive appends are merged into one
/// command; a maintenance command ends the merge (it must see the appends before it).
fn decide(tip: &mut Partition, jobs: Vec<Job>) -> Round {
    let mut round = Round {
        commands: Vec::new(),
        answers: Vec::new(),
    };
    let mut merged: Vec<Vec<u8>> = Vec::new();
    let flush = |merged: &mut Vec<Vec<u8>>, commands: &mut Vec<PartitionCommand>| {
        if !merged.is_empty() {
            commands.push(PartitionCommand::Append {
                batches: std::mem::take(merged),
            });
        }
    };
    for j in jobs {
        match j {
            Job::Produce { records, reply } => match tip.prepare(&records) {
                Err(code) => round.answers.push(Answer::Produce(reply, Err(code))),
                Ok(p) => {
                    if let Some(cmd) = p.command {
                        if let Err(e) = tip.apply(&cmd) {
                            warn!(error = %e, "a prepared append did not apply to the tip");
                            round
                                .answers
                                .push(Answer::Produce(reply, Err(Code::KafkaStorageError)));
                            continue;
                        }
                        if let PartitionCommand::Append { batches } = cmd {
                            merged.extend(batches);
                        }
                    }
                    round.answers.push(Answer::Produce(reply, Ok(p.base_offset)));
                }
            },
            Job::Maintain { decide, reply } => {
                flush(&mut merged, &mut round.commands);
                let code = match decide(tip) {
                    None => Code::None,
                    Some(cmd) => match tip.apply(&cmd) {
                        Ok(()) => {
                            round.commands.push(cmd);
                            Code::None
                        }
                        Err(e) => {
                            warn!(error = %e, "a maintenance command did not apply to the tip");
                            Code::KafkaStorageError
                        }
                    },
                };
                round.answers.push(Answer::Maintain(reply, code));
            }
        }
    }
    flush(&mut merged, &mut round.commands);
    round
}

/// The sequencers of the partitions this node hosts (shared with the Kafka handlers).
pub type Sequencers = Arc<std::sync::RwLock<std::collections::HashMap<u64, Sequencer>>>;
