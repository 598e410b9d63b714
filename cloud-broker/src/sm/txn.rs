//! Kafka transactions, the coordinator's rules: one [`TxnState`] per transactional id, kept
//! in the offsets log the id hashes to (as Kafka keeps it in `__transaction_state`), and the
//! transitions each request makes of it. Pure: the shell ([`crate::api::txn`]) reads the
//! applied state, asks [`init`], [`add`] or [`end`] what to do, logs the new state, and writes
//! the markers.
//!
//! ```text
//!            InitProducerId (epoch + 1)          AddPartitions / AddOffsets
//!   (none) ──────────────────────────► Empty ───────────────────────────► Ongoing
//!                                        ▲                                   │ EndTxn, timeout,
//!                     InitProducerId     │                                   │ InitProducerId
//!                     AddPartitions...   │                                   ▼
//!                         CompleteCommit / CompleteAbort ◄── markers ── PrepareCommit / PrepareAbort
//! ```
//!
//! A prepared state is logged before any marker is written, so a coordinator that takes over
//! (its offsets log's new leader) finishes what its predecessor prepared: markers are written
//! again (a partition with no open transaction of the producer ignores one).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::errors::Code;

/// Longest transaction a producer may ask for (Kafka's `transaction.max.timeout.ms`).
pub const MAX_TIMEOUT_MS: i32 = 15 * 60 * 1000;

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// No transaction open.
    Empty,
    /// Partitions or offsets were added; neither committed nor aborted yet.
    Ongoing,
    /// Committing: the markers are being written.
    PrepareCommit,
    /// Aborting: the markers are being written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
}

impl Status {
    /// Kafka's name of the state (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            Status::Empty => "Empty",
            Status::Ongoing => "Ongoing",
            Status::PrepareCommit => "PrepareCommit",
            Status::PrepareAbort => "PrepareAbort",
            Status::CompleteCommit => "CompleteCommit",
            Status::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written.
    pub fn preparing(self) -> bool {
        matches!(self, Status::PrepareCommit | Status::PrepareAbort)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnState {
    /// Its producer id.
    pub producer_id: i64,
    /// Its current epoch: requests with an older one are fenced.
    pub epoch: i16,
    /// Transaction timeout the producer asked for.
    pub timeout_ms: i32,
    /// Where the transaction stands.
    pub status: Status,
    /// Data partitions written in the transaction: `(topic, partition)`.
    pub partitions: BTreeSet<(String, u32)>,
    /// Consumer groups whose offsets the transaction commits.
    pub groups: BTreeSet<String>,
    /// When the transaction started (`Ongoing`), ms since the epoch.
    pub started_ms: i64,
}

/// The producer a request names and the id it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Producer id.
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
}

/// Checks a request's producer id and epoch against the state.
pub fn check(state: Option<&TxnState>, c: Caller) -> Result<&TxnState, Code> {
    let Some(s) = state else {
        return Err(Code::InvalidProducerIdMapping);
    };
    if s.producer_id != c.producer_id {
        return Err(Code::InvalidProducerIdMapping);
    }
    if c.epoch < s.epoch {
        return Err(Code::ProducerFenced);
    }
    if c.epoch > s.epoch {
        return Err(Code::InvalidProducerEpoch);
    }
    Ok(s)
}

/// What InitProducerId does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// A transaction is open or being ended: end it first (abort an open one, finish a
    /// prepared one) with the state given (epoch bumped for an abort, which fences the old
    /// producer), then ask again.
    EndFirst(TxnState),
    /// Log this state and answer with its id and epoch (a new id when `None` was given and
    /// the id is new, or its epoch would overflow).
    Ready(TxnState),
}

