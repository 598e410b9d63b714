//! device-sim's virtual devices (the real firmware library over TCP) against a real mosquitto,
//! with the test acker standing in for the gateway: every reading is acked exactly once, in
//! order, across broker restarts and cut links.

use std::time::Duration;

use hil_tests::acker::Acker;
use hil_tests::mosquitto::Mosquitto;
use hil_tests::proxy::Proxy;
use hil_tests::sim::{self, SimConfig};
use hil_tests::wait;

fn cfg(broker: String, devices: usize, readings: u64, prefix: &str) -> SimConfig {
    SimConfig {
        broker,
        devices,
        rate: 100.0,
        batch: 4,
        readings: Some(readings),
        id_prefix: prefix.into(),
        resend_timeout_ms: 1_000,
        keep_alive_s: 5,
        drain_timeout: Duration::from_secs(30),
        ..SimConfig::default()
    }
}

/// Every boot the acker saw received exactly `0..n`, in order.
fn assert_exactly_once_in_order(acker: &Acker, prefix: &str, devices: usize, n: u64) {
    let st = acker.stats();
    let boots: Vec<_> = st
        .boots
        .iter()
        .filter(|((d, _), _)| d.starts_with(prefix))
        .collect();
    assert_eq!(boots.len(), devices, "one boot per device");
    for ((dev, boot), log) in boots {
        assert_eq!(
            log.seqs,
            (0..n).collect::<Vec<_>>(),
            "{dev}/{boot}: every reading once, in order"
        );
        assert_eq!(log.gaps, 0, "{dev}: no device-side drops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_is_acked_once_through_mosquitto() {
    let broker = Mosquitto::start().unwrap();
    let acker = Acker::start("127.0.0.1", broker.port()).unwrap();
    let report = sim::run(cfg(broker.addr(), 20, 150, "plain-")).await.unwrap();
    assert!(report.lossless(), "{}", report.to_json());
    assert_eq!(report.acked(), 20 * 150);
    assert_eq!(report.resent(), 0, "no resends on a healthy link");
    assert!(report.latency_percentile(99.0).is_some());
    assert_exactly_once_in_order(&acker, "plain-", 20, 150);
    let st = acker.stats();
    let status = st
        .statuses
        .get("plain-0")
        .expect("birth status retained and seen");
    assert_eq!(status.buffer_capacity, 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_run_loses_nothing() {
    let mut broker = Mosquitto::start().unwrap();
    let port = broker.port();
    let acker = Acker::start("127.0.0.1", port).unwrap();
    let run = tokio::spawn(sim::run(cfg(broker.addr(), 10, 400, "restart-")));
    wait::until_async(Duration::from_secs(20), "first readings acked", || {
        (acker.stats().received() >= 500).then_some(())
    })
    .await
    .unwrap();
    broker.stop();
    // The outage is the fault under test; its length is a parameter, not a wait for a condition.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let _broker = Mosquitto::start_on(port).unwrap();
    let report = run.await.unwrap().unwrap();
    assert!(report.lossless(), "{}", report.to_json());
    assert!(
        report.reconnects() >= 10,
        "every device reconnected: {}",
        report.to_json()
    );
    assert_exactly_once_in_order(&acker, "restart-", 10, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_links_are_survived_with_resends() {
    let broker = Mosquitto::start().unwrap();
    let acker = Acker::start("127.0.0.1", broker.port()).unwrap();
    let proxy = Proxy::start(broker.addr().parse().unwrap()).unwrap();
    let run = tokio::spawn(sim::run(cfg(
        format!("127.0.0.1:{}", proxy.port()),
        10,
        400,
        "cut-",
    )));
    for threshold in [400, 1_500, 2_500] {
        wait::until_async(Duration::from_secs(30), "progress between cuts", || {
            (acker.stats().received() >= threshold).then_some(())
        })
        .await
        .unwrap();
        proxy.cut();
    }
    let report = run.await.unwrap().unwrap();
    assert!(report.lossless(), "{}", report.to_json());
    assert!(report.reconnects() >= 10, "{}", report.to_json());
    assert_exactly_once_in_order(&acker, "cut-", 10, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_the_sim_reports_failure() {
    // No acker: the broker accepts everything (PUBACK), but nothing is durable, so nothing may
    // leave the device buffers and the run must not count as lossless.
    let broker = Mosquitto::start().unwrap();
    let mut c = cfg(broker.addr(), 2, 20, "noack-");
    c.drain_timeout = Duration::from_secs(2);
    let report = sim::run(c).await.unwrap();
    assert_eq!(report.acked(), 0);
    assert_eq!(report.unacked(), 40);
    assert!(!report.lossless());
}
