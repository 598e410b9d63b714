//! The front's limits with `[mqtt] auth = "none"`, against a hostile client on raw sockets:
//! subscriptions other than a device's ack topic (wildcards, telemetry) are cut off before
//! rumqttd sees them; device ids past `max_devices` are refused (CONNACK "server unavailable")
//! while known devices go on; a connection past `max_connections` is closed at once; half a
//! packet is dropped at the frame deadline. A device that behaves is acknowledged throughout, and
//! nothing of the hostile client's reaches the log.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use firmware::wire;
use hil_tests::agent::EdgeAgent;
use hil_tests::raw_mqtt::{self, publish_frame, read_packet, subscribe_frame};
use hil_tests::wait;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn open(port: u16) -> TcpStream {
    raw_mqtt::open(addr(port)).unwrap()
}

/// Connects as `id`: the CONNACK's return code (`None`: closed without one).
fn connect(port: u16, id: &str) -> (TcpStream, Option<u8>) {
    raw_mqtt::connect(addr(port), id).unwrap()
}

/// Whether the agent closes `c` (rather than answer) within 10 s; how long it took.
fn closed(c: &mut TcpStream) -> (bool, Duration) {
    let t = Instant::now();
    (read_packet(c).is_none(), t.elapsed())
}

fn batch(device: &str) -> Vec<u8> {
    raw_mqtt::batch(device, 1)
}

/// A device that behaves: subscribes to its acks, publishes a batch, and gets the agent's Ack.
fn device_is_acked(port: u16, id: &str) -> wire::Ack {
    let (mut c, code) = connect(port, id);
    assert_eq!(code, Some(0), "{id} connects");
    c.write_all(&subscribe_frame(&format!("devices/{id}/ack")))
        .unwrap();
    let (h, _) = read_packet(&mut c).expect("SUBACK");
    assert_eq!(h >> 4, 9, "SUBACK");
    c.write_all(&publish_frame(&format!("sensors/{id}"), &batch(id)))
        .unwrap();
    loop {
        let (h, body) = read_packet(&mut c).expect("the agent answers a device that behaves");
        if h >> 4 == 3 {
            return wire::decode::<wire::Ack>(raw_mqtt::payload(h, &body)).unwrap();
        }
    }
}