/// InitProducerId for a transactional id in `state`, with `timeout_ms`; `new_id` draws a
/// producer id when one is needed. `expected`: the producer id and epoch a producer that
/// already had one gives (KIP-360), which must be the current ones.
pub fn init(
    state: Option<&TxnState>,
    timeout_ms: i32,
    expected: Option<Caller>,
    new_id: impl FnOnce() -> Result<i64, Code>,
) -> Result<Init, Code> {
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(Code::InvalidTransactionTimeout);
    }
    let Some(s) = state else {
        if expected.is_some() {
            return Err(Code::InvalidProducerIdMapping);
        }
        return Ok(Init::Ready(TxnState {
            producer_id: new_id()?,
            epoch: 0,
            timeout_ms,
            status: Status::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            started_ms: 0,
        }));
    };
    if let Some(c) = expected {
        // A retry of the bump just made is answered with the same id and epoch.
        let retried = c.producer_id == s.producer_id && c.epoch + 1 == s.epoch && s.status == Status::Empty;
        if !retried && (c.producer_id != s.producer_id || c.epoch != s.epoch) {
            return Err(Code::ProducerFenced);
        }
        if retried {
            return Ok(Init::Ready(s.clone()));
        }
    }
    match s.status {
        Status::Ongoing => Ok(Init::EndFirst(TxnState {
            epoch: bump(s.epoch),
            status: Status::PrepareAbort,
            ..s.clone()
        })),
        Status::PrepareCommit | Status::PrepareAbort => Ok(Init::EndFirst(s.clone())),
        Status::Empty | Status::CompleteCommit | Status::CompleteAbort => {
            let (producer_id, epoch) = if s.epoch >= i16::MAX - 1 {
                (new_id()?, 0)
            } else {
                (s.producer_id, s.epoch + 1)
            };
            Ok(Init::Ready(TxnState {
                producer_id,
                epoch,
                timeout_ms,
                status: Status::Empty,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                started_ms: 0,
            }))
        }
    }
}

fn bump(epoch: i16) -> i16 {
    epoch.saturating_add(1).min(i16::MAX - 1)
}

/// AddPartitionsToTxn / AddOffsetsToTxn: the state with `partitions` and `groups` added
/// (the transaction starts at `now_ms` if it was not open); `None` when nothing changes.
pub fn add(
    state: Option<&TxnState>,
    c: Caller,
    partitions: &[(String, u32)],
    groups: &[String],
    now_ms: i64,
) -> Result<Option<TxnState>, Code> {
    let s = check(state, c)?;
    if s.status.preparing() {
        return Err(Code::ConcurrentTransactions);
    }
    let mut next = s.clone();
    if next.status != Status::Ongoing {
        next.status = Status::Ongoing;
        next.partitions.clear();
        next.groups.clear();
        next.started_ms = now_ms;
    }
    next.partitions.extend(partitions.iter().cloned());
    next.groups.extend(groups.iter().cloned());
    Ok((next != *s).then_some(next))
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Log this prepared state, write its markers, then log [`complete`] of it.
    Prepare(TxnState),
    /// Finish what is prepared already (a retry, or a coordinator that took over).
    Resume(TxnState),
    /// Already done: answer success.
    Done,
}

/// EndTxn (`commit` or abort) from caller `c`.
pub fn end(state: Option<&TxnState>, c: Caller, commit: bool) -> Result<End, Code> {
    let s = check(state, c)?;
    let (prepare, complete) = if commit {
        (Status::PrepareCommit, Status::CompleteCommit)
    } else {
        (Status::PrepareAbort, Status::CompleteAbort)
    };
    match s.status {
        Status::Ongoing => Ok(End::Prepare(TxnState {
            status: prepare,
            ..s.clone()
        })),
        st if st == prepare => Ok(End::Resume(s.clone())),
        st if st == complete => Ok(End::Done),
        // Aborting a transaction that has nothing in it is a no-op, as in Kafka.
        Status::Empty if !commit => Ok(End::Done),
        _ => Err(Code::InvalidTxnState),
    }
}

/// The state once a prepared transaction's markers are all written.
pub fn complete(s: &TxnState) -> TxnState {
    TxnState {
        status: if s.status == Status::PrepareCommit {
            Status::CompleteCommit
        } else {
            Status::CompleteAbort
        },
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        ..s.clone()
    }
}

