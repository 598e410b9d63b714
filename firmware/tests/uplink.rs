//! The MQTT uplink state machine against scripted broker byte streams: no sockets, no clock.

use firmware::buffer::OverflowPolicy;
use firmware::mqtt::codec::{self, Packet};
use firmware::mqtt::{Action, Config, Uplink};
use firmware::wire::{self, Ack, Batch, DeviceStatus, Reading};
use firmware::Error;

type Up = Uplink<Vec<Reading>, 1024>;

fn uplink(cap: usize) -> Up {
    let mut cfg = Config::new("dev-1", 7).unwrap();
    cfg.batch_max = 4;
    cfg.linger_ms = 10;
    cfg.max_in_flight = 8;
    cfg.resend_timeout_ms = 1_000;
    cfg.response_timeout_ms = 3_000;
    cfg.reconnect_min_ms = 100;
    cfg.reconnect_max_ms = 400;
    cfg.keep_alive_s = 60;
    Uplink::new(
        cfg,
        vec![Reading::default(); cap],
        OverflowPolicy::DropOldest,
        0,
        0,
    )
}

fn reading(i: u64) -> Reading {
    Reading {
        channel: 1,
        timestamp_ms: i,
        value: i as f32 * 0.5,
    }
}

/// A client packet, owned.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Connect,
    Subscribe {
        pid: u16,
        filter: String,
    },
    Publish {
        topic: String,
        pid: Option<u16>,
        retain: bool,
        dup: bool,
        payload: Vec<u8>,
    },
    PubAck(u16),
    PingReq,
    Other(u8),
}

fn decode_client(frame: &[u8]) -> Sent {
    match frame[0] >> 4 {
        codec::kind::CONNECT => Sent::Connect,
        codec::kind::SUBSCRIBE => {
            let hl = if frame[1] & 0x80 == 0 { 2 } else { 3 };
            let pid = u16::from_be_bytes([frame[hl], frame[hl + 1]]);
            let n = u16::from_be_bytes([frame[hl + 2], frame[hl + 3]]) as usize;
            Sent::Subscribe {
                pid,
                filter: String::from_utf8(frame[hl + 4..hl + 4 + n].to_vec()).unwrap(),
            }
        }
        codec::kind::PUBLISH => match codec::parse(frame).unwrap() {
            Packet::Publish {
                topic,
                pid,
                retain,
                payload,
                ..
            } => Sent::Publish {
                topic: topic.into(),
                pid,
                retain,
                dup: frame[0] & 0x08 != 0,
                payload: payload.to_vec(),
            },
            p => panic!("{p:?}"),
        },
        codec::kind::PUBACK => Sent::PubAck(u16::from_be_bytes([frame[2], frame[3]])),
        codec::kind::PINGREQ => Sent::PingReq,
        k => Sent::Other(k),
    }
}

/// Runs the uplink at `now` until it waits; returns the packets it sent and the final action.
fn run(u: &mut Up, now: u64) -> (Vec<Sent>, Action) {
    let mut out = Vec::new();
    let mut wire = Vec::new();
    loop {
        match u.poll(now) {
            Action::Transmit => {
                let bytes = u.transmit().to_vec();
                u.consume_tx(bytes.len());
                wire.extend_from_slice(&bytes);
            }
            a @ (Action::Wait(_) | Action::Close | Action::Connect) => {
                let mut rest = &wire[..];
                while !rest.is_empty() {
                    let n = codec::frame_len(rest).unwrap().unwrap();
                    out.push(decode_client(&rest[..n]));
                    rest = &rest[n..];
                }
                return (out, a);
            }
        }
    }
}

fn connack(code: u8) -> Vec<u8> {
    vec![0x20, 2, 0, code]
}
fn suback(pid: u16, code: u8) -> Vec<u8> {
    let p = pid.to_be_bytes();
    vec![0x90, 3, p[0], p[1], code]
}
fn puback(pid: u16) -> Vec<u8> {
    let p = pid.to_be_bytes();
    vec![0x40, 2, p[0], p[1]]
}
fn ack_publish(boot_id: u32, up_to_seq: u64, pid: Option<u16>) -> Vec<u8> {
    let mut payload = [0u8; 32];
    let p = wire::encode(&Ack { boot_id, up_to_seq }, &mut payload)
        .unwrap()
        .to_vec();
    let mut buf = [0u8; 128];
    let r = codec::encode_publish(&mut buf, "devices/dev-1/ack", pid, false, &p).unwrap();
    buf[r].to_vec()
}

fn batches(sent: &[Sent]) -> Vec<(Batch, bool, u16)> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Publish {
                topic,
                payload,
                dup,
                pid,
                ..
            } if topic == "sensors/dev-1" => Some((wire::decode_batch(payload).unwrap(), *dup, pid.unwrap())),
            _ => None,
        })
        .collect()
}

