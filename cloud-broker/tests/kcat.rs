//! The broker with kcat (Debian's, librdkafka 2.0.2) as the client: metadata, a 100k-line file
//! produced and consumed byte-identically, consuming from a timestamp, topics kept across a
//! restart, and a consumer group.

mod common;

use common::{kcat, tempdir, Broker};

#[test]
fn kcat_lists_produces_and_consumes_100k_lines_byte_identically() {
    let dir = tempdir("kcat-100k");
    let mut b = Broker::start(&dir);
    let addr = b.addr();
    let meta = kcat(&["-b", &addr, "-L"], None);
    assert!(
        meta.contains("1 brokers:") && meta.contains(&format!("broker 1 at {addr}")),
        "{meta}"
    );
    let lines: String = (0..100_000)
        .map(|i| format!("reading {i} value {}\n", i * 7 % 1000))
        .collect();
    let file = dir.join("lines.txt");
    std::fs::write(&file, &lines).unwrap();
    kcat(
        &[
            "-b",
            &addr,
            "-P",
            "-t",
            "readings",
            "-X",
            "acks=all",
            "-l",
            file.to_str().unwrap(),
        ],
        None,
    );
    let out = kcat(&["-b", &addr, "-C", "-t", "readings", "-e", "-q"], None);
    assert!(
        out == lines,
        "consumed {} bytes, produced {}",
        out.len(),
        lines.len()
    );
    let meta = kcat(&["-b", &addr, "-L", "-t", "readings"], None);
    assert!(meta.contains("topic \"readings\" with 1 partitions"), "{meta}");
    // Consuming from a timestamp: only what was produced after it.
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 1;
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        <= ts
    {
        std::thread::yield_now();
    }
    kcat(&["-b", &addr, "-P", "-t", "readings"], Some(b"late-1\nlate-2\n"));
    let late = kcat(
        &[
            "-b",
            &addr,
            "-C",
            "-t",
            "readings",
            "-o",
            &format!("s@{ts}"),
            "-e",
            "-q",
        ],
        None,
    );
    assert_eq!(late, "late-1\nlate-2\n");
    // Everything survives a kill -9 (every produce above was acknowledged, acks=all).
    let (port, http) = (b.port, b.http);
    b.kill9();
    let b = Broker::start_on(&b.dir.clone(), port, http);
    let again = kcat(&["-b", &b.addr(), "-C", "-t", "readings", "-e", "-q"], None);
    assert_eq!(again, format!("{lines}late-1\nlate-2\n"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn kcat_consumer_group_reads_and_commits() {
    let dir = tempdir("kcat-group");
    let b = Broker::start(&dir);
    let addr = b.addr();
    let data: String = (0..50).map(|i| format!("m{i}\n")).collect();
    kcat(&["-b", &addr, "-P", "-t", "g-topic"], Some(data.as_bytes()));
    // A balanced consumer (JoinGroup/SyncGroup/Heartbeat/OffsetCommit) reads everything.
    let out = kcat(
        &[
            "-b",
            &addr,
            "-G",
            "group-a",
            "g-topic",
            "-e",
            "-q",
            "-X",
            "auto.offset.reset=earliest",
        ],
        None,
    );
    assert_eq!(out, data);
    // Its offsets were committed: the same group reading again finds nothing new.
    let more: String = (50..60).map(|i| format!("m{i}\n")).collect();
    kcat(&["-b", &addr, "-P", "-t", "g-topic"], Some(more.as_bytes()));
    let out = kcat(
        &[
            "-b",
            &addr,
            "-G",
            "group-a",
            "g-topic",
            "-e",
            "-q",
            "-X",
            "auto.offset.reset=earliest",
        ],
        None,
    );
    assert_eq!(out, more);
    std::fs::remove_dir_all(dir).ok();
}
