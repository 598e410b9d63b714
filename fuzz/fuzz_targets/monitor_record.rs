//! The cloud monitor on arbitrary records: any key, value and edge header on any of its
//! topics. A record it cannot read is counted, never a panic; its bounds hold; the views
//! and the metrics page build from whatever it took in.
#![no_main]

use cloud_broker::monitor::{view::DeviceQuery, Monitor, Rec, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut m = Monitor::new(Settings {
        max_devices: 8,
        ..Settings::default()
    });
    // Records: [topic selector, key len, edge len, value len (2 bytes), ts (2 bytes), bytes...]
    let mut rest = data;
    let mut offset = 0;
    while rest.len() >= 7 {
        let topic = ["telemetry", "device-status", "gateways", "other"][usize::from(rest[0] % 4)];
        let (kl, el) = (usize::from(rest[1] % 40), usize::from(rest[2] % 40));
        let vl = usize::from(u16::from_le_bytes([rest[3], rest[4]]) % 600);
        let ts = i64::from(u16::from_le_bytes([rest[5], rest[6]]));
        rest = &rest[7..];
        let (key, r) = rest.split_at(kl.min(rest.len()));
        let (edge, r) = r.split_at(el.min(r.len()));
        let (value, r) = r.split_at(vl.min(r.len()));
        rest = r;
        m.apply(
            &Rec {
                topic,
                partition: 0,
                offset,
                timestamp_ms: Some(ts * 1000),
                key: Some(key),
                value: Some(value),
                edge: Some(edge),
            },
            70_000_000,
        );
        offset += 1;
    }
    assert!(m.registry.devices.len() <= 8);
    assert_eq!(m.records, offset as u64);
    let now = 70_000_000;
    let _ = m.devices(&DeviceQuery::default(), now);
    for id in m.registry.devices.keys().cloned().collect::<Vec<_>>() {
        let d = m.device(&id, now).expect("a listed device");
        let missing: u64 = d.gaps.iter().map(|g| g.to_seq - g.from_seq + 1).sum();
        assert_eq!(missing, d.row.missing);
    }
    let _ = m.gateway_rows(now);
    let _ = m.metrics(now);
});