/// Connects and subscribes; returns the birth status and whatever else was sent with it.
fn establish_with(u: &mut Up, now: u64) -> (DeviceStatus, Vec<Sent>) {
    assert_eq!(u.poll(now), Action::Connect);
    u.on_connected(now);
    let (sent, _) = run(u, now);
    assert_eq!(sent, vec![Sent::Connect]);
    u.on_received(&connack(0), now);
    let (sent, _) = run(u, now);
    let Sent::Subscribe { pid, filter } = &sent[0] else {
        panic!("{sent:?}")
    };
    assert_eq!(filter, "devices/dev-1/ack");
    u.on_received(&suback(*pid, 1), now);
    let (sent, _) = run(u, now);
    let status = sent
        .iter()
        .find_map(|s| match s {
            Sent::Publish {
                topic,
                payload,
                retain: true,
                pid: Some(p),
                ..
            } if topic == "devices/dev-1/status" => {
                u.on_received(&puback(*p), now);
                Some(wire::decode_status(payload).unwrap())
            }
            _ => None,
        })
        .expect("birth status");
    assert!(u.is_online());
    (status, sent)
}

fn establish(u: &mut Up, now: u64) -> DeviceStatus {
    establish_with(u, now).0
}

#[test]
fn happy_path_publishes_batches_and_forgets_only_acked_readings() {
    let mut u = uplink(32);
    let birth = establish(&mut u, 0);
    assert!(birth.online);
    assert_eq!((birth.boot_id, birth.buffer_capacity), (7, 32));
    for i in 0..6 {
        u.push(reading(i), 1).unwrap();
    }
    // 4 fill a batch at once; the other 2 wait for the linger.
    let (sent, _) = run(&mut u, 1);
    let b = batches(&sent);
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].0.first_seq, b[0].0.readings.len(), b[0].0.low_seq),
        (0, 4, 0)
    );
    assert_eq!(b[0].0.readings[3], reading(3));
    u.on_received(&puback(b[0].2), 2);
    let (sent, _) = run(&mut u, 11);
    let b = batches(&sent);
    assert_eq!((b[0].0.first_seq, b[0].0.readings.len()), (4, 2));
    // MQTT PUBACK alone frees nothing.
    assert_eq!(u.buffer().len(), 6);
    u.on_received(&ack_publish(7, 3, Some(77)), 12);
    assert_eq!(u.buffer().len(), 2);
    // The QoS 1 ack publish is acknowledged to the broker.
    let (sent, _) = run(&mut u, 12);
    assert!(sent.contains(&Sent::PubAck(77)));
    u.on_received(&ack_publish(7, 5, None), 13);
    assert!(u.buffer().is_empty());
    let c = u.counters();
    assert_eq!((c.generated, c.sent, c.acked, c.resent), (6, 6, 6, 0));
}

#[test]
fn stale_duplicate_foreign_and_premature_acks_change_nothing() {
    let mut u = uplink(32);
    establish(&mut u, 0);
    for i in 0..8 {
        u.push(reading(i), 0).unwrap();
    }
    let (sent, _) = run(&mut u, 0);
    assert_eq!(batches(&sent).len(), 2);
    u.on_received(&ack_publish(7, 5, None), 1);
    assert_eq!(u.buffer().low_seq(), 6);
    u.on_received(&ack_publish(7, 2, None), 2); // out of order, stale
    u.on_received(&ack_publish(7, 5, None), 3); // duplicate
    u.on_received(&ack_publish(8, 7, None), 4); // another boot
    assert_eq!(u.buffer().low_seq(), 6);
    u.push(reading(8), 5).unwrap();
    u.on_received(&ack_publish(7, 100, None), 5); // covers a reading never sent
    assert_eq!((u.buffer().low_seq(), u.buffer().len()), (8, 1));
    // garbage on the ack topic is ignored, the session survives
    let mut buf = [0u8; 64];
    let r = codec::encode_publish(&mut buf, "devices/dev-1/ack", None, false, &[1, 0xff]).unwrap();
    u.on_received(&buf[r], 6);
    assert!(u.is_online());
    assert_eq!(u.last_error(), Some(Error::Truncated));
}

#[test]
fn lost_connection_mid_publish_resends_everything_unacked() {
    let mut u = uplink(32);
    establish(&mut u, 0);
    for i in 0..4 {
        u.push(reading(i), 0).unwrap();
    }
    assert_eq!(u.poll(0), Action::Transmit);
    let half = u.transmit().len() / 2;
    u.consume_tx(half); // the link dies with half a publish written
    u.on_disconnected(1);
    for i in 4..6 {
        u.push(reading(i), 2).unwrap(); // sampling goes on while offline
    }
    let Action::Wait(retry_at) = u.poll(2) else {
        panic!()
    };
    assert!((51..=101).contains(&retry_at), "jittered backoff {retry_at}");
    let (_, sent) = establish_with(&mut u, retry_at);
    let b = batches(&sent);
    let seqs: Vec<u64> = b
        .iter()
        .flat_map(|(b, _, _)| b.first_seq..b.first_seq + b.readings.len() as u64)
        .collect();
    assert_eq!(seqs, (0..6).collect::<Vec<_>>());
    assert!(b[0].1, "a resend carries the DUP flag");
    let c = u.counters();
    assert_eq!((c.sent, c.resent, c.reconnects), (6, 4, 1));
}

