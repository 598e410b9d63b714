//! Layouts, damage and rollbacks of the broker's redb store.

use std::path::PathBuf;

use foundation::redb::LAYOUT;

use super::*;
use crate::storage::TopicConfig;
use redb::TableDefinition;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("cloud-layout-{}", foundation::ids::unique_tag()))
}

/// A store holding one topic and one metadata value.
fn store_with_data(path: &Path) {
    let s = RedbStorage::open(path).unwrap();
    let mut w = WriteSet::default();
    w.put_topics.push(TopicMeta {
        id: 3,
        uuid: [3; 16],
        name: "t".into(),
        partitions: 2,
        config: TopicConfig::default(),
        replicas: Vec::new(),
    });
    w.meta.push(("next_producer_id".into(), b"7".to_vec()));
    s.apply(&w).unwrap();
}

fn recorded_layout(path: &Path) -> Option<u64> {
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let v = tx
        .open_table(LAYOUT)
        .ok()?
        .get("version")
        .unwrap()
        .map(|v| v.value());
    v
}

/// Sets (`Some`) or removes with its table (`None`) the version record.
fn rewrite_layout(path: &Path, version: Option<u64>) {
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    match version {
        Some(v) => drop(tx.open_table(LAYOUT).unwrap().insert("version", v).unwrap()),
        None => assert!(tx.delete_table(LAYOUT).unwrap()),
    }
    tx.commit().unwrap();
}

#[test]
fn a_new_store_records_the_current_layout() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    drop(RedbStorage::open(&path).unwrap());
    assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
    std::fs::remove_dir_all(dir).ok();
}

/// A layout 2 file (before transactions) opens, keeps its data, and is recorded as this
/// layout; its transactions are then written and read back.
#[test]
fn a_layout_2_store_is_upgraded_and_keeps_transactions_after() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    let s = RedbStorage::open(&path).unwrap();
    s.apply(&WriteSet {
        put_topics: vec![topic(1, "t")],
        batches: vec![(1, 0, 0, batch_at(0, 3))],
        ..WriteSet::default()
    })
    .unwrap();
    drop(s);
    rewrite_layout(&path, Some(2));
    let s = RedbStorage::open(&path).unwrap();
    assert_eq!(s.headers(1, 0, 0, 10).unwrap().len(), 1);
    let txns = crate::sm::partition::TxnIndex {
        open: [(7, 1)].into(),
        aborted: vec![(8, 0, 2)],
    };
    let state = crate::sm::txn::TxnState {
        producer_id: 7,
        epoch: 2,
        timeout_ms: 60_000,
        status: crate::sm::txn::Status::Ongoing,
        partitions: [("t".to_string(), 0)].into(),
        groups: ["g".to_string()].into(),
        started_ms: 5,
    };
    let pending: crate::sm::offsets::Pending = [(
        ("t".to_string(), 0),
        CommittedOffset {
            offset: 3,
            metadata: "m".into(),
        },
    )]
    .into();
    s.apply(&WriteSet {
        txns: vec![(1, 0, txns.clone())],
        txn_states: vec![("app".into(), Some(state.clone()))],
        txn_offsets: vec![("g".into(), 7, Some(pending.clone()))],
        ..WriteSet::default()
    })
    .unwrap();
    drop(s);
    assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
    let s = RedbStorage::open(&path).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.txns.get(&(1, 0)), Some(&txns));
    assert_eq!(snap.txn_states.get("app"), Some(&state));
    assert_eq!(snap.txn_offsets.get(&("g".to_string(), 7)), Some(&pending));
    // An empty index, a forgotten state and dropped offsets remove their rows.
    s.apply(&WriteSet {
        txns: vec![(1, 0, Default::default())],
        txn_states: vec![("app".into(), None)],
        txn_offsets: vec![("g".into(), 7, None)],
        ..WriteSet::default()
    })
    .unwrap();
    let snap = s.load().unwrap();
    assert!(snap.txns.is_empty() && snap.txn_states.is_empty() && snap.txn_offsets.is_empty());

    // A damaged transaction state is reported at start, by verify, and quarantined.
    s.apply(&WriteSet {
        txn_states: vec![
            ("app/1".into(), Some(state.clone())),
            ("other".into(), Some(state)),
        ],
        ..WriteSet::default()
    })
    .unwrap();
    drop(s);
    tamper(&path, TXN_STATES, "app/1", flip);
    let s = RedbStorage::open(&path).unwrap();
    let snap = s.load().unwrap();
    assert!(!snap.txn_states.contains_key("app/1") && snap.txn_states.contains_key("other"));
    assert!(
        s.damage().is_some_and(|d| d.contains("app/1")),
        "{:?}",
        s.damage()
    );
    let r = s.verify().unwrap();
    assert_eq!(r.transactions, 2);
    assert_eq!(
        r.damaged.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["txn_states/app/1"]
    );
    let q = s.quarantine().unwrap();
    assert_eq!(q.damaged.len(), 1);
    assert!(s.verify().unwrap().is_clean());
    assert_eq!(s.load().unwrap().txn_states.len(), 1);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

