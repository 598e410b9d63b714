//! The redb log on a disk that fails the way disks do (`foundation::faulty`): ENOSPC after a
//! budget of bytes, torn writes, failed fsyncs, power cuts that lose what was not synced, and
//! bits flipped in what is stored. Random schedules of those between appends and reads, and
//! after each step: a read returns exactly what was acknowledged (or, for an append that
//! failed, what it tried to write), or an error: never other records. Until a bit is flipped,
//! nothing acknowledged is ever missing, and only storage errors (worth a retry) occur.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use edge_agent::log::redb_store::RedbLog;
use edge_agent::log::{Append, LogStore, NewRecord, PartitionAppend, TopicSpec};
use foundation::faulty::FaultyDisk;
use proptest::prelude::*;

const PARTITIONS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Append { partition: u32, records: u8 },
    Read { partition: u32, from: u8 },
    PowerCut,
    NoSpaceAfter(u16),
    SpaceAgain,
    TearNextWrite,
    FailSyncs(u8),
    Flip { at: u64, bit: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PARTITIONS, 1u8..20).prop_map(|(partition, records)| Op::Append { partition, records }),
        4 => (0..PARTITIONS, 0u8..60).prop_map(|(partition, from)| Op::Read { partition, from }),
        2 => Just(Op::PowerCut),
        1 => (0u16..20_000).prop_map(Op::NoSpaceAfter),
        1 => Just(Op::SpaceAgain),
        1 => Just(Op::TearNextWrite),
        1 => (1u8..3).prop_map(Op::FailSyncs),
        1 => (any::<u64>(), 0u8..8).prop_map(|(at, bit)| Op::Flip { at, bit }),
    ]
}

/// What the log promised, and what it may hold besides.
#[derive(Default)]
struct Model {
    /// (partition, offset) → value, for every append that returned `Ok`.
    acked: BTreeMap<(u32, u64), Vec<u8>>,
    /// Values of appends that failed: a failed commit may still be durable.
    maybe: HashSet<Vec<u8>>,
    /// A bit was flipped: records may be lost (reported), never wrong.
    flipped: bool,
}

fn spec() -> TopicSpec {
    TopicSpec::new("t", PARTITIONS)
}

struct World {
    disk: FaultyDisk,
    path: std::path::PathBuf,
    store: Option<RedbLog>,
    model: Model,
}

impl World {
    /// The store, opened (again) if needed; `None` if it cannot be opened now (the error must
    /// be a reported one).
    fn store(&mut self) -> Option<&RedbLog> {
        if self.store.is_none() {
            let disk = self.disk.clone();
            match RedbLog::open_on(&self.path, Arc::new(move || Box::new(disk.backend()))) {
                Ok(s) => {
                    if s.ensure_topic(&spec()).is_err() {
                        return None;
                    }
                    self.store = Some(s);
                }
                Err(e) => {
                    assert!(
                        self.model.flipped || e.is_retryable(),
                        "an undamaged disk opens, or fails for a reason worth a retry: {e:?}"
                    );
                    return None;
                }
            }
        }
        self.store.as_ref()
    }

    fn check_read(&mut self, partition: u32, from: u64) {
        let flipped = self.model.flipped;
        let Some(s) = self.store() else { return };
        match s.read("t", partition, from, usize::MAX, usize::MAX) {
            Ok(records) => {
                let mut seen = HashSet::new();
                for r in &records {
                    seen.insert(r.offset);
                    match self.model.acked.get(&(partition, r.offset)) {
                        Some(v) => assert_eq!(&r.value, v, "offset {}: the acknowledged value", r.offset),
                        None => assert!(
                            self.model.maybe.contains(&r.value),
                            "offset {}: {:?} was never written",
                            r.offset,
                            String::from_utf8_lossy(&r.value)
                        ),
                    }
                }
                if !flipped {
                    for (&(p, o), _) in self.model.acked.range((partition, from)..(partition + 1, 0)) {
                        assert_eq!(p, partition);
                        assert!(
                            seen.contains(&o),
                            "acknowledged offset {o} of partition {p} is missing"
                        );
                    }
                }
            }
            Err(e) => assert!(
                flipped || e.is_retryable(),
                "only a damaged disk gives other errors: {e:?}"
            ),
        }
    }

    fn step(&mut self, i: usize, op: &Op) {
        match op {
            Op::Append { partition, records } => {
                let values: Vec<Vec<u8>> = (0..*records).map(|j| format!("v{i}-{j}").into_bytes()).collect();
                let append = Append {
                    partitions: vec![PartitionAppend {
                        topic: "t".into(),
                        partition: *partition,
                        records: values
                            .iter()
                            .map(|v| NewRecord {
                                timestamp_ms: i as i64,
                                key: None,
                                value: v.clone(),
                                headers: Vec::new(),
                            })
                            .collect(),
                    }],
                    streams: Vec::new(),
                };
                let flipped = self.model.flipped;
                let Some(s) = self.store() else {
                    self.model.maybe.extend(values);
                    return;
                };
                match s.append(&append) {
                    Ok(bases) => {
                        for (j, v) in values.into_iter().enumerate() {
                            let at = (*partition, bases[0] + j as u64);
                            assert!(
                                flipped || !self.model.acked.contains_key(&at),
                                "offset {at:?} handed out twice"
                            );
                            self.model.acked.insert(at, v);
                        }
                    }
                    Err(e) => {
                        assert!(flipped || e.is_retryable(), "{e:?}");
                        self.model.maybe.extend(values);
                    }
                }
            }
            Op::Read { partition, from } => self.check_read(*partition, u64::from(*from)),
            Op::PowerCut => {
                self.disk.power_cut();
                self.store = None; // the process dies: its last writes vanish
                self.disk.power_on();
            }
            Op::NoSpaceAfter(n) => self.disk.space(Some(u64::from(*n))),
            Op::SpaceAgain => self.disk.space(None),
            Op::TearNextWrite => self.disk.tear_next_write(),
            Op::FailSyncs(n) => self.disk.fail_syncs(u32::from(*n)),
            Op::Flip { at, bit } => {
                if self.disk.flip(*at, *bit).is_some() {
                    self.model.flipped = true;
                }
            }
        }
    }
}

fn run(ops: &[Op]) {
    // Removed when done, a failing case included (its drop runs as the panic unwinds).
    let tmp = foundation::scratch::TempDir::new("log-faults").unwrap();
    let dir = tmp.path().to_path_buf();
    let mut w = World {
        disk: FaultyDisk::new(),
        path: dir.join("log.redb"),
        store: None,
        model: Model::default(),
    };
    for (i, op) in ops.iter().enumerate() {
        w.step(i, op);
    }
    // Healed and restarted: everything acknowledged is there, exactly (or, after a flip, an
    // error or the right records).
    w.disk.heal();
    w.step(ops.len(), &Op::PowerCut);
    for p in 0..PARTITIONS {
        w.check_read(p, 0);
    }
    if !w.model.flipped {
        assert!(w.store.is_some(), "a healed, undamaged disk opens");
    }
    drop(w.store.take());
    drop(tmp);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn faults_never_turn_into_wrong_or_missing_records(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}
