//! Damaged stored data is never served. redb does not checksum its data pages (a flipped bit
//! comes back as data), so the broker checks every batch it reads against the batch's own
//! CRC-32C: a byte flipped in a stored record's value makes that batch unreadable, not wrong.
//! The batches before it are served, the partition answers `KAFKA_STORAGE_ERROR` from the
//! damaged offset on, and `/health` names the topic, partition and offset.

mod common;

use std::time::{Duration, Instant};

use common::cluster::produce_raw;
use common::Broker;
use foundation::scratch::TempDir;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const DAMAGED: &str = "DAMAGE-ME-2f8c1e9a7b3d4c6e";

#[test]
fn a_damaged_stored_batch_is_refused_and_reported_never_served() {
    let dir = TempDir::new("damaged-data").unwrap();
    let mut b = Broker::start(dir.path());
    // Metadata for an unknown topic creates it (one partition).
    common::kcat(&["-L", "-b", &b.addr(), "-t", "t"], None);
    for v in ["before", DAMAGED, "after"] {
        assert_eq!(produce_raw(&b.addr(), "t", 0, v, 5_000).unwrap(), 0, "{v}");
    }
    assert!(b.terminate().success());

    // Flip one bit in every stored copy of the middle record's value.
    let file = dir.path().join("broker.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let mut flipped = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..]
        .windows(DAMAGED.len())
        .position(|w| w == DAMAGED.as_bytes())
    {
        bytes[i + at] ^= 0x20; // 'D' -> 'd'
        flipped += 1;
        i += at + DAMAGED.len();
    }
    assert!(flipped >= 1, "the record's bytes are in the file");
    std::fs::write(&file, &bytes).unwrap();
    b.start_again();

    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.addr())
        .set("group.id", "damaged")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    assert_eq!(
        got,
        vec!["before".to_string()],
        "only what precedes the damage is served"
    );

    let (code, body) = foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/health",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("damaged stored batch in t partition 0 at offset 1"),
        "{body}"
    );
    println!("{flipped} stored copies flipped; /health: {body}");

    // Stopped, the verify command names the batch and the offsets it held; quarantined, the
    // broker serves what follows the hole and is healthy again.
    assert!(b.terminate().success());
    let verify = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloud-broker"))
            .args(["storage", "verify", "--json", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["damaged"][0];
    assert_eq!(
        (d["topic"].as_str(), d["partition"].as_u64(), &d["offsets"]),
        (Some("t"), Some(0), &serde_json::json!([1, 2])),
        "{v}"
    );
    let out = verify(&["--quarantine"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = verify(&[]);
    assert!(
        out.status.success(),
        "clean after the quarantine: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    b.start_again();
    let (code, body) = foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/health",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.addr())
        .set("group.id", "after-quarantine")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
            ));
        }
    }
    assert_eq!(
        got,
        [(0, "before".to_string()), (2, "after".to_string())],
        "past the hole"
    );
    assert_eq!(produce_raw(&b.addr(), "t", 0, "new", 5_000).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut new = None;
    while new.is_none() && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            new = Some(m.offset());
        }
    }
    assert_eq!(new, Some(3), "no offset reused");
}