fn topic(id: u32, name: &str) -> TopicMeta {
    TopicMeta {
        id,
        uuid: [id as u8; 16],
        name: name.into(),
        partitions: 2,
        config: TopicConfig::default(),
        replicas: Vec::new(),
    }
}

/// A batch of `n` records at `base` (its base offset written in, as the broker stores it).
fn batch_at(base: i64, n: i32) -> Vec<u8> {
    let mut b = crate::batch::tests::make_batch(n, -1, -1, -1, 1_000);
    b[..8].copy_from_slice(&base.to_be_bytes());
    b
}

/// A store as layout 1 wrote it (JSON rows, no checksums; with the version record when
/// `stamped`): topic 3 with a batch of 4 records in partition 0, a producer state, a group
/// offset that was already damaged, and the next producer id.
fn write_layout_1(path: &Path, stamped: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let j = |v: &dyn erased::Json| v.json();
        tx.open_table(TOPICS)
            .unwrap()
            .insert(3, j(&topic(3, "t")).as_slice())
            .unwrap();
        tx.open_table(BATCHES)
            .unwrap()
            .insert((3, 0, 0), batch_at(0, 4).as_slice())
            .unwrap();
        let head = PartitionHead {
            log_start: 0,
            next_offset: 4,
            bytes: batch_at(0, 4).len() as u64,
        };
        tx.open_table(HEADS)
            .unwrap()
            .insert((3, 0), j(&head).as_slice())
            .unwrap();
        let st = ProducerState {
            epoch: 0,
            batches: Vec::new(),
        };
        tx.open_table(PRODUCERS)
            .unwrap()
            .insert((3, 0, 17), j(&st).as_slice())
            .unwrap();
        let mut o = tx.open_table(OFFSETS).unwrap();
        let good = CommittedOffset {
            offset: 2,
            metadata: String::new(),
        };
        o.insert(("g", "t", 0), j(&good).as_slice()).unwrap();
        o.insert(("g", "t", 1), &b"{\"offs"[..]).unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("next_producer_id", &18i64.to_be_bytes()[..])
            .unwrap();
        if stamped {
            tx.open_table(LAYOUT).unwrap().insert("version", 1).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Serializing any row type to JSON, for the layout 1 writer.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap()
        }
    }
}

#[test]
fn a_layout_1_store_is_upgraded_with_its_data_and_old_damage_set_aside() {
    for stamped in [true, false] {
        let dir = scratch();
        let path = dir.join("broker.redb");
        write_layout_1(&path, stamped);
        let s = RedbStorage::open(&path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.topics, [topic(3, "t")]);
        assert_eq!(snap.heads[&(3, 0)].next_offset, 4);
        assert!(snap.producers.contains_key(&(3, 0, 17)));
        assert_eq!(
            snap.offsets.len(),
            1,
            "the damaged offset is set aside: {:?}",
            snap.offsets
        );
        assert_eq!(snap.meta["next_producer_id"], 18i64.to_be_bytes());
        assert_eq!(
            s.damage(),
            None,
            "what the upgrade set aside is not damage met later"
        );
        assert_eq!(s.read(3, 0, 0, 1 << 20).unwrap(), batch_at(0, 4));
        let r = s.verify().unwrap();
        assert!(r.is_clean(), "{r:#?}");
        assert_eq!(r.quarantined, ["offsets/g/t/1"]);
        drop(s);
        assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
        std::fs::remove_dir_all(dir).ok();
    }
}