#[test]
fn without_passwords_every_limit_holds_against_a_hostile_client() {
    let data = std::env::temp_dir().join(format!(
        "edge-limits-{}-{}",
        std::process::id(),
        hil_tests::free_port()
    ));
    let agent = EdgeAgent::launch_with_config(
        &bin(),
        &data,
        "[mqtt]\nmax_connections = 12\nmax_devices = 6\nframe_timeout_s = 2\n",
    )
    .unwrap();
    let port = agent.mqtt_port;
    let metric = |name: &str| agent.metric(name).unwrap();
    let acked = wire::Ack {
        boot_id: 1,
        up_to_seq: 2,
    };

    // Subscriptions to anything but one device's acks are cut off: each would be a log of its
    // own in rumqttd, kept for good (16 MiB for a telemetry filter).
    for f in [
        "#",
        "sensors/+",
        "devices/+/ack",
        "devices/good/#",
        "sensors/good",
        "x/y",
    ] {
        let (mut c, code) = connect(port, "hostile");
        assert_eq!(code, Some(0));
        c.write_all(&subscribe_frame(f)).unwrap();
        assert!(closed(&mut c).0, "subscribing to {f} is cut off, no SUBACK");
    }
    assert_eq!(metric("edge_mqtt_denied_total"), 6.0);
    // So are publishes to other topics than a device's telemetry and status, an ack above all
    // (a forged ack would make a device drop readings the log never had).
    for t in ["devices/good/ack", "other"] {
        let (mut c, _) = connect(port, "hostile");
        c.write_all(&publish_frame(t, b"forged")).unwrap();
        assert!(closed(&mut c).0, "publishing to {t} is cut off");
    }
    assert_eq!(metric("edge_mqtt_denied_total"), 8.0);
    assert_eq!(device_is_acked(port, "good"), acked);

    // Device ids: "hostile" and "good" are taken; four more fit, the next is refused with
    // "server unavailable", by client id or by a topic naming it; known ones go on.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|i| {
            let (c, code) = connect(port, &format!("dev-{i}"));
            assert_eq!(code, Some(0), "dev-{i}");
            c
        })
        .collect();
    assert_eq!(metric("edge_mqtt_devices_taken"), 6.0);
    assert_eq!(connect(port, "dev-new").1, Some(3), "past max_devices");
    let (mut c, _) = connect(port, "hostile");
    c.write_all(&publish_frame("sensors/dev-other", &batch("dev-other")))
        .unwrap();
    assert!(closed(&mut c).0, "a publish naming a new device past max_devices");
    let (mut c, _) = connect(port, "dev-0");
    c.write_all(&subscribe_frame("devices/dev-new/ack")).unwrap();
    assert!(closed(&mut c).0, "a subscription naming one");
    assert_eq!(metric("edge_mqtt_device_limit_total"), 3.0);
    assert_eq!(metric("edge_mqtt_devices_taken"), 6.0);
    assert_eq!(device_is_acked(port, "good"), acked, "a known device goes on");

    // Connections: with 12 open (these send nothing), the 13th is closed at once, long before
    // the frame deadline that ends the 12.
    held.clear();
    wait::until(Duration::from_secs(10), "no connection open", || {
        (metric("edge_mqtt_connections") == 0.0).then_some(())
    })
    .unwrap();
    let timeouts = metric("edge_mqtt_frame_timeouts_total");
    let held: Vec<TcpStream> = (0..12).map(|_| open(port)).collect();
    wait::until(Duration::from_secs(10), "12 connections open", || {
        (metric("edge_mqtt_connections") == 12.0).then_some(())
    })
    .unwrap();
    let mut extra = open(port);
    let _ = extra.write_all(&raw_mqtt::connect_frame("good"));
    let (was_closed, took) = closed(&mut extra);
    assert!(was_closed && took < Duration::from_secs(1), "{took:?}");
    assert_eq!(metric("edge_mqtt_connection_limit_total"), 1.0);
    // The 12 are closed at the deadline (2 s), and there is room again.
    for mut c in held {
        let (was_closed, took) = closed(&mut c);
        assert!(was_closed && took < Duration::from_secs(8), "{took:?}");
    }
    wait::until(Duration::from_secs(10), "the 12 counted as timed out", || {
        (metric("edge_mqtt_frame_timeouts_total") == timeouts + 12.0).then_some(())
    })
    .unwrap();
    // Half a packet after the CONNECT (a PUBLISH announcing 100 bytes, sending 3) is dropped at
    // the deadline too.
    let (mut half, _) = connect(port, "dev-1");
    half.write_all(&[0x32, 100, 0, 15]).unwrap();
    let (was_closed, took) = closed(&mut half);
    assert!(
        was_closed && took >= Duration::from_millis(1_500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert_eq!(device_is_acked(port, "good"), acked);

    // Devices that connect, publish and DISCONNECT one after another all get through (rumqttd
    // 0.20 alone ends such a next connection: see the front's DISCONNECT handling).
    for i in 0..200 {
        let (mut c, code) = connect(port, "good");
        assert_eq!(code, Some(0), "connection {i}");
        c.write_all(&publish_frame("sensors/good", &batch("good")))
            .unwrap();
        loop {
            let (h, _) =
                read_packet(&mut c).unwrap_or_else(|| panic!("connection {i} closed before its PUBACK"));
            if h >> 4 == 4 {
                break;
            }
        }
        c.write_all(&raw_mqtt::DISCONNECT).unwrap();
    }

    // Of all this, the log holds the good device's three readings only.
    assert_eq!(metric("edge_readings_ingested_total"), 3.0);
    assert_eq!(metric("edge_dead_letters_total"), 0.0);
    drop(agent);
    let _ = std::fs::remove_dir_all(&data);
}
