use super::view::DeviceQuery;
use super::*;
use vocab::wire::{Counters, DeviceStatus, Reading};

fn reading(boot: u32, seq: u64) -> Vec<u8> {
    let r = ReadingRecord {
        boot_id: boot,
        seq,
        reading: Reading {
            channel: 0,
            timestamp_ms: 1,
            value: seq as f32,
        },
    };
    let mut buf = [0u8; 64];
    vocab::wire::encode(&r, &mut buf).unwrap().to_vec()
}

fn status(id: &str, overflow: u64, online: bool) -> Vec<u8> {
    let s = DeviceStatus {
        device_id: id.try_into().unwrap(),
        boot_id: 1,
        online,
        firmware_version: "1.2".try_into().unwrap(),
        buffer_capacity: 4,
        uptime_ms: 1,
        counters: Counters {
            dropped_overflow: overflow,
            ..Counters::default()
        },
    };
    let mut buf = [0u8; 256];
    vocab::wire::encode(&s, &mut buf).unwrap().to_vec()
}

fn rec<'a>(topic: &'a str, offset: i64, key: &'a [u8], value: &'a [u8], edge: Option<&'a [u8]>) -> Rec<'a> {
    Rec {
        topic,
        partition: 0,
        offset,
        timestamp_ms: Some(10_000 + offset),
        key: Some(key),
        value: Some(value),
        edge,
    }
}

#[test]
fn records_of_every_topic_make_devices_gateways_and_gaps() {
    let mut m = Monitor::new(Settings::default());
    let now = 20_000;
    for (o, seq) in [0, 1, 2, 6, 7].into_iter().enumerate() {
        let v = reading(1, seq);
        m.apply(
            &rec("telemetry", o as i64, b"dev-a", &v, Some(b"gw-1/telemetry/0/5")),
            now,
        );
    }
    let s = status("dev-a", 3, true);
    m.apply(&rec("device-status", 0, b"dev-a", &s, None), now);
    let hb = serde_json::to_vec(&vocab::heartbeat::Heartbeat {
        gateway_id: "gw-1".into(),
        timestamp_ms: 19_000,
        uptime_s: 3,
        versions: Default::default(),
        last_ack_ms: 18_000,
        partitions: vec![],
    })
    .unwrap();
    m.apply(&rec("gateways", 0, b"gw-1", &hb, None), now);
    let d = m.device("dev-a", now).unwrap();
    assert_eq!(
        d.gaps,
        vec![view::Gap {
            boot: 1,
            from_seq: 3,
            to_seq: 5
        }]
    );
    assert_eq!((d.row.missing, d.row.dropped_overflow), (3, 3));
    assert_eq!(d.row.gateway.as_deref(), Some("gw-1"));
    assert_eq!(d.row.firmware.as_deref(), Some("1.2"));
    assert!(d.row.online);
    let gws = m.gateway_rows(now);
    assert_eq!(gws.len(), 1);
    assert_eq!(
        (gws[0].id.as_str(), gws[0].online, gws[0].devices),
        ("gw-1", true, 1)
    );
    assert_eq!(m.records, 7);
    assert_eq!(m.undecodable, 0);
    assert_eq!(m.positions["telemetry"][&0].next, 5);
    // Offline past the timeout; the list's filters.
    let later = now + 61_000;
    assert!(!m.device("dev-a", later).unwrap().row.online);
    let q = DeviceQuery {
        status: Some("online".into()),
        ..DeviceQuery::default()
    };
    assert_eq!(m.devices(&q, later).matched, 0);
    let q = DeviceQuery {
        lossy: true,
        filter: Some("GW-1".into()),
        ..DeviceQuery::default()
    };
    let l = m.devices(&q, now);
    assert_eq!((l.total, l.online, l.matched, l.missing), (1, 1, 1, 3));
    // Metrics carry the totals and the device's own series.
    let page = m.metrics(now);
    let p = foundation::prom::Metrics::parse(&page).unwrap();
    assert_eq!(p.value("monitor_missing_readings", &[]), Some(3.0));
    assert_eq!(
        p.value("monitor_device_missing_readings", &[("device", "dev-a")]),
        Some(3.0)
    );
    assert_eq!(
        p.value("monitor_gateway_online", &[("gateway", "gw-1")]),
        Some(1.0)
    );
}

