//! A full disk under the cloud broker (a small tmpfs, filled with `dd`): produce is refused
//! with KAFKA_STORAGE_ERROR, never acknowledged falsely; `/health` says degraded, with the
//! reason; once the space is freed, produce works again and `/health` is ok, without a
//! restart; every acknowledged record is there, and nothing refused is.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::produce_raw;
use common::{kcat, Broker};
use foundation::scratch::Tmpfs;

fn health(b: &Broker) -> (u16, String) {
    foundation::http::request(
        &format!("127.0.0.1:{}", b.http),
        "GET",
        "/health",
        Duration::from_secs(5),
    )
    .expect("/health answers")
}

#[test]
fn a_full_disk_degrades_health_and_recovers_without_a_restart() {
    let disk = Tmpfs::mount("cloud-small-disk", 24).unwrap();
    let b = Broker::start(&disk.path().join("cloud"));
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
