//! A full disk under the cloud broker (a small tmpfs): produce is refused with
//! KAFKA_STORAGE_ERROR, never acknowledged falsely; `/health` says degraded, with the reason;
//! once space is freed, produce works again and `/health` is ok, without a restart; every
//! acknowledged record is there, and nothing refused is. Two ways: without a reserve, `dd`
//! fills the disk to its last byte and deleting the file frees it; with the reserve, the
//! broker's own data fills it, produce stops at the reserve, and deleting a topic (which the
//! reserve leaves room for) frees pages inside the data file that the next produce reuses.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::produce_raw;
use common::{kcat, Broker};
use foundation::scratch::Tmpfs;

/// A gauge of the broker's `/metrics`.
fn gauge(b: &Broker, name: &str) -> f64 {
    let (code, body) = foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/metrics",
        Duration::from_secs(5),
    )
    .expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

fn health(b: &Broker) -> (u16, String) {
    foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/health",
        Duration::from_secs(5),
    )
    .expect("/health answers")
}

/// A broker over `dir` keeping `mb` MiB of disk free.
fn with_reserve(dir: &std::path::Path, mb: u64) -> Broker {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("cloud.toml");
    std::fs::write(&cfg, format!("disk_reserve_mb = {mb}\n")).unwrap();
    Broker::start_with(
        dir,
        common::free_port(),
        common::free_port(),
        vec!["--config".into(), cfg.display().to_string()],
    )
}

#[test]
fn a_full_disk_degrades_health_and_recovers_without_a_restart() {
    let disk = Tmpfs::mount("cloud-small-disk", 24).unwrap();
    let b = with_reserve(&disk.path().join("cloud"), 0);
    let addr = b.addr();
    kcat(&["-P", "-b", &addr, "-t", "t", "-p", "0"], Some(b"first\n"));
    let (mut acked, mut refused) = (BTreeSet::from(["first".to_string()]), BTreeSet::new());
    let value = |i: usize| format!("{i:06}-{}", "x".repeat(4000));
    let mut i = 0;
    let mut produce = |acked: &mut BTreeSet<String>, refused: &mut BTreeSet<String>| {
        i += 1;
        let v = value(i);
        let code = produce_raw(&addr, "t", 0, &v, 5_000).expect("a Produce answer");
        match code {
            0 => acked.insert(v),
            56 => refused.insert(v),
            other => panic!("produce answered error code {other}"),
        };
        code
    };
    for _ in 0..20 {
        assert_eq!(produce(&mut acked, &mut refused), 0);
    }
    assert_eq!(health(&b), (200, "ok".into()));

    let filler = disk.fill().unwrap();
    // redb may still reuse free pages inside its file for a few commits; then each fails.
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "produce kept succeeding on a full disk"
        );
        produce(&mut acked, &mut refused);
    }
    let (code, body) = health(&b);
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("degraded: storage writes are failing"), "{body}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while produce(&mut acked, &mut refused) != 0 {
        assert!(
            Instant::now() < deadline,
            "produce did not recover after the space was freed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(health(&b), (200, "ok".into()), "healthy again without a restart");

    let stored: BTreeSet<String> = kcat(&["-C", "-b", &addr, "-t", "t", "-p", "0", "-e", "-q"], None)
        .lines()
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = acked.difference(&stored).map(|v| &v[..6]).collect();
    assert!(missing.is_empty(), "acknowledged and gone: {missing:?}");
    let false_refusals: Vec<_> = refused.intersection(&stored).map(|v| &v[..6]).collect();
    assert!(
        false_refusals.is_empty(),
        "refused yet stored: {false_refusals:?}"
    );
    println!(
        "{} acknowledged, {} refused while the disk was full",
        acked.len(),
        refused.len()
    );
}

#[test]
fn at_the_reserve_produce_stops_and_deleting_a_topic_frees_room_for_more() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    let disk = Tmpfs::mount("cloud-reserve-disk", 32).unwrap();
    let b = with_reserve(&disk.path().join("cloud"), 8);
    let addr = b.addr();
    // Metadata for unknown topics creates them.
    kcat(&["-L", "-b", &addr, "-t", "big"], None);
    kcat(&["-L", "-b", &addr, "-t", "small"], None);
    let value = |i: usize| format!("{i:06}-{}", "y".repeat(16_000));
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let refused_at = loop {
        assert!(Instant::now() < deadline, "produce never reached the reserve");
        match produce_raw(&addr, "big", 0, &value(acked), 5_000).expect("a Produce answer") {
            0 => acked += 1,
            56 => break acked,
            other => panic!("produce answered error code {other}"),
        }
    };
    assert!(
        refused_at > 100,
        "the reserve refused early: after {refused_at} records"
    );
    let (code, body) = health(&b);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("below the reserve"), "{body}");
    assert_eq!(gauge(&b, "cloud_storage_write_failing"), 1.0);
    assert_eq!(
        gauge(&b, "cloud_storage_disk_reserve_bytes"),
        f64::from(8u32 << 20)
    );
    let free = foundation::redb::fs_available(disk.path()).unwrap();
    assert!(
        free > 2 << 20,
        "the reserve kept the disk from filling up: {free} bytes free"
    );

    // Deleting the topic is a write too; the reserve leaves room for it.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt
        .block_on(admin.delete_topics(&["big"], &AdminOptions::new()))
        .unwrap();
    assert!(r.iter().all(Result::is_ok), "{r:?}");

    // The deleted topic's pages are free inside the file: produce goes on without the disk
    // getting any larger.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while produce_raw(&addr, "small", 0, &value(i), 5_000).unwrap() != 0 {
        assert!(
            Instant::now() < deadline,
            "produce did not resume after the topic was deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
        i += 1;
    }
    for _ in 0..50 {
        i += 1;
        assert_eq!(produce_raw(&addr, "small", 0, &value(i), 5_000).unwrap(), 0);
    }
    assert_eq!(health(&b), (200, "ok".into()), "healthy again without a restart");
    assert_eq!(gauge(&b, "cloud_storage_write_failing"), 0.0);
}