#[test]
fn no_ack_progress_means_go_back_n_resend() {
    let mut u = uplink(32);
    establish(&mut u, 0);
    for i in 0..4 {
        u.push(reading(i), 0).unwrap();
    }
    let (sent, _) = run(&mut u, 0);
    let (_, _, pid) = batches(&sent)[0];
    u.on_received(&puback(pid), 1);
    let (sent, a) = run(&mut u, 999);
    assert!(batches(&sent).is_empty());
    assert_eq!(a, Action::Wait(1_000));
    let (sent, _) = run(&mut u, 1_000);
    let b = batches(&sent);
    assert_eq!((b[0].0.first_seq, b[0].0.readings.len(), b[0].1), (0, 4, true));
}

#[test]
fn connack_refusal_closes_and_backs_off() {
    let mut u = uplink(8);
    assert_eq!(u.poll(0), Action::Connect);
    u.on_connected(0);
    run(&mut u, 0);
    u.on_received(&connack(5), 1);
    assert_eq!(u.poll(1), Action::Close);
    assert_eq!(u.last_error(), Some(Error::Refused(5)));
    assert!(!u.is_online());
    let Action::Wait(t1) = u.poll(1) else { panic!() };
    assert_eq!(u.poll(t1), Action::Connect);
    u.on_connect_failed(t1);
    let Action::Wait(t2) = u.poll(t1) else { panic!() };
    assert!(t2 - t1 >= 100, "backoff grows: {t1} -> {t2}");
}

#[test]
fn silent_broker_times_out_the_session() {
    let mut u = uplink(8);
    establish(&mut u, 0);
    u.push(reading(0), 0).unwrap();
    let (sent, _) = run(&mut u, 10);
    assert_eq!(batches(&sent).len(), 1);
    // no PUBACK ever comes
    let (_, a) = run(&mut u, 3_009);
    assert!(matches!(a, Action::Wait(_)));
    assert_eq!(u.poll(3_010), Action::Close);
    assert_eq!(u.last_error(), Some(Error::Timeout));
    assert_eq!(u.buffer().len(), 1, "the reading is kept");
}

#[test]
fn garbage_from_the_broker_closes_the_session_but_keeps_readings() {
    let mut u = uplink(8);
    establish(&mut u, 0);
    u.push(reading(0), 0).unwrap();
    u.on_received(&[0x40, 0x05, 1, 2, 3, 4, 5], 1); // PUBACK with a body of 5
    assert_eq!(u.poll(1), Action::Close);
    assert_eq!(u.last_error(), Some(Error::Protocol));
    assert_eq!(u.buffer().len(), 1);
}

#[test]
fn oversized_packet_is_skipped_and_the_stream_resyncs() {
    let mut u = uplink(8);
    establish(&mut u, 0);
    for i in 0..4 {
        u.push(reading(i), 0).unwrap();
    }
    run(&mut u, 0);
    let mut big = [0u8; 600];
    let r = codec::encode_publish(&mut big, "other/topic", None, false, &[9u8; 500]).unwrap();
    let mut stream = big[r].to_vec();
    stream.extend(ack_publish(7, 3, None));
    for chunk in stream.chunks(7) {
        u.on_received(chunk, 1); // byte-at-a-time-ish delivery
    }
    assert!(u.is_online());
    assert_eq!(u.last_error(), Some(Error::PacketTooLarge));
    assert!(u.buffer().is_empty());
}

#[test]
fn keepalive_pings_when_idle() {
    let mut u = uplink(8);
    establish(&mut u, 0);
    let (sent, a) = run(&mut u, 1_000);
    assert!(sent.is_empty());
    assert_eq!(a, Action::Wait(45_000));
    let (sent, _) = run(&mut u, 45_000);
    assert_eq!(sent, vec![Sent::PingReq]);
    u.on_received(&[0xd0, 0], 45_001);
    assert!(u.is_online());
}

#[test]
fn overflow_while_offline_is_counted_and_reported_in_status() {
    let mut u = uplink(4);
    for i in 0..10 {
        u.push(reading(i), 0).unwrap();
    }
    assert_eq!(u.counters().dropped_overflow, 6);
    let (status, sent) = establish_with(&mut u, 0);
    assert_eq!(status.counters.dropped_overflow, 6);
    assert_eq!(status.counters.generated, 10);
    let b = batches(&sent);
    assert_eq!(
        (b[0].0.first_seq, b[0].0.low_seq),
        (6, 6),
        "low_seq tells the gateway 0..6 are gone"
    );
}

/// Regression: PUBACKs for QoS 1 ack publishes went out last-in-first-out, and rumqttd drops
/// a client that acknowledges out of order (seen as reconnect storms under load).
#[test]
fn pubacks_go_out_in_the_order_the_publishes_came() {
    let mut u = uplink(8);
    establish(&mut u, 0);
    let mut stream = Vec::new();
    for pid in [5, 6, 7] {
        stream.extend(ack_publish(7, 0, Some(pid)));
    }
    u.on_received(&stream, 1);
    let (sent, _) = run(&mut u, 1);
    assert_eq!(sent, vec![Sent::PubAck(5), Sent::PubAck(6), Sent::PubAck(7)]);
}