/// A transaction open longer than its timeout at `now_ms`: the state that aborts it (epoch
/// bumped: the producer that let it time out is fenced), or `None`.
pub fn expired(s: &TxnState, now_ms: i64) -> Option<TxnState> {
    (s.status == Status::Ongoing && now_ms.saturating_sub(s.started_ms) > i64::from(s.timeout_ms)).then(
        || TxnState {
            epoch: bump(s.epoch),
            status: Status::PrepareAbort,
            ..s.clone()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(id: i64) -> impl FnOnce() -> Result<i64, Code> {
        move || Ok(id)
    }

    fn ready(r: Result<Init, Code>) -> TxnState {
        match r {
            Ok(Init::Ready(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transaction_goes_round_and_fences_the_old_producer() {
        let s = ready(init(None, 60_000, None, fresh(1000)));
        assert_eq!((s.producer_id, s.epoch, s.status), (1000, 0, Status::Empty));
        let c = Caller {
            producer_id: 1000,
            epoch: 0,
        };
        let parts = [("t".to_string(), 0)];
        let s = add(Some(&s), c, &parts, &[], 5).unwrap().unwrap();
        assert_eq!((s.status, s.started_ms), (Status::Ongoing, 5));
        assert_eq!(add(Some(&s), c, &parts, &[], 6), Ok(None), "nothing new");
        let s = add(Some(&s), c, &[], &["g".into()], 6).unwrap().unwrap();
        let End::Prepare(p) = end(Some(&s), c, true).unwrap() else {
            panic!()
        };
        assert_eq!(p.status, Status::PrepareCommit);
        assert_eq!(
            add(Some(&p), c, &parts, &[], 7),
            Err(Code::ConcurrentTransactions)
        );
        assert_eq!(
            end(Some(&p), c, true),
            Ok(End::Resume(p.clone())),
            "a retry resumes"
        );
        assert_eq!(end(Some(&p), c, false), Err(Code::InvalidTxnState));
        let done = complete(&p);
        assert_eq!(done.status, Status::CompleteCommit);
        assert!(done.partitions.is_empty() && done.groups.is_empty());
        assert_eq!(end(Some(&done), c, true), Ok(End::Done));

        // A new producer instance with the same id: the epoch goes up, the old one is fenced.
        let s = ready(init(Some(&done), 60_000, None, fresh(9)));
        assert_eq!((s.producer_id, s.epoch), (1000, 1));
        assert_eq!(add(Some(&s), c, &parts, &[], 8), Err(Code::ProducerFenced));
        assert_eq!(
            add(
                Some(&s),
                Caller {
                    producer_id: 7,
                    epoch: 1
                },
                &parts,
                &[],
                8
            ),
            Err(Code::InvalidProducerIdMapping)
        );
    }

    #[test]
    fn init_while_a_transaction_is_open_aborts_it_first() {
        let s = ready(init(None, 60_000, None, fresh(1000)));
        let c = Caller {
            producer_id: 1000,
            epoch: 0,
        };
        let s = add(Some(&s), c, &[("t".into(), 1)], &[], 1).unwrap().unwrap();
        let Ok(Init::EndFirst(abort)) = init(Some(&s), 60_000, None, fresh(9)) else {
            panic!()
        };
        assert_eq!((abort.status, abort.epoch), (Status::PrepareAbort, 1));
        assert_eq!(
            abort.partitions.len(),
            1,
            "its markers go to the partitions written"
        );
        let done = complete(&abort);
        let s = ready(init(Some(&done), 60_000, None, fresh(9)));
        assert_eq!((s.producer_id, s.epoch, s.status), (1000, 2, Status::Empty));
    }

    #[test]
    fn timeouts_epochs_and_bad_requests() {
        assert_eq!(
            init(None, 0, None, fresh(1)),
            Err(Code::InvalidTransactionTimeout)
        );
        assert_eq!(
            init(None, MAX_TIMEOUT_MS + 1, None, fresh(1)),
            Err(Code::InvalidTransactionTimeout)
        );
        let s = ready(init(None, 1_000, None, fresh(5)));
        let c = Caller {
            producer_id: 5,
            epoch: 0,
        };
        assert_eq!(end(Some(&s), c, false), Ok(End::Done), "aborting nothing");
        assert_eq!(
            end(Some(&s), c, true),
            Err(Code::InvalidTxnState),
            "committing nothing"
        );
        let s = add(Some(&s), c, &[("t".into(), 0)], &[], 100).unwrap().unwrap();
        assert_eq!(expired(&s, 1_100), None);
        let x = expired(&s, 1_101).unwrap();
        assert_eq!((x.status, x.epoch), (Status::PrepareAbort, 1));
        // KIP-360: a producer that gives its id and epoch gets the next epoch, once.
        let done = complete(&x);
        let again = ready(init(
            Some(&done),
            1_000,
            Some(Caller {
                producer_id: 5,
                epoch: 1,
            }),
            fresh(9),
        ));
        assert_eq!(again.epoch, 2);
        let retried = ready(init(
            Some(&again),
            1_000,
            Some(Caller {
                producer_id: 5,
                epoch: 1,
            }),
            fresh(9),
        ));
        assert_eq!(retried, again, "the same answer to a retry");
        assert_eq!(
            init(
                Some(&again),
                1_000,
                Some(Caller {
                    producer_id: 5,
                    epoch: 0
                }),
                fresh(9)
            ),
            Err(Code::ProducerFenced)
        );
        // The epoch never overflows: a new producer id instead.
        let old = TxnState {
            epoch: i16::MAX - 1,
            ..done
        };
        let s = ready(init(Some(&old), 1_000, None, fresh(77)));
        assert_eq!((s.producer_id, s.epoch), (77, 0));
    }
}
