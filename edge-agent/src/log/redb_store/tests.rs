//! Layout versions and upgrades of the redb log.

use std::path::PathBuf;

use foundation::redb::LAYOUT;
use redb::Database;

use crate::log::NewRecord;

use super::*;
use crate::log::suite::{one, rec};

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("edge-layout-{}", foundation::ids::unique_tag()))
}

/// A log holding one record and one metadata value.
fn log_with_data(path: &Path) {
    let s = RedbLog::open(path).unwrap();
    s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
    s.append(&one("t", 0, vec![rec(5, Some("k"), "v")])).unwrap();
    s.set_meta("gateway_id", b"gw-1").unwrap();
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
fn a_new_log_records_the_current_layout() {
    let dir = scratch();
    let path = dir.join("log.redb");
    drop(RedbLog::open(&path).unwrap());
    assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
    std::fs::remove_dir_all(dir).ok();
}

/// A chunk as layout 1 stored it: version 1, no checksum.
fn v1_chunk(base: u64, records: &[NewRecord]) -> Vec<u8> {
    let v2 = chunk::encode(base, records.iter().enumerate().map(|(i, r)| (i as u64, r)));
    let mut v1 = v2[..v2.len() - 4].to_vec();
    v1[0] = 1;
    v1
}

/// A log as the layout 1 store wrote it (with its version record when `stamped`): topic `t`
/// with 2 partitions; partition 0 holds offsets 0..3 in two chunks, partition 1 a chunk at 0
/// that was already damaged and a good one at 1; a device's dedup state; the gateway id.
fn write_layout_1(path: &Path, stamped: bool) {
    const STREAMS_V1: TableDefinition<(&str, u32), u64> = TableDefinition::new("streams");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let row = TopicRow {
            id: 0,
            spec: TopicSpec::new("t", 2),
        };
        tx.open_table(TOPICS)
            .unwrap()
            .insert("t", serde_json::to_vec(&row).unwrap().as_slice())
            .unwrap();
        let mut chunks = tx.open_table(CHUNKS).unwrap();
        chunks
            .insert(
                (0, 0, 0),
                v1_chunk(0, &[rec(1, Some("a"), "r0"), rec(2, None, "r1")]).as_slice(),
            )
            .unwrap();
        chunks
            .insert((0, 0, 2), v1_chunk(2, &[rec(3, Some("a"), "r2")]).as_slice())
            .unwrap();
        let mut bad = v1_chunk(0, &[rec(4, None, "lost")]);
        let n = bad.len();
        bad[n - 1] = 0xff; // the header count no longer fits: does not decode
        bad[17] = 9;
        chunks.insert((0, 1, 0), bad.as_slice()).unwrap();
        chunks
            .insert((0, 1, 1), v1_chunk(1, &[rec(5, None, "kept")]).as_slice())
            .unwrap();
        let mut parts = tx.open_table(PARTS).unwrap();
        let raw = |s: PartitionStats| rows::part_encode(0, 0, &s)[..32].to_vec();
        parts
            .insert(
                (0, 0),
                raw(PartitionStats {
                    first_offset: 0,
                    next_offset: 3,
                    records: 3,
                    bytes: 10,
                })
                .as_slice(),
            )
            .unwrap();
        parts
            .insert(
                (0, 1),
                raw(PartitionStats {
                    first_offset: 0,
                    next_offset: 2,
                    records: 2,
                    bytes: 10,
                })
                .as_slice(),
            )
            .unwrap();
        tx.open_table(STREAMS_V1)
            .unwrap()
            .insert(("dev-1", 7), 42)
            .unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("gateway_id", &b"gw-1"[..])
            .unwrap();
        if stamped {
            tx.open_table(LAYOUT).unwrap().insert("version", 1).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn values(s: &RedbLog, p: u32) -> Vec<String> {
    s.read("t", p, 0, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect()
}

#[test]
fn a_layout_1_log_is_upgraded_with_its_data_and_old_damage_set_aside() {
    for stamped in [true, false] {
        let dir = scratch();
        let path = dir.join("log.redb");
        write_layout_1(&path, stamped);
        assert_eq!(recorded_layout(&path), stamped.then_some(1));

        let s = RedbLog::open(&path).unwrap();
        assert_eq!(values(&s, 0), ["r0", "r1", "r2"]);
        assert_eq!(
            values(&s, 1),
            ["kept"],
            "the damaged chunk is set aside, the rest reads"
        );
        assert_eq!(s.meta("gateway_id").unwrap().as_deref(), Some(&b"gw-1"[..]));
        assert_eq!(s.stream_state("dev-1", 7).unwrap(), Some(42));
        assert_eq!(
            s.partition_stats("t", 1).unwrap().next_offset,
            2,
            "offsets are not reused"
        );
        let r = s.verify().unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.quarantined, ["chunks/0/1/0"]);
        assert_eq!(s.append(&one("t", 1, vec![rec(6, None, "new")])).unwrap(), [2]);
        drop(s);
        assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
        let s = RedbLog::open(&path).unwrap();
        assert_eq!(values(&s, 1), ["kept", "new"]);
        drop(s);
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn a_log_of_an_unknown_layout_is_refused_and_left_untouched() {
    let dir = scratch();
    let path = dir.join("log.redb");
    log_with_data(&path);
    rewrite_layout(&path, Some(999));
    let before = std::fs::read(&path).unwrap();

    let e = RedbLog::open(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LogError::Layout(_)), "{e:?}");
    assert!(!e.is_retryable());
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

#[test]
fn damage_is_an_error_where_it_is_and_quarantine_puts_it_aside() {
    let dir = scratch();
    let path = dir.join("log.redb");
    let s = RedbLog::open(&path).unwrap();
    s.ensure_topic(&TopicSpec::new("t", 2)).unwrap();
    for i in 0..3 {
        let recs = (0..4)
            .map(|j| rec(i * 10 + j, Some("k"), &format!("v{i}.{j}")))
            .collect();
        s.append(&one("t", 0, recs)).unwrap();
        s.append(&one("t", 1, vec![rec(i, None, &format!("w{i}"))]))
            .unwrap();
    }
    let mut a = one("t", 1, vec![]);
    a.streams.push(crate::log::StreamState {
        device: "dev-1".into(),
        boot: 3,
        next_expected: 17,
    });
    s.append(&a).unwrap();
    s.set_meta("checkpoint", b"41").unwrap();
    assert!(s.verify().unwrap().is_clean());
    drop(s);

    // A bit flipped in the middle chunk of partition 0 (offsets 4..8), in partition 1's row, in
    // the dedup state and in a metadata value.
    tamper(&path, CHUNKS, (0, 0, 4), flip);
    tamper(&path, PARTS, (0, 1), flip);
    tamper(&path, STREAMS, ("dev-1", 3), flip);
    tamper(&path, META, "checkpoint", flip);

    let s = RedbLog::open(&path).unwrap();
    assert_eq!(s.damage(), None, "nothing read yet");
    let e = s.read("t", 0, 0, 100, usize::MAX).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LogError::Corrupt(_)), "{e:?}");
    assert!(
        msg.contains("\"t\" partition 0, chunk at offset 4") && msg.contains("checksum"),
        "{msg}"
    );
    let d = s.damage().expect("reported");
    assert_eq!((d.failures, d.last.contains("offset 4")), (1, true), "{d:?}");
    // Around the damage the log reads and grows.
    assert_eq!(s.read("t", 0, 0, 4, usize::MAX).unwrap().len(), 4, "before it");
    let after: Vec<u64> = s
        .read("t", 0, 8, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(after, [8, 9, 10, 11], "after it");
    assert!(
        s.meta("checkpoint").is_err(),
        "a damaged value is an error, not other bytes"
    );
    assert_eq!(
        s.stream_state("dev-1", 3).unwrap(),
        None,
        "dedup state reads as a new stream"
    );
    assert!(s.partition_stats("t", 1).is_err());
    assert_eq!(
        s.append(&one("t", 1, vec![rec(9, None, "w3")])).unwrap(),
        [3],
        "a damaged row is rebuilt: offsets continue, none reused"
    );

    let r = s.verify().unwrap();
    let keys: Vec<&str> = r.damaged.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        ["chunks/0/0/4", "streams/dev-1/3", "meta/checkpoint"],
        "{r:#?}"
    );
    assert_eq!(r.damaged[0].offsets, Some([4, 8]), "says exactly which offsets");
    assert_eq!((r.chunks, r.records), (7, 12 - 4 + 4), "{r:?}");

    let q = s.quarantine().unwrap();
    assert_eq!(q.damaged, r.damaged);
    assert_eq!(s.damage(), None);
    let offsets: Vec<u64> = s
        .read("t", 0, 0, 100, usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 8, 9, 10, 11], "reads pass the hole");
    let st = s.partition_stats("t", 0).unwrap();
    assert_eq!((st.first_offset, st.next_offset, st.records), (0, 12, 8));
    assert_eq!(s.meta("checkpoint").unwrap(), None);
    let r = s.verify().unwrap();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(
        r.quarantined,
        ["chunks/0/0/4", "meta/checkpoint", "streams/dev-1/3"]
    );
    assert_eq!(s.append(&one("t", 0, vec![rec(1, None, "x")])).unwrap(), [12]);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_log_that_rolled_back_is_refused_until_accepted_and_reuses_no_offset() {
    let dir = scratch();
    let path = dir.join("log.redb");
    let s = RedbLog::open(&path).unwrap();
    s.ensure_topic(&TopicSpec::new("t", 2)).unwrap();
    s.append(&one("t", 0, vec![rec(1, None, "a"), rec(2, None, "b")]))
        .unwrap();
    s.close();
    drop(s);
    let old = std::fs::read(&path).unwrap();
    let s = RedbLog::open(&path).unwrap();
    assert_eq!(s.append(&one("t", 0, vec![rec(3, None, "c")])).unwrap(), [2]);
    assert_eq!(s.append(&one("t", 1, vec![rec(4, None, "d")])).unwrap(), [0]);
    s.close();
    drop(s);
    // The file goes back to its state before those two commits; the marks beside it do not.
    std::fs::write(&path, old).unwrap();

    let e = RedbLog::open(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LogError::RolledBack(_)), "{e:?}");
    assert!(
        msg.contains("\"t\" partition 0: offsets 2..3") && msg.contains("\"t\" partition 1: offsets 0..1"),
        "names what is gone: {msg}"
    );
    assert!(msg.contains("--accept-rollback"), "says what to do: {msg}");

    let s = RedbLog::open_with(&path, true).unwrap();
    assert_eq!(
        s.append(&one("t", 0, vec![rec(5, None, "e")])).unwrap(),
        [3],
        "goes on after the lost offsets: none handed out twice"
    );
    assert_eq!(s.append(&one("t", 1, vec![rec(6, None, "f")])).unwrap(), [1]);
    let r = s.verify().unwrap();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.quarantined, ["rollback/0/0", "rollback/0/1"]);
    drop(s);
    let s = RedbLog::open(&path).unwrap();
    let vals: Vec<_> = s
        .read("t", 0, 0, 10, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(vals, [0, 1, 3]);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn below_the_reserve_appends_are_refused_and_freeing_writes_go_on() {
    let dir = scratch();
    let path = dir.join("log.redb");
    let s = RedbLog::open(&path).unwrap();
    s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
    for i in 0..3 {
        s.append(&one("t", 0, vec![rec(i, None, "v")])).unwrap();
    }
    // More than any disk has free.
    s.set_reserve(u64::MAX / 4);
    let e = s.append(&one("t", 0, vec![rec(9, None, "w")])).unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("below the reserve"),
        "{e}"
    );
    assert!(s.truncate("t", 0, 2).is_ok(), "freeing space is never refused");
    s.set_meta("checkpoint", b"1").unwrap();
    s.set_reserve(0);
    assert_eq!(s.append(&one("t", 0, vec![rec(9, None, "w")])).unwrap(), [3]);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}