/// Rewrites one stored value with `f` applied, the store closed (a bit flip on disk).
fn tamper<K: redb::Key + 'static>(
    path: &Path,
    table: TableDefinition<K, &'static [u8]>,
    key: K::SelfType<'_>,
    f: impl FnOnce(&mut [u8]),
) {
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(table).unwrap();
        let mut v = t.get(&key).unwrap().unwrap().value().to_vec();
        f(&mut v);
        t.insert(key, v.as_slice()).unwrap();
    }
    tx.commit().unwrap();
}

fn flip(v: &mut [u8]) {
    let i = v.len() / 2;
    v[i] ^= 0x10;
}

/// Topic 3 with batches at 0, 4, 8 (4 records each) in partition 0, one at 0 in partition 1,
/// a producer state, two group offsets.
fn store_with_batches(path: &Path) {
    let s = RedbStorage::open(path).unwrap();
    let mut w = WriteSet::default();
    w.put_topics.push(topic(3, "t"));
    let mut bytes = 0;
    for base in [0, 4, 8] {
        let b = batch_at(base, 4);
        bytes += b.len() as u64;
        w.batches.push((3, 0, base, b));
    }
    w.heads.push((
        3,
        0,
        PartitionHead {
            log_start: 0,
            next_offset: 12,
            bytes,
        },
    ));
    let b = batch_at(0, 4);
    w.heads.push((
        3,
        1,
        PartitionHead {
            log_start: 0,
            next_offset: 4,
            bytes: b.len() as u64,
        },
    ));
    w.batches.push((3, 1, 0, b));
    w.producers.push((
        3,
        0,
        17,
        ProducerState {
            epoch: 0,
            batches: Vec::new(),
        },
    ));
    for p in [0, 1] {
        let o = CommittedOffset {
            offset: 3,
            metadata: String::new(),
        };
        w.offsets.push(("g".into(), "t".into(), p, Some(o)));
    }
    w.meta
        .push(("next_producer_id".into(), 18i64.to_be_bytes().to_vec()));
    s.apply(&w).unwrap();
    s.close();
}

