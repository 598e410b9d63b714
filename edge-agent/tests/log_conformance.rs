//! The log conformance suite against both stores, and what only the redb store promises:
//! everything survives closing and reopening the file.

use edge_agent::log::mem::MemLog;
use edge_agent::log::redb_store::RedbLog;
use edge_agent::log::suite::{self, one, rec};
use edge_agent::log::{LogStore, StreamState, TopicSpec};

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "edge-log-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn mem_store_conforms() {
    suite::test_all(MemLog::new);
}

#[test]
fn redb_store_conforms() {
    let dir = tempdir();
    let n = std::cell::Cell::new(0);
    suite::test_all(|| {
        n.set(n.get() + 1);
        RedbLog::open(&dir.join(format!("log-{}.redb", n.get()))).unwrap()
    });
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn redb_store_keeps_everything_across_reopen() {
    let dir = tempdir();
    let path = dir.join("log.redb");
    {
        let s = RedbLog::open(&path).unwrap();
        s.ensure_topic(&TopicSpec {
            compact: true,
            ..TopicSpec::new("t", 2)
        })
        .unwrap();
        let mut a = one("t", 1, vec![rec(5, Some("k"), "v1"), rec(6, None, "v2")]);
        a.streams.push(StreamState {
            device: "d".into(),
            boot: 3,
            next_expected: 42,
        });
        s.append(&a).unwrap();
        s.set_meta("gateway_id", b"gw-9").unwrap();
        assert!(
            RedbLog::open(&path).is_err(),
            "a second open of the same file is refused"
        );
    }
    let s = RedbLog::open(&path).unwrap();
    assert_eq!(s.topics().unwrap()[0].partitions, 2);
    assert!(s.topics().unwrap()[0].compact);
    let got = s.read("t", 1, 0, 10, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        vec![b"v1".to_vec(), b"v2".to_vec()]
    );
    assert_eq!(s.stream_state("d", 3).unwrap(), Some(42));
    assert_eq!(s.meta("gateway_id").unwrap().as_deref(), Some(&b"gw-9"[..]));
    assert_eq!(s.append(&one("t", 1, vec![rec(7, None, "v3")])).unwrap(), vec![2]);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn mem_store_failing_writes_change_nothing_and_recover() {
    let s = MemLog::new();
    s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
    s.fail_writes(true);
    let e = s.append(&one("t", 0, vec![rec(1, None, "a")])).unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(s.partition_stats("t", 0).unwrap().next_offset, 0);
    s.fail_writes(false);
    assert_eq!(s.append(&one("t", 0, vec![rec(1, None, "a")])).unwrap(), vec![0]);
}