#[test]
fn bad_records_are_counted_and_harm_nothing() {
    let mut m = Monitor::new(Settings::default());
    let good = reading(1, 0);
    m.apply(&rec("telemetry", 0, b"dev-a", &good, None), 20_000);
    let st = status("dev-b", 0, true);
    let bad: [Rec<'_>; 7] = [
        rec("telemetry", 1, b"dev-a", b"\x01\xff", None),
        rec("telemetry", 2, b"bad/id", &good, None),
        rec("telemetry", 3, b"\xff\xfe", &good, None),
        rec("device-status", 4, b"dev-a", &st, None),
        rec("gateways", 5, b"gw", b"{not json", None),
        rec("elsewhere", 6, b"dev-a", &good, None),
        Rec {
            topic: "telemetry",
            value: None,
            ..Rec::default()
        },
    ];
    for r in &bad {
        m.apply(r, 20_000);
    }
    assert_eq!(m.undecodable, bad.len() as u64);
    assert!(m.last_error.as_deref().unwrap().contains("no value"));
    assert_eq!(m.registry.devices.len(), 1);
    assert_eq!(m.registry.devices["dev-a"].readings, 1);
    let huge = vec![b' '; MAX_HEARTBEAT_BYTES + 1];
    m.apply(&rec("gateways", 7, b"gw", &huge, None), 20_000);
    assert!(m.last_error.as_deref().unwrap().contains("bytes"));
    assert!(m.gateways.gateways.is_empty());
}

#[test]
fn a_replayed_backlog_does_not_look_online_and_lag_counts_the_unread() {
    let mut m = Monitor::new(Settings::default());
    let now = 10_000_000;
    let v = reading(1, 0);
    // Stamped an hour ago.
    let r = Rec {
        timestamp_ms: Some(now - 3_600_000),
        ..rec("telemetry", 0, b"dev-a", &v, None)
    };
    m.apply(&r, now);
    assert!(!m.device("dev-a", now).unwrap().row.online);
    m.set_end("telemetry", 0, 10);
    assert_eq!(m.lag(), 9);
    assert_eq!(
        m.feed_view().positions["telemetry/0"],
        Position { next: 1, end: 10 }
    );
}

#[test]
fn readings_in_json_and_confluent_framing_count_like_postcard_ones() {
    let mut m = Monitor::new(Settings::default());
    let json = |seq: u64, dev: &str| {
        serde_json::to_vec(&vocab::json::ReadingJson {
            device_id: dev.into(),
            boot_id: 1,
            seq,
            channel: 0,
            timestamp_ms: 5,
            value: 1.5,
        })
        .unwrap()
    };
    let plain = json(0, "dev-j");
    let mut framed = vec![0, 0, 0, 0, 9];
    framed.extend(json(2, "dev-j"));
    let postcard = reading(1, 3);
    m.apply(&rec("telemetry", 0, b"dev-j", &plain, None), 20_000);
    m.apply(&rec("telemetry", 1, b"dev-j", &framed, None), 20_000);
    m.apply(&rec("telemetry", 2, b"dev-j", &postcard, None), 20_000);
    let d = m.device("dev-j", 20_000).unwrap();
    assert_eq!((d.row.readings, d.row.missing), (3, 1), "{:?}", m.last_error);
    // A JSON reading of another device than its key is refused.
    let other = json(4, "dev-x");
    m.apply(&rec("telemetry", 3, b"dev-j", &other, None), 20_000);
    assert_eq!(m.undecodable, 1);
}