#[test]
fn damage_is_found_contained_and_quarantined() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    store_with_batches(&path);
    // A byte of a record in the middle batch (Kafka's CRC covers it), the base offset of the
    // last one (it does not), partition 1's head and a group offset.
    tamper(&path, BATCHES, (3, 0, 4), |v| {
        let n = v.len();
        v[n - 3] ^= 0x01;
    });
    tamper(&path, BATCHES, (3, 0, 8), |v| v[7] ^= 0x01);
    tamper(&path, HEADS, (3, 1), flip);
    tamper(&path, OFFSETS, ("g", "t", 1), flip);

    let s = RedbStorage::open(&path).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(
        snap.heads[&(3, 1)].next_offset,
        4,
        "a damaged head is rebuilt from the batches"
    );
    assert!(
        !snap.offsets.contains_key(&("g".to_string(), "t".to_string(), 1)),
        "never read as another offset"
    );
    let d = s.damage().expect("reported at start");
    assert!(d.contains("checksum mismatch"), "{d}");
    assert!(
        s.read(3, 0, 8, 1 << 20).is_err(),
        "a batch whose base offset changed is not served"
    );
    // The broker checks Kafka's CRC of what the store returns: the first batch is good, the
    // second is where it stops.
    let raw = s.read(3, 0, 0, 1 << 20).unwrap();
    let (good, bad) = crate::batch::check_stored(&raw);
    assert_eq!((&raw[..good], bad), (&batch_at(0, 4)[..], Some(Some(4))));

    let r = s.verify().unwrap();
    let keys: Vec<&str> = r.damaged.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        ["heads/3/1", "batches/3/0/4", "batches/3/0/8", "offsets/g/t/1"],
        "{r:#?}"
    );
    assert_eq!(r.damaged[1].offsets, Some([4, 8]));
    assert_eq!(r.damaged[2].offsets, Some([8, 12]));

    let q = s.quarantine().unwrap();
    assert_eq!(q.damaged, r.damaged);
    assert_eq!(s.damage(), None);
    let r = s.verify().unwrap();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.quarantined.len(), 4);
    let snap = s.load().unwrap();
    assert_eq!(
        snap.heads[&(3, 0)],
        PartitionHead {
            log_start: 0,
            next_offset: 12,
            bytes: batch_at(0, 4).len() as u64
        },
        "offsets go on after the hole, none reused"
    );
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_store_that_rolled_back_is_refused_until_accepted() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    store_with_batches(&path);
    let old = std::fs::read(&path).unwrap();
    let s = RedbStorage::open(&path).unwrap();
    let b = batch_at(12, 4);
    let mut w = WriteSet::default();
    w.heads.push((
        3,
        0,
        PartitionHead {
            log_start: 0,
            next_offset: 16,
            bytes: 0,
        },
    ));
    w.batches.push((3, 0, 12, b));
    s.apply(&w).unwrap();
    s.close();
    drop(s);
    std::fs::write(&path, old).unwrap();

    let e = RedbStorage::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::RolledBack(_)), "{e:?}");
    assert!(e.to_string().contains("\"t\" partition 0: offsets 12..16"), "{e}");
    let s = RedbStorage::open_with(&path, true).unwrap();
    assert_eq!(
        s.load().unwrap().heads[&(3, 0)].next_offset,
        16,
        "no offset handed out twice"
    );
    assert!(s
        .verify()
        .unwrap()
        .quarantined
        .contains(&"rollback/3/0".to_string()));
    drop(s);
    drop(RedbStorage::open(&path).unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_store_of_an_unknown_layout_is_refused_and_left_untouched() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    store_with_data(&path);
    rewrite_layout(&path, Some(999));
    let before = std::fs::read(&path).unwrap();

    let e = RedbStorage::open(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Layout(_)), "{e:?}");
    assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
    assert!(msg.contains("version 999"), "names its version: {msg}");
    assert!(
        msg.contains(&format!("reads version {LAYOUT_VERSION}")),
        "names ours: {msg}"
    );
    assert!(msg.contains("backup"), "says what to do: {msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_damaged_newest_commit_is_refused_then_opened_at_the_one_before_on_request() {
    let dir = scratch();
    let path = dir.join("broker.redb");
    store_with_batches(&path);
    let s = RedbStorage::open(&path).unwrap();
    let mut w = WriteSet::default();
    w.heads.push((
        3,
        0,
        PartitionHead {
            log_start: 0,
            next_offset: 16,
            bytes: 0,
        },
    ));
    w.batches.push((3, 0, 12, batch_at(12, 4)));
    s.apply(&w).unwrap();
    s.close();
    drop(s);
    // A bit flipped in the primary commit slot (the god byte's bit 0 says which).
    let mut bytes = std::fs::read(&path).unwrap();
    let primary = usize::from(bytes[9] & 0x01);
    bytes[64 + primary * 128 + 40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let e = RedbStorage::open(&path).unwrap_err();
    assert!(matches!(e, StoreError::RolledBack(_)), "{e:?}");
    assert!(e.to_string().contains("--accept-rollback"), "{e}");
    let s = RedbStorage::open_with(&path, true).unwrap();
    assert_eq!(
        s.load().unwrap().heads[&(3, 0)].next_offset,
        16,
        "at the commit before, offsets still go on after what was handed out"
    );
    drop(s);
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".damaged-")
        })
        .count();
    assert_eq!(kept, 1, "a copy of the damaged file is kept");
    std::fs::remove_dir_all(dir).ok();
}
